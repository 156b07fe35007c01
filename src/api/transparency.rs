//! `beacon.v1.Transparency`: the latest signed checkpoint, inclusion and
//! consistency proofs. Any member's client or node, and operators, may
//! read them: leaves commit to no content. Only nodes add cosignatures.
//! Proofs are read from the store's tree (a bounded number of engine reads
//! each).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{caller, status};
use crate::base::identity::RoleKind;

/// Everyone with a certificate: leaves carry no content.
const READERS: &[RoleKind] = &[RoleKind::Node, RoleKind::Client, RoleKind::Operator];
use crate::base::proto::v1 as pb;
use crate::node::state::NodeState;

/// `beacon.v1.Transparency`.
pub struct TransparencyService {
    pub(super) state: Arc<NodeState>,
}

impl TransparencyService {
    /// `size`, or the latest checkpoint's when 0; and that checkpoint's
    /// note when `size` is its size.
    fn size_or_latest(&self, size: u64) -> Result<(u64, String), Status> {
        let latest = self.state.transparency.latest();
        match (size, latest) {
            (0, None) => Err(Status::failed_precondition(
                "this node has signed no checkpoint yet: name a tree size, or ask again shortly",
            )),
            (0, Some(l)) => Ok((l.checkpoint.size, l.note.clone())),
            (n, Some(l)) if l.checkpoint.size == n => Ok((n, l.note.clone())),
            (n, _) => Ok((n, String::new())),
        }
    }

    /// A store read, its error as a status.
    fn read<T>(
        &self,
        f: impl FnOnce(&crate::store::Store) -> Result<T, crate::store::StoreError>,
    ) -> Result<T, Status> {
        // A proof is a bounded number of engine reads (at most about 130
        // for any tree size; 10 µs when they are in memory, 70 µs at a
        // million entries on a small cache: `beacon bench transparency`),
        // read in place as `Get` reads its record: handing each to the
        // blocking pool cost more CPU than the reads (measured).
        f(&self.state.store).map_err(|e| status::store(&e))
    }
}

#[tonic::async_trait]
impl pb::transparency_server::Transparency for TransparencyService {
    async fn get_checkpoint(
        &self,
        request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::GetCheckpointResponse>, Status> {
        caller(&request, READERS)?;
        let t = &self.state.transparency;
        Ok(Response::new(pb::GetCheckpointResponse {
            checkpoint: t.latest_note().unwrap_or_default(),
            log_key: t.log_key().to_string(),
            origin: t.origin().to_string(),
            announcements: t.announcements(),
            witness_key: t.witness_key().to_string(),
            witness_announcements: t
                .cosigned()
                .and_then(|c| crate::tlog::note::Note::parse(&c).ok())
                .map(|n| t.witness_announcements(&n))
                .unwrap_or_default(),
            cosigned: t.cosigned().unwrap_or_default(),
        }))
    }

    async fn add_cosignature(
        &self,
        request: Request<pb::AddCosignatureRequest>,
    ) -> Result<Response<pb::AddCosignatureResponse>, Status> {
        let peer = caller(&request, &[RoleKind::Node])?;
        let r = request.into_inner();
        let cosignatures = self
            .state
            .transparency
            .add_cosignature(
                &peer.identity,
                r.tree_size,
                &r.cosignature,
                &r.witness_key,
                &r.announcement,
                &self.state.trust.signer_check(),
            )
            .map_err(|e| status::transparency(&e))?;
        Ok(Response::new(pb::AddCosignatureResponse { cosignatures }))
    }

    async fn prove_earliest(
        &self,
        request: Request<pb::ProveEarliestRequest>,
    ) -> Result<Response<pb::ProveEarliestResponse>, Status> {
        caller(&request, READERS)?;
        let seq = request.into_inner().sequence;
        let (receipt, witness_announcements) = self
            .state
            .transparency
            .prove_earliest(seq)
            .map_err(|e| status::transparency(&e))?;
        Ok(Response::new(pb::ProveEarliestResponse {
            receipt,
            witness_announcements,
        }))
    }

    async fn report_equivocation(
        &self,
        request: Request<pb::ReportEquivocationRequest>,
    ) -> Result<Response<pb::ReportEquivocationResponse>, Status> {
        let peer = caller(&request, &[RoleKind::Node])?;
        let r = request.into_inner();
        let state = &self.state;
        let chains = state.trust.signer_check();
        let (a, b) = crate::node::evidence::verify_report(&r.envelopes, |env| {
            crate::domain::bulletin::verify_stored_envelope(
                env,
                &chains,
                std::time::SystemTime::now(),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
        .map_err(|e| status::bad_request(e.to_string()))?;
        let new = state
            .evidence
            .record(&a, &b, &format!("reported by {}", peer.identity))
            .map_err(|e| status::bad_request(e.to_string()))?;
        Ok(Response::new(pb::ReportEquivocationResponse { new }))
    }

    async fn prove_inclusion(
        &self,
        request: Request<pb::ProveInclusionRequest>,
    ) -> Result<Response<pb::ProveInclusionResponse>, Status> {
        caller(&request, READERS)?;
        let r = request.into_inner();
        let (size, checkpoint) = self.size_or_latest(r.tree_size)?;
        let seq = r.sequence;
        let (hashes, leaf_entry) = self.read(move |store| {
            let proof = store.inclusion_proof(seq, size)?;
            Ok((proof, store.leaf_entry(seq)?))
        })?;
        Ok(Response::new(pb::ProveInclusionResponse {
            sequence: seq,
            tree_size: size,
            index: seq - 1,
            hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
            leaf_entry,
            checkpoint,
        }))
    }

    async fn prove_consistency(
        &self,
        request: Request<pb::ProveConsistencyRequest>,
    ) -> Result<Response<pb::ProveConsistencyResponse>, Status> {
        caller(&request, READERS)?;
        let r = request.into_inner();
        let (new, checkpoint) = self.size_or_latest(r.new_size)?;
        let old = r.old_size;
        let hashes = self.read(move |store| store.consistency_proof(old, new))?;
        Ok(Response::new(pb::ProveConsistencyResponse {
            old_size: old,
            new_size: new,
            hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
            checkpoint,
        }))
    }
}
