//! PowerFs: a FUSE filesystem for power-loss and disk-fault tests.
//!
//! A SIGKILL leaves the kernel's page cache intact, so a kill test cannot
//! catch a missing fsync. PowerFs keeps, for every file, what a process sees
//! and what the "disk" holds, and only an `fsync` (or `fdatasync`) of the file
//! moves its written pages to the disk. Directory changes (files created,
//! renamed, removed) go to a journal in the order they were made; an `fsync`
//! of a directory commits the changes that touch it, and with a rename the
//! earlier changes of the other directory too, so that a rename is durable on
//! both sides or on neither (a directory never has two parents, as on any
//! real filesystem). [`PowerFs::power_cut`] then throws away everything not durable,
//! the way a power cut loses the page cache, and mounts what survived.
//!
//! It is written here rather than taken from elsewhere because the point is
//! the model of durability (POSIX's, with no ext4 courtesy such as a new
//! file's entry riding along with the file's own fsync), and the faults:
//! - `Cut::Strict` loses every page and every directory change not fsynced;
//! - `Cut::Torn` keeps a random subset of the unsynced pages, each possibly
//!   torn at 512-byte sectors, a random choice of the old or new length, and
//!   a random prefix of the directory journal: writes reaching the disk out of
//!   order;
//! - a capacity (`ENOSPC` once full), failing fsyncs (`EIO`, and the pages
//!   they covered are dropped, as Linux does: a later fsync succeeds without
//!   them), and a lying disk (fsync of a named file reports success and keeps
//!   nothing) to check that a loss is detected.
//!
//! The data lives in memory; the mount point is a temporary directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

const PAGE: usize = 4096;
const SECTOR: usize = 512;
const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = 1;
/// What `statfs` reports as the size when no capacity is set.
const UNLIMITED: u64 = 1 << 40;

/// How a power cut treats what was written but not made durable.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// Everything not fsynced is lost.
    Strict,
    /// A random part of it reached the disk, pages torn at sectors.
    Torn { seed: u64 },
}

/// What the filesystem has seen (for the test's report).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub fsyncs: u64,
    /// File fsyncs (and fdatasyncs) by the file's name.
    pub fsyncs_by_name: std::collections::BTreeMap<String, u64>,
    pub dir_fsyncs: u64,
    pub failed_fsyncs: u64,
    pub lied_fsyncs: u64,
    pub enospc: u64,
    pub cuts: u64,
    /// Bytes of written pages that were not durable at the cuts.
    pub pages_lost: u64,
}

struct FileBody {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Pages written (or truncated) since the last fsync.
    dirty: BTreeSet<usize>,
}

struct DirBody {
    entries: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
}

enum Body {
    File(FileBody),
    Dir(DirBody),
}

struct Inode {
    body: Body,
    perm: u16,
    mtime: SystemTime,
    /// The name it was last given (for the lying-disk rule).
    name: OsString,
}

#[derive(Default)]
struct Faults {
    capacity: Option<u64>,
    /// `statfs` reports no limit (free space misreported).
    hide_capacity: bool,
    fail_fsync: bool,
    /// Files whose names start with one of these lie about their fsyncs.
    lie_for: Vec<String>,
}

/// One directory change not yet durable.
#[derive(Clone)]
enum DirOp {
    Link {
        dir: u64,
        name: OsString,
        ino: u64,
    },
    Unlink {
        dir: u64,
        name: OsString,
    },
    Rename {
        from: u64,
        from_name: OsString,
        to: u64,
        to_name: OsString,
        ino: u64,
    },
}

impl DirOp {
    fn dirs(&self) -> Vec<u64> {
        match self {
            DirOp::Link { dir, .. } | DirOp::Unlink { dir, .. } => vec![*dir],
            DirOp::Rename { from, to, .. } => vec![*from, *to],
        }
    }
}

struct State {
    inodes: HashMap<u64, Inode>,
    /// Directory changes not yet durable, oldest first.
    journal: Vec<DirOp>,
    next_ino: u64,
    /// Bytes held by files that have a name.
    used: u64,
    faults: Faults,
    counters: Counters,
}

impl State {
    fn new() -> State {
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT,
            Inode {
                body: Body::Dir(DirBody {
                    entries: BTreeMap::new(),
                    durable: BTreeMap::new(),
                }),
                perm: 0o755,
                mtime: SystemTime::now(),
                name: OsString::from("/"),
            },
        );
        State {
            inodes,
            journal: Vec::new(),
            next_ino: ROOT + 1,
            used: 0,
            faults: Faults::default(),
            counters: Counters::default(),
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.inodes.get(&ino)?;
        let (kind, size, nlink) = match &node.body {
            Body::File(f) => (FileType::RegularFile, f.data.len() as u64, 1),
            Body::Dir(_) => (FileType::Directory, 0, 2),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm: node.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn dir(&mut self, ino: u64) -> Result<&mut DirBody, Errno> {
        match self.inodes.get_mut(&ino).map(|n| &mut n.body) {
            Some(Body::Dir(d)) => Ok(d),
            Some(Body::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file(&mut self, ino: u64) -> Result<&mut FileBody, Errno> {
        match self.inodes.get_mut(&ino).map(|n| &mut n.body) {
            Some(Body::File(f)) => Ok(f),
            Some(Body::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn child(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// Room for `grow` more bytes, or `ENOSPC`.
    fn reserve(&mut self, grow: u64) -> Result<(), Errno> {
        if let Some(cap) = self.faults.capacity {
            if self.used.saturating_add(grow) > cap {
                self.counters.enospc += 1;
                return Err(Errno::ENOSPC);
            }
        }
        self.used += grow;
        Ok(())
    }

    /// Creates `name` in `parent`; returns its attributes.
    fn new_inode(
        &mut self,
        parent: u64,
        name: &OsStr,
        body: Body,
        mode: u32,
    ) -> Result<FileAttr, Errno> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                body,
                perm: (mode & 0o7777) as u16,
                mtime: SystemTime::now(),
                name: name.to_owned(),
            },
        );
        self.dir(parent)?.entries.insert(name.to_owned(), ino);
        self.journal.push(DirOp::Link {
            dir: parent,
            name: name.to_owned(),
            ino,
        });
        self.attr(ino).ok_or(Errno::EIO)
    }

    /// Commits the journal's changes that touch `dir`, and, for each rename
    /// among them, the earlier changes of its other directory (transitively):
    /// what an fsync of `dir` makes durable.
    fn commit_dir(&mut self, dir: u64) {
        let mut dirs = BTreeSet::from([dir]);
        let mut commit = vec![false; self.journal.len()];
        for (i, op) in self.journal.iter().enumerate().rev() {
            let ds = op.dirs();
            if ds.iter().any(|d| dirs.contains(d)) {
                commit[i] = true;
                dirs.extend(ds);
            }
        }
        let journal = std::mem::take(&mut self.journal);
        for (op, c) in journal.into_iter().zip(commit) {
            if c {
                self.apply_durable(&op);
            } else {
                self.journal.push(op);
            }
        }
    }

    /// The durable entries of directory `dir`.
    fn durable(&mut self, dir: u64) -> Option<&mut BTreeMap<OsString, u64>> {
        match self.inodes.get_mut(&dir).map(|n| &mut n.body) {
            Some(Body::Dir(d)) => Some(&mut d.durable),
            _ => None,
        }
    }

    /// Applies a journal entry to the durable directory entries.
    fn apply_durable(&mut self, op: &DirOp) {
        match op {
            DirOp::Link { dir, name, ino } => {
                if let Some(d) = self.durable(*dir) {
                    d.insert(name.clone(), *ino);
                }
            }
            DirOp::Unlink { dir, name } => {
                if let Some(d) = self.durable(*dir) {
                    d.remove(name);
                }
            }
            DirOp::Rename {
                from,
                from_name,
                to,
                to_name,
                ino,
            } => {
                if let Some(d) = self.durable(*from) {
                    if d.get(from_name) == Some(ino) {
                        d.remove(from_name);
                    }
                }
                if let Some(d) = self.durable(*to) {
                    d.insert(to_name.clone(), *ino);
                }
            }
        }
    }

    /// A file or directory that lost its name: its bytes no longer count.
    fn orphan(&mut self, ino: u64) {
        if let Some(Body::File(f)) = self.inodes.get(&ino).map(|n| &n.body) {
            self.used = self.used.saturating_sub(f.data.len() as u64);
        }
    }

    fn set_len(&mut self, ino: u64, len: usize) -> Result<(), Errno> {
        let old = self.file(ino)?.data.len();
        if len > old {
            self.reserve((len - old) as u64)?;
        } else {
            self.used = self.used.saturating_sub((old - len) as u64);
        }
        let f = self.file(ino)?;
        let (lo, hi) = (old.min(len), old.max(len));
        f.data.resize(len, 0);
        for p in lo / PAGE..hi.div_ceil(PAGE) {
            f.dirty.insert(p);
        }
        Ok(())
    }

    fn write(&mut self, ino: u64, off: usize, data: &[u8]) -> Result<(), Errno> {
        let end = off.checked_add(data.len()).ok_or(Errno::EINVAL)?;
        let old = self.file(ino)?.data.len();
        if end > old {
            self.reserve((end - old) as u64)?;
        }
        let f = self.file(ino)?;
        if end > f.data.len() {
            f.data.resize(end, 0);
        }
        f.data[off..end].copy_from_slice(data);
        if !data.is_empty() {
            for p in off / PAGE..end.div_ceil(PAGE) {
                f.dirty.insert(p);
            }
        }
        Ok(())
    }

    fn fsync(&mut self, ino: u64) -> Result<(), Errno> {
        let name = self.inodes.get(&ino).map(|n| n.name.clone());
        if self.faults.fail_fsync {
            self.counters.failed_fsyncs += 1;
            // Linux marks the pages clean after a failed writeback: a later
            // fsync reports success without them.
            if let Ok(f) = self.file(ino) {
                f.dirty.clear();
            }
            return Err(Errno::EIO);
        }
        match self.inodes.get_mut(&ino).map(|n| &mut n.body) {
            Some(Body::File(_))
                if name.as_ref().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    self.faults
                        .lie_for
                        .iter()
                        .any(|p| n.starts_with(p.as_str()))
                }) =>
            {
                self.counters.lied_fsyncs += 1;
                Ok(())
            }
            Some(Body::File(f)) => {
                persist(f, None);
                self.counters.fsyncs += 1;
                if let Some(n) = &name {
                    *self
                        .counters
                        .fsyncs_by_name
                        .entry(n.to_string_lossy().into_owned())
                        .or_default() += 1;
                }
                Ok(())
            }
            Some(Body::Dir(_)) => {
                self.commit_dir(ino);
                self.counters.dir_fsyncs += 1;
                Ok(())
            }
            None => Err(Errno::ENOENT),
        }
    }

    /// The power cut: what is not durable is lost (or, torn, partly kept).
    fn cut(&mut self, how: Cut) {
        let mut rng = match how {
            Cut::Strict => None,
            Cut::Torn { seed } => Some(rand::rngs::StdRng::seed_from_u64(seed)),
        };
        self.counters.cuts += 1;
        for node in self.inodes.values_mut() {
            match &mut node.body {
                Body::File(f) => {
                    let unsynced = (f.dirty.len() * PAGE) as u64;
                    if let Some(rng) = rng.as_mut() {
                        persist(f, Some(rng));
                    }
                    self.counters.pages_lost += unsynced;
                    f.dirty.clear();
                    f.data = f.durable.clone();
                }
                Body::Dir(_) => {}
            }
        }
        // Directories: a random prefix of the journal reached the disk (torn),
        // or none of it (strict).
        let journal = std::mem::take(&mut self.journal);
        let keep = match rng.as_mut() {
            Some(rng) if !journal.is_empty() => rng.random_range(0..=journal.len()),
            _ => 0,
        };
        for op in &journal[..keep] {
            self.apply_durable(op);
        }
        for node in self.inodes.values_mut() {
            if let Body::Dir(d) = &mut node.body {
                d.entries = d.durable.clone();
            }
        }
        // Only what the durable tree reaches survives.
        let mut live = BTreeSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if let Some(Body::Dir(d)) = self.inodes.get(&ino).map(|n| &n.body) {
                for child in d.entries.values() {
                    if live.insert(*child) {
                        todo.push(*child);
                    }
                }
            }
        }
        self.inodes.retain(|ino, _| live.contains(ino));
        self.used = self
            .inodes
            .values()
            .map(|n| match &n.body {
                Body::File(f) => f.data.len() as u64,
                Body::Dir(_) => 0,
            })
            .sum();
    }
}

/// Moves the pages written since the last fsync from what the process sees
/// to the disk: all of them, whole (an fsync), or (`rng`, a torn cut) the
/// old or new length at random, and each page kept or not at random, a kept
/// page sector by sector, so that it may be torn.
fn persist(f: &mut FileBody, mut rng: Option<&mut rand::rngs::StdRng>) {
    match rng.as_mut() {
        None => f.durable.resize(f.data.len(), 0),
        Some(rng) => {
            if f.data.len() != f.durable.len() && rng.random_bool(0.5) {
                f.durable.resize(f.data.len(), 0);
            }
        }
    }
    let len = f.durable.len().min(f.data.len());
    for p in std::mem::take(&mut f.dirty) {
        let start = p * PAGE;
        if start >= len {
            continue;
        }
        let end = (start + PAGE).min(len);
        match rng.as_mut() {
            None => f.durable[start..end].copy_from_slice(&f.data[start..end]),
            Some(rng) => {
                if !rng.random_bool(0.5) {
                    continue;
                }
                let torn = rng.random_bool(0.25);
                let mut s = start;
                while s < end {
                    let e = (s + SECTOR).min(end);
                    if !torn || rng.random_bool(0.5) {
                        f.durable[s..e].copy_from_slice(&f.data[s..e]);
                    }
                    s = e;
                }
            }
        }
    }
}

struct Fs(Arc<Mutex<State>>);

impl Fs {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.lock();
        match s.child(parent.0, name).map(|ino| s.attr(ino)) {
            Ok(Some(attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.lock();
        if let Some(size) = size {
            let Ok(size) = usize::try_from(size) else {
                return reply.error(Errno::EFBIG);
            };
            if let Err(e) = s.set_len(ino.0, size) {
                return reply.error(e);
            }
        }
        if let Some(node) = s.inodes.get_mut(&ino.0) {
            if let Some(mode) = mode {
                node.perm = (mode & 0o7777) as u16;
            }
            node.mtime = SystemTime::now();
        }
        match s.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.lock();
        let body = Body::Dir(DirBody {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
        });
        match s.new_inode(parent.0, name, body, mode) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let ino = match s.child(parent.0, name) {
            Ok(ino) => ino,
            Err(e) => return reply.error(e),
        };
        if matches!(s.inodes.get(&ino).map(|n| &n.body), Some(Body::Dir(_))) {
            return reply.error(Errno::EISDIR);
        }
        s.orphan(ino);
        if let Ok(d) = s.dir(parent.0) {
            d.entries.remove(name);
        }
        s.journal.push(DirOp::Unlink {
            dir: parent.0,
            name: name.to_owned(),
        });
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let ino = match s.child(parent.0, name) {
            Ok(ino) => ino,
            Err(e) => return reply.error(e),
        };
        match s.dir(ino) {
            Ok(d) if !d.entries.is_empty() => return reply.error(Errno::ENOTEMPTY),
            Ok(_) => {}
            Err(e) => return reply.error(e),
        }
        if let Ok(d) = s.dir(parent.0) {
            d.entries.remove(name);
        }
        s.journal.push(DirOp::Unlink {
            dir: parent.0,
            name: name.to_owned(),
        });
        reply.ok();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        let ino = match s.child(parent.0, name) {
            Ok(ino) => ino,
            Err(e) => return reply.error(e),
        };
        let noreplace = flags.bits() & libc_rename_noreplace() != 0;
        if flags.bits() & !libc_rename_noreplace() != 0 {
            return reply.error(Errno::EINVAL);
        }
        match s.child(newparent.0, newname) {
            Ok(_) if noreplace => return reply.error(Errno::EEXIST),
            Ok(old) if old == ino => return reply.ok(),
            Ok(old) => {
                if let Ok(d) = s.dir(old) {
                    if !d.entries.is_empty() {
                        return reply.error(Errno::ENOTEMPTY);
                    }
                }
                s.orphan(old);
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return reply.error(e),
        }
        if let Ok(d) = s.dir(parent.0) {
            d.entries.remove(name);
        }
        match s.dir(newparent.0) {
            Ok(d) => {
                d.entries.insert(newname.to_owned(), ino);
            }
            Err(e) => return reply.error(e),
        }
        if let Some(node) = s.inodes.get_mut(&ino) {
            node.name = newname.to_owned();
        }
        s.journal.push(DirOp::Rename {
            from: parent.0,
            from_name: name.to_owned(),
            to: newparent.0,
            to_name: newname.to_owned(),
            ino,
        });
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.lock().inodes.contains_key(&ino.0) {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut s = self.lock();
        match s.file(ino.0) {
            Ok(f) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(f.data.len());
                let end = start.saturating_add(size as usize).min(f.data.len());
                reply.data(&f.data[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Ok(off) = usize::try_from(offset) else {
            return reply.error(Errno::EFBIG);
        };
        match self.lock().write(ino.0, off, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.lock().fsync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.lock();
        let names: Vec<(OsString, u64)> = match s.dir(ino.0) {
            Ok(d) => d.entries.iter().map(|(n, i)| (n.clone(), *i)).collect(),
            Err(e) => return reply.error(e),
        };
        let mut all = vec![
            (OsString::from("."), ino.0, FileType::Directory),
            (OsString::from(".."), ROOT, FileType::Directory),
        ];
        for (name, child) in names {
            let kind = match s.inodes.get(&child).map(|n| &n.body) {
                Some(Body::Dir(_)) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((name, child, kind));
        }
        for (i, (name, child, kind)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.lock().fsync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.lock();
        let cap = match s.faults.capacity {
            Some(cap) if !s.faults.hide_capacity => cap,
            _ => UNLIMITED,
        };
        let free = cap.saturating_sub(s.used) / PAGE as u64;
        reply.statfs(
            cap / PAGE as u64,
            free,
            free,
            1 << 20,
            1 << 20,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.lock();
        let body = Body::File(FileBody {
            data: Vec::new(),
            durable: Vec::new(),
            dirty: BTreeSet::new(),
        });
        match s.new_inode(parent.0, name, body, mode) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut s = self.lock();
        let end = offset.saturating_add(length) as usize;
        let len = match s.file(ino.0) {
            Ok(f) => f.data.len(),
            Err(e) => return reply.error(e),
        };
        if end > len {
            if let Err(e) = s.set_len(ino.0, end) {
                return reply.error(e);
            }
        }
        reply.ok();
    }
}

fn libc_rename_noreplace() -> u32 {
    1 // RENAME_NOREPLACE
}

/// A mounted PowerFs.
pub struct PowerFs {
    mount: TempDir,
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
}

impl PowerFs {
    /// Mounts an empty PowerFs on a new temporary directory.
    pub fn mount() -> PowerFs {
        let mount = tempfile::tempdir().expect("mount point");
        let state = Arc::new(Mutex::new(State::new()));
        let mut fs = PowerFs {
            mount,
            state,
            session: None,
        };
        fs.attach();
        fs
    }

    fn attach(&mut self) {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("beacon-powerfs".into()),
            MountOption::RW,
            MountOption::NoAtime,
        ];
        config.n_threads = Some(2);
        let session = fuser::spawn_mount(Fs(self.state.clone()), self.mount.path(), &config)
            .unwrap_or_else(|e| {
                panic!(
                    "cannot mount the test filesystem (FUSE: /dev/fuse and fuse3 are needed, as root): {e}"
                )
            });
        self.session = Some(session);
        // Ready once the kernel answers for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(self.mount.path())
            .map(|m| m.is_dir())
            .ok()
            != Some(true)
            || !mounted(self.mount.path())
        {
            assert!(
                Instant::now() < deadline,
                "the test filesystem did not mount"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn detach(&mut self) {
        if let Some(session) = self.session.take() {
            // Every process that had files open must be gone first.
            if let Err(e) = session.umount_and_join() {
                panic!("cannot unmount the test filesystem: {e}");
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.mount.path()
    }

    /// Cuts the power: unmounts (no process may have a file open on it),
    /// drops what was not durable, and mounts what survived.
    pub fn power_cut(&mut self, how: Cut) {
        self.detach();
        self.lock().cut(how);
        self.attach();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held by named files.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Writes past `bytes` in all fail with `ENOSPC` (`None`: no limit).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().faults.capacity = bytes;
    }

    /// Whether `statfs` hides the capacity (reports plenty free while
    /// writes fail with `ENOSPC`): a filesystem whose free space is misreported.
    pub fn hide_capacity(&self, hide: bool) {
        self.lock().faults.hide_capacity = hide;
    }

    /// While on, every fsync fails with `EIO` and drops what it covered.
    pub fn fail_fsyncs(&self, on: bool) {
        self.lock().faults.fail_fsync = on;
    }

    /// fsyncs of files whose names start with one of `prefixes` report
    /// success and keep nothing (none: every fsync is honest again).
    pub fn lie_for(&self, prefixes: &[&str]) {
        self.lock().faults.lie_for = prefixes.iter().map(|p| p.to_string()).collect();
    }

    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}

fn mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let path = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(path.as_ref()) && l.contains("fuse"))
}
