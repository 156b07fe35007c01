//! Durable file-system steps shared by every part of Beacon that writes
//! files: an fsync of a file does not make its name durable; a file created,
//! renamed or removed is on disk only once its directory has been fsynced
//! too (POSIX promises no more, and `tests/it/power_loss.rs` checks Beacon on a
//! filesystem that keeps exactly that).

use std::io;
use std::path::Path;

/// fsyncs the directory `dir` (its entries: files created, renamed, removed).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The directory holding `path` ("." for a bare file name).
pub fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// fsyncs the directory holding `path`, after `path` was created, renamed
/// into place or removed.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    sync_dir(parent_of(path))
}

/// Creates `dir` and any missing parents, fsyncing the parent of each
/// directory it creates, so that the whole path survives a power cut.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
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
    sync_parent(dir)
}

/// Replaces the file at `path` with `bytes` so that a crash leaves the old
/// file or the new one, whole: written aside, fsynced, renamed into place,
/// and the directory fsynced. `private`: readable by the owner only (0600).
pub fn replace_file(path: &Path, bytes: &[u8], private: bool) -> io::Result<()> {
    use std::io::Write;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}
