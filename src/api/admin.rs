//! `beacon.v1.Admin` (operators only): status, subscriptions, tokens,
//! backups.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use tracing::{info, warn};

use super::backup::{ChunkWriter, BACKUP_CHUNK};
use super::{caller, status, timestamp, OPERATORS};
use crate::base::proto::v1 as pb;
use crate::node::state::NodeState;

/// This node's log and what it witnessed of its peers.
fn transparency_status(t: &crate::node::transparency::TransparencyLog) -> pb::TransparencyStatus {
    pb::TransparencyStatus {
        origin: t.origin().to_string(),
        checkpoint_size: t.latest().map_or(0, |l| l.checkpoint.size),
        refused: t.alarm().unwrap_or_default(),
        witnessed: t
            .witnessed_all()
            .into_iter()
            .map(|(peer, c)| pb::WitnessedLog {
                peer,
                origin: c.origin,
                size: c.size,
            })
            .collect(),
        alarms: t.peer_alarms(),
        equivocations: Vec::new(),
    }
}

/// `beacon.v1.Admin`, for operators.
pub struct AdminService {
    pub(super) state: Arc<NodeState>,
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
                duties_held: duties(s, true),
                duties_waiting: duties(s, false),
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
            transparency: Some(pb::TransparencyStatus {
                equivocations: s
                    .evidence
                    .all()
                    .into_iter()
                    .map(|q| format!("{} {}", q.publisher, q.id))
                    .collect(),
                ..transparency_status(&s.transparency)
            }),
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
/// The duties asked of this node that it holds (`held`) or waits for.
fn duties(s: &NodeState, held: bool) -> Vec<String> {
    s.store
        .duties()
        .into_iter()
        .filter(|(_, h)| *h == held)
        .map(|(d, _)| d.name().to_owned())
        .collect()
}

fn token_status(e: &crate::domain::tokens::TokenError) -> Status {
    use crate::domain::tokens::TokenError as T;
    match e {
        T::NotAClient(_) => status::bad_request(e.to_string()),
        T::Unknown(_) => Status::not_found(e.to_string()),
        _ => Status::internal(e.to_string()),
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
