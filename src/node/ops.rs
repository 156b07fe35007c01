//! The node's local operations port and its Prometheus exposition.
//!
//! [`render`] reads, through a [`Scrape`] handle (not the node's whole
//! state), the counters of `metrics`, the store's and the broker's at scrape
//! time, with per-subscription and per-peer gauges taken from the live
//! registries. Label values come from small fixed sets (reasons) or
//! from bounded registries (subscriptions are capped by
//! `limits.max_subscriptions`, peers by the config).
//!
//! The operations port (`[metrics] listen`, plain text, meant for loopback or a
//! pod network) serves `GET /metrics`, `GET /healthz`, and the gRPC health
//! service over h2c, so Kubernetes `grpc` probes work without a client
//! certificate. Nothing else is served there.
//!
//! The text is written here rather than by the `prometheus-client` crate:
//! its encoders write OpenMetrics (a `# EOF` line, `_total` added to counter
//! samples) and end every HELP text with a period of their own, so the
//! exposition operators and `promtool check metrics` see today could not be
//! kept identical; and most figures here are read at scrape time from the
//! store and the registries, not kept in a registry of metric objects.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn counter(out: &mut String, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (v, n) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", escape(v));
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    metric(out, "gauge", name, help, value);
}

/// A counter without labels.
fn total(out: &mut String, name: &str, help: &str, value: u64) {
    metric(out, "counter", name, help, value);
}

fn metric(out: &mut String, kind: &str, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What the operations port reads, and nothing more: the node's counters,
/// and the registries and store whose gauges are taken at scrape time.
#[derive(Clone)]
pub struct Scrape {
    pub metrics: Arc<crate::base::metrics::Metrics>,
    pub store: Arc<crate::store::Store>,
    pub trust: Arc<crate::trust::state::TrustState>,
    /// The gRPC port's open connections.
    pub connections: Arc<crate::net::edge::Connections>,
    pub broker: Arc<crate::broker::subscription::Broker>,
    pub peers: Vec<Arc<crate::node::federation::PeerLink>>,
    pub transparency: Arc<crate::node::transparency::TransparencyLog>,
    pub evidence: Arc<crate::node::evidence::Equivocations>,
}

/// The node's metrics in the Prometheus text format (0.0.4).
pub fn render(state: &Scrape) -> String {
    let mut out = String::with_capacity(4096);
    edge_counters(&mut out, state);
    certificates(&mut out, state);
    store_figures(&mut out, state);
    subscriptions(&mut out, state);
    peer_links(&mut out, state);
    transparency(&mut out, state);
    out
}

/// This node's checkpoints, and what it witnessed of its peers.
fn transparency(out: &mut String, state: &Scrape) {
    let t = &state.transparency;
    gauge(
        out,
        "beacon_checkpoint_size",
        "Entries covered by the latest checkpoint this node signed of its log.",
        t.latest().map_or(0, |l| l.checkpoint.size),
    );
    total(
        out,
        "beacon_checkpoints_signed_total",
        "Checkpoints this node signed since it started.",
        t.signed_total(),
    );
    gauge(
        out,
        "beacon_checkpoint_refused",
        "1 while this node refuses to sign its log (its store no longer leads to what it signed).",
        u64::from(t.alarm().is_some()),
    );
    total(
        out,
        "beacon_cosignatures_made_total",
        "Cosignatures this node made of its peers' checkpoints since it started.",
        t.cosigned_total(),
    );
    gauge(
        out,
        "beacon_witness_alarms",
        "Split views, rollbacks and undeclared rebuilds this node has seen of its peers' logs (evidence kept).",
        t.peer_alarms().len() as u64,
    );
    gauge(
        out,
        "beacon_equivocations",
        "Ids under which a publisher signed two different bulletins (evidence kept).",
        state.evidence.count() as u64,
    );
}

/// Publishes, refusals, handshakes and the log sink.
fn edge_counters(out: &mut String, state: &Scrape) {
    let m = &state.metrics;
    counter(
        out,
        "beacon_publishes_total",
        "Publishes made durable (accepted) or found already held (duplicate).",
        "result",
        &m.publishes.snapshot(),
    );
    counter(
        out,
        "beacon_publish_refusals_total",
        "Publishes refused, by reason.",
        "reason",
        &m.refusals.snapshot(),
    );
    counter(
        out,
        "beacon_tls_handshake_failures_total",
        "TLS handshakes refused, by reason.",
        "reason",
        &m.handshake_failures.snapshot(),
    );
    counter(
        out,
        "beacon_taxii_requests_total",
        "Requests answered on the TAXII port (TAXII 2.1 and the MISP feed), by status class.",
        "status",
        &m.taxii_requests.snapshot(),
    );
    total(
        out,
        "beacon_connections_closed_before_tls_total",
        "TCP connections closed before a TLS ClientHello (load-balancer and TCP probes).",
        m.closed_before_tls.get(),
    );
    total(
        out,
        "beacon_log_lines_dropped_total",
        "Log lines dropped because the log's pipe or file refused them or its writer fell behind (logging never blocks the node).",
        crate::base::metrics::log_lines_dropped(),
    );
}

/// When certificates expire and CRLs are due, and whether this node's own is refused.
fn certificates(out: &mut String, state: &Scrape) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let expiries = state.trust.expiries();
    let _ = writeln!(
        out,
        "# HELP beacon_certificate_expiry_seconds Seconds until a certificate expires (negative once it has): this node's own, and each CA of its trust bundle.\n# TYPE beacon_certificate_expiry_seconds gauge"
    );
    for e in expiries.iter().filter(|e| e.kind != "crl") {
        let _ = writeln!(
            out,
            "beacon_certificate_expiry_seconds{{certificate=\"{}\",name=\"{}\"}} {}",
            e.kind,
            escape(&e.name),
            e.at - now
        );
    }
    let _ = writeln!(
        out,
        "# HELP beacon_crl_next_update_seconds Seconds until each CRL's next update (negative once past: it is still applied; re-sign it with beacon ca crl).\n# TYPE beacon_crl_next_update_seconds gauge"
    );
    for e in expiries.iter().filter(|e| e.kind == "crl") {
        let _ = writeln!(
            out,
            "beacon_crl_next_update_seconds{{issuer=\"{}\"}} {}",
            escape(&e.name),
            e.at - now
        );
    }
    gauge(
        out,
        "beacon_node_certificate_refused",
        "1 while this node's own certificate is refused by its trust bundle (revoked, expired): it then serves no one and its peer links are down.",
        u64::from(state.trust.own_refusal().is_some()),
    );
}

/// The store: deliveries, durability, space, the group commit; open connections.
fn store_figures(out: &mut String, state: &Scrape) {
    let store = &state.store;
    let _ = writeln!(
        out,
        "# HELP beacon_duty_held Work one node of a log does at a time: 1 while this node holds it, 0 while another node of its shared log does.\n# TYPE beacon_duty_held gauge"
    );
    for (d, held) in store.duties() {
        let _ = writeln!(
            out,
            "beacon_duty_held{{duty=\"{}\"}} {}",
            d.name(),
            u8::from(held)
        );
    }
    total(
        out,
        "beacon_deliveries_total",
        "Deliveries sent to subscribers (clients and peer nodes).",
        state.broker.delivered_total(),
    );
    gauge(
        out,
        "beacon_store_head",
        "The last durable sequence.",
        store.head(),
    );
    gauge(
        out,
        "beacon_store_bulletins",
        "Bulletins stored.",
        store.len(),
    );
    gauge(
        out,
        "beacon_store_size_bytes",
        "Size of the store on disk.",
        store.size_on_disk(),
    );
    total(
        out,
        "beacon_store_corrupt_records_total",
        "Corrupted records refused on read.",
        store.stats.corrupt_reads.load(Ordering::Relaxed),
    );
    total(
        out,
        "beacon_store_repairs_total",
        "Opens of the store after an unclean stop that applied its write-ahead log again.",
        store.stats.repairs.load(Ordering::Relaxed),
    );
    gauge(
        out,
        "beacon_store_repaired_frames",
        "Frames of the write-ahead log applied again when the store opened.",
        store.stats.repaired_frames.load(Ordering::Relaxed),
    );
    total(
        out,
        "beacon_store_pruned_total",
        "Bulletins pruned by retention since the node started.",
        store.stats.pruned.load(Ordering::Relaxed),
    );
    gauge(
        out,
        "beacon_store_failed",
        "1 once a write or flush of the store failed: it refuses writes until the node restarts.",
        u64::from(store.failure().is_some()),
    );
    gauge(
        out,
        "beacon_store_disk_full",
        "1 while publishes are refused because free space is below [store] reserve_mb.",
        u64::from(store.stats.disk_full.load(Ordering::Relaxed)),
    );
    store.stats.fsync_seconds.write(
        out,
        "beacon_store_fsync_seconds",
        "Duration of each store flush (fsync) covering a group commit.",
    );
    store.stats.batch_records.write(
        out,
        "beacon_store_batch_records",
        "Records made durable by each flush (group commit size).",
    );
    gauge(
        out,
        "beacon_connections",
        "Open mutual-TLS connections.",
        state.connections.count() as u64,
    );
}

/// Open subscriptions and their lag.
fn subscriptions(out: &mut String, state: &Scrape) {
    let head = state.store.head();
    let sessions = state.broker.sessions();
    gauge(
        out,
        "beacon_subscriptions",
        "Open subscriptions.",
        sessions.len() as u64,
    );
    let _ = writeln!(
        out,
        "# HELP beacon_subscription_lag Committed head minus the subscription's durable cursor.\n# TYPE beacon_subscription_lag gauge"
    );
    for s in &sessions {
        let cursor = s.cursor.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "beacon_subscription_lag{{identity=\"{}\",name=\"{}\"}} {}",
            escape(&s.identity),
            escape(&s.name),
            head.saturating_sub(cursor)
        );
    }
}

/// Each peer link: up or down, lag, deliveries by outcome.
fn peer_links(out: &mut String, state: &Scrape) {
    let peers: Vec<_> = state
        .peers
        .iter()
        .map(|p| (p.identity.to_string(), p.status()))
        .collect();
    let _ = writeln!(
        out,
        "# HELP beacon_peer_connected Whether the link to the peer is up.\n# TYPE beacon_peer_connected gauge"
    );
    for (id, st) in &peers {
        let _ = writeln!(
            out,
            "beacon_peer_connected{{peer=\"{}\"}} {}",
            escape(id),
            u8::from(st.connected)
        );
    }
    let _ = writeln!(
        out,
        "# HELP beacon_peer_lag The peer's head minus what this node has acknowledged.\n# TYPE beacon_peer_lag gauge"
    );
    for (id, st) in &peers {
        let _ = writeln!(
            out,
            "beacon_peer_lag{{peer=\"{}\"}} {}",
            escape(id),
            st.head.saturating_sub(st.cursor)
        );
    }
    let _ = writeln!(
        out,
        "# HELP beacon_peer_deliveries_total Deliveries from the peer, by outcome.\n# TYPE beacon_peer_deliveries_total counter"
    );
    for (id, st) in &peers {
        for (outcome, n) in [
            ("stored", st.stored),
            ("duplicate", st.duplicates),
            ("refused", st.refused),
        ] {
            let _ = writeln!(
                out,
                "beacon_peer_deliveries_total{{peer=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(id)
            );
        }
    }
}

/// Serves the operations port until `shutdown`: `/metrics`, `/healthz`, and
/// gRPC health (h2c), through the node's one accept loop ([`crate::net::edge::listen`]),
/// plain text. While the node's own certificate is refused the port stays
/// open to say so: `/healthz` answers 503 with the reason and gRPC health
/// NOT_SERVING, and `/metrics` shows `beacon_own_certificate_refused`.
pub async fn serve(
    state: Scrape,
    listener: tokio::net::TcpListener,
    net: Arc<crate::net::edge::Net>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::TokioIo;
    use hyper_util::server::conn::auto::Builder;
    use tower::ServiceExt;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("beacon.v1.Bulletins", tonic_health::ServingStatus::Serving)
        .await;
    // NOT_SERVING while the node's own certificate is refused.
    let mut refused = state.trust.watch_own_refusal();
    let watcher = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let serving = if refused.borrow_and_update().is_some() {
                    tonic_health::ServingStatus::NotServing
                } else {
                    tonic_health::ServingStatus::Serving
                };
                for service in ["", "beacon.v1.Bulletins"] {
                    reporter.set_service_status(service, serving).await;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = refused.changed() => if r.is_err() { return },
                }
            }
        })
    };
    let door = crate::net::edge::Door {
        name: "operations",
        security: crate::net::edge::Security::Plain,
        connections: Arc::new(crate::net::edge::Connections::default()),
        max_connections: net.config.limits.max_connections,
    };
    let executor = crate::net::edge::Executor(net.tasks.clone());
    let serve_conn = move |conn: crate::net::edge::Conn| {
        let state = state.clone();
        let health = health.clone();
        let executor = executor.clone();
        async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    let health = health.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        if path.starts_with("/grpc.health.v1.Health/") {
                            let resp = health
                                .oneshot(req.map(tonic::body::Body::new))
                                .await
                                .unwrap_or_else(|never| match never {});
                            return Ok::<_, std::convert::Infallible>(resp);
                        }
                        let (status, ctype, body) = match (req.method().as_str(), path.as_str()) {
                            ("GET", "/metrics") => (
                                200,
                                "text/plain; version=0.0.4; charset=utf-8",
                                render(&state),
                            ),
                            ("GET", "/healthz") => {
                                match state.trust.own_refusal().or_else(|| state.store.failure()) {
                                    None => (200, "text/plain", "ok\n".to_owned()),
                                    Some(reason) => (503, "text/plain", format!("{reason}\n")),
                                }
                            }
                            _ => (404, "text/plain", "not found\n".to_owned()),
                        };
                        let resp = http::Response::builder()
                            .status(status)
                            .header("content-type", ctype)
                            .body(tonic::body::Body::new(http_body_util::Full::new(
                                bytes::Bytes::from(body),
                            )))
                            .unwrap_or_else(|_| http::Response::new(tonic::body::Body::empty()));
                        Ok(resp)
                    }
                });
            // The connection ends at shutdown: its reads and writes fail then.
            let _ = Builder::new(executor)
                .serve_connection(TokioIo::new(conn), svc)
                .await;
        }
    };
    crate::net::edge::listen(listener, door, net, serve_conn, shutdown).await;
    let _ = watcher.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
