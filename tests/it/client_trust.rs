//! A client checks that it reached the node it meant to, before any RPC: by
//! default a node of its own member whose certificate names the host dialled;
//! with a pin, exactly that node identity. A rogue node of another member
//! (reached by a DNS or routing trick) never receives a client's publishes
//! or subscriptions.

use std::net::{IpAddr, Ipv4Addr};

use crate::common::*;
use beacon::base::identity::RoleKind;
use beacon::net::client::{BeaconClient, ClientError};
use beacon::tools::pki::IssueRequest;

/// `beacon list` as `files` against `addr`, with extra flags.
fn cli_list(
    a: &Alliance,
    files: &CertFiles,
    addr: std::net::SocketAddr,
    extra: &[&str],
) -> (i32, String, String) {
    let dir = a.pki.path();
    let ca: Vec<String> = a.ca.iter().map(|p| p.display().to_string()).collect();
    let node = addr.to_string();
    let cert = files.cert.display().to_string();
    let key = files.key.display().to_string();
    let cas = ca.join(",");
    let mut args = vec![
        "list", "--node", &node, "--cert", &cert, "--key", &key, "--ca", &cas,
    ];
    args.extend_from_slice(extra);
    beacon(dir, &args)
}

/// Connects with the client's default check (or its pin); the error if refused.
async fn connect(
    a: &Alliance,
    files: &CertFiles,
    addr: std::net::SocketAddr,
    pin: Option<&str>,
) -> Result<BeaconClient, ClientError> {
    let mut s = settings(files, &a.ca);
    s.node = Some(addr.to_string());
    s.node_identity = pin.map(|p| p.parse().expect("identity"));
    BeaconClient::connect(&s).await
}

/// A refusal at the handshake (no RPC was sent), with its message.
fn refused_before_rpc(r: Result<BeaconClient, ClientError>) -> String {
    match r {
        Ok(_) => panic!("the client accepted a node it should have refused"),
        Err(e @ ClientError::Connect { .. }) => e.to_string(),
        Err(other) => panic!("refused, but not at the handshake: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_accepts_only_its_own_members_node_unless_pinned() {
    let a = Alliance::new(&["uk.ncsc", "drc"]);
    let drc_node = a.node("drc", "hub-1");
    let n = TestNode::start(&a.options(drc_node.clone(), &[])).await;
    let uk = a.client("uk.ncsc", "analyst");

    // Another member's valid node: refused, naming both members.
    let msg = refused_before_rpc(connect(&a, &uk, n.addr, None).await);
    assert!(
        msg.contains(&drc_node.identity)
            && msg.contains("member drc")
            && msg.contains("uk.ncsc")
            && msg.contains("pin"),
        "{msg}"
    );
    // The CLI says the same, and exits non-zero.
    let (code, out, err) = cli_list(&a, &uk, n.addr, &[]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("a node of member drc"), "{err}");
    assert!(
        !err.contains("OtherError") && !err.contains("Other("),
        "a sentence, not a debug dump: {err}"
    );

    // Pinned, the same node is accepted (a client reaching the hub of
    // another member on purpose), through the library and the CLI.
    let mut c = connect(&a, &uk, n.addr, Some(&drc_node.identity))
        .await
        .expect("the pinned node is accepted");
    c.publish(&bulletin("uk.ncsc", "through the pinned hub"))
        .await
        .expect("publish");
    let (code, out, err) = cli_list(&a, &uk, n.addr, &["--node-id", &drc_node.identity]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("through the pinned hub"), "{out}");

    // A client of drc needs no pin for its own member's node.
    let drc = a.client("drc", "analyst");
    connect(&a, &drc, n.addr, None)
        .await
        .expect("own member's node, naming 127.0.0.1");
    let (code, out, err) = cli_list(&a, &drc, n.addr, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("through the pinned hub"), "{out}");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_certificate_does_not_name_the_host_is_refused() {
    let a = Alliance::new(&["uk.ncsc"]);
    // A node of the right member, issued for a DNS name only.
    let mut req = IssueRequest::new(id(RoleKind::Node, Some("uk.ncsc"), "london-1"));
    req.dns_names = vec!["beacon.ncsc.example".into()];
    let node = a.pki.issue_from(a.ca_dir("uk.ncsc"), req);
    let n = TestNode::start(&a.options(node.clone(), &[])).await;
    let uk = a.client("uk.ncsc", "analyst");

    let msg = refused_before_rpc(connect(&a, &uk, n.addr, None).await);
    assert!(
        msg.contains("names beacon.ncsc.example, not 127.0.0.1"),
        "{msg}"
    );
    let (code, _, err) = cli_list(&a, &uk, n.addr, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("not 127.0.0.1, the host dialled"), "{err}");
    n.stop().await;

    // The same member's node naming 127.0.0.1 is accepted.
    let mut req = IssueRequest::new(id(RoleKind::Node, Some("uk.ncsc"), "london-2"));
    req.ip_addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let good = a.pki.issue_from(a.ca_dir("uk.ncsc"), req);
    let n = TestNode::start(&a.options(good, &[])).await;
    connect(&a, &uk, n.addr, None)
        .await
        .expect("a node of the member naming the host");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_identity_that_does_not_match_is_refused() {
    let a = Alliance::new(&["uk.ncsc"]);
    let node = a.node("uk.ncsc", "london-1");
    let n = TestNode::start(&a.options(node.clone(), &[])).await;
    let uk = a.client("uk.ncsc", "analyst");
    let pinned = format!("spiffe://{TD}/node/uk.ncsc/london-2");

    let msg = refused_before_rpc(connect(&a, &uk, n.addr, Some(&pinned)).await);
    assert!(
        msg.contains(&format!(
            "presented {}, but the pinned node identity is {pinned}",
            node.identity
        )),
        "{msg}"
    );
    let (code, _, err) = cli_list(&a, &uk, n.addr, &["--node-identity", &pinned]);
    assert_ne!(code, 0);
    assert!(err.contains("pinned node identity"), "{err}");
    // The pin also comes from BEACON_NODE_ID.
    let out = std::process::Command::new(beacon_bin())
        .args(["list", "--node", &n.addr.to_string()])
        .arg("--cert")
        .arg(&uk.cert)
        .arg("--key")
        .arg(&uk.key)
        .arg("--ca")
        .arg(
            a.ca.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .env_remove("BEACON_NODE_IDENTITY")
        .env("BEACON_NODE_ID", &pinned)
        .output()
        .expect("run beacon");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pinned node identity"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    n.stop().await;
}

/// A client config can scope each CA to its members, as a node's
/// `[[trust]]` does: then one member's CA cannot pass off a node of another
/// member (with unscoped `ca` entries, any CA the client trusts may).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_client_trust_refuses_a_node_another_members_ca_made() {
    let a = Alliance::new(&["uk.ncsc"]);
    // A CA the client knows as drc's, which issues a node for uk.ncsc.
    let drc_ca = a.pki.other_ca("drc-ca", "*");
    let mut req = IssueRequest::new(id(RoleKind::Node, Some("uk.ncsc"), "rogue"));
    req.ip_addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let rogue = a.pki.issue_from(&drc_ca, req);
    let mut opts = a.options(rogue.clone(), &[]);
    opts.trust
        .push((beacon::tools::pki::Ca::cert_path(&drc_ca), "*".into(), None));
    let n = TestNode::start(&opts).await;
    let uk = a.client("uk.ncsc", "analyst");

    // Unscoped: the rogue node passes as a node of uk.ncsc.
    let mut s = settings(&uk, &a.ca);
    s.ca.push(beacon::tools::pki::Ca::cert_path(&drc_ca));
    s.node = Some(n.addr.to_string());
    BeaconClient::connect(&s)
        .await
        .expect("unscoped trust accepts it");

    // Scoped, from a client config file: refused before any RPC.
    let dir = a.pki.path();
    let config = dir.join("client.toml");
    std::fs::write(
        &config,
        format!(
            "node = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n[[trust]]\nca = \"{}\"\nmembers = [\"uk.ncsc\"]\n\n[[trust]]\nca = \"{}\"\nmembers = [\"drc\"]\n",
            n.addr,
            uk.cert.display(),
            uk.key.display(),
            beacon::tools::pki::Ca::cert_path(a.ca_dir("uk.ncsc")).display(),
            beacon::tools::pki::Ca::cert_path(&drc_ca).display(),
        ),
    )
    .expect("write client config");
    let scoped = beacon::net::client::ClientSettings::from_file(&config).expect("client config");
    let msg = refused_before_rpc(BeaconClient::connect(&scoped).await);
    assert!(
        msg.contains("may not vouch for") && msg.contains("node/uk.ncsc/rogue"),
        "{msg}"
    );
    let (code, _, err) = beacon(
        dir,
        &["list", "--client-config", config.to_str().expect("path")],
    );
    assert_ne!(code, 0);
    assert!(err.contains("may not vouch for"), "{err}");
    n.stop().await;
}
