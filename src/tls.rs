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

use crate::identity::{Identity, RoleKind};
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
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("own certificate refused: {0}")]
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
        let key = load_key(key)?;
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
        }
    }
}

impl ClientCertVerifier for BundleClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
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
            .map_err(to_rustls)
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

/// What a client requires of the node it dials.
#[derive(Debug, Clone)]
pub enum ExpectedServer {
    /// Any node identity the bundle vouches for, whose certificate names the
    /// host dialled (DNS or IP SAN).
    AnyNode,
    /// Exactly this node identity (peering); the host name is not checked.
    Exactly(Identity),
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

#[derive(Debug, thiserror::Error)]
enum ServerIdentityError {
    #[error("the server presented {found}, expected a node identity")]
    NotNode { found: String },
    #[error("the server presented {found}, expected {expected}")]
    Mismatch { found: String, expected: String },
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
        let other = |e: ServerIdentityError| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        };
        match &self.expected {
            ExpectedServer::AnyNode => {
                if verified.identity.kind() != RoleKind::Node {
                    return Err(other(ServerIdentityError::NotNode {
                        found: verified.identity.to_string(),
                    }));
                }
                let ee = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
                    rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
                })?;
                ee.verify_is_valid_for_subject_name(server_name)
                    .map_err(|_| {
                        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
                    })?;
            }
            ExpectedServer::Exactly(id) => {
                if &verified.identity != id {
                    return Err(other(ServerIdentityError::Mismatch {
                        found: verified.identity.to_string(),
                        expected: id.to_string(),
                    }));
                }
            }
        }
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

/// The node's TLS server configuration: TLS 1.3, client certificate required.
pub fn server_config(
    bundle: Arc<TrustBundle>,
    own: &KeyedChain,
) -> Result<rustls::ServerConfig, TlsError> {
    // The node's own certificate must itself be acceptable to its bundle as a
    // server; refusing at start beats failing every handshake later.
    if let Some(leaf) = own.chain.first() {
        bundle
            .verify(leaf, &own.chain[1..], UnixTime::now(), Usage::ServerAuth)
            .map_err(|e| TlsError::OwnCertificate(e.to_string()))?;
    }
    let verifier = Arc::new(BundleClientVerifier::new(bundle));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(own.chain.clone(), own.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
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
