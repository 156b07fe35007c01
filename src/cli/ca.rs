//! `beacon ca`: the operator's CA directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};

use super::AlgArg;
use beacon::base::identity::{MemberScope, RoleKind, TrustDomain};
use beacon::tools::pki::{self, Ca, InitRequest, IssueRequest, Reason, Selector};

#[derive(Subcommand, Debug)]
pub(super) enum CaCommand {
    /// Create a CA for a trust domain.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        trust_domain: String,
        /// A name for the CA certificate's subject.
        #[arg(long, default_value = "Beacon alliance CA")]
        name: String,
        /// Members this CA may vouch for: "*", "uk.ncsc", "uk.*" (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "*")]
        members: Vec<String>,
        /// Key algorithm: ecdsa-p256 (every gRPC stack verifies it) or ed25519.
        #[arg(long, value_enum, default_value_t = AlgArg::EcdsaP256)]
        algorithm: AlgArg,
        /// How long the CA certificate is valid, e.g. "5y", "365d".
        #[arg(long, default_value = "5y")]
        validity: humantime::Duration,
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate.
    Issue {
        #[arg(value_enum)]
        kind: KindArg,
        #[arg(long)]
        dir: PathBuf,
        /// The member (organisation id) of a node or client.
        #[arg(long)]
        member: Option<String>,
        /// The node, client or operator name.
        #[arg(long)]
        name: String,
        /// DNS names of a node (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses of a node (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Validity, e.g. "90d" (default 90 days; operators 30 days).
        #[arg(long)]
        validity: Option<humantime::Duration>,
        /// Writes OUT.pem and OUT.key (default: the name, in the current directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Key algorithm (default: the CA's).
        #[arg(long, value_enum)]
        algorithm: Option<AlgArg>,
        #[arg(long)]
        force: bool,
    },
    /// Issue a fresh certificate and key for an identity this CA issued before.
    Renew {
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        which: Which,
        #[arg(long)]
        validity: Option<humantime::Duration>,
        /// Writes OUT.pem and OUT.key.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Revoke a certificate and rewrite the CRL.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        which: Which,
        /// unspecified, key-compromise, ca-compromise, affiliation-changed,
        /// superseded, cessation-of-operation, privilege-withdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Regenerate the CRL (crl.pem in the CA directory).
    Crl {
        #[arg(long)]
        dir: PathBuf,
        /// When relying parties should expect the next CRL, e.g. "7d".
        #[arg(long, default_value = "7d")]
        next_update: humantime::Duration,
    },
    /// List issued certificates.
    List {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Describe a certificate or CRL file.
    Inspect { file: PathBuf },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(super) struct Which {
    /// Serial number (hex), as `beacon ca list` shows it.
    #[arg(long)]
    serial: Option<String>,
    /// The certificate file.
    #[arg(long)]
    cert: Option<PathBuf>,
}

impl Which {
    fn selector(&self) -> Selector {
        match (&self.serial, &self.cert) {
            (Some(s), _) => Selector::Serial(s.clone()),
            (None, Some(c)) => Selector::CertFile(c.clone()),
            // clap's group makes one of them required.
            (None, None) => Selector::Serial(String::new()),
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub(super) enum KindArg {
    Node,
    Client,
    Operator,
}

impl From<KindArg> for RoleKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Node => RoleKind::Node,
            KindArg::Client => RoleKind::Client,
            KindArg::Operator => RoleKind::Operator,
        }
    }
}

pub(super) fn run(cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Init {
            dir,
            trust_domain,
            name,
            members,
            algorithm,
            validity,
            force,
        } => {
            let td: TrustDomain = trust_domain.parse()?;
            let scope = MemberScope::parse_list(&members)?;
            let ca = Ca::init(
                &dir,
                &InitRequest {
                    trust_domain: td,
                    name,
                    members: scope,
                    algorithm: algorithm.into(),
                    validity: validity.into(),
                    force,
                },
            )?;
            println!(
                "created CA {:?} for trust domain {} (members {}) in {}",
                ca.meta.name,
                ca.meta.trust_domain,
                ca.meta.members.join(","),
                dir.display()
            );
            println!("  certificate: {}", Ca::cert_path(&dir).display());
            println!("  CRL:         {}", Ca::crl_path(&dir).display());
            Ok(())
        }
        CaCommand::Issue {
            kind,
            dir,
            member,
            name,
            dns,
            ip,
            validity,
            out,
            algorithm,
            force,
        } => {
            let ca = Ca::open(&dir)?;
            let identity =
                pki::identity_for(&ca.trust_domain()?, kind.into(), member.as_deref(), &name)?;
            let mut req = IssueRequest::new(identity);
            req.dns_names = dns;
            req.ip_addresses = ip;
            req.validity = validity.map(Into::into);
            req.algorithm = algorithm.map(Into::into);
            let out = out.unwrap_or_else(|| PathBuf::from(&name));
            let (cert_path, key_path) = out_paths(&out, force)?;
            let issued = ca.issue(&req)?;
            write_issued(&ca, &issued, &cert_path, &key_path, force)
        }
        CaCommand::Renew {
            dir,
            which,
            validity,
            out,
            force,
        } => {
            let ca = Ca::open(&dir)?;
            let (cert_path, key_path) = out_paths(&out, force)?;
            let issued = ca.renew(&which.selector(), validity.map(Into::into))?;
            write_issued(&ca, &issued, &cert_path, &key_path, force)
        }
        CaCommand::Revoke { dir, which, reason } => {
            let reason: Reason = reason.parse().map_err(anyhow::Error::msg)?;
            let mut ca = Ca::open(&dir)?;
            let entry = ca.revoke(&which.selector(), reason)?;
            println!(
                "revoked {} ({}); CRL rewritten: {}",
                entry.serial,
                entry.identity,
                Ca::crl_path(&dir).display()
            );
            Ok(())
        }
        CaCommand::Crl { dir, next_update } => {
            let mut ca = Ca::open(&dir)?;
            let path = ca.write_crl(next_update.into())?;
            println!(
                "wrote CRL number {} to {}",
                ca.meta.crl_number,
                path.display()
            );
            Ok(())
        }
        CaCommand::List { dir, json } => list(&dir, json),
        CaCommand::Inspect { file } => {
            print!("{}", pki::inspect(&file)?);
            Ok(())
        }
    }
}

/// `beacon ca list`: every certificate the CA issued, with its state.
fn list(dir: &Path, json: bool) -> Result<()> {
    let ca = Ca::open(dir)?;
    let index = ca.index()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&index)?);
        return Ok(());
    }
    let rfc = |t: time::OffsetDateTime| {
        t.replace_nanosecond(0)
            .unwrap_or(t)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    println!(
        "{:<32}  {:<8}  {:<20}  {:<9}  IDENTITY",
        "SERIAL", "KIND", "EXPIRES", "STATE"
    );
    let now = time::OffsetDateTime::now_utc();
    for e in index {
        let state = match (&e.revoked, e.not_after <= now) {
            (Some(_), _) => "revoked",
            (None, true) => "expired",
            (None, false) => "valid",
        };
        println!(
            "{:<32}  {:<8}  {:<20}  {:<9}  {}",
            e.serial,
            e.kind,
            rfc(e.not_after),
            state,
            e.identity
        );
    }
    Ok(())
}

/// Where a certificate and its key go (`<out>.pem`, `<out>.key`); files
/// already there are refused without `force`.
fn out_paths(out: &Path, force: bool) -> Result<(PathBuf, PathBuf)> {
    let s = out.as_os_str().to_string_lossy().into_owned();
    let paths = (
        PathBuf::from(format!("{s}.pem")),
        PathBuf::from(format!("{s}.key")),
    );
    for p in [&paths.0, &paths.1] {
        if p.exists() && !force {
            bail!("{} already exists (use --force to overwrite)", p.display());
        }
    }
    Ok(paths)
}

fn write_issued(ca: &Ca, issued: &pki::Issued, cert: &Path, key: &Path, force: bool) -> Result<()> {
    pki::write_file(key, issued.key_pem.as_bytes(), true, force)?;
    pki::write_file(cert, issued.cert_pem.as_bytes(), false, force)?;
    ca.record_paths(&issued.serial, cert, key)?;
    println!(
        "issued {} serial {} valid until {}",
        issued.entry.identity,
        issued.serial,
        issued
            .entry
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    );
    println!("  certificate: {}", cert.display());
    println!("  key:         {} (mode 0600)", key.display());
    Ok(())
}
