//! The embedded engine: sled. The only file that touches sled.
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
//! ```
//! and two trees of positions, keyed `<identity> 0x00 <name>` →
//! `<seq:u64be> [<log id:16>]` (a `Position`):
//! `cursors` (durable subscriptions) and `links` (how far each peer was read).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;

use std::collections::BTreeSet;
use std::ffi::OsString;

use super::durable::{sync_file, Listing};
use super::engine::{Engine, RecordIter, Space, WriteSet};
use super::record::Position;
use super::{io, StoreError};

pub(crate) struct SledEngine {
    db: sled::Db,
    log: sled::Tree,
    cursors: sled::Tree,
    links: sled::Tree,
    durable: Durable,
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

impl SledEngine {
    /// Opens (or creates) sled's files in `dir`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledEngine, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
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
        let engine = SledEngine {
            db,
            log,
            cursors,
            links,
            durable: Durable {
                dir: dir.to_path_buf(),
                db_file,
                state: parking_lot::Mutex::new(DurableState {
                    top: Listing::new(),
                    blobs: Listing::new(),
                    unsettled: BTreeSet::new(),
                }),
            },
        };
        // The files sled just created, and their names.
        engine.sync()?;
        Ok(engine)
    }

    fn space(&self, space: Space) -> &sled::Tree {
        match space {
            Space::Subscriptions => &self.cursors,
            Space::Links => &self.links,
        }
    }
}

impl SledEngine {
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
}

impl Engine for SledEngine {
    fn head(&self) -> Result<u64, StoreError> {
        match self.log.get(HEAD_KEY).map_err(io)? {
            Some(v) => be_u64(&v).ok_or_else(|| StoreError::Io("head marker is damaged".into())),
            None => Ok(0),
        }
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
        Ok(self.log.get(lkey(seq)).map_err(io)?.map(owned))
    }

    fn records(&self, from: u64, to: u64) -> RecordIter<'_> {
        self.seq_range(lkey(from), lkey(to))
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

    fn write(&self, set: WriteSet) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (seq, record) in set.records {
            batch.insert(&lkey(seq)[..], record);
        }
        for (seq, successor) in set.successors {
            batch.insert(&rkey(seq)[..], successor);
        }
        for (expires, seq) in set.expiries {
            batch.insert(&xkey(expires, seq)[..], &[][..]);
        }
        for p in set.pruned {
            batch.remove(&lkey(p.seq)[..]);
            batch.remove(&rkey(p.seq)[..]);
            if let Some(expires) = p.expires {
                batch.remove(&xkey(expires, p.seq)[..]);
            }
            batch.insert(&tkey(p.seq)[..], p.tombstone);
        }
        for (publisher, id, entry) in set.index {
            batch.insert(ikey(&publisher, &id), entry);
        }
        if let Some(head) = set.head {
            batch.insert(HEAD_KEY, &head.to_be_bytes()[..]);
        }
        if let Some(format) = set.format {
            batch.insert(FORMAT_KEY, &format.to_be_bytes()[..]);
        }
        if let Some(log) = set.log {
            batch.insert(LOG_KEY, log);
        }
        if let Some(node) = set.node {
            batch.insert(NODE_KEY, node);
        }
        self.log.apply_batch(batch).map_err(io)
    }

    /// sled's `flush` is not enough on its own. On Linux it ends in
    /// `sync_file_range`, which writes the pages but neither the file's size
    /// nor the disk's write cache; it never fsyncs the blob files that hold
    /// large values, nor any directory. A power cut then loses what it
    /// reported flushed (`tests/power_loss.rs` showed it; docs/RELIABILITY.md).
    /// So after it: `fdatasync` of the log file; an fsync of each blob file
    /// once it is whole (a blob still being written belongs to a write that
    /// this flush does not cover: every write it covers had finished, blobs
    /// included, before it began); and an fsync of each directory whose names
    /// changed (blobs, snapshots renamed into place, old ones removed).
    fn sync(&self) -> Result<(), StoreError> {
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
        self.space(space)
            .fetch_and_update(cursor_key(identity, name), |old| {
                let old = old.and_then(Position::decode);
                Some(Position::advanced(old, pos).encode())
            })
            .map_err(io)?;
        Ok(())
    }

    fn remove_cursor(&self, space: Space, identity: &str, name: &str) -> Result<(), StoreError> {
        self.space(space)
            .remove(cursor_key(identity, name))
            .map(|_| ())
            .map_err(io)
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

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
