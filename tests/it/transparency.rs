//! The node's log, provable from outside: signed checkpoints, inclusion and
//! consistency proofs checked with the tree math a member runs, the CLI's
//! checks (`beacon log`), and a node that never signs a smaller or a
//! different tree under one log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use beacon::base::proto::v1 as pb;
use beacon::base::proto::v1::transparency_client::TransparencyClient;
use beacon::tlog::merkle;
use beacon::tlog::note::{open_checkpoint, Checkpoint, Verifier};

use crate::common::*;

/// The node of these tests (clients of another member pin it).
const HUB: &str = "spiffe://alliance.example/node/drc/hub-1";

/// Checkpoints every 50 ms.
fn options(pki: &TestPki) -> NodeOptions {
    let mut o = NodeOptions::new(pki, pki.node("drc", "hub-1"));
    o.extra = "[transparency]\ncheckpoint_interval_ms = 50\n".into();
    o
}

/// One node (checkpoints every 50 ms), its CA, and an analyst of another
/// member.
struct Solo {
    pki: TestPki,
    node: TestNode,
    ca: Vec<PathBuf>,
    files: CertFiles,
}

async fn solo() -> Solo {
    let pki = TestPki::new();
    let node = TestNode::start(&options(&pki)).await;
    let ca = vec![pki.ca_cert()];
    let files = pki.client("fr.anssi", "analyst");
    Solo {
        pki,
        node,
        ca,
        files,
    }
}

async fn transparency(
    node: &TestNode,
    files: &CertFiles,
    ca: &[PathBuf],
) -> TransparencyClient<tonic::transport::Channel> {
    TransparencyClient::new(dial(node.addr, files, ca).await.expect("dial"))
}

/// The latest checkpoint once it covers `size` entries, checked with the
/// key the node announces.
async fn checkpoint_at_least(
    t: &mut TransparencyClient<tonic::transport::Channel>,
    size: u64,
) -> (Checkpoint, pb::GetCheckpointResponse) {
    let start = std::time::Instant::now();
    loop {
        let r = t
            .get_checkpoint(pb::GetCheckpointRequest {})
            .await
            .expect("get checkpoint")
            .into_inner();
        let mut latest = 0;
        if !r.checkpoint.is_empty() {
            let key: Verifier = r.log_key.parse().expect("log key");
            let (c, _) = open_checkpoint(&r.checkpoint, &key).expect("signed by the log key");
            if c.size >= size {
                return (c, r);
            }
            latest = c.size;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no checkpoint of {size} entries within 20 s (latest {latest})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hashes(v: &[Vec<u8>]) -> Vec<merkle::Hash> {
    v.iter()
        .map(|h| h.as_slice().try_into().expect("32 bytes"))
        .collect()
}

async fn publish_n(
    addr: std::net::SocketAddr,
    files: &CertFiles,
    ca: &[PathBuf],
    n: usize,
    tag: &str,
) -> Vec<String> {
    let mut c = member(addr, files, ca).await;
    let mut ids = Vec::new();
    for i in 0..n {
        let b = bulletin("fr.anssi", &format!("{tag} {i}"));
        c.publish(&b).await.expect("publish");
        ids.push(b.id);
    }
    ids
}

fn log_cmd(
    dir: &Path,
    addr: std::net::SocketAddr,
    files: &CertFiles,
    ca: &Path,
    args: &[&str],
) -> (i32, String, String) {
    let mut all: Vec<String> = vec!["log".into()];
    all.extend(args.iter().map(|s| s.to_string()));
    all.extend(conn_args(addr, files, ca));
    all.extend(["--node-identity".to_string(), HUB.to_string()]);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    beacon(dir, &refs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bulletin_is_proven_in_signed_checkpoints_that_extend_each_other() {
    let Solo {
        pki: _pki,
        node,
        ca,
        files,
    } = solo().await;
    let mut t = transparency(&node, &files, &ca).await;

    publish_n(node.addr, &files, &ca, 7, "first").await;
    let (first, r) = checkpoint_at_least(&mut t, 7).await;
    assert_eq!(first.size, 7);
    let (prefix, id) = first.origin.rsplit_once('/').expect("origin");
    assert_eq!(
        prefix, "alliance.example/node/drc/hub-1/log",
        "{}",
        first.origin
    );
    assert_eq!(
        id.len(),
        32,
        "the log id closes the origin: {}",
        first.origin
    );
    assert_eq!(r.origin, first.origin);
    assert_eq!(r.announcements.len(), 1, "one log, announced once");

    publish_n(node.addr, &files, &ca, 13, "second").await;
    let (second, _) = checkpoint_at_least(&mut t, 20).await;
    assert_eq!(second.size, 20);

    // Every sequence is in the tree of the second checkpoint, and the leaf
    // is the one the node describes.
    for seq in 1..=20u64 {
        let p = t
            .prove_inclusion(pb::ProveInclusionRequest {
                sequence: seq,
                tree_size: 0,
            })
            .await
            .expect("prove inclusion")
            .into_inner();
        assert_eq!((p.tree_size, p.index), (20, seq - 1));
        assert!(
            !p.checkpoint.is_empty(),
            "the latest checkpoint comes with a proof at its size"
        );
        let leaf = merkle::leaf_hash(&p.leaf_entry);
        merkle::verify_inclusion(seq - 1, 20, &leaf, &hashes(&p.hashes), &second.root)
            .unwrap_or_else(|e| panic!("sequence {seq}: {e}"));
        // Another sequence's leaf does not verify in its place.
        let other = merkle::leaf_hash(&[p.leaf_entry.clone(), vec![0]].concat());
        assert!(
            merkle::verify_inclusion(seq - 1, 20, &other, &hashes(&p.hashes), &second.root)
                .is_err()
        );
    }
    // The second extends the first.
    let c = t
        .prove_consistency(pb::ProveConsistencyRequest {
            old_size: 7,
            new_size: 20,
        })
        .await
        .expect("prove consistency")
        .into_inner();
    merkle::verify_consistency(7, 20, &first.root, &second.root, &hashes(&c.hashes))
        .expect("consistent");
    // Beyond the committed head: a clear refusal.
    let e = t
        .prove_inclusion(pb::ProveInclusionRequest {
            sequence: 1,
            tree_size: 1_000,
        })
        .await
        .expect_err("beyond the head");
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    let e = t
        .prove_inclusion(pb::ProveInclusionRequest {
            sequence: 21,
            tree_size: 20,
        })
        .await
        .expect_err("beyond the tree");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // The checkpoint survives a restart: the node takes up the same log
    // and signs on from it.
    let node = node.restart().await;
    let mut t = transparency(&node, &files, &ca).await;
    publish_n(node.addr, &files, &ca, 1, "after restart").await;
    let (third, r) = checkpoint_at_least(&mut t, 21).await;
    assert_eq!(third.origin, second.origin);
    assert_eq!(r.announcements.len(), 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_checks_checkpoints_inclusion_and_consistency() {
    let Solo {
        pki: _pki,
        node,
        ca,
        files,
    } = solo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = publish_n(node.addr, &files, &ca, 5, "cli").await;
    let mut t = transparency(&node, &files, &ca).await;
    checkpoint_at_least(&mut t, 5).await;

    let (code, out, err) = log_cmd(dir.path(), node.addr, &files, &ca[0], &["checkpoint"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("checkpoint: 5 entries"), "{out}");
    assert!(out.contains("announced"), "{out}");

    // Inclusion of an exported bulletin, and refusal of another envelope.
    let mut export = vec![
        "export".to_string(),
        ids[2].clone(),
        "-o".into(),
        "e.json".into(),
    ];
    export.extend(conn_args(node.addr, &files, &ca[0]));
    export.extend(["--node-identity".to_string(), HUB.to_string()]);
    let refs: Vec<&str> = export.iter().map(String::as_str).collect();
    let (code, _, err) = beacon(dir.path(), &refs);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = log_cmd(
        dir.path(),
        node.addr,
        &files,
        &ca[0],
        &["prove", "3", "--envelope", "e.json"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("verified") && out.contains("the envelope given"),
        "{out}"
    );
    let (code, _, err) = log_cmd(
        dir.path(),
        node.addr,
        &files,
        &ca[0],
        &["prove", "2", "--envelope", "e.json"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("another envelope"), "{err}");

    // Audits: the first keeps the checkpoint, the next checks consistency.
    let (code, out, err) = log_cmd(
        dir.path(),
        node.addr,
        &files,
        &ca[0],
        &["audit", "--state", "hub.checkpoint"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("first audit"), "{out}");
    assert!(
        out.contains("the 5 bulletins you may read in it are included"),
        "{out}"
    );
    publish_n(node.addr, &files, &ca, 4, "more").await;
    checkpoint_at_least(&mut t, 9).await;
    let (code, out, err) = log_cmd(
        dir.path(),
        node.addr,
        &files,
        &ca[0],
        &["audit", "--state", "hub.checkpoint"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("consistent: 5 entries when you last audited it, 9 now")
            && out.contains("the 4 bulletins you may read since are included"),
        "{out}"
    );

    // A rebuilt node: a new log, announced as replacing the old one at its
    // last checkpoint, which the audit accepts as declared.
    let node = node.restart_wiped().await;
    publish_n(node.addr, &files, &ca, 2, "rebuilt").await;
    let mut t = transparency(&node, &files, &ca).await;
    let (c, r) = checkpoint_at_least(&mut t, 2).await;
    assert_eq!(r.announcements.len(), 2, "the new log is announced");
    // `beacon audit`, the command's short form.
    let mut args: Vec<String> = ["audit", "--state", "hub.checkpoint"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(conn_args(node.addr, &files, &ca[0]));
    args.extend(["--node-identity".to_string(), HUB.to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = beacon(dir.path(), &refs);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("declared at 9 entries"), "{out}");
    assert!(out.contains(&c.origin), "{out}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_put_back_to_an_older_copy_is_never_signed_again() {
    let Solo {
        pki,
        node,
        ca,
        files,
    } = solo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    publish_n(node.addr, &files, &ca, 3, "early").await;
    let mut t = transparency(&node, &files, &ca).await;
    checkpoint_at_least(&mut t, 3).await;
    // An operator's copy of the stopped store, taken at 3 entries.
    let copy = tempfile::tempdir().expect("tempdir");
    let node = node
        .restart_after(|store| copy_dir(store, &copy.path().join("store")))
        .await;
    publish_n(node.addr, &files, &ca, 4, "late").await;
    let mut t = transparency(&node, &files, &ca).await;
    checkpoint_at_least(&mut t, 7).await;
    let (code, _, err) = log_cmd(
        dir.path(),
        node.addr,
        &files,
        &ca[0],
        &["audit", "--state", "hub.checkpoint"],
    );
    assert_eq!(code, 0, "{err}");
    // The store is put back to the copy: the same log, three entries.
    let node = node
        .restart_after(|store| {
            std::fs::remove_dir_all(store).expect("remove store");
            copy_dir(&copy.path().join("store"), store);
        })
        .await;
    let mut t = transparency(&node, &files, &ca).await;
    let r = t
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .expect("get checkpoint")
        .into_inner();
    assert!(
        r.checkpoint.is_empty(),
        "no checkpoint is served of a log put back"
    );
    // The node says why, in its status.
    let op = pki.operator("ops");
    let status = transparency_status(node.addr, &op, &ca).await;
    assert!(
        status.refused.contains("signed a checkpoint of 7"),
        "{}",
        status.refused
    );
    assert_eq!(status.checkpoint_size, 0);
    // Publishing goes on, but nothing of this log is signed again: the
    // signer stopped for it when it refused, before the head passed 7.
    publish_n(node.addr, &files, &ca, 5, "after").await;
    let r = t
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .expect("get checkpoint")
        .into_inner();
    assert!(
        r.checkpoint.is_empty(),
        "a tree of 8 in place of the signed 7 must never be signed"
    );
    let (code, _, err) = log_cmd(
        dir.path(),
        node.addr,
        &files,
        &ca[0],
        &["audit", "--state", "hub.checkpoint"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("no checkpoint"), "{err}");
    node.stop().await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// Go's sumdb `note` and `tlog` check what the node signs and proves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sumdb_verifies_checkpoints_and_proofs() {
    let work = tempfile::tempdir().expect("tempdir");
    let Some(verifier) = go_verifier(work.path()) else {
        return;
    };
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let Solo {
        pki: _pki,
        node,
        ca,
        files,
    } = solo().await;
    let mut t = transparency(&node, &files, &ca).await;
    let mut olds = Vec::new();
    for (n, want) in [(1usize, 1u64), (4, 5), (8, 13), (24, 37)] {
        publish_n(node.addr, &files, &ca, n, "go").await;
        let (c, _) = checkpoint_at_least(&mut t, want).await;
        olds.push((c.size, c.root));
    }
    let (latest, r) = checkpoint_at_least(&mut t, 37).await;
    let size = latest.size;
    let mut inclusion = Vec::new();
    for seq in 1..=size {
        let p = t
            .prove_inclusion(pb::ProveInclusionRequest {
                sequence: seq,
                tree_size: size,
            })
            .await
            .expect("prove")
            .into_inner();
        inclusion.push(serde_json::json!({
            "size": size, "index": p.index, "leaf_entry": b64(&p.leaf_entry),
            "hashes": p.hashes.iter().map(|h| b64(h)).collect::<Vec<_>>(),
        }));
    }
    let mut consistency = Vec::new();
    for (old, root) in olds.iter().filter(|(s, _)| *s < size) {
        let p = t
            .prove_consistency(pb::ProveConsistencyRequest {
                old_size: *old,
                new_size: size,
            })
            .await
            .expect("prove")
            .into_inner();
        consistency.push(serde_json::json!({
            "old": old, "old_root": b64(root), "new": size,
            "hashes": p.hashes.iter().map(|h| b64(h)).collect::<Vec<_>>(),
        }));
    }
    // Two receipts from publishes that asked for one.
    let mut receipts = Vec::new();
    let mut c = member(node.addr, &files, &ca).await;
    for i in 0..2 {
        let (p, _) = c
            .publish_with_receipt(&bulletin("fr.anssi", &format!("receipt {i}")))
            .await
            .expect("publish");
        assert!(!p.receipt.is_empty(), "no receipt: {:?}", p.warnings);
        receipts.push(p.receipt);
    }
    let mut tampered = inclusion[5].clone();
    tampered["index"] = serde_json::json!(6);
    let input = serde_json::json!({
        "log_key": r.log_key, "checkpoint": r.checkpoint, "cosigners": [],
        "inclusion": inclusion, "consistency": consistency, "tampered": tampered,
        "receipts": receipts,
    });
    let path = work.path().join("input.json");
    std::fs::write(&path, serde_json::to_vec(&input).expect("json")).expect("write");
    let out = std::process::Command::new(&verifier)
        .arg(&path)
        .output()
        .expect("run the Go verifier");
    assert!(
        out.status.success(),
        "Go refused: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("at {size} entries, {size} inclusion")),
        "{said}"
    );
    node.stop().await;
}

/// Fast checkpoints and witnessing, for the witness tests.
fn witnessing(
    alliance: &Alliance,
    node: CertFiles,
    peers: &[(std::net::SocketAddr, String)],
) -> NodeOptions {
    let mut o = alliance.options(node, peers);
    o.extra
        .push_str("[transparency]\ncheckpoint_interval_ms = 50\nwitness_interval_ms = 100\n");
    o
}

async fn transparency_status(
    addr: std::net::SocketAddr,
    op: &CertFiles,
    ca: &[PathBuf],
) -> pb::TransparencyStatus {
    let mut admin = pb::admin_client::AdminClient::new(dial(addr, op, ca).await.expect("dial"));
    admin
        .status(pb::StatusRequest::default())
        .await
        .expect("status")
        .into_inner()
        .transparency
        .expect("transparency status")
}

/// The witness key `witness` announced, checked against the alliance's CAs.
async fn witness_key_of(
    addr: std::net::SocketAddr,
    files: &CertFiles,
    ca: &[PathBuf],
    bundle: &beacon::trust::TrustBundle,
) -> Verifier {
    let mut t = TransparencyClient::new(dial(addr, files, ca).await.expect("dial"));
    let r = t
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .expect("checkpoint")
        .into_inner();
    let a = beacon::node::transparency::verify_announcement(
        r.announcements.last().expect("an announcement"),
        bundle,
        std::time::SystemTime::now(),
    )
    .expect("the announcement verifies");
    assert_eq!(a.witness_key, r.witness_key);
    a.witness_key.parse().expect("witness key")
}

/// A's checkpoint of at least `size` entries cosigned by `witness`.
async fn cosigned_at_least(
    t: &mut TransparencyClient<tonic::transport::Channel>,
    size: u64,
    witness: &Verifier,
) -> (Checkpoint, String) {
    let start = std::time::Instant::now();
    loop {
        let r = t
            .get_checkpoint(pb::GetCheckpointRequest {})
            .await
            .expect("checkpoint")
            .into_inner();
        if !r.cosigned.is_empty() {
            let key: Verifier = r.log_key.parse().expect("log key");
            let (c, n) = open_checkpoint(&r.cosigned, &key).expect("signed by the log key");
            if c.size >= size
                && n.verified_by(witness)
                    .expect("a valid cosignature")
                    .is_some()
            {
                return (c, r.cosigned);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no checkpoint of {size} cosigned within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_cosign_each_other_and_a_hub_that_rewrites_its_log_is_caught() {
    let alliance = Alliance::new(&["uk.ncsc", "fr.anssi"]);
    let hub_files = alliance.node("uk.ncsc", "hub");
    let hub_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hub_addr = hub_listener.local_addr().expect("addr");
    let hub =
        TestNode::start_on(&witnessing(&alliance, hub_files.clone(), &[]), hub_listener).await;
    // The witness pulls from the hub, and so witnesses it.
    let w_files = alliance.node("fr.anssi", "paris");
    let witness = TestNode::start(&witnessing(
        &alliance,
        w_files.clone(),
        &[(hub_addr, hub_files.identity.clone())],
    ))
    .await;
    let client = alliance.client("uk.ncsc", "analyst");
    let bundle = alliance.bundle();
    let wkey = witness_key_of(witness.addr, &alliance.op, &alliance.ca, &bundle).await;
    let mut t = TransparencyClient::new(dial(hub_addr, &client, &alliance.ca).await.expect("dial"));

    let publish = |n: usize, tag: &'static str| {
        let (client, ca) = (client.clone(), alliance.ca.clone());
        async move {
            let mut c = member(hub_addr, &client, &ca).await;
            for i in 0..n {
                c.publish(&bulletin("uk.ncsc", &format!("{tag} {i}")))
                    .await
                    .expect("publish");
            }
        }
    };
    publish(3, "first").await;
    let (c3, note3) = cosigned_at_least(&mut t, 3, &wkey).await;
    assert_eq!(c3.size, 3);
    let status = transparency_status(witness.addr, &alliance.op, &alliance.ca).await;
    assert!(status.alarms.is_empty(), "{:?}", status.alarms);

    // Go checks the cosignature too.
    let work = tempfile::tempdir().expect("tempdir");
    if let Some(verifier) = go_verifier(work.path()) {
        let r = t
            .get_checkpoint(pb::GetCheckpointRequest {})
            .await
            .expect("checkpoint")
            .into_inner();
        let input = serde_json::json!({
            "log_key": r.log_key, "checkpoint": note3, "cosigners": [wkey.to_string()],
            "inclusion": [], "consistency": [],
        });
        let path = work.path().join("cosigned.json");
        std::fs::write(&path, serde_json::to_vec(&input).expect("json")).expect("write");
        let out = std::process::Command::new(&verifier)
            .arg(&path)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "Go refused the cosigned checkpoint: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Receipts: one from the publish itself (its checkpoint not cosigned
    // yet), one made once a witness cosigned, each checked offline.
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, env) = member(hub_addr, &client, &alliance.ca)
        .await
        .publish_with_receipt(&bulletin("uk.ncsc", "receipted"))
        .await
        .expect("publish");
    assert_eq!(p.sequence, 4);
    std::fs::write(
        dir.path().join("e.json"),
        beacon::interop::document::envelope_to_dsse(&env),
    )
    .expect("write");
    std::fs::write(dir.path().join("at-publish.tlog-proof"), &p.receipt).expect("write");
    let log_key = t
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .expect("checkpoint")
        .into_inner()
        .log_key;
    let ca_args: Vec<String> = alliance
        .ca
        .iter()
        .flat_map(|c| ["--ca".to_string(), c.display().to_string()])
        .collect();
    let verify = |receipt: &str, witnesses: &[String], quorum: Option<usize>| {
        let mut args = vec![
            "verify".to_string(),
            "e.json".into(),
            "--receipt".into(),
            receipt.into(),
            "--log-key".into(),
            log_key.clone(),
        ];
        args.extend(ca_args.iter().cloned());
        for w in witnesses {
            args.extend(["--witness".to_string(), w.clone()]);
        }
        if let Some(q) = quorum {
            args.extend(["--quorum".to_string(), q.to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        beacon(dir.path(), &refs)
    };
    let (code, out, err) = verify("at-publish.tlog-proof", &[], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("receipt verified: sequence 4"), "{out}");
    let (code, _, err) = verify("at-publish.tlog-proof", &[wkey.to_string()], None);
    assert_ne!(code, 0, "no witness had cosigned the checkpoint at publish");
    assert!(
        err.contains("0 of the witnesses named cosigned it, 1 needed"),
        "{err}"
    );
    cosigned_at_least(&mut t, 4, &wkey).await;
    let mut prove: Vec<String> = ["log", "prove", "4", "--out", "cosigned.tlog-proof"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    prove.extend(conn_args(hub_addr, &client, &alliance.ca[0]));
    prove.extend(ca_args.iter().cloned());
    let refs: Vec<&str> = prove.iter().map(String::as_str).collect();
    let (code, _, err) = beacon(dir.path(), &refs);
    assert_eq!(code, 0, "{err}");
    // `beacon log checkpoint` names the witnesses it could check.
    let mut cp: Vec<String> = ["log", "checkpoint"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    cp.extend(conn_args(hub_addr, &client, &alliance.ca[0]));
    cp.extend(ca_args.iter().cloned());
    let refs: Vec<&str> = cp.iter().map(String::as_str).collect();
    let (code, out, err) = beacon(dir.path(), &refs);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("cosigned by 1 witness(es) whose keys your CAs vouch for: spiffe://alliance.example/node/fr.anssi/paris at"),
        "{out}"
    );
    let (code, out, err) = verify("cosigned.tlog-proof", &[wkey.to_string()], Some(1));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("cosigned by 1 of the 1 witnesses named"),
        "{out}"
    );
    // Another envelope is refused.
    let other = member(hub_addr, &client, &alliance.ca)
        .await
        .publish_with_receipt(&bulletin("uk.ncsc", "other"))
        .await
        .expect("publish")
        .1;
    std::fs::write(
        dir.path().join("e.json"),
        beacon::interop::document::envelope_to_dsse(&other),
    )
    .expect("write");
    let (code, _, err) = verify("cosigned.tlog-proof", &[], None);
    assert_ne!(code, 0);
    assert!(err.contains("another envelope"), "{err}");

    // An operator's copy of the hub's store at 3 entries; 4 more go in and
    // are witnessed.
    let copy = tempfile::tempdir().expect("tempdir");
    let hub = hub
        .restart_after(|store| copy_dir(store, &copy.path().join("store")))
        .await;
    publish(4, "second").await;
    let mut t = TransparencyClient::new(dial(hub.addr, &client, &alliance.ca).await.expect("dial"));
    cosigned_at_least(&mut t, 7, &wkey).await;
    wait_until(Duration::from_secs(20), || async {
        transparency_status(witness.addr, &alliance.op, &alliance.ca)
            .await
            .witnessed
            .iter()
            .any(|w| w.size >= 7)
    })
    .await
    .expect("the witness holds the checkpoint of 7");

    // The hub's store is put back to the copy, and its own record of what it
    // signed removed (tracks covered); other bulletins take the places of
    // the four dropped.
    let hub = hub
        .restart_after(|store| {
            std::fs::remove_dir_all(store).expect("remove store");
            copy_dir(&copy.path().join("store"), store);
            let tlog = store.with_file_name("store.tlog");
            std::fs::remove_file(tlog.join("checkpoint")).expect("remove the checkpoint");
            let _ = std::fs::remove_file(tlog.join("cosigned"));
        })
        .await;
    publish(6, "rewritten").await;
    let mut t = TransparencyClient::new(dial(hub.addr, &client, &alliance.ca).await.expect("dial"));
    checkpoint_at_least(&mut t, 9).await;
    // The witness refuses to cosign it and says why, keeping both checkpoints.
    wait_until(Duration::from_secs(20), || async {
        !transparency_status(witness.addr, &alliance.op, &alliance.ca)
            .await
            .alarms
            .is_empty()
    })
    .await
    .expect("the witness raises an alarm");
    let status = transparency_status(witness.addr, &alliance.op, &alliance.ca).await;
    let alarm = &status.alarms[0];
    assert!(
        alarm.contains("split view") || alarm.contains("rollback"),
        "{alarm}"
    );
    let evidence = alarm
        .rsplit_once("evidence: ")
        .expect("evidence named")
        .1
        .trim_end_matches(')');
    let text = std::fs::read_to_string(evidence).expect("evidence file");
    assert!(
        text.contains("== the checkpoint this node held ==")
            && text.contains("== the checkpoint the peer showed ==")
            && text.matches('\u{2014}').count() >= 2,
        "{text}"
    );
    // The operator sees it in `beacon status`.
    let mut args = vec!["status".to_string()];
    args.extend(conn_args(witness.addr, &alliance.op, &alliance.ca[0]));
    // Every member's CA: the witness's certificate is from its own.
    args.extend(ca_args.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = beacon(dir.path(), &refs);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ALARM: split view") || out.contains("ALARM: rollback"),
        "{out}"
    );
    assert!(
        out.contains("witnessed spiffe://alliance.example/node/uk.ncsc/hub"),
        "{out}"
    );
    // No cosignature of the rewritten log.
    let r = t
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .expect("checkpoint")
        .into_inner();
    if !r.cosigned.is_empty() {
        let key: Verifier = r.log_key.parse().expect("log key");
        let (c, _) = open_checkpoint(&r.cosigned, &key).expect("signed");
        assert!(
            c.size <= 3,
            "the witness cosigned the rewritten log at {}",
            c.size
        );
    }
    witness.stop().await;
    hub.stop().await;
}

/// A subscriber that asks for checkpoints gets them in its stream, and can
/// prove what it received against them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_checkpoints_that_cover_what_it_received() {
    use pb::subscribe_response::Msg;
    let Solo {
        pki: _pki,
        node,
        ca,
        files,
    } = solo().await;
    publish_n(node.addr, &files, &ca, 6, "streamed").await;
    let mut s = settings(&files, &ca);
    s.node = Some(node.addr.to_string());
    s.node_identity = Some(HUB.parse().expect("identity"));
    let mut reader = beacon::net::client::BeaconReader::connect(&s)
        .await
        .expect("reader");
    let mut o = open("", earliest());
    o.checkpoints = true;
    let mut sub = reader.subscribe(o).await.expect("subscribe");
    let mut t = transparency(&node, &files, &ca).await;
    let log_key: Verifier = t
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .expect("checkpoint")
        .into_inner()
        .log_key
        .parse()
        .expect("log key");
    let mut received = Vec::new();
    let mut covering = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while received.len() < 6 || covering.is_none() {
        let ev = tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("deliveries and a checkpoint within 20 s")
            .expect("stream ok")
            .expect("stream open");
        match ev {
            Msg::Delivery(d) => received.push(d),
            Msg::Checkpoint(c) => {
                let (cp, _) = open_checkpoint(&c.note, &log_key).expect("signed by the log key");
                assert_eq!((cp.size, cp.origin.as_str()), (c.size, c.origin.as_str()));
                if cp.size >= 6 {
                    covering = Some(cp);
                }
            }
            _ => {}
        }
    }
    let cp = covering.expect("a checkpoint");
    for d in &received {
        let entry = beacon::net::client::delivered_leaf_entry(d).expect("leaf entry");
        let p = t
            .prove_inclusion(pb::ProveInclusionRequest {
                sequence: d.sequence,
                tree_size: cp.size,
            })
            .await
            .expect("prove")
            .into_inner();
        merkle::verify_inclusion(
            d.sequence - 1,
            cp.size,
            &merkle::leaf_hash(&entry),
            &hashes(&p.hashes),
            &cp.root,
        )
        .unwrap_or_else(|e| panic!("sequence {} as received: {e}", d.sequence));
    }
    node.stop().await;
}

/// A publisher that signs two different bulletins under one id and gives
/// them to two nodes is caught: the node that sees the second keeps both
/// as evidence and tells its peer; both say so in Get and in their status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_equivocates_is_caught_by_both_nodes() {
    let alliance = Alliance::new(&["uk.ncsc", "fr.anssi"]);
    let hub_files = alliance.node("uk.ncsc", "hub");
    let hub_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hub_addr = hub_listener.local_addr().expect("addr");
    let hub = TestNode::start_on(&alliance.options(hub_files.clone(), &[]), hub_listener).await;
    let paris = TestNode::start(&alliance.options(
        alliance.node("fr.anssi", "paris"),
        &[(hub_addr, hub_files.identity.clone())],
    ))
    .await;
    let client = alliance.client("uk.ncsc", "analyst");
    let signer = signer(&client);
    let first = bulletin("uk.ncsc", "the first version");
    let mut other = first.clone();
    other.title = "another bulletin under the same id".into();
    let e1 = signer.sign(first.to_bytes()).expect("sign");
    let e2 = signer.sign(other.to_bytes()).expect("sign");
    // Paris gets the other one first, then the hub the first: Paris's link
    // relays the hub's, which conflicts with the one it holds.
    member(paris.addr, &client, &alliance.ca)
        .await
        .reader
        .publish_envelope(&e2)
        .await
        .expect("publish to paris");
    member(hub_addr, &client, &alliance.ca)
        .await
        .reader
        .publish_envelope(&e1)
        .await
        .expect("publish to the hub");
    for (name, addr) in [("paris", paris.addr), ("the hub", hub_addr)] {
        wait_until(Duration::from_secs(20), || async {
            !transparency_status(addr, &alliance.op, &alliance.ca)
                .await
                .equivocations
                .is_empty()
        })
        .await
        .unwrap_or_else(|| panic!("{name} holds no evidence"));
        let status = transparency_status(addr, &alliance.op, &alliance.ca).await;
        assert_eq!(status.equivocations, vec![format!("uk.ncsc {}", first.id)]);
        // Get names the conflict, with both envelopes.
        let mut c = beacon::net::client::BulletinsClient::new(
            dial(addr, &client, &alliance.ca).await.expect("dial"),
        );
        let r = c
            .get(pb::GetRequest {
                id: first.id.clone(),
                publisher: String::new(),
            })
            .await
            .expect("get")
            .into_inner();
        let q = r.equivocation.expect("the id is in conflict");
        assert_eq!(q.envelope_digests.len(), 2, "{name}");
        assert_eq!(q.envelopes.len(), 2, "{name}");
        for env in &q.envelopes {
            let e = beacon::interop::document::envelope_from_dsse(env).expect("DSSE");
            beacon::domain::bulletin::verify_envelope(
                &e,
                &alliance.bundle(),
                std::time::SystemTime::now(),
            )
            .expect("both envelopes verify");
        }
    }
    // A forged report (one envelope twice) is refused.
    let mut t = TransparencyClient::new(
        dial(hub_addr, &alliance.node("fr.anssi", "other"), &alliance.ca)
            .await
            .expect("dial"),
    );
    let dsse = beacon::interop::document::envelope_to_dsse(&e1);
    let e = t
        .report_equivocation(pb::ReportEquivocationRequest {
            envelopes: vec![dsse.clone(), dsse],
        })
        .await
        .expect_err("not evidence");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    paris.stop().await;
    hub.stop().await;
}

/// A node's certificate renewed without a restart: the log is announced
/// again with the new certificate, so its announcement verifies for as long
/// as the node's certificate does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_announces_the_log_again() {
    let pki = TestPki::new();
    let opts = options(&pki);
    let node = TestNode::start(&opts).await;
    let ca = vec![pki.ca_cert()];
    let files = pki.client("fr.anssi", "analyst");
    let mut t = transparency(&node, &files, &ca).await;
    let before = t
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .expect("checkpoint")
        .into_inner();
    assert_eq!(before.announcements.len(), 1);
    // The same identity, a new certificate and key, installed in place.
    let renewed = pki.node("drc", "hub-1");
    for (from, to) in [
        (&renewed.key, &opts.node.key),
        (&renewed.cert, &opts.node.cert),
    ] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).expect("copy");
        std::fs::rename(&tmp, to).expect("rename");
    }
    let bundle = beacon::trust::read_bundle(
        &td(),
        [(ca[0].as_path(), beacon::base::identity::MemberScope::any())],
        std::iter::empty::<&Path>(),
    )
    .expect("bundle");
    let leaf = beacon::trust::read_certs(&renewed.cert).expect("cert")[0].to_vec();
    let announced = wait_until(Duration::from_secs(20), || {
        let mut t = t.clone();
        let leaf = leaf.clone();
        async move {
            let r = t
                .get_checkpoint(pb::GetCheckpointRequest {})
                .await
                .expect("checkpoint")
                .into_inner();
            r.announcements.len() == 2
                && beacon::interop::document::envelope_from_dsse(&r.announcements[1])
                    .ok()
                    .is_some_and(|e| e.signatures[0].cert_chain[0] == leaf)
        }
    })
    .await;
    assert!(
        announced.is_some(),
        "the log was not announced with the renewed certificate"
    );
    let r = t
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .expect("checkpoint")
        .into_inner();
    let a = beacon::node::transparency::verify_announcement(
        &r.announcements[1],
        &bundle,
        std::time::SystemTime::now(),
    )
    .expect("the new announcement verifies");
    assert_eq!(a.origin, r.origin);
    assert!(a.previous.is_none(), "the same log, announced again");
    node.stop().await;
}

/// A node restored from a backup older than its last checkpoint starts a new
/// log, announced as replacing the old one at the size it had signed: it
/// never signs a smaller tree under the old log, and an auditor tells the
/// declared restore from a rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restored_from_an_old_backup_announces_a_new_log() {
    let pki = TestPki::new();
    let node = TestNode::start(&options(&pki)).await;
    let ca = vec![pki.ca_cert()];
    let op = pki.operator("ops");
    let files = pki.client("fr.anssi", "analyst");
    let dir = tempfile::tempdir().expect("tempdir");
    publish_n(node.addr, &files, &ca, 3, "before the backup").await;
    let backup = dir.path().join("node.backup");
    std::fs::write(&backup, backup_bytes(node.addr, &op, &ca).await).expect("write backup");
    publish_n(node.addr, &files, &ca, 4, "after the backup").await;
    let mut t = transparency(&node, &files, &ca).await;
    let (old, _) = checkpoint_at_least(&mut t, 7).await;
    let (code, _, err) = log_cmd(
        dir.path(),
        node.addr,
        &files,
        &ca[0],
        &["audit", "--state", "hub.checkpoint"],
    );
    assert_eq!(code, 0, "{err}");
    let config = node.config_path.clone();
    let node = node
        .restart_after(|store| {
            wipe_store(store);
            let args = [
                "admin",
                "restore",
                backup.to_str().expect("path"),
                "--config",
                config.to_str().expect("path"),
            ];
            let (code, out, err) = beacon(store.parent().expect("parent"), &args);
            assert_eq!(code, 0, "{out}{err}");
        })
        .await;
    let mut t = transparency(&node, &files, &ca).await;
    let (new, r) = checkpoint_at_least(&mut t, 3).await;
    assert_ne!(new.origin, old.origin, "a restored store is a new log");
    assert_eq!(new.size, 3);
    let bundle = beacon::trust::read_bundle(
        &td(),
        [(ca[0].as_path(), beacon::base::identity::MemberScope::any())],
        std::iter::empty::<&Path>(),
    )
    .expect("bundle");
    let a = beacon::node::transparency::verify_announcement(
        r.announcements.last().expect("announced"),
        &bundle,
        std::time::SystemTime::now(),
    )
    .expect("verifies");
    let previous = a.previous.expect("names the log it replaces");
    assert_eq!(
        (previous.origin.as_str(), previous.size),
        (old.origin.as_str(), 7)
    );
    let (code, out, err) = log_cmd(
        dir.path(),
        node.addr,
        &files,
        &ca[0],
        &["audit", "--state", "hub.checkpoint"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("declared at 7 entries; you had seen 7"),
        "{out}"
    );
    node.stop().await;
}

/// A publisher that sends a second, different bulletin under an id the node
/// holds is refused, and the node keeps both as evidence all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_publish_is_refused_and_kept_as_evidence() {
    let Solo {
        pki: _pki,
        node,
        ca,
        files,
    } = solo().await;
    let signer = signer(&files);
    let first = bulletin("fr.anssi", "the first");
    let mut other = first.clone();
    other.title = "something else under the same id".into();
    let mut c = member(node.addr, &files, &ca).await;
    c.reader
        .publish_envelope(&signer.sign(first.to_bytes()).expect("sign"))
        .await
        .expect("publish");
    let e = c
        .reader
        .publish_envelope(&signer.sign(other.to_bytes()).expect("sign"))
        .await
        .expect_err("a conflict");
    assert!(format!("{e}").contains("already exists"), "{e}");
    let mut b = beacon::net::client::BulletinsClient::new(
        dial(node.addr, &files, &ca).await.expect("dial"),
    );
    let r = b
        .get(pb::GetRequest {
            id: first.id.clone(),
            publisher: "fr.anssi".into(),
        })
        .await
        .expect("get")
        .into_inner();
    let q = r.equivocation.expect("kept as evidence");
    assert!(
        q.source.starts_with("published by spiffe://"),
        "{}",
        q.source
    );
    assert_eq!(q.envelopes.len(), 2);
    node.stop().await;
}
