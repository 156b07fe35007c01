//! `beacon ca` end to end through the binary, and the daemon's process life
//! (`beacon daemon`, `beacon dev`, signals).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::*;

fn ok(dir: &std::path::Path, args: &[&str]) -> String {
    let (code, out, err) = beacon(dir, args);
    assert_eq!(code, 0, "beacon {args:?} failed: {err}");
    out
}

/// Runs a command that must fail; returns its one-line error.
fn fails(dir: &std::path::Path, args: &[&str]) -> String {
    let (code, _out, err) = beacon(dir, args);
    assert_ne!(code, 0, "beacon {args:?} should have failed");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "error is one clear line: {err:?}");
    assert!(err.starts_with("beacon: "), "{err}");
    err
}

#[test]
fn ca_lifecycle_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = ok(
        d,
        &[
            "ca",
            "init",
            "--dir",
            "ca",
            "--trust-domain",
            "alliance.example",
            "--name",
            "Alliance CA",
        ],
    );
    assert!(out.contains("created CA"), "{out}");
    let key_mode = std::fs::metadata(d.join("ca/ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600, "CA key must be private");

    let out = ok(
        d,
        &[
            "ca",
            "issue",
            "node",
            "--dir",
            "ca",
            "--member",
            "uk.ncsc",
            "--name",
            "london-1",
            "--ip",
            "127.0.0.1",
            "--dns",
            "node.uk.example",
            "--out",
            "n1",
        ],
    );
    assert!(
        out.contains("spiffe://alliance.example/node/uk.ncsc/london-1"),
        "{out}"
    );
    assert_eq!(
        std::fs::metadata(d.join("n1.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    ok(
        d,
        &[
            "ca", "issue", "client", "--dir", "ca", "--member", "us.cisa", "--name", "soc",
            "--out", "c1",
        ],
    );
    ok(
        d,
        &[
            "ca", "issue", "operator", "--dir", "ca", "--name", "alice", "--out", "op",
        ],
    );
    ok(
        d,
        &[
            "ca",
            "issue",
            "client",
            "--dir",
            "ca",
            "--member",
            "de.bsi",
            "--name",
            "ed",
            "--algorithm",
            "ed25519",
            "--out",
            "c2",
        ],
    );

    let list = ok(d, &["ca", "list", "--dir", "ca"]);
    assert_eq!(list.lines().count(), 5, "header + 4 certificates: {list}");
    assert!(list.contains("spiffe://alliance.example/client/us.cisa/soc"));
    assert!(!list.contains("revoked"));

    let inspect = ok(d, &["ca", "inspect", "n1.pem"]);
    assert!(
        inspect.contains("identity: spiffe://alliance.example/node/uk.ncsc/london-1"),
        "{inspect}"
    );
    assert!(
        inspect.contains("ip:127.0.0.1") && inspect.contains("dns:node.uk.example"),
        "{inspect}"
    );
    assert!(inspect.contains("(valid)"), "{inspect}");

    // Revoke by certificate file, then by serial.
    let out = ok(
        d,
        &[
            "ca",
            "revoke",
            "--dir",
            "ca",
            "--cert",
            "c1.pem",
            "--reason",
            "key-compromise",
        ],
    );
    assert!(out.contains("revoked"), "{out}");
    let json = ok(d, &["ca", "list", "--dir", "ca", "--json"]);
    let index: serde_json::Value = serde_json::from_str(&json).unwrap();
    let serial_of = |ident: &str| {
        index
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["identity"] == ident)
            .unwrap()["serial"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let op_serial = serial_of("spiffe://alliance.example/operator/alice");
    ok(d, &["ca", "revoke", "--dir", "ca", "--serial", &op_serial]);
    let crl = ok(d, &["ca", "inspect", "ca/crl.pem"]);
    assert!(crl.contains("revoked: 2"), "{crl}");
    assert!(crl.contains(&op_serial), "{crl}");
    let list = ok(d, &["ca", "list", "--dir", "ca"]);
    assert_eq!(list.matches("revoked").count(), 2, "{list}");

    // A fresh CRL has a later number.
    let out = ok(d, &["ca", "crl", "--dir", "ca", "--next-update", "2d"]);
    assert!(out.contains("CRL number"), "{out}");
    let crl2 = ok(d, &["ca", "inspect", "ca/crl.pem"]);
    assert!(crl2.contains("revoked: 2"), "{crl2}");
    assert_ne!(crl, crl2);

    // Renewal: a new serial for the same identity.
    let out = ok(
        d,
        &[
            "ca",
            "renew",
            "--dir",
            "ca",
            "--cert",
            "n1.pem",
            "--out",
            "n1-renewed",
        ],
    );
    assert!(
        out.contains("spiffe://alliance.example/node/uk.ncsc/london-1"),
        "{out}"
    );
    let renewed = ok(d, &["ca", "inspect", "n1-renewed.pem"]);
    assert!(
        renewed.contains("ip:127.0.0.1"),
        "renewal keeps the names: {renewed}"
    );
    let err = fails(
        d,
        &[
            "ca", "renew", "--dir", "ca", "--cert", "c1.pem", "--out", "c1-new",
        ],
    );
    assert!(err.contains("revoked"), "{err}");
    // The refusal gives the command that replaces the certificate, and it works.
    let how = err
        .split("beacon ca issue ")
        .nth(1)
        .expect("the command to run instead")
        .trim();
    let mut args = vec!["ca", "issue"];
    args.extend(how.split_whitespace());
    args.extend(["--out", "c1-new"]);
    let out = ok(d, &args);
    assert!(
        out.contains("/client/"),
        "a client certificate again: {out}"
    );
}

#[test]
fn ca_refusals_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let err = fails(
        d,
        &[
            "ca", "issue", "client", "--dir", "nowhere", "--member", "uk.ncsc", "--name", "a",
        ],
    );
    assert!(err.contains("no CA in nowhere"), "{err}");

    ok(
        d,
        &[
            "ca",
            "init",
            "--dir",
            "uk",
            "--trust-domain",
            "alliance.example",
            "--members",
            "uk.*",
        ],
    );
    let err = fails(
        d,
        &[
            "ca",
            "init",
            "--dir",
            "uk",
            "--trust-domain",
            "alliance.example",
        ],
    );
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );

    let err = fails(
        d,
        &[
            "ca", "issue", "client", "--dir", "uk", "--member", "us.cisa", "--name", "a",
        ],
    );
    assert!(
        err.contains("wrong member for this CA") && err.contains("uk.*"),
        "{err}"
    );
    let err = fails(
        d,
        &["ca", "issue", "operator", "--dir", "uk", "--name", "bob"],
    );
    assert!(err.contains("operators"), "{err}");
    let err = fails(
        d,
        &[
            "ca", "issue", "client", "--dir", "uk", "--member", "uk.ncsc", "--name", "bad/name",
        ],
    );
    assert!(err.contains("bad name"), "{err}");
    let err = fails(
        d,
        &[
            "ca", "issue", "client", "--dir", "uk", "--member", "UK.NCSC", "--name", "a",
        ],
    );
    assert!(err.contains("invalid member id"), "{err}");
    let err = fails(
        d,
        &["ca", "init", "--dir", "x", "--trust-domain", "Bad Domain"],
    );
    assert!(err.contains("invalid trust domain"), "{err}");

    ok(
        d,
        &[
            "ca", "issue", "client", "--dir", "uk", "--member", "uk.ncsc", "--name", "a", "--out",
            "a",
        ],
    );
    let before = std::fs::read(d.join("a.pem")).unwrap();
    let err = fails(
        d,
        &[
            "ca", "issue", "client", "--dir", "uk", "--member", "uk.ncsc", "--name", "a", "--out",
            "a",
        ],
    );
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read(d.join("a.pem")).unwrap(),
        before,
        "nothing overwritten"
    );
    ok(
        d,
        &[
            "ca", "issue", "client", "--dir", "uk", "--member", "uk.ncsc", "--name", "a", "--out",
            "a", "--force",
        ],
    );
    assert_ne!(std::fs::read(d.join("a.pem")).unwrap(), before);

    let err = fails(d, &["ca", "revoke", "--dir", "uk", "--serial", "0123abcd"]);
    assert!(err.contains("no certificate with serial"), "{err}");
    let err = fails(
        d,
        &[
            "ca", "revoke", "--dir", "uk", "--serial", "0123abcd", "--reason", "bored",
        ],
    );
    assert!(err.contains("unknown reason"), "{err}");

    // A certificate of another CA is not ours to revoke.
    ok(
        d,
        &[
            "ca",
            "init",
            "--dir",
            "us",
            "--trust-domain",
            "alliance.example",
            "--members",
            "us.*",
        ],
    );
    ok(
        d,
        &[
            "ca", "issue", "client", "--dir", "us", "--member", "us.cisa", "--name", "b", "--out",
            "b",
        ],
    );
    let err = fails(d, &["ca", "revoke", "--dir", "uk", "--cert", "b.pem"]);
    assert!(err.contains("not issued by this CA"), "{err}");
}

#[test]
fn expired_ca_refuses_to_issue() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(
        d,
        &[
            "ca",
            "init",
            "--dir",
            "ca",
            "--trust-domain",
            "alliance.example",
            "--validity",
            "4s",
        ],
    );
    // The CA is valid for 4 s; once that has passed, it must refuse.
    let start = std::time::Instant::now();
    loop {
        let (code, _, err) = beacon(
            d,
            &[
                "ca", "issue", "client", "--dir", "ca", "--member", "uk.ncsc", "--name", "a",
                "--out", "a", "--force",
            ],
        );
        if code != 0 {
            assert!(err.contains("CA expired"), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "an expired CA kept issuing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `beacon status` against the node at `addr`, as (cert, key), trusting `ca`.
fn status(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    cert: &str,
    key: &str,
    ca: &str,
) -> (i32, String, String) {
    beacon(
        dir,
        &[
            "status",
            "--node",
            &addr.to_string(),
            "--cert",
            cert,
            "--key",
            key,
            "--ca",
            ca,
        ],
    )
}

fn write_config(dir: &std::path::Path, listen: std::net::SocketAddr) {
    ok(
        dir,
        &[
            "ca",
            "init",
            "--dir",
            "ca",
            "--trust-domain",
            "alliance.example",
        ],
    );
    ok(
        dir,
        &[
            "ca",
            "issue",
            "node",
            "--dir",
            "ca",
            "--member",
            "uk.ncsc",
            "--name",
            "n1",
            "--ip",
            "127.0.0.1",
            "--out",
            "node",
        ],
    );
    ok(
        dir,
        &[
            "ca", "issue", "operator", "--dir", "ca", "--name", "alice", "--out", "op",
        ],
    );
    std::fs::write(
        dir.join("beacon.toml"),
        format!(
            "[node]\nlisten = \"{listen}\"\ndata_dir = \"store\"\ncert = \"node.pem\"\nkey = \"node.key\"\n\n[[trust]]\nca = \"ca/ca.pem\"\ncrl = \"ca/crl.pem\"\n"
        ),
    )
    .unwrap();
}

#[test]
fn daemon_serves_and_exits_zero_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let addr = free_addr();
    write_config(d, addr);
    let mut node = ChildNode::spawn(d, &["daemon", "--config", "beacon.toml"], addr);
    let (code, out, err) = status(d, addr, "op.pem", "op.key", "ca/ca.pem");
    assert_eq!(code, 0, "status failed: {err}\n{}", node.log());
    assert!(
        out.contains("spiffe://alliance.example/node/uk.ncsc/n1"),
        "{out}"
    );
    node.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        node.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        node.log()
    );
}

#[test]
fn daemon_reports_a_bad_config_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("beacon.toml"),
        "[node]\nlisten = \"127.0.0.1:0\"\nlisten_typo = 1\n",
    )
    .unwrap();
    // Its first line says it all; the place follows, shown.
    let (code, _, err) = beacon(d, &["daemon", "--config", "beacon.toml"]);
    assert_ne!(code, 0);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains("beacon.toml") && first.contains("line 3") && first.contains("listen_typo"),
        "{err}"
    );
    let err = fails(d, &["daemon", "--config", "missing.toml"]);
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn dev_mode_starts_a_usable_node_and_reuses_its_pki() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for round in 0..2 {
        let addr = free_addr();
        let mut node = ChildNode::spawn(
            d,
            &["dev", "--data-dir", "dd", "--listen", &addr.to_string()],
            addr,
        );
        let (code, out, err) = status(
            d,
            addr,
            "dd/certs/operator.pem",
            "dd/certs/operator.key",
            "dd/ca/ca.pem",
        );
        assert_eq!(code, 0, "round {round}: {err}\n{}", node.log());
        assert!(out.contains("spiffe://beacon.dev/node/drc/dev"), "{out}");
        node.signal(nix::sys::signal::Signal::SIGINT);
        assert_eq!(
            node.wait(Duration::from_secs(20)),
            Some(0),
            "{}",
            node.log()
        );
    }
    // The second run reused the CA: three certificates issued in all.
    let list = ok(d, &["ca", "list", "--dir", "dd/ca"]);
    assert_eq!(list.lines().count(), 4, "{list}");
}

#[test]
fn sighup_reloads_the_crl_and_cuts_the_revoked_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let addr = free_addr();
    write_config(d, addr);
    // Watch files only once an hour: only SIGHUP can make this reload happen.
    let mut text = std::fs::read_to_string(d.join("beacon.toml")).unwrap();
    text.push_str("\n[timing]\nreload_interval = \"1h\"\n");
    std::fs::write(d.join("beacon.toml"), text).unwrap();
    ok(
        d,
        &[
            "ca", "issue", "client", "--dir", "ca", "--member", "us.cisa", "--name", "x", "--out",
            "c",
        ],
    );
    let node = ChildNode::spawn(d, &["daemon", "--config", "beacon.toml"], addr);
    // The operator's status works; revoke the operator and reload by signal.
    assert_eq!(status(d, addr, "op.pem", "op.key", "ca/ca.pem").0, 0);
    ok(d, &["ca", "revoke", "--dir", "ca", "--cert", "op.pem"]);
    assert_eq!(
        status(d, addr, "op.pem", "op.key", "ca/ca.pem").0,
        0,
        "no reload yet: the old CRL is still in force"
    );
    node.signal(nix::sys::signal::Signal::SIGHUP);
    let start = std::time::Instant::now();
    loop {
        let (code, _, err) = status(d, addr, "op.pem", "op.key", "ca/ca.pem");
        if code != 0 {
            assert!(err.contains("beacon: "), "{err}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reload the CRL within 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        node.wait_log("SIGHUP", Duration::from_secs(10)),
        "{}",
        node.log()
    );
}

#[test]
fn a_stale_crl_is_still_applied_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let addr = free_addr();
    write_config(d, addr);
    ok(d, &["ca", "revoke", "--dir", "ca", "--cert", "op.pem"]);
    ok(d, &["ca", "crl", "--dir", "ca", "--next-update", "1s"]);
    // Wait (on the clock, not a fixed sleep) until the CRL's next update has passed.
    let until = std::time::SystemTime::now() + Duration::from_millis(2500);
    while std::time::SystemTime::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let node = ChildNode::spawn(d, &["daemon", "--config", "beacon.toml"], addr);
    let (code, _, _) = status(d, addr, "op.pem", "op.key", "ca/ca.pem");
    assert_ne!(code, 0, "a revoked operator got in through a stale CRL");
    assert!(
        node.wait_log("past its next update", Duration::from_secs(10)),
        "{}",
        node.log()
    );
}

/// The daemon's log goes to a pipe whose reader dies (a `tee` killed, a log
/// collector restarted): the node keeps answering publishes and status,
/// counts the lines it could not write, and SIGTERM still drains it.
/// (Before, the first publish after the pipe closed was stored but never
/// answered, and SIGTERM no longer stopped the node.)
#[test]
fn a_daemon_whose_log_pipe_closes_keeps_serving_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let addr = free_addr();
    let ops = free_addr();
    write_config(d, addr);
    let mut config = std::fs::read_to_string(d.join("beacon.toml")).unwrap();
    config.push_str(&format!("\n[metrics]\nlisten = \"{ops}\"\n"));
    std::fs::write(d.join("beacon.toml"), config).unwrap();
    ok(
        d,
        &[
            "ca", "issue", "client", "--dir", "ca", "--member", "uk.ncsc", "--name", "pub",
            "--out", "pub",
        ],
    );
    let mut child = std::process::Command::new(beacon_bin())
        .args(["daemon", "--config", "beacon.toml"])
        .current_dir(d)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the daemon did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The reader of its log goes away.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let conn = [
        "--node",
        &addr.to_string(),
        "--cert",
        "pub.pem",
        "--key",
        "pub.key",
        "--ca",
        "ca/ca.pem",
    ];
    for i in 0..3 {
        let title = format!("after the pipe closed {i}");
        let mut args = vec![
            "publish",
            "--kind",
            "advisory",
            "--severity",
            "low",
            "--tlp",
            "TLP:CLEAR",
            "--title",
            &title,
            "--summary",
            "s",
        ];
        args.extend(conn);
        let (code, out, err) = beacon(d, &args);
        assert_eq!(code, 0, "publish {i} answered: {out}{err}");
    }
    let (code, out, err) = status(d, addr, "op.pem", "op.key", "ca/ca.pem");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("head:        3"), "{out}");
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(ops).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let dropped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("beacon_log_lines_dropped_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("the counter is exported");
    assert!(
        dropped > 0,
        "the lines it could not write are counted: {metrics}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = std::time::Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("SIGTERM did not stop a node whose log pipe closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
}

/// Errors an operator meets in the first week carry their context: a TOML
/// error with its line and a caret under the place, a key that does not
/// belong to its certificate naming both files, and a port in use naming
/// the listener and the address.
#[test]
fn startup_errors_name_what_and_where() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("bad.toml"),
        "[node]\nlisten = \"127.0.0.1:0\"\ndata_dir = 5\n",
    )
    .unwrap();
    // The one error that takes more than a line: the place, shown.
    let (code, _, err) = beacon(d, &["daemon", "--config", "bad.toml"]);
    assert_ne!(code, 0);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].contains("line 3, column 12"), "{err}");
    assert!(
        lines.iter().any(|l| l.ends_with("3 | data_dir = 5")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.trim_end().ends_with("|            ^")),
        "{err}"
    );

    let addr = free_addr();
    write_config(d, addr);
    // Another key: the node's certificate with the operator's key.
    let good = std::fs::read_to_string(d.join("beacon.toml")).unwrap();
    std::fs::write(
        d.join("mismatch.toml"),
        good.replace("key = \"node.key\"", "key = \"op.key\""),
    )
    .unwrap();
    let err = fails(d, &["daemon", "--config", "mismatch.toml"]);
    assert!(
        err.contains("op.key") && err.contains("node.pem") && err.contains("does not belong"),
        "{err}"
    );

    // The operations port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    std::fs::write(
        d.join("busy.toml"),
        format!("{good}\n[metrics]\nlisten = \"{busy}\"\n"),
    )
    .unwrap();
    let err = fails(d, &["daemon", "--config", "busy.toml"]);
    assert!(
        err.contains("the operations port ([metrics] listen)") && err.contains(&busy.to_string()),
        "{err}"
    );
}

/// beacon.toml is read at start: a change to it is said in the log, with
/// the sections it would change and that they need a restart (SIGHUP
/// reloads certificates and CRLs only), not silently ignored.
#[test]
fn a_changed_config_file_is_said_to_need_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let addr = free_addr();
    write_config(d, addr);
    let original = std::fs::read_to_string(d.join("beacon.toml")).unwrap();
    let node = ChildNode::spawn(d, &["daemon", "--config", "beacon.toml"], addr);
    let wait_for = |what: &str| {
        let start = std::time::Instant::now();
        while !node.log().contains(what) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {what:?} in: {}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    std::fs::write(
        d.join("beacon.toml"),
        format!(
            "{original}\n[timing]\ndrain_timeout = \"9s\"\n\n[groups]\nfive-eyes = [\"uk.ncsc\"]\n"
        ),
    )
    .unwrap();
    wait_for("the config file changed; its settings are not applied until the node restarts");
    let line = node
        .log()
        .lines()
        .find(|l| l.contains("the config file changed"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.contains("[timing]") && line.contains("[groups]"),
        "{line}"
    );
    assert!(!line.contains("[node]"), "{line}");
    std::fs::write(d.join("beacon.toml"), &original).unwrap();
    wait_for("the config file is back to the settings in force");
}

/// `beacon bench sync` measures every method it names and prints one row
/// each (a smoke run: few writes, no figures checked).
#[test]
fn bench_sync_measures_every_method() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = ok(
        d,
        &[
            "bench", "sync", "--dir", ".", "--count", "20", "--size", "512",
        ],
    );
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| durable"))
        .collect();
    assert_eq!(rows.len(), 6, "{out}");
    for method in [
        "preallocated",
        "appending",
        "O_DSYNC",
        "RWF_DSYNC",
        "fsync",
        "three in series",
    ] {
        assert!(rows.iter().any(|r| r.contains(method)), "{method}: {out}");
    }
    // The scratch files are gone.
    assert_eq!(std::fs::read_dir(d).unwrap().count(), 0);
}
