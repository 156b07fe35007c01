//! The gRPC edge of the node: tonic service implementations.
//!
//! Every handler starts by taking the caller's verified identity from the
//! connection ([`PeerInfo`]) and checking its role. Errors of the other modules
//! become `tonic::Status` in one place, [`status`].

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status, Streaming};

use tracing::{info, warn};

use crate::base::identity::RoleKind;
use crate::base::proto::v1 as pb;
use crate::broker::ingest::IngestError;
use crate::domain::bulletin::BulletinError;
use crate::net::edge::PeerInfo;
use crate::node::state::NodeState;

pub mod convert;
pub mod status;

/// Rewrites a response that tonic's decoder ended before any handler ran
/// (a unary request over the message limit: a trailers-only response with
/// `OUT_OF_RANGE`) into [`status::from_decoder`]'s `RESOURCE_EXHAUSTED`.
/// Streams see the decoder's error in their handler and map it there.
#[derive(Clone, Copy, Default)]
pub struct DecodeLimitLayer;

impl<S> tower::Layer<S> for DecodeLimitLayer {
    type Service = tower::util::MapResponse<S, fn(HttpResponse) -> HttpResponse>;

    fn layer(&self, inner: S) -> Self::Service {
        tower::util::MapResponse::new(inner, decode_limit_response)
    }
}

fn decode_limit_response(response: HttpResponse) -> HttpResponse {
    match Status::from_header_map(response.headers()) {
        Some(s) if s.code() == tonic::Code::OutOfRange => {
            let mapped = status::from_decoder(s);
            if mapped.code() == tonic::Code::OutOfRange {
                response
            } else {
                mapped.into_http()
            }
        }
        _ => response,
    }
}

type HttpResponse = http::Response<tonic::body::Body>;

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// The verified caller of a request, required to hold one of `allowed` roles.
pub fn caller<T>(request: &Request<T>, allowed: &[RoleKind]) -> Result<PeerInfo, Status> {
    let peer = request
        .extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(status::no_peer)?;
    if !allowed.contains(&peer.identity.kind()) {
        return Err(status::wrong_role(&peer.identity.to_string(), allowed));
    }
    Ok(peer)
}

const MEMBERS: &[RoleKind] = &[RoleKind::Node, RoleKind::Client];
const OPERATORS: &[RoleKind] = &[RoleKind::Operator];

/// `beacon.v1.Bulletins`.
pub struct BulletinsService {
    state: Arc<NodeState>,
}

/// The reading member of a peer (clients and nodes have one).
fn reader(peer: &PeerInfo) -> Result<String, Status> {
    peer.identity
        .member()
        .map(|m| m.as_str().to_owned())
        .ok_or_else(|| status::wrong_role(&peer.identity.to_string(), MEMBERS))
}

impl BulletinsService {
    /// The log as `member` may read it.
    fn view(&self, member: String) -> crate::broker::view::View {
        crate::broker::view::View::new(self.state.store.clone(), self.state.policy.clone(), member)
    }
}

const DEFAULT_LIST_PAGE: u32 = 100;

/// A short, fixed name for why a publish was refused (a metric label).
fn refusal_reason(e: &IngestError) -> &'static str {
    use crate::trust::TrustError;
    let IngestError::Bulletin(e) = e else {
        return "malformed";
    };
    match e {
        BulletinError::TooLarge { .. } => "too_large",
        BulletinError::MalformedEnvelope(_) | BulletinError::MalformedPayload(_) => "malformed",
        BulletinError::PayloadType(_) => "payload_type",
        BulletinError::SignatureCount(_)
        | BulletinError::NoChain
        | BulletinError::ChainTooLong(_)
        | BulletinError::KeyType => "signature_form",
        BulletinError::Signer(TrustError::Revoked) => "signer_revoked",
        BulletinError::Signer(TrustError::Expired) => "signer_expired",
        BulletinError::Signer(_) => "signer_untrusted",
        BulletinError::BadSignature => "bad_signature",
        BulletinError::WrongMember { .. } | BulletinError::OperatorSigner(_) => "wrong_member",
        BulletinError::NotPeer { .. } => "not_sender",
        BulletinError::Invalid(_) => "invalid_fields",
        BulletinError::Key(_) | BulletinError::Sign => "internal",
    }
}

#[tonic::async_trait]
impl pb::bulletins_server::Bulletins for BulletinsService {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let peer = caller(&request, MEMBERS)?;
        queue_publish(&self.state, &peer, request.into_inner())
            .await
            .await
            .map(Response::new)
    }

    type PublishStreamStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<pb::PublishResult, Status>> + Send + 'static>,
    >;

    async fn publish_stream(
        &self,
        request: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        use futures_util::StreamExt;
        use pb::publish_result::Outcome;
        let peer = caller(&request, MEMBERS)?;
        let mut inbound = request.into_inner();
        let state = self.state.clone();
        let window = state.config.limits.publish_stream_window.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(window);
        let cancel = state.shutdown.clone();
        let mut closing = state.connections.closing(peer.conn_id);
        state.tasks.clone().spawn(async move {
            // Publishes being worked on, answered in request order.
            let mut working = futures_util::stream::FuturesOrdered::new();
            let mut reading = true;
            // Why the request side failed (a message too large or not
            // protobuf), told after the answers owed.
            let mut failed = None;
            while reading || !working.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    // The node is closing this connection (the publisher's
                    // certificate revoked or expired): say why, and stop.
                    reason = closing_reason(&mut closing) => {
                        let _ = tx.send(Err(status::closing(&reason))).await;
                        return;
                    }
                    msg = inbound.message(), if reading && working.len() < window => match msg {
                        Ok(Some(req)) => working.push_back(queue_publish(&state, &peer, req).await),
                        // The publisher closed its side: answer what was read,
                        // then end with OK.
                        Ok(None) => reading = false,
                        Err(e) => {
                            reading = false;
                            failed = Some(status::from_decoder(e));
                        }
                    },
                    Some(result) = working.next(), if !working.is_empty() => {
                        let outcome = match result {
                            Ok(accepted) => Outcome::Accepted(accepted),
                            Err(s) => Outcome::Refused(pb::PublishRefusal {
                                code: s.code() as i32,
                                message: s.message().to_owned(),
                            }),
                        };
                        let item = pb::PublishResult { outcome: Some(outcome) };
                        if tx.send(Ok(item)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if let Some(status) = failed {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let peer = caller(&request, MEMBERS)?;
        let member = reader(&peer)?;
        let req = request.into_inner();
        if !crate::domain::bulletin::canonical_uuid(&req.id) {
            return Err(status::bad_request(format!(
                "id {:?} is not a lower-case hyphenated UUID",
                req.id
            )));
        }
        let store = &self.state.store;
        let candidates: Vec<u64> = if req.publisher.is_empty() {
            store
                .lookup_id(&req.id)
                .map_err(|e| status::store(&e))?
                .into_iter()
                .map(|(_, s)| s)
                .collect()
        } else {
            store
                .lookup(&req.publisher, &req.id)
                .map_err(|e| status::store(&e))?
                .map(|(s, _)| s)
                .into_iter()
                .collect()
        };
        if let Some(seen) = self
            .view(member)
            .first_of(candidates)
            .map_err(|e| status::store(&e))?
        {
            return Ok(Response::new(pb::GetResponse {
                delivery: Some(crate::api::convert::delivery(seen)),
            }));
        }
        Err(status::not_found(&req.id))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let peer = caller(&request, MEMBERS)?;
        let member = reader(&peer)?;
        let req = request.into_inner();
        let filter =
            crate::api::convert::filter_from_proto(req.filter).map_err(status::bad_request)?;
        let max = self.state.config.limits.max_list_page;
        let limit = match req.limit {
            0 => DEFAULT_LIST_PAGE.min(max),
            l => l.min(max),
        } as usize;
        let head = self.state.store.head();
        let until = match req.until_sequence {
            0 => head,
            u => u.min(head),
        };
        // Bound the work of one call: at most this many records are examined.
        let budget = (limit * 10).max(10_000) as u64;
        // A page also ends before the delivery that would take it past
        // `max_page_bytes`, so it fits what clients accept; that delivery
        // starts the next page. A page always holds at least one.
        let max_bytes = self.state.config.limits.max_page_bytes;
        let mut bytes = 0usize;
        let page = self
            .view(member)
            .filtered(filter)
            .choosing(req.include_expired, req.current_only)
            .page(req.after_sequence, until, limit, budget, |seen| {
                let delivery = crate::api::convert::delivery(seen);
                let size = prost::encoding::message::encoded_len(1, &delivery);
                if bytes > 0 && bytes + size > max_bytes {
                    return None;
                }
                bytes += size;
                Some(delivery)
            })
            .map_err(|e| status::store(&e))?;
        let (deliveries, last) = (page.items, page.last);
        Ok(Response::new(pb::ListResponse {
            deliveries,
            next_after_sequence: last,
            head,
            more: last < until,
        }))
    }

    type SubscribeStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>,
    >;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        use crate::broker::subscription::{BrokerError, Event, Subscription};
        use pb::subscribe_request::Msg;
        let peer = caller(&request, MEMBERS)?;
        let member = reader(&peer)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(OPEN_TIMEOUT, inbound.message())
            .await
            .map_err(|_| status::bad_request("no `open` message within 10 s"))??;
        let open = match first.and_then(|m| m.msg) {
            Some(Msg::Open(o)) => o,
            _ => {
                return Err(status::bad_request(
                    "the first message of a subscription must be `open`",
                ))
            }
        };
        let durable = !open.name.is_empty();
        if durable {
            open.name
                .parse::<crate::base::identity::Name>()
                .map_err(|_| {
                    status::bad_request(format!(
                        "subscription name {:?} is not a valid name",
                        open.name
                    ))
                })?;
        }
        let filter =
            crate::api::convert::filter_from_proto(open.filter).map_err(status::bad_request)?;
        let start =
            crate::api::convert::start_from_proto(open.start).map_err(status::bad_request)?;
        let log = crate::api::convert::log_from_proto(&open.log_id).map_err(status::bad_request)?;
        let limits = &self.state.config.limits;
        let window = match open.window {
            0 => limits.default_window,
            w => w.min(limits.max_window),
        };
        let identity = peer.identity.to_string();
        let guard = self
            .state
            .broker
            .open(&identity, &open.name, durable, &self.state.shutdown)
            .map_err(|e| status::broker(&e))?;
        let name = guard.stats.name.clone();
        info!(target: "beacon::audit", peer = %identity, name = %name, durable, window, "subscribed");
        let (ack_tx, ack_rx) = tokio::sync::watch::channel(0u64);
        let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Event>(SUBSCRIPTION_CHANNEL);
        // Acks in; a second `open` or garbage ends the stream with a clear error.
        let protocol = out_tx.clone();
        let cancel = guard.cancel.clone();
        self.state.tasks.spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = cancel.cancelled() => return,
                    m = inbound.message() => m,
                };
                match msg {
                    Ok(Some(pb::SubscribeRequest {
                        msg: Some(Msg::Ack(a)),
                    })) => {
                        ack_tx.send_if_modified(|cur| {
                            let moved = a.sequence > *cur;
                            *cur = (*cur).max(a.sequence);
                            moved
                        });
                    }
                    Ok(Some(_)) => {
                        let e = BrokerError::Invalid(
                            "after `open`, a subscriber may only send `ack`".into(),
                        );
                        let _ = protocol.send(Event::End(e)).await;
                        cancel.cancel();
                        return;
                    }
                    // The subscriber closed its side or went away.
                    Ok(None) | Err(_) => return,
                }
            }
        });
        let sub = Subscription {
            view: self
                .view(member)
                .filtered(filter)
                .choosing(open.include_expired, open.current_only),
            start,
            log,
            window,
            heartbeat: match open.heartbeat_ms {
                0 => self.state.config.timing.heartbeat_interval,
                ms => std::time::Duration::from_millis(u64::from(ms))
                    .clamp(MIN_HEARTBEAT, MAX_HEARTBEAT),
            },
            guard,
            shutdown: self.state.shutdown.clone(),
        };
        self.state.tasks.spawn(sub.run(ack_rx, out_tx));
        // Each event becomes its messages (a batch of deliveries, one each);
        // the stream ends after the first error.
        let stream = futures_util::stream::unfold(
            (out_rx, std::collections::VecDeque::new(), false, name),
            |(mut rx, mut pending, done, name)| async move {
                if done {
                    return None;
                }
                if pending.is_empty() {
                    pending.extend(crate::api::convert::subscribe_messages(
                        &name,
                        rx.recv().await?,
                    ));
                }
                match pending.pop_front()? {
                    Ok(msg) => Some((Ok(msg), (rx, pending, false, name))),
                    Err(e) => Some((Err(status::broker(&e)), (rx, pending, true, name))),
                }
            },
        );
        // When the node closes this connection (the subscriber's
        // certificate revoked or expired), the stream ends with the reason
        // before the connection goes, instead of breaking.
        let closing = self.state.connections.closing(peer.conn_id);
        let stream = futures_util::stream::unfold(
            (Box::pin(stream), closing, false),
            |(mut inner, mut closing, done)| async move {
                use futures_util::StreamExt as _;
                if done {
                    return None;
                }
                let reason = closing_reason(&mut closing);
                tokio::select! {
                    item = inner.next() => item.map(|i| (i, (inner, closing, false))),
                    r = reason => Some((Err(status::closing(&r)), (inner, closing, true))),
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Resolves with the reason once the node starts closing the connection a
/// stream runs on (never, if it does not, or the connection is gone).
async fn closing_reason(
    closing: &mut Option<tokio::sync::watch::Receiver<Option<String>>>,
) -> String {
    let Some(rx) = closing.as_mut() else {
        return std::future::pending::<String>().await;
    };
    loop {
        if let Some(r) = rx.borrow_and_update().clone() {
            return r;
        }
        if rx.changed().await.is_err() {
            return std::future::pending::<String>().await;
        }
    }
}

/// What a publish's answer needs once the store has it.
struct Admitted {
    id: String,
    digest: [u8; 32],
    signer: String,
    tlp: &'static str,
    /// Told to the publisher with the answer.
    warnings: Vec<String>,
}

/// Every check of a publish, in the order the API promises (size, form,
/// chain, signature, signer, fields); the record to append if it passes.
fn admit(
    state: &NodeState,
    peer: &PeerInfo,
    request: pb::PublishRequest,
) -> Result<(crate::store::NewRecord, Admitted), Status> {
    let env = request
        .envelope
        .ok_or_else(|| status::bad_request("the request carries no envelope"))?;
    let ingest = state.ingest();
    let refused = |e: IngestError| {
        state.metrics.refusals.inc(refusal_reason(&e));
        warn!(target: "beacon::audit", peer = %peer.identity, addr = %peer.addr, reason = %e, "publish refused");
        status::ingest(&e)
    };
    // The canonical bytes, encoded once from what arrived (bounded by the
    // decode limit; `publish` checks their size first); the domain
    // envelope then takes the fields by move (no copy of the payload).
    let bytes = prost::Message::encode_to_vec(&env);
    let env = crate::domain::bulletin::codec::envelope_from_proto(env);
    let admitted = ingest
        .publish(&env, bytes, &peer.identity)
        .map_err(refused)?;
    let v = &admitted.verified;
    let unknown = state.policy.unknown_groups(&v.bulletin().audience.groups);
    let warnings = if unknown.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "audience group{} {} {} not defined on this node ([groups] of its beacon.toml): no one here reads the bulletin through {}; each node resolves groups from its own config",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            if unknown.len() > 1 { "are" } else { "is" },
            if unknown.len() > 1 { "them" } else { "it" },
        )]
    };
    let answer = Admitted {
        id: v.bulletin().id.clone(),
        digest: admitted.record.meta.digest,
        signer: v.signer().to_string(),
        tlp: v.tlp().label(),
        warnings,
    };
    Ok((admitted.record, answer))
}

/// The answer to an admitted publish, from what the store made of it.
fn answer(
    state: &NodeState,
    peer: &PeerInfo,
    a: &Admitted,
    appended: Result<crate::store::Appended, crate::store::StoreError>,
) -> Result<pb::PublishResponse, Status> {
    let appended = appended.map_err(|e| {
        state.metrics.refusals.inc(match e {
            crate::store::StoreError::Conflict { .. } => "conflict",
            crate::store::StoreError::MissingRelated { .. } => "missing_related",
            crate::store::StoreError::Narrows { .. } => "narrows_audience",
            _ => "store",
        });
        warn!(target: "beacon::audit", peer = %peer.identity, id = %a.id, reason = %e, "publish refused");
        status::store(&e)
    })?;
    state.metrics.publishes.inc(if appended.duplicate {
        "duplicate"
    } else {
        "accepted"
    });
    info!(target: "beacon::audit", peer = %peer.identity, signer = %a.signer, id = %a.id,
          seq = appended.seq, duplicate = appended.duplicate, tlp = a.tlp, "published");
    Ok(pb::PublishResponse {
        sequence: appended.seq,
        duplicate: appended.duplicate,
        accepted_at: Some(timestamp(appended.accepted_at)),
        id: a.id.clone(),
        envelope_digest: a.digest.to_vec(),
        warnings: a.warnings.clone(),
    })
}

/// A publish in progress: its answer, once durable.
type Answer = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<pb::PublishResponse, Status>> + Send>,
>;

/// Admits one publish and queues it to the store; what it returns resolves
/// to the answer once the append is durable. `Publish` awaits it at once;
/// `PublishStream` queues its requests one after another, so they are
/// appended in the order sent (a retraction after its original, say) while
/// their fsyncs and answers overlap.
async fn queue_publish(state: &Arc<NodeState>, peer: &PeerInfo, req: pb::PublishRequest) -> Answer {
    let (record, admitted) = match admit(state, peer, req) {
        Ok(a) => a,
        Err(s) => return Box::pin(std::future::ready(Err(s))),
    };
    match state.store.enqueue(record).await {
        Err(e) => Box::pin(std::future::ready(answer(state, peer, &admitted, Err(e)))),
        Ok(durable) => {
            let (state, peer) = (state.clone(), peer.clone());
            Box::pin(async move { answer(&state, &peer, &admitted, durable.await) })
        }
    }
}

/// The range a subscriber's requested heartbeat interval is kept in.
const MIN_HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(250);
const MAX_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a new subscription may take to send `open`.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Events buffered between a subscription task and its connection.
const SUBSCRIPTION_CHANNEL: usize = 16;

/// `beacon.v1.Admin`, for operators.
pub struct AdminService {
    state: Arc<NodeState>,
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        caller(&request, OPERATORS)?;
        let s = &self.state;
        let limit = match request.get_ref().subscriptions_limit {
            0 => 100,
            n => (n as usize).min(1000),
        };
        let status_subscriptions = subscription_page(s, None, limit);
        let own_certificate = s.trust.own_certificate();
        Ok(Response::new(pb::StatusResponse {
            node: s.identity.to_string(),
            version: crate::VERSION.to_owned(),
            started_at: Some(timestamp(s.started_at)),
            head: s.store.head(),
            connections: u32::try_from(s.connections.count()).unwrap_or(u32::MAX),
            store: Some(pb::StoreStatus {
                head: s.store.head(),
                bulletins: s.store.len(),
                size_bytes: s.store.size_on_disk(),
                corrupt_records: s
                    .store
                    .stats
                    .corrupt_reads
                    .load(std::sync::atomic::Ordering::Relaxed),
                pruned: s
                    .store
                    .stats
                    .pruned
                    .load(std::sync::atomic::Ordering::Relaxed),
                log_id: s.store.log().id.to_string(),
                forked_from: crate::api::convert::fork_to_proto(s.store.log()),
                repaired_frames: s
                    .store
                    .stats
                    .repaired_frames
                    .load(std::sync::atomic::Ordering::Relaxed),
            }),
            subscriptions: status_subscriptions.0,
            subscriptions_total: status_subscriptions.2,
            certificate_serial: own_certificate
                .as_ref()
                .map(|c| c.0.clone())
                .unwrap_or_default(),
            certificate_expires_at: own_certificate.as_ref().map(|c| timestamp(c.1)),
            peers: s
                .peers
                .iter()
                .map(|p| {
                    let st = p.status();
                    pb::PeerStatus {
                        address: p.address.clone(),
                        expected_identity: p.identity.to_string(),
                        connected: st.connected,
                        cursor: st.cursor,
                        lag: st.head.saturating_sub(st.cursor),
                        last_error: st.last_error.unwrap_or_default(),
                        last_connected_at: st.last_connected_at.map(timestamp),
                        stored: st.stored,
                        duplicates: st.duplicates,
                        refused: st.refused,
                        log_id: st.log.map(|l| l.to_string()).unwrap_or_default(),
                        log_changes: st.log_changes,
                        last_log_change: st.last_log_change.unwrap_or_default(),
                    }
                })
                .collect(),
            revoked_certificates: u32::try_from(s.trust.bundle().revoked_count())
                .unwrap_or(u32::MAX),
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        caller(&request, OPERATORS)?;
        let req = request.get_ref();
        let limit = match req.limit {
            0 => 500,
            n => (n as usize).min(1000),
        };
        let after = match req.page_token.as_str() {
            "" => None,
            t => Some(from_page_token(t).ok_or_else(|| {
                status::bad_request(format!("page_token {t:?} is not one this node gave"))
            })?),
        };
        let (subscriptions, next, total) = subscription_page(&self.state, after, limit);
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions,
            next_page_token: next.as_ref().map(page_token).unwrap_or_default(),
            total,
        }))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        let op = caller(&request, OPERATORS)?;
        let req = request.into_inner();
        if req.identity.is_empty() || req.name.is_empty() {
            return Err(status::bad_request(
                "identity and name of a durable subscription are required",
            ));
        }
        let was_open = self.state.broker.delete(&req.identity, &req.name);
        let had = self
            .state
            .store
            .remove_cursor(&req.identity, &req.name)
            .await
            .map_err(|e| status::store(&e))?;
        info!(target: "beacon::audit", operator = %op.identity, identity = %req.identity, name = %req.name, was_open, cursor = ?had, "durable subscription deleted");
        Ok(Response::new(pb::DeleteSubscriptionResponse {
            deleted: had.is_some() || was_open,
            cursor: had.unwrap_or(0),
        }))
    }

    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let op = caller(&request, OPERATORS)?;
        let req = request.into_inner();
        let member: crate::base::identity::MemberId = req
            .member
            .parse()
            .map_err(|e| status::bad_request(format!("member: {e}")))?;
        // A token stands for a client of a member this node trusts. Where
        // the bundle scopes CAs to members (an alliance CA or the operators'
        // may still vouch for anyone), the member must be one of those, or
        // named in [groups], a peer's, or this node's own.
        let bundle = self.state.trust.bundle();
        let any = |ca: &&crate::trust::CaEntry| {
            ca.scope
                .0
                .contains(&crate::base::identity::MemberPattern::Any)
        };
        let scoped: Vec<&crate::trust::CaEntry> =
            bundle.cas().iter().filter(|ca| !any(ca)).collect();
        let cfg = &self.state.config;
        let known = if scoped.is_empty() {
            bundle.cas().iter().any(|ca| ca.scope.allows(&member))
        } else {
            scoped.iter().any(|ca| ca.scope.allows(&member))
                || self.state.identity.member() == Some(&member)
                || cfg.groups.values().flatten().any(|m| m == member.as_str())
                || cfg
                    .peers
                    .iter()
                    .any(|p| p.identity.member() == Some(&member))
        };
        if !known {
            let scopes: Vec<String> = scoped.iter().map(|ca| ca.scope.to_string()).collect();
            return Err(status::bad_request(format!(
                "this node does not know member {member}: its CAs vouch for {} (and a CA for everyone), and neither its [groups] nor its peers name it. A token for it would stand for no one this node serves; check the spelling",
                scopes.join(", ")
            )));
        }
        let identity: crate::base::identity::Identity = format!(
            "spiffe://{}/client/{}/{}",
            self.state.identity.trust_domain, member, req.name
        )
        .parse()
        .map_err(|e| status::bad_request(format!("client name: {e}")))?;
        let (info, token) = self
            .state
            .tokens
            .issue(&identity)
            .map_err(|e| token_status(&e))?;
        info!(target: "beacon::audit", operator = %op.identity, token = %info.id, identity = %info.identity, "API token issued");
        Ok(Response::new(pb::IssueTokenResponse {
            id: info.id,
            token,
            identity: info.identity,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let op = caller(&request, OPERATORS)?;
        let id = request.into_inner().id;
        let info = self
            .state
            .tokens
            .revoke(&id)
            .map_err(|e| token_status(&e))?;
        info!(target: "beacon::audit", operator = %op.identity, token = %info.id, identity = %info.identity, "API token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {
            identity: info.identity,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        caller(&request, OPERATORS)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: self
                .state
                .tokens
                .list()
                .into_iter()
                .map(|t| pb::TokenStatus {
                    id: t.id,
                    identity: t.identity,
                    created_at: Some(timestamp(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.created),
                    )),
                    revoked: t.revoked,
                })
                .collect(),
        }))
    }

    type BackupStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let op = caller(&request, OPERATORS)?;
        let store = self.state.store.clone();
        let head = store.head();
        info!(target: "beacon::audit", operator = %op.identity, head, "backup started");
        // A few chunks in flight: memory stays bounded whatever the store's
        // size, and a slow reader only slows its own backup.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        self.state.tasks.spawn_blocking(move || {
            let position = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut out = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(BACKUP_CHUNK),
                position: position.clone(),
                head,
            };
            let result = store.backup(&mut out, |seq, _| {
                position.store(seq, std::sync::atomic::Ordering::Relaxed);
            });
            match result {
                Ok(m) => {
                    if out.send().is_ok() {
                        info!(target: "beacon::audit", head = m.head, records = m.records, tombstones = m.tombstones, "backup sent");
                    }
                }
                Err(e) => {
                    warn!(error = %e, "backup failed");
                    let _ = tx.blocking_send(Err(status::backup(&e)));
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// A token register's failure as a status.
fn token_status(e: &crate::domain::tokens::TokenError) -> Status {
    use crate::domain::tokens::TokenError as T;
    match e {
        T::NotAClient(_) => status::bad_request(e.to_string()),
        T::Unknown(_) => Status::not_found(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// Bytes per backup chunk.
const BACKUP_CHUNK: usize = 256 * 1024;

/// Cuts a backup into chunks for the stream; a write fails once the
/// reader has gone, which ends the backup.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Status>>,
    buf: Vec<u8>,
    position: Arc<std::sync::atomic::AtomicU64>,
    head: u64,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let chunk = pb::BackupChunk {
            data: std::mem::replace(&mut self.buf, Vec::with_capacity(BACKUP_CHUNK)),
            position: self.position.load(std::sync::atomic::Ordering::Relaxed),
            head: self.head,
        };
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reader has gone"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= BACKUP_CHUNK {
            self.send()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Open subscriptions and the stored cursors of durable ones not open now,
/// in (identity, name) order: those after `after` (a page token), at most
/// `limit`, and how many there are in all. Ephemeral streams are told apart
/// by a key of their own.
fn subscription_page(
    s: &NodeState,
    after: Option<(String, String)>,
    limit: usize,
) -> (Vec<pb::SubscriptionStatus>, Option<(String, String)>, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let head = s.store.head();
    let mut all: Vec<((String, String), pb::SubscriptionStatus)> = s
        .broker
        .sessions_keyed()
        .into_iter()
        .map(|(key, x)| {
            let cursor = x.cursor.load(Relaxed);
            (
                (x.identity.clone(), key),
                pb::SubscriptionStatus {
                    identity: x.identity.clone(),
                    name: x.name.clone(),
                    durable: x.durable,
                    connected: x.connected.load(Relaxed),
                    cursor,
                    lag: head.saturating_sub(cursor),
                    delivered: x.delivered.load(Relaxed),
                    last_ack_at: x.last_ack_at.lock().map(timestamp),
                },
            )
        })
        .collect();
    if let Ok(stored) = s.store.cursors() {
        for (identity, name, pos) in stored {
            let cursor = pos.seq;
            if !s.broker.is_open(&identity, &name) {
                all.push((
                    (identity.clone(), name.clone()),
                    pb::SubscriptionStatus {
                        identity,
                        name,
                        durable: true,
                        connected: false,
                        cursor,
                        lag: head.saturating_sub(cursor),
                        delivered: 0,
                        last_ack_at: None,
                    },
                ));
            }
        }
    }
    let total = all.len() as u64;
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut page: Vec<((String, String), pb::SubscriptionStatus)> = all
        .into_iter()
        .filter(|(k, _)| after.as_ref().is_none_or(|a| k > a))
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let next = if more {
        page.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    (page.into_iter().map(|(_, v)| v).collect(), next, total)
}

/// A page token: the last (identity, key) of a page, opaque to clients.
fn page_token(key: &(String, String)) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}\n{}", key.0, key.1))
}

fn from_page_token(t: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (a, b) = text.split_once('\n')?;
    Some((a.to_owned(), b.to_owned()))
}

/// Serves gRPC on one connection of the node's accept loop until it ends:
/// HTTP/2 only (the port's TLS offers `h2` alone), each request carrying the
/// connection's verified peer ([`PeerInfo`]), every stream a tracked task of
/// the node. A connection without a client certificate is not served (the
/// port's TLS requires one).
pub async fn serve_connection(
    conn: crate::net::edge::Conn,
    routes: tonic::service::Routes,
    limits: &crate::base::config::Limits,
    tasks: tokio_util::task::TaskTracker,
) {
    use tower::ServiceExt;
    let Some(peer) = conn.peer() else {
        return;
    };
    let service = tower::ServiceBuilder::new()
        .layer(DecodeLimitLayer)
        .service(routes);
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            service.clone().oneshot(req.map(tonic::body::Body::new))
        });
    let mut http2 = hyper::server::conn::http2::Builder::new(crate::net::edge::Executor(tasks));
    http2
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    // The connection ends when the node closes it (a revocation, its own
    // certificate refused, shutdown): its reads and writes fail then.
    if let Err(e) = http2
        .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
        .await
    {
        tracing::debug!(error = %e, "gRPC connection ended");
    }
}

/// All services of a node: Bulletins, Admin, gRPC health and reflection.
pub async fn router(
    state: Arc<NodeState>,
) -> Result<tonic::service::Routes, tonic_reflection::server::Error> {
    let max = state.config.limits.max_message_bytes;
    let bulletins = pb::bulletins_server::BulletinsServer::new(BulletinsService {
        state: state.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(state.config.limits.max_response_bytes());
    let admin = pb::admin_server::AdminServer::new(AdminService {
        state: state.clone(),
    });
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::bulletins_server::BulletinsServer<BulletinsService>>()
        .await;
    health_reporter
        .set_serving::<pb::admin_server::AdminServer<AdminService>>()
        .await;
    // Reflection in both versions: v1, and v1alpha, which older tools still
    // speak only (grpcurl 1.8, grpcio-reflection's client).
    // Each lists both reflection services (and each builder adds its own).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::base::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok(tonic::service::Routes::new(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(bulletins)
        .add_service(admin))
}
