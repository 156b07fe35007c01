//! The durable log: gapless sequences, deduplication by (publisher, id),
//! a pipelined group commit, a committed head, and checked reads.
//!
//! # Files
//! - `mod.rs`: [`Store`], the log's interface to the rest of the node.
//! - `record.rs`: the stored forms (record with CRC32 trailer, tombstone,
//!   index entry, successor).
//! - `upgrade.rs`: in-place upgrades of older formats ([`FORMAT`]), at open.
//! - `tree.rs`: the log's Merkle tree (leaves and nodes written with the
//!   records they commit to), tree heads and proofs.
//! - `retention.rs`: which records are due to be pruned, and the background
//!   task that prunes them in bounded steps.
//! - `backup.rs`: online backup, verified restore, and compaction.
//! - `commit.rs`: the group commit (applier and flusher threads) and the
//!   acknowledged-head file.
//! - `engine.rs`: what the log asks of a storage engine: records, successors,
//!   the index, markers, two spaces of positions (subscription cursors,
//!   peer-link positions), atomic writes, a sync and a checkpoint;
//!   `sled_engine.rs`, the embedded engine, `wal.rs`, its write-ahead
//!   log, and `values.rs`, its value files (records' bytes out of sled's
//!   pages). Nothing outside this module knows which engine holds the bytes,
//!   and only `sled_engine.rs` touches sled; `engine::open` is the one place
//!   that names an engine.
//! - `contract.rs`: what every engine must do, as tests any engine runs.
//!
//! # Writing
//! A pipelined group commit on two threads. The applier takes every request
//! waiting (up to a batch limit), decides each against the id index
//! (duplicate, conflict or new), assigns gapless sequence numbers and writes
//! one atomic batch (records, index entries, head) to the engine. The
//! flusher syncs the engine (on the embedded engine, one fdatasync of its
//! write-ahead log) and only then answers every request the sync covers and
//! moves the committed head (a `watch` the rest of the process follows).
//! While batch N is being synced, batch N+1 is applied. Cursor writes share
//! the syncs. Index entries written before the payload digest was kept are
//! 40 bytes; they simply lack the "same bulletin signed again" check.
//!
//! # Reading
//! Every record ends with a CRC32 over all its bytes (checked on every read)
//! and carries the SHA-256 digest of its envelope (checked by [`Store::served`]
//! before any envelope leaves the node; records a reader only filters past are
//! not hashed). A record that fails is reported (error, log line, counter),
//! never served. Nothing beyond the committed head is visible.

pub mod backup;
mod commit;
mod contract;
mod durable;
mod engine;
pub use engine::Duty;
mod pg_engine;
mod record;
pub mod retention;
mod sled_engine;
mod tree;
mod upgrade;
mod values;
mod wal;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tracing::error;

use crate::domain::bulletin::Meta;
use commit::{Committer, Watermark};
use engine::{Engine, Space};
pub use record::{
    leaf_entry, Fork, LogId, LogInfo, Position, Record, Replaced, Successor, Tombstone,
};

/// The store's format: what its records, index entries and keys mean.
/// 1: before the format was recorded. 2: index entries carry the bulletin
/// that superseded or retracted them. 3: records carry `expires_at` and
/// have expiry entries; pruned records leave tombstones. 4: acceptance
/// times leave each record its span (distinct TAXII `date_added`). 5: the
/// log has an identity ([`LogInfo`]), and each subscription cursor names
/// the log it was taken on. 6: the embedded engine writes through its
/// write-ahead log (`wal/` beside sled's files). 7: the log has a Merkle
/// tree (one leaf per sequence, `tree.rs`), and tombstones keep the origin
/// their leaf commits to. 8: the embedded engine keeps records' bytes in
/// value files of its own (`values/`), sled a pointer to each.
pub const FORMAT: u32 = 8;
use record::{nanos, Indexed};

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("record {seq} is corrupted: {reason}")]
    Corrupt { seq: u64, reason: String },
    #[error("the store holds sequences up to {found}, but this node acknowledged up to {acknowledged}: its files were damaged, truncated or replaced (recovery stops at the first damaged entry), and nothing is served from it. Restore the data directory from a backup, or move it aside and let the node refill from its peers")]
    RolledBack { acknowledged: u64, found: u64 },
    #[error("bulletin {id} of {publisher} already exists with different content")]
    Conflict { publisher: String, id: String },
    #[error("{relation} names bulletin {id} of {publisher}, which this node does not hold")]
    MissingRelated {
        relation: &'static str,
        publisher: String,
        id: String,
    },
    #[error("{relation} bulletin {id} of {publisher} with a narrower marking: a retraction or revision must be readable by everyone who could read the original (use its TLP and audience, or wider ones)")]
    Narrows {
        relation: &'static str,
        publisher: String,
        id: String,
    },
    #[error("the store in {dir} has format {found}, newer than this version of Beacon reads (up to {supported}): run the version that wrote it, or restore a backup into an empty directory")]
    NewerFormat {
        dir: String,
        found: u32,
        supported: u32,
    },
    #[error("the store's log is not whole: {0}. Its engine brought back a write only in part (after an unclean stop, writes can reach the disk out of order: docs/RELIABILITY.md), or its files were damaged; nothing is served from it. Restore the data directory from a backup, or move it aside and let the node refill from its peers")]
    Torn(String),
    #[error("the store stopped accepting writes after its {0}. What it acknowledged before is durable; restart the node once the disk is sound, and it recovers from what is durable")]
    Failed(String),
    #[error("the node's disk has {free} bytes free, below the {reserve} bytes it keeps in reserve ([store] reserve_mb): publishing resumes once space is freed; what it acknowledged is safe")]
    DiskFull { free: u64, reserve: u64 },
    #[error("the store is shut down")]
    Closed,
    #[error("{0}; publishes are refused until it answers again, and nothing unacknowledged was taken for durable")]
    Unavailable(String),
    #[error("the store's {at} has layout {found}, newer than this version of Beacon reads (up to {supported}): run the version that made it")]
    NewerSchema {
        at: String,
        found: u32,
        supported: u32,
    },
    #[error("{0}")]
    Proof(#[from] crate::tlog::merkle::ProofError),
    #[error("a tree of {size} entries is beyond the log's committed head, {head}")]
    BeyondHead { size: u64, head: u64 },
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The later bulletin that superseded or retracted one, as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    pub how: Replaced,
    pub seq: u64,
    pub id: String,
}

/// The replaced records of a range, in order (see [`Store::replacements`]).
#[derive(Debug)]
pub struct Replacements {
    found: Vec<(u64, Successor)>,
    at: usize,
}

impl Replacements {
    /// The successor of record `seq`; asked in increasing order of `seq`.
    pub fn next(&mut self, seq: u64) -> Option<Successor> {
        while self.found.get(self.at).is_some_and(|(s, _)| *s < seq) {
            self.at += 1;
        }
        match self.found.get(self.at) {
            Some((s, succ)) if *s == seq => Some(*succ),
            _ => None,
        }
    }
}

/// A bulletin to append.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub meta: Meta,
    pub envelope: Vec<u8>,
    /// SHA-256 of the signed payload. The same bulletin signed again is a
    /// duplicate, not a conflict: ECDSA signatures differ on every signing,
    /// so a client that re-signs when it retries sends another envelope
    /// with the same payload.
    pub payload_digest: [u8; 32],
    /// The earlier bulletin of the same publisher this one supersedes or retracts.
    pub related: Option<Related>,
    /// Microseconds of acceptance time this record takes (at least 1): the
    /// next record is accepted at least this much later, so that each of
    /// the objects a reader's view of it holds (a STIX group) has a time of
    /// its own, strictly increasing along the log.
    pub span: u32,
}

/// What a new bulletin says of an earlier one of its publisher.
#[derive(Debug, Clone)]
pub struct Related {
    pub how: Replaced,
    pub id: String,
    /// A publish: the earlier bulletin must be held, and the new one must
    /// reach all its readers. A relay names one this node may not hold (its
    /// member may not read it); the origin node checked the rest.
    pub required: bool,
}

impl Related {
    /// How the relation is named in messages.
    pub fn relation(&self) -> &'static str {
        match self.how {
            Replaced::Superseded => "supersedes",
            Replaced::Retracted => "retracts",
        }
    }
}

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub accepted_at: SystemTime,
    /// The same envelope was already stored; `seq` is the original.
    pub duplicate: bool,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// Most appends in one batch (one fsync).
    pub max_batch: usize,
    /// Appends waiting for the writer; callers wait beyond that (backpressure).
    pub queue: usize,
    /// Free space kept on the store's filesystem; appends are refused below it
    /// (0: no reserve).
    pub reserve_bytes: u64,
    /// The identity of the node that serves the store, recorded in it (so a
    /// backup says whose log it is).
    pub node: Option<String>,
    /// The acceptance time each record reserves after it.
    pub spans: Spans,
    /// The engine that keeps the log, and its settings.
    pub engine: EngineChoice,
}

/// The engine a store is kept in.
#[derive(Debug, Clone)]
pub enum EngineChoice {
    /// Embedded, in the store's directory.
    Sled,
    /// A PostgreSQL database (the store's directory keeps only the
    /// acknowledged head and its lock).
    Postgres(crate::base::config::PostgresConfig),
}

/// The acceptance time, in microseconds, that each record reserves after
/// it ([`NewRecord::span`]), so that readers can give every part of a
/// record a time of its own (TAXII's `date_added` of each object of a
/// bulletin's group). The store only spaces times by it: what a span is
/// comes from above (the node hands in its interop layer's), for the
/// format upgrade that respaces an older log and for the room left after
/// the last record at an open.
#[derive(Debug, Clone, Copy)]
pub struct Spans {
    /// The span of a stored bulletin.
    pub of: fn(&crate::domain::bulletin::Bulletin) -> u32,
    /// The largest span any bulletin can take.
    pub max: u32,
}

impl Spans {
    /// One microsecond per record: for stores whose records need no room
    /// between them (nothing serves their parts at times of their own).
    pub const ONE: Spans = Spans { of: |_| 1, max: 1 };

    /// Room left after the last record when a store opens (the last
    /// record's span is not kept), in nanoseconds.
    fn max_nanos(self) -> u64 {
        u64::from(self.max).saturating_mul(1000)
    }
}

/// Appends waiting for the writer before callers wait.
const QUEUE: usize = 4096;

impl StoreOptions {
    /// The `[store]` settings of `beacon.toml`, with the spans of the
    /// node's records.
    pub fn new(c: &crate::base::config::StoreConfig, spans: Spans) -> Self {
        StoreOptions {
            cache_bytes: c.cache_mb * 1024 * 1024,
            max_batch: c.max_batch,
            queue: QUEUE,
            reserve_bytes: c.reserve_mb * 1024 * 1024,
            node: None,
            spans,
            engine: match (&c.engine, &c.postgres) {
                (crate::base::config::EngineKind::Postgres, Some(pg)) => {
                    EngineChoice::Postgres(pg.clone())
                }
                _ => EngineChoice::Sled,
            },
        }
    }

    /// The defaults of `beacon.toml`'s `[store]` (one default per setting).
    pub fn defaults(spans: Spans) -> Self {
        StoreOptions::new(&crate::base::config::StoreConfig::default(), spans)
    }
}

/// Figures for status and metrics.
#[derive(Debug)]
pub struct StoreStats {
    pub corrupt_reads: AtomicU64,
    /// Records pruned by retention since the store was opened.
    pub pruned: AtomicU64,
    /// Envelopes served to readers (checked by [`Store::served`]).
    pub served: AtomicU64,
    pub batches: AtomicU64,
    pub appended: AtomicU64,
    pub fsync_nanos_total: AtomicU64,
    pub fsync_nanos_max: AtomicU64,
    /// Duration of each flush.
    pub fsync_seconds: crate::base::metrics::Histogram,
    /// Records each flush made durable.
    pub batch_records: crate::base::metrics::Histogram,
    /// Opens that applied the write-ahead log again after an unclean stop
    /// (0 or 1 per process).
    pub repairs: AtomicU64,
    /// Frames of the write-ahead log that open applied again.
    pub repaired_frames: AtomicU64,
    /// Appends are being refused for the free-space reserve.
    pub disk_full: std::sync::atomic::AtomicBool,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            corrupt_reads: AtomicU64::new(0),
            disk_full: std::sync::atomic::AtomicBool::new(false),
            pruned: AtomicU64::new(0),
            served: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            fsync_nanos_total: AtomicU64::new(0),
            fsync_nanos_max: AtomicU64::new(0),
            fsync_seconds: crate::base::metrics::Histogram::new(crate::base::metrics::FSYNC_BOUNDS),
            batch_records: crate::base::metrics::Histogram::new(crate::base::metrics::BATCH_BOUNDS),
            repairs: AtomicU64::new(0),
            repaired_frames: AtomicU64::new(0),
        }
    }
}
/// The durable log.
pub struct Store {
    /// Backups reading a fixed view of the log (pruning waits for them).
    backups: AtomicU64,
    /// A prune step is under way (a backup waits for it to end).
    pruning: std::sync::atomic::AtomicBool,
    engine: Arc<dyn Engine>,
    /// The log's identity (fixed while the store is open).
    log: LogInfo,
    head: watch::Receiver<u64>,
    commit: Committer,
    pub stats: Arc<StoreStats>,
    spans: Spans,
    /// The upper levels of the log's tree, as proofs read them.
    tree: tree::Upper,
    /// The duties asked of this process, and whether it holds each.
    duties: parking_lot::Mutex<std::collections::BTreeMap<Duty, watch::Receiver<bool>>>,
    /// Where it lives (for the clean-close marker).
    dir: std::path::PathBuf,
    /// Held for as long as the store is open (declared last: released
    /// after everything above is closed).
    _lock: Option<durable::DirLock>,
}

impl Store {
    /// Opens (or creates) the store in `dir` on the embedded engine and
    /// starts its group commit. One process at a time owns `dir`.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let lock = durable::DirLock::acquire(dir).map_err(io)?;
        Store::open_locked(dir, opts, lock)
    }

    /// [`Store::open`] with the directory's lock already held (a compaction
    /// holds it from before it reads the store until after the swap).
    pub(crate) fn open_locked(
        dir: &Path,
        opts: StoreOptions,
        lock: durable::DirLock,
    ) -> Result<Store, StoreError> {
        // A compaction interrupted after its new files were complete is
        // finished; what one left behind otherwise goes.
        backup::finish_swap(dir).map_err(|e| StoreError::Io(e.to_string()))?;
        backup::clear_leftovers(dir).map_err(|e| StoreError::Io(e.to_string()))?;
        // sled panics on some states its recovery cannot make sense of (after
        // torn writes): opening is checked end to end, and such a store is
        // refused with a sentence instead of a crash.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let (engine, recovery) = engine::open(dir, &opts)?;
            let store = Store::with_engine(dir, engine, opts)?;
            store.recovered(&recovery)?;
            Ok::<Store, StoreError>(store)
        }));
        let mut store = match opened {
            Ok(store) => store?,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                return Err(StoreError::Torn(format!(
                    "its engine failed while recovering ({what})"
                )));
            }
        };
        store._lock = Some(lock);
        Ok(store)
    }

    /// Checks what `engine` holds against the acknowledged head kept in
    /// `dir`, and starts the group commit on it.
    fn with_engine(
        dir: &Path,
        engine: Arc<dyn Engine>,
        opts: StoreOptions,
    ) -> Result<Store, StoreError> {
        let head = engine.head()?;
        match engine.format()? {
            Some(found) if found > FORMAT => {
                return Err(StoreError::NewerFormat {
                    dir: dir.display().to_string(),
                    found,
                    supported: FORMAT,
                })
            }
            Some(FORMAT) => {}
            None if head == 0
                && engine.cursors(Space::Subscriptions)?.is_empty()
                && engine.cursors(Space::Links)?.is_empty() =>
            {
                // A new store, and a new log.
                engine.write_synced(engine::WriteSet {
                    format: Some(FORMAT),
                    log: Some(LogInfo::new().encode()),
                    ..Default::default()
                })?;
            }
            older => {
                // Stores from before the write-ahead log marked a clean
                // close; after an unclean one, sled may hold a batch in part,
                // which only a walk of the whole log can tell (once).
                if !dir.join(CLEAN).exists() {
                    check_whole(engine.as_ref(), head)?;
                }
                upgrade::run(engine.as_ref(), older.unwrap_or(1), head, opts.spans)?
            }
        }
        if dir.join(CLEAN).exists() {
            std::fs::remove_file(dir.join(CLEAN)).map_err(io)?;
        }
        let log = match engine.log()? {
            Some(b) => LogInfo::decode(&b),
            None => None,
        }
        .ok_or_else(|| StoreError::Torn("its log identity is missing or damaged".into()))?;
        // Which node serves it: recorded, so that its backups say whose log
        // they hold (a restore with another member's config is refused).
        if let Some(node) = &opts.node {
            if engine.node()?.as_deref() != Some(node.as_bytes()) {
                engine.write_synced(engine::WriteSet {
                    node: Some(node.as_bytes().to_vec()),
                    ..Default::default()
                })?;
            }
        }
        // A log that ends before what was acknowledged is refused, never served.
        let (head, last) = engine.head_and_last()?;
        let last = last.unwrap_or(0);
        let watermark = Watermark::open(dir)?;
        // Its name, and the engine's directory, are entries of `dir`.
        durable::sync_dir(dir).map_err(io)?;
        if let Some(acknowledged) = watermark.read() {
            if acknowledged > head.min(last) {
                return Err(StoreError::RolledBack {
                    acknowledged,
                    found: head.min(last),
                });
            }
        }
        // The head and the log are written in one atomic batch (and applied
        // again whole from the write-ahead log after an unclean stop); check
        // they agree.
        if last != head {
            return Err(StoreError::Torn(format!(
                "its head marker says {head} but the log ends at {last}"
            )));
        }
        watermark.record(head).map_err(io)?;
        let tip = commit::Tip::read(engine.as_ref(), head, opts.spans.max_nanos())?;
        let stats = Arc::new(StoreStats::default());
        let (commit, head_rx) =
            Committer::start(dir, engine.clone(), watermark, tip, &opts, stats.clone())?;
        Ok(Store {
            dir: dir.to_path_buf(),
            _lock: None,
            backups: AtomicU64::new(0),
            pruning: std::sync::atomic::AtomicBool::new(false),
            engine,
            log,
            head: head_rx,
            commit,
            stats,
            spans: opts.spans,
            tree: tree::Upper::default(),
            duties: parking_lot::Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    /// The acceptance time each record reserves (as opened with).
    pub fn spans(&self) -> Spans {
        self.spans
    }

    /// Whether this node holds `duty` of the log, as it changes (see
    /// [`Duty`]): always on a store only this node opens; on a log several
    /// nodes share, on one of them at a time, moving when it dies or loses
    /// the database.
    pub fn duty(&self, duty: Duty) -> watch::Receiver<bool> {
        self.duties
            .lock()
            .entry(duty)
            .or_insert_with(|| self.engine.duty(duty))
            .clone()
    }

    /// Each duty asked of this node so far, and whether it holds it now.
    pub fn duties(&self) -> Vec<(Duty, bool)> {
        self.duties
            .lock()
            .iter()
            .map(|(d, rx)| (*d, *rx.borrow()))
            .collect()
    }

    /// The last durable sequence.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// A receiver that changes whenever the committed head moves.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    /// Appends a record; resolves once it is durable (or was already held).
    pub async fn append(&self, rec: NewRecord) -> Result<Appended, StoreError> {
        self.enqueue(rec).await?.await
    }

    /// Queues a record for the writer and returns what resolves once it is
    /// durable. Records queued one after another by one task get increasing
    /// sequences in that order (the writer is a single FIFO), so a caller can
    /// keep many appends in flight without reordering them.
    pub async fn enqueue(
        &self,
        rec: NewRecord,
    ) -> Result<
        impl std::future::Future<Output = Result<Appended, StoreError>> + Send + 'static,
        StoreError,
    > {
        self.commit.enqueue(rec).await
    }

    fn note_corrupt(&self, e: &StoreError) {
        if let StoreError::Corrupt { seq, reason } = e {
            self.stats.corrupt_reads.fetch_add(1, Ordering::Relaxed);
            error!(seq, reason = %reason, "corrupted record refused");
        }
    }

    /// Checks a record's envelope digest before it is served; a mismatch is
    /// logged and counted like any corruption.
    pub fn served(&self, rec: Record) -> Result<Record, StoreError> {
        rec.check_digest().inspect_err(|e| self.note_corrupt(e))?;
        self.stats.served.fetch_add(1, Ordering::Relaxed);
        Ok(rec)
    }

    /// The record at `seq`, checked. Only durable records are visible.
    pub fn get(&self, seq: u64) -> Result<Option<Record>, StoreError> {
        if seq > self.head() {
            return Ok(None);
        }
        match self.engine.record(seq)? {
            None => Ok(None),
            Some(v) => Record::decode(seq, v)
                .map(Some)
                .inspect_err(|e| self.note_corrupt(e)),
        }
    }

    /// The records at `seqs` that are held durably, checked, in the order
    /// asked (one request of the engine).
    pub fn get_many(&self, seqs: &[u64]) -> Result<Vec<Record>, StoreError> {
        let head = self.head();
        let wanted: Vec<u64> = seqs.iter().copied().filter(|s| *s <= head).collect();
        self.engine
            .records_at(&wanted)?
            .into_iter()
            .map(|(seq, v)| Record::decode(seq, v).inspect_err(|e| self.note_corrupt(e)))
            .collect()
    }

    /// The sequence and digest of (publisher, id), if held durably.
    pub fn lookup(&self, publisher: &str, id: &str) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        // Records applied but not yet durable stay invisible.
        let head = self.head();
        Ok(self
            .engine
            .index(publisher, id)?
            .and_then(|v| Indexed::decode(&v))
            .filter(|i| i.seq <= head)
            .map(|i| (i.seq, i.digest)))
    }

    /// The durable bulletin that superseded or retracted (publisher, id), if any.
    pub fn successor(&self, publisher: &str, id: &str) -> Result<Option<Successor>, StoreError> {
        match self.lookup(publisher, id)? {
            Some((seq, _)) => Ok(self.replacements(seq, seq)?.next(seq)),
            None => Ok(None),
        }
    }

    /// What replaced the records of `from..=to`, as far as it is durable:
    /// one ordered scan of the few replaced ones, for a reader going along
    /// the log (ask [`Replacements::next`] in increasing sequence order).
    pub fn replacements(&self, from: u64, to: u64) -> Result<Replacements, StoreError> {
        let head = self.head();
        let to = to.min(head);
        let found = self
            .engine
            .successors(from, to)?
            .into_iter()
            .filter_map(|(seq, v)| Some((seq, Successor::decode(&v)?)))
            .filter(|(_, s)| s.seq <= head)
            .collect();
        Ok(Replacements { found, at: 0 })
    }

    /// What replaced the record at `seq`, as a reader sees it.
    pub fn replacement_of(&self, seq: u64) -> Result<Option<Replacement>, StoreError> {
        match self.replacements(seq, seq)?.next(seq) {
            Some(s) => self.replacement(s),
            None => Ok(None),
        }
    }

    /// `s` as a reader sees it: with the replacing bulletin's id.
    pub fn replacement(&self, s: Successor) -> Result<Option<Replacement>, StoreError> {
        let id = match self.get(s.seq)? {
            Some(r) => r.meta.id,
            // The replacing bulletin was pruned first: its id stays.
            None => match self.pruned(s.seq)? {
                Some(t) => t.id,
                None => return Ok(None),
            },
        };
        Ok(Some(Replacement {
            how: s.how,
            seq: s.seq,
            id,
        }))
    }

    /// The tombstone of the record at `seq`, if it was pruned (durably).
    pub fn pruned(&self, seq: u64) -> Result<Option<Tombstone>, StoreError> {
        if seq > self.head() {
            return Ok(None);
        }
        match self.engine.tombstone(seq)? {
            None => Ok(None),
            Some(v) => Tombstone::decode(seq, &v)
                .map(Some)
                .inspect_err(|e| self.note_corrupt(e)),
        }
    }

    /// How many records of `from..=to` were pruned.
    pub fn pruned_between(&self, from: u64, to: u64) -> Result<u64, StoreError> {
        let to = to.min(self.head());
        let mut n = 0;
        for item in self.engine.tombstones(from, to) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Up to `limit` records that expire at or before `until`, earliest
    /// first, from the entry `from` (expires_at in ns, sequence) on:
    /// (expires_at, sequence).
    pub fn expiring(
        &self,
        from: (u64, u64),
        until: SystemTime,
        limit: usize,
    ) -> Result<Vec<(SystemTime, u64)>, StoreError> {
        let head = self.head();
        Ok(self
            .engine
            .expiring(from, nanos(until), limit)?
            .into_iter()
            .filter(|(_, seq)| *seq <= head)
            .map(|(at, seq)| (record::from_nanos(at), seq))
            .collect())
    }

    /// Replaces the committed records at `seqs` by tombstones, in one
    /// atomic write made durable before this returns; returns how many were
    /// pruned (records already pruned are passed over). Index entries stay,
    /// so a pruned bulletin sent again is still a duplicate.
    /// While a backup reads, nothing is pruned (returns 0).
    pub async fn prune(&self, seqs: Vec<u64>) -> Result<u64, StoreError> {
        // With a backup's `begin_backup`, a handshake on two flags (both
        // sequentially consistent): at least one side sees the other.
        struct Step<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Step<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        self.pruning.store(true, Ordering::SeqCst);
        let _step = Step(&self.pruning);
        if self.backups.load(Ordering::SeqCst) > 0 {
            return Ok(0);
        }
        self.commit.prune(seqs).await
    }

    /// Registers a backup and waits for a prune step under way to end, so
    /// the log it reads holds still (see [`Store::prune`]).
    fn begin_backup(&self) {
        self.backups.fetch_add(1, Ordering::SeqCst);
        while self.pruning.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Every (publisher, seq) holding a bulletin with this id.
    pub fn lookup_id(&self, id: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let head = self.head();
        Ok(self
            .engine
            .index_by_id(id, 64)?
            .into_iter()
            .filter_map(|(publisher, v)| {
                let seq = Indexed::decode(&v)?.seq;
                (seq <= head).then_some((publisher, seq))
            })
            .collect())
    }

    /// Durable records with `from <= seq <= to`, in order; each item is checked.
    pub fn range(
        &self,
        from: u64,
        to: u64,
    ) -> Box<dyn Iterator<Item = Result<Record, StoreError>> + Send + '_> {
        let to = to.min(self.head());
        Box::new(self.engine.records(from, to).map(move |item| {
            let (seq, v) = item?;
            Record::decode(seq, v).inspect_err(|e| self.note_corrupt(e))
        }))
    }

    /// Reads durable records `from..=to` without returning them, so that
    /// their pages are in the cache when a reader comes for them. A hint:
    /// it stops at the first error (the reader will meet and report it).
    pub fn prefetch(&self, from: u64, to: u64) {
        let to = to.min(self.head());
        for item in self.engine.records(from, to) {
            if item.is_err() {
                return;
            }
        }
    }

    /// The first sequence accepted at or after `t` (head + 1 if none).
    /// Acceptance times never go backwards along the log, so this is a binary search.
    pub fn first_seq_at_or_after(&self, t: SystemTime) -> Result<u64, StoreError> {
        let head = self.head();
        let (mut lo, mut hi) = (1u64, head + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some(at) = accepted_at(self.engine.as_ref(), mid)? else {
                return Err(StoreError::Io(format!(
                    "log has no record {mid} below head {head}"
                )));
            };
            if at < t {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Why the store stopped accepting writes (a failed write or flush),
    /// until the node restarts; `None` while it accepts them.
    pub fn failure(&self) -> Option<String> {
        self.commit.check_open().err().map(|e| e.to_string())
    }

    /// The identity of this store's log, and the log it continues if it
    /// was restored from a backup.
    pub fn log(&self) -> LogInfo {
        self.log
    }

    /// A durable cursor (last acknowledged sequence) of (identity, name),
    /// as stored: with the log it was taken on.
    pub fn cursor(&self, identity: &str, name: &str) -> Result<Option<Position>, StoreError> {
        self.engine.cursor(Space::Subscriptions, identity, name)
    }

    /// Stores a cursor on this log; it only moves forward (and replaces one
    /// taken on another log). Not fsynced on its own: losing a cursor write
    /// can only cause redelivery.
    pub fn set_cursor(&self, identity: &str, name: &str, seq: u64) -> Result<(), StoreError> {
        let pos = Position {
            seq,
            log: Some(self.log.id),
        };
        self.engine
            .advance_cursor(Space::Subscriptions, identity, name, pos)
    }

    /// Resolves once every position written before the call is durable
    /// (it shares the next sync with concurrent publishes).
    pub async fn sync_positions(&self) -> Result<(), StoreError> {
        self.commit.check_open()?;
        self.commit.sync().await
    }

    /// Removes the cursor of the durable subscription (identity, name);
    /// durable when this resolves. Returns the cursor it had.
    pub async fn remove_cursor(
        &self,
        identity: &str,
        name: &str,
    ) -> Result<Option<u64>, StoreError> {
        let had = self.cursor(identity, name)?;
        if had.is_some() {
            self.engine
                .remove_cursor(Space::Subscriptions, identity, name)?;
            self.sync_positions().await?;
        }
        Ok(had.map(|p| p.seq))
    }

    /// Every stored subscription cursor: (identity, name, position).
    pub fn cursors(&self) -> Result<Vec<(String, String, Position)>, StoreError> {
        self.engine.cursors(Space::Subscriptions)
    }

    /// How far this node has read the log of `peer` (a node identity): the
    /// last peer sequence whose outcome (stored, already held, refused) is
    /// in this store, and which log of the peer's that sequence is of. It
    /// belongs to the reading node, so a node whose store was lost or
    /// rebuilt reads its peers again from the start.
    pub fn link_position(&self, peer: &str) -> Result<Option<Position>, StoreError> {
        self.engine.cursor(Space::Links, peer, "")
    }

    /// Moves the position on `peer`'s log forward. The caller sets it only
    /// once what it read up to `seq` is durable here; it becomes durable
    /// with the next sync, so it may lag after a crash (redelivery, answered
    /// as duplicates) but never runs ahead of what was stored.
    pub fn set_link_position(&self, peer: &str, pos: Position) -> Result<(), StoreError> {
        self.engine.advance_cursor(Space::Links, peer, "", pos)
    }

    /// Puts the position on `peer`'s log at `pos`, even backwards (the
    /// peer's log was rebuilt or restored: the link reads it again from
    /// there).
    pub fn reset_link_position(&self, peer: &str, pos: Position) -> Result<(), StoreError> {
        self.engine.remove_cursor(Space::Links, peer, "")?;
        self.engine.advance_cursor(Space::Links, peer, "", pos)
    }

    /// Whether a backup is reading the log (retention waits until it ends).
    pub fn backups_running(&self) -> bool {
        self.backups.load(Ordering::Acquire) > 0
    }

    pub fn size_on_disk(&self) -> u64 {
        self.engine.size_on_disk()
    }

    /// Number of records (head; the log has no gaps).
    pub fn len(&self) -> u64 {
        self.head()
    }

    pub fn is_empty(&self) -> bool {
        self.head() == 0
    }

    /// Makes everything written so far (cursors included) durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.engine.sync()
    }

    /// Stops the writer after the appends already queued, syncs, and
    /// checkpoints the engine, so the next open has nothing to redo.
    pub fn close(&mut self) -> Result<(), StoreError> {
        self.commit.stop(&self.stats);
        self.flush()?;
        if self.commit.check_open().is_ok() {
            self.engine.checkpoint()?;
        }
        Ok(())
    }

    /// Reports what the engine's open applied again (one line, and the
    /// repairs metric), once the checks at open accepted the store, and
    /// checkpoints it: a store stopped uncleanly is repaired from its
    /// write-ahead log, never refused for what it was writing.
    fn recovered(&self, r: &engine::Recovery) -> Result<(), StoreError> {
        if r.frames == 0 && r.cut.is_none() {
            return Ok(());
        }
        self.stats.repairs.fetch_add(1, Ordering::Relaxed);
        self.stats
            .repaired_frames
            .store(r.frames, Ordering::Relaxed);
        tracing::warn!(
            frames = r.frames,
            head_before = r.from,
            head = r.to,
            cut = r.cut.as_deref().unwrap_or("none"),
            "the store was not closed cleanly: its write-ahead log was applied again from the last checkpoint (what follows the last whole frame was never acknowledged)"
        );
        // Accepted: what was applied again is made the engine's own, so the
        // next open does not redo it.
        self.engine.checkpoint()
    }
}

/// Written by stores from before the write-ahead log when they closed
/// cleanly; read once, when such a store is upgraded, and removed.
const CLEAN: &str = "clean";

/// Checks that the log holds every sequence `1..=head` once, as a record or
/// a tombstone. Without a write-ahead log, sled keeps a batch atomic only if
/// its writes reach the disk in order; a power cut that keeps some unsynced
/// writes and not others can leave a batch in part. One pass over the log,
/// only when a store from before the write-ahead log is upgraded after an
/// unclean stop.
fn check_whole(engine: &dyn Engine, head: u64) -> Result<(), StoreError> {
    let mut expect = 1u64;
    for entry in engine::entries(engine, 1, head) {
        let seq = match entry? {
            engine::Entry::Record(seq, _) | engine::Entry::Pruned(seq, _) => seq,
        };
        if seq != expect {
            return Err(StoreError::Torn(if seq < expect {
                format!("sequence {seq} is held twice (as a record and a tombstone)")
            } else {
                format!("sequence {expect} is missing (the log goes on at {seq}, up to {head})")
            }));
        }
        expect += 1;
    }
    if expect != head + 1 {
        return Err(StoreError::Torn(format!(
            "the log ends at {} below its head marker {head}",
            expect - 1
        )));
    }
    Ok(())
}

/// When the record at `seq` was accepted, whether it is held or pruned.
fn accepted_at(engine: &dyn Engine, seq: u64) -> Result<Option<SystemTime>, StoreError> {
    if let Some(v) = engine.record(seq)? {
        return Ok(Some(Record::decode(seq, v)?.accepted_at));
    }
    match engine.tombstone(seq)? {
        Some(v) => Ok(Some(Tombstone::decode(seq, &v)?.accepted_at)),
        None => Ok(None),
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
