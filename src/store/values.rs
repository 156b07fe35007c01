//! The embedded engine's value files: the records' bytes, out of sled's pages.
//!
//! sled keeps, under a record's key, a [`Pointer`] (17 bytes) to the record's
//! bytes in a segment file here, instead of the record itself (~1.3 KB).
//! So sled's page cache holds the index and pointers of a million records
//! in tens of megabytes rather than hundreds (sled 0.34 does not bound its
//! cache by `cache_capacity`: docs/BENCHMARKS.md), and a replay reads the
//! records of a run of sequences with one `pread` per run of adjacent
//! values, not a page decode per record.
//!
//! ```text
//! values/val-<n:016x>   segment n: record bytes back to back, in the order
//!                       applied (sequence order but for records rewritten)
//!
//! pointer: tag:u8 (0xF0) segment:u32be offset:u32be len:u32be crc32:u32be
//! ```
//! (17 bytes: sled keeps a value of up to 22 bytes inside its key-value
//! pair, with no allocation of its own; 25 bytes cost 13 MB more per
//! 300,000 records scanned, measured with sled alone.)
//!
//! Durability follows the write-ahead log, which holds every record in
//! full (its frames are the store's batches): a value is written (not
//! synced) when its batch is applied to sled, which is only after the
//! batch's frame is durable; a checkpoint fsyncs the value files written
//! since the last one (and the directory, for new ones) before it flushes
//! sled. So every pointer that a checkpoint made durable points at durable
//! bytes, and a pointer sled kept from after the last checkpoint belongs to
//! a frame that an open applies again, writing its values afresh. Each open
//! starts a new segment, so nothing written there is ever overwritten.
//!
//! A segment's range of sequences is kept in sled (`S <n>` → first, last),
//! updated with the pointers of each batch. A segment none of whose
//! sequences still points into it (its records pruned, or rewritten
//! elsewhere) is removed after the checkpoint that made that durable.
//! Retention prunes by expiry and by label, not in the order records were
//! written, so a file can keep a few long-lived records among pruned ones:
//! once the records left take less than half a file, the engine writes them
//! again into the current one (ordinary frames of the log) and the file goes
//! (`rewrite_sparse` in `sled_engine.rs`, at most every ten minutes after a
//! prune).
//!
//! Written here rather than taken from a crate: it is the store's format
//! and its power-loss argument (above) leans on the write-ahead log's own.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::durable::{create_dir_all, sync_dir};
use super::{io, StoreError};

/// First byte of a pointer; a record's own encoding starts with its version
/// (2 or 3), so a store upgraded from format 7 reads its inline records as
/// they are.
pub(super) const TAG: u8 = 0xF0;
/// Bytes of an encoded pointer.
pub(super) const POINTER: usize = 1 + 4 + 4 + 4 + 4;
/// Bytes of one segment before the next is started.
pub(super) const SEGMENT_BYTES: u64 = 64 << 20;
/// Value files kept open for reads at once.
const OPEN_FILES: usize = 64;
/// The most read in one `pread` when a range of records is read.
const RUN_BYTES: u64 = 128 << 10;

/// Where a record's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pointer {
    pub segment: u32,
    pub offset: u32,
    pub len: u32,
    pub crc: u32,
}

impl Pointer {
    pub fn encode(&self) -> [u8; POINTER] {
        let mut b = [0u8; POINTER];
        b[0] = TAG;
        b[1..5].copy_from_slice(&self.segment.to_be_bytes());
        b[5..9].copy_from_slice(&self.offset.to_be_bytes());
        b[9..13].copy_from_slice(&self.len.to_be_bytes());
        b[13..17].copy_from_slice(&self.crc.to_be_bytes());
        b
    }

    /// The pointer in `v`, or `None` if `v` is a record kept inline.
    pub fn decode(v: &[u8]) -> Option<Pointer> {
        if v.len() != POINTER || v[0] != TAG {
            return None;
        }
        let at = |i: usize| v.get(i..i + 4).and_then(|b| b.try_into().ok());
        Some(Pointer {
            segment: u32::from_be_bytes(at(1)?),
            offset: u32::from_be_bytes(at(5)?),
            len: u32::from_be_bytes(at(9)?),
            crc: u32::from_be_bytes(at(13)?),
        })
    }

    fn start(&self) -> u64 {
        u64::from(self.offset)
    }

    fn end(&self) -> u64 {
        self.start() + u64::from(self.len)
    }
}

pub(super) fn name(segment: u32) -> String {
    format!("val-{segment:016x}")
}

fn parse(name: &str) -> Option<u32> {
    u32::from_str_radix(name.strip_prefix("val-")?, 16).ok()
}

/// The segment being written, and what the next sync must cover.
struct Writer {
    /// Segment number, file and bytes written; `None` until the first value
    /// of this run.
    current: Option<(u32, Arc<File>, u64)>,
    /// The number the next new segment takes.
    next: u32,
    /// Files written since the last sync.
    unsynced: Vec<Arc<File>>,
    /// Whether the directory gained or lost a name since the last sync.
    dir_changed: bool,
}

/// The value files of one store.
pub(super) struct Values {
    dir: PathBuf,
    segment_bytes: u64,
    writer: parking_lot::Mutex<Writer>,
    /// Open files by segment, for reads (the writer's included).
    files: parking_lot::RwLock<HashMap<u32, Arc<File>>>,
}

impl Values {
    /// Opens the value files in `dir` (made if missing); the first value
    /// written goes to a new segment after the last one there.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Values, StoreError> {
        // Offsets are 32-bit: a value starts within its segment's size.
        let segment_bytes = segment_bytes.min(u64::from(u32::MAX));
        create_dir_all(dir).map_err(io)?;
        let mut next = 0;
        for seg in Self::list(dir)? {
            next = next.max(seg.saturating_add(1));
        }
        Ok(Values {
            dir: dir.to_path_buf(),
            segment_bytes,
            writer: parking_lot::Mutex::new(Writer {
                current: None,
                next,
                unsynced: Vec::new(),
                dir_changed: false,
            }),
            files: parking_lot::RwLock::new(HashMap::new()),
        })
    }

    /// The segments on disk, by number.
    pub fn list(dir: &Path) -> Result<Vec<u32>, StoreError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(e)),
        };
        for e in entries {
            let e = e.map_err(io)?;
            if let Some(seg) = e.file_name().to_str().and_then(parse) {
                out.push(seg);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Writes `values` back to back (one `pwrite` per segment they fall
    /// in) and returns a pointer to each. Not durable until [`Values::sync`].
    pub fn put(&self, values: &[&[u8]]) -> Result<Vec<Pointer>, StoreError> {
        let mut out = Vec::with_capacity(values.len());
        let mut w = self.writer.lock();
        let mut i = 0;
        while i < values.len() {
            let full = match &w.current {
                Some((_, _, len)) => *len > 0 && *len + values[i].len() as u64 > self.segment_bytes,
                None => true,
            };
            if full {
                self.start_segment(&mut w)?;
            }
            let Some((segment, file, len)) = w.current.clone() else {
                return Err(StoreError::Io("no value segment to write to".into()));
            };
            // As many as fit in this segment (at least one), in one write.
            let mut buf = Vec::new();
            let mut at = len;
            while let Some(v) = values.get(i) {
                if !buf.is_empty() && at + v.len() as u64 > self.segment_bytes {
                    break;
                }
                let len = u32::try_from(v.len())
                    .map_err(|_| StoreError::Io("a record of more than 4 GiB".into()))?;
                let offset = u32::try_from(at)
                    .map_err(|_| StoreError::Io("a value file beyond 4 GiB".into()))?;
                out.push(Pointer {
                    segment,
                    offset,
                    len,
                    crc: crc32fast::hash(v),
                });
                buf.extend_from_slice(v);
                at += v.len() as u64;
                i += 1;
            }
            file.write_all_at(&buf, len).map_err(io)?;
            if let Some(cur) = w.current.as_mut() {
                cur.2 = at;
            }
            if !w.unsynced.iter().any(|f| Arc::ptr_eq(f, &file)) {
                w.unsynced.push(file);
            }
        }
        Ok(out)
    }

    fn start_segment(&self, w: &mut Writer) -> Result<(), StoreError> {
        let segment = w.next;
        if segment == u32::MAX {
            return Err(StoreError::Io(
                "the value files' numbers are used up: compact the store (beacon admin compact)"
                    .into(),
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.dir.join(name(segment)))
            .map_err(io)?;
        let file = Arc::new(file);
        w.next = segment + 1;
        w.dir_changed = true;
        self.files.write().insert(segment, file.clone());
        w.current = Some((segment, file, 0));
        Ok(())
    }

    /// Makes every value written so far durable, with the names of new
    /// segments.
    pub fn sync(&self) -> Result<(), StoreError> {
        let (files, dir_changed) = {
            let mut w = self.writer.lock();
            (
                std::mem::take(&mut w.unsynced),
                std::mem::take(&mut w.dir_changed),
            )
        };
        for f in files {
            f.sync_data().map_err(io)?;
        }
        if dir_changed {
            sync_dir(&self.dir).map_err(io)?;
        }
        Ok(())
    }

    /// The segment being written, if any (never removed).
    pub fn current(&self) -> Option<u32> {
        self.writer.lock().current.as_ref().map(|c| c.0)
    }

    fn file(&self, segment: u32) -> Result<Option<Arc<File>>, StoreError> {
        if let Some(f) = self.files.read().get(&segment) {
            return Ok(Some(f.clone()));
        }
        match File::open(self.dir.join(name(segment))) {
            Ok(f) => {
                let f = Arc::new(f);
                let mut files = self.files.write();
                // Bounded: past [`OPEN_FILES`], one held file is let go
                // (any: it is opened again when read).
                if files.len() >= OPEN_FILES {
                    if let Some(k) = files.keys().next().copied() {
                        files.remove(&k);
                    }
                }
                files.insert(segment, f.clone());
                Ok(Some(f))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// The bytes `p` points at, checked against its CRC; `None` if its
    /// segment is gone (removed once nothing pointed into it).
    pub fn get(&self, seq: u64, p: &Pointer) -> Result<Option<Bytes>, StoreError> {
        let Some(file) = self.file(p.segment)? else {
            return Ok(None);
        };
        let mut buf = vec![0u8; p.len as usize];
        read_exact_at(&file, &mut buf, p.start(), seq, p)?;
        let bytes = Bytes::from(buf);
        check(seq, p, &bytes)?;
        Ok(Some(bytes))
    }

    /// The bytes of each pointer in `run`, in order, reading adjacent values
    /// of one segment together (up to [`RUN_BYTES`] at once). A value whose
    /// segment is gone comes back as `None`.
    pub fn get_run(&self, run: &[(u64, Pointer)]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let mut out = Vec::with_capacity(run.len());
        let mut i = 0;
        while i < run.len() {
            let (_, first) = run[i];
            let mut j = i + 1;
            while let Some((_, p)) = run.get(j) {
                let prev = run[j - 1].1;
                if p.segment != first.segment
                    || p.start() != prev.end()
                    || p.end() - first.start() > RUN_BYTES
                {
                    break;
                }
                j += 1;
            }
            let Some(file) = self.file(first.segment)? else {
                out.extend((i..j).map(|_| None));
                i = j;
                continue;
            };
            let last = run[j - 1].1;
            let mut buf = vec![0u8; (last.end() - first.start()) as usize];
            read_exact_at(&file, &mut buf, first.start(), run[i].0, &first)?;
            let buf = Bytes::from(buf);
            for (seq, p) in &run[i..j] {
                let from = (p.offset - first.offset) as usize;
                let bytes = buf.slice(from..from + p.len as usize);
                check(*seq, p, &bytes)?;
                out.push(Some(bytes));
            }
            i = j;
        }
        Ok(out)
    }

    /// Removes the segments in `dead` (nothing durable points into them any
    /// more), then makes the removal durable.
    pub fn remove(&self, dead: &[u32]) -> Result<(), StoreError> {
        if dead.is_empty() {
            return Ok(());
        }
        for seg in dead {
            self.files.write().remove(seg);
            match std::fs::remove_file(self.dir.join(name(*seg))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        sync_dir(&self.dir).map_err(io)
    }
}

fn read_exact_at(
    file: &File,
    buf: &mut [u8],
    offset: u64,
    seq: u64,
    p: &Pointer,
) -> Result<(), StoreError> {
    file.read_exact_at(buf, offset).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StoreError::Corrupt {
            seq,
            reason: format!(
                "its value file {} ends before the record ({} bytes at {})",
                name(p.segment),
                p.len,
                p.offset
            ),
        },
        _ => io(e),
    })
}

fn check(seq: u64, p: &Pointer, bytes: &[u8]) -> Result<(), StoreError> {
    if crc32fast::hash(bytes) != p.crc {
        return Err(StoreError::Corrupt {
            seq,
            reason: format!(
                "its bytes in value file {} (at {}) fail their CRC",
                name(p.segment),
                p.offset
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pointers_round_trip(segment: u32, offset: u32, len: u32, crc: u32) {
            let p = Pointer { segment, offset, len, crc };
            prop_assert_eq!(Pointer::decode(&p.encode()), Some(p));
        }

        /// Values of any sizes, across segments, read back whole, one by
        /// one and as runs.
        #[test]
        fn values_read_back(sizes in proptest::collection::vec(0usize..3000, 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let v = Values::open(dir.path(), 8192).unwrap();
            let vals: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| (0..*n).map(|k| (i * 7 + k) as u8).collect())
                .collect();
            let refs: Vec<&[u8]> = vals.iter().map(|x| x.as_slice()).collect();
            let ptrs = v.put(&refs[..refs.len() / 2]).unwrap();
            let mut ptrs2 = v.put(&refs[refs.len() / 2..]).unwrap();
            let mut all = ptrs;
            all.append(&mut ptrs2);
            for (i, p) in all.iter().enumerate() {
                prop_assert!(p.end() <= 8192 || p.offset == 0);
                let got = v.get(i as u64, p).unwrap().unwrap();
                prop_assert_eq!(got.as_ref(), vals[i].as_slice());
            }
            let run: Vec<(u64, Pointer)> = all.iter().enumerate().map(|(i, p)| (i as u64, *p)).collect();
            let got = v.get_run(&run).unwrap();
            for (i, g) in got.iter().enumerate() {
                prop_assert_eq!(g.as_deref(), Some(vals[i].as_slice()));
            }
        }
    }

    #[test]
    fn a_damaged_value_is_refused_and_a_removed_segment_reads_as_gone() {
        let dir = tempfile::tempdir().unwrap();
        let v = Values::open(dir.path(), SEGMENT_BYTES).unwrap();
        let p = v.put(&[b"first record", b"second record"]).unwrap();
        v.sync().unwrap();
        let path = dir.path().join(name(p[1].segment));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[p[1].offset as usize + 2] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let v = Values::open(dir.path(), SEGMENT_BYTES).unwrap();
        assert_eq!(
            v.get(1, &p[0]).unwrap().as_deref(),
            Some(&b"first record"[..])
        );
        assert!(matches!(
            v.get(2, &p[1]),
            Err(StoreError::Corrupt { seq: 2, .. })
        ));
        assert!(matches!(
            v.get_run(&[(1, p[0]), (2, p[1])]),
            Err(StoreError::Corrupt { seq: 2, .. })
        ));
        // A new run writes a new segment, never into the old one.
        let q = v.put(&[b"third"]).unwrap();
        assert_eq!(q[0].segment, p[0].segment + 1);
        v.remove(&[p[0].segment]).unwrap();
        assert_eq!(v.get(1, &p[0]).unwrap(), None);
        assert_eq!(Values::list(dir.path()).unwrap(), vec![q[0].segment]);
    }
}
