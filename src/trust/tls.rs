//! rustls configurations for the node (server) and for those who dial it.
//!
//! Both sides use TLS 1.3 only, ALPN `h2`, the aws-lc-rs provider, and verifiers
//! that delegate to [`TrustBundle::verify`], so the handshake accepts exactly the
//! identities the rest of Beacon accepts.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::base::identity::{Identity, MemberId, RoleKind};
use crate::trust::{self, TrustBundle, TrustError, Usage};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("cannot read key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("{path}: no certificate found")]
    NoCertificate { path: String },
    #[error("the key {key} does not belong to the certificate {cert} (their public keys differ): use the key written with that certificate (beacon ca issue/renew write NAME.pem and NAME.key together)")]
    KeyMismatch { cert: String, key: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("this node's own certificate is refused by its trust bundle: {0}")]
    OwnCertificate(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

/// A certificate chain and its private key, as loaded from PEM files.
#[derive(Debug)]
pub struct KeyedChain {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The identity in the leaf certificate.
    pub identity: Identity,
}

impl Clone for KeyedChain {
    fn clone(&self) -> Self {
        KeyedChain {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
        }
    }
}

impl KeyedChain {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = trust::read_certs(cert)?;
        let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
            path: cert.display().to_string(),
        })?;
        let (identity, _) = trust::identity_of(leaf)?;
        let key_path = key;
        let key = load_key(key)?;
        // The key must be the certificate's: said here, naming both files,
        // rather than as rustls' "key mismatch" when a TLS config is built.
        let signing = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| TlsError::Key {
                path: key_path.display().to_string(),
                reason: e.to_string(),
            })?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
        if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
            certified.keys_match()
        {
            return Err(TlsError::KeyMismatch {
                cert: cert.display().to_string(),
                key: key_path.display().to_string(),
            });
        }
        Ok(KeyedChain {
            chain,
            key,
            identity,
        })
    }
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let err = |reason: String| TlsError::Key {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let blocks = trust::parse_pem_or_der(&bytes, "PRIVATE KEY").map_err(err)?;
    let der = blocks
        .into_iter()
        .next()
        .ok_or_else(|| err("no PRIVATE KEY block".into()))?;
    Ok(PrivateKeyDer::Pkcs8(der.into()))
}

fn to_rustls(e: TrustError) -> rustls::Error {
    let cert_err = match e {
        TrustError::Expired => CertificateError::Expired,
        TrustError::NotYetValid => CertificateError::NotValidYet,
        TrustError::Revoked => CertificateError::Revoked,
        TrustError::UnknownIssuer => CertificateError::UnknownIssuer,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(cert_err)
}

/// The node's verifier of client certificates.
#[derive(Debug)]
pub struct BundleClientVerifier {
    bundle: Arc<TrustBundle>,
    hints: Vec<DistinguishedName>,
    algs: WebPkiSupportedAlgorithms,
    /// Whether a client must present a certificate (always, except on the
    /// TAXII listener when API tokens are allowed).
    mandatory: bool,
}

impl BundleClientVerifier {
    pub fn new(bundle: Arc<TrustBundle>) -> Self {
        let hints = bundle
            .cas()
            .iter()
            .filter_map(|ca| {
                webpki::anchor_from_trusted_cert(&ca.cert)
                    .ok()
                    // webpki gives the Name's contents; the CertificateRequest
                    // carries the whole DER Name (with its SEQUENCE header), or
                    // OpenSSL and BoringSSL clients refuse the handshake.
                    .map(|a| DistinguishedName::in_sequence(a.subject.as_ref()))
            })
            .collect();
        BundleClientVerifier {
            bundle,
            hints,
            algs: algorithms(),
            mandatory: true,
        }
    }
}

impl ClientCertVerifier for BundleClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.bundle
            .verify(end_entity, intermediates, now, Usage::ClientAuth)
            .map(|_| ClientCertVerified::assertion())
            .map_err(|e| {
                // The refused identity and serial, for the operator (the
                // accept loop's line has the address).
                let who = match trust::identity_of(end_entity) {
                    Ok((id, serial)) => format!(
                        "{id} (serial {})",
                        serial
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<String>()
                    ),
                    Err(_) => "a certificate without a readable identity".to_owned(),
                };
                tracing::warn!(target: "beacon::audit", client = %who, reason = %e,
                               "client certificate refused");
                to_rustls(e)
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// What a client requires of the node it dials. Every variant first requires
/// a chain the bundle accepts (CAs, CRLs, member scopes) for server use.
#[derive(Debug, Clone)]
pub enum ExpectedServer {
    /// A node of this member whose certificate names the host dialled (a DNS
    /// or IP SAN): what a member's client requires by default, so that a
    /// DNS or routing trick cannot hand its publishes (TLP:RED included) and
    /// its subscriptions to another member's node.
    NodeOf(MemberId),
    /// Any node the bundle vouches for whose certificate names the host
    /// dialled. Operators belong to no member, so this is their default.
    AnyNode,
    /// Exactly this identity: peer links, and a client's pin (to reach
    /// another member's node). The host name is not checked; the identity
    /// is the stronger check.
    Exactly(Identity),
}

impl ExpectedServer {
    /// What a caller with identity `own` requires of a node by default: the
    /// pinned identity if there is one, otherwise a node of its own member
    /// (operators: any node) naming the host dialled.
    pub fn for_caller(own: &Identity, pinned: Option<Identity>) -> ExpectedServer {
        match (pinned, own.member()) {
            (Some(id), _) => ExpectedServer::Exactly(id),
            (None, Some(member)) => ExpectedServer::NodeOf(member.clone()),
            (None, None) => ExpectedServer::AnyNode,
        }
    }
}

/// The verifier of node certificates used by clients and by peering nodes.
#[derive(Debug)]
pub struct BundleServerVerifier {
    bundle: Arc<TrustBundle>,
    expected: ExpectedServer,
    algs: WebPkiSupportedAlgorithms,
}

impl BundleServerVerifier {
    pub fn new(bundle: Arc<TrustBundle>, expected: ExpectedServer) -> Self {
        BundleServerVerifier {
            bundle,
            expected,
            algs: algorithms(),
        }
    }
}

/// Why a node's certificate, though vouched for, is not the node a client
/// meant to reach. These travel inside `rustls::Error` and are shown to the
/// user by [`describe`].
#[derive(Debug, thiserror::Error)]
enum ServerIdentityError {
    #[error("the server presented {found}, which is not a node identity")]
    NotNode { found: String },
    #[error(
        "the server is {found}, a node of member {found_member}; a client of {member} accepts \
         only its own member's nodes (to reach another member's node, pin its identity with \
         --node-identity, BEACON_NODE_ID or node_identity in the client config)"
    )]
    OtherMember {
        found: String,
        found_member: String,
        member: String,
    },
    #[error(
        "the certificate of node {found} names {names}, not {host}, the host dialled \
         (dial a name the certificate carries, or reissue it with `beacon ca issue node --dns/--ip`)"
    )]
    HostNotNamed {
        found: String,
        host: String,
        names: String,
    },
    #[error("the server presented {found}, but the pinned node identity is {expected}")]
    NotPinned { found: String, expected: String },
}

/// The host a client dialled, as text.
fn host_of(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// Checks that the node's certificate names the host dialled.
fn check_host(
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    found: &Identity,
) -> Result<(), ServerIdentityError> {
    let named = webpki::EndEntityCert::try_from(end_entity)
        .map(|ee| ee.verify_is_valid_for_subject_name(server_name).is_ok())
        .unwrap_or(false);
    if named {
        return Ok(());
    }
    let names: Vec<String> = trust::host_names(end_entity)
        .iter()
        .map(|n| n.to_string())
        .collect();
    Err(ServerIdentityError::HostNotNamed {
        found: found.to_string(),
        host: host_of(server_name),
        names: if names.is_empty() {
            "no host at all".to_owned()
        } else {
            names.join(", ")
        },
    })
}

impl ServerCertVerifier for BundleServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self
            .bundle
            .verify(end_entity, intermediates, now, Usage::ServerAuth)
            .map_err(to_rustls)?;
        let found = &verified.identity;
        let refused = match &self.expected {
            ExpectedServer::Exactly(id) if found != id => Err(ServerIdentityError::NotPinned {
                found: found.to_string(),
                expected: id.to_string(),
            }),
            ExpectedServer::Exactly(_) => Ok(()),
            _ if found.kind() != RoleKind::Node => Err(ServerIdentityError::NotNode {
                found: found.to_string(),
            }),
            ExpectedServer::NodeOf(member) if found.member() != Some(member) => {
                Err(ServerIdentityError::OtherMember {
                    found: found.to_string(),
                    found_member: found.member().map(|m| m.to_string()).unwrap_or_default(),
                    member: member.to_string(),
                })
            }
            ExpectedServer::NodeOf(_) | ExpectedServer::AnyNode => {
                check_host(end_entity, server_name, found)
            }
        };
        refused.map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Whether the node's own certificate is acceptable to its bundle as a
/// server (not revoked, not expired, vouched for): a node refuses to start
/// without it, and stops serving when a reload says it no longer is.
pub fn check_own_certificate(bundle: &TrustBundle, own: &KeyedChain) -> Result<(), TlsError> {
    let leaf = own.chain.first().ok_or_else(|| TlsError::NoCertificate {
        path: "the node's certificate".into(),
    })?;
    bundle
        .verify(leaf, &own.chain[1..], UnixTime::now(), Usage::ServerAuth)
        .map(|_| ())
        .map_err(|e| TlsError::OwnCertificate(e.to_string()))
}

/// The node's TLS server configuration: TLS 1.3, client certificate required.
/// (Whether `own` is still acceptable is [`check_own_certificate`]'s question.)
pub fn server_config(
    bundle: Arc<TrustBundle>,
    own: &KeyedChain,
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = Arc::new(BundleClientVerifier::new(bundle));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(own.chain.clone(), own.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The HTTPS listener's configuration (TAXII): as [`server_config`], the
/// client certificate required and checked by the same bundle, but TLS 1.2
/// as well as 1.3 (TAXII clients may not speak 1.3) and HTTP/1.1 or h2.
pub fn https_server_config(
    bundle: Arc<TrustBundle>,
    own: &KeyedChain,
    certificate_optional: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut verifier = BundleClientVerifier::new(bundle);
    // A client without one must then prove itself otherwise (an API token).
    verifier.mandatory = !certificate_optional;
    let verifier = Arc::new(verifier);
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(own.chain.clone(), own.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration presenting `own` and checking the node as `expected`.
pub fn client_config(
    bundle: Arc<TrustBundle>,
    own: &KeyedChain,
    expected: ExpectedServer,
) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = Arc::new(BundleServerVerifier::new(bundle, expected));
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        // Not dangerous in effect: this verifier performs full webpki path
        // validation against the trust bundle (with CRLs) and then checks the
        // SPIFFE identity, which is stricter than the default verifier.
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(own.chain.clone(), own.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Whose side of a handshake a message speaks of: the peer whose
/// certificate this side checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// This side is the node; the peer is a client (or a dialling node).
    Client,
    /// This side dialled; the peer is the node.
    Node,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Client => "client",
            Peer::Node => "node",
        }
    }
}

/// "NoSignatureSchemesInCommon" → "no signature schemes in common": the
/// Debug name of a rustls enum variant without data, as words.
fn words(debug: &str) -> String {
    let mut out = String::with_capacity(debug.len() + 8);
    for (i, c) in debug.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push(' ');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Why a certificate was refused, as the end of a sentence.
fn describe_certificate(e: &CertificateError) -> String {
    use CertificateError as C;
    match e {
        C::Other(OtherError(inner)) => inner.to_string(),
        C::Revoked => "it has been revoked".into(),
        C::Expired | C::ExpiredContext { .. } => "it has expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet".into(),
        C::UnknownIssuer => "it is not issued by a CA in the trust bundle".into(),
        C::BadSignature => "its signature does not verify".into(),
        C::BadEncoding => "it is not a well-formed certificate".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it does not name the host dialled".into()
        }
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "it is not issued for this use (extended key usage)".into()
        }
        other => words(&format!("{other:?}")),
    }
}

/// A refused TLS handshake as a sentence a person reads (the audit log, a
/// client's error), from `this` side's view; `peer` is the other side.
pub fn describe(e: &rustls::Error, peer: Peer) -> String {
    use rustls::AlertDescription as A;
    use rustls::Error as R;
    let them = peer.name();
    match e {
        R::InvalidCertificate(c) => {
            format!("the {them}'s certificate was refused: {}", describe_certificate(c))
        }
        R::NoCertificatesPresented => {
            format!("the {them} presented no certificate; Beacon requires mutual TLS")
        }
        R::AlertReceived(alert) => match alert {
            A::CertificateRevoked => {
                format!("the {them} refused this side's certificate: it is revoked")
            }
            A::CertificateExpired => {
                format!("the {them} refused this side's certificate: it has expired")
            }
            A::CertificateRequired => {
                format!("the {them} requires a certificate and none was presented")
            }
            A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::AccessDenied => format!(
                "the {them} refused this side's certificate ({}): is it issued by a CA the {them} trusts, for this member?",
                words(&format!("{alert:?}"))
            ),
            A::ProtocolVersion => format!("the {them} does not speak TLS 1.3"),
            A::HandshakeFailure | A::InsufficientSecurity => format!(
                "the {them} shares no TLS parameters with this side (TLS 1.3; certificate keys \
                 ECDSA P-256 or Ed25519 — gRPC's C-core clients verify only ECDSA)"
            ),
            A::NoApplicationProtocol => {
                format!("the {them} speaks no common application protocol (HTTP/2, ALPN h2)")
            }
            other => format!(
                "the {them} ended the handshake (TLS alert: {})",
                words(&format!("{other:?}"))
            ),
        },
        R::PeerIncompatible(p) => format!(
            "the {them}'s TLS is incompatible with this side's (TLS 1.3, ALPN h2): {}",
            words(&format!("{p:?}"))
        ),
        R::NoApplicationProtocol => {
            format!("the {them} offered no application protocol this side speaks (HTTP/2, ALPN h2)")
        }
        R::InvalidMessage(m) => format!(
            "the {them} did not speak TLS (plain-text HTTP or gRPC to a TLS port?): {}",
            words(&format!("{m:?}"))
        ),
        R::PeerMisbehaved(m) => format!(
            "the {them} broke the TLS protocol: {}",
            words(&format!("{m:?}"))
        ),
        other => format!("TLS failed: {other}"),
    }
}

/// An I/O error of a handshake (which may carry a `rustls::Error`) as a
/// sentence; see [`describe`].
pub fn describe_io(e: &std::io::Error, peer: Peer) -> String {
    if let Some(r) = e.get_ref().and_then(|x| x.downcast_ref::<rustls::Error>()) {
        return describe(r, peer);
    }
    use std::io::ErrorKind as K;
    match (e.kind(), peer) {
        // A node drops connections before TLS only while it serves no one
        // (its own certificate refused); a refused certificate of ours
        // would have come as a TLS alert instead.
        (
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe,
            Peer::Node,
        ) => {
            format!(
                "the node refused the connection before TLS ({}): a node does so while its own \
                 certificate is revoked or expired (it serves no one until it has a valid one, \
                 and its log says why)",
                match e.kind() {
                    K::UnexpectedEof => "it closed it during the handshake".to_owned(),
                    _ => e.to_string(),
                }
            )
        }
        (K::UnexpectedEof, _) => format!(
            "the {} closed the connection during the TLS handshake",
            peer.name()
        ),
        _ => format!("the TLS handshake failed: {e}"),
    }
}
