//! Checks shared by the crash and power-loss tests: what publishers saw
//! acknowledged and what a durable subscriber saw, checked against the log
//! after a restart.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use beacon::base::proto::v1 as pb;

use super::*;

/// What a publisher saw acknowledged: id -> (sequence, canonical envelope bytes).
pub type Acked = Arc<Mutex<BTreeMap<String, (u64, Vec<u8>)>>>;

pub const PUBLISHERS: usize = 8;

/// What the durable subscriber saw and acknowledged.
#[derive(Default)]
pub struct Reader {
    pub acked_upto: u64,
    pub seen: std::collections::BTreeSet<u64>,
    /// The highest cursor the node reported durable (`Status`).
    pub reported_durable: u64,
}

/// Streams the durable subscription `audit-feed` until the node goes away (or
/// `until` deliveries are seen), acknowledging each delivery; checks that a
/// resume never skips past the acknowledged cursor and never leaves a gap.
pub async fn durable_reader(
    addr: std::net::SocketAddr,
    files: CertFiles,
    ca: Vec<std::path::PathBuf>,
    state: Arc<Mutex<Reader>>,
    until: Option<u64>,
) {
    use pb::subscribe_response::Msg;
    let mut s = settings(&files, &ca);
    s.node = Some(addr.to_string());
    let Ok(mut c) = beacon::net::client::BeaconClient::connect_expecting(
        &s,
        beacon::trust::tls::ExpectedServer::AnyNode,
    )
    .await
    else {
        return;
    };
    let Ok(mut sub) = c.subscribe(open("audit-feed", resume())).await else {
        return;
    };
    let mut next = None;
    loop {
        if let Some(head) = until {
            if state.lock().unwrap().seen.range(head..).next().is_some() {
                return;
            }
        }
        match sub.next().await {
            Ok(Some(Msg::Subscribed(sd))) => {
                let (acked, durable) = {
                    let st = state.lock().unwrap();
                    (st.acked_upto, st.reported_durable)
                };
                assert!(
                    sd.cursor <= acked,
                    "resumed after {} but only {acked} was acknowledged",
                    sd.cursor
                );
                assert!(
                    sd.cursor >= durable,
                    "resumed after {} but {durable} was reported durable",
                    sd.cursor
                );
                next = Some(sd.cursor + 1);
            }
            Ok(Some(Msg::Delivery(d))) => {
                assert_eq!(
                    Some(d.sequence),
                    next,
                    "a gap or reordering in the resumed stream"
                );
                next = Some(d.sequence + 1);
                {
                    let mut st = state.lock().unwrap();
                    st.seen.insert(d.sequence);
                }
                if sub.ack(d.sequence).await.is_err() {
                    return;
                }
                let mut st = state.lock().unwrap();
                st.acked_upto = st.acked_upto.max(d.sequence);
            }
            Ok(Some(_)) => {}
            _ => return, // the node died
        }
    }
}

/// Every acknowledged bulletin is present at its sequence with identical bytes,
/// and the log is exactly 1..=head with no gap or duplicate.
pub async fn check_everything(
    addr: std::net::SocketAddr,
    reader: &CertFiles,
    ca: &[std::path::PathBuf],
    acked: &Acked,
    cycle: usize,
) -> u64 {
    let mut c = member(addr, reader, ca).await;
    let mut after = 0;
    let mut seqs = Vec::new();
    let mut by_id: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
    let head = loop {
        let page = c
            .bulletins
            .list(pb::ListRequest {
                after_sequence: after,
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("list after restart")
            .into_inner();
        for d in page.deliveries {
            seqs.push(d.sequence);
            let env = beacon::net::client::delivered_envelope(&d).unwrap();
            let b = beacon::domain::bulletin::codec::decode_bulletin(&env.payload).unwrap();
            assert!(
                by_id
                    .insert(
                        b.id,
                        (
                            d.sequence,
                            beacon::domain::bulletin::codec::encode_envelope(&env)
                        )
                    )
                    .is_none(),
                "an id stored twice"
            );
        }
        after = page.next_after_sequence;
        if !page.more {
            let expected: Vec<u64> = (1..=page.head).collect();
            if seqs != expected {
                let held: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
                let missing: Vec<u64> = expected
                    .iter()
                    .copied()
                    .filter(|s| !held.contains(s))
                    .collect();
                panic!(
                    "cycle {cycle}: the log is not gapless 1..={}: {} sequences missing ({:?} … {:?}), {} listed",
                    page.head,
                    missing.len(),
                    missing.first(),
                    missing.last(),
                    seqs.len()
                );
            }
            break page.head;
        }
    };
    for (id, (seq, bytes)) in acked.lock().unwrap().iter() {
        let got = by_id
            .get(id)
            .unwrap_or_else(|| panic!("cycle {cycle}: acknowledged {id} (seq {seq}) is lost"));
        assert_eq!(got.0, *seq, "cycle {cycle}: {id} moved");
        assert_eq!(&got.1, bytes, "cycle {cycle}: {id} is not byte-identical");
    }
    head
}

/// What was published for the lifecycle test: id -> (sequence, envelope
/// bytes, whether it expires).
pub type Published = BTreeMap<String, (u64, Vec<u8>, bool)>;

/// The log as readers see it after a restart: every bulletin that does not
/// expire is there, byte-identical; every one missing expired and was
/// pruned (a tombstone, counted by `Subscribed`); nothing else.
pub async fn check_lifecycle(
    addr: std::net::SocketAddr,
    files: &CertFiles,
    op: &CertFiles,
    ca: &[std::path::PathBuf],
    published: &Published,
) -> (u64, u64) {
    let mut c = member(addr, files, ca).await;
    let before = probe_pruned(&mut c).await.expect("probe");
    let held: BTreeMap<u64, Vec<u8>> = list_all_with(addr, files, ca, true)
        .await
        .expect("list")
        .iter()
        .map(|d| {
            let env = beacon::net::client::delivered_envelope(d).expect("envelope");
            (
                d.sequence,
                beacon::domain::bulletin::codec::encode_envelope(&env),
            )
        })
        .collect();
    let at = head(addr, op, ca).await;
    assert_eq!(
        at,
        published.len() as u64,
        "every acknowledged sequence is accounted for"
    );
    let mut pruned = 0;
    for (id, (seq, bytes, expires)) in published {
        match held.get(seq) {
            Some(b) => assert_eq!(b, bytes, "bulletin {id} at {seq} changed"),
            None => {
                assert!(
                    *expires,
                    "bulletin {id} at {seq} was lost, yet it never expires"
                );
                pruned += 1;
            }
        }
    }
    let after = probe_pruned(&mut c).await.expect("probe");
    // Retention may run on meanwhile: the list's count lies between the two.
    assert!(
        before <= pruned && pruned <= after,
        "Subscribed counts what was pruned: {before} <= {pruned} <= {after}"
    );
    (at, pruned)
}

/// How many records the node has pruned in all (`Subscribed.pruned` of a
/// stream from the start).
pub async fn probe_pruned(c: &mut beacon::net::client::BeaconClient) -> Option<u64> {
    let mut sub = c.subscribe(open("", earliest())).await.ok()?;
    match sub.next().await {
        Ok(Some(pb::subscribe_response::Msg::Subscribed(s))) => Some(s.pruned),
        _ => None,
    }
}

/// Lets the durable subscriber catch up to `head` (within `limit`), then
/// checks it has seen every sequence `1..=head`.
pub async fn reader_has_seen_everything(
    addr: std::net::SocketAddr,
    files: &CertFiles,
    ca: &[std::path::PathBuf],
    reader: &Arc<Mutex<Reader>>,
    head: u64,
    limit: std::time::Duration,
) {
    let caught_up = tokio::time::timeout(
        limit,
        durable_reader(addr, files.clone(), ca.to_vec(), reader.clone(), Some(head)),
    )
    .await;
    assert!(caught_up.is_ok(), "the durable subscriber did not catch up");
    let seen = reader.lock().unwrap().seen.clone();
    let expected: std::collections::BTreeSet<u64> = (1..=head).collect();
    assert_eq!(seen, expected, "the durable subscriber missed sequences");
}

/// Publishes `n` bulletins of uk.ncsc in one stream, nine in ten of them
/// expiring 600 ms from now, and records them in `published`; returns when
/// they expire.
pub async fn publish_expiring(
    c: &beacon::net::client::BeaconClient,
    cycle: usize,
    n: usize,
    published: &mut Published,
) -> std::time::SystemTime {
    let mut stream = c.clone().publish_stream().await.expect("publish stream");
    let expires = std::time::SystemTime::now() + std::time::Duration::from_millis(600);
    let mut sent = Vec::new();
    for i in 0..n {
        let mut b = bulletin("uk.ncsc", &format!("cycle {cycle} #{i}"));
        let expiring = i % 10 != 0;
        if expiring {
            b.expires_at = Some(expires);
        }
        let env = c.signer.sign(b.to_bytes()).unwrap();
        stream.send(&env).await.expect("send");
        sent.push((
            b.id,
            beacon::domain::bulletin::codec::encode_envelope(&env),
            expiring,
        ));
    }
    let results = stream.finish().await.expect("results");
    for ((id, bytes, expiring), r) in sent.into_iter().zip(results) {
        published.insert(id, (r.expect("accepted").sequence, bytes, expiring));
    }
    expires
}

/// The last cycle of a crash or power-cut test: the durable subscriber
/// catches up to `head` (within `catch_up`) and has seen every sequence,
/// and the node stops cleanly on SIGTERM (within `stop_within`).
#[allow(clippy::too_many_arguments)]
pub async fn final_cycle(
    node: &mut ChildNode,
    addr: std::net::SocketAddr,
    files: &CertFiles,
    ca: &[std::path::PathBuf],
    reader: &Arc<Mutex<Reader>>,
    head: u64,
    catch_up: std::time::Duration,
    stop_within: std::time::Duration,
) {
    reader_has_seen_everything(addr, files, ca, reader, head, catch_up).await;
    node.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(node.wait(stop_within), Some(0), "{}", node.log());
}

/// One publisher per client, each publishing `title` bulletins of its
/// member until told to stop (or for at most `limit`), recording what was
/// acknowledged; `shape(client, n, bulletin)` may change the n-th bulletin
/// of a client, and says whether to count it among the `big` ones.
pub struct Publishers {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
    /// Acknowledged bulletins that `shape` marked.
    pub big: Arc<std::sync::atomic::AtomicU64>,
}

impl Publishers {
    pub async fn start(
        addr: std::net::SocketAddr,
        clients: &[CertFiles],
        ca: &[std::path::PathBuf],
        acked: &Acked,
        title: &'static str,
        limit: std::time::Duration,
        shape: fn(usize, u64, &mut beacon::domain::bulletin::Bulletin) -> bool,
    ) -> Publishers {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let big = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (i, files) in clients.iter().enumerate() {
            let mut c = member(addr, files, ca).await;
            let member_id = files.identity.split('/').nth(4).unwrap().to_owned();
            let (acked, stop, big) = (acked.clone(), stop.clone(), big.clone());
            tasks.push(tokio::spawn(async move {
                let deadline = std::time::Instant::now() + limit;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    let mut b = bulletin(&member_id, title);
                    n += 1;
                    let marked = shape(i, n, &mut b);
                    let env = c.signer.sign(b.to_bytes()).unwrap();
                    match c.publish_envelope(&env).await {
                        Ok(p) => {
                            if marked {
                                big.fetch_add(1, Ordering::Relaxed);
                            }
                            acked.lock().unwrap().insert(
                                b.id,
                                (
                                    p.sequence,
                                    beacon::domain::bulletin::codec::encode_envelope(&env),
                                ),
                            );
                        }
                        // The node died: what was not acknowledged may be lost.
                        Err(_) => break,
                    }
                }
                n
            }));
        }
        Publishers { stop, tasks, big }
    }

    /// Tells them to stop (the node is already gone); the publishes
    /// attempted.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut attempts = 0;
        for t in self.tasks {
            attempts += t.await.unwrap();
        }
        attempts
    }

    /// The flag the publishers stop on, for other tasks of the same cycle.
    pub fn stop_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.stop.clone()
    }
}
