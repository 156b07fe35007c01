//! The node's live trust state: the bundle in force (replaced on every
//! reload), its generation, the node's own certificate and key, whether the
//! bundle still accepts them, and a cache of signer-chain verdicts. Shared by
//! the accept loop, the reload loop, peer links and the publish path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;

use super::tls::KeyedChain;
use super::{cert_not_after, ChainCheck, TrustBundle, TrustError, Usage};
use crate::base::identity::Identity;

/// What expires in the trust a node works with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// "node" (its own certificate), "ca" (a CA of the bundle), "crl".
    pub kind: &'static str,
    /// The node's identity, a CA's label, a CRL's issuer.
    pub name: String,
    /// When it expires (a CRL: its next update), Unix seconds.
    pub at: i64,
}

/// How long before a certificate expires the node starts to warn.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);
/// How long before a CRL's next update the node starts to warn: CRLs are
/// short-lived and re-signed on a schedule (`beacon ca crl` signs for 7
/// days by default), so only a schedule that stopped is warned of.
pub const CRL_WARNING: Duration = Duration::from_secs(2 * 24 * 3600);

/// Verdicts kept at most; the cache is emptied when full.
const CHAIN_CACHE_MAX: usize = 10_000;

/// The trust a node works with right now.
pub struct TrustState {
    bundle: RwLock<Arc<TrustBundle>>,
    /// Bumped on every reload; cached verdicts of older generations are void.
    generation: AtomicU64,
    /// Recent signer-chain verdicts: SHA-256 of the chain → (identity, leaf
    /// expiry, generation).
    chains: Mutex<HashMap<[u8; 32], (Identity, SystemTime, u64)>>,
    own: RwLock<Arc<KeyedChain>>,
    /// Why the bundle refuses the node's own certificate, if it does.
    own_refused: watch::Sender<Option<String>>,
}

impl TrustState {
    pub fn new(bundle: Arc<TrustBundle>, own: Arc<KeyedChain>) -> TrustState {
        TrustState {
            bundle: RwLock::new(bundle),
            generation: AtomicU64::new(0),
            chains: Mutex::new(HashMap::new()),
            own: RwLock::new(own),
            own_refused: watch::Sender::new(None),
        }
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.read().clone()
    }

    /// The node's certificate chain and key (for dialling peers).
    pub fn own(&self) -> Arc<KeyedChain> {
        self.own.read().clone()
    }

    /// The node's own certificate: its serial (hex) and when it expires.
    pub fn own_certificate(&self) -> Option<(String, SystemTime)> {
        let own = self.own();
        let leaf = own.chain.first()?;
        let (_, serial) = super::identity_of(leaf).ok()?;
        let hex = serial.iter().map(|b| format!("{b:02x}")).collect();
        Some((hex, cert_not_after(leaf)?))
    }

    /// Everything that expires in the trust in force: the node's own
    /// certificate, each CA of the bundle, each CRL's next update.
    pub fn expiries(&self) -> Vec<Expiry> {
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        };
        let mut out = Vec::new();
        let own = self.own();
        if let Some(at) = own.chain.first().and_then(cert_not_after) {
            out.push(Expiry {
                kind: "node",
                name: own.identity.to_string(),
                at: secs(at),
            });
        }
        let bundle = self.bundle();
        for ca in bundle.cas() {
            if let Some(at) = cert_not_after(&ca.cert) {
                out.push(Expiry {
                    kind: "ca",
                    name: ca.label.clone(),
                    at: secs(at),
                });
            }
        }
        for (issuer, at) in bundle.crl_next_updates() {
            out.push(Expiry {
                kind: "crl",
                name: issuer.clone(),
                at: *at,
            });
        }
        out
    }

    /// Changes on every reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts a reloaded bundle and own chain in force; voids cached verdicts.
    pub fn install(&self, bundle: Arc<TrustBundle>, own: Arc<KeyedChain>) {
        *self.bundle.write() = bundle;
        *self.own.write() = own;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Why the node's own certificate is refused, if it is.
    pub fn own_refusal(&self) -> Option<String> {
        self.own_refused.borrow().clone()
    }

    /// Records whether the node's own certificate is refused; returns
    /// whether it was before.
    pub fn set_own_refusal(&self, reason: Option<String>) -> bool {
        self.own_refused.send_replace(reason).is_some()
    }

    /// Follows [`TrustState::own_refusal`] as it changes.
    pub fn watch_own_refusal(&self) -> watch::Receiver<Option<String>> {
        self.own_refused.subscribe()
    }

    /// A chain checker for envelope signers that remembers recent verdicts.
    pub fn signer_check(&self) -> SignerCheck<'_> {
        SignerCheck { state: self }
    }
}

/// [`ChainCheck`] over the current bundle, remembering recent verdicts. A
/// verdict holds only for the trust generation it was made in (a CRL reload
/// voids them all) and until the leaf expires.
pub struct SignerCheck<'a> {
    state: &'a TrustState,
}

impl ChainCheck for SignerCheck<'_> {
    fn check(
        &self,
        leaf: &CertificateDer<'_>,
        rest: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Identity, TrustError> {
        // The cache key: SHA-256 over the length-prefixed chain, hashed in place.
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for c in std::iter::once(leaf).chain(rest.iter()) {
            ctx.update(&(c.len() as u32).to_be_bytes());
            ctx.update(c.as_ref());
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        let generation = self.state.generation();
        let now_sys = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        if let Some((id, not_after, g)) = self.state.chains.lock().get(&key) {
            if *g == generation && now_sys < *not_after {
                return Ok(id.clone());
            }
        }
        let verified = self
            .state
            .bundle()
            .verify(leaf, rest, now, Usage::ClientAuth)?;
        if let Some(not_after) = cert_not_after(leaf) {
            let mut map = self.state.chains.lock();
            if map.len() >= CHAIN_CACHE_MAX {
                map.clear();
            }
            map.insert(key, (verified.identity.clone(), not_after, generation));
        }
        Ok(verified.identity)
    }
}

/// Warns in the log, from [`EXPIRY_WARNING`] before, of what is about to
/// expire in the trust in force (and of what has), once a day each, until
/// `shutdown`: certificates and CRLs must never go dark unannounced.
pub async fn watch_expiries(trust: Arc<TrustState>, shutdown: tokio_util::sync::CancellationToken) {
    let mut warned: HashMap<(&'static str, String, i64), std::time::Instant> = HashMap::new();
    loop {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        for e in trust.expiries() {
            let left = e.at - now;
            let threshold = if e.kind == "crl" {
                CRL_WARNING
            } else {
                EXPIRY_WARNING
            };
            if left > threshold.as_secs() as i64 {
                continue;
            }
            let key = (e.kind, e.name.clone(), e.at);
            if warned
                .get(&key)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(24 * 3600))
            {
                continue;
            }
            warned.insert(key, std::time::Instant::now());
            let when = describe_left(left, e.kind == "crl");
            let at = time::OffsetDateTime::from_unix_timestamp(e.at)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| e.at.to_string());
            match e.kind {
                "node" => tracing::warn!(target: "beacon::audit", node = %e.name, expires_at = %at,
                    "this node's certificate {when}: renew it (beacon ca renew --cert …), install it and SIGHUP the node; an expired certificate serves no one"),
                "ca" => tracing::warn!(target: "beacon::audit", ca = %e.name, expires_at = %at,
                    "the CA certificate {:?} of the trust bundle {when}: every certificate it issued stops being accepted then", e.name),
                _ => tracing::warn!(target: "beacon::audit", issuer = %e.name, next_update = %at,
                    "the CRL of {} {when}: re-sign it (beacon ca crl, on a schedule) and bring it to every node that trusts that CA", e.name),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}

/// "expires in 3 days" / "expired 2 hours ago"; for a CRL, "is due for
/// its next update in …" / "was due … ago".
fn describe_left(left: i64, crl: bool) -> String {
    let span = |s: i64| {
        let s = s.unsigned_abs();
        match s {
            s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
            s if s >= 2 * 3600 => format!("{} hours", s / 3600),
            s => format!("{} minutes", (s / 60).max(1)),
        }
    };
    match (left >= 0, crl) {
        (true, false) => format!("expires in {}", span(left)),
        (false, false) => format!("expired {} ago", span(left)),
        (true, true) => format!("is due for its next update in {}", span(left)),
        (false, true) => format!(
            "was due for its next update {} ago (it is still applied)",
            span(left)
        ),
    }
}
