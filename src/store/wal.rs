//! The embedded engine's write-ahead log: where an append becomes durable.
//!
//! Frames are appended to segment files and made durable by one
//! `fdatasync` per group commit; the engine applies a batch to sled only
//! after the frame holding it is durable, and flushes sled in the
//! background. A checkpoint records how far sled itself is durable; the
//! frames after it are applied again at open, so an open does work in
//! proportion to the tail since the last checkpoint, never to the log.
//!
//! ```text
//! wal/seg-<n:016x>   segment n: frames, back to back, then zeros or stale frames
//! wal/spare-<k>      a segment wholly behind a checkpoint, kept for reuse
//! wal/checkpoint     two slots, written in turn (a torn write leaves the other)
//!
//! frame: len:u32be crc:u32be lsn:u64be run:u32be kind:u8 payload[len]
//!        (the CRC32 covers lsn, run, kind and the payload)
//! ```
//!
//! Segments are zero-filled to their full size when made, and reused
//! rather than removed once a checkpoint lies beyond them, so the
//! `fdatasync` after a frame writes the frame's pages and no file size or
//! block allocation (`beacon bench sync`: 0.11 ms against 0.17 ms appending
//! to a growing file, docs/BENCHMARKS.md).
//!
//! The log ends at the first frame that fails its length or CRC, does not
//! carry the next sequence number (`lsn`), or was written by an earlier run
//! than the frame before it: what lies beyond was never acknowledged (a
//! frame is acknowledged only after an `fdatasync` that covers it and every
//! frame before it). Each open starts a new run, recorded in the checkpoint
//! file before any frame is written, so frames of an earlier run left
//! beyond a cut can never be read as continuing the new one.
//!
//! Written here rather than taken from a crate: the log is the product's
//! durability promise, its frames are the store's own batches (one per group
//! commit, applied to sled only once durable), and what it must prove at a
//! power cut (the cut at the first bad frame, runs, preallocated segments
//! and their reuse) is small enough to hold in one file and check with the
//! power-loss filesystem (`tests/it/power_loss.rs`). `okaywal` has this design
//! but its own checkpoint protocol and entry format, and would put a second
//! commit queue in front of ours.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::durable::{create_dir_all, sync_dir};
use super::{io, StoreError};

/// Bytes before a frame's payload.
pub(super) const HEADER: usize = 4 + 4 + 8 + 4 + 1;

/// What a frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// One atomic write of the engine (an encoded `WriteSet`).
    Batch = 1,
    /// A position set: space, key, value.
    Put = 2,
    /// A position removed: space, key.
    Remove = 3,
}

impl Kind {
    fn of(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Batch),
            2 => Some(Kind::Put),
            3 => Some(Kind::Remove),
            _ => None,
        }
    }
}

/// A place in the log: a segment and a byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct At {
    pub segment: u64,
    pub offset: u64,
}

/// How far the engine's own files are durable: every frame up to `lsn`
/// (the next one starts at `next`), leaving its head marker at `head`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Checkpoint {
    pub lsn: u64,
    pub next: At,
    pub head: u64,
}

/// The checkpoint file's slot: counter, lsn, segment, offset, run, head, CRC32.
const SLOT: usize = 8 + 8 + 8 + 8 + 4 + 8 + 4;

/// What an open found.
#[derive(Debug)]
pub(super) struct Replayed {
    /// The checkpoint it started from.
    pub checkpoint: Checkpoint,
    /// Frames applied after it.
    pub frames: u64,
    /// Where the log was cut, if the frame there was damaged or torn
    /// rather than never written (zeros) or stale.
    pub cut: Option<String>,
}

/// The files fsynced by one [`Wal::sync`], and how far they reach.
pub(super) struct Unsynced {
    files: Vec<Arc<File>>,
}

impl Unsynced {
    /// One `fdatasync` per segment written since the last sync (one, but
    /// for a sync that spans a change of segment).
    pub fn sync(&self) -> Result<(), StoreError> {
        for f in &self.files {
            f.sync_data().map_err(io)?;
        }
        Ok(())
    }
}

/// The log's writer state (under the lock).
pub(super) struct State {
    dir: PathBuf,
    segment_bytes: u64,
    /// The segment being written, its number and size.
    file: Arc<File>,
    at: At,
    size: u64,
    /// The last frame written.
    lsn: u64,
    run: u32,
    /// Segments written since the last sync.
    unsynced: Vec<(u64, Arc<File>)>,
    /// Bytes written since the last checkpoint.
    since_checkpoint: u64,
    /// Set once a write failed: the log's end is unknown from then on.
    failed: Option<String>,
}

/// The write-ahead log.
pub(super) struct Wal {
    state: parking_lot::Mutex<State>,
    /// One sync at a time: a sync that finds another under way waits for
    /// it, so it never returns while frames it must cover are still being
    /// flushed by the other.
    syncing: parking_lot::Mutex<()>,
    checkpoints: parking_lot::Mutex<CheckpointFile>,
}

struct CheckpointFile {
    file: File,
    counter: u64,
    last: Checkpoint,
}

fn segment_name(n: u64) -> String {
    format!("seg-{n:016x}")
}

fn parse_segment(name: &str) -> Option<u64> {
    u64::from_str_radix(name.strip_prefix("seg-")?, 16).ok()
}

fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Encodes a frame.
pub(super) fn frame(lsn: u64, run: u32, kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + payload.len());
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&lsn.to_be_bytes());
    f.extend_from_slice(&run.to_be_bytes());
    f.push(kind as u8);
    f.extend_from_slice(payload);
    let crc = crc32fast::hash(&f[8..]);
    f[4..8].copy_from_slice(&crc.to_be_bytes());
    f
}

/// A frame read back: (lsn, run, kind, payload, bytes taken); `Err` names
/// what is wrong with the bytes at the start of `b`, `Ok(None)` means they
/// are zeros (never written).
pub(super) type Parsed<'a> = (u64, u32, Kind, &'a [u8], usize);

pub(super) fn parse(b: &[u8]) -> Result<Option<Parsed<'_>>, String> {
    if b.len() < HEADER {
        return if b.iter().all(|&x| x == 0) {
            Ok(None)
        } else {
            Err("a frame header cut short".into())
        };
    }
    if b[..HEADER].iter().all(|&x| x == 0) {
        return Ok(None);
    }
    let len = be32(b) as usize;
    let Some(end) = HEADER.checked_add(len).filter(|&e| e <= b.len()) else {
        return Err(format!("a frame of {len} bytes runs past its segment"));
    };
    if crc32fast::hash(&b[8..end]) != be32(&b[4..]) {
        return Err("a frame fails its CRC".into());
    }
    let kind = Kind::of(b[20]).ok_or_else(|| format!("a frame of unknown kind {}", b[20]))?;
    Ok(Some((
        be64(&b[8..]),
        be32(&b[16..]),
        kind,
        &b[HEADER..end],
        end,
    )))
}

/// Makes segment `n` ready to write: a file of at least `bytes`, zero-filled
/// where it did not reach, fsynced, its name durable. A spare is renamed
/// into place when there is one.
fn prepare(dir: &Path, n: u64, bytes: u64) -> Result<File, StoreError> {
    let path = dir.join(segment_name(n));
    let existed = path.exists();
    if !existed {
        if let Some(spare) = spares(dir)?.into_iter().next() {
            std::fs::rename(&spare, &path).map_err(io)?;
        }
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len < bytes {
        // Zeros, written: an fdatasync later covers pages of a file whose
        // blocks and size are already durable.
        let zeros = vec![0u8; 1 << 20];
        let mut at = len;
        while at < bytes {
            let n = (bytes - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at).map_err(io)?;
            at += n as u64;
        }
        file.sync_all().map_err(io)?;
    }
    if !existed {
        sync_dir(dir).map_err(io)?;
    }
    Ok(file)
}

/// Spare segments, oldest name first.
fn spares(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        if e.file_name().to_string_lossy().starts_with("spare-") {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Segments by number.
fn segments(dir: &Path) -> Result<BTreeMap<u64, PathBuf>, StoreError> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        if let Some(n) = parse_segment(&e.file_name().to_string_lossy()) {
            out.insert(n, e.path());
        }
    }
    Ok(out)
}

/// Spares kept for reuse; segments behind a checkpoint beyond these are removed.
const SPARES: usize = 2;

impl CheckpointFile {
    fn encode(counter: u64, c: &Checkpoint, run: u32) -> [u8; SLOT] {
        let mut b = [0u8; SLOT];
        b[..8].copy_from_slice(&counter.to_be_bytes());
        b[8..16].copy_from_slice(&c.lsn.to_be_bytes());
        b[16..24].copy_from_slice(&c.next.segment.to_be_bytes());
        b[24..32].copy_from_slice(&c.next.offset.to_be_bytes());
        b[32..36].copy_from_slice(&run.to_be_bytes());
        b[36..44].copy_from_slice(&c.head.to_be_bytes());
        let crc = crc32fast::hash(&b[..44]);
        b[44..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// The newest slot that checks out: (counter, checkpoint, run).
    fn decode(b: &[u8]) -> Option<(u64, Checkpoint, u32)> {
        let slot = |s: &[u8]| -> Option<(u64, Checkpoint, u32)> {
            if s.len() < SLOT || crc32fast::hash(&s[..44]) != be32(&s[44..]) {
                return None;
            }
            Some((
                be64(s),
                Checkpoint {
                    lsn: be64(&s[8..]),
                    next: At {
                        segment: be64(&s[16..]),
                        offset: be64(&s[24..]),
                    },
                    head: be64(&s[36..]),
                },
                be32(&s[32..]),
            ))
        };
        let a = slot(b);
        let b = b.get(SLOT..).and_then(slot);
        match (a, b) {
            (Some(a), Some(b)) => Some(if a.0 >= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// Writes the next slot and fdatasyncs it.
    fn write(&mut self, c: Checkpoint, run: u32) -> Result<(), StoreError> {
        let counter = self.counter + 1;
        let slot = CheckpointFile::encode(counter, &c, run);
        let at = (counter % 2) * SLOT as u64;
        self.file.write_all_at(&slot, at).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.counter = counter;
        self.last = c;
        Ok(())
    }
}

impl Wal {
    /// Opens the log in `dir` (creating it if absent) and hands every frame
    /// after the last checkpoint to `apply`, in order; starts a new run.
    /// `created` is told whether the log was new.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        mut apply: impl FnMut(Kind, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(Wal, Replayed), StoreError> {
        create_dir_all(dir).map_err(io)?;
        let cp_path = dir.join("checkpoint");
        let found = match std::fs::read(&cp_path) {
            Ok(b) if b.is_empty() => None,
            Ok(b) => Some(CheckpointFile::decode(&b).ok_or_else(|| {
                StoreError::Torn("its write-ahead log's checkpoint file is damaged".into())
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let cp_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&cp_path)
            .map_err(io)?;
        // No checkpoint: a new log (no frame is written before the first
        // checkpoint is durable, so there is nothing to replay), or the
        // engine's files from before the log (upgraded, already durable).
        let (counter, checkpoint, old_run) = match found {
            Some(f) => f,
            None => {
                for (_, path) in segments(dir)? {
                    std::fs::remove_file(path).map_err(io)?;
                }
                (
                    0,
                    Checkpoint {
                        lsn: 0,
                        next: At {
                            segment: 1,
                            offset: 0,
                        },
                        head: 0,
                    },
                    0,
                )
            }
        };
        // Replay.
        let segs = segments(dir)?;
        let mut at = checkpoint.next;
        let mut lsn = checkpoint.lsn;
        let mut floor = 0u32;
        let mut frames = 0u64;
        let mut cut = None;
        let mut max_run = old_run;
        let mut data = match segs.get(&at.segment) {
            Some(p) => std::fs::read(p).map_err(io)?,
            None => Vec::new(),
        };
        'segments: loop {
            let mut offset = usize::try_from(at.offset).unwrap_or(usize::MAX);
            loop {
                let rest = data.get(offset..).unwrap_or_default();
                match parse(rest) {
                    Ok(Some((n, run, kind, payload, len))) if n == lsn + 1 && run >= floor => {
                        apply(kind, payload)?;
                        lsn = n;
                        floor = run;
                        max_run = max_run.max(run);
                        frames += 1;
                        offset += len;
                        at.offset = offset as u64;
                    }
                    Ok(Some(_)) | Ok(None) => break,
                    // Reported only when it is the frame the log expected
                    // (its header says so): damaged or torn. Other bytes
                    // are what a reused segment held before.
                    Err(e) if rest.len() >= HEADER && be64(&rest[8..]) == lsn + 1 => {
                        cut = Some(e);
                        break;
                    }
                    Err(_) => break,
                }
            }
            // The next frame may have gone to the next segment, if it did not
            // fit here: only if that one starts with it.
            let Some(path) = segs.get(&(at.segment + 1)) else {
                break 'segments;
            };
            let next = std::fs::read(path).map_err(io)?;
            match parse(&next) {
                Ok(Some((n, run, ..))) if n == lsn + 1 && run >= floor => {
                    data = next;
                    at = At {
                        segment: at.segment + 1,
                        offset: 0,
                    };
                    cut = None;
                }
                _ => break 'segments,
            }
        }
        let run = max_run + 1;
        let mut cps = CheckpointFile {
            file: cp_file,
            counter,
            last: checkpoint,
        };
        // The new run is durable before any frame of it is written.
        cps.write(checkpoint, run)?;
        if found.is_none() {
            sync_dir(dir).map_err(io)?;
        }
        let size = segment_bytes.max(data.len() as u64);
        let file = prepare(dir, at.segment, size)?;
        let wal = Wal {
            syncing: parking_lot::Mutex::new(()),
            state: parking_lot::Mutex::new(State {
                dir: dir.to_path_buf(),
                segment_bytes,
                file: Arc::new(file),
                at,
                size,
                lsn,
                run,
                unsynced: Vec::new(),
                since_checkpoint: 0,
                failed: None,
            }),
            checkpoints: parking_lot::Mutex::new(cps),
        };
        wal.recycle(checkpoint.next.segment)?;
        Ok((
            wal,
            Replayed {
                checkpoint,
                frames,
                cut,
            },
        ))
    }

    /// The writer's lock: frames appended under one guard are consecutive.
    pub fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Makes every frame appended before the call durable (one
    /// `fdatasync` per segment written since the last sync; none if none
    /// was); returns the last frame it covers. Syncs are taken one at a
    /// time, so that one never returns while another is still flushing
    /// frames appended before it. A failed sync is the caller's to report:
    /// the log must be marked failed ([`State::fail`]), never synced again.
    pub fn sync(&self) -> Result<u64, StoreError> {
        let _one = self.syncing.lock();
        let (unsynced, lsn) = {
            let mut st = self.state.lock();
            (st.take_unsynced()?, st.lsn)
        };
        unsynced.sync()?;
        Ok(lsn)
    }

    /// The last checkpoint written.
    pub fn last_checkpoint(&self) -> Checkpoint {
        self.checkpoints.lock().last
    }

    /// Records a checkpoint (durable when this returns), then reuses or
    /// removes the segments wholly behind it.
    pub fn checkpoint(&self, c: Checkpoint) -> Result<(), StoreError> {
        let run = {
            let mut st = self.state.lock();
            st.since_checkpoint = 0;
            st.run
        };
        self.checkpoints.lock().write(c, run)?;
        self.recycle(c.next.segment)
    }

    /// Segments numbered below `first` hold only frames behind the last
    /// checkpoint: up to [`SPARES`] of full size are kept for reuse, the
    /// rest removed.
    fn recycle(&self, first: u64) -> Result<(), StoreError> {
        let (dir, bytes) = {
            let st = self.state.lock();
            (st.dir.clone(), st.segment_bytes)
        };
        let old: Vec<(u64, PathBuf)> = segments(&dir)?
            .into_iter()
            .filter(|(n, _)| *n < first)
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        let mut kept = spares(&dir)?.len();
        for (n, path) in old {
            let len = std::fs::metadata(&path).map_err(io)?.len();
            if kept < SPARES && len == bytes {
                std::fs::rename(&path, dir.join(format!("spare-{n:016x}"))).map_err(io)?;
                kept += 1;
            } else {
                std::fs::remove_file(&path).map_err(io)?;
            }
        }
        sync_dir(&dir).map_err(io)
    }
}

impl State {
    /// Appends one frame (not yet durable); returns its sequence number.
    pub fn append(&mut self, kind: Kind, payload: &[u8]) -> Result<u64, StoreError> {
        if let Some(f) = &self.failed {
            return Err(StoreError::Io(f.clone()));
        }
        let lsn = self.lsn + 1;
        let bytes = frame(lsn, self.run, kind, payload);
        let result = self.write(&bytes);
        if let Err(e) = &result {
            self.failed = Some(format!("the write-ahead log failed: {e}"));
        }
        result?;
        self.lsn = lsn;
        Ok(lsn)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let len = bytes.len() as u64;
        if self.at.offset + len > self.size {
            // The next segment: of full size, or larger for one big frame.
            let n = self.at.segment + 1;
            let size = self.segment_bytes.max(len);
            let file = Arc::new(prepare(&self.dir, n, size)?);
            self.file = file;
            self.at = At {
                segment: n,
                offset: 0,
            };
            self.size = size;
        }
        self.file.write_all_at(bytes, self.at.offset).map_err(io)?;
        self.at.offset += len;
        self.since_checkpoint += len;
        if self.unsynced.last().map(|(n, _)| *n) != Some(self.at.segment) {
            self.unsynced.push((self.at.segment, self.file.clone()));
        }
        Ok(())
    }

    /// What the next sync must fsync, taken (frames appended after this
    /// belong to the sync after).
    fn take_unsynced(&mut self) -> Result<Unsynced, StoreError> {
        if let Some(f) = &self.failed {
            return Err(StoreError::Io(f.clone()));
        }
        Ok(Unsynced {
            files: std::mem::take(&mut self.unsynced)
                .into_iter()
                .map(|(_, f)| f)
                .collect(),
        })
    }

    /// The last frame written, and where the next starts.
    pub fn position(&self) -> (u64, At) {
        (self.lsn, self.at)
    }

    /// Marks the log failed (a sync of it failed): nothing more is written.
    pub fn fail(&mut self, why: &str) {
        self.failed.get_or_insert_with(|| why.to_string());
    }

    /// Bytes written since the last checkpoint.
    pub fn since_checkpoint(&self) -> u64 {
        self.since_checkpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_frame_reads_back_and_any_damage_is_refused(
            lsn in any::<u64>(), run in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..300),
            flip in any::<usize>(), bit in 0u8..8,
        ) {
            let f = frame(lsn, run, Kind::Put, &payload);
            let (l, r, k, p, n) = parse(&f).expect("parses").expect("a frame");
            prop_assert_eq!((l, r, k, p, n), (lsn, run, Kind::Put, &payload[..], f.len()));
            // One flipped bit anywhere: refused or (length field) cut short, never read.
            let mut bad = f.clone();
            let i = flip % bad.len();
            bad[i] ^= 1 << bit;
            let read = parse(&bad);
            prop_assert!(!matches!(read, Ok(Some((l2, r2, _, p2, _))) if l2 == lsn && r2 == run && p2 == &payload[..] && i >= 8), "{:?}", i);
            prop_assert!(!matches!(read, Ok(Some(_))));
            // Cut anywhere: never read.
            let cut = flip % f.len();
            prop_assert!(!matches!(parse(&f[..cut]), Ok(Some(_))));
        }
    }

    #[test]
    fn zeros_are_the_end_not_damage() {
        assert!(matches!(parse(&[0u8; 64]), Ok(None)));
        assert!(matches!(parse(&[0u8; 3]), Ok(None)));
        assert!(parse(&[0, 0, 0, 1]).is_err());
    }

    /// The race a checkpoint's sync and the flusher's once had: a sync that
    /// finds the frames already taken by another sync, still in its
    /// `fdatasync`, must wait for it rather than answer at once.
    #[test]
    fn a_sync_waits_for_the_sync_under_way() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (wal, _, _) = reopen(&tmp.path().join("wal"), 4096);
        let wal = Arc::new(wal);
        wal.lock().append(Kind::Put, b"a").expect("append");
        // A sync under way: it holds the sync lock and took the frame.
        let under_way = wal.syncing.lock();
        let taken = wal.lock().take_unsynced().expect("unsynced");
        let (tx, rx) = std::sync::mpsc::channel();
        let other = {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let _ = tx.send(wal.sync());
            })
        };
        // Bounded: a sync that answered without waiting shows within this.
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "a sync returned while the frame it covers was still being flushed"
        );
        taken.sync().expect("sync");
        drop(under_way);
        let covered = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the waiting sync returns")
            .expect("sync");
        assert_eq!(covered, 1);
        other.join().expect("thread");
    }

    /// Syncs from many threads at once, each after its own append: each
    /// returns a frame at or past the one it appended, and every frame comes
    /// back at the next open.
    #[test]
    fn concurrent_syncs_each_cover_what_was_appended_before_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("wal");
        let (wal, _, _) = reopen(&dir, 4096);
        let wal = Arc::new(wal);
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let wal = wal.clone();
                std::thread::spawn(move || {
                    for i in 0..25u8 {
                        let lsn = wal.lock().append(Kind::Put, &[t, i]).expect("append");
                        assert!(wal.sync().expect("sync") >= lsn);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        drop(wal);
        let (_, got, _) = reopen(&dir, 4096);
        assert_eq!(got.len(), 100);
    }

    fn reopen(dir: &Path, bytes: u64) -> (Wal, Vec<(Kind, Vec<u8>)>, Replayed) {
        let mut got = Vec::new();
        let (wal, r) = Wal::open(dir, bytes, |k, p| {
            got.push((k, p.to_vec()));
            Ok(())
        })
        .expect("open");
        (wal, got, r)
    }

    /// A log of ten frames of 100 bytes in `dir`, the byte `at` of frame
    /// `frame`'s payload (from 0) flipped by `bits`.
    fn ten_frames_one_damaged(dir: &Path, frame: usize, at: usize, bits: u8) {
        let (wal, _, _) = reopen(dir, 1 << 16);
        for i in 0..10u8 {
            wal.lock().append(Kind::Batch, &[i; 100]).expect("append");
        }
        drop(wal);
        let seg = dir.join(segment_name(1));
        let mut b = std::fs::read(&seg).expect("read");
        b[(HEADER + 100) * frame + HEADER + at] ^= bits;
        std::fs::write(&seg, &b).expect("write");
    }

    #[test]
    fn frames_after_the_checkpoint_come_back_across_segments_and_stale_frames_do_not() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("wal");
        let (wal, got, _) = reopen(&dir, 4096);
        assert!(got.is_empty());
        // 30 frames of 300 bytes: several segments.
        for i in 0..30u8 {
            let mut st = wal.lock();
            st.append(Kind::Batch, &[i; 300]).expect("append");
        }
        let u = wal.lock().take_unsynced().expect("unsynced");
        assert!(u.files.len() >= 2);
        u.sync().expect("sync");
        drop(wal);
        let (wal, got, _) = reopen(&dir, 4096);
        assert_eq!(got.len(), 30);
        assert!(got.iter().enumerate().all(|(i, (_, p))| p[0] == i as u8));
        assert_eq!(wal.lock().position().0, 30);
        // A checkpoint at frame 20: only 21..=30 come back, and the
        // segments behind it are reused.
        let mut data = Vec::new();
        let mut at = At {
            segment: 1,
            offset: 0,
        };
        for _ in 0..20 {
            let path = dir.join(segment_name(at.segment));
            if data.is_empty() {
                data = std::fs::read(path).expect("read");
            }
            match parse(&data[at.offset as usize..]).expect("frame") {
                Some((.., len)) => at.offset += len as u64,
                None => unreachable!(),
            }
            if at.offset as usize + HEADER + 300 > data.len() {
                at = At {
                    segment: at.segment + 1,
                    offset: 0,
                };
                data.clear();
            }
        }
        wal.checkpoint(Checkpoint {
            lsn: 20,
            next: at,
            head: 0,
        })
        .expect("checkpoint");
        drop(wal);
        let (wal, got, _) = reopen(&dir, 4096);
        assert_eq!(got.len(), 10);
        assert_eq!(got[0].1[0], 20);
        assert!(!spares(&dir).expect("spares").is_empty());
        assert_eq!(wal.lock().run, 3, "each open starts a run");
    }

    #[test]
    fn frames_of_an_earlier_run_beyond_a_cut_never_come_back() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("wal");
        // Frame 5 torn: the log ends at 4.
        ten_frames_one_damaged(&dir, 4, 50, 0x01);
        let (wal, got, _) = reopen(&dir, 1 << 16);
        assert_eq!((got.len(), wal.lock().position().0), (4, 4));
        // The new run writes its frame 5 exactly over the torn one: the old
        // frames 6.. that follow it carry the next numbers, but an earlier run.
        wal.lock().append(Kind::Batch, &[55; 100]).expect("append");
        drop(wal);
        let (_, got, r) = reopen(&dir, 1 << 16);
        assert_eq!(got.len(), 5);
        assert_eq!(got[4].1, vec![55; 100]);
        assert_eq!(r.cut, None);
    }

    #[test]
    fn a_damaged_frame_ends_the_log_there() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("wal");
        ten_frames_one_damaged(&dir, 6, 5, 0x10);
        let (_, got, r) = reopen(&dir, 1 << 16);
        assert_eq!(got.len(), 6);
        assert_eq!(r.cut.as_deref(), Some("a frame fails its CRC"));
    }
}
