//! Making the store's files and directory entries durable.
//!
//! An fsync of a file does not make its name durable: a file created or
//! renamed is only on disk once its directory has been fsynced too (POSIX
//! promises no more; `tests/power_loss.rs` checks the store on a filesystem
//! that keeps exactly that). These helpers are the store's only way to create
//! directories and to sync them.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::path::Path;

/// fsyncs the directory `dir` (its entries: files created, renamed, removed).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, fsyncing the parent of each
/// directory it creates, so that the whole path survives a power cut.
pub(crate) fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => sync_dir(Path::new(".")),
    }
}

/// fdatasyncs the file at `path`; one removed meanwhile needs nothing.
pub(crate) fn sync_file(path: &Path) -> io::Result<()> {
    match std::fs::File::open(path) {
        Ok(f) => f.sync_data(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
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
