//! Online backup and verified restore, through the CLI a node's operator
//! uses: a backup taken while publishers run restores into a node that
//! serves byte-identical deliveries with the same sequences, tombstones and
//! cursors included; a truncated, altered or foreign backup is refused with
//! a message naming what is wrong, and nothing is written; a restore never
//! overwrites a store.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::common::*;
use beacon::base::proto::v1 as pb;

fn run(dir: &Path, args: &[String]) -> (i32, String, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    beacon(dir, &args)
}

const RETENTION: &str = "[retention]\nafter_expiry = \"100ms\"\ninterval = \"50ms\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_during_a_publish_storm_restores_byte_identical() {
    let pki = TestPki::new();
    let mut opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    opts.extra = RETENTION.into();
    let node = TestNode::start(&opts).await;
    let ca = vec![pki.ca_cert()];
    let op = pki.operator("alice");
    let reader = pki.client("uk.ncsc", "reader");
    let work = tempfile::tempdir().unwrap();

    // Two bulletins expire at once and are pruned to tombstones.
    let mut c = member(node.addr, &reader, &ca).await;
    let mut gone = bulletin("uk.ncsc", "short-lived");
    gone.expires_at = Some(SystemTime::now() + Duration::from_millis(200));
    c.publish(&gone).await.unwrap();
    let kept = bulletin("uk.ncsc", "kept");
    c.publish(&kept).await.unwrap();
    let pruned = wait_until(Duration::from_secs(20), || async {
        let mut c = member(node.addr, &reader, &ca).await;
        c.bulletins
            .get(pb::GetRequest {
                id: gone.id.clone(),
                publisher: String::new(),
            })
            .await
            .is_err_and(|e| e.code() == tonic::Code::NotFound)
    })
    .await;
    assert!(pruned.is_some(), "the expired bulletin is pruned");
    // A durable reader with a cursor.
    let mut sub = c.subscribe(open("soc", earliest())).await.unwrap();
    read_deliveries(&mut sub, 1, true, Duration::from_secs(20)).await;
    sub.ack(2).await.unwrap();
    sub.finish(Duration::from_secs(10)).await.unwrap();

    // The storm: publishers of two members, bounded in count.
    let mut storm = Vec::new();
    for (m, n) in [("uk.ncsc", 0), ("fr.anssi", 1), ("de.bsi", 2)] {
        let files = pki.client(m, &format!("pub-{n}"));
        let mut c = member(node.addr, &files, &ca).await;
        storm.push(tokio::spawn(async move {
            for i in 0..400 {
                let mut b = bulletin(m, &format!("storm {n}/{i}"));
                b.tlp = beacon::domain::bulletin::codec::tlp_to_i32(
                    beacon::domain::bulletin::Tlp::Clear,
                );
                c.publish(&b).await.expect("publish during the backup");
            }
        }));
    }
    // The backup, over the API, while they publish.
    wait_until(Duration::from_secs(30), || async {
        head(node.addr, &op, &ca).await >= 300
    })
    .await
    .expect("the storm is under way");
    let file = work.path().join("node.backup");
    let mut args = vec![
        "admin".into(),
        "backup".into(),
        "--out".into(),
        file.display().to_string(),
    ];
    args.extend(conn_args(node.addr, &op, &pki.ca_cert()));
    let (code, out, err) = run(work.path(), &args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("1 pruned") && out.contains("1 subscription cursors"),
        "{out}"
    );
    // As sensitive as the store: readable by its owner only.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "a backup is written 0600");
    }
    let backed_up: u64 = out
        .split_whitespace()
        .nth(3)
        .and_then(|h| h.trim_end_matches(':').parse().ok())
        .expect("the head in the summary");
    for t in storm {
        t.await.unwrap();
    }
    let final_head = head(node.addr, &op, &ca).await;
    assert_eq!(final_head, 1202);
    assert!(
        backed_up > 2 && backed_up < final_head,
        "taken mid-storm: head {backed_up} of {final_head}"
    );

    // Restore into a new node's directory, start it, compare everything.
    let (data, config) = TestNode::prepare(&NodeOptions::new(&pki, pki.node("drc", "hub-2")));
    let args: Vec<String> = vec![
        "admin".into(),
        "restore".into(),
        file.display().to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    let (code, out, err) = run(work.path(), &args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("restored head {backed_up}")), "{out}");
    let restored = TestNode::start_prepared(data, config).await;
    assert_eq!(head(restored.addr, &op, &ca).await, backed_up);
    let original = list_all_with(node.addr, &reader, &ca, true).await.unwrap();
    let copy = list_all_with(restored.addr, &reader, &ca, true)
        .await
        .unwrap();
    let original: Vec<_> = original
        .into_iter()
        .filter(|d| d.sequence <= backed_up)
        .collect();
    assert_eq!(
        original.len() as u64,
        backed_up - 1,
        "all but the pruned one"
    );
    assert_eq!(
        copy, original,
        "every delivery byte-identical, same sequences"
    );
    // The tombstone came along: the pruned bulletin is still a duplicate.
    let mut c2 = member(restored.addr, &reader, &ca).await;
    let again = c2.publish(&gone).await.unwrap();
    assert!(again.duplicate && again.sequence == 1, "{again:?}");
    // The durable cursor came along: the reader resumes after 2.
    let mut sub = c2.subscribe(open("soc", resume())).await.unwrap();
    let seen = read_deliveries(&mut sub, 1, false, Duration::from_secs(20)).await;
    assert_eq!(seen.subscribed.map(|s| s.cursor), Some(2));
    assert_eq!(seen.seqs[0], 3);
    drop(sub);
    restored.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_foreign_backup_is_refused_and_nothing_is_written() {
    let pki = TestPki::new();
    let opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    let node = TestNode::start(&opts).await;
    let ca = vec![pki.ca_cert()];
    let work = tempfile::tempdir().unwrap();
    let mut c = member(node.addr, &pki.client("uk.ncsc", "a"), &ca).await;
    for i in 0..20 {
        c.publish(&bulletin("uk.ncsc", &format!("b{i}")))
            .await
            .unwrap();
    }
    drop(c);
    // An API token: a backup carries the token register with the store.
    let mut token_args: Vec<String> = [
        "admin", "token", "issue", "--member", "drc", "--name", "misp",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    token_args.extend(conn_args(node.addr, &pki.operator("op"), &pki.ca_cert()));
    let (code, token, err) = run(work.path(), &token_args);
    assert_eq!(code, 0, "{err}");
    assert!(token.trim().starts_with("bcn_"), "{token}");
    let store_dir = node.data.path().join("store");
    let data = node.data.clone();
    let file = work.path().join("good.backup");
    let offline = |out: &Path| -> (i32, String, String) {
        run(
            work.path(),
            &[
                "admin".into(),
                "backup".into(),
                "--data-dir".into(),
                store_dir.display().to_string(),
                "--out".into(),
                out.display().to_string(),
            ],
        )
    };
    // A running node's directory is locked: the command says what to do.
    let (code, _, err) = offline(&file);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("back it up over the API"), "{err}");
    assert!(!file.exists() && !work.path().join("good.backup.partial").exists());
    node.stop().await;
    let (code, out, err) = offline(&file);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backup of head 20"), "{out}");
    drop(data);
    let good = std::fs::read(&file).unwrap();

    let restore_with = |bytes: &[u8],
                        opts: &NodeOptions,
                        extra: &[&str]|
     -> (i32, String, String, PathBuf, TempDirGuard) {
        let (data, config) = TestNode::prepare(opts);
        let f = data.path().join("in.backup");
        std::fs::write(&f, bytes).unwrap();
        let mut args: Vec<String> = vec![
            "admin".into(),
            "restore".into(),
            f.display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let (code, out, err) = run(work.path(), &args);
        (
            code,
            out,
            err,
            data.path().join("store"),
            TempDirGuard(data),
        )
    };
    let restore = |bytes: &[u8], opts: &NodeOptions| restore_with(bytes, opts, &[]);
    let here = NodeOptions::new(&pki, pki.node("drc", "hub-2"));
    let mid = good.len() / 2;
    let mut flipped = good.clone();
    flipped[mid] ^= 0x40;
    let mut digest = good.clone();
    let last = digest.len() - 1;
    digest[last] ^= 1;
    let mut appended = good.clone();
    appended.extend_from_slice(b"more");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("cut in half", good[..mid].to_vec(), "truncated"),
        (
            "one byte short",
            good[..good.len() - 1].to_vec(),
            "truncated",
        ),
        ("a byte changed", flipped, "damaged"),
        ("the digest changed", digest, "SHA-256 does not match"),
        ("bytes appended", appended, "bytes follow the manifest"),
        (
            "not a backup",
            b"hello, this is not a backup".to_vec(),
            "not a Beacon backup",
        ),
    ];
    for (what, bytes, says) in cases {
        let (code, out, err, target, guard) = restore(&bytes, &here);
        assert_eq!(code, 1, "{what}: {out}{err}");
        assert!(err.contains(says), "{what}: {err}");
        assert!(err.contains("nothing was written"), "{what}: {err}");
        assert!(!target.exists(), "{what}: the target stays absent");
        let leftovers: Vec<_> = std::fs::read_dir(guard.0.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
            .collect();
        assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
    }
    // Signed under another alliance's CA: refused by signature.
    let other = TestPki::new();
    let foreign = NodeOptions::new(&other, other.node("drc", "hub-9"));
    let (code, _, err, target, _g) = restore(&good, &foreign);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("record 1 of the backup does not verify"),
        "{err}"
    );
    assert!(!target.exists());
    // A backup of a drc node, restored with the config of another member's
    // node: refused, naming both, unless forced.
    let elsewhere = NodeOptions::new(&pki, pki.node("uk.ncsc", "london-1"));
    let (code, _, err, target, _g) = restore(&good, &elsewhere);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("node/drc/hub-1")
            && err.contains("node/uk.ncsc/london-1")
            && err.contains("--force"),
        "{err}"
    );
    assert!(!target.exists());
    let (code, out, err, _, _g) = restore_with(&good, &elsewhere, &["--force"]);
    assert_eq!(code, 0, "forced: {out}{err}");
    assert!(out.contains("note: the backup is of node"), "{out}");
    // Never over a store; into an empty directory, yes.
    let (data, config) = TestNode::prepare(&here);
    let target = data.path().join("store");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("keep-me"), b"x").unwrap();
    let args = |f: &Path| -> Vec<String> {
        vec![
            "admin".into(),
            "restore".into(),
            f.display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ]
    };
    let (code, _, err) = run(work.path(), &args(&file));
    assert_eq!(code, 1);
    assert!(err.contains("is not empty"), "{err}");
    assert!(target.join("keep-me").exists());
    std::fs::remove_file(target.join("keep-me")).unwrap();
    let (code, out, err) = run(work.path(), &args(&file));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("restored head 20") && out.contains("20 bulletins verified"),
        "{out}"
    );
    // The API tokens came with it, readable by the node's user only.
    assert!(
        out.contains("API tokens (tokens.json) were restored"),
        "{out}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(target.join("tokens.json"))
            .expect("tokens.json restored")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let restored = TestNode::start_prepared(data, config).await;
    let copy = list_all(restored.addr, &pki.client("uk.ncsc", "b"), &ca)
        .await
        .unwrap();
    assert_eq!(copy.len(), 20);
    restored.stop().await;
}

/// Keeps a temporary directory alive.
struct TempDirGuard(tempfile::TempDir);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_and_delete_durable_subscriptions_and_prune_revoked_ones() {
    let pki = TestPki::new();
    let node = TestNode::start(&NodeOptions::new(&pki, pki.node("drc", "hub-1"))).await;
    let ca = vec![pki.ca_cert()];
    let op = pki.operator("alice");
    let work = tempfile::tempdir().unwrap();
    let alive = pki.client("uk.ncsc", "alive");
    let leaver = pki.client("fr.anssi", "leaver");
    let mut a = member(node.addr, &alive, &ca).await;
    a.publish(&bulletin("uk.ncsc", "one")).await.unwrap();
    // Two durable readers with cursors; the first stays connected.
    let mut open_sub = a.subscribe(open("feed", earliest())).await.unwrap();
    read_deliveries(&mut open_sub, 1, true, Duration::from_secs(20)).await;
    open_sub.ack(1).await.unwrap();
    wait_cursor(node.addr, &op, &ca, &alive.identity, "feed", 1).await;
    let mut l = member(node.addr, &leaver, &ca).await;
    let mut s = l.subscribe(open("archive", earliest())).await.unwrap();
    read_deliveries(&mut s, 1, true, Duration::from_secs(20)).await;
    s.ack(1).await.unwrap();
    s.finish(Duration::from_secs(10)).await.unwrap();
    drop(l);

    let admin = |args: &[&str]| {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(conn_args(node.addr, &op, &pki.ca_cert()));
        run(work.path(), &v)
    };
    let (code, out, err) = admin(&["admin", "subscriptions", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&alive.identity) && out.contains("\"feed\""),
        "{out}"
    );
    assert!(
        out.contains(&leaver.identity) && out.contains("\"archive\""),
        "{out}"
    );

    // Deleting an open one ends its stream, and its cursor is gone.
    let (code, out, err) = admin(&[
        "admin",
        "subscriptions",
        "delete",
        "--identity",
        &alive.identity,
        "--name",
        "feed",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cursor was 1"), "{out}");
    let end = stream_end(&mut open_sub, Duration::from_secs(10)).await;
    let e = end.expect_err("the stream ends with an error");
    assert!(e.to_string().contains("deleted by an operator"), "{e}");
    assert_eq!(
        cursor_of(node.addr, &op, &ca, &alive.identity, "feed").await,
        None
    );
    let mut again = a.subscribe(open("feed", resume())).await.unwrap();
    let seen = read_deliveries(&mut again, 1, true, Duration::from_secs(20)).await;
    assert_eq!(
        seen.subscribed.map(|s| s.cursor),
        Some(0),
        "it starts afresh"
    );
    drop(again);
    let (code, _, err) = admin(&[
        "admin",
        "subscriptions",
        "delete",
        "--identity",
        &alive.identity,
        "--name",
        "nothing",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no durable subscription"), "{err}");

    // The leaver's certificate is revoked: its cursor can be pruned.
    pki.revoke(&leaver);
    let ca_dir = pki.path().join("ca").display().to_string();
    let (code, out, err) = admin(&[
        "admin",
        "subscriptions",
        "prune-revoked",
        "--ca-dir",
        &ca_dir,
        "--dry-run",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("would delete") && out.contains("1 durable subscriptions"),
        "{out}"
    );
    assert_eq!(
        cursor_of(node.addr, &op, &ca, &leaver.identity, "archive").await,
        Some(1)
    );
    let (code, out, err) = admin(&[
        "admin",
        "subscriptions",
        "prune-revoked",
        "--ca-dir",
        &ca_dir,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&leaver.identity), "{out}");
    assert!(!out.contains(&alive.identity), "{out}");
    assert_eq!(
        cursor_of(node.addr, &op, &ca, &leaver.identity, "archive").await,
        None
    );
    node.stop().await;
}

/// An operator cannot issue a token for a member the node does not know
/// (a typo stands for no one), and a publisher naming an audience group the
/// node does not define is warned that no one here reads through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_for_unknown_members_are_refused_and_unknown_groups_are_warned_of() {
    let alliance = Alliance::new(&["uk.ncsc", "fr.anssi"]);
    let mut opts = alliance.options(alliance.node("uk.ncsc", "london-1"), &[]);
    opts.extra
        .push_str("[groups]\nfive-eyes = [\"uk.ncsc\", \"us.cisa\"]\n");
    let node = TestNode::start(&opts).await;
    let work = tempfile::tempdir().unwrap();
    let admin = |member: &str| {
        let mut args: Vec<String> = [
            "admin", "token", "issue", "--member", member, "--name", "misp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(conn_args(
            node.addr,
            &alliance.op,
            &beacon::tools::pki::Ca::cert_path(alliance.ca_dir("uk.ncsc")),
        ));
        run(work.path(), &args)
    };
    let (code, out, err) = admin("fr.ansi");
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("does not know member fr.ansi"), "{err}");
    for known in ["fr.anssi", "us.cisa", "uk.ncsc"] {
        let (code, out, err) = admin(known);
        assert_eq!(code, 0, "{known}: {out}{err}");
    }

    let client = alliance.client("uk.ncsc", "analyst");
    let mut c = member(node.addr, &client, &alliance.ca).await;
    let mut b = bulletin("uk.ncsc", "for a group");
    b.tlp = beacon::domain::bulletin::codec::tlp_to_i32(beacon::domain::bulletin::Tlp::Amber);
    b.audience.groups = vec!["five-eyes".into(), "nato".into()];
    let p = c.publish(&b).await.unwrap();
    assert_eq!(p.warnings.len(), 1, "{p:?}");
    assert!(
        p.warnings[0].contains("nato") && !p.warnings[0].contains("five-eyes"),
        "{p:?}"
    );
    node.stop().await;
}
