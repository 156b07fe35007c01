//! Upgrades a store of an older format in place, at open, before anything
//! is served. Each step is idempotent and the format marker is written last,
//! so a crash during an upgrade leaves a store that upgrades again at the
//! next open.
//!
//! 1 → 2: index entries learn which bulletin superseded or retracted them.
//! The relation is in the signed payload, so every record is read once.
//! 2 → 3: records learn their `expires_at` (also in the signed payload):
//! each record that has one is rewritten and gets its expiry entry.
//! 3 → 4: acceptance times are spaced by each record's span (one
//! microsecond per object of its STIX group), as the writer now spaces
//! them: records of one group commit shared a time before.
//! 4 → 5: the log gets its identity, and each subscription cursor is
//! marked as taken on it (peer-link positions stay unmarked: which log of
//! the peer's they are of is not known; the link learns it at its next
//! connection).
//! 5 → 6: nothing in the log changes; the embedded engine writes through
//! its write-ahead log from now on (made at the engine's open; a store
//! stopped uncleanly before it is walked whole once, by `Store::open`).
//! 6 → 7: the log gets its Merkle tree, built from every record and
//! tombstone (a tombstone from before 7 has no origin: its leaf commits to
//! an empty one).
//! 7 → 8: nothing in the log changes; the embedded engine writes the
//! records it takes from now on to its value files (`values.rs`), and
//! reads the ones kept inline in sled before as they are.

use std::collections::HashMap;

use tracing::info;

use super::engine::{entries, Engine, Entry, Space, WriteSet};
use super::record::{nanos, Indexed, LogInfo, Position, Record, Replaced, Successor};
use super::{Spans, StoreError, FORMAT};
use crate::domain::bulletin::{codec, Bulletin, Relation};

/// Index entries rewritten per atomic write.
const CHUNK: usize = 4096;

pub(super) fn run(
    engine: &dyn Engine,
    from: u32,
    head: u64,
    spans: Spans,
) -> Result<(), StoreError> {
    info!(
        from,
        to = FORMAT,
        records = head,
        "upgrading the store's format in place"
    );
    if from < 2 {
        mark_successors(engine, head)?;
    }
    if from < 3 {
        add_expiries(engine, head)?;
    }
    if from < 4 {
        respace(engine, head, spans)?;
    }
    if from < 5 {
        name_log(engine)?;
    }
    if from < 7 {
        super::tree::build(engine, head)?;
    }
    engine.write(WriteSet {
        format: Some(FORMAT),
        ..Default::default()
    })?;
    engine.sync()?;
    info!(format = FORMAT, "store upgraded");
    Ok(())
}

/// Reads every record and marks the bulletin each one supersedes or retracts.
fn mark_successors(engine: &dyn Engine, head: u64) -> Result<(), StoreError> {
    let mut marked: HashMap<u64, Successor> = HashMap::new();
    let mut total = 0u64;
    for item in engine.records(1, head) {
        let (seq, bytes) = item?;
        let Some(rec) = readable(seq, bytes)? else {
            continue;
        };
        let Some((how, id)) = relation_of(&rec) else {
            continue;
        };
        // A relay may name a bulletin this node does not hold.
        let Some(original) = engine
            .index(&rec.meta.publisher, &id)?
            .and_then(|v| Indexed::decode(&v))
            .map(|i| i.seq)
        else {
            continue;
        };
        let old = match marked.get(&original) {
            Some(s) => Some(*s),
            None => engine
                .successors(original, original)?
                .first()
                .and_then(|(_, v)| Successor::decode(v)),
        };
        if let Some(next) = Successor::after(old, how, seq) {
            marked.insert(original, next);
            total += 1;
        }
        if marked.len() >= CHUNK {
            flush(engine, &mut marked)?;
        }
    }
    flush(engine, &mut marked)?;
    info!(marked = total, "superseded and retracted bulletins marked");
    Ok(())
}

/// A stored record, decoded; `None` for a damaged one (refused whenever it
/// is read; an upgrade goes on without it).
fn readable(seq: u64, bytes: bytes::Bytes) -> Result<Option<Record>, StoreError> {
    match Record::decode(seq, bytes) {
        Ok(rec) => Ok(Some(rec)),
        Err(e @ StoreError::Corrupt { .. }) => {
            tracing::warn!(error = %e, "skipping a damaged record during the upgrade");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Rewrites each record whose bulletin expires with `expires_at`, and
/// adds its expiry entry (rewriting one twice writes the same bytes).
fn add_expiries(engine: &dyn Engine, head: u64) -> Result<(), StoreError> {
    let mut set = WriteSet::default();
    let mut total = 0u64;
    for item in engine.records(1, head) {
        let (seq, bytes) = item?;
        let Some(mut rec) = readable(seq, bytes)? else {
            continue;
        };
        let Some(expires) = bulletin_of(&rec).and_then(|b| b.expires_at) else {
            continue;
        };
        rec.meta.expires_at = Some(expires);
        set.records.push((seq, rec.encode()));
        set.expiries.push((nanos(expires), seq));
        total += 1;
        if set.records.len() >= CHUNK {
            engine.write(std::mem::take(&mut set))?;
        }
    }
    engine.write(set)?;
    info!(expiring = total, "expiry times recorded");
    Ok(())
}

/// Moves each acceptance time that is closer to its predecessor than the
/// predecessor's span forward, records and tombstones alike, in order (so
/// times stay increasing along the log).
fn respace(engine: &dyn Engine, head: u64, spans: Spans) -> Result<(), StoreError> {
    use super::engine::Pruned;
    use super::record::{from_nanos, Tombstone};
    let mut set = WriteSet::default();
    let mut free_from = 0u64;
    let mut moved = 0u64;
    for entry in entries(engine, 1, head) {
        match entry? {
            Entry::Record(seq, bytes) => {
                let Some(mut rec) = readable(seq, bytes)? else {
                    continue;
                };
                let span = bulletin_of(&rec).map_or(spans.max, |b| (spans.of)(&b));
                let mut at = nanos(rec.accepted_at);
                if at < free_from {
                    at = free_from;
                    rec.accepted_at = from_nanos(at);
                    set.records.push((seq, rec.encode()));
                    moved += 1;
                }
                free_from = at.saturating_add(u64::from(span) * 1000);
            }
            Entry::Pruned(seq, bytes) => {
                let mut tomb = Tombstone::decode(seq, &bytes)?;
                let mut at = nanos(tomb.accepted_at);
                if at < free_from {
                    at = free_from;
                    tomb.accepted_at = from_nanos(at);
                    set.pruned.push(Pruned {
                        seq,
                        tombstone: tomb.encode(),
                        expires: None,
                    });
                    moved += 1;
                }
                free_from = at.saturating_add(1000);
            }
        }
        if set.records.len() + set.pruned.len() >= CHUNK {
            engine.write(std::mem::take(&mut set))?;
        }
    }
    engine.write(set)?;
    info!(moved, "acceptance times spaced");
    Ok(())
}

fn flush(engine: &dyn Engine, marked: &mut HashMap<u64, Successor>) -> Result<(), StoreError> {
    if marked.is_empty() {
        return Ok(());
    }
    let successors = marked.drain().map(|(seq, s)| (seq, s.encode())).collect();
    engine.write(WriteSet {
        successors,
        ..Default::default()
    })
}

/// The relation a stored bulletin declares (its payload was verified when
/// it was accepted; a record that no longer decodes is corrupt).
fn relation_of(rec: &Record) -> Option<(Replaced, String)> {
    match bulletin_of(rec)?.relation? {
        Relation::Supersedes(id) => Some((Replaced::Superseded, id)),
        Relation::Retracts(id) => Some((Replaced::Retracted, id)),
    }
}

/// The bulletin a stored record carries.
fn bulletin_of(rec: &Record) -> Option<Bulletin> {
    let env = codec::decode_envelope(&rec.envelope).ok()?;
    codec::decode_bulletin(&env.payload).ok()
}

/// Gives the log its identity (kept if an interrupted upgrade already wrote
/// one) and marks the subscription cursors as taken on it.
fn name_log(engine: &dyn Engine) -> Result<(), StoreError> {
    let log = match engine.log()?.and_then(|b| LogInfo::decode(&b)) {
        Some(log) => log,
        None => {
            let log = LogInfo::new();
            engine.write(WriteSet {
                log: Some(log.encode()),
                ..Default::default()
            })?;
            log
        }
    };
    for (identity, name, pos) in engine.cursors(Space::Subscriptions)? {
        if pos.log.is_none() {
            let pos = Position {
                seq: pos.seq,
                log: Some(log.id),
            };
            engine.advance_cursor(Space::Subscriptions, &identity, &name, pos)?;
        }
    }
    info!(log = %log.id, "the store's log has an identity");
    Ok(())
}
