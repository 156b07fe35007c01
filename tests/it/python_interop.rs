//! The proto as a contract: the Python client in `examples/python/` (stubs
//! generated from `proto/` with grpcio-tools, its own DSSE signing, grpcio's
//! C-core TLS) publishes, subscribes with resume, lists, checks health and
//! reads reflection against a real `beacon dev` node on its default PKI.
//!
//! Needs a Python with grpcio, grpcio-tools and cryptography (`BEACON_PYTHON`,
//! default `python3`). Without them the test says so and passes, unless
//! `BEACON_REQUIRE_PYTHON=1` (as `.ci/run` sets), where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn python() -> Option<String> {
    python_with(
        "grpc, grpc_tools, cryptography",
        "pip install -r examples/python/requirements.txt",
    )
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/beacon_client.py")
}

/// Runs the Python client: (exit status ok, its JSON lines, stderr).
fn py_run(
    python: &str,
    node: std::net::SocketAddr,
    ca: &Path,
    files: &CertFiles,
    args: &[&str],
) -> (bool, Vec<serde_json::Value>, String) {
    let out = Command::new(python)
        .arg(script())
        .args(["--node", &node.to_string()])
        .args(["--ca", ca.to_str().expect("path")])
        .args(["--cert", files.cert.to_str().expect("path")])
        .args(["--key", files.key.to_str().expect("path")])
        .args(args)
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the Python client and expects it to succeed; its JSON lines.
fn py(
    python: &str,
    node: std::net::SocketAddr,
    ca: &Path,
    files: &CertFiles,
    args: &[&str],
) -> Vec<serde_json::Value> {
    let (ok, lines, stderr) = py_run(python, node, ca, files, args);
    assert!(ok, "python {args:?} failed: {lines:?}\n{stderr}");
    lines
}

/// grpcio (gRPC's C-core, whose TLS offers no Ed25519) against the node and
/// the certificates `beacon dev` makes: health, reflection as the older
/// v1alpha clients speak it, signed publishes, durable subscription with
/// resume, List pages of bulletins at the size limit, and a request over the
/// message limit.
#[test]
fn python_grpcio_on_the_default_dev_pki() {
    let Some(python) = python() else { return };
    let dev = DevNode::start();
    let addr = dev.node.addr;
    let ca = dev.path("ca/ca.pem");
    let analyst = dev.files("client");
    assert!(
        analyst.identity.ends_with("/client/drc/analyst"),
        "{}",
        analyst.identity
    );

    // The standard health check and server reflection (v1alpha).
    let health = py(&python, addr, &ca, &analyst, &["health"]);
    assert_eq!(health[0]["status"], "SERVING", "{health:?}");
    let services = py(&python, addr, &ca, &analyst, &["services"]);
    let names: Vec<&str> = services[0]["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for s in [
        "beacon.v1.Bulletins",
        "beacon.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&s), "{s} missing from reflection: {names:?}");
    }
    let methods = services[0]["methods"].to_string();
    assert!(
        methods.contains("beacon.v1.Bulletins/PublishStream"),
        "{methods}"
    );

    // Python signs (with the dev key, ECDSA P-256) and publishes.
    let published = py(
        &python,
        addr,
        &ca,
        &analyst,
        &[
            "publish",
            "--title",
            "From Python",
            "--summary",
            "signed with cryptography",
            "--count",
            "3",
        ],
    );
    let seqs: Vec<u64> = published
        .iter()
        .map(|v| v["sequence"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let bundle = dev.bundle();
    let cas = vec![ca.clone()];
    // Rust reads each back and verifies the Python signature independently
    // (the analyst is of drc, the dev node's member: no pin needed).
    rt.block_on(async {
        let ch = dial_own_node(addr, &analyst, &cas).await;
        let mut c = beacon::net::client::BulletinsClient::new(ch);
        for p in &published {
            let d = c
                .get(beacon::base::proto::v1::GetRequest {
                    id: p["id"].as_str().expect("id").to_owned(),
                    publisher: String::new(),
                })
                .await
                .expect("get")
                .into_inner()
                .delivery
                .expect("delivery");
            let env = beacon::net::client::delivered_envelope(&d).expect("envelope");
            let v = beacon::domain::bulletin::verify_envelope(
                &env,
                &bundle,
                std::time::SystemTime::now(),
            )
            .expect("the Python signature verifies");
            assert_eq!(v.signer().to_string(), analyst.identity);
            assert_eq!(v.bulletin().publisher, "drc");
        }
    });

    // A durable subscription from Python: two, then a goodbye.
    let first = py(
        &python,
        addr,
        &ca,
        &analyst,
        &["subscribe", "--name", "py-feed", "--count", "2"],
    );
    let got: Vec<u64> = first
        .iter()
        .filter_map(|v| v["sequence"].as_u64())
        .collect();
    assert_eq!(got, vec![1, 2]);

    // A client of another member publishes; it reaches drc's node only by
    // pinning that node's identity (a client accepts only its own member's
    // nodes by default).
    let rust_files = dev.client("de.bsi", "rust-analyst");
    let node_identity = dev.files("node").identity;
    rt.block_on(async {
        let mut s = settings(&rust_files, &cas);
        s.node = Some(addr.to_string());
        let refused = beacon::net::client::BeaconClient::connect(&s)
            .await
            .err()
            .expect("another member's node is refused without a pin");
        assert!(
            refused.to_string().contains("member drc"),
            "the refusal names the node's member: {refused}"
        );
        s.node_identity = Some(node_identity.parse().expect("identity"));
        let mut rust = beacon::net::client::BeaconClient::connect(&s)
            .await
            .expect("the pinned node is accepted");
        for i in 0..2 {
            rust.publish(&bulletin("de.bsi", &format!("from Rust {i}")))
                .await
                .expect("publish");
        }
    });
    let second = py(
        &python,
        addr,
        &ca,
        &analyst,
        &["subscribe", "--name", "py-feed", "--count", "3"],
    );
    let resumed = second
        .iter()
        .find(|v| v.get("subscribed").is_some())
        .expect("subscribed");
    assert_eq!(resumed["cursor"], 2);
    let got: Vec<(u64, String)> = second
        .iter()
        .filter_map(|v| Some((v["sequence"].as_u64()?, v["signer"].as_str()?.to_owned())))
        .collect();
    assert_eq!(
        got,
        vec![
            (3, analyst.identity.clone()),
            (4, rust_files.identity.clone()),
            (5, rust_files.identity.clone())
        ]
    );

    // Six bulletins of about 240 KiB (within the 256 KiB envelope limit):
    // grpcio pages through them all with its default message limits.
    let big = py(
        &python,
        addr,
        &ca,
        &analyst,
        &[
            "publish",
            "--title",
            "large",
            "--summary",
            "near the envelope limit",
            "--count",
            "6",
            "--body-bytes",
            &(240 * 1024).to_string(),
        ],
    );
    assert_eq!(big.len(), 6, "{big:?}");
    let pages = py(&python, addr, &ca, &analyst, &["list", "--limit", "1000"]);
    let listed: Vec<u64> = pages
        .iter()
        .flat_map(|p| p["deliveries"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_u64())
        .collect();
    assert_eq!(listed, (1..=11).collect::<Vec<u64>>(), "{pages:?}");
    assert!(pages.len() > 1, "six large bulletins need several pages");
    for p in &pages {
        assert!(p["bytes"].as_u64().expect("bytes") <= 1024 * 1024, "{p}");
    }

    // Over the envelope limit, and over the message limit: both are
    // RESOURCE_EXHAUSTED, and each says which limit.
    for (bytes, limit) in [(300 * 1024, "262144"), (700 * 1024, "524288")] {
        let (ok, lines, stderr) = py_run(
            &python,
            addr,
            &ca,
            &analyst,
            &[
                "publish",
                "--title",
                "too large",
                "--summary",
                "s",
                "--body-bytes",
                &bytes.to_string(),
            ],
        );
        assert!(!ok, "an oversized publish must fail: {lines:?} {stderr}");
        assert_eq!(lines[0]["refused"], "RESOURCE_EXHAUSTED", "{lines:?}");
        let msg = lines[0]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(limit), "the message names the limit: {msg}");
    }

    // The Python client checks the node it reached before sending
    // anything, as the CLI does: a client of another member is refused
    // without a pin (nothing published), and accepted with one.
    let fr = dev.client("fr.anssi", "py-analyst");
    let node_id = dev.files("node").identity;
    let publish = [
        "publish",
        "--title",
        "For fr.anssi's eyes",
        "--summary",
        "x",
    ];
    let (ok, lines, stderr) = py_run(&python, addr, &ca, &fr, &publish);
    assert!(!ok && lines.is_empty(), "{lines:?} {stderr}");
    assert!(
        stderr.contains("not a node of your member fr.anssi")
            && stderr.contains("nothing was sent"),
        "{stderr}"
    );
    let wrong_pin = [
        "--node-id",
        "spiffe://alliance.example/node/fr.anssi/paris-1",
    ];
    let (ok, _, stderr) = py_run(
        &python,
        addr,
        &ca,
        &fr,
        &[&wrong_pin[..], &publish[..]].concat(),
    );
    assert!(!ok && stderr.contains("not the pinned"), "{stderr}");
    let pinned = py(
        &python,
        addr,
        &ca,
        &fr,
        &[&["--node-id", node_id.as_str()][..], &publish[..]].concat(),
    );
    assert_eq!(
        pinned[0]["sequence"].as_u64(),
        Some(12),
        "nothing was published by the refused runs: {pinned:?}"
    );
}

/// Dials the node as a member client with the default check (a node of the
/// client's own member, naming the host dialled).
async fn dial_own_node(
    addr: std::net::SocketAddr,
    files: &CertFiles,
    ca: &[PathBuf],
) -> tonic::transport::Channel {
    let s = settings(files, ca);
    let dialer = beacon::net::client::Dialer::load(&s).expect("dialer");
    dialer
        .dial(&addr.to_string())
        .await
        .expect("dial the dev node")
}
