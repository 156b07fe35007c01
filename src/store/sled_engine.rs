//! The embedded engine: a write-ahead log (`wal.rs`, in `wal/` beside
//! sled's files) in front of sled. The only file that touches sled.
//!
//! One tree, `log`, with prefixed keys, so that one atomic batch covers a
//! record, its index entry and the head:
//!
//! ```text
//! L <seq:u64be>                      -> record
//! T <seq:u64be>                      -> tombstone of a pruned record
//! R <seq:u64be>                      -> what superseded or retracted it
//! X <expires_at:u64be> <seq:u64be>   -> (empty) expiry entry
//! I <id> 0x00 <publisher>            -> index entry
//! H                                  -> <head seq:u64be>
//! V                                  -> <format:u32be>
//! G                                  -> the log's identity (LogInfo)
//! N                                  -> the node that serves it (SPIFFE id)
//! S <segment:u64be>                  -> <first seq:u64be> <last seq:u64be>
//! ```
//! A record's value is a pointer to its bytes in the value files
//! (`values.rs`, in `values/` beside sled's files), `S` the sequences each
//! value file holds; a store upgraded from format 7 keeps its earlier
//! records inline, and both read alike.
//! and two trees of positions, keyed `<identity> 0x00 <name>` →
//! `<seq:u64be> [<log id:16>]` (a `Position`):
//! `cursors` (durable subscriptions) and `links` (how far each peer was read).
//! Position changes are written as frames of the log too (and to sled at
//! once), so a sync makes them durable with the appends.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::durable::{dir_bytes, sync_file, Listing};
use super::engine::{Engine, RecordIter, Recovery, Space, WriteSet};
use super::record::Position;
use super::values::{Pointer, Values};
use super::wal::{At, Checkpoint, Kind, Wal};
use super::{io, StoreError};

/// Bytes of one write-ahead log segment.
const SEGMENT_BYTES: u64 = 16 << 20;
/// A checkpoint is taken at least this often while anything was written…
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// …and as soon as this much of the log lies beyond the last one: well
/// under what fills one of sled's buffers ([`SLED_SEGMENT`]; sled's own
/// log takes two to three times the bytes of the frames), so that sled's
/// files change only during a checkpoint.
const CHECKPOINT_BYTES: u64 = 4 << 20;
/// A value file is written again once its records still there take less
/// than half its bytes (`docs/RELIABILITY.md`), checked at most this often,
/// and only after a prune since the last check…
const REWRITE_EVERY: Duration = Duration::from_secs(600);
/// …and written again in frames of at most this many bytes of records.
const REWRITE_FRAME: usize = 4 << 20;
/// sled's buffer (and segment) size for new stores: its largest. sled writes
/// a buffer to its file when the buffer is full or flushed; a cut that
/// finds sled's file written since its last flush, in part (a torn cut),
/// can leave it unable to recover (docs/RELIABILITY.md). Stores created
/// before keep theirs (sled cannot change it; a compaction rebuilds them
/// with this one).
const SLED_SEGMENT: usize = 16 << 20;

/// The buffer size of sled's files in `dir`, or [`SLED_SEGMENT`] for new ones.
fn sled_segment(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("conf"))
        .ok()
        .and_then(|conf| {
            conf.lines()
                .find_map(|l| l.strip_prefix("segment_size: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(SLED_SEGMENT)
}

/// The embedded engine: a write-ahead log in front of sled.
///
/// The group commit stages its batches ([`Engine::stage`]): a frame in the
/// log ([`wal`](super::wal)), and after the sync that makes it durable, the
/// batch in sled, one key at a time (visible then; the store's readers stop
/// at the committed head). Other writes are a frame and an atomic sled
/// batch at once. A sync is one fdatasync of the log, then the staged
/// batches it covers. A checkpoint holds applies off, syncs the log, flushes
/// sled with the syncs its flush leaves out, and records how far sled is
/// durable. sled's buffers are larger than what is written between
/// checkpoints, so its files change mostly during one, and never hold a
/// batch the log may lose; an open applies again whatever frames follow the
/// last checkpoint, so a batch sled kept only in part is written whole again.
pub(crate) struct SledEngine {
    shared: Arc<Shared>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

/// Locks are taken in this order, never the reverse: `checkpointing`,
/// `applied`, the log's sync lock (inside [`Wal::sync`]), the log's
/// writer lock, `staged`.
pub(crate) struct Shared {
    db: sled::Db,
    log: sled::Tree,
    cursors: sled::Tree,
    links: sled::Tree,
    durable: Durable,
    wal: Wal,
    /// The records' bytes (sled holds a pointer to each).
    values: Values,
    /// Whether the next checkpoint looks for value files nothing points
    /// into any more (after a prune, and after an open).
    collect: AtomicBool,
    /// Whether anything was pruned since value files were last checked for
    /// records to write again, and when that was.
    pruned: AtomicBool,
    last_rewrite: parking_lot::Mutex<Option<Instant>>,
    /// What sled holds of the log. Held while anything is applied to sled
    /// (a staged batch after its sync, a write, a position change) and for
    /// the whole of a checkpoint, which so never races an apply.
    applied: parking_lot::Mutex<Applied>,
    /// Batches whose frames are written but not yet applied to sled, in
    /// the log's order: each is applied once a sync covers its frame, so
    /// sled never holds a batch the log may lose (pushed under the log's
    /// lock).
    staged: parking_lot::Mutex<VecDeque<Staged>>,
    /// One checkpoint at a time.
    checkpointing: parking_lot::Mutex<()>,
    signal: parking_lot::Mutex<Signal>,
    wake: parking_lot::Condvar,
    /// Set once a write, sync or checkpoint failed: nothing more is taken.
    failed: std::sync::OnceLock<String>,
}

/// What sled holds: its head marker. (How far it holds the log is worked
/// out at a checkpoint: every frame before the first staged one.)
#[derive(Clone, Copy)]
struct Applied {
    head: u64,
}

/// A batch whose frame is written, to be applied once durable.
struct Staged {
    /// Its frame, and where that frame starts.
    lsn: u64,
    start: At,
    set: WriteSet,
}

#[derive(Default)]
struct Signal {
    stop: bool,
    wanted: bool,
}

/// What sled's `flush` leaves out, done after it (see [`SledEngine::sync`]).
struct Durable {
    dir: std::path::PathBuf,
    /// The log file, opened again: an fsync covers the file whatever handle.
    db_file: std::fs::File,
    state: parking_lot::Mutex<DurableState>,
}

struct DurableState {
    /// The engine's directory (log, config, snapshots).
    top: Listing,
    /// The blob directory, and its blobs not yet fsynced complete.
    blobs: Listing,
    unsettled: BTreeSet<OsString>,
}

/// Whether a blob file is whole: sled writes it once (CRC32 of the kind
/// byte and the data, little-endian, then the kind byte, then the data) and
/// never changes it after.
fn blob_complete(path: &Path) -> std::io::Result<bool> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let Some((crc, rest)) = bytes.split_first_chunk::<4>() else {
        return Ok(false);
    };
    Ok(!rest.is_empty() && crc32fast::hash(rest) == u32::from_le_bytes(*crc))
}

fn lkey(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'L';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn rkey(seq: u64) -> [u8; 9] {
    let mut k = lkey(seq);
    k[0] = b'R';
    k
}

fn tkey(seq: u64) -> [u8; 9] {
    let mut k = lkey(seq);
    k[0] = b'T';
    k
}

fn xkey(expires: u64, seq: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'X';
    k[1..9].copy_from_slice(&expires.to_be_bytes());
    k[9..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The id index: by (publisher, id) with a get, by id with a prefix scan.
fn ikey(publisher: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(publisher.len() + id.len() + 2);
    k.push(b'I');
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k.extend_from_slice(publisher.as_bytes());
    k
}

/// `M` level index → a node of the log's Merkle tree.
fn mkey(level: u8, index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = b'M';
    k[1] = level;
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

/// `S` segment → the sequences a value file holds.
fn skey(segment: u32) -> [u8; 9] {
    let mut k = lkey(u64::from(segment));
    k[0] = b'S';
    k
}

const HEAD_KEY: &[u8] = b"H";
const FORMAT_KEY: &[u8] = b"V";
const LOG_KEY: &[u8] = b"G";
const NODE_KEY: &[u8] = b"N";

fn cursor_key(identity: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(identity.len() + name.len() + 1);
    k.extend_from_slice(identity.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

/// A value read from sled as shared bytes (no copy).
fn owned(v: sled::IVec) -> Bytes {
    Bytes::from_owner(v)
}

fn be_u64(b: &[u8]) -> Option<u64> {
    let a: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(a))
}

/// A position frame's payload: the space, the key's length and the key,
/// then (for a put) the value.
fn position_frame(space: Space, key: &[u8], value: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 4 + key.len() + value.map_or(0, <[u8]>::len));
    out.push(match space {
        Space::Subscriptions => b'C',
        Space::Links => b'P',
    });
    out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(key);
    if let Some(v) = value {
        out.extend_from_slice(v);
    }
    out
}

impl SledEngine {
    /// Opens (or creates) the engine's files in `dir`: sled's, and its
    /// write-ahead log in `dir/wal`, whose frames after the last checkpoint
    /// are applied again first.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<(SledEngine, Recovery), StoreError> {
        Self::open_sized(dir, cache_bytes, super::values::SEGMENT_BYTES)
    }

    /// [`SledEngine::open`], with value files of `value_bytes` each.
    fn open_sized(
        dir: &Path,
        cache_bytes: u64,
        value_bytes: u64,
    ) -> Result<(SledEngine, Recovery), StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .segment_size(sled_segment(dir))
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // Its own flusher writes and cleans in the background; the
            // checkpoints make what it holds durable.
            .flush_every_ms(None);
        // sled's background flusher lets go of the directory's file lock a
        // moment after the last handle is dropped, so a store closed and
        // reopened in one process (a node restarted in place) can find it
        // still held. Wait a bounded time for it; another process holding
        // the store is still refused, after the wait.
        let opening = Instant::now();
        let deadline = opening + Duration::from_secs(3);
        // (sled reports it as an `Other` I/O error with this text.)
        let locked = |e: &sled::Error| matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"));
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if locked(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) if locked(&e) => {
                    let store = dir.parent().unwrap_or(dir);
                    return Err(StoreError::Io(format!(
                        "{} is in use by another process (its lock is held): {e}",
                        store.display()
                    )));
                }
                Err(e) => return Err(io(e)),
            }
        };
        let log = db.open_tree("log").map_err(io)?;
        let cursors = db.open_tree("cursors").map_err(io)?;
        let links = db.open_tree("links").map_err(io)?;
        let db_file = std::fs::File::open(dir.join("db")).map_err(io)?;
        let durable = Durable {
            dir: dir.to_path_buf(),
            db_file,
            state: parking_lot::Mutex::new(DurableState {
                top: Listing::new(),
                blobs: Listing::new(),
                unsettled: BTreeSet::new(),
            }),
        };
        let from = read_head(&log)?;
        let sled_open = opening.elapsed();
        let values = Values::open(&dir.join("values"), value_bytes)?;
        let (wal, replayed) = Wal::open(&dir.join("wal"), SEGMENT_BYTES, |kind, payload| {
            replay(&values, &log, &cursors, &links, kind, payload)
        })?;
        let head = read_head(&log)?;
        // What an open costs, by step: sled's own recovery reads its log
        // since sled last opened; the replay is the tail since the checkpoint.
        tracing::debug!(
            sled_ms = sled_open.as_millis() as u64,
            replay_ms = (opening.elapsed() - sled_open).as_millis() as u64,
            frames = replayed.frames,
            "engine opened"
        );
        // sled's files must hold what the last checkpoint said they held.
        if head < replayed.checkpoint.head {
            return Err(StoreError::RolledBack {
                acknowledged: replayed.checkpoint.head,
                found: head,
            });
        }
        let shared = Arc::new(Shared {
            db,
            log,
            cursors,
            links,
            durable,
            wal,
            values,
            collect: AtomicBool::new(true),
            // Not at open: the scan of every pointer waits for a prune.
            pruned: AtomicBool::new(false),
            last_rewrite: parking_lot::Mutex::new(None),
            applied: parking_lot::Mutex::new(Applied { head }),
            staged: parking_lot::Mutex::new(VecDeque::new()),
            checkpointing: parking_lot::Mutex::new(()),
            signal: parking_lot::Mutex::new(Signal::default()),
            wake: parking_lot::Condvar::new(),
            failed: std::sync::OnceLock::new(),
        });
        // The files sled just created, and their names; the values of what
        // was applied again first, so that sled never points at bytes that
        // are not durable. (What was applied again is checkpointed by the
        // store once it accepted the log.)
        shared.values.sync()?;
        shared.flush_sled()?;
        let worker = shared.clone();
        let checkpointer = std::thread::Builder::new()
            .name("beacon-store-checkpoint".into())
            .spawn(move || worker.run_checkpoints())
            .map_err(io)?;
        Ok((
            SledEngine {
                shared,
                checkpointer: Some(checkpointer),
            },
            Recovery {
                frames: replayed.frames,
                from,
                to: head,
                cut: replayed.cut,
            },
        ))
    }
}

impl Drop for SledEngine {
    fn drop(&mut self) {
        self.shared.signal.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
    }
}

impl std::ops::Deref for SledEngine {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

fn read_head(log: &sled::Tree) -> Result<u64, StoreError> {
    match log.get(HEAD_KEY).map_err(io)? {
        Some(v) => be_u64(&v).ok_or_else(|| StoreError::Io("head marker is damaged".into())),
        None => Ok(0),
    }
}

/// Applies one frame of the log to sled again, at open. Every step is a put
/// or a removal of a whole value, so applying a frame sled already holds, in
/// whole or in part, leaves what the writer left.
fn replay(
    values: &Values,
    log: &sled::Tree,
    cursors: &sled::Tree,
    links: &sled::Tree,
    kind: Kind,
    payload: &[u8],
) -> Result<(), StoreError> {
    let damaged = || {
        StoreError::Torn("a frame of its write-ahead log passes its CRC but does not decode".into())
    };
    match kind {
        Kind::Batch => apply_each(values, log, WriteSet::decode(payload).ok_or_else(damaged)?),
        Kind::Put | Kind::Remove => {
            let (&space, rest) = payload.split_first().ok_or_else(damaged)?;
            let tree = match space {
                b'C' => cursors,
                b'P' => links,
                _ => return Err(damaged()),
            };
            let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(damaged)?;
            let len = u32::from_be_bytes(*len) as usize;
            if rest.len() < len {
                return Err(damaged());
            }
            let (key, value) = rest.split_at(len);
            match kind {
                Kind::Put => tree.insert(key, value).map(|_| ()).map_err(io),
                _ => tree.remove(key).map(|_| ()).map_err(io),
            }
        }
    }
}

/// Writes the batch's records to the value files and puts a pointer to
/// each in its place; returns what each value file it wrote to then holds
/// (segment, first and last sequence), to be put with the pointers.
fn place(
    values: &Values,
    log: &sled::Tree,
    set: &mut WriteSet,
) -> Result<Vec<(u32, u64, u64)>, StoreError> {
    if set.records.is_empty() {
        return Ok(Vec::new());
    }
    let refs: Vec<&[u8]> = set.records.iter().map(|(_, r)| r.as_slice()).collect();
    let pointers = values.put(&refs)?;
    let mut ranges: std::collections::BTreeMap<u32, (u64, u64)> = Default::default();
    for ((seq, r), p) in set.records.iter_mut().zip(&pointers) {
        *r = p.encode().to_vec();
        let e = ranges.entry(p.segment).or_insert((*seq, *seq));
        *e = (e.0.min(*seq), e.1.max(*seq));
    }
    let mut out = Vec::with_capacity(ranges.len());
    for (segment, (mut first, mut last)) in ranges {
        if let Some((f, l)) = segment_range(log, segment)? {
            (first, last) = (first.min(f), last.max(l));
        }
        out.push((segment, first, last));
    }
    Ok(out)
}

/// The sequences value file `segment` holds, as sled records them.
fn segment_range(log: &sled::Tree, segment: u32) -> Result<Option<(u64, u64)>, StoreError> {
    match log.get(skey(segment)).map_err(io)? {
        None => Ok(None),
        Some(v) => match (be_u64(&v), v.get(8..).and_then(be_u64)) {
            (Some(f), Some(l)) => Ok(Some((f, l))),
            _ => Err(StoreError::Io(format!(
                "the range of value file {segment} is damaged"
            ))),
        },
    }
}

/// The puts and removals of one batch, in order, handed to `op` (a put
/// with its value, a removal with none); `ranges` from [`place`].
fn each_op(
    set: WriteSet,
    ranges: Vec<(u32, u64, u64)>,
    mut op: impl FnMut(&[u8], Option<sled::IVec>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for (segment, first, last) in ranges {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&first.to_be_bytes());
        v[8..].copy_from_slice(&last.to_be_bytes());
        op(&skey(segment), Some(v.as_slice().into()))?;
    }
    for (seq, record) in set.records {
        op(&lkey(seq), Some(record.into()))?;
    }
    for (seq, successor) in set.successors {
        op(&rkey(seq), Some(successor.into()))?;
    }
    for (expires, seq) in set.expiries {
        op(&xkey(expires, seq), Some(sled::IVec::default()))?;
    }
    for p in set.pruned {
        op(&tkey(p.seq), Some(p.tombstone.into()))?;
        op(&lkey(p.seq), None)?;
        op(&rkey(p.seq), None)?;
        if let Some(expires) = p.expires {
            op(&xkey(expires, p.seq), None)?;
        }
    }
    for (publisher, id, entry) in set.index {
        op(&ikey(&publisher, &id), Some(entry.into()))?;
    }
    for (level, index, hash) in set.tree {
        op(&mkey(level, index), Some(hash.as_slice().into()))?;
    }
    if let Some(head) = set.head {
        op(HEAD_KEY, Some(head.to_be_bytes().as_slice().into()))?;
    }
    if let Some(format) = set.format {
        op(FORMAT_KEY, Some(format.to_be_bytes().as_slice().into()))?;
    }
    if let Some(log_info) = set.log {
        op(LOG_KEY, Some(log_info.into()))?;
    }
    if let Some(node) = set.node {
        op(NODE_KEY, Some(node.into()))?;
    }
    Ok(())
}

/// Writes one batch into sled, atomically (sled seals and writes its buffer
/// for it: not for the group commit, see [`SledEngine::stage`]).
fn apply(values: &Values, log: &sled::Tree, mut set: WriteSet) -> Result<(), StoreError> {
    let ranges = place(values, log, &mut set)?;
    let mut batch = sled::Batch::default();
    each_op(set, ranges, |k, v| {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
        Ok(())
    })?;
    log.apply_batch(batch).map_err(io)
}

/// Writes one batch into sled one key at a time: for a batch whose frame is
/// durable, which an open applies again whole if sled kept only part of it.
fn apply_each(values: &Values, log: &sled::Tree, mut set: WriteSet) -> Result<(), StoreError> {
    let ranges = place(values, log, &mut set)?;
    each_op(set, ranges, |k, v| {
        match v {
            Some(v) => log.insert(k, v).map(|_| ()),
            None => log.remove(k).map(|_| ()),
        }
        .map_err(io)
    })
}

impl Shared {
    fn space(&self, space: Space) -> &sled::Tree {
        match space {
            Space::Subscriptions => &self.cursors,
            Space::Links => &self.links,
        }
    }

    /// Values of `lo..=hi` (keys of one prefix and a sequence), by sequence.
    fn seq_range(&self, lo: [u8; 9], hi: [u8; 9]) -> RecordIter<'_> {
        if lo > hi {
            return Box::new(std::iter::empty());
        }
        Box::new(self.log.range(lo..=hi).map(|item| {
            let (k, v) = item.map_err(io)?;
            let seq = k
                .get(1..)
                .and_then(be_u64)
                .ok_or_else(|| StoreError::Io("bad log key".into()))?;
            Ok((seq, owned(v)))
        }))
    }

    /// A record whose value file was not there: pruned meanwhile (its file
    /// removed once nothing pointed into it), or the file is missing.
    fn gone(&self, seq: u64, p: &Pointer) -> Result<Option<Bytes>, StoreError> {
        match self.log.get(lkey(seq)).map_err(io)? {
            None => Ok(None),
            Some(v) if Pointer::decode(&v) == Some(*p) => Err(StoreError::Corrupt {
                seq,
                reason: format!(
                    "its value file (values/{}) is missing",
                    super::values::name(p.segment)
                ),
            }),
            // Written again elsewhere meanwhile: read it there.
            Some(v) => match Pointer::decode(&v) {
                None => Ok(Some(owned(v))),
                Some(q) => self
                    .values
                    .get(seq, &q)?
                    .map_or_else(|| self.gone(seq, &q), |b| Ok(Some(b))),
            },
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(why) => Err(StoreError::Io(why.clone())),
            None => Ok(()),
        }
    }

    /// Records the first failure; the log takes nothing more.
    fn fail(&self, what: &str, e: &StoreError) -> StoreError {
        let why = format!("{what} failed: {e}");
        self.wal.lock().fail(&why);
        let _ = self.failed.set(why);
        e.clone()
    }

    /// Appends a frame, under the log's lock `w` (a failed append marks the
    /// log failed itself, so this must not take the lock again).
    fn append(
        &self,
        w: &mut super::wal::State,
        kind: Kind,
        payload: &[u8],
    ) -> Result<u64, StoreError> {
        w.append(kind, payload).map_err(|e| {
            let _ = self.failed.set(format!("write failed: {e}"));
            e
        })
    }

    /// Takes checkpoints until the engine is dropped: every
    /// [`CHECKPOINT_EVERY`] while anything was written, and whenever
    /// [`CHECKPOINT_BYTES`] of the log lie beyond the last one.
    fn run_checkpoints(&self) {
        loop {
            {
                let mut s = self.signal.lock();
                if !s.stop && !s.wanted {
                    self.wake.wait_for(&mut s, CHECKPOINT_EVERY);
                }
                if s.stop {
                    return;
                }
                s.wanted = false;
            }
            if self.failed.get().is_some() {
                continue;
            }
            if let Err(e) = self.checkpoint() {
                tracing::error!(error = %e, "the store's checkpoint failed; refusing further writes until a restart");
                continue;
            }
            let due = self
                .last_rewrite
                .lock()
                .is_none_or(|t| t.elapsed() >= REWRITE_EVERY);
            if due && self.pruned.swap(false, Ordering::Relaxed) {
                *self.last_rewrite.lock() = Some(Instant::now());
                match self.rewrite_sparse() {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        files = n,
                        "value files mostly pruned: their remaining records written again, the files go at the next checkpoint"
                    ),
                    Err(e) => {
                        let e = self.fail("rewrite of mostly pruned value files", &e);
                        tracing::error!(error = %e, "writing mostly pruned value files again failed; refusing further writes until a restart");
                    }
                }
            }
        }
    }

    /// Writes again the records still in value files that are mostly
    /// pruned (their records take less than half the file), so that the
    /// files can go: retention prunes by expiry and by label, not in the
    /// order records were written, and one long-lived record would
    /// otherwise keep a whole file. Returns how many files it emptied.
    ///
    /// The live bytes of each file are counted by one scan of the
    /// pointers, without holding writes off; each file is then written
    /// again under the `applied` lock, from its pointers as they are then
    /// (a record pruned meanwhile is not brought back), as ordinary frames
    /// of the log (an open applies them again like any other), after the
    /// staged batches.
    fn rewrite_sparse(&self) -> Result<usize, StoreError> {
        self.check()?;
        let mut live: std::collections::HashMap<u32, u64> = Default::default();
        for item in self.log.range(lkey(0)..=lkey(u64::MAX)) {
            let (_, v) = item.map_err(io)?;
            if let Some(p) = Pointer::decode(&v) {
                *live.entry(p.segment).or_default() += u64::from(p.len);
            }
        }
        let dir = self.durable.dir.join("values");
        let mut emptied = 0;
        for segment in Values::list(&dir)? {
            if Some(segment) == self.values.current() {
                continue;
            }
            let held = live.get(&segment).copied().unwrap_or(0);
            let size = std::fs::metadata(dir.join(super::values::name(segment)))
                .map(|m| m.len())
                .unwrap_or(0);
            if held == 0 || held.saturating_mul(2) >= size {
                continue;
            }
            self.rewrite_file(segment)?;
            emptied += 1;
        }
        if emptied > 0 {
            self.collect.store(true, Ordering::Relaxed);
            self.signal.lock().wanted = true;
            self.wake.notify_all();
        }
        Ok(emptied)
    }

    /// Writes the records still in value file `segment` again (into the
    /// file being written), in frames of up to [`REWRITE_FRAME`] bytes.
    fn rewrite_file(&self, segment: u32) -> Result<(), StoreError> {
        let mut applied = self.applied.lock();
        let mut again = |records| {
            let set = WriteSet {
                records,
                ..Default::default()
            };
            self.write_locked(&mut applied, set)
        };
        let Some((first, last)) = segment_range(&self.log, segment)? else {
            return Ok(());
        };
        let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut bytes = 0;
        for item in self.log.range(lkey(first)..=lkey(last)) {
            let (k, v) = item.map_err(io)?;
            let Some(p) = Pointer::decode(&v).filter(|p| p.segment == segment) else {
                continue;
            };
            let seq = k
                .get(1..)
                .and_then(be_u64)
                .ok_or_else(|| StoreError::Io("bad log key".into()))?;
            let Some(value) = self.values.get(seq, &p)? else {
                continue;
            };
            bytes += value.len();
            records.push((seq, value.to_vec()));
            if bytes >= REWRITE_FRAME {
                again(std::mem::take(&mut records))?;
                bytes = 0;
            }
        }
        if !records.is_empty() {
            again(records)?;
        }
        Ok(())
    }

    /// [`Engine::write`], under the `applied` lock: the staged batches
    /// before it made durable and applied first (sled takes batches in the
    /// log's order), then its frame, then the batch in sled, atomically.
    fn write_locked(&self, applied: &mut Applied, set: WriteSet) -> Result<(), StoreError> {
        if !self.staged.lock().is_empty() {
            let upto = self.sync_log()?;
            self.apply_staged(applied, upto)?;
        }
        let payload = set.encode();
        let beyond = {
            let mut w = self.wal.lock();
            self.append(&mut w, Kind::Batch, &payload)?;
            w.since_checkpoint()
        };
        // A batch of records is durable in the log before sled points at
        // its values: an open then writes them again if they were lost.
        if !set.records.is_empty() {
            self.sync_log()?;
        }
        if !set.pruned.is_empty() {
            self.collect.store(true, Ordering::Relaxed);
            self.pruned.store(true, Ordering::Relaxed);
        }
        let head = set.head;
        apply(&self.values, &self.log, set).map_err(|e| self.fail("write", &e))?;
        if let Some(h) = head {
            applied.head = h;
        }
        self.want_checkpoint(beyond);
        Ok(())
    }

    /// Makes every frame written so far durable (one fdatasync per segment
    /// written since the last sync; none if nothing was); returns the last
    /// frame covered.
    fn sync_log(&self) -> Result<u64, StoreError> {
        self.check()?;
        self.wal
            .sync()
            .map_err(|e| self.fail("sync of the write-ahead log", &e))
    }

    /// Applies to sled, in order, the staged batches whose frames lie at
    /// or before `upto` (durable).
    fn apply_staged(&self, applied: &mut Applied, upto: u64) -> Result<(), StoreError> {
        loop {
            let next = {
                let mut staged = self.staged.lock();
                match staged.front() {
                    Some(s) if s.lsn <= upto => staged.pop_front(),
                    _ => None,
                }
            };
            let Some(staged) = next else {
                return Ok(());
            };
            let head = staged.set.head;
            apply_each(&self.values, &self.log, staged.set).map_err(|e| self.fail("write", &e))?;
            if let Some(h) = head {
                applied.head = h;
            }
        }
    }

    /// Wakes the checkpointer once `beyond` bytes of log lie past the last
    /// checkpoint ([`CHECKPOINT_BYTES`]).
    fn want_checkpoint(&self, beyond: u64) {
        if beyond > CHECKPOINT_BYTES {
            self.signal.lock().wanted = true;
            self.wake.notify_all();
        }
    }

    /// Where the log stands for sled (under the `applied` lock, so no apply
    /// runs): sled holds every frame before the first staged batch, or all
    /// of them.
    fn held(&self) -> (u64, At) {
        let w = self.wal.lock();
        match self.staged.lock().front() {
            Some(s) => (s.lsn - 1, s.start),
            None => w.position(),
        }
    }

    /// sled's flush and what it leaves out, then the checkpoint record:
    /// from then on, an open starts after what sled held before the flush.
    fn checkpoint(&self) -> Result<(), StoreError> {
        let _one = self.checkpointing.lock();
        self.check()?;
        let mut applied = self.applied.lock();
        let last = self.wal.last_checkpoint();
        if self.held().0 <= last.lsn {
            return Ok(());
        }
        // Every frame sled holds is durable before sled is flushed; the
        // staged batches that sync covers go in too.
        let upto = self.sync_log()?;
        self.apply_staged(&mut applied, upto)?;
        let (lsn, next) = self.held();
        // Value files no durable pointer will point into once sled is
        // flushed: removed only after the checkpoint that records it.
        let dead = match self.collect.swap(false, Ordering::Relaxed) {
            true => self
                .dead_values()
                .map_err(|e| self.fail("checkpoint", &e))?,
            false => Vec::new(),
        };
        // The values sled points at are durable before sled is.
        self.values
            .sync()
            .and_then(|()| self.flush_sled())
            .and_then(|()| {
                self.wal.checkpoint(Checkpoint {
                    lsn,
                    next,
                    head: applied.head,
                })
            })
            .map_err(|e| self.fail("checkpoint", &e))?;
        drop(applied);
        self.values
            .remove(&dead)
            .map_err(|e| self.fail("removal of value files", &e))?;
        if !dead.is_empty() {
            tracing::debug!(
                files = dead.len(),
                "value files nothing points into removed"
            );
        }
        Ok(())
    }

    /// The value files that nothing in sled points into (under the
    /// `applied` lock, so nothing is applied meanwhile), their ranges
    /// removed from sled: those whose records were all pruned or written
    /// again elsewhere (an open applies the frames after the last
    /// checkpoint again, into a new file), and files sled has no range of
    /// (a file whose first batch was cut by a crash). Never the file being
    /// written.
    fn dead_values(&self) -> Result<Vec<u32>, StoreError> {
        let current = self.values.current();
        let mut dead = Vec::new();
        let dir = self.durable.dir.join("values");
        for segment in Values::list(&dir)? {
            if Some(segment) == current {
                continue;
            }
            let Some((first, last)) = segment_range(&self.log, segment)? else {
                dead.push(segment);
                continue;
            };
            let mut live = false;
            for item in self.log.range(lkey(first)..=lkey(last)) {
                let (_, v) = item.map_err(io)?;
                if Pointer::decode(&v).is_some_and(|p| p.segment == segment) {
                    live = true;
                    break;
                }
            }
            if !live {
                self.log.remove(skey(segment)).map_err(io)?;
                dead.push(segment);
            }
        }
        Ok(dead)
    }

    /// sled's `flush` is not enough on its own. On Linux it ends in
    /// `sync_file_range`, which writes the pages but neither the file's size
    /// nor the disk's write cache; it never fsyncs the blob files that hold
    /// large values, nor any directory. A power cut then loses what it
    /// reported flushed (`tests/it/power_loss.rs` showed it; docs/RELIABILITY.md).
    /// So after it: `fdatasync` of the log file; an fsync of each blob file
    /// once it is whole (a blob still being written belongs to a write that
    /// this flush does not cover: every write it covers had finished, blobs
    /// included, before it began); and an fsync of each directory whose names
    /// changed (blobs, snapshots renamed into place, old ones removed).
    fn flush_sled(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(io)?;
        let d = &self.durable;
        d.db_file.sync_data().map_err(io)?;
        let mut st = d.state.lock();
        let st = &mut *st;
        let blob_dir = d.dir.join("blobs");
        let (new, names) = st.blobs.sync(&blob_dir).map_err(io)?;
        st.unsettled.extend(new);
        st.unsettled.retain(|n| names.contains(n));
        let mut settled = Vec::new();
        for name in &st.unsettled {
            let path = blob_dir.join(name);
            if blob_complete(&path).map_err(io)? {
                sync_file(&path).map_err(io)?;
                settled.push(name.clone());
            }
        }
        for name in settled {
            st.unsettled.remove(&name);
        }
        let (new, _) = st.top.sync(&d.dir).map_err(io)?;
        for name in new {
            let path = d.dir.join(&name);
            if path.is_file() {
                sync_file(&path).map_err(io)?;
            }
        }
        Ok(())
    }
}

/// Records of a range, their values read a run at a time: the pointers of
/// up to [`RESOLVE_RUN`] records, then one read per run of adjacent values.
struct Resolve<'a> {
    shared: &'a Shared,
    keys: RecordIter<'a>,
    ready: VecDeque<Result<(u64, Bytes), StoreError>>,
    /// The keys are exhausted, or an error was met (it ends the iteration).
    done: bool,
}

/// Records whose pointers are read before their values are.
const RESOLVE_RUN: usize = 256;

impl Resolve<'_> {
    fn fill(&mut self) {
        let mut run: Vec<(u64, Pointer)> = Vec::new();
        // Records kept inline (format 7) between pointers keep their place.
        let mut order: Vec<Result<(u64, Option<Bytes>), StoreError>> = Vec::new();
        while run.len() < RESOLVE_RUN {
            match self.keys.next() {
                None => {
                    self.done = true;
                    break;
                }
                Some(Err(e)) => {
                    order.push(Err(e));
                    self.done = true;
                    break;
                }
                Some(Ok((seq, v))) => match Pointer::decode(&v) {
                    Some(p) => {
                        run.push((seq, p));
                        order.push(Ok((seq, None)));
                    }
                    None => order.push(Ok((seq, Some(v)))),
                },
            }
        }
        let mut values = match self.shared.values.get_run(&run) {
            Ok(v) => v.into_iter().zip(run),
            Err(e) => {
                self.ready.push_back(Err(e));
                self.done = true;
                return;
            }
        };
        for item in order {
            let out = match item {
                Err(e) => Err(e),
                Ok((seq, Some(inline))) => Ok((seq, inline)),
                Ok((seq, None)) => match values.next() {
                    Some((Some(bytes), _)) => Ok((seq, bytes)),
                    Some((None, (_, p))) => match self.shared.gone(seq, &p) {
                        Ok(Some(bytes)) => Ok((seq, bytes)),
                        Ok(None) => continue, // pruned meanwhile
                        Err(e) => Err(e),
                    },
                    None => Err(StoreError::Io("a record's value was not read".into())),
                },
            };
            let stop = out.is_err();
            self.ready.push_back(out);
            if stop {
                self.done = true;
                return;
            }
        }
    }
}

impl Iterator for Resolve<'_> {
    type Item = Result<(u64, Bytes), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.ready.is_empty() && !self.done {
            self.fill();
        }
        self.ready.pop_front()
    }
}

impl Engine for SledEngine {
    fn head(&self) -> Result<u64, StoreError> {
        read_head(&self.log)
    }

    fn format(&self) -> Result<Option<u32>, StoreError> {
        match self.log.get(FORMAT_KEY).map_err(io)? {
            None => Ok(None),
            Some(v) => <[u8; 4]>::try_from(v.as_ref())
                .map(|b| Some(u32::from_be_bytes(b)))
                .map_err(|_| StoreError::Io("format marker is damaged".into())),
        }
    }

    fn log(&self) -> Result<Option<Bytes>, StoreError> {
        Ok(self.log.get(LOG_KEY).map_err(io)?.map(owned))
    }

    fn node(&self) -> Result<Option<Bytes>, StoreError> {
        Ok(self.log.get(NODE_KEY).map_err(io)?.map(owned))
    }

    fn last_record(&self) -> Result<Option<u64>, StoreError> {
        let last = |lo: [u8; 9], hi: [u8; 9]| -> Result<Option<u64>, StoreError> {
            Ok(self
                .log
                .range(lo..=hi)
                .next_back()
                .transpose()
                .map_err(io)?
                .and_then(|(k, _)| be_u64(&k[1..])))
        };
        let records = last(lkey(0), lkey(u64::MAX))?;
        let tombstones = last(tkey(0), tkey(u64::MAX))?;
        Ok(records.max(tombstones))
    }

    fn record(&self, seq: u64) -> Result<Option<Bytes>, StoreError> {
        let Some(v) = self.log.get(lkey(seq)).map_err(io)? else {
            return Ok(None);
        };
        let Some(p) = Pointer::decode(&v) else {
            return Ok(Some(owned(v))); // kept inline (format 7)
        };
        match self.values.get(seq, &p)? {
            Some(bytes) => Ok(Some(bytes)),
            None => self.gone(seq, &p),
        }
    }

    fn records(&self, from: u64, to: u64) -> RecordIter<'_> {
        Box::new(Resolve {
            shared: self,
            keys: self.seq_range(lkey(from), lkey(to)),
            ready: VecDeque::new(),
            done: false,
        })
    }

    fn tombstone(&self, seq: u64) -> Result<Option<Bytes>, StoreError> {
        Ok(self.log.get(tkey(seq)).map_err(io)?.map(owned))
    }

    fn tombstones(&self, from: u64, to: u64) -> RecordIter<'_> {
        self.seq_range(tkey(from), tkey(to))
    }

    fn expiring(
        &self,
        from: (u64, u64),
        until: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut out = Vec::new();
        let (lo, hi) = (xkey(from.0, from.1), xkey(until, u64::MAX));
        if lo > hi {
            return Ok(out);
        }
        for item in self.log.range(lo..=hi).take(limit) {
            let (k, _) = item.map_err(io)?;
            match (k.get(1..9).and_then(be_u64), k.get(9..).and_then(be_u64)) {
                (Some(at), Some(seq)) => out.push((at, seq)),
                _ => return Err(StoreError::Io("bad expiry key".into())),
            }
        }
        Ok(out)
    }

    fn successors(&self, from: u64, to: u64) -> Result<Vec<(u64, Bytes)>, StoreError> {
        if from > to {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for item in self.log.range(rkey(from)..=rkey(to)) {
            let (k, v) = item.map_err(io)?;
            let seq = k
                .get(1..)
                .and_then(be_u64)
                .ok_or_else(|| StoreError::Io("bad successor key".into()))?;
            out.push((seq, owned(v)));
        }
        Ok(out)
    }

    fn index(&self, publisher: &str, id: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.log.get(ikey(publisher, id)).map_err(io)?.map(owned))
    }

    fn index_by_id(&self, id: &str, limit: usize) -> Result<Vec<(String, Bytes)>, StoreError> {
        let prefix = ikey("", id); // I <id> 0x00
        let mut out = Vec::new();
        for item in self.log.scan_prefix(&prefix).take(limit) {
            let (k, v) = item.map_err(io)?;
            let publisher = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.push((publisher, owned(v)));
        }
        Ok(out)
    }

    /// One frame in the write-ahead log (durable at the next sync), then
    /// the batch in sled, atomically and visible at once: for writes other
    /// than the group commit's (markers, prunes, upgrades, restores). Staged
    /// batches before it are made durable and applied first, so sled takes
    /// batches in the log's order.
    fn write(&self, set: WriteSet) -> Result<(), StoreError> {
        self.check()?;
        let mut applied = self.applied.lock();
        self.write_locked(&mut applied, set)
    }

    /// One frame in the write-ahead log; the batch goes to sled after the
    /// sync that makes the frame durable (its writes one by one: the frame
    /// is what makes them atomic, and an open applies it again whole). So
    /// nothing sled writes to its files (a checkpoint, or a buffer that
    /// filled) holds a batch the log may lose, and no batch seals sled's
    /// buffer (sled's own atomic batches write a buffer each).
    fn stage(&self, set: WriteSet) -> Result<(), StoreError> {
        self.check()?;
        let payload = set.encode();
        let beyond = {
            let mut w = self.wal.lock();
            let (_, start) = w.position();
            let lsn = self.append(&mut w, Kind::Batch, &payload)?;
            self.staged.lock().push_back(Staged { lsn, start, set });
            w.since_checkpoint()
        };
        self.want_checkpoint(beyond);
        Ok(())
    }

    /// One `fdatasync` of the log (every frame written before the call),
    /// then the staged batches it covers go to sled.
    fn sync(&self) -> Result<(), StoreError> {
        let upto = self.sync_log()?;
        let mut applied = self.applied.lock();
        self.apply_staged(&mut applied, upto)
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        self.shared.checkpoint()
    }

    fn cursor(
        &self,
        space: Space,
        identity: &str,
        name: &str,
    ) -> Result<Option<Position>, StoreError> {
        Ok(self
            .space(space)
            .get(cursor_key(identity, name))
            .map_err(io)?
            .and_then(|v| Position::decode(&v)))
    }

    fn advance_cursor(
        &self,
        space: Space,
        identity: &str,
        name: &str,
        pos: Position,
    ) -> Result<(), StoreError> {
        self.check()?;
        let key = cursor_key(identity, name);
        // Never during a checkpoint; and under the log's lock, so frames of
        // one key are in the order sled took them.
        let _applied = self.applied.lock();
        let mut w = self.wal.lock();
        let new = self
            .space(space)
            .update_and_fetch(&key, |old| {
                let old = old.and_then(Position::decode);
                Some(Position::advanced(old, pos).encode())
            })
            .map_err(io)?;
        if let Some(v) = new {
            self.append(&mut w, Kind::Put, &position_frame(space, &key, Some(&v)))?;
        }
        Ok(())
    }

    fn remove_cursor(&self, space: Space, identity: &str, name: &str) -> Result<(), StoreError> {
        self.check()?;
        let key = cursor_key(identity, name);
        let _applied = self.applied.lock();
        let mut w = self.wal.lock();
        self.space(space).remove(&key).map_err(io)?;
        self.append(&mut w, Kind::Remove, &position_frame(space, &key, None))
            .map(|_| ())
    }

    fn cursors(&self, space: Space) -> Result<Vec<(String, String, Position)>, StoreError> {
        let mut out = Vec::new();
        for item in self.space(space).iter() {
            let (k, v) = item.map_err(io)?;
            let mut parts = k.splitn(2, |b| *b == 0);
            let identity = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let pos = Position::decode(&v).unwrap_or(Position { seq: 0, log: None });
            out.push((identity, name, pos));
        }
        Ok(out)
    }

    /// sled's files, the value files and the write-ahead log's segments.
    fn size_on_disk(&self) -> u64 {
        let d = &self.durable.dir;
        self.db.size_on_disk().unwrap_or(0)
            + dir_bytes(&d.join("wal"))
            + dir_bytes(&d.join("values"))
    }

    fn tree_node(&self, level: u8, index: u64) -> Result<Option<[u8; 32]>, StoreError> {
        match self.log.get(mkey(level, index)).map_err(io)? {
            None => Ok(None),
            Some(v) => <[u8; 32]>::try_from(v.as_ref())
                .map(Some)
                .map_err(|_| StoreError::Io(format!("tree node {level}/{index} is damaged"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::Pruned;

    fn rec(seq: u64) -> (u64, Vec<u8>) {
        (seq, format!("record {seq} ").repeat(20).into_bytes())
    }

    fn files(dir: &Path) -> Vec<u32> {
        Values::list(&dir.join("values")).unwrap()
    }

    /// Stages `records` in batches of 25, each synced (so applied).
    fn load(e: &SledEngine, records: &[(u64, Vec<u8>)]) {
        for chunk in records.chunks(25) {
            e.stage(WriteSet {
                records: chunk.to_vec(),
                head: chunk.last().map(|r| r.0),
                ..Default::default()
            })
            .unwrap();
            e.sync().unwrap();
        }
    }

    fn all(e: &SledEngine, from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
        e.records(from, to)
            .map(|r| r.map(|(s, b)| (s, b.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Records live in value files (sled holds pointers), read back one by
    /// one and as ranges across files; a file is removed once every record
    /// in it is pruned, at the checkpoint after; a reopen reads them all
    /// again, and writes to a new file.
    #[test]
    fn records_live_in_value_files_which_go_once_nothing_points_into_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let want: Vec<(u64, Vec<u8>)> = (1..=300).map(rec).collect();
        {
            let (e, _) = SledEngine::open_sized(d, 1 << 20, 16 << 10).unwrap();
            load(&e, &want);
            let raw = e.log.get(lkey(7)).unwrap().unwrap();
            assert_eq!(
                raw.len(),
                super::super::values::POINTER,
                "sled holds a pointer"
            );
            assert_eq!(all(&e, 1, 300), want);
            assert_eq!(e.record(150).unwrap().as_deref(), Some(&want[149].1[..]));
            e.checkpoint().unwrap();
            let before = files(d);
            assert!(before.len() >= 4, "{before:?}");
            // Prune the first 200.
            e.write(WriteSet {
                pruned: (1..=200)
                    .map(|seq| Pruned {
                        seq,
                        tombstone: b"t".to_vec(),
                        expires: None,
                    })
                    .collect(),
                ..Default::default()
            })
            .unwrap();
            e.checkpoint().unwrap();
            let after = files(d);
            assert!(after.len() < before.len(), "{before:?} -> {after:?}");
            assert_eq!(all(&e, 1, 300), want[200..].to_vec());
            assert_eq!(e.record(10).unwrap(), None);
            // The first file that still holds a record is kept.
            let first_live = Pointer::decode(&e.log.get(lkey(201)).unwrap().unwrap()).unwrap();
            assert!(after.contains(&first_live.segment));
            assert!(!after.contains(&before[0]));
        }
        let (e, _) = SledEngine::open_sized(d, 1 << 20, 16 << 10).unwrap();
        assert_eq!(all(&e, 1, 300), want[200..].to_vec());
        let last = *files(d).last().unwrap();
        e.write(WriteSet {
            records: vec![rec(301)],
            head: Some(301),
            ..Default::default()
        })
        .unwrap();
        let p = Pointer::decode(&e.log.get(lkey(301)).unwrap().unwrap()).unwrap();
        assert!(p.segment > last, "a reopen writes to a new file");
        // A record kept inline by a format-7 store reads as it is, in order.
        e.log.insert(lkey(302), &b"inline record"[..]).unwrap();
        let got = all(&e, 299, 302);
        assert_eq!(
            got.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![299, 300, 301, 302]
        );
        assert_eq!(got[3].1, b"inline record");
    }

    /// Files whose records were mostly pruned are written again (what is
    /// left of them, into the current file), so that they go at the next
    /// checkpoint; nothing pruned comes back, and a reopen reads the same.
    #[test]
    fn mostly_pruned_files_are_written_again_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let all_records: Vec<(u64, Vec<u8>)> = (1..=300).map(rec).collect();
        let kept: Vec<(u64, Vec<u8>)> = all_records
            .iter()
            .filter(|(seq, _)| seq % 40 == 0)
            .cloned()
            .collect();
        {
            let (e, _) = SledEngine::open_sized(d, 1 << 20, 16 << 10).unwrap();
            load(&e, &all_records);
            e.checkpoint().unwrap();
            let before = files(d);
            e.write(WriteSet {
                pruned: all_records
                    .iter()
                    .filter(|(seq, _)| seq % 40 != 0)
                    .map(|(seq, _)| Pruned {
                        seq: *seq,
                        tombstone: b"t".to_vec(),
                        expires: None,
                    })
                    .collect(),
                ..Default::default()
            })
            .unwrap();
            let emptied = e.rewrite_sparse().unwrap();
            assert!(emptied >= before.len() - 1, "{emptied} of {before:?}");
            e.checkpoint().unwrap();
            let after = files(d);
            // Only the file being written (which took what was left) stays.
            assert!(
                after
                    .iter()
                    .all(|f| !before.contains(f) || Some(*f) == e.values.current()),
                "{before:?} -> {after:?}"
            );
            assert_eq!(all(&e, 1, 300), kept);
            assert_eq!(e.record(39).unwrap(), None);
            assert_eq!(e.record(40).unwrap().as_deref(), Some(&kept[0].1[..]));
            // Nothing more to do.
            assert_eq!(e.rewrite_sparse().unwrap(), 0);
        }
        let (e, _) = SledEngine::open_sized(d, 1 << 20, 16 << 10).unwrap();
        assert_eq!(all(&e, 1, 300), kept);
    }

    /// Frames after the last checkpoint are applied again at an open: their
    /// values go to a new file, and the file they were in before (written,
    /// never synced) is removed at the next checkpoint.
    #[test]
    fn an_open_writes_the_tail_again_and_drops_the_file_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let want: Vec<(u64, Vec<u8>)> = (1..=20).map(rec).collect();
        {
            let (e, _) = SledEngine::open_sized(d, 1 << 20, 1 << 20).unwrap();
            e.stage(WriteSet {
                records: want.clone(),
                head: Some(20),
                ..Default::default()
            })
            .unwrap();
            e.sync().unwrap();
            // Stopped before any checkpoint covered the batch (what an
            // unclean stop leaves): the checkpointer is stopped first.
            e.shared.signal.lock().stop = true;
            e.shared.wake.notify_all();
            let mut e = e;
            if let Some(t) = e.checkpointer.take() {
                t.join().unwrap();
            }
        }
        let first = files(d);
        let (e, r) = SledEngine::open_sized(d, 1 << 20, 1 << 20).unwrap();
        assert!(r.frames >= 1, "the batch was applied again");
        assert_eq!(all(&e, 1, 20), want);
        e.write(WriteSet {
            head: Some(20),
            ..Default::default()
        })
        .unwrap();
        e.checkpoint().unwrap();
        let now = files(d);
        assert!(
            first.iter().all(|f| !now.contains(f)),
            "{first:?} -> {now:?}"
        );
        assert_eq!(all(&e, 1, 20), want);
    }
}
