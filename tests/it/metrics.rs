//! The operations port: Prometheus metrics and gRPC health without a client certificate.

use std::time::Duration;

use crate::common::*;
use beacon::domain::bulletin::Tlp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_publishes_refusals_handshakes_and_lag() {
    let pki = TestPki::new();
    let ops = free_addr();
    let mut opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    opts.extra = format!("[metrics]\nlisten = \"{ops}\"\n");
    let node = TestNode::start(&opts).await;
    let ca = vec![pki.ca_cert()];
    let files = pki.client("fr.anssi", "analyst");
    let mut c = member(node.addr, &files, &ca).await;

    let b = bulletin("fr.anssi", "counted");
    c.publish(&b).await.expect("publish");
    c.publish(&b).await.expect("republish is a duplicate");
    let mut red = bulletin("fr.anssi", "red without audience");
    red.tlp = beacon::domain::bulletin::codec::tlp_to_i32(Tlp::Red);
    c.publish(&red).await.expect_err("refused");
    // A handshake from outside the trust bundle.
    let stranger_dir = pki.other_ca("stranger", "*");
    let stranger = pki.issue_from(
        &stranger_dir,
        beacon::tools::pki::IssueRequest::new(id(
            beacon::base::identity::RoleKind::Client,
            Some("xx.evil"),
            "eve",
        )),
    );
    assert!(health(node.addr, &stranger, &ca).await.is_err());
    // A durable subscription that has acknowledged nothing.
    let mut sub = c
        .subscribe(open("feed", earliest()))
        .await
        .expect("subscribe");
    read_deliveries(&mut sub, 1, true, Duration::from_secs(10)).await;

    let (status, body) = http_get(ops, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert_eq!(
        sample(&body, "beacon_publishes_total{result=\"accepted\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "beacon_publishes_total{result=\"duplicate\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &body,
            "beacon_publish_refusals_total{reason=\"invalid_fields\"}"
        ),
        Some(1.0)
    );
    // The client may retry its connection, so at least one refusal. The
    // node counts it in its own handshake task, which may finish after the
    // client has already seen the alert: wait for it.
    let counted = wait_until(Duration::from_secs(10), || async {
        let (_, body) = http_get(ops, "/metrics");
        sample(
            &body,
            "beacon_tls_handshake_failures_total{reason=\"unknown_issuer\"}",
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(counted.is_some(), "{body}");
    assert_eq!(sample(&body, "beacon_store_head"), Some(1.0));
    assert!(sample(&body, "beacon_store_fsync_seconds_count").is_some_and(|n| n >= 1.0));
    assert!(
        sample(&body, "beacon_store_batch_records_bucket{le=\"+Inf\"}").is_some_and(|n| n >= 1.0)
    );
    assert!(sample(&body, "beacon_store_size_bytes").is_some_and(|n| n > 0.0));
    assert!(sample(&body, "beacon_deliveries_total").is_some_and(|n| n >= 1.0));
    let lag = format!(
        "beacon_subscription_lag{{identity=\"{}\",name=\"feed\"}}",
        files.identity
    );
    assert_eq!(sample(&body, &lag), Some(1.0), "{body}");

    let (status, body) = http_get(ops, "/healthz");
    assert!(status.contains("200") && body.trim() == "ok");
    let (status, _) = http_get(ops, "/nothing-here");
    assert!(status.contains("404"), "{status}");

    // gRPC health over h2c, as a Kubernetes grpc probe asks it.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{ops}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("h2c connect");
    health_on(channel).await.expect("serving");
    node.stop().await;
}

/// Nothing goes dark unannounced: the node's certificate, its CAs and its
/// CRLs have their expiry as metrics; `beacon status` shows the node
/// certificate's serial and expiry; a certificate within 14 days of its
/// end is warned of in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_crls_announce_their_expiry() {
    let pki = TestPki::new();
    // A node certificate with 7 days left.
    let mut req = beacon::tools::pki::IssueRequest::new(id(
        beacon::base::identity::RoleKind::Node,
        Some("drc"),
        "hub-1",
    ));
    req.ip_addresses = vec![std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)];
    req.validity = Some(Duration::from_secs(7 * 86_400));
    let node_files = pki.issue(req);
    let ops = free_addr();
    let mut opts = NodeOptions::new(&pki, node_files.clone());
    opts.extra = format!("[metrics]\nlisten = \"{ops}\"\n");
    let (dir, addr) = child_config(&opts);
    let node = ChildNode::spawn(dir.path(), &["daemon", "--config", "beacon.toml"], addr);

    let body = {
        let up = wait_until(Duration::from_secs(10), || async {
            std::net::TcpStream::connect(ops).is_ok()
        })
        .await;
        assert!(up.is_some(), "{}", node.log());
        http_get(ops, "/metrics").1
    };
    let node_left = sample(
        &body,
        &format!(
            "beacon_certificate_expiry_seconds{{certificate=\"node\",name=\"{}\"}}",
            node_files.identity
        ),
    )
    .unwrap_or_else(|| panic!("{body}"));
    assert!(
        (6.9 * 86_400.0..=7.0 * 86_400.0).contains(&node_left),
        "{node_left}"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("beacon_certificate_expiry_seconds{certificate=\"ca\"")),
        "{body}"
    );
    let crl = body
        .lines()
        .find_map(|l| {
            l.strip_prefix("beacon_crl_next_update_seconds{")
                .and_then(|r| r.rsplit_once(' '))
                .and_then(|(_, v)| v.parse::<f64>().ok())
        })
        .unwrap_or_else(|| panic!("{body}"));
    assert!(crl > 0.0, "{crl}");

    // The log says so (and not of the CRL, re-signed on schedule).
    let warned = wait_until(Duration::from_secs(10), || async {
        let log = node.log();
        log.contains("this node's certificate expires in 6 days")
            || log.contains("this node's certificate expires in 7 days")
    })
    .await;
    assert!(warned.is_some(), "{}", node.log());
    assert!(!node.log().contains("the CRL of"), "{}", node.log());

    // beacon status: the serial and the expiry, with the advice.
    let op = pki.operator("op");
    let (code, out, err) = beacon(
        dir.path(),
        &[
            &["status"][..],
            &conn_args(addr, &op, &pki.ca_cert())
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()[..],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("certificate: serial {}", node_files.serial))
            && out.contains("renew it now"),
        "{out}"
    );
}

/// The metric names a `/metrics` text declares (`# TYPE` lines), with the
/// series a histogram adds.
fn exported_names(body: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in body.lines() {
        let mut parts = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Every `beacon_…` name in a PromQL expression.
fn named_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("beacon_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The Grafana dashboard shipped in `deploy/grafana/beacon.json` is valid
/// JSON, uses the data source its provisioning defines, and names only
/// metrics a node exports (as a running node's `/metrics` declares them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_names_only_metrics_the_node_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("beacon.json")).expect("read"))
            .expect("the dashboard is JSON");
    let provisioned: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join("provisioning/datasources/prometheus.yaml"))
            .expect("read"),
    )
    .expect("YAML");
    let uid = provisioned["datasources"][0]["uid"]
        .as_str()
        .expect("a data source uid")
        .to_owned();

    let pki = TestPki::new();
    let ops = free_addr();
    let mut opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    opts.extra = format!("[metrics]\nlisten = \"{ops}\"\n");
    let _node = TestNode::start(&opts).await;
    // The operations port is bound as the node starts, after its gRPC
    // port (bound by the harness) already accepts.
    let up = wait_until(Duration::from_secs(30), || async {
        std::net::TcpStream::connect_timeout(&ops, Duration::from_secs(1)).is_ok()
    })
    .await;
    assert!(up.is_some(), "the operations port comes up");
    let (status, body) = http_get(ops, "/metrics");
    assert!(status.contains("200"), "{status}");
    let exported = exported_names(&body);

    let panels = dash["panels"].as_array().expect("panels");
    let mut named = 0;
    for p in panels {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or_default();
        assert_eq!(
            p["datasource"]["uid"],
            uid.as_str(),
            "{title}: its data source"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let names = named_in(expr);
            assert!(!names.is_empty(), "{title}: {expr} names no Beacon metric");
            for n in names {
                assert!(
                    exported.contains(&n),
                    "{title}: {n} is not a metric the node exports"
                );
                named += 1;
            }
        }
    }
    assert!(
        named >= 20,
        "the dashboard covers the node's metrics ({named})"
    );
    // What the issue asks it to show: publish and commit rates and
    // latencies, subscription lag, peer links, store size and pruning,
    // TAXII requests.
    let text = dash.to_string();
    for must in [
        "beacon_publishes_total",
        "beacon_store_fsync_seconds_bucket",
        "beacon_subscription_lag",
        "beacon_peer_lag",
        "beacon_store_size_bytes",
        "beacon_store_pruned_total",
        "beacon_taxii_requests_total",
    ] {
        assert!(text.contains(must), "the dashboard shows {must}");
    }
}
