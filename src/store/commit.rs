//! The pipelined group commit: an applier thread assigns gapless sequences
//! and writes batches to the engine; a flusher thread syncs them and only
//! then answers every request the sync covers and moves the committed head.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::engine::Pruned;
use super::engine::{Engine, WriteSet};
use super::record::{from_nanos, nanos, Indexed, Record, Replaced, Successor, Tombstone};
use super::{io, Appended, NewRecord, StoreError, StoreOptions, StoreStats};
use crate::domain::policy::{reaches_every_reader, Marking};
use crate::tlog::merkle::{leaf_hash, Frontier};

/// What the applier is asked to do, in the order asked. (Appends are the
/// hot path and prunes rare: the append stays unboxed.)
#[allow(clippy::large_enum_variant)]
pub(super) enum WriteReq {
    Append {
        rec: NewRecord,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
    },
    /// Replace these records (at or below the committed head) by tombstones;
    /// answered with how many were pruned once that is durable.
    Prune {
        seqs: Vec<u64>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// The running group commit: the applier's queue and both threads.
pub(super) struct Committer {
    engine: Arc<dyn Engine>,
    writer: Option<mpsc::Sender<WriteReq>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    flusher_thread: Option<std::thread::JoinHandle<()>>,
    marker: Arc<Marker>,
    marker_thread: Option<std::thread::JoinHandle<()>>,
    pipeline: Arc<Pipeline>,
    failed: Arc<Failure>,
}

/// Where the log ends when the group commit starts.
pub struct Tip {
    /// The durable head.
    pub head: u64,
    /// The earliest acceptance time the next record may have (ns).
    pub last_accepted: u64,
    /// The right edge of the log's tree at `head`.
    pub tree: Frontier,
}

impl Tip {
    /// Where the log whose durable head is `head` ends: the time after its
    /// last record (the last record's span is not kept: `max_span`, the
    /// largest, in ns, is left after it) and the tree's right edge.
    pub fn read(engine: &dyn Engine, head: u64, max_span: u64) -> Result<Tip, StoreError> {
        let last_accepted = match head {
            0 => 0,
            h => super::accepted_at(engine, h)?
                .map(nanos)
                .unwrap_or(0)
                .saturating_add(max_span),
        };
        Ok(Tip {
            head,
            last_accepted,
            tree: super::tree::open(engine, head)?,
        })
    }
}

impl Committer {
    /// Starts the applier and the flusher on a log whose durable head is
    /// `head`; returns the committed head's receiver.
    pub fn start(
        dir: &std::path::Path,
        engine: Arc<dyn Engine>,
        watermark: Watermark,
        tip: Tip,
        opts: &StoreOptions,
        stats: Arc<StoreStats>,
    ) -> Result<(Committer, watch::Receiver<u64>), StoreError> {
        let Tip {
            head,
            last_accepted,
            tree,
        } = tip;
        let (head_tx, head_rx) = watch::channel(head);
        let head_tx = Arc::new(head_tx);
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let failed = Arc::new(Failure::default());
        let pipeline = Arc::new(Pipeline {
            queue: parking_lot::Mutex::new(Vec::new()),
            wake: parking_lot::Condvar::new(),
            applied: AtomicU64::new(head),
            rounds: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let writer = Writer {
            committed: head_rx.clone(),
            engine: engine.clone(),
            head,
            last_accepted,
            tree,
            failed: failed.clone(),
            space: DiskSpace {
                dir: dir.to_path_buf(),
                reserve: opts.reserve_bytes,
                stats: stats.clone(),
            },
            max_batch: opts.max_batch.max(1),
            pipeline: pipeline.clone(),
            staged: std::collections::VecDeque::new(),
            prefetched: HashMap::new(),
            max_span: opts.spans.max_nanos(),
            last_recovery: None,
        };
        let marker = Arc::new(Marker::default());
        let marker_thread = {
            let marker = marker.clone();
            let failed = failed.clone();
            std::thread::Builder::new()
                .name("beacon-store-mark".into())
                .spawn(move || marker.run(watermark, head, &failed))
                .map_err(io)?
        };
        // Heads others append to a shared log move the committed head too
        // (they are durable: another process's commits).
        {
            let head_tx = head_tx.clone();
            let marker = marker.clone();
            engine.follow(Arc::new(move |h| {
                if raise(&head_tx, h) {
                    marker.note(h);
                }
            }));
        }
        let flusher = Flusher {
            engine: engine.clone(),
            marker: marker.clone(),
            durable: head,
            head_tx,
            failed: failed.clone(),
            pipeline: pipeline.clone(),
            stats,
        };
        let flusher_thread = std::thread::Builder::new()
            .name("beacon-store-flush".into())
            .spawn(move || flusher.run())
            .map_err(io)?;
        let writer_thread = std::thread::Builder::new()
            .name("beacon-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        let committer = Committer {
            engine,
            writer: Some(tx),
            writer_thread: Some(writer_thread),
            flusher_thread: Some(flusher_thread),
            marker,
            marker_thread: Some(marker_thread),
            pipeline,
            failed,
        };
        Ok((committer, head_rx))
    }

    /// `Failed` once a write or sync has failed: nothing more is accepted.
    pub fn check_open(&self) -> Result<(), StoreError> {
        self.failed.check()
    }

    /// Queues `rec` for the applier; returns what resolves once it is durable.
    pub async fn enqueue(
        &self,
        rec: NewRecord,
    ) -> Result<
        impl std::future::Future<Output = Result<Appended, StoreError>> + Send + 'static,
        StoreError,
    > {
        self.failed.check_permanent()?;
        let writer = self.writer.as_ref().ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        writer
            .send(WriteReq::Append { rec, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(async move { rx.await.map_err(|_| StoreError::Closed)? })
    }

    /// Prunes the records at `seqs` (each at or below the committed head;
    /// ones already pruned are passed over): one atomic write, between two
    /// batches of appends, durable when this resolves. Returns how many
    /// were pruned.
    pub async fn prune(&self, seqs: Vec<u64>) -> Result<u64, StoreError> {
        self.failed.check_permanent()?;
        let writer = self.writer.as_ref().ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        writer
            .send(WriteReq::Prune { seqs, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        let pruned = rx.await.map_err(|_| StoreError::Closed)??;
        self.sync().await?;
        Ok(pruned)
    }

    /// Resolves once a sync that started after this call has finished (it
    /// shares the flusher's next round with concurrent appends).
    pub async fn sync(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        let min_round = self.pipeline.rounds.load(Ordering::Acquire) + 1;
        if self
            .pipeline
            .push(Pending::Sync { min_round, reply })
            .is_err()
        {
            // The writer is stopping: sync here instead.
            return self.engine.sync();
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops the applier after the appends already queued, then the flusher.
    pub fn stop(&mut self, stats: &StoreStats) {
        self.writer = None;
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.flusher_thread.take() {
            let _ = t.join();
            // The acknowledged head, recorded to the last.
            self.marker.stop();
            if let Some(t) = self.marker_thread.take() {
                let _ = t.join();
            }
            let batches = stats.batches.load(Ordering::Relaxed);
            let appended = stats.appended.load(Ordering::Relaxed);
            if batches > 0 {
                tracing::info!(
                    batches,
                    appended,
                    mean_batch = appended as f64 / batches as f64,
                    mean_commit_ms = stats.fsync_nanos_total.load(Ordering::Relaxed) as f64
                        / batches as f64
                        / 1e6,
                    max_commit_ms = stats.fsync_nanos_max.load(Ordering::Relaxed) as f64 / 1e6,
                    "store closed"
                );
            }
        }
    }
}

/// Moves the committed head to `h` if that is further; says whether it moved.
fn raise(head: &watch::Sender<u64>, h: u64) -> bool {
    head.send_if_modified(|at| {
        let moved = h > *at;
        if moved {
            *at = h;
        }
        moved
    })
}

/// Something waiting for a flush.
enum Pending {
    /// A batch written to the engine: answer once the durable head reaches `upto`.
    Batch { upto: u64, replies: Vec<Reply> },
    /// A cursor write: answer once a flush that started after it has finished.
    Sync {
        min_round: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// State shared by the applier, cursor writers and the flusher.
struct Pipeline {
    queue: parking_lot::Mutex<Vec<Pending>>,
    wake: parking_lot::Condvar,
    /// Highest sequence written to the engine (maybe not durable yet).
    applied: AtomicU64,
    /// Flush rounds started so far.
    rounds: AtomicU64,
    closed: AtomicBool,
}

impl Pipeline {
    /// Queues `p` for the flusher; refused once the pipeline is closed (the
    /// flusher may have exited, and nothing would answer).
    fn push(&self, p: Pending) -> Result<(), Pending> {
        let mut q = self.queue.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(p);
        }
        q.push(p);
        self.wake.notify_one();
        Ok(())
    }
}

/// What becomes of an append, given what the index holds for its
/// (publisher, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// The same bulletin is stored at this sequence.
    Duplicate(u64),
    /// Another bulletin holds this id.
    Conflict,
    /// A new record.
    New,
}

/// The same envelope, or the same signed payload in another envelope (the
/// bulletin signed again), is a duplicate; anything else under a held id is
/// a conflict. Index entries older than the payload digest only match by
/// envelope.
fn decide(existing: Option<&Indexed>, digest: &[u8; 32], payload_digest: &[u8; 32]) -> Decision {
    match existing {
        None => Decision::New,
        Some(i) if &i.digest == digest || i.payload_digest.as_ref() == Some(payload_digest) => {
            Decision::Duplicate(i.seq)
        }
        Some(_) => Decision::Conflict,
    }
}

/// One batch being built by the applier.
struct Batch {
    writes: WriteSet,
    /// (publisher, id) → what was appended for it in this batch.
    pending: HashMap<(String, String), Held>,
    /// Successors this batch wrote, by the replaced record's sequence.
    successors: HashMap<u64, Successor>,
    /// The highest sequence any reply in this batch depends on.
    upto: u64,
    /// The sequence the next new record gets.
    next: u64,
    /// The time this batch was applied (ns).
    now: u64,
    /// The earliest acceptance time the next record may have (ns): the
    /// previous record's plus its span.
    free_from: u64,
    /// The log's Merkle tree as far as this batch has appended.
    tree: Frontier,
}

/// A record appended in this batch: its index entry and acceptance time.
struct Held {
    indexed: Indexed,
    accepted_at: SystemTime,
}

impl Batch {
    /// Adds a new record (and its index entry) under the next sequence.
    fn append(&mut self, key: (String, String), rec: NewRecord) -> Appended {
        let seq = self.next;
        self.next += 1;
        // Strictly later than the previous record by its span.
        let at = self.now.max(self.free_from);
        self.free_from = at.saturating_add(u64::from(rec.span.max(1)) * 1000);
        let accepted_at = from_nanos(at);
        let mut meta = rec.meta;
        if meta.origin_seq == 0 {
            meta.origin_seq = seq;
        }
        let digest = meta.digest;
        let record = Record {
            seq,
            accepted_at,
            meta,
            envelope: Bytes::from(rec.envelope),
        };
        self.writes.records.push((seq, record.encode()));
        self.writes
            .tree
            .extend(self.tree.push(leaf_hash(&record.leaf_entry())));
        if let Some(expires) = record.meta.expires_at {
            self.writes.expiries.push((nanos(expires), seq));
        }
        let indexed = Indexed {
            seq,
            digest,
            payload_digest: Some(rec.payload_digest),
        };
        self.writes
            .index
            .push((key.0.clone(), key.1.clone(), indexed.encode()));
        self.pending.insert(
            key,
            Held {
                indexed,
                accepted_at,
            },
        );
        Appended {
            seq,
            accepted_at,
            duplicate: false,
        }
    }

    /// The record appended in this batch at `seq`, decoded again (only a
    /// later bulletin of the batch naming it needs it, which is rare).
    fn record(&self, seq: u64) -> Option<Result<Record, StoreError>> {
        record_in(&self.writes.records, seq)
    }

    /// Records that the record at `original` was replaced by the one at `seq`.
    /// `old` is what replaced it before (in this batch or in the store).
    fn mark(&mut self, original: u64, old: Option<Successor>, how: Replaced, seq: u64) {
        if let Some(next) = Successor::after(old, how, seq) {
            self.writes.successors.push((original, next.encode()));
            self.successors.insert(original, next);
        }
    }
}

/// The applier: assigns sequences and writes batches to the engine.
struct Writer {
    /// The committed head (only committed records are pruned).
    committed: watch::Receiver<u64>,
    engine: Arc<dyn Engine>,
    head: u64,
    last_accepted: u64,
    /// The right edge of the log's tree at `head`.
    tree: Frontier,
    failed: Arc<Failure>,
    space: DiskSpace,
    max_batch: usize,
    pipeline: Arc<Pipeline>,
    /// Batches staged in the engine and maybe not synced yet, oldest
    /// first: the engine shows a staged batch only once it is synced, so
    /// later appends are decided against these first.
    staged: std::collections::VecDeque<Staged>,
    /// The engine's index entries for the batch being applied, read in
    /// one request before it (what the batch itself appends is found in
    /// the batch and the staged ones first).
    prefetched: HashMap<(String, String), Option<Indexed>>,
    /// Room left after the last record when the tip is read again (ns).
    max_span: u64,
    /// When a suspended store last tried to take its log up again.
    last_recovery: Option<Instant>,
}

/// What a batch staged in the engine holds, for the applier's later
/// decisions until the committed head passes it.
struct Staged {
    head: u64,
    pending: HashMap<(String, String), Held>,
    successors: HashMap<u64, Successor>,
    records: Vec<(u64, Vec<u8>)>,
}

impl Staged {
    fn record(&self, seq: u64) -> Option<Result<Record, StoreError>> {
        record_in(&self.records, seq)
    }
}

/// The record at `seq` among `records` (consecutive sequences), decoded again.
fn record_in(records: &[(u64, Vec<u8>)], seq: u64) -> Option<Result<Record, StoreError>> {
    let first = records.first()?.0;
    let (at, bytes) = records.get(usize::try_from(seq.checked_sub(first)?).ok()?)?;
    Some(Record::decode(*at, Bytes::from(bytes.clone())))
}

type AppendReq = (NewRecord, oneshot::Sender<Result<Appended, StoreError>>);

type Reply = (
    oneshot::Sender<Result<Appended, StoreError>>,
    Result<Appended, StoreError>,
);

/// Set once a write or flush of the store has failed: from then on the
/// store accepts nothing, and says why, until the node restarts and recovers
/// from what is durable.
///
/// An engine that can go on after losing its connection (a database: what
/// a failed transaction held was rolled back whole by the database, and
/// the database keeps its own durability) is only *suspended* by a failure
/// that says the engine is unavailable: appends are refused as
/// `Unavailable` while the applier tries, at most every `RECOVER_EVERY`, to
/// take the log up again from what the engine holds ([`Writer::recover`]).
#[derive(Default)]
pub(super) struct Failure {
    permanent: std::sync::OnceLock<String>,
    suspended: parking_lot::Mutex<Option<String>>,
}

/// How often a suspended store tries to take its log up again.
const RECOVER_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Failure {
    /// The first failure is the one reported.
    fn set(&self, what: &str, e: &StoreError) {
        if self.permanent.set(format!("{what} failed: {e}")).is_ok() {
            error!(error = %e, "store {what} failed; refusing further writes until a restart");
        }
    }

    /// `e` stops the store for good, or (an engine that can go on, and an
    /// error that says it is unavailable) until the log is taken up again.
    fn fail(&self, what: &str, e: &StoreError, engine: &dyn Engine) {
        match e {
            StoreError::Unavailable(_) if engine.recoverable() => {
                let mut s = self.suspended.lock();
                if s.is_none() {
                    warn!(error = %e, "store {what} failed; refusing appends until its database is back (nothing unacknowledged was taken for durable)");
                    *s = Some(format!("{what} failed: {e}"));
                }
            }
            _ => self.set(what, e),
        }
    }

    fn suspended(&self) -> bool {
        self.suspended.lock().is_some()
    }

    fn resume(&self) {
        if self.suspended.lock().take().is_some() {
            info!("store resumed: its database is back and the log was taken up again from it");
        }
    }

    fn error(&self) -> StoreError {
        match (self.permanent.get(), &*self.suspended.lock()) {
            (Some(reason), _) => StoreError::Failed(reason.clone()),
            (None, Some(reason)) => StoreError::Unavailable(reason.clone()),
            (None, None) => StoreError::Failed(String::new()),
        }
    }

    /// Whether the store accepts writes now.
    fn check(&self) -> Result<(), StoreError> {
        match self.permanent.get().is_some() || self.suspended() {
            true => Err(self.error()),
            false => Ok(()),
        }
    }

    /// Whether the store has stopped for good (a suspended one takes
    /// requests: its applier tries to take the log up again with them).
    fn check_permanent(&self) -> Result<(), StoreError> {
        match self.permanent.get() {
            Some(reason) => Err(StoreError::Failed(reason.clone())),
            None => Ok(()),
        }
    }
}

/// The space the store keeps free on its filesystem: appends are refused
/// (`DiskFull`, and the node says so) while less is available, and resume
/// by themselves once space is freed. The store's engine cannot go on after
/// a write that fails for want of space (sled keeps the error and fails
/// every later operation), so the reserve keeps it from getting there.
pub(super) struct DiskSpace {
    dir: std::path::PathBuf,
    reserve: u64,
    stats: Arc<StoreStats>,
}

impl DiskSpace {
    fn check(&self) -> Result<(), StoreError> {
        if self.reserve == 0 {
            return Ok(());
        }
        // Space available to this (unprivileged) process, as df shows it.
        let free = rustix::fs::statvfs(&self.dir).map(|s| s.f_bavail.saturating_mul(s.f_frsize));
        let full = matches!(free, Ok(free) if free < self.reserve);
        if self.stats.disk_full.swap(full, Ordering::Relaxed) != full {
            match full {
                true => warn!(
                    reserve = self.reserve,
                    "the store's disk is nearly full: refusing publishes until space is freed"
                ),
                false => tracing::info!("the store's disk has room again: accepting publishes"),
            }
        }
        match free {
            Ok(free) if full => Err(StoreError::DiskFull {
                free,
                reserve: self.reserve,
            }),
            Ok(_) => Ok(()),
            // Not knowing is not a reason to refuse: the write will say.
            Err(e) => {
                warn!(error = %e, "cannot read the free space of the store's filesystem");
                Ok(())
            }
        }
    }
}

/// The highest sequence the store has made durable, kept in a small file
/// beside the engine's files (`acknowledged`: the sequence and its CRC32).
/// It is recorded off the acknowledgement path ([`Marker`]): after a sync
/// has covered it, never before, and at most [`MARK_EVERY`] (plus one
/// fdatasync) behind what was acknowledged. At open, a log that ends before
/// it means the engine lost acknowledged records (the disk lied about an
/// fsync, or the files were damaged or replaced), and the store refuses to
/// open.
pub(super) struct Watermark {
    file: std::fs::File,
}

impl Watermark {
    pub fn open(dir: &Path) -> Result<Watermark, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("acknowledged"))
            .map_err(io)?;
        Ok(Watermark { file })
    }

    /// The recorded head; `None` when absent or unreadable (then logged).
    pub fn read(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 12];
        match self.file.read_exact_at(&mut buf, 0) {
            Ok(()) => {
                let (seq, sum) = buf.split_at(8);
                if crc32fast::hash(seq).to_be_bytes().as_slice() == sum {
                    seq.try_into().ok().map(u64::from_be_bytes)
                } else {
                    warn!("the acknowledged-head file is damaged; it will be rewritten");
                    None
                }
            }
            Err(_) => None, // a new store
        }
    }

    pub fn record(&self, seq: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 12];
        buf[..8].copy_from_slice(&seq.to_be_bytes());
        let sum = crc32fast::hash(&buf[..8]);
        buf[8..].copy_from_slice(&sum.to_be_bytes());
        self.file.write_all_at(&buf, 0)?;
        self.file.sync_data()
    }
}

/// How often the acknowledged head is recorded, at most: a disk that loses
/// acknowledged writes is caught for everything acknowledged this long
/// before the cut.
pub(super) const MARK_EVERY: std::time::Duration = std::time::Duration::from_millis(25);

/// Records the acknowledged head in the [`Watermark`] on a thread of its
/// own, so that no acknowledgement waits for a second flush.
#[derive(Default)]
struct Marker {
    state: parking_lot::Mutex<MarkState>,
    wake: parking_lot::Condvar,
}

#[derive(Default)]
struct MarkState {
    /// The committed head to record.
    wanted: u64,
    stop: bool,
}

impl Marker {
    fn note(&self, head: u64) {
        let mut st = self.state.lock();
        if head > st.wanted {
            st.wanted = head;
            self.wake.notify_one();
        }
    }

    fn stop(&self) {
        self.state.lock().stop = true;
        self.wake.notify_one();
    }

    fn run(&self, watermark: Watermark, mut recorded: u64, failed: &Failure) {
        loop {
            let (wanted, stop) = {
                let mut st = self.state.lock();
                while st.wanted <= recorded && !st.stop {
                    self.wake.wait(&mut st);
                }
                (st.wanted, st.stop)
            };
            if wanted > recorded {
                if let Err(e) = watermark.record(wanted) {
                    // The file's pages may be gone: it is not retried.
                    failed.set(
                        "record of the acknowledged head",
                        &StoreError::Io(e.to_string()),
                    );
                    return;
                }
                recorded = wanted;
            }
            if stop {
                return;
            }
            // At most one record per period; a stop ends the wait.
            let until = Instant::now() + MARK_EVERY;
            let mut st = self.state.lock();
            while !st.stop && !self.wake.wait_until(&mut st, until).timed_out() {}
        }
    }
}

/// The flusher: makes written batches and cursor writes durable (one sync
/// of the engine, i.e. one fdatasync of its log, per round) and only then
/// answers them and moves the committed head.
struct Flusher {
    engine: Arc<dyn Engine>,
    marker: Arc<Marker>,
    durable: u64,
    head_tx: Arc<watch::Sender<u64>>,
    failed: Arc<Failure>,
    pipeline: Arc<Pipeline>,
    stats: Arc<StoreStats>,
}

impl Flusher {
    fn run(mut self) {
        loop {
            let needs_flush = {
                let mut q = self.pipeline.queue.lock();
                while q.is_empty() && !self.pipeline.closed.load(Ordering::Acquire) {
                    self.pipeline.wake.wait(&mut q);
                }
                if q.is_empty() {
                    return; // closed and drained
                }
                q.iter().any(|p| matches!(p, Pending::Sync { .. }))
            };
            // Everything applied or written before these loads is covered by the flush below.
            let round = self.pipeline.rounds.fetch_add(1, Ordering::AcqRel) + 1;
            let target = self.pipeline.applied.load(Ordering::Acquire);
            if target > self.durable || needs_flush {
                let t0 = Instant::now();
                // One sync of the engine (its write-ahead log) before any
                // reply; the acknowledged head is recorded off this path.
                let result = self.engine.sync();
                let took = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.stats
                    .fsync_nanos_total
                    .fetch_add(took, Ordering::Relaxed);
                self.stats
                    .fsync_nanos_max
                    .fetch_max(took, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.fsync_seconds.observe(took as f64 / 1e9);
                if target > self.durable {
                    self.stats
                        .batch_records
                        .observe(target.saturating_sub(self.durable) as f64);
                }
                if let Err(e) = result {
                    // Never retried: after a failed fsync the kernel may have
                    // dropped the pages it covered, and a second fsync would
                    // report success without them (PostgreSQL's "fsyncgate").
                    // A database engine's failed commit was rolled back whole
                    // by the database: its store is only suspended, and the
                    // applier takes the log up again from the database.
                    self.failed.fail("flush (sync)", &e, self.engine.as_ref());
                    let drained: Vec<Pending> = self.pipeline.queue.lock().drain(..).collect();
                    for p in drained {
                        match p {
                            Pending::Batch { replies, .. } => {
                                for (reply, _) in replies {
                                    let _ = reply.send(Err(self.failed.error()));
                                }
                            }
                            Pending::Sync { reply, .. } => {
                                let _ = reply.send(Err(self.failed.error()));
                            }
                        }
                    }
                    continue;
                }
                if target > self.durable {
                    self.stats
                        .appended
                        .fetch_add(target - self.durable, Ordering::Relaxed);
                    self.durable = target;
                    raise(&self.head_tx, target);
                    self.marker.note(target);
                }
            }
            let durable = self.durable;
            let done: Vec<Pending> = {
                let mut q = self.pipeline.queue.lock();
                let (done, keep): (Vec<Pending>, Vec<Pending>) =
                    q.drain(..).partition(|p| match p {
                        Pending::Batch { upto, .. } => *upto <= durable,
                        Pending::Sync { min_round, .. } => *min_round <= round,
                    });
                *q = keep;
                done
            };
            for p in done {
                match p {
                    Pending::Batch { replies, .. } => {
                        for (reply, outcome) in replies {
                            let _ = reply.send(outcome);
                        }
                    }
                    Pending::Sync { reply, .. } => {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
        }
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<WriteReq>) {
        let mut reqs = Vec::with_capacity(self.max_batch);
        let mut next = None;
        let waiting = |rx: &mut mpsc::Receiver<WriteReq>, engine: &dyn Engine| match rx.try_recv() {
            Ok(req) => Some(req),
            Err(mpsc::error::TryRecvError::Empty) => {
                // Nothing waits: a shared log may be written by another.
                engine.idle();
                rx.blocking_recv()
            }
            Err(mpsc::error::TryRecvError::Disconnected) => None,
        };
        while let Some(first) = next
            .take()
            .or_else(|| waiting(&mut rx, self.engine.as_ref()))
        {
            let first = match first {
                WriteReq::Append { rec, reply } => (rec, reply),
                WriteReq::Prune { seqs, reply } => {
                    let _ = reply.send(self.claim().and_then(|()| self.prune(&seqs)));
                    continue;
                }
            };
            reqs.push(first);
            // A prune waiting behind appends ends their batch (order is kept).
            while reqs.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(WriteReq::Append { rec, reply }) => reqs.push((rec, reply)),
                    Ok(prune) => {
                        next = Some(prune);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.apply(std::mem::take(&mut reqs));
        }
        // Set under the queue's lock: the flusher checks `closed` under it
        // before it waits, so it either sees the flag or is already waiting
        // when the notification comes (no lost wakeup, no hang on close).
        {
            let _queue = self.pipeline.queue.lock();
            self.pipeline.closed.store(true, Ordering::Release);
        }
        self.pipeline.wake.notify_all();
    }

    /// Applies one batch of appends, in named steps: each request is
    /// decided against the index ([`decide`]), a new one checked for the
    /// bulletin it supersedes or retracts and added to the batch; then the
    /// batch goes to the engine in one atomic write and its replies to the flusher.
    fn apply(&mut self, reqs: Vec<AppendReq>) {
        self.recover();
        if let Err(e) = self.failed.check().and_then(|()| self.space.check()) {
            for (_, reply) in reqs {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
        if let Err(e) = self.claim() {
            for (_, reply) in reqs {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
        self.forget_synced();
        let mut batch = Batch {
            writes: WriteSet::default(),
            pending: HashMap::new(),
            successors: HashMap::new(),
            upto: 0,
            next: self.head + 1,
            now: nanos(SystemTime::now()),
            free_from: self.last_accepted,
            tree: self.tree.clone(),
        };
        // Every index entry the batch may ask for, in one read.
        let keys: Vec<(String, String)> = reqs
            .iter()
            .flat_map(|(rec, _)| {
                let own = (rec.meta.publisher.clone(), rec.meta.id.clone());
                let related = rec
                    .related
                    .as_ref()
                    .map(|r| (rec.meta.publisher.clone(), r.id.clone()));
                std::iter::once(own).chain(related)
            })
            .collect();
        match self.engine.index_many(&keys) {
            Ok(entries) => {
                self.prefetched = keys
                    .into_iter()
                    .zip(entries)
                    .map(|(k, v)| (k, v.and_then(|v| Indexed::decode(&v))))
                    .collect();
            }
            Err(e) => {
                // As in `admit` below: an engine that cannot be read stops
                // the store, and every request hears that, not the raw I/O error.
                let e = if matches!(e, StoreError::Io(_)) {
                    self.failed.set("read", &e);
                    self.failed.error()
                } else {
                    e
                };
                for (_, reply) in reqs {
                    let _ = reply.send(Err(e.clone()));
                }
                return;
            }
        }
        let mut replies: Vec<Reply> = Vec::with_capacity(reqs.len());
        for (rec, reply) in reqs {
            let outcome = match self.admit(&mut batch, rec) {
                // The engine cannot be read (sled keeps a failed write's
                // error and returns it from every later operation): the
                // store stops, as after a failed write or fsync.
                Err(e @ StoreError::Io(_)) => {
                    self.failed.set("read", &e);
                    Err(self.failed.error())
                }
                other => other,
            };
            replies.push((reply, outcome));
        }
        self.prefetched.clear();
        if self.failed.check().is_err() {
            for (reply, _) in replies {
                let _ = reply.send(Err(self.failed.error()));
            }
            return;
        }
        self.commit(batch, replies);
    }

    /// One append: a duplicate answered with the original, a conflict, or
    /// a new record added to `batch`.
    fn admit(&self, batch: &mut Batch, rec: NewRecord) -> Result<Appended, StoreError> {
        let key = (rec.meta.publisher.clone(), rec.meta.id.clone());
        let existing = match self.held_unsynced(batch, &key) {
            Some(h) => Some((h.indexed.clone(), Some(h.accepted_at))),
            None => self.lookup(&key.0, &key.1)?.map(|i| (i, None)),
        };
        match decide(
            existing.as_ref().map(|(i, _)| i),
            &rec.meta.digest,
            &rec.payload_digest,
        ) {
            Decision::Duplicate(seq) => {
                // Answer only once the original is durable.
                batch.upto = batch.upto.max(seq);
                let accepted_at = match existing.and_then(|(_, at)| at) {
                    Some(at) => at,
                    None => self.accepted_at(seq)?,
                };
                Ok(Appended {
                    seq,
                    accepted_at,
                    duplicate: true,
                })
            }
            Decision::Conflict => Err(StoreError::Conflict {
                publisher: key.0,
                id: key.1,
            }),
            Decision::New => {
                let related = self.related(batch, &rec)?;
                let how = rec.related.as_ref().map(|r| r.how);
                let appended = batch.append(key, rec);
                if let (Some(original), Some(how)) = (related, how) {
                    let old = match self.successor_unsynced(batch, original) {
                        Some(s) => Some(s),
                        None => self.successor(original)?,
                    };
                    batch.mark(original, old, how, appended.seq);
                }
                Ok(appended)
            }
        }
    }

    /// The bulletin `rec` supersedes or retracts, as (key, index entry), to
    /// be marked once `rec` is appended. A publish needs it held (or earlier
    /// in this batch), and must reach every reader it had
    /// ([`reaches_every_reader`]); a relay marks it only if held. Once
    /// found, the answer waits for it to be durable.
    fn related(&self, batch: &mut Batch, rec: &NewRecord) -> Result<Option<u64>, StoreError> {
        let Some(rel) = &rec.related else {
            return Ok(None);
        };
        let key = (rec.meta.publisher.clone(), rel.id.clone());
        let seq = match self.held_unsynced(batch, &key) {
            Some(h) => h.indexed.seq,
            None => match self.lookup(&key.0, &key.1)? {
                Some(i) => {
                    batch.upto = batch.upto.max(i.seq);
                    i.seq
                }
                None if rel.required => {
                    return Err(StoreError::MissingRelated {
                        relation: rel.relation(),
                        publisher: key.0,
                        id: key.1,
                    })
                }
                None => return Ok(None),
            },
        };
        if rel.required {
            let unsynced = batch
                .record(seq)
                .or_else(|| self.staged.iter().rev().find_map(|w| w.record(seq)));
            let original = match unsynced {
                Some(r) => r?.meta,
                // Pruned: no reader can be left with it, and nothing to mark.
                None if self.engine.tombstone(seq)?.is_some() => return Ok(None),
                None => self.held(seq)?.meta,
            };
            let narrows = match (Marking::of(&rec.meta), Marking::of(&original)) {
                (Some(new), Some(old)) => !reaches_every_reader(&new, &old),
                _ => true,
            };
            if narrows {
                return Err(StoreError::Narrows {
                    relation: rel.relation(),
                    publisher: key.0,
                    id: key.1,
                });
            }
        }
        Ok(Some(seq))
    }

    /// Writes the batch to the engine in one atomic write (records, index, head)
    /// and hands its replies to the flusher, which answers them once durable.
    fn commit(&mut self, batch: Batch, replies: Vec<Reply>) {
        let Batch {
            mut writes,
            mut upto,
            next,
            free_from,
            pending,
            successors,
            tree,
            ..
        } = batch;
        let new_head = next - 1;
        if new_head != self.head {
            writes.head = Some(new_head);
            let records = writes.records.clone();
            if let Err(e) = self.engine.stage(writes) {
                self.failed.fail("write", &e, self.engine.as_ref());
                for (reply, _) in replies {
                    let _ = reply.send(Err(self.failed.error()));
                }
                return;
            }
            self.staged.push_back(Staged {
                head: new_head,
                pending,
                successors,
                records,
            });
            self.head = new_head;
            self.last_accepted = free_from;
            self.tree = tree;
            upto = upto.max(new_head);
            self.pipeline.applied.store(new_head, Ordering::Release);
        }
        if let Err(Pending::Batch { replies, .. }) =
            self.pipeline.push(Pending::Batch { upto, replies })
        {
            for (reply, _) in replies {
                let _ = reply.send(Err(self.failed.error()));
            }
        }
    }

    /// Makes this process the log's writer (a shared engine) and, if
    /// others appended since it last wrote, reads its tip again: the head,
    /// the earliest acceptance time of the next record, the tree's edge.
    /// What it staged before is durable by then (the engine commits it
    /// before it lets the log go).
    fn claim(&mut self) -> Result<(), StoreError> {
        self.recover();
        self.failed.check()?;
        let Some(head) = self.engine.claim()? else {
            return Ok(());
        };
        if head < self.head {
            let e = StoreError::RolledBack {
                acknowledged: self.head,
                found: head,
            };
            self.failed.set("claim of the shared log", &e);
            return Err(e);
        }
        let tip = Tip::read(self.engine.as_ref(), head, self.max_span)?;
        self.staged.clear();
        self.head = head;
        self.tree = tip.tree;
        self.last_accepted = self.last_accepted.max(tip.last_accepted);
        self.pipeline.applied.fetch_max(head, Ordering::AcqRel);
        Ok(())
    }

    /// A suspended store (its database was lost) takes its log up again,
    /// if the engine can and `RECOVER_EVERY` has passed since it last
    /// tried: the engine makes its connections again and reads the log's
    /// head; a head below what was acknowledged stops the store for good
    /// (the database lost acknowledged records); otherwise the applier
    /// forgets what it staged (never acknowledged: its replies were
    /// refusals) and reads its tip again. It waits until the flusher has
    /// answered everything queued, so no round covers the old tip.
    fn recover(&mut self) {
        if !self.failed.suspended() || self.failed.check_permanent().is_err() {
            return;
        }
        if self
            .last_recovery
            .is_some_and(|t| t.elapsed() < RECOVER_EVERY)
        {
            return;
        }
        self.last_recovery = Some(Instant::now());
        if !self.pipeline.queue.lock().is_empty() {
            return;
        }
        let head = match self.engine.recover() {
            Ok(h) => h,
            Err(e) => {
                debug!(error = %e, "the store's database is not back yet");
                return;
            }
        };
        let durable = *self.committed.borrow();
        if head < durable {
            self.failed.set(
                "resumption",
                &StoreError::RolledBack {
                    acknowledged: durable,
                    found: head,
                },
            );
            return;
        }
        let tip = match Tip::read(self.engine.as_ref(), head, self.max_span) {
            Ok(t) => t,
            Err(e) => {
                debug!(error = %e, "the store's tip cannot be read yet");
                return;
            }
        };
        {
            let q = self.pipeline.queue.lock();
            if !q.is_empty() {
                return;
            }
            // Nothing queued: the flusher waits, and its next round syncs
            // up to this head (records a failed commit did apply after
            // all are durable in the database: they become the committed
            // head, never answered as appended).
            self.pipeline.applied.store(head, Ordering::Release);
        }
        self.staged.clear();
        self.head = head;
        self.tree = tip.tree;
        self.last_accepted = self.last_accepted.max(tip.last_accepted);
        self.failed.resume();
    }

    /// Replaces the records at `seqs` by tombstones in one atomic write
    /// (their successor and expiry entries go with them). Only committed
    /// records are pruned; one already pruned is passed over.
    fn prune(&mut self, seqs: &[u64]) -> Result<u64, StoreError> {
        self.failed.check()?;
        self.forget_synced();
        let durable = *self.committed.borrow();
        let now = SystemTime::now();
        let mut writes = WriteSet::default();
        let wanted: Vec<u64> = seqs.iter().copied().filter(|s| *s <= durable).collect();
        let records = self
            .engine
            .records_at(&wanted)?
            .into_iter()
            .map(|(seq, bytes)| Record::decode(seq, bytes))
            .collect::<Result<Vec<Record>, StoreError>>()?;
        let keys: Vec<(String, String)> = records
            .iter()
            .map(|r| (r.meta.publisher.clone(), r.meta.id.clone()))
            .collect();
        let entries = self.engine.index_many(&keys)?;
        for (rec, entry) in records.into_iter().zip(entries) {
            let seq = rec.seq;
            let payload_digest = entry
                .and_then(|v| Indexed::decode(&v))
                .and_then(|i| i.payload_digest);
            writes.pruned.push(Pruned {
                seq,
                tombstone: Tombstone::of(&rec, payload_digest, now).encode(),
                expires: rec.meta.expires_at.map(nanos),
            });
        }
        let n = writes.pruned.len() as u64;
        if n > 0 {
            if let Err(e) = self.engine.write(writes) {
                self.failed.fail("write", &e, self.engine.as_ref());
                return Err(e);
            }
        }
        Ok(n)
    }

    /// Forgets the staged batches the committed head has passed: the
    /// engine shows them now.
    fn forget_synced(&mut self) {
        let committed = *self.committed.borrow();
        while self.staged.front().is_some_and(|w| w.head <= committed) {
            self.staged.pop_front();
        }
    }

    /// What this batch, or a staged one not yet synced, appended for `key`.
    fn held_unsynced<'a>(&'a self, batch: &'a Batch, key: &(String, String)) -> Option<&'a Held> {
        batch
            .pending
            .get(key)
            .or_else(|| self.staged.iter().rev().find_map(|w| w.pending.get(key)))
    }

    /// What replaced the record at `seq` in this batch or a staged one not
    /// yet synced.
    fn successor_unsynced(&self, batch: &Batch, seq: u64) -> Option<Successor> {
        batch
            .successors
            .get(&seq)
            .or_else(|| {
                self.staged
                    .iter()
                    .rev()
                    .find_map(|w| w.successors.get(&seq))
            })
            .copied()
    }

    fn lookup(&self, publisher: &str, id: &str) -> Result<Option<Indexed>, StoreError> {
        if let Some(found) = self.prefetched.get(&(publisher.to_owned(), id.to_owned())) {
            return Ok(found.clone());
        }
        Ok(self
            .engine
            .index(publisher, id)?
            .and_then(|v| Indexed::decode(&v)))
    }

    /// When the record at `seq` was accepted (it may have been pruned since).
    fn accepted_at(&self, seq: u64) -> Result<SystemTime, StoreError> {
        if let Some(t) = self.engine.tombstone(seq)? {
            return Ok(Tombstone::decode(seq, &t)?.accepted_at);
        }
        self.held(seq).map(|r| r.accepted_at)
    }

    /// What replaced the record at `seq` so far.
    fn successor(&self, seq: u64) -> Result<Option<Successor>, StoreError> {
        Ok(self
            .engine
            .successors(seq, seq)?
            .first()
            .and_then(|(_, v)| Successor::decode(v)))
    }

    /// The record the index names at `seq`.
    fn held(&self, seq: u64) -> Result<Record, StoreError> {
        match self.engine.record(seq)? {
            Some(v) => Record::decode(seq, v),
            None => {
                warn!(seq, "index names a record the log does not hold");
                Err(StoreError::Corrupt {
                    seq,
                    reason: "index names a missing record".into(),
                })
            }
        }
    }
}

#[cfg(test)]
mod decide_tests {
    use super::*;

    fn indexed(seq: u64, digest: u8, payload: Option<u8>) -> Indexed {
        Indexed {
            seq,
            digest: [digest; 32],
            payload_digest: payload.map(|p| [p; 32]),
        }
    }

    #[test]
    fn an_append_is_new_a_duplicate_or_a_conflict() {
        assert_eq!(decide(None, &[1; 32], &[2; 32]), Decision::New);
        let held = indexed(7, 1, Some(2));
        // The same envelope.
        assert_eq!(
            decide(Some(&held), &[1; 32], &[2; 32]),
            Decision::Duplicate(7)
        );
        // The same payload, signed again (another envelope).
        assert_eq!(
            decide(Some(&held), &[9; 32], &[2; 32]),
            Decision::Duplicate(7)
        );
        // Other content under the same id.
        assert_eq!(decide(Some(&held), &[9; 32], &[8; 32]), Decision::Conflict);
        // An entry from before the payload digest: only the envelope matches.
        let old = indexed(3, 1, None);
        assert_eq!(
            decide(Some(&old), &[1; 32], &[2; 32]),
            Decision::Duplicate(3)
        );
        assert_eq!(decide(Some(&old), &[9; 32], &[2; 32]), Decision::Conflict);
    }
}
