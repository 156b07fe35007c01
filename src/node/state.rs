//! What the node's services share: its identity and config, the trust in
//! force, open connections, the store, policy, broker, peer links, counters
//! and the shutdown signal. Composed by `node::run`.

use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::base::config::Config;
use crate::base::identity::Identity;
use crate::net::edge::Connections;
use crate::trust::state::TrustState;

/// What handlers share: identity, config, trust state, connections, store.
pub struct NodeState {
    pub config: Arc<Config>,
    pub identity: Identity,
    pub started_at: SystemTime,
    pub connections: Arc<Connections>,
    /// The bundle in force, the node's own chain (reloaded with the files),
    /// whether the bundle still accepts it, and the signer-chain cache.
    pub trust: Arc<TrustState>,
    pub store: Arc<crate::store::Store>,
    /// The node's signed checkpoints of its log.
    pub transparency: Arc<crate::node::transparency::TransparencyLog>,
    /// Evidence of publishers that signed two bulletins under one id.
    pub evidence: Arc<crate::node::evidence::Equivocations>,
    pub policy: crate::domain::policy::Policy,
    pub broker: Arc<crate::broker::subscription::Broker>,
    /// The configured peer links and their state.
    pub peers: Vec<Arc<crate::node::federation::PeerLink>>,
    pub metrics: Arc<crate::base::metrics::Metrics>,
    /// The recipient keys this node knows (for sealed bulletins).
    pub keys: Arc<crate::domain::keys::KeyStore>,
    /// API tokens operators issued (for TAXII clients without certificates).
    pub tokens: Arc<crate::domain::tokens::Tokens>,
    /// Cancelled when the node begins to shut down; long-lived streams watch it.
    pub shutdown: CancellationToken,
    /// Every task the node's services spawn (connections, streams,
    /// subscriptions, blocking reads): shutdown waits for them before it
    /// closes the store.
    pub tasks: tokio_util::task::TaskTracker,
}

impl NodeState {
    /// The admission path, over this node's trust, policy and limits.
    pub fn ingest(&self) -> crate::broker::ingest::Ingest<'_> {
        crate::broker::ingest::Ingest {
            node: &self.identity,
            trust: &self.trust,
            policy: &self.policy,
            max_envelope_bytes: self.config.limits.max_envelope_bytes,
            spans: self.store.spans(),
            keys: &self.keys,
            require_sealed: &self.config.policy.require_sealed,
            carry_sealed: self.config.federation.carry_sealed,
        }
    }
}
