//! The client commands end to end, through the `beacon` binary against a real node.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// Runs `beacon ARGS` as `files` against the world's node; (code, stdout, stderr).
fn run(w: &World, files: &CertFiles, dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = command(w, files, dir, args).output().expect("run beacon");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn command(w: &World, files: &CertFiles, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(beacon_bin());
    c.args(args)
        .current_dir(dir)
        .env_remove("BEACON_CLIENT_CONFIG")
        .env("BEACON_NODE", w.node.addr.to_string())
        .env("BEACON_CERT", &files.cert)
        .env("BEACON_KEY", &files.key)
        .env("BEACON_CA", w.pki.ca_cert())
        // The clients here are of other members than the node (drc), so
        // they pin it, as a client reaching another member's node must.
        .env("BEACON_NODE_ID", &w.node_id)
        .env_remove("BEACON_NODE_IDENTITY");
    c
}

/// `beacon publish` from flags: a low advisory marked `tlp`, no audience.
fn publish_flags(w: &World, files: &CertFiles, dir: &Path, tlp: &str) -> (i32, String, String) {
    run(
        w,
        files,
        dir,
        &[
            "publish",
            "--kind",
            "advisory",
            "--severity",
            "low",
            "--tlp",
            tlp,
            "--title",
            "t",
            "--summary",
            "s",
        ],
    )
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

const TWO: &str = r#"
- kind: influence_operation
  severity: high
  tlp: TLP:AMBER
  audience: {members: [de.bsi]}
  title: Bot network amplifying smears against a candidate
  summary: 400 accounts created in one week
  topics: [elections, social-media]
  indicators:
    - {type: domain, value: smear-news.example}
- kind: advisory
  severity: low
  tlp: TLP:CLEAR
  title: Guidance for polling-station staff
  summary: How to report suspicious calls
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_from_a_yaml_file_then_list_verifies_each_signature() {
    let w = world().await;
    let files = w.pki.client("fr.anssi", "analyst");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("b.yaml"), TWO).expect("write");
    std::fs::write(
        dir.path().join("bundle.json"),
        r#"{"type": "bundle", "id": "bundle--5d0092c5", "objects": []}"#,
    )
    .expect("write");
    let (code, out, err) = run(
        &w,
        &files,
        dir.path(),
        &["publish", "--file", "b.yaml", "--attach", "bundle.json"],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("published ") && lines[0].ends_with(" seq 1"),
        "{out}"
    );
    assert!(lines[1].ends_with(" seq 2"), "{out}");

    let (code, out, err) = run(&w, &files, dir.path(), &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r["verified"], true, "{r}");
        assert_eq!(r["signer"], files.identity.as_str());
        assert_eq!(
            r["bulletin"]["attachment"]["media_type"],
            "application/stix+json;version=2.1"
        );
    }
    assert_eq!(rows[0]["bulletin"]["tlp"], "TLP:AMBER");
    assert_eq!(rows[0]["bulletin"]["audience"]["members"][0], "de.bsi");
    assert_eq!(
        rows[0]["bulletin"]["indicators"][0]["value"],
        "smear-news.example"
    );

    // Human output: severity and TLP up front, and the signer.
    let (code, out, _) = run(&w, &files, dir.path(), &["list", "--tlp", "TLP:CLEAR"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("LOW TLP:CLEAR fr.anssi [advisory]"), "{out}");
    assert!(out.contains(&format!("✓ {}", files.identity)), "{out}");

    // `get` shows the whole bulletin, not only the line `list` shows.
    let id = rows[0]["bulletin"]["id"].as_str().unwrap().to_owned();
    let (code, out, err) = run(&w, &files, dir.path(), &["get", &id]);
    assert_eq!(code, 0, "{err}");
    for says in [
        "Bot network amplifying smears",
        "summary:",
        "400 accounts created in one week",
        "audience:",
        "members de.bsi",
        "topics:",
        "elections, social-media",
        "indicators:",
        "domain=smear-news.example",
        "attachment:",
        &format!("✓ {}", files.identity),
    ] {
        assert!(out.contains(says), "{says}: {out}");
    }
    w.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_precise_and_leave_nothing_behind() {
    let w = world().await;
    let files = w.pki.client("fr.anssi", "analyst");
    let dir = tempfile::tempdir().expect("tempdir");
    // TLP:RED without recipients is refused before anything is sent, with
    // the reason (the node refuses it too, for clients that do not check).
    let (code, _, err) = publish_flags(&w, &files, dir.path(), "TLP:RED");
    assert_eq!(code, 1);
    assert!(
        err.contains("nothing was sent") && err.contains("TLP:RED must name"),
        "{err}"
    );
    // A batch is all or nothing, and every problem of every document is
    // said at once, naming the document and the field.
    std::fs::write(
        dir.path().join("batch.yaml"),
        "- {kind: advisory, severity: low, tlp: TLP:CLEAR, title: fine, summary: s}\n\
         - {kind: advisory, severity: low, tlp: TLP:RED, title: red alone, summary: s}\n\
         - {kind: advisory, severity: low, tlp: TLP:CLEAR, title: bad values, summary: s,\n   \
            indicators: [{type: ipv4, value: 999.1.1.1}, {type: sha256, value: abc}, {type: phone, value: '+44 20'}]}\n",
    )
    .expect("write");
    let (code, _, err) = run(&w, &files, dir.path(), &["publish", "--file", "batch.yaml"]);
    assert_eq!(code, 1, "{err}");
    for says in [
        "nothing was sent",
        "bulletin 2 of 3 (\"red alone\")",
        "TLP:RED must name",
        "bulletin 3 of 3 (\"bad values\")",
        "indicator 1 (ipv4=999.1.1.1): not an IPv4 address",
        "indicator 2 (sha256=abc): a SHA-256 is 64 hex digits",
    ] {
        assert!(err.contains(says), "{says}: {err}");
    }
    assert!(
        !err.contains("phone"),
        "other types are taken as written: {err}"
    );
    assert!(!err.contains("bulletin 1 of 3"), "{err}");
    // The node holds new publishes to the same rules (a client that does
    // not check is told by it).
    let mut c = member(w.node.addr, &files, &w.ca).await;
    let mut b = bulletin("fr.anssi", "unchecked");
    b.indicators = vec![beacon::domain::bulletin::Indicator {
        kind: "ipv4".into(),
        value: "999.1.1.1".into(),
        ..Default::default()
    }];
    let e = c.publish(&b).await.expect_err("refused by the node");
    assert!(
        e.to_string().contains("INVALID_ARGUMENT") && e.to_string().contains("not an IPv4 address"),
        "{e}"
    );
    // A document with an unknown field is refused before anything is sent.
    std::fs::write(
        dir.path().join("bad.json"),
        r#"[{"kind":"advisory","severity":"low","tlp":"TLP:CLEAR","title":"ok","summary":"ok"},
            {"kind":"advisory","severity":"low","tlp":"TLP:CLEAR","title":"t","summary":"s","colour":"red"}]"#,
    )
    .expect("write");
    let (code, _, err) = run(&w, &files, dir.path(), &["publish", "--file", "bad.json"]);
    assert_eq!(code, 1);
    assert!(err.contains("colour"), "{err}");
    // A value that is not a TLP 2.0 label is named.
    let (code, _, err) = publish_flags(&w, &files, dir.path(), "TLP:WHITE");
    assert_eq!(code, 1);
    assert!(err.contains("TLP:WHITE"), "{err}");
    assert_eq!(w.head().await, 0, "nothing was stored");
    // A missing setting is named, with where to give it.
    let out = command(&w, &files, dir.path(), &["list"])
        .env_remove("BEACON_NODE")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("node address") && err.contains("BEACON_NODE"),
        "{err}"
    );
    w.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscription_resumes_after_ctrl_c_without_gap_or_repeat() {
    let w = world().await;
    let files = w.pki.client("fr.anssi", "analyst");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut publisher = member(w.node.addr, &files, &w.ca).await;
    for i in 0..5 {
        publisher
            .publish(&bulletin("fr.anssi", &format!("first batch {i}")))
            .await
            .expect("publish");
    }
    let mut child = command(
        &w,
        &files,
        dir.path(),
        &["subscribe", "--name", "soc-feed", "--json"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn subscribe");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the subscription writes the backlog");
        seen.push(line);
    }
    // Ctrl-C: the subscriber acknowledges what it wrote and stops cleanly.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    seen.extend(rx.try_iter());
    assert_eq!(status.code(), Some(0), "clean exit on Ctrl-C");
    let seqs: Vec<u64> = json_lines(&seen.join("\n"))
        .iter()
        .map(|v| v["sequence"].as_u64().expect("sequence"))
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);

    for i in 0..3 {
        publisher
            .publish(&bulletin("fr.anssi", &format!("second batch {i}")))
            .await
            .expect("publish");
    }
    // The next run resumes right after the last line written.
    let (code, out, err) = run(
        &w,
        &files,
        dir.path(),
        &["subscribe", "--name", "soc-feed", "--json", "--count", "3"],
    );
    assert_eq!(code, 0, "{err}");
    let seqs: Vec<u64> = json_lines(&out)
        .iter()
        .map(|v| v["sequence"].as_u64().expect("sequence"))
        .collect();
    assert_eq!(seqs, vec![6, 7, 8]);
    w.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_verifies_offline_and_tampering_is_caught() {
    let w = world().await;
    let files = w.pki.client("fr.anssi", "analyst");
    let dir = tempfile::tempdir().expect("tempdir");
    let b = bulletin("fr.anssi", "exported");
    member(w.node.addr, &files, &w.ca)
        .await
        .publish(&b)
        .await
        .expect("publish");
    let (code, _, err) = run(&w, &files, dir.path(), &["export", &b.id, "-o", "e.json"]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(dir.path().join("e.json")).expect("export");
    let dsse: serde_json::Value = serde_json::from_str(&text).expect("DSSE JSON");
    assert_eq!(dsse["payloadType"], beacon::domain::bulletin::PAYLOAD_TYPE);
    assert!(dsse["signatures"][0]["sig"].is_string());

    // Offline: only the CA certificate, no node.
    let verify = |file: &str, ca: &Path| {
        let out = Command::new(beacon_bin())
            .args(["verify", file, "--ca", ca.to_str().expect("path")])
            .current_dir(dir.path())
            .env_remove("BEACON_CA")
            .output()
            .expect("verify");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = verify("e.json", &w.pki.ca_cert());
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&b.id) && out.contains(&files.identity),
        "{out}"
    );

    let mut tampered = dsse.clone();
    let payload = tampered["payload"].as_str().expect("payload").to_owned();
    let mut bytes = base64_decode(&payload);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    tampered["payload"] = serde_json::json!(base64_encode(&bytes));
    std::fs::write(dir.path().join("t.json"), tampered.to_string()).expect("write");
    let (code, _, err) = verify("t.json", &w.pki.ca_cert());
    assert_eq!(code, Some(1));
    assert!(err.contains("does not verify"), "{err}");

    let stranger = w.pki.other_ca("stranger", "*");
    let (code, _, err) = verify("e.json", &beacon::tools::pki::Ca::cert_path(&stranger));
    assert_eq!(code, Some(1), "{err}");

    // Importing the export again is idempotent.
    let (code, out, err) = run(&w, &files, dir.path(), &["import", "e.json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("already held"), "{out}");
    w.node.stop().await;
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}
