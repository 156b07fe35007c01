//! The client commands: publish, subscribe/tail, get, list, verify, export,
//! import. Settings come from flags, `BEACON_*` variables, or a client config
//! file, in that order of precedence.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use beacon::base::identity::Identity;
use beacon::base::proto::v1 as pb;
use beacon::domain::bulletin::{Attachment, Bulletin, Kind, Severity, Signer, Tlp};
use beacon::domain::sealed::OpeningKey;
use beacon::interop::document::{self, BulletinDoc};
use beacon::net::client::{BeaconClient, BeaconReader, BulletinsClient, ClientSettings, Dialer};
use beacon::trust::TrustBundle;

/// How a client reaches a node: flags, `BEACON_*` variables, or a client
/// config file (`--client-config` / `BEACON_CLIENT_CONFIG`).
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// host:port of the node.
    #[arg(long, env = "BEACON_NODE")]
    node: Option<String>,
    /// Your certificate (PEM).
    #[arg(long, env = "BEACON_CERT")]
    cert: Option<PathBuf>,
    /// Your private key (PEM).
    #[arg(long, env = "BEACON_KEY")]
    key: Option<PathBuf>,
    /// CA certificate(s) that vouch for nodes and signers.
    #[arg(long, env = "BEACON_CA", value_delimiter = ',')]
    ca: Vec<PathBuf>,
    /// CRL file(s) applied to nodes and signers.
    #[arg(long, env = "BEACON_CRL", value_delimiter = ',')]
    crl: Vec<PathBuf>,
    /// Require exactly this node identity (a SPIFFE id), e.g. to reach
    /// another member's node. Without it, only a node of your own member
    /// whose certificate names the host dialled is accepted.
    #[arg(long, visible_alias = "node-id", env = "BEACON_NODE_ID")]
    node_identity: Option<String>,
    /// A TOML file with any of: node, cert, key, ca, crl, node_identity, and
    /// [[trust]] entries (a CA and the members it may vouch for).
    #[arg(long, env = "BEACON_CLIENT_CONFIG")]
    client_config: Option<PathBuf>,
}

impl ConnArgs {
    /// Flags and environment first, then the client config file.
    pub fn settings(&self) -> Result<ClientSettings> {
        let file = match &self.client_config {
            Some(path) => ClientSettings::from_file(path)?,
            None => ClientSettings::default(),
        };
        // BEACON_NODE_IDENTITY is the variable's earlier name.
        let pinned = self
            .node_identity
            .clone()
            .or_else(|| std::env::var("BEACON_NODE_IDENTITY").ok());
        let node_identity = match &pinned {
            Some(s) => Some(
                s.parse::<Identity>()
                    .with_context(|| format!("node identity {s:?}"))?,
            ),
            None => file.node_identity,
        };
        let pick = |a: &Vec<PathBuf>, b: Vec<PathBuf>| if a.is_empty() { b } else { a.clone() };
        Ok(ClientSettings {
            node: self.node.clone().or(file.node),
            cert: self.cert.clone().or(file.cert),
            key: self.key.clone().or(file.key),
            ca: pick(&self.ca, file.ca),
            trust: file.trust,
            crl: pick(&self.crl, file.crl),
            node_identity,
        })
    }

    /// The loaded identity and a channel to the node.
    pub async fn dial(&self) -> Result<(Dialer, tonic::transport::Channel)> {
        let settings = self.settings()?;
        let node = settings.node.clone().context(
            "missing setting: node address (--node, BEACON_NODE or `node` in the client config)",
        )?;
        let dialer = Dialer::load(&settings)?;
        let channel = dialer.dial(&node).await?;
        Ok((dialer, channel))
    }

    /// The node identity required of the node dialled, if one is pinned.
    pub fn pinned_node(&self) -> Result<Option<String>> {
        Ok(self.settings()?.node_identity.map(|i| i.to_string()))
    }
}

/// Reader filters, shared by subscribe, tail and list.
#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only these kinds (repeatable).
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Only this severity and above.
    #[arg(long)]
    min_severity: Option<String>,
    /// Only these TLP labels (repeatable).
    #[arg(long = "tlp")]
    tlp: Vec<String>,
    /// Only bulletins with one of these topics (repeatable).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Only these publishing members (repeatable).
    #[arg(long = "publisher")]
    publishers: Vec<String>,
    /// Only the current view: pass over bulletins already superseded or
    /// retracted (revisions and retractions themselves still come).
    #[arg(long)]
    current_only: bool,
    /// Also bulletins past their expires_at (shown as expired).
    #[arg(long)]
    include_expired: bool,
}

impl FilterArgs {
    fn to_proto(&self) -> Result<Option<pb::Filter>> {
        let mut f = pb::Filter::default();
        for k in &self.kinds {
            let kind = Kind::parse(k).with_context(|| {
                format!(
                    "kind {k:?} is not one of: {}",
                    Kind::ALL.map(Kind::name).join(", ")
                )
            })?;
            f.kinds
                .push(beacon::domain::bulletin::codec::kind_to_i32(kind));
        }
        if let Some(s) = &self.min_severity {
            let sev = Severity::parse(s).with_context(|| {
                format!(
                    "severity {s:?} is not one of: {}",
                    Severity::ALL.map(Severity::name).join(", ")
                )
            })?;
            f.min_severity = beacon::domain::bulletin::codec::severity_to_i32(sev);
        }
        for t in &self.tlp {
            let tlp = Tlp::parse(t).with_context(|| format!("{t:?} is not a TLP 2.0 label"))?;
            f.tlp.push(beacon::domain::bulletin::codec::tlp_to_i32(tlp));
        }
        f.topics = self.topics.clone();
        f.publishers = self.publishers.clone();
        Ok((f != pb::Filter::default()).then_some(f))
    }
}

#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Bulletins from a JSON or YAML file (one or many; `-` for standard input).
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// Bulletins from a STIX 2.1 bundle: each report (with its indicators,
    /// TLP marking and Beacon's own properties) becomes a bulletin, signed
    /// with your key. Objects that cannot be mapped are named, and nothing
    /// is sent.
    #[arg(long, conflicts_with = "file")]
    stix: Option<PathBuf>,
    /// What it is about: disinformation, influence_operation, espionage,
    /// illicit_finance, cyber_intrusion, election_infrastructure, advisory,
    /// other.
    #[arg(long)]
    kind: Option<String>,
    /// info, low, medium, high or critical.
    #[arg(long)]
    severity: Option<String>,
    /// TLP 2.0 label: TLP:CLEAR, TLP:GREEN, TLP:AMBER, TLP:AMBER+STRICT,
    /// TLP:RED (RED needs --to).
    #[arg(long)]
    tlp: Option<String>,
    #[arg(long)]
    title: Option<String>,
    #[arg(long)]
    summary: Option<String>,
    #[arg(long)]
    body: Option<String>,
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Audience member ids (repeatable); required for TLP:RED.
    #[arg(long = "to")]
    audience: Vec<String>,
    /// Audience groups, as the nodes define them (repeatable).
    #[arg(long = "to-group")]
    groups: Vec<String>,
    /// Indicators as TYPE=VALUE, e.g. domain=news-example.ru (repeatable).
    /// Types whose values are checked: domain (domain-name, hostname, fqdn),
    /// url (uri), ipv4, ipv6 (ip: either; an address or address/prefix),
    /// email, account (a login or handle), sha256, sha1, md5 (hex). Any
    /// other type (phone, telegram-channel, …) is taken as written.
    #[arg(long = "indicator")]
    indicators: Vec<String>,
    /// Reference URLs (repeatable).
    #[arg(long = "reference")]
    references: Vec<String>,
    #[arg(long)]
    supersedes: Option<String>,
    #[arg(long)]
    retracts: Option<String>,
    /// RFC 3339 expiry.
    #[arg(long)]
    expires_at: Option<String>,
    /// Use this id (a UUID) instead of a fresh one; republishing is idempotent.
    #[arg(long)]
    id: Option<String>,
    /// Attach a file (e.g. a STIX 2.1 bundle) to every bulletin published.
    #[arg(long)]
    attach: Option<PathBuf>,
    /// Media type of the attachment (guessed from its content otherwise).
    #[arg(long)]
    media_type: Option<String>,
    /// Seal each bulletin to its recipients' keys (the audience's members
    /// and your own member, as the node lists their announced keys, each
    /// checked here): no node on its way can read it. For TLP:AMBER,
    /// TLP:AMBER+STRICT and TLP:RED, with members named in --to.
    #[arg(long)]
    seal: bool,
    /// With --seal: leave kind and severity out of the clear header too.
    #[arg(long, requires = "seal")]
    hide_kind: bool,
    /// One JSON object per result.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SubscribeArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Durable subscription name; without it the subscription is ephemeral.
    #[arg(long)]
    name: Option<String>,
    /// Where to start: resume, earliest, latest, a sequence number, or an RFC 3339 time.
    #[arg(long)]
    from: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Most unacknowledged deliveries in flight (0: the node's default).
    #[arg(long, default_value_t = 0)]
    window: u32,
    /// A recipient key file to open sealed bulletins with (repeatable).
    #[arg(long = "decrypt-key")]
    decrypt_key: Vec<PathBuf>,
    /// One JSON object per line (for pipelines); `--format json`.
    #[arg(long)]
    json: bool,
    /// human, json (one object per line) or stix (one STIX 2.1 bundle per
    /// line: the report, its indicators, author and marking).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// The TLP marking definitions of STIX output: oasis-tlp2 or opencti.
    #[arg(long, default_value = "oasis-tlp2", value_parser = parse_profile)]
    profile: beacon::interop::stix::Profile,
    /// Stop after this many deliveries.
    #[arg(long)]
    count: Option<u64>,
}

/// How deliveries are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
    Stix,
}

fn parse_profile(s: &str) -> Result<beacon::interop::stix::Profile, String> {
    beacon::interop::stix::Profile::parse(s)
        .ok_or_else(|| format!("unknown profile {s:?} (oasis-tlp2 or opencti)"))
}

/// A delivery as a STIX 2.1 bundle: the bulletin's group of objects, its
/// report in the version chain the node holds (revisions and retractions
/// are versions of the first bulletin's report).
async fn stix_bundle(
    d: &pb::Delivery,
    bundle: &TrustBundle,
    keys: &[OpeningKey],
    channel: &tonic::transport::Channel,
    profile: beacon::interop::stix::Profile,
) -> Result<serde_json::Value> {
    let env = beacon::net::client::delivered_envelope(d).map_err(anyhow::Error::msg)?;
    // A sealed bulletin is opened first (with --decrypt-key): its STIX is
    // made here, on the recipient's side, never by a node.
    let (b, signer) = if env.payload_type == beacon::domain::sealed::SEALED_PAYLOAD_TYPE {
        let o = super::keys::open_envelope(&env, bundle, keys)
            .context("a sealed bulletin (--decrypt-key with a recipient key opens it)")?;
        (o.bulletin, o.signer.to_string())
    } else {
        let verified =
            beacon::domain::bulletin::verify_stored_envelope(&env, bundle, SystemTime::now())
                .context("the bulletin's signature does not verify")?;
        (verified.bulletin().clone(), verified.signer().to_string())
    };
    let created = b.created_at.unwrap_or_else(SystemTime::now);
    let mut root = (b.id.clone(), created);
    let mut relation = b.relation.clone();
    // Follow the chain of versions back to its first bulletin (bounded).
    for _ in 0..64 {
        let Some(r) = relation.take() else { break };
        let (beacon::domain::bulletin::Relation::Supersedes(id)
        | beacon::domain::bulletin::Relation::Retracts(id)) = r;
        let Ok(pd) = get(channel.clone(), &id, Some(b.publisher.clone())).await else {
            root.0 = id;
            break;
        };
        let penv = beacon::net::client::delivered_envelope(&pd).map_err(anyhow::Error::msg)?;
        let prev = match reading(&penv, bundle, keys).bulletin {
            Some(p) => p,
            None => {
                // Sealed, and not openable here: its id stands as the root.
                root.0 = id;
                break;
            }
        };
        root = (prev.id.clone(), prev.created_at.unwrap_or(root.1));
        relation = prev.relation;
    }
    let ctx = beacon::interop::stix::Context {
        root,
        signer,
        envelope_sha256: hex(&d.envelope_digest),
        origin_node: d.origin_node.clone(),
        origin_sequence: d.origin_sequence,
        sequence: d.sequence,
        profile,
    };
    Ok(beacon::interop::stix::bundle(
        beacon::interop::stix::objects(&b, &ctx),
    ))
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Sign and publish bulletins, from flags or from a JSON/YAML file.
    Publish(Box<PublishArgs>),
    /// Stream bulletins (replay, then live); verifies every signature.
    Subscribe(Box<SubscribeArgs>),
    /// Follow new bulletins as they arrive (ephemeral, from now, unless told otherwise).
    Tail(Box<SubscribeArgs>),
    /// One bulletin by id.
    Get {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
        /// The publishing member, when several used the same id.
        #[arg(long)]
        publisher: Option<String>,
        #[arg(long)]
        json: bool,
        /// A recipient key file (`beacon keys generate`) to open sealed
        /// bulletins with (repeatable, for older keys).
        #[arg(long = "decrypt-key")]
        decrypt_key: Vec<PathBuf>,
    },
    /// Bulletins in sequence order, filtered.
    List {
        #[command(flatten)]
        conn: ConnArgs,
        /// Start after this sequence.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many (0: everything, page by page).
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        json: bool,
        /// A recipient key file to open sealed bulletins with (repeatable).
        #[arg(long = "decrypt-key")]
        decrypt_key: Vec<PathBuf>,
    },
    /// Open a sealed bulletin (DSSE JSON, as `beacon export` writes it)
    /// offline: both signatures, the key commitment, the inner bulletin
    /// against the clear header.
    Open {
        file: PathBuf,
        /// A recipient key file (repeatable).
        #[arg(long = "decrypt-key", required = true)]
        decrypt_key: Vec<PathBuf>,
        /// CA certificate(s) (PEM).
        #[arg(long, env = "BEACON_CA", value_delimiter = ',', required = true)]
        ca: Vec<PathBuf>,
        /// CRL file(s).
        #[arg(long, env = "BEACON_CRL", value_delimiter = ',')]
        crl: Vec<PathBuf>,
        /// Also write the inner signed bulletin (DSSE JSON) here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check an exported DSSE JSON envelope offline against CA certificates.
    Verify {
        file: PathBuf,
        /// CA certificate(s) (PEM).
        #[arg(long, env = "BEACON_CA", value_delimiter = ',', required = true)]
        ca: Vec<PathBuf>,
        /// CRL file(s).
        #[arg(long, env = "BEACON_CRL", value_delimiter = ',')]
        crl: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
        /// A receipt (C2SP tlog-proof, from `beacon log prove --out` or a
        /// publish that asked for one): the bulletin is in the node's log.
        #[arg(long, requires = "log_key")]
        receipt: Option<PathBuf>,
        /// The node's log key (`beacon log checkpoint` shows it, announced
        /// with the node's certificate).
        #[arg(long)]
        log_key: Option<String>,
        /// A witness key whose cosignature counts (repeatable).
        #[arg(long = "witness")]
        witnesses: Vec<String>,
        /// Cosignatures needed, of the witnesses named (default: all of them).
        #[arg(long)]
        quorum: Option<usize>,
    },
    /// Write a bulletin's signed envelope as DSSE JSON.
    Export {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
        #[arg(long)]
        publisher: Option<String>,
        /// Output file (standard output by default).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Write a STIX 2.1 bundle (the report, its indicators, author and
        /// marking) instead of the signed DSSE envelope.
        #[arg(long)]
        stix: bool,
        /// The TLP marking definitions of STIX output: oasis-tlp2 or opencti.
        #[arg(long, default_value = "oasis-tlp2", value_parser = parse_profile)]
        profile: beacon::interop::stix::Profile,
        /// With --stix, a recipient key file to open a sealed bulletin with
        /// (repeatable). The DSSE envelope of a sealed bulletin is written
        /// sealed, as held (`beacon open` opens it).
        #[arg(long = "decrypt-key")]
        decrypt_key: Vec<PathBuf>,
    },
    /// Publish a DSSE JSON envelope as it is (your own export, or relayed by a node).
    Import {
        #[command(flatten)]
        conn: ConnArgs,
        file: PathBuf,
    },
}

pub async fn run(cmd: ClientCommand) -> Result<()> {
    match cmd {
        ClientCommand::Publish(a) => publish(*a).await,
        ClientCommand::Subscribe(a) => subscribe(*a, false).await,
        ClientCommand::Tail(a) => subscribe(*a, true).await,
        ClientCommand::Get {
            conn,
            id,
            publisher,
            json,
            decrypt_key,
        } => {
            let (dialer, channel) = conn.dial().await?;
            let d = get(channel, &id, publisher).await?;
            let mut out = std::io::stdout().lock();
            let color = out_is_terminal();
            let keys = super::keys::opening_keys(&decrypt_key)?;
            let mut text = render(&d, &dialer.bundle, &keys, json, color);
            if !json {
                // The whole bulletin, not only the line `list` shows.
                text.push_str(&details(&d, &dialer.bundle, &keys));
            }
            writeln!(out, "{text}")?;
            Ok(())
        }
        ClientCommand::List {
            conn,
            after,
            limit,
            filter,
            json,
            decrypt_key,
        } => list(conn, after, limit, filter, json, &decrypt_key).await,
        ClientCommand::Verify {
            file,
            ca,
            crl,
            json,
            receipt,
            log_key,
            witnesses,
            quorum,
        } => {
            let env = verify(&file, &ca, &crl, json)?;
            match (receipt, log_key) {
                (Some(r), Some(k)) => {
                    let q = quorum.unwrap_or(witnesses.len());
                    println!(
                        "{}",
                        super::log::check_receipt(&env, &r, &k, &witnesses, q)?
                    );
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        ClientCommand::Export {
            conn,
            id,
            publisher,
            output,
            stix,
            profile,
            decrypt_key,
        } => {
            let keys = super::keys::opening_keys(&decrypt_key)?;
            let (dialer, channel) = conn.dial().await?;
            let d = get(channel.clone(), &id, publisher).await?;
            let text = if stix {
                serde_json::to_string_pretty(
                    &stix_bundle(&d, &dialer.bundle, &keys, &channel, profile).await?,
                )?
            } else {
                let env =
                    beacon::net::client::delivered_envelope(&d).map_err(anyhow::Error::msg)?;
                document::envelope_to_dsse(&env)
            };
            match output {
                Some(path) => std::fs::write(&path, text + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => println!("{text}"),
            }
            Ok(())
        }
        ClientCommand::Open {
            file,
            decrypt_key,
            ca,
            crl,
            out,
        } => open_file(&file, &decrypt_key, &ca, &crl, out.as_deref()),
        ClientCommand::Import { conn, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let env = document::envelope_from_dsse(&text)?;
            let (dialer, channel) = conn.dial().await?;
            let signer = Arc::new(Signer::new(
                dialer.own.chain.clone(),
                dialer.own.key.secret_der(),
            )?);
            let mut client = BeaconClient::new(channel, signer);
            let p = client
                .publish_envelope(&env)
                .await
                .context("import refused")?;
            println!(
                "{} {} seq {}",
                if p.duplicate {
                    "already held"
                } else {
                    "imported"
                },
                p.id,
                p.sequence
            );
            Ok(())
        }
    }
}

fn out_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

fn read_input(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

fn guess_media_type(path: &Path, data: &[u8]) -> String {
    let head = String::from_utf8_lossy(&data[..data.len().min(4096)]);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if (ext == "json" || head.trim_start().starts_with('{'))
        && head.contains("\"type\"")
        && head.contains("\"bundle\"")
    {
        "application/stix+json;version=2.1".into()
    } else {
        match ext.as_str() {
            "json" => "application/json",
            "pdf" => "application/pdf",
            "txt" | "md" => "text/plain",
            "csv" => "text/csv",
            _ => "application/octet-stream",
        }
        .into()
    }
}

fn docs_from_flags(a: &PublishArgs) -> Result<BulletinDoc> {
    let need = |v: &Option<String>, flag: &str| {
        v.clone()
            .with_context(|| format!("missing --{flag} (or give --file)"))
    };
    let indicators = a
        .indicators
        .iter()
        .map(|i| {
            let (t, v) = i
                .split_once('=')
                .with_context(|| format!("indicator {i:?} is not TYPE=VALUE"))?;
            Ok(document::IndicatorDoc {
                kind: t.to_owned(),
                value: v.to_owned(),
                description: String::new(),
                stix_id: String::new(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(BulletinDoc {
        id: a.id.clone(),
        publisher: None,
        created_at: None,
        kind: need(&a.kind, "kind")?,
        severity: need(&a.severity, "severity")?,
        tlp: need(&a.tlp, "tlp")?,
        audience: document::AudienceDoc {
            members: a.audience.clone(),
            groups: a.groups.clone(),
        },
        topics: a.topics.clone(),
        title: need(&a.title, "title")?,
        summary: need(&a.summary, "summary")?,
        body: a.body.clone().unwrap_or_default(),
        indicators,
        references: a
            .references
            .iter()
            .map(|u| document::ReferenceDoc {
                url: u.clone(),
                description: String::new(),
                external_id: String::new(),
            })
            .collect(),
        supersedes: a.supersedes.clone(),
        retracts: a.retracts.clone(),
        expires_at: a.expires_at.clone(),
        attachment: None,
    })
}

async fn publish(a: PublishArgs) -> Result<()> {
    // Documents and the attachment are read before the node is dialled.
    let docs = match (&a.stix, &a.file) {
        (Some(_), _) => Vec::new(),
        (None, Some(path)) => {
            let yaml = match path.extension().and_then(|e| e.to_str()) {
                Some("yaml" | "yml") => Some(true),
                Some("json") => Some(false),
                _ => None,
            };
            document::parse_bulletins(&read_input(path)?, yaml)
                .with_context(|| format!("{}", path.display()))?
        }
        (None, None) => vec![docs_from_flags(&a)?],
    };
    let attachment = match &a.attach {
        Some(path) => {
            let data =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(Attachment {
                media_type: a
                    .media_type
                    .clone()
                    .unwrap_or_else(|| guess_media_type(path, &data)),
                filename: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                data,
            })
        }
        None => None,
    };
    let (dialer, channel) = a.conn.dial().await?;
    let member = dialer
        .own
        .identity
        .member()
        .map(|m| m.as_str().to_owned())
        .with_context(|| {
            format!(
                "{} cannot publish: it is not a member identity",
                dialer.own.identity
            )
        })?;
    // Every bulletin is checked before anything is sent.
    let mut bulletins: Vec<Bulletin> = match &a.stix {
        Some(path) => stix_bulletins(path, &member)?,
        None => docs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                d.to_bulletin(&member)
                    .with_context(|| format!("bulletin {} of {}", i + 1, docs.len()))
            })
            .collect::<Result<_>>()?,
    };
    if attachment.is_some() {
        for b in &mut bulletins {
            b.attachment = attachment.clone();
        }
    }
    // All or nothing: every rule every bulletin breaks is said, and nothing
    // is sent while any does (a TLP:RED bulletin without recipients, an
    // ipv4 that is no address…).
    let now = std::time::SystemTime::now();
    let mut broken = Vec::new();
    for (i, b) in bulletins.iter().enumerate() {
        let mut p = beacon::domain::bulletin::problems(b, now);
        p.extend(beacon::domain::bulletin::indicator_problems(b));
        if !p.is_empty() {
            broken.push(format!(
                "bulletin {} of {} ({:?}): {}",
                i + 1,
                bulletins.len(),
                b.title.chars().take(60).collect::<String>(),
                p.join("; ")
            ));
        }
    }
    if !broken.is_empty() {
        bail!("nothing was sent: {}", broken.join(" | "));
    }
    let signer = Arc::new(Signer::new(
        dialer.own.chain.clone(),
        dialer.own.key.secret_der(),
    )?);
    let mut envelopes = bulletins
        .iter()
        .map(|b| signer.sign(b.to_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    // Sealed: all of them with --seal; otherwise those of the labels the
    // node takes only sealed (it says which).
    let sealable = |b: &Bulletin| {
        matches!(
            beacon::domain::bulletin::codec::tlp_from_i32(b.tlp),
            Some(Tlp::Amber | Tlp::AmberStrict | Tlp::Red)
        )
    };
    let required: Vec<String> = if !a.seal && bulletins.iter().any(sealable) {
        BulletinsClient::new(channel.clone())
            .list_recipient_keys(pb::ListRecipientKeysRequest {
                member: member.clone(),
                all: false,
            })
            .await
            .map(|r| r.into_inner().require_sealed)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let seal_it = |b: &Bulletin| {
        a.seal
            || beacon::domain::bulletin::codec::tlp_from_i32(b.tlp)
                .is_some_and(|t| required.iter().any(|l| l == t.label()))
    };
    if bulletins.iter().any(seal_it) {
        if !a.seal {
            eprintln!(
                "sealing the {} bulletins: the node takes them only sealed",
                required.join(" and ")
            );
        }
        // Each bulletin's recipients: its audience's members and this
        // member, every key of theirs usable now (checked here).
        let mut cache: std::collections::BTreeMap<
            Vec<String>,
            Vec<beacon::domain::sealed::RecipientKey>,
        > = Default::default();
        for (b, env) in bulletins.iter().zip(envelopes.iter_mut()) {
            if !seal_it(b) {
                continue;
            }
            let mut members = vec![member.clone()];
            for m in &b.audience.members {
                if !members.contains(m) {
                    members.push(m.clone());
                }
            }
            let recipients = match cache.get(&members) {
                Some(r) => r.clone(),
                None => {
                    let r = super::keys::recipients_of(&channel, &dialer.bundle, &members).await?;
                    cache.insert(members.clone(), r.clone());
                    r
                }
            };
            *env = beacon::domain::sealed::seal(&signer, env, &recipients, a.hide_kind)
                .with_context(|| format!("cannot seal {:?}", b.title))?;
        }
    }
    let mut client = BeaconClient::new(channel, signer);
    // One stream for all of them, a bounded number in flight; results come
    // back in the order sent.
    const IN_FLIGHT: usize = 64;
    let mut stream = client.publish_stream().await?;
    let mut refused = 0;
    let mut answered = 0;
    for env in &envelopes {
        if stream.waiting() >= IN_FLIGHT {
            let outcome = stream.result().await?;
            refused += report(&bulletins[answered], outcome, a.json);
            answered += 1;
        }
        stream.send(env).await?;
    }
    for outcome in stream.finish().await? {
        refused += report(&bulletins[answered], outcome, a.json);
        answered += 1;
    }
    if refused > 0 {
        bail!("{refused} of {} bulletins refused", bulletins.len());
    }
    Ok(())
}

/// `beacon publish --stix`: the bundle's reports as bulletins of `member`,
/// each checked; any object that cannot be mapped stops it all.
fn stix_bulletins(path: &Path, member: &str) -> Result<Vec<Bulletin>> {
    let text = read_input(path)?;
    let (taken, outcomes) = beacon::interop::stix::take_bundle(text.as_bytes(), member)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}", path.display()))?;
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.failure.as_ref().map(|f| format!("{}: {f}", o.id)))
        .collect();
    if !failures.is_empty() {
        bail!(
            "{}: {} object(s) cannot be published, nothing was sent:\n  {}",
            path.display(),
            failures.len(),
            failures.join("\n  ")
        );
    }
    if taken.is_empty() {
        bail!("{}: the bundle holds no report", path.display());
    }
    let now = SystemTime::now();
    taken
        .into_iter()
        .map(|t| {
            beacon::domain::bulletin::validate(&t.bulletin, now).with_context(|| t.id.clone())?;
            Ok(t.bulletin)
        })
        .collect()
}

/// Prints the outcome of one publish; 1 if it was refused.
fn report(
    b: &Bulletin,
    outcome: Result<beacon::net::client::Published, tonic::Status>,
    json: bool,
) -> usize {
    match outcome {
        Ok(p) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "id": p.id, "sequence": p.sequence, "duplicate": p.duplicate,
                        "digest": hex(&p.digest), "warnings": p.warnings,
                    })
                );
            } else {
                println!(
                    "{} {} seq {}",
                    if p.duplicate {
                        "already held"
                    } else {
                        "published"
                    },
                    p.id,
                    p.sequence
                );
            }
            for w in &p.warnings {
                eprintln!("warning: {} {w}", p.id);
            }
            0
        }
        Err(status) => {
            let e = anyhow::Error::from(beacon::net::client::ClientError::Rpc(status));
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": b.id, "refused": format!("{e:#}")})
                );
            } else {
                eprintln!("refused {}: {e:#}", b.id);
            }
            1
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One delivery as a line: human (severity and TLP first) or JSON. The
/// signature is checked here, on the reader's side.
fn render(
    d: &pb::Delivery,
    bundle: &TrustBundle,
    keys: &[OpeningKey],
    json: bool,
    color: bool,
) -> String {
    let env = beacon::net::client::delivered_envelope(d);
    let read = env.as_ref().map(|e| reading(e, bundle, keys));
    let verified: Result<String, anyhow::Error> = match &read {
        Ok(r) => r.signer.clone().map_err(anyhow::Error::msg),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    };
    let bulletin = read.as_ref().ok().and_then(|r| r.bulletin.clone());
    let sealed = read.as_ref().ok().and_then(|r| r.sealed.clone());
    let accepted = d
        .accepted_at
        .and_then(|t| SystemTime::try_from(t).ok())
        .map(document::rfc3339)
        .unwrap_or_default();
    if json {
        let mut v = serde_json::json!({
            "sequence": d.sequence,
            "accepted_at": accepted,
            "origin_node": d.origin_node,
            "origin_sequence": d.origin_sequence,
            "digest": hex(&d.envelope_digest),
            "verified": verified.is_ok(),
        });
        if let Some(sealed) = &sealed {
            v["sealed"] = serde_json::json!(sealed);
        }
        match &verified {
            Ok(signer) => v["signer"] = serde_json::json!(signer),
            Err(e) => {
                v["error"] = serde_json::json!(format!("{e:#}"));
                // Who the envelope says signed it, although that did not
                // verify (a reader may still want to know whom to ask).
                if let Some(claimed) = env.as_ref().ok().and_then(claimed_signer) {
                    v["signer"] = serde_json::json!(claimed);
                }
            }
        }
        if let Some(b) = &bulletin {
            v["bulletin"] = serde_json::to_value(BulletinDoc::from_bulletin(b)).unwrap_or_default();
        }
        if let Some((how, seq, id)) = replaced(d) {
            v["replaced_by"] = serde_json::json!({ "how": how, "sequence": seq, "id": id });
        }
        if d.expired {
            v["expired"] = serde_json::json!(true);
        }
        return v.to_string();
    }
    let Some(b) = bulletin else {
        return match sealed {
            Some(note) => format!("#{} {accepted} {note}", d.sequence),
            None => format!("#{} {accepted} ✗ undecodable envelope", d.sequence),
        };
    };
    let doc = BulletinDoc::from_bulletin(&b);
    let paint = |code: &str, s: &str| {
        if color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    };
    let tlp = match doc.tlp.as_str() {
        "TLP:RED" => paint("1;31", &doc.tlp),
        "TLP:AMBER" | "TLP:AMBER+STRICT" => paint("1;33", &doc.tlp),
        "TLP:GREEN" => paint("1;32", &doc.tlp),
        other => paint("1", other),
    };
    let severity = match doc.severity.as_str() {
        "critical" | "high" => paint("1;31", &doc.severity.to_uppercase()),
        "medium" => paint("33", &doc.severity.to_uppercase()),
        s => s.to_uppercase(),
    };
    let check = match &verified {
        Ok(signer) => format!("✓ {signer}"),
        Err(e) => paint("1;31", &format!("✗ UNVERIFIED: {e:#}")),
    };
    let check = match &sealed {
        Some(note) => format!("{check} [{note}]"),
        None => check,
    };
    let mut line = format!(
        "#{} {accepted} {severity} {tlp} {} [{}] {} — {}",
        d.sequence,
        doc.publisher.unwrap_or_default(),
        doc.kind,
        doc.title,
        check
    );
    if let Some(id) = doc.retracts {
        line.push_str(&format!(" (retracts {id})"));
    }
    if let Some(id) = doc.supersedes {
        line.push_str(&format!(" (supersedes {id})"));
    }
    line.push_str(&format!(" id={}", doc.id.unwrap_or_default()));
    if let Some((how, seq, id)) = replaced(d) {
        line.push_str(&paint("1;35", &format!(" [{how} by #{seq} id={id}]")));
    }
    if d.expired {
        line.push_str(&paint("2", " [expired]"));
    }
    line
}

/// What a reader makes of an envelope: who signed it (verified here), the
/// bulletin, and for a sealed one what it is sealed to and whether it was
/// opened.
struct Reading {
    signer: Result<String, String>,
    bulletin: Option<Bulletin>,
    sealed: Option<String>,
}

fn reading(
    env: &beacon::domain::bulletin::Envelope,
    bundle: &TrustBundle,
    keys: &[OpeningKey],
) -> Reading {
    use beacon::domain::sealed;
    if env.payload_type != sealed::SEALED_PAYLOAD_TYPE {
        return Reading {
            signer: beacon::domain::bulletin::verify_stored_envelope(
                env,
                bundle,
                SystemTime::now(),
            )
            .map(|v| v.signer().to_string())
            .map_err(|e| e.to_string()),
            bulletin: beacon::domain::bulletin::codec::decode_bulletin(&env.payload).ok(),
            sealed: None,
        };
    }
    let header = sealed::Sealed::parse(&env.payload).ok().map(|s| s.header);
    let to = header
        .as_ref()
        .map(|h| h.members().join(", "))
        .unwrap_or_default();
    match super::keys::open_envelope(env, bundle, keys) {
        Ok(o) => Reading {
            signer: Ok(o.signer.to_string()),
            sealed: Some(format!(
                "sealed to {to}; opened with key {}",
                sealed::hex(&o.opened_with.1)
            )),
            bulletin: Some(o.bulletin),
        },
        Err(e) => {
            let what = match (&e, header) {
                (sealed::SealError::NotARecipient(_), Some(h)) if keys.is_empty() => format!(
                    "SEALED {} [{}] id={} to {to} (--decrypt-key to open it)",
                    beacon::domain::bulletin::codec::tlp_from_i32(h.tlp).map_or("?", |t| t.label()),
                    h.publisher,
                    h.id
                ),
                (_, Some(h)) => format!(
                    "SEALED {} [{}] id={} to {to}: not opened: {e}",
                    beacon::domain::bulletin::codec::tlp_from_i32(h.tlp).map_or("?", |t| t.label()),
                    h.publisher,
                    h.id
                ),
                (_, None) => format!("✗ sealed bulletin refused: {e}"),
            };
            Reading {
                signer: match &e {
                    sealed::SealError::NotARecipient(_) => {
                        claimed_signer(env).ok_or_else(|| e.to_string())
                    }
                    _ => Err(e.to_string()),
                },
                bulletin: None,
                sealed: Some(what),
            }
        }
    }
}

/// The identity an envelope's signature names (its chain's leaf), whether or
/// not it verifies.
fn claimed_signer(env: &beacon::domain::bulletin::Envelope) -> Option<String> {
    let leaf = env.signatures.first()?.cert_chain.first()?;
    let der = rustls::pki_types::CertificateDer::from(leaf.as_slice());
    beacon::trust::identity_of(&der)
        .ok()
        .map(|(id, _)| id.to_string())
}

/// The lines `get` shows after the summary line: every field of the
/// bulletin (summary, body, audience, topics, indicators, references,
/// expiry, who submitted it, the attachment).
fn details(d: &pb::Delivery, bundle: &TrustBundle, keys: &[OpeningKey]) -> String {
    let Some(b) = beacon::net::client::delivered_envelope(d)
        .ok()
        .and_then(|e| reading(&e, bundle, keys).bulletin)
    else {
        return String::new();
    };
    let doc = BulletinDoc::from_bulletin(&b);
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        if !v.is_empty() {
            out.push_str(&format!("\n  {k:<12} {v}"));
        }
    };
    line("summary:", &doc.summary);
    if !doc.body.is_empty() {
        line("body:", &doc.body.replace('\n', "\n               "));
    }
    let audience = match (
        doc.audience.members.is_empty(),
        doc.audience.groups.is_empty(),
    ) {
        (true, true) => "(none named: whoever the TLP label allows)".to_owned(),
        _ => {
            let mut parts = Vec::new();
            if !doc.audience.members.is_empty() {
                parts.push(format!("members {}", doc.audience.members.join(", ")));
            }
            if !doc.audience.groups.is_empty() {
                parts.push(format!("groups {}", doc.audience.groups.join(", ")));
            }
            parts.join("; ")
        }
    };
    line("audience:", &audience);
    line("topics:", &doc.topics.join(", "));
    line("created:", doc.created_at.as_deref().unwrap_or_default());
    line("expires:", doc.expires_at.as_deref().unwrap_or_default());
    line("submitted:", &b.submitted_by);
    for (i, ind) in doc.indicators.iter().enumerate() {
        let label = if i == 0 { "indicators:" } else { "" };
        let mut v = format!("{}={}", ind.kind, ind.value);
        if !ind.description.is_empty() {
            v.push_str(&format!(" — {}", ind.description));
        }
        out.push_str(&format!("\n  {label:<12} {v}"));
    }
    for (i, r) in doc.references.iter().enumerate() {
        let label = if i == 0 { "references:" } else { "" };
        let mut v = r.url.clone();
        if !r.description.is_empty() {
            v.push_str(&format!(" — {}", r.description));
        }
        out.push_str(&format!("\n  {label:<12} {v}"));
    }
    if let Some(a) = &b.attachment {
        let what = format!(
            "{} ({}, {} bytes)",
            if a.filename.is_empty() {
                "(unnamed)"
            } else {
                &a.filename
            },
            a.media_type,
            a.data.len()
        );
        out.push_str(&format!("\n  {:<12} {what}", "attachment:"));
    }
    out
}

/// What replaced a delivered bulletin, as (how, its sequence, its id).
fn replaced(d: &pb::Delivery) -> Option<(&'static str, u64, &str)> {
    let r = d.replaced_by.as_ref()?;
    let how = match pb::replacement::How::try_from(r.how) {
        Ok(pb::replacement::How::Retracted) => "retracted",
        Ok(pb::replacement::How::Superseded) => "superseded",
        _ => "replaced",
    };
    Some((how, r.sequence, r.id.as_str()))
}

async fn get(
    channel: tonic::transport::Channel,
    id: &str,
    publisher: Option<String>,
) -> Result<pb::Delivery> {
    let mut c = BulletinsClient::new(channel).max_decoding_message_size(64 << 20);
    let r = c
        .get(pb::GetRequest {
            id: id.to_owned(),
            publisher: publisher.unwrap_or_default(),
        })
        .await
        .map_err(beacon::net::client::ClientError::from)?;
    r.into_inner().delivery.context("the node sent no delivery")
}

async fn list(
    conn: ConnArgs,
    after: u64,
    limit: u64,
    filter: FilterArgs,
    json: bool,
    decrypt_key: &[PathBuf],
) -> Result<()> {
    let filter_proto = filter.to_proto()?;
    let keys = super::keys::opening_keys(decrypt_key)?;
    let (dialer, channel) = conn.dial().await?;
    let mut c = BulletinsClient::new(channel).max_decoding_message_size(64 << 20);
    let color = out_is_terminal();
    let mut out = std::io::stdout().lock();
    let mut after = after;
    let mut shown = 0u64;
    loop {
        let page_limit = if limit == 0 {
            1000
        } else {
            (limit - shown).min(1000)
        };
        let page = c
            .list(pb::ListRequest {
                after_sequence: after,
                until_sequence: 0,
                limit: page_limit as u32,
                filter: filter_proto.clone(),
                current_only: filter.current_only,
                include_expired: filter.include_expired,
            })
            .await
            .map_err(beacon::net::client::ClientError::from)?
            .into_inner();
        for d in &page.deliveries {
            writeln!(out, "{}", render(d, &dialer.bundle, &keys, json, color))?;
            shown += 1;
        }
        after = page.next_after_sequence;
        if !page.more || (limit != 0 && shown >= limit) {
            return Ok(());
        }
    }
}

/// An envelope from a DSSE JSON file, and the bundle of the CAs (and CRLs)
/// given, in its signer's trust domain: the CAs decide whether the signer
/// is vouched for.
fn read_offline(
    file: &Path,
    ca: &[PathBuf],
    crl: &[PathBuf],
) -> Result<(beacon::domain::bulletin::Envelope, TrustBundle)> {
    let text = read_input(file)?;
    let env = document::envelope_from_dsse(&text).with_context(|| format!("{}", file.display()))?;
    let leaf = env
        .signatures
        .first()
        .and_then(|s| s.cert_chain.first())
        .context("the envelope carries no signer certificate")?;
    let (signer_id, _) =
        beacon::trust::identity_of(&rustls::pki_types::CertificateDer::from(leaf.as_slice()))?;
    let bundle = beacon::trust::read_bundle(
        &signer_id.trust_domain,
        ca.iter()
            .map(|p| (p.as_path(), beacon::base::identity::MemberScope::any())),
        crl.iter().map(PathBuf::as_path),
    )?;
    Ok((env, bundle))
}

/// `beacon open`: a sealed bulletin from a DSSE JSON file, checked and
/// opened offline; prints the inner bulletin as JSON.
fn open_file(
    file: &Path,
    keys: &[PathBuf],
    ca: &[PathBuf],
    crl: &[PathBuf],
    out: Option<&Path>,
) -> Result<()> {
    let keys = super::keys::opening_keys(keys)?;
    let (env, bundle) = read_offline(file, ca, crl)?;
    let o = super::keys::open_envelope(&env, &bundle, &keys)
        .with_context(|| format!("{} does not open", file.display()))?;
    if let Some(out) = out {
        std::fs::write(out, document::envelope_to_dsse(&o.envelope) + "\n")
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    println!(
        "{}",
        serde_json::json!({
            "opened": true,
            "signer": o.signer.to_string(),
            "opened_with": {"member": o.opened_with.0, "key_id": beacon::domain::sealed::hex(&o.opened_with.1)},
            "bulletin": BulletinDoc::from_bulletin(&o.bulletin),
        })
    );
    Ok(())
}

fn verify(
    file: &Path,
    ca: &[PathBuf],
    crl: &[PathBuf],
    json: bool,
) -> Result<beacon::domain::bulletin::Envelope> {
    let (env, bundle) = read_offline(file, ca, crl)?;
    let v = beacon::domain::bulletin::verify_stored_envelope(&env, &bundle, SystemTime::now())
        .with_context(|| format!("{} does not verify", file.display()))?;
    let b = v.bulletin();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "verified": true,
                "signer": v.signer().to_string(),
                "digest": hex(&beacon::domain::bulletin::sha256(&beacon::domain::bulletin::codec::encode_envelope(&env))),
                "bulletin": BulletinDoc::from_bulletin(b),
            })
        );
    } else {
        println!(
            "verified: {} {} {} \"{}\" signed by {} (created {})",
            b.id,
            v.tlp().label(),
            v.severity().name(),
            b.title,
            v.signer(),
            b.created_at.map(document::rfc3339).unwrap_or_default()
        );
    }
    Ok(env)
}

/// Where a subscription starts, from `--from`.
fn start(from: Option<&str>, durable: bool, tail: bool) -> Result<pb::start_position::At> {
    use pb::start_position::{At, Earliest, Latest, Resume};
    let default = if durable {
        "resume"
    } else if tail {
        "latest"
    } else {
        "earliest"
    };
    let s = from.unwrap_or(default);
    Ok(match s {
        "resume" => At::Resume(Resume {}),
        "earliest" => At::Earliest(Earliest {}),
        "latest" | "now" => At::Latest(Latest {}),
        other => {
            if let Ok(n) = other.parse::<u64>() {
                if n == 0 {
                    bail!("--from: sequences start at 1");
                }
                At::Sequence(n)
            } else {
                let t = time::OffsetDateTime::parse(
                    other,
                    &time::format_description::well_known::Rfc3339,
                )
                .with_context(|| {
                    format!("--from {other:?}: expected resume, earliest, latest, a sequence or an RFC 3339 time")
                })?;
                At::Time(prost_types::Timestamp::from(SystemTime::from(t)))
            }
        }
    })
}

async fn subscribe(a: SubscribeArgs, tail: bool) -> Result<()> {
    use pb::subscribe_response::Msg;
    let keys = super::keys::opening_keys(&a.decrypt_key)?;
    let durable = a.name.is_some();
    let open = pb::SubscribeOpen {
        checkpoints: false,
        name: a.name.clone().unwrap_or_default(),
        start: Some(pb::StartPosition {
            at: Some(start(a.from.as_deref(), durable, tail)?),
        }),
        filter: a.filter.to_proto()?,
        window: a.window,
        heartbeat_ms: 0,
        current_only: a.filter.current_only,
        include_expired: a.filter.include_expired,
        log_id: String::new(),
        carry_sealed: false,
    };
    // A reader: subscribing signs nothing, so no signing key is loaded.
    let (dialer, channel) = a.conn.dial().await?;
    let lookups = channel.clone();
    let format = match (a.format, a.json) {
        (Some(f), _) => f,
        (None, true) => Format::Json,
        (None, false) => Format::Human,
    };
    let mut reader = BeaconReader::new(channel);
    let mut sub = reader.subscribe(open).await?;
    let terminal = out_is_terminal();
    let progress = terminal && std::io::stderr().is_terminal();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut ack_every = 64u64;
    let (mut written, mut acked, mut last_written) = (0u64, 0u64, 0u64);
    let mut replay: Option<(u64, u64)> = None; // (cursor, head) while replaying
                                               // Registered now, not on first poll: a `ctrl_c()` future that `select!`
                                               // never got round to polling (deliveries were always ready first) leaves
                                               // SIGINT with its default action, killing the process mid-write.
    let mut interrupted = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot handle Ctrl-C")?;
    let ended_by_node = loop {
        let ev = tokio::select! {
            _ = interrupted.recv() => break false,
            ev = sub.next() => ev?,
        };
        let Some(ev) = ev else { break true };
        match ev {
            Msg::Subscribed(s) => {
                ack_every = u64::from(s.window / 4).clamp(1, 64);
                if s.head > s.cursor {
                    replay = Some((s.cursor, s.head));
                }
                if terminal {
                    eprintln!(
                        "subscribed{} after sequence {} (head {}, window {})",
                        if s.name.is_empty() {
                            String::new()
                        } else {
                            format!(" as {:?}", s.name)
                        },
                        s.cursor,
                        s.head,
                        s.window
                    );
                }
                if !s.restarted.is_empty() {
                    // Always said, terminal or not: a reader must know it
                    // gets bulletins again (its node's log changed).
                    eprintln!("note: {}", s.restarted);
                }
                if s.pruned > 0 {
                    eprintln!(
                        "{} bulletins after the cursor were pruned by the node's retention and are passed over",
                        s.pruned
                    );
                }
            }
            Msg::Delivery(d) => {
                let line = match format {
                    Format::Stix => stix_bundle(&d, &dialer.bundle, &keys, &lookups, a.profile)
                        .await?
                        .to_string(),
                    other => render(&d, &dialer.bundle, &keys, other == Format::Json, terminal),
                };
                // Written out (and flushed) before it is acknowledged; a closed
                // output stops here, leaving it unacknowledged.
                if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                    break false;
                }
                written += 1;
                last_written = d.sequence;
                if progress {
                    if let Some((from, head)) = replay {
                        let total = head.saturating_sub(from).max(1);
                        let done = d.sequence.saturating_sub(from).min(total);
                        eprint!(
                            "\rreplaying {done}/{total} ({:.0}%)\x1b[K",
                            done as f64 * 100.0 / total as f64
                        );
                    }
                }
                if written % ack_every == 0 {
                    sub.ack(last_written).await?;
                    acked = last_written;
                }
                if a.count.is_some_and(|n| written >= n) {
                    break false;
                }
            }
            Msg::CaughtUp(c) => {
                if progress && replay.is_some() {
                    eprintln!("\rcaught up at {}; live\x1b[K", c.head);
                }
                replay = None;
                if last_written > acked {
                    sub.ack(last_written).await?;
                    acked = last_written;
                }
            }
            Msg::Heartbeat(_) => {
                if last_written > acked {
                    sub.ack(last_written).await?;
                    acked = last_written;
                }
            }
            // Not asked for by this command.
            Msg::Checkpoint(_) => {}
        }
    };
    if ended_by_node {
        bail!("the node closed the subscription");
    }
    // A goodbye: the last written delivery is acknowledged and the node
    // confirms the cursor, so the next run resumes right after it.
    if last_written > acked {
        sub.ack(last_written).await?;
    }
    sub.finish(Duration::from_secs(10)).await?;
    if terminal {
        eprintln!("stopped after {written} deliveries; acknowledged up to {last_written}");
    }
    Ok(())
}
