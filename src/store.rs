//! The durable log. The only module that touches sled.
//!
//! # Layout
//! One sled tree, `log`, with prefixed keys, so that one atomic batch covers a
//! record, its indexes and the head:
//!
//! ```text
//! L <seq:u64be>                      -> record (see `Record::encode`)
//! I <id> 0x00 <publisher>            -> <seq:u64be> <envelope digest:32> <payload digest:32>
//! H                                  -> <head seq:u64be>
//! ```
//! and a second tree, `cursors`, for durable subscription cursors. (Index
//! entries written before the payload digest was kept are 40 bytes; they
//! simply lack the "same bulletin signed again" check.)
//!
//! # Writing
//! A pipelined group commit on two threads. The applier takes every request
//! waiting (up to a batch limit), assigns gapless sequence numbers and applies
//! one sled batch (record, index, head). The flusher calls `flush` (fsync)
//! and only then answers every request the flush covers and moves the
//! committed head (a `watch` the rest of the process follows). While batch N
//! is being flushed, batch N+1 is applied. Cursor writes share the flushes.
//!
//! # Reading
//! Every record ends with a CRC32 over all its bytes (checked on every read)
//! and carries the SHA-256 digest of its envelope (checked by [`Store::served`]
//! before any envelope leaves the node; records a reader only filters past are
//! not hashed). A record that fails is reported (error, log line, counter),
//! never served.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

use crate::bulletin::Meta;

#[derive(Debug, thiserror::Error)]
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
    #[error("the store stopped accepting writes after an earlier failure")]
    Failed,
    #[error("the store is shut down")]
    Closed,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// A stored bulletin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub accepted_at: SystemTime,
    pub meta: Meta,
    /// The serialized envelope: a view into the stored record, not a copy.
    pub envelope: Bytes,
}

const RECORD_VERSION: u8 = 2;
/// Bytes of the CRC32 trailer.
const TRAILER: usize = 4;

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&b[..usize::from(len)]);
}

fn put_strs(out: &mut Vec<u8>, v: &[String]) {
    let n = u16::try_from(v.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    for s in v.iter().take(usize::from(n)) {
        put_str(out, s);
    }
}

/// A bounds-checked reader: corrupt input is an error, never a panic.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn str(&mut self) -> Result<String, String> {
        let n = self.u16()?;
        String::from_utf8(self.take(usize::from(n))?.to_vec()).map_err(|_| "bad utf-8".to_string())
    }
    fn strs(&mut self) -> Result<Vec<String>, String> {
        let n = self.u16()?;
        (0..n).map(|_| self.str()).collect()
    }
}

impl Record {
    /// The stored form: fields, envelope, then a CRC32 of everything before it.
    pub fn encode(&self) -> Vec<u8> {
        let m = &self.meta;
        let mut out = Vec::with_capacity(self.envelope.len() + 256);
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&nanos(self.accepted_at).to_be_bytes());
        out.extend_from_slice(&m.origin_seq.to_be_bytes());
        out.extend_from_slice(&m.created_at.map(nanos).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&[m.kind, m.severity, m.tlp]);
        out.extend_from_slice(&m.digest);
        put_str(&mut out, &m.origin_node);
        put_str(&mut out, &m.publisher);
        put_str(&mut out, &m.id);
        put_strs(&mut out, &m.audience_members);
        put_strs(&mut out, &m.audience_groups);
        put_strs(&mut out, &m.topics);
        let len = u32::try_from(self.envelope.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.envelope);
        let sum = crc32fast::hash(&out);
        out.extend_from_slice(&sum.to_be_bytes());
        out
    }

    /// Parses and checks a stored record; `seq` is the key it was found under.
    /// The envelope stays a view into `raw`.
    pub fn decode(seq: u64, raw: Bytes) -> Result<Record, StoreError> {
        let bytes = raw.as_ref();
        let corrupt = |reason: String| StoreError::Corrupt { seq, reason };
        if bytes.len() < TRAILER + 1 {
            return Err(corrupt("record is truncated".into()));
        }
        let (body, sum) = bytes.split_at(bytes.len() - TRAILER);
        if crc32fast::hash(body).to_be_bytes().as_slice() != sum {
            return Err(corrupt("checksum mismatch".into()));
        }
        let mut r = Reader { buf: body };
        let parse = |r: &mut Reader<'_>| -> Result<Record, String> {
            let version = r.u8()?;
            if version != RECORD_VERSION {
                return Err(format!("unknown record version {version}"));
            }
            let stored_seq = r.u64()?;
            let accepted_at = from_nanos(r.u64()?);
            let origin_seq = r.u64()?;
            let created = r.u64()?;
            let kind = r.u8()?;
            let severity = r.u8()?;
            let tlp = r.u8()?;
            let mut digest = [0u8; 32];
            digest.copy_from_slice(r.take(32)?);
            let origin_node = r.str()?;
            let publisher = r.str()?;
            let id = r.str()?;
            let audience_members = r.strs()?;
            let audience_groups = r.strs()?;
            let topics = r.strs()?;
            let len = r.u32()? as usize;
            let start = body.len() - r.buf.len();
            r.take(len)?;
            let envelope = raw.slice(start..start + len);
            if !r.buf.is_empty() {
                return Err("trailing bytes".into());
            }
            Ok(Record {
                seq: stored_seq,
                accepted_at,
                meta: Meta {
                    id,
                    publisher,
                    digest,
                    origin_node,
                    origin_seq,
                    kind,
                    severity,
                    tlp,
                    created_at: (created != 0).then(|| from_nanos(created)),
                    audience_members,
                    audience_groups,
                    topics,
                },
                envelope,
            })
        };
        let rec = parse(&mut r).map_err(corrupt)?;
        if rec.seq != seq {
            return Err(corrupt(format!("record claims sequence {}", rec.seq)));
        }
        Ok(rec)
    }

    /// Checks the envelope against the digest stored with it. Every path that
    /// serves an envelope calls this (through [`Store::served`]).
    pub fn check_digest(&self) -> Result<(), StoreError> {
        if crate::bulletin::sha256(&self.envelope) != self.meta.digest {
            return Err(StoreError::Corrupt {
                seq: self.seq,
                reason: "envelope digest mismatch".into(),
            });
        }
        Ok(())
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
    /// An earlier bulletin of the same publisher that must exist (supersedes/retracts).
    pub requires: Option<(&'static str, String)>,
}

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub accepted_at: SystemTime,
    /// The same envelope was already stored; `seq` is the original.
    pub duplicate: bool,
}

struct WriteReq {
    rec: NewRecord,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// Most appends in one batch (one fsync).
    pub max_batch: usize,
    /// Appends waiting for the writer; callers wait beyond that (backpressure).
    pub queue: usize,
}

/// Appends waiting for the writer before callers wait.
const QUEUE: usize = 4096;

impl From<&crate::config::StoreConfig> for StoreOptions {
    /// The `[store]` settings of `beacon.toml`.
    fn from(c: &crate::config::StoreConfig) -> Self {
        StoreOptions {
            cache_bytes: c.cache_mb * 1024 * 1024,
            max_batch: c.max_batch,
            queue: QUEUE,
        }
    }
}

impl Default for StoreOptions {
    /// The defaults of `beacon.toml`'s `[store]` (one default per setting).
    fn default() -> Self {
        StoreOptions::from(&crate::config::StoreConfig::default())
    }
}

/// Figures for status and metrics.
#[derive(Debug)]
pub struct StoreStats {
    pub corrupt_reads: AtomicU64,
    pub batches: AtomicU64,
    pub appended: AtomicU64,
    pub fsync_nanos_total: AtomicU64,
    pub fsync_nanos_max: AtomicU64,
    /// Duration of each flush.
    pub fsync_seconds: crate::metrics::Histogram,
    /// Records each flush made durable.
    pub batch_records: crate::metrics::Histogram,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            corrupt_reads: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            fsync_nanos_total: AtomicU64::new(0),
            fsync_nanos_max: AtomicU64::new(0),
            fsync_seconds: crate::metrics::Histogram::new(crate::metrics::FSYNC_BOUNDS),
            batch_records: crate::metrics::Histogram::new(crate::metrics::BATCH_BOUNDS),
        }
    }
}

/// The durable log.
pub struct Store {
    db: sled::Db,
    log: sled::Tree,
    cursors: sled::Tree,
    head: watch::Receiver<u64>,
    writer: Option<mpsc::Sender<WriteReq>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    flusher_thread: Option<std::thread::JoinHandle<()>>,
    pipeline: Arc<Pipeline>,
    failed: Arc<AtomicBool>,
    pub stats: Arc<StoreStats>,
}

fn lkey(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'L';
    k[1..].copy_from_slice(&seq.to_be_bytes());
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

const HEAD_KEY: &[u8] = b"H";

/// The id index entry of (publisher, id): its sequence and envelope digest.
/// What the id index holds for (publisher, id): the sequence, the envelope
/// digest, and the payload digest (absent in entries written before it was
/// kept: the index value is then 40 bytes, not 72).
#[derive(Debug, Clone)]
struct Indexed {
    seq: u64,
    digest: [u8; 32],
    payload_digest: Option<[u8; 32]>,
}

fn index_lookup(
    log: &sled::Tree,
    publisher: &str,
    id: &str,
) -> Result<Option<Indexed>, StoreError> {
    Ok(log.get(ikey(publisher, id)).map_err(io)?.and_then(|v| {
        Some(Indexed {
            seq: be_u64(&v)?,
            digest: v.get(8..40)?.try_into().ok()?,
            payload_digest: v.get(40..72).and_then(|p| p.try_into().ok()),
        })
    }))
}

/// A value read from sled as shared bytes (no copy).
fn owned(v: sled::IVec) -> Bytes {
    Bytes::from_owner(v)
}

fn be_u64(b: &[u8]) -> Option<u64> {
    let a: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(a))
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts its writer thread.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let config = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(opts.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(500));
        // sled's background flusher lets go of the directory's file lock a
        // moment after the last handle is dropped, so a store closed and
        // reopened in one process (a node restarted in place) can find it
        // still held. Wait a bounded time for it; another process holding
        // the store is still refused, after the wait.
        let deadline = Instant::now() + Duration::from_secs(3);
        // (sled reports it as an `Other` I/O error with this text.)
        let locked = |e: &sled::Error| matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"));
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if locked(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) if locked(&e) => {
                    return Err(StoreError::Io(format!(
                        "{} is in use by another process (its lock is held): {e}",
                        dir.display()
                    )));
                }
                Err(e) => return Err(io(e)),
            }
        };
        let log = db.open_tree("log").map_err(io)?;
        let cursors = db.open_tree("cursors").map_err(io)?;
        let head = match log.get(HEAD_KEY).map_err(io)? {
            Some(v) => be_u64(&v).ok_or_else(|| StoreError::Io("head marker is damaged".into()))?,
            None => 0,
        };
        // The head and the log are written in one atomic batch; check they agree.
        let last = log
            .range(lkey(0)..=lkey(u64::MAX))
            .next_back()
            .transpose()
            .map_err(io)?
            .and_then(|(k, _)| be_u64(&k[1..]));
        if last.unwrap_or(0) != head {
            return Err(StoreError::Io(format!(
                "head marker says {head} but the log ends at {}",
                last.unwrap_or(0)
            )));
        }
        // A log that ends before what was acknowledged is refused, never served.
        let watermark = Watermark::open(dir)?;
        if let Some(acknowledged) = watermark.read() {
            if acknowledged > head {
                return Err(StoreError::RolledBack {
                    acknowledged,
                    found: head,
                });
            }
        }
        watermark.record(head).map_err(io)?;
        let (head_tx, head_rx) = watch::channel(head);
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let failed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(StoreStats::default());
        let last_accepted = match head {
            0 => 0,
            h => log
                .get(lkey(h))
                .map_err(io)?
                .and_then(|v| Record::decode(h, owned(v)).ok())
                .map(|r| nanos(r.accepted_at))
                .unwrap_or(0),
        };
        let pipeline = Arc::new(Pipeline {
            queue: parking_lot::Mutex::new(Vec::new()),
            wake: parking_lot::Condvar::new(),
            applied: AtomicU64::new(head),
            rounds: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let writer = Writer {
            log: log.clone(),
            head,
            last_accepted,
            failed: failed.clone(),
            max_batch: opts.max_batch.max(1),
            pipeline: pipeline.clone(),
        };
        let flusher = Flusher {
            db: db.clone(),
            watermark,
            durable: head,
            head_tx,
            failed: failed.clone(),
            pipeline: pipeline.clone(),
            stats: stats.clone(),
        };
        let flusher_thread = std::thread::Builder::new()
            .name("beacon-store-flush".into())
            .spawn(move || flusher.run())
            .map_err(io)?;
        let thread = std::thread::Builder::new()
            .name("beacon-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        Ok(Store {
            db,
            log,
            cursors,
            head: head_rx,
            writer: Some(tx),
            writer_thread: Some(thread),
            flusher_thread: Some(flusher_thread),
            pipeline,
            failed,
            stats,
        })
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
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed);
        }
        let writer = self.writer.as_ref().ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        writer
            .send(WriteReq { rec, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(async move { rx.await.map_err(|_| StoreError::Closed)? })
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
        Ok(rec)
    }

    /// The record at `seq`, checked. Only durable records are visible.
    pub fn get(&self, seq: u64) -> Result<Option<Record>, StoreError> {
        if seq > self.head() {
            return Ok(None);
        }
        match self.log.get(lkey(seq)).map_err(io)? {
            None => Ok(None),
            Some(v) => Record::decode(seq, owned(v))
                .map(Some)
                .inspect_err(|e| self.note_corrupt(e)),
        }
    }

    /// The sequence and digest of (publisher, id), if held durably.
    pub fn lookup(&self, publisher: &str, id: &str) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        // Records applied but not yet durable stay invisible.
        let head = self.head();
        Ok(index_lookup(&self.log, publisher, id)?
            .filter(|i| i.seq <= head)
            .map(|i| (i.seq, i.digest)))
    }

    /// Every (publisher, seq) holding a bulletin with this id.
    pub fn lookup_id(&self, id: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let prefix = ikey("", id); // I <id> 0x00
        let head = self.head();
        let mut out = Vec::new();
        for item in self.log.scan_prefix(&prefix).take(64) {
            let (k, v) = item.map_err(io)?;
            let publisher = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some(seq) = be_u64(&v).filter(|&s| s <= head) {
                out.push((publisher, seq));
            }
        }
        Ok(out)
    }

    /// Durable records with `from <= seq <= to`, in order; each item is checked.
    pub fn range(
        &self,
        from: u64,
        to: u64,
    ) -> Box<dyn Iterator<Item = Result<Record, StoreError>> + Send + '_> {
        let Some(log) = self.durable_log(from, to) else {
            return Box::new(std::iter::empty());
        };
        Box::new(log.map(move |item| {
            let (k, v) = item.map_err(io)?;
            let seq = be_u64(&k[1..]).ok_or_else(|| StoreError::Io("bad log key".into()))?;
            Record::decode(seq, owned(v)).inspect_err(|e| self.note_corrupt(e))
        }))
    }

    /// Reads durable records `from..=to` without returning them, so that
    /// their pages are in the cache when a reader comes for them. A hint:
    /// it stops at the first error (the reader will meet and report it).
    pub fn prefetch(&self, from: u64, to: u64) {
        for item in self.durable_log(from, to).into_iter().flatten() {
            if item.is_err() {
                return;
            }
        }
    }

    /// sled's entries for `from..=to`, clamped to the committed head (`None`
    /// when nothing durable is in range).
    fn durable_log(&self, from: u64, to: u64) -> Option<sled::Iter> {
        let to = to.min(self.head());
        (from <= to).then(|| self.log.range(lkey(from)..=lkey(to)))
    }

    /// The first sequence accepted at or after `t` (head + 1 if none).
    /// Acceptance times never go backwards along the log, so this is a binary search.
    pub fn first_seq_at_or_after(&self, t: SystemTime) -> Result<u64, StoreError> {
        let head = self.head();
        let (mut lo, mut hi) = (1u64, head + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = match self.log.get(lkey(mid)).map_err(io)? {
                Some(v) => Record::decode(mid, owned(v))?.accepted_at,
                None => {
                    return Err(StoreError::Io(format!(
                        "log has no record {mid} below head {head}"
                    )))
                }
            };
            if at < t {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// A durable cursor (last acknowledged sequence) of (identity, name).
    pub fn cursor(&self, identity: &str, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .cursors
            .get(cursor_key(identity, name))
            .map_err(io)?
            .and_then(|v| be_u64(&v)))
    }

    /// Stores a cursor; it only moves forward. Not fsynced on its own: losing a
    /// cursor write can only cause redelivery.
    pub fn set_cursor(&self, identity: &str, name: &str, seq: u64) -> Result<(), StoreError> {
        let key = cursor_key(identity, name);
        self.cursors
            .fetch_and_update(&key, |old| {
                let old_seq = old.and_then(be_u64).unwrap_or(0);
                Some(seq.max(old_seq).to_be_bytes().to_vec())
            })
            .map_err(io)?;
        Ok(())
    }

    /// Stores a cursor and resolves once it is durable (it shares the next
    /// flush with concurrent publishes). It only moves forward.
    pub async fn commit_cursor(
        &self,
        identity: &str,
        name: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed);
        }
        self.set_cursor(identity, name, seq)?;
        let (reply, rx) = oneshot::channel();
        let min_round = self.pipeline.rounds.load(Ordering::Acquire) + 1;
        if self
            .pipeline
            .push(Pending::Sync { min_round, reply })
            .is_err()
        {
            // The writer is stopping: flush here instead.
            return self.flush();
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Every stored cursor: (identity, name, seq).
    pub fn cursors(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.cursors.iter() {
            let (k, v) = item.map_err(io)?;
            let mut parts = k.splitn(2, |b| *b == 0);
            let identity = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            out.push((identity, name, be_u64(&v).unwrap_or(0)));
        }
        Ok(out)
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Number of records (head; the log has no gaps).
    pub fn len(&self) -> u64 {
        self.head()
    }

    pub fn is_empty(&self) -> bool {
        self.head() == 0
    }

    /// Flushes everything (cursors included) to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(io)
    }

    /// Stops the writer after the appends already queued, and flushes.
    pub fn close(&mut self) -> Result<(), StoreError> {
        self.writer = None;
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.flusher_thread.take() {
            let _ = t.join();
            let s = &self.stats;
            let batches = s.batches.load(Ordering::Relaxed);
            let appended = s.appended.load(Ordering::Relaxed);
            if batches > 0 {
                tracing::info!(
                    batches,
                    appended,
                    mean_batch = appended as f64 / batches as f64,
                    mean_commit_ms =
                        s.fsync_nanos_total.load(Ordering::Relaxed) as f64 / batches as f64 / 1e6,
                    max_commit_ms = s.fsync_nanos_max.load(Ordering::Relaxed) as f64 / 1e6,
                    "store closed"
                );
            }
        }
        self.flush()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn cursor_key(identity: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(identity.len() + name.len() + 1);
    k.extend_from_slice(identity.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Something waiting for a flush.
enum Pending {
    /// A batch applied to sled: answer once the durable head reaches `upto`.
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
    /// Highest sequence applied to sled (maybe not durable yet).
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
    sled: sled::Batch,
    /// (publisher, id) → what was appended for it in this batch, and when.
    pending: HashMap<(String, String), (Indexed, SystemTime)>,
    /// The highest sequence any reply in this batch depends on.
    upto: u64,
    /// The sequence the next new record gets.
    next: u64,
    /// The acceptance time of this batch's records (never before the last).
    now: u64,
}

impl Batch {
    /// Adds a new record (and its index entry) under the next sequence.
    fn append(&mut self, key: (String, String), rec: NewRecord) -> Appended {
        let seq = self.next;
        self.next += 1;
        let accepted_at = from_nanos(self.now);
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
        self.sled.insert(&lkey(seq)[..], record.encode());
        let mut iv = seq.to_be_bytes().to_vec();
        iv.extend_from_slice(&digest);
        iv.extend_from_slice(&rec.payload_digest);
        self.sled.insert(ikey(&key.0, &key.1), iv);
        let indexed = Indexed {
            seq,
            digest,
            payload_digest: Some(rec.payload_digest),
        };
        self.pending.insert(key, (indexed, accepted_at));
        Appended {
            seq,
            accepted_at,
            duplicate: false,
        }
    }
}

/// The applier: assigns sequences and applies batches to sled in memory.
struct Writer {
    log: sled::Tree,
    head: u64,
    last_accepted: u64,
    failed: Arc<AtomicBool>,
    max_batch: usize,
    pipeline: Arc<Pipeline>,
}

type Reply = (
    oneshot::Sender<Result<Appended, StoreError>>,
    Result<Appended, StoreError>,
);

/// The highest sequence the store has made durable, kept in a small file
/// beside sled (`acknowledged`: the sequence and its CRC32). It is written
/// after each flush, without an fsync of its own, so it never runs ahead of
/// the log; after a power loss it may lag, which only weakens the check. At
/// open, a log that ends before it means sled's recovery lost acknowledged
/// records (it stops at the first damaged entry), and the store refuses to open.
struct Watermark {
    file: std::fs::File,
}

impl Watermark {
    fn open(dir: &Path) -> Result<Watermark, StoreError> {
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
    fn read(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 12];
        match self.file.read_exact_at(&mut buf, 0) {
            Ok(()) => {
                let (seq, sum) = buf.split_at(8);
                if crc32fast::hash(seq).to_be_bytes().as_slice() == sum {
                    be_u64(seq)
                } else {
                    warn!("the acknowledged-head file is damaged; it will be rewritten");
                    None
                }
            }
            Err(_) => None, // a new store
        }
    }

    fn record(&self, seq: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 12];
        buf[..8].copy_from_slice(&seq.to_be_bytes());
        let sum = crc32fast::hash(&buf[..8]);
        buf[8..].copy_from_slice(&sum.to_be_bytes());
        self.file.write_all_at(&buf, 0)
    }
}

/// The flusher: makes applied batches and cursor writes durable (one `flush`,
/// i.e. fsync, per round) and only then answers them and moves the committed head.
struct Flusher {
    db: sled::Db,
    watermark: Watermark,
    durable: u64,
    head_tx: watch::Sender<u64>,
    failed: Arc<AtomicBool>,
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
                let result = self.db.flush();
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
                    error!(error = %e, "store flush failed; refusing further writes");
                    self.failed.store(true, Ordering::Release);
                    let drained: Vec<Pending> = self.pipeline.queue.lock().drain(..).collect();
                    for p in drained {
                        match p {
                            Pending::Batch { replies, .. } => {
                                for (reply, _) in replies {
                                    let _ = reply.send(Err(StoreError::Io(e.to_string())));
                                }
                            }
                            Pending::Sync { reply, .. } => {
                                let _ = reply.send(Err(StoreError::Io(e.to_string())));
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
                    if let Err(e) = self.watermark.record(target) {
                        warn!(error = %e, "cannot record the acknowledged head outside the log");
                    }
                    self.head_tx.send_replace(target);
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
        while let Some(first) = rx.blocking_recv() {
            reqs.push(first);
            while reqs.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(r) => reqs.push(r),
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
    /// batch goes to sled in one atomic write and its replies to the flusher.
    fn apply(&mut self, reqs: Vec<WriteReq>) {
        if self.failed.load(Ordering::Acquire) {
            for r in reqs {
                let _ = r.reply.send(Err(StoreError::Failed));
            }
            return;
        }
        let mut batch = Batch {
            sled: sled::Batch::default(),
            pending: HashMap::new(),
            upto: 0,
            next: self.head + 1,
            now: nanos(SystemTime::now()).max(self.last_accepted),
        };
        let mut replies: Vec<Reply> = Vec::with_capacity(reqs.len());
        for WriteReq { rec, reply } in reqs {
            let outcome = self.admit(&mut batch, rec);
            replies.push((reply, outcome));
        }
        self.commit(batch, replies);
    }

    /// One append: a duplicate answered with the original, a conflict, or
    /// a new record added to `batch`.
    fn admit(&self, batch: &mut Batch, rec: NewRecord) -> Result<Appended, StoreError> {
        let key = (rec.meta.publisher.clone(), rec.meta.id.clone());
        let existing = match batch.pending.get(&key) {
            Some((i, at)) => Some((i.clone(), Some(*at))),
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
                self.check_related(batch, &key.0, &rec.requires)?;
                Ok(batch.append(key, rec))
            }
        }
    }

    /// A bulletin that supersedes or retracts another needs that one stored
    /// (or earlier in this batch); once found, the answer waits for it to be
    /// durable.
    fn check_related(
        &self,
        batch: &mut Batch,
        publisher: &str,
        requires: &Option<(&'static str, String)>,
    ) -> Result<(), StoreError> {
        let Some((relation, id)) = requires else {
            return Ok(());
        };
        if batch
            .pending
            .contains_key(&(publisher.to_owned(), id.clone()))
        {
            return Ok(());
        }
        match self.lookup(publisher, id)? {
            Some(i) => {
                batch.upto = batch.upto.max(i.seq);
                Ok(())
            }
            None => Err(StoreError::MissingRelated {
                relation,
                publisher: publisher.to_owned(),
                id: id.clone(),
            }),
        }
    }

    /// Writes the batch to sled in one atomic write (records, index, head)
    /// and hands its replies to the flusher, which answers them once durable.
    fn commit(&mut self, batch: Batch, replies: Vec<Reply>) {
        let Batch {
            sled: mut writes,
            mut upto,
            next,
            now,
            ..
        } = batch;
        let new_head = next - 1;
        if new_head != self.head {
            writes.insert(HEAD_KEY, &new_head.to_be_bytes()[..]);
            if let Err(e) = self.log.apply_batch(writes) {
                error!(error = %e, "store write failed; refusing further writes");
                self.failed.store(true, Ordering::Release);
                for (reply, _) in replies {
                    let _ = reply.send(Err(StoreError::Io(e.to_string())));
                }
                return;
            }
            self.head = new_head;
            self.last_accepted = now;
            upto = upto.max(new_head);
            self.pipeline.applied.store(new_head, Ordering::Release);
        }
        if let Err(Pending::Batch { replies, .. }) =
            self.pipeline.push(Pending::Batch { upto, replies })
        {
            for (reply, _) in replies {
                let _ = reply.send(Err(StoreError::Failed));
            }
        }
    }

    fn lookup(&self, publisher: &str, id: &str) -> Result<Option<Indexed>, StoreError> {
        index_lookup(&self.log, publisher, id)
    }

    fn accepted_at(&self, seq: u64) -> Result<SystemTime, StoreError> {
        match self.log.get(lkey(seq)).map_err(io)? {
            Some(v) => Record::decode(seq, owned(v)).map(|r| r.accepted_at),
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
