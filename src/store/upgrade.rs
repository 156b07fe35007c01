//! Upgrades a store of an older format in place, at open, before anything
//! is served. Each step is idempotent and the format marker is written last,
//! so a crash during an upgrade leaves a store that upgrades again at the
//! next open.
//!
//! 1 → 2: index entries learn which bulletin superseded or retracted them.
//! The relation is in the signed payload, so every record is read once.

use std::collections::HashMap;

use tracing::info;

use super::engine::{Engine, WriteSet};
use super::record::{Indexed, Record, Replaced, Successor};
use super::{StoreError, FORMAT};
use crate::bulletin::{codec, Relation};

/// Index entries rewritten per atomic write.
const CHUNK: usize = 4096;

pub(super) fn run(engine: &dyn Engine, from: u32, head: u64) -> Result<(), StoreError> {
    info!(
        from,
        to = FORMAT,
        records = head,
        "upgrading the store's format in place"
    );
    if from < 2 {
        mark_successors(engine, head)?;
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
    let mut marked: HashMap<(String, String), Indexed> = HashMap::new();
    let mut total = 0u64;
    for item in engine.records(1, head) {
        let (seq, bytes) = item?;
        let rec = match Record::decode(seq, bytes) {
            Ok(rec) => rec,
            // Refused whenever it is read; the upgrade goes on without it.
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::warn!(error = %e, "skipping a damaged record during the upgrade");
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some((how, id)) = relation_of(&rec) else {
            continue;
        };
        let key = (rec.meta.publisher.clone(), id);
        let entry = match marked.get(&key) {
            Some(e) => Some(e.clone()),
            None => engine
                .index(&key.0, &key.1)?
                .and_then(|v| Indexed::decode(&v)),
        };
        // A relay may name a bulletin this node does not hold.
        let Some(mut entry) = entry else { continue };
        if mark(&mut entry, how, seq) {
            marked.insert(key, entry);
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

/// Records `seq` as what replaced `entry`; a retraction stays (a later
/// revision of a retracted bulletin does not bring it back). False when
/// nothing changed.
pub(super) fn mark(entry: &mut Indexed, how: Replaced, seq: u64) -> bool {
    if entry
        .successor
        .is_some_and(|s| s.how == Replaced::Retracted && how == Replaced::Superseded)
    {
        return false;
    }
    let next = Some(Successor { how, seq });
    let changed = entry.successor != next;
    entry.successor = next;
    changed
}

fn flush(
    engine: &dyn Engine,
    marked: &mut HashMap<(String, String), Indexed>,
) -> Result<(), StoreError> {
    if marked.is_empty() {
        return Ok(());
    }
    let index = marked
        .drain()
        .map(|((publisher, id), e)| (publisher, id, e.encode()))
        .collect();
    engine.write(WriteSet {
        index,
        ..Default::default()
    })
}

/// The relation a stored bulletin declares (its payload was verified when
/// it was accepted; a record that no longer decodes is corrupt).
fn relation_of(rec: &Record) -> Option<(Replaced, String)> {
    let env = codec::decode_envelope(&rec.envelope).ok()?;
    match codec::decode_bulletin(&env.payload).ok()?.relation? {
        Relation::Supersedes(id) => Some((Replaced::Superseded, id)),
        Relation::Retracts(id) => Some((Replaced::Retracted, id)),
    }
}
