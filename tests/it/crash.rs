//! Crash durability through the binary: `beacon daemon` as a child process,
//! concurrent publishers, SIGKILL at random moments, restart. Every
//! acknowledged bulletin must be present and byte-identical, and sequences
//! must stay gapless. A durable subscriber streams throughout: after each
//! restart it resumes at or before what it acknowledged, with no gap, and by
//! the end it has seen every sequence.
//!
//! `BEACON_CRASH_CYCLES` sets the number of kill/restart cycles (default 3).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::checks::*;
use crate::common::*;
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_bulletins_survive_sigkill() {
    let cycles: usize = std::env::var("BEACON_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let pki = TestPki::new();
    let (dir, addr) = child_config(&NodeOptions::new(&pki, pki.node("drc", "hub-1")));
    let ca = vec![pki.ca_cert()];
    let clients: Vec<CertFiles> = (0..PUBLISHERS)
        .map(|i| pki.client(&format!("m{i}.example"), "pub"))
        .collect();
    let reader_files = pki.client("drc", "auditor");
    let acked: Acked = Arc::default();
    let reader: Arc<Mutex<Reader>> = Arc::default();
    let mut rng = rand::rng();
    let mut attempts = 0u64;

    for cycle in 0..=cycles {
        let mut node = ChildNode::spawn(dir.path(), &["daemon", "--config", "beacon.toml"], addr);
        let head = check_everything(addr, &reader_files, &ca, &acked, cycle).await;
        if cycle == cycles {
            let (catch_up, stop_within) = (Duration::from_secs(60), Duration::from_secs(20));
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
        // Stream durably while publishing; the stream dies with the node.
        let streaming = tokio::spawn(durable_reader(
            addr,
            reader_files.clone(),
            ca.clone(),
            reader.clone(),
            None,
        ));
        // Publish from every client until the node is killed.
        let publishers = Publishers::start(
            addr,
            &clients,
            &ca,
            &acked,
            "crash test",
            Duration::from_secs(30),
            |_, _, _| false,
        )
        .await;
        let run_for = Duration::from_millis(rng.random_range(100..700));
        tokio::time::sleep(run_for).await;
        node.signal(nix::sys::signal::Signal::SIGKILL);
        node.wait(Duration::from_secs(10));
        attempts += publishers.stop().await;
        streaming
            .await
            .expect("the durable subscriber's checks hold");
        eprintln!(
            "cycle {cycle}: killed after {run_for:?}; {} acknowledged so far, {attempts} attempted",
            acked.lock().unwrap().len()
        );
    }
    assert!(
        !acked.lock().unwrap().is_empty(),
        "nothing was published at all"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn pruning_backup_and_restore_survive_sigkill() {
    let cycles: usize = std::env::var("BEACON_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let pki = TestPki::new();
    let mut opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    opts.extra = "[retention]\nafter_expiry = \"1ms\"\ninterval = \"20ms\"\nbatch = 4\n".into();
    let (dir, addr) = child_config(&opts);
    let ca = vec![pki.ca_cert()];
    let op = pki.operator("root");
    let files = pki.client("uk.ncsc", "pub");
    let mut published = Published::new();
    let mut rng = rand::rng();

    // Kills while retention prunes.
    for cycle in 0..cycles {
        let mut node = ChildNode::spawn(dir.path(), &["daemon", "--config", "beacon.toml"], addr);
        let (_, pruned) = check_lifecycle(addr, &files, &op, &ca, &published).await;
        let expiring = published.values().filter(|v| v.2).count();
        eprintln!(
            "cycle {cycle}: after the restart, {pruned} of {expiring} expired bulletins pruned"
        );
        let c = member(addr, &files, &ca).await;
        let expires = publish_expiring(&c, cycle, 400, &mut published).await;
        // Pruning starts at expiry; kill somewhere in it.
        let until = expires
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        let extra = Duration::from_millis(rng.random_range(0..80));
        tokio::time::sleep(until + extra).await;
        // How far pruning had got, just before the kill (for the report).
        let at_kill = probe_pruned(&mut c.clone()).await;
        node.signal(nix::sys::signal::Signal::SIGKILL);
        node.wait(Duration::from_secs(10));
        eprintln!("cycle {cycle}: killed {extra:?} after expiry, with {at_kill:?} pruned in all");
    }
    let _node = ChildNode::spawn(dir.path(), &["daemon", "--config", "beacon.toml"], addr);
    let (held, _) = check_lifecycle(addr, &files, &op, &ca, &published).await;
    let expiring = published.values().filter(|v| v.2).count() as u64;
    // Steps of 4 rest 19 times as long as they took while readers poll:
    // on PostgreSQL, where a step is a few round trips and a replicated
    // commit, the 1,000 or so expired take longer to go.
    let within = Duration::from_secs(if on_postgres() { 120 } else { 30 });
    let done = wait_until(within, || async {
        check_lifecycle(addr, &files, &op, &ca, &published).await.1 == expiring
    })
    .await;
    assert!(done.is_some(), "retention finishes after the kills");
    let mut c = member(addr, &files, &ca).await;
    let (id, (seq, bytes, _)) = published.iter().find(|(_, v)| v.2).expect("an expired one");
    let env = beacon::domain::bulletin::codec::decode_envelope(bytes).unwrap();
    let again = c.publish_envelope(&env).await.unwrap();
    assert!(again.duplicate && again.sequence == *seq, "{id}: {again:?}");

    // Kills during a backup: no backup file appears unless it is complete.
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("node.backup");
    let backup_args = |out: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "admin".into(),
            "backup".into(),
            "--out".into(),
            out.display().to_string(),
        ];
        v.extend(conn_args(addr, &op, &pki.ca_cert()));
        v
    };
    for _ in 0..cycles {
        let _ = std::fs::remove_file(&out);
        let mut child = std::process::Command::new(beacon_bin())
            .args(backup_args(&out))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        let _ = child.kill();
        let status = child.wait().unwrap();
        if out.exists() && !status.success() {
            // Killed after the rename: it must be whole (it restores).
            let (scratch, config) =
                TestNode::prepare(&NodeOptions::new(&pki, pki.node("drc", "scratch")));
            let (code, text, err) = beacon(
                scratch.path(),
                &[
                    "admin",
                    "restore",
                    &out.display().to_string(),
                    "--config",
                    &config.display().to_string(),
                ],
            );
            assert_eq!(
                code, 0,
                "a backup file from a killed backup does not restore: {text}{err}"
            );
        }
    }
    let _ = std::fs::remove_file(&out);
    let (code, text, err) = beacon(
        work.path(),
        &backup_args(&out)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "{text}{err}");
    assert_eq!(head(addr, &op, &ca).await, held, "a backup changes nothing");

    // Kills during a restore: the target is absent or a whole store.
    let (data, config) = TestNode::prepare(&NodeOptions::new(&pki, pki.node("drc", "hub-2")));
    let target = data.path().join("store");
    let restore = || {
        std::process::Command::new(beacon_bin())
            .args(["admin", "restore"])
            .arg(&out)
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    for _ in 0..cycles {
        let mut child = restore();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        let _ = child.kill();
        let _ = child.wait();
        // A kill can land after the rename that publishes the store and
        // before the process exits: the target is then whole, which the
        // node started on it below shows. What must never appear is a
        // partial target, or a staging directory left in place.
        if target.exists() {
            break;
        }
    }
    if !target.exists() {
        let status = restore().wait().unwrap();
        assert!(status.success());
    }
    let leftovers: Vec<_> = std::fs::read_dir(data.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let restored = TestNode::start_prepared(data, config).await;
    assert_eq!(
        check_lifecycle(restored.addr, &files, &op, &ca, &published).await,
        (held, expiring)
    );
    restored.stop().await;
}
