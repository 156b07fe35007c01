//! The store's format version, on disk: a store from before formats were
//! recorded (format 1), or from before records carried their expiry
//! (format 2), is upgraded in place at open, and a store of a newer format
//! is refused, by the library and by `beacon daemon`, with one clear line.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;
use beacon::domain::bulletin::Relation;
use beacon::store::{Replaced, Store, StoreError, StoreOptions, FORMAT};

/// The sled files of the store in `dir`, as its engine made them (sled
/// refuses another buffer size than the one its files were made with),
/// with its records put back inline as stores before format 8 kept them
/// (from format 8, sled holds a pointer to each record's bytes in
/// `sled/values/`: tag 0xF0, file, offset, length, CRC32).
fn open_sled(dir: &Path) -> sled::Db {
    let db = sled::Config::new()
        .path(dir.join("sled"))
        .segment_size(16 << 20)
        .open()
        .expect("open sled");
    let log = db.open_tree("log").expect("log tree");
    let values = dir.join("sled").join("values");
    for item in log.scan_prefix(b"L") {
        let (k, v) = item.expect("record");
        if v.len() != 17 || v[0] != 0xF0 {
            continue;
        }
        let file = u32::from_be_bytes(v[1..5].try_into().unwrap());
        let at = u32::from_be_bytes(v[5..9].try_into().unwrap()) as usize;
        let len = u32::from_be_bytes(v[9..13].try_into().unwrap()) as usize;
        let bytes = std::fs::read(values.join(format!("val-{file:016x}"))).expect("value file");
        log.insert(k, &bytes[at..at + len]).expect("inline");
    }
    db.flush().expect("flush");
    db
}

/// Takes away the store's write-ahead log, as a store from before format 6
/// (which had none) would be: everything is in sled after a clean close.
fn without_log(dir: &Path) {
    std::fs::remove_dir_all(dir.join("sled").join("wal")).expect("remove the write-ahead log");
}

/// Rewrites a closed store as format 1 wrote it: no format marker, and no
/// record of which bulletin replaced which (`R` keys).
fn downgrade_to_format_1(dir: &Path) {
    without_log(dir);
    let db = open_sled(dir);
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

/// Rewrites a closed store as format 2 wrote it: records of version 2 (no
/// `expires_at`: 8 bytes fewer after `created_at`, CRC32 trailer
/// recomputed) and no expiry entries (`X` keys).
fn downgrade_to_format_2(dir: &Path) {
    without_log(dir);
    let db = open_sled(dir);
    let log = db.open_tree("log").expect("log tree");
    for item in log.scan_prefix(b"L") {
        let (k, v) = item.expect("record");
        assert_eq!(v[0], 3, "a record of version 3");
        // version:1 seq:8 accepted:8 origin_seq:8 created:8 | expires:8 | …
        let mut old = Vec::with_capacity(v.len() - 8);
        old.push(2);
        old.extend_from_slice(&v[1..33]);
        old.extend_from_slice(&v[41..v.len() - 4]);
        let sum = crc32fast::hash(&old);
        old.extend_from_slice(&sum.to_be_bytes());
        log.insert(k, old).expect("rewrite");
    }
    let mut removed = 0;
    for item in log.scan_prefix(b"X") {
        let (k, _) = item.expect("expiry entry");
        log.remove(k).expect("remove");
        removed += 1;
    }
    assert_eq!(removed, 1, "one bulletin expires");
    log.insert(b"V", &2u32.to_be_bytes()[..])
        .expect("set format");
    // Read as format 2 wrote it: a version 2 record, no expiry known.
    let raw = log.get(b"L\0\0\0\0\0\0\0\x01").unwrap().expect("record 1");
    let rec =
        beacon::store::Record::decode(1, raw.to_vec().into()).expect("a version 2 record reads");
    assert_eq!(rec.meta.expires_at, None);
    db.flush().expect("flush");
}

fn set_format(dir: &Path, format: u32) {
    let db = open_sled(dir);
    let log = db.open_tree("log").expect("log tree");
    log.insert(b"V", &format.to_be_bytes()[..])
        .expect("set format");
    db.flush().expect("flush");
}

/// Writes `bulletins`, signed by `signer`, into a new store in `dir`, and
/// closes it.
fn store_bulletins(
    dir: &Path,
    signer: &beacon::domain::bulletin::Signer,
    bulletins: &[&beacon::domain::bulletin::Bulletin],
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = open(dir).unwrap();
    for b in bulletins {
        rt.block_on(store.append(store_record(signer, b))).unwrap();
    }
}

/// Opens the store (it waits out the file lock of a handle just dropped).
fn open(dir: &Path) -> Result<Store, StoreError> {
    Store::open(dir, StoreOptions::defaults(beacon::interop::stix::SPANS))
}

#[test]
fn a_format_1_store_is_upgraded_in_place_and_a_newer_one_refused() {
    let pki = TestPki::new();
    let signer = signer(&pki.client("uk.ncsc", "analyst"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");

    let a = bulletin("uk.ncsc", "original");
    let mut b = bulletin("uk.ncsc", "revision");
    b.relation = Some(Relation::Supersedes(a.id.clone()));
    let mut r = bulletin("uk.ncsc", "retraction");
    r.relation = Some(Relation::Retracts(b.id.clone()));
    store_bulletins(&dir, &signer, &[&a, &b, &r]);

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

#[test]
fn a_format_2_store_learns_its_expiry_times() {
    let pki = TestPki::new();
    let signer = signer(&pki.client("uk.ncsc", "analyst"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let expires = SystemTime::now() + Duration::from_secs(3600);
    let mut a = bulletin("uk.ncsc", "expires");
    a.expires_at = Some(expires);
    let b = bulletin("uk.ncsc", "does not");
    store_bulletins(&dir, &signer, &[&a, &b]);
    downgrade_to_format_2(&dir);
    let store = open(&dir).expect("a format 2 store opens (upgraded)");
    let at = |seq| store.get(seq).unwrap().unwrap().meta.expires_at;
    let nanos = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
    assert_eq!(at(1).map(nanos), Some(nanos(expires)));
    assert_eq!(at(2), None);
    let due = store
        .expiring((0, 0), expires + Duration::from_secs(1), 10)
        .unwrap();
    assert_eq!(
        due.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        vec![1],
        "its expiry entry"
    );
}

#[test]
fn a_format_3_store_gets_its_acceptance_times_spaced() {
    let pki = TestPki::new();
    let signer = signer(&pki.client("uk.ncsc", "analyst"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let mut with_indicators = bulletin("uk.ncsc", "two indicators");
    for d in ["a.example", "b.example"] {
        with_indicators
            .indicators
            .push(beacon::domain::bulletin::Indicator {
                kind: "domain".into(),
                value: d.into(),
                ..Default::default()
            });
    }
    let bulletins = [
        with_indicators,
        bulletin("uk.ncsc", "second"),
        bulletin("uk.ncsc", "third"),
    ];
    store_bulletins(&dir, &signer, &bulletins.iter().collect::<Vec<_>>());
    // As format 3 wrote a group commit: every record at the first's time.
    {
        let db = open_sled(&dir);
        let log = db.open_tree("log").unwrap();
        let key = |seq: u64| {
            let mut k = vec![b'L'];
            k.extend_from_slice(&seq.to_be_bytes());
            k
        };
        let first =
            beacon::store::Record::decode(1, log.get(key(1)).unwrap().unwrap().to_vec().into())
                .unwrap();
        for seq in 2..=3 {
            let mut rec = beacon::store::Record::decode(
                seq,
                log.get(key(seq)).unwrap().unwrap().to_vec().into(),
            )
            .unwrap();
            rec.accepted_at = first.accepted_at;
            log.insert(key(seq), rec.encode()).unwrap();
        }
        log.insert(b"V", &3u32.to_be_bytes()[..]).unwrap();
        db.flush().unwrap();
    }
    let store = open(&dir).expect("a format 3 store opens (upgraded)");
    let at = |seq| store.get(seq).unwrap().unwrap().accepted_at;
    let gap = |a: u64, b: u64| at(b).duration_since(at(a)).unwrap().as_micros();
    // 3 fixed objects and 2 indicators after the first; 3 after the second.
    assert!(gap(1, 2) >= 5, "{}", gap(1, 2));
    assert!(gap(2, 3) >= 3, "{}", gap(2, 3));
    drop(store);
    // The marker was moved on: the next open does not upgrade again.
    let db = open_sled(&dir);
    let v = db.open_tree("log").unwrap().get(b"V").unwrap().unwrap();
    assert_eq!(u32::from_be_bytes(v.as_ref().try_into().unwrap()), FORMAT);
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

/// Rewrites a closed store as format 4 wrote it: no log identity (`G`) and
/// cursors of a bare sequence (8 bytes).
fn downgrade_to_format_4(dir: &Path) {
    let db = open_sled(dir);
    let log = db.open_tree("log").expect("log tree");
    assert!(
        log.remove(b"G").expect("remove").is_some(),
        "a log identity"
    );
    let cursors = db.open_tree("cursors").expect("cursors tree");
    for item in cursors.iter() {
        let (k, v) = item.expect("cursor");
        assert_eq!(v.len(), 24, "a cursor names its log");
        cursors.insert(k, &v[..8]).expect("rewrite");
    }
    log.insert(b"V", &4u32.to_be_bytes()[..])
        .expect("set format");
    db.flush().expect("flush");
}

#[test]
fn a_format_4_store_gets_a_log_identity_kept_by_compaction_and_new_after_a_restore() {
    let pki = TestPki::new();
    let signer = signer(&pki.client("uk.ncsc", "analyst"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (a, b) = (bulletin("uk.ncsc", "one"), bulletin("uk.ncsc", "two"));
    store_bulletins(&dir, &signer, &[&a, &b]);
    let store = open(&dir).unwrap();
    let made = store.log();
    assert_eq!(made.forked_from, None, "a new store is a new log");
    store
        .set_cursor("spiffe://x/client/uk.ncsc/soc", "feed", 1)
        .unwrap();
    store.flush().unwrap();
    drop(store);

    // Format 4 on disk: the upgrade names the log and marks the cursor.
    downgrade_to_format_4(&dir);
    let store = open(&dir).expect("a format 4 store opens (upgraded)");
    let log = store.log();
    assert_ne!(log.id, made.id, "the upgrade made an identity");
    let cursors = store.cursors().unwrap();
    assert_eq!(cursors.len(), 1);
    assert_eq!(cursors[0].2.seq, 1);
    assert_eq!(cursors[0].2.log, Some(log.id), "the cursor is of this log");
    drop(store);
    assert_eq!(open(&dir).unwrap().log(), log, "kept across opens");

    // A compaction rewrites the files, not the log: the same identity.
    beacon::store::backup::compact(&dir, &StoreOptions::defaults(beacon::interop::stix::SPANS))
        .expect("compacted");
    let store = open(&dir).unwrap();
    assert_eq!(store.log(), log, "kept by compaction");
    assert_eq!(store.cursors().unwrap()[0].2.log, Some(log.id));

    // A restore is a new log continuing this one up to the backup's head;
    // the cursor, which holds on it, is carried over to the new log.
    let mut file = Vec::new();
    store.backup(&mut file, |_, _| {}).expect("backup");
    drop(store);
    let restored = tmp.path().join("restored");
    let chains = pki_bundle(&pki);
    let verify = beacon::broker::ingest::stored_check(&chains);
    beacon::store::backup::restore(
        &file[..],
        &restored,
        &StoreOptions::defaults(beacon::interop::stix::SPANS),
        &verify,
        &|_| Ok(()),
        |_, _| {},
    )
    .expect("restored");
    let store = open(&restored).unwrap();
    let new = store.log();
    assert_ne!(
        new.id, log.id,
        "a restored log is not the log its readers read"
    );
    assert_eq!(
        new.forked_from,
        Some(beacon::store::Fork {
            log: log.id,
            size: 2
        })
    );
    assert_eq!(store.cursors().unwrap()[0].2.log, Some(new.id));
    assert_eq!(store.cursors().unwrap()[0].2.seq, 1);
}

/// The test PKI's CA as a trust bundle (for a restore's checks).
fn pki_bundle(pki: &TestPki) -> beacon::trust::TrustBundle {
    let cas = beacon::trust::read_certs(&pki.ca_cert())
        .expect("CA")
        .into_iter()
        .map(|c| {
            beacon::trust::CaEntry::new(
                c,
                beacon::base::identity::MemberScope::parse_list(&["*"]).expect("scope"),
            )
            .expect("CA entry")
        })
        .collect();
    beacon::trust::TrustBundle::new(td(), cas, vec![]).expect("bundle")
}

/// A durable cursor that names another log (the store under it is not the
/// log it was taken on) is not applied: the subscriber starts from the
/// earliest, and `Subscribed.restarted` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_cursor_of_another_log_is_not_applied() {
    let pki = TestPki::new();
    let opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    let node = TestNode::start(&opts).await;
    let ca = vec![pki.ca_cert()];
    let reader_files = pki.client("fr.anssi", "reader");
    let mut publisher = member(node.addr, &pki.client("uk.ncsc", "pub"), &ca).await;
    for i in 0..5 {
        publisher
            .publish(&bulletin("uk.ncsc", &format!("b{i}")))
            .await
            .unwrap();
    }
    let mut reader = member(node.addr, &reader_files, &ca).await;
    let mut sub = reader
        .subscribe(crate::common::open("feed", resume()))
        .await
        .unwrap();
    read_deliveries(&mut sub, 5, true, Duration::from_secs(20)).await;
    sub.ack(4).await.unwrap();
    wait_cursor(
        node.addr,
        &pki.operator("op"),
        &ca,
        &reader_files.identity,
        "feed",
        4,
    )
    .await;
    drop(sub);

    // Stopped, its cursor is made to name another log.
    let other = [7u8; 16];
    let node = node
        .restart_after(|store| {
            let db = open_sled(store);
            let cursors = db.open_tree("cursors").expect("cursors");
            let key = format!("{}\0feed", reader_files.identity);
            let v = cursors.get(key.as_bytes()).unwrap().expect("the cursor");
            assert_eq!(v.len(), 24, "a cursor names its log");
            let mut changed = v[..8].to_vec();
            changed.extend_from_slice(&other);
            cursors.insert(key.as_bytes(), changed).unwrap();
            db.flush().unwrap();
        })
        .await;
    let mut reader = member(node.addr, &reader_files, &ca).await;
    let mut sub = reader
        .subscribe(crate::common::open("feed", resume()))
        .await
        .unwrap();
    let seen = read_deliveries(&mut sub, 5, true, Duration::from_secs(20)).await;
    let s = seen.subscribed.expect("subscribed");
    assert_eq!(s.cursor, 0, "{s:?}");
    assert!(
        s.restarted.contains(&"07".repeat(16)) && s.restarted.contains("from the start"),
        "{}",
        s.restarted
    );
    assert_eq!(seen.seqs, vec![1, 2, 3, 4, 5]);
    // Once acknowledged on this log, the cursor is of it again.
    sub.ack(5).await.unwrap();
    wait_cursor(
        node.addr,
        &pki.operator("op"),
        &ca,
        &reader_files.identity,
        "feed",
        5,
    )
    .await;
    drop(sub);
    let mut sub = reader
        .subscribe(crate::common::open("feed", resume()))
        .await
        .unwrap();
    let s = read_deliveries(&mut sub, 0, true, Duration::from_secs(20))
        .await
        .subscribed
        .expect("subscribed");
    assert_eq!((s.cursor, s.restarted.as_str()), (5, ""));
    node.stop().await;
}
