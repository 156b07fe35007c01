//! The log's Merkle tree as the store keeps it: one leaf per sequence (leaf
//! index = sequence − 1), written in the same atomic write as the record it
//! commits to, with every node of a perfect subtree that the record
//! completes (`tlog::merkle`). Tree heads and proofs are read from those
//! nodes, for sizes up to the committed head; opening the tree reads at most
//! 64 of them, whatever the log's size.

use crate::tlog::merkle::{self, Frontier, Hash, Nodes, ProofError};

use super::engine::{entries, Engine, Entry, WriteSet};
use super::record::{Record, Tombstone};
use super::{Store, StoreError};

/// Leaves rebuilt per atomic write when an older store gets its tree.
const CHUNK: u64 = 4096;

/// An engine's tree nodes, as proofs read them.
pub(super) struct EngineNodes<'a>(pub &'a dyn Engine);

impl Nodes for EngineNodes<'_> {
    type Error = StoreError;

    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        self.0
            .tree_node(level, index)?
            .ok_or(StoreError::Proof(ProofError::Missing { level, index }))
    }
}

/// Levels from which proofs keep the nodes they read in memory: one node in
/// 2^UPPER of the leaves' count (8,000 for a log of a million), so a proof
/// reads the engine only for its lowest levels.
const UPPER: u8 = 7;

/// The nodes of the upper levels read so far. A node never changes once
/// written, so a cached one is never stale; it is at most one in 2^UPPER of
/// the log's size.
#[derive(Default)]
pub(super) struct Upper(parking_lot::RwLock<std::collections::HashMap<(u8, u64), Hash>>);

/// An engine's tree nodes, the upper levels through the cache.
struct CachedNodes<'a> {
    engine: &'a dyn Engine,
    upper: &'a Upper,
}

impl Nodes for CachedNodes<'_> {
    type Error = StoreError;

    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        if level < UPPER {
            return EngineNodes(self.engine).node(level, index);
        }
        if let Some(h) = self.upper.0.read().get(&(level, index)) {
            return Ok(*h);
        }
        let h = EngineNodes(self.engine).node(level, index)?;
        self.upper.0.write().insert((level, index), h);
        Ok(h)
    }
}

/// The right edge of the tree of a log whose head is `head`; an error
/// names what is missing (a store whose tree does not reach its head is
/// not whole).
pub(super) fn open(engine: &dyn Engine, head: u64) -> Result<Frontier, StoreError> {
    Frontier::load(&EngineNodes(engine), head).map_err(|e| match e {
        StoreError::Proof(ProofError::Missing { level, index }) => StoreError::Torn(format!(
            "its Merkle tree has no node at level {level}, index {index}, for a log of {head} entries"
        )),
        other => other,
    })
}

/// The leaf of one entry of the log.
fn leaf_of(entry: Entry) -> Result<Hash, StoreError> {
    Ok(match entry {
        Entry::Record(seq, v) => merkle::leaf_hash(&Record::decode(seq, v)?.leaf_entry()),
        Entry::Pruned(seq, v) => merkle::leaf_hash(&Tombstone::decode(seq, &v)?.leaf_entry()),
    })
}

/// Writes the tree of the log's first `head` entries (an upgrade from a
/// format without one), in chunks; idempotent (each node is what its
/// leaves make).
pub(super) fn build(engine: &dyn Engine, head: u64) -> Result<(), StoreError> {
    let mut frontier = Frontier::default();
    let mut set = WriteSet::default();
    for entry in entries(engine, 1, head) {
        set.tree.extend(frontier.push(leaf_of(entry?)?));
        if frontier.size() % CHUNK == 0 {
            engine.write(std::mem::take(&mut set))?;
        }
    }
    if frontier.size() != head {
        return Err(StoreError::Torn(format!(
            "its log holds {} entries, not the {head} its head marker says",
            frontier.size()
        )));
    }
    engine.write(set)
}

/// The tree of a log being built (a restore, a compaction): leaves are
/// added in sequence order and their nodes go into the same writes.
#[derive(Default)]
pub(super) struct Builder(Frontier);

impl Builder {
    pub(super) fn record(&mut self, rec: &Record, set: &mut WriteSet) {
        set.tree
            .extend(self.0.push(merkle::leaf_hash(&rec.leaf_entry())));
    }

    pub(super) fn tombstone(&mut self, t: &Tombstone, set: &mut WriteSet) {
        set.tree
            .extend(self.0.push(merkle::leaf_hash(&t.leaf_entry())));
    }
}

impl Store {
    fn nodes(&self) -> CachedNodes<'_> {
        CachedNodes {
            engine: self.engine.as_ref(),
            upper: &self.tree,
        }
    }

    /// Checks that a tree of `size` entries can be read: committed.
    fn committed_size(&self, size: u64) -> Result<(), StoreError> {
        let head = self.head();
        if size > head {
            return Err(StoreError::BeyondHead { size, head });
        }
        Ok(())
    }

    /// The head of the log's tree at `size` entries (at most the committed
    /// head).
    pub fn tree_head(&self, size: u64) -> Result<Hash, StoreError> {
        self.committed_size(size)?;
        merkle::root(&self.nodes(), size)
    }

    /// The leaf hash of sequence `seq` (committed).
    pub fn leaf(&self, seq: u64) -> Result<Hash, StoreError> {
        if seq == 0 {
            return Err(StoreError::Proof(ProofError::IndexBeyondSize {
                index: 0,
                size: self.head(),
            }));
        }
        self.committed_size(seq)?;
        EngineNodes(self.engine.as_ref()).node(0, seq - 1)
    }

    /// What sequence `seq` (committed) commits to in the tree, from its
    /// record or its tombstone.
    pub fn leaf_entry(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        self.committed_size(seq)?;
        if let Some(v) = self.engine.record(seq)? {
            return Ok(Record::decode(seq, v)?.leaf_entry());
        }
        match self.engine.tombstone(seq)? {
            Some(v) => Ok(Tombstone::decode(seq, &v)?.leaf_entry()),
            None => Err(StoreError::Torn(format!(
                "sequence {seq} has neither a record nor a tombstone"
            ))),
        }
    }

    /// The inclusion proof of sequence `seq` (leaf `seq − 1`) in the tree of
    /// `size` entries.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.committed_size(size)?;
        if seq == 0 || seq > size {
            return Err(StoreError::Proof(ProofError::IndexBeyondSize {
                index: seq.saturating_sub(1),
                size,
            }));
        }
        merkle::inclusion_proof(&self.nodes(), seq - 1, size)
    }

    /// The consistency proof between the trees of `old` and `new` entries.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        self.committed_size(new)?;
        merkle::consistency_proof(&self.nodes(), old, new)
    }
}
