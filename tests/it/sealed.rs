//! Sealed TLP:RED end to end, through the `beacon` binary and real nodes:
//! recipient keys announced and passed from node to node, a bulletin sealed
//! by its publisher's client, carried by a relay outside its audience
//! (`carry_sealed = "any"`) whose files hold none of its text, opened only
//! by its recipients' keys (online and offline), and refused where a node
//! requires sealing.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const TITLE: &str = "SEALED-TITLE-MARKER campaign against the vote";
const BODY: &str = "SEALED-BODY-MARKER a source at risk";

/// A child node listening on `addr`, its config written from `opts`.
fn node_at(opts: &NodeOptions, addr: SocketAddr) -> (tempfile::TempDir, ChildNode) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("beacon.toml"),
        opts.config_text(&dir.path().join("store"), &addr.to_string()),
    )
    .expect("write config");
    let node = ChildNode::spawn(dir.path(), &["daemon", "--config", "beacon.toml"], addr);
    (dir, node)
}

/// `beacon ARGS` as `files` against the node at `addr`.
fn cli(
    alliance: &Alliance,
    addr: SocketAddr,
    node_id: Option<&str>,
    files: &CertFiles,
    dir: &Path,
    args: &[&str],
) -> (i32, String, String) {
    let ca: Vec<String> = alliance
        .ca
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut c = Command::new(beacon_bin());
    c.args(args)
        .current_dir(dir)
        .env_remove("BEACON_CLIENT_CONFIG")
        .env("BEACON_NODE", addr.to_string())
        .env("BEACON_CERT", &files.cert)
        .env("BEACON_KEY", &files.key)
        .env("BEACON_CA", ca.join(","));
    match node_id {
        Some(id) => c.env("BEACON_NODE_ID", id),
        None => c.env_remove("BEACON_NODE_ID"),
    };
    let out = c.output().expect("run beacon");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(r: (i32, String, String), what: &str) -> String {
    assert_eq!(r.0, 0, "{what}: {}{}", r.1, r.2);
    r.1
}

/// `files`' client makes a recipient key of `member` in `file` and
/// announces it at the node at `addr`.
fn make_key(
    alliance: &Alliance,
    addr: SocketAddr,
    pin: Option<&str>,
    files: &CertFiles,
    dir: &Path,
    member: &str,
    file: &str,
) {
    let run = |args: &[&str]| cli(alliance, addr, pin, files, dir, args);
    ok(
        run(&["keys", "generate", "--member", member, "--out", file]),
        "keys generate",
    );
    ok(
        run(&["keys", "announce", "--key-file", file]),
        "keys announce",
    );
}

/// `beacon publish` of a TLP:RED espionage bulletin to fr.anssi with the
/// test's title and body, then `extra`.
fn red_to_fr<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "publish",
        "--kind",
        "espionage",
        "--severity",
        "high",
        "--tlp",
        "TLP:RED",
        "--to",
        "fr.anssi",
        "--title",
        TITLE,
        "--summary",
        "s",
        "--body",
        BODY,
        "--json",
    ];
    args.extend_from_slice(extra);
    args
}

/// A key file's public key.
fn public_key(file: &Path) -> Vec<u8> {
    let k: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("key file")).expect("JSON");
    beacon::domain::keys::unhex(k["public_key"].as_str().expect("public key")).expect("hex")
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Whether the log of the node whose directory is `dir` holds `needle`:
/// its store's files (the embedded engine), or its records in the
/// database (PostgreSQL).
fn store_holds(dir: &Path, needle: &str) -> bool {
    let store = dir.join("store");
    if on_postgres() {
        let n = psql(&format!(
            "SELECT count(*) FROM {}.records WHERE position(convert_to('{needle}', 'UTF8') in body) > 0",
            pg_schema(&store)
        ));
        return n.trim() != "0";
    }
    files_hold(&store, needle.as_bytes()).is_some()
}

/// Whether any file under `dir` holds `needle`.
fn files_hold(dir: &Path, needle: &[u8]) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(found) = files_hold(&p, needle) {
                return Some(found);
            }
        } else if let Ok(bytes) = std::fs::read(&p) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return Some(p);
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_red_crosses_a_relay_outside_its_audience_and_only_its_recipients_open_it() {
    let alliance = Alliance::new(&["uk.ncsc", "fr.anssi", "de.bsi"]);
    let (a_london, a_berlin, a_paris) = (free_addr(), free_addr(), free_addr());
    let (london, berlin, paris) = (
        alliance.node("uk.ncsc", "london"),
        alliance.node("de.bsi", "berlin"),
        alliance.node("fr.anssi", "paris"),
    );
    let fast = "key_sync_interval = \"300ms\"\n".to_owned();
    // london ⇄ berlin ⇄ paris: berlin, of a member outside the audience,
    // carries sealed bulletins for the others; london requires RED sealed.
    let mut o_london = alliance.options(london.clone(), &[(a_berlin, berlin.identity.clone())]);
    o_london.timing = fast.clone();
    o_london
        .extra
        .push_str("[policy]\nrequire_sealed = [\"TLP:RED\"]\n\n");
    let mut o_berlin = alliance.options(
        berlin.clone(),
        &[
            (a_london, london.identity.clone()),
            (a_paris, paris.identity.clone()),
        ],
    );
    o_berlin.timing = fast.clone();
    o_berlin
        .extra
        .push_str("[federation]\ncarry_sealed = \"any\"\n\n");
    let mut o_paris = alliance.options(paris.clone(), &[(a_berlin, berlin.identity.clone())]);
    o_paris.timing = fast;
    let (d_london, n_london) = node_at(&o_london, a_london);
    let (d_berlin, mut n_berlin) = node_at(&o_berlin, a_berlin);
    let (d_paris, mut n_paris) = node_at(&o_paris, a_paris);

    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let uk = alliance.client("uk.ncsc", "analyst");
    let fr = alliance.client("fr.anssi", "analyst");
    let de = alliance.client("de.bsi", "analyst");
    // Each member's client makes a key and announces it to its own node.
    for (files, member, addr, file) in [
        (&uk, "uk.ncsc", a_london, "uk.key"),
        (&fr, "fr.anssi", a_paris, "fr.key"),
        (&de, "de.bsi", a_berlin, "de.key"),
    ] {
        make_key(&alliance, addr, None, files, w, member, file);
    }
    // fr.anssi's key reaches london through berlin.
    let known = wait_until(Duration::from_secs(30), || async {
        let out = cli(
            &alliance,
            a_london,
            None,
            &uk,
            w,
            &["keys", "list", "--member", "fr.anssi", "--json"],
        );
        json_lines(&out.1).iter().any(|k| k["state"] == "valid")
    })
    .await;
    assert!(
        known.is_some(),
        "fr.anssi's key reaches london: {}",
        n_london.log()
    );

    let red = |extra: &[&str]| cli(&alliance, a_london, None, &uk, w, &red_to_fr(extra));
    // Unsealed RED is refused where sealing is required, saying how.
    let mut plain = bulletin("uk.ncsc", "unsealed red");
    plain.tlp = beacon::domain::bulletin::codec::tlp_to_i32(beacon::domain::bulletin::Tlp::Red);
    plain.audience.members = vec!["fr.anssi".into()];
    let env = signer(&uk).sign(plain.to_bytes()).expect("sign");
    match member(a_london, &uk, &alliance.ca)
        .await
        .publish_envelope(&env)
        .await
    {
        Err(beacon::net::client::ClientError::Rpc(s)) => {
            assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
            assert!(
                s.message().contains("--seal"),
                "the refusal says to seal: {s:?}"
            );
        }
        other => panic!("an unsealed RED bulletin is refused: {other:?}"),
    }
    // Sealed to a member without a key: nothing is sent, the member named.
    let nokey = cli(
        &alliance,
        a_london,
        None,
        &uk,
        w,
        &[
            "publish",
            "--kind",
            "espionage",
            "--severity",
            "high",
            "--tlp",
            "TLP:RED",
            "--to",
            "it.acn",
            "--title",
            "t",
            "--summary",
            "s",
            "--seal",
        ],
    );
    assert_ne!(nokey.0, 0);
    assert!(nokey.2.contains("it.acn"), "{nokey:?}");

    // The CLI seals RED by itself where the node requires it.
    let auto = red(&[]);
    assert!(auto.2.contains("sealing the TLP:RED"), "{auto:?}");
    let published = json_lines(&ok(auto, "sealed publish"));
    let id = published[0]["id"].as_str().expect("id").to_owned();

    // paris (a recipient's node) gets it through berlin; its reader opens it.
    let opened = wait_until(Duration::from_secs(60), || async {
        let out = cli(
            &alliance,
            a_paris,
            None,
            &fr,
            w,
            &["list", "--json", "--decrypt-key", "fr.key"],
        );
        json_lines(&out.1)
            .iter()
            .any(|d| d["bulletin"]["title"] == TITLE && d["verified"] == true)
    })
    .await;
    assert!(
        opened.is_some(),
        "paris's reader opens it: {}\n{}",
        n_paris.log(),
        n_berlin.log()
    );
    // Without the key, the reader sees only the clear header.
    let closed = json_lines(&ok(
        cli(&alliance, a_paris, None, &fr, w, &["list", "--json"]),
        "list",
    ));
    assert_eq!(closed.len(), 1);
    assert!(closed[0].get("bulletin").is_none(), "{:?}", closed[0]);
    assert!(closed[0]["sealed"]
        .as_str()
        .unwrap_or("")
        .contains("SEALED"));
    // The publisher's member opens it too (it is always a recipient).
    let got = ok(
        cli(
            &alliance,
            a_london,
            None,
            &uk,
            w,
            &["get", &id, "--json", "--decrypt-key", "uk.key"],
        ),
        "get at london",
    );
    assert_eq!(json_lines(&got)[0]["bulletin"]["body"], BODY);
    // de.bsi is not a recipient: its reader at berlin is not served it,
    // although berlin holds it (to pass it on).
    let at_berlin = cli(
        &alliance,
        a_berlin,
        None,
        &de,
        w,
        &["list", "--json", "--decrypt-key", "de.key"],
    );
    assert_eq!(json_lines(&ok(at_berlin, "list at berlin")).len(), 0);
    let held = status(a_berlin, &alliance.op, &alliance.ca)
        .await
        .and_then(|s| s.store)
        .map(|s| s.bulletins);
    assert_eq!(held, Some(1), "berlin carries it");

    // Its STIX is made on the recipient's side, once opened.
    let stix = ok(
        cli(
            &alliance,
            a_paris,
            None,
            &fr,
            w,
            &["export", &id, "--stix", "--decrypt-key", "fr.key"],
        ),
        "export --stix",
    );
    assert!(
        stix.contains(TITLE) && stix.contains("\"type\": \"bundle\""),
        "{stix}"
    );
    let unopened = cli(&alliance, a_paris, None, &fr, w, &["export", &id, "--stix"]);
    assert_ne!(
        unopened.0, 0,
        "no STIX of a sealed bulletin without its key"
    );
    // Offline: the export opens with fr.anssi's key, not with de.bsi's.
    ok(
        cli(
            &alliance,
            a_paris,
            None,
            &fr,
            w,
            &["export", &id, "--output", "sealed.json"],
        ),
        "export",
    );
    let ca: Vec<String> = alliance
        .ca
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let open = |key: &str| {
        cli(
            &alliance,
            a_paris,
            None,
            &fr,
            w,
            &[
                "open",
                "sealed.json",
                "--decrypt-key",
                key,
                "--ca",
                &ca.join(","),
                "--out",
                "inner.json",
            ],
        )
    };
    let o = ok(open("fr.key"), "open");
    assert!(o.contains(TITLE), "{o}");
    // The inner envelope verifies on its own, as any signed bulletin.
    ok(
        cli(
            &alliance,
            a_paris,
            None,
            &fr,
            w,
            &["verify", "inner.json", "--ca", &ca.join(",")],
        ),
        "verify inner",
    );
    let wrong = open("de.key");
    assert_ne!(wrong.0, 0);
    assert!(
        wrong.2.contains("not a recipient") || wrong.2.contains("none of the given keys"),
        "{wrong:?}"
    );

    // fr.anssi revokes its key (at paris); london hears of it through
    // berlin, and refuses a bulletin still sealed to it, naming the key —
    // while a client fetching keys finds none left to seal to.
    let fr_key: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.join("fr.key")).expect("key file"))
            .expect("JSON");
    let fr_key_id = fr_key["key_id"].as_str().expect("key id").to_owned();
    ok(
        cli(
            &alliance,
            a_paris,
            None,
            &fr,
            w,
            &[
                "keys",
                "revoke",
                "--key-id",
                &fr_key_id,
                "--reason",
                "key compromise",
            ],
        ),
        "keys revoke",
    );
    let revoked = wait_until(Duration::from_secs(30), || async {
        let out = cli(
            &alliance,
            a_london,
            None,
            &uk,
            w,
            &["keys", "list", "--member", "fr.anssi", "--all", "--json"],
        );
        json_lines(&out.1).iter().any(|k| k["state"] == "revoked")
    })
    .await;
    assert!(
        revoked.is_some(),
        "the revocation reaches london: {}",
        n_london.log()
    );
    let recipients = [("uk.ncsc", "uk.key"), ("fr.anssi", "fr.key")].map(|(m, file)| {
        beacon::domain::sealed::RecipientKey {
            member: m.to_owned(),
            suite: beacon::domain::hpke::Suite::P256Sha256Aes128Gcm,
            public: public_key(&w.join(file)),
        }
    });
    let uk_signer = signer(&uk);
    let mut late = bulletin("uk.ncsc", "sealed to a revoked key");
    late.tlp = beacon::domain::bulletin::codec::tlp_to_i32(beacon::domain::bulletin::Tlp::Red);
    late.audience.members = vec!["fr.anssi".into()];
    let inner = uk_signer.sign(late.to_bytes()).expect("sign");
    let outer = beacon::domain::sealed::seal(&uk_signer, &inner, &recipients, false).expect("seal");
    let refused = member(a_london, &uk, &alliance.ca)
        .await
        .publish_envelope(&outer)
        .await;
    match refused {
        Err(beacon::net::client::ClientError::Rpc(s)) => {
            assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
            assert!(
                s.message().contains(&fr_key_id) && s.message().contains("revoked"),
                "{s:?}"
            );
        }
        other => panic!("a bulletin sealed to a revoked key is refused: {other:?}"),
    }
    let none = red(&["--seal"]);
    assert_ne!(none.0, 0);
    assert!(none.2.contains("fr.anssi"), "{none:?}");

    // No node's files hold the text: stopped, every file is read.
    for (dir, node) in [(&d_berlin, &mut n_berlin), (&d_paris, &mut n_paris)] {
        node.signal(nix::sys::signal::Signal::SIGTERM);
        node.wait(Duration::from_secs(30));
        // The scan reads the store: the clear header's id is there.
        assert!(
            store_holds(dir.path(), &id),
            "the store holds the sealed bulletin's id"
        );
        for marker in ["SEALED-TITLE-MARKER", "SEALED-BODY-MARKER"] {
            assert_eq!(
                files_hold(dir.path(), marker.as_bytes()),
                None,
                "a node's files hold {marker}"
            );
            assert!(
                !store_holds(dir.path(), marker),
                "a node's store holds {marker}"
            );
        }
    }
    drop(n_london);
    drop(d_london);
}

/// The outside check, `tests/interop/python/sealed.py` (pyca `cryptography`'s
/// HPKE), with the interpreter `python_with` finds.
fn sealed_py(python: &str, dir: &Path, args: &[&str]) -> (i32, String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/python/sealed.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run sealed.py");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A refusal the script made and said (not a crash of the script).
fn refused_by_python(r: &(i32, String, String)) -> bool {
    r.0 == 1
        && serde_json::from_str::<serde_json::Value>(r.1.trim())
            .is_ok_and(|v| v["opened"] == false && v["error"].is_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_opens_what_beacon_seals_and_beacon_opens_what_python_seals() {
    let Some(python) = python_with(
        "grpc_tools, cryptography.hazmat.primitives.hpke",
        "pip install -r examples/python/requirements.txt -r tests/interop/requirements.txt",
    ) else {
        return;
    };
    let alliance = Alliance::new(&["uk.ncsc", "fr.anssi"]);
    let addr = free_addr();
    let london = alliance.node("uk.ncsc", "london");
    let (_d, _node) = node_at(&alliance.options(london.clone(), &[]), addr);
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let uk = alliance.client("uk.ncsc", "analyst");
    let fr = alliance.client("fr.anssi", "analyst");
    let ca: Vec<String> = alliance
        .ca
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    // Both members' keys, announced at london (fr.anssi's client pins
    // another member's node).
    for (files, member, file, pin) in [
        (&uk, "uk.ncsc", "uk.key", None),
        (&fr, "fr.anssi", "fr.key", Some(london.identity.as_str())),
    ] {
        make_key(&alliance, addr, pin, files, w, member, file);
    }

    // Beacon seals; Python opens (and refuses a wrong key or an altered file).
    let published = json_lines(&ok(
        cli(&alliance, addr, None, &uk, w, &red_to_fr(&["--seal"])),
        "sealed publish",
    ));
    let id = published[0]["id"].as_str().expect("id").to_owned();
    ok(
        cli(
            &alliance,
            addr,
            None,
            &uk,
            w,
            &["export", &id, "--output", "by-beacon.json"],
        ),
        "export",
    );
    let mut py_ca = Vec::new();
    for c in &ca {
        py_ca.extend(["--ca", c.as_str()]);
    }
    let open_py = |file: &str, key: &str| {
        let mut args = vec!["open", "--envelope", file, "--key", key];
        args.extend(py_ca.iter().copied());
        sealed_py(&python, w, &args)
    };
    let opened = ok(open_py("by-beacon.json", "fr.key"), "Python opens Beacon's");
    let v: serde_json::Value = serde_json::from_str(opened.trim()).expect("JSON");
    assert_eq!(
        (v["title"].as_str(), v["body"].as_str()),
        (Some(TITLE), Some(BODY))
    );
    ok(
        open_py("by-beacon.json", "uk.key"),
        "the publisher's member opens it too",
    );
    let text = std::fs::read_to_string(w.join("by-beacon.json")).expect("read");
    let mut doc: serde_json::Value = serde_json::from_str(&text).expect("DSSE JSON");
    let payload = doc["payload"].as_str().expect("payload").to_owned();
    // One character of the payload changed: the outer signature fails.
    let flipped = format!(
        "{}{}",
        if payload.starts_with('A') { 'B' } else { 'A' },
        &payload[1..]
    );
    doc["payload"] = flipped.into();
    std::fs::write(w.join("altered.json"), doc.to_string()).expect("write");
    let r = open_py("altered.json", "fr.key");
    assert!(
        refused_by_python(&r),
        "Python refuses an altered envelope: {r:?}"
    );

    // Python seals; Beacon opens — and refuses each tampered one, as
    // Python's own opener does.
    let seal_py = |out: &str, tamper: Option<&str>| {
        let mut args = vec![
            "seal",
            "--cert",
            uk.cert.to_str().expect("path"),
            "--key",
            uk.key.to_str().expect("path"),
            "--member",
            "uk.ncsc",
            "--recipient",
            "uk.key",
            "--recipient",
            "fr.key",
            "--to",
            "fr.anssi",
            "--title",
            "sealed by Python",
            "--body",
            BODY,
            "--out",
            out,
        ];
        if let Some(t) = tamper {
            args.extend(["--tamper", t]);
        }
        ok(sealed_py(&python, w, &args), "Python seals");
    };
    let open_beacon = |file: &str| {
        cli(
            &alliance,
            addr,
            None,
            &fr,
            w,
            &[
                "open",
                file,
                "--decrypt-key",
                "fr.key",
                "--ca",
                &ca.join(","),
            ],
        )
    };
    seal_py("by-python.json", None);
    let o = ok(open_beacon("by-python.json"), "Beacon opens Python's");
    assert!(o.contains("sealed by Python"), "{o}");
    ok(open_py("by-python.json", "fr.key"), "Python opens its own");
    for tamper in [
        "ciphertext",
        "wrap",
        "header-id",
        "commitment",
        "inner-signature",
        "inner-disagrees",
    ] {
        let file = format!("tampered-{tamper}.json");
        seal_py(&file, Some(tamper));
        let r = open_beacon(&file);
        assert!(
            r.0 == 1 && r.2.contains("does not open"),
            "Beacon opens one with its {tamper} tampered: {r:?}"
        );
        let r = open_py(&file, "fr.key");
        assert!(
            refused_by_python(&r),
            "Python opens one with its {tamper} tampered: {r:?}"
        );
    }
}
