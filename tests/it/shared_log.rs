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
async fn acked_at_least(acked: &Acked, n: usize, limit: Duration, nodes: &[&ChildNode]) {
    let got = wait_until(limit, || async { acked.lock().unwrap().len() >= n }).await;
    assert!(
        got.is_some(),
        "only {} acknowledged within {limit:?}; the nodes' logs:\n{}",
        acked.lock().unwrap().len(),
        nodes
            .iter()
            .map(|n| n.log())
            .collect::<Vec<_>>()
            .join("\n----\n")
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
    // Every acknowledgement is counted by node (`big` counts what `shape`
    // marks: all of them).
    let p1 = Publishers::start(a1, &clients[..4], &ca, &acked, "storm", limit, |_, _, _| {
        true
    })
    .await;
    let p2 = Publishers::start(a2, &clients[4..], &ca, &acked, "storm", limit, |_, _, _| {
        true
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
    acked_at_least(&acked, 300, Duration::from_secs(60), &[&n1, &n2]).await;
    // Both append: the nodes take turns with the log.
    let both = wait_until(Duration::from_secs(30), || async {
        use std::sync::atomic::Ordering::Relaxed;
        p1.big.load(Relaxed) >= 50 && p2.big.load(Relaxed) >= 50
    })
    .await;
    assert!(
        both.is_some(),
        "both nodes append to the one log\nlondon-1:\n{}\nlondon-2:\n{}",
        n1.log(),
        n2.log()
    );
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
    acked_at_least(&acked, before + 100, Duration::from_secs(60), &[&n2]).await;
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

/// A primary and a synchronous standby of this test's own (so that killing
/// the primary touches no other test), stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    env: std::collections::BTreeMap<String, String>,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // The servers run as an unprivileged account, which must reach it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-cluster");
        let out = std::process::Command::new(script)
            .arg("start")
            .arg(dir.path().join("cluster"))
            .output()
            .expect("run scripts/pg-cluster");
        assert!(
            out.status.success(),
            "scripts/pg-cluster start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect();
        Cluster { dir, env }
    }

    fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .map(String::as_str)
            .expect("cluster variable")
    }

    /// host:port of a URL the script printed.
    fn host_port(url: &str) -> &str {
        url.trim_start_matches("postgresql://beacon@")
            .split('/')
            .next()
            .expect("host:port")
    }

    /// Both servers, the one that takes writes chosen at connect time.
    fn url(&self) -> String {
        format!(
            "postgresql://beacon@{},{}/postgres?target_session_attrs=read-write",
            Self::host_port(self.var("BEACON_TEST_PG_URL")),
            Self::host_port(self.var("BEACON_TEST_PG_STANDBY"))
        )
    }

    fn run_as(&self, program: &str, args: &[&str]) -> String {
        let bin = std::path::Path::new(self.var("BEACON_TEST_PG_BIN")).join(program);
        let user = self.var("BEACON_TEST_PG_USER");
        let me = std::process::Command::new("id")
            .arg("-un")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let mut cmd = if me != user {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", user, "--"]).arg(&bin);
            c
        } else {
            std::process::Command::new(&bin)
        };
        let out = cmd.args(args).output().expect("run a PostgreSQL program");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILL to the primary's postmaster: it stops as a machine would.
    fn kill_primary(&self) {
        let pidfile =
            std::path::Path::new(self.var("BEACON_TEST_PG_DIR")).join("primary/postmaster.pid");
        let pid: i32 = std::fs::read_to_string(pidfile)
            .expect("postmaster.pid")
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("the postmaster's pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the primary");
    }

    /// Promotes the standby, and (as an operator or Patroni would) lets it
    /// commit without a standby of its own.
    fn promote_standby(&self) {
        let standby = std::path::Path::new(self.var("BEACON_TEST_PG_DIR")).join("standby");
        self.run_as(
            "pg_ctl",
            &["promote", "-w", "-D", &standby.display().to_string()],
        );
        self.run_as(
            "psql",
            &[
                self.var("BEACON_TEST_PG_STANDBY"),
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "ALTER SYSTEM SET synchronous_standby_names = ''",
                "-c",
                "SELECT pg_reload_conf()",
            ],
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-cluster");
        let _ = std::process::Command::new(script)
            .arg("stop")
            .arg(self.dir.path().join("cluster"))
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_database_killed_mid_storm_and_the_standby_promoted_loses_nothing_acknowledged()
{
    if pg_url().is_none() {
        return;
    }
    let cluster = Cluster::start();
    let pki = TestPki::new();
    let mut opts = NodeOptions::new(&pki, pki.node("uk.ncsc", "london-1"));
    opts.extra = on_schema(&cluster.url(), "beacon");
    let (_dir, node) = daemon(&opts);
    let addr = node.addr;
    let ca = vec![pki.ca_cert()];
    let reader = pki.client("uk.ncsc", "reader");
    let acked: Acked = Default::default();
    let clients: Vec<CertFiles> = (0..6)
        .map(|i| pki.client("uk.ncsc", &format!("pub-{i}")))
        .collect();
    let publishers = Publishers::start(
        addr,
        &clients,
        &ca,
        &acked,
        "storm",
        Duration::from_secs(60),
        |_, _, _| false,
    )
    .await;
    let state = Arc::new(Mutex::new(Reader::default()));
    let sub = tokio::spawn(durable_reader(
        addr,
        reader.clone(),
        ca.clone(),
        state.clone(),
        None,
    ));
    acked_at_least(&acked, 300, Duration::from_secs(60), &[&node]).await;

    // The primary dies mid-storm: publishes are refused, never acknowledged.
    cluster.kill_primary();
    let refused = wait_until(Duration::from_secs(30), || async {
        let mut c = member(addr, &reader, &ca).await;
        let env = c
            .signer
            .sign(bulletin("uk.ncsc", "while the database is down").to_bytes())
            .expect("sign");
        matches!(c.publish_envelope(&env).await,
                 Err(beacon::net::client::ClientError::Rpc(s)) if s.code() == tonic::Code::Unavailable)
    })
    .await;
    assert!(
        refused.is_some(),
        "publishes are refused as UNAVAILABLE: {}",
        node.log()
    );
    publishers.stop().await;
    // The durable subscriber is stopped here; it resumes from its cursor
    // once the database is back.
    sub.abort();
    let _ = sub.await;
    let acknowledged = acked.lock().unwrap().len();

    // The standby is promoted; the node finds it by itself (no restart):
    // publishes are taken again, after the last sequence the database
    // holds, and every bulletin it acknowledged is there.
    cluster.promote_standby();
    let mut c = member(addr, &reader, &ca).await;
    let b = bulletin("uk.ncsc", "after the failover");
    let env = c.signer.sign(b.to_bytes()).expect("sign");
    let started = std::time::Instant::now();
    let after = loop {
        match c.publish_envelope(&env).await {
            Ok(p) => break p.sequence,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(60),
                "the node takes publishes again once the standby is promoted ({e}): {}",
                node.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "publishing again {:?} after the promotion, at sequence {after}",
        started.elapsed()
    );
    acked.lock().unwrap().insert(
        b.id.clone(),
        (
            after,
            beacon::domain::bulletin::codec::encode_envelope(&env),
        ),
    );
    let head = check_everything(addr, &reader, &ca, &acked, 0).await;
    assert!(head as usize > acknowledged, "{head} <= {acknowledged}");
    assert_eq!(
        after, head,
        "the bulletin published after the failover is the last"
    );
    reader_has_seen_everything(addr, &reader, &ca, &state, head, Duration::from_secs(60)).await;
    drop(node);
}

/// The duties `addr`'s node holds and waits for, as its status says.
async fn duties_of(addr: std::net::SocketAddr, alliance: &Alliance) -> (Vec<String>, Vec<String>) {
    status(addr, &alliance.op, &alliance.ca)
        .await
        .and_then(|s| s.store)
        .map(|s| (s.duties_held, s.duties_waiting))
        .unwrap_or_default()
}

/// Waits until exactly one of `addrs` holds `duty` and every other waits
/// for it; the one that holds it.
async fn sole_holder(
    duty: &str,
    addrs: &[std::net::SocketAddr],
    alliance: &Alliance,
) -> Option<std::net::SocketAddr> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let mut holders = Vec::new();
        let mut settled = true;
        for a in addrs {
            let (held, waiting) = duties_of(*a, alliance).await;
            match (
                held.iter().any(|d| d == duty),
                waiting.iter().any(|d| d == duty),
            ) {
                (true, false) => holders.push(*a),
                (false, true) => {}
                _ => settled = false,
            }
        }
        if settled && holders.len() == 1 {
            return Some(holders[0]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn peers_of(
    addr: std::net::SocketAddr,
    alliance: &Alliance,
) -> Vec<beacon::base::proto::v1::PeerStatus> {
    status(addr, &alliance.op, &alliance.ca)
        .await
        .map(|s| s.peers)
        .unwrap_or_default()
}

/// What `client` reads at `addr`: every id, once each.
async fn ids_at(
    addr: std::net::SocketAddr,
    client: &CertFiles,
    ca: &[std::path::PathBuf],
) -> std::collections::BTreeSet<String> {
    let all = list_all(addr, client, ca).await.unwrap_or_default();
    let ids: std::collections::BTreeSet<String> = all.iter().map(delivery_id).collect();
    assert_eq!(ids.len(), all.len(), "no bulletin twice at {addr}");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_of_a_shared_log_holds_its_peer_links_and_pruning_and_another_takes_them_when_it_dies(
) {
    let Some(url) = pg_url() else { return };
    let alliance = Alliance::new(&["fr.anssi", "uk.ncsc"]);
    let paris_cert = alliance.node("fr.anssi", "paris");
    let paris_id = paris_cert.identity.clone();
    let (_dp, paris) = daemon(&alliance.options(paris_cert, &[]));
    let schema = fresh_schema();
    // Retention is on (nothing is old enough to go), so pruning is a duty.
    let retention =
        "[retention]\ninterval = \"1s\"\n\n[retention.tlp.\"TLP:CLEAR\"]\nmax_age = \"30d\"\n";
    let london = |name: &str| {
        let mut o = alliance.options(
            alliance.node("uk.ncsc", name),
            &[(paris.addr, paris_id.clone())],
        );
        o.extra.push_str(&on_schema(&url, &schema));
        o.extra.push_str(retention);
        o
    };
    let (_d1, n1) = daemon(&london("london-1"));
    let (_d2, n2) = daemon(&london("london-2"));
    let mut nodes = vec![n1, n2];
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();

    // One node holds each duty; the other waits for it.
    let links = sole_holder("peer-links", &addrs, &alliance).await;
    let Some(links) = links else {
        panic!(
            "one node holds the peer links: {:?} / {:?}\n{}",
            duties_of(addrs[0], &alliance).await,
            duties_of(addrs[1], &alliance).await,
            nodes
                .iter()
                .map(|n| n.log())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
    };
    assert!(sole_holder("pruning", &addrs, &alliance).await.is_some());
    let other = *addrs.iter().find(|a| **a != links).expect("two nodes");

    // Paris's bulletins come in through the holder's link, once.
    let author = alliance.client("fr.anssi", "author");
    let mut p = member(paris.addr, &author, &alliance.ca).await;
    let mut sent = std::collections::BTreeSet::new();
    for i in 0..20 {
        let b = bulletin("fr.anssi", &format!("from paris {i}"));
        p.publish(&b).await.expect("publish at paris");
        sent.insert(b.id);
    }
    let reader = alliance.client("uk.ncsc", "reader");
    let arrived = wait_until(Duration::from_secs(60), || async {
        ids_at(other, &reader, &alliance.ca).await == sent
    })
    .await;
    assert!(arrived.is_some(), "paris's bulletins reach the shared log");
    let on_holder = peers_of(links, &alliance).await;
    assert_eq!(on_holder.len(), 1);
    assert_eq!((on_holder[0].stored, on_holder[0].duplicates), (20, 0));
    let on_other = peers_of(other, &alliance).await;
    assert!(
        !on_other[0].connected && on_other[0].stored == 0,
        "the other node has no link up: {on_other:?}"
    );

    // The holder dies: the other takes the links (and pruning) and goes on
    // from the shared position, nothing read twice.
    let (dead, alive) = match nodes[0].addr == links {
        true => (nodes.remove(0), nodes.remove(0)),
        false => (nodes.remove(1), nodes.remove(0)),
    };
    let mut dead = dead;
    let killed = std::time::Instant::now();
    dead.signal(nix::sys::signal::Signal::SIGKILL);
    dead.wait(Duration::from_secs(10));
    let took = wait_until(Duration::from_secs(30), || async {
        let (held, _) = duties_of(alive.addr, &alliance).await;
        held.iter().any(|d| d == "peer-links") && held.iter().any(|d| d == "pruning")
    })
    .await;
    assert!(
        took.is_some(),
        "the survivor takes the duties: {}",
        alive.log()
    );
    eprintln!(
        "the survivor held both duties {:?} after the SIGKILL",
        killed.elapsed()
    );
    for i in 20..30 {
        let b = bulletin("fr.anssi", &format!("from paris {i}"));
        p.publish(&b).await.expect("publish at paris");
        sent.insert(b.id);
    }
    let arrived = wait_until(Duration::from_secs(60), || async {
        ids_at(alive.addr, &reader, &alliance.ca).await == sent
    })
    .await;
    assert!(
        arrived.is_some(),
        "what paris publishes after the holder died arrives through the survivor: {}",
        alive.log()
    );
    let st = status(alive.addr, &alliance.op, &alliance.ca)
        .await
        .expect("status");
    assert_eq!(st.store.map(|s| s.bulletins), Some(30), "each once");
    // It started from the position the holder left (a position not yet
    // durable when the holder died only means a few deliveries again,
    // answered as duplicates).
    assert!(
        st.peers[0].duplicates < 20,
        "the survivor read paris from the holder's position: {:?}",
        st.peers[0]
    );
    drop(alive);
    drop(paris);
    psql(&format!("DROP SCHEMA {schema} CASCADE"));
}
