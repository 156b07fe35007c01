//! `beacon bench publish`: durable, verified publishes against a real node over
//! mutual TLS, and the figures they give.
//!
//! Without `--node`, the benchmark makes a throwaway PKI and store in a temp
//! directory and starts `beacon daemon` as a child process, so one command
//! measures what a user would run. Every envelope is signed before the clock
//! starts (signing is the client's cost, reported separately); each publisher
//! has its own connection and its own client certificate, since a client may
//! publish only what it signed itself.

pub mod sync;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::base::identity::{Identity, MemberScope, RoleKind, TrustDomain};
use crate::domain::bulletin::{Bulletin, Envelope, Kind, Severity, Signer, Tlp};
use crate::net::client::{BeaconClient, ClientError, ClientSettings, Dialer};
use crate::tools::pki::{self, Algorithm, Ca, InitRequest, IssueRequest};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("benchmark setup: {0}")]
    Setup(String),
    #[error("benchmark I/O: {0}")]
    Io(String),
}

/// A node to measure: started by the benchmark, or given.
pub struct Target {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    /// The node's SPIFFE id.
    pub identity: String,
    ca_dir: PathBuf,
    child: Option<Child>,
    td: TrustDomain,
}

impl Drop for Target {
    fn drop(&mut self) {
        // SIGTERM first, so the node drains and reports its store figures.
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> Result<SocketAddr, BenchError> {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::Setup(e.to_string()))?;
    l.local_addr().map_err(|e| BenchError::Setup(e.to_string()))
}

impl Target {
    /// Makes a PKI (default key algorithm) and config in a temp dir and
    /// starts `beacon daemon`.
    pub fn start(exe: &Path) -> Result<Target, BenchError> {
        Target::start_with(exe, Algorithm::default())
    }

    /// As [`Target::start`], with certificates (and so bulletin signatures)
    /// of `algorithm`.
    pub fn start_with(exe: &Path, algorithm: Algorithm) -> Result<Target, BenchError> {
        let mut t = Target::prepare_node_with(None, "drc", "bench", &[], algorithm)?;
        t.launch(exe)?;
        Ok(t)
    }

    /// Makes the PKI and config only; [`Target::launch`] starts the daemon.
    pub fn prepare() -> Result<Target, BenchError> {
        Target::prepare_node(None, "drc", "bench", &[])
    }

    /// A node of `member` named `name`, pulling from `peers` (address,
    /// identity). With `shared`, it uses that target's CA (one alliance);
    /// otherwise it makes its own.
    pub fn prepare_node(
        shared: Option<&Target>,
        member: &str,
        name: &str,
        peers: &[(SocketAddr, String)],
    ) -> Result<Target, BenchError> {
        Target::prepare_node_with(shared, member, name, peers, Algorithm::default())
    }

    /// As [`Target::prepare_node`]; a new CA uses `algorithm`.
    pub fn prepare_node_with(
        shared: Option<&Target>,
        member: &str,
        name: &str,
        peers: &[(SocketAddr, String)],
        algorithm: Algorithm,
    ) -> Result<Target, BenchError> {
        let dir = std::env::temp_dir().join(format!(
            "beacon-bench-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| BenchError::Setup(e.to_string()))?;
        let (td, ca_dir) = match shared {
            Some(t) => (t.td.clone(), t.ca_dir.clone()),
            None => {
                let td: TrustDomain = "bench.example"
                    .parse()
                    .map_err(|e| BenchError::Setup(format!("{e}")))?;
                let ca_dir = dir.join("ca");
                Ca::init(
                    &ca_dir,
                    &InitRequest {
                        trust_domain: td.clone(),
                        name: "bench CA".into(),
                        members: MemberScope::any(),
                        algorithm,
                        validity: Duration::from_secs(24 * 3600),
                        force: false,
                    },
                )?;
                (td, ca_dir)
            }
        };
        let ca = Ca::open(&ca_dir)?;
        let identity = pki::identity_for(&td, RoleKind::Node, Some(member), name)?;
        let mut req = IssueRequest::new(identity.clone());
        req.ip_addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let node = ca.issue(&req)?;
        pki::write_file(&dir.join("node.pem"), node.cert_pem.as_bytes(), false, true)?;
        pki::write_file(&dir.join("node.key"), node.key_pem.as_bytes(), true, true)?;
        let addr = free_port()?;
        let mut config = format!(
            "[node]\nlisten = \"{addr}\"\ndata_dir = \"store\"\ncert = \"node.pem\"\nkey = \"node.key\"\n\n[[trust]]\nca = \"{}\"\ncrl = \"{}\"\n\n[timing]\npeer_retry_max = \"1s\"\n\n[log]\nfilter = \"warn,beacon::store=info\"\n",
            Ca::cert_path(&ca_dir).display(),
            Ca::crl_path(&ca_dir).display(),
        );
        for (peer, id) in peers {
            config.push_str(&format!(
                "\n[[peers]]\naddress = \"{peer}\"\nidentity = \"{id}\"\n"
            ));
        }
        std::fs::write(dir.join("beacon.toml"), config)
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        Ok(Target {
            addr,
            identity: identity.to_string(),
            ca_dir,
            dir,
            child: None,
            td,
        })
    }

    /// `SIGKILL`s the daemon, starts it again on the same store, and returns
    /// how long until it served a `List` (from the kill's return).
    pub async fn kill_and_restart(&mut self, exe: &Path) -> Result<Duration, BenchError> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let t0 = Instant::now();
        self.launch(exe)?;
        self.wait_serving().await?;
        Ok(t0.elapsed())
    }

    /// Waits until the node serves reads (its store open and recovered), not
    /// merely until its port accepts connections.
    pub async fn wait_serving(&self) -> Result<(), BenchError> {
        let settings = self.client(9_999_998)?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok(mut c) = BeaconClient::connect(&settings).await {
                let listed = c
                    .bulletins
                    .list(crate::base::proto::v1::ListRequest {
                        limit: 1,
                        ..Default::default()
                    })
                    .await;
                if listed.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(BenchError::Setup("the node did not start serving".into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts `beacon daemon` on the prepared directory and waits until it listens.
    pub fn launch(&mut self, exe: &Path) -> Result<(), BenchError> {
        // `BEACON_BENCH_WRAP` (e.g. "perf record -g -o FILE --"): a profiler
        // the daemon runs under; its figures are then the profiler's too. (A
        // wrapper that does not pass SIGTERM on, as heaptrack's script, can
        // leave the benchmark waiting at the end: a debugging aid only.)
        let wrap = std::env::var("BEACON_BENCH_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut command = match words.next() {
            Some(first) => {
                let mut c = Command::new(first);
                c.args(words).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let child = command
            .args(["daemon", "--config", "beacon.toml"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BenchError::Setup(format!("cannot start the daemon: {e}")))?;
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_err()
        {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(BenchError::Setup(
                    "the daemon did not start listening".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The daemon's resident memory, in bytes (Linux).
    pub fn rss(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// CPU time the daemon has used so far, user and system (Linux).
    pub fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces): state is
        // the 3rd field, utime and stime the 14th and 15th.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let ticks = rustix::param::clock_ticks_per_second();
        Some((utime + stime) as f64 / ticks as f64)
    }

    /// Fills the (not yet running) node's store with `n` signed bulletins of
    /// about `size` bytes, through the store's own group-commit path.
    pub async fn bulk_load(&self, n: usize, size: usize) -> Result<Duration, BenchError> {
        self.bulk_load_expiring(n, size, None).await
    }

    /// Appends to this node's `[beacon.toml]` (before [`Target::launch`]).
    pub fn add_config(&self, text: &str) -> Result<(), BenchError> {
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("beacon.toml"))
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| BenchError::Setup(e.to_string()))
    }

    /// Sets `[store] cache_mb` for the node's next launch (replacing a value
    /// this set before).
    pub fn set_cache_mb(&self, mb: u64) -> Result<(), BenchError> {
        let path = self.dir.join("beacon.toml");
        let io = |e: std::io::Error| BenchError::Setup(e.to_string());
        let mut text = std::fs::read_to_string(&path).map_err(io)?;
        const MARK: &str = "\n# set_cache_mb\n";
        if let Some(i) = text.find(MARK) {
            text.truncate(i);
        }
        text.push_str(&format!("{MARK}[store]\ncache_mb = {mb}\n"));
        std::fs::write(&path, text).map_err(io)
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 15 s); the store stays
    /// for the next [`Target::launch`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// As [`Target::bulk_load`], every bulletin expiring at `expires`.
    pub async fn bulk_load_expiring(
        &self,
        n: usize,
        size: usize,
        expires: Option<std::time::SystemTime>,
    ) -> Result<Duration, BenchError> {
        let settings = self.client(9_999_999)?;
        let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
            return Err(BenchError::Setup("no client files".into()));
        };
        let signer = Signer::load(cert, key).map_err(ClientError::from)?;
        // The store the node's config names (its engine included).
        let config = crate::base::config::Config::load(&self.dir.join("beacon.toml"))
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let store = Arc::new(
            crate::store::Store::open(
                &config.node.data_dir,
                crate::store::StoreOptions::new(&config.store, crate::interop::stix::SPANS),
            )
            .map_err(|e| BenchError::Setup(e.to_string()))?,
        );
        let origin = format!("spiffe://{}/node/drc/bench", self.td);
        let member = "m9999999.bench";
        let t0 = Instant::now();
        let mut done = 0;
        while done < n {
            let chunk = (n - done).min(8192);
            let mut appends = Vec::with_capacity(chunk);
            for _ in 0..chunk {
                let mut b = sized_bulletin(member, size);
                b.expires_at = expires;
                let env = signer.sign(b.to_bytes()).map_err(ClientError::from)?;
                let bytes = crate::domain::bulletin::codec::encode_envelope(&env);
                let digest = crate::domain::bulletin::sha256(&bytes);
                let payload_digest = crate::domain::bulletin::sha256(&env.payload);
                // Bulk load skips verification (it measures the store), so
                // it states the summary itself rather than claim a
                // verification that did not happen.
                let meta = crate::domain::bulletin::Meta {
                    id: b.id.clone(),
                    publisher: b.publisher.clone(),
                    digest,
                    origin_node: origin.clone(),
                    origin_seq: 0,
                    kind: crate::domain::bulletin::codec::kind_to_i32(Kind::Disinformation) as u8,
                    severity: crate::domain::bulletin::codec::severity_to_i32(Severity::Medium)
                        as u8,
                    tlp: crate::domain::bulletin::codec::tlp_to_i32(Tlp::Green) as u8,
                    created_at: b.created_at,
                    expires_at: b.expires_at,
                    audience_members: b.audience.members.clone(),
                    audience_groups: b.audience.groups.clone(),
                    topics: b.topics.clone(),
                };
                let store = store.clone();
                appends.push(tokio::spawn(async move {
                    store
                        .append(crate::store::NewRecord {
                            meta,
                            envelope: bytes,
                            payload_digest,
                            related: None,
                            span: crate::interop::stix::span(&b),
                        })
                        .await
                }));
            }
            for a in appends {
                a.await
                    .map_err(|e| BenchError::Setup(e.to_string()))?
                    .map_err(|e| BenchError::Setup(e.to_string()))?;
            }
            done += chunk;
        }
        let took = t0.elapsed();
        drop(Arc::try_unwrap(store).map(|mut s| s.close()));
        Ok(took)
    }

    /// An operator's connection to this node (for `Admin.Status`).
    pub async fn admin(&self) -> Result<crate::net::client::AdminClient, BenchError> {
        let ca = Ca::open(&self.ca_dir)?;
        let id = pki::identity_for(&self.td, RoleKind::Operator, None, "bench-ops")?;
        let issued = ca.issue(&IssueRequest::new(id))?;
        let n = rand::random::<u32>();
        let cert = self.dir.join(format!("operator-{n}.pem"));
        let key = self.dir.join(format!("operator-{n}.key"));
        pki::write_file(&cert, issued.cert_pem.as_bytes(), false, true)?;
        pki::write_file(&key, issued.key_pem.as_bytes(), true, true)?;
        let settings = ClientSettings {
            node: Some(self.addr.to_string()),
            cert: Some(cert),
            key: Some(key),
            ca: vec![Ca::cert_path(&self.ca_dir)],
            trust: vec![],
            crl: vec![],
            node_identity: None,
        };
        // An operator accepts any node naming the host dialled.
        let channel = Dialer::load(&settings)?
            .dial(&self.addr.to_string())
            .await?;
        Ok(crate::net::client::AdminClient::new(channel))
    }

    /// A fresh client identity of its own member, as files and a settings block.
    pub fn client(&self, n: usize) -> Result<ClientSettings, BenchError> {
        let ca = Ca::open(&self.ca_dir)?;
        let id = pki::identity_for(
            &self.td,
            RoleKind::Client,
            Some(&format!("m{n}.bench")),
            "publisher",
        )?;
        let issued = ca.issue(&IssueRequest::new(id))?;
        let cert = self.dir.join(format!("client-{n}.pem"));
        let key = self.dir.join(format!("client-{n}.key"));
        pki::write_file(&cert, issued.cert_pem.as_bytes(), false, true)?;
        pki::write_file(&key, issued.key_pem.as_bytes(), true, true)?;
        Ok(ClientSettings {
            node: Some(self.addr.to_string()),
            cert: Some(cert),
            key: Some(key),
            ca: vec![Ca::cert_path(&self.ca_dir)],
            trust: vec![],
            crl: vec![],
            // Each publisher is of its own member, so it pins this node.
            node_identity: Some(self.node_identity()?),
        })
    }

    /// The node's identity, parsed.
    fn node_identity(&self) -> Result<Identity, BenchError> {
        self.identity
            .parse()
            .map_err(|e| BenchError::Setup(format!("node identity: {e}")))
    }
}

/// A bulletin whose serialized payload is about `size` bytes.
pub fn sized_bulletin(publisher: &str, size: usize) -> Bulletin {
    let mut b = Bulletin::draft(
        publisher,
        Kind::Disinformation,
        Severity::Medium,
        Tlp::Green,
        "Coordinated inauthentic accounts amplify a forged ministry memo",
        "A network of newly created accounts shares a forged memo ahead of the vote.",
    );
    b.topics = vec!["elections".into(), "forgery".into()];
    let base = b.to_bytes().len();
    b.body = "x".repeat(size.saturating_sub(base + 4));
    b
}

/// Latency figures in microseconds.
#[derive(Debug, Clone)]
pub struct Figures {
    pub label: String,
    pub count: usize,
    pub errors: usize,
    pub seconds: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Figures {
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.seconds.max(1e-9)
    }

    pub fn new(label: String, mut lat: Vec<u64>, errors: usize, seconds: f64) -> Figures {
        lat.sort_unstable();
        let pct = |p: f64| -> u64 {
            if lat.is_empty() {
                return 0;
            }
            let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
            lat[i.min(lat.len() - 1)]
        };
        Figures {
            label,
            count: lat.len(),
            errors,
            seconds,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            max_us: lat.last().copied().unwrap_or(0),
        }
    }
}

struct Publisher {
    client: BeaconClient,
    envelopes: Vec<Envelope>,
}

async fn publishers(
    target: &Target,
    n: usize,
    per: usize,
    size: usize,
    first: usize,
) -> Result<(Vec<Publisher>, f64), BenchError> {
    let mut out = Vec::with_capacity(n);
    let mut signed = 0usize;
    let mut signing = Duration::ZERO;
    for i in 0..n {
        let (channel, signer, member) = publisher_of(target, first + i).await?;
        let t0 = Instant::now();
        let envelopes = (0..per)
            .map(|_| signer.sign(sized_bulletin(&member, size).to_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ClientError::from)?;
        signing += t0.elapsed();
        signed += per;
        out.push(Publisher {
            client: BeaconClient::new(channel, signer),
            envelopes,
        });
    }
    Ok((out, signed as f64 / signing.as_secs_f64().max(1e-9)))
}

/// Publisher `i` of `target`: its connection, its signer, its member.
async fn publisher_of(
    target: &Target,
    i: usize,
) -> Result<(tonic::transport::Channel, Arc<Signer>, String), BenchError> {
    let settings = target.client(i)?;
    let dialer = Dialer::load(&settings)?;
    let channel = dialer.dial(&target.addr.to_string()).await?;
    let signer = Arc::new(
        Signer::new(dialer.own.chain.clone(), dialer.own.key.secret_der())
            .map_err(ClientError::from)?,
    );
    Ok((channel, signer, format!("m{i}.bench")))
}

/// Publishers of TLP:RED bulletins of about `size` bytes to their own
/// member, each either signed (`sealed` false) or sealed to `recipients`
/// P-256 keys of its member, announced first to the node (as a member's
/// client announces its keys); the rate envelopes were made at.
async fn red_publishers(
    target: &Target,
    n: usize,
    per: usize,
    size: usize,
    first: usize,
    sealed: bool,
    recipients: usize,
) -> Result<(Vec<Publisher>, f64), BenchError> {
    use crate::domain::hpke::Suite;
    use crate::domain::sealed::RecipientKey;
    let mut out = Vec::with_capacity(n);
    let mut made = 0usize;
    let mut making = Duration::ZERO;
    for i in 0..n {
        let (channel, signer, member) = publisher_of(target, first + i).await?;
        let mut keys = Vec::new();
        if sealed {
            let mut bulletins = crate::net::client::BulletinsClient::new(channel.clone());
            for _ in 0..recipients.max(1) {
                let suite = Suite::P256Sha256Aes128Gcm;
                let (public, _) = crate::domain::hpke::generate(suite)
                    .map_err(|e| BenchError::Setup(e.to_string()))?;
                let record = crate::domain::keys::announce(
                    &signer,
                    &member,
                    suite,
                    &public,
                    std::time::SystemTime::now() - Duration::from_secs(60),
                    crate::domain::keys::DEFAULT_VALIDITY,
                    None,
                )
                .map_err(|e| BenchError::Setup(e.to_string()))?;
                bulletins
                    .announce_recipient_key(crate::base::proto::v1::RecipientKeyRequest {
                        record: Some(crate::domain::bulletin::codec::envelope_to_proto(&record)),
                    })
                    .await
                    .map_err(|e| BenchError::Setup(e.to_string()))?;
                keys.push(RecipientKey {
                    member: member.clone(),
                    suite,
                    public,
                });
            }
        }
        let t0 = Instant::now();
        let mut envelopes = Vec::with_capacity(per);
        for _ in 0..per {
            let mut b = sized_bulletin(&member, size);
            b.tlp = crate::domain::bulletin::codec::tlp_to_i32(Tlp::Red);
            b.audience.members = vec![member.clone()];
            let env = signer.sign(b.to_bytes()).map_err(ClientError::from)?;
            envelopes.push(match sealed {
                true => crate::domain::sealed::seal(&signer, &env, &keys, false)
                    .map_err(|e| BenchError::Setup(e.to_string()))?,
                false => env,
            });
        }
        making += t0.elapsed();
        made += per;
        out.push(Publisher {
            client: BeaconClient::new(channel, signer),
            envelopes,
        });
    }
    Ok((out, made as f64 / making.as_secs_f64().max(1e-9)))
}

/// Closed loop as [`closed_loop`] (unary), of TLP:RED bulletins signed or
/// sealed to `recipients` keys ([`red_publishers`]).
pub async fn red_closed_loop(
    target: &Target,
    n: usize,
    total: usize,
    size: usize,
    first: usize,
    sealed: bool,
    recipients: usize,
) -> Result<Figures, BenchError> {
    let per = total.div_ceil(n).max(1);
    let (pubs, _) = red_publishers(target, n, per, size, first, sealed, recipients).await?;
    let label = format!(
        "{n} publishers, {}",
        if sealed { "sealed" } else { "signed" }
    );
    drive(pubs, Api::Unary, label).await
}

/// Client-side figures of sealing, on one core, in this process: seals per
/// second of a `size`-byte TLP:RED bulletin (signed, sealed, signed) to
/// `recipients` P-256 keys; opens per second (outer and inner signature
/// checks included); and the sealed envelope's size against the signed one.
pub fn seal_figures(
    signer: &Signer,
    bundle: &dyn crate::trust::ChainCheck,
    member: &str,
    recipients: usize,
    size: usize,
    count: usize,
) -> Result<(f64, f64, usize, usize), BenchError> {
    use crate::domain::hpke::Suite;
    use crate::domain::sealed::{self, OpeningKey, RecipientKey};
    let setup = |e: &dyn std::fmt::Display| BenchError::Setup(e.to_string());
    let suite = Suite::P256Sha256Aes128Gcm;
    let mut keys = Vec::new();
    let mut opening = None;
    for _ in 0..recipients.max(1) {
        let (public, private) = crate::domain::hpke::generate(suite).map_err(|e| setup(&e))?;
        if opening.is_none() {
            opening = Some(OpeningKey::new(member, suite, private).map_err(|e| setup(&e))?);
        }
        keys.push(RecipientKey {
            member: member.to_owned(),
            suite,
            public,
        });
    }
    let opening = opening.ok_or_else(|| setup(&"no key"))?;
    let mut b = sized_bulletin(member, size);
    b.tlp = crate::domain::bulletin::codec::tlp_to_i32(Tlp::Red);
    b.audience.members = vec![member.to_owned()];
    let t0 = Instant::now();
    let mut last = None;
    for _ in 0..count {
        let env = signer.sign(b.to_bytes()).map_err(|e| setup(&e))?;
        last = Some((
            crate::domain::bulletin::codec::encode_envelope(&env).len(),
            sealed::seal(signer, &env, &keys, false).map_err(|e| setup(&e))?,
        ));
    }
    let seal_rate = count as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    let (plain_len, outer) = last.ok_or_else(|| setup(&"nothing sealed"))?;
    let now = std::time::SystemTime::now();
    let t0 = Instant::now();
    for _ in 0..count {
        let v = sealed::verify(&outer, bundle, now).map_err(|e| setup(&e))?;
        sealed::open(&v, std::slice::from_ref(&opening), now).map_err(|e| setup(&e))?;
    }
    let open_rate = count as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    let sealed_len = crate::domain::bulletin::codec::encode_envelope(&outer).len();
    Ok((seal_rate, open_rate, plain_len, sealed_len))
}

/// Joins publisher tasks: all their latencies, and their error count.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<(Vec<u64>, usize)>>,
) -> Result<(Vec<u64>, usize), BenchError> {
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.map_err(|e| BenchError::Setup(e.to_string()))?;
        lat.extend(l);
        errors += e;
    }
    Ok((lat, errors))
}

/// How a publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// One `Publish` call per bulletin.
    Unary,
    /// One `PublishStream` per publisher, one publish in flight on it.
    Stream,
}

/// Closed loop: `n` publishers each send their envelopes one after another,
/// each waiting for the previous ack.
pub async fn closed_loop(
    target: &Target,
    n: usize,
    total: usize,
    size: usize,
    first: usize,
) -> Result<(Figures, f64), BenchError> {
    closed_loop_with(target, Api::Unary, n, total, size, first).await
}

/// [`closed_loop`] through the given API.
pub async fn closed_loop_with(
    target: &Target,
    api: Api,
    n: usize,
    total: usize,
    size: usize,
    first: usize,
) -> Result<(Figures, f64), BenchError> {
    let per = total.div_ceil(n).max(1);
    let (pubs, sign_rate) = publishers(target, n, per, size, first).await?;
    let label = match api {
        Api::Unary => format!("{n} publishers"),
        Api::Stream => format!("{n} publishers, PublishStream"),
    };
    Ok((drive(pubs, api, label).await?, sign_rate))
}

/// Runs `pubs` in a closed loop through `api`, each publisher in a task of
/// its own sending its envelopes one after another (at most 60 s).
async fn drive(pubs: Vec<Publisher>, api: Api, label: String) -> Result<Figures, BenchError> {
    let mut streams = Vec::with_capacity(pubs.len());
    for p in &pubs {
        streams.push(match api {
            Api::Unary => None,
            Api::Stream => Some(p.client.clone().publish_stream().await?),
        });
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut p, mut stream) in pubs.into_iter().zip(streams) {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(p.envelopes.len());
            let mut errors = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            for env in &p.envelopes {
                if Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                let sent = match stream.as_mut() {
                    Some(s) => s.publish(env).await,
                    None => p.client.publish_envelope(env).await,
                };
                match sent {
                    Ok(_) => lat.push(t.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            if let Some(s) = stream {
                let _ = s.finish().await;
            }
            (lat, errors)
        }));
    }
    let (lat, errors) = gather(tasks).await?;
    Ok(Figures::new(
        label,
        lat,
        errors,
        start.elapsed().as_secs_f64(),
    ))
}

/// The floor under one publisher's latency: one member's `Get` of a
/// bulletin it published, `total` times in a closed loop on one connection.
/// The same TLS, HTTP/2, authentication and policy as a publish and a reply
/// of the same size, without the signature check or the write.
pub async fn get_loop(
    target: &Target,
    total: usize,
    size: usize,
    first: usize,
) -> Result<Figures, BenchError> {
    let (pubs, _) = publishers(target, 1, 1, size, first).await?;
    let Some(mut p) = pubs.into_iter().next() else {
        return Err(BenchError::Setup("no publisher".into()));
    };
    let Some(env) = p.envelopes.first() else {
        return Err(BenchError::Setup("nothing to publish".into()));
    };
    let id = p.client.publish_envelope(env).await?.id;
    let mut lat = Vec::with_capacity(total);
    let mut errors = 0;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    for _ in 0..total {
        if Instant::now() > deadline {
            break;
        }
        let t = Instant::now();
        let got = p
            .client
            .bulletins
            .get(crate::base::proto::v1::GetRequest {
                id: id.clone(),
                publisher: String::new(),
            })
            .await;
        match got {
            Ok(_) => lat.push(t.elapsed().as_micros() as u64),
            Err(_) => errors += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Figures::new(
        "1 member, Get of its bulletin (no signature check, no write)".into(),
        lat,
        errors,
        secs,
    ))
}

/// Open loop: `rate` publishes per second offered across `n` publishers for
/// `total` publishes; latency counts from the scheduled send time.
pub async fn open_loop(
    target: &Target,
    n: usize,
    rate: u64,
    total: usize,
    size: usize,
    first: usize,
) -> Result<Figures, BenchError> {
    let per = total.div_ceil(n).max(1);
    let (pubs, _) = publishers(target, n, per, size, first).await?;
    let interval = Duration::from_secs_f64(n as f64 / rate as f64);
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for (i, mut p) in pubs.into_iter().enumerate() {
        let offset = Duration::from_secs_f64(i as f64 / rate as f64);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(p.envelopes.len());
            let mut errors = 0;
            for (k, env) in p.envelopes.iter().enumerate() {
                let due = start + offset + interval * k as u32;
                tokio::time::sleep_until(due.into()).await;
                match p.client.publish_envelope(env).await {
                    Ok(_) => lat.push(due.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let (lat, errors) = gather(tasks).await?;
    let secs = start.elapsed().as_secs_f64();
    Ok(Figures::new(
        format!("{rate}/s offered, {n} publishers"),
        lat,
        errors,
        secs,
    ))
}

pub fn print_table(rows: &[Figures]) {
    println!(
        "| workload | publishes | errors | throughput (/s) | p50 (ms) | p99 (ms) | max (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            r.label,
            r.count,
            r.errors,
            r.rate(),
            r.p50_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0,
            r.max_us as f64 / 1000.0
        );
    }
}

/// A subscription request for the benchmarks.
fn open_at(
    name: &str,
    at: crate::base::proto::v1::start_position::At,
    filter: Option<crate::base::proto::v1::Filter>,
    window: u32,
) -> crate::base::proto::v1::SubscribeOpen {
    crate::base::proto::v1::SubscribeOpen {
        checkpoints: false,
        name: name.to_owned(),
        start: Some(crate::base::proto::v1::StartPosition { at: Some(at) }),
        filter,
        window,
        heartbeat_ms: 0,
        current_only: false,
        include_expired: false,
        log_id: String::new(),
        carry_sealed: false,
    }
}

fn earliest() -> crate::base::proto::v1::start_position::At {
    crate::base::proto::v1::start_position::At::Earliest(
        crate::base::proto::v1::start_position::Earliest {},
    )
}

fn latest() -> crate::base::proto::v1::start_position::At {
    crate::base::proto::v1::start_position::At::Latest(
        crate::base::proto::v1::start_position::Latest {},
    )
}

/// Replays the whole log to a fresh subscriber; returns (deliveries, seconds).
pub async fn replay(target: &Target, expect: u64, first: usize) -> Result<(u64, f64), BenchError> {
    replay_from(target, 1, expect, first).await
}

/// Replays the log from sequence `from` to a fresh subscriber; returns
/// (deliveries, seconds).
pub async fn replay_from(
    target: &Target,
    from: u64,
    expect: u64,
    first: usize,
) -> Result<(u64, f64), BenchError> {
    use crate::base::proto::v1 as pb;
    let settings = target.client(first)?;
    let mut client = BeaconClient::connect(&settings).await?;
    let t0 = Instant::now();
    let at = pb::start_position::At::Sequence(from);
    let mut sub = client.subscribe(open_at("", at, None, 4096)).await?;
    let mut n = 0u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while let Some(ev) = sub.next().await? {
        match ev {
            pb::subscribe_response::Msg::Delivery(d) => {
                n += 1;
                if n.is_multiple_of(1024) {
                    sub.ack(d.sequence).await?;
                }
            }
            pb::subscribe_response::Msg::CaughtUp(_) => break,
            _ => {}
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if n != expect {
        return Err(BenchError::Setup(format!(
            "replay delivered {n}, expected {expect}"
        )));
    }
    Ok((n, secs))
}

/// One publisher, `subscribers` live subscribers: deliveries per second.
pub async fn fan_out(
    target: &Target,
    subscribers: usize,
    publishes: usize,
    size: usize,
    first: usize,
) -> Result<(u64, f64), BenchError> {
    use crate::base::proto::v1 as pb;
    let mut readers = Vec::new();
    // Ten subscribers per connection, like a handful of pipelines per agency.
    let mut client = None;
    for i in 0..subscribers {
        if i % 10 == 0 {
            client = Some(BeaconClient::connect(&target.client(first + i / 10)?).await?);
        }
        let Some(c) = client.as_mut() else { continue };
        let mut sub = c.subscribe(open_at("", latest(), None, 1024)).await?;
        // Wait until it is live.
        while let Some(ev) = sub.next().await? {
            if let pb::subscribe_response::Msg::CaughtUp(_) = ev {
                break;
            }
        }
        readers.push(sub);
    }
    let mut tasks = Vec::new();
    for mut sub in readers {
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(300);
            while (n as usize) < publishes && Instant::now() < deadline {
                match sub.next().await {
                    Ok(Some(pb::subscribe_response::Msg::Delivery(d))) => {
                        n += 1;
                        if n.is_multiple_of(256) {
                            let _ = sub.ack(d.sequence).await;
                        }
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            (n, Instant::now())
        }));
    }
    // One publisher (one client, one connection, one identity) keeping
    // IN_FLIGHT publishes outstanding, as a pipeline would.
    const IN_FLIGHT: usize = 16;
    let (mut pubs, _) = publishers(target, 1, publishes, size, first + subscribers).await?;
    let p = pubs.remove(0);
    let t0 = Instant::now();
    let envelopes = Arc::new(p.envelopes);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..IN_FLIGHT {
        let mut client = p.client.clone();
        let envelopes = envelopes.clone();
        let next = next.clone();
        senders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(env) = envelopes.get(i) else {
                    return Ok::<(), ClientError>(());
                };
                client.publish_envelope(env).await?;
            }
        }));
    }
    for s in senders {
        s.await.map_err(|e| BenchError::Setup(e.to_string()))??;
    }
    let mut total = 0;
    let mut last = t0;
    for t in tasks {
        let (n, at) = t.await.map_err(|e| BenchError::Setup(e.to_string()))?;
        total += n;
        last = last.max(at);
    }
    Ok((total, (last - t0).as_secs_f64()))
}

/// Opens `n` durable live subscriptions (filtered on a topic nothing is
/// published under, so they stay open and are woken by every commit but
/// deliver nothing) plus one that never reads or acks (window 256), then
/// publishes `publishes` bulletins; returns the daemon's RSS idle, with the
/// subscriptions open, and after the publishes.
pub async fn memory(
    target: &Target,
    n: usize,
    publishes: usize,
    size: usize,
    first: usize,
) -> Result<(u64, u64, u64), BenchError> {
    use crate::base::proto::v1 as pb;
    let base = target.rss().unwrap_or(0);
    let mut subs = Vec::new();
    let mut client = None;
    for i in 0..n {
        if i % 125 == 0 {
            client = Some(BeaconClient::connect(&target.client(first + i / 125)?).await?);
        }
        let Some(c) = client.as_mut() else { continue };
        subs.push(
            c.subscribe(open_at(
                &format!("s{i}"),
                latest(),
                Some(pb::Filter {
                    topics: vec!["quiet".into()],
                    ..Default::default()
                }),
                0,
            ))
            .await?,
        );
    }
    let mut stalled_client = BeaconClient::connect(&target.client(first + 1000)?).await?;
    let stalled = stalled_client
        .subscribe(open_at("stalled", earliest(), None, 256))
        .await?;
    // The open subscriptions drain their streams (and ack); the stalled one never reads.
    let mut tasks = Vec::new();
    for mut sub in subs {
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(ev)) = sub.next().await {
                if let pb::subscribe_response::Msg::Delivery(d) = ev {
                    let _ = sub.ack(d.sequence).await;
                }
            }
        }));
    }
    let open_rss = target.rss().unwrap_or(0);
    // Eight publishers share the `publishes`.
    let (mut pubs, _) = publishers(target, 8, publishes.div_ceil(8), size, first + 1001).await?;
    let mut senders = Vec::new();
    for mut p in pubs.drain(..) {
        senders.push(tokio::spawn(async move {
            for env in &p.envelopes {
                let _ = p.client.publish_envelope(env).await;
            }
        }));
    }
    for s in senders {
        let _ = s.await;
    }
    let after = target.rss().unwrap_or(0);
    drop(stalled);
    for t in tasks {
        t.abort();
    }
    Ok((base, open_rss, after))
}

/// The committed head `admin`'s node reports.
pub async fn head(admin: &mut crate::net::client::AdminClient) -> Result<u64, BenchError> {
    Ok(admin
        .status(crate::base::proto::v1::StatusRequest::default())
        .await
        .map_err(ClientError::from)?
        .into_inner()
        .head)
}

/// Polls until the node's head reaches `n`; returns when it did.
pub async fn wait_head(
    admin: &mut crate::net::client::AdminClient,
    n: u64,
    limit: Duration,
) -> Result<Instant, BenchError> {
    let deadline = Instant::now() + limit;
    loop {
        if head(admin).await? >= n {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "the node's head did not reach {n} within {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Three members' nodes in a chain, A → B → C: B pulls from A, C from B
/// (one alliance CA, mutual TLS, every relay verified and fsynced).
pub struct Chain {
    pub a: Target,
    pub b: Target,
    pub c: Target,
}

impl Chain {
    /// Makes the three nodes' PKI and configs; nothing runs yet.
    pub fn prepare() -> Result<Chain, BenchError> {
        let a = Target::prepare_node(None, "a.bench", "a", &[])?;
        let b = Target::prepare_node(Some(&a), "b.bench", "b", &[(a.addr, a.identity.clone())])?;
        let c = Target::prepare_node(Some(&a), "c.bench", "c", &[(b.addr, b.identity.clone())])?;
        Ok(Chain { a, b, c })
    }

    /// Federation catch-up: A holds `n` bulletins of about `size` bytes
    /// (bulk-loaded while B and C were down) and serves; B and C start
    /// together, and the times are from their start until B's and C's heads
    /// reach `n`. With `n` = 0, the three nodes just start.
    pub async fn catch_up(
        &mut self,
        exe: &Path,
        n: usize,
        size: usize,
    ) -> Result<(Duration, Duration), BenchError> {
        self.serve_a_holding(exe, n, size).await?;
        let t0 = Instant::now();
        self.b.launch(exe)?;
        self.c.launch(exe)?;
        let (mut admin_b, mut admin_c) = (self.b.admin().await?, self.c.admin().await?);
        let limit = Duration::from_secs(900);
        let b_done = wait_head(&mut admin_b, n as u64, limit).await?;
        let c_done = wait_head(&mut admin_c, n as u64, limit).await?;
        Ok((b_done.duration_since(t0), c_done.duration_since(t0)))
    }

    /// A holds `n` bulletins of about `size` bytes, bulk-loaded while it
    /// was down, and serves.
    async fn serve_a_holding(
        &mut self,
        exe: &Path,
        n: usize,
        size: usize,
    ) -> Result<(), BenchError> {
        if n > 0 {
            self.a.bulk_load(n, size).await?;
        }
        self.a.launch(exe)?;
        self.a.wait_serving().await
    }

    /// As [`Chain::catch_up`] with B alone (C is not started): the time
    /// from B's start until its head reaches `n`.
    pub async fn catch_up_one_hop(
        &mut self,
        exe: &Path,
        n: usize,
        size: usize,
    ) -> Result<Duration, BenchError> {
        self.serve_a_holding(exe, n, size).await?;
        let t0 = Instant::now();
        self.b.launch(exe)?;
        let mut admin_b = self.b.admin().await?;
        let done = wait_head(&mut admin_b, n as u64, Duration::from_secs(900)).await?;
        Ok(done.duration_since(t0))
    }
}

/// Convergence latency: `samples` bulletins published one at a time at
/// `from`, each timed from the start of its publish until a live subscriber at
/// `to` receives it.
pub async fn convergence(
    from: &Target,
    to: &Target,
    samples: usize,
    size: usize,
    first: usize,
) -> Result<Figures, BenchError> {
    use crate::base::proto::v1 as pb;
    let mut reader = BeaconClient::connect(&to.client(first)?).await?;
    let mut sub = reader.subscribe(open_at("", latest(), None, 256)).await?;
    while let Some(ev) = sub.next().await? {
        if let pb::subscribe_response::Msg::CaughtUp(_) = ev {
            break;
        }
    }
    let (mut pubs, _) = publishers(from, 1, samples, size, first + 1).await?;
    let mut p = pubs.remove(0);
    let mut lat = Vec::with_capacity(samples);
    let start = Instant::now();
    for env in &p.envelopes {
        let t = Instant::now();
        p.client.publish_envelope(env).await?;
        let arrived = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match sub.next().await? {
                    Some(pb::subscribe_response::Msg::Delivery(d)) => return Ok(d.sequence),
                    Some(_) => continue,
                    None => {
                        return Err(BenchError::Setup(
                            "the subscription at the far node ended".into(),
                        ))
                    }
                }
            }
        })
        .await
        .map_err(|_| BenchError::Setup("a bulletin did not arrive within 30 s".into()))??;
        lat.push(t.elapsed().as_micros() as u64);
        sub.ack(arrived).await?;
    }
    Ok(Figures::new(
        "convergence".into(),
        lat,
        0,
        start.elapsed().as_secs_f64(),
    ))
}

/// Walks every object of the node's TAXII collection in pages of `limit`
/// over one HTTPS connection (HTTP/1.1, client certificate), following
/// `next`; returns (objects, pages, seconds, slowest page in ms).
pub async fn taxii_walk(
    target: &Target,
    taxii: SocketAddr,
    limit: usize,
    first: usize,
) -> Result<(u64, u64, f64, f64), BenchError> {
    use http_body_util::BodyExt;
    let settings = target.client(first)?;
    let dialer = crate::net::client::Dialer::load(&settings)?;
    let setup = |e: String| BenchError::Setup(e);
    let mut config = crate::trust::tls::client_config(
        dialer.bundle.clone(),
        &dialer.own,
        crate::trust::tls::ExpectedServer::Exactly(target.node_identity()?),
    )
    .map_err(|e| setup(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(taxii)
        .await
        .map_err(|e| setup(e.to_string()))?;
    let name = rustls::pki_types::ServerName::IpAddress(taxii.ip().into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| setup(e.to_string()))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| setup(e.to_string()))?;
    tokio::spawn(conn);
    let get = |path: String| {
        hyper::Request::get(path)
            .header("Host", taxii.to_string())
            .header("Accept", "application/taxii+json;version=2.1")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| setup(e.to_string()))
    };
    let fetch = |send: &mut hyper::client::conn::http1::SendRequest<_>, req| {
        let f = send.send_request(req);
        async move {
            let resp = f.await.map_err(|e| setup(e.to_string()))?;
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| setup(e.to_string()))?
                .to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).map_err(|e| setup(e.to_string()))
        }
    };
    let collections = fetch(&mut send, get("/taxii2/beacon/collections/".into())?).await?;
    let id = collections["collections"][0]["id"]
        .as_str()
        .ok_or_else(|| setup("no collection".into()))?
        .to_owned();
    let t0 = Instant::now();
    let (mut objects, mut pages, mut slowest) = (0u64, 0u64, 0f64);
    let mut next: Option<String> = None;
    loop {
        let mut path = format!("/taxii2/beacon/collections/{id}/objects/?limit={limit}");
        if let Some(n) = &next {
            path.push_str(&format!("&next={n}"));
        }
        let t = Instant::now();
        let page = fetch(&mut send, get(path)?).await?;
        slowest = slowest.max(t.elapsed().as_secs_f64() * 1000.0);
        pages += 1;
        objects += page["objects"].as_array().map_or(0, |a| a.len() as u64);
        match page["next"].as_str() {
            Some(n) if page["more"] == true => next = Some(n.to_owned()),
            _ => break,
        }
        if t0.elapsed() > Duration::from_secs(600) {
            break;
        }
    }
    Ok((objects, pages, t0.elapsed().as_secs_f64(), slowest))
}

/// Pages through the whole log with gRPC `List` (pages of `limit`);
/// returns (deliveries, seconds, slowest page in ms).
pub async fn list_walk(
    target: &Target,
    limit: u32,
    first: usize,
) -> Result<(u64, f64, f64), BenchError> {
    let settings = target.client(first)?;
    let mut client = BeaconClient::connect(&settings).await?;
    let t0 = Instant::now();
    let (mut n, mut after, mut slowest) = (0u64, 0u64, 0f64);
    loop {
        let t = Instant::now();
        let page = client
            .bulletins
            .list(crate::base::proto::v1::ListRequest {
                after_sequence: after,
                limit,
                ..Default::default()
            })
            .await
            .map_err(ClientError::from)?
            .into_inner();
        slowest = slowest.max(t.elapsed().as_secs_f64() * 1000.0);
        n += page.deliveries.len() as u64;
        after = page.next_after_sequence;
        if !page.more {
            break;
        }
    }
    Ok((n, t0.elapsed().as_secs_f64(), slowest))
}

/// Inclusion proofs served: `clients` connections, each asking for the
/// proof of a random sequence at the latest checkpoint, `total` in all (a
/// closed loop, bounded to 60 s). One proof in 64 is checked against the
/// checkpoint's root, so a wrong answer is an error, not a figure.
pub async fn proof_loop(
    target: &Target,
    clients: usize,
    total: usize,
) -> Result<Figures, BenchError> {
    rpc_loop(target, clients, total, true).await
}

/// The floor under [`proof_loop`]: the same clients and connections asking
/// for the latest checkpoint (no store read), to set the proofs' figure
/// against what the RPC itself costs on this machine.
pub async fn checkpoint_loop(
    target: &Target,
    clients: usize,
    total: usize,
) -> Result<Figures, BenchError> {
    rpc_loop(target, clients, total, false).await
}

async fn rpc_loop(
    target: &Target,
    clients: usize,
    total: usize,
    proofs: bool,
) -> Result<Figures, BenchError> {
    use crate::base::proto::v1 as pb;
    use crate::base::proto::v1::transparency_client::TransparencyClient;
    let clients = clients.max(1);
    let mut conns = Vec::with_capacity(clients);
    for n in 0..clients {
        let settings = target.client(10_000 + n)?;
        let channel = Dialer::load(&settings)?
            .dial(&target.addr.to_string())
            .await?;
        conns.push(TransparencyClient::new(channel));
    }
    let r = conns[0]
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .map_err(ClientError::from)?
        .into_inner();
    let key: crate::tlog::note::Verifier = r
        .log_key
        .parse()
        .map_err(|e| BenchError::Setup(format!("log key: {e}")))?;
    let (checkpoint, _) = crate::tlog::note::open_checkpoint(&r.checkpoint, &key)
        .map_err(|e| BenchError::Setup(format!("no checkpoint: {e}")))?;
    let size = checkpoint.size;
    if size == 0 {
        return Err(BenchError::Setup("the log is empty".into()));
    }
    let per = total.div_ceil(clients);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for mut c in conns {
        let root = checkpoint.root;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            let mut errors = 0usize;
            for i in 0..per {
                if Instant::now() > deadline {
                    break;
                }
                let seq = 1 + rand::random::<u64>() % size;
                let t = Instant::now();
                if !proofs {
                    match c.get_checkpoint(pb::GetCheckpointRequest {}).await {
                        Ok(_) => lat.push(t.elapsed().as_micros() as u64),
                        Err(_) => errors += 1,
                    }
                    continue;
                }
                match c
                    .prove_inclusion(pb::ProveInclusionRequest {
                        sequence: seq,
                        tree_size: size,
                    })
                    .await
                {
                    Ok(p) => {
                        lat.push(t.elapsed().as_micros() as u64);
                        if i % 64 == 0 {
                            let p = p.into_inner();
                            let hashes: Option<Vec<crate::tlog::merkle::Hash>> = p
                                .hashes
                                .iter()
                                .map(|h| h.as_slice().try_into().ok())
                                .collect();
                            let ok = hashes.is_some_and(|h| {
                                crate::tlog::merkle::verify_inclusion(
                                    seq - 1,
                                    size,
                                    &crate::tlog::merkle::leaf_hash(&p.leaf_entry),
                                    &h,
                                    &root,
                                )
                                .is_ok()
                            });
                            if !ok {
                                errors += 1;
                            }
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::with_capacity(total);
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t
            .await
            .map_err(|e| BenchError::Setup(format!("proof task: {e}")))?;
        lat.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Figures::new(
        if proofs {
            format!("{clients} clients, inclusion proofs at a checkpoint of {size}")
        } else {
            format!("{clients} clients, the latest checkpoint (no store read)")
        },
        lat,
        errors,
        secs,
    ))
}
