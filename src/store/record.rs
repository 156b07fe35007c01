//! The stored forms, the same for every engine: a record (fields, envelope,
//! CRC32 trailer), a tombstone (what stays of a pruned record), an id index
//! entry (sequence, envelope digest, payload digest) and a successor (what
//! superseded or retracted a record).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::StoreError;
use crate::domain::bulletin::Meta;

/// A stored bulletin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub accepted_at: SystemTime,
    pub meta: Meta,
    /// The serialized envelope: a view into the stored record, not a copy.
    pub envelope: Bytes,
}

/// 3: with `expires_at`. 2 (read only): without it; format 3 rewrote
/// every such record that has one.
const RECORD_VERSION: u8 = 3;
/// Bytes of the CRC32 trailer.
const TRAILER: usize = 4;

pub(super) fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn from_nanos(n: u64) -> SystemTime {
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

/// What a sequence of the log commits to in its Merkle tree (the leaf is
/// SHA-256 of 0x00 and these bytes): not the bulletin, so a leaf reveals no
/// content and outlives the record's pruning.
///
/// `version:1 (1) ‖ seq:8 ‖ envelope SHA-256:32 ‖ accepted_at:8 (ns since
/// the epoch) ‖ origin_seq:8 ‖ origin node (UTF-8, the rest)`, integers
/// big-endian.
pub fn leaf_entry(
    seq: u64,
    digest: &[u8; 32],
    accepted_at: SystemTime,
    origin_node: &str,
    origin_seq: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(57 + origin_node.len());
    out.push(1);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(digest);
    out.extend_from_slice(&nanos(accepted_at).to_be_bytes());
    out.extend_from_slice(&origin_seq.to_be_bytes());
    out.extend_from_slice(origin_node.as_bytes());
    out
}

impl Record {
    /// The entry its sequence commits to in the log's tree.
    pub fn leaf_entry(&self) -> Vec<u8> {
        leaf_entry(
            self.seq,
            &self.meta.digest,
            self.accepted_at,
            &self.meta.origin_node,
            self.meta.origin_seq,
        )
    }

    /// The stored form: fields, envelope, then a CRC32 of everything before it.
    pub fn encode(&self) -> Vec<u8> {
        let m = &self.meta;
        let mut out = Vec::with_capacity(self.envelope.len() + 256);
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&nanos(self.accepted_at).to_be_bytes());
        out.extend_from_slice(&m.origin_seq.to_be_bytes());
        out.extend_from_slice(&m.created_at.map(nanos).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&m.expires_at.map(nanos).unwrap_or(0).to_be_bytes());
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
            if version != RECORD_VERSION && version != 2 {
                return Err(format!("unknown record version {version}"));
            }
            let stored_seq = r.u64()?;
            let accepted_at = from_nanos(r.u64()?);
            let origin_seq = r.u64()?;
            let created = r.u64()?;
            let expires = if version >= 3 { r.u64()? } else { 0 };
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
                    expires_at: (expires != 0).then(|| from_nanos(expires)),
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
    /// serves an envelope calls this (through [`super::Store::served`]).
    pub fn check_digest(&self) -> Result<(), StoreError> {
        if crate::domain::bulletin::sha256(&self.envelope) != self.meta.digest {
            return Err(StoreError::Corrupt {
                seq: self.seq,
                reason: "envelope digest mismatch".into(),
            });
        }
        Ok(())
    }
}

/// What stays of a pruned record: enough that its sequence is accounted
/// for (the log stays gapless), that the bulletin is still recognised as a
/// duplicate if it comes again, and that a transparency log keeps its leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub seq: u64,
    pub accepted_at: SystemTime,
    pub pruned_at: SystemTime,
    /// SHA-256 of the envelope that was removed.
    pub digest: [u8; 32],
    /// SHA-256 of its signed payload, as the index knew it (absent for
    /// bulletins stored before it was kept).
    pub payload_digest: Option<[u8; 32]>,
    pub publisher: String,
    pub id: String,
    /// The node that first accepted it, and its sequence there (empty and
    /// 0 in tombstones written before they were kept, version 1).
    pub origin_node: String,
    pub origin_seq: u64,
}

/// 2: with the origin, so a pruned record's leaf in the log's tree can be
/// computed again (by a restore or a compaction). 1 (read only): without.
const TOMBSTONE_VERSION: u8 = 2;

impl Tombstone {
    /// What remains of `rec`, pruned at `now`.
    pub fn of(rec: &Record, payload_digest: Option<[u8; 32]>, now: SystemTime) -> Tombstone {
        Tombstone {
            seq: rec.seq,
            accepted_at: rec.accepted_at,
            pruned_at: now,
            digest: rec.meta.digest,
            payload_digest,
            publisher: rec.meta.publisher.clone(),
            id: rec.meta.id.clone(),
            origin_node: rec.meta.origin_node.clone(),
            origin_seq: rec.meta.origin_seq,
        }
    }

    /// The entry its sequence commits to in the log's tree: the same as
    /// the record's it replaced.
    pub fn leaf_entry(&self) -> Vec<u8> {
        leaf_entry(
            self.seq,
            &self.digest,
            self.accepted_at,
            &self.origin_node,
            self.origin_seq,
        )
    }

    /// `version:1 seq:8 accepted:8 pruned:8 digest:32 has_payload:1
    /// [payload_digest:32] publisher id origin_node origin_seq:8 crc32:4`
    /// (version 1 ends after `id`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.publisher.len() + self.id.len());
        out.push(TOMBSTONE_VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&nanos(self.accepted_at).to_be_bytes());
        out.extend_from_slice(&nanos(self.pruned_at).to_be_bytes());
        out.extend_from_slice(&self.digest);
        match &self.payload_digest {
            Some(p) => {
                out.push(1);
                out.extend_from_slice(p);
            }
            None => out.push(0),
        }
        put_str(&mut out, &self.publisher);
        put_str(&mut out, &self.id);
        put_str(&mut out, &self.origin_node);
        out.extend_from_slice(&self.origin_seq.to_be_bytes());
        let sum = crc32fast::hash(&out);
        out.extend_from_slice(&sum.to_be_bytes());
        out
    }

    pub fn decode(seq: u64, bytes: &[u8]) -> Result<Tombstone, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { seq, reason };
        if bytes.len() < TRAILER + 1 {
            return Err(corrupt("tombstone is truncated".into()));
        }
        let (body, sum) = bytes.split_at(bytes.len() - TRAILER);
        if crc32fast::hash(body).to_be_bytes().as_slice() != sum {
            return Err(corrupt("tombstone checksum mismatch".into()));
        }
        let mut r = Reader { buf: body };
        let parse = |r: &mut Reader<'_>| -> Result<Tombstone, String> {
            let version = r.u8()?;
            if !(1..=TOMBSTONE_VERSION).contains(&version) {
                return Err(format!("unknown tombstone version {version}"));
            }
            let mut t = Tombstone {
                seq: r.u64()?,
                accepted_at: from_nanos(r.u64()?),
                pruned_at: from_nanos(r.u64()?),
                digest: r
                    .take(32)?
                    .try_into()
                    .map_err(|_| "truncated".to_string())?,
                payload_digest: match r.u8()? {
                    0 => None,
                    1 => Some(
                        r.take(32)?
                            .try_into()
                            .map_err(|_| "truncated".to_string())?,
                    ),
                    _ => return Err("bad payload digest flag".into()),
                },
                publisher: r.str()?,
                id: r.str()?,
                origin_node: String::new(),
                origin_seq: 0,
            };
            if version >= 2 {
                t.origin_node = r.str()?;
                t.origin_seq = r.u64()?;
            }
            if !r.buf.is_empty() {
                return Err("trailing bytes".into());
            }
            Ok(t)
        };
        let t = parse(&mut r).map_err(corrupt)?;
        if t.seq != seq {
            return Err(corrupt(format!("tombstone claims sequence {}", t.seq)));
        }
        Ok(t)
    }
}

/// What the id index holds for (publisher, id): the sequence, the envelope
/// digest, and the payload digest (absent in entries written before it was
/// kept: the entry is then 40 bytes, not 72).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Indexed {
    pub seq: u64,
    pub digest: [u8; 32],
    pub payload_digest: Option<[u8; 32]>,
}

impl Indexed {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(72);
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.digest);
        if let Some(p) = &self.payload_digest {
            v.extend_from_slice(p);
        }
        v
    }

    /// `None` for an entry of neither known length.
    pub fn decode(v: &[u8]) -> Option<Indexed> {
        let payload_digest = match v.len() {
            40 => None,
            72 => Some(v[40..72].try_into().ok()?),
            _ => return None,
        };
        Some(Indexed {
            seq: u64::from_be_bytes(v.get(..8)?.try_into().ok()?),
            digest: v.get(8..40)?.try_into().ok()?,
            payload_digest,
        })
    }
}

/// How a later bulletin of the same publisher replaced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    Superseded,
    Retracted,
}

/// The later bulletin that superseded or retracted one. Kept by the
/// replaced bulletin's sequence, so a reader going along the log finds the
/// few replaced ones of a range with one ordered scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Successor {
    pub how: Replaced,
    pub seq: u64,
}

impl Successor {
    /// `how:1 seq:8`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(9);
        v.push(match self.how {
            Replaced::Superseded => 1,
            Replaced::Retracted => 2,
        });
        v.extend_from_slice(&self.seq.to_be_bytes());
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Option<Successor> {
        let (how, seq) = v.split_first()?;
        Some(Successor {
            how: match how {
                1 => Replaced::Superseded,
                2 => Replaced::Retracted,
                _ => return None,
            },
            seq: u64::from_be_bytes(seq.try_into().ok()?),
        })
    }

    /// Records `seq` as what replaced a bulletin whose successor was `old`;
    /// a retraction stays (a later revision of a retracted bulletin does not
    /// bring it back). `None` when nothing changes.
    pub(crate) fn after(old: Option<Successor>, how: Replaced, seq: u64) -> Option<Successor> {
        let next = Successor { how, seq };
        match old {
            Some(o) if o.how == Replaced::Retracted && how == Replaced::Superseded => None,
            Some(o) if o == next => None,
            _ => Some(next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_entries_and_successors_round_trip() {
        for payload_digest in [None, Some([7u8; 32])] {
            let i = Indexed {
                seq: 42,
                digest: [3; 32],
                payload_digest,
            };
            assert_eq!(Indexed::decode(&i.encode()), Some(i));
        }
        assert_eq!(Indexed::decode(&[0; 39]), None);
        assert_eq!(Indexed::decode(&[0; 50]), None);
        for how in [Replaced::Superseded, Replaced::Retracted] {
            let s = Successor { how, seq: u64::MAX };
            assert_eq!(Successor::decode(&s.encode()), Some(s));
        }
        assert_eq!(Successor::decode(&[3, 0, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(Successor::decode(&[1, 0]), None);
    }

    #[test]
    fn a_retraction_stays() {
        use Replaced::*;
        let s = |how, seq| Some(Successor { how, seq });
        assert_eq!(Successor::after(None, Superseded, 5), s(Superseded, 5));
        assert_eq!(
            Successor::after(s(Superseded, 5), Superseded, 9),
            s(Superseded, 9)
        );
        assert_eq!(
            Successor::after(s(Superseded, 5), Retracted, 9),
            s(Retracted, 9)
        );
        assert_eq!(Successor::after(s(Retracted, 9), Superseded, 12), None);
        assert_eq!(Successor::after(s(Retracted, 9), Retracted, 9), None);
    }
}

/// The identity of a log: 16 random bytes, made when a store is created and
/// when a backup is restored (a restored log is not the log its readers
/// read: it ends at the backup, and what it appends next is new). Kept by
/// compaction and upgrades. Readers keep it with their positions, so a
/// position on one log is never applied to another.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogId(pub [u8; 16]);

impl LogId {
    /// A new, random identity.
    pub fn random() -> LogId {
        // The thread generator is a CSPRNG seeded from the system's.
        let b: [u8; 16] = rand::random();
        LogId(b)
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogId({self})")
    }
}

impl std::str::FromStr for LogId {
    type Err = String;

    /// 32 hex digits, as [`LogId`] displays.
    fn from_str(s: &str) -> Result<LogId, String> {
        let bad = || format!("{s:?} is not a log id (32 hex digits)");
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut b = [0u8; 16];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(LogId(b))
    }
}

/// Where a restored log came from: the log that was backed up, and its
/// size (the backup's head). Up to that size both logs hold the same
/// entries, so a position on the old log at or below it holds on this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fork {
    pub log: LogId,
    pub size: u64,
}

/// A store's log identity, and the log it continues, if restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogInfo {
    pub id: LogId,
    pub forked_from: Option<Fork>,
}

impl LogInfo {
    /// A new log that continues none.
    pub fn new() -> LogInfo {
        LogInfo {
            id: LogId::random(),
            forked_from: None,
        }
    }

    /// How much of a position taken on `log` at `seq` holds on this log:
    /// all of it on the same log; on the log this one was restored from, up
    /// to the backup's size; `None` on any other log.
    pub fn carry(&self, log: LogId, seq: u64) -> Option<u64> {
        if log == self.id {
            return Some(seq);
        }
        match self.forked_from {
            Some(f) if f.log == log => Some(seq.min(f.size)),
            _ => None,
        }
    }

    /// The stored form: version 1, id, then a flag and the fork.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(42);
        out.push(1);
        out.extend_from_slice(&self.id.0);
        match self.forked_from {
            None => out.push(0),
            Some(f) => {
                out.push(1);
                out.extend_from_slice(&f.log.0);
                out.extend_from_slice(&f.size.to_be_bytes());
            }
        }
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Option<LogInfo> {
        let (&version, rest) = b.split_first()?;
        if version != 1 {
            return None;
        }
        let id = LogId(rest.get(..16)?.try_into().ok()?);
        let forked_from = match rest.get(16)? {
            0 if rest.len() == 17 => None,
            1 if rest.len() == 41 => Some(Fork {
                log: LogId(rest.get(17..33)?.try_into().ok()?),
                size: u64::from_be_bytes(rest.get(33..41)?.try_into().ok()?),
            }),
            _ => return None,
        };
        Some(LogInfo { id, forked_from })
    }
}

impl Default for LogInfo {
    fn default() -> Self {
        LogInfo::new()
    }
}

/// A reader's position: the last sequence it holds the outcome of, and the
/// log that sequence is of (`None` for positions written before logs had
/// identities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub log: Option<LogId>,
}

impl Position {
    /// The stored form: the sequence (8 bytes), then the log (16), if known.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = self.seq.to_be_bytes().to_vec();
        if let Some(log) = self.log {
            out.extend_from_slice(&log.0);
        }
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Position> {
        let seq = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        let log = match b.len() {
            8 => None,
            24 => Some(LogId(b.get(8..24)?.try_into().ok()?)),
            _ => return None,
        };
        Some(Position { seq, log })
    }

    /// What a stored position becomes when `next` is written over it: a
    /// position only moves forward on its log, and one on another log (or
    /// of no known log) is replaced.
    pub(crate) fn advanced(old: Option<Position>, next: Position) -> Position {
        match old {
            Some(o) if o.log == next.log || next.log.is_none() => Position {
                seq: o.seq.max(next.seq),
                log: o.log,
            },
            // A position of no known log is the one the store had before
            // logs had identities: the same log, now named.
            Some(o) if o.log.is_none() => Position {
                seq: o.seq.max(next.seq),
                log: next.log,
            },
            _ => next,
        }
    }
}

#[cfg(test)]
mod log_tests {
    use super::*;
    use proptest::prelude::*;

    fn log_id() -> impl Strategy<Value = LogId> {
        any::<[u8; 16]>().prop_map(LogId)
    }

    fn log_info() -> impl Strategy<Value = LogInfo> {
        (log_id(), proptest::option::of((log_id(), any::<u64>()))).prop_map(|(id, fork)| LogInfo {
            id,
            forked_from: fork.map(|(log, size)| Fork { log, size }),
        })
    }

    fn position() -> impl Strategy<Value = Position> {
        (any::<u64>(), proptest::option::of(log_id())).prop_map(|(seq, log)| Position { seq, log })
    }

    proptest! {
        #[test]
        fn log_infos_and_positions_round_trip(info in log_info(), pos in position()) {
            prop_assert_eq!(LogInfo::decode(&info.encode()), Some(info));
            prop_assert_eq!(Position::decode(&pos.encode()), Some(pos));
            let shown = info.id.to_string();
            prop_assert_eq!(shown.parse::<LogId>(), Ok(info.id));
        }

        /// Any bytes are read or refused, never a panic.
        #[test]
        fn damaged_forms_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = LogInfo::decode(&bytes);
            let _ = Position::decode(&bytes);
            let _ = String::from_utf8_lossy(&bytes).parse::<LogId>();
        }

        /// A position only moves forward on its log; one on another log
        /// replaces it; an unnamed one (before logs had ids) is named.
        #[test]
        fn positions_advance_on_their_log_only(old in proptest::option::of(position()), next in position()) {
            let got = Position::advanced(old, next);
            match old {
                None => prop_assert_eq!(got, next),
                Some(o) if o.log == next.log || next.log.is_none() => {
                    prop_assert_eq!(got, Position { seq: o.seq.max(next.seq), log: o.log });
                }
                Some(o) if o.log.is_none() => {
                    prop_assert_eq!(got, Position { seq: o.seq.max(next.seq), log: next.log });
                }
                Some(_) => prop_assert_eq!(got, next),
            }
        }

        /// What a position on another log is worth here.
        #[test]
        fn carry_holds_only_up_to_the_fork(info in log_info(), other in log_id(), seq in any::<u64>()) {
            prop_assert_eq!(info.carry(info.id, seq), Some(seq));
            match info.forked_from {
                Some(f) => {
                    prop_assert_eq!(info.carry(f.log, seq), Some(seq.min(f.size)));
                    if other != f.log && other != info.id {
                        prop_assert_eq!(info.carry(other, seq), None);
                    }
                }
                None if other != info.id => prop_assert_eq!(info.carry(other, seq), None),
                None => {}
            }
        }
    }
}
