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
use crate::identity::Identity;

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
