//! Several nodes of one member over one PostgreSQL log: they share the
//! sequences and the durable cursors, live delivery on each follows the
//! head whoever appended, and a client resumes on another node with no gap
//! when one dies. Run where the suite has a PostgreSQL (`BEACON_TEST_PG_URL`
//! from `scripts/pg-cluster start`; CI requires it with `BEACON_REQUIRE_PG=1`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::checks::*;
use crate::common::*;

/// The test database's URL, or `None` (said) where the suite has none.
fn pg_url() -> Option<String> {
    match std::env::var("BEACON_TEST_PG_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("BEACON_REQUIRE_PG").as_deref() == Ok("1") => {
            panic!("BEACON_REQUIRE_PG=1 but BEACON_TEST_PG_URL is not set")
        }
        Err(_) => {
            eprintln!("no PostgreSQL (BEACON_TEST_PG_URL): skipped");
            None
        }
    }
}

/// The `[store]` section of a node on `url`, schema `schema`.
fn on_schema(url: &str, schema: &str) -> String {
    format!(
        "[store]\nengine = \"postgres\"\n\n[store.postgres]\nurl = {url:?}\nschema = {schema:?}\n"
    )
}

/// A schema no other test uses.
fn fresh_schema() -> String {
    format!("shared_{:016x}", rand::random::<u64>())
}

fn daemon(opts: &NodeOptions) -> (tempfile::TempDir, ChildNode) {
    let (dir, addr) = child_config(opts);
    let node = ChildNode::spawn(dir.path(), &["daemon", "--config", "beacon.toml"], addr);
    (dir, node)
}

/// Waits until publishers have had at least `n` bulletins acknowledged.
async fn acked_at_least(acked: &Acked, n: usize, limit: Duration) {
    let got = wait_until(limit, || async { acked.lock().unwrap().len() >= n }).await;
    assert!(
        got.is_some(),
        "only {} acknowledged within {limit:?}",
        acked.lock().unwrap().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_log_and_a_client_resumes_on_the_other_when_one_dies() {
    let Some(url) = pg_url() else { return };
    let pki = TestPki::new();
    let schema = fresh_schema();
    let mut one = NodeOptions::new(&pki, pki.node("uk.ncsc", "london-1"));
    one.extra = on_schema(&url, &schema);
    let mut two = NodeOptions::new(&pki, pki.node("uk.ncsc", "london-2"));
    two.extra = on_schema(&url, &schema);
    let (_d1, mut n1) = daemon(&one);
    let (_d2, n2) = daemon(&two);
    let (a1, a2) = (n1.addr, n2.addr);
    let ca = vec![pki.ca_cert()];

    // Live on the other node: what is published on one reaches a
    // subscriber of the other at once (the head follows the database).
    let reader = pki.client("uk.ncsc", "reader");
    let mut r2 = member(a2, &reader, &ca).await;
    let mut live = r2
        .subscribe(open("live", latest()))
        .await
        .expect("subscribe");
    read_deliveries(&mut live, 0, true, Duration::from_secs(10)).await;
    let first_client = pki.client("uk.ncsc", "first");
    let mut p = member(a1, &first_client, &ca).await;
    let b = bulletin("uk.ncsc", "published on london-1");
    let env = p.signer.sign(b.to_bytes()).expect("sign");
    let first = p.publish_envelope(&env).await.expect("publish on london-1");
    assert_eq!(first.sequence, 1);
    let seen = read_deliveries(&mut live, 1, false, Duration::from_secs(10)).await;
    assert_eq!(seen.ids, vec![b.id.clone()], "london-2 delivers it live");
    // The same bulletin sent to the other node is the same record.
    let mut q = member(a2, &first_client, &ca).await;
    let again = q.publish_envelope(&env).await.expect("publish on london-2");
    assert_eq!(
        (again.sequence, again.duplicate),
        (1, true),
        "one log: a duplicate on either node"
    );
    drop(live);

    // A storm on both nodes, and a durable subscriber on the first.
    let acked: Acked = Default::default();
    acked.lock().unwrap().insert(
        b.id.clone(),
        (1, beacon::domain::bulletin::codec::encode_envelope(&env)),
    );
    let clients: Vec<CertFiles> = (0..8)
        .map(|i| pki.client("uk.ncsc", &format!("pub-{i}")))
        .collect();
    let limit = Duration::from_secs(60);
    let p1 = Publishers::start(a1, &clients[..4], &ca, &acked, "storm", limit, |_, _, _| {
        false
    })
    .await;
    let p2 = Publishers::start(a2, &clients[4..], &ca, &acked, "storm", limit, |_, _, _| {
        false
    })
    .await;
    let state = Arc::new(Mutex::new(Reader::default()));
    let sub = tokio::spawn(durable_reader(
        a1,
        reader.clone(),
        ca.clone(),
        state.clone(),
        None,
    ));
    acked_at_least(&acked, 300, Duration::from_secs(60)).await;
    assert!(
        state.lock().unwrap().acked_upto > 0,
        "the durable subscriber on london-1 reads along"
    );

    // london-1 dies mid-storm.
    n1.signal(nix::sys::signal::Signal::SIGKILL);
    n1.wait(Duration::from_secs(10));
    p1.stop().await;
    let _ = sub.await;
    let before = acked.lock().unwrap().len();
    // london-2 goes on appending.
    acked_at_least(&acked, before + 100, Duration::from_secs(60)).await;
    p2.stop().await;

    // Every acknowledged bulletin is there once, at the sequence it was
    // acknowledged with, in a gapless log; the durable subscriber resumes
    // on london-2 from its cursor and sees every sequence.
    let head = check_everything(a2, &reader, &ca, &acked, 0).await;
    eprintln!(
        "head {head}: {} acknowledged, {before} before london-1 died",
        acked.lock().unwrap().len()
    );
    assert!(head as usize >= before + 100);
    reader_has_seen_everything(a2, &reader, &ca, &state, head, Duration::from_secs(60)).await;
    drop(n2);
    psql(&format!("DROP SCHEMA {schema} CASCADE"));
}
