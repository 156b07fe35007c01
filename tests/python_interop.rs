//! The proto as a contract: the Python client in `examples/python/` (stubs
//! generated from `proto/` with grpcio-tools, its own DSSE signing) publishes
//! and subscribes with resume against a real node.
//!
//! Needs a Python with grpcio, grpcio-tools and cryptography (`BEACON_PYTHON`,
//! default `python3`). Without them the test says so and passes, unless
//! `BEACON_REQUIRE_PYTHON=1` (as `.ci/run` sets), where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use beacon::pki::Algorithm;
use common::*;

fn python() -> Option<String> {
    let py = std::env::var("BEACON_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import grpc, grpc_tools, cryptography"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(py);
    }
    let required = std::env::var("BEACON_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "BEACON_REQUIRE_PYTHON=1 but {py} lacks grpcio, grpcio-tools or cryptography \
         (pip install -r examples/python/requirements.txt)"
    );
    eprintln!("skipping: {py} lacks grpcio, grpcio-tools or cryptography");
    None
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/beacon_client.py")
}

/// Runs the Python client; its JSON lines.
fn py(
    python: &str,
    node: std::net::SocketAddr,
    ca: &Path,
    files: &CertFiles,
    args: &[&str],
) -> Vec<serde_json::Value> {
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
    assert!(
        out.status.success(),
        "python {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn interop(algorithm: Algorithm) {
    let Some(python) = python() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let pki = TestPki::with_ca("*", algorithm);
        let node = TestNode::start(&NodeOptions::new(&pki, pki.node("drc", "hub-1"))).await;
        let ca = pki.ca_cert();
        let files = pki.client("fr.anssi", "python-analyst");

        // Python signs and publishes.
        let published = py(
            &python,
            node.addr,
            &ca,
            &files,
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

        // Rust reads each back and verifies the Python signature independently.
        let cas = vec![ca.clone()];
        let ch = dial(node.addr, &files, &cas).await.expect("dial");
        let mut c = beacon::client::BulletinsClient::new(ch);
        let bundle = {
            let cert = beacon::trust::read_certs(&ca).expect("ca").remove(0);
            let entry = beacon::trust::CaEntry::new(cert, beacon::identity::MemberScope::any())
                .expect("entry");
            beacon::trust::TrustBundle::new(td(), vec![entry], vec![]).expect("bundle")
        };
        for p in &published {
            let d = c
                .get(beacon::proto::v1::GetRequest {
                    id: p["id"].as_str().expect("id").to_owned(),
                    publisher: String::new(),
                })
                .await
                .expect("get")
                .into_inner()
                .delivery
                .expect("delivery");
            let env = beacon::wire::delivered_envelope(&d).expect("envelope");
            let v = beacon::bulletin::verify_envelope(&env, &bundle, std::time::SystemTime::now())
                .expect("the Python signature verifies");
            assert_eq!(v.signer.to_string(), files.identity);
            assert_eq!(v.bulletin.publisher, "fr.anssi");
        }

        // A durable subscription from Python: two, then a goodbye.
        let first = py(
            &python,
            node.addr,
            &ca,
            &files,
            &["subscribe", "--name", "py-feed", "--count", "2"],
        );
        let got: Vec<u64> = first
            .iter()
            .filter_map(|v| v["sequence"].as_u64())
            .collect();
        assert_eq!(got, vec![1, 2]);

        // Rust publishes more; Python resumes exactly after its cursor.
        let rust_files = pki.client("de.bsi", "rust-analyst");
        let mut rust = member(node.addr, &rust_files, &cas).await;
        for i in 0..2 {
            rust.publish(&bulletin("de.bsi", &format!("from Rust {i}")))
                .await
                .expect("publish");
        }
        let second = py(
            &python,
            node.addr,
            &ca,
            &files,
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
                (3, files.identity.clone()),
                (4, rust_files.identity.clone()),
                (5, rust_files.identity.clone())
            ]
        );
        node.stop().await;
    });
}

/// grpcio's TLS (BoringSSL) offers no Ed25519 signature scheme, so agencies
/// on grpcio use an ECDSA P-256 PKI (`beacon ca init --algorithm ecdsa-p256`).
#[test]
fn python_client_with_ecdsa_p256_certificates() {
    interop(Algorithm::EcdsaP256);
}
