//! `beacon.v1.Bulletins`: Publish, PublishStream, Get, List, Subscribe.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use tracing::{info, warn};

use super::{caller, status, timestamp, MEMBERS};
use crate::base::proto::v1 as pb;
use crate::broker::ingest::IngestError;
use crate::domain::bulletin::BulletinError;
use crate::net::edge::PeerInfo;
use crate::node::state::NodeState;

/// `beacon.v1.Bulletins`.
pub struct BulletinsService {
    pub(super) state: Arc<NodeState>,
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
        return match e {
            IngestError::MustBeSealed(_) => "must_be_sealed",
            IngestError::Key(_) => "recipient_key",
            IngestError::Sealed(_) => "sealed",
            _ => "malformed",
        };
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
    async fn announce_recipient_key(
        &self,
        request: Request<pb::RecipientKeyRequest>,
    ) -> Result<Response<pb::RecipientKeyResponse>, Status> {
        let peer = caller(&request, MEMBERS)?;
        let env = record_of(request.into_inner(), crate::domain::keys::KEY_TYPE)?;
        let s = &self.state;
        let (now, chains) = (std::time::SystemTime::now(), s.trust.signer_check());
        let r =
            crate::domain::keys::verify_key(&env, &chains, now).map_err(|e| status::keys(&e))?;
        own_member(&peer, &r.member)?;
        let added = s
            .keys
            .insert_key(r.clone(), now)
            .map_err(|e| status::keys(&e))?;
        if added {
            info!(target: "beacon::audit", peer = %peer.identity, member = %r.member,
                  key_id = %crate::domain::keys::hex(&r.key_id), "recipient key announced");
        }
        Ok(Response::new(pb::RecipientKeyResponse {
            member: r.member,
            key_id: crate::domain::keys::hex(&r.key_id),
            added,
        }))
    }

    async fn revoke_recipient_key(
        &self,
        request: Request<pb::RecipientKeyRequest>,
    ) -> Result<Response<pb::RecipientKeyResponse>, Status> {
        let peer = caller(&request, MEMBERS)?;
        let env = record_of(request.into_inner(), crate::domain::keys::REVOCATION_TYPE)?;
        let s = &self.state;
        let (now, chains) = (std::time::SystemTime::now(), s.trust.signer_check());
        let r = crate::domain::keys::verify_revocation(&env, &chains, now)
            .map_err(|e| status::keys(&e))?;
        own_member(&peer, &r.member)?;
        let added = s
            .keys
            .insert_revocation(r.clone())
            .map_err(|e| status::keys(&e))?;
        if added {
            warn!(target: "beacon::audit", peer = %peer.identity, member = %r.member,
                  key_id = %crate::domain::keys::hex(&r.key_id), reason = %r.reason,
                  "recipient key revoked");
        }
        Ok(Response::new(pb::RecipientKeyResponse {
            member: r.member,
            key_id: crate::domain::keys::hex(&r.key_id),
            added,
        }))
    }

    async fn list_recipient_keys(
        &self,
        request: Request<pb::ListRecipientKeysRequest>,
    ) -> Result<Response<pb::ListRecipientKeysResponse>, Status> {
        caller(
            &request,
            &[
                crate::base::identity::RoleKind::Node,
                crate::base::identity::RoleKind::Client,
                crate::base::identity::RoleKind::Operator,
            ],
        )?;
        let req = request.into_inner();
        let member = (!req.member.is_empty()).then_some(req.member.as_str());
        let (keys, revocations) =
            self.state
                .keys
                .listing(member, req.all, std::time::SystemTime::now());
        let to = |v: Vec<crate::domain::bulletin::Envelope>| {
            v.iter()
                .map(crate::domain::bulletin::codec::envelope_to_proto)
                .collect()
        };
        Ok(Response::new(pb::ListRecipientKeysResponse {
            keys: to(keys),
            revocations: to(revocations),
            require_sealed: self
                .state
                .config
                .policy
                .require_sealed
                .iter()
                .filter_map(|l| crate::domain::bulletin::Tlp::parse(l))
                .map(|t| t.label().to_owned())
                .collect(),
        }))
    }

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
            // Only a reader of the bulletin held hears of the conflict.
            let equivocation = self
                .state
                .evidence
                .get(&seen.record().meta.publisher, &req.id)
                .map(crate::api::convert::equivocation);
            return Ok(Response::new(pb::GetResponse {
                delivery: Some(crate::api::convert::delivery(seen)),
                equivocation,
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
        let carrier =
            open.carry_sealed && peer.identity.kind() == crate::base::identity::RoleKind::Node;
        let sub = Subscription {
            view: self
                .view(member)
                .filtered(filter)
                .choosing(open.include_expired, open.current_only)
                .carrying_sealed(carrier),
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
        // Checkpoints, when asked for: each one the node signs, between
        // the subscription's own messages (it never holds them up).
        let checkpoints = open.checkpoints.then(|| {
            let mut rx = self.state.transparency.watch();
            // The latest one first, if there is one.
            rx.mark_changed();
            (rx, self.state.transparency.clone())
        });
        let stream = futures_util::stream::unfold(
            (Box::pin(stream), checkpoints),
            |(mut inner, mut checkpoints)| async move {
                use futures_util::StreamExt as _;
                let next_checkpoint = async {
                    match checkpoints.as_mut() {
                        Some((rx, _)) => rx.changed().await.is_ok(),
                        None => std::future::pending::<bool>().await,
                    }
                };
                tokio::select! {
                    biased;
                    item = inner.next() => item.map(|i| (i, (inner, checkpoints))),
                    alive = next_checkpoint => {
                        let msg = match checkpoints.as_mut() {
                            Some((rx, log)) if alive => {
                                let latest = rx.borrow_and_update().clone();
                                latest.map(|c| pb::SubscribeResponse {
                                    msg: Some(pb::subscribe_response::Msg::Checkpoint(
                                        pb::SignedCheckpoint {
                                            note: log.latest_note().unwrap_or_else(|| c.note.clone()),
                                            size: c.checkpoint.size,
                                            origin: c.checkpoint.origin.clone(),
                                        },
                                    )),
                                })
                            }
                            _ => None,
                        };
                        if !alive {
                            checkpoints = None;
                        }
                        match msg {
                            Some(m) => Some((Ok(m), (inner, checkpoints))),
                            // Nothing to send: wait for the next item.
                            None => inner.next().await.map(|i| (i, (inner, checkpoints))),
                        }
                    }
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

/// The signed record a key request carries, of `payload_type`.
fn record_of(
    req: pb::RecipientKeyRequest,
    payload_type: &str,
) -> Result<crate::domain::bulletin::Envelope, Status> {
    let env = req
        .record
        .map(crate::domain::bulletin::codec::envelope_from_proto)
        .ok_or_else(|| status::bad_request("the request carries no record"))?;
    if env.payload_type != payload_type {
        return Err(status::bad_request(format!(
            "the record is of type {:?}; this call takes {payload_type:?}",
            env.payload_type
        )));
    }
    Ok(env)
}

/// A member's keys are announced and revoked by the member's own clients
/// and nodes (a record signed by the member but sent by another is
/// fetched by nodes from their peers, not pushed).
fn own_member(peer: &PeerInfo, member: &str) -> Result<(), Status> {
    match peer.identity.member().map(|m| m.as_str()) == Some(member) {
        true => Ok(()),
        false => Err(Status::permission_denied(format!(
            "{} may not announce or revoke keys of {member}",
            peer.identity
        ))),
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
    /// The envelope's canonical bytes: the evidence, should the store hold
    /// another bulletin of its publisher under its id.
    envelope: Vec<u8>,
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
    let unknown = state.policy.unknown_groups(&admitted.groups);
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
        id: admitted.record.meta.id.clone(),
        digest: admitted.record.meta.digest,
        signer: admitted.signer.to_string(),
        tlp: admitted.tlp.label(),
        warnings,
        envelope: admitted.record.envelope.clone(),
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
    if let Err(crate::store::StoreError::Conflict { publisher, id }) = &appended {
        keep_equivocation(state, peer, publisher, id, &a.envelope);
    }
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
        receipt: String::new(),
    })
}

/// A publish refused because the store holds another bulletin of the same
/// publisher under its id: both are signed, so together they are evidence
/// of equivocation, kept as a relayed conflict is (`node::evidence`).
fn keep_equivocation(state: &NodeState, peer: &PeerInfo, publisher: &str, id: &str, bytes: &[u8]) {
    let held = match state.store.lookup(publisher, id) {
        Ok(Some((seq, _))) => state.store.get(seq).ok().flatten(),
        _ => None,
    };
    let (Some(held), Ok(new)) = (held, crate::domain::bulletin::codec::decode_envelope(bytes))
    else {
        return;
    };
    let Ok(held) = crate::domain::bulletin::codec::decode_envelope(&held.envelope) else {
        return;
    };
    if let Err(e) = state
        .evidence
        .record(&held, &new, &format!("published by {}", peer.identity))
    {
        warn!(peer = %peer.identity, error = %e, "no evidence kept of a conflicting publish");
    }
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
    let want_receipt = req.receipt;
    let (record, admitted) = match admit(state, peer, req) {
        Ok(a) => a,
        Err(s) => return Box::pin(std::future::ready(Err(s))),
    };
    match state.store.enqueue(record).await {
        Err(e) => Box::pin(std::future::ready(answer(state, peer, &admitted, Err(e)))),
        Ok(durable) => {
            let (state, peer) = (state.clone(), peer.clone());
            Box::pin(async move {
                let mut r = answer(&state, &peer, &admitted, durable.await)?;
                if want_receipt {
                    let log = &state.transparency;
                    match log.receipt(r.sequence, log.receipt_wait()).await {
                        Ok(receipt) => r.receipt = receipt,
                        Err(e) => r.warnings.push(format!("no receipt: {e}")),
                    }
                }
                Ok(r)
            })
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
