//! Power loss and disk faults, on PowerFs (`tests/it/common/powerfs.rs`): a
//! filesystem that forgets what was not fsynced when the power is cut.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::checks::*;
use crate::common::powerfs::{Counters, Cut, PowerFs};
use crate::common::*;
use rand::Rng;

fn sync_dir(path: &std::path::Path) {
    File::open(path)
        .expect("open dir")
        .sync_all()
        .expect("fsync dir");
}

/// The filesystem itself keeps exactly what was made durable.
#[test]
fn the_test_filesystem_forgets_what_was_not_fsynced() {
    let mut fs = PowerFs::mount();
    let root = fs.path().to_path_buf();
    fs::create_dir(root.join("d")).unwrap();
    sync_dir(&root);
    // Written, fsynced, entry fsynced: kept.
    let mut f = File::create(root.join("d/kept")).unwrap();
    f.write_all(b"kept").unwrap();
    f.sync_all().unwrap();
    drop(f);
    // Written and fsynced, but its directory never was: lost.
    let mut f = File::create(root.join("d/unnamed")).unwrap();
    f.write_all(b"data").unwrap();
    f.sync_all().unwrap();
    drop(f);
    sync_dir(&root.join("d"));
    let mut f = File::create(root.join("d/late")).unwrap();
    f.write_all(b"late").unwrap();
    f.sync_all().unwrap();
    drop(f);
    // Appended without fsync: the tail is lost.
    let mut f = OpenOptions::new()
        .append(true)
        .open(root.join("d/kept"))
        .unwrap();
    f.write_all(b" and more").unwrap();
    drop(f);
    // Renamed without a directory fsync: the old name comes back.
    fs::rename(root.join("d/unnamed"), root.join("d/renamed")).unwrap();
    assert_eq!(fs::read(root.join("d/kept")).unwrap(), b"kept and more");
    fs.power_cut(Cut::Strict);
    let root = fs.path().to_path_buf();
    assert_eq!(fs::read(root.join("d/kept")).unwrap(), b"kept");
    assert_eq!(fs::read(root.join("d/unnamed")).unwrap(), b"data");
    assert!(!root.join("d/renamed").exists());
    assert!(!root.join("d/late").exists());
    // Moved to another directory, only the target fsynced: a rename is
    // durable on both sides at once, never a file (or directory) in two places.
    fs::create_dir(root.join("e")).unwrap();
    sync_dir(&root);
    fs::rename(root.join("d/unnamed"), root.join("e/moved")).unwrap();
    sync_dir(&root.join("e"));
    fs.power_cut(Cut::Strict);
    let root = fs.path().to_path_buf();
    assert_eq!(fs::read(root.join("e/moved")).unwrap(), b"data");
    assert!(!root.join("d/unnamed").exists());
    // A torn cut keeps some of what was not synced, never more than was written.
    let mut f = OpenOptions::new()
        .append(true)
        .open(root.join("d/kept"))
        .unwrap();
    f.write_all(&vec![7u8; 64 * 1024]).unwrap();
    drop(f);
    fs.power_cut(Cut::Torn { seed: 7 });
    let kept = fs::read(fs.path().join("d/kept")).unwrap();
    assert!(kept.starts_with(b"kept"));
    assert!(kept.len() == 4 || kept.len() == 4 + 64 * 1024);
    assert!(kept[4..].iter().all(|b| *b == 0 || *b == 7));
    // Full disk and failing fsyncs.
    fs.set_capacity(Some(fs.used() + 8192));
    let mut f = File::create(fs.path().join("big")).unwrap();
    let err = f.write_all(&vec![1u8; 64 * 1024]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
    fs.set_capacity(None);
    f.write_all(b"x").unwrap();
    fs.fail_fsyncs(true);
    assert_eq!(f.sync_all().unwrap_err().raw_os_error(), Some(5));
    fs.fail_fsyncs(false);
    let c = fs.counters();
    assert!(
        c.fsyncs >= 3 && c.failed_fsyncs == 1 && c.cuts == 3,
        "{c:?}"
    );
}

/// The number of power cuts (`BEACON_POWER_CYCLES`, default 4; a soak sets more).
fn cycles() -> usize {
    std::env::var("BEACON_POWER_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
}

/// Whether this run makes torn cuts (`BEACON_POWER_TORN=1`).
fn torn_cuts() -> bool {
    std::env::var("BEACON_POWER_TORN").as_deref() == Ok("1")
}

/// The cut of cycle `i`: strict (everything not fsynced lost), or, with
/// `BEACON_POWER_TORN=1`, every other one torn (unsynced writes kept in part
/// and out of order), which sled does not always recover from
/// (docs/RELIABILITY.md): the node must then refuse the store, never serve it.
fn cut_for(rng: &mut rand::rngs::ThreadRng, i: usize) -> Cut {
    if torn_cuts() && i % 2 == 1 {
        Cut::Torn { seed: rng.random() }
    } else {
        Cut::Strict
    }
}

/// Starts the node after a cut. `None`: it refused the store because sled
/// brought back part of a batch beyond everything acknowledged (up to
/// `acknowledged`), which docs/RELIABILITY.md records as the one allowed
/// outcome besides serving: the damage named must lie beyond what was
/// acknowledged (a panic of sled's recovery, which names nothing, only in
/// runs with torn cuts). Any other failure to start fails the test.
fn restart(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    acknowledged: u64,
) -> Option<ChildNode> {
    let stderr_path = dir.join(format!("child-{}.log", addr.port()));
    let stderr = std::fs::File::create(&stderr_path).expect("log file");
    let child = std::process::Command::new(beacon_bin())
        .args(["daemon", "--config", "beacon.toml"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn beacon");
    let mut node = ChildNode {
        child,
        addr,
        stderr_path,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Some(node);
        }
        if let Ok(Some(_)) = node.child.try_wait() {
            let log = node.log();
            assert!(
                log.contains("log is not whole"),
                "the node refused to start:\n{log}"
            );
            let number = |after: &str| -> Option<u64> {
                let rest = &log[log.find(after)? + after.len()..];
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            };
            let beyond = match (number("log ends at "), number("sequence ")) {
                (Some(last), _) => last >= acknowledged,
                (None, Some(missing)) => missing > acknowledged,
                (None, None) => torn_cuts() && log.contains("failed while recovering"),
            };
            assert!(
                beyond,
                "refused for damage within what was acknowledged (up to {acknowledged}):\n{log}"
            );
            eprintln!(
                "the node refused the store (damage beyond what was acknowledged): {}",
                log.lines().last().unwrap_or_default()
            );
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not start:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `beacon daemon` child whose data directory is on `fs`; its config,
/// certificates and log are elsewhere (the node's own disk is what fails).
fn node_on(fs: &PowerFs, opts: &NodeOptions) -> (tempfile::TempDir, std::net::SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    std::fs::write(
        dir.path().join("beacon.toml"),
        opts.config_text(&fs.path().join("node").join("store"), &addr.to_string()),
    )
    .expect("write config");
    (dir, addr)
}

/// Publishers, a durable subscriber, a prober of the cursor the node reports
/// durable, and backups, all running when the power is cut at a random
/// moment; then what survived is mounted and the node restarted. Every
/// acknowledged bulletin is there, byte-identical, in a gapless log; the
/// durable cursor resumes at or past what was reported durable and never past
/// what was acknowledged; a backup file that survived restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_bulletins_and_cursors_survive_power_cuts() {
    let mut fs = PowerFs::mount();
    let pki = TestPki::new();
    let (dir, addr) = node_on(&fs, &NodeOptions::new(&pki, pki.node("drc", "hub-1")));
    let ca = vec![pki.ca_cert()];
    let op = pki.operator("root");
    let clients: Vec<CertFiles> = (0..4)
        .map(|i| pki.client(&format!("m{i}.example"), "pub"))
        .collect();
    let reader_files = pki.client("drc", "auditor");
    let acked: Acked = Arc::default();
    let big_acked = Arc::new(AtomicU64::new(0));
    let reader: Arc<Mutex<Reader>> = Arc::default();
    let mut rng = rand::rng();
    let cycles = cycles();
    let mut backups_checked = 0;
    let mut recovery = Vec::new();
    let mut refused = 0;

    for cycle in 0..=cycles {
        let t0 = Instant::now();
        let top = acked
            .lock()
            .unwrap()
            .values()
            .map(|v| v.0)
            .max()
            .unwrap_or(0);
        let Some(mut node) = restart(dir.path(), addr, top) else {
            refused += 1;
            break;
        };
        let up = wait_until(Duration::from_secs(30), || async {
            health(addr, &op, &ca).await.is_ok()
        })
        .await;
        assert!(
            up.is_some(),
            "cycle {cycle}: the node does not serve after the cut:\n{}",
            node.log()
        );
        recovery.push(t0.elapsed());
        for line in node.log().lines().filter(|l| l.contains("write-ahead")) {
            eprintln!("cycle {cycle}: {line}");
        }
        let head = check_everything(addr, &reader_files, &ca, &acked, cycle).await;
        // A backup that survived the cut is whole: it restores.
        let backup = fs.path().join("node.backup");
        if backup.exists() {
            let (scratch, config) =
                TestNode::prepare(&NodeOptions::new(&pki, pki.node("drc", "scratch")));
            let (code, out, err) = beacon(
                scratch.path(),
                &[
                    "admin",
                    "restore",
                    &backup.display().to_string(),
                    "--config",
                    &config.display().to_string(),
                ],
            );
            assert_eq!(
                code, 0,
                "cycle {cycle}: a backup that survived does not restore: {out}{err}"
            );
            backups_checked += 1;
            std::fs::remove_file(&backup).expect("remove the checked backup");
            sync_dir(fs.path());
        }
        if cycle == cycles {
            let (catch_up, stop_within) = (Duration::from_secs(120), Duration::from_secs(30));
            final_cycle(
                &mut node,
                addr,
                &reader_files,
                &ca,
                &reader,
                head,
                catch_up,
                stop_within,
            )
            .await;
            break;
        }
        let streaming = tokio::spawn(durable_reader(
            addr,
            reader_files.clone(),
            ca.clone(),
            reader.clone(),
            None,
        ));
        // Now and then one large enough to leave sled's log (a blob file of
        // its own).
        let publishers = Publishers::start(
            addr,
            &clients,
            &ca,
            &acked,
            "power cut",
            Duration::from_secs(60),
            |i, n, b| {
                let big = i == 0 && n.is_multiple_of(16);
                if big {
                    b.body = "x".repeat(200 * 1024);
                }
                big
            },
        )
        .await;
        let stop = publishers.stop_flag();
        // The cursor the node reports durable, sampled until the cut.
        let prober = {
            let (reader, stop, op, ca, who) = (
                reader.clone(),
                stop.clone(),
                op.clone(),
                ca.clone(),
                reader_files.identity.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match cursor_of(addr, &op, &ca, &who, "audit-feed").await {
                        Some(c) => {
                            let mut st = reader.lock().unwrap();
                            st.reported_durable = st.reported_durable.max(c);
                        }
                        None => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        };
        // A backup over the API, into the same failing filesystem.
        let backup_child = (cycle % 2 == 1).then(|| {
            let mut args: Vec<String> = vec!["admin".into(), "backup".into(), "--out".into()];
            args.push(backup.display().to_string());
            args.extend(conn_args(addr, &op, &pki.ca_cert()));
            std::process::Command::new(beacon_bin())
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("backup")
        });
        let run_for = Duration::from_millis(rng.random_range(200..1500));
        tokio::time::sleep(run_for).await;
        // The power cut: every process on the disk dies at once.
        node.signal(nix::sys::signal::Signal::SIGKILL);
        let backup_done = backup_child.map(|mut child| {
            let _ = child.kill();
            child.wait().map(|s| s.success()).unwrap_or(false)
        });
        node.wait(Duration::from_secs(10));
        stop.store(true, Ordering::Relaxed);
        let how = cut_for(&mut rng, cycle);
        fs.power_cut(how);
        if backup_done == Some(true) {
            assert!(
                backup.exists(),
                "cycle {cycle}: a backup reported written is gone after the cut"
            );
        }
        let big = publishers.big.clone();
        publishers.stop().await;
        big_acked.fetch_add(big.load(Ordering::Relaxed), Ordering::Relaxed);
        prober.await.unwrap();
        streaming
            .await
            .expect("the durable subscriber's checks hold");
        let c = fs.counters();
        eprintln!(
            "cycle {cycle}: cut ({how:?}) after {run_for:?}; {} acknowledged so far; \
             backup finished: {backup_done:?}; {} KiB unsynced lost; fsyncs {} (dirs {})",
            acked.lock().unwrap().len(),
            c.pages_lost / 1024,
            c.fsyncs,
            c.dir_fsyncs,
        );
    }
    assert!(
        !acked.lock().unwrap().is_empty(),
        "nothing was published at all"
    );
    assert!(
        big_acked.load(Ordering::Relaxed) > 0,
        "no large bulletin was acknowledged"
    );
    eprintln!(
        "power cuts: {cycles}; acknowledged: {}, lost: 0; refused after a torn cut: {refused}; \
         backups checked: {backups_checked}; from restart to serving: {:?} at most",
        acked.lock().unwrap().len(),
        recovery.iter().max().copied().unwrap_or_default()
    );
}

/// The gRPC code of a refused publish.
fn code_of(e: &beacon::net::client::ClientError) -> Option<tonic::Code> {
    match e {
        beacon::net::client::ClientError::Rpc(s) => Some(s.code()),
        _ => None,
    }
}

/// Publishes one bulletin of `files`'s member; records it if acknowledged.
async fn publish_one(
    c: &mut beacon::net::client::BeaconClient,
    member_id: &str,
    size: usize,
    acked: &Acked,
) -> Result<u64, beacon::net::client::ClientError> {
    let mut b = bulletin(member_id, "disk fault");
    b.body = "y".repeat(size);
    let env = c.signer.sign(b.to_bytes()).unwrap();
    let p = c.publish_envelope(&env).await?;
    acked.lock().unwrap().insert(
        b.id,
        (
            p.sequence,
            beacon::domain::bulletin::codec::encode_envelope(&env),
        ),
    );
    Ok(p.sequence)
}

/// Publishes until one is refused (bounded in count and time); returns the error.
async fn publish_until_refused(
    c: &mut beacon::net::client::BeaconClient,
    member_id: &str,
    acked: &Acked,
) -> beacon::net::client::ClientError {
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..20_000 {
        assert!(Instant::now() < deadline, "publishes were never refused");
        if let Err(e) = publish_one(c, member_id, 16 * 1024, acked).await {
            return e;
        }
    }
    panic!("publishes were never refused");
}

fn spawn_node(dir: &std::path::Path, addr: std::net::SocketAddr) -> ChildNode {
    ChildNode::spawn(dir, &["daemon", "--config", "beacon.toml"], addr)
}

/// Disk full. With the reserve (`[store] reserve_mb`), publishes are refused
/// with RESOURCE_EXHAUSTED before the disk fills, reads go on, and
/// publishing resumes without a restart once space is freed. Where the
/// filesystem misreports its free space, the write that fails with ENOSPC
/// stops the store (UNAVAILABLE, saying why; sled then fails reads too);
/// nothing acknowledged is lost, and a restart with space freed serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_publishes_and_loses_nothing() {
    let mut fs = PowerFs::mount();
    let pki = TestPki::new();
    let mut opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    let ops = free_addr();
    opts.extra = format!("[store]\nreserve_mb = 4\n\n[metrics]\nlisten = \"{ops}\"\n");
    let (dir, addr) = node_on(&fs, &opts);
    let ca = vec![pki.ca_cert()];
    let files = pki.client("uk.ncsc", "pub");
    let reader = pki.client("drc", "auditor");
    let acked: Acked = Arc::default();
    let mut node = spawn_node(dir.path(), addr);
    let mut c = member(addr, &files, &ca).await;
    for _ in 0..20 {
        publish_one(&mut c, "uk.ncsc", 1024, &acked)
            .await
            .expect("publish");
    }

    // The reserve: a storm of publishers is refused before the disk is
    // full, every one with RESOURCE_EXHAUSTED, and back once space is freed.
    fs.set_capacity(Some(fs.used() + 12 * 1024 * 1024));
    let mut storm = Vec::new();
    for i in 0..4 {
        let mut c = member(addr, &pki.client("uk.ncsc", &format!("storm-{i}")), &ca).await;
        let acked = acked.clone();
        storm.push(tokio::spawn(async move {
            publish_until_refused(&mut c, "uk.ncsc", &acked).await
        }));
    }
    for t in storm {
        let e = t.await.expect("publisher");
        assert_eq!(code_of(&e), Some(tonic::Code::ResourceExhausted), "{e}");
        assert!(e.to_string().contains("reserve"), "{e}");
    }
    let e = publish_one(&mut c, "uk.ncsc", 1024, &acked)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(tonic::Code::ResourceExhausted), "{e}");
    let (_, metrics) = http_get(ops, "/metrics");
    assert_eq!(sample(&metrics, "beacon_store_disk_full"), Some(1.0));
    assert_eq!(sample(&metrics, "beacon_store_failed"), Some(0.0));
    let refused = acked.lock().unwrap().len();
    assert_eq!(fs.counters().enospc, 0, "the disk never filled");
    check_everything(addr, &reader, &ca, &acked, 0).await;
    let freed = Instant::now();
    fs.set_capacity(None);
    let back = wait_until(Duration::from_secs(30), || {
        let (mut c, acked) = (c.clone(), acked.clone());
        async move { publish_one(&mut c, "uk.ncsc", 1024, &acked).await.is_ok() }
    })
    .await;
    assert!(
        back.is_some(),
        "publishing did not resume once space was freed"
    );
    let resumed_in = freed.elapsed();

    // Free space misreported: the engine meets ENOSPC itself.
    fs.hide_capacity(true);
    fs.set_capacity(Some(fs.used() + 2 * 1024 * 1024));
    let e = publish_until_refused(&mut c, "uk.ncsc", &acked).await;
    assert!(fs.counters().enospc > 0, "the disk filled: {e}");
    assert_eq!(code_of(&e), Some(tonic::Code::Unavailable), "{e}");
    // The store stops, and keeps refusing (no retry as if it had worked),
    // even once space is freed.
    fs.set_capacity(None);
    let e = publish_one(&mut c, "uk.ncsc", 1024, &acked)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(tonic::Code::Unavailable), "{e}");
    assert!(e.to_string().contains("restart the node"), "{e}");
    let (_, metrics) = http_get(ops, "/metrics");
    assert_eq!(sample(&metrics, "beacon_store_failed"), Some(1.0));
    let (status, body) = http_get(ops, "/healthz");
    assert!(
        status.contains("503") && body.contains("No space left"),
        "{status}: {body}"
    );
    // (Reads fail too from here on: sled keeps the I/O error and returns it
    // from every later operation; docs/RELIABILITY.md.)
    let t0 = Instant::now();
    node.signal(nix::sys::signal::Signal::SIGKILL);
    node.wait(Duration::from_secs(10));
    fs.power_cut(Cut::Strict);
    let _node = spawn_node(dir.path(), addr);
    check_everything(addr, &reader, &ca, &acked, 2).await;
    let mut c = member(addr, &files, &ca).await;
    publish_one(&mut c, "uk.ncsc", 1024, &acked)
        .await
        .expect("serves after a restart");
    eprintln!(
        "disk full: refused (RESOURCE_EXHAUSTED) after {refused} acknowledged, resumed {resumed_in:?} \
         after space was freed; ENOSPC in the engine: {} writes refused, store stopped, \
         {} acknowledged all present after a power cut and restart ({:?})",
        fs.counters().enospc,
        acked.lock().unwrap().len(),
        t0.elapsed()
    );
}

/// An fsync that fails (EIO) drops what it covered, as Linux does; the node
/// acknowledges none of it, does not retry as if it had worked, refuses
/// writes saying why, and after a power cut and restart serves every
/// bulletin it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_never_acknowledged_nor_retried() {
    let mut fs = PowerFs::mount();
    let pki = TestPki::new();
    let (dir, addr) = node_on(&fs, &NodeOptions::new(&pki, pki.node("drc", "hub-1")));
    let ca = vec![pki.ca_cert()];
    let reader = pki.client("drc", "auditor");
    let acked: Acked = Arc::default();
    let mut node = spawn_node(dir.path(), addr);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let files = pki.client(&format!("m{i}.example"), "pub");
        let mut c = member(addr, &files, &ca).await;
        let (acked, stop) = (acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let member_id = format!("m{i}.example");
            let mut refusals = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Err(e) = publish_one(&mut c, &member_id, 512, &acked).await {
                    refusals.push(e.to_string());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            refusals
        }));
    }
    let until = Duration::from_millis(rand::rng().random_range(100..600));
    tokio::time::sleep(until).await;
    fs.fail_fsyncs(true);
    // Every publisher is refused from now on.
    let mut c = member(addr, &pki.client("uk.ncsc", "probe"), &ca).await;
    let refused = wait_until(Duration::from_secs(30), || {
        let (mut c, acked) = (c.clone(), acked.clone());
        async move { publish_one(&mut c, "uk.ncsc", 512, &acked).await.is_err() }
    })
    .await;
    assert!(refused.is_some(), "publishes were still acknowledged");
    let at_failure = acked.lock().unwrap().len();
    fs.fail_fsyncs(false);
    // The disk answers again, but the node does not pretend the lost flush worked.
    let e = publish_one(&mut c, "uk.ncsc", 512, &acked)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(tonic::Code::Unavailable), "{e}");
    // The first fsync to fail stops the store, whichever it was: the log's
    // (on the acknowledgement path), a checkpoint's, or the record of the
    // acknowledged head.
    assert!(
        e.to_string().contains("stopped accepting writes") && e.to_string().contains("failed"),
        "{e}"
    );
    stop.store(true, Ordering::Relaxed);
    let mut refusals = 0;
    for t in tasks {
        refusals += t.await.unwrap().len();
    }
    assert_eq!(
        acked.lock().unwrap().len(),
        at_failure,
        "acknowledged after the failed fsync"
    );
    assert!(
        node.wait_log("refusing further writes", Duration::from_secs(10)),
        "{}",
        node.log()
    );
    node.signal(nix::sys::signal::Signal::SIGKILL);
    node.wait(Duration::from_secs(10));
    let t0 = Instant::now();
    fs.power_cut(Cut::Strict);
    let _node = spawn_node(dir.path(), addr);
    check_everything(addr, &reader, &ca, &acked, 1).await;
    let mut c = member(addr, &pki.client("uk.ncsc", "probe"), &ca).await;
    publish_one(&mut c, "uk.ncsc", 512, &acked)
        .await
        .expect("serves after a restart");
    eprintln!(
        "failed fsync after {until:?}: {at_failure} acknowledged before it, none after; \
         {refusals} publishes refused; {} fsyncs failed; all present after a power cut \
         and restart ({:?})",
        fs.counters().failed_fsyncs,
        t0.elapsed()
    );
}

/// The acknowledged head as last written to `store/acknowledged` (the
/// sequence and its CRC32), if it is there.
fn acknowledged_file(fs: &PowerFs) -> Option<u64> {
    let b = std::fs::read(fs.path().join("node").join("store").join("acknowledged")).ok()?;
    let seq: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(seq))
}

/// The acknowledged-head check refuses a store that lost acknowledged
/// bulletins: here the disk reports the fsyncs of the write-ahead log and
/// of sled's file done and keeps nothing of them. The head is recorded off
/// the acknowledgement path, so what is caught is what was acknowledged
/// before its last record (docs/RELIABILITY.md: 25 ms and one fdatasync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_acknowledged_bulletins_is_refused() {
    let mut fs = PowerFs::mount();
    let pki = TestPki::new();
    let (dir, addr) = node_on(&fs, &NodeOptions::new(&pki, pki.node("drc", "hub-1")));
    let ca = vec![pki.ca_cert()];
    let acked: Acked = Arc::default();
    fs.lie_for(&["db", "seg-"]);
    let mut node = spawn_node(dir.path(), addr);
    let mut c = member(addr, &pki.client("uk.ncsc", "pub"), &ca).await;
    for _ in 0..50 {
        publish_one(&mut c, "uk.ncsc", 1024, &acked)
            .await
            .expect("publish");
    }
    // The record of the last acknowledgement is written: every record
    // before it was fsynced.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged_file(&fs) != Some(50) {
        assert!(
            Instant::now() < deadline,
            "the acknowledged head was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node.signal(nix::sys::signal::Signal::SIGKILL);
    node.wait(Duration::from_secs(10));
    fs.power_cut(Cut::Strict);
    fs.lie_for(&[]);
    assert!(fs.counters().lied_fsyncs > 0);
    let out = std::process::Command::new(beacon_bin())
        .args(["daemon", "--config", "beacon.toml"])
        .current_dir(dir.path())
        .output()
        .expect("run beacon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a store that lost acknowledged bulletins was opened"
    );
    let after = "this node acknowledged up to ";
    let caught: u64 = err
        .find(after)
        .and_then(|i| {
            err[i + after.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("not refused for lost acknowledgements: {err}"));
    assert!((1..=50).contains(&caught), "{err}");
    eprintln!("a disk that lied about 50 acknowledged bulletins: refused, naming {caught} of them");
}

/// One device flush per commit: a publisher in a closed loop (each publish
/// its own group commit) against a node on PowerFs, which counts the
/// fsyncs of every file. The write-ahead log's segments get one per
/// commit; everything else (the acknowledged-head record, checkpoints of
/// sled) is off the acknowledgement path and far rarer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_costs_one_device_flush() {
    let fs = PowerFs::mount();
    let pki = TestPki::new();
    let (dir, addr) = node_on(&fs, &NodeOptions::new(&pki, pki.node("drc", "hub-1")));
    let ca = vec![pki.ca_cert()];
    let acked: Acked = Arc::default();
    let mut node = spawn_node(dir.path(), addr);
    let mut c = member(addr, &pki.client("uk.ncsc", "pub"), &ca).await;
    // Warm up (the connection, the first segment), then count.
    for _ in 0..10 {
        publish_one(&mut c, "uk.ncsc", 1024, &acked)
            .await
            .expect("publish");
    }
    let before = fs.counters();
    const N: u64 = 300;
    for _ in 0..N {
        publish_one(&mut c, "uk.ncsc", 1024, &acked)
            .await
            .expect("publish");
    }
    let after = fs.counters();
    let of = |c: &Counters, wal: bool| -> u64 {
        c.fsyncs_by_name
            .iter()
            .filter(|(n, _)| n.starts_with("seg-") == wal)
            .map(|(_, k)| k)
            .sum()
    };
    let wal = of(&after, true) - of(&before, true);
    let other = of(&after, false) - of(&before, false);
    let dirs = after.dir_fsyncs - before.dir_fsyncs;
    eprintln!(
        "{N} commits: {wal} fdatasyncs of the write-ahead log ({:.2} per commit); \
         off the acknowledgement path: {other} fsyncs of other files, {dirs} of directories",
        wal as f64 / N as f64
    );
    assert_eq!(wal, N, "one fdatasync of the log per commit");
    assert!(
        other + dirs < N / 4,
        "{other} other file and {dirs} directory fsyncs for {N} commits"
    );
    node.signal(nix::sys::signal::Signal::SIGTERM);
    node.wait(Duration::from_secs(20));
}

/// Every file under `dir` with its size, for a failure's report.
fn listing(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let meta = e.metadata().ok();
            if meta.as_ref().is_some_and(|m| m.is_dir()) {
                todo.push(path.clone());
            }
            let size = meta.map(|m| m.len()).unwrap_or(0);
            out.push_str(&format!(
                "  {} {size}\n",
                path.strip_prefix(dir).unwrap_or(&path).display()
            ));
        }
    }
    out
}

/// Runs `beacon ARGS` in `dir` and cuts it off after `after` (if it has not
/// finished by then); returns whether it finished successfully.
async fn run_cut_off(dir: &std::path::Path, args: &[String], after: Duration) -> bool {
    let mut child = std::process::Command::new(beacon_bin())
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn beacon");
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = child.kill();
    child.wait().map(|s| s.success()).unwrap_or(false)
}

/// Power cut while retention prunes, while `beacon admin compact` swaps the
/// store's files, and while `beacon admin restore` builds a store: after
/// each, every bulletin that does not expire is there, byte-identical, only
/// expired ones are missing, and a restore that reported success survived
/// whole; an interrupted one left nothing or a whole store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_compaction_and_restore_survive_power_cuts() {
    let mut fs = PowerFs::mount();
    let pki = TestPki::new();
    let mut opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    opts.extra = "[retention]\nafter_expiry = \"1ms\"\ninterval = \"20ms\"\nbatch = 4\n".into();
    let (dir, addr) = node_on(&fs, &opts);
    let ca = vec![pki.ca_cert()];
    let op = pki.operator("root");
    let files = pki.client("uk.ncsc", "pub");
    let mut published = Published::new();
    let mut rng = rand::rng();
    let cycles = cycles();

    for cycle in 0..cycles {
        let Some(mut node) = restart(dir.path(), addr, published.len() as u64) else {
            return;
        };
        check_lifecycle(addr, &files, &op, &ca, &published).await;
        let c = member(addr, &files, &ca).await;
        let expires = publish_expiring(&c, cycle, 300, &mut published).await;
        let until = expires
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(until + Duration::from_millis(rng.random_range(0..80))).await;
        let at_cut = probe_pruned(&mut c.clone()).await;
        node.signal(nix::sys::signal::Signal::SIGKILL);
        node.wait(Duration::from_secs(10));
        let how = cut_for(&mut rng, cycle);
        fs.power_cut(how);
        eprintln!("pruning, cycle {cycle}: cut ({how:?}) with {at_cut:?} pruned in all");
    }
    // A backup on a sound disk, for the restores below.
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("node.backup");
    {
        let Some(mut node) = restart(dir.path(), addr, published.len() as u64) else {
            return;
        };
        let expiring = published.values().filter(|v| v.2).count() as u64;
        let done = wait_until(Duration::from_secs(60), || async {
            check_lifecycle(addr, &files, &op, &ca, &published).await.1 == expiring
        })
        .await;
        assert!(done.is_some(), "retention finishes after the cuts");
        let mut args = vec!["admin".to_string(), "backup".into(), "--out".into()];
        args.push(backup.display().to_string());
        args.extend(conn_args(addr, &op, &pki.ca_cert()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = beacon(work.path(), &args);
        assert_eq!(code, 0, "{out}{err}");
        // A compaction never runs under a node: the store's lock refuses it.
        let store = fs.path().join("node").join("store").display().to_string();
        let (code, out, err) = beacon(work.path(), &["admin", "compact", "--data-dir", &store]);
        assert_ne!(code, 0, "a compaction ran under a running node: {out}");
        assert!(err.contains("in use by another process"), "{err}");
        node.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(
            node.wait(Duration::from_secs(30)),
            Some(0),
            "{}",
            node.log()
        );
    }

    // Compaction of the stopped node's store, cut off and power cut.
    let store = fs.path().join("node").join("store").display().to_string();
    let compact: Vec<String> = ["admin", "compact", "--data-dir", &store]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for round in 0..cycles.min(3) {
        let after = Duration::from_millis(rng.random_range(0..400));
        let finished = run_cut_off(dir.path(), &compact, after).await;
        // What a finished command made durable must survive the harshest cut.
        let how = if finished {
            Cut::Strict
        } else {
            cut_for(&mut rng, round)
        };
        fs.power_cut(how);
        eprintln!(
            "compaction, round {round}: after the cut:\n{}",
            listing(&fs.path().join("node"))
        );
        let Some(mut node) = restart(dir.path(), addr, published.len() as u64) else {
            return;
        };
        check_lifecycle(addr, &files, &op, &ca, &published).await;
        let left: Vec<String> = [".compacting", "compact.backup", "sled.old", "sled.new"]
            .iter()
            .filter(|n| fs.path().join("node").join("store").join(n).exists())
            .map(|n| n.to_string())
            .collect();
        assert!(
            left.is_empty(),
            "round {round}: a compaction's leftovers remain: {left:?}"
        );
        node.signal(nix::sys::signal::Signal::SIGKILL);
        node.wait(Duration::from_secs(10));
        eprintln!("compaction, round {round}: cut ({how:?}) after {after:?}, finished: {finished}");
    }

    // A restore into the failing disk, cut off and power cut.
    let restored_opts = NodeOptions::new(&pki, pki.node("drc", "hub-2"));
    let (rdir, raddr) = {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = free_addr();
        std::fs::write(
            dir.path().join("beacon.toml"),
            restored_opts.config_text(&fs.path().join("restored").join("store"), &addr.to_string()),
        )
        .expect("write config");
        (dir, addr)
    };
    let target = fs.path().join("restored").join("store");
    let restore: Vec<String> = [
        "admin",
        "restore",
        &backup.display().to_string(),
        "--config",
        "beacon.toml",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut whole = false;
    for round in 0..cycles.min(3) {
        let after = Duration::from_millis(rng.random_range(0..300));
        let finished = run_cut_off(rdir.path(), &restore, after).await;
        let how = if finished {
            Cut::Strict
        } else {
            cut_for(&mut rng, round)
        };
        fs.power_cut(how);
        if finished {
            assert!(
                target.exists(),
                "a restore that reported success is gone after the cut"
            );
        }
        eprintln!("restore, round {round}: cut ({how:?}) after {after:?}, finished: {finished}");
        if target.exists() {
            whole = true;
            break;
        }
    }
    if !whole {
        assert!(
            run_cut_off(rdir.path(), &restore, Duration::from_secs(60)).await,
            "the restore runs"
        );
        fs.power_cut(Cut::Strict);
        assert!(
            target.exists(),
            "a restore that reported success is gone after the cut"
        );
    }
    let expiring = published.values().filter(|v| v.2).count() as u64;
    let mut restored = spawn_node(rdir.path(), raddr);
    assert_eq!(
        check_lifecycle(raddr, &files, &op, &ca, &published).await,
        (published.len() as u64, expiring),
        "the restored store is whole"
    );
    // And once more, a restore run to its end, then the harshest cut.
    restored.signal(nix::sys::signal::Signal::SIGKILL);
    restored.wait(Duration::from_secs(10));
    std::fs::remove_dir_all(&target).expect("remove the restored store");
    sync_dir(target.parent().expect("parent"));
    assert!(
        run_cut_off(rdir.path(), &restore, Duration::from_secs(60)).await,
        "the restore runs"
    );
    fs.power_cut(Cut::Strict);
    let _restored = spawn_node(rdir.path(), raddr);
    assert_eq!(
        check_lifecycle(raddr, &files, &op, &ca, &published).await,
        (published.len() as u64, expiring),
        "a restore that reported success is whole after a power cut"
    );
}

/// The smallest reproduction of what `SledEngine::sync` works around
/// (docs/RELIABILITY.md): sled 0.34.7 on its own, with its names made durable
/// by the caller, inserts 100 keys and `flush()` returns; a power cut then
/// loses them, because on Linux its flush ends in `sync_file_range` and never
/// fsyncs the file. (Its background flusher, off here, would `sync_all`
/// within 500 ms.) The writer is a child process, this test binary running
/// the ignored test below, so that it dies with its files open, as a power
/// cut finds it. Should a later sled make its flush durable, this fails, and
/// the store's extra syncs can be revisited.
#[test]
fn sled_flush_alone_does_not_survive_a_power_cut() {
    assert_eq!(
        sled_keys_after_a_cut(false),
        0,
        "sled's flush alone survived a power cut"
    );
    // The same with the log file fdatasynced after the flush: all kept.
    assert_eq!(
        sled_keys_after_a_cut(true),
        100,
        "fdatasync after the flush"
    );
}

/// Runs the writer (with `fdatasync` of sled's log file after its flush, or
/// not), cuts the power, and counts the keys sled then holds.
fn sled_keys_after_a_cut(fdatasync: bool) -> usize {
    use std::io::BufRead;
    let mut fs = PowerFs::mount();
    let dir = fs.path().join("sled");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "power_loss::sled_writer",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("BEACON_SLED_WRITER_DIR", &dir)
        .env(
            "BEACON_SLED_WRITER_FDATASYNC",
            if fdatasync { "1" } else { "0" },
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the writer");
    let out = child.stdout.take().expect("stdout");
    let flushed = std::io::BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.ends_with("flushed 100"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(flushed, "the writer did not report its flush");
    fs.power_cut(Cut::Strict);
    assert!(dir.join("db").exists(), "the names were made durable");
    let db = sled::open(&dir).expect("sled opens what survived");
    let kept = (0..100)
        .filter(|i| db.get(format!("key-{i}")).ok().flatten().is_some())
        .count();
    drop(db);
    kept
}

#[test]
#[ignore = "the writer of sled_flush_alone_does_not_survive_a_power_cut, run as its child"]
fn sled_writer() {
    let Some(dir) = std::env::var_os("BEACON_SLED_WRITER_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let db = sled::Config::new()
        .path(&dir)
        .flush_every_ms(None)
        .open()
        .expect("open sled");
    // The names, durable: what is lost below is the file's content.
    sync_dir(&dir);
    sync_dir(dir.parent().expect("parent"));
    for i in 0..100 {
        db.insert(format!("key-{i}"), vec![7u8; 100])
            .expect("insert");
    }
    db.flush().expect("flush");
    if std::env::var("BEACON_SLED_WRITER_FDATASYNC").as_deref() == Ok("1") {
        File::open(dir.join("db"))
            .and_then(|f| f.sync_data())
            .expect("fdatasync");
    }
    println!("flushed 100");
    std::thread::sleep(Duration::from_secs(60));
}
