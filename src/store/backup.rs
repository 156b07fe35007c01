//! Online backup and verified restore.
//!
//! A backup is one stream, written in sequence order while the node runs:
//!
//! ```text
//! "BEACON-BACKUP\n" version:u32be
//! entry*            each: tag:u8 len:u32be body
//!   'H' header      format:u32 head:u64 created_ns:u64
//!   'L' log         the log's identity (LogInfo: id, and the log it was
//!                   restored from); version 2, right after the header
//!   'N' node        the identity of the node that served the store, if
//!                   known (version 2, after the log)
//!   'R' record      the stored record (its own CRC32 trailer)
//!   'T' tombstone   the stored tombstone (its own CRC32 trailer)
//!   'S' successor   seq:u64 successor:9
//!   'C' cursor      seq:u64 identity name [log:16]  (a durable subscription,
//!                   and the log it was taken on; version 2)
//!   'P' position    seq:u64 peer [log:16]   (how far a peer's log was read,
//!                   and which of the peer's logs; version 2)
//!   'F' file        name bytes   (a file of the data directory that travels
//!                   with the store: tokens.json, the API tokens; version 2)
//!   'M' manifest    head:u64 records:u64 tombstones:u64 successors:u64
//!                   cursors:u64 positions:u64 sha256:32 (of every byte before
//!                   this entry)
//! ```
//!
//! Records and tombstones come in sequence order, 1 to `head` with no gap:
//! the log at one committed head (retention waits while a backup runs).
//! The index and expiry entries are not copied: a restore rebuilds them
//! from what it verified, so they cannot disagree with the records.
//!
//! A restored store is a new log (a new id) that continues the backed-up
//! one up to the backup's head (`LogInfo::forked_from`): its peers' links
//! read it again from there, since what it appends next was never in the
//! log they read. Cursors that hold on the backed-up log are carried over
//! as cursors on the new one. A compaction keeps the log's identity.
//!
//! A restore builds a new store in a directory beside the target, checks
//! every entry (CRC, envelope digest, signature chain to a CA of the node's
//! trust, gapless sequences) and the manifest (counts and digest), and only
//! then moves it into place: a bad backup writes nothing. This is Beacon's
//! own format: the records are the product's stored form, and no archive
//! format would check them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use aws_lc_rs::digest::{Context, SHA256};

use super::commit::Watermark;
use super::engine::{entries, Engine, Entry, Space, WriteSet};
use super::record::{nanos, Indexed, LogId, LogInfo, Position, Record, Successor, Tombstone};
use super::{io, Store, StoreError, StoreOptions, FORMAT};

const MAGIC: &[u8] = b"BEACON-BACKUP\n";
/// 2: the log's identity, and the log of each cursor and peer position.
const VERSION: u32 = 2;
/// The largest entry a reader accepts (a record is bounded by the node's
/// message limit, far below this).
const MAX_ENTRY: u32 = 64 << 20;
/// Records restored per atomic write.
const CHUNK: usize = 2048;
/// Files of the data directory a backup carries, and a restore writes back
/// (mode 0600): the API token register, without which every token a
/// restored node knew would answer 401.
pub const FILES: &[&str] = &["tokens.json"];
/// The largest such file taken.
const MAX_FILE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error("not a Beacon backup (no BEACON-BACKUP header)")]
    NotABackup,
    #[error("backup version {0} is not one this version of Beacon reads (1 to {VERSION})")]
    NewerVersion(u32),
    #[error("the backup is truncated: it ends {0}")]
    Truncated(String),
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error("record {seq} of the backup does not verify: {reason}")]
    Unverified { seq: u64, reason: String },
    #[error("{0} is not empty: a restore only builds a new store (move it aside first)")]
    NotEmpty(String),
    #[error("backup I/O failed: {0}")]
    Io(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn bio(e: impl std::fmt::Display) -> BackupError {
    BackupError::Io(e.to_string())
}

/// What a backup holds, as its manifest states it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub head: u64,
    pub records: u64,
    pub tombstones: u64,
    pub successors: u64,
    pub cursors: u64,
    pub positions: u64,
    pub sha256: [u8; 32],
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Context,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, tag: u8, body: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
        let mut head = [0u8; 5];
        head[0] = tag;
        head[1..].copy_from_slice(&len.to_be_bytes());
        self.raw(&head)?;
        self.raw(body)
    }

    fn raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.hash.update(b);
        self.bytes += b.len() as u64;
        self.inner.write_all(b)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_log(out: &mut Vec<u8>, log: Option<LogId>) {
    if let Some(log) = log {
        out.extend_from_slice(&log.0);
    }
}

/// Keeps retention waiting while a backup reads.
struct Reading<'a>(&'a Store);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.backups.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Store {
    /// Writes a backup of the log at the current committed head to `out`;
    /// `progress` is told each sequence written and the head. Reads are
    /// streamed (memory stays bounded); retention waits until it ends.
    pub fn backup(
        &self,
        out: impl Write,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Manifest, BackupError> {
        self.begin_backup();
        let _reading = Reading(self);
        let head = self.head();
        let engine = self.engine.as_ref();
        let mut w = Hashing {
            inner: out,
            hash: Context::new(&SHA256),
            bytes: 0,
        };
        let mut m = Manifest {
            head,
            ..Manifest::default()
        };
        w.raw(MAGIC).map_err(bio)?;
        w.raw(&VERSION.to_be_bytes()).map_err(bio)?;
        let mut header = Vec::with_capacity(20);
        header.extend_from_slice(&FORMAT.to_be_bytes());
        header.extend_from_slice(&head.to_be_bytes());
        header.extend_from_slice(&nanos(SystemTime::now()).to_be_bytes());
        w.put(b'H', &header).map_err(bio)?;
        w.put(b'L', &self.log.encode()).map_err(bio)?;
        if let Some(node) = engine.node()? {
            w.put(b'N', &node).map_err(bio)?;
        }
        // Records and tombstones, merged in sequence order.
        for entry in entries(engine, 1, head) {
            let (seq, tag, bytes) = match entry? {
                Entry::Record(seq, bytes) => {
                    // Checked as it is read: a damaged record is not copied.
                    Record::decode(seq, bytes.clone())?.check_digest()?;
                    m.records += 1;
                    (seq, b'R', bytes)
                }
                Entry::Pruned(seq, bytes) => {
                    Tombstone::decode(seq, &bytes)?;
                    m.tombstones += 1;
                    (seq, b'T', bytes)
                }
            };
            w.put(tag, &bytes).map_err(bio)?;
            if seq % 1024 == 0 || seq == head {
                progress(seq, head);
            }
        }
        if m.records + m.tombstones != head {
            return Err(StoreError::Io(format!(
                "the log holds {} entries up to head {head}",
                m.records + m.tombstones
            ))
            .into());
        }
        // Successors, a stretch at a time (only those the head covers).
        let mut from = 1u64;
        while from <= head {
            let to = head.min(from.saturating_add(1 << 16));
            for (seq, v) in engine.successors(from, to)? {
                match Successor::decode(&v) {
                    Some(s) if s.seq <= head => {
                        let mut body = seq.to_be_bytes().to_vec();
                        body.extend_from_slice(&v);
                        w.put(b'S', &body).map_err(bio)?;
                        m.successors += 1;
                    }
                    _ => {}
                }
            }
            from = to.saturating_add(1);
        }
        for (identity, name, pos) in engine.cursors(Space::Subscriptions)? {
            let mut body = pos.seq.min(head).to_be_bytes().to_vec();
            put_str(&mut body, &identity);
            put_str(&mut body, &name);
            put_log(&mut body, pos.log);
            w.put(b'C', &body).map_err(bio)?;
            m.cursors += 1;
        }
        for (peer, _, pos) in engine.cursors(Space::Links)? {
            let mut body = pos.seq.to_be_bytes().to_vec();
            put_str(&mut body, &peer);
            put_log(&mut body, pos.log);
            w.put(b'P', &body).map_err(bio)?;
            m.positions += 1;
        }
        for name in FILES {
            let path = self.dir.join(name);
            let bytes = match std::fs::metadata(&path) {
                Ok(meta) if meta.len() <= MAX_FILE => std::fs::read(&path).map_err(bio)?,
                Ok(_) => {
                    return Err(BackupError::Io(format!(
                        "{} is larger than {MAX_FILE} bytes",
                        path.display()
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(bio(e)),
            };
            let mut body = Vec::with_capacity(bytes.len() + name.len() + 4);
            put_str(&mut body, name);
            body.extend_from_slice(&bytes);
            w.put(b'F', &body).map_err(bio)?;
        }
        m.sha256 = finish(&w.hash);
        w.put(b'M', &manifest_bytes(&m)).map_err(bio)?;
        w.inner.flush().map_err(bio)?;
        progress(head, head);
        Ok(m)
    }
}

/// The digest of what a hashing context has seen so far.
fn finish(ctx: &Context) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.clone().finish().as_ref());
    out
}

fn manifest_bytes(m: &Manifest) -> Vec<u8> {
    let mut b = Vec::with_capacity(80);
    for n in [
        m.head,
        m.records,
        m.tombstones,
        m.successors,
        m.cursors,
        m.positions,
    ] {
        b.extend_from_slice(&n.to_be_bytes());
    }
    b.extend_from_slice(&m.sha256);
    b
}

/// Reads entries and hashes them.
struct Entries<R> {
    inner: R,
    hash: Context,
    /// What was read last, for messages.
    last: String,
}

impl<R: Read> Entries<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                BackupError::Truncated(format!("after {} without its manifest", self.last))
            }
            _ => bio(e),
        })
    }

    /// The next entry, and the hash of everything before it.
    fn next(&mut self) -> Result<(u8, Vec<u8>, [u8; 32]), BackupError> {
        let before = finish(&self.hash);
        let mut head = [0u8; 5];
        self.exact(&mut head)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_ENTRY {
            return Err(BackupError::Damaged(format!(
                "an entry after {} claims {len} bytes",
                self.last
            )));
        }
        let mut body = vec![0u8; len as usize];
        self.exact(&mut body)?;
        self.hash.update(&head);
        self.hash.update(&body);
        Ok((head[0], body, before))
    }
}

struct Cut<'a> {
    b: &'a [u8],
}

impl<'a> Cut<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BackupError> {
        if self.b.len() < n {
            return Err(BackupError::Damaged(
                "an entry is shorter than its fields".into(),
            ));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u64(&mut self) -> Result<u64, BackupError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    /// The log a position names: 16 bytes, or nothing (version 1, or a
    /// position of no known log); then the entry must end.
    fn log(&mut self) -> Result<Option<LogId>, BackupError> {
        match self.b.len() {
            0 => Ok(None),
            16 => Ok(Some(LogId(self.take(16)?.try_into().map_err(|_| {
                BackupError::Damaged("a log id is short".into())
            })?))),
            n => Err(BackupError::Damaged(format!(
                "a position entry has {n} bytes after its names"
            ))),
        }
    }
    fn str(&mut self) -> Result<String, BackupError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        let n = u32::from_be_bytes(a) as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| BackupError::Damaged("a name is not UTF-8".into()))
    }
}

/// Checks one stored envelope: the signature and its chain (the trust's
/// CAs; revocations are not applied, since the bulletin was accepted
/// before any revocation the node applies now). Returns the payload digest.
pub type Verify<'a> = dyn Fn(&Record) -> Result<[u8; 32], String> + 'a;

/// Builds a store in `dir` (which must be absent or empty) from the backup
/// read from `input`, checking everything; `progress` is told each
/// sequence restored and the head. Nothing is left in `dir` unless the
/// whole backup verified.
/// What a restore's caller decides of the node a backup is of (its
/// identity, if the backup names one): `Err` refuses the restore, with the
/// reason, before anything is written.
pub type NodeCheck<'a> = dyn Fn(Option<&str>) -> Result<(), String> + 'a;

/// What a restore built.
#[derive(Debug, Clone)]
pub struct Restored {
    pub manifest: Manifest,
    /// The node whose store was backed up, if the backup names it.
    pub node: Option<String>,
    /// Files of the data directory written back (`FILES`).
    pub files: Vec<String>,
}

pub fn restore(
    input: impl Read,
    dir: &Path,
    opts: &StoreOptions,
    verify: &Verify<'_>,
    check_node: &NodeCheck<'_>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Restored, BackupError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(bio)?;
        if entries.next().is_some() {
            return Err(BackupError::NotEmpty(dir.display().to_string()));
        }
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    super::durable::create_dir_all(parent).map_err(bio)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    // What an interrupted restore into this target left behind goes (one
    // restore runs per target at a time).
    let prefix = format!(".{name}.restoring-");
    if let Ok(entries) = std::fs::read_dir(parent) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let building: PathBuf = parent.join(format!("{prefix}{}", std::process::id()));
    super::durable::create_dir_all(&building).map_err(bio)?;
    // An engine that keeps the log outside the directory builds it aside
    // there too, and puts it in place after the directory.
    if let Some(held) = super::engine::holds_store(opts)? {
        return Err(BackupError::NotEmpty(held));
    }
    let aside = super::engine::aside(opts)?;
    let result = build(
        input,
        &building,
        &aside,
        verify,
        Build::Restore,
        check_node,
        &mut progress,
    );
    match result {
        Ok(m) => {
            super::engine::settle(&aside, opts, true)?;
            if dir.exists() {
                std::fs::remove_dir(dir).map_err(bio)?;
            }
            std::fs::rename(&building, dir).map_err(bio)?;
            sync_dir(parent)?;
            Ok(m)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&building);
            let _ = super::engine::settle(&aside, opts, false);
            Err(e)
        }
    }
}

/// What a store built from a backup is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Build {
    /// A new log continuing the backed-up one up to the backup's head.
    Restore,
    /// The same log, rewritten (a compaction).
    Compact,
}

/// The identity of the store built from a backup of `backed_up` (`None`
/// for a version 1 backup, whose log had no identity) at `head`.
fn built_log(how: Build, backed_up: Option<LogInfo>, head: u64) -> LogInfo {
    match (how, backed_up) {
        (Build::Compact, Some(log)) => log,
        (Build::Restore, Some(log)) => LogInfo {
            id: LogId::random(),
            forked_from: Some(super::record::Fork {
                log: log.id,
                size: head,
            }),
        },
        (_, None) => LogInfo::new(),
    }
}

fn build(
    input: impl Read,
    dir: &Path,
    opts: &StoreOptions,
    verify: &Verify<'_>,
    how: Build,
    check_node: &NodeCheck<'_>,
    progress: &mut impl FnMut(u64, u64),
) -> Result<Restored, BackupError> {
    let mut r = Entries {
        inner: std::io::BufReader::with_capacity(1 << 20, input),
        hash: Context::new(&SHA256),
        last: "the file header".into(),
    };
    let (head, backed_up) = read_header(&mut r)?;
    let log = built_log(how, backed_up, head);
    let (engine, _) = super::engine::open(dir, opts)?;
    let mut b = Building {
        engine,
        set: WriteSet {
            format: Some(FORMAT),
            log: Some(log.encode()),
            ..WriteSet::default()
        },
        seen: Manifest {
            head,
            ..Manifest::default()
        },
        expect: 1,
        head,
        how,
        backed_up,
        log,
        tree: super::tree::Builder::default(),
        verify,
    };
    // The node the backup is of, once known (and checked before any record).
    let mut node: Option<String> = None;
    let mut checked = false;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let manifest = loop {
        let (tag, body, before) = r.next()?;
        if !checked && tag != b'N' {
            check_node(node.as_deref()).map_err(BackupError::Refused)?;
            checked = true;
        }
        r.last = match tag {
            b'N' if !checked => {
                node =
                    Some(String::from_utf8(body).map_err(|_| {
                        BackupError::Damaged("the node identity is not UTF-8".into())
                    })?);
                "the node identity".into()
            }
            b'F' => file_entry(&body, &mut files)?,
            b'R' | b'T' => b.entry(tag, body, progress)?,
            b'S' => b.successor(&body)?,
            b'C' => b.cursor(&body)?,
            b'P' => b.position(&body)?,
            b'M' => break manifest_entry(&body, before)?,
            other => {
                return Err(BackupError::Damaged(format!(
                    "unknown entry type {other:#04x} after {}",
                    r.last
                )))
            }
        };
    };
    b.check(&manifest)?;
    let mut rest = [0u8; 1];
    if r.inner.read(&mut rest).map_err(bio)? != 0 {
        return Err(BackupError::Damaged("bytes follow the manifest".into()));
    }
    b.finish(node.as_deref())?;
    let mut written = Vec::new();
    if how == Build::Restore {
        for (name, bytes) in &files {
            write_private(&dir.join(name), bytes)?;
            written.push(name.clone());
        }
    }
    // The head it holds (written and fdatasynced), and the names of both
    // in `dir`: without that fsync a power cut could leave `dir` empty, and
    // an empty store opens as a new one.
    Watermark::open(dir)?.record(head).map_err(io)?;
    sync_dir(dir)?;
    progress(head, head);
    Ok(Restored {
        manifest,
        node,
        files: written,
    })
}

/// The file header, the header entry and (version 2) the backed-up log's
/// identity: the head the backup states, and that identity.
fn read_header<R: Read>(r: &mut Entries<R>) -> Result<(u64, Option<LogInfo>), BackupError> {
    let mut magic = [0u8; 14];
    r.inner
        .read_exact(&mut magic)
        .map_err(|_| BackupError::NotABackup)?;
    if magic != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let mut version = [0u8; 4];
    r.exact(&mut version)?;
    let version = u32::from_be_bytes(version);
    if !(1..=VERSION).contains(&version) {
        return Err(BackupError::NewerVersion(version));
    }
    r.hash.update(MAGIC);
    r.hash.update(&version.to_be_bytes());
    let (tag, body, _) = r.next()?;
    if tag != b'H' {
        return Err(BackupError::Damaged("the header entry is missing".into()));
    }
    let mut c = Cut { b: &body };
    let format = {
        let mut a = [0u8; 4];
        a.copy_from_slice(c.take(4)?);
        u32::from_be_bytes(a)
    };
    if format > FORMAT {
        return Err(BackupError::Damaged(format!(
            "it was written by a store of format {format}, newer than this version of Beacon reads (up to {FORMAT})"
        )));
    }
    let head = c.u64()?;
    r.last = "the header".into();
    if version < 2 {
        return Ok((head, None));
    }
    let (tag, body, _) = r.next()?;
    if tag != b'L' {
        return Err(BackupError::Damaged(
            "the log identity entry is missing".into(),
        ));
    }
    let backed_up = LogInfo::decode(&body)
        .ok_or_else(|| BackupError::Damaged("its log identity is damaged".into()))?;
    Ok((head, Some(backed_up)))
}

/// A file of the data directory carried by the backup (`FILES` only).
fn file_entry(body: &[u8], files: &mut Vec<(String, Vec<u8>)>) -> Result<String, BackupError> {
    let mut c = Cut { b: body };
    let name = c.str()?;
    if !FILES.contains(&name.as_str()) {
        return Err(BackupError::Damaged(format!(
            "it carries a file {name:?}, which is not one a backup holds"
        )));
    }
    files.push((name.clone(), c.b.to_vec()));
    Ok(format!("the file {name}"))
}

/// The manifest entry, checked against the hash of everything before it.
fn manifest_entry(body: &[u8], before: [u8; 32]) -> Result<Manifest, BackupError> {
    let mut c = Cut { b: body };
    let m = Manifest {
        head: c.u64()?,
        records: c.u64()?,
        tombstones: c.u64()?,
        successors: c.u64()?,
        cursors: c.u64()?,
        positions: c.u64()?,
        sha256: c
            .take(32)?
            .try_into()
            .map_err(|_| BackupError::Damaged("the manifest is short".into()))?,
    };
    if m.sha256 != before {
        return Err(BackupError::Damaged(
            "its SHA-256 does not match the manifest (altered after it was written)".into(),
        ));
    }
    Ok(m)
}

/// A store being built from a backup's entries, in their order; each
/// entry's method says what it read (for the next error's "after …").
struct Building<'a> {
    engine: std::sync::Arc<dyn Engine>,
    /// Written in chunks of [`CHUNK`] entries.
    set: WriteSet,
    /// What was read so far, to compare with the manifest.
    seen: Manifest,
    /// The sequence of the next record or tombstone.
    expect: u64,
    head: u64,
    how: Build,
    backed_up: Option<LogInfo>,
    /// The built store's log.
    log: LogInfo,
    /// Its Merkle tree, leaf by leaf.
    tree: super::tree::Builder,
    verify: &'a Verify<'a>,
}

impl Building<'_> {
    /// A record (checked: CRC, digest, signature) or a tombstone, under the
    /// next sequence, with its index and expiry entries.
    fn entry(
        &mut self,
        tag: u8,
        body: Vec<u8>,
        progress: &mut impl FnMut(u64, u64),
    ) -> Result<String, BackupError> {
        let head = self.head;
        if self.expect > head {
            return Err(BackupError::Damaged(format!(
                "it holds more than the {head} entries its header states"
            )));
        }
        let seq = self.expect;
        let set = &mut self.set;
        if tag == b'R' {
            let rec = Record::decode(seq, body.clone().into())
                .map_err(|e| BackupError::Damaged(format!("entry {seq}: {e}")))?;
            rec.check_digest()
                .map_err(|e| BackupError::Damaged(format!("entry {seq}: {e}")))?;
            let payload_digest =
                (self.verify)(&rec).map_err(|reason| BackupError::Unverified { seq, reason })?;
            set.index.push((
                rec.meta.publisher.clone(),
                rec.meta.id.clone(),
                Indexed {
                    seq,
                    digest: rec.meta.digest,
                    payload_digest: Some(payload_digest),
                }
                .encode(),
            ));
            if let Some(e) = rec.meta.expires_at {
                set.expiries.push((nanos(e), seq));
            }
            self.tree.record(&rec, set);
            set.records.push((seq, body));
            self.seen.records += 1;
        } else {
            let t = Tombstone::decode(seq, &body)
                .map_err(|e| BackupError::Damaged(format!("entry {seq}: {e}")))?;
            self.tree.tombstone(&t, set);
            set.index.push((
                t.publisher.clone(),
                t.id.clone(),
                Indexed {
                    seq,
                    digest: t.digest,
                    payload_digest: t.payload_digest,
                }
                .encode(),
            ));
            set.pruned.push(super::engine::Pruned {
                seq,
                tombstone: body,
                expires: None,
            });
            self.seen.tombstones += 1;
        }
        self.expect += 1;
        if set.records.len() + set.pruned.len() >= CHUNK {
            set.head = Some(seq);
            self.engine.write(std::mem::take(set))?;
            progress(seq, head);
        }
        Ok(format!("entry {seq} of {head}"))
    }

    /// What superseded or retracted a bulletin already read.
    fn successor(&mut self, body: &[u8]) -> Result<String, BackupError> {
        let mut c = Cut { b: body };
        let seq = c.u64()?;
        let s = c.take(body.len() - 8)?;
        match Successor::decode(s) {
            Some(succ) if seq < self.expect && succ.seq < self.expect => {}
            _ => {
                return Err(BackupError::Damaged(format!(
                    "a successor entry for {seq} names no held bulletin"
                )))
            }
        }
        self.set.successors.push((seq, s.to_vec()));
        self.seen.successors += 1;
        Ok(format!("the successor of {seq}"))
    }

    /// A durable subscription's cursor. One that holds on the backed-up log
    /// holds on the restored one (the same entries up to the head); one of
    /// another log stays of it (its subscription will start over).
    fn cursor(&mut self, body: &[u8]) -> Result<String, BackupError> {
        let mut c = Cut { b: body };
        let seq = c.u64()?;
        let identity = c.str()?;
        let name = c.str()?;
        let taken_on = c.log()?;
        let seq = seq.min(self.head);
        let pos = match (self.how, self.backed_up, taken_on) {
            (Build::Compact, _, _) => Position { seq, log: taken_on },
            (Build::Restore, Some(b), Some(t)) => match b.carry(t, seq) {
                Some(seq) => Position {
                    seq,
                    log: Some(self.log.id),
                },
                None => Position { seq, log: taken_on },
            },
            (Build::Restore, _, _) => Position {
                seq,
                log: Some(self.log.id),
            },
        };
        self.engine
            .advance_cursor(Space::Subscriptions, &identity, &name, pos)?;
        self.seen.cursors += 1;
        Ok(format!("the cursor {identity}/{name}"))
    }

    /// How far this node had read a peer's log.
    fn position(&mut self, body: &[u8]) -> Result<String, BackupError> {
        let mut c = Cut { b: body };
        let seq = c.u64()?;
        let peer = c.str()?;
        let log = c.log()?;
        self.engine
            .advance_cursor(Space::Links, &peer, "", Position { seq, log })?;
        self.seen.positions += 1;
        Ok(format!("the position on {peer}"))
    }

    /// Checks what was read against the manifest.
    fn check(&mut self, manifest: &Manifest) -> Result<(), BackupError> {
        self.seen.sha256 = manifest.sha256;
        if *manifest != self.seen || self.expect != self.head + 1 {
            return Err(BackupError::Damaged(format!(
                "its manifest states {manifest:?} but it holds {:?}",
                self.seen
            )));
        }
        Ok(())
    }

    /// Writes the rest durably and checkpoints the engine (closed when this
    /// returns).
    fn finish(mut self, node: Option<&str>) -> Result<(), BackupError> {
        self.set.head = Some(self.head);
        if self.how == Build::Compact {
            // The same store, rewritten: it still names its node.
            self.set.node = node.map(|n| n.as_bytes().to_vec());
        }
        self.engine.write_synced(self.set)?;
        self.engine.checkpoint()?;
        Ok(())
    }
}

/// Writes `bytes` to a new file at `path`, readable by its owner only, and
/// fsyncs it (its directory is fsynced by the caller).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(bio)?;
    f.write_all(bytes).map_err(bio)?;
    f.sync_all().map_err(bio)
}

/// Bytes the files under `path` take.
pub fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

/// What a compaction did.
#[derive(Debug, Clone)]
pub struct Compacted {
    pub before: u64,
    pub after: u64,
    pub manifest: Manifest,
}

/// Rewrites the store in `dir` (the node stopped) into new files holding
/// only what is live: the engine keeps the space pruned records freed for
/// its own later writes, but never gives it back to the filesystem. The
/// log is copied through the backup format (every record checked), built
/// beside the old files, and swapped in by renames; a crash at any point
/// leaves either the old files or the new ones, and [`Store::open`]
/// finishes an interrupted swap.
pub fn compact(dir: &Path, opts: &StoreOptions) -> Result<Compacted, BackupError> {
    if !dir.join("sled").exists() {
        return Err(BackupError::Io(format!("{} holds no store", dir.display())));
    }
    // Held until the new files are in place: no node opens the old ones meanwhile.
    let lock = super::durable::DirLock::acquire(dir).map_err(bio)?;
    finish_swap(dir)?;
    let before = size_of(&dir.join("sled"));
    let copy = dir.join(COPY);
    {
        let mut store = Store::open_locked(dir, opts.clone(), lock.clone())?;
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(&copy);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&copy)
                .map_err(bio)?
        };
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &file);
        store.backup(&mut w, |_, _| {})?;
        w.flush().map_err(bio)?;
        drop(w);
        file.sync_all().map_err(bio)?;
        store.close()?;
    }
    let staging = dir.join(STAGING);
    let _ = std::fs::remove_dir_all(&staging);
    super::durable::create_dir_all(&staging).map_err(bio)?;
    // The records come from this store, whose signatures were verified when
    // they arrived; CRCs and digests are still checked on the way.
    let payload_only = |rec: &Record| -> Result<[u8; 32], String> {
        let env = crate::domain::bulletin::codec::decode_envelope(&rec.envelope)?;
        Ok(crate::domain::bulletin::sha256(&env.payload))
    };
    let input = std::fs::File::open(&copy).map_err(bio)?;
    let manifest = match build(
        input,
        &staging,
        opts,
        &payload_only,
        Build::Compact,
        &|_| Ok(()),
        &mut |_, _| {},
    ) {
        Ok(r) => r.manifest,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            let _ = std::fs::remove_file(&copy);
            return Err(e);
        }
    };
    // Complete: it becomes `sled.new`, then takes the old files' place.
    std::fs::rename(staging.join("sled"), dir.join("sled.new")).map_err(bio)?;
    sync_dir(dir)?;
    finish_swap(dir)?;
    let _ = std::fs::remove_dir_all(&staging);
    let _ = std::fs::remove_file(&copy);
    // The removals too: after a power cut no old files linger.
    sync_dir(dir)?;
    drop(lock);
    Ok(Compacted {
        before,
        after: size_of(&dir.join("sled")),
        manifest,
    })
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    super::durable::sync_dir(dir).map_err(bio)
}

/// Where a compaction builds the new files, and its copy of the log.
const STAGING: &str = ".compacting";
const COPY: &str = "compact.backup";

/// Removes what an interrupted compaction left in `dir` (its staging
/// directory, its copy of the log, the old files of a finished swap); the
/// caller holds the directory's lock, so no compaction is running.
pub(super) fn clear_leftovers(dir: &Path) -> Result<(), BackupError> {
    let mut removed = false;
    for name in [STAGING, "sled.old"] {
        let path = dir.join(name);
        if path.exists() && (name != "sled.old" || dir.join("sled").exists()) {
            std::fs::remove_dir_all(&path).map_err(bio)?;
            removed = true;
        }
    }
    let copy = dir.join(COPY);
    if copy.exists() {
        std::fs::remove_file(&copy).map_err(bio)?;
        removed = true;
    }
    if removed {
        tracing::info!(dir = %dir.display(), "removed what an interrupted compaction left");
        sync_dir(dir)?;
    }
    Ok(())
}

/// Finishes a compaction that was interrupted after its new files were
/// complete (`sled.new` exists): they replace `sled`.
pub(super) fn finish_swap(dir: &Path) -> Result<(), BackupError> {
    let (new, cur, old) = (dir.join("sled.new"), dir.join("sled"), dir.join("sled.old"));
    if !new.exists() {
        return Ok(());
    }
    if cur.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&cur, &old).map_err(bio)?;
    }
    std::fs::rename(&new, &cur).map_err(bio)?;
    sync_dir(dir)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}
