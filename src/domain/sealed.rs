//! Sealed bulletins: a TLP:RED (or AMBER) bulletin that only its
//! recipients' keys open, which relays and disks carry without reading.
//!
//! Sign → encrypt → sign, the construction age, MLS and COSE-HPKE converge
//! on (see `proto/beacon/v1/bulletin.proto`, `SealedBulletin`):
//! - the **inner** envelope is the ordinary signed bulletin, so what a
//!   recipient opens is a bulletin its publisher signed (its signature's
//!   chain left out: the outer signature carries the same chain);
//! - it is padded (Padmé) and encrypted under a random 32-byte **content
//!   key** with the suite's AEAD (key derived by HKDF-SHA256; the header's
//!   SHA-256 as AAD);
//! - the content key is **wrapped** per recipient key with HPKE Base mode,
//!   its `info` binding the header's hash, the member and the key id (a
//!   wrap cannot be moved to another bulletin or another key);
//! - the clear **header** names the recipients and commits to the content
//!   key (AES-GCM does not: one ciphertext could open to two texts under two
//!   keys); the **outer** envelope, signed by the publisher, covers header,
//!   wraps and ciphertext — so the recipients are signed (no surreptitious
//!   forwarding: a recipient cannot re-wrap it to a third party under the
//!   publisher's signature).
//!
//! A recipient opens only after: the outer signature verifies (the caller's
//! `verify`), a wrap is for one of its keys, the commitment matches, the
//! payload decrypts, the inner signature verifies with the outer signer's
//! key, and the inner bulletin agrees with the clear header.

use std::time::SystemTime;

use aws_lc_rs::{aead, digest, hkdf, hmac};
use prost::Message;

use crate::base::identity::Identity;
use crate::base::proto::v1 as pb;
use crate::domain::bulletin::codec;
use crate::domain::bulletin::{
    self, Bulletin, BulletinError, Envelope, Relation, Signer, Tlp, PAYLOAD_TYPE,
};
use crate::domain::hpke::{self, HpkeError, Suite};
pub use crate::domain::keys::{hex, key_id, KEY_ID_LEN};
use crate::trust::ChainCheck;

/// The DSSE payload type of a sealed bulletin.
pub const SEALED_PAYLOAD_TYPE: &str = "application/vnd.beacon.sealed-bulletin.v1+protobuf";

/// Recipient keys a sealed bulletin may name.
pub const MAX_RECIPIENTS: usize = 256;
/// Bytes of the content key.
const CONTENT_KEY_LEN: usize = 32;
/// The smallest padded length: short bulletins all look alike.
const MIN_PADDED: usize = 256;

const COMMITMENT_LABEL: &[u8] = b"beacon sealed-bulletin v1 key commitment";
const PAYLOAD_LABEL: &[u8] = b"beacon sealed-bulletin v1 payload";
const WRAP_LABEL: &[u8] = b"beacon sealed-bulletin v1 wrap";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("sealed bulletin: {0}")]
    Malformed(String),
    #[error("the sealed bulletin's suite (KEM {0:#06x}, KDF {1:#06x}, AEAD {2:#06x}) is not one Beacon seals with")]
    UnknownSuite(u32, u32, u32),
    #[error(
        "a {0} bulletin is not sealed: sealing is for TLP:AMBER, TLP:AMBER+STRICT and TLP:RED"
    )]
    NotSealable(&'static str),
    #[error("a sealed bulletin names no recipient")]
    NoRecipients,
    #[error("a sealed bulletin names {0} recipient keys, the limit is {MAX_RECIPIENTS}")]
    TooManyRecipients(usize),
    #[error("recipient key {key_id} of {member} is named twice")]
    RepeatedRecipient { member: String, key_id: String },
    #[error("the publishing member {0} is not among the recipients (it must be able to read what it published)")]
    PublisherNotRecipient(String),
    #[error("recipient key {key_id} of {member} is a {key_suite} key; this bulletin is sealed with {suite}")]
    MixedSuites {
        member: String,
        key_id: String,
        key_suite: &'static str,
        suite: &'static str,
    },
    #[error("member {0} of the audience has no recipient key")]
    NoKeyFor(String),
    #[error("a sealed bulletin names its audience by member; groups ({0}) are resolved by nodes, which cannot read it")]
    GroupsInAudience(String),
    #[error("{wraps} wraps for {recipients} recipients")]
    WrapCount { wraps: usize, recipients: usize },
    #[error("none of the given keys is a recipient of this bulletin (it is sealed to {0})")]
    NotARecipient(String),
    #[error("the content key does not match the header's commitment: the publisher gave recipients different keys")]
    Commitment,
    #[error("the sealed content does not decrypt: altered")]
    Decrypt,
    #[error("the inner bulletin disagrees with the clear header on {0}")]
    Disagrees(&'static str),
    #[error("the inner envelope: {0}")]
    Inner(BulletinError),
    #[error(transparent)]
    Signature(#[from] BulletinError),
    #[error(transparent)]
    Hpke(#[from] HpkeError),
}

/// A recipient key as a sealer uses it: whose, which suite, its public key
/// (from a verified [`crate::domain::keys::KeyRecord`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientKey {
    pub member: String,
    pub suite: Suite,
    pub public: Vec<u8>,
}

impl RecipientKey {
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        key_id(self.suite, &self.public)
    }
}

impl From<&crate::domain::keys::KeyRecord> for RecipientKey {
    fn from(r: &crate::domain::keys::KeyRecord) -> Self {
        RecipientKey {
            member: r.member.clone(),
            suite: r.suite,
            public: r.public.clone(),
        }
    }
}

/// A private recipient key, as a member's client holds it.
#[derive(Clone)]
pub struct OpeningKey {
    pub member: String,
    pub suite: Suite,
    pub private: Vec<u8>,
    pub key_id: [u8; KEY_ID_LEN],
}

impl std::fmt::Debug for OpeningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpeningKey")
            .field("member", &self.member)
            .field("suite", &self.suite)
            .field("key_id", &hex(&self.key_id))
            .finish_non_exhaustive()
    }
}

impl OpeningKey {
    /// The key of `member` whose private part is `private`.
    pub fn new(member: &str, suite: Suite, private: Vec<u8>) -> Result<OpeningKey, SealError> {
        let public = hpke::public_of(suite, &private)?;
        Ok(OpeningKey {
            member: member.to_owned(),
            suite,
            key_id: key_id(suite, &public),
            private,
        })
    }
}

/// The clear header, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub id: String,
    pub publisher: String,
    pub created_at: Option<SystemTime>,
    pub expires_at: Option<SystemTime>,
    pub tlp: i32,
    /// (member, key id), in wrap order.
    pub recipients: Vec<(String, [u8; KEY_ID_LEN])>,
    pub relation: Option<Relation>,
    /// 0 (unspecified) when sealed too.
    pub kind: i32,
    pub severity: i32,
    pub suite: Suite,
    pub commitment: [u8; 32],
    pub padded_length: u32,
}

impl Header {
    /// The members it is sealed to, each once, in order.
    pub fn members(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (m, _) in &self.recipients {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }

    fn encode(&self) -> Vec<u8> {
        let (kem, kdf, aead) = self.suite.ids();
        pb::SealedHeader {
            id: self.id.clone(),
            publisher: self.publisher.clone(),
            created_at: self.created_at.map(codec::timestamp),
            expires_at: self.expires_at.map(codec::timestamp),
            tlp: self.tlp,
            recipients: self
                .recipients
                .iter()
                .map(|(m, k)| pb::SealedRecipient {
                    member: m.clone(),
                    key_id: k.to_vec(),
                })
                .collect(),
            relation: self.relation.as_ref().map(|r| match r {
                Relation::Supersedes(id) => pb::sealed_header::Relation::Supersedes(id.clone()),
                Relation::Retracts(id) => pb::sealed_header::Relation::Retracts(id.clone()),
            }),
            kind: self.kind,
            severity: self.severity,
            kem_id: u32::from(kem),
            kdf_id: u32::from(kdf),
            aead_id: u32::from(aead),
            key_commitment: self.commitment.to_vec(),
            padded_length: self.padded_length,
        }
        .encode_to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<Header, SealError> {
        let bad = |m: String| SealError::Malformed(m);
        let h = pb::SealedHeader::decode(bytes)
            .map_err(|e| bad(format!("the header is not well-formed protobuf: {e}")))?;
        let small = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        let suite = Suite::from_ids(small(h.kem_id), small(h.kdf_id), small(h.aead_id))
            .ok_or(SealError::UnknownSuite(h.kem_id, h.kdf_id, h.aead_id))?;
        let commitment: [u8; 32] = h.key_commitment.as_slice().try_into().map_err(|_| {
            bad(format!(
                "a key commitment of {} bytes",
                h.key_commitment.len()
            ))
        })?;
        if h.recipients.len() > MAX_RECIPIENTS {
            return Err(SealError::TooManyRecipients(h.recipients.len()));
        }
        let mut recipients = Vec::with_capacity(h.recipients.len());
        for r in h.recipients {
            let id: [u8; KEY_ID_LEN] = r
                .key_id
                .as_slice()
                .try_into()
                .map_err(|_| bad(format!("a key id of {} bytes", r.key_id.len())))?;
            recipients.push((r.member, id));
        }
        Ok(Header {
            id: h.id,
            publisher: h.publisher,
            created_at: codec::time_from(h.created_at).map_err(bad)?,
            expires_at: codec::time_from(h.expires_at).map_err(bad)?,
            tlp: h.tlp,
            recipients,
            relation: match h.relation {
                Some(pb::sealed_header::Relation::Supersedes(id)) => Some(Relation::Supersedes(id)),
                Some(pb::sealed_header::Relation::Retracts(id)) => Some(Relation::Retracts(id)),
                None => None,
            },
            kind: h.kind,
            severity: h.severity,
            suite,
            commitment,
            padded_length: h.padded_length,
        })
    }

    /// What every holder can check without a key: a sealable marking,
    /// recipients present, not repeated, the publisher among them.
    fn check(&self) -> Result<(), SealError> {
        match codec::tlp_from_i32(self.tlp) {
            Some(Tlp::Clear) => return Err(SealError::NotSealable("TLP:CLEAR")),
            Some(Tlp::Green) => return Err(SealError::NotSealable("TLP:GREEN")),
            Some(_) => {}
            None => {
                return Err(SealError::Malformed(format!(
                    "unknown TLP value {}",
                    self.tlp
                )))
            }
        }
        if self.recipients.is_empty() {
            return Err(SealError::NoRecipients);
        }
        if self.recipients.len() > MAX_RECIPIENTS {
            return Err(SealError::TooManyRecipients(self.recipients.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (m, k) in &self.recipients {
            if !seen.insert((m, k)) {
                return Err(SealError::RepeatedRecipient {
                    member: m.clone(),
                    key_id: hex(k),
                });
            }
        }
        if !self.recipients.iter().any(|(m, _)| *m == self.publisher) {
            return Err(SealError::PublisherNotRecipient(self.publisher.clone()));
        }
        Ok(())
    }
}

/// A sealed bulletin as parsed from its outer payload, checked for form
/// (not yet for its signature: see [`verify`]).
#[derive(Debug, Clone)]
pub struct Sealed {
    pub header: Header,
    header_bytes: Vec<u8>,
    wraps: Vec<(Vec<u8>, Vec<u8>)>,
    ciphertext: Vec<u8>,
}

impl Sealed {
    /// Parses and checks the form of an outer payload: the header, a wrap
    /// per recipient of the exact sizes the suite gives, a ciphertext as
    /// long as the padded length says.
    pub fn parse(payload: &[u8]) -> Result<Sealed, SealError> {
        let s = pb::SealedBulletin::decode(payload).map_err(|e| {
            SealError::Malformed(format!("the payload is not well-formed protobuf: {e}"))
        })?;
        let header = Header::decode(&s.header)?;
        header.check()?;
        if s.wraps.len() != header.recipients.len() {
            return Err(SealError::WrapCount {
                wraps: s.wraps.len(),
                recipients: header.recipients.len(),
            });
        }
        let suite = header.suite;
        for w in &s.wraps {
            // Exact lengths: no partitioning oracle through odd sizes.
            if w.enc.len() != suite.public_len()
                || w.wrapped_key.len() != CONTENT_KEY_LEN + suite.tag_len()
            {
                return Err(SealError::Malformed(format!(
                    "a wrap of {}+{} bytes (a {} wrap is {}+{})",
                    w.enc.len(),
                    w.wrapped_key.len(),
                    suite.name(),
                    suite.public_len(),
                    CONTENT_KEY_LEN + suite.tag_len()
                )));
            }
        }
        if s.ciphertext.len() != header.padded_length as usize + suite.tag_len() {
            return Err(SealError::Malformed(format!(
                "a ciphertext of {} bytes for a padded length of {}",
                s.ciphertext.len(),
                header.padded_length
            )));
        }
        Ok(Sealed {
            header,
            header_bytes: s.header,
            wraps: s
                .wraps
                .into_iter()
                .map(|w| (w.enc, w.wrapped_key))
                .collect(),
            ciphertext: s.ciphertext,
        })
    }

    fn header_hash(&self) -> [u8; 32] {
        sha256(&self.header_bytes)
    }
}

/// A sealed bulletin whose outer signature verified: who signed it, and
/// the header anyone may read.
#[derive(Debug, Clone)]
pub struct VerifiedSealed {
    pub sealed: Sealed,
    pub signer: Identity,
    /// The outer signature's chain (DER, leaf first): the inner signature
    /// is checked with its leaf.
    chain: Vec<Vec<u8>>,
    /// The outer signature's key id (a hint), given back to the inner one.
    keyid: String,
}

/// Checks an outer envelope: its type, one signature whose chain `chains`
/// accepts at `now`, the signature, the form of what it holds, and that
/// the signer belongs to the publishing member.
pub fn verify(
    env: &Envelope,
    chains: &dyn ChainCheck,
    now: SystemTime,
) -> Result<VerifiedSealed, SealError> {
    let signer = bulletin::verify_statement(env, SEALED_PAYLOAD_TYPE, chains, now)?;
    let sealed = Sealed::parse(&env.payload)?;
    let member = signer.member().map(|m| m.as_str().to_owned());
    if member.as_deref() != Some(sealed.header.publisher.as_str()) {
        return Err(SealError::Signature(BulletinError::WrongMember {
            signer: signer.to_string(),
            publisher: sealed.header.publisher.clone(),
        }));
    }
    Ok(VerifiedSealed {
        sealed,
        signer,
        chain: env.signatures[0].cert_chain.clone(),
        keyid: env.signatures[0].keyid.clone(),
    })
}

impl VerifiedSealed {
    /// The clear header's fields checked as any bulletin's are (id,
    /// publisher, known TLP and — unless hidden — kind and severity, times,
    /// relation, recipients as member ids), at `now`.
    pub fn check_fields(&self, now: SystemTime) -> Result<(), SealError> {
        let h = &self.sealed.header;
        let mut stub = Bulletin::draft(
            &h.publisher,
            bulletin::Kind::Other,
            bulletin::Severity::Info,
            Tlp::Red,
            "sealed",
            "sealed",
        );
        stub.id = h.id.clone();
        stub.created_at = h.created_at;
        stub.expires_at = h.expires_at;
        stub.tlp = h.tlp;
        if h.kind != 0 {
            stub.kind = h.kind;
        }
        if h.severity != 0 {
            stub.severity = h.severity;
        }
        stub.relation = h.relation.clone();
        stub.audience.members = h
            .members()
            .into_iter()
            .filter(|m| *m != h.publisher)
            .collect();
        if stub.audience.members.is_empty() {
            // Sealed to the publisher alone: an audience of itself.
            stub.audience.members.push(h.publisher.clone());
        }
        bulletin::validate(&stub, now)
            .map(|_| ())
            .map_err(SealError::Signature)
    }

    /// The summary the store, policy and filters work from: only clear
    /// fields (no topics; kind and severity 0 when sealed too); the
    /// audience is the members it is sealed to.
    pub fn meta(&self, digest: [u8; 32], origin_node: &str) -> bulletin::Meta {
        let h = &self.sealed.header;
        bulletin::Meta {
            id: h.id.clone(),
            publisher: h.publisher.clone(),
            digest,
            origin_node: origin_node.to_owned(),
            origin_seq: 0,
            kind: u8::try_from(h.kind).unwrap_or(0),
            severity: u8::try_from(h.severity).unwrap_or(0),
            tlp: u8::try_from(h.tlp).unwrap_or(0),
            created_at: h.created_at,
            expires_at: h.expires_at,
            audience_members: h.members(),
            audience_groups: Vec::new(),
            topics: Vec::new(),
        }
    }
}

/// Whether canonical envelope bytes hold a sealed bulletin: its first field
/// (the payload type, written first by the canonical encoding) says so. No
/// decoding: the read paths ask it of every record.
pub fn is_sealed(envelope: &[u8]) -> bool {
    let t = SEALED_PAYLOAD_TYPE.as_bytes();
    // Field 1, length-delimited (0x0a), then a one-byte length.
    envelope.len() > t.len() + 2
        && envelope[0] == 0x0a
        && usize::from(envelope[1]) == t.len()
        && &envelope[2..2 + t.len()] == t
}

/// As [`verify`] for a sealed bulletin accepted earlier (read back from a
/// node, exported, restored): a signer whose certificate has expired since
/// is accepted when the chain was valid at the header's creation time.
/// Revocation applies whatever the time.
pub fn verify_stored(
    env: &Envelope,
    chains: &dyn ChainCheck,
    now: SystemTime,
) -> Result<VerifiedSealed, SealError> {
    match verify(env, chains, now) {
        Err(e @ SealError::Signature(BulletinError::Signer(crate::trust::TrustError::Expired))) => {
            let made = Sealed::parse(&env.payload)
                .ok()
                .and_then(|s| s.header.created_at)
                .filter(|c| *c <= now)
                .ok_or(e)?;
            verify(env, chains, made)
        }
        other => other,
    }
}

/// What a recipient gets: the inner bulletin and its envelope (whole again:
/// the chain put back, so it verifies on its own like any bulletin).
#[derive(Debug, Clone)]
pub struct Opened {
    pub bulletin: Bulletin,
    pub envelope: Envelope,
    pub signer: Identity,
    /// The member and key id it was opened with.
    pub opened_with: (String, [u8; KEY_ID_LEN]),
}

/// Seals `inner` — a bulletin envelope signed by `signer` — to `recipients`
/// (every key of every member it names; the publishing member among them),
/// and signs the result with `signer`. `hide_kind` leaves the kind and
/// severity out of the clear header.
pub fn seal(
    signer: &Signer,
    inner: &Envelope,
    recipients: &[RecipientKey],
    hide_kind: bool,
) -> Result<Envelope, SealError> {
    seal_with(signer, inner, recipients, hide_kind, |_| {})
}

/// [`seal`], with the header changed by `edit` before it is bound (tests
/// make dishonest seals with it).
fn seal_with(
    signer: &Signer,
    inner: &Envelope,
    recipients: &[RecipientKey],
    hide_kind: bool,
    edit: impl FnOnce(&mut Header),
) -> Result<Envelope, SealError> {
    if inner.payload_type != PAYLOAD_TYPE || inner.signatures.len() != 1 {
        return Err(SealError::Inner(BulletinError::PayloadType(
            inner.payload_type.clone(),
        )));
    }
    if inner.signatures[0].cert_chain.first().map(Vec::as_slice) != Some(signer.leaf()) {
        return Err(SealError::Inner(BulletinError::Key(
            "the inner envelope is not signed by the sealing signer".into(),
        )));
    }
    let b = codec::decode_bulletin(&inner.payload).map_err(BulletinError::MalformedPayload)?;
    if !b.audience.groups.is_empty() {
        return Err(SealError::GroupsInAudience(b.audience.groups.join(", ")));
    }
    let Some(suite) = recipients.first().map(|r| r.suite) else {
        return Err(SealError::NoRecipients);
    };
    for r in recipients {
        if r.suite != suite {
            return Err(SealError::MixedSuites {
                member: r.member.clone(),
                key_id: hex(&r.key_id()),
                key_suite: r.suite.name(),
                suite: suite.name(),
            });
        }
    }
    for m in &b.audience.members {
        if !recipients.iter().any(|r| &r.member == m) {
            return Err(SealError::NoKeyFor(m.clone()));
        }
    }
    if recipients
        .iter()
        .any(|r| r.member != b.publisher && !b.audience.members.contains(&r.member))
    {
        return Err(SealError::Disagrees(
            "recipients (a key of a member outside the audience)",
        ));
    }
    let content_key = random_key()?;
    let plaintext = pad(&codec::encode_envelope(&bare(inner)));
    let header = Header {
        id: b.id.clone(),
        publisher: b.publisher.clone(),
        created_at: b.created_at,
        expires_at: b.expires_at,
        tlp: b.tlp,
        recipients: recipients
            .iter()
            .map(|r| (r.member.clone(), r.key_id()))
            .collect(),
        relation: b.relation.clone(),
        kind: if hide_kind { 0 } else { b.kind },
        severity: if hide_kind { 0 } else { b.severity },
        suite,
        commitment: commitment(&content_key),
        padded_length: u32::try_from(plaintext.len())
            .map_err(|_| SealError::Malformed("the bulletin is too large to seal".into()))?,
    };
    let mut header = header;
    edit(&mut header);
    header.check()?;
    let header_bytes = header.encode();
    let header_hash = sha256(&header_bytes);
    let ciphertext = encrypt(suite, &content_key, &header_hash, plaintext)?;
    let mut wraps = Vec::with_capacity(recipients.len());
    for (r, (member, id)) in recipients.iter().zip(&header.recipients) {
        let info = wrap_info(&header_hash, member, id);
        let (enc, wrapped) = hpke::seal(suite, &r.public, &info, b"", &content_key)?;
        wraps.push(pb::SealedWrap {
            enc,
            wrapped_key: wrapped,
        });
    }
    let payload = pb::SealedBulletin {
        header: header_bytes,
        wraps,
        ciphertext,
    }
    .encode_to_vec();
    let outer = signer.sign_statement(SEALED_PAYLOAD_TYPE, payload)?;
    if outer.signatures[0].cert_chain != inner.signatures[0].cert_chain
        || outer.signatures[0].keyid != inner.signatures[0].keyid
    {
        // What a recipient opens is the inner envelope with the outer
        // signature's chain and key id: they must be the ones it had.
        return Err(SealError::Inner(BulletinError::Key(
            "the inner envelope carries another chain than the sealing signer's".into(),
        )));
    }
    Ok(outer)
}

/// The inner envelope as it is sealed: without what the outer one carries —
/// its type (the signature covers it: a bulletin's, put back on opening),
/// its key id (a hint) and its chain (the outer signature's).
fn bare(inner: &Envelope) -> Envelope {
    let mut bare = inner.clone();
    bare.payload_type.clear();
    for s in &mut bare.signatures {
        s.keyid.clear();
        s.cert_chain.clear();
    }
    bare
}

/// Opens a verified sealed bulletin with the first of `keys` it is sealed
/// to, checking everything a recipient must (see the module's text);
/// `now` is the time the inner bulletin's fields are checked at.
pub fn open(v: &VerifiedSealed, keys: &[OpeningKey], now: SystemTime) -> Result<Opened, SealError> {
    let s = &v.sealed;
    let h = &s.header;
    let Some((i, key)) = h.recipients.iter().enumerate().find_map(|(i, (m, id))| {
        keys.iter()
            .find(|k| &k.member == m && &k.key_id == id && k.suite == h.suite)
            .map(|k| (i, k))
    }) else {
        return Err(SealError::NotARecipient(h.members().join(", ")));
    };
    let header_hash = s.header_hash();
    let (member, id) = &h.recipients[i];
    let (enc, wrapped) = &s.wraps[i];
    let info = wrap_info(&header_hash, member, id);
    let content_key = hpke::open(h.suite, &key.private, enc, &info, b"", wrapped)?;
    let content_key: [u8; CONTENT_KEY_LEN] = content_key
        .as_slice()
        .try_into()
        .map_err(|_| SealError::Commitment)?;
    if !constant_time_eq(&commitment(&content_key), &h.commitment) {
        return Err(SealError::Commitment);
    }
    let plaintext = decrypt(h.suite, &content_key, &header_hash, &s.ciphertext)?;
    let inner_bytes = unpad(&plaintext)?;
    let mut inner = codec::decode_envelope(inner_bytes)
        .map_err(|e| SealError::Inner(BulletinError::MalformedEnvelope(e)))?;
    if inner.payload_type.is_empty() {
        inner.payload_type = PAYLOAD_TYPE.to_owned();
    }
    if inner.payload_type != PAYLOAD_TYPE {
        return Err(SealError::Inner(BulletinError::PayloadType(
            inner.payload_type,
        )));
    }
    if inner.signatures.len() != 1 {
        return Err(SealError::Inner(BulletinError::SignatureCount(
            inner.signatures.len(),
        )));
    }
    // Signed by the outer signer: its chain, or none (the outer one).
    let sig = &mut inner.signatures[0];
    if !sig.cert_chain.is_empty() && sig.cert_chain != v.chain {
        return Err(SealError::Disagrees("the signer"));
    }
    let leaf = v.chain.first().map(Vec::as_slice).unwrap_or_default();
    bulletin::check_signature(leaf, PAYLOAD_TYPE, &inner.payload, &sig.sig)
        .map_err(SealError::Inner)?;
    sig.cert_chain = v.chain.clone();
    if sig.keyid.is_empty() {
        sig.keyid = v.keyid.clone();
    }
    let b = codec::decode_bulletin(&inner.payload)
        .map_err(|e| SealError::Inner(BulletinError::MalformedPayload(e)))?;
    agrees(h, &b)?;
    bulletin::validate(&b, now).map_err(SealError::Inner)?;
    Ok(Opened {
        bulletin: b,
        envelope: inner,
        signer: v.signer.clone(),
        opened_with: (member.clone(), *id),
    })
}

/// The inner bulletin says what the clear header says.
fn agrees(h: &Header, b: &Bulletin) -> Result<(), SealError> {
    let checks: [(&'static str, bool); 8] = [
        ("the id", h.id == b.id),
        ("the publisher", h.publisher == b.publisher),
        ("the creation time", h.created_at == b.created_at),
        ("the expiry", h.expires_at == b.expires_at),
        ("the TLP", h.tlp == b.tlp),
        ("the relation", h.relation == b.relation),
        ("the kind", h.kind == 0 || h.kind == b.kind),
        ("the severity", h.severity == 0 || h.severity == b.severity),
    ];
    if let Some((what, _)) = checks.iter().find(|(_, ok)| !ok) {
        return Err(SealError::Disagrees(what));
    }
    if !b.audience.groups.is_empty() {
        return Err(SealError::GroupsInAudience(b.audience.groups.join(", ")));
    }
    // The recipients are the audience's members and the publisher.
    let members = h.members();
    let audience_covered = b.audience.members.iter().all(|m| members.contains(m));
    let no_stranger = members
        .iter()
        .all(|m| *m == b.publisher || b.audience.members.contains(m));
    if !audience_covered || !no_stranger {
        return Err(SealError::Disagrees("the recipients"));
    }
    Ok(())
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, b).as_ref());
    out
}

fn random_key() -> Result<[u8; CONTENT_KEY_LEN], SealError> {
    let mut k = [0u8; CONTENT_KEY_LEN];
    aws_lc_rs::rand::fill(&mut k)
        .map_err(|_| SealError::Malformed("no randomness for a content key".into()))?;
    Ok(k)
}

fn commitment(content_key: &[u8; CONTENT_KEY_LEN]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, content_key);
    let mut out = [0u8; 32];
    out.copy_from_slice(hmac::sign(&key, COMMITMENT_LABEL).as_ref());
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HPKE `info` of a wrap: a label, the header's hash, the member
/// (length-prefixed) and the key id.
fn wrap_info(header_hash: &[u8; 32], member: &str, key_id: &[u8; KEY_ID_LEN]) -> Vec<u8> {
    let mut info = Vec::with_capacity(WRAP_LABEL.len() + 1 + 32 + 2 + member.len() + KEY_ID_LEN);
    info.extend_from_slice(WRAP_LABEL);
    info.push(0);
    info.extend_from_slice(header_hash);
    info.extend_from_slice(
        &u16::try_from(member.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    info.extend_from_slice(member.as_bytes());
    info.extend_from_slice(key_id);
    info
}

/// The payload key and AEAD of `suite`, from the content key.
fn payload_key(
    suite: Suite,
    content_key: &[u8; CONTENT_KEY_LEN],
) -> Result<aead::LessSafeKey, SealError> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let alg = match suite {
        Suite::P256Sha256Aes128Gcm => &aead::AES_128_GCM,
        Suite::X25519Sha256ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
    };
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(content_key);
    let mut key = vec![0u8; alg.key_len()];
    prk.expand(&[PAYLOAD_LABEL], Len(alg.key_len()))
        .and_then(|okm| okm.fill(&mut key))
        .map_err(|_| SealError::Decrypt)?;
    let unbound = aead::UnboundKey::new(alg, &key).map_err(|_| SealError::Decrypt)?;
    Ok(aead::LessSafeKey::new(unbound))
}

/// The content key is used once: a zero nonce is safe.
fn encrypt(
    suite: Suite,
    content_key: &[u8; CONTENT_KEY_LEN],
    header_hash: &[u8; 32],
    mut plaintext: Vec<u8>,
) -> Result<Vec<u8>, SealError> {
    let key = payload_key(suite, content_key)?;
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key([0u8; aead::NONCE_LEN]),
        aead::Aad::from(header_hash),
        &mut plaintext,
    )
    .map_err(|_| SealError::Malformed("the content could not be sealed".into()))?;
    Ok(plaintext)
}

fn decrypt(
    suite: Suite,
    content_key: &[u8; CONTENT_KEY_LEN],
    header_hash: &[u8; 32],
    ciphertext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let key = payload_key(suite, content_key)?;
    let mut buf = ciphertext.to_vec();
    let n = key
        .open_in_place(
            aead::Nonce::assume_unique_for_key([0u8; aead::NONCE_LEN]),
            aead::Aad::from(header_hash),
            &mut buf,
        )
        .map_err(|_| SealError::Decrypt)?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// Padmé (Nikitin et al., PURBs): the length rounded up so that it leaks
/// O(log log L) bits, at most about 12% more; never below `MIN_PADDED`.
pub fn padded_len(len: usize) -> usize {
    let len = len.max(MIN_PADDED);
    let e: u32 = len.ilog2(); // floor(log2 len)
    let s: u32 = e.ilog2() + 1; // floor(log2 e) + 1 (e >= 8 here)
    let last_bits = e - s;
    let mask = (1usize << last_bits) - 1;
    (len + mask) & !mask
}

/// A 4-byte big-endian length, the bytes, zeros to the Padmé length.
fn pad(inner: &[u8]) -> Vec<u8> {
    let n = padded_len(inner.len() + 4);
    let mut out = Vec::with_capacity(n + 16);
    out.extend_from_slice(&u32::try_from(inner.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(inner);
    out.resize(n, 0);
    out
}

fn unpad(plaintext: &[u8]) -> Result<&[u8], SealError> {
    let bad = || SealError::Malformed("the sealed content's length or padding is wrong".into());
    let (len, rest) = plaintext.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = u32::from_be_bytes(*len) as usize;
    if len > rest.len() || rest[len..].iter().any(|b| *b != 0) {
        return Err(bad());
    }
    Ok(&rest[..len])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::base::identity::{MemberScope, RoleKind};
    use crate::domain::bulletin::{Kind, Severity};
    use crate::tools::pki;

    /// A CA for every member, signers for two members' clients, and the
    /// bundle that trusts it.
    struct World {
        _dir: tempfile::TempDir,
        bundle: crate::trust::TrustBundle,
        uk: Signer,
        fr: Signer,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let td: crate::base::identity::TrustDomain = "alliance.example".parse().unwrap();
        let ca = pki::Ca::init(
            &dir.path().join("ca"),
            &pki::InitRequest {
                trust_domain: td.clone(),
                name: "test CA".into(),
                members: MemberScope::any(),
                algorithm: pki::Algorithm::EcdsaP256,
                validity: pki::DEFAULT_CA_VALIDITY,
                force: false,
            },
        )
        .unwrap();
        let signer = |member: &str| {
            let id = pki::identity_for(&td, RoleKind::Client, Some(member), "analyst").unwrap();
            let issued = ca.issue(&pki::IssueRequest::new(id)).unwrap();
            let chain: Vec<Vec<u8>> = pem::parse_many(issued.cert_pem.as_bytes())
                .unwrap()
                .into_iter()
                .map(|p| p.contents().to_vec())
                .collect();
            let key = pem::parse(issued.key_pem.as_bytes()).unwrap();
            Signer::new(
                chain
                    .into_iter()
                    .map(rustls::pki_types::CertificateDer::from)
                    .collect(),
                key.contents(),
            )
            .unwrap()
        };
        let ca_der = pem::parse(std::fs::read(pki::Ca::cert_path(&dir.path().join("ca"))).unwrap())
            .unwrap()
            .contents()
            .to_vec();
        let entry = crate::trust::CaEntry::new(ca_der.into(), MemberScope::any()).unwrap();
        let (uk, fr) = (signer("uk.ncsc"), signer("fr.anssi"));
        let bundle = crate::trust::TrustBundle::new(td, vec![entry], vec![]).unwrap();
        World {
            uk,
            fr,
            bundle,
            _dir: dir,
        }
    }

    fn red(publisher: &str, audience: &[&str]) -> Bulletin {
        let mut b = Bulletin::draft(
            publisher,
            Kind::Advisory,
            Severity::High,
            Tlp::Red,
            "campaign against the election",
            "a source at risk",
        );
        b.audience.members = audience.iter().map(|s| s.to_string()).collect();
        b.body = "SECRET-MARKER ".repeat(70);
        b.expires_at = b
            .created_at
            .map(|c| c + std::time::Duration::from_secs(30 * 86_400));
        b
    }

    fn keys(member: &str, suite: Suite) -> (RecipientKey, OpeningKey) {
        let (public, private) = hpke::generate(suite).unwrap();
        (
            RecipientKey {
                member: member.into(),
                suite,
                public,
            },
            OpeningKey::new(member, suite, private).unwrap(),
        )
    }

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn only_the_recipients_open_it_and_get_the_signed_bulletin() {
        let w = world();
        for suite in Suite::ALL {
            let b = red("uk.ncsc", &["fr.anssi"]);
            let inner = w.uk.sign(b.to_bytes()).unwrap();
            let (uk_pub, uk_key) = keys("uk.ncsc", suite);
            let (fr_pub, fr_key) = keys("fr.anssi", suite);
            let (_, de_key) = keys("de.bsi", suite);
            let outer = seal(&w.uk, &inner, &[uk_pub, fr_pub], false).unwrap();
            assert_eq!(outer.payload_type, SEALED_PAYLOAD_TYPE);
            let marker = b"SECRET-MARKER";
            let bytes = codec::encode_envelope(&outer);
            assert!(
                !bytes.windows(marker.len()).any(|x| x == marker),
                "no plaintext in what relays carry"
            );
            let v = verify(&outer, &w.bundle, now()).unwrap();
            assert_eq!(v.sealed.header.members(), vec!["uk.ncsc", "fr.anssi"]);
            for k in [&uk_key, &fr_key] {
                let o = open(&v, std::slice::from_ref(k), now()).unwrap();
                assert_eq!(o.bulletin, b);
                assert_eq!(o.envelope, inner, "the inner envelope, whole again");
                assert_eq!(o.opened_with.0, k.member);
                // The opened envelope verifies on its own, like any bulletin.
                bulletin::verify_envelope(&o.envelope, &w.bundle, now()).unwrap();
            }
            assert!(matches!(
                open(&v, &[de_key], now()),
                Err(SealError::NotARecipient(_))
            ));
        }
    }

    #[test]
    fn the_header_says_what_routing_needs_and_can_hide_kind_and_severity() {
        let w = world();
        let mut b = red("uk.ncsc", &["fr.anssi"]);
        b.relation = Some(Relation::Supersedes(
            "0b7c5a9e-3f1d-4c2a-9e8b-1d2c3b4a5f60".into(),
        ));
        let inner = w.uk.sign(b.to_bytes()).unwrap();
        let (uk_pub, uk_key) = keys("uk.ncsc", Suite::P256Sha256Aes128Gcm);
        let (fr_pub, _) = keys("fr.anssi", Suite::P256Sha256Aes128Gcm);
        for hide in [false, true] {
            let outer = seal(&w.uk, &inner, &[uk_pub.clone(), fr_pub.clone()], hide).unwrap();
            let v = verify(&outer, &w.bundle, now()).unwrap();
            let h = &v.sealed.header;
            assert_eq!(
                (h.id.as_str(), h.publisher.as_str()),
                (b.id.as_str(), "uk.ncsc")
            );
            assert_eq!(
                (h.created_at, h.expires_at, h.tlp),
                (b.created_at, b.expires_at, b.tlp)
            );
            assert_eq!(h.relation, b.relation);
            assert_eq!((h.kind == 0, h.severity == 0), (hide, hide));
            open(&v, std::slice::from_ref(&uk_key), now()).unwrap();
        }
    }

    #[test]
    fn bad_seals_are_refused_naming_why() {
        let w = world();
        let suite = Suite::P256Sha256Aes128Gcm;
        let (uk_pub, _) = keys("uk.ncsc", suite);
        let (fr_pub, _) = keys("fr.anssi", suite);
        let (fr_x, _) = keys("fr.anssi", Suite::X25519Sha256ChaCha20Poly1305);
        let (de_pub, _) = keys("de.bsi", suite);
        let sealed = |b: &Bulletin, r: &[RecipientKey]| {
            seal(&w.uk, &w.uk.sign(b.to_bytes()).unwrap(), r, false)
        };
        let b = red("uk.ncsc", &["fr.anssi"]);
        let mut green = b.clone();
        green.tlp = codec::tlp_to_i32(Tlp::Green);
        assert!(matches!(
            sealed(&green, &[uk_pub.clone(), fr_pub.clone()]),
            Err(SealError::NotSealable("TLP:GREEN"))
        ));
        assert!(matches!(sealed(&b, &[]), Err(SealError::NoRecipients)));
        assert!(matches!(
            sealed(&b, std::slice::from_ref(&fr_pub)),
            Err(SealError::PublisherNotRecipient(_))
        ));
        assert!(matches!(
            sealed(&b, std::slice::from_ref(&uk_pub)),
            Err(SealError::NoKeyFor(m)) if m == "fr.anssi"
        ));
        assert!(matches!(
            sealed(&b, &[uk_pub.clone(), fr_pub.clone(), fr_pub.clone()]),
            Err(SealError::RepeatedRecipient { .. })
        ));
        assert!(matches!(
            sealed(&b, &[uk_pub.clone(), fr_x]),
            Err(SealError::MixedSuites { .. })
        ));
        assert!(matches!(
            sealed(&b, &[uk_pub.clone(), fr_pub.clone(), de_pub]),
            Err(SealError::Disagrees(_))
        ));
        let mut grouped = b.clone();
        grouped.audience.groups = vec!["five-eyes".into()];
        assert!(matches!(
            sealed(&grouped, &[uk_pub.clone(), fr_pub.clone()]),
            Err(SealError::GroupsInAudience(_))
        ));
        // Another member's envelope cannot be sealed under this signer.
        let theirs = w.fr.sign(red("fr.anssi", &["uk.ncsc"]).to_bytes()).unwrap();
        assert!(matches!(
            seal(&w.uk, &theirs, &[uk_pub, fr_pub], false),
            Err(SealError::Inner(_))
        ));
    }

    /// Re-signs a sealed bulletin after `edit` changed what it holds: what a
    /// dishonest publisher (or a forger with the publisher's key) can make.
    fn resigned(
        signer: &Signer,
        outer: &Envelope,
        edit: impl FnOnce(&mut pb::SealedBulletin),
    ) -> Envelope {
        let mut s = pb::SealedBulletin::decode(outer.payload.as_slice()).unwrap();
        edit(&mut s);
        signer
            .sign_statement(SEALED_PAYLOAD_TYPE, s.encode_to_vec())
            .unwrap()
    }

    fn header_edit(s: &mut pb::SealedBulletin, f: impl FnOnce(&mut pb::SealedHeader)) {
        let mut h = pb::SealedHeader::decode(s.header.as_slice()).unwrap();
        f(&mut h);
        s.header = h.encode_to_vec();
    }

    #[test]
    fn every_tampered_field_is_refused() {
        let w = world();
        let suite = Suite::P256Sha256Aes128Gcm;
        let b = red("uk.ncsc", &["fr.anssi"]);
        let inner = w.uk.sign(b.to_bytes()).unwrap();
        let (uk_pub, _) = keys("uk.ncsc", suite);
        let (fr_pub, fr_key) = keys("fr.anssi", suite);
        let outer = seal(&w.uk, &inner, &[uk_pub, fr_pub], false).unwrap();
        let opens = |env: &Envelope| -> Result<Opened, SealError> {
            let v = verify(env, &w.bundle, now())?;
            open(&v, std::slice::from_ref(&fr_key), now())
        };
        opens(&outer).unwrap();

        // Not re-signed: the outer signature fails, whatever changed.
        let mut flipped = outer.clone();
        let n = flipped.payload.len();
        flipped.payload[n - 1] ^= 1;
        assert!(matches!(opens(&flipped), Err(SealError::Signature(_))));

        // Re-signed by the publisher after a change: each is still caught.
        let cases: Vec<(&str, Envelope)> = vec![
            (
                "ciphertext",
                resigned(&w.uk, &outer, |s| s.ciphertext[0] ^= 1),
            ),
            (
                "wrap",
                resigned(&w.uk, &outer, |s| s.wraps[1].wrapped_key[0] ^= 1),
            ),
            ("enc", resigned(&w.uk, &outer, |s| s.wraps[1].enc[5] ^= 1)),
            (
                "swapped wraps",
                resigned(&w.uk, &outer, |s| s.wraps.swap(0, 1)),
            ),
            (
                "the id",
                resigned(&w.uk, &outer, |s| header_edit(s, |h| h.id = "other".into())),
            ),
            (
                "the commitment",
                resigned(&w.uk, &outer, |s| {
                    header_edit(s, |h| h.key_commitment[0] ^= 1)
                }),
            ),
            (
                "the TLP",
                resigned(&w.uk, &outer, |s| {
                    header_edit(s, |h| h.tlp = codec::tlp_to_i32(Tlp::AmberStrict))
                }),
            ),
            (
                "the expiry",
                resigned(&w.uk, &outer, |s| header_edit(s, |h| h.expires_at = None)),
            ),
        ];
        for (what, env) in cases {
            let r = opens(&env);
            assert!(r.is_err(), "{what}: opened");
        }
        // Form: a missing or extra wrap, an odd-sized one, an unknown suite.
        let form: Vec<(&str, Envelope)> = vec![
            (
                "missing wrap",
                resigned(&w.uk, &outer, |s| {
                    s.wraps.pop();
                }),
            ),
            (
                "extra wrap",
                resigned(&w.uk, &outer, |s| {
                    let x = s.wraps[0].clone();
                    s.wraps.push(x);
                }),
            ),
            (
                "short enc",
                resigned(&w.uk, &outer, |s| {
                    s.wraps[0].enc.pop();
                }),
            ),
            (
                "unknown suite",
                resigned(&w.uk, &outer, |s| header_edit(s, |h| h.aead_id = 2)),
            ),
            (
                "no recipients",
                resigned(&w.uk, &outer, |s| {
                    header_edit(s, |h| h.recipients.clear());
                    s.wraps.clear();
                }),
            ),
            (
                "short ciphertext",
                resigned(&w.uk, &outer, |s| {
                    s.ciphertext.pop();
                }),
            ),
        ];
        for (what, env) in form {
            assert!(
                verify(&env, &w.bundle, now()).is_err(),
                "{what}: accepted by a relay's check"
            );
        }
        // Signed by another member than the header's publisher.
        let other = resigned(&w.fr, &outer, |_| {});
        assert!(matches!(
            verify(&other, &w.bundle, now()),
            Err(SealError::Signature(BulletinError::WrongMember { .. }))
        ));
    }

    #[test]
    fn an_inner_bulletin_that_disagrees_with_its_header_is_refused() {
        // A dishonest publisher shows one thing in the clear header and
        // seals another: every wrap and the ciphertext are honest for that
        // header, and it is signed, yet recipients refuse it.
        let w = world();
        let suite = Suite::P256Sha256Aes128Gcm;
        let (uk_pub, _) = keys("uk.ncsc", suite);
        let (fr_pub, fr_key) = keys("fr.anssi", suite);
        let (de_pub, _) = keys("de.bsi", suite);
        let b = red("uk.ncsc", &["fr.anssi"]);
        let inner = w.uk.sign(b.to_bytes()).unwrap();
        let later = b.expires_at.map(|t| t + std::time::Duration::from_secs(1));
        type Edit = Box<dyn Fn(&mut Header)>;
        let edits: Vec<(&str, Edit)> = vec![
            (
                "the id",
                Box::new(|h| h.id = "7f1e0c2a-0000-4000-8000-000000000000".into()),
            ),
            (
                "the creation time",
                Box::new(|h| {
                    h.created_at = h.created_at.map(|t| t + std::time::Duration::from_secs(1))
                }),
            ),
            ("the expiry", Box::new(move |h| h.expires_at = later)),
            (
                "the TLP",
                Box::new(|h| h.tlp = codec::tlp_to_i32(Tlp::Amber)),
            ),
            (
                "the relation",
                Box::new(|h| {
                    h.relation = Some(Relation::Retracts(
                        "7f1e0c2a-0000-4000-8000-000000000001".into(),
                    ))
                }),
            ),
            (
                "the kind",
                Box::new(|h| h.kind = codec::kind_to_i32(Kind::Espionage)),
            ),
            (
                "the severity",
                Box::new(|h| h.severity = codec::severity_to_i32(Severity::Low)),
            ),
        ];
        for (what, edit) in edits {
            let outer = seal_with(
                &w.uk,
                &inner,
                &[uk_pub.clone(), fr_pub.clone()],
                false,
                edit,
            )
            .unwrap();
            let v = verify(&outer, &w.bundle, now()).unwrap();
            match open(&v, std::slice::from_ref(&fr_key), now()) {
                Err(SealError::Disagrees(w)) => assert_eq!(w, what),
                other => panic!("{what}: {other:?}"),
            }
        }
        // A recipient the audience does not name (the header shows de.bsi
        // was told; the bulletin says it was not meant for it).
        let outer = seal_with(
            &w.uk,
            &inner,
            &[uk_pub.clone(), fr_pub.clone()],
            false,
            |h| {
                h.recipients.push(("de.bsi".into(), de_pub.key_id()));
            },
        );
        // (seal_with makes one wrap per key given: an extra header entry
        // without its wrap is refused by form, before any key is tried.)
        assert!(outer.is_err() || verify(&outer.unwrap(), &w.bundle, now()).is_err());
        let mut with_de = b.clone();
        with_de.audience.members = vec!["fr.anssi".into()];
        let outer = seal_with(
            &w.uk,
            &w.uk.sign(with_de.to_bytes()).unwrap(),
            &[uk_pub.clone(), fr_pub.clone()],
            false,
            |_| {},
        )
        .unwrap();
        open(&verify(&outer, &w.bundle, now()).unwrap(), &[fr_key], now()).unwrap();
    }

    #[test]
    fn padme_leaks_little_and_wastes_little() {
        let mut last = 0;
        for len in 1..200_000usize {
            let p = padded_len(len);
            assert!(p >= len && p >= MIN_PADDED);
            assert!(p >= last, "monotonic");
            last = p;
            if len > MIN_PADDED {
                assert!(
                    (p - len) * 100 <= len * 12,
                    "at most 12% more at {len}: {p}"
                );
            }
        }
        let inner = vec![7u8; 1000];
        let padded = pad(&inner);
        assert_eq!(padded.len(), padded_len(1004));
        assert_eq!(unpad(&padded).unwrap(), inner.as_slice());
        let mut bad = padded.clone();
        *bad.last_mut().unwrap() = 1;
        assert!(unpad(&bad).is_err());
        assert!(unpad(&[0, 0, 1]).is_err());
    }

    #[test]
    fn sealing_adds_little_to_the_size() {
        let w = world();
        let b = red("uk.ncsc", &["fr.anssi", "de.bsi"]);
        let inner = w.uk.sign(b.to_bytes()).unwrap();
        let plain = codec::encode_envelope(&inner).len();
        let mut sizes = Vec::new();
        for n in [3usize, 20] {
            let mut recipients: Vec<RecipientKey> = ["uk.ncsc", "fr.anssi", "de.bsi"]
                .iter()
                .map(|m| keys(m, Suite::P256Sha256Aes128Gcm).0)
                .collect();
            while recipients.len() < n {
                recipients.push(keys("fr.anssi", Suite::P256Sha256Aes128Gcm).0);
            }
            let outer = seal(&w.uk, &inner, &recipients, false).unwrap();
            let sealed = codec::encode_envelope(&outer).len();
            let v = verify(&outer, &w.bundle, now()).unwrap();
            let waste = v.sealed.header.padded_length as usize
                - (codec::encode_envelope(&bare(&inner)).len() + 4);
            sizes.push((n, sealed - plain, waste));
        }
        // Per recipient, from the difference between 20 and 3 keys.
        let per = (sizes[1].1 - sizes[0].1) / 17;
        let fixed = sizes[0].1 - 3 * per;
        let waste = sizes[0].2;
        eprintln!("sealed: {plain} B unsealed, +{fixed} B (of which {waste} B padding) + {per} B per recipient");
        assert!(per <= 150, "{per} B per recipient");
        assert!(
            fixed - waste <= 250,
            "{fixed} B beyond the padding's {waste}"
        );
    }
    // Recipient key records (domain/keys.rs), with this module's world.

    #[test]
    fn key_records_verify_only_when_signed_by_their_member_and_well_formed() {
        use crate::domain::keys::{self, KeyError};
        let w = world();
        let suite = Suite::P256Sha256Aes128Gcm;
        let (public, _) = hpke::generate(suite).unwrap();
        let t0 = now();
        let env = keys::announce(
            &w.uk,
            "uk.ncsc",
            suite,
            &public,
            t0,
            keys::DEFAULT_VALIDITY,
            None,
        )
        .unwrap();
        let r = keys::verify_key(&env, &w.bundle, t0).unwrap();
        assert_eq!(
            (r.member.as_str(), r.key_id),
            ("uk.ncsc", key_id(suite, &public))
        );
        assert_eq!(r.not_after, r.not_before + keys::DEFAULT_VALIDITY);
        // Another member cannot announce uk.ncsc's keys.
        let theirs = keys::announce(
            &w.fr,
            "uk.ncsc",
            suite,
            &public,
            t0,
            keys::DEFAULT_VALIDITY,
            None,
        )
        .unwrap();
        assert!(matches!(
            keys::verify_key(&theirs, &w.bundle, t0),
            Err(KeyError::WrongSigner { .. })
        ));
        // Fields that do not hold together, re-signed by the member.
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_slice(&env.payload).unwrap();
            f(&mut v);
            w.uk.sign_statement(keys::KEY_TYPE, serde_json::to_vec(&v).unwrap())
                .unwrap()
        };
        for (what, bad) in [
            ("key id", edit(&|v| v["key_id"] = "00".repeat(16).into())),
            (
                "suite",
                edit(&|v| v["suite"] = "P384-SHA384-AES256GCM".into()),
            ),
            (
                "short key",
                edit(&|v| v["public_key"] = hex(&public[1..]).into()),
            ),
            (
                "validity",
                edit(&|v| v["not_after"] = v["not_before"].clone()),
            ),
            ("unknown field", edit(&|v| v["extra"] = 1.into())),
        ] {
            assert!(
                matches!(
                    keys::verify_key(&bad, &w.bundle, t0),
                    Err(KeyError::Malformed(_))
                ),
                "{what}"
            );
        }
        // A bulletin envelope is not a key record.
        let b = w.uk.sign(red("uk.ncsc", &[]).to_bytes()).unwrap();
        assert!(matches!(
            keys::verify_key(&b, &w.bundle, t0),
            Err(KeyError::Malformed(m)) if m.contains("vnd.beacon.bulletin")
        ));
        // A record whose signature does not verify.
        let mut forged = env.clone();
        forged.signatures[0].sig[10] ^= 1;
        assert!(matches!(
            keys::verify_key(&forged, &w.bundle, t0),
            Err(KeyError::Signature(_))
        ));
    }

    #[test]
    fn a_keyring_says_which_keys_may_be_sealed_to_and_why_not() {
        use crate::domain::keys::{self, KeyError, Keyring};
        use std::time::Duration;
        let w = world();
        let suite = Suite::P256Sha256Aes128Gcm;
        let t0 = now();
        let day = Duration::from_secs(86_400);
        let mut ring = Keyring::default();
        let (p1, _) = hpke::generate(suite).unwrap();
        let (p2, _) = hpke::generate(suite).unwrap();
        let id1 = key_id(suite, &p1);
        let id2 = key_id(suite, &p2);
        let rec = |p: &[u8], from: SystemTime| {
            keys::verify_key(
                &keys::announce(&w.uk, "uk.ncsc", suite, p, from, 10 * day, None).unwrap(),
                &w.bundle,
                t0,
            )
            .unwrap()
        };
        assert!(matches!(
            ring.usable_at("uk.ncsc", &id1, t0),
            Err(KeyError::Unknown { .. })
        ));
        assert!(ring.add_key(rec(&p1, t0), t0).unwrap());
        assert!(!ring.add_key(rec(&p1, t0), t0).unwrap(), "held already");
        ring.add_key(rec(&p2, t0 + 20 * day), t0).unwrap();
        ring.usable_at("uk.ncsc", &id1, t0 + day).unwrap();
        assert!(matches!(
            ring.usable_at("uk.ncsc", &id1, t0 + 11 * day),
            Err(KeyError::NotValid { .. })
        ));
        assert!(matches!(
            ring.usable_at("uk.ncsc", &id2, t0),
            Err(KeyError::NotValid { .. })
        ));
        assert_eq!(ring.current(Some("uk.ncsc"), t0 + day).len(), 1);
        // Revoked from a time on: usable before it, not after.
        let rev = keys::verify_revocation(
            &keys::revoke(&w.uk, "uk.ncsc", id1, t0 + 2 * day, "key compromise").unwrap(),
            &w.bundle,
            t0,
        )
        .unwrap();
        assert!(ring.add_revocation(rev.clone()));
        assert!(!ring.add_revocation(rev));
        ring.usable_at("uk.ncsc", &id1, t0 + day).unwrap();
        assert!(matches!(
            ring.usable_at("uk.ncsc", &id1, t0 + 3 * day),
            Err(KeyError::Revoked { .. })
        ));
        // Another member cannot revoke uk.ncsc's key.
        let forged = keys::revoke(&w.fr, "uk.ncsc", id1, t0, "").unwrap();
        assert!(matches!(
            keys::verify_revocation(&forged, &w.bundle, t0),
            Err(KeyError::WrongSigner { .. })
        ));
        // Bounded: a member's keys still valid beyond the bound are refused.
        let mut full = Keyring::default();
        for _ in 0..keys::MAX_KEYS_PER_MEMBER {
            let (p, _) = hpke::generate(suite).unwrap();
            full.add_key(rec(&p, t0), t0).unwrap();
        }
        let (p, _) = hpke::generate(suite).unwrap();
        assert!(matches!(
            full.add_key(rec(&p, t0), t0),
            Err(KeyError::TooMany { .. })
        ));
        // Once they have expired, a new one takes the oldest's place.
        assert!(full.add_key(rec(&p, t0), t0 + 11 * day).unwrap());
    }
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Any bytes: parsing a sealed payload returns (an error is
            /// fine) and never panics; so does unpadding.
            #[test]
            fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = Sealed::parse(&bytes);
                let _ = unpad(&bytes);
                let _ = is_sealed(&bytes);
            }

            /// Any body and any number of recipients (1 to 8, either suite):
            /// every recipient opens exactly the bulletin sealed, and the
            /// padded length is Padmé's of what it holds.
            #[test]
            fn every_recipient_opens_what_was_sealed(
                body in "[ -~]{0,3000}",
                extra in 0usize..8,
                x25519 in any::<bool>(),
            ) {
                let w = world();
                let suite = if x25519 { Suite::X25519Sha256ChaCha20Poly1305 } else { Suite::P256Sha256Aes128Gcm };
                let mut b = red("uk.ncsc", &["fr.anssi"]);
                b.body = body;
                let inner = w.uk.sign(b.to_bytes()).unwrap();
                let mut public = Vec::new();
                let mut opening = Vec::new();
                for m in std::iter::once("uk.ncsc").chain(std::iter::repeat_n("fr.anssi", extra + 1)) {
                    let (p, k) = keys(m, suite);
                    public.push(p);
                    opening.push(k);
                }
                let outer = seal(&w.uk, &inner, &public, false).unwrap();
                let v = verify(&outer, &w.bundle, now()).unwrap();
                prop_assert_eq!(v.sealed.header.recipients.len(), extra + 2);
                for k in &opening {
                    let o = open(&v, std::slice::from_ref(k), now()).unwrap();
                    prop_assert_eq!(&o.bulletin, &b);
                }
            }
        }
    }
}
