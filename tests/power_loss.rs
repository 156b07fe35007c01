//! Power loss and disk faults, on PowerFs (`tests/common/powerfs.rs`): a
//! filesystem that forgets what was not fsynced when the power is cut.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;

use common::powerfs::{Cut, PowerFs};

fn sync_dir(path: &std::path::Path) {
    File::open(path).expect("open dir").sync_all().expect("fsync dir");
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
    let mut f = OpenOptions::new().append(true).open(root.join("d/kept")).unwrap();
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
    // A torn cut keeps some of what was not synced, never more than was written.
    let mut f = OpenOptions::new().append(true).open(root.join("d/kept")).unwrap();
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
    assert!(c.fsyncs >= 3 && c.failed_fsyncs == 1 && c.cuts == 2, "{c:?}");
}
