//! Damaged stores, through the binary: bytes flipped and files truncated in a
//! stopped node's store. The node either refuses to start and says why, or
//! serves every acknowledged bulletin exactly as acknowledged; a bulletin
//! whose bytes in a value file are damaged is refused by name (DATA_LOSS)
//! when read, and every other one is served intact. It never serves
//! altered data, and never quietly holds less than it acknowledged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const BULLETINS: usize = 30;

/// What the node serves: sequence → envelope digest, or the error.
async fn served(
    addr: std::net::SocketAddr,
    files: &CertFiles,
    ca: &[PathBuf],
) -> Result<BTreeMap<u64, Vec<u8>>, String> {
    let deliveries = list_all(addr, files, ca).await?;
    Ok(deliveries
        .into_iter()
        .map(|d| (d.sequence, d.envelope_digest))
        .collect())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let p = e.path();
        let target = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).expect("copy");
        }
    }
}

/// Starts `beacon daemon` on `dir`; `Ok(node)` once it answers gRPC health
/// as `files` (the port accepts TCP before the store is open), or
/// `Err(stderr)` if it exits first.
async fn start(
    dir: &Path,
    addr: std::net::SocketAddr,
    files: &CertFiles,
    ca: &[PathBuf],
) -> Result<ChildNode, String> {
    let log = dir.join(format!("run-{}.log", rand_suffix()));
    let child = Command::new(beacon_bin())
        .args(["daemon", "--config", "beacon.toml"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let mut node = ChildNode {
        child,
        addr,
        stderr_path: log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = node.child.try_wait().expect("wait") {
            assert_eq!(
                status.code(),
                Some(1),
                "a refused store exits 1: {}",
                node.log()
            );
            return Err(node.log());
        }
        if health(addr, files, ca).await.is_ok() {
            return Ok(node);
        }
        assert!(
            Instant::now() < deadline,
            "neither started nor exited: {}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn stop(mut node: ChildNode) {
    node.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(node.wait(Duration::from_secs(20)), Some(0));
}

/// A stopped node's store, copied aside whole (`pristine`), and one of its
/// files to damage.
struct Damage<'a> {
    dir: &'a Path,
    addr: std::net::SocketAddr,
    files: &'a CertFiles,
    ca: &'a [PathBuf],
    pristine: &'a Path,
    file: &'a Path,
    acknowledged: &'a BTreeMap<u64, Vec<u8>>,
}

impl Damage<'_> {
    /// Starts the node on the pristine store with `file` replaced by each
    /// damaged copy: it must either refuse the store, saying why (`cannot
    /// open the store` and `refusal`), or serve exactly what it
    /// acknowledged. Returns how many were refused.
    async fn try_each(&self, cases: &[(String, Vec<u8>)], refusal: &str) -> usize {
        let store = self.dir.join("store");
        let mut refused = 0;
        for (what, damaged) in cases {
            std::fs::remove_dir_all(&store).expect("clear");
            copy_dir(self.pristine, &store);
            std::fs::write(self.file, damaged).expect("damage");
            match start(self.dir, self.addr, self.files, self.ca).await {
                Err(log) => {
                    assert!(
                        log.contains("cannot open the store") && log.contains(refusal),
                        "{what}: {log}"
                    );
                    refused += 1;
                }
                Ok(node) => {
                    // Started: then it must serve exactly what it acknowledged.
                    let now = served(self.addr, self.files, self.ca).await;
                    assert_eq!(
                        now.as_ref().ok(),
                        Some(self.acknowledged),
                        "{what}: the node started but does not serve what it acknowledged: {now:?}"
                    );
                    stop(node);
                }
            }
        }
        refused
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_or_served_intact_never_altered() {
    let pki = TestPki::new();
    let opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    let (dir, addr) = child_config(&opts);
    let ca = vec![pki.ca_cert()];
    let files = pki.client("fr.anssi", "analyst");

    let node = start(dir.path(), addr, &files, &ca)
        .await
        .expect("a fresh node starts");
    let mut c = member(addr, &files, &ca).await;
    for i in 0..BULLETINS {
        c.publish(&bulletin(
            "fr.anssi",
            &format!("stored bulletin {i:02} marker"),
        ))
        .await
        .expect("publish");
    }
    let acknowledged = served(addr, &files, &ca).await.expect("list");
    assert_eq!(acknowledged.len(), BULLETINS);
    drop(c);
    stop(node);

    let store = dir.path().join("store");
    let pristine = dir.path().join("pristine");
    copy_dir(&store, &pristine);
    let db = store.join("sled").join("db");
    let size = std::fs::metadata(&db).expect("db").len() as usize;
    let original = std::fs::read(&db).expect("read db");

    // (what was done, the damaged db file: sled's, the index and the
    // records' pointers)
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for k in 1..=8 {
        let at = size * k / 9;
        let mut d = original.clone();
        d[at] ^= 0xff;
        cases.push((format!("a byte flipped at {at} of {size}"), d));
    }
    for (num, den) in [(1, 2), (9, 10), (1, 10)] {
        let len = size * num / den;
        cases.push((
            format!("truncated to {len} of {size} bytes"),
            original[..len].to_vec(),
        ));
    }

    let damage = Damage {
        dir: dir.path(),
        addr,
        files: &files,
        ca: &ca,
        pristine: &pristine,
        file: &db,
        acknowledged: &acknowledged,
    };
    let refused = damage.try_each(&cases, "cannot open the store").await;
    eprintln!(
        "{refused} of {} damaged stores refused; the rest served intact",
        cases.len()
    );
    // The truncations are all caught.
    assert!(
        refused >= 3,
        "only {refused} of {} damaged stores refused",
        cases.len()
    );

    // A truncation is named with the numbers.
    std::fs::remove_dir_all(&store).expect("clear");
    copy_dir(&pristine, &store);
    std::fs::write(&db, &original[..size / 2]).expect("truncate");
    let log = start(dir.path(), addr, &files, &ca)
        .await
        .err()
        .expect("refused");
    assert!(
        log.contains(&format!("acknowledged up to {BULLETINS}")),
        "{log}"
    );

    // The records' bytes, in the value file: a bulletin whose bytes are
    // damaged is refused by name when read, and only it; a value file cut
    // short refuses the bulletins it lost, and serves the others.
    let values = store.join("sled").join("values");
    let value_file = std::fs::read_dir(pristine.join("sled").join("values"))
        .expect("the value files")
        .flatten()
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .expect("a value file")
        .file_name();
    let original = std::fs::read(values.join(&value_file)).expect("read the value file");
    let marker = |n: usize| {
        let needle = format!("stored bulletin {n:02} marker");
        original
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .expect("the title is in the value file")
    };
    let mut cases: Vec<(String, Vec<u8>, Vec<u64>)> = Vec::new();
    for n in [3, 15, 28] {
        let mut d = original.clone();
        d[marker(n)] ^= 0x01;
        // Published one after another on a new node: bulletin n is n + 1.
        cases.push((
            format!("a bit flipped in bulletin {n}'s title"),
            d,
            vec![n as u64 + 1],
        ));
    }
    // A hole (a write lost): from bulletin 10's title to bulletin 12's.
    let mut d = original.clone();
    d[marker(10)..marker(12)].fill(0);
    cases.push(("bulletins 10 to 12 zeroed".into(), d, vec![11, 12, 13]));
    let cut = marker(20);
    cases.push((
        format!("the value file cut at {cut} of {}", original.len()),
        original[..cut].to_vec(),
        (21..=BULLETINS as u64).collect(),
    ));
    for (what, damaged, lost) in cases {
        std::fs::remove_dir_all(&store).expect("clear");
        copy_dir(&pristine, &store);
        std::fs::write(values.join(&value_file), damaged).expect("damage");
        let node = match start(dir.path(), addr, &files, &ca).await {
            Ok(node) => node,
            // The log's last record is read at open (its tip): a cut that
            // took it refuses the store, naming it.
            Err(log) if lost.contains(&(BULLETINS as u64)) => {
                assert!(
                    log.contains("cannot open the store")
                        && log.contains(&format!("record {BULLETINS} is corrupted")),
                    "{what}: {log}"
                );
                continue;
            }
            Err(log) => panic!("{what}: the node starts: {log}"),
        };
        for (&seq, digest) in &acknowledged {
            let got = one(addr, &files, &ca, seq).await;
            match lost.contains(&seq) {
                true => {
                    let e = got.expect_err(&format!("{what}: {seq} refused"));
                    assert!(
                        e.contains(&format!("record {seq} is corrupted"))
                            && e.contains("value file"),
                        "{what}: {e}"
                    );
                }
                false => assert_eq!(got.as_ref(), Ok(digest), "{what}: bulletin {seq}"),
            }
        }
        stop(node);
    }

    // The pristine store still serves everything, byte for byte.
    std::fs::remove_dir_all(&store).expect("clear");
    copy_dir(&pristine, &store);
    let node = start(dir.path(), addr, &files, &ca)
        .await
        .expect("the pristine store starts");
    assert_eq!(served(addr, &files, &ca).await.expect("list"), acknowledged);
    stop(node);
}

/// Bulletin `seq` as the node serves it (its envelope digest), or the error.
async fn one(
    addr: std::net::SocketAddr,
    files: &CertFiles,
    ca: &[PathBuf],
    seq: u64,
) -> Result<Vec<u8>, String> {
    let ch = dial(addr, files, ca).await.map_err(|e| e.to_string())?;
    let page = beacon::net::client::BulletinsClient::new(ch)
        .list(beacon::base::proto::v1::ListRequest {
            after_sequence: seq - 1,
            until_sequence: seq,
            limit: 1,
            filter: None,
            current_only: false,
            include_expired: true,
        })
        .await
        .map_err(|e| format!("{:?}: {}", e.code(), e.message()))?
        .into_inner();
    match page.deliveries.as_slice() {
        [d] if d.sequence == seq => Ok(d.envelope_digest.clone()),
        other => Err(format!("not served: {other:?}")),
    }
}

/// The acknowledged head as recorded in `store/acknowledged`.
fn recorded_head(store: &Path) -> Option<u64> {
    let b = std::fs::read(store.join("acknowledged")).ok()?;
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// Damage to the write-ahead log of a node killed while its last
/// publishes were still only there (no checkpoint of sled after them): a
/// frame within what was acknowledged that fails its CRC, or a log cut in
/// the middle, ends the log there, and the acknowledged-head check refuses
/// the store; the node never serves a shortened or altered log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_write_ahead_log_is_refused_or_served_intact() {
    let pki = TestPki::new();
    let opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    let (dir, addr) = child_config(&opts);
    let ca = vec![pki.ca_cert()];
    let files = pki.client("fr.anssi", "analyst");
    let store = dir.path().join("store");
    let node = start(dir.path(), addr, &files, &ca)
        .await
        .expect("a fresh node starts");
    let mut c = member(addr, &files, &ca).await;
    for i in 0..BULLETINS {
        c.publish(&bulletin(
            "fr.anssi",
            &format!("logged bulletin {i:02} marker"),
        ))
        .await
        .expect("publish");
    }
    let acknowledged = served(addr, &files, &ca).await.expect("list");
    // The head record is written off the acknowledgement path: wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while recorded_head(&store) != Some(BULLETINS as u64) {
        assert!(
            Instant::now() < deadline,
            "the acknowledged head was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(c);
    let mut node = node;
    node.signal(nix::sys::signal::Signal::SIGKILL);
    node.wait(Duration::from_secs(10));

    let pristine = dir.path().join("pristine-log");
    copy_dir(&store, &pristine);
    let wal = store.join("sled").join("wal");
    let segment = std::fs::read_dir(&wal)
        .expect("the log")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seg-"))
        })
        .max()
        .expect("a segment");
    let original = std::fs::read(&segment).expect("read segment");
    let at = |n: usize| {
        let needle = format!("logged bulletin {n:02} marker");
        original
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
    };
    // (what was done, the damaged segment)
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for n in [2, 14, 27] {
        if let Some(i) = at(n) {
            let mut d = original.clone();
            d[i] ^= 0x01;
            cases.push((format!("a bit flipped in bulletin {n}'s frame"), d));
        }
    }
    if let (Some(first), Some(last)) = (at(0), at(BULLETINS - 1)) {
        let mut d = original.clone();
        let mid = (first + last) / 2;
        d[mid..].iter_mut().for_each(|b| *b = 0);
        cases.push(("the log zeroed from its middle on".into(), d));
        cases.push((
            "the segment truncated in its middle".into(),
            original[..mid].to_vec(),
        ));
    }
    let damage = Damage {
        dir: dir.path(),
        addr,
        files: &files,
        ca: &ca,
        pristine: &pristine,
        file: &segment,
        acknowledged: &acknowledged,
    };
    let refused = damage
        .try_each(&cases, &format!("acknowledged up to {BULLETINS}"))
        .await;
    eprintln!(
        "{refused} of {} damaged logs refused (the rest were behind a checkpoint, so never read again); the rest served intact",
        cases.len()
    );
    // The undamaged log repairs the store and serves everything.
    std::fs::remove_dir_all(&store).expect("clear");
    copy_dir(&pristine, &store);
    let node = start(dir.path(), addr, &files, &ca)
        .await
        .expect("the undamaged log starts");
    assert_eq!(served(addr, &files, &ca).await.expect("list"), acknowledged);
    stop(node);
}
