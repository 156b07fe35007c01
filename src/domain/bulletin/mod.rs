//! Bulletins and their DSSE envelopes: signing, and the verification every
//! recipient runs (nodes on Publish and on relay, the CLI, peers).
//!
//! The signature covers `PAE(payload_type, payload)` where the payload is the
//! serialized `Bulletin` exactly as the publisher produced it. Nobody
//! re-serializes the payload: the bytes signed are the bytes stored and sent.
//!
//! [`verify_envelope`] is a pure function of the envelope, the trust bundle and
//! the time. It checks, in order: payload type; exactly one signature; the
//! signer's chain (trust bundle, revocation, member scope); the signature; the
//! payload decodes; the signer belongs to the publishing member; the fields.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{self, KeyPair as _, UnparsedPublicKey};
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

pub mod codec;

use crate::base::identity::{Identity, MemberId, Name, RoleKind};
use crate::trust::{ChainCheck, TrustBundle, TrustError};

/// The DSSE payload type of a Beacon bulletin.
pub const PAYLOAD_TYPE: &str = "application/vnd.beacon.bulletin.v1+protobuf";

pub const MAX_TITLE: usize = 200;
pub const MAX_SUMMARY: usize = 4000;
pub const MAX_TOPICS: usize = 32;
pub const MAX_TOPIC_LEN: usize = 64;
pub const MAX_AUDIENCE: usize = 256;
pub const MAX_INDICATORS: usize = 10_000;
pub const MAX_INDICATOR_VALUE: usize = 4096;
pub const MAX_REFERENCES: usize = 256;
pub const MAX_URL: usize = 2048;
pub const MAX_SIGNER_CHAIN: usize = 4;
/// How far in the future a created_at may lie (clock skew between allies).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The summary of a verified bulletin that policy, filters and the store
/// work from, besides its envelope bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub id: String,
    pub publisher: String,
    /// SHA-256 of the envelope bytes.
    pub digest: [u8; 32],
    /// The node that first accepted the bulletin, and its sequence there.
    pub origin_node: String,
    pub origin_seq: u64,
    /// Raw wire numbers of kind, severity and TLP (validated before append).
    pub kind: u8,
    pub severity: u8,
    pub tlp: u8,
    pub created_at: Option<SystemTime>,
    /// After this, readers get it only when they ask for expired bulletins.
    pub expires_at: Option<SystemTime>,
    pub audience_members: Vec<String>,
    pub audience_groups: Vec<String>,
    pub topics: Vec<String>,
}

impl Meta {
    /// Past its `expires_at` at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    /// The summary of `verified`, whose canonical envelope has SHA-256
    /// `digest`, first accepted by `origin_node` (its origin sequence is set
    /// when it is stored).
    pub fn of(verified: &Verified, digest: [u8; 32], origin_node: &str) -> Meta {
        let b = &verified.bulletin;
        Meta {
            id: b.id.clone(),
            publisher: b.publisher.clone(),
            digest,
            origin_node: origin_node.to_owned(),
            origin_seq: 0,
            kind: codec::kind_to_i32(verified.kind) as u8,
            severity: codec::severity_to_i32(verified.severity) as u8,
            tlp: codec::tlp_to_i32(verified.tlp) as u8,
            created_at: b.created_at,
            expires_at: b.expires_at,
            audience_members: b.audience.members.clone(),
            audience_groups: b.audience.groups.clone(),
            topics: b.topics.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BulletinError {
    #[error("envelope is {size} bytes, the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("envelope is not well-formed protobuf: {0}")]
    MalformedEnvelope(String),
    #[error("unknown payload type {0:?} (expected {PAYLOAD_TYPE})")]
    PayloadType(String),
    #[error("envelope must carry exactly one signature, found {0}")]
    SignatureCount(usize),
    #[error("signature carries no certificate chain")]
    NoChain,
    #[error("signer certificate chain is too long ({0} certificates)")]
    ChainTooLong(usize),
    #[error("signer certificate refused: {0}")]
    Signer(#[from] TrustError),
    #[error("signer key type is not supported (use Ed25519 or ECDSA P-256)")]
    KeyType,
    #[error("signature does not verify")]
    BadSignature,
    #[error("payload is not a well-formed Bulletin: {0}")]
    MalformedPayload(String),
    #[error("{}", wrong_member(.signer, .publisher))]
    WrongMember { signer: String, publisher: String },
    #[error("signer {0} is an operator; only clients and nodes publish")]
    OperatorSigner(String),
    #[error("a client publishes only what it signed itself: signed by {signer}, sent by {peer}")]
    NotPeer { signer: String, peer: String },
    #[error("invalid bulletin: {0}")]
    Invalid(String),
    #[error("cannot load signing key: {0}")]
    Key(String),
    #[error("signing failed")]
    Sign,
}

/// A refusal never leaves a blank where a value belongs.
fn wrong_member(signer: &str, publisher: &str) -> String {
    if publisher.is_empty() {
        format!(
            "signer {signer} may not publish this bulletin: its publisher field is empty \
             (it must name the signer's member)"
        )
    } else {
        format!("signer {signer} may not publish for member {publisher}")
    }
}

fn invalid(msg: impl Into<String>) -> BulletinError {
    BulletinError::Invalid(msg.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Disinformation,
    InfluenceOperation,
    Espionage,
    IllicitFinance,
    CyberIntrusion,
    ElectionInfrastructure,
    Advisory,
    Other,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Disinformation,
        Kind::InfluenceOperation,
        Kind::Espionage,
        Kind::IllicitFinance,
        Kind::CyberIntrusion,
        Kind::ElectionInfrastructure,
        Kind::Advisory,
        Kind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Disinformation => "disinformation",
            Kind::InfluenceOperation => "influence_operation",
            Kind::Espionage => "espionage",
            Kind::IllicitFinance => "illicit_finance",
            Kind::CyberIntrusion => "cyber_intrusion",
            Kind::ElectionInfrastructure => "election_infrastructure",
            Kind::Advisory => "advisory",
            Kind::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info = 1,
    Low = 2,
    Medium = 3,
    High = 4,
    Critical = 5,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// TLP 2.0 labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tlp {
    Clear,
    Green,
    Amber,
    AmberStrict,
    Red,
}

impl Tlp {
    pub const ALL: [Tlp; 5] = [
        Tlp::Clear,
        Tlp::Green,
        Tlp::Amber,
        Tlp::AmberStrict,
        Tlp::Red,
    ];

    /// The label as FIRST writes it: upper case, never translated.
    pub fn label(self) -> &'static str {
        match self {
            Tlp::Clear => "TLP:CLEAR",
            Tlp::Green => "TLP:GREEN",
            Tlp::Amber => "TLP:AMBER",
            Tlp::AmberStrict => "TLP:AMBER+STRICT",
            Tlp::Red => "TLP:RED",
        }
    }

    /// The label for a stored wire number (as [`Meta`] keeps it).
    pub fn from_code(code: u8) -> Option<Tlp> {
        codec::tlp_from_i32(i32::from(code))
    }

    /// Accepts "TLP:AMBER+STRICT", "AMBER+STRICT" and lower-case forms.
    pub fn parse(s: &str) -> Option<Tlp> {
        let up = s.trim().to_ascii_uppercase();
        let up = up.strip_prefix("TLP:").unwrap_or(&up).to_owned();
        Tlp::ALL
            .into_iter()
            .find(|t| t.label().trim_start_matches("TLP:") == up)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience {
    pub members: Vec<String>,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Indicator {
    pub kind: String,
    pub value: String,
    pub description: String,
    /// The STIX indicator it was taken from ("indicator--<uuid>"), or empty.
    pub stix_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub url: String,
    pub description: String,
    pub external_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub media_type: String,
    pub filename: String,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    Supersedes(String),
    Retracts(String),
}

/// The signed content, decoded. Enum fields hold the raw wire numbers until
/// validation, so that unknown values are reported, not silently mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bulletin {
    pub id: String,
    pub publisher: String,
    pub created_at: Option<SystemTime>,
    pub kind: i32,
    pub severity: i32,
    pub tlp: i32,
    pub audience: Audience,
    pub topics: Vec<String>,
    pub title: String,
    pub summary: String,
    pub body: String,
    pub indicators: Vec<Indicator>,
    pub references: Vec<Reference>,
    pub relation: Option<Relation>,
    pub expires_at: Option<SystemTime>,
    pub attachment: Option<Attachment>,
    /// The client a member's node signed this for (its SPIFFE id); empty
    /// when the signer wrote it itself.
    pub submitted_by: String,
}

impl Bulletin {
    /// A new bulletin with a fresh UUID, created now, and everything optional empty.
    pub fn draft(
        publisher: &str,
        kind: Kind,
        severity: Severity,
        tlp: Tlp,
        title: &str,
        summary: &str,
    ) -> Bulletin {
        Bulletin {
            id: uuid::Uuid::new_v4().hyphenated().to_string(),
            publisher: publisher.to_owned(),
            created_at: Some(SystemTime::now()),
            kind: codec::kind_to_i32(kind),
            severity: codec::severity_to_i32(severity),
            tlp: codec::tlp_to_i32(tlp),
            audience: Audience::default(),
            topics: Vec::new(),
            title: title.to_owned(),
            summary: summary.to_owned(),
            body: String::new(),
            indicators: Vec::new(),
            references: Vec::new(),
            relation: None,
            expires_at: None,
            attachment: None,
            submitted_by: String::new(),
        }
    }

    /// The serialized form that gets signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode_bulletin(self)
    }
}

/// A DSSE signature with the signer's chain (DER, leaf first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub keyid: String,
    pub sig: Vec<u8>,
    pub cert_chain: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signatures: Vec<Signature>,
}

/// DSSE v1 pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// SHA-256.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

enum SignerKey {
    Ed25519(signature::Ed25519KeyPair),
    EcdsaP256(signature::EcdsaKeyPair),
}

/// A publisher's key and certificate chain, able to sign envelopes.
pub struct Signer {
    key: SignerKey,
    chain: Vec<Vec<u8>>,
    pub identity: Identity,
    rng: aws_lc_rs::rand::SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// From a chain (leaf first) and a PKCS#8 private key matching the leaf.
    pub fn new(chain: Vec<CertificateDer<'static>>, pkcs8: &[u8]) -> Result<Signer, BulletinError> {
        let leaf = chain
            .first()
            .ok_or_else(|| BulletinError::Key("no certificate".into()))?;
        let (identity, _) =
            crate::trust::identity_of(leaf).map_err(|e| BulletinError::Key(e.to_string()))?;
        let key = if let Ok(k) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8) {
            SignerKey::Ed25519(k)
        } else if let Ok(k) =
            signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
        {
            SignerKey::EcdsaP256(k)
        } else {
            return Err(BulletinError::Key(
                "the key is neither Ed25519 nor ECDSA P-256 PKCS#8".into(),
            ));
        };
        let public = match &key {
            SignerKey::Ed25519(k) => k.public_key().as_ref().to_vec(),
            SignerKey::EcdsaP256(k) => k.public_key().as_ref().to_vec(),
        };
        if spki_key(leaf.as_ref()).map(|(_, k)| k) != Some(public) {
            return Err(BulletinError::Key(
                "the key does not match the certificate".into(),
            ));
        }
        Ok(Signer {
            key,
            chain: chain.into_iter().map(|c| c.as_ref().to_vec()).collect(),
            identity,
            rng: aws_lc_rs::rand::SystemRandom::new(),
        })
    }

    /// Loads a signer from PEM files (as `beacon ca issue` writes them).
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Signer, BulletinError> {
        let chain =
            crate::trust::read_certs(cert).map_err(|e| BulletinError::Key(e.to_string()))?;
        let key = crate::trust::read_pem_file(key, "PRIVATE KEY")
            .map_err(|e| BulletinError::Key(e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| BulletinError::Key("no PRIVATE KEY block".into()))?;
        Signer::new(chain, &key)
    }

    /// The signer's certificate (DER).
    pub fn leaf(&self) -> &[u8] {
        self.chain.first().map(Vec::as_slice).unwrap_or_default()
    }

    /// Signs serialized bulletin bytes into an envelope.
    pub fn sign(&self, payload: Vec<u8>) -> Result<Envelope, BulletinError> {
        self.sign_statement(PAYLOAD_TYPE, payload)
    }

    /// Signs a statement of another type (a log announcement) into a DSSE
    /// envelope, as bulletins are signed.
    pub fn sign_statement(
        &self,
        payload_type: &str,
        payload: Vec<u8>,
    ) -> Result<Envelope, BulletinError> {
        let msg = pae(payload_type, &payload);
        let sig = match &self.key {
            SignerKey::Ed25519(k) => k.sign(&msg).as_ref().to_vec(),
            SignerKey::EcdsaP256(k) => k
                .sign(&self.rng, &msg)
                .map_err(|_| BulletinError::Sign)?
                .as_ref()
                .to_vec(),
        };
        Ok(Envelope {
            payload_type: payload_type.to_owned(),
            payload,
            signatures: vec![Signature {
                keyid: self.identity.to_string(),
                sig,
                cert_chain: self.chain.clone(),
            }],
        })
    }
}

const OID_ED25519: &str = "1.3.101.112";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyAlg {
    Ed25519,
    EcdsaP256,
}

/// The signature algorithm and raw public key of a certificate.
fn spki_key(cert_der: &[u8]) -> Option<(KeyAlg, Vec<u8>)> {
    let (_, x) = X509Certificate::from_der(cert_der).ok()?;
    let spki = x.public_key();
    let oid = spki.algorithm.algorithm.to_id_string();
    let alg = if oid == OID_ED25519 {
        KeyAlg::Ed25519
    } else if oid == OID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string());
        if curve.as_deref() != Some(OID_P256) {
            return None;
        }
        KeyAlg::EcdsaP256
    } else {
        return None;
    };
    Some((alg, spki.subject_public_key.data.to_vec()))
}

/// Checks `sig` over `PAE(payload_type, payload)` with the leaf's key.
pub fn check_signature(
    leaf: &[u8],
    payload_type: &str,
    payload: &[u8],
    sig: &[u8],
) -> Result<(), BulletinError> {
    let (alg, key) = spki_key(leaf).ok_or(BulletinError::KeyType)?;
    let msg = pae(payload_type, payload);
    let verifier: &dyn signature::VerificationAlgorithm = match alg {
        KeyAlg::Ed25519 => &signature::ED25519,
        KeyAlg::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
    };
    UnparsedPublicKey::new(verifier, key)
        .verify(&msg, sig)
        .map_err(|_| BulletinError::BadSignature)
}

/// A verified envelope: made only by verification ([`verify_envelope_with`]
/// and the functions built on it), so holding one means the checks passed.
#[derive(Debug, Clone)]
pub struct Verified {
    bulletin: Bulletin,
    signer: Identity,
    kind: Kind,
    severity: Severity,
    tlp: Tlp,
}

impl Verified {
    pub fn bulletin(&self) -> &Bulletin {
        &self.bulletin
    }

    pub fn into_bulletin(self) -> Bulletin {
        self.bulletin
    }

    /// Who signed it: a client or node of the publishing member.
    pub fn signer(&self) -> &Identity {
        &self.signer
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn severity(&self) -> Severity {
        self.severity
    }

    pub fn tlp(&self) -> Tlp {
        self.tlp
    }
}

/// Verifies an envelope against a trust bundle at `now` (see the module docs).
pub fn verify_envelope(
    env: &Envelope,
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<Verified, BulletinError> {
    verify_envelope_with(env, bundle, now, None)
}

/// As [`verify_envelope`], with any chain checker (a cache in front of the
/// bundle), and optionally requiring the signer to be `sender` (a client may
/// publish only envelopes it signed itself).
pub fn verify_envelope_with(
    env: &Envelope,
    chains: &dyn ChainCheck,
    now: SystemTime,
    sender: Option<&Identity>,
) -> Result<Verified, BulletinError> {
    let signer = verify_statement(env, PAYLOAD_TYPE, chains, now)?;
    let bulletin = codec::decode_bulletin(&env.payload).map_err(BulletinError::MalformedPayload)?;
    let member = match signer.kind() {
        RoleKind::Operator => return Err(BulletinError::OperatorSigner(signer.to_string())),
        _ => signer
            .member()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default(),
    };
    if member != bulletin.publisher {
        return Err(BulletinError::WrongMember {
            signer: signer.to_string(),
            publisher: bulletin.publisher.clone(),
        });
    }
    if let Some(sender) = sender {
        if sender != &signer {
            return Err(BulletinError::NotPeer {
                signer: signer.to_string(),
                peer: sender.to_string(),
            });
        }
    }
    let (kind, severity, tlp) = validate(&bulletin, now)?;
    Ok(Verified {
        bulletin,
        signer,
        kind,
        severity,
        tlp,
    })
}

/// The identity that signed a DSSE envelope of `payload_type` (a bulletin,
/// a log announcement): one signature, its chain accepted by `chains` at
/// `now`, the signature over the payload checked.
pub fn verify_statement(
    env: &Envelope,
    payload_type: &str,
    chains: &dyn ChainCheck,
    now: SystemTime,
) -> Result<Identity, BulletinError> {
    if env.payload_type != payload_type {
        return Err(BulletinError::PayloadType(env.payload_type.clone()));
    }
    if env.signatures.len() != 1 {
        return Err(BulletinError::SignatureCount(env.signatures.len()));
    }
    let sig = &env.signatures[0];
    if sig.cert_chain.is_empty() {
        return Err(BulletinError::NoChain);
    }
    if sig.cert_chain.len() > MAX_SIGNER_CHAIN {
        return Err(BulletinError::ChainTooLong(sig.cert_chain.len()));
    }
    let chain: Vec<CertificateDer<'_>> = sig
        .cert_chain
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let unix = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    let signer = chains.check(&chain[0], &chain[1..], unix)?;
    check_signature(
        &sig.cert_chain[0],
        &env.payload_type,
        &env.payload,
        &sig.sig,
    )?;
    Ok(signer)
}

/// Verifies an envelope that was accepted earlier (relayed by a peer, read
/// back from a node, exported): as [`verify_envelope_with`] at `now`, except
/// that a signer whose certificate has expired since is accepted when the
/// chain was valid at the bulletin's signed creation time. Revocation still
/// applies whatever the time. New publishes are always verified at `now`.
pub fn verify_stored_envelope(
    env: &Envelope,
    chains: &dyn ChainCheck,
    now: SystemTime,
) -> Result<Verified, BulletinError> {
    match verify_envelope_with(env, chains, now, None) {
        Err(BulletinError::Signer(TrustError::Expired)) => {
            let created = codec::decode_bulletin(&env.payload)
                .ok()
                .and_then(|b| b.created_at)
                .filter(|&c| c <= now)
                .ok_or(BulletinError::Signer(TrustError::Expired))?;
            verify_envelope_with(env, chains, created, None)
        }
        other => other,
    }
}

/// A canonical, lower-case hyphenated UUID.
pub fn canonical_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s)
        .map(|u| u.hyphenated().to_string() == s)
        .unwrap_or(false)
}

fn text(field: &str, value: &str, max: usize, required: bool) -> Result<(), BulletinError> {
    if required && value.trim().is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    if value.chars().count() > max {
        return Err(invalid(format!("{field} is longer than {max} characters")));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(invalid(format!("{field} contains control characters")));
    }
    Ok(())
}

/// Field rules of a bulletin; returns its typed kind, severity and TLP, or
/// the first rule it breaks (see [`problems`] for all of them).
pub fn validate(b: &Bulletin, now: SystemTime) -> Result<(Kind, Severity, Tlp), BulletinError> {
    let mut out = Vec::new();
    let typed = check(b, now, &mut out);
    match (out.into_iter().next(), typed) {
        (Some(first), _) => Err(invalid(first)),
        (None, Some(t)) => Ok(t),
        (None, None) => Err(invalid("kind, severity or TLP is not known")),
    }
}

/// Every field rule `b` breaks, each a sentence naming the field (a
/// publisher is told all of them at once, not one per attempt).
pub fn problems(b: &Bulletin, now: SystemTime) -> Vec<String> {
    let mut out = Vec::new();
    check(b, now, &mut out);
    out
}

/// The message of a rule broken.
fn note(out: &mut Vec<String>, r: Result<(), BulletinError>) {
    if let Err(e) = r {
        out.push(match e {
            BulletinError::Invalid(m) => m,
            other => other.to_string(),
        });
    }
}

fn check(b: &Bulletin, now: SystemTime, out: &mut Vec<String>) -> Option<(Kind, Severity, Tlp)> {
    if !canonical_uuid(&b.id) {
        out.push(format!("id {:?} is not a lower-case hyphenated UUID", b.id));
    }
    if let Err(e) = b.publisher.parse::<MemberId>() {
        out.push(format!("publisher: {e}"));
    }
    let kind = codec::kind_from_i32(b.kind);
    if kind.is_none() {
        out.push(format!("kind {} is not known", b.kind));
    }
    let severity = codec::severity_from_i32(b.severity);
    if severity.is_none() {
        out.push(format!("severity {} is not known", b.severity));
    }
    let tlp = codec::tlp_from_i32(b.tlp);
    if tlp.is_none() {
        out.push(format!("TLP label {} is not known", b.tlp));
    }
    if b.audience.members.len() + b.audience.groups.len() > MAX_AUDIENCE {
        out.push(format!("audience has more than {MAX_AUDIENCE} entries"));
    }
    for m in &b.audience.members {
        if let Err(e) = m.parse::<MemberId>() {
            out.push(format!("audience: {e}"));
        }
    }
    for g in &b.audience.groups {
        if g.parse::<Name>().is_err() {
            out.push(format!("audience group {g:?} is not a valid name"));
        }
    }
    if tlp == Some(Tlp::Red) && b.audience.members.is_empty() {
        out.push("TLP:RED must name at least one member recipient in audience.members".into());
    }
    if !b.submitted_by.is_empty() {
        match b.submitted_by.parse::<crate::base::identity::Identity>() {
            Err(e) => out.push(format!("submitted_by: {e}")),
            Ok(by) => {
                if by.kind() != crate::base::identity::RoleKind::Client
                    || by.member().map(|m| m.as_str()) != Some(b.publisher.as_str())
                {
                    out.push(format!(
                        "submitted_by {} is not a client of {}",
                        b.submitted_by, b.publisher
                    ));
                }
            }
        }
    }
    note(out, text("title", &b.title, MAX_TITLE, true));
    note(out, text("summary", &b.summary, MAX_SUMMARY, true));
    if b.topics.len() > MAX_TOPICS {
        out.push(format!("more than {MAX_TOPICS} topics"));
    }
    for t in &b.topics {
        note(out, text("topic", t, MAX_TOPIC_LEN, true));
    }
    if b.indicators.len() > MAX_INDICATORS {
        out.push(format!("more than {MAX_INDICATORS} indicators"));
    }
    for i in &b.indicators {
        note(out, text("indicator type", &i.kind, 64, true));
        note(
            out,
            text("indicator value", &i.value, MAX_INDICATOR_VALUE, true),
        );
        if !i.stix_id.is_empty()
            && !i
                .stix_id
                .strip_prefix("indicator--")
                .is_some_and(canonical_uuid)
        {
            out.push(format!(
                "indicator stix_id {:?} is not indicator--<uuid>",
                i.stix_id
            ));
        }
    }
    if b.references.len() > MAX_REFERENCES {
        out.push(format!("more than {MAX_REFERENCES} references"));
    }
    for r in &b.references {
        note(out, text("reference url", &r.url, MAX_URL, true));
    }
    match b.created_at {
        None => out.push("created_at is missing".into()),
        Some(created) => {
            let floor = UNIX_EPOCH + Duration::from_secs(946_684_800); // 2000-01-01
            if created < floor {
                out.push("created_at is before the year 2000".into());
            }
            if created > now + MAX_CLOCK_SKEW {
                out.push("created_at is in the future".into());
            }
            if let Some(exp) = b.expires_at {
                if exp <= created {
                    out.push("expires_at is not after created_at".into());
                }
                // 9999-12-31T23:59:59Z: beyond it no calendar (or reader) can show it.
                if exp > UNIX_EPOCH + Duration::from_secs(253_402_300_799) {
                    out.push("expires_at is after the year 9999".into());
                }
            }
        }
    }
    match &b.relation {
        Some(Relation::Supersedes(id)) | Some(Relation::Retracts(id)) => {
            if !canonical_uuid(id) {
                out.push(format!(
                    "related id {id:?} is not a lower-case hyphenated UUID"
                ));
            }
            if id == &b.id {
                out.push("a bulletin cannot supersede or retract itself".into());
            }
        }
        None => {}
    }
    if let Some(a) = &b.attachment {
        note(out, text("attachment media_type", &a.media_type, 255, true));
        note(out, text("attachment filename", &a.filename, 255, false));
    }
    Some((kind?, severity?, tlp?))
}

/// What a publisher is told of the values of indicators of the types
/// Beacon knows: an `ipv4` that is no IPv4 address, a `sha256` that is not
/// 64 hex digits, a domain with a space… (types Beacon does not know are
/// taken as they are). Checked for new publishes, by the client and the
/// node; not for relays and restores, so a bulletin an older node accepted
/// still travels.
pub fn indicator_problems(b: &Bulletin) -> Vec<String> {
    let mut out = Vec::new();
    for (n, i) in b.indicators.iter().enumerate() {
        if let Some(why) = indicator_problem(&i.kind, &i.value) {
            out.push(format!(
                "indicator {} ({}={}): {why}",
                n + 1,
                i.kind,
                i.value.chars().take(80).collect::<String>()
            ));
        }
    }
    out
}

fn indicator_problem(kind: &str, value: &str) -> Option<String> {
    let v = value.trim();
    let hex = |len: usize, name: &str| {
        (!(v.len() == len && v.bytes().all(|b| b.is_ascii_hexdigit())))
            .then(|| format!("a {name} is {len} hex digits"))
    };
    let prefixed = |max: u8| -> Option<(&str, bool)> {
        match v.split_once('/') {
            None => Some((v, true)),
            Some((a, p)) => Some((a, p.parse::<u8>().is_ok_and(|p| p <= max))),
        }
    };
    match kind.trim().to_ascii_lowercase().as_str() {
        "ipv4" | "ipv4-addr" => match prefixed(32) {
            Some((a, ok)) if ok && a.parse::<std::net::Ipv4Addr>().is_ok() => None,
            _ => Some("not an IPv4 address (a.b.c.d, each 0-255, or a.b.c.d/n)".into()),
        },
        "ipv6" | "ipv6-addr" => match prefixed(128) {
            Some((a, ok)) if ok && a.parse::<std::net::Ipv6Addr>().is_ok() => None,
            _ => Some("not an IPv6 address".into()),
        },
        "ip" | "ip-addr" => match prefixed(128) {
            Some((a, ok)) if ok && a.parse::<std::net::IpAddr>().is_ok() => None,
            _ => Some("not an IP address".into()),
        },
        "domain" | "domain-name" | "hostname" | "fqdn" => {
            let ok = !v.is_empty()
                && v.len() <= 253
                && v.trim_end_matches('.').split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars()
                            .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
                });
            (!ok).then(|| {
                "not a DNS name (labels of letters, digits and hyphens, joined by dots)".into()
            })
        }
        "url" | "uri" => {
            let ok = v.split_once("://").is_some_and(|(scheme, rest)| {
                !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                    && !rest.is_empty()
            }) && !v.chars().any(char::is_whitespace);
            (!ok).then(|| "not an absolute URL (scheme://…, no spaces)".into())
        }
        "email" | "email-addr" | "email-address" => {
            let ok = v
                .split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.contains('@'))
                && !v.chars().any(char::is_whitespace);
            (!ok).then(|| "not an email address (local@domain)".into())
        }
        "sha256" | "sha-256" => hex(64, "SHA-256"),
        "sha1" | "sha-1" => hex(40, "SHA-1"),
        "md5" => hex(32, "MD5"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_test_vector() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn tlp_labels_parse() {
        assert_eq!(Tlp::parse("TLP:AMBER+STRICT"), Some(Tlp::AmberStrict));
        assert_eq!(Tlp::parse("amber"), Some(Tlp::Amber));
        assert_eq!(Tlp::parse("TLP:WHITE"), None);
    }
}
