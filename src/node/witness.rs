//! Peers witness each other: for each configured peer, this node fetches
//! the peer's checkpoint, checks it (the announcement of its log signed by
//! the peer's certificate, the checkpoint by the log key announced, and
//! consistency with the last checkpoint this node cosigned of it, kept
//! durably), keeps it, then cosigns it (C2SP `tlog-cosignature`, Ed25519 v1)
//! and hands the cosignature to the peer, which serves it with the
//! checkpoint. A split view, a rollback or an undeclared rebuild raises an
//! alarm (log, metric, status) with both signed checkpoints kept as
//! evidence, and nothing is cosigned.
//!
//! The witness cosigns the checkpoint other witnesses already cosigned when
//! there is one it has not (so a quorum gathers on one checkpoint), and the
//! latest otherwise.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use tracing::{debug, warn};

use crate::base::identity::Identity;
use crate::base::proto::v1 as pb;
use crate::base::proto::v1::transparency_client::TransparencyClient;
use crate::node::transparency::{check_peer, verify_announcement, PeerCheck, TransparencyLog};
use crate::tlog::merkle;
use crate::tlog::note::{open_checkpoint, Note, Verifier};
use crate::trust::tls::ExpectedServer;

/// What a witness needs of its node.
pub struct WitnessContext {
    pub trust: Arc<crate::trust::state::TrustState>,
    pub log: Arc<TransparencyLog>,
    /// How often each peer is witnessed.
    pub interval: Duration,
    pub shutdown: tokio_util::sync::CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("{0}")]
    Client(#[from] crate::net::client::ClientError),
    #[error("{0}")]
    Tls(#[from] crate::trust::tls::TlsError),
    #[error("the peer answered: {0}")]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Local(#[from] crate::node::transparency::TransparencyError),
}

/// The longest one round may take (dial, three calls).
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// Witnesses `peer` at `address` until shutdown.
pub async fn run(ctx: Arc<WitnessContext>, address: String, peer: Identity) {
    loop {
        if ctx.trust.own_refusal().is_none() {
            let round = tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                r = tokio::time::timeout(ROUND_TIMEOUT, witness_once(&ctx, &address, &peer)) => r,
            };
            let round = round.unwrap_or_else(|_| {
                Err(WitnessError::Invalid(format!(
                    "no answer within {ROUND_TIMEOUT:?}"
                )))
            });
            match round {
                Ok(said) => debug!(peer = %peer, "{said}"),
                Err(e @ (WitnessError::Invalid(_) | WitnessError::Local(_))) => {
                    warn!(peer = %peer, error = %e, "peer not witnessed")
                }
                Err(e) => debug!(peer = %peer, error = %e, "peer not witnessed this round"),
            }
        }
        // Jitter: witnesses of one log do not arrive together.
        let wait = ctx
            .interval
            .mul_f64(0.75 + rand::rng().random::<f64>() / 2.0);
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One round: fetch, check, keep, cosign, hand back. Returns what was done.
pub async fn witness_once(
    ctx: &WitnessContext,
    address: &str,
    peer: &Identity,
) -> Result<String, WitnessError> {
    let tls = crate::trust::tls::client_config(
        ctx.trust.bundle(),
        &ctx.trust.own(),
        ExpectedServer::Exactly(peer.clone()),
    )?;
    let channel = crate::net::client::connect_with(address, Arc::new(tls)).await?;
    let mut client = TransparencyClient::new(channel);
    let r = client
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await?
        .into_inner();
    // The peer's logs, as its certificate announced them.
    let bundle = ctx.trust.bundle();
    let now = SystemTime::now();
    let announcements: Vec<_> = r
        .announcements
        .iter()
        .filter_map(|a| verify_announcement(a, bundle.as_ref(), now).ok())
        .filter(|a| a.node == peer.to_string())
        .collect();
    let current = announcements
        .iter()
        .find(|a| a.origin == r.origin)
        .ok_or_else(|| {
            WitnessError::Invalid(format!(
                "{peer} announced no log {} with its certificate",
                r.origin
            ))
        })?;
    let key: Verifier = current
        .log_key
        .parse()
        .map_err(|e| WitnessError::Invalid(format!("{e}")))?;
    let own_name = ctx.log.witness_key().name;
    // The checkpoint to cosign: one others cosigned and this node has not,
    // else the latest.
    let candidates = [r.cosigned.as_str(), r.checkpoint.as_str()];
    let mut chosen = None;
    for text in candidates.iter().filter(|t| !t.is_empty()) {
        let (c, n) = open_checkpoint(text, &key)
            .map_err(|e| WitnessError::Invalid(format!("{peer}'s checkpoint: {e}")))?;
        if c.origin != current.origin {
            continue;
        }
        let mine = n.signatures.iter().any(|s| s.name == own_name);
        if !mine {
            chosen = Some((c, n, text.to_string()));
            break;
        }
    }
    let Some((shown, note, text)) = chosen else {
        return Ok("nothing new to cosign".into());
    };
    let peer_name = peer.to_string();
    let held = ctx.log.witnessed(&peer_name);
    let mut decision = check_peer(held.as_ref(), &shown, &announcements, None);
    if let PeerCheck::NeedProof { old, new } = decision {
        let p = client
            .prove_consistency(pb::ProveConsistencyRequest {
                old_size: old,
                new_size: new,
            })
            .await?
            .into_inner();
        let hashes: Vec<merkle::Hash> = p
            .hashes
            .iter()
            .map(|h| h.as_slice().try_into())
            .collect::<Result<_, _>>()
            .map_err(|_| WitnessError::Invalid("a proof hash is not 32 bytes".into()))?;
        decision = check_peer(held.as_ref(), &shown, &announcements, Some(&hashes));
    }
    match decision {
        PeerCheck::Cosign => {}
        PeerCheck::Older => return Ok(format!("{} is older than what was cosigned", shown.size)),
        PeerCheck::NeedProof { .. } => {
            return Err(WitnessError::Invalid("no consistency proof".into()))
        }
        PeerCheck::Alarm(why) => {
            let held_note = ctx.log.witnessed_note(&peer_name).unwrap_or_default();
            ctx.log
                .raise_peer_alarm(&peer_name, &why, &held_note, &text);
            return Err(WitnessError::Invalid(why));
        }
    }
    // Kept durably before it is cosigned: this node never cosigns a
    // checkpoint it would not hold against the next one.
    ctx.log
        .keep_witnessed(&peer_name, &strip_to_log_signature(&note, &key))?;
    let sig = ctx.log.cosign(&note.text);
    let line = Note {
        text: note.text.clone(),
        signatures: vec![sig],
    }
    .render();
    let line = line
        .rsplit_once("\n\n")
        .map(|(_, l)| l.to_string())
        .unwrap_or_default();
    let added = client
        .add_cosignature(pb::AddCosignatureRequest {
            tree_size: shown.size,
            cosignature: line,
            witness_key: ctx.log.witness_key().to_string(),
            announcement: ctx.log.announcements().last().cloned().unwrap_or_default(),
        })
        .await?
        .into_inner();
    Ok(format!(
        "cosigned {} at {} entries ({} cosignatures)",
        shown.origin, shown.size, added.cosignatures
    ))
}

/// The note with only the log's own signature (what is kept as held).
fn strip_to_log_signature(note: &Note, key: &Verifier) -> String {
    Note {
        text: note.text.clone(),
        signatures: note
            .signatures
            .iter()
            .filter(|s| s.name == key.name && s.key_id == key.id)
            .cloned()
            .collect(),
    }
    .render()
}
