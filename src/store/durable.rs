//! Making the store's files and directory entries durable (on top of
//! `crate::base::disk`): files of the engine, directory listings synced when they
//! change, and the lock that makes one process the owner of a store.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::path::Path;

pub(crate) use crate::base::disk::{create_dir_all, sync_dir};

/// fdatasyncs the file at `path`; one removed meanwhile needs nothing.
pub(crate) fn sync_file(path: &Path) -> io::Result<()> {
    match std::fs::File::open(path) {
        Ok(f) => f.sync_data(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Bytes of the files directly in `dir` (0 if it cannot be read).
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>()
        })
        .unwrap_or(0)
}

/// The names in a directory as last made durable: [`Listing::sync`] fsyncs
/// the directory only when they changed (a readdir is much cheaper than an
/// fsync), and returns the names new since, and all of them.
pub(crate) struct Listing {
    names: BTreeSet<OsString>,
}

impl Listing {
    pub fn new() -> Listing {
        Listing {
            names: BTreeSet::new(),
        }
    }

    pub fn sync(&mut self, dir: &Path) -> io::Result<(Vec<OsString>, BTreeSet<OsString>)> {
        let mut names = BTreeSet::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for e in entries {
                    names.insert(e?.file_name());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if names == self.names {
            return Ok((Vec::new(), names));
        }
        let new: Vec<OsString> = names.difference(&self.names).cloned().collect();
        sync_dir(dir)?;
        self.names.clone_from(&names);
        Ok((new, names))
    }
}

/// The lock that makes one process the owner of a store directory: a node,
/// an offline backup, or a compaction from start to swap. sled locks only its
/// own files, and a compaction renames those, so a node started meanwhile
/// could write into files about to be replaced. Clones share the lock; it
/// is released when the last one is dropped.
#[derive(Clone)]
pub(crate) struct DirLock {
    _file: std::sync::Arc<std::fs::File>,
}

impl DirLock {
    /// Takes the lock of `dir` (creating `dir/lock`), waiting a bounded time
    /// for a holder in this process that is closing (a node restarted in
    /// place); another process holding it is refused with `InUse`.
    pub fn acquire(dir: &Path) -> io::Result<DirLock> {
        create_dir_all(dir)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("lock"))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            // The standard library's advisory lock (flock on Linux).
            match file.try_lock() {
                Ok(()) => {
                    return Ok(DirLock {
                        _file: std::sync::Arc::new(file),
                    })
                }
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "{} is in use by another process (a running node, a backup or a compaction holds its lock): {e}",
                            dir.display()
                        ),
                    ))
                }
            }
        }
    }
}
