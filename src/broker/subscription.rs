//! Subscriptions: durable cursors, replay, live delivery.
//!
//! **Live delivery is replay that has caught up.** A subscription is a task
//! that reads the log from its position in bounded batches and, at the
//! committed head, waits on the head `watch`; there is no per-subscriber queue
//! that grows with the backlog. At most `window` deliveries are unacknowledged
//! at once; the channel to the connection holds a few events. So memory per
//! subscription is bounded by its window, and a stalled subscriber only stops
//! its own task: publishers and other subscribers never wait for it.
//!
//! Because replay and live are the same loop over the same log, the switch
//! from one to the other cannot lose or duplicate a bulletin: the position only
//! moves forward, one sequence at a time, and only up to the committed head.
//!
//! A durable cursor belongs to (subscriber identity, name) and records the
//! highest acknowledged sequence. Resuming delivers everything after it that
//! the subscriber may read and that matches its filter. Opening a durable name
//! that is already open takes it over: the older stream ends.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::broker::view::{Seen, Step, View};
use crate::store::{LogId, LogInfo, Position, Store, StoreError};

/// Records read from the store per step (bounds the work between checks).
const READ_BATCH: usize = 256;
/// With nothing in flight, the cursor skips over records not meant for the
/// subscriber once this many have passed (and at every heartbeat).
const SKIP_ADVANCE: u64 = 4096;

/// Read-aheads running at once on the whole node (a replaying subscription
/// that finds none free reads without one).
fn read_ahead_limit() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    #[error("subscription {0:?} was taken over by a newer stream")]
    TakenOver(String),
    #[error("subscription {0:?} was deleted by an operator")]
    Deleted(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "acknowledged sequence {acked} was never delivered (last delivered position {position})"
    )]
    BadAck { acked: u64, position: u64 },
    #[error("invalid subscription: {0}")]
    Invalid(String),
    #[error("this node already serves its maximum of {0} subscriptions")]
    TooMany(usize),
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// After the durable cursor (earliest if none).
    Resume,
    /// At this sequence (inclusive).
    Sequence(u64),
    /// At the first bulletin accepted at or after this time.
    Time(SystemTime),
    Earliest,
    /// Only what is committed after the stream opens.
    Latest,
}

/// What a subscription sends, in order.
#[derive(Debug)]
pub enum Event {
    /// First: where the stream starts (the position after which it delivers).
    Opened {
        position: u64,
        head: u64,
        window: u32,
        /// Records after `position`, up to `head`, pruned by retention.
        pruned: u64,
        /// The log served, and the one it continues if restored.
        log: LogInfo,
        /// Why the stream does not start where it was asked to: the position
        /// (a stored cursor, or a start sequence with its log) was taken on
        /// another log.
        restarted: Option<String>,
    },
    /// Deliveries in sequence order (one hand-off for a whole read batch).
    Deliveries(Vec<Seen>),
    /// Replay reached the committed head.
    CaughtUp {
        head: u64,
    },
    Heartbeat {
        head: u64,
    },
    /// Last: why the stream ends.
    End(BrokerError),
}

/// Live figures of one subscription, for `Admin.Status`.
#[derive(Debug)]
pub struct SessionStats {
    pub identity: String,
    pub name: String,
    pub durable: bool,
    /// Highest acknowledged sequence (the durable cursor).
    pub cursor: AtomicU64,
    /// The position the subscription has read up to.
    pub position: AtomicU64,
    pub delivered: AtomicU64,
    pub last_ack_at: Mutex<Option<SystemTime>>,
    pub connected: AtomicBool,
    /// Set (under its lock) when an operator deletes the subscription: no
    /// cursor write starts after that.
    pub deleted: Mutex<bool>,
}

struct Session {
    id: u64,
    cancel: CancellationToken,
    stats: Arc<SessionStats>,
}

/// Open subscriptions, by (identity, name); ephemeral ones get a unique name.
pub struct Broker {
    sessions: Mutex<HashMap<(String, String), Session>>,
    next_id: AtomicU64,
    /// Most subscriptions open at once on this node.
    max: usize,
    /// Deliveries of subscriptions that have ended.
    delivered_closed: AtomicU64,
    /// Permits for read-ahead on the blocking pool.
    read_ahead: Arc<tokio::sync::Semaphore>,
    /// The node's tasks: a subscription's cursor committer and read-ahead
    /// run in it, so that shutdown waits for them.
    tasks: TaskTracker,
}

/// Removes its session from the broker when the subscription ends.
pub struct SessionGuard {
    broker: Arc<Broker>,
    key: (String, String),
    id: u64,
    pub cancel: CancellationToken,
    pub stats: Arc<SessionStats>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.stats.connected.store(false, Ordering::Relaxed);
        self.broker.delivered_closed.fetch_add(
            self.stats.delivered.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let mut m = self.broker.sessions.lock();
        if m.get(&self.key).is_some_and(|s| s.id == self.id) {
            m.remove(&self.key);
        }
    }
}

impl Broker {
    pub fn new(max: usize, tasks: TaskTracker) -> Broker {
        Broker {
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            max,
            delivered_closed: AtomicU64::new(0),
            read_ahead: Arc::new(tokio::sync::Semaphore::new(read_ahead_limit())),
            tasks,
        }
    }

    /// Deliveries sent since the node started, by every subscription.
    pub fn delivered_total(&self) -> u64 {
        let open: u64 = self
            .sessions()
            .iter()
            .map(|s| s.delivered.load(Ordering::Relaxed))
            .sum();
        self.delivered_closed.load(Ordering::Relaxed) + open
    }

    /// Registers a session; a durable name already open is taken over (its
    /// token is cancelled with `TakenOver`). Refused when the node is full.
    pub fn open(
        self: &Arc<Self>,
        identity: &str,
        name: &str,
        durable: bool,
        parent: &CancellationToken,
    ) -> Result<SessionGuard, BrokerError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let key_name = if durable {
            name.to_owned()
        } else {
            format!("~ephemeral-{id}")
        };
        let key = (identity.to_owned(), key_name.clone());
        let cancel = parent.child_token();
        let stats = Arc::new(SessionStats {
            identity: identity.to_owned(),
            name: key_name,
            durable,
            cursor: AtomicU64::new(0),
            position: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            last_ack_at: Mutex::new(None),
            connected: AtomicBool::new(true),
            deleted: Mutex::new(false),
        });
        {
            let mut m = self.sessions.lock();
            if m.len() >= self.max && !m.contains_key(&key) {
                return Err(BrokerError::TooMany(self.max));
            }
            if let Some(old) = m.insert(
                key.clone(),
                Session {
                    id,
                    cancel: cancel.clone(),
                    stats: stats.clone(),
                },
            ) {
                info!(target: "beacon::audit", identity, name, "durable subscription taken over by a new stream");
                old.cancel.cancel();
            }
        }
        Ok(SessionGuard {
            broker: self.clone(),
            key,
            id,
            cancel,
            stats,
        })
    }

    /// Figures of every open subscription.
    pub fn sessions(&self) -> Vec<Arc<SessionStats>> {
        self.sessions
            .lock()
            .values()
            .map(|s| s.stats.clone())
            .collect()
    }

    /// Open subscriptions with the name that tells them apart (an
    /// ephemeral one's is unique to it), for listings in a stable order.
    pub fn sessions_keyed(&self) -> Vec<(String, Arc<SessionStats>)> {
        self.sessions
            .lock()
            .iter()
            .map(|((_, name), s)| (name.clone(), s.stats.clone()))
            .collect()
    }

    /// Ends the open durable subscription (identity, name), if any, for
    /// good: once this returns, it writes no cursor. Returns whether one was open.
    pub fn delete(&self, identity: &str, name: &str) -> bool {
        let session = self
            .sessions
            .lock()
            .get(&(identity.to_owned(), name.to_owned()))
            .map(|s| (s.cancel.clone(), s.stats.clone()));
        match session {
            Some((cancel, stats)) => {
                *stats.deleted.lock() = true;
                cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Whether (identity, name) is open now.
    pub fn is_open(&self, identity: &str, name: &str) -> bool {
        self.sessions
            .lock()
            .contains_key(&(identity.to_owned(), name.to_owned()))
    }
}

/// Stores a durable subscription's cursor and waits until it is durable;
/// nothing once the subscription was deleted (checked under the same lock
/// the deletion takes, so no write starts after it).
async fn commit_cursor(store: &Store, stats: &SessionStats, seq: u64) -> Result<(), StoreError> {
    {
        let deleted = stats.deleted.lock();
        if *deleted {
            return Ok(());
        }
        store.set_cursor(&stats.identity, &stats.name, seq)?;
    }
    store.sync_positions().await
}

/// Everything one subscription needs.
pub struct Subscription {
    /// What the subscriber may see: its member's view of the log, with its
    /// filter and its choices on expired and replaced bulletins.
    pub view: View,
    pub start: Start,
    /// With `Start::Sequence`: the log the reader took that position on
    /// (from an earlier `Opened`). On another log the stream starts over.
    pub log: Option<LogId>,
    pub window: u32,
    pub heartbeat: Duration,
    pub guard: SessionGuard,
    /// The node's shutdown token (to tell shutdown from takeover).
    pub shutdown: CancellationToken,
}

/// Resolves a start position to "the position after which to deliver".
pub fn start_position(
    store: &Store,
    start: &Start,
    cursor: Option<u64>,
) -> Result<u64, StoreError> {
    Ok(match start {
        Start::Resume => cursor.unwrap_or(0),
        Start::Sequence(n) => n.saturating_sub(1),
        Start::Time(t) => store.first_seq_at_or_after(*t)?.saturating_sub(1),
        Start::Earliest => 0,
        Start::Latest => store.head(),
    })
}

/// Where a subscription starts on `log`: a stored cursor, or a start
/// sequence the reader names the log of, is applied only as far as it
/// holds on this log (`LogInfo::carry`); otherwise the stream starts from
/// the earliest, and the reason is returned. A position is never applied to
/// a log it was not taken on: a log rebuilt or restored can hold other
/// bulletins under the same sequences.
fn on_this_log(
    log: &LogInfo,
    start: &Start,
    reader_log: Option<LogId>,
    stored: Option<Position>,
) -> (Start, Option<u64>, Option<String>) {
    let mut restarted = None;
    let stored = match stored {
        Some(Position {
            seq,
            log: Some(taken_on),
        }) if matches!(start, Start::Resume) => match log.carry(taken_on, seq) {
            Some(seq) => Some(seq),
            None => {
                restarted = Some(format!(
                    "the stored cursor ({seq}) was taken on log {taken_on}, not on this node's log {}: replaying from the start",
                    log.id
                ));
                None
            }
        },
        other => other.map(|p| p.seq),
    };
    let start = match (start, reader_log) {
        (Start::Sequence(n), Some(taken_on)) => {
            let after = n.saturating_sub(1);
            match log.carry(taken_on, after) {
                Some(p) if p == after => Start::Sequence(*n),
                Some(p) => {
                    restarted = Some(format!(
                        "this node's log {} was restored from a backup of log {taken_on} at {p}: continuing after {p}, not {after}",
                        log.id
                    ));
                    Start::Sequence(p + 1)
                }
                None => {
                    restarted = Some(format!(
                        "position {after} was taken on log {taken_on}, not on this node's log {}: replaying from the start",
                        log.id
                    ));
                    Start::Earliest
                }
            }
        }
        (other, _) => other.clone(),
    };
    (start, stored, restarted)
}

impl Subscription {
    fn store(&self) -> &Arc<Store> {
        self.view.store()
    }

    /// While replaying, pages the next batch (`from..=to`) into the store's
    /// cache on the blocking pool, so that reading it on this task finds it
    /// in memory: the disk reads and decoding run on another core while this
    /// one sends. At most one per subscription, and a bounded number per
    /// node; without a free permit the subscription simply reads on.
    fn read_ahead(&self, ahead: &mut Option<tokio::task::JoinHandle<()>>, from: u64, to: u64) {
        if ahead.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let Ok(permit) = self.guard.broker.read_ahead.clone().try_acquire_owned() else {
            return;
        };
        let store = self.store().clone();
        *ahead = Some(self.guard.broker.tasks.spawn_blocking(move || {
            store.prefetch(from, to);
            drop(permit);
        }));
    }

    /// Asks for the cursor to move to `seq`; the committer makes it durable.
    fn persist_cursor(&self, wanted: &watch::Sender<u64>, seq: u64) {
        wanted.send_if_modified(|cur| {
            let moved = seq > *cur;
            *cur = (*cur).max(seq);
            moved
        });
    }

    /// Makes the wanted cursor durable, coalescing acks that arrive while a
    /// commit is in progress; the reported cursor moves only once durable.
    fn spawn_committer(&self, mut wanted: watch::Receiver<u64>) -> tokio::task::JoinHandle<()> {
        let store = self.store().clone();
        let stats = self.guard.stats.clone();
        self.guard.broker.tasks.spawn(async move {
            loop {
                let seq = *wanted.borrow_and_update();
                if seq > stats.cursor.load(Ordering::Relaxed) {
                    if stats.durable {
                        if let Err(e) = commit_cursor(&store, &stats, seq).await {
                            warn!(error = %e, identity = %stats.identity, name = %stats.name, "cursor write failed");
                            return;
                        }
                    }
                    stats.cursor.fetch_max(seq, Ordering::Relaxed);
                }
                if wanted.changed().await.is_err() {
                    // The subscription ended; commit what it last asked for.
                    let last = *wanted.borrow();
                    if last > stats.cursor.load(Ordering::Relaxed) {
                        if stats.durable {
                            let _ = commit_cursor(&store, &stats, last).await;
                        }
                        stats.cursor.fetch_max(last, Ordering::Relaxed);
                    }
                    return;
                }
            }
        })
    }

    /// Runs the subscription until the subscriber goes away or it must end.
    /// `acks` carries the subscriber's cumulative acknowledgements.
    pub async fn run(self, mut acks: watch::Receiver<u64>, out: mpsc::Sender<Event>) {
        let end = self.serve(&mut acks, &out).await;
        let stats = &self.guard.stats;
        debug!(identity = %stats.identity, name = %stats.name, reason = ?end, "subscription ended");
        if let Some(e) = end {
            let _ = out.send(Event::End(e)).await;
        }
    }

    async fn serve(
        &self,
        acks: &mut watch::Receiver<u64>,
        out: &mpsc::Sender<Event>,
    ) -> Option<BrokerError> {
        let stats = self.guard.stats.clone();
        let stored = if stats.durable {
            match self.store().cursor(&stats.identity, &stats.name) {
                Ok(c) => c,
                Err(e) => return Some(e.into()),
            }
        } else {
            None
        };
        let log = self.store().log();
        let (start, stored, restarted) = on_this_log(&log, &self.start, self.log, stored);
        if let Some(why) = &restarted {
            info!(target: "beacon::audit", identity = %stats.identity, name = %stats.name,
                  reason = %why, "subscription does not start where it asked");
        }
        let position = match start_position(self.store(), &start, stored) {
            Ok(p) => p,
            Err(e) => return Some(e.into()),
        };
        stats.position.store(position, Ordering::Relaxed);
        let initial = stored.unwrap_or(position).min(position);
        stats.cursor.store(initial, Ordering::Relaxed);
        let (wanted, wanted_rx) = watch::channel(initial);
        let committer = self.spawn_committer(wanted_rx);
        let mut head_rx = self.store().watch_head();
        let head = *head_rx.borrow_and_update();
        let window = self.window.max(1) as usize;
        let pruned = match self
            .store()
            .pruned_between(position.saturating_add(1), head)
        {
            Ok(n) => n,
            Err(e) => return Some(e.into()),
        };
        if out
            .send(Event::Opened {
                position,
                head,
                window: self.window,
                pruned,
                log,
                restarted,
            })
            .await
            .is_err()
        {
            return None;
        }
        let mut progress = Progress::new(position, window);
        let mut caught_up = false;
        let mut ahead = None;
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        loop {
            // 1. Take in acknowledgements (always the latest value: the wait
            //    below may already have consumed the change notification).
            match progress.ack(*acks.borrow_and_update()) {
                Err(e) => return Some(e),
                Ok(Some(cursor)) => {
                    self.persist_cursor(&wanted, cursor);
                    *stats.last_ack_at.lock() = Some(SystemTime::now());
                }
                Ok(None) => {}
            }
            // 2. Read a batch and send what this reader may have: replay, or
            //    live once caught up. It never holds more than the window.
            let head = *head_rx.borrow_and_update();
            if let Some((from, to)) = progress.next_read(head) {
                if to < head {
                    self.read_ahead(&mut ahead, to + 1, head.min(to + READ_BATCH as u64));
                }
                let (batch, failed) = self.read_batch(&mut progress, from, to);
                if !batch.is_empty() {
                    let n = batch.len() as u64;
                    if out.send(Event::Deliveries(batch)).await.is_err() {
                        return None;
                    }
                    stats.delivered.fetch_add(n, Ordering::Relaxed);
                }
                if let Some(e) = failed {
                    return Some(e.into());
                }
                stats.position.store(progress.position, Ordering::Relaxed);
                if let Some(cursor) = progress.skip_ahead() {
                    self.persist_cursor(&wanted, cursor);
                }
                tokio::task::yield_now().await;
                continue;
            }
            if !caught_up && progress.position >= head {
                caught_up = true;
                if out.send(Event::CaughtUp { head }).await.is_err() {
                    return None;
                }
            }
            // 3. Wait at the head: new commits, acks, the end, or a heartbeat.
            tokio::select! {
                biased;
                _ = self.guard.cancel.cancelled() => {
                    return Some(if self.shutdown.is_cancelled() {
                        BrokerError::ShuttingDown
                    } else if *stats.deleted.lock() {
                        BrokerError::Deleted(stats.name.clone())
                    } else {
                        BrokerError::TakenOver(stats.name.clone())
                    });
                }
                _ = out.closed() => return None,
                r = acks.changed() => {
                    if r.is_err() {
                        // The subscriber closed its side after its last ack: a
                        // goodbye. Make the cursor durable, then end cleanly,
                        // so the subscriber knows its next run resumes there.
                        if let Ok(Some(cursor)) = progress.ack(*acks.borrow()) {
                            self.persist_cursor(&wanted, cursor);
                        }
                        drop(wanted);
                        let _ = committer.await;
                        return None;
                    }
                }
                r = head_rx.changed(), if progress.has_room() => {
                    if r.is_err() {
                        return Some(BrokerError::ShuttingDown);
                    }
                }
                _ = heartbeat.tick() => {
                    if let Some(cursor) = progress.idle() {
                        self.persist_cursor(&wanted, cursor);
                    }
                    let head = *head_rx.borrow();
                    if out.send(Event::Heartbeat { head }).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// Reads `from..=to` (each record checked) and keeps what this reader
    /// asked for and may read, until the window is full. On a read error,
    /// what was read before it, and the error.
    fn read_batch(
        &self,
        progress: &mut Progress,
        from: u64,
        to: u64,
    ) -> (Vec<Seen>, Option<StoreError>) {
        let mut batch = Vec::new();
        let scan = match self.view.scan(from, to) {
            Ok(s) => s,
            Err(e) => return (batch, Some(e)),
        };
        for step in scan {
            match step {
                Err(e) => return (batch, Some(e)),
                Ok(Step::Passed(seq)) => progress.passed(seq),
                Ok(Step::Seen(seen)) => {
                    progress.sent(seen.record().seq);
                    batch.push(seen);
                    if !progress.has_room() {
                        return (batch, None);
                    }
                }
            }
        }
        // Pruned records at the end of the range are not in it: passed over.
        if progress.position < to {
            progress.passed(to);
        }
        (batch, None)
    }
}

/// Where a subscription stands: the last sequence read (`position`), the
/// cumulative ack, and what was sent and not yet acknowledged. Pure
/// bookkeeping with no I/O: what is read next and where the cursor may move
/// are decided here.
#[derive(Debug)]
struct Progress {
    /// The last sequence read (sent, or passed over as not for this reader).
    position: u64,
    /// Everything up to here is done (acknowledged, or not for this reader).
    acked: u64,
    /// Sequences sent and not yet acknowledged, oldest first.
    inflight: VecDeque<u64>,
    window: usize,
}

impl Progress {
    fn new(position: u64, window: usize) -> Progress {
        Progress {
            position,
            acked: position,
            inflight: VecDeque::with_capacity(window),
            window: window.max(1),
        }
    }

    /// A cumulative ack: where the durable cursor may move now, if anywhere.
    /// An ack beyond what was read is the subscriber's error.
    fn ack(&mut self, a: u64) -> Result<Option<u64>, BrokerError> {
        if a > self.position {
            return Err(BrokerError::BadAck {
                acked: a,
                position: self.position,
            });
        }
        if a <= self.acked {
            return Ok(None);
        }
        self.acked = a;
        while self.inflight.front().is_some_and(|&s| s <= a) {
            self.inflight.pop_front();
        }
        // With nothing in flight, everything read so far is done (the rest
        // was not for this subscriber).
        Ok(Some(if self.inflight.is_empty() {
            self.position
        } else {
            a
        }))
    }

    /// What to read next with the committed head at `head`: one bounded
    /// batch after the position; nothing at the head or with the window full.
    fn next_read(&self, head: u64) -> Option<(u64, u64)> {
        (self.position < head && self.has_room()).then(|| {
            (
                self.position + 1,
                head.min(self.position + READ_BATCH as u64),
            )
        })
    }

    fn has_room(&self) -> bool {
        self.inflight.len() < self.window
    }

    /// `seq` was read and is not for this reader.
    fn passed(&mut self, seq: u64) {
        self.position = seq;
    }

    /// `seq` was read and sent.
    fn sent(&mut self, seq: u64) {
        self.position = seq;
        self.inflight.push_back(seq);
    }

    /// After a read: a long stretch with nothing for this reader moves the
    /// cursor on, so a resume need not read it again.
    fn skip_ahead(&mut self) -> Option<u64> {
        if self.inflight.is_empty() && self.position - self.acked >= SKIP_ADVANCE {
            self.acked = self.position;
            return Some(self.position);
        }
        None
    }

    /// Idle (a heartbeat): with nothing in flight, everything read is done.
    fn idle(&mut self) -> Option<u64> {
        if self.inflight.is_empty() && self.acked < self.position {
            self.acked = self.position;
            return Some(self.position);
        }
        None
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    #[test]
    fn reads_one_bounded_batch_after_the_position_while_the_window_has_room() {
        let mut p = Progress::new(10, 2);
        assert_eq!(p.next_read(10), None, "at the head");
        assert_eq!(p.next_read(11), Some((11, 11)));
        assert_eq!(p.next_read(10_000), Some((11, 10 + READ_BATCH as u64)));
        p.sent(11);
        p.passed(12);
        p.sent(13);
        assert!(!p.has_room());
        assert_eq!(p.next_read(10_000), None, "the window is full");
        assert_eq!(p.ack(11).unwrap(), Some(11), "13 is still in flight");
        assert_eq!(p.next_read(10_000), Some((14, 13 + READ_BATCH as u64)));
    }

    #[test]
    fn the_cursor_moves_to_the_ack_or_past_what_was_not_for_this_reader() {
        let mut p = Progress::new(0, 8);
        p.sent(1);
        p.passed(2);
        p.sent(3);
        p.passed(4);
        assert_eq!(p.ack(0).unwrap(), None, "no movement");
        assert_eq!(p.ack(1).unwrap(), Some(1), "3 in flight: only to the ack");
        assert_eq!(
            p.ack(3).unwrap(),
            Some(4),
            "nothing in flight: over 4 as well"
        );
        assert_eq!(p.ack(2).unwrap(), None, "acks are cumulative");
        assert!(matches!(
            p.ack(5),
            Err(BrokerError::BadAck {
                acked: 5,
                position: 4
            })
        ));
    }

    #[test]
    fn idle_and_long_skips_move_the_cursor_only_with_nothing_in_flight() {
        let mut p = Progress::new(0, 8);
        p.sent(1);
        for s in 2..=SKIP_ADVANCE + 10 {
            p.passed(s);
        }
        assert_eq!(p.skip_ahead(), None, "1 is in flight");
        assert_eq!(p.idle(), None, "1 is in flight");
        assert_eq!(p.ack(1).unwrap(), Some(SKIP_ADVANCE + 10));
        for s in SKIP_ADVANCE + 11..=2 * SKIP_ADVANCE + 20 {
            p.passed(s);
        }
        assert_eq!(p.skip_ahead(), Some(2 * SKIP_ADVANCE + 20));
        assert_eq!(p.skip_ahead(), None);
        p.passed(2 * SKIP_ADVANCE + 21);
        assert_eq!(p.idle(), Some(2 * SKIP_ADVANCE + 21));
        assert_eq!(p.idle(), None);
    }
}
