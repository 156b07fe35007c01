//! The daemon's configuration file (`beacon.toml`).
//!
//! Unknown keys are errors, so a typo never silently falls back to a default.
//! Relative paths are taken relative to the directory of the config file.
//! `deploy/beacon.toml` documents every key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::base::identity::{Identity, MemberId, MemberScope};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Syntax { path: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// A value parsed once, when the file is read (identities, say).
fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// A list of member patterns, parsed once.
fn scope<'de, D: Deserializer<'de>>(d: D) -> Result<MemberScope, D::Error> {
    let items = Vec::<String>::deserialize(d)?;
    MemberScope::parse_list(&items).map_err(serde::de::Error::custom)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    /// The CAs this node trusts; at least one.
    pub trust: Vec<TrustEntry>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timing: Timing,
    /// Named groups of members, usable in a bulletin's audience.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Peer nodes this node pulls from.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub taxii: TaxiiConfig,
    #[serde(default)]
    pub transparency: TransparencyConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub federation: FederationConfig,
    /// The file it was read from (set by [`Config::load`]).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The text it was parsed from (what a later change is compared to).
    #[serde(skip)]
    pub source_text: Option<String>,
}

/// The TAXII 2.1 listener (`[taxii]`): HTTPS, a client certificate
/// required, off unless `listen` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaxiiConfig {
    pub listen: Option<SocketAddr>,
    /// The discovery title.
    pub title: String,
    /// Most objects in one page (a client's `limit` is capped to it).
    pub max_page: usize,
    /// The largest body a POST may have (TAXII's `max_content_length`).
    pub max_content_length: usize,
    /// Also accept API tokens (HTTP Basic password or Bearer) from clients
    /// without a certificate (`beacon admin token issue`).
    pub tokens: bool,
    /// Collections; each shows every bulletin the caller may read.
    pub collections: Vec<TaxiiCollection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaxiiCollection {
    /// The collection's alias (its id is derived from the node and it).
    pub alias: String,
    #[serde(default)]
    pub title: Option<String>,
    /// Marking definitions served: "oasis-tlp2" (TLP 2.0) or "opencti"
    /// (the TLP 1.0 ids OpenCTI keeps).
    #[serde(default = "default_profile")]
    pub markings: String,
}

fn default_profile() -> String {
    "oasis-tlp2".into()
}

impl Default for TaxiiConfig {
    fn default() -> Self {
        TaxiiConfig {
            listen: None,
            title: "Beacon".into(),
            max_page: 1000,
            max_content_length: 10 * 1024 * 1024,
            tokens: false,
            collections: vec![TaxiiCollection {
                alias: "bulletins".into(),
                title: None,
                markings: default_profile(),
            }],
        }
    }
}

/// How long bulletins are kept (`[retention]`). A pruned bulletin leaves a
/// small tombstone: its sequence, publisher, id and digest stay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Kept this long after `expires_at`, then pruned ("off": never).
    #[serde(deserialize_with = "maybe_duration")]
    pub after_expiry: Option<Duration>,
    /// Bulletins without `expires_at` are pruned this long after they were
    /// accepted ("off", the default: kept).
    #[serde(deserialize_with = "maybe_duration")]
    pub max_age: Option<Duration>,
    /// How often the pruner looks for what is due.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Most bulletins pruned in one atomic write.
    pub batch: usize,
    /// Per TLP label ("TLP:RED", …): settings that replace the two above.
    pub tlp: BTreeMap<String, TlpRetention>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlpRetention {
    #[serde(deserialize_with = "maybe_duration")]
    pub after_expiry: Option<Option<Duration>>,
    #[serde(deserialize_with = "maybe_duration")]
    pub max_age: Option<Option<Duration>>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            after_expiry: Some(Duration::from_secs(30 * 24 * 3600)),
            max_age: None,
            interval: Duration::from_secs(60),
            batch: 256,
            tlp: BTreeMap::new(),
        }
    }
}

/// A duration, or "off".
fn maybe_duration<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: From<Option<Duration>>,
{
    let s = String::deserialize(d)?;
    if s.trim() == "off" {
        return Ok(T::from(None));
    }
    humantime::parse_duration(&s)
        .map(|d| T::from(Some(d)))
        .map_err(serde::de::Error::custom)
}

/// `[policy]`: what this node requires of what is published here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// TLP labels a bulletin published here must be sealed under (sealed
    /// to its recipients' keys, so no node on its way reads it), e.g.
    /// `["TLP:RED"]`. Off by default.
    pub require_sealed: Vec<String>,
}

/// `[federation]`: what this node carries for others.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    pub carry_sealed: CarrySealed,
}

/// Which sealed bulletins a node stores and passes on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CarrySealed {
    /// Only those its own member may read (is a recipient of), as for any
    /// bulletin.
    #[default]
    Audience,
    /// Any sealed bulletin, to pass it on to other nodes: it cannot read
    /// it, and serves it to readers only where they are recipients.
    Any,
}

/// `[transparency]`: the node's signed checkpoints of its log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransparencyConfig {
    /// Where the log key, the witness key, the last signed checkpoint and
    /// the log announcements are kept. Default: beside the data directory
    /// (`<data_dir>.tlog`), so a store that is restored or rebuilt leaves
    /// them in place: they are how the node knows what it signed before.
    pub dir: Option<PathBuf>,
    /// A checkpoint is signed this long after the last one, if the log grew.
    pub checkpoint_interval_ms: u64,
    /// ... or once this many entries wait for one, whichever comes first.
    pub checkpoint_entries: u64,
    /// How often each peer's log is witnessed (fetched, checked, cosigned).
    pub witness_interval_ms: u64,
}

impl Default for TransparencyConfig {
    fn default() -> Self {
        TransparencyConfig {
            dir: None,
            checkpoint_interval_ms: 1000,
            checkpoint_entries: 10_000,
            witness_interval_ms: 10_000,
        }
    }
}

impl TransparencyConfig {
    /// The directory in force for a node whose data directory is `data_dir`.
    pub fn dir_for(&self, data_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| {
            let mut name = data_dir.file_name().unwrap_or_default().to_os_string();
            name.push(".tlog");
            data_dir.with_file_name(name)
        })
    }
}

/// The local operations port: Prometheus metrics, /healthz and gRPC health
/// (plain text; bind it to loopback or a pod network only).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// sled's page cache, in MiB (a target sled enforces lazily; see
    /// `deploy/beacon.toml`).
    pub cache_mb: u64,
    /// Most publishes made durable by one fsync.
    pub max_batch: usize,
    /// Free space (MiB) kept on the store's filesystem: publishes are refused
    /// below it and resume once space is freed (0: none).
    pub reserve_mb: u64,
    /// Where the log is kept: `sled`, embedded in `data_dir` (the default),
    /// or `postgres`, a PostgreSQL database (`[store.postgres]`).
    pub engine: EngineKind,
    /// The database of the `postgres` engine.
    pub postgres: Option<PostgresConfig>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_mb: 16,
            max_batch: 1024,
            reserve_mb: 256,
            engine: EngineKind::Sled,
            postgres: None,
        }
    }
}

/// The store's engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Sled,
    Postgres,
}

/// `[store.postgres]`: the database that holds the log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A libpq connection string or URL (`postgresql://beacon@db:5432/beacon`,
    /// several hosts with `target_session_attrs=read-write` to follow a
    /// failover). `sslmode` is taken from `ca`: TLS is required when it is set.
    pub url: String,
    /// A file holding the password (read at start), instead of one in `url`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The PostgreSQL schema the store's tables live in (one store per
    /// schema): letters, digits and `_`, starting with a letter.
    #[serde(default = "PostgresConfig::default_schema")]
    pub schema: String,
    /// CA certificate(s) (PEM) the database server's certificate must chain
    /// to; when set, the connection uses TLS and verifies the server's name.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// A client certificate chain and key (PEM) for the database, if it asks.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Connections for reads (the writer has one more of its own).
    #[serde(default = "PostgresConfig::default_connections")]
    pub connections: usize,
    /// How long any one request to the database may take before the node
    /// gives up on it (and refuses what waited on it), in milliseconds.
    #[serde(default = "PostgresConfig::default_timeout_ms")]
    pub timeout_ms: u64,
}

impl PostgresConfig {
    fn default_schema() -> String {
        "beacon".into()
    }
    fn default_connections() -> usize {
        4
    }
    fn default_timeout_ms() -> u64 {
        10_000
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Address of the mutual-TLS gRPC listener.
    pub listen: SocketAddr,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// This node's certificate chain (PEM, leaf first) and private key (PEM, PKCS#8).
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustEntry {
    /// A CA certificate (PEM).
    pub ca: PathBuf,
    /// Members this CA may vouch for: "*", "uk.ncsc" or "uk.*". Operators are
    /// accepted only from a CA that vouches for "*".
    #[serde(default = "MemberScope::any", deserialize_with = "scope")]
    pub members: MemberScope,
    /// The CA's CRL (PEM or DER), reloaded when it changes.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections at once on each port (gRPC, TAXII, operations);
    /// more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Largest envelope accepted by Publish, in bytes.
    pub max_envelope_bytes: usize,
    /// Largest gRPC message decoded, in bytes (envelope plus framing).
    pub max_message_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// Default and largest subscription window (unacknowledged deliveries).
    pub default_window: u32,
    pub max_window: u32,
    /// Publishes of one `PublishStream` worked on at once; the node reads no
    /// further on that stream until one is answered.
    pub publish_stream_window: usize,
    /// Largest page a List call returns, in bulletins.
    pub max_list_page: u32,
    /// Largest page a List call returns, in bytes: a page holds as many
    /// deliveries as fit (always at least one), so it stays within what
    /// gRPC clients accept by default (4 MiB in grpcio, grpc-go and tonic).
    pub max_page_bytes: usize,
    /// Subscriptions open at once on this node; more are RESOURCE_EXHAUSTED.
    pub max_subscriptions: usize,
}

impl Limits {
    /// The largest response message the node encodes: a full page, plus
    /// the one delivery a page always carries even when it alone is larger
    /// than `max_page_bytes` (never larger than a request: an envelope
    /// with its framing).
    pub fn max_response_bytes(&self) -> usize {
        self.max_page_bytes + self.max_message_bytes
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 2048,
            max_envelope_bytes: 256 * 1024,
            max_message_bytes: 512 * 1024,
            max_streams_per_connection: 256,
            default_window: 256,
            max_window: 4096,
            publish_stream_window: 64,
            max_list_page: 1000,
            max_page_bytes: 1024 * 1024,
            max_subscriptions: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// A TLS handshake must finish within this time.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// How often certificate and CRL files are checked for changes.
    #[serde(deserialize_with = "duration")]
    pub reload_interval: Duration,
    /// On SIGTERM/SIGINT, how long open calls may take to finish.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// Heartbeat interval on idle subscription streams.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// Longest wait between two attempts to reach a peer (backoff with jitter
    /// grows from 100 ms to this).
    #[serde(deserialize_with = "duration")]
    pub peer_retry_max: Duration,
    /// A peer link that hears nothing from its peer for this long (no
    /// delivery, no heartbeat, no HTTP/2 ping answer) is declared down and
    /// reconnects. The link asks the peer for heartbeats, and pings it, at a
    /// third of this.
    #[serde(deserialize_with = "duration")]
    pub peer_timeout: Duration,
    /// How often a peer link fetches its peer's recipient keys and
    /// revocations (and once when it connects).
    #[serde(deserialize_with = "duration")]
    pub key_sync_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            handshake_timeout: Duration::from_secs(10),
            reload_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(15),
            peer_retry_max: Duration::from_secs(30),
            peer_timeout: Duration::from_secs(6),
            key_sync_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// host:port of the peer's listener.
    pub address: String,
    /// The SPIFFE id the peer must present.
    #[serde(deserialize_with = "parsed")]
    pub identity: Identity,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as "info" or "beacon=debug".
    pub filter: Option<String>,
}

impl Config {
    /// Reads, parses and checks a config file; relative paths become relative
    /// to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::parse(&text, base).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        config.source = Some(path.to_path_buf());
        config.source_text = Some(text);
        Ok(config)
    }

    /// The sections in which `other` differs from this config (what a
    /// changed file would change, were the node restarted).
    pub fn changed_sections(&self, other: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut diff = |name: &'static str, a: String, b: String| {
            if a != b {
                out.push(name);
            }
        };
        diff(
            "[node]",
            format!("{:?}", self.node),
            format!("{:?}", other.node),
        );
        diff(
            "[[trust]]",
            format!("{:?}", self.trust),
            format!("{:?}", other.trust),
        );
        diff(
            "[limits]",
            format!("{:?}", self.limits),
            format!("{:?}", other.limits),
        );
        diff(
            "[timing]",
            format!("{:?}", self.timing),
            format!("{:?}", other.timing),
        );
        diff(
            "[groups]",
            format!("{:?}", self.groups),
            format!("{:?}", other.groups),
        );
        diff(
            "[[peers]]",
            format!("{:?}", self.peers),
            format!("{:?}", other.peers),
        );
        diff(
            "[log]",
            format!("{:?}", self.log),
            format!("{:?}", other.log),
        );
        diff(
            "[store]",
            format!("{:?}", self.store),
            format!("{:?}", other.store),
        );
        diff(
            "[metrics]",
            format!("{:?}", self.metrics),
            format!("{:?}", other.metrics),
        );
        diff(
            "[retention]",
            format!("{:?}", self.retention),
            format!("{:?}", other.retention),
        );
        diff(
            "[taxii]",
            format!("{:?}", self.taxii),
            format!("{:?}", other.taxii),
        );
        out
    }

    /// Parses config text; `base` anchors relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: "<text>".into(),
            message: syntax_message(text, &e),
        })?;
        config.anchor_paths(base);
        config.check()?;
        Ok(config)
    }

    fn anchor_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.node.data_dir);
        if let Some(d) = &mut self.transparency.dir {
            fix(d);
        }
        fix(&mut self.node.cert);
        fix(&mut self.node.key);
        if let Some(pg) = &mut self.store.postgres {
            for p in [&mut pg.password_file, &mut pg.ca, &mut pg.cert, &mut pg.key]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
        for t in &mut self.trust {
            fix(&mut t.ca);
            if let Some(crl) = &mut t.crl {
                fix(crl);
            }
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        match (self.store.engine, &self.store.postgres) {
            (EngineKind::Postgres, None) => {
                return Err(ConfigError::Invalid(
                    "store.engine = \"postgres\" needs a [store.postgres] section with its url".into(),
                ))
            }
            (EngineKind::Sled, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "[store.postgres] is set but store.engine is \"sled\": set store.engine = \"postgres\" to use it".into(),
                ))
            }
            (_, Some(pg)) => {
                let mut chars = pg.schema.chars();
                let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
                    && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && pg.schema.len() <= 40;
                if !ok {
                    return Err(ConfigError::Invalid(format!(
                        "store.postgres.schema {:?}: up to 40 lowercase letters, digits and _, starting with a letter",
                        pg.schema
                    )));
                }
                if pg.connections == 0 || pg.connections > 64 {
                    return Err(ConfigError::Invalid(
                        "store.postgres.connections must be between 1 and 64".into(),
                    ));
                }
                if pg.timeout_ms < 100 {
                    return Err(ConfigError::Invalid(
                        "store.postgres.timeout_ms must be at least 100".into(),
                    ));
                }
                if pg.cert.is_some() != pg.key.is_some() {
                    return Err(ConfigError::Invalid(
                        "store.postgres.cert and key go together".into(),
                    ));
                }
            }
            (EngineKind::Sled, None) => {}
        }
        for c in &self.taxii.collections {
            if !matches!(c.markings.as_str(), "oasis-tlp2" | "opencti") {
                return Err(ConfigError::Invalid(format!(
                    "taxii.collections {:?}: markings must be \"oasis-tlp2\" or \"opencti\"",
                    c.alias
                )));
            }
        }
        if self.transparency.checkpoint_interval_ms == 0
            || self.transparency.checkpoint_entries == 0
            || self.transparency.witness_interval_ms == 0
        {
            return Err(ConfigError::Invalid(
                "transparency.checkpoint_interval_ms, checkpoint_entries and witness_interval_ms must be at least 1"
                    .into(),
            ));
        }
        for label in &self.policy.require_sealed {
            if !matches!(
                label.to_ascii_uppercase().as_str(),
                "TLP:AMBER" | "TLP:AMBER+STRICT" | "TLP:RED"
            ) {
                return Err(ConfigError::Invalid(format!(
                    "policy.require_sealed {label:?}: sealing is for \"TLP:AMBER\", \"TLP:AMBER+STRICT\" and \"TLP:RED\""
                )));
            }
        }
        if self.taxii.max_page == 0 || self.taxii.max_page > 10_000 {
            return Err(ConfigError::Invalid(
                "taxii.max_page must be between 1 and 10000".into(),
            ));
        }
        if self.retention.batch == 0 || self.retention.batch > 100_000 {
            return Err(ConfigError::Invalid(
                "retention.batch must be between 1 and 100000".into(),
            ));
        }
        if self.retention.interval < Duration::from_millis(10) {
            return Err(ConfigError::Invalid(
                "retention.interval must be at least 10ms".into(),
            ));
        }
        if self.trust.is_empty() {
            return Err(ConfigError::Invalid(
                "at least one [[trust]] entry (a CA certificate) is required".into(),
            ));
        }
        let l = &self.limits;
        if l.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_connections must be > 0".into(),
            ));
        }
        if l.max_envelope_bytes < 1024 || l.max_envelope_bytes > 64 * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_envelope_bytes must be between 1 KiB and 64 MiB".into(),
            ));
        }
        if l.max_message_bytes < l.max_envelope_bytes {
            return Err(ConfigError::Invalid(
                "limits.max_message_bytes must be at least limits.max_envelope_bytes".into(),
            ));
        }
        if l.default_window == 0 || l.default_window > l.max_window {
            return Err(ConfigError::Invalid(
                "limits.default_window must be between 1 and limits.max_window".into(),
            ));
        }
        if l.publish_stream_window == 0 || l.publish_stream_window > 4096 {
            return Err(ConfigError::Invalid(
                "limits.publish_stream_window must be between 1 and 4096".into(),
            ));
        }
        if l.max_page_bytes < 64 * 1024 || l.max_page_bytes > 64 * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_page_bytes must be between 64 KiB and 64 MiB".into(),
            ));
        }
        if l.max_list_page == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_list_page must be > 0".into(),
            ));
        }
        for (group, members) in &self.groups {
            for m in members {
                m.parse::<MemberId>()
                    .map_err(|e| ConfigError::Invalid(format!("group {group}: {e}")))?;
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.peers {
            if !seen.insert(&p.identity) {
                return Err(ConfigError::Invalid(format!(
                    "peer {} is listed twice",
                    p.identity
                )));
            }
            if p.identity.kind() != crate::base::identity::RoleKind::Node {
                return Err(ConfigError::Invalid(format!(
                    "peer {}: identity {} is not a node identity",
                    p.address, p.identity
                )));
            }
        }
        if self.timing.peer_timeout < Duration::from_millis(750)
            || self.timing.peer_timeout > Duration::from_secs(600)
        {
            return Err(ConfigError::Invalid(
                "timing.peer_timeout must be between 750ms and 10m".into(),
            ));
        }
        if self.timing.peer_retry_max < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "timing.peer_retry_max must be at least 100ms".into(),
            ));
        }
        Ok(())
    }
}

/// A TOML error as "line L, column C: what", then the line with a caret
/// under the place, on lines of their own (not folded into one).
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().trim().to_owned();
    let Some(span) = e.span() else {
        return what;
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let source = text[line_start..].lines().next().unwrap_or_default();
    let gutter = " ".repeat(line.to_string().len());
    format!(
        "line {line}, column {column}: {what}\n  {line} | {source}\n  {gutter} | {}^",
        " ".repeat(column - 1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[node]
listen = "127.0.0.1:0"
data_dir = "data"
cert = "node.pem"
key = "node.key"

[[trust]]
ca = "ca.pem"
"#;

    /// Scopes and peer identities are parsed once, when the file is read,
    /// and a bad one is refused there with the reason.
    #[test]
    fn scopes_and_peer_identities_are_typed_when_read() {
        let bad_scope = MINIMAL.replace("ca = \"ca.pem\"", "ca = \"ca.pem\"\nmembers = [\"UK!\"]");
        let e = Config::parse(&bad_scope, Path::new("/etc/beacon")).unwrap_err();
        assert!(e.to_string().contains("invalid member pattern"), "{e}");
        let peer =
            |id: &str| format!("{MINIMAL}\n[[peers]]\naddress = \"p:7443\"\nidentity = \"{id}\"\n");
        let e = Config::parse(&peer("not-an-id"), Path::new("/etc")).unwrap_err();
        assert!(e.to_string().contains("spiffe://"), "{e}");
        let e = Config::parse(
            &peer("spiffe://td.example/client/uk.ncsc/a"),
            Path::new("/etc"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a node identity"), "{e}");
        let c = Config::parse(
            &peer("spiffe://td.example/node/uk.ncsc/n1"),
            Path::new("/etc"),
        )
        .unwrap();
        assert_eq!(
            c.peers[0].identity.to_string(),
            "spiffe://td.example/node/uk.ncsc/n1"
        );
    }

    #[test]
    fn minimal_config_gets_defaults_and_anchored_paths() {
        let c = Config::parse(MINIMAL, Path::new("/etc/beacon")).unwrap();
        assert_eq!(c.node.cert, PathBuf::from("/etc/beacon/node.pem"));
        assert_eq!(c.limits.max_envelope_bytes, 256 * 1024);
        assert_eq!(c.trust[0].members, MemberScope::any());
    }

    #[test]
    fn unknown_key_is_refused() {
        let text = format!("{MINIMAL}\n[limits]\nmax_conections = 3\n");
        let e = Config::parse(&text, Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("max_conections"), "{e}");
    }

    #[test]
    fn bad_member_pattern_is_refused() {
        let text = MINIMAL.replace("ca = \"ca.pem\"", "ca = \"ca.pem\"\nmembers = [\"UK\"]");
        assert!(Config::parse(&text, Path::new(".")).is_err());
    }
}
