//! Federation across allied nodes on loopback: every member has its own CA in
//! a shared trust bundle; each node pulls from its peers what its member may read.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;
use beacon::base::proto::v1 as pb;
use beacon::domain::bulletin::{Relation, Tlp};

const CONVERGE: Duration = Duration::from_secs(60);

/// What a node holds: id → (envelope digest, origin node, origin sequence).
type Held = BTreeMap<String, (Vec<u8>, String, u64)>;

/// Reads everything `client`'s member may read at `addr`, checking that no id
/// appears twice and that every envelope verifies against the alliance's bundle.
async fn held_at(addr: SocketAddr, client: &CertFiles, alliance: &Alliance) -> Option<Held> {
    let deliveries = list_all(addr, client, &alliance.ca).await.ok()?;
    let bundle = alliance.bundle();
    let mut out = Held::new();
    for d in deliveries {
        let env = beacon::net::client::delivered_envelope(&d).expect("envelope");
        beacon::domain::bulletin::verify_stored_envelope(
            &env,
            &bundle,
            std::time::SystemTime::now(),
        )
        .expect("every held envelope verifies on the reader's side");
        let id = delivery_id(&d);
        let before = out.insert(
            id.clone(),
            (d.envelope_digest, d.origin_node, d.origin_sequence),
        );
        assert!(before.is_none(), "the node at {addr} holds {id} twice");
    }
    Some(out)
}

/// Waits until the node at `addr` holds exactly `ids` (and its store counts no more).
async fn wait_holds_at(
    addr: SocketAddr,
    client: &CertFiles,
    alliance: &Alliance,
    ids: &BTreeSet<String>,
) -> Held {
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        let h = held_at(addr, client, alliance).await.unwrap_or_default();
        let stored = status(addr, &alliance.op, &alliance.ca)
            .await
            .and_then(|s| s.store)
            .map(|s| s.bulletins);
        if h.keys().cloned().collect::<BTreeSet<_>>() == *ids && stored == Some(ids.len() as u64) {
            return h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node at {addr} never held exactly {} bulletins; it holds {} (store counts {stored:?})",
            ids.len(),
            h.len(),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_holds(node: &MeshNode, alliance: &Alliance, ids: &BTreeSet<String>) -> Held {
    wait_holds_at(node.node.addr, &node.client, alliance, ids).await
}

async fn publish(node: &MeshNode, ca: &[PathBuf], b: &beacon::domain::bulletin::Bulletin) -> u64 {
    member(node.node.addr, &node.client, ca)
        .await
        .publish(b)
        .await
        .expect("published")
        .sequence
}

fn marked(
    publisher: &str,
    title: &str,
    tlp: Tlp,
    audience: &[&str],
) -> beacon::domain::bulletin::Bulletin {
    let mut b = bulletin(publisher, title);
    b.tlp = beacon::domain::bulletin::codec::tlp_to_i32(tlp);
    b.audience.members = audience.iter().map(|s| s.to_string()).collect();
    b
}

fn ids(v: &[&beacon::domain::bulletin::Bulletin]) -> BTreeSet<String> {
    v.iter().map(|b| b.id.clone()).collect()
}

async fn peer_status(node: &MeshNode, alliance: &Alliance) -> Vec<pb::PeerStatus> {
    status(node.node.addr, &alliance.op, &alliance.ca)
        .await
        .map(|s| s.peers)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_converge_exactly_once_and_red_reaches_only_its_audience() {
    let members = ["fr.anssi", "de.bsi", "uk.ncsc"];
    let alliance = Alliance::new(&members);
    let nodes = mesh(&alliance, &members, &full_mesh(3)).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    let green = marked("fr.anssi", "green at A", Tlp::Green, &[]);
    let red_for_uk = marked("fr.anssi", "red for uk", Tlp::Red, &["uk.ncsc"]);
    let strict_for_de = marked("fr.anssi", "strict for de", Tlp::AmberStrict, &["de.bsi"]);
    let green_b = marked("de.bsi", "green at B", Tlp::Green, &[]);
    let amber_c = marked("uk.ncsc", "amber to all at C", Tlp::Amber, &[]);
    let mut retraction = marked("fr.anssi", "retracts the green one", Tlp::Green, &[]);
    retraction.relation = Some(Relation::Retracts(green.id.clone()));

    let seq_green = publish(a, &alliance.ca, &green).await;
    publish(a, &alliance.ca, &red_for_uk).await;
    publish(a, &alliance.ca, &strict_for_de).await;
    publish(b, &alliance.ca, &green_b).await;
    publish(c, &alliance.ca, &amber_c).await;
    publish(a, &alliance.ca, &retraction).await;

    let everyone = [&green, &green_b, &amber_c, &retraction];
    let mut at_a = everyone.to_vec();
    at_a.extend([&red_for_uk, &strict_for_de]);
    let mut at_b = everyone.to_vec();
    at_b.push(&strict_for_de);
    let mut at_c = everyone.to_vec();
    at_c.push(&red_for_uk);

    let held_a = wait_holds(a, &alliance, &ids(&at_a)).await;
    let held_b = wait_holds(b, &alliance, &ids(&at_b)).await;
    let held_c = wait_holds(c, &alliance, &ids(&at_c)).await;

    // Byte-identical everywhere, with the origin node and its sequence.
    for (id, (digest, origin, origin_seq)) in &held_a {
        for other in [&held_b, &held_c] {
            if let Some((d, o, s)) = other.get(id) {
                assert_eq!(
                    (d, o, s),
                    (digest, origin, origin_seq),
                    "{id} differs between nodes"
                );
            }
        }
    }
    assert_eq!(held_c[&green.id].1, a.identity);
    assert_eq!(held_c[&green.id].2, seq_green);
    assert_eq!(held_a[&amber_c.id].1, c.identity);

    // The links are up, and nothing was refused.
    for n in &nodes {
        let peers = peer_status(n, &alliance).await;
        assert_eq!(peers.len(), 2);
        for p in peers {
            assert!(
                p.connected,
                "{} → {}: {}",
                n.identity, p.expected_identity, p.last_error
            );
            assert_eq!(p.refused, 0, "{}: {}", n.identity, p.last_error);
        }
    }
    for n in nodes {
        n.node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_in_a_ring_relay_across_hops() {
    let members = ["fr.anssi", "de.bsi", "uk.ncsc", "nl.aivd", "se.must"];
    let alliance = Alliance::new(&members);
    // A ring: each node pulls from its two neighbours, so bulletins cross up
    // to two relays and arrive by two routes.
    let links: Vec<Vec<usize>> = (0..5).map(|i| vec![(i + 1) % 5, (i + 4) % 5]).collect();
    let nodes = mesh(&alliance, &members, &links).await;

    let mut all = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for k in 0..3 {
            let b = marked(&n.member, &format!("from node {i} #{k}"), Tlp::Clear, &[]);
            publish(n, &alliance.ca, &b).await;
            all.push(b);
        }
    }
    // RED for a neighbour travels the direct link only: nodes outside its
    // audience never hold it, so they cannot relay it further.
    let red = marked("fr.anssi", "red for de", Tlp::Red, &["de.bsi"]);
    publish(&nodes[0], &alliance.ca, &red).await;

    let everyone: BTreeSet<String> = all.iter().map(|b| b.id.clone()).collect();
    let mut digests: Option<Held> = None;
    for (i, n) in nodes.iter().enumerate() {
        let mut expected = everyone.clone();
        if i <= 1 {
            expected.insert(red.id.clone());
        }
        let mut h = wait_holds(n, &alliance, &expected).await;
        h.remove(&red.id);
        match &digests {
            None => digests = Some(h),
            Some(first) => assert_eq!(first, &h, "node {i} differs from node 0"),
        }
    }
    for n in nodes {
        n.node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_envelope_under_the_same_id_is_refused_and_reported() {
    let members = ["fr.anssi", "de.bsi", "uk.ncsc"];
    let alliance = Alliance::new(&members);
    // A and B are not linked; C pulls from both.
    let nodes = mesh(&alliance, &members, &[vec![], vec![], vec![0, 1]]).await;
    // Two clients of the same member publish different bulletins under one
    // id, one at A and one at B.
    let first = marked("fr.anssi", "first version", Tlp::Green, &[]);
    let mut second = marked("fr.anssi", "second version", Tlp::Green, &[]);
    second.id = first.id.clone();
    publish(&nodes[0], &alliance.ca, &first).await;
    let other = alliance.client("fr.anssi", "second-analyst");
    member(nodes[1].node.addr, &other, &alliance.ca)
        .await
        .publish(&second)
        .await
        .expect("published at B");
    let c = &nodes[2];
    let reported = wait_until(CONVERGE, || async {
        peer_status(c, &alliance)
            .await
            .iter()
            .any(|p| p.refused == 1 && p.last_error.contains(&first.id))
    })
    .await;
    assert!(reported.is_some(), "{:?}", peer_status(c, &alliance).await);
    // C keeps the version it received first, once; both links stay up.
    let set: BTreeSet<String> = [first.id.clone()].into();
    wait_holds(c, &alliance, &set).await;
    assert!(peer_status(c, &alliance).await.iter().all(|p| p.connected));
    for n in nodes {
        n.node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_cut_off_and_its_relays_are_refused() {
    let members = ["fr.anssi", "de.bsi", "uk.ncsc"];
    let alliance = Alliance::new(&members);
    // A and B peer with each other; C is a node outside the mesh.
    let links = vec![vec![1], vec![0], vec![]];
    let nodes = mesh(&alliance, &members, &links).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let before = marked("de.bsi", "before revocation", Tlp::Green, &[]);
    publish(b, &alliance.ca, &before).await;
    let set: BTreeSet<String> = [before.id.clone()].into();
    wait_holds(a, &alliance, &set).await;

    // An envelope signed by B's node key, for later.
    let b_cert = b.files.clone();
    let by_node_b = signer(&b_cert)
        .sign(marked("de.bsi", "signed by node B", Tlp::Green, &[]).to_bytes())
        .expect("sign");

    alliance.revoke("de.bsi", &b_cert);
    wait_revocations(a.node.addr, &alliance.op, &alliance.ca, 1).await;

    // A's link to B goes down and stays down: B's certificate is refused.
    let down = wait_until(CONVERGE, || async {
        peer_status(a, &alliance)
            .await
            .iter()
            // A refuses B's certificate, or B (which loaded the same CRL)
            // already serves no one.
            .any(|p| {
                let e = p.last_error.to_lowercase();
                !p.connected && (e.contains("revoked") || e.contains("closed the connection"))
            })
    })
    .await;
    assert!(
        down.is_some(),
        "A still links to the revoked node: {:?}",
        peer_status(a, &alliance).await
    );
    // B's own link to A is cut too (A refuses its handshakes).
    let cut = wait_until(CONVERGE, || async {
        let Some(s) = status(a.node.addr, &alliance.op, &alliance.ca).await else {
            return false;
        };
        !s.subscriptions
            .iter()
            .any(|x| x.identity == b.identity && x.connected)
    })
    .await;
    assert!(cut.is_some(), "B's stream on A is still open");

    // What B's key signed is refused when relayed by another node.
    let c_node = nodes[2].files.clone();
    let ch = dial(a.node.addr, &c_node, &alliance.ca)
        .await
        .expect("C dials A");
    let e = beacon::net::client::BulletinsClient::new(ch)
        .publish(pb::PublishRequest {
            receipt: false,
            envelope: Some(beacon::domain::bulletin::codec::envelope_to_proto(
                &by_node_b,
            )),
        })
        .await
        .expect_err("a revoked signer's envelope is refused");
    assert!(e.message().to_lowercase().contains("revoked"), "{e:?}");

    for n in nodes {
        n.node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_presenting_another_identity_is_refused() {
    let members = ["fr.anssi", "de.bsi"];
    let alliance = Alliance::new(&members);
    let nodes = mesh(&alliance, &members, &[vec![], vec![]]).await;
    // A third node configured to pull from B, but expecting someone else there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let wrong = id(
        beacon::base::identity::RoleKind::Node,
        Some("de.bsi"),
        "impostor-check",
    )
    .to_string();
    let peers: Vec<(SocketAddr, String)> = vec![(nodes[1].node.addr, wrong)];
    let c = TestNode::start_on(
        &alliance.options(alliance.node("fr.anssi", "c"), &peers),
        listener,
    )
    .await;
    publish(
        &nodes[1],
        &alliance.ca,
        &marked("de.bsi", "at B", Tlp::Green, &[]),
    )
    .await;
    let refused = wait_until(CONVERGE, || async {
        status(c.addr, &alliance.op, &alliance.ca)
            .await
            .map(|s| {
                s.peers
                    .iter()
                    .any(|p| !p.connected && p.last_error.contains(&nodes[1].identity))
            })
            .unwrap_or(false)
    })
    .await;
    let st = status(c.addr, &alliance.op, &alliance.ca)
        .await
        .expect("status");
    assert!(refused.is_some(), "{:?}", st.peers);
    assert_eq!(st.store.expect("store").bulletins, 0);
    c.stop().await;
    for n in nodes {
        n.node.stop().await;
    }
}

/// Publishes `bulletins` in order at `addr`, retrying each (idempotently) until
/// acknowledged, through node restarts; bounded in time.
async fn publish_through_outages(
    addr: SocketAddr,
    client: CertFiles,
    ca: Vec<PathBuf>,
    bulletins: Vec<beacon::domain::bulletin::Bulletin>,
    progress: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut last_error = String::new();
    let mut settings = settings(&client, &ca);
    settings.node = Some(addr.to_string());
    let mut conn: Option<beacon::net::client::BeaconClient> = None;
    for b in &bulletins {
        loop {
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "publishing to {addr} took too long ({} of {} published; last error: {last_error})",
                    progress.load(std::sync::atomic::Ordering::SeqCst),
                    bulletins.len()
                ));
            }
            if conn.is_none() {
                match beacon::net::client::BeaconClient::connect(&settings).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => last_error = format!("connect: {e}"),
                }
            }
            if let Some(c) = conn.as_mut() {
                match tokio::time::timeout(Duration::from_secs(10), c.publish(b)).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => {
                        last_error = format!("publish: {e}");
                        conn = None
                    }
                    Err(_) => {
                        last_error = "publish: no answer in 10 s".into();
                        conn = None
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    Ok(())
}

/// Three `beacon daemon` processes in a full mesh, one per member.
struct ChildMesh {
    dirs: Vec<tempfile::TempDir>,
    addrs: Vec<SocketAddr>,
    nodes: Vec<Option<ChildNode>>,
}

impl ChildMesh {
    fn start(alliance: &Alliance, members: &[&str]) -> ChildMesh {
        let addrs: Vec<SocketAddr> = members.iter().map(|_| free_addr()).collect();
        let certs: Vec<CertFiles> = members
            .iter()
            .enumerate()
            .map(|(i, m)| alliance.node(m, &format!("proc-{i}")))
            .collect();
        let mut dirs = Vec::new();
        for i in 0..members.len() {
            let peers: Vec<(SocketAddr, String)> = (0..members.len())
                .filter(|&j| j != i)
                .map(|j| (addrs[j], certs[j].identity.clone()))
                .collect();
            let opts = alliance.options(certs[i].clone(), &peers);
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(
                dir.path().join("beacon.toml"),
                opts.config_text(&dir.path().join("store"), &addrs[i].to_string()),
            )
            .expect("config");
            dirs.push(dir);
        }
        let mut mesh = ChildMesh {
            dirs,
            addrs,
            nodes: Vec::new(),
        };
        for i in 0..members.len() {
            let n = mesh.spawn(i);
            mesh.nodes.push(Some(n));
        }
        mesh
    }

    fn spawn(&self, i: usize) -> ChildNode {
        ChildNode::spawn(
            self.dirs[i].path(),
            &["daemon", "--config", "beacon.toml"],
            self.addrs[i],
        )
    }

    /// Each running node's log (its current run).
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| match n {
                Some(n) => format!("---- node {i}:\n{}", n.log()),
                None => format!("---- node {i}: not running"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut n) = self.nodes[i].take() {
            n.signal(nix::sys::signal::Signal::SIGKILL);
            n.wait(Duration::from_secs(10));
        }
    }

    fn stop(&mut self, i: usize) {
        if let Some(mut n) = self.nodes[i].take() {
            n.signal(nix::sys::signal::Signal::SIGTERM);
            assert_eq!(
                n.wait(Duration::from_secs(20)),
                Some(0),
                "clean exit on SIGTERM"
            );
        }
    }

    fn restart(&mut self, i: usize) {
        let n = self.spawn(i);
        self.nodes[i] = Some(n);
    }
}

async fn wait_progress(p: &std::sync::atomic::AtomicUsize, n: usize) {
    let ok = wait_until(CONVERGE, || async {
        p.load(std::sync::atomic::Ordering::SeqCst) >= n
    })
    .await;
    assert!(ok.is_some(), "publishing stalled before {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_and_kills_heal_with_nothing_lost_or_duplicated() {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    let members = ["fr.anssi", "de.bsi", "uk.ncsc"];
    let alliance = Alliance::new(&members);
    let mut mesh = ChildMesh::start(&alliance, &members);
    let clients: Vec<CertFiles> = members
        .iter()
        .map(|m| alliance.client(m, "publisher"))
        .collect();
    const EACH: usize = 120;
    let mut all = BTreeSet::new();
    let mut tasks = Vec::new();
    let mut progress = Vec::new();
    // Publishers at A and B, each retrying through outages of its node.
    for i in 0..2 {
        let batch: Vec<_> = (0..EACH)
            .map(|k| marked(members[i], &format!("node {i} #{k}"), Tlp::Green, &[]))
            .collect();
        all.extend(batch.iter().map(|b| b.id.clone()));
        let p = Arc::new(AtomicUsize::new(0));
        progress.push(p.clone());
        tasks.push(tokio::spawn(publish_through_outages(
            mesh.addrs[i],
            clients[i].clone(),
            alliance.ca.clone(),
            batch,
            p,
        )));
    }
    wait_progress(&progress[0], 20).await;
    mesh.kill(2); // C is partitioned away while both publish
    wait_progress(&progress[0], 50).await;
    mesh.stop(1); // B goes down cleanly; its publisher waits
    wait_progress(&progress[0], 70).await;
    mesh.restart(1);
    wait_progress(&progress[1], 60).await;
    mesh.kill(0); // A is killed mid-storm
    mesh.restart(2);
    mesh.restart(0);
    for t in tasks {
        if let Err(e) = t.await.expect("publisher") {
            panic!("{e}\nthe nodes' logs:\n{}", mesh.logs());
        }
    }
    // Every node converges to the same set, each bulletin once, byte-identical.
    let mut first: Option<Held> = None;
    for (i, (addr, client)) in mesh.addrs.iter().zip(&clients).enumerate() {
        let h = wait_holds_at(*addr, client, &alliance, &all).await;
        match &first {
            None => first = Some(h),
            Some(f) => assert_eq!(f, &h, "node {i} differs from node 0"),
        }
    }
}

/// Fast checkpoints and witnessing.
fn witnessed(mut o: NodeOptions) -> NodeOptions {
    o.extra
        .push_str("[transparency]\ncheckpoint_interval_ms = 50\nwitness_interval_ms = 100\n");
    o
}

/// A bulletin signed with a certificate that expires in a few seconds,
/// published at `hub` while it is valid; returns it once expired.
async fn published_before_expiry(
    alliance: &Alliance,
    hub: SocketAddr,
    before_expiry: impl std::future::Future<Output = ()>,
) -> beacon::domain::bulletin::Bulletin {
    let mut req = beacon::tools::pki::IssueRequest::new(id(
        beacon::base::identity::RoleKind::Client,
        Some("fr.anssi"),
        "short-lived",
    ));
    let not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
    req.not_after = Some(not_after);
    let short = alliance.pki.issue_from(alliance.ca_dir("fr.anssi"), req);
    let b = marked("fr.anssi", "signed by a short-lived key", Tlp::Green, &[]);
    member(hub, &short, &alliance.ca)
        .await
        .publish(&b)
        .await
        .expect("published while the certificate is valid");
    before_expiry.await;
    assert!(
        time::OffsetDateTime::now_utc() < not_after,
        "the certificate expired before the checkpoint was witnessed"
    );
    // Wait for the clock, not for the system: the certificate must be expired.
    let expired = wait_until(Duration::from_secs(10), || async {
        time::OffsetDateTime::now_utc() > not_after + time::Duration::seconds(1)
    })
    .await;
    assert!(expired.is_some());
    b
}

/// A bulletin whose signer's certificate has expired since reaches a node
/// that joins late, because a witness cosigned a checkpoint of the hub's log
/// that held it while the certificate was valid: not on the bulletin's own
/// claim of when it was made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulletin_whose_signer_has_since_expired_reaches_a_late_node_with_proof_it_was_logged_in_time(
) {
    let alliance = Alliance::new(&["fr.anssi", "de.bsi", "uk.ncsc"]);
    let hub_files = alliance.node("fr.anssi", "hub");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hub_addr = listener.local_addr().expect("addr");
    let hub = TestNode::start_on(
        &witnessed(alliance.options(hub_files.clone(), &[])),
        listener,
    )
    .await;
    let peers = vec![(hub_addr, hub_files.identity.clone())];
    let witness = TestNode::start(&witnessed(
        alliance.options(alliance.node("uk.ncsc", "witness"), &peers),
    ))
    .await;
    let reader = alliance.client("fr.anssi", "reader");
    let b = published_before_expiry(&alliance, hub_addr, async {
        // The witness cosigns a checkpoint that covers it.
        let cosigned = wait_until(Duration::from_secs(3), || async {
            let mut t = beacon::base::proto::v1::transparency_client::TransparencyClient::new(
                dial(hub_addr, &reader, &alliance.ca).await.expect("dial"),
            );
            let r = t
                .get_checkpoint(beacon::base::proto::v1::GetCheckpointRequest {})
                .await
                .expect("checkpoint")
                .into_inner();
            !r.cosigned.is_empty()
        })
        .await;
        assert!(cosigned.is_some(), "no cosigned checkpoint in time");
    })
    .await;
    let late_files = alliance.node("de.bsi", "late");
    let late = TestNode::start(&witnessed(alliance.options(late_files, &peers))).await;
    let late_reader = alliance.client("de.bsi", "reader");
    let set: BTreeSet<String> = [b.id.clone()].into();
    wait_holds_at(late.addr, &late_reader, &alliance, &set).await;
    late.stop().await;
    witness.stop().await;
    hub.stop().await;
}

/// Without such a proof, an expired signer's bulletin is refused: its
/// signed creation time is the signer's own claim, and an old key could
/// back-date anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulletin_whose_signer_has_since_expired_is_refused_without_proof() {
    let alliance = Alliance::new(&["fr.anssi", "de.bsi"]);
    let hub_files = alliance.node("fr.anssi", "hub");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hub_addr = listener.local_addr().expect("addr");
    let hub = TestNode::start_on(
        &witnessed(alliance.options(hub_files.clone(), &[])),
        listener,
    )
    .await;
    let b = published_before_expiry(&alliance, hub_addr, async {}).await;
    let peers = vec![(hub_addr, hub_files.identity.clone())];
    let late = TestNode::start(&witnessed(
        alliance.options(alliance.node("de.bsi", "late"), &peers),
    ))
    .await;
    let refused = wait_until(CONVERGE, || async {
        status(late.addr, &alliance.op, &alliance.ca)
            .await
            .and_then(|s| s.peers.into_iter().next())
            .is_some_and(|p| p.refused >= 1 && p.last_error.contains("could not prove"))
    })
    .await;
    assert!(
        refused.is_some(),
        "{:?}",
        status(late.addr, &alliance.op, &alliance.ca)
            .await
            .map(|s| s.peers)
    );
    let late_reader = alliance.client("de.bsi", "reader");
    let mut c = beacon::net::client::BulletinsClient::new(
        dial(late.addr, &late_reader, &alliance.ca)
            .await
            .expect("dial"),
    );
    let e = c
        .get(beacon::base::proto::v1::GetRequest {
            id: b.id.clone(),
            publisher: String::new(),
        })
        .await
        .expect_err("not held");
    assert_eq!(e.code(), tonic::Code::NotFound);
    late.stop().await;
    hub.stop().await;
}

/// A peer that goes silent (its process stalls or its route drops: the TCP
/// connection stays open, nothing arrives) is noticed within seconds, not
/// reported connected; the link reconnects, and TLP:RED that can travel only
/// over that link arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_noticed_within_seconds_and_the_link_reconnects() {
    let alliance = Alliance::new(&["uk.ncsc", "fr.anssi"]);
    // B (fr.anssi) behind a proxy that can freeze; A (uk.ncsc) pulls from B
    // through it, with the default timing.peer_timeout (6 s).
    let b_files = alliance.node("fr.anssi", "paris-1");
    let b = TestNode::start(&alliance.options(b_files.clone(), &[])).await;
    let proxy = FreezableProxy::start(b.addr).await;
    let a = TestNode::start(&alliance.options(
        alliance.node("uk.ncsc", "london-1"),
        &[(proxy.addr, b_files.identity.clone())],
    ))
    .await;
    let link = || async {
        status(a.addr, &alliance.op, &alliance.ca)
            .await
            .and_then(|s| s.peers.into_iter().next())
    };
    let up = wait_until(CONVERGE, || async {
        link().await.is_some_and(|p| p.connected)
    })
    .await;
    assert!(up.is_some(), "the link never came up: {:?}", link().await);

    proxy.freeze();
    let noticed = wait_until(Duration::from_secs(20), || async {
        link().await.is_some_and(|p| !p.connected)
    })
    .await;
    let Some(noticed) = noticed else {
        panic!("a silent peer still reported connected: {:?}", link().await);
    };
    eprintln!("silent peer noticed after {noticed:?}");
    assert!(
        noticed <= Duration::from_secs(10),
        "noticed only after {noticed:?}"
    );
    let st = link().await.expect("link");
    assert!(!st.last_error.is_empty(), "the link says why: {st:?}");

    // TLP:RED for A's member, published at B, reaches A over a new connection.
    let red = marked("fr.anssi", "red after the stall", Tlp::Red, &["uk.ncsc"]);
    let client = alliance.client("fr.anssi", "analyst");
    member(b.addr, &client, &alliance.ca)
        .await
        .publish(&red)
        .await
        .expect("published at B");
    let reader = alliance.client("uk.ncsc", "reader");
    let set: BTreeSet<String> = [red.id.clone()].into();
    wait_holds_at(a.addr, &reader, &alliance, &set).await;
    assert!(link().await.is_some_and(|p| p.connected));
    a.stop().await;
    b.stop().await;
}

/// One CRL update revokes a node and a client. The node applies it (the
/// client is refused there within seconds), says its own certificate is
/// revoked, serves no one and stops its peer links; with a renewed
/// certificate it serves again, and the client stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_revoked_with_others_in_one_update_applies_it_and_stops_serving() {
    let alliance = Alliance::new(&["uk.ncsc", "fr.anssi"]);
    let dir = alliance.pki.path().to_path_buf();
    let uk_crl = beacon::tools::pki::Ca::crl_path(alliance.ca_dir("uk.ncsc"));
    // N reads uk.ncsc's CRL from a file this test replaces in one rename.
    let live_crl = dir.join("uk-live-crl.pem");
    std::fs::copy(&uk_crl, &live_crl).expect("copy CRL");
    let with_crl = |mut opts: NodeOptions, crl: &std::path::Path| {
        for t in &mut opts.trust {
            if t.1 == "uk.ncsc" {
                t.2 = Some(crl.to_path_buf());
            }
        }
        opts
    };
    // P (fr.anssi) keeps the old CRL: if N stops peering, N did it itself.
    // P also pulls from N, so it sees how N refuses it.
    let p_crl = dir.join("uk-old-crl.pem");
    std::fs::copy(&uk_crl, &p_crl).expect("copy CRL");
    let p_files = alliance.node("fr.anssi", "paris-1");
    let n_files = alliance.node("uk.ncsc", "london-1");
    let n_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let n_addr = n_listener.local_addr().expect("addr");
    let p = TestNode::start(&with_crl(
        alliance.options(p_files.clone(), &[(n_addr, n_files.identity.clone())]),
        &p_crl,
    ))
    .await;

    let ops = free_addr();
    let taxii = free_addr();
    let mut n_opts = with_crl(
        alliance.options(n_files.clone(), &[(p.addr, p_files.identity.clone())]),
        &live_crl,
    );
    n_opts.extra.push_str(&format!(
        "[metrics]\nlisten = \"{ops}\"\n[taxii]\nlisten = \"{taxii}\"\n"
    ));
    let n = TestNode::start_on(&n_opts, n_listener).await;
    let linked = |connected: bool| {
        let n_id = n_files.identity.clone();
        let (addr, op, ca) = (p.addr, alliance.op.clone(), alliance.ca.clone());
        async move {
            // Whether P holds an open subscription of N's (an idle link
            // that never acknowledged anything leaves no stored cursor).
            status(addr, &op, &ca).await.is_some_and(|s| {
                s.subscriptions
                    .iter()
                    .any(|x| x.identity == n_id && x.connected)
                    == connected
            })
        }
    };
    assert!(
        wait_until(CONVERGE, || linked(true)).await.is_some(),
        "N never linked to P"
    );

    // A TAXII reader of N with a connection open.
    let fresh = alliance.client("uk.ncsc", "fresh");
    let mut held = HttpsConn::open(taxii, Some(&fresh), &alliance.ca)
        .await
        .expect("TAXII connects");
    let r = held
        .request(
            "GET",
            "/taxii2/",
            &[("accept", "application/taxii+json;version=2.1")],
            b"",
        )
        .await
        .expect("TAXII answers");
    assert_eq!(r.status, 200, "{r:?}");
    // A client of N with an open subscription.
    let client = alliance.client("uk.ncsc", "analyst");
    let mut c = member(n.addr, &client, &alliance.ca).await;
    let mut sub = c
        .subscribe(open("feed", earliest()))
        .await
        .expect("subscribe");

    // One update revokes both.
    let mut uk_ca = beacon::tools::pki::Ca::open(alliance.ca_dir("uk.ncsc")).expect("CA");
    for f in [&n_files, &client] {
        uk_ca
            .revoke(
                &beacon::tools::pki::Selector::Serial(f.serial.clone()),
                beacon::tools::pki::Reason::KeyCompromise,
            )
            .expect("revoke");
    }
    let tmp = dir.join("uk-live-crl.pem.tmp");
    std::fs::copy(&uk_crl, &tmp).expect("copy");
    std::fs::rename(&tmp, &live_crl).expect("one update");
    let revoked_at = std::time::Instant::now();

    // The client's open stream is cut within seconds, and it cannot dial.
    stream_end(&mut sub, Duration::from_secs(10))
        .await
        .expect_err("the revoked client's stream is cut");
    assert!(health(n.addr, &client, &alliance.ca).await.is_err());
    eprintln!("revoked client cut after {:?}", revoked_at.elapsed());
    // N says its own certificate is refused: health, metrics.
    let http = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(ops).await.ok()?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    };
    let unhealthy = wait_until(Duration::from_secs(10), || async {
        http("/healthz")
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.1 503") && r.contains("revoked"))
    })
    .await;
    assert!(unhealthy.is_some(), "{:?}", http("/healthz").await);
    let metrics = http("/metrics").await.expect("metrics");
    assert!(
        metrics.contains("beacon_node_certificate_refused 1"),
        "{metrics}"
    );
    // It serves no one, not even a client that is not revoked: not over
    // gRPC, not over TAXII (nor the MISP feed it serves), on connections
    // new or open.
    assert!(health(n.addr, &fresh, &alliance.ca).await.is_err());
    let taxii_get = |path: &'static str| {
        let (ca, fresh) = (alliance.ca.clone(), fresh.clone());
        async move {
            https(
                taxii,
                Some(&fresh),
                &ca,
                "GET",
                path,
                &[("accept", "application/taxii+json;version=2.1")],
                b"",
            )
            .await
        }
    };
    for path in [
        "/taxii2/",
        "/taxii2/beacon/collections/",
        "/misp/manifest.json",
    ] {
        let r = taxii_get(path).await;
        assert!(
            r.is_err(),
            "a new TAXII connection is refused: {path} {r:?}"
        );
    }
    match held
        .request(
            "GET",
            "/taxii2/",
            &[("accept", "application/taxii+json;version=2.1")],
            b"",
        )
        .await
    {
        Err(_) => {}
        Ok(r) => assert_eq!(r.status, 503, "an open TAXII connection is refused: {r:?}"),
    }
    // P, which still accepts N's certificate, is told why its link to N
    // fails (not a bare "connection reset").
    let told = wait_until(Duration::from_secs(10), || async {
        status(p.addr, &alliance.op, &alliance.ca)
            .await
            .is_some_and(|s| {
                s.peers.iter().any(|l| {
                    l.expected_identity == n_files.identity
                        && l.last_error.contains("refused the connection before TLS")
                })
            })
    })
    .await;
    assert!(
        told.is_some(),
        "{:?}",
        status(p.addr, &alliance.op, &alliance.ca)
            .await
            .map(|s| s.peers)
    );
    // And its link to P is down (P still accepts N: P has the old CRL).
    assert!(
        wait_until(Duration::from_secs(10), || linked(false))
            .await
            .is_some(),
        "N still pulls from P: {:?}",
        status(p.addr, &alliance.op, &alliance.ca)
            .await
            .map(|s| s.subscriptions)
    );
    assert!(health(p.addr, &fresh, &alliance.ca).await.is_ok());

    // A renewed certificate for N (same identity, new serial): serving again.
    let renewed = alliance.node("uk.ncsc", "london-1");
    for (from, to) in [(&renewed.key, &n_files.key), (&renewed.cert, &n_files.cert)] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).expect("copy");
        std::fs::rename(&tmp, to).expect("rename");
    }
    let serving = wait_until(Duration::from_secs(10), || async {
        health(n.addr, &fresh, &alliance.ca).await.is_ok()
    })
    .await;
    assert!(serving.is_some(), "N did not serve again after renewal");
    let r = taxii_get("/taxii2/").await.expect("TAXII serves again");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(http("/healthz")
        .await
        .is_some_and(|r| r.starts_with("HTTP/1.1 200")));
    // The client revoked in the same update stays refused.
    assert!(health(n.addr, &client, &alliance.ca).await.is_err());
    assert!(
        wait_until(CONVERGE, || linked(true)).await.is_some(),
        "N's link to P did not come back"
    );
    n.stop().await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rebuilt_empty_gets_its_history_back_from_its_peers() {
    let members = ["fr.anssi", "de.bsi", "uk.ncsc"];
    let alliance = Alliance::new(&members);
    let mut nodes = mesh(&alliance, &members, &full_mesh(3)).await;

    let mut published = Vec::new();
    for (i, (member, tlp, audience)) in [
        ("fr.anssi", Tlp::Green, vec![]),
        ("fr.anssi", Tlp::Red, vec!["uk.ncsc"]),
        ("fr.anssi", Tlp::AmberStrict, vec!["de.bsi"]),
        ("de.bsi", Tlp::Green, vec![]),
        ("uk.ncsc", Tlp::Amber, vec![]),
        ("uk.ncsc", Tlp::Red, vec!["fr.anssi"]),
    ]
    .into_iter()
    .enumerate()
    {
        let b = marked(member, &format!("bulletin {i}"), tlp, &audience);
        let at = members.iter().position(|m| *m == member).unwrap();
        publish(&nodes[at], &alliance.ca, &b).await;
        published.push((b, tlp, audience));
    }
    // What uk.ncsc's node may hold: everything but the AMBER+STRICT for de.bsi.
    let for_uk: BTreeSet<String> = published
        .iter()
        .filter(|(_, tlp, audience)| *tlp != Tlp::AmberStrict || audience.contains(&"uk.ncsc"))
        .map(|(b, _, _)| b.id.clone())
        .collect();
    let before = wait_holds(&nodes[2], &alliance, &for_uk).await;

    // uk.ncsc's node loses its disk and comes back empty on the same address.
    let c = nodes.remove(2);
    let restarted = std::time::Instant::now();
    let node = c.node.restart_wiped().await;
    let c = MeshNode { node, ..c };
    let after = wait_holds(&c, &alliance, &for_uk).await;
    println!(
        "a node rebuilt empty held its {} bulletins again {:?} after its restart",
        for_uk.len(),
        restarted.elapsed()
    );
    // Byte-identical, with the same origins (its own, too: its peers kept them).
    assert_eq!(after, before);

    // Its peers read its new log from the start (it is shorter than where
    // they were), so what it publishes now still reaches them.
    let fresh = marked("uk.ncsc", "after the rebuild", Tlp::Green, &[]);
    publish(&c, &alliance.ca, &fresh).await;
    for n in &nodes {
        let mut want: BTreeSet<String> = held_at(n.node.addr, &n.client, &alliance)
            .await
            .unwrap_or_default()
            .into_keys()
            .collect();
        want.insert(fresh.id.clone());
        wait_holds(n, &alliance, &want).await;
    }
    c.node.stop().await;
    for n in nodes {
        n.node.stop().await;
    }
}

/// A node back empty reads its peer's hundreds of bulletins back to back
/// (the link checks them together, on every core): it holds each once, byte
/// for byte, in the order its peer's log has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_catch_up_keeps_the_peers_order_and_holds_each_once() {
    let members = ["fr.anssi", "de.bsi"];
    let alliance = Alliance::new(&members);
    let mut nodes = mesh(&alliance, &members, &full_mesh(2)).await;
    let mut want = BTreeSet::new();
    for i in 0..400 {
        let b = marked("fr.anssi", &format!("catch-up {i}"), Tlp::Green, &[]);
        publish(&nodes[0], &alliance.ca, &b).await;
        want.insert(b.id);
    }
    let before = wait_holds(&nodes[1], &alliance, &want).await;
    let de = nodes.remove(1);
    let node = de.node.restart_wiped().await;
    let de = MeshNode { node, ..de };
    let after = wait_holds(&de, &alliance, &want).await;
    assert_eq!(after, before, "the same envelopes, with the same origins");
    let listed = list_all(de.node.addr, &de.client, &alliance.ca)
        .await
        .expect("listed");
    let origins: Vec<u64> = listed.iter().map(|d| d.origin_sequence).collect();
    assert_eq!(origins.len(), 400);
    assert!(
        origins.windows(2).all(|w| w[0] < w[1]),
        "appended in the peer's order: {origins:?}"
    );
    de.node.stop().await;
    for n in nodes {
        n.node.stop().await;
    }
}

/// How node B of a mesh loses its log while node A, which had read it, is
/// down: its disk is wiped, or it is restored from a backup taken earlier.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rebuild {
    Wiped,
    RestoredFromOlderBackup,
}

/// A (fr.anssi) reads B (de.bsi) up to its head, then stops. B's log is
/// lost (wiped, or restored from an older backup), B refills from C
/// (uk.ncsc) and publishes more, past where A had read, the bulletins only
/// B can give A first. A returns: it must notice that B's log is another,
/// read it again from where it is the same (the start, or the backup's
/// head), and end with every bulletin it may hold; its status says what
/// happened. Before logs had identities, A resumed at its old position and
/// silently never got the bulletins B published below it.
async fn a_reader_gets_everything_from_a_peer_rebuilt_past_its_position(how: Rebuild) {
    let members = ["fr.anssi", "de.bsi", "uk.ncsc"];
    let alliance = Alliance::new(&members);
    let mut nodes = mesh(&alliance, &members, &full_mesh(3)).await;
    let mut for_fr = BTreeSet::new();
    let b_client = nodes[1].client.clone();
    let b_addr = nodes[1].node.addr;
    let publish_at_b = |b: beacon::domain::bulletin::Bulletin| {
        let (client, ca) = (b_client.clone(), alliance.ca.clone());
        async move {
            member(b_addr, &client, &ca)
                .await
                .publish(&b)
                .await
                .expect("published at B");
        }
    };

    // B's first log: what only A may read among GREEN filler.
    let mut backup = None;
    for i in 0..36 {
        let b = match i {
            3 | 20 => marked(
                "de.bsi",
                &format!("red for fr {i}"),
                Tlp::Red,
                &["fr.anssi"],
            ),
            7 | 25 => marked(
                "de.bsi",
                &format!("strict for fr {i}"),
                Tlp::AmberStrict,
                &["fr.anssi"],
            ),
            9 | 30 => marked(
                "de.bsi",
                &format!("amber for fr {i}"),
                Tlp::Amber,
                &["fr.anssi"],
            ),
            i => marked("de.bsi", &format!("green {i}"), Tlp::Green, &[]),
        };
        for_fr.insert(b.id.clone());
        publish_at_b(b).await;
        if i == 11 && how == Rebuild::RestoredFromOlderBackup {
            backup = Some(backup_bytes(nodes[1].node.addr, &alliance.op, &alliance.ca).await);
        }
    }
    let want_first = for_fr.clone();
    wait_holds(&nodes[0], &alliance, &want_first).await;
    let b_identity = nodes[1].identity.clone();
    let read_to = wait_until(CONVERGE, || async {
        let p = peer_status(&nodes[0], &alliance).await;
        p.iter()
            .any(|p| p.expected_identity == b_identity && p.cursor == 36)
    })
    .await;
    assert!(read_to.is_some(), "A read B's log to its head (36)");
    let old_log = status(nodes[1].node.addr, &alliance.op, &alliance.ca)
        .await
        .and_then(|s| s.store)
        .expect("B's status")
        .log_id;

    // A goes down; B loses its log.
    let a = nodes.remove(0);
    let a_stopped = a.node.stop_keeping().await;
    let b = nodes.remove(0);
    let b_node = match how {
        Rebuild::Wiped => b.node.restart_wiped().await,
        Rebuild::RestoredFromOlderBackup => {
            let file = backup.take().expect("a backup was taken");
            let bundle = alliance.bundle();
            b.node
                .restart_after(|dir| {
                    wipe_store(dir);
                    let verify = beacon::broker::ingest::stored_check(&bundle);
                    beacon::store::backup::restore(
                        &file[..],
                        dir,
                        &store_options(dir),
                        &verify,
                        &|_| Ok(()),
                        |_, _| {},
                    )
                    .expect("restored");
                })
                .await
        }
    };
    let b = MeshNode { node: b_node, ..b };
    nodes.insert(0, b);
    // nodes: [B, C]. B refills what C holds of it (the GREEN ones).
    // C holds the 30 GREEN ones; a restored B holds the backup's 12 and
    // gets the 21 GREEN ones after them.
    let refilled = match how {
        Rebuild::Wiped => 30,
        Rebuild::RestoredFromOlderBackup => 33,
    };
    let b_addr = nodes[0].node.addr;
    let b_refilled = wait_until(CONVERGE, || async {
        head(b_addr, &alliance.op, &alliance.ca).await == refilled
    })
    .await;
    assert!(b_refilled.is_some(), "B refilled from C to {refilled}");
    let b_store = status(nodes[0].node.addr, &alliance.op, &alliance.ca)
        .await
        .and_then(|s| s.store)
        .expect("B's status");
    assert_ne!(b_store.log_id, old_log, "B serves a new log");
    match how {
        Rebuild::Wiped => assert_eq!(b_store.forked_from, None),
        Rebuild::RestoredFromOlderBackup => {
            let f = b_store
                .forked_from
                .clone()
                .expect("a restored log names its origin");
            assert_eq!((f.log_id.as_str(), f.size), (old_log.as_str(), 12));
        }
    }

    // B publishes again, past A's position, what only A may read first.
    for i in 0..12 {
        let b = match i {
            0 => marked("de.bsi", "red for fr, again", Tlp::Red, &["fr.anssi"]),
            1 => marked(
                "de.bsi",
                "strict for fr, again",
                Tlp::AmberStrict,
                &["fr.anssi"],
            ),
            2 => marked("de.bsi", "amber for fr, again", Tlp::Amber, &["fr.anssi"]),
            3 => marked("de.bsi", "red for uk", Tlp::Red, &["uk.ncsc"]),
            i => marked("de.bsi", &format!("green again {i}"), Tlp::Green, &[]),
        };
        if i != 3 {
            for_fr.insert(b.id.clone());
        }
        publish_at_b(b).await;
    }
    let head_b = head(nodes[0].node.addr, &alliance.op, &alliance.ca).await;
    assert!(
        head_b > 36,
        "B's new log passed A's position (head {head_b})"
    );
    assert!(
        refilled + 3 <= 36,
        "what only B can give A lies below A's position"
    );

    // A returns: it must get every bulletin it may hold.
    let a = MeshNode {
        node: a_stopped.start().await,
        ..a
    };
    let held = wait_holds(&a, &alliance, &for_fr).await;
    assert_eq!(held.len(), for_fr.len());
    let b_log = status(nodes[0].node.addr, &alliance.op, &alliance.ca)
        .await
        .and_then(|s| s.store)
        .expect("B's status")
        .log_id;
    let link = peer_status(&a, &alliance)
        .await
        .into_iter()
        .find(|p| p.expected_identity == b_identity)
        .expect("A's link to B");
    println!("{how:?}: A's link to B after the change: {link:?}");
    assert_eq!(link.log_id, b_log, "A's position is on B's new log");
    assert!(link.log_changes >= 1, "the change is counted: {link:?}");
    let from = match how {
        Rebuild::Wiped => 1,
        Rebuild::RestoredFromOlderBackup => 13,
    };
    assert!(
        link.last_log_change
            .contains(&format!("reading it again from {from}")),
        "the change is told: {}",
        link.last_log_change
    );
    // A further restart reads on from where it is, on the new log.
    let a_node = a.node.restart_in_place().await;
    let a = MeshNode { node: a_node, ..a };
    let extra = marked("de.bsi", "after A's restart", Tlp::Red, &["fr.anssi"]);
    for_fr.insert(extra.id.clone());
    publish_at_b(extra).await;
    wait_holds(&a, &alliance, &for_fr).await;
    let link = peer_status(&a, &alliance)
        .await
        .into_iter()
        .find(|p| p.expected_identity == b_identity)
        .expect("A's link to B");
    assert_eq!(
        link.log_changes, 0,
        "no change after a plain restart: {link:?}"
    );
    a.node.stop().await;
    for n in nodes {
        n.node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_wiped_and_refilled_past_the_readers_position_is_read_again_from_the_start() {
    a_reader_gets_everything_from_a_peer_rebuilt_past_its_position(Rebuild::Wiped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restored_from_an_older_backup_is_read_again_from_the_backups_head() {
    a_reader_gets_everything_from_a_peer_rebuilt_past_its_position(
        Rebuild::RestoredFromOlderBackup,
    )
    .await;
}
