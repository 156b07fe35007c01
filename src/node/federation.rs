//! Federation: each configured peer is a subscription this node holds on
//! that peer, with its own node certificate.
//!
//! **The position of a link belongs to the node that reads.** This node
//! keeps how far it has read each peer's log in its own store
//! (`Store::link_position`), moved only once what it read is durable here
//! (stored, already held, or refused and reported), and opens each link
//! from there. So a node whose store was lost, rebuilt empty or restored
//! from an older backup reads its peers again from where its store stands,
//! and gets its history back; a crash on either side can cause redelivery
//! (answered as duplicates), never loss.
//!
//! **A position is a position on one log.** Every log has an identity
//! (`store::LogInfo`), made anew when a store is created or restored from a
//! backup; the link keeps the peer's log id with its position and sends it
//! when it opens. A peer rebuilt (a new log) is read again from the start; a
//! peer restored from a backup (a log continuing the backed-up one up to
//! the backup's head) from that head on, since what it appended after the
//! restore was never in the log read here. The peer applies the rule and
//! says where it starts (`Subscribed.cursor`, `restarted`); the link records
//! the change (audit log, `Admin.Status`). A peer of a version without log
//! ids is known to be rebuilt only while its log is shorter than the
//! position, and is then read again from the start. The peer
//! still sees the link as the durable subscription `federation`, for its
//! operators' lag figures; it sends only what this node's member may read
//! (it asks `policy` with the pulling node's member, as for a client).
//!
//! Nothing a peer relays is taken on trust: each envelope is verified again
//! (its digest, payload type, signer chain against this node's bundle and
//! CRLs, signature, the signer's membership, the field rules), checked against
//! this node's own policy, and stored byte-identical with its origin node and
//! origin sequence. A node never re-signs. The store's (publisher, id, digest)
//! index makes meshes and loops harmless: a bulletin already held is a
//! duplicate, and a different envelope under the same id is refused and
//! reported.
//!
//! Links reconnect with exponential backoff and jitter and never give up. When
//! the trust bundle is reloaded (a new CRL, say) every link reconnects, so a
//! peer whose certificate was revoked is cut off at the next handshake.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use rand::Rng;
use tracing::{debug, info, warn};

use crate::base::config::Config;
use crate::base::identity::Identity;
use crate::base::proto::v1 as pb;
use crate::store::{Appended, LogId, NewRecord, Position, StoreError};
use crate::trust::tls::ExpectedServer;

/// What a peer link needs of its node: who it is, its timing and limits,
/// the trust in force, the store and the policy, and the shutdown signal.
pub struct LinkContext {
    pub identity: Identity,
    pub timing: crate::base::config::Timing,
    pub limits: crate::base::config::Limits,
    pub trust: Arc<crate::trust::state::TrustState>,
    pub store: Arc<crate::store::Store>,
    pub policy: crate::domain::policy::Policy,
    /// Where a publisher's equivocation seen on a link is kept.
    pub evidence: Arc<crate::node::evidence::Equivocations>,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The recipient keys this node knows; the peer's are fetched into it.
    pub keys: Arc<crate::domain::keys::KeyStore>,
    /// `[federation] carry_sealed`.
    pub carry_sealed: crate::base::config::CarrySealed,
}

impl LinkContext {
    /// The admission path, over this node's trust, policy and limits.
    fn ingest(&self) -> crate::broker::ingest::Ingest<'_> {
        crate::broker::ingest::Ingest {
            node: &self.identity,
            trust: &self.trust,
            policy: &self.policy,
            max_envelope_bytes: self.limits.max_envelope_bytes,
            spans: self.store.spans(),
            keys: &self.keys,
            require_sealed: &[],
            carry_sealed: self.carry_sealed,
        }
    }
}

/// The durable subscription name a node holds on each of its peers.
pub const LINK_NAME: &str = "federation";
/// Deliveries in flight on a link (the peer bounds it by its `max_window`).
const LINK_WINDOW: u32 = 1024;
/// Deliveries already received that a link checks together, at most.
const RELAY_BATCH: usize = 256;
/// The fewest deliveries worth handing to another core.
const RELAY_RUN_MIN: usize = 16;
/// First wait before reconnecting; it doubles up to `timing.peer_retry_max`.
const RETRY_MIN: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error(transparent)]
    Tls(#[from] crate::trust::tls::TlsError),
    #[error(transparent)]
    Client(#[from] crate::net::client::ClientError),
    #[error("the peer refused the subscription: {}", .0.message())]
    Refused(tonic::Status),
    #[error("the stream broke: {}", .0.message())]
    Stream(tonic::Status),
    #[error("the peer ended the stream")]
    Ended,
    #[error("the peer went silent: nothing (no bulletin, no heartbeat) for {0:?}")]
    Silent(Duration),
    #[error("the peer's log ends at {head}, before what this node had read from it ({position}): it was rebuilt or restored; reading it again from the start")]
    Rebuilt { head: u64, position: u64 },
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    #[error("cannot store relayed bulletins: {0}")]
    Store(#[from] StoreError),
}

/// Why a relayed delivery was not stored (reported, counted and acknowledged,
/// so one bad record cannot stall the link).
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("delivery {0} carries no envelope")]
    NoEnvelope(u64),
    #[error("delivery {seq}: {source}")]
    Ingest {
        seq: u64,
        source: crate::broker::ingest::IngestError,
    },
    #[error("delivery {seq}: {source}")]
    Conflict { seq: u64, source: StoreError },
    #[error("delivery {seq}: its signer's certificate has expired, and the peer could not prove its log held it in time: {why}")]
    Unproven { seq: u64, why: String },
}

/// What an operator sees of a link.
#[derive(Debug, Clone, Default)]
pub struct LinkStatus {
    pub connected: bool,
    /// The last peer sequence acknowledged (durable here, or refused).
    pub cursor: u64,
    /// The peer's committed head, as it last reported it.
    pub head: u64,
    pub last_error: Option<String>,
    pub last_connected_at: Option<SystemTime>,
    /// Bulletins stored here from this peer.
    pub stored: u64,
    /// Deliveries already held here (meshes and redelivery).
    pub duplicates: u64,
    /// Deliveries refused (verification, policy, conflicts).
    pub refused: u64,
    /// The peer's log that `cursor` is a position on, once known.
    pub log: Option<LogId>,
    /// Times the peer's log changed under the link (rebuilt or restored).
    pub log_changes: u64,
    /// What the link did about the last change.
    pub last_log_change: Option<String>,
}

/// One configured peer.
#[derive(Debug)]
pub struct PeerLink {
    pub address: String,
    pub identity: Identity,
    status: Mutex<LinkStatus>,
}

impl PeerLink {
    pub fn status(&self) -> LinkStatus {
        self.status.lock().clone()
    }

    fn update(&self, f: impl FnOnce(&mut LinkStatus)) {
        f(&mut self.status.lock())
    }
}

/// The links the config lists (identities were checked when it was loaded);
/// a peer naming this node itself is skipped.
pub fn links(config: &Config, own: &Identity) -> Vec<Arc<PeerLink>> {
    config
        .peers
        .iter()
        .filter_map(|p| {
            if &p.identity == own {
                warn!(peer = %p.identity, "a peer names this node itself; skipping it");
                return None;
            }
            Some(Arc::new(PeerLink {
                address: p.address.clone(),
                identity: p.identity.clone(),
                status: Mutex::new(LinkStatus::default()),
            }))
        })
        .collect()
}

/// Fetches every recipient key record and revocation the peer holds and
/// keeps those that verify here (signed by a certificate of the member
/// they name, checked against this node's trust). A failure is logged: the
/// next round tries again, and the link goes on.
async fn sync_keys(state: &LinkContext, link: &PeerLink, channel: &tonic::transport::Channel) {
    let mut client = crate::net::client::BulletinsClient::new(channel.clone())
        .max_decoding_message_size(state.limits.max_message_bytes);
    let listed = tokio::time::timeout(
        state.timing.peer_timeout,
        client.list_recipient_keys(pb::ListRecipientKeysRequest {
            member: String::new(),
            all: true,
        }),
    )
    .await;
    let listed = match listed {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => {
            debug!(peer = %link.identity, error = %s.message(), "recipient keys not fetched");
            return;
        }
        Err(_) => return,
    };
    let (now, chains) = (SystemTime::now(), state.trust.signer_check());
    let mut added = 0usize;
    for k in listed.keys {
        let env = crate::domain::bulletin::codec::envelope_from_proto(k);
        match state.keys.add_key(&env, &chains, now) {
            Ok((_, true)) => added += 1,
            Ok((_, false)) => {}
            Err(e) => debug!(peer = %link.identity, error = %e, "a peer's recipient key refused"),
        }
    }
    for r in listed.revocations {
        let env = crate::domain::bulletin::codec::envelope_from_proto(r);
        match state.keys.add_revocation(&env, &chains, now) {
            Ok((r, true)) => {
                added += 1;
                warn!(target: "beacon::audit", peer = %link.identity, member = %r.member,
                      key_id = %crate::domain::keys::hex(&r.key_id), "recipient key revoked (from a peer)");
            }
            Ok((_, false)) => {}
            Err(e) => debug!(peer = %link.identity, error = %e, "a peer's key revocation refused"),
        }
    }
    if added > 0 {
        info!(peer = %link.identity, added, "recipient keys fetched from the peer");
    }
}

/// How a session ended without an error.
enum End {
    Shutdown,
    TrustReloaded,
}

/// Keeps every link up until `context.shutdown` (the node's shutdown, or
/// this node no longer holds the peer links of its log), each in its own
/// task; then, unless `node` (the node's own shutdown) was cancelled, says
/// in each link's status that another node holds them.
pub async fn run_all(
    context: Arc<LinkContext>,
    peers: Vec<Arc<PeerLink>>,
    node: tokio_util::sync::CancellationToken,
) {
    let links: Vec<_> = peers
        .iter()
        .map(|link| tokio::spawn(run(context.clone(), link.clone())))
        .collect();
    for l in links {
        let _ = l.await;
    }
    if !node.is_cancelled() {
        for link in &peers {
            link.update(|s| {
                s.connected = false;
                s.last_error = Some(
                    "another node of this log holds its peer links (this one lost the duty)".into(),
                );
            });
        }
    }
}

/// Keeps one link up until the node shuts down.
pub async fn run(state: Arc<LinkContext>, link: Arc<PeerLink>) {
    let max = state.timing.peer_retry_max;
    let mut delay = RETRY_MIN;
    info!(peer = %link.identity, address = %link.address, "peer link starting");
    loop {
        if !wait_while_own_certificate_refused(&state, &link).await {
            return;
        }
        let mut established = false;
        let ended = tokio::select! {
            _ = state.shutdown.cancelled() => Ok(End::Shutdown),
            r = session(&state, &link, &mut established) => r,
        };
        link.update(|s| s.connected = false);
        match ended {
            Ok(End::Shutdown) => return,
            Ok(End::TrustReloaded) => {
                info!(peer = %link.identity, "trust bundle reloaded; reconnecting the peer link");
                delay = RETRY_MIN;
                continue;
            }
            Err(e) => {
                let msg = e.to_string();
                warn!(target: "beacon::audit", peer = %link.identity, address = %link.address,
                      error = %msg, "peer link down");
                link.update(|s| s.last_error = Some(msg));
            }
        }
        if established {
            delay = RETRY_MIN;
        }
        // Full jitter over the upper half: links cut together do not return together.
        let wait = delay / 2 + delay.mul_f64(rand::rng().random::<f64>() / 2.0);
        delay = (delay * 2).min(max);
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// While this node's own certificate is refused (revoked, expired), its links
/// stay down: it waits for a valid certificate. False on shutdown.
async fn wait_while_own_certificate_refused(state: &LinkContext, link: &PeerLink) -> bool {
    let mut refused = state.trust.watch_own_refusal();
    loop {
        let reason = refused.borrow_and_update().clone();
        let Some(reason) = reason else {
            return true;
        };
        link.update(|s| {
            s.connected = false;
            s.last_error = Some(format!("stopped: {reason}"));
        });
        tokio::select! {
            _ = state.shutdown.cancelled() => return false,
            r = refused.changed() => if r.is_err() { return false },
        }
    }
}

/// A delivery on its way: stored (or already held), refused, or a store
/// failure that must end the session without acknowledging it.
type Outcome = Result<Result<Appended, Refusal>, StoreError>;
type Pending = Pin<Box<dyn Future<Output = (u64, Outcome)> + Send>>;

async fn session(
    state: &Arc<LinkContext>,
    link: &Arc<PeerLink>,
    established: &mut bool,
) -> Result<End, FederationError> {
    let generation = state.trust.generation();
    let tls = crate::trust::tls::client_config(
        state.trust.bundle(),
        &state.trust.own(),
        ExpectedServer::Exactly(link.identity.clone()),
    )?;
    // Silence is noticed two ways, each within `timing.peer_timeout`: the
    // peer sends a heartbeat at least every third of it (or a delivery), and
    // HTTP/2 pings it at that interval (a stalled process or a dropped route
    // answers neither, though the TCP connection may look open for minutes).
    let silence = state.timing.peer_timeout;
    let keepalive = crate::net::client::Keepalive {
        interval: silence / 3,
        timeout: silence / 3,
    };
    let channel =
        crate::net::client::connect_keepalive(&link.address, Arc::new(tls), keepalive).await?;
    let max = state.limits.max_message_bytes;
    let mut reader = crate::net::client::BeaconReader::with_limit(channel.clone(), max);
    let peer = link.identity.to_string();
    let stored = state.store.link_position(&peer)?;
    let position = stored.map_or(0, |p| p.seq);
    let read_log = stored.and_then(|p| p.log);
    // The peer's log the acknowledged positions are on (known once it says).
    let mut peer_log = read_log;
    let open = pb::SubscribeOpen {
        checkpoints: false,
        name: LINK_NAME.to_owned(),
        start: Some(pb::StartPosition {
            at: Some(pb::start_position::At::Sequence(position + 1)),
        }),
        filter: None,
        window: LINK_WINDOW,
        heartbeat_ms: u32::try_from((silence / 3).as_millis()).unwrap_or(u32::MAX),
        // A node keeps the whole history, revisions, retractions and
        // expired bulletins included (its own retention prunes them).
        current_only: false,
        include_expired: true,
        log_id: read_log.map(|l| l.to_string()).unwrap_or_default(),
        carry_sealed: state.carry_sealed == crate::base::config::CarrySealed::Any,
    };
    let mut sub = tokio::time::timeout(silence, reader.subscribe(open))
        .await
        .map_err(|_| FederationError::Silent(silence))?
        .map_err(|e| match e {
            crate::net::client::ClientError::Rpc(s) => FederationError::Refused(s),
            other => FederationError::Client(other),
        })?;
    let mut heard = tokio::time::Instant::now();

    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut trust_check = tokio::time::interval(state.timing.reload_interval);
    trust_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The peer's recipient keys, now and every `timing.key_sync_interval`
    // (the first tick is at once).
    let mut key_sync = tokio::time::interval(
        state
            .timing
            .key_sync_interval
            .max(Duration::from_millis(100)),
    );
    key_sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A message read ahead while gathering a batch of deliveries: handled
    // next, before the stream is read again.
    let mut ahead: Option<pb::subscribe_response::Msg> = None;
    loop {
        let msg = match ahead.take() {
            Some(m) => m,
            None => tokio::select! {
                _ = key_sync.tick() => {
                    sync_keys(state, link, &channel).await;
                    continue;
                }
                _ = trust_check.tick() => {
                    // A reload, or this node's own certificate refused (the
                    // reload loop says so just after it installs the bundle,
                    // so a session begun in between must end here too).
                    if state.trust.generation() != generation || state.trust.own_refusal().is_some() {
                        return Ok(End::TrustReloaded);
                    }
                    continue;
                }
                Some(first) = pending.next(), if !pending.is_empty() => {
                    // Take every settled delivery, then acknowledge once.
                    let mut acked = settle(link, first)?;
                    while let Some(Some(next)) = pending.next().now_or_never() {
                        acked = settle(link, next)?;
                    }
                    // Everything up to `acked` is durable here (or refused): the
                    // position moves first, then the peer hears of it.
                    state.store.set_link_position(&peer, Position { seq: acked, log: peer_log })?;
                    sub.ack(acked).await.map_err(|_| FederationError::Ended)?;
                    link.update(|s| s.cursor = s.cursor.max(acked));
                    continue;
                }
                // The message, if one is ready, wins over the deadline.
                msg = tokio::time::timeout_at(heard + silence, sub.next()) => {
                    msg.map_err(|_| FederationError::Silent(silence))?
                        .map_err(stream_error)?
                        .ok_or(FederationError::Ended)?
                }
            },
        };
        heard = tokio::time::Instant::now();
        use pb::subscribe_response::Msg;
        match msg {
            Msg::Subscribed(s) => {
                *established = true;
                let (start, served) = on_subscribed(state, link, &peer, stored, &s)?;
                peer_log = served.or(stored.and_then(|p| p.log));
                info!(target: "beacon::audit", peer = %link.identity, cursor = s.cursor,
                      head = s.head, log = %s.log_id, "peer link up");
                link.update(|st| {
                    st.connected = true;
                    st.last_connected_at = Some(SystemTime::now());
                    st.last_error = None;
                    st.cursor = start;
                    st.head = s.head;
                    st.log = peer_log;
                });
            }
            Msg::CaughtUp(c) => link.update(|s| s.head = s.head.max(c.head)),
            Msg::Heartbeat(h) => link.update(|s| s.head = s.head.max(h.head)),
            // Not asked for on peer links (witnessing fetches them).
            Msg::Checkpoint(_) => {}
            Msg::Delivery(d) => {
                // The deliveries already received behind this one join it
                // (a catch-up streams them back to back), so that their
                // checks run on every core; anything else read meanwhile
                // is handled next.
                let mut batch = vec![d];
                while batch.len() < RELAY_BATCH {
                    match sub.next().now_or_never() {
                        Some(Ok(Some(Msg::Delivery(d)))) => batch.push(d),
                        Some(Ok(Some(other))) => {
                            ahead = Some(other);
                            break;
                        }
                        Some(Ok(None)) => {
                            // Ended: what was read is still taken in; the end
                            // shows at the next read.
                            break;
                        }
                        Some(Err(e)) => return Err(stream_error(e)),
                        None => break,
                    }
                }
                if let Some(last) = batch.last() {
                    let seq = last.sequence;
                    link.update(|s| s.head = s.head.max(seq));
                }
                let admitted = admit_batch(state, link, &batch).await;
                for (d, admitted) in batch.iter().zip(admitted) {
                    let seq = d.sequence;
                    let admitted = match admitted {
                        // Its signer expired since: admitted only with the
                        // peer's proof that its log held it in time.
                        Err(Refusal::Ingest {
                            source: crate::broker::ingest::IngestError::SignerExpired,
                            ..
                        }) => admit_proven(state, link, &channel, d).await,
                        other => other,
                    };
                    match admitted {
                        Ok(rec) => {
                            // Kept for the evidence, should the store
                            // hold another bulletin under its id.
                            let relayed = rec.envelope.clone();
                            let conflict = Conflicted {
                                store: state.store.clone(),
                                evidence: state.evidence.clone(),
                                peer: peer.clone(),
                                channel: channel.clone(),
                            };
                            // Queued in arrival order; durable when the future resolves.
                            let durable = state.store.enqueue(rec).await?;
                            pending.push_back(Box::pin(async move {
                                let outcome = match durable.await {
                                    Ok(a) => Ok(Ok(a)),
                                    Err(e @ StoreError::Conflict { .. }) => {
                                        if let StoreError::Conflict { publisher, id } = &e {
                                            conflict.record(publisher, id, relayed);
                                        }
                                        Ok(Err(Refusal::Conflict { seq, source: e }))
                                    }
                                    Err(e) => Err(e),
                                };
                                (seq, outcome)
                            }));
                        }
                        Err(refusal) => {
                            pending
                                .push_back(Box::pin(std::future::ready((seq, Ok(Err(refusal))))));
                        }
                    }
                }
            }
        }
    }
}

/// A stream error as the link reports it.
fn stream_error(e: crate::net::client::ClientError) -> FederationError {
    match e {
        crate::net::client::ClientError::Rpc(s) => FederationError::Stream(s),
        other => FederationError::Client(other),
    }
}

/// Checks a batch of deliveries through the admission path, the results in
/// the batch's order. A batch large enough is cut into one run per core:
/// the first checked on this task, the others on the blocking pool, so a
/// catch-up verifies on every core while a lone live delivery is checked
/// at once with no hand-off. (Verification is a signature check per
/// envelope — about 60 µs of a core for P-256 — and nothing else of the
/// link waits on it but this batch; appends stay in arrival order.)
async fn admit_batch(
    state: &Arc<LinkContext>,
    link: &Arc<PeerLink>,
    batch: &[pb::Delivery],
) -> Vec<Result<NewRecord, Refusal>> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let runs = cores.min(batch.len() / RELAY_RUN_MIN).max(1);
    if runs == 1 {
        return batch.iter().map(|d| admit(state, link, d, None)).collect();
    }
    let per = batch.len().div_ceil(runs);
    let mut others = Vec::with_capacity(runs - 1);
    for chunk in batch[per..].chunks(per) {
        let (state, link, chunk) = (state.clone(), link.clone(), chunk.to_vec());
        others.push(tokio::task::spawn_blocking(move || {
            chunk
                .iter()
                .map(|d| admit(&state, &link, d, None))
                .collect::<Vec<_>>()
        }));
    }
    let mut out: Vec<_> = batch[..per]
        .iter()
        .map(|d| admit(state, link, d, None))
        .collect();
    let mut rest = batch[per..].iter();
    for task in others {
        match task.await {
            Ok(results) => {
                for r in results {
                    rest.next();
                    out.push(r);
                }
            }
            // The run could not finish (the runtime is shutting down):
            // its deliveries are checked here instead.
            Err(_) => {
                for d in rest.by_ref().take(per) {
                    out.push(admit(state, link, d, None));
                }
            }
        }
    }
    out
}

/// What a link needs to keep, and tell the peer of, a publisher's
/// equivocation: the peer relayed a bulletin under an id this node holds
/// another bulletin of the same publisher under.
struct Conflicted {
    store: Arc<crate::store::Store>,
    evidence: Arc<crate::node::evidence::Equivocations>,
    peer: String,
    channel: tonic::transport::Channel,
}

impl Conflicted {
    /// Keeps the pair (the one held first) and reports it to the peer, in
    /// a task of its own: the link goes on meanwhile.
    fn record(self, publisher: &str, id: &str, relayed: Vec<u8>) {
        let (publisher, id) = (publisher.to_string(), id.to_string());
        tokio::spawn(async move {
            let held = match self.store.lookup(&publisher, &id) {
                Ok(Some((seq, _))) => self.store.get(seq).ok().flatten(),
                _ => None,
            };
            let (Some(held), Ok(relayed)) = (
                held,
                crate::domain::bulletin::codec::decode_envelope(&relayed),
            ) else {
                return;
            };
            let Ok(held) = crate::domain::bulletin::codec::decode_envelope(&held.envelope) else {
                return;
            };
            // Both were verified on arrival (the held one when stored, the
            // relayed one by `ingest` just now).
            match self.evidence.record(&held, &relayed, &self.peer) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    warn!(peer = %self.peer, error = %e, "no evidence kept of a conflict");
                    return;
                }
            }
            let mut client =
                crate::base::proto::v1::transparency_client::TransparencyClient::new(self.channel);
            let report = crate::base::proto::v1::ReportEquivocationRequest {
                envelopes: vec![
                    crate::interop::document::envelope_to_dsse(&held),
                    crate::interop::document::envelope_to_dsse(&relayed),
                ],
            };
            if let Err(e) = client.report_equivocation(report).await {
                warn!(peer = %self.peer, error = %e.message(), "the peer was not told of the equivocation");
            }
        });
    }
}

/// A log id as a peer sends it (empty: a peer of a version without them).
fn parse_log(s: &str) -> Result<Option<LogId>, FederationError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(FederationError::Protocol)
}

/// Checks where the peer starts the link against the position this node
/// asked for (`stored`), records a change of the peer's log, and returns
/// the position the link reads on from and the log the peer serves (if it
/// names one).
fn on_subscribed(
    state: &LinkContext,
    link: &PeerLink,
    peer: &str,
    stored: Option<Position>,
    s: &pb::Subscribed,
) -> Result<(u64, Option<LogId>), FederationError> {
    let position = stored.map_or(0, |p| p.seq);
    let served = parse_log(&s.log_id)?;
    if s.cursor > position {
        return Err(FederationError::Protocol(format!(
            "it starts the link after {}, past this node's position {position} on its log",
            s.cursor
        )));
    }
    match (stored.and_then(|p| p.log), served) {
        // The peer applied the position as far as it holds on its log.
        (Some(read), Some(now)) => {
            if read != now || s.cursor != position {
                let what = match &s.forked_from {
                    Some(f) => format!("restored from a backup of log {} at {}", f.log_id, f.size),
                    None => "a new log: it was rebuilt".to_owned(),
                };
                let msg = format!(
                    "the peer's log changed: this node had read its log {read} up to {position}; it now serves log {now}, {what}; reading it again from {}",
                    s.cursor + 1
                );
                warn!(target: "beacon::audit", peer = %link.identity, address = %link.address,
                      from = s.cursor + 1, "{msg}");
                state.store.reset_link_position(
                    peer,
                    Position {
                        seq: s.cursor,
                        log: Some(now),
                    },
                )?;
                link.update(|st| {
                    st.log_changes += 1;
                    st.last_log_change = Some(msg);
                    st.cursor = s.cursor;
                });
            }
            Ok((s.cursor, served))
        }
        // A position of no known log (kept from before logs had ids), or a
        // peer that names none: a rebuilt peer shows only as a log shorter
        // than the position.
        (_, served) => {
            if s.head < position {
                state.store.reset_link_position(
                    peer,
                    Position {
                        seq: 0,
                        log: served,
                    },
                )?;
                let e = FederationError::Rebuilt {
                    head: s.head,
                    position,
                };
                link.update(|st| {
                    st.log_changes += 1;
                    st.last_log_change = Some(e.to_string());
                });
                return Err(e);
            }
            if served.is_some() {
                state.store.set_link_position(
                    peer,
                    Position {
                        seq: position,
                        log: served,
                    },
                )?;
            }
            Ok((position, served))
        }
    }
}

/// Records what became of one delivery; returns the sequence to acknowledge.
fn settle(link: &PeerLink, (seq, outcome): (u64, Outcome)) -> Result<u64, FederationError> {
    match outcome? {
        Ok(a) if a.duplicate => link.update(|s| s.duplicates += 1),
        Ok(a) => {
            debug!(peer = %link.identity, peer_seq = seq, seq = a.seq, "relayed bulletin stored");
            link.update(|s| s.stored += 1);
        }
        Err(refusal) => {
            let msg = refusal.to_string();
            warn!(target: "beacon::audit", peer = %link.identity, reason = %msg, "relayed bulletin refused");
            link.update(|s| {
                s.refused += 1;
                s.last_error = Some(msg);
            });
        }
    }
    Ok(seq)
}

/// Checks a relayed delivery through the one admission path, and makes the
/// record to store: the same bytes, with their origin. `logged_by`: when a
/// witnessed log is proven to have held it (for a signer expired since).
fn admit(
    state: &LinkContext,
    link: &PeerLink,
    d: &pb::Delivery,
    logged_by: Option<SystemTime>,
) -> Result<NewRecord, Refusal> {
    let seq = d.sequence;
    let bytes = d.envelope.as_ref().ok_or(Refusal::NoEnvelope(seq))?;
    state
        .ingest()
        .relay(
            bytes,
            &d.envelope_digest,
            &d.origin_node,
            d.origin_sequence,
            &link.identity,
            seq,
            logged_by,
        )
        .map_err(|source| Refusal::Ingest { seq, source })
}

/// Admits a delivery; one whose signer's certificate has expired since is
/// admitted only with the peer's proof that its log held it while the
/// certificate was valid: the receipt against the earliest checkpoint
/// witnesses cosigned, a witness other than the peer (its announcement
/// checked against this node's trust), the leaf computed here from the
/// delivery, and the envelope verified at the time of the cosignature.
async fn admit_proven(
    state: &LinkContext,
    link: &PeerLink,
    channel: &tonic::transport::Channel,
    d: &pb::Delivery,
) -> Result<NewRecord, Refusal> {
    match admit(state, link, d, None) {
        Err(Refusal::Ingest {
            source: crate::broker::ingest::IngestError::SignerExpired,
            seq,
        }) => match logged_by(state, link, channel, d).await {
            Ok(t) => match admit(state, link, d, Some(t)) {
                // Proven held, but only since after the certificate expired.
                Err(Refusal::Ingest {
                    source:
                        crate::broker::ingest::IngestError::Bulletin(
                            crate::domain::bulletin::BulletinError::Signer(
                                crate::trust::TrustError::Expired,
                            ),
                        ),
                    ..
                }) => Err(Refusal::Unproven {
                    seq,
                    why: format!(
                        "the earliest checkpoint of it a witness cosigned is of {}, after the certificate expired",
                        humantime::format_rfc3339_seconds(t)
                    ),
                }),
                other => other,
            },
            Err(why) => Err(Refusal::Unproven { seq, why }),
        },
        other => other,
    }
}

/// When the peer's log is proven to have held `d`: the earliest time a
/// witness (not the peer) cosigned a checkpoint of it that covers `d`.
async fn logged_by(
    state: &LinkContext,
    link: &PeerLink,
    channel: &tonic::transport::Channel,
    d: &pb::Delivery,
) -> Result<SystemTime, String> {
    use crate::node::transparency::verify_announcement;
    use crate::tlog::{merkle, note, receipt::Receipt};
    let mut t = pb::transparency_client::TransparencyClient::new(channel.clone());
    let now = SystemTime::now();
    let bundle = state.trust.bundle();
    let peer = link.identity.to_string();
    let logs = t
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .map_err(|e| format!("the peer's log: {}", e.message()))?
        .into_inner();
    let r = t
        .prove_earliest(pb::ProveEarliestRequest {
            sequence: d.sequence,
        })
        .await
        .map_err(|e| format!("no proof from the peer: {}", e.message()))?
        .into_inner();
    let receipt = Receipt::parse(&r.receipt).map_err(|e| e.to_string())?;
    let cp = note::Note::parse(receipt.checkpoint.as_str())
        .and_then(|n| note::Checkpoint::parse(&n.text))
        .map_err(|e| e.to_string())?;
    // The log key of that log, as the peer's certificate announced it.
    let log_key: note::Verifier = logs
        .announcements
        .iter()
        .filter_map(|a| verify_announcement(a, bundle.as_ref(), now).ok())
        .find(|a| a.node == peer && a.origin == cp.origin)
        .ok_or_else(|| format!("the peer announced no log {}", cp.origin))?
        .log_key
        .parse()
        .map_err(|e: note::NoteError| e.to_string())?;
    let witnesses: Vec<note::Verifier> = r
        .witness_announcements
        .iter()
        .filter_map(|a| verify_announcement(a, bundle.as_ref(), now).ok())
        .filter(|a| a.node != peer)
        .filter_map(|a| a.witness_key.parse().ok())
        .collect();
    // The leaf, from what was delivered.
    let entry = crate::net::client::delivered_leaf_entry(d)?;
    let proven = receipt
        .verify(&merkle::leaf_hash(&entry), &log_key, &witnesses, 1)
        .map_err(|e| e.to_string())?;
    let earliest = proven
        .cosigned_by
        .iter()
        .map(|(_, t)| *t)
        .min()
        .ok_or("no cosignature")?;
    Ok(std::time::UNIX_EPOCH + Duration::from_secs(earliest))
}
