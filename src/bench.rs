//! `beacon bench publish`: durable, verified publishes against a real node over
//! mutual TLS, and the figures they give.
//!
//! Without `--node`, the benchmark makes a throwaway PKI and store in a temp
//! directory and starts `beacon daemon` as a child process, so one command
//! measures what a user would run. Every envelope is signed before the clock
//! starts (signing is the client's cost, reported separately); each publisher
//! has its own connection and its own client certificate, since a client may
//! publish only what it signed itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bulletin::{Bulletin, Envelope, Kind, Severity, Signer, Tlp};
use crate::client::{BeaconClient, ClientError, ClientSettings, Dialer};
use crate::identity::{MemberScope, RoleKind, TrustDomain};
use crate::pki::{self, Algorithm, Ca, InitRequest, IssueRequest};
use crate::tls::ExpectedServer;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("benchmark setup: {0}")]
    Setup(String),
}

/// A node to measure: started by the benchmark, or given.
pub struct Target {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    ca_dir: PathBuf,
    child: Option<Child>,
    td: TrustDomain,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM first, so the node drains and reports its store figures.
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<SocketAddr, BenchError> {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::Setup(e.to_string()))?;
    l.local_addr().map_err(|e| BenchError::Setup(e.to_string()))
}

impl Target {
    /// Makes a PKI and config in a temp dir and starts `beacon daemon`.
    pub fn start(exe: &Path) -> Result<Target, BenchError> {
        let dir = std::env::temp_dir().join(format!(
            "beacon-bench-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| BenchError::Setup(e.to_string()))?;
        let td: TrustDomain = "bench.example"
            .parse()
            .map_err(|e| BenchError::Setup(format!("{e}")))?;
        let ca_dir = dir.join("ca");
        let ca = Ca::init(
            &ca_dir,
            &InitRequest {
                trust_domain: td.clone(),
                name: "bench CA".into(),
                members: MemberScope::any(),
                algorithm: Algorithm::Ed25519,
                validity: Duration::from_secs(24 * 3600),
                force: false,
            },
        )?;
        let mut req = IssueRequest::new(pki::identity_for(
            &td,
            RoleKind::Node,
            Some("drc"),
            "bench",
        )?);
        req.ip_addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let node = ca.issue(&req)?;
        pki::write_file(&dir.join("node.pem"), node.cert_pem.as_bytes(), false, true)?;
        pki::write_file(&dir.join("node.key"), node.key_pem.as_bytes(), true, true)?;
        let addr = free_port()?;
        let config = format!(
            "[node]\nlisten = \"{addr}\"\ndata_dir = \"store\"\ncert = \"node.pem\"\nkey = \"node.key\"\n\n[[trust]]\nca = \"ca/ca.pem\"\ncrl = \"ca/crl.pem\"\n\n[log]\nfilter = \"warn,beacon::store=info\"\n"
        );
        std::fs::write(dir.join("beacon.toml"), config)
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let child = Command::new(exe)
            .args(["daemon", "--config", "beacon.toml"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BenchError::Setup(format!("cannot start the daemon: {e}")))?;
        let target = Target {
            addr,
            ca_dir,
            dir,
            child: Some(child),
            td,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(BenchError::Setup(
                    "the daemon did not start listening".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(target)
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
            crl: vec![],
            node_identity: None,
        })
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

    fn from(label: String, mut lat: Vec<u64>, errors: usize, seconds: f64) -> Figures {
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
        let settings = target.client(first + i)?;
        let dialer = Dialer::load(&settings)?;
        let channel = dialer
            .connect(&target.addr.to_string(), ExpectedServer::AnyNode)
            .await?;
        let signer = Arc::new(
            Signer::new(dialer.own.chain.clone(), dialer.own.key.secret_der())
                .map_err(ClientError::from)?,
        );
        let member = format!("m{}.bench", first + i);
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

/// Closed loop: `n` publishers each send their envelopes one after another.
pub async fn closed_loop(
    target: &Target,
    n: usize,
    total: usize,
    size: usize,
    first: usize,
) -> Result<(Figures, f64), BenchError> {
    let per = total.div_ceil(n).max(1);
    let (pubs, sign_rate) = publishers(target, n, per, size, first).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut p in pubs {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(p.envelopes.len());
            let mut errors = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            for env in &p.envelopes {
                if Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                match p.client.publish_envelope(env).await {
                    Ok(_) => lat.push(t.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.map_err(|e| BenchError::Setup(e.to_string()))?;
        lat.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((
        Figures::from(format!("{n} publishers"), lat, errors, secs),
        sign_rate,
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
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.map_err(|e| BenchError::Setup(e.to_string()))?;
        lat.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Figures::from(
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
