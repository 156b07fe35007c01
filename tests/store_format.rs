//! The store's format version, on disk: a store from before formats were
//! recorded (format 1) is upgraded in place at open, and a store of a newer
//! format is refused, by the library and by `beacon daemon`, with one clear
//! line.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use beacon::bulletin::Relation;
use beacon::store::{Replaced, Store, StoreError, StoreOptions, FORMAT};
use common::*;

/// Rewrites a closed store as format 1 wrote it: no format marker, and no
/// record of which bulletin replaced which (`R` keys).
fn downgrade_to_format_1(dir: &Path) {
    let db = sled::open(dir.join("sled")).expect("open sled");
    let log = db.open_tree("log").expect("log tree");
    log.remove(b"V").expect("remove format");
    let mut removed = 0;
    for item in log.scan_prefix(b"R") {
        let (k, _) = item.expect("successor entry");
        log.remove(k).expect("remove");
        removed += 1;
    }
    assert_eq!(removed, 2, "two bulletins were replaced");
    db.flush().expect("flush");
}

fn set_format(dir: &Path, format: u32) {
    let db = sled::open(dir.join("sled")).expect("open sled");
    let log = db.open_tree("log").expect("log tree");
    log.insert(b"V", &format.to_be_bytes()[..])
        .expect("set format");
    db.flush().expect("flush");
}

/// Opens the store (it waits out the file lock of a handle just dropped).
fn open(dir: &Path) -> Result<Store, StoreError> {
    Store::open(dir, StoreOptions::default())
}

#[test]
fn a_format_1_store_is_upgraded_in_place_and_a_newer_one_refused() {
    let pki = TestPki::new();
    let signer = signer(&pki.client("uk.ncsc", "analyst"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");

    let a = bulletin("uk.ncsc", "original");
    let mut b = bulletin("uk.ncsc", "revision");
    b.relation = Some(Relation::Supersedes(a.id.clone()));
    let mut r = bulletin("uk.ncsc", "retraction");
    r.relation = Some(Relation::Retracts(b.id.clone()));
    {
        let store = open(&dir).unwrap();
        for x in [&a, &b, &r] {
            rt.block_on(store.append(store_record(&signer, x))).unwrap();
        }
        assert!(store.successor("uk.ncsc", &a.id).unwrap().is_some());
    }

    // Format 1 on disk: nothing knows its successor.
    downgrade_to_format_1(&dir);
    let store = open(&dir).expect("a format 1 store opens (upgraded)");
    let successor = |id: &str| {
        store
            .successor("uk.ncsc", id)
            .unwrap()
            .map(|s| (s.how, s.seq))
    };
    assert_eq!(successor(&a.id), Some((Replaced::Superseded, 2)));
    assert_eq!(successor(&b.id), Some((Replaced::Retracted, 3)));
    assert_eq!(successor(&r.id), None);
    assert_eq!(store.head(), 3);
    drop(store);

    // The marker was written: a second open does not upgrade again, and the
    // store still reads.
    let store = open(&dir).unwrap();
    assert_eq!(
        store.successor("uk.ncsc", &a.id).unwrap().map(|s| s.seq),
        Some(2)
    );
    drop(store);

    // A newer format is refused, with the numbers.
    set_format(&dir, FORMAT + 1);
    let e = open(&dir).err().expect("refused");
    assert!(matches!(e, StoreError::NewerFormat { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("format {}", FORMAT + 1)) && msg.contains(&format!("up to {FORMAT}")),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_refuses_a_newer_store_with_one_line() {
    let pki = TestPki::new();
    let opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    let (dir, _addr) = child_config(&opts);
    // A store this version made, then marked as a later format.
    drop(open(&dir.path().join("store")).unwrap());
    set_format(&dir.path().join("store"), FORMAT + 7);

    let log = dir.path().join("daemon.log");
    let mut child = Command::new(beacon_bin())
        .args(["daemon", "--config", "beacon.toml"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon did not refuse the store");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("format {}", FORMAT + 7)))
        .collect();
    assert_eq!(lines.len(), 1, "one line names the format: {text}");
    assert!(
        lines[0].contains("newer than this version of Beacon reads"),
        "{text}"
    );
}
