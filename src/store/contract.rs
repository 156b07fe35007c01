//! What every storage engine must do, as tests any engine runs: atomic
//! writes, ordered scans, tombstones in place of pruned records, the index,
//! successors and expiry entries, cursors in two spaces that move forward on
//! one log and are replaced by a position on another, the tree's nodes, and
//! durability across a reopen. The embedded engine runs them here; a second
//! engine adds itself to `engines()` and must pass the same.

#![cfg(test)]

use std::path::Path;
use std::sync::Arc;

use super::engine::{self, Engine, Pruned, Space, WriteSet};
use super::record::{LogId, Position};
use super::{Spans, StoreOptions};

type Opener = fn(&Path) -> Arc<dyn Engine>;

fn spans() -> Spans {
    Spans { of: |_| 1, max: 1 }
}

fn sled(dir: &Path) -> Arc<dyn Engine> {
    engine::open(dir, &StoreOptions::defaults(spans()))
        .expect("open the engine")
        .0
}

/// PostgreSQL, where the tests have one (`BEACON_TEST_PG_URL`, as
/// `scripts/pg-cluster` starts it): one schema per directory, so a reopen
/// finds what was written.
fn postgres(dir: &Path) -> Arc<dyn Engine> {
    let url = std::env::var("BEACON_TEST_PG_URL").expect("BEACON_TEST_PG_URL");
    engine::open(dir, &pg_options(&url, &test_schema(dir)))
        .expect("open the engine")
        .0
}

/// A schema name of its own for a test's directory.
pub(crate) fn test_schema(dir: &Path) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        dir.as_os_str().as_encoded_bytes(),
    );
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t_{hex}")
}

pub(crate) fn pg_options(url: &str, schema: &str) -> StoreOptions {
    let mut config = crate::base::config::StoreConfig {
        engine: crate::base::config::EngineKind::Postgres,
        ..Default::default()
    };
    config.postgres = Some(
        toml::from_str(&format!(
            "url = {url:?}\nschema = {schema:?}\ntimeout_ms = 5000"
        ))
        .expect("settings"),
    );
    StoreOptions::new(&config, spans())
}

/// Every engine, by name: PostgreSQL where the tests have one, and it
/// must when `BEACON_REQUIRE_PG=1` (CI).
fn engines() -> Vec<(&'static str, Opener)> {
    let mut all = vec![("sled", sled as Opener)];
    match std::env::var("BEACON_TEST_PG_URL") {
        Ok(_) => all.push(("postgres", postgres as Opener)),
        Err(_) if std::env::var("BEACON_REQUIRE_PG").as_deref() == Ok("1") => {
            panic!(
                "BEACON_REQUIRE_PG=1 but BEACON_TEST_PG_URL is not set (scripts/pg-cluster start)"
            )
        }
        Err(_) => eprintln!("no PostgreSQL (BEACON_TEST_PG_URL): the contract runs on sled only"),
    }
    all
}

/// Runs `check` on a fresh engine of every kind.
fn each(check: impl Fn(&str, &Path, Opener)) {
    for (name, open) in engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        check(name, dir.path(), open);
    }
}

fn rec(seq: u64) -> (u64, Vec<u8>) {
    (seq, format!("record {seq}").into_bytes())
}

fn collect(it: engine::RecordIter<'_>) -> Vec<u64> {
    it.map(|r| r.expect("read").0).collect()
}

#[test]
fn a_new_engine_is_empty() {
    each(|name, dir, open| {
        let e = open(dir);
        assert_eq!(e.head().unwrap(), 0, "{name}");
        assert_eq!(e.format().unwrap(), None, "{name}");
        assert!(e.log().unwrap().is_none(), "{name}");
        assert!(e.node().unwrap().is_none(), "{name}");
        assert_eq!(e.last_record().unwrap(), None, "{name}");
        assert!(e.record(1).unwrap().is_none(), "{name}");
        assert!(
            e.cursors(Space::Subscriptions).unwrap().is_empty(),
            "{name}"
        );
        assert!(e.tree_node(0, 0).unwrap().is_none(), "{name}");
    });
}

#[test]
fn a_write_is_whole_and_scans_come_in_order() {
    each(|name, dir, open| {
        let e = open(dir);
        e.write(WriteSet {
            records: (1..=5).map(rec).collect(),
            index: vec![
                ("uk.ncsc".into(), "id-1".into(), b"entry a".to_vec()),
                ("fr.anssi".into(), "id-1".into(), b"entry b".to_vec()),
                ("uk.ncsc".into(), "id-2".into(), b"first".to_vec()),
                // A later entry for one key wins.
                ("uk.ncsc".into(), "id-2".into(), b"second".to_vec()),
            ],
            head: Some(5),
            format: Some(7),
            log: Some(b"log".to_vec()),
            node: Some(b"node".to_vec()),
            tree: vec![(0, 0, [1; 32]), (1, 0, [2; 32])],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(e.head().unwrap(), 5, "{name}");
        assert_eq!(e.format().unwrap(), Some(7), "{name}");
        assert_eq!(e.log().unwrap().as_deref(), Some(&b"log"[..]), "{name}");
        assert_eq!(e.node().unwrap().as_deref(), Some(&b"node"[..]), "{name}");
        assert_eq!(e.last_record().unwrap(), Some(5), "{name}");
        assert_eq!(
            e.record(3).unwrap().as_deref(),
            Some(&b"record 3"[..]),
            "{name}"
        );
        assert_eq!(collect(e.records(2, 4)), vec![2, 3, 4], "{name}");
        assert_eq!(collect(e.records(4, 2)), Vec::<u64>::new(), "{name}");
        assert_eq!(
            e.index("uk.ncsc", "id-2").unwrap().as_deref(),
            Some(&b"second"[..]),
            "{name}"
        );
        let mut by_id = e.index_by_id("id-1", 10).unwrap();
        by_id.sort();
        assert_eq!(
            by_id
                .iter()
                .map(|(p, v)| (p.as_str(), v.as_ref()))
                .collect::<Vec<_>>(),
            vec![("fr.anssi", &b"entry b"[..]), ("uk.ncsc", &b"entry a"[..])],
            "{name}"
        );
        assert_eq!(
            e.index_by_id("id-1", 1).unwrap().len(),
            1,
            "{name}: the limit"
        );
        assert_eq!(e.tree_node(1, 0).unwrap(), Some([2; 32]), "{name}");
        assert_eq!(e.tree_node(1, 1).unwrap(), None, "{name}");
    });
}

#[test]
fn staged_writes_are_there_after_the_sync() {
    each(|name, dir, open| {
        let e = open(dir);
        e.stage(WriteSet {
            records: vec![rec(1), rec(2)],
            head: Some(2),
            ..Default::default()
        })
        .unwrap();
        e.sync().unwrap();
        assert_eq!(e.head().unwrap(), 2, "{name}");
        assert_eq!(collect(e.records(1, 2)), vec![1, 2], "{name}");
    });
}

#[test]
fn a_pruned_record_leaves_its_tombstone_in_its_place() {
    each(|name, dir, open| {
        let e = open(dir);
        e.write(WriteSet {
            records: vec![rec(1), rec(2), rec(3)],
            expiries: vec![(100, 1), (100, 2), (50, 3)],
            successors: vec![(1, b"by 3".to_vec())],
            head: Some(3),
            ..Default::default()
        })
        .unwrap();
        e.write(WriteSet {
            pruned: vec![Pruned {
                seq: 1,
                tombstone: b"tombstone 1".to_vec(),
                expires: Some(100),
            }],
            ..Default::default()
        })
        .unwrap();
        assert!(e.record(1).unwrap().is_none(), "{name}");
        assert_eq!(
            e.tombstone(1).unwrap().as_deref(),
            Some(&b"tombstone 1"[..]),
            "{name}"
        );
        assert_eq!(collect(e.records(1, 3)), vec![2, 3], "{name}");
        assert_eq!(collect(e.tombstones(1, 3)), vec![1], "{name}");
        assert_eq!(e.last_record().unwrap(), Some(3), "{name}");
        // Its expiry entry and successor go with it.
        assert_eq!(
            e.expiring((0, 0), u64::MAX, 10).unwrap(),
            vec![(50, 3), (100, 2)],
            "{name}"
        );
        assert!(e.successors(1, 3).unwrap().is_empty(), "{name}");
    });
}

#[test]
fn successors_and_expiry_entries_come_in_order_and_within_bounds() {
    each(|name, dir, open| {
        let e = open(dir);
        e.write(WriteSet {
            records: (1..=4).map(rec).collect(),
            successors: vec![(3, b"a".to_vec()), (1, b"b".to_vec()), (3, b"c".to_vec())],
            expiries: vec![(30, 1), (10, 4), (20, 2), (20, 3)],
            head: Some(4),
            ..Default::default()
        })
        .unwrap();
        let s: Vec<(u64, Vec<u8>)> = e
            .successors(1, 4)
            .unwrap()
            .into_iter()
            .map(|(q, v)| (q, v.to_vec()))
            .collect();
        assert_eq!(s, vec![(1, b"b".to_vec()), (3, b"c".to_vec())], "{name}");
        assert_eq!(
            e.expiring((0, 0), 20, 10).unwrap(),
            vec![(10, 4), (20, 2), (20, 3)],
            "{name}: until"
        );
        assert_eq!(
            e.expiring((20, 3), u64::MAX, 1).unwrap(),
            vec![(20, 3)],
            "{name}: from and limit"
        );
    });
}

#[test]
fn cursors_move_forward_on_one_log_and_are_replaced_on_another() {
    each(|name, dir, open| {
        let e = open(dir);
        let (a, b) = (LogId([1; 16]), LogId([2; 16]));
        let at = |seq, log| Position {
            seq,
            log: Some(log),
        };
        let s = Space::Subscriptions;
        e.advance_cursor(s, "spiffe://x/client/m/c", "feed", at(10, a))
            .unwrap();
        e.advance_cursor(s, "spiffe://x/client/m/c", "feed", at(5, a))
            .unwrap();
        assert_eq!(
            e.cursor(s, "spiffe://x/client/m/c", "feed").unwrap(),
            Some(at(10, a)),
            "{name}: never back on one log"
        );
        e.advance_cursor(s, "spiffe://x/client/m/c", "feed", at(3, b))
            .unwrap();
        assert_eq!(
            e.cursor(s, "spiffe://x/client/m/c", "feed").unwrap(),
            Some(at(3, b)),
            "{name}: replaced on another log"
        );
        // The two spaces are apart.
        e.advance_cursor(Space::Links, "spiffe://x/node/m/n", "", at(7, a))
            .unwrap();
        assert_eq!(e.cursors(s).unwrap().len(), 1, "{name}");
        assert_eq!(e.cursors(Space::Links).unwrap().len(), 1, "{name}");
        assert_eq!(
            e.cursor(Space::Links, "spiffe://x/client/m/c", "feed")
                .unwrap(),
            None,
            "{name}"
        );
        e.remove_cursor(s, "spiffe://x/client/m/c", "feed").unwrap();
        assert!(e.cursors(s).unwrap().is_empty(), "{name}");
    });
}

#[test]
fn what_was_synced_is_there_after_a_reopen() {
    each(|name, dir, open| {
        {
            let e = open(dir);
            e.write_synced(WriteSet {
                records: vec![rec(1)],
                head: Some(1),
                format: Some(7),
                tree: vec![(0, 0, [9; 32])],
                ..Default::default()
            })
            .unwrap();
            e.advance_cursor(
                Space::Subscriptions,
                "spiffe://x/client/m/c",
                "feed",
                Position { seq: 1, log: None },
            )
            .unwrap();
            e.stage(WriteSet {
                records: vec![rec(2)],
                head: Some(2),
                ..Default::default()
            })
            .unwrap();
            e.sync().unwrap();
        }
        let e = open(dir);
        assert_eq!(e.head().unwrap(), 2, "{name}");
        assert_eq!(collect(e.records(1, 2)), vec![1, 2], "{name}");
        assert_eq!(e.format().unwrap(), Some(7), "{name}");
        assert_eq!(e.tree_node(0, 0).unwrap(), Some([9; 32]), "{name}");
        assert_eq!(
            e.cursor(Space::Subscriptions, "spiffe://x/client/m/c", "feed")
                .unwrap()
                .map(|p| p.seq),
            Some(1),
            "{name}"
        );
    });
}
