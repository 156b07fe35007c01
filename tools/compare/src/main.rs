//! Durable publishes of 1 KiB messages at 1, 16 and 64 concurrent publishers,
//! each with its own mutual-TLS connection, against:
//! - Beacon (`beacon daemon` as a child process; every envelope signed by the
//!   client beforehand, verified and fsynced by the node before the ack),
//!   once with one `Publish` call per message and once with one
//!   `PublishStream` per publisher;
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
//! Fan-out: one publisher keeping 16 publishes in flight, 100 live readers
//! (ten per connection), each acknowledging cumulatively every 256; the rate
//! is deliveries per second until every reader had every message.
//!
//! Memory: the server's RSS idle, with 1,000 open subscriptions that match
//! nothing published plus one that never reads (window 256), and after
//! 10,000 more publishes. Nothing in it waits for deliveries, so it is
//! bounded by the publishes alone.
//!
//! Every run has a deadline; a run that misses it fails the comparison
//! rather than hanging it.
//!
//! Federation catch-up: a first server holds CATCH_UP messages (1 KiB) while
//! two more are down; then the second catches up from the first (one hop)
//! and the third from the second (two hops). Beacon: three members' nodes
//! in a chain of peer links, every relay verified and fsynced at each hop.
//! NATS: three servers, each its own JetStream domain, each a leafnode of
//! the one before over mutual TLS; the second mirrors the first's stream and
//! the third the second's mirror.
//!
//! Every table is also drawn as an SVG chart (and the tables written as
//! `results.md`) into CHART_DIR, when one is given.
//!
//! Usage: beacon-compare BEACON_BIN NATS_SERVER_BIN [COUNT] [STORED] [WORKLOADS] [CATCH_UP] [CHART_DIR]
//! (WORKLOADS: comma-separated from publish,stored,catchup,fanout,memory; default all)

mod charts;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use beacon::base::identity::{MemberScope, RoleKind};
use beacon::tools::bench::{self, Figures, Target};
use beacon::tools::pki::{self, Algorithm, Ca, InitRequest, IssueRequest};

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

/// A JetStream server of a chain of three (A ← B ← C): its own domain, a
/// leafnode port over mutual TLS for the next, and a leafnode connection to
/// the one before (`upstream`), its client certificate checked there.
fn start_nats_node(
    bin: &Path,
    pki: &Pki,
    always: bool,
    name: &str,
    upstream: Option<SocketAddr>,
) -> Result<(Nats, SocketAddr)> {
    let dir = tempfile::tempdir()?;
    let (addr, leaf) = (free_port()?, free_port()?);
    let sync = if always {
        "sync_interval: always\n"
    } else {
        ""
    };
    let tls = |cert: &Path, key: &Path, verify: bool| {
        format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\"{} }}",
            cert.display(),
            key.display(),
            pki.ca.display(),
            if verify {
                ", verify: true, timeout: 5"
            } else {
                ""
            }
        )
    };
    let remotes = match upstream {
        Some(up) => format!(
            "  remotes: [ {{ url: \"tls://{up}\", {} }} ]\n",
            tls(&pki.client_cert, &pki.client_key, false)
        ),
        None => String::new(),
    };
    let conf = format!(
        "server_name: {name}\nlisten: \"{addr}\"\njetstream {{\n  store_dir: \"{}\"\n  domain: {name}\n  {sync}}}\n{}\nleafnodes {{\n  listen: \"{leaf}\"\n  {}\n{remotes}}}\n",
        dir.path().join("js").display(),
        tls(&pki.server_cert, &pki.server_key, true),
        tls(&pki.server_cert, &pki.server_key, true),
    );
    let conf_path = dir.path().join("nats.conf");
    std::fs::write(&conf_path, conf)?;
    let child = spawn_nats(bin, &conf_path, addr)?;
    Ok((
        Nats {
            child,
            addr,
            conf: conf_path,
            bin: bin.to_owned(),
            _dir: dir,
        },
        leaf,
    ))
}

/// Messages held by `stream` on the server at `addr` (0 while it does not
/// answer yet).
async fn nats_held(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Federation catch-up in NATS terms: A holds `n` messages of 1 KiB in
/// `BENCH`; B (a leafnode of A, over mutual TLS) and C (a leafnode of B)
/// start, B mirrors A's stream and C mirrors B's mirror, each across
/// JetStream domains. The times run from B's and C's start until their
/// mirrors hold all `n`.
async fn nats_catch_up(bin: &Path, pki: &Pki, always: bool, n: usize) -> Result<(f64, f64)> {
    use async_nats::jetstream::stream::{Config, External, Source, StorageType};
    let (a, a_leaf) = start_nats_node(bin, pki, always, "a", None)?;
    let js_a = bench_stream(a.addr, pki).await?;
    nats_preload(&js_a, n).await?;
    eprintln!("  stored at A; B and C catch up");
    let t0 = Instant::now();
    let (b, b_leaf) = start_nats_node(bin, pki, always, "b", Some(a_leaf))?;
    let (c, _) = start_nats_node(bin, pki, always, "c", Some(b_leaf))?;
    let mirror = |name: &str, of: &str, domain: &str| Config {
        name: name.into(),
        storage: StorageType::File,
        mirror: Some(Source {
            name: of.into(),
            external: Some(External {
                api_prefix: format!("$JS.{domain}.API"),
                delivery_prefix: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let js_b = async_nats::jetstream::new(nats_client(b.addr, pki).await?);
    let js_c = async_nats::jetstream::new(nats_client(c.addr, pki).await?);
    js_b.create_stream(mirror("MIRROR", "BENCH", "a")).await?;
    js_c.create_stream(mirror("MIRROR2", "MIRROR", "b")).await?;
    let (mut b_done, mut c_done) = (None, None);
    while b_done.is_none() || c_done.is_none() {
        if t0.elapsed() > Duration::from_secs(900) {
            bail!("NATS's mirrors did not catch up within 900 s");
        }
        if b_done.is_none() && nats_held(&js_b, "MIRROR").await >= n as u64 {
            b_done = Some(t0.elapsed().as_secs_f64());
        }
        if c_done.is_none() && nats_held(&js_c, "MIRROR2").await >= n as u64 {
            c_done = Some(t0.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop((a, b, c));
    Ok((b_done.unwrap_or_default(), c_done.unwrap_or_default()))
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// One publisher keeping 16 publishes in flight on `bench.0`.
async fn nats_publish_16(js: &async_nats::jetstream::Context, n: usize) -> Result<()> {
    let payload = bytes::Bytes::from(vec![b'x'; SIZE]);
    let mut inflight = std::collections::VecDeque::new();
    for _ in 0..n {
        inflight.push_back(js.publish("bench.0", payload.clone()).await?);
        if inflight.len() >= 16 {
            if let Some(ack) = inflight.pop_front() {
                ack.await?;
            }
        }
    }
    for ack in inflight {
        ack.await?;
    }
    Ok(())
}

/// Fan-out on NATS: (deliveries, seconds until every reader had them all).
async fn nats_fan_out(
    bin: &Path,
    pki: &Pki,
    always: bool,
    subs: usize,
    n: usize,
) -> Result<(u64, f64)> {
    use futures_util::StreamExt;
    let nats = start_nats(bin, pki, always)?;
    let js = bench_stream(nats.addr, pki).await?;
    let mut readers = Vec::new();
    let mut conn = None;
    for i in 0..subs {
        if i % 10 == 0 {
            conn = Some(nats_client(nats.addr, pki).await?);
        }
        let Some(c) = conn.as_ref() else { continue };
        let mut msgs = nats_consumer(c, None, "bench.0", false, 1024).await?;
        readers.push(tokio::spawn(async move {
            let mut got = 0u64;
            let deadline = Instant::now() + Duration::from_secs(300);
            while (got as usize) < n && Instant::now() < deadline {
                match tokio::time::timeout_at(deadline.into(), msgs.next()).await {
                    Ok(Some(Ok(m))) => {
                        got += 1;
                        if got.is_multiple_of(256) || got as usize == n {
                            let _ = m.ack().await;
                        }
                    }
                    _ => break,
                }
            }
            (got, Instant::now())
        }));
    }
    let t0 = Instant::now();
    nats_publish_16(&js, n).await?;
    let (mut total, mut last) = (0, t0);
    for r in readers {
        let (got, at) = r.await?;
        total += got;
        last = last.max(at);
    }
    Ok((total, (last - t0).as_secs_f64()))
}

/// A push consumer's message stream: on `subject`, from now on (or from the
/// start), cumulative acks, at most `window` unacknowledged; durable when
/// named.
async fn nats_consumer(
    client: &async_nats::Client,
    durable: Option<String>,
    subject: &str,
    from_start: bool,
    window: i64,
) -> Result<async_nats::jetstream::consumer::push::Messages> {
    use async_nats::jetstream::consumer::{push, AckPolicy, DeliverPolicy};
    let js = async_nats::jetstream::new(client.clone());
    let consumer = js
        .get_stream("BENCH")
        .await?
        .create_consumer(push::Config {
            deliver_subject: client.new_inbox(),
            durable_name: durable,
            filter_subject: subject.into(),
            deliver_policy: if from_start {
                DeliverPolicy::All
            } else {
                DeliverPolicy::New
            },
            ack_policy: AckPolicy::All,
            max_ack_pending: window,
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

/// Memory on NATS: RSS idle, with `subs` consumers that match nothing
/// published plus one that never reads, and after `publishes` more.
async fn nats_memory(
    bin: &Path,
    pki: &Pki,
    always: bool,
    subs: usize,
    publishes: usize,
) -> Result<(u64, u64, u64)> {
    let nats = start_nats(bin, pki, always)?;
    let js = bench_stream(nats.addr, pki).await?;
    let pid = nats.child.id();
    let base = rss(pid);
    let mut held = Vec::new();
    let mut conn = None;
    for i in 0..subs {
        // As many subscriptions per connection as Beacon's run.
        if i % 125 == 0 {
            conn = Some(nats_client(nats.addr, pki).await?);
        }
        let Some(c) = conn.as_ref() else { continue };
        // Durable, like Beacon's (named subscriptions with stored cursors).
        held.push(nats_consumer(c, Some(format!("s{i}")), "bench.quiet", false, 1024).await?);
    }
    let stalled_conn = nats_client(nats.addr, pki).await?;
    let stalled = Some("stalled".to_owned());
    held.push(nats_consumer(&stalled_conn, stalled, "bench.0", true, 256).await?);
    let open = rss(pid);
    nats_publish_16(&js, publishes).await?;
    let after = rss(pid);
    drop(held);
    Ok((base, open, after))
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
        // nats-server 2.15 caps a stream at 1,000 consumers unless the
        // stream sets its own limit (and -1 no longer means unlimited).
        max_consumers: 4096,
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

/// Beacon's closed-loop runs through one API: one `Publish` call per
/// message, or one `PublishStream` per publisher (like a NATS connection,
/// which carries every publish of its client).
async fn beacon_runs(
    bin: &Path,
    api: bench::Api,
    counts: &[(usize, usize)],
) -> Result<Vec<Figures>> {
    let target = beacon_target(bin).await?;
    let mut first = 0;
    bench::closed_loop_with(&target, api, 4, 400, SIZE, first).await?;
    first += 4;
    let mut out = Vec::new();
    for &(n, total) in counts {
        let (f, _) = bench::closed_loop_with(&target, api, n, total, SIZE, first).await?;
        first += n;
        out.push(f);
    }
    Ok(out)
}

/// A Beacon node (child process, throwaway PKI), once it serves.
async fn beacon_target(bin: &Path) -> Result<Target> {
    let target = Target::start(bin)?;
    target.wait_serving().await?;
    Ok(target)
}

/// Runs one workload under the comparison's deadline: a run that misses it
/// fails the comparison rather than hanging it.
async fn within<T>(what: &str, run: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .map_err(|_| anyhow::anyhow!("{what} missed its deadline"))?
}

/// Runs a NATS workload twice, under the comparison's deadline: with its
/// default (lazy fsync), then with `sync_interval: always`.
async fn nats_both<T, F>(what: &str, run: impl Fn(bool) -> F) -> Result<(T, T)>
where
    F: std::future::Future<Output = Result<T>>,
{
    let name = format!("NATS's {what}");
    eprintln!("nats (default): {what}");
    let lazy = within(&name, run(false)).await?;
    eprintln!("nats (always): {what}");
    let always = within(&name, run(true)).await?;
    Ok((lazy, always))
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

/// What the run prints: the Markdown tables (also kept for `results.md`)
/// and the charts drawn from the same figures.
#[derive(Default)]
struct Report {
    text: String,
    charts: Vec<charts::Chart>,
}

impl Report {
    fn line(&mut self, line: impl AsRef<str>) {
        println!("{}", line.as_ref());
        let _ = writeln!(self.text, "{}", line.as_ref());
    }

    fn chart(
        &mut self,
        file: &str,
        title: &str,
        caption: &str,
        y_label: &str,
        groups: Vec<String>,
        series: Vec<charts::Series>,
    ) {
        self.charts.push(charts::Chart {
            file: file.into(),
            title: title.into(),
            caption: caption.into(),
            y_label: y_label.into(),
            groups,
            series,
        });
    }

    /// Writes the charts and `results.md` into `dir`.
    fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        for chart in &self.charts {
            charts::draw(dir, chart)?;
        }
        let mut md = String::from(
            "<!-- Written by scripts/compare; the charts beside it are drawn from the same run. -->\n\n",
        );
        md.push_str(&self.text);
        std::fs::write(dir.join("results.md"), md)?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        bail!("usage: beacon-compare BEACON_BIN NATS_SERVER_BIN [COUNT] [STORED] [WORKLOADS] [CATCH_UP] [CHART_DIR]");
    }
    let beacon_bin = PathBuf::from(&args[1]);
    let nats_bin = PathBuf::from(&args[2]);
    let number = |i: usize, default: usize| -> Result<usize> {
        Ok(args
            .get(i)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let count = number(3, 20_000)?;
    let stored = number(4, 1_000_000)?;
    let all = "publish,stored,catchup,fanout,memory".to_owned();
    let workloads: Vec<String> = args
        .get(5)
        .unwrap_or(&all)
        .split(',')
        .map(|w| w.trim().to_owned())
        .collect();
    for w in &workloads {
        if !all.split(',').any(|a| a == w) {
            bail!("unknown workload {w:?} (choose from {all})");
        }
    }
    let catch_up = number(6, 100_000)?;
    let chart_dir = args.get(7).map(PathBuf::from);
    let runs = |w: &str| workloads.iter().any(|x| x == w);
    let counts = [(1, (count / 10).max(200)), (16, count), (64, count)];
    let dir = tempfile::tempdir()?;
    let pki = pki(dir.path())?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut out = Report::default();
    let servers = ["NATS (default, lazy fsync)", "NATS (sync_interval: always)"];

    let version = Command::new(&nats_bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    out.line(format!("Servers and load generator on the same {cores}-core machine; {version}. Beacon: every message a signed bulletin (signed before the clock), verified and fsynced before the ack. NATS JetStream: file storage, TLS with client certificates."));

    if runs("publish") {
        eprintln!("beacon: publish runs");
        let beacon = within(
            "Beacon's publish runs",
            beacon_runs(&beacon_bin, bench::Api::Unary, &counts),
        )
        .await?;
        let streamed = within(
            "Beacon's stream publish runs",
            beacon_runs(&beacon_bin, bench::Api::Stream, &counts),
        )
        .await?;
        let (lazy, always) = nats_both("publish runs", |always| {
            nats_runs(&nats_bin, &pki, always, &counts)
        })
        .await?;
        out.line("");
        out.line(
            "Durable publishes of 1 KiB, closed loop, one mutual-TLS connection per publisher:",
        );
        out.line("");
        out.line("| publishers | Beacon (Publish) | Beacon (PublishStream) | NATS (default, lazy fsync) | NATS (sync_interval: always) | Beacon ÷ NATS always (Publish / PublishStream) |");
        out.line("|---:|---|---|---|---|---:|");
        for i in 0..counts.len() {
            let ratio = |f: &Figures| f.rate() / always[i].rate().max(1e-9);
            out.line(format!(
                "| {} | {} | {} | {} | {} | {:.2}× / {:.2}× |",
                counts[i].0,
                cell(&beacon[i]),
                cell(&streamed[i]),
                cell(&lazy[i]),
                cell(&always[i]),
                ratio(&beacon[i]),
                ratio(&streamed[i])
            ));
        }
        let groups: Vec<String> = counts
            .iter()
            .map(|(n, _)| format!("{n} publisher{}", if *n == 1 { "" } else { "s" }))
            .collect();
        let pick = |f: &dyn Fn(&Figures) -> f64| {
            let names = [
                "Beacon (Publish)",
                "Beacon (PublishStream)",
                servers[0],
                servers[1],
            ];
            [&beacon, &streamed, &lazy, &always]
                .iter()
                .zip(names)
                .map(|(runs, name)| charts::Series::new(name, runs.iter().map(f).collect()))
                .collect::<Vec<_>>()
        };
        out.chart(
            "publish-throughput.svg",
            "Durable publishes per second (1 KiB, closed loop)",
            "Higher is better. Each publisher has its own mutual-TLS connection and awaits each ack.",
            "acknowledged publishes/s",
            groups.clone(),
            pick(&|f| f.rate()),
        );
        out.chart(
            "publish-p99.svg",
            "Publish latency, 99th percentile",
            "Lower is better. From the publish to its acknowledgement, closed loop.",
            "p99 (ms)",
            groups,
            pick(&|f| f.p99_us as f64 / 1000.0),
        );
    }

    if runs("stored") {
        eprintln!("beacon: {stored} stored");
        let beacon_s = within("Beacon's stored runs", beacon_stored(&beacon_bin, stored)).await?;
        let (lazy_s, always_s) = nats_both(&format!("{stored} stored"), |always| {
            nats_stored(&nats_bin, &pki, always, stored)
        })
        .await?;
        out.line("");
        out.line(format!("With {stored} messages of 1 KiB stored:"));
        out.line("");
        out.line("| workload | Beacon | NATS (default) | NATS (always) | Beacon ÷ NATS always |");
        out.line("|---|---|---|---|---:|");
        out.line(format!(
            "| replay to a new durable consumer | {:.0}/s ({:.1} s) | {:.0}/s ({:.1} s) | {:.0}/s ({:.1} s) | {:.2}× |",
            beacon_s.0, beacon_s.1, lazy_s.0, lazy_s.1, always_s.0, always_s.1, beacon_s.0 / always_s.0.max(1e-9)
        ));
        out.line(format!(
            "| restart after SIGKILL until serving everything | {:.2} s | {:.2} s | {:.2} s | {:.2}× (time) |",
            beacon_s.2, lazy_s.2, always_s.2, beacon_s.2 / always_s.2.max(1e-9)
        ));
        let three = |f: &dyn Fn(&(f64, f64, f64)) -> f64| {
            vec![
                charts::Series::new("Beacon", vec![f(&beacon_s)]),
                charts::Series::new(servers[0], vec![f(&lazy_s)]),
                charts::Series::new(servers[1], vec![f(&always_s)]),
            ]
        };
        out.chart(
            "replay.svg",
            &format!("Replay of {stored} stored messages to a new durable consumer"),
            "Higher is better. 1 KiB messages; the consumer acknowledges cumulatively.",
            "messages/s",
            vec![format!("replay of {stored}")],
            three(&|s| s.0),
        );
        out.chart(
            "restart.svg",
            &format!("Restart after SIGKILL with {stored} stored"),
            "Lower is better. From the kill until the server serves again with everything there.",
            "seconds",
            vec![format!("restart with {stored} stored")],
            three(&|s| s.2),
        );
    }

    if runs("catchup") && catch_up > 0 {
        eprintln!("beacon: catch-up of {catch_up}");
        let beacon_c = within("Beacon's catch-up", async {
            let mut chain = bench::Chain::prepare()?;
            let (b, c) = chain.catch_up(&beacon_bin, catch_up, SIZE).await?;
            Ok((b.as_secs_f64(), c.as_secs_f64()))
        })
        .await?;
        let (lazy_c, always_c) = nats_both(&format!("catch-up of {catch_up}"), |always| {
            nats_catch_up(&nats_bin, &pki, always, catch_up)
        })
        .await?;
        let rate = |secs: f64| catch_up as f64 / secs.max(1e-9);
        let cell = |(b, c): (f64, f64)| {
            format!("{:.0}/s ({b:.1} s) / {:.0}/s ({c:.1} s)", rate(b), rate(c))
        };
        out.line("");
        out.line(format!("Federation catch-up of {catch_up} messages of 1 KiB held by a first server while a second and third were down (Beacon: peer links, every relay verified and fsynced at each hop; NATS: leafnodes over mutual TLS, a mirror of a mirror across JetStream domains):"));
        out.line("");
        out.line("| catch-up: second server (one hop) / third (two hops) | Beacon | NATS (default) | NATS (always) | Beacon ÷ NATS always (one hop / two hops) |");
        out.line("|---|---|---|---|---:|");
        out.line(format!(
            "| {catch_up} messages | {} | {} | {} | {:.2}× / {:.2}× |",
            cell(beacon_c),
            cell(lazy_c),
            cell(always_c),
            always_c.0 / beacon_c.0.max(1e-9),
            always_c.1 / beacon_c.1.max(1e-9)
        ));
        out.chart(
            "catch-up.svg",
            &format!("Federation catch-up of {catch_up} messages"),
            "Higher is better. Messages per second until the second (one hop) and third (two hops) server hold them all.",
            "messages/s",
            vec!["one hop".into(), "two hops".into()],
            vec![
                charts::Series::new("Beacon", vec![rate(beacon_c.0), rate(beacon_c.1)]),
                charts::Series::new(servers[0], vec![rate(lazy_c.0), rate(lazy_c.1)]),
                charts::Series::new(servers[1], vec![rate(always_c.0), rate(always_c.1)]),
            ],
        );
    }

    let (subs, fan_n) = (100, 3000);
    let (mem_subs, mem_n) = (1000, 10_000);
    if runs("fanout") {
        eprintln!("fan-out 1 → {subs}");
        let beacon_fan = within("Beacon's fan-out", async {
            let target = beacon_target(&beacon_bin).await?;
            Ok(bench::fan_out(&target, subs, fan_n, SIZE, 0).await?)
        })
        .await?;
        let (lazy_fan, always_fan) = nats_both("fan-out", |always| {
            nats_fan_out(&nats_bin, &pki, always, subs, fan_n)
        })
        .await?;
        let rate = |(n, secs): (u64, f64)| n as f64 / secs.max(1e-9);
        out.line("");
        out.line("| fan-out | Beacon | NATS (default) | NATS (always) | Beacon ÷ NATS always |");
        out.line("|---|---|---|---|---:|");
        out.line(format!(
            "| 1 publisher (16 in flight) → {subs} readers, {fan_n} messages | {:.0} deliveries/s | {:.0}/s | {:.0}/s | {:.2}× |",
            rate(beacon_fan), rate(lazy_fan), rate(always_fan), rate(beacon_fan) / rate(always_fan).max(1e-9)
        ));
        for (who, (n, _)) in [
            ("Beacon", beacon_fan),
            ("NATS (default)", lazy_fan),
            ("NATS (always)", always_fan),
        ] {
            if n != (subs * fan_n) as u64 {
                out.line(format!(
                    "| {who} delivered {n} of {} | | | | |",
                    subs * fan_n
                ));
            }
        }
    }

    if runs("memory") {
        eprintln!("memory of {mem_subs} subscriptions");
        let beacon_mem = within("Beacon's memory run", async {
            let target = beacon_target(&beacon_bin).await?;
            Ok(bench::memory(&target, mem_subs, mem_n, SIZE, 0).await?)
        })
        .await?;
        let (lazy_mem, always_mem) = nats_both("memory run", |always| {
            nats_memory(&nats_bin, &pki, always, mem_subs, mem_n)
        })
        .await?;
        let mb = |b: u64| b as f64 / 1e6;
        out.line("");
        out.line("| server RSS | Beacon | NATS (default) | NATS (always) | Beacon ÷ NATS always |");
        out.line("|---|---|---|---|---:|");
        let whats = [
            "idle".to_owned(),
            format!("{mem_subs} subscriptions + 1 stalled"),
            format!("after {mem_n} more publishes"),
        ];
        let get = |m: (u64, u64, u64), pick: usize| [m.0, m.1, m.2][pick];
        for (pick, what) in whats.iter().enumerate() {
            out.line(format!(
                "| {what} | {:.0} MB | {:.0} MB | {:.0} MB | {:.2}× |",
                mb(get(beacon_mem, pick)),
                mb(get(lazy_mem, pick)),
                mb(get(always_mem, pick)),
                get(beacon_mem, pick) as f64 / get(always_mem, pick).max(1) as f64
            ));
        }
        let series = |name: &str, m: (u64, u64, u64)| {
            charts::Series::new(name, (0..3).map(|p| mb(get(m, p))).collect())
        };
        out.chart(
            "memory.svg",
            "Server resident memory",
            "Lower is better. Idle; with many subscriptions open and one stalled; after more publishes.",
            "RSS (MB)",
            whats.to_vec(),
            vec![
                series("Beacon", beacon_mem),
                series(servers[0], lazy_mem),
                series(servers[1], always_mem),
            ],
        );
    }
    if let Some(dir) = chart_dir {
        out.write(&dir)?;
        eprintln!("charts and results.md written to {}", dir.display());
    }
    Ok(())
}
