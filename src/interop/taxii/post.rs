//! `POST objects`: a client of the node's member posts a STIX bundle; each
//! report is signed by the node and admitted like a publish. The status
//! resources of posts.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use tracing::info;

use super::headers::{accept, is_taxii21, media_type};
use super::{respond, Server, TaxiiError, ROOT};
use crate::base::identity::{Identity, RoleKind};

/// Status resources of posts: kept 24 hours (TAXII's minimum), at most
/// `MAX_STATUSES`, each readable by the member that posted.
#[derive(Default)]
pub(super) struct Statuses {
    kept:
        parking_lot::Mutex<std::collections::VecDeque<(std::time::Instant, String, String, Value)>>,
}

pub(super) const MAX_STATUSES: usize = 10_000;
pub(super) const STATUS_KEPT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Statuses {
    /// Records the outcome of a post; returns its status resource.
    pub(super) fn add(&self, member: &str, outcomes: &[crate::interop::stix::Outcome]) -> Value {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let entry = |o: &crate::interop::stix::Outcome, message: &str| json!({"id": o.id, "version": o.version, "message": message});
        let successes: Vec<Value> = outcomes
            .iter()
            .filter(|o| o.failure.is_none())
            .map(|o| entry(o, "taken"))
            .collect();
        let failures: Vec<Value> = outcomes
            .iter()
            .filter_map(|o| o.failure.as_deref().map(|f| entry(o, f)))
            .collect();
        let mut status = json!({
            "id": id,
            "status": "complete",
            "request_timestamp": crate::interop::stix::timestamp(std::time::SystemTime::now()),
            "total_count": outcomes.len(),
            "success_count": successes.len(),
            "failure_count": failures.len(),
            "pending_count": 0,
        });
        if !successes.is_empty() {
            status["successes"] = json!(successes);
        }
        if !failures.is_empty() {
            status["failures"] = json!(failures);
        }
        let now = std::time::Instant::now();
        let mut kept = self.kept.lock();
        while kept.len() >= MAX_STATUSES
            || kept
                .front()
                .is_some_and(|(at, ..)| now.duration_since(*at) > STATUS_KEPT)
        {
            kept.pop_front();
        }
        kept.push_back((now, id, member.to_owned(), status.clone()));
        status
    }

    pub(super) fn get(&self, member: &str, id: &str) -> Option<Value> {
        self.kept
            .lock()
            .iter()
            .find(|(_, i, m, _)| i == id && m == member)
            .map(|(.., s)| s.clone())
    }
}

impl Server {
    /// Whether `identity` may post: a client of this node's member.
    pub(super) fn may_write(&self, identity: &Identity) -> bool {
        identity.kind() == RoleKind::Client
            && identity.member().is_some()
            && identity.member().map(|m| m.as_str())
                == self.state.identity.member().map(|m| m.as_str())
    }

    /// The largest request body taken (advertised as `max_content_length`).
    pub(super) fn max_content_length(&self) -> usize {
        self.state.config.taxii.max_content_length
    }

    /// `POST {root}/collections/{id}/objects/` and `GET {root}/status/{id}/`
    /// live here: a TAXII envelope (or bundle) from a member's client,
    /// each report signed by this node on the client's behalf.
    pub(super) async fn post(
        &self,
        who: &Identity,
        parts: &http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Full<Bytes>>, TaxiiError> {
        accept(parts)?;
        let path = parts.uri.path();
        let segments: Vec<&str> = path
            .strip_prefix(ROOT)
            .unwrap_or_default()
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let ["collections", id, "objects"] = segments.as_slice() else {
            return Err(TaxiiError::MethodNotAllowed(format!(
                "POST is not served on {path}"
            )));
        };
        self.collection(id)?;
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let (essence, params) = media_type(content_type);
        if !is_taxii21(&essence, &params) {
            return Err(TaxiiError::UnsupportedMediaType(content_type.to_owned()));
        }
        // The node signs for clients of its own member only.
        let node_member = self.state.identity.member().map(|m| m.as_str().to_owned());
        let member = match (who.kind(), who.member()) {
            (RoleKind::Client, Some(m)) if Some(m.as_str()) == node_member.as_deref() => {
                m.as_str().to_owned()
            }
            _ => {
                return Err(TaxiiError::Forbidden(format!(
                    "{} may not add objects here: this node signs only for clients of its own member ({})",
                    who,
                    node_member.unwrap_or_default()
                )))
            }
        };
        let (taken, mut outcomes) =
            crate::interop::stix::take_bundle(&body, &member).map_err(TaxiiError::Unprocessable)?;
        let own = self.state.trust.own();
        let signer = crate::domain::bulletin::Signer::new(own.chain.clone(), own.key.secret_der())
            .map_err(|e| TaxiiError::Unprocessable(format!("this node cannot sign: {e}")))?;
        for t in taken {
            let mut b = t.bulletin;
            b.submitted_by = who.to_string();
            let outcome = self.admit(&signer, &b).await;
            outcomes.push(crate::interop::stix::Outcome {
                id: t.id,
                version: t.version,
                failure: outcome.err(),
            });
        }
        let status = self.statuses.add(&member, &outcomes);
        info!(target: "beacon::audit", caller = %who, objects = outcomes.len(), failed = outcomes.iter().filter(|o| o.failure.is_some()).count(), "TAXII objects posted");
        Ok(respond(StatusCode::ACCEPTED, status, &[]))
    }

    /// Signs `b` as this node and stores it through the admission path
    /// every publish takes; a failure is the message a client is told.
    pub(super) async fn admit(
        &self,
        signer: &crate::domain::bulletin::Signer,
        b: &crate::domain::bulletin::Bulletin,
    ) -> Result<String, String> {
        crate::domain::bulletin::validate(b, std::time::SystemTime::now())
            .map_err(|e| e.to_string())?;
        let env = signer.sign(b.to_bytes()).map_err(|e| e.to_string())?;
        let bytes = crate::domain::bulletin::codec::encode_envelope(&env);
        let admitted = self
            .state
            .ingest()
            .publish(&env, bytes, &self.state.identity)
            .map_err(|e| e.to_string())?;
        let appended = self
            .state
            .store
            .append(admitted.record)
            .await
            .map_err(|e| e.to_string())?;
        Ok(if appended.duplicate {
            format!(
                "already held: bulletin {} at sequence {}",
                b.id, appended.seq
            )
        } else {
            format!("bulletin {} at sequence {}", b.id, appended.seq)
        })
    }

    /// The reading member: clients and nodes read as their member; other
    /// roles (operators) read nothing over TAXII.
    pub(super) fn member<'a>(&self, identity: &'a Identity) -> Result<&'a str, TaxiiError> {
        match identity.kind() {
            RoleKind::Client | RoleKind::Node => identity
                .member()
                .map(|m| m.as_str())
                .ok_or_else(|| TaxiiError::Forbidden("no member".into())),
            _ => Err(TaxiiError::Forbidden(format!(
                "{identity} is not a member's client or node"
            ))),
        }
    }
}
