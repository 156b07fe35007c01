//! What the store asks of a storage engine: ordered records by sequence, an
//! id index, a head marker, cursors, atomic writes and a sync that makes
//! them durable. The log's semantics (gapless sequences, deduplication,
//! group commit, the committed head, checked reads) live above this trait,
//! in `store`, so a second engine (a replicated database for a hub) only has
//! to keep bytes and order: it never decides what is a duplicate or when an
//! append is acknowledged.
//!
//! Values are opaque bytes encoded by `store::record` (records with their
//! CRC32 trailer, index entries), so every engine stores the same checked form.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::record::Position;
use super::{EngineChoice, StoreError, StoreOptions};

/// What an open of an engine applied again after an unclean stop (an
/// engine with a log of its own: frames after its last checkpoint).
#[derive(Debug, Clone, Default)]
pub(crate) struct Recovery {
    /// Frames applied again after the last checkpoint (an unclean stop).
    pub frames: u64,
    /// The head the engine held before them, and after.
    pub from: u64,
    pub to: u64,
    /// A damaged or torn frame where the log was cut (never acknowledged).
    pub cut: Option<String>,
}

/// Opens the engine a store in `dir` is kept in: the one place that names
/// an engine. The embedded engine keeps its files under `dir/sled` and its
/// write-ahead log under `dir/wal`; PostgreSQL keeps the log in the
/// database and schema its settings name.
pub(crate) fn open(
    dir: &Path,
    opts: &StoreOptions,
) -> Result<(Arc<dyn Engine>, Recovery), StoreError> {
    match &opts.engine {
        EngineChoice::Sled => {
            let (engine, recovery) =
                super::sled_engine::SledEngine::open(&dir.join("sled"), opts.cache_bytes)?;
            Ok((Arc::new(engine), recovery))
        }
        EngineChoice::Postgres(settings) => Ok((
            Arc::new(super::pg_engine::PgEngine::open(settings)?),
            Recovery::default(),
        )),
    }
}

/// Where a restore into the store `opts` name builds the new store before
/// it takes the target's place: the embedded engine builds in the
/// directory the restore hands it (renamed into place after); PostgreSQL
/// in a schema beside the target's (`<schema>_restoring`), emptied first.
pub(crate) fn aside(opts: &StoreOptions) -> Result<StoreOptions, StoreError> {
    match &opts.engine {
        EngineChoice::Sled => Ok(opts.clone()),
        EngineChoice::Postgres(settings) => {
            let mut settings = settings.clone();
            settings.schema = format!("{}_restoring", settings.schema);
            super::pg_engine::drop_schema(&settings, &settings.schema)?;
            Ok(StoreOptions {
                engine: EngineChoice::Postgres(settings),
                ..opts.clone()
            })
        }
    }
}

/// Whether the store `opts` name outside its directory holds a log
/// already (records, tombstones or positions): a restore only builds a
/// new store. The embedded engine has nothing outside the directory.
pub(crate) fn holds_store(opts: &StoreOptions) -> Result<Option<String>, StoreError> {
    match &opts.engine {
        EngineChoice::Sled => Ok(None),
        EngineChoice::Postgres(settings) => super::pg_engine::holds_store(settings),
    }
}

/// Puts a store built [`aside`] in the place of the one `target` names
/// (PostgreSQL: the target's schema, empty, dropped and the built one
/// renamed to it in one transaction), or throws it away.
pub(crate) fn settle(
    built: &StoreOptions,
    target: &StoreOptions,
    keep: bool,
) -> Result<(), StoreError> {
    match (&built.engine, &target.engine) {
        (EngineChoice::Postgres(b), EngineChoice::Postgres(t)) => match keep {
            true => super::pg_engine::rename_schema(t, &b.schema, &t.schema),
            false => super::pg_engine::drop_schema(t, &b.schema),
        },
        _ => Ok(()),
    }
}

/// One atomic write: all of it becomes visible together, and durable together
/// at the next [`Engine::sync`].
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub(crate) struct WriteSet {
    /// Encoded records by sequence.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Id index entries: (publisher, id) → encoded entry; where one key
    /// appears twice, the later entry wins.
    pub index: Vec<(String, String, Vec<u8>)>,
    /// Successors by the sequence of the bulletin replaced (encoded
    /// `store::record::Successor`); a later entry for the same sequence wins.
    pub successors: Vec<(u64, Vec<u8>)>,
    /// Expiry entries to add: (expires_at in ns since the epoch, sequence).
    pub expiries: Vec<(u64, u64)>,
    /// Records replaced by their tombstones (with their successor and
    /// expiry entries removed).
    pub pruned: Vec<Pruned>,
    /// The new head marker, if it moves.
    pub head: Option<u64>,
    /// The store's format (`store::FORMAT`), when it is set or upgraded.
    pub format: Option<u32>,
    /// The log's identity (an encoded `store::record::LogInfo`), when the
    /// store is created, restored or upgraded.
    pub log: Option<Vec<u8>>,
    /// The identity of the node that serves the store (UTF-8), when it
    /// changes.
    pub node: Option<Vec<u8>>,
    /// Nodes of the log's Merkle tree that its new records complete:
    /// (level, index, hash), level 0 the leaves (`tlog::merkle`).
    pub tree: Vec<(u8, u64, [u8; 32])>,
}

impl WriteSet {
    /// Encoded bytes it carries (records, tombstones, index entries), for
    /// bounding what waits in memory.
    pub fn weight(&self) -> usize {
        self.records.iter().map(|(_, r)| r.len()).sum::<usize>()
            + self.pruned.iter().map(|p| p.tombstone.len()).sum::<usize>()
            + self
                .index
                .iter()
                .map(|(p, i, e)| p.len() + i.len() + e.len())
                .sum::<usize>()
    }

    /// The set as bytes (a write-ahead log frame's payload): each part
    /// with its count, every value with its length, integers big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.weight() + 16 * self.records.len());
        let n = |out: &mut Vec<u8>, n: usize| out.extend_from_slice(&(n as u64).to_be_bytes());
        let u = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_be_bytes());
        let b = |out: &mut Vec<u8>, v: &[u8]| {
            out.extend_from_slice(&(v.len() as u64).to_be_bytes());
            out.extend_from_slice(v);
        };
        n(&mut out, self.records.len());
        for (seq, r) in &self.records {
            u(&mut out, *seq);
            b(&mut out, r);
        }
        n(&mut out, self.index.len());
        for (p, i, e) in &self.index {
            b(&mut out, p.as_bytes());
            b(&mut out, i.as_bytes());
            b(&mut out, e);
        }
        n(&mut out, self.successors.len());
        for (seq, v) in &self.successors {
            u(&mut out, *seq);
            b(&mut out, v);
        }
        n(&mut out, self.expiries.len());
        for (at, seq) in &self.expiries {
            u(&mut out, *at);
            u(&mut out, *seq);
        }
        n(&mut out, self.pruned.len());
        for p in &self.pruned {
            u(&mut out, p.seq);
            b(&mut out, &p.tombstone);
            match p.expires {
                Some(e) => {
                    out.push(1);
                    u(&mut out, e);
                }
                None => out.push(0),
            }
        }
        match self.head {
            Some(h) => {
                out.push(1);
                u(&mut out, h);
            }
            None => out.push(0),
        }
        match self.format {
            Some(f) => {
                out.push(1);
                out.extend_from_slice(&f.to_be_bytes());
            }
            None => out.push(0),
        }
        for v in [&self.log, &self.node] {
            match v {
                Some(v) => {
                    out.push(1);
                    b(&mut out, v);
                }
                None => out.push(0),
            }
        }
        // Last, and only when there is any: frames written before the log
        // had a tree decode as before.
        if !self.tree.is_empty() {
            n(&mut out, self.tree.len());
            for (level, index, hash) in &self.tree {
                out.push(*level);
                u(&mut out, *index);
                out.extend_from_slice(hash);
            }
        }
        out
    }

    /// The set encoded by [`WriteSet::encode`]; `None` if the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<WriteSet> {
        let mut c = Cursor(bytes);
        let mut set = WriteSet::default();
        for _ in 0..c.count()? {
            set.records.push((c.u64()?, c.bytes()?.to_vec()));
        }
        for _ in 0..c.count()? {
            let p = String::from_utf8(c.bytes()?.to_vec()).ok()?;
            let i = String::from_utf8(c.bytes()?.to_vec()).ok()?;
            set.index.push((p, i, c.bytes()?.to_vec()));
        }
        for _ in 0..c.count()? {
            set.successors.push((c.u64()?, c.bytes()?.to_vec()));
        }
        for _ in 0..c.count()? {
            set.expiries.push((c.u64()?, c.u64()?));
        }
        for _ in 0..c.count()? {
            let seq = c.u64()?;
            let tombstone = c.bytes()?.to_vec();
            let expires = match c.flag()? {
                true => Some(c.u64()?),
                false => None,
            };
            set.pruned.push(Pruned {
                seq,
                tombstone,
                expires,
            });
        }
        set.head = match c.flag()? {
            true => Some(c.u64()?),
            false => None,
        };
        set.format = match c.flag()? {
            true => Some(u32::from_be_bytes(c.take(4)?.try_into().ok()?)),
            false => None,
        };
        set.log = match c.flag()? {
            true => Some(c.bytes()?.to_vec()),
            false => None,
        };
        set.node = match c.flag()? {
            true => Some(c.bytes()?.to_vec()),
            false => None,
        };
        if !c.0.is_empty() {
            for _ in 0..c.count()? {
                let level = c.take(1)?[0];
                let index = c.u64()?;
                set.tree.push((level, index, c.take(32)?.try_into().ok()?));
            }
        }
        c.0.is_empty().then_some(set)
    }
}

/// Reads a [`WriteSet`]'s encoding; every read is checked against what is left.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A count of entries, each at least one byte: never more than is left.
    fn count(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?)
            .ok()
            .filter(|&n| n <= self.0.len())
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }

    fn flag(&mut self) -> Option<bool> {
        match self.take(1)?[0] {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
}

/// A record to prune.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pruned {
    pub seq: u64,
    /// The encoded `store::record::Tombstone` that takes its place.
    pub tombstone: Vec<u8>,
    /// Its expiry entry's time, if it has one.
    pub expires: Option<u64>,
}

/// The two kinds of position a store keeps, each in its own key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space {
    /// Durable subscriptions on this node's log: (subscriber identity, name).
    Subscriptions,
    /// How far this node has read each peer's log: (peer identity, "").
    Links,
}

/// Records in sequence order, as (sequence, encoded record).
pub(crate) type RecordIter<'a> =
    Box<dyn Iterator<Item = Result<(u64, Bytes), StoreError>> + Send + 'a>;

/// A storage engine. Writes come from one thread at a time (the store's
/// applier); reads and cursor updates from any thread.
pub(crate) trait Engine: Send + Sync + 'static {
    /// The head marker as last written (0 in a new store).
    fn head(&self) -> Result<u64, StoreError>;
    /// The format last written (`None`: never written, a new store or one
    /// from before formats were recorded).
    fn format(&self) -> Result<Option<u32>, StoreError>;
    /// The log's identity as last written (an encoded
    /// `store::record::LogInfo`; `None` before logs had identities).
    fn log(&self) -> Result<Option<Bytes>, StoreError>;
    /// The identity of the node that last served the store, as written.
    fn node(&self) -> Result<Option<Bytes>, StoreError>;
    /// The highest sequence that holds a record or a tombstone, if any.
    fn last_record(&self) -> Result<Option<u64>, StoreError>;
    /// The encoded record at `seq` (`None` if pruned).
    fn record(&self, seq: u64) -> Result<Option<Bytes>, StoreError>;
    /// Encoded records with `from <= seq <= to`, in order (pruned ones are
    /// not there).
    fn records(&self, from: u64, to: u64) -> RecordIter<'_>;
    /// The encoded tombstone of the pruned record at `seq`.
    fn tombstone(&self, seq: u64) -> Result<Option<Bytes>, StoreError>;
    /// Encoded tombstones with `from <= seq <= to`, in order.
    fn tombstones(&self, from: u64, to: u64) -> RecordIter<'_>;
    /// Up to `limit` expiry entries from `from` (expires_at, sequence) on
    /// with `expires_at <= until` (ns since the epoch), earliest first:
    /// (expires_at, sequence).
    fn expiring(
        &self,
        from: (u64, u64),
        until: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>, StoreError>;
    /// Successor entries with `from <= seq <= to`, in order (few: only
    /// replaced bulletins have one).
    fn successors(&self, from: u64, to: u64) -> Result<Vec<(u64, Bytes)>, StoreError>;
    /// The index entry of (publisher, id).
    fn index(&self, publisher: &str, id: &str) -> Result<Option<Bytes>, StoreError>;
    /// Up to `limit` index entries for `id`, any publisher: (publisher, entry).
    fn index_by_id(&self, id: &str, limit: usize) -> Result<Vec<(String, Bytes)>, StoreError>;
    /// The encoded records at `seqs` that are held (pruned ones are left
    /// out), in the order asked: one request where the engine is across a
    /// network.
    fn records_at(&self, seqs: &[u64]) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let mut out = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            if let Some(r) = self.record(seq)? {
                out.push((seq, r));
            }
        }
        Ok(out)
    }
    /// The index entries of `keys` (publisher, id), in the order asked.
    fn index_many(&self, keys: &[(String, String)]) -> Result<Vec<Option<Bytes>>, StoreError> {
        keys.iter().map(|(p, id)| self.index(p, id)).collect()
    }
    /// Applies `set` atomically. It is visible to reads at once and durable
    /// after the next [`Engine::sync`].
    fn write(&self, set: WriteSet) -> Result<(), StoreError>;
    /// The group commit's write: `set` becomes durable, and only then
    /// visible to reads, at the next [`Engine::sync`]. Until then the
    /// writer answers its own questions about it (the applier keeps what it
    /// staged). An engine without a log of its own writes it at once.
    fn stage(&self, set: WriteSet) -> Result<(), StoreError> {
        self.write(set)
    }
    /// Makes every write, staged write and cursor update made before the
    /// call durable, and the staged writes visible.
    fn sync(&self) -> Result<(), StoreError>;
    /// [`Engine::write`] then [`Engine::sync`]: one write durable at once
    /// (a marker set at open, the end of a build), not for the group commit.
    fn write_synced(&self, set: WriteSet) -> Result<(), StoreError> {
        self.write(set)?;
        self.sync()
    }
    /// Brings the engine's own files up to everything synced, so that the
    /// next open has nothing to redo (a clean close, the end of a build).
    fn checkpoint(&self) -> Result<(), StoreError>;
    /// The cursor of (identity, name) in `space`.
    fn cursor(
        &self,
        space: Space,
        identity: &str,
        name: &str,
    ) -> Result<Option<Position>, StoreError>;
    /// Moves the cursor of (identity, name) to `pos` unless it is already
    /// further on the same log (`Position::advanced`: a position on another
    /// log is replaced); durable at the next [`Engine::sync`].
    fn advance_cursor(
        &self,
        space: Space,
        identity: &str,
        name: &str,
        pos: Position,
    ) -> Result<(), StoreError>;
    /// Removes the cursor of (identity, name); durable at the next sync.
    fn remove_cursor(&self, space: Space, identity: &str, name: &str) -> Result<(), StoreError>;
    /// Every cursor of `space`: (identity, name, position).
    fn cursors(&self, space: Space) -> Result<Vec<(String, String, Position)>, StoreError>;
    /// Bytes the engine's files take.
    fn size_on_disk(&self) -> u64;
    /// The Merkle tree node at (level, index), once written.
    fn tree_node(&self, level: u8, index: u64) -> Result<Option<[u8; 32]>, StoreError>;
    /// The head marker and the highest sequence held, read together (one
    /// view, even while another process appends).
    fn head_and_last(&self) -> Result<(u64, Option<u64>), StoreError> {
        Ok((self.head()?, self.last_record()?))
    }

    // Several processes over one log (a shared engine: several nodes of a
    // member over one database). An engine only this process writes keeps
    // the defaults.

    /// Called by the applier before it decides a batch or a prune: the
    /// engine makes this process the log's one writer (waiting while
    /// another is) and answers the log's head if others appended since this
    /// process last wrote or claimed it (the applier then reads its tip —
    /// head, acceptance time, tree edge — again).
    fn claim(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
    /// Called by the applier when nothing waits for it: the engine may let
    /// another process write once what is staged is durable.
    fn idle(&self) {}
    /// Hands the engine what to call whenever the log's durable head
    /// moves, whoever appended (called with heads in any order; the caller
    /// keeps the highest).
    fn follow(&self, _on_head: Arc<dyn Fn(u64) + Send + Sync>) {}
    /// Whether the store may go on after this engine reported itself
    /// `Unavailable` (its connection lost): what a failed commit held was
    /// rolled back whole, so the log can be taken up again by [`recover`].
    /// An engine over local files cannot: after a failed fsync, what it
    /// covered may be gone while a later fsync succeeds.
    ///
    /// [`recover`]: Engine::recover
    fn recoverable(&self) -> bool {
        false
    }
    /// After a failure the engine said it can go on from: forget what was
    /// staged and not committed, make the connections again, and answer
    /// the log's head as the engine holds it now.
    fn recover(&self) -> Result<u64, StoreError> {
        Err(StoreError::Failed(
            "this engine cannot go on after a failure; restart the node".into(),
        ))
    }
    /// Whether this process holds `duty` — work one process of the log does
    /// at a time (the peer links, pruning) — as it changes. The engine
    /// keeps trying to take a duty it does not hold, and says when it loses
    /// one (its hold on the database is gone; another process may take it
    /// now). An engine only this process opens holds every duty for good.
    fn duty(&self, _duty: Duty) -> tokio::sync::watch::Receiver<bool> {
        // The sender dropped: `true` for good, and no change ever comes.
        tokio::sync::watch::channel(true).1
    }
}

/// Work that one process of a log does at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Duty {
    /// The links to other members' nodes (pulling their bulletins in,
    /// keeping their positions).
    PeerLinks,
    /// Retention: pruning what is due to tombstones.
    Pruning,
}

impl Duty {
    pub const ALL: [Duty; 2] = [Duty::PeerLinks, Duty::Pruning];

    /// Its name, in metrics, status and the database's lock key.
    pub fn name(self) -> &'static str {
        match self {
            Duty::PeerLinks => "peer-links",
            Duty::Pruning => "pruning",
        }
    }
}

/// One sequence of the log: its record, or the tombstone of a pruned one.
pub(crate) enum Entry {
    Record(u64, Bytes),
    Pruned(u64, Bytes),
}

/// Records and tombstones of `from..=to` merged in sequence order: every
/// sequence of a gapless log, once (for readers of the whole log, such as
/// backups and upgrades).
pub(crate) fn entries(
    engine: &dyn Engine,
    from: u64,
    to: u64,
) -> impl Iterator<Item = Result<Entry, StoreError>> + '_ {
    let mut records = engine.records(from, to).peekable();
    let mut tombstones = engine.tombstones(from, to).peekable();
    std::iter::from_fn(move || {
        let next_record = match records.peek() {
            Some(Ok((seq, _))) => Some(*seq),
            // The read error itself.
            Some(Err(_)) => return records.next().map(|r| r.map(|(s, v)| Entry::Record(s, v))),
            None => None,
        };
        let next_tombstone = match tombstones.peek() {
            Some(Ok((seq, _))) => Some(*seq),
            Some(Err(_)) => {
                return tombstones
                    .next()
                    .map(|r| r.map(|(s, v)| Entry::Pruned(s, v)))
            }
            None => None,
        };
        match (next_record, next_tombstone) {
            (None, None) => None,
            (Some(r), t) if t.is_none_or(|t| r < t) => records
                .next()
                .map(|item| item.map(|(seq, v)| Entry::Record(seq, v))),
            _ => tombstones
                .next()
                .map(|item| item.map(|(seq, v)| Entry::Pruned(seq, v))),
        }
    })
}
