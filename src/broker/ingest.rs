//! One admission path for everything that enters the log: a client's or
//! node's publish (Publish, PublishStream) and a peer's relay. The steps, in
//! the order the API promises:
//!
//! 1. size (the envelope limit);
//! 2. the canonical bytes (what is stored, digested and served);
//! 3. verification (`bulletin::verify_envelope_with` for publishes, with the
//!    sender for clients; for relays at now, or, for a signer whose
//!    certificate has expired since, at the time a witnessed log is proven
//!    to have held the bulletin by);
//! 4. for relays: the origin node, and this node's own policy for its member;
//! 5. the record to append ([`NewRecord`]).
//!
//! Nothing here knows the API's messages: the gRPC edge hands in an envelope
//! (and its canonical bytes), a peer link hands in the bytes it received.

use std::time::SystemTime;

use crate::base::config::CarrySealed;
use crate::base::identity::{Identity, RoleKind};
use crate::domain::bulletin::{self, codec, BulletinError, Envelope, Meta, Relation, Tlp};
use crate::domain::keys::KeyStore;
use crate::domain::policy::Policy;
use crate::domain::sealed;
use crate::store::{NewRecord, Related, Replaced, Spans};
use crate::trust::state::TrustState;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// Size, form, signature, signer or fields of the envelope.
    #[error(transparent)]
    Bulletin(#[from] BulletinError),
    #[error("the envelope does not match the digest sent with it")]
    Digest,
    #[error("the envelope is not in its canonical encoding")]
    NotCanonical,
    #[error("origin node {0:?} is not a node identity")]
    Origin(String),
    #[error("bulletin {id} of {publisher} is not readable by this node's member")]
    NotReadable { id: String, publisher: String },
    #[error("{0} signed a bulletin naming the client it was submitted by: only a member's node signs for its clients")]
    SubmittedBy(String),
    #[error("the signer's certificate has expired: a relay of its bulletin is taken only with proof that a log held it while the certificate was valid (a checkpoint cosigned in time)")]
    SignerExpired,
    /// A sealed bulletin's form, outer signature or fields.
    #[error(transparent)]
    Sealed(Box<crate::domain::sealed::SealError>),
    /// A recipient key a sealed bulletin names, at its creation.
    #[error(transparent)]
    Key(Box<crate::domain::keys::KeyError>),
    #[error("this node requires {0} bulletins to be sealed to their recipients' keys: publish it with beacon publish --seal (a STIX bundle: beacon publish --stix FILE --seal)")]
    MustBeSealed(&'static str),
}

impl From<crate::domain::sealed::SealError> for IngestError {
    fn from(e: crate::domain::sealed::SealError) -> Self {
        IngestError::Sealed(Box::new(e))
    }
}

impl From<crate::domain::keys::KeyError> for IngestError {
    fn from(e: crate::domain::keys::KeyError) -> Self {
        IngestError::Key(Box::new(e))
    }
}

/// What admission needs of the node.
pub struct Ingest<'a> {
    /// This node: the origin of what is published here, and the member
    /// whose policy decides what it keeps of relays.
    pub node: &'a Identity,
    pub trust: &'a TrustState,
    pub policy: &'a Policy,
    /// `limits.max_envelope_bytes`.
    pub max_envelope_bytes: usize,
    /// The acceptance time each record reserves (the store's).
    pub spans: Spans,
    /// The recipient keys a sealed bulletin published here is checked
    /// against.
    pub keys: &'a KeyStore,
    /// `[policy] require_sealed`: TLP labels published here only sealed.
    pub require_sealed: &'a [String],
    /// `[federation] carry_sealed`: whether relays of sealed bulletins this
    /// member may not read are kept (to pass them on).
    pub carry_sealed: CarrySealed,
}

/// A publish admitted: the record to append, and what was verified.
pub struct Admitted {
    pub record: NewRecord,
    /// Who signed it.
    pub signer: Identity,
    pub tlp: Tlp,
    /// The audience groups it names (none when sealed).
    pub groups: Vec<String>,
    pub sealed: bool,
}

impl Ingest<'_> {
    /// Step 1: the size of the envelope's canonical bytes.
    fn check_size(&self, size: usize) -> Result<(), IngestError> {
        if size > self.max_envelope_bytes {
            return Err(BulletinError::TooLarge {
                size,
                limit: self.max_envelope_bytes,
            }
            .into());
        }
        Ok(())
    }

    /// A publish by `sender` (a client must have signed it itself; a node
    /// publishes for its member): `env` as it arrived and `bytes`, its
    /// canonical encoding.
    pub fn publish(
        &self,
        env: &Envelope,
        bytes: Vec<u8>,
        sender: &Identity,
    ) -> Result<Admitted, IngestError> {
        self.check_size(bytes.len())?;
        if env.payload_type == sealed::SEALED_PAYLOAD_TYPE {
            return self.publish_sealed(env, bytes, sender);
        }
        let client = (sender.kind() == RoleKind::Client).then_some(sender);
        let verified = bulletin::verify_envelope_with(
            env,
            &self.trust.signer_check(),
            SystemTime::now(),
            client,
        )?;
        // Only a member's node signs for one of its clients.
        if !verified.bulletin().submitted_by.is_empty()
            && verified.signer().kind() != RoleKind::Node
        {
            return Err(IngestError::SubmittedBy(verified.signer().to_string()));
        }
        // A new bulletin's indicator values must be what their types say
        // (relays are not held to it: an older node may have accepted one).
        let bad = bulletin::indicator_problems(verified.bulletin());
        if !bad.is_empty() {
            return Err(IngestError::Bulletin(BulletinError::Invalid(
                bad.join("; "),
            )));
        }
        if self.must_be_sealed(verified.tlp()) {
            return Err(IngestError::MustBeSealed(verified.tlp().label()));
        }
        let related = related(&verified.bulletin().relation, true);
        let digest = bulletin::sha256(&bytes);
        let record = NewRecord {
            meta: Meta::of(&verified, digest, &self.node.to_string()),
            envelope: bytes,
            payload_digest: bulletin::sha256(&env.payload),
            related,
            span: (self.spans.of)(verified.bulletin()),
        };
        Ok(Admitted {
            record,
            signer: verified.signer().clone(),
            tlp: verified.tlp(),
            groups: verified.bulletin().audience.groups.clone(),
            sealed: false,
        })
    }

    fn must_be_sealed(&self, tlp: Tlp) -> bool {
        self.require_sealed
            .iter()
            .any(|l| Tlp::parse(l) == Some(tlp))
    }

    /// A sealed publish: its form and outer signature (by the sender, for
    /// a client), its clear fields, and every recipient key it is sealed to
    /// — known here, valid and not revoked when the bulletin was made. What
    /// it holds is not read (the node cannot).
    fn publish_sealed(
        &self,
        env: &Envelope,
        bytes: Vec<u8>,
        sender: &Identity,
    ) -> Result<Admitted, IngestError> {
        let now = SystemTime::now();
        let v = sealed::verify(env, &self.trust.signer_check(), now)?;
        if sender.kind() == RoleKind::Client && &v.signer != sender {
            return Err(BulletinError::NotPeer {
                signer: v.signer.to_string(),
                peer: sender.to_string(),
            }
            .into());
        }
        v.check_fields(now)?;
        let h = &v.sealed.header;
        let made = h.created_at.unwrap_or(now).min(now);
        for (member, key_id) in &h.recipients {
            self.keys.usable_at(member, key_id, made)?;
        }
        let tlp = codec::tlp_from_i32(h.tlp).unwrap_or(Tlp::Red);
        let digest = bulletin::sha256(&bytes);
        let record = NewRecord {
            meta: v.meta(digest, &self.node.to_string()),
            envelope: bytes,
            payload_digest: bulletin::sha256(&env.payload),
            related: related(&h.relation, true),
            // Served whole or not at all (never as STIX parts).
            span: 1,
        };
        Ok(Admitted {
            record,
            signer: v.signer.clone(),
            tlp,
            groups: Vec::new(),
            sealed: true,
        })
    }

    /// A peer's delivery: the envelope `bytes` it sent with `digest_sent`,
    /// first accepted by `origin` (a node; empty: the peer itself) as its
    /// `origin_seq` (0: the peer's sequence `peer_seq`). Verified now; a
    /// signer whose certificate has expired since is accepted only at
    /// `logged_by`, a time a witnessed log is proven to have held the
    /// bulletin by (never by the bulletin's own claim of when it was made).
    #[allow(clippy::too_many_arguments)]
    pub fn relay(
        &self,
        bytes: &[u8],
        digest_sent: &[u8],
        origin: &str,
        origin_seq: u64,
        peer: &Identity,
        peer_seq: u64,
        logged_by: Option<SystemTime>,
    ) -> Result<NewRecord, IngestError> {
        self.check_size(bytes.len())?;
        let digest = bulletin::sha256(bytes);
        if digest.as_slice() != digest_sent {
            return Err(IngestError::Digest);
        }
        let env =
            bulletin::codec::decode_envelope(bytes).map_err(BulletinError::MalformedEnvelope)?;
        // Every node stores the one canonical encoding, so the same bulletin
        // has the same digest everywhere (duplicates and conflicts rest on it).
        if bulletin::codec::encode_envelope(&env) != bytes {
            return Err(IngestError::NotCanonical);
        }
        let chains = self.trust.signer_check();
        if env.payload_type == sealed::SEALED_PAYLOAD_TYPE {
            return self.relay_sealed(
                &env, bytes, digest, origin, origin_seq, peer, peer_seq, logged_by,
            );
        }
        let verified = match bulletin::verify_envelope_with(&env, &chains, SystemTime::now(), None)
        {
            Err(BulletinError::Signer(crate::trust::TrustError::Expired)) => match logged_by {
                Some(t) => bulletin::verify_envelope_with(&env, &chains, t, None)?,
                None => return Err(IngestError::SignerExpired),
            },
            other => other?,
        };
        let origin = origin_of(origin, peer)?;
        let mut meta = Meta::of(&verified, digest, &origin.to_string());
        meta.origin_seq = match origin_seq {
            0 => peer_seq,
            s => s,
        };
        self.keeps(&meta, false)?;
        // A superseded or retracted bulletin may be one this member cannot
        // read; the origin node checked the relation when it accepted it.
        // Where this node holds it, it is marked as replaced all the same.
        Ok(NewRecord {
            meta,
            envelope: bytes.to_vec(),
            payload_digest: bulletin::sha256(&env.payload),
            related: related(&verified.bulletin().relation, false),
            span: (self.spans.of)(verified.bulletin()),
        })
    }

    /// The peer filters with its policy; this node keeps only what its own
    /// member may read by its own policy (group definitions may differ) —
    /// and, carrying sealed bulletins, any sealed one.
    fn keeps(&self, meta: &Meta, sealed: bool) -> Result<(), IngestError> {
        let member = self
            .node
            .member()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        let carried = sealed && self.carry_sealed == CarrySealed::Any;
        if !carried && !self.policy.may_read_meta(&member, meta) {
            return Err(IngestError::NotReadable {
                id: meta.id.clone(),
                publisher: meta.publisher.clone(),
            });
        }
        Ok(())
    }

    /// A peer's delivery of a sealed bulletin: its form and outer signature
    /// (at now, or — its signer expired since — at `logged_by`), its clear
    /// fields. Its recipient keys were checked where it was published.
    #[allow(clippy::too_many_arguments)]
    fn relay_sealed(
        &self,
        env: &Envelope,
        bytes: &[u8],
        digest: [u8; 32],
        origin: &str,
        origin_seq: u64,
        peer: &Identity,
        peer_seq: u64,
        logged_by: Option<SystemTime>,
    ) -> Result<NewRecord, IngestError> {
        use crate::domain::sealed::SealError;
        let chains = self.trust.signer_check();
        let now = SystemTime::now();
        let v = match sealed::verify(env, &chains, now) {
            Err(SealError::Signature(BulletinError::Signer(crate::trust::TrustError::Expired))) => {
                match logged_by {
                    Some(t) => sealed::verify(env, &chains, t)?,
                    None => return Err(IngestError::SignerExpired),
                }
            }
            other => other?,
        };
        v.check_fields(v.sealed.header.created_at.unwrap_or(now).min(now))?;
        let origin = origin_of(origin, peer)?;
        let mut meta = v.meta(digest, &origin.to_string());
        meta.origin_seq = match origin_seq {
            0 => peer_seq,
            s => s,
        };
        self.keeps(&meta, true)?;
        Ok(NewRecord {
            meta,
            envelope: bytes.to_vec(),
            payload_digest: bulletin::sha256(&env.payload),
            related: related(&v.sealed.header.relation, false),
            span: 1,
        })
    }
}

/// The node that first accepted a relayed bulletin: `origin` (a node), or
/// the peer itself when it names none.
fn origin_of(origin: &str, peer: &Identity) -> Result<Identity, IngestError> {
    if origin.is_empty() {
        return Ok(peer.clone());
    }
    match origin.parse::<Identity>() {
        Ok(id) if id.kind() == RoleKind::Node => Ok(id),
        _ => Err(IngestError::Origin(origin.to_owned())),
    }
}

/// The check a restore applies to each record (handed to
/// `store::backup::restore` as its `Verify`), against `chains` (the
/// node's CAs, without revocations): the envelope's signature, its chain
/// (at the bulletin's creation time if the signer has expired since), and
/// that the signed bulletin is the one the record names.
pub fn stored_check(
    chains: &dyn crate::trust::ChainCheck,
) -> impl Fn(&crate::store::Record) -> Result<[u8; 32], String> + '_ {
    move |rec: &crate::store::Record| {
        let env = bulletin::codec::decode_envelope(&rec.envelope)?;
        let (id, publisher) = if env.payload_type == sealed::SEALED_PAYLOAD_TYPE {
            let h = sealed::verify_stored(&env, chains, SystemTime::now())
                .map_err(|e| e.to_string())?
                .sealed
                .header;
            (h.id, h.publisher)
        } else {
            let v = bulletin::verify_stored_envelope(&env, chains, SystemTime::now())
                .map_err(|e| e.to_string())?;
            let b = v.bulletin();
            (b.id.clone(), b.publisher.clone())
        };
        if id != rec.meta.id || publisher != rec.meta.publisher {
            return Err(format!(
                "the signed bulletin is {id} of {publisher}, not {} of {}",
                rec.meta.id, rec.meta.publisher
            ));
        }
        Ok(bulletin::sha256(&env.payload))
    }
}

/// What a bulletin says of an earlier one of its publisher, for the store.
fn related(relation: &Option<Relation>, required: bool) -> Option<Related> {
    let (how, id) = match relation {
        Some(Relation::Supersedes(id)) => (Replaced::Superseded, id),
        Some(Relation::Retracts(id)) => (Replaced::Retracted, id),
        None => return None,
    };
    Some(Related {
        how,
        id: id.clone(),
        required,
    })
}
