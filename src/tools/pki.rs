//! The operator's certificate authority (`beacon ca`).
//!
//! A CA is a directory:
//!
//! ```text
//! ca.pem        the CA certificate
//! ca.key        its private key (mode 0600)
//! ca.json       trust domain, member scope, algorithm, CRL number
//! index.json    every certificate issued: serial, identity, validity, revocation
//! crl.pem       the latest CRL (rewritten by `revoke` and `crl`)
//! issued/       a copy of every issued certificate, by serial
//! ```
//!
//! The CA refuses to issue an identity outside its member scope, never
//! overwrites a file without `force`, and writes every file atomically.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::base::identity::{Identity, MemberId, MemberScope, Name, Role, RoleKind, TrustDomain};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    #[error("no CA in {0} (run `beacon ca init` first)")]
    MissingCa(String),
    #[error("{0} already exists (use --force to overwrite)")]
    Exists(String),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
    #[error("wrong member for this CA: it vouches for {scope}, not {member}")]
    WrongMember { scope: String, member: String },
    #[error("this CA vouches only for {scope}; operators need a CA for every member (\"*\")")]
    OperatorNeedsAllianceCa { scope: String },
    #[error("the CA expired on {0}")]
    CaExpired(String),
    #[error("bad name: {0}")]
    BadName(String),
    #[error("unknown algorithm {0:?} (use ed25519 or ecdsa-p256)")]
    Algorithm(String),
    #[error("no certificate with serial {0} in this CA's index")]
    UnknownSerial(String),
    #[error("certificate was not issued by this CA")]
    NotOurs,
    #[error("certificate {0} is already revoked")]
    AlreadyRevoked(String),
    #[error("certificate {serial} is revoked and cannot be renewed (a renewal would vouch again for a key that was withdrawn): issue a new certificate, with a new key, for the same identity: beacon ca issue {how}")]
    RenewRevoked { serial: String, how: String },
    #[error("invalid validity: {0}")]
    Validity(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PkiError + 'a {
    move |source| PkiError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// The key algorithm of a CA and the certificates it issues (and so of the
/// bulletin signatures made with those keys).
///
/// ECDSA P-256 is the default: every mainstream TLS stack verifies it,
/// including gRPC's C-core (Python `grpcio`, and the C++, Ruby, PHP and C#
/// clients built on it), which offers no Ed25519 signature scheme and so
/// cannot complete a handshake with a node whose chain is Ed25519. Ed25519
/// stays available for alliances whose clients all speak it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    Ed25519,
    #[default]
    EcdsaP256,
}

impl std::str::FromStr for Algorithm {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ed25519" => Ok(Algorithm::Ed25519),
            "ecdsa-p256" => Ok(Algorithm::EcdsaP256),
            other => Err(PkiError::Algorithm(other.to_owned())),
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::EcdsaP256 => "ecdsa-p256",
        })
    }
}

impl Algorithm {
    fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Algorithm::Ed25519 => &rcgen::PKCS_ED25519,
            Algorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }

    pub fn generate(self) -> Result<KeyPair, PkiError> {
        Ok(KeyPair::generate_for(self.rcgen())?)
    }
}

/// Revocation reasons an operator may give (RFC 5280 §5.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl std::str::FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "unspecified" => Reason::Unspecified,
            "key-compromise" => Reason::KeyCompromise,
            "ca-compromise" => Reason::CaCompromise,
            "affiliation-changed" => Reason::AffiliationChanged,
            "superseded" => Reason::Superseded,
            "cessation-of-operation" => Reason::CessationOfOperation,
            "privilege-withdrawn" => Reason::PrivilegeWithdrawn,
            other => {
                return Err(format!(
                    "unknown reason {other:?}: use unspecified, key-compromise, ca-compromise, \
                     affiliation-changed, superseded, cessation-of-operation or privilege-withdrawn"
                ))
            }
        })
    }
}

impl Reason {
    fn rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Reason::Unspecified => R::Unspecified,
            Reason::KeyCompromise => R::KeyCompromise,
            Reason::CaCompromise => R::CaCompromise,
            Reason::AffiliationChanged => R::AffiliationChanged,
            Reason::Superseded => R::Superseded,
            Reason::CessationOfOperation => R::CessationOfOperation,
            Reason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        }
    }
}

/// `ca.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaMeta {
    pub name: String,
    pub trust_domain: String,
    pub members: Vec<String>,
    pub algorithm: Algorithm,
    pub crl_number: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// One line of `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IssuedCert {
    /// Lower-case hex, as shown by `list` and taken by `revoke --serial`.
    pub serial: String,
    pub identity: String,
    pub kind: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub cert_path: Option<String>,
    pub key_path: Option<String>,
    pub revoked: Option<Revocation>,
    /// The serial this certificate renewed, if any.
    pub renews: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revocation {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub reason: Reason,
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub identity: Identity,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Defaults: 90 days for nodes and clients, 30 days for operators.
    pub validity: Option<Duration>,
    /// Overrides for tests and back-dating: explicit validity bounds.
    pub not_before: Option<OffsetDateTime>,
    pub not_after: Option<OffsetDateTime>,
    /// Key algorithm; defaults to the CA's.
    pub algorithm: Option<Algorithm>,
}

impl IssueRequest {
    pub fn new(identity: Identity) -> Self {
        IssueRequest {
            identity,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            validity: None,
            not_before: None,
            not_after: None,
            algorithm: None,
        }
    }
}

/// A freshly issued certificate with its key, in PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub serial: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub entry: IssuedCert,
}

pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
pub const DEFAULT_OPERATOR_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
pub const DEFAULT_CRL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Options for `init`.
#[derive(Debug, Clone)]
pub struct InitRequest {
    pub trust_domain: TrustDomain,
    pub name: String,
    pub members: MemberScope,
    pub algorithm: Algorithm,
    pub validity: Duration,
    pub force: bool,
}

/// An opened CA directory.
pub struct Ca {
    dir: PathBuf,
    pub meta: CaMeta,
    cert_der: Vec<u8>,
    key: KeyPair,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

fn random_serial() -> Vec<u8> {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and never starting with a zero byte, so the DER integer is
    // exactly these 16 bytes and the hex form is stable.
    bytes[0] = (bytes[0] & 0x7f) | 0x10;
    bytes.to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s
        .trim()
        .trim_start_matches("0x")
        .replace(':', "")
        .to_ascii_lowercase();
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync of
/// the directory, so that a revocation reported done survives a power cut).
/// Refuses to replace an existing file unless `force`.
pub fn write_file(path: &Path, bytes: &[u8], private: bool, force: bool) -> Result<(), PkiError> {
    if path.exists() && !force {
        return Err(PkiError::Exists(path.display().to_string()));
    }
    let parent = crate::base::disk::parent_of(path);
    crate::base::disk::create_dir_all(parent).map_err(io_err("create", parent))?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    opts.mode(if private { 0o600 } else { 0o644 });
    let mut f = opts.open(&tmp).map_err(io_err("write", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err("rename", path))?;
    crate::base::disk::sync_parent(path).map_err(io_err("sync", parent))?;
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, PkiError> {
    let text = fs::read_to_string(path).map_err(io_err("read", path))?;
    serde_json::from_str(&text).map_err(|e| PkiError::Damaged {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn to_offset(t: x509_parser::time::ASN1Time) -> OffsetDateTime {
    t.to_datetime()
}

impl Ca {
    pub fn cert_path(dir: &Path) -> PathBuf {
        dir.join("ca.pem")
    }
    pub fn crl_path(dir: &Path) -> PathBuf {
        dir.join("crl.pem")
    }

    /// Creates a CA in `dir` and writes an empty CRL.
    pub fn init(dir: &Path, req: &InitRequest) -> Result<Ca, PkiError> {
        let key_path = dir.join("ca.key");
        let cert_path = Ca::cert_path(dir);
        if !req.force {
            for p in [&key_path, &cert_path, &dir.join("ca.json")] {
                if p.exists() {
                    return Err(PkiError::Exists(p.display().to_string()));
                }
            }
        }
        if req.name.trim().is_empty() {
            return Err(PkiError::BadName("the CA name is empty".into()));
        }
        let key = req.algorithm.generate()?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.name.clone());
        dn.push(DnType::OrganizationName, "Beacon");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + req.validity;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.self_signed(&key)?;
        crate::base::disk::create_dir_all(dir).map_err(io_err("create", dir))?;
        write_file(&key_path, key.serialize_pem().as_bytes(), true, req.force)?;
        write_file(&cert_path, cert.pem().as_bytes(), false, req.force)?;
        let meta = CaMeta {
            name: req.name.clone(),
            trust_domain: req.trust_domain.to_string(),
            members: req.members.0.iter().map(|p| p.to_string()).collect(),
            algorithm: req.algorithm,
            crl_number: 0,
            created_at: now,
        };
        let meta_json = serde_json::to_vec_pretty(&meta).map_err(|e| PkiError::Damaged {
            path: "ca.json".into(),
            reason: e.to_string(),
        })?;
        write_file(&dir.join("ca.json"), &meta_json, false, req.force)?;
        write_file(&dir.join("index.json"), b"[]\n", false, req.force)?;
        let mut ca = Ca::open(dir)?;
        ca.write_crl(DEFAULT_CRL_VALIDITY)?;
        Ok(ca)
    }

    pub fn open(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = Ca::cert_path(dir);
        let key_path = dir.join("ca.key");
        let meta_path = dir.join("ca.json");
        if !cert_path.exists() || !key_path.exists() || !meta_path.exists() {
            return Err(PkiError::MissingCa(dir.display().to_string()));
        }
        let meta: CaMeta = read_json(&meta_path)?;
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err("read", &cert_path))?;
        let damaged = |reason: String| PkiError::Damaged {
            path: cert_path.display().to_string(),
            reason,
        };
        let cert_der = pem::parse(&cert_pem)
            .map_err(|e| damaged(e.to_string()))?
            .into_contents();
        let (_, x509) = X509Certificate::from_der(&cert_der).map_err(|e| damaged(e.to_string()))?;
        let not_after = to_offset(x509.validity().not_after);
        let key_pem = fs::read_to_string(&key_path).map_err(io_err("read", &key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Damaged {
            path: key_path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Ca {
            dir: dir.to_path_buf(),
            meta,
            cert_der,
            key,
            not_after,
        })
    }

    pub fn scope(&self) -> Result<MemberScope, PkiError> {
        MemberScope::parse_list(&self.meta.members).map_err(|e| PkiError::Damaged {
            path: self.dir.join("ca.json").display().to_string(),
            reason: e.to_string(),
        })
    }

    pub fn trust_domain(&self) -> Result<TrustDomain, PkiError> {
        self.meta
            .trust_domain
            .parse()
            .map_err(|e| PkiError::Damaged {
                path: self.dir.join("ca.json").display().to_string(),
                reason: format!("{e}"),
            })
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        let der = rustls::pki_types::CertificateDer::from(self.cert_der.clone());
        Ok(Issuer::from_ca_cert_der(&der, &self.key)?)
    }

    pub fn index(&self) -> Result<Vec<IssuedCert>, PkiError> {
        read_json(&self.dir.join("index.json"))
    }

    fn save_index(&self, index: &[IssuedCert]) -> Result<(), PkiError> {
        let json = serde_json::to_vec_pretty(index).map_err(|e| PkiError::Damaged {
            path: "index.json".into(),
            reason: e.to_string(),
        })?;
        write_file(&self.dir.join("index.json"), &json, false, true)
    }

    fn check_usable(&self) -> Result<(), PkiError> {
        if self.not_after <= OffsetDateTime::now_utc() {
            return Err(PkiError::CaExpired(
                self.not_after
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            ));
        }
        Ok(())
    }

    /// Issues a certificate for `req.identity` and records it in the index.
    pub fn issue(&self, req: &IssueRequest) -> Result<Issued, PkiError> {
        self.issue_inner(req, None)
    }

    fn issue_inner(&self, req: &IssueRequest, renews: Option<String>) -> Result<Issued, PkiError> {
        self.check_usable()?;
        let scope = self.scope()?;
        let td = self.trust_domain()?;
        let id = &req.identity;
        if id.trust_domain != td {
            return Err(PkiError::BadName(format!(
                "identity {id} is not in this CA's trust domain {td}"
            )));
        }
        match id.member() {
            Some(member) if !scope.allows(member) => {
                return Err(PkiError::WrongMember {
                    scope: scope.to_string(),
                    member: member.to_string(),
                })
            }
            None if !scope.0.contains(&crate::base::identity::MemberPattern::Any) => {
                return Err(PkiError::OperatorNeedsAllianceCa {
                    scope: scope.to_string(),
                })
            }
            _ => {}
        }
        if id.kind() != RoleKind::Node
            && (!req.dns_names.is_empty() || !req.ip_addresses.is_empty())
        {
            return Err(PkiError::BadName(
                "only node certificates carry DNS names or IP addresses".into(),
            ));
        }
        let now = OffsetDateTime::now_utc();
        let default_validity = match id.kind() {
            RoleKind::Operator => DEFAULT_OPERATOR_VALIDITY,
            _ => DEFAULT_LEAF_VALIDITY,
        };
        let not_before = req.not_before.unwrap_or(now - time::Duration::minutes(5));
        let mut not_after = req
            .not_after
            .unwrap_or(now + req.validity.unwrap_or(default_validity));
        if not_after > self.not_after {
            not_after = self.not_after;
        }
        if not_after <= not_before {
            return Err(PkiError::Validity(
                "not-after must be later than not-before".into(),
            ));
        }

        let key = req.algorithm.unwrap_or(self.meta.algorithm).generate()?;
        let serial = random_serial();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let cn = match &id.role {
            crate::base::identity::Role::Node { member, node } => format!("{node}.{member}"),
            crate::base::identity::Role::Client { member, name } => format!("{name}@{member}"),
            crate::base::identity::Role::Operator { name } => format!("operator {name}"),
        };
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, "Beacon");
        if let Some(m) = id.member() {
            dn.push(DnType::OrganizationalUnitName, m.to_string());
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match id.kind() {
            RoleKind::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let mut sans =
            vec![SanType::URI(id.to_string().try_into().map_err(
                |e: rcgen::Error| PkiError::BadName(e.to_string()),
            )?)];
        for dns in &req.dns_names {
            sans.push(SanType::DnsName(dns.clone().try_into().map_err(|_| {
                PkiError::BadName(format!("{dns:?} is not a DNS name"))
            })?));
        }
        for ip in &req.ip_addresses {
            sans.push(SanType::IpAddress(*ip));
        }
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        let serial_hex = hex(&serial);
        let entry = IssuedCert {
            serial: serial_hex.clone(),
            identity: id.to_string(),
            kind: id.kind().to_string(),
            dns_names: req.dns_names.clone(),
            ip_addresses: req.ip_addresses.iter().map(|i| i.to_string()).collect(),
            not_before,
            not_after,
            cert_path: None,
            key_path: None,
            revoked: None,
            renews,
        };
        let issued_dir = self.dir.join("issued");
        write_file(
            &issued_dir.join(format!("{serial_hex}.pem")),
            cert.pem().as_bytes(),
            false,
            false,
        )?;
        let mut index = self.index()?;
        index.push(entry.clone());
        self.save_index(&index)?;
        Ok(Issued {
            serial: serial_hex,
            cert_pem: cert.pem(),
            key_pem: portable_key_pem(&key),
            entry,
        })
    }

    /// Records where the operator wrote an issued certificate and key.
    pub fn record_paths(&self, serial: &str, cert: &Path, key: &Path) -> Result<(), PkiError> {
        let mut index = self.index()?;
        if let Some(e) = index.iter_mut().find(|e| e.serial == serial) {
            e.cert_path = Some(cert.display().to_string());
            e.key_path = Some(key.display().to_string());
        }
        self.save_index(&index)
    }

    /// Finds the index entry for a serial (hex) or a certificate file.
    pub fn find(&self, selector: &Selector) -> Result<IssuedCert, PkiError> {
        let serial = self.selector_serial(selector)?;
        self.index()?
            .into_iter()
            .find(|e| e.serial == serial)
            .ok_or(PkiError::UnknownSerial(serial))
    }

    fn selector_serial(&self, selector: &Selector) -> Result<String, PkiError> {
        match selector {
            Selector::Serial(s) => unhex(s)
                .map(|b| hex(&b))
                .ok_or_else(|| PkiError::UnknownSerial(s.clone())),
            Selector::CertFile(path) => {
                let certs = crate::trust::read_certs(path).map_err(|e| PkiError::Damaged {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let leaf = certs.first().ok_or(PkiError::NotOurs)?;
                let (_, x509) = X509Certificate::from_der(leaf).map_err(|e| PkiError::Damaged {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let (_, ours) =
                    X509Certificate::from_der(&self.cert_der).map_err(|_| PkiError::NotOurs)?;
                // Names can collide between CAs; the signature cannot.
                if x509.issuer() != ours.subject()
                    || x509.verify_signature(Some(ours.public_key())).is_err()
                {
                    return Err(PkiError::NotOurs);
                }
                Ok(hex(x509.raw_serial()))
            }
        }
    }

    /// Issues a new certificate (with a new key) for the same identity and names.
    pub fn renew(
        &self,
        selector: &Selector,
        validity: Option<Duration>,
    ) -> Result<Issued, PkiError> {
        let old = self.find(selector)?;
        let identity: Identity = old
            .identity
            .parse()
            .map_err(|e| PkiError::BadName(format!("{e}")))?;
        if old.revoked.is_some() {
            return Err(PkiError::RenewRevoked {
                serial: old.serial,
                how: issue_command(&self.dir, &identity, &old.dns_names, &old.ip_addresses),
            });
        }
        let mut req = IssueRequest::new(identity);
        req.dns_names = old.dns_names.clone();
        req.ip_addresses = old
            .ip_addresses
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        req.validity = validity;
        self.issue_inner(&req, Some(old.serial))
    }

    /// Marks a certificate revoked and rewrites the CRL.
    pub fn revoke(&mut self, selector: &Selector, reason: Reason) -> Result<IssuedCert, PkiError> {
        let serial = self.selector_serial(selector)?;
        let mut index = self.index()?;
        let entry = index
            .iter_mut()
            .find(|e| e.serial == serial)
            .ok_or_else(|| PkiError::UnknownSerial(serial.clone()))?;
        if entry.revoked.is_some() {
            return Err(PkiError::AlreadyRevoked(serial));
        }
        entry.revoked = Some(Revocation {
            at: OffsetDateTime::now_utc(),
            reason,
        });
        let out = entry.clone();
        self.save_index(&index)?;
        self.write_crl(DEFAULT_CRL_VALIDITY)?;
        Ok(out)
    }

    /// Signs a new CRL listing every revoked certificate and writes `crl.pem`.
    pub fn write_crl(&mut self, next_update: Duration) -> Result<PathBuf, PkiError> {
        let pem = self.crl_pem(next_update)?;
        let path = Ca::crl_path(&self.dir);
        write_file(&path, pem.as_bytes(), false, true)?;
        Ok(path)
    }

    fn crl_pem(&mut self, next_update: Duration) -> Result<String, PkiError> {
        self.check_usable()?;
        let now = OffsetDateTime::now_utc();
        let revoked = self
            .index()?
            .into_iter()
            .filter_map(|e| {
                let r = e.revoked?;
                Some(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&unhex(&e.serial)?),
                    revocation_time: r.at,
                    reason_code: Some(r.reason.rcgen()),
                    invalidity_date: None,
                })
            })
            .collect();
        self.meta.crl_number += 1;
        let meta_json = serde_json::to_vec_pretty(&self.meta).map_err(|e| PkiError::Damaged {
            path: "ca.json".into(),
            reason: e.to_string(),
        })?;
        write_file(&self.dir.join("ca.json"), &meta_json, false, true)?;
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + next_update,
            crl_number: SerialNumber::from(self.meta.crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer()?)?;
        Ok(crl.pem()?)
    }
}

/// How an operator names a certificate.
#[derive(Debug, Clone)]
pub enum Selector {
    Serial(String),
    CertFile(PathBuf),
}

/// Parses `--member` and `--name` into an identity of the given kind.
pub fn identity_for(
    td: &TrustDomain,
    kind: RoleKind,
    member: Option<&str>,
    name: &str,
) -> Result<Identity, PkiError> {
    let name: Name = name
        .parse()
        .map_err(|e| PkiError::BadName(format!("{e}")))?;
    let parse_member = |m: Option<&str>| -> Result<MemberId, PkiError> {
        m.ok_or_else(|| PkiError::BadName("--member is required".into()))?
            .parse()
            .map_err(|e| PkiError::BadName(format!("{e}")))
    };
    Ok(match kind {
        RoleKind::Node => Identity::node(td.clone(), parse_member(member)?, name),
        RoleKind::Client => Identity::client(td.clone(), parse_member(member)?, name),
        RoleKind::Operator => {
            if member.is_some() {
                return Err(PkiError::BadName(
                    "operators belong to no member; drop --member".into(),
                ));
            }
            Identity::operator(td.clone(), name)
        }
    })
}

/// A human description of a certificate or CRL file, for `beacon ca inspect`.
pub fn inspect(path: &Path) -> Result<String, PkiError> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    let damaged = |reason: String| PkiError::Damaged {
        path: path.display().to_string(),
        reason,
    };
    let rfc = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    if let Ok(crls) = crate::trust::parse_pem_or_der(&bytes, "X509 CRL") {
        if let Some(der) = crls.first() {
            if let Ok((_, crl)) =
                x509_parser::revocation_list::CertificateRevocationList::from_der(der)
            {
                let mut out = format!(
                    "CRL issued by {}\nthis update: {}\nnext update: {}\n",
                    crl.issuer(),
                    rfc(to_offset(crl.last_update())),
                    crl.next_update()
                        .map(|t| rfc(to_offset(t)))
                        .unwrap_or_else(|| "-".into()),
                );
                if let Some(n) = crl.crl_number() {
                    out.push_str(&format!("number: {n}\n"));
                }
                let revoked: Vec<_> = crl.iter_revoked_certificates().collect();
                out.push_str(&format!("revoked: {}\n", revoked.len()));
                for r in revoked {
                    out.push_str(&format!(
                        "  {} at {}\n",
                        hex(r.raw_serial()),
                        rfc(to_offset(r.revocation_date))
                    ));
                }
                return Ok(out);
            }
        }
    }
    let certs = crate::trust::parse_pem_or_der(&bytes, "CERTIFICATE").map_err(damaged)?;
    let mut out = String::new();
    for (i, der) in certs.iter().enumerate() {
        let (_, x509) = X509Certificate::from_der(der).map_err(|e| damaged(e.to_string()))?;
        let cd = rustls::pki_types::CertificateDer::from(der.clone());
        let identity = match crate::trust::identity_of(&cd) {
            Ok((id, _)) => id.to_string(),
            Err(e) => format!("none ({e})"),
        };
        let names: Vec<String> = crate::trust::host_names(&cd)
            .into_iter()
            .map(|n| match n {
                crate::trust::HostName::Dns(d) => format!("dns:{d}"),
                crate::trust::HostName::Ip(ip) => format!("ip:{ip}"),
            })
            .collect();
        let now = OffsetDateTime::now_utc();
        let nb = to_offset(x509.validity().not_before);
        let na = to_offset(x509.validity().not_after);
        let state = if now < nb {
            "not yet valid"
        } else if now > na {
            "expired"
        } else {
            "valid"
        };
        out.push_str(&format!(
            "certificate {i}\nsubject:  {}\nissuer:   {}\nserial:   {}\nidentity: {identity}\nnames:    {}\nca:       {}\nvalidity: {} .. {} ({state})\nkey:      {}\n",
            x509.subject(),
            x509.issuer(),
            hex(x509.raw_serial()),
            if names.is_empty() { "-".to_owned() } else { names.join(", ") },
            x509.is_ca(),
            rfc(nb),
            rfc(na),
            x509.public_key().algorithm.algorithm,
        ));
    }
    Ok(out)
}

/// The fields of a PKCS#8 v2 Ed25519 key after its outer SEQUENCE header, up
/// to its 32-byte seed: version 1, the Ed25519 algorithm, the seed's header.
const ED25519_PKCS8_V2_FIELDS: [u8; 14] = [
    0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// PKCS#8 v1 Ed25519 (RFC 8410) up to the seed.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// An issued private key as PEM that other toolkits read too: Ed25519 keys as
/// PKCS#8 v1 (RFC 8410, the seed only). The v2 form the crypto library
/// produces carries the public key in a way OpenSSL and Python's
/// `cryptography` refuse. Other keys are written as generated.
fn portable_key_pem(key: &KeyPair) -> String {
    let der = key.serialize_der();
    if der.len() >= 48 && der[0] == 0x30 && der[2..16] == ED25519_PKCS8_V2_FIELDS {
        let mut v1 = ED25519_PKCS8_V1_PREFIX.to_vec();
        v1.extend_from_slice(&der[16..48]);
        return pem::encode(&pem::Pem::new("PRIVATE KEY", v1));
    }
    key.serialize_pem()
}

/// The `beacon ca issue` arguments that issue a new certificate for
/// `identity` (with a node's DNS and IP names) from the CA in `dir`.
pub fn issue_command(dir: &Path, identity: &Identity, dns: &[String], ips: &[String]) -> String {
    let dir = dir.display();
    match &identity.role {
        Role::Node { member, node } => {
            let mut c = format!("node --dir {dir} --member {member} --name {node}");
            for d in dns {
                c.push_str(&format!(" --dns {d}"));
            }
            for ip in ips {
                c.push_str(&format!(" --ip {ip}"));
            }
            c
        }
        Role::Client { member, name } => {
            format!("client --dir {dir} --member {member} --name {name}")
        }
        Role::Operator { name } => format!("operator --dir {dir} --name {name}"),
    }
}
