//! The trust bundle: which CAs vouch for which members, and what they revoked.
//!
//! One routine, [`TrustBundle::verify`], decides whether a certificate chain is
//! an identity this node accepts. The TLS handshake (both directions), the
//! periodic re-check of open connections after a CRL reload, and the signer
//! check of every bulletin envelope all call it, so they can never disagree.
//!
//! A chain is accepted when, at the given time:
//! 1. it builds to one of the bundle's CA certificates (webpki path building,
//!    with the right extended key usage);
//! 2. no certificate on the path is revoked by a loaded CRL;
//! 3. the leaf carries exactly one URI SAN, a SPIFFE ID of this trust domain
//!    (see [`crate::base::identity`]);
//! 4. the CA that anchors the path may vouch for the identity's member (operators
//!    only by a CA that vouches for every member).

use std::path::Path;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor, UnixTime};
use webpki::{
    EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList, RevocationCheckDepth,
    RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::base::identity::{Identity, IdentityError, MemberScope, TrustDomain};

pub mod state;
pub mod tls;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("the trust bundle has no CA certificate")]
    NoAnchors,
    #[error("certificate is malformed: {0}")]
    BadCertificate(String),
    #[error("certificate has expired")]
    Expired,
    #[error("certificate is not valid yet")]
    NotYetValid,
    #[error("certificate has been revoked")]
    Revoked,
    #[error("certificate is not issued by a CA in the trust bundle")]
    UnknownIssuer,
    #[error("certificate is not valid for {0}")]
    WrongUsage(&'static str),
    #[error("certificate chain rejected: {0}")]
    Chain(String),
    #[error("certificate must carry exactly one URI SAN, found {0}")]
    UriSanCount(usize),
    #[error("certificate identity refused: {0}")]
    Identity(#[from] IdentityError),
    #[error("identity {identity} belongs to trust domain {found}, this node trusts {expected}")]
    WrongTrustDomain {
        identity: String,
        found: String,
        expected: String,
    },
    #[error("CA {ca:?} may not vouch for {identity} (it vouches for {scope})")]
    NotVouched {
        ca: String,
        identity: String,
        scope: String,
    },
}

/// Which usage a chain is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS client (clients, nodes dialling peers, operators) or a signer.
    ClientAuth,
    /// A TLS server (nodes).
    ServerAuth,
}

/// One CA of the bundle.
#[derive(Debug, Clone)]
pub struct CaEntry {
    /// A label for messages (the CA's subject common name or file).
    pub label: String,
    pub cert: CertificateDer<'static>,
    pub scope: MemberScope,
    anchor: TrustAnchor<'static>,
}

impl CaEntry {
    pub fn new(cert: CertificateDer<'static>, scope: MemberScope) -> Result<Self, TrustError> {
        let anchor = webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| TrustError::BadCertificate(format!("CA certificate: {e}")))?
            .to_owned();
        let label = common_name(&cert).unwrap_or_else(|| "unnamed CA".to_owned());
        Ok(CaEntry {
            label,
            cert,
            scope,
            anchor,
        })
    }
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    pub identity: Identity,
    /// The label of the CA that anchored the path.
    pub ca: String,
    /// The leaf certificate's serial number, big-endian bytes.
    pub serial: Vec<u8>,
}

/// CA certificates with their member scopes, plus the CRLs in force.
#[derive(Debug)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    cas: Vec<CaEntry>,
    anchors: Vec<TrustAnchor<'static>>,
    crls: Vec<webpki::CertRevocationList<'static>>,
    revoked_count: usize,
    /// Every CRL's issuer and next-update time (Unix seconds), if it has one.
    crl_next_updates: Vec<(String, i64)>,
}

impl TrustBundle {
    pub fn new(
        trust_domain: TrustDomain,
        cas: Vec<CaEntry>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, TrustError> {
        if cas.is_empty() {
            return Err(TrustError::NoAnchors);
        }
        let anchors = cas.iter().map(|c| c.anchor.clone()).collect();
        let mut parsed = Vec::with_capacity(crls.len());
        let mut revoked_count = 0;
        let mut crl_next_updates = Vec::new();
        for der in &crls {
            let crl = OwnedCertRevocationList::from_der(der)
                .map_err(|e| TrustError::BadCertificate(format!("CRL: {e}")))?;
            if let Ok((_, c)) =
                x509_parser::revocation_list::CertificateRevocationList::from_der(der)
            {
                revoked_count += c.iter_revoked_certificates().count();
                if let Some(next) = c.next_update() {
                    crl_next_updates.push((c.issuer().to_string(), next.timestamp()));
                }
            }
            parsed.push(webpki::CertRevocationList::Owned(crl));
        }
        Ok(TrustBundle {
            trust_domain,
            cas,
            anchors,
            crls: parsed,
            revoked_count,
            crl_next_updates,
        })
    }

    /// Each CRL's issuer and next-update time (Unix seconds).
    pub fn crl_next_updates(&self) -> &[(String, i64)] {
        &self.crl_next_updates
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn cas(&self) -> &[CaEntry] {
        &self.cas
    }

    /// CRLs past their next-update time: (issuer, next update as Unix seconds).
    /// They are still applied (what they revoke stays revoked); operators
    /// should publish fresh ones with `beacon ca crl`.
    pub fn stale_crls(&self) -> Vec<(String, i64)> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.crl_next_updates
            .iter()
            .filter(|(_, next)| *next < now)
            .cloned()
            .collect()
    }

    /// How many certificate entries the loaded CRLs list.
    pub fn revoked_count(&self) -> usize {
        self.revoked_count
    }

    /// The signature algorithms of the one crypto provider (aws-lc-rs).
    pub fn algorithms() -> &'static [&'static dyn rustls::pki_types::SignatureVerificationAlgorithm]
    {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all
    }

    /// Decide whether `chain` (leaf first) is an identity this node accepts at `now`.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<VerifiedIdentity, TrustError> {
        let ee = EndEntityCert::try_from(end_entity)
            .map_err(|e| TrustError::BadCertificate(e.to_string()))?;
        let crl_refs: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = match RevocationOptionsBuilder::new(&crl_refs) {
            Ok(builder) => Some(
                builder
                    .with_depth(RevocationCheckDepth::Chain)
                    .with_status_policy(UnknownStatusPolicy::Allow)
                    // A CRL past its next-update still lists what it revoked; refusing
                    // every identity because an operator was late would cut the alliance off.
                    .with_expiration_policy(ExpirationPolicy::Ignore)
                    .build(),
            ),
            Err(_) => None,
        };
        let eku = match usage {
            Usage::ClientAuth => KeyUsage::client_auth(),
            Usage::ServerAuth => KeyUsage::server_auth(),
        };
        let path = ee
            .verify_for_usage(
                Self::algorithms(),
                &self.anchors,
                intermediates,
                now,
                eku,
                revocation,
                None,
            )
            .map_err(|e| map_webpki(e, usage))?;
        let anchor_spki = path.anchor().subject_public_key_info.as_ref();
        let ca = self
            .cas
            .iter()
            .find(|c| c.anchor.subject_public_key_info.as_ref() == anchor_spki)
            .ok_or(TrustError::UnknownIssuer)?;
        let (identity, serial) = identity_of(end_entity)?;
        if identity.trust_domain != self.trust_domain {
            return Err(TrustError::WrongTrustDomain {
                identity: identity.to_string(),
                found: identity.trust_domain.to_string(),
                expected: self.trust_domain.to_string(),
            });
        }
        let vouched = match identity.member() {
            Some(member) => ca.scope.allows(member),
            None => ca
                .scope
                .0
                .contains(&crate::base::identity::MemberPattern::Any),
        };
        if !vouched {
            return Err(TrustError::NotVouched {
                ca: ca.label.clone(),
                identity: identity.to_string(),
                scope: ca.scope.to_string(),
            });
        }
        Ok(VerifiedIdentity {
            identity,
            ca: ca.label.clone(),
            serial,
        })
    }
}

fn map_webpki(e: webpki::Error, usage: Usage) -> TrustError {
    use webpki::Error as E;
    match e {
        E::CertExpired { .. } => TrustError::Expired,
        E::CertNotValidYet { .. } => TrustError::NotYetValid,
        E::CertRevoked => TrustError::Revoked,
        E::UnknownIssuer => TrustError::UnknownIssuer,
        E::RequiredEkuNotFoundContext(_) => TrustError::WrongUsage(match usage {
            Usage::ClientAuth => "client authentication",
            Usage::ServerAuth => "server authentication",
        }),
        other => TrustError::Chain(other.to_string()),
    }
}

/// The identity in a certificate's single URI SAN, and its serial number.
///
/// This checks the form only; [`TrustBundle::verify`] decides trust.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<(Identity, Vec<u8>), TrustError> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| TrustError::BadCertificate(e.to_string()))?;
    let uris: Vec<&str> = match x509.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(TrustError::BadCertificate(format!("subjectAltName: {e}"))),
    };
    if uris.len() != 1 {
        return Err(TrustError::UriSanCount(uris.len()));
    }
    let identity: Identity = uris[0].parse()?;
    Ok((identity, x509.raw_serial().to_vec()))
}

/// Decides whether a signer's chain is an accepted identity (the trust
/// routine itself, or the node's cache of its verdicts: [`state::SignerCheck`]).
pub trait ChainCheck {
    fn check(
        &self,
        leaf: &CertificateDer<'_>,
        rest: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Identity, TrustError>;
}

impl ChainCheck for TrustBundle {
    fn check(
        &self,
        leaf: &CertificateDer<'_>,
        rest: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Identity, TrustError> {
        self.verify(leaf, rest, now, Usage::ClientAuth)
            .map(|v| v.identity)
    }
}

/// When a certificate stops being valid.
pub fn cert_not_after(cert: &CertificateDer<'_>) -> Option<std::time::SystemTime> {
    let (_, x) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let secs = x.validity().not_after.timestamp();
    u64::try_from(secs)
        .ok()
        .map(|s| std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s))
}

/// When a certificate starts being valid.
pub fn cert_not_before(cert: &CertificateDer<'_>) -> Option<std::time::SystemTime> {
    let (_, x) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let secs = x.validity().not_before.timestamp();
    u64::try_from(secs)
        .ok()
        .map(|s| std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s))
}

/// Reads a trust bundle from files: every CA certificate in each file, with
/// the members it may vouch for, and every CRL. The one place a bundle is
/// loaded (the node's config, a client's settings, offline verification).
pub fn read_bundle<'a>(
    trust_domain: &TrustDomain,
    cas: impl IntoIterator<Item = (&'a Path, MemberScope)>,
    crls: impl IntoIterator<Item = &'a Path>,
) -> Result<TrustBundle, TrustError> {
    let mut entries = Vec::new();
    for (path, scope) in cas {
        for cert in read_certs(path)? {
            entries.push(CaEntry::new(cert, scope.clone())?);
        }
    }
    let mut revoked = Vec::new();
    for path in crls {
        revoked.extend(read_crls(path)?);
    }
    TrustBundle::new(trust_domain.clone(), entries, revoked)
}

/// Loads the trust bundle a node's config describes: each `[[trust]]` CA
/// with its member scope, and the CRLs.
pub fn load_bundle(
    config: &crate::base::config::Config,
    trust_domain: &TrustDomain,
) -> Result<TrustBundle, TrustError> {
    read_bundle(
        trust_domain,
        config
            .trust
            .iter()
            .map(|t| (t.ca.as_path(), t.members.clone())),
        config.trust.iter().filter_map(|t| t.crl.as_deref()),
    )
}

/// A host name a certificate is valid for: a DNS or IP subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostName {
    Dns(String),
    Ip(std::net::IpAddr),
}

impl std::fmt::Display for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostName::Dns(d) => f.write_str(d),
            HostName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The DNS and IP subject alternative names of a certificate (empty if it
/// cannot be parsed or carries none).
pub fn host_names(cert: &CertificateDer<'_>) -> Vec<HostName> {
    let Ok((_, x509)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = x509.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(HostName::Dns((*d).to_owned())),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => <[u8; 4]>::try_from(*ip)
                    .ok()
                    .map(|a| HostName::Ip(a.into())),
                16 => <[u8; 16]>::try_from(*ip)
                    .ok()
                    .map(|a| HostName::Ip(a.into())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The subject common name of a certificate, if any.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let cn = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok().map(str::to_owned));
    cn
}

/// Reads every PEM block of `kind` ("CERTIFICATE", "X509 CRL") from a file; a
/// file that is not PEM is taken as one DER object.
pub fn read_pem_file(path: &Path, kind: &str) -> Result<Vec<Vec<u8>>, TrustError> {
    let bytes = std::fs::read(path).map_err(|source| TrustError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_pem_or_der(&bytes, kind).map_err(|reason| TrustError::Parse {
        path: path.display().to_string(),
        reason,
    })
}

pub fn parse_pem_or_der(bytes: &[u8], kind: &str) -> Result<Vec<Vec<u8>>, String> {
    if !bytes.starts_with(b"-----") && !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        if bytes.is_empty() {
            return Err("file is empty".into());
        }
        return Ok(vec![bytes.to_vec()]);
    }
    let blocks = pem::parse_many(bytes).map_err(|e| format!("bad PEM: {e}"))?;
    let found: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == kind)
        .map(|b| b.into_contents())
        .collect();
    if found.is_empty() {
        return Err(format!("no {kind} PEM block"));
    }
    Ok(found)
}

/// Reads a certificate chain (leaf first).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    Ok(read_pem_file(path, "CERTIFICATE")?
        .into_iter()
        .map(CertificateDer::from)
        .collect())
}

/// Reads CRLs from a file (PEM with one or more CRLs, or one DER CRL).
pub fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TrustError> {
    Ok(read_pem_file(path, "X509 CRL")?
        .into_iter()
        .map(CertificateRevocationListDer::from)
        .collect())
}
