//! TAXII 2.1 against a real node, with the OASIS client (`taxii2-client`,
//! PyPI) and validator (`stix2-validator`): discovery, collections, every
//! object of 10,000 bulletins (many accepted in the same millisecond) in
//! pages of `limit` following `next`, each exactly once; `added_after`
//! polling while bulletins are being published loses and repeats nothing;
//! objects pass the validator; a member sees over TAXII exactly the
//! bulletins it sees over gRPC.
//!
//! Needs a Python with taxii2-client and stix2-validator (`BEACON_PYTHON`;
//! `pip install -r tests/interop/requirements.txt`). Without them the test
//! says so and passes, unless `BEACON_REQUIRE_PYTHON=1` (as `.ci/run` sets).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use crate::common::*;
use beacon::domain::bulletin::{Indicator, Tlp};
use serde_json::Value;

fn python() -> Option<String> {
    python_with(
        "taxii2client, stix2validator, pymisp",
        "pip install -r tests/interop/requirements.txt",
    )
}

/// The Python side: walks, polls or validates, and prints one JSON object.
const CLIENT: &str = r#"
import json, sys, time
from taxii2client.v21 import Server, as_pages
mode, url, cert, key, ca = sys.argv[1:6]
out = {}
if mode not in ("token", "token-after", "misp"):
    server = Server(url, cert=(cert, key), verify=ca)
    roots = server.api_roots
    coll = roots[0].collections[0]
    out = {"title": server.title, "collections": len(roots[0].collections), "collection": coll.title}
if mode == "walk":
    limit = int(sys.argv[6])
    seen, pages, reports = [], 0, set()
    for env in as_pages(coll.get_objects, per_request=limit):
        pages += 1
        objs = env.get("objects", [])
        assert len(objs) <= limit, len(objs)
        for o in objs:
            seen.append([o["id"], o.get("modified", o.get("created"))])
            if o["type"] == "report":
                reports.add(o["x_beacon_bulletin_id"])
    out.update(pages=pages, objects=seen, bulletins=sorted(reports))
    if len(sys.argv) > 7:
        from stix2validator import validate_string, ValidationOptions
        env = coll.get_objects(limit=int(sys.argv[7]))
        bundle = {"type": "bundle", "id": "bundle--6f1a2e55-3f45-4a8b-9c1d-2e6f5a7b8c9d", "objects": env["objects"]}
        r = validate_string(json.dumps(bundle), ValidationOptions(version="2.1"))
        out["valid"] = r.is_valid
        results = getattr(r, "object_results", None) or [r]
        out["errors"] = [str(e) for o in results for e in (o.errors or [])]
elif mode == "poll":
    # Poll as OpenCTI does: one request at a time, then ask for what was
    # added after the last page's X-TAXII-Date-Added-Last.
    import requests
    want = int(sys.argv[6])
    session = requests.Session()
    session.cert, session.verify = (cert, key), ca
    headers = {"Accept": "application/taxii+json;version=2.1"}
    objects_url = coll.url + "objects/"
    added_after, seen, polls = None, [], 0
    deadline = time.time() + 120
    while time.time() < deadline and len(set(seen)) < want:
        params = {"added_after": added_after} if added_after else {}
        r = session.get(objects_url, headers=headers, params=params)
        r.raise_for_status()
        polls += 1
        body = r.json()
        for o in body.get("objects", []):
            if o["type"] == "report":
                seen.append(o["x_beacon_bulletin_id"])
        if body.get("objects"):
            added_after = r.headers["X-TAXII-Date-Added-Last"]
        else:
            time.sleep(0.02)
    out.update(polls=polls, seen=seen)
elif mode == "hold":
    # One request, then (same session, same kept-alive connection) another
    # once the test says the certificate was revoked.
    import os, requests
    session = requests.Session()
    session.cert, session.verify = (cert, key), ca
    taxii = {"Accept": "application/taxii+json;version=2.1"}
    first = session.get(coll.url + "objects/", headers=taxii, params={"limit": "1"})
    print("first", first.status_code, flush=True)
    deadline = time.time() + 60
    while not os.path.exists(sys.argv[6]) and time.time() < deadline:
        time.sleep(0.02)
    second = session.get(coll.url + "objects/", headers=taxii, params={"limit": "1"})
    out.update(first=first.status_code, second=second.status_code, body=second.json())
elif mode == "post":
    # Add a bundle's objects with taxii2-client, then read the status back.
    import requests
    bundle = json.load(open(sys.argv[6]))
    try:
        status = coll.add_objects({"objects": bundle["objects"]})
    except requests.HTTPError as e:
        sys.exit(f"{e}: {e.response.text}")
    out.update(status_id=status.id, status=status.status, total=status.total_count,
               success=status.success_count, failure=status.failure_count,
               failures=status.failures, successes=status.successes, can_write=coll.can_write)
    session = requests.Session()
    session.cert, session.verify = (cert, key), ca
    h = {"Accept": "application/taxii+json;version=2.1", "Content-Type": "application/taxii+json;version=2.1"}
    out["again"] = session.get(roots[0].url + "status/" + status.id + "/", headers={"Accept": h["Accept"]}).status_code
    out["not_json"] = session.post(coll.url + "objects/", headers=h, data="{not json").status_code
    out["wrong_type"] = session.post(coll.url + "objects/", headers={"Accept": h["Accept"], "Content-Type": "application/json"}, data="{}").status_code
    out["too_large"] = session.post(coll.url + "objects/", headers=h, data="x" * (12 << 20)).status_code
elif mode == "token":
    # No certificate: the token as the Basic password (taxii2-client's
    # user/password, as MISP's taxii21 module passes it), then as Bearer.
    import requests
    token = sys.argv[6]
    tserver = Server(url, user="misp", password=token, verify=ca)
    tcoll = tserver.api_roots[0].collections[0]
    reports = []
    for env in as_pages(tcoll.get_objects, per_request=100):
        reports += [o["x_beacon_bulletin_id"] for o in env.get("objects", []) if o["type"] == "report"]
    out["reports"] = sorted(reports)
    h = {"Accept": "application/taxii+json;version=2.1"}
    out["bearer"] = requests.get(url, headers={**h, "Authorization": "Bearer " + token}, verify=ca).status_code
    none = requests.get(url, headers=h, verify=ca)
    out["none"] = none.status_code
    out["www_authenticate"] = none.headers.get("WWW-Authenticate", "")
    out["wrong"] = requests.get(url, headers={**h, "Authorization": "Bearer bcn_000000000000_nope"}, verify=ca).status_code
elif mode == "token-after":
    import requests
    h = {"Accept": "application/taxii+json;version=2.1"}
    out = {"after": requests.get(url, headers={**h, "Authorization": "Bearer " + sys.argv[6]}, verify=ca).status_code}
    print(json.dumps(out))
    sys.exit(0)
elif mode == "misp":
    # The feed as MISP fetches it (token as Basic, plain JSON), each event
    # loaded by PyMISP.
    import requests
    from pymisp import MISPEvent
    token = sys.argv[6]
    auth = ("misp", token)
    base = url.replace("/taxii2/", "/misp/")
    manifest = requests.get(base + "manifest.json", auth=auth, verify=ca).json()
    out["manifest"] = manifest
    events = {}
    for uuid in manifest:
        e = MISPEvent()
        raw = requests.get(base + uuid + ".json", auth=auth, verify=ca)
        if "Event" not in raw.json():
            sys.exit(f"{raw.status_code} {raw.text}")
        e.load(raw.json())
        events[uuid] = {"info": e.info, "tags": sorted(t.name for t in e.tags),
                        "attributes": sorted((a.type, a.value) for a in e.attributes),
                        "distribution": int(e.distribution), "org": e.Orgc.name}
    out["events"] = events
    out["missing"] = requests.get(base + "00000000-0000-4000-8000-000000000000.json", auth=auth, verify=ca).status_code
elif mode == "versions":
    import requests
    session = requests.Session()
    session.cert, session.verify = (cert, key), ca
    h = {"Accept": "application/taxii+json;version=2.1"}
    rid = sys.argv[6]
    get = lambda path, **p: session.get(coll.url + path, headers=h, params=p).json()
    out["versions"] = get("objects/" + rid + "/versions/").get("versions", [])
    out["last"] = get("objects/", **{"match[id]": rid}).get("objects", [])
    out["first"] = get("objects/", **{"match[id]": rid, "match[version]": "first"}).get("objects", [])
    out["all"] = get("objects/", **{"match[id]": rid, "match[version]": "all"}).get("objects", [])
    out["object"] = get("objects/" + rid + "/").get("objects", [])
    out["types"] = sorted({o["type"] for o in get("objects/", **{"match[type]": "indicator,report"}).get("objects", [])})
elif mode == "errors":
    # Each case: (name, method, path, query, headers) -> status code.
    import requests
    session = requests.Session()
    session.cert, session.verify = (cert, key), ca
    taxii = {"Accept": "application/taxii+json;version=2.1"}
    base = coll.url
    cases = {
        "json-accept": session.get(url, headers={"Accept": "application/json"}),
        "no-collection": session.get(url + "beacon/collections/00000000-0000-4000-8000-000000000000/", headers=taxii),
        "limit-zero": session.get(base + "objects/", headers=taxii, params={"limit": "0"}),
        "limit-text": session.get(base + "objects/", headers=taxii, params={"limit": "many"}),
        "added-after-text": session.get(base + "objects/", headers=taxii, params={"added_after": "yesterday"}),
        "next-forged": session.get(base + "objects/", headers=taxii, params={"next": "not-ours"}),
        "post-other-member": session.post(base + "objects/", headers={**taxii, "Content-Type": "application/taxii+json;version=2.1"}, data='{"objects": []}'),
        "put": session.put(base + "objects/", headers=taxii, data="{}"),
        "ms-added-after": session.get(base + "objects/", headers=taxii, params={"added_after": "2020-01-01T00:00:00.123Z"}),
        "ns-added-after": session.get(base + "objects/", headers=taxii, params={"added_after": "2020-01-01T00:00:00.123456789Z"}),
        "manifest": session.get(base + "manifest/", headers=taxii, params={"limit": "5"}),
        "nothing-newer": session.get(base + "objects/", headers=taxii, params={"added_after": "2999-01-01T00:00:00.5Z"}),
        "no-object": session.get(base + "objects/report--00000000-0000-4000-8000-000000000000/versions/", headers=taxii),
    }
    out["status"] = {k: r.status_code for k, r in cases.items()}
    out["content_types"] = sorted({r.headers.get("Content-Type", "") for r in cases.values()})
    out["error_titles"] = {k: r.json().get("title") for k, r in cases.items() if r.status_code >= 400}
    out["manifest"] = cases["manifest"].json()
    out["empty_last"] = cases["nothing-newer"].headers.get("X-TAXII-Date-Added-Last")
    out["empty_body"] = cases["nothing-newer"].json()
    # TLS 1.2 only, as older TAXII clients speak it.
    import ssl, socket
    from urllib.parse import urlparse
    u = urlparse(url)
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((u.hostname, u.port)) as raw:
        with ctx.wrap_socket(raw, server_hostname=u.hostname) as tls:
            out["tls12"] = tls.version()
    first = session.get(base + "objects/", headers=taxii, params={"limit": "1"}).json()["objects"][0]
    out["object"] = session.get(base + "objects/" + first["id"] + "/", headers=taxii).json()
    out["versions"] = session.get(base + "objects/" + first["id"] + "/versions/", headers=taxii).json()
print(json.dumps(out))
"#;

/// A node of member drc with TAXII on a port of its own (`extra`: more
/// `[taxii]` lines); its TAXII address.
async fn taxii_node(pki: &TestPki, extra: &str) -> (TestNode, std::net::SocketAddr) {
    let taxii = free_addr();
    let mut opts = NodeOptions::new(pki, pki.node("drc", "hub-1"));
    opts.extra = format!("[taxii]\nlisten = \"{taxii}\"\n{extra}");
    let node = TestNode::start(&opts).await;
    let listening = wait_until(std::time::Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(taxii).await.is_ok()
    })
    .await;
    assert!(listening.is_some(), "the TAXII port never listened");
    (node, taxii)
}

/// The Python client (`CLIENT`) with `args`, not yet run.
fn client_command(py: &str, args: &[String]) -> Command {
    let mut c = Command::new(py);
    c.arg("-c")
        .arg(CLIENT)
        .args(args)
        // requests lets these override a session's own `verify` (its
        // issue 3829), which is how taxii2-client passes the CA.
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .stdin(Stdio::null());
    c
}

fn run_client(py: &str, args: &[String]) -> Value {
    let out = client_command(py, args)
        .output()
        .expect("run taxii2-client");
    assert!(
        out.status.success(),
        "taxii2-client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii2_client_walks_every_object_once_and_sees_only_what_it_may() {
    let Some(py) = python() else { return };
    let pki = TestPki::new();
    let (node, taxii) = taxii_node(&pki, "title = \"Beacon test node\"\n").await;
    let ca = vec![pki.ca_cert()];
    let uk_files = pki.client("uk.ncsc", "analyst");
    let fr_files = pki.client("fr.anssi", "analyst");
    let uk = member(node.addr, &uk_files, &ca).await;

    // 10,000 bulletins on one stream: group commits put many of them in
    // the same millisecond. Every seventh is TLP:RED to uk.ncsc only.
    let total = 10_000usize;
    let mut stream = uk.clone().publish_stream().await.unwrap();
    let mut red = 0;
    for i in 0..total {
        let mut b = bulletin("uk.ncsc", &format!("bulletin {i}"));
        if i % 3 == 0 {
            b.indicators = vec![Indicator {
                kind: "domain".into(),
                value: format!("d{i}.example"),
                ..Default::default()
            }];
        }
        if i % 7 == 0 {
            b.tlp = beacon::domain::bulletin::codec::tlp_to_i32(Tlp::Red);
            b.audience.members = vec!["uk.ncsc".into()];
            red += 1;
        } else if i % 11 == 0 {
            // AMBER to fr.anssi: fr reads it.
            b.tlp = beacon::domain::bulletin::codec::tlp_to_i32(Tlp::Amber);
            b.audience.members = vec!["fr.anssi".into()];
        } else if i % 13 == 0 {
            // AMBER+STRICT for the publisher's own member: fr does not.
            b.tlp = beacon::domain::bulletin::codec::tlp_to_i32(Tlp::AmberStrict);
            b.audience.members = vec!["uk.ncsc".into()];
            red += 1;
        } else if i % 17 == 0 {
            b.tlp = beacon::domain::bulletin::codec::tlp_to_i32(Tlp::Red);
            b.audience.members = vec!["fr.anssi".into()];
        }
        let env = uk.signer.sign(b.to_bytes()).unwrap();
        stream.send(&env).await.unwrap();
    }
    for r in stream.finish().await.unwrap() {
        r.expect("accepted");
    }

    let url = format!("https://127.0.0.1:{}/taxii2/", taxii.port());
    let args = |files: &CertFiles, mode: &str, extra: &[&str]| -> Vec<String> {
        let mut v = vec![
            mode.to_owned(),
            url.clone(),
            files.cert.display().to_string(),
            files.key.display().to_string(),
            pki.ca_cert().display().to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    // The writer, in pages of 1,000, validated on the way.
    let walk = run_client(&py, &args(&uk_files, "walk", &["1000", "300"]));
    assert_eq!(walk["title"], "Beacon test node");
    assert_eq!(walk["collection"], "bulletins");
    assert_eq!(walk["valid"], true, "{}", walk["errors"]);
    let bulletins = walk["bulletins"].as_array().unwrap().len();
    assert_eq!(bulletins, total, "every bulletin, once");
    let objects = walk["objects"].as_array().unwrap();
    let reports_and_indicators: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            let id = o[0].as_str().unwrap();
            id.starts_with("report--") || id.starts_with("indicator--")
        })
        .collect();
    let unique: BTreeSet<String> = reports_and_indicators
        .iter()
        .map(|o| format!("{}@{}", o[0], o[1]))
        .collect();
    assert_eq!(
        unique.len(),
        reports_and_indicators.len(),
        "no report or indicator twice"
    );
    assert_eq!(unique.len(), total + total.div_ceil(3));
    // 13,334 reports and indicators in pages of at most 1,000.
    assert!(walk["pages"].as_u64().unwrap() >= 14, "{}", walk["pages"]);

    // Another member: exactly what gRPC gives it.
    let walk_fr = run_client(&py, &args(&fr_files, "walk", &["500"]));
    let over_taxii: BTreeSet<String> = walk_fr["bulletins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let over_grpc: BTreeSet<String> = list_all(node.addr, &fr_files, &ca)
        .await
        .unwrap()
        .iter()
        .map(delivery_id)
        .collect();
    assert_eq!(over_taxii.len(), total - red);
    assert_eq!(over_taxii, over_grpc, "the TLP × audience view is the same");

    // Bad requests get TAXII errors with the TAXII media type.
    let e = run_client(&py, &args(&fr_files, "errors", &[]));
    let status = &e["status"];
    assert_eq!(status["json-accept"], 406, "{e}");
    assert_eq!(status["no-collection"], 404, "{e}");
    assert_eq!(status["limit-zero"], 400, "{e}");
    assert_eq!(status["limit-text"], 400, "{e}");
    assert_eq!(status["added-after-text"], 400, "{e}");
    assert_eq!(status["next-forged"], 400, "{e}");
    assert_eq!(status["post-other-member"], 403, "{e}");
    assert_eq!(status["put"], 405, "{e}");
    assert_eq!(status["ms-added-after"], 200, "{e}");
    assert_eq!(status["ns-added-after"], 200, "{e}");
    assert_eq!(status["no-object"], 404, "{e}");
    assert_eq!(status["nothing-newer"], 200, "{e}");
    assert_eq!(
        e["empty_body"],
        serde_json::json!({}),
        "an empty page is {{}}: {e}"
    );
    assert_eq!(e["empty_last"], "2999-01-01T00:00:00.500000Z", "{e}");
    assert_eq!(e["tls12"], "TLSv1.2", "{e}");
    assert_eq!(
        e["content_types"],
        serde_json::json!([beacon_taxii()]),
        "{e}"
    );
    // A page ends before a bulletin's group that would not fit whole.
    let listed = e["manifest"]["objects"].as_array().unwrap().len();
    assert!(
        (1..=5).contains(&listed) && e["manifest"]["more"] == true,
        "{e}"
    );
    assert_eq!(
        e["manifest"]["objects"][0]["media_type"],
        "application/stix+json;version=2.1"
    );
    assert_eq!(e["object"]["objects"].as_array().unwrap().len(), 1, "{e}");
    assert_eq!(
        e["versions"]["versions"].as_array().unwrap().len(),
        1,
        "{e}"
    );
    node.stop().await;
}

fn beacon_taxii() -> &'static str {
    "application/taxii+json;version=2.1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_after_polling_while_publishing_loses_and_repeats_nothing() {
    let Some(py) = python() else { return };
    let pki = TestPki::new();
    let (node, taxii) = taxii_node(&pki, "max_page = 100\n").await;
    let ca = vec![pki.ca_cert()];
    let files = pki.client("uk.ncsc", "analyst");
    let uk = member(node.addr, &files, &ca).await;
    let total = 3_000usize;
    let url = format!("https://127.0.0.1:{}/taxii2/", taxii.port());
    // The poller runs while the bulletins are published, in bursts that
    // put many in one millisecond.
    let poller = {
        let py = py.clone();
        let args: Vec<String> = vec![
            "poll".into(),
            url,
            files.cert.display().to_string(),
            files.key.display().to_string(),
            pki.ca_cert().display().to_string(),
            total.to_string(),
        ];
        tokio::task::spawn_blocking(move || run_client(&py, &args))
    };
    let mut published = BTreeSet::new();
    for burst in 0..30 {
        let mut stream = uk.clone().publish_stream().await.unwrap();
        for i in 0..total / 30 {
            let b = bulletin("uk.ncsc", &format!("burst {burst} #{i}"));
            published.insert(b.id.clone());
            stream
                .send(&uk.signer.sign(b.to_bytes()).unwrap())
                .await
                .unwrap();
        }
        for r in stream.finish().await.unwrap() {
            r.expect("accepted");
        }
    }
    let polled = poller.await.unwrap();
    let seen: Vec<String> = polled["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique, published, "every bulletin polled");
    assert_eq!(seen.len(), unique.len(), "none twice");
    assert!(
        polled["polls"].as_u64().unwrap() >= 30,
        "{}",
        polled["polls"]
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_reader_is_cut_off_on_a_connection_already_open() {
    let Some(py) = python() else { return };
    let pki = TestPki::new();
    let (node, taxii) = taxii_node(&pki, "").await;
    let ca = vec![pki.ca_cert()];
    let files = pki.client("uk.ncsc", "leaver");
    let mut uk = member(node.addr, &files, &ca).await;
    uk.publish(&bulletin("uk.ncsc", "one")).await.unwrap();
    let op = pki.operator("alice");
    let flag = tempfile::tempdir().unwrap();
    let go = flag.path().join("revoked");
    let hold: Vec<String> = vec![
        "hold".into(),
        format!("https://127.0.0.1:{}/taxii2/", taxii.port()),
        files.cert.display().to_string(),
        files.key.display().to_string(),
        pki.ca_cert().display().to_string(),
        go.display().to_string(),
    ];
    let mut child = client_command(&py, &hold)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "first 200", "{line}");
    pki.revoke(&files);
    wait_revocations(node.addr, &op, &ca, 1).await;
    std::fs::write(&go, b"").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let out: Value = serde_json::from_str(rest.trim()).expect("json");
    assert_eq!(out["second"], 401, "{out}");
    assert!(
        out["body"]["description"]
            .as_str()
            .unwrap()
            .contains("no longer accepted"),
        "{out}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stix_bundle_posted_by_a_client_is_signed_by_its_node_and_read_over_grpc() {
    let Some(py) = python() else { return };
    let pki = TestPki::new();
    let (node, taxii) = taxii_node(&pki, "").await;
    let ca = vec![pki.ca_cert()];
    let writer = pki.client("drc", "analyst");
    let outsider = pki.client("fr.anssi", "analyst");
    let report_id = "2c1d0e9f-8a7b-4c6d-9e5f-1a2b3c4d5e6f";
    let bundle = serde_json::json!({"type": "bundle", "id": "bundle--3c1d0e9f-8a7b-4c6d-9e5f-1a2b3c4d5e6f", "objects": [
        {"type": "identity", "spec_version": "2.1", "id": "identity--4c1d0e9f-8a7b-4c6d-9e5f-1a2b3c4d5e6f",
         "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z", "name": "DRC analysts", "identity_class": "organization"},
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--5c1d0e9f-8a7b-4c6d-9e5f-1a2b3c4d5e6f",
         "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z", "pattern": "[domain-name:value = 'vote-now.example']",
         "pattern_type": "stix", "valid_from": "2026-11-01T00:00:00.000Z"},
        {"type": "report", "spec_version": "2.1", "id": format!("report--{report_id}"),
         "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z", "name": "Fake polling-station notices",
         "description": "Texts send voters to a fake site.", "published": "2026-11-01T00:00:00.000Z",
         "object_refs": ["indicator--5c1d0e9f-8a7b-4c6d-9e5f-1a2b3c4d5e6f"],
         "object_marking_refs": ["marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"], "labels": ["elections"]},
        {"type": "malware", "spec_version": "2.1", "id": "malware--6c1d0e9f-8a7b-4c6d-9e5f-1a2b3c4d5e6f",
         "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z", "name": "x", "is_family": false}
    ]});
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("bundle.json");
    std::fs::write(&file, bundle.to_string()).unwrap();
    let url = format!("https://127.0.0.1:{}/taxii2/", taxii.port());
    let args = |files: &CertFiles| -> Vec<String> {
        vec![
            "post".into(),
            url.clone(),
            files.cert.display().to_string(),
            files.key.display().to_string(),
            pki.ca_cert().display().to_string(),
            file.display().to_string(),
        ]
    };
    // A subscriber of another member is listening before the post.
    let mut reader = member(node.addr, &outsider, &ca).await;
    let mut sub = reader.subscribe(open("", earliest())).await.unwrap();

    let out = run_client(&py, &args(&writer));
    assert_eq!(out["can_write"], true, "{out}");
    assert_eq!(out["status"], "complete", "{out}");
    assert_eq!(out["total"], 4, "{out}");
    // The report and its indicator; not the analysts' identity (the node
    // serves drc's own, so it could not be read by its id) nor the malware.
    assert_eq!(out["success"], 2, "{out}");
    assert_eq!(out["failure"], 2, "{out}");
    let failure = |prefix: &str| {
        out["failures"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"].as_str().unwrap().starts_with(prefix))
            .and_then(|f| f["message"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(failure("malware--").contains("not mapped"), "{out}");
    assert!(failure("identity--").contains("not kept"), "{out}");
    assert_eq!(out["again"], 200, "{out}");
    assert_eq!(out["not_json"], 422, "{out}");
    assert_eq!(out["wrong_type"], 415, "{out}");
    assert_eq!(out["too_large"], 413, "{out}");

    // The bulletin reaches a gRPC subscriber, signed by the node, naming
    // the client; its signature chain verifies.
    let seen = read_deliveries(&mut sub, 1, false, std::time::Duration::from_secs(20)).await;
    assert_eq!(seen.ids, vec![report_id.to_string()]);
    let mut c = member(node.addr, &outsider, &ca).await;
    let d = get_by_id(&mut c, report_id).await.unwrap();
    let env = beacon::net::client::delivered_envelope(&d).unwrap();
    let bundle_trust = {
        let cert = beacon::trust::read_certs(&pki.ca_cert()).unwrap().remove(0);
        let entry =
            beacon::trust::CaEntry::new(cert, beacon::base::identity::MemberScope::any()).unwrap();
        beacon::trust::TrustBundle::new("alliance.example".parse().unwrap(), vec![entry], vec![])
            .unwrap()
    };
    let v = beacon::domain::bulletin::verify_stored_envelope(
        &env,
        &bundle_trust,
        std::time::SystemTime::now(),
    )
    .expect("verifies");
    assert_eq!(
        v.signer().to_string(),
        "spiffe://alliance.example/node/drc/hub-1"
    );
    assert_eq!(v.bulletin().submitted_by, writer.identity);
    assert_eq!(v.bulletin().publisher, "drc");
    assert_eq!(v.bulletin().indicators[0].value, "vote-now.example");

    // Posting again is a duplicate, not a second bulletin; a client of
    // another member may not post to this node.
    let again = run_client(&py, &args(&writer));
    assert_eq!(again["success"], 2, "{again}");
    let head = head(node.addr, &pki.operator("op"), &ca).await;
    assert_eq!(head, 1);
    let refused = client_command(&py, &args(&outsider)).output().unwrap();
    // taxii2-client reads can_write (false for it) and does not send; the
    // server's 403 for a direct POST is checked in the first test.
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("does not allow writing"), "{err}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_token_reads_as_its_client_until_revoked() {
    let Some(py) = python() else { return };
    let pki = TestPki::new();
    let (node, taxii) = taxii_node(&pki, "tokens = true\n").await;
    let ca = vec![pki.ca_cert()];
    let mut uk = member(node.addr, &pki.client("uk.ncsc", "analyst"), &ca).await;
    let open_to_all = bulletin("uk.ncsc", "green");
    let mut for_uk = bulletin("uk.ncsc", "red for uk");
    for_uk.tlp = beacon::domain::bulletin::codec::tlp_to_i32(Tlp::Red);
    for_uk.audience.members = vec!["uk.ncsc".into()];
    let mut for_fr = bulletin("uk.ncsc", "red for fr");
    for_fr.tlp = beacon::domain::bulletin::codec::tlp_to_i32(Tlp::Red);
    for_fr.audience.members = vec!["fr.anssi".into()];
    for b in [&open_to_all, &for_uk, &for_fr] {
        uk.publish(b).await.unwrap();
    }
    let op = pki.operator("alice");
    let work = tempfile::tempdir().unwrap();
    let admin = |args: &[&str]| {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(conn_args(node.addr, &op, &pki.ca_cert()));
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        beacon(work.path(), &v)
    };
    let (code, token, err) = admin(&[
        "admin", "token", "issue", "--member", "fr.anssi", "--name", "misp",
    ]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("bcn_"), "{token}");
    let id = token.split('_').nth(1).unwrap().to_owned();
    let url = format!("https://127.0.0.1:{}/taxii2/", taxii.port());
    let args = |mode: &str| -> Vec<String> {
        vec![
            mode.into(),
            url.clone(),
            String::new(),
            String::new(),
            pki.ca_cert().display().to_string(),
            token.clone(),
        ]
    };
    let out = run_client(&py, &args("token"));
    let mut want = vec![open_to_all.id.clone(), for_fr.id.clone()];
    want.sort();
    assert_eq!(
        out["reports"],
        serde_json::json!(want),
        "fr.anssi's view, no more: {out}"
    );
    assert_eq!(out["bearer"], 200, "{out}");
    assert_eq!(out["none"], 401, "{out}");
    assert!(
        out["www_authenticate"].as_str().unwrap().contains("Basic"),
        "{out}"
    );
    assert_eq!(out["wrong"], 401, "{out}");
    // The register keeps no token, only its digest.
    let register = std::fs::read_to_string(node.data.path().join("store/tokens.json")).unwrap();
    assert!(register.contains(&id) && !register.contains(&token));
    let (code, listed, _) = admin(&["admin", "token", "list"]);
    assert_eq!(code, 0);
    assert!(
        listed.contains("spiffe://alliance.example/client/fr.anssi/misp"),
        "{listed}"
    );
    // The MISP feed, read with the token: fr.anssi's view, as PyMISP loads it.
    let misp = run_client(&py, &args("misp"));
    let events = misp["events"].as_object().unwrap();
    let mut ids: Vec<&String> = events.keys().collect();
    ids.sort();
    assert_eq!(ids, want.iter().collect::<Vec<_>>(), "{misp}");
    let red = &events[&for_fr.id];
    assert_eq!(red["distribution"], 0, "{misp}");
    assert!(
        red["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "tlp:red"),
        "{misp}"
    );
    assert_eq!(red["org"], "uk.ncsc");
    assert_eq!(events[&open_to_all.id]["distribution"], 2);
    assert_eq!(misp["missing"], 404);

    let (code, _, err) = admin(&["admin", "token", "revoke", "--id", &id]);
    assert_eq!(code, 0, "{err}");
    let after = run_client(&py, &args("token-after"));
    assert_eq!(after["after"], 401, "revoked at once: {after}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_and_retractions_are_versions_of_one_report_over_taxii() {
    let Some(py) = python() else { return };
    let pki = TestPki::new();
    let (node, taxii) = taxii_node(&pki, "").await;
    let ca = vec![pki.ca_cert()];
    let files = pki.client("uk.ncsc", "analyst");
    let mut uk = member(node.addr, &files, &ca).await;
    let mut first = bulletin("uk.ncsc", "first");
    first.indicators = vec![Indicator {
        kind: "domain".into(),
        value: "a.example".into(),
        ..Default::default()
    }];
    let mut revision = bulletin("uk.ncsc", "revised");
    revision.relation = Some(beacon::domain::bulletin::Relation::Supersedes(
        first.id.clone(),
    ));
    let mut retraction = bulletin("uk.ncsc", "withdrawn");
    retraction.relation = Some(beacon::domain::bulletin::Relation::Retracts(
        revision.id.clone(),
    ));
    // Each version is `modified` at its bulletin's signed creation time:
    // three drafts made in one microsecond (a loaded machine) would be one
    // version.
    let base = first.created_at.expect("a draft has its creation time");
    revision.created_at = Some(base + std::time::Duration::from_millis(1));
    retraction.created_at = Some(base + std::time::Duration::from_millis(2));
    for b in [&first, &revision, &retraction] {
        uk.publish(b).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let rid = format!("report--{}", first.id);
    let out = run_client(
        &py,
        &[
            "versions".into(),
            format!("https://127.0.0.1:{}/taxii2/", taxii.port()),
            files.cert.display().to_string(),
            files.key.display().to_string(),
            pki.ca_cert().display().to_string(),
            rid.clone(),
        ],
    );
    assert_eq!(out["versions"].as_array().unwrap().len(), 3, "{out}");
    let last = out["last"].as_array().unwrap();
    assert_eq!(last.len(), 1, "the last version only: {out}");
    assert_eq!(last[0]["revoked"], true, "{out}");
    assert_eq!(last[0]["name"], "withdrawn");
    let first_v = out["first"].as_array().unwrap();
    assert_eq!(first_v.len(), 1, "{out}");
    assert_eq!(first_v[0]["name"], "first");
    assert_eq!(first_v[0]["created"], first_v[0]["modified"]);
    assert_eq!(out["all"].as_array().unwrap().len(), 3, "{out}");
    assert_eq!(
        out["object"], out["last"],
        "the object endpoint gives the last version"
    );
    assert_eq!(out["types"], serde_json::json!(["indicator", "report"]));
    node.stop().await;
}

const TAXII_ACCEPT: &str = "application/taxii+json;version=2.1";

/// A GET on the TAXII port as `files`, parsed as JSON where it is JSON.
async fn taxii_get(
    taxii: std::net::SocketAddr,
    files: &CertFiles,
    ca: &[std::path::PathBuf],
    path: &str,
    accept: &str,
) -> HttpsResponse {
    https(
        taxii,
        Some(files),
        ca,
        "GET",
        path,
        &[("accept", accept)],
        b"",
    )
    .await
    .expect("TAXII answers")
}

fn json_of(r: &HttpsResponse) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

/// What the standard's text and MISP's feed fetcher expect, checked in
/// Rust against a real node (no Python needed): quoted media type
/// parameters, lists in match[version], `first` as the reader sees the
/// versions, 404 for an unknown object, posted objects counted only when
/// readable by the id they were posted with, patterns with OR, and the MISP
/// feed at the URL MISP builds (`…/misp//manifest.json`) with hashes.csv.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_and_misp_details_hold_as_their_clients_read_them() {
    let pki = TestPki::new();
    let (node, taxii) = taxii_node(&pki, "").await;
    let ca = vec![pki.ca_cert()];
    let uk_files = pki.client("uk.ncsc", "analyst");
    let fr_files = pki.client("fr.anssi", "analyst");
    let writer = pki.client("drc", "analyst");

    // Quoted parameters are the same media type (RFC 9110).
    let quoted = "application/taxii+json; version=\"2.1\"";
    let r = taxii_get(taxii, &fr_files, &ca, "/taxii2/", quoted).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = taxii_get(
        taxii,
        &fr_files,
        &ca,
        "/taxii2/",
        "application/taxii+json;version=2.0",
    )
    .await;
    assert_eq!(r.status, 406, "{r:?}");
    let collections = json_of(
        &taxii_get(
            taxii,
            &fr_files,
            &ca,
            "/taxii2/beacon/collections/",
            TAXII_ACCEPT,
        )
        .await,
    );
    let coll = collections["collections"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let objects = format!("/taxii2/beacon/collections/{coll}/objects/");

    // A revision that reaches more readers than the original: fr.anssi
    // may read only the revision, uk.ncsc both.
    let mut uk = member(node.addr, &uk_files, &ca).await;
    let mut original = bulletin("uk.ncsc", "for the ncsc only");
    original.tlp = beacon::domain::bulletin::codec::tlp_to_i32(Tlp::AmberStrict);
    original.audience.members = vec!["uk.ncsc".into()];
    let mut revision = bulletin("uk.ncsc", "now for everyone");
    revision.relation = Some(beacon::domain::bulletin::Relation::Supersedes(
        original.id.clone(),
    ));
    uk.publish(&original).await.unwrap();
    uk.publish(&revision).await.unwrap();
    let fr_view = json_of(&taxii_get(taxii, &fr_files, &ca, &objects, TAXII_ACCEPT).await);
    let fr_reports: Vec<&Value> = fr_view["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["type"] == "report")
        .collect();
    assert_eq!(fr_reports.len(), 1, "{fr_view}");
    let fr_report = fr_reports[0]["id"].as_str().unwrap().to_owned();
    assert!(
        !fr_view.to_string().contains(&original.id),
        "nothing names the hidden version: {fr_view}"
    );
    assert_eq!(fr_report, format!("report--{}", revision.id));
    // `first` is the first version this reader may see; with `last` in
    // one list, as TAXII 2.1 §3.4.1 allows.
    for q in [
        "first",
        "first,last",
        "last,first",
        "first,2020-01-01T00:00:00Z,last",
        "all",
    ] {
        let path = format!("{objects}{fr_report}/?match%5Bversion%5D={q}");
        let r = taxii_get(taxii, &fr_files, &ca, &path, TAXII_ACCEPT).await;
        assert_eq!(r.status, 200, "{q}: {r:?}");
        let got = json_of(&r);
        assert_eq!(
            got["objects"].as_array().map(Vec::len),
            Some(1),
            "{q}: {got}"
        );
        assert_eq!(got["objects"][0]["name"], "now for everyone", "{q}: {got}");
        assert_eq!(
            got["objects"][0]["created"], got["objects"][0]["modified"],
            "{q}: {got}"
        );
    }
    let versions = json_of(
        &taxii_get(
            taxii,
            &fr_files,
            &ca,
            &format!("{objects}{fr_report}/versions/"),
            TAXII_ACCEPT,
        )
        .await,
    );
    assert_eq!(
        versions["versions"].as_array().map(Vec::len),
        Some(1),
        "{versions}"
    );
    // uk.ncsc sees both, under the original's id.
    let uk_report = format!("report--{}", original.id);
    let path = format!("{objects}{uk_report}/?match%5Bversion%5D=first,last");
    let got = json_of(&taxii_get(taxii, &uk_files, &ca, &path, TAXII_ACCEPT).await);
    assert_eq!(got["objects"].as_array().map(Vec::len), Some(2), "{got}");
    let path = format!("{objects}{uk_report}/?match%5Bversion%5D=first");
    let got = json_of(&taxii_get(taxii, &uk_files, &ca, &path, TAXII_ACCEPT).await);
    assert_eq!(got["objects"][0]["name"], "for the ncsc only", "{got}");
    // An object that is not there, or that the reader may not see: 404
    // from the object endpoint as from its versions.
    for (files, id) in [
        (
            &fr_files,
            "report--00000000-0000-4000-8000-000000000000".to_owned(),
        ),
        (&fr_files, uk_report.clone()),
    ] {
        for suffix in ["", "versions/"] {
            let r = taxii_get(
                taxii,
                files,
                &ca,
                &format!("{objects}{id}/{suffix}"),
                TAXII_ACCEPT,
            )
            .await;
            assert_eq!(r.status, 404, "{id}/{suffix}: {r:?}");
        }
    }

    // A post with a quoted Content-Type, an OR pattern, and an identity
    // that is not the member's.
    let indicator = "indicator--7d1d0e9f-8a7b-4c6d-9e5f-1a2b3c4d5e6f";
    let pattern = "[domain-name:value = 'a.example'] OR [domain-name:value = 'b.example']";
    let report = "report--8d1d0e9f-8a7b-4c6d-9e5f-1a2b3c4d5e6f";
    let envelope = serde_json::json!({"objects": [
        {"type": "identity", "spec_version": "2.1", "id": "identity--9d1d0e9f-8a7b-4c6d-9e5f-1a2b3c4d5e6f",
         "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z", "name": "DRC analysts", "identity_class": "organization"},
        {"type": "indicator", "spec_version": "2.1", "id": indicator,
         "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z", "pattern": pattern,
         "pattern_type": "stix", "valid_from": "2026-11-01T00:00:00.000Z"},
        {"type": "report", "spec_version": "2.1", "id": report,
         "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z", "name": "Two lookalike domains",
         "published": "2026-11-01T00:00:00.000Z", "object_refs": [indicator],
         "object_marking_refs": ["marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"]}
    ]});
    let r = https(
        taxii,
        Some(&writer),
        &ca,
        "POST",
        &objects,
        &[("accept", TAXII_ACCEPT), ("content-type", quoted)],
        envelope.to_string().as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{r:?}");
    let status = json_of(&r);
    assert_eq!(status["total_count"], 3, "{status}");
    assert_eq!(status["success_count"], 2, "{status}");
    assert_eq!(status["failure_count"], 1, "{status}");
    assert!(
        status["failures"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not kept"),
        "{status}"
    );
    // What was counted as added is readable by the id it was posted with.
    for s in status["successes"].as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        let r = taxii_get(
            taxii,
            &writer,
            &ca,
            &format!("{objects}{id}/"),
            TAXII_ACCEPT,
        )
        .await;
        assert_eq!(r.status, 200, "{id}: {r:?}");
        let got = json_of(&r);
        assert_eq!(got["objects"][0]["id"], id, "{got}");
        if id == indicator {
            assert_eq!(got["objects"][0]["pattern"], pattern, "{got}");
        }
    }

    // MISP appends /manifest.json to the URL it is given (README's ends in /).
    let r = taxii_get(
        taxii,
        &uk_files,
        &ca,
        "/misp//manifest.json",
        "application/json",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let manifest = json_of(&r);
    assert!(manifest.get(&revision.id).is_some(), "{manifest}");
    let r = taxii_get(taxii, &writer, &ca, "/misp/hashes.csv", "text/csv").await;
    assert_eq!(r.status, 200, "{r:?}");
    let report_uuid = report.strip_prefix("report--").unwrap();
    // The MD5 of each value (a.example, b.example), as MISP's feed
    // generator writes them, then the event.
    let lines: Vec<&str> = r
        .body
        .lines()
        .filter(|l| l.ends_with(report_uuid))
        .collect();
    assert_eq!(
        lines,
        vec![
            format!("af60befa758e782df5bdf9901187616d,{report_uuid}"),
            format!("7917f65461a6a693b84c53c84cc85f68,{report_uuid}"),
        ],
        "{}",
        r.body
    );
    node.stop().await;
}
