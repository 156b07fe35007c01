//! Recipient keys: the HPKE public keys a member announces so that others
//! can seal bulletins to it, as signed records, and their revocations.
//!
//! - A **key record** (DSSE, `KEY_TYPE`, JSON) names the member, the key id
//!   (derived: the first 16 bytes of SHA-256 over a label, the suite's
//!   RFC 9180 ids and the public key), the suite, the public key, when it is
//!   valid (default 90 days) and the key it replaces; it is signed with a
//!   certificate of that member (a client's or a node's, never an
//!   operator's), so an ally ties the key to the member through the
//!   member's CA, without trusting any node on the way.
//! - A **revocation** (DSSE, `REVOCATION_TYPE`) withdraws one, signed the
//!   same way. A revoked key is refused for sealing from its revocation on.
//! - The [`Keyring`] holds what a node knows: every record and revocation,
//!   each checked when it is added, bounded per member.
//!
//! Private keys never reach a node: they stay with the member's clients.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::base::identity::{Identity, RoleKind};
use crate::domain::bulletin::{self, BulletinError, Envelope, Signer};
use crate::domain::hpke::Suite;
use crate::trust::ChainCheck;

/// The DSSE payload type of a recipient key record.
pub const KEY_TYPE: &str = "application/vnd.beacon.recipient-key.v1+json";
/// The DSSE payload type of a recipient key's revocation.
pub const REVOCATION_TYPE: &str = "application/vnd.beacon.recipient-key-revocation.v1+json";

/// Bytes of a key id.
pub const KEY_ID_LEN: usize = 16;
/// How long a key is valid unless its record says otherwise.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// The longest validity a record may claim.
pub const MAX_VALIDITY: Duration = Duration::from_secs(400 * 24 * 3600);
/// Records a keyring keeps per member (the oldest expired go first).
pub const MAX_KEYS_PER_MEMBER: usize = 64;
/// The largest record or revocation payload.
const MAX_PAYLOAD: usize = 4096;

const KEY_ID_LABEL: &[u8] = b"beacon recipient key v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("{0}")]
    Signature(String),
    #[error("recipient key record: {0}")]
    Malformed(String),
    #[error("{signer} cannot announce or revoke keys of {member}: only a certificate of the member itself (a client or node) can")]
    WrongSigner { signer: String, member: String },
    #[error("recipient key {key_id} of {member} is not one this node knows (announce it with beacon keys announce)")]
    Unknown { member: String, key_id: String },
    #[error("recipient key {key_id} of {member} was not valid at {at} (valid {from} to {until})")]
    NotValid {
        member: String,
        key_id: String,
        at: String,
        from: String,
        until: String,
    },
    #[error("recipient key {key_id} of {member} was revoked at {revoked_at}")]
    Revoked {
        member: String,
        key_id: String,
        revoked_at: String,
    },
    #[error("recipient key {key_id} of {member} is already known with another record")]
    Conflict { member: String, key_id: String },
    #[error("{member} has {MAX_KEYS_PER_MEMBER} recipient keys still valid; revoke one first")]
    TooMany { member: String },
    #[error("the recipient key register {path}: {reason}")]
    Io { path: String, reason: String },
}

impl From<BulletinError> for KeyError {
    fn from(e: BulletinError) -> Self {
        KeyError::Signature(e.to_string())
    }
}

/// The id of a recipient key.
pub fn key_id(suite: Suite, public: &[u8]) -> [u8; KEY_ID_LEN] {
    use aws_lc_rs::digest;
    let (kem, kdf, aead) = suite.ids();
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(KEY_ID_LABEL);
    ctx.update(&kem.to_be_bytes());
    ctx.update(&kdf.to_be_bytes());
    ctx.update(&aead.to_be_bytes());
    ctx.update(public);
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&ctx.finish().as_ref()[..KEY_ID_LEN]);
    id
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes from hex (either case); `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn at(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

/// A time for messages (RFC 3339, UTC, seconds).
pub fn when(t: SystemTime) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs(t) as i64)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs(t).to_string())
}

/// What a key record states (its JSON payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyPayload {
    member: String,
    key_id: String,
    suite: String,
    /// The public key, hex (RFC 9180's serialization).
    public_key: String,
    /// Unix seconds.
    not_before: u64,
    not_after: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replaces: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationPayload {
    member: String,
    key_id: String,
    /// Unix seconds.
    revoked_at: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    reason: String,
}

/// A recipient key record, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub member: String,
    pub key_id: [u8; KEY_ID_LEN],
    pub suite: Suite,
    pub public: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub replaces: Option<[u8; KEY_ID_LEN]>,
    /// Who signed it.
    pub signer: Identity,
    /// The signed record, as announced.
    pub envelope: Envelope,
}

/// A revocation, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub member: String,
    pub key_id: [u8; KEY_ID_LEN],
    pub revoked_at: SystemTime,
    pub reason: String,
    pub signer: Identity,
    pub envelope: Envelope,
}

/// A key id from its hex form.
pub fn parse_key_id(s: &str) -> Result<[u8; KEY_ID_LEN], KeyError> {
    unhex(s).and_then(|b| b.try_into().ok()).ok_or_else(|| {
        KeyError::Malformed(format!("key id {s:?} is not {KEY_ID_LEN} bytes of hex"))
    })
}

/// The signer of a record of `member`: one of the member's certificates.
fn check_signer(signer: &Identity, member: &str) -> Result<(), KeyError> {
    let ok =
        signer.kind() != RoleKind::Operator && signer.member().map(|m| m.as_str()) == Some(member);
    match ok {
        true => Ok(()),
        false => Err(KeyError::WrongSigner {
            signer: signer.to_string(),
            member: member.to_owned(),
        }),
    }
}

/// Makes and signs a key record for `public`.
pub fn announce(
    signer: &Signer,
    member: &str,
    suite: Suite,
    public: &[u8],
    not_before: SystemTime,
    validity: Duration,
    replaces: Option<[u8; KEY_ID_LEN]>,
) -> Result<Envelope, KeyError> {
    if validity > MAX_VALIDITY {
        return Err(KeyError::Malformed(format!(
            "a validity of {} days (at most {})",
            validity.as_secs() / 86_400,
            MAX_VALIDITY.as_secs() / 86_400
        )));
    }
    let payload = KeyPayload {
        member: member.to_owned(),
        key_id: hex(&key_id(suite, public)),
        suite: suite.name().to_owned(),
        public_key: hex(public),
        not_before: secs(not_before),
        not_after: secs(not_before + validity),
        replaces: replaces.map(|r| hex(&r)),
    };
    let bytes = serde_json::to_vec(&payload).map_err(|e| KeyError::Malformed(e.to_string()))?;
    Ok(signer.sign_statement(KEY_TYPE, bytes)?)
}

/// Makes and signs the revocation of `key_id`.
pub fn revoke(
    signer: &Signer,
    member: &str,
    key_id: [u8; KEY_ID_LEN],
    revoked_at: SystemTime,
    reason: &str,
) -> Result<Envelope, KeyError> {
    let payload = RevocationPayload {
        member: member.to_owned(),
        key_id: hex(&key_id),
        revoked_at: secs(revoked_at),
        reason: reason.to_owned(),
    };
    let bytes = serde_json::to_vec(&payload).map_err(|e| KeyError::Malformed(e.to_string()))?;
    Ok(signer.sign_statement(REVOCATION_TYPE, bytes)?)
}

/// The signer of `env`, verified at `now`, or — its certificate expired
/// since — at `made` (never later than `now`). Revocation applies whatever
/// the time.
fn signed_at(
    env: &Envelope,
    payload_type: &str,
    chains: &dyn ChainCheck,
    now: SystemTime,
    made: SystemTime,
) -> Result<Identity, KeyError> {
    match bulletin::verify_statement(env, payload_type, chains, now) {
        Err(BulletinError::Signer(crate::trust::TrustError::Expired)) if made < now => {
            Ok(bulletin::verify_statement(env, payload_type, chains, made)?)
        }
        other => Ok(other?),
    }
}

/// Checks a key record: its signature by a certificate of its member, its
/// fields (a known suite, a public key of the suite's length, the key id
/// derived from them, a validity within bounds).
pub fn verify_key(
    env: &Envelope,
    chains: &dyn ChainCheck,
    now: SystemTime,
) -> Result<KeyRecord, KeyError> {
    if env.payload.len() > MAX_PAYLOAD {
        return Err(KeyError::Malformed(format!("{} bytes", env.payload.len())));
    }
    if env.payload_type != KEY_TYPE {
        return Err(KeyError::Malformed(format!(
            "an envelope of type {:?}, not {KEY_TYPE:?}",
            env.payload_type
        )));
    }
    let p: KeyPayload = serde_json::from_slice(&env.payload)
        .map_err(|e| KeyError::Malformed(format!("its JSON: {e}")))?;
    // A record outlives the certificate that signed it (keys last up to
    // 400 days, certificates 90): one whose signer has expired since is
    // taken if the chain was valid when the key became valid.
    let signer = signed_at(env, KEY_TYPE, chains, now, at(p.not_before))?;
    check_signer(&signer, &p.member)?;
    let suite = Suite::parse(&p.suite)
        .ok_or_else(|| KeyError::Malformed(format!("unknown suite {:?}", p.suite)))?;
    let public = unhex(&p.public_key)
        .ok_or_else(|| KeyError::Malformed("the public key is not hex".into()))?;
    if public.len() != suite.public_len() {
        return Err(KeyError::Malformed(format!(
            "a {} public key of {} bytes (it is {})",
            suite.name(),
            public.len(),
            suite.public_len()
        )));
    }
    let id = parse_key_id(&p.key_id)?;
    if id != key_id(suite, &public) {
        return Err(KeyError::Malformed(
            "the key id is not the one its suite and public key give".into(),
        ));
    }
    if p.not_after <= p.not_before || Duration::from_secs(p.not_after - p.not_before) > MAX_VALIDITY
    {
        return Err(KeyError::Malformed(format!(
            "a validity from {} to {}",
            p.not_before, p.not_after
        )));
    }
    Ok(KeyRecord {
        member: p.member,
        key_id: id,
        suite,
        public,
        not_before: at(p.not_before),
        not_after: at(p.not_after),
        replaces: p.replaces.as_deref().map(parse_key_id).transpose()?,
        signer,
        envelope: env.clone(),
    })
}

/// Checks a revocation: signed by a certificate of its member.
pub fn verify_revocation(
    env: &Envelope,
    chains: &dyn ChainCheck,
    now: SystemTime,
) -> Result<Revocation, KeyError> {
    if env.payload.len() > MAX_PAYLOAD {
        return Err(KeyError::Malformed(format!("{} bytes", env.payload.len())));
    }
    if env.payload_type != REVOCATION_TYPE {
        return Err(KeyError::Malformed(format!(
            "an envelope of type {:?}, not {REVOCATION_TYPE:?}",
            env.payload_type
        )));
    }
    let p: RevocationPayload = serde_json::from_slice(&env.payload)
        .map_err(|e| KeyError::Malformed(format!("its JSON: {e}")))?;
    let signer = signed_at(env, REVOCATION_TYPE, chains, now, at(p.revoked_at))?;
    check_signer(&signer, &p.member)?;
    Ok(Revocation {
        key_id: parse_key_id(&p.key_id)?,
        member: p.member,
        revoked_at: at(p.revoked_at),
        reason: p.reason,
        signer,
        envelope: env.clone(),
    })
}

/// The recipient keys a node knows, with their revocations.
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    keys: BTreeMap<(String, [u8; KEY_ID_LEN]), KeyRecord>,
    /// A revocation may arrive before its key (federation is unordered).
    revoked: BTreeMap<(String, [u8; KEY_ID_LEN]), Revocation>,
}

impl Keyring {
    /// Adds a verified record. `Ok(false)`: already held. A member's
    /// expired keys make way for a new one beyond the bound; a member with
    /// that many keys still valid is refused.
    pub fn add_key(&mut self, r: KeyRecord, now: SystemTime) -> Result<bool, KeyError> {
        let k = (r.member.clone(), r.key_id);
        if let Some(held) = self.keys.get(&k) {
            // One key id is one public key and suite (derived); a second
            // record may only differ in its validity: the first is kept.
            if held.public != r.public {
                return Err(KeyError::Conflict {
                    member: r.member,
                    key_id: hex(&r.key_id),
                });
            }
            return Ok(false);
        }
        let of_member: Vec<(SystemTime, [u8; KEY_ID_LEN])> = self
            .keys
            .values()
            .filter(|x| x.member == r.member)
            .map(|x| (x.not_after, x.key_id))
            .collect();
        if of_member.len() >= MAX_KEYS_PER_MEMBER {
            let oldest_expired = of_member
                .iter()
                .filter(|(until, _)| *until <= now)
                .min()
                .map(|(_, id)| *id);
            match oldest_expired {
                Some(id) => {
                    self.keys.remove(&(r.member.clone(), id));
                }
                None => return Err(KeyError::TooMany { member: r.member }),
            }
        }
        self.keys.insert(k, r);
        Ok(true)
    }

    /// Adds a verified revocation. `Ok(false)`: already held (the earliest
    /// revocation of a key is the one kept).
    pub fn add_revocation(&mut self, r: Revocation) -> bool {
        let k = (r.member.clone(), r.key_id);
        match self.revoked.get(&k) {
            Some(held) if held.revoked_at <= r.revoked_at => false,
            Some(_) => {
                self.revoked.insert(k, r);
                true
            }
            None => {
                // Bounded: a member's revocations are at most four times
                // its keys (older keys' revocations outlive their records).
                let of_member = self.revoked.keys().filter(|(m, _)| *m == r.member).count();
                if of_member >= 4 * MAX_KEYS_PER_MEMBER {
                    return false;
                }
                self.revoked.insert(k, r);
                true
            }
        }
    }

    /// The key (member, key_id) if it could be sealed to at `t`: known,
    /// valid then, not revoked by then.
    pub fn usable_at(
        &self,
        member: &str,
        key_id: &[u8; KEY_ID_LEN],
        t: SystemTime,
    ) -> Result<&KeyRecord, KeyError> {
        let k = (member.to_owned(), *key_id);
        let Some(r) = self.keys.get(&k) else {
            return Err(KeyError::Unknown {
                member: member.to_owned(),
                key_id: hex(key_id),
            });
        };
        if let Some(rev) = self.revoked.get(&k) {
            if rev.revoked_at <= t {
                return Err(KeyError::Revoked {
                    member: member.to_owned(),
                    key_id: hex(key_id),
                    revoked_at: when(rev.revoked_at),
                });
            }
        }
        if t < r.not_before || t >= r.not_after {
            return Err(KeyError::NotValid {
                member: member.to_owned(),
                key_id: hex(key_id),
                at: when(t),
                from: when(r.not_before),
                until: when(r.not_after),
            });
        }
        Ok(r)
    }

    /// The keys of `member` (every member if `None`) usable now, by member
    /// then key id.
    pub fn current(&self, member: Option<&str>, now: SystemTime) -> Vec<&KeyRecord> {
        self.keys
            .values()
            .filter(|r| member.is_none_or(|m| r.member == m))
            .filter(|r| self.usable_at(&r.member, &r.key_id, now).is_ok())
            .collect()
    }

    /// Every record and revocation held, for a peer or a file.
    pub fn all(&self) -> (Vec<&KeyRecord>, Vec<&Revocation>) {
        (
            self.keys.values().collect(),
            self.revoked.values().collect(),
        )
    }
}

/// The keyring a node keeps, in `recipient-keys.json` in its data
/// directory (written aside, fsynced, renamed): every record and revocation
/// it was given or fetched from its peers, as signed.
pub struct KeyStore {
    path: std::path::PathBuf,
    ring: parking_lot::RwLock<Keyring>,
    /// One writer of the file at a time.
    writing: parking_lot::Mutex<()>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    /// Each envelope's protobuf encoding, base64.
    keys: Vec<String>,
    revocations: Vec<String>,
}

impl KeyStore {
    /// Loads the register in `dir` (none yet: empty), checking every record
    /// again with `chains` (one that no longer verifies is dropped, said in
    /// the log).
    pub fn open(
        dir: &std::path::Path,
        chains: &dyn ChainCheck,
        now: SystemTime,
    ) -> Result<KeyStore, KeyError> {
        use base64::Engine as _;
        let path = dir.join("recipient-keys.json");
        let io = |e: &dyn std::fmt::Display| KeyError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let file: KeyFile = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| io(&e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeyFile::default(),
            Err(e) => return Err(io(&e)),
        };
        let decode = |s: &str| -> Option<Envelope> {
            let b = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
            crate::domain::bulletin::codec::decode_envelope(&b).ok()
        };
        let mut ring = Keyring::default();
        for k in &file.keys {
            match decode(k)
                .ok_or_else(|| KeyError::Malformed("not an envelope".into()))
                .and_then(|e| verify_key(&e, chains, now))
            {
                Ok(r) => {
                    let _ = ring.add_key(r, now);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a recipient key record no longer verifies; dropped")
                }
            }
        }
        for k in &file.revocations {
            match decode(k)
                .ok_or_else(|| KeyError::Malformed("not an envelope".into()))
                .and_then(|e| verify_revocation(&e, chains, now))
            {
                Ok(r) => {
                    ring.add_revocation(r);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a recipient key revocation no longer verifies; dropped")
                }
            }
        }
        Ok(KeyStore {
            path,
            ring: parking_lot::RwLock::new(ring),
            writing: parking_lot::Mutex::new(()),
        })
    }

    /// Verifies and adds a key record; written to the file before this
    /// returns if it was new.
    pub fn add_key(
        &self,
        env: &Envelope,
        chains: &dyn ChainCheck,
        now: SystemTime,
    ) -> Result<(KeyRecord, bool), KeyError> {
        let r = verify_key(env, chains, now)?;
        let added = self.insert_key(r.clone(), now)?;
        Ok((r, added))
    }

    /// Adds a record already verified ([`verify_key`]); written to the file
    /// before this returns if it was new.
    pub fn insert_key(&self, r: KeyRecord, now: SystemTime) -> Result<bool, KeyError> {
        let _w = self.writing.lock();
        let added = self.ring.write().add_key(r, now)?;
        if added {
            self.save()?;
        }
        Ok(added)
    }

    /// Verifies and adds a revocation (kept even before its key arrives).
    pub fn add_revocation(
        &self,
        env: &Envelope,
        chains: &dyn ChainCheck,
        now: SystemTime,
    ) -> Result<(Revocation, bool), KeyError> {
        let r = verify_revocation(env, chains, now)?;
        let added = self.insert_revocation(r.clone())?;
        Ok((r, added))
    }

    /// Adds a revocation already verified ([`verify_revocation`]).
    pub fn insert_revocation(&self, r: Revocation) -> Result<bool, KeyError> {
        let _w = self.writing.lock();
        let added = self.ring.write().add_revocation(r);
        if added {
            self.save()?;
        }
        Ok(added)
    }

    /// The key, if it could be sealed to at `t`.
    pub fn usable_at(
        &self,
        member: &str,
        key_id: &[u8; KEY_ID_LEN],
        t: SystemTime,
    ) -> Result<KeyRecord, KeyError> {
        self.ring.read().usable_at(member, key_id, t).cloned()
    }

    /// The signed records to hand out: the keys of `member` (all members if
    /// `None`) usable now, or (`all`) every record and revocation held.
    pub fn listing(
        &self,
        member: Option<&str>,
        all: bool,
        now: SystemTime,
    ) -> (Vec<Envelope>, Vec<Envelope>) {
        let ring = self.ring.read();
        if !all {
            let keys = ring
                .current(member, now)
                .into_iter()
                .map(|r| r.envelope.clone())
                .collect();
            return (keys, Vec::new());
        }
        let (keys, revs) = ring.all();
        let of = |m: &str| member.is_none_or(|x| x == m);
        (
            keys.into_iter()
                .filter(|r| of(&r.member))
                .map(|r| r.envelope.clone())
                .collect(),
            revs.into_iter()
                .filter(|r| of(&r.member))
                .map(|r| r.envelope.clone())
                .collect(),
        )
    }

    fn save(&self) -> Result<(), KeyError> {
        use base64::Engine as _;
        let enc = |e: &Envelope| {
            base64::engine::general_purpose::STANDARD
                .encode(crate::domain::bulletin::codec::encode_envelope(e))
        };
        let file = {
            let ring = self.ring.read();
            let (keys, revs) = ring.all();
            KeyFile {
                keys: keys.iter().map(|r| enc(&r.envelope)).collect(),
                revocations: revs.iter().map(|r| enc(&r.envelope)).collect(),
            }
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| KeyError::Io {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        crate::base::disk::replace_file(&self.path, &bytes, false).map_err(|e| KeyError::Io {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })
    }
}
