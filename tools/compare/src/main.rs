//! Durable publishes of 1 KiB messages at 1, 16 and 64 concurrent publishers,
//! each with its own mutual-TLS connection, against:
//! - Beacon (`beacon daemon` as a child process; every envelope signed by the
//!   client beforehand, verified and fsynced by the node before the ack);
//! - NATS JetStream (`nats-server` as a child process, file storage, TLS with
//!   client-certificate verification), once with its default (lazy fsync) and
//!   once with `sync_interval: always` (an fsync before each ack, which is what
//!   Beacon promises).
//!
//!
//! Then, with STORED messages (1 KiB) already stored: replay of all of them to
//! a new durable consumer (Beacon: a durable subscription from the earliest;
//! NATS: a durable pull consumer with cumulative acks), and the time from a
//! `SIGKILL` until the restarted server serves again with everything there.
//!
//! Usage: beacon-compare BEACON_BIN NATS_SERVER_BIN [COUNT] [STORED]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use beacon::bench::{self, Figures, Target};
use beacon::identity::{MemberScope, RoleKind};
use beacon::pki::{self, Algorithm, Ca, InitRequest, IssueRequest};

const SIZE: usize = 1024;

struct Nats {
    child: Child,
    addr: SocketAddr,
    conf: PathBuf,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> Result<Pki> {
    let td = "compare.example".parse()?;
    let ca = Ca::init(
        &dir.join("ca"),
        &InitRequest {
            trust_domain: "compare.example".parse()?,
            name: "compare CA".into(),
            members: MemberScope::any(),
            algorithm: Algorithm::EcdsaP256,
            validity: Duration::from_secs(24 * 3600),
            force: false,
        },
    )?;
    let mut req = IssueRequest::new(pki::identity_for(
        &td,
        RoleKind::Node,
        Some("nats"),
        "server",
    )?);
    req.ip_addresses = vec!["127.0.0.1".parse()?];
    req.dns_names = vec!["localhost".into()];
    let server = ca.issue(&req)?;
    let client = ca.issue(&IssueRequest::new(pki::identity_for(
        &td,
        RoleKind::Client,
        Some("nats"),
        "publisher",
    )?))?;
    let write = |name: &str, text: &str, private: bool| -> Result<PathBuf> {
        let p = dir.join(name);
        pki::write_file(&p, text.as_bytes(), private, true)?;
        Ok(p)
    };
    Ok(Pki {
        ca: Ca::cert_path(&dir.join("ca")),
        server_cert: write("server.pem", &server.cert_pem, false)?,
        server_key: write("server.key", &server.key_pem, true)?,
        client_cert: write("client.pem", &client.cert_pem, false)?,
        client_key: write("client.key", &client.key_pem, true)?,
    })
}

fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn start_nats(bin: &Path, pki: &Pki, always: bool) -> Result<Nats> {
    let dir = tempfile::tempdir()?;
    let addr = free_port()?;
    let sync = if always {
        "sync_interval: always\n"
    } else {
        ""
    };
    let conf = format!(
        "listen: \"{addr}\"\njetstream {{\n  store_dir: \"{}\"\n  {sync}}}\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 5\n}}\n",
        dir.path().join("js").display(),
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    let conf_path = dir.path().join("nats.conf");
    std::fs::write(&conf_path, conf)?;
    let child = spawn_nats(bin, &conf_path, addr)?;
    Ok(Nats {
        child,
        addr,
        conf: conf_path,
        bin: bin.to_owned(),
        _dir: dir,
    })
}

fn spawn_nats(bin: &Path, conf: &Path, addr: SocketAddr) -> Result<Child> {
    let child = Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let start = Instant::now();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("nats-server did not start listening");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(child)
}

/// Stores `n` messages (publishes in flight in windows of 1,000, each acked).
async fn nats_preload(js: &async_nats::jetstream::Context, n: usize) -> Result<()> {
    let payload = bytes::Bytes::from(vec![b'x'; SIZE]);
    let mut done = 0;
    while done < n {
        let k = (n - done).min(1000);
        let mut acks = Vec::with_capacity(k);
        for i in 0..k {
            acks.push(
                js.publish(format!("bench.{}", (done + i) % 64), payload.clone())
                    .await?,
            );
        }
        for a in acks {
            a.await?;
        }
        done += k;
    }
    Ok(())
}

/// Replays the whole stream to a new durable pull consumer; (messages, seconds).
async fn nats_replay(js: &async_nats::jetstream::Context, n: usize) -> Result<(usize, f64)> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use futures_util::StreamExt;
    let stream = js.get_stream("BENCH").await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("replay".into()),
            ack_policy: AckPolicy::All,
            deliver_policy: DeliverPolicy::All,
            // The same window Beacon's replay uses (4,096 unacknowledged).
            max_ack_pending: 4096,
            ..Default::default()
        })
        .await?;
    let t0 = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(4096)
        .messages()
        .await?;
    let mut got = 0;
    while got < n {
        let Some(m) = tokio::time::timeout(Duration::from_secs(60), messages.next()).await? else {
            break;
        };
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        got += 1;
        if got % 1024 == 0 || got == n {
            m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    Ok((got, t0.elapsed().as_secs_f64()))
}

/// Kills the server, starts it again on the same store, and times until the
/// stream answers with all `n` messages.
async fn nats_restart(nats: &mut Nats, pki: &Pki, n: usize) -> Result<f64> {
    let _ = nats.child.kill();
    let _ = nats.child.wait();
    let t0 = Instant::now();
    nats.child = spawn_nats(&nats.bin, &nats.conf, nats.addr)?;
    loop {
        if let Ok(c) = nats_client(nats.addr, pki).await {
            let js = async_nats::jetstream::new(c);
            if let Ok(mut s) = js.get_stream("BENCH").await {
                if let Ok(info) = s.info().await {
                    if info.state.messages as usize >= n {
                        return Ok(t0.elapsed().as_secs_f64());
                    }
                }
            }
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("nats-server did not come back with the stream");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// (replay rate, replay seconds, restart seconds) for NATS with `n` stored.
async fn nats_stored(bin: &Path, pki: &Pki, always: bool, n: usize) -> Result<(f64, f64, f64)> {
    let mut nats = start_nats(bin, pki, always)?;
    let js = bench_stream(nats.addr, pki).await?;
    nats_preload(&js, n).await?;
    eprintln!("  stored; replaying");
    let (got, secs) = nats_replay(&js, n).await?;
    if got != n {
        bail!("NATS replayed {got} of {n}");
    }
    drop(js);
    eprintln!("  replayed; restarting");
    let restart = nats_restart(&mut nats, pki, n).await?;
    Ok((got as f64 / secs, secs, restart))
}

/// The same for Beacon: bulk-loaded through its own group commit.
async fn beacon_stored(bin: &Path, n: usize) -> Result<(f64, f64, f64)> {
    let mut target = Target::prepare()?;
    target.bulk_load(n, SIZE).await?;
    target.launch(bin)?;
    target.wait_serving().await?;
    let (got, secs) = bench::replay(&target, n as u64, 0).await?;
    let restart = target.kill_and_restart(bin).await?;
    Ok((got as f64 / secs, secs, restart.as_secs_f64()))
}

async fn nats_client(addr: SocketAddr, pki: &Pki) -> Result<async_nats::Client> {
    Ok(async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(pki.ca.clone())
        .add_client_certificate(pki.client_cert.clone(), pki.client_key.clone())
        .connect(format!("tls://{addr}"))
        .await?)
}

/// A JetStream context with the file-backed stream `BENCH` (subjects `bench.>`).
async fn bench_stream(addr: SocketAddr, pki: &Pki) -> Result<async_nats::jetstream::Context> {
    let js = async_nats::jetstream::new(nats_client(addr, pki).await?);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    Ok(js)
}

/// Closed loop: `n` publishers (own connection each) publish `total` 1 KiB
/// messages to JetStream, each awaiting its ack.
async fn nats_closed_loop(addr: SocketAddr, pki: &Pki, n: usize, total: usize) -> Result<Figures> {
    let per = total.div_ceil(n).max(1);
    let payload = bytes::Bytes::from(vec![b'x'; SIZE]);
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(async_nats::jetstream::new(nats_client(addr, pki).await?));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, js) in clients.into_iter().enumerate() {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            let mut errors = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            for _ in 0..per {
                if Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                let ok = match js.publish(format!("bench.{i}"), payload.clone()).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    lat.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    Ok(Figures::new(
        format!("{n} publishers"),
        lat,
        errors,
        start.elapsed().as_secs_f64(),
    ))
}

async fn nats_runs(
    bin: &Path,
    pki: &Pki,
    always: bool,
    counts: &[(usize, usize)],
) -> Result<Vec<Figures>> {
    let nats = start_nats(bin, pki, always)?;
    bench_stream(nats.addr, pki).await?;
    // Warm up.
    nats_closed_loop(nats.addr, pki, 4, 400).await?;
    let mut out = Vec::new();
    for &(n, total) in counts {
        out.push(nats_closed_loop(nats.addr, pki, n, total).await?);
    }
    Ok(out)
}

async fn beacon_runs(bin: &Path, counts: &[(usize, usize)]) -> Result<Vec<Figures>> {
    let target = Target::start(bin)?;
    let mut first = 0;
    bench::closed_loop(&target, 4, 400, SIZE, first).await?;
    first += 4;
    let mut out = Vec::new();
    for &(n, total) in counts {
        let (f, _) = bench::closed_loop(&target, n, total, SIZE, first).await?;
        first += n;
        out.push(f);
    }
    Ok(out)
}

fn cell(f: &Figures) -> String {
    format!(
        "{:.0}/s (p50 {:.2} / p99 {:.2} / max {:.1} ms{})",
        f.rate(),
        f.p50_us as f64 / 1000.0,
        f.p99_us as f64 / 1000.0,
        f.max_us as f64 / 1000.0,
        if f.errors > 0 {
            format!(", {} errors", f.errors)
        } else {
            String::new()
        }
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        bail!("usage: beacon-compare BEACON_BIN NATS_SERVER_BIN [COUNT]");
    }
    let beacon_bin = PathBuf::from(&args[1]);
    let nats_bin = PathBuf::from(&args[2]);
    let count: usize = args
        .get(3)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let stored: usize = args
        .get(4)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let counts = [(1, (count / 10).max(200)), (16, count), (64, count)];
    let dir = tempfile::tempdir()?;
    let pki = pki(dir.path())?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    eprintln!("beacon: publish runs");
    let beacon = beacon_runs(&beacon_bin, &counts).await?;
    eprintln!("nats (default): publish runs");
    let lazy = nats_runs(&nats_bin, &pki, false, &counts).await?;
    eprintln!("nats (always): publish runs");
    let always = nats_runs(&nats_bin, &pki, true, &counts).await?;

    eprintln!("beacon: {stored} stored");
    let beacon_s = beacon_stored(&beacon_bin, stored).await?;
    eprintln!("nats (default): {stored} stored");
    let lazy_s = nats_stored(&nats_bin, &pki, false, stored).await?;
    eprintln!("nats (always): {stored} stored");
    let always_s = nats_stored(&nats_bin, &pki, true, stored).await?;

    let version = Command::new(&nats_bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("Durable publishes of 1 KiB, closed loop, one mutual-TLS connection per publisher; servers and load generator on the same {cores}-core machine; {version}.");
    println!("Beacon: each message a signed bulletin (signed before the clock), verified and fsynced before the ack. NATS JetStream: file storage.");
    println!();
    println!("| publishers | Beacon | NATS (default, lazy fsync) | NATS (sync_interval: always) | Beacon ÷ NATS always |");
    println!("|---:|---|---|---|---:|");
    for i in 0..counts.len() {
        println!(
            "| {} | {} | {} | {} | {:.2}× |",
            counts[i].0,
            cell(&beacon[i]),
            cell(&lazy[i]),
            cell(&always[i]),
            beacon[i].rate() / always[i].rate().max(1e-9)
        );
    }
    println!();
    println!("With {stored} messages of 1 KiB stored:");
    println!();
    println!("| workload | Beacon | NATS (default) | NATS (always) | Beacon ÷ NATS always |");
    println!("|---|---|---|---|---:|");
    println!(
        "| replay to a new durable consumer | {:.0}/s ({:.1} s) | {:.0}/s ({:.1} s) | {:.0}/s ({:.1} s) | {:.2}× |",
        beacon_s.0, beacon_s.1, lazy_s.0, lazy_s.1, always_s.0, always_s.1, beacon_s.0 / always_s.0.max(1e-9)
    );
    println!(
        "| restart after SIGKILL until serving everything | {:.2} s | {:.2} s | {:.2} s | {:.2}× (time) |",
        beacon_s.2, lazy_s.2, always_s.2, beacon_s.2 / always_s.2.max(1e-9)
    );
    Ok(())
}
