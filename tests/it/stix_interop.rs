//! STIX 2.1 out of the CLI, checked by the OASIS validator
//! (`stix2-validator`, PyPI): `beacon export --stix` and `beacon subscribe
//! --format stix` write bundles with no validation errors, in both marking
//! profiles; a revision is a new version of the same report and a
//! retraction its revoked last version; indicators STIX cannot express are
//! kept in the report, never dropped.
//!
//! Needs a Python with stix2-validator (`BEACON_PYTHON`, default `python3`;
//! `pip install -r tests/interop/requirements.txt`). Without it the test
//! says so and passes, unless `BEACON_REQUIRE_PYTHON=1` (as `.ci/run` sets).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::common::*;
use beacon::domain::bulletin::{Indicator, Reference, Relation, Tlp};
use serde_json::Value;

fn python() -> Option<String> {
    python_with(
        "stix2validator",
        "pip install -r tests/interop/requirements.txt",
    )
}

/// Runs stix2-validator on every file; panics with its report on any error.
fn validate(python: &str, files: &[std::path::PathBuf]) {
    let code = r#"
import sys, json
from stix2validator import validate_string, ValidationOptions, print_results
bad = 0
for path in sys.argv[1:]:
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        r = validate_string(line, ValidationOptions(version="2.1"))
        if not r.is_valid:
            bad += 1
            print(path)
            print_results(r)
print("checked", len(sys.argv) - 1, "files;", bad, "invalid")
sys.exit(1 if bad else 0)
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(code)
        .args(files)
        .output()
        .expect("run stix2-validator");
    assert!(
        out.status.success(),
        "stix2-validator found errors:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn objects_of<'a>(bundle: &'a Value, kind: &str) -> Vec<&'a Value> {
    bundle["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter(|o| o["type"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stix_from_the_cli_passes_the_oasis_validator() {
    let Some(py) = python() else { return };
    let w = world().await;
    let (mut uk, files) = w.client("uk.ncsc", "analyst").await;
    let work = tempfile::tempdir().unwrap();

    let ind = |kind: &str, value: &str| Indicator {
        kind: kind.into(),
        value: value.into(),
        ..Default::default()
    };
    let mut first = bulletin("uk.ncsc", "Forged memo amplified by new accounts");
    first.body = "Details of the campaign.".into();
    first.expires_at = Some(SystemTime::now() + Duration::from_secs(86400));
    first.indicators = vec![
        ind("domain", "memo-leak.example"),
        ind("url", "https://memo-leak.example/it's"),
        ind("ip", "198.51.100.7"),
        ind("ipv6", "2001:db8::7"),
        ind("email", "press@memo-leak.example"),
        ind("account", "@memo_leaks"),
        ind("sha256", &"ab".repeat(32)),
        ind("md5", &"cd".repeat(16)),
        ind("telegram-channel", "t.me/memoleaks"),
    ];
    first.references = vec![Reference {
        url: "https://news.example/story".into(),
        description: "press report".into(),
        external_id: "NX-1".into(),
    }];
    let mut revision = bulletin("uk.ncsc", "Forged memo: second wave");
    revision.relation = Some(Relation::Supersedes(first.id.clone()));
    let mut retraction = bulletin("uk.ncsc", "Retracted: the memo was genuine");
    retraction.relation = Some(Relation::Retracts(revision.id.clone()));
    let mut published = vec![first.clone(), revision.clone(), retraction.clone()];
    for (tlp, members) in [
        (Tlp::Clear, vec![]),
        (Tlp::Amber, vec!["uk.ncsc"]),
        (Tlp::AmberStrict, vec!["uk.ncsc"]),
        (Tlp::Red, vec!["uk.ncsc"]),
    ] {
        let mut b = bulletin("uk.ncsc", &format!("marked {}", tlp.label()));
        b.tlp = beacon::domain::bulletin::codec::tlp_to_i32(tlp);
        b.audience.members = members.into_iter().map(String::from).collect();
        published.push(b);
    }
    for b in &published {
        uk.publish(b).await.expect("publish");
        // Distinct creation times, so versions differ in `modified`.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let conn = |files: &CertFiles| -> Vec<String> {
        let mut v = conn_args(w.node.addr, files, &w.pki.ca_cert());
        v.extend(["--node-identity".into(), w.node_id.clone()]);
        v
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = beacon(work.path(), &args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };
    let mut checked = Vec::new();
    let mut exported = Vec::new();
    for (i, b) in published.iter().enumerate() {
        for profile in ["oasis-tlp2", "opencti"] {
            let path = work.path().join(format!("{i}-{profile}.json"));
            let mut args: Vec<String> = vec![
                "export".into(),
                b.id.clone(),
                "--stix".into(),
                "--profile".into(),
                profile.into(),
                "-o".into(),
                path.display().to_string(),
            ];
            args.extend(conn(&files));
            run(args);
            let text = std::fs::read_to_string(&path).unwrap();
            let bundle: Value = serde_json::from_str(&text).expect("a JSON bundle");
            // One line per bundle for the validator script.
            std::fs::write(&path, bundle.to_string()).unwrap();
            checked.push(path);
            if profile == "oasis-tlp2" {
                exported.push(bundle);
            }
        }
    }
    let mut args: Vec<String> = vec![
        "subscribe".into(),
        "--from".into(),
        "earliest".into(),
        "--format".into(),
        "stix".into(),
        "--count".into(),
        published.len().to_string(),
    ];
    args.extend(conn(&files));
    let lines = run(args);
    assert_eq!(lines.lines().count(), published.len(), "{lines}");
    let stream = work.path().join("subscribe.ndjson");
    std::fs::write(&stream, &lines).unwrap();
    checked.push(stream);
    validate(&py, &checked);

    // The first bulletin: every indicator STIX can say, the rest kept.
    let b0 = &exported[0];
    let report = objects_of(b0, "report")[0];
    let indicators = objects_of(b0, "indicator");
    assert_eq!(indicators.len(), 8);
    assert_eq!(report["object_refs"].as_array().unwrap().len(), 8);
    assert_eq!(
        report["x_beacon_other_indicators"][0]["type"],
        "telegram-channel"
    );
    assert_eq!(report["name"], first.title);
    assert_eq!(report["labels"], serde_json::json!(["elections"]));
    assert_eq!(report["external_references"][0]["external_id"], "NX-1");
    assert!(indicators.iter().all(|i| i["valid_until"].is_string()));
    assert!(indicators
        .iter()
        .any(|i| i["pattern"] == "[url:value = 'https://memo-leak.example/it\\'s']"));
    assert_eq!(objects_of(b0, "identity")[0]["name"], "uk.ncsc");
    assert_eq!(
        report["object_marking_refs"][0],
        "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
    );
    // Versions: one report id, one `created`, `modified` rising; the
    // retraction is the revoked last version.
    let r = |i: usize| objects_of(&exported[i], "report")[0].clone();
    assert_eq!(r(1)["id"], r(0)["id"]);
    assert_eq!(r(2)["id"], r(0)["id"]);
    assert_eq!(r(1)["created"], r(0)["created"]);
    assert!(r(1)["modified"].as_str() > r(0)["modified"].as_str());
    assert!(r(2)["modified"].as_str() > r(1)["modified"].as_str());
    assert_eq!(r(2)["revoked"], true);
    assert!(r(0).get("revoked").is_none());
    // Each TLP has its marking definition in the bundle, and the audience
    // travels as Beacon's own property.
    let red = &exported[6];
    assert_eq!(objects_of(red, "marking-definition")[0]["name"], "TLP:RED");
    assert_eq!(
        objects_of(red, "report")[0]["x_beacon_audience"]["members"],
        serde_json::json!(["uk.ncsc"])
    );
    // STIX in: a report written elsewhere (here: ours, under a new id)
    // becomes a bulletin signed by the client that sends it.
    let mut bundle = exported[0].clone();
    let new_id = "0b9a6c3e-5d1f-4e2a-8b7c-6d5e4f3a2b1c";
    for o in bundle["objects"].as_array_mut().unwrap() {
        if o["type"] == "report" {
            o["id"] = serde_json::json!(format!("report--{new_id}"));
        }
    }
    let incoming = work.path().join("incoming.json");
    std::fs::write(&incoming, bundle.to_string()).unwrap();
    let head_before = w.head().await;
    let mut args: Vec<String> = vec![
        "publish".into(),
        "--stix".into(),
        incoming.display().to_string(),
    ];
    args.extend(conn(&files));
    run(args);
    assert_eq!(w.head().await, head_before + 1);
    let mut c = member(w.node.addr, &files, &w.ca).await;
    let got = get_by_id(&mut c, new_id).await.unwrap();
    let env = beacon::net::client::delivered_envelope(&got).unwrap();
    let b = beacon::domain::bulletin::codec::decode_bulletin(&env.payload).unwrap();
    assert_eq!(b.title, first.title);
    assert_eq!(b.indicators.len(), 8, "the eight STIX can express");
    assert_eq!(b.topics, vec!["elections".to_string()]);
    // A bundle with an object Beacon cannot map is refused whole, naming it.
    let mut bad = bundle.clone();
    bad["objects"].as_array_mut().unwrap().push(serde_json::json!({"type": "malware", "id": "malware--0b9a6c3e-5d1f-4e2a-8b7c-6d5e4f3a2b1d", "name": "x", "is_family": false}));
    std::fs::write(&incoming, bad.to_string()).unwrap();
    let mut args: Vec<&str> = vec!["publish", "--stix"];
    let path = incoming.display().to_string();
    args.push(&path);
    let c_args = conn(&files);
    args.extend(c_args.iter().map(String::as_str));
    let (code, _, err) = beacon(work.path(), &args);
    assert_eq!(code, 1);
    assert!(
        err.contains("malware--") && err.contains("not mapped") && err.contains("nothing was sent"),
        "{err}"
    );
    assert_eq!(w.head().await, head_before + 1);

    // BEACON_KEEP_STIX=DIR keeps the bundles (to read the validator's warnings).
    if let Ok(dir) = std::env::var("BEACON_KEEP_STIX") {
        for p in &checked {
            let _ = std::fs::copy(p, Path::new(&dir).join(p.file_name().expect("name")));
        }
    }
}
