//! The embedded default, `beacon dev`: a throwaway CA and certificates under a
//! data directory, and a config for a node on 127.0.0.1 with its store there.
//! Rerunning reuses what exists (and renews certificates close to expiry).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::base::identity::{Identity, MemberScope, RoleKind, TrustDomain};
use crate::tools::pki::{self, Algorithm, Ca, InitRequest, IssueRequest, PkiError};

pub const DEV_TRUST_DOMAIN: &str = "beacon.dev";
pub const DEV_MEMBER: &str = "drc";

/// Paths of what `prepare` made.
#[derive(Debug, Clone)]
pub struct DevLayout {
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub ca_cert: PathBuf,
    pub crl: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub operator_cert: PathBuf,
    pub operator_key: PathBuf,
    pub listen: SocketAddr,
    /// Set when the PKI reused was made with Ed25519 (the default before
    /// ECDSA P-256), which gRPC's C-core clients cannot use.
    pub ed25519: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn issue_if_missing(
    ca: &Ca,
    id: Identity,
    cert: &Path,
    key: &Path,
    node: bool,
) -> Result<(), PkiError> {
    let fresh = crate::trust::read_certs(cert)
        .ok()
        .and_then(|c| c.first().cloned())
        .and_then(|leaf| {
            use x509_parser::prelude::{FromDer, X509Certificate};
            let (_, x) = X509Certificate::from_der(leaf.as_ref()).ok()?;
            // Renew when fewer than 7 days remain.
            let left = x.validity().not_after.timestamp()
                - time::OffsetDateTime::now_utc().unix_timestamp();
            Some(left > 7 * 24 * 3600)
        })
        .unwrap_or(false);
    if fresh && key.exists() {
        return Ok(());
    }
    let mut req = IssueRequest::new(id);
    if node {
        req.dns_names = vec!["localhost".into()];
        req.ip_addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    }
    let issued = ca.issue(&req)?;
    pki::write_file(cert, issued.cert_pem.as_bytes(), false, true)?;
    pki::write_file(key, issued.key_pem.as_bytes(), true, true)?;
    ca.record_paths(&issued.serial, cert, key)?;
    Ok(())
}

/// Creates (or reuses) the dev PKI and config under `data_dir`.
pub fn prepare(data_dir: &Path, listen: SocketAddr) -> Result<DevLayout, DevError> {
    let certs = data_dir.join("certs");
    let ca_dir = data_dir.join("ca");
    let td: TrustDomain = DEV_TRUST_DOMAIN
        .parse()
        .map_err(|e| PkiError::BadName(format!("{e}")))?;
    let ca = match Ca::open(&ca_dir) {
        Ok(ca) => ca,
        Err(PkiError::MissingCa(_)) => Ca::init(
            &ca_dir,
            &InitRequest {
                trust_domain: td.clone(),
                name: "Beacon dev CA (throwaway)".into(),
                members: MemberScope::any(),
                algorithm: Algorithm::default(),
                validity: pki::DEFAULT_CA_VALIDITY,
                force: false,
            },
        )?,
        Err(e) => return Err(e.into()),
    };
    let layout = DevLayout {
        data_dir: data_dir.to_path_buf(),
        config: data_dir.join("beacon.toml"),
        ca_cert: Ca::cert_path(&ca_dir),
        crl: Ca::crl_path(&ca_dir),
        client_cert: certs.join("client.pem"),
        client_key: certs.join("client.key"),
        operator_cert: certs.join("operator.pem"),
        operator_key: certs.join("operator.key"),
        listen,
        ed25519: ca.meta.algorithm == Algorithm::Ed25519,
    };
    let node_cert = certs.join("node.pem");
    let node_key = certs.join("node.key");
    let id = |kind, member: Option<&str>, name: &str| pki::identity_for(&td, kind, member, name);
    issue_if_missing(
        &ca,
        id(RoleKind::Node, Some(DEV_MEMBER), "dev")?,
        &node_cert,
        &node_key,
        true,
    )?;
    issue_if_missing(
        &ca,
        id(RoleKind::Client, Some(DEV_MEMBER), "analyst")?,
        &layout.client_cert,
        &layout.client_key,
        false,
    )?;
    issue_if_missing(
        &ca,
        id(RoleKind::Operator, None, "admin")?,
        &layout.operator_cert,
        &layout.operator_key,
        false,
    )?;
    let config = format!(
        r#"# Written by `beacon dev`: a throwaway single-node setup. Do not use in production.
[node]
listen = "{listen}"
data_dir = "store"
cert = "certs/node.pem"
key = "certs/node.key"

[[trust]]
ca = "ca/ca.pem"
members = ["*"]
crl = "ca/crl.pem"
"#
    );
    pki::write_file(&layout.config, config.as_bytes(), false, true)?;
    Ok(layout)
}
