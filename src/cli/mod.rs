//! The `beacon` command line. The only module that uses `anyhow`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod admin;
mod client;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use beacon::base::config::{Config, LogFormat};
use beacon::base::identity::{MemberScope, RoleKind, TrustDomain};
use beacon::base::proto::v1 as pb;
use beacon::net::client::AdminClient;
use beacon::tools::pki::{self, Algorithm, Ca, InitRequest, IssueRequest, Reason, Selector};

#[derive(Parser, Debug)]
#[command(
    name = "beacon",
    version,
    about = "Signed threat bulletins between allied agencies"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: `beacon daemon --config beacon.toml`.
    Daemon {
        #[arg(long, short, env = "BEACON_CONFIG", default_value = "beacon.toml")]
        config: PathBuf,
    },
    /// The embedded default: a throwaway dev PKI and a node on 127.0.0.1.
    Dev {
        #[arg(long, default_value = "beacon-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
    },
    /// Operate a certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Benchmarks against a node this command starts (throwaway PKI and store).
    #[command(subcommand)]
    Bench(BenchCommand),
    #[command(flatten)]
    Client(client::ClientCommand),
    /// Operators: backup and restore of a node's store, durable subscriptions.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Node status (operators): head, connections, subscriptions, peers.
    Status {
        #[command(flatten)]
        conn: client::ConnArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Durable, verified publishes of signed bulletins over mutual TLS.
    Publish {
        /// Concurrent publishers (each with its own connection and certificate).
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        concurrency: Vec<usize>,
        /// Publishes per closed-loop run (1 publisher runs a tenth of it).
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Serialized bulletin size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Offered rate of the open-loop latency run (0 skips it).
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Which API the closed-loop runs use: `unary` (one Publish call per
        /// bulletin), `stream` (one PublishStream per publisher), or `both`.
        #[arg(long, value_enum, default_value_t = ApiArg::Both)]
        api: ApiArg,
        /// Key algorithms of the node's PKI, one run each, in one table
        /// (bulletin signatures follow the signer's certificate).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "ecdsa-p256")]
        algorithms: Vec<AlgArg>,
    },
    /// Retention: how fast pruning goes, the disk space it gives back (with
    /// `beacon admin compact`), and publish and replay speed while it runs.
    Retention {
        /// Expired bulletins pruned in the disk-space run.
        #[arg(long, default_value_t = 1_000_000)]
        count: usize,
        /// Expired bulletins pruned in the background during the speed runs.
        #[arg(long, default_value_t = 400_000)]
        background: usize,
        /// Bulletins that stay, replayed in each speed run.
        #[arg(long, default_value_t = 100_000)]
        replay: usize,
        /// Publishes (16 publishers, PublishStream) in each speed run.
        #[arg(long, default_value_t = 10_000)]
        publishes: usize,
        /// Serialized bulletin size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// TAXII 2.1 against gRPC on the same node: every object in pages of
    /// `limit` over HTTPS, every bulletin in `List` pages of `limit`.
    Taxii {
        /// Bulletins stored (a third with an indicator each is not the bulk
        /// load's shape: every bulletin here has none).
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// Federation across a chain of three nodes (A → B → C): catch-up of nodes
    /// that were down, relay throughput, and convergence latency.
    Federation {
        /// Bulletins stored at A before B and C start (their catch-up).
        #[arg(long, default_value_t = 100_000)]
        catch_up: usize,
        /// Publishes at A (64 publishers) for the relay throughput run.
        #[arg(long, default_value_t = 20_000)]
        relay: usize,
        /// Single publishes timed from A to a live subscriber at C.
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Serialized bulletin size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// Restart after SIGKILL with many bulletins stored: the node is killed
    /// while it was publishing, and timed until it serves again (its store
    /// open, the write-ahead log's tail applied again).
    Restart {
        /// Bulletins stored before each run, one run each.
        #[arg(long, value_delimiter = ',', default_value = "1000000")]
        stored: Vec<usize>,
        /// Publishes (16 publishers) just before the kill, so that the log
        /// has a tail to apply again.
        #[arg(long, default_value_t = 20_000)]
        tail: usize,
        /// Serialized bulletin size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// Replay to a reconnecting subscriber, fan-out, and memory of many subscriptions.
    Subscribe(SubscribeRuns),
    /// What one durable write costs on a filesystem, by each way a
    /// write-ahead log could make it durable (fdatasync into a preallocated
    /// or a growing file, O_DSYNC, RWF_DSYNC, fsync, three in series).
    Sync {
        /// A directory on the filesystem to measure (the store's).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Writes per method.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Bytes per write (a commit batch's frame).
        #[arg(long, default_value_t = 4096)]
        size: usize,
    },
}

/// What `beacon bench subscribe` runs.
#[derive(Args, Debug)]
struct SubscribeRuns {
    /// Bulletins stored before the replay run.
    #[arg(long, default_value_t = 1_000_000)]
    replay: usize,
    /// Replays of the whole log, one after another on the same node
    /// (each a fresh subscriber; the figures of a run compare best).
    #[arg(long, default_value_t = 1)]
    replays: usize,
    /// Subscribers of the fan-out run.
    #[arg(long, default_value_t = 100)]
    fan_out: usize,
    /// Publishes of the fan-out run.
    #[arg(long, default_value_t = 3000)]
    publishes: usize,
    /// Open subscriptions of the memory run.
    #[arg(long, default_value_t = 1000)]
    subscriptions: usize,
    #[arg(long, default_value_t = 1024)]
    size: usize,
}

#[derive(Subcommand, Debug)]
enum CaCommand {
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
struct Which {
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
enum ApiArg {
    Unary,
    Stream,
    Both,
}

impl ApiArg {
    fn apis(self) -> &'static [beacon::tools::bench::Api] {
        use beacon::tools::bench::Api;
        match self {
            ApiArg::Unary => &[Api::Unary],
            ApiArg::Stream => &[Api::Stream],
            ApiArg::Both => &[Api::Unary, Api::Stream],
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum AlgArg {
    Ed25519,
    EcdsaP256,
}

impl From<AlgArg> for Algorithm {
    fn from(a: AlgArg) -> Self {
        match a {
            AlgArg::Ed25519 => Algorithm::Ed25519,
            AlgArg::EcdsaP256 => Algorithm::EcdsaP256,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum KindArg {
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

/// Standard error as the log's sink: a write it refuses (a closed pipe, a
/// full disk) is dropped and counted, never an error that could reach the
/// code that logged.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::io::stderr().write(buf) {
            Ok(n) => Ok(n),
            Err(_) => {
                beacon::base::metrics::LOG_WRITE_FAILURES.inc();
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Held until the process ends: dropping it writes out the lines queued.
static LOG_GUARD: std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> =
    std::sync::Mutex::new(None);

/// Logging must never take the node down or stall it: lines go through a
/// bounded queue to a thread of their own (dropped, and counted, when the
/// writer falls behind: a stalled pipe), and a write the sink refuses is
/// dropped and counted (`beacon_log_lines_dropped_total`). Colour only on a
/// terminal. An invalid filter is said, not silently replaced.
fn init_logging(format: &LogFormat, filter: Option<&str>) {
    let mut problem = None;
    let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => {
            let wanted = filter.unwrap_or("info");
            tracing_subscriber::EnvFilter::try_new(wanted).unwrap_or_else(|e| {
                problem = Some(format!(
                    "the log filter {wanted:?} is not valid ({e}); logging at info"
                ));
                tracing_subscriber::EnvFilter::new("info")
            })
        }
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(16_384)
        .finish(Stderr);
    let drops = writer.error_counter();
    let _ =
        beacon::base::metrics::LOG_QUEUE_DROPS.set(Box::new(move || drops.dropped_lines() as u64));
    if let Ok(mut g) = LOG_GUARD.lock() {
        *g = Some(guard);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
    if let Some(p) = problem {
        tracing::warn!("{p}");
    }
}

/// Writes out the log lines still queued (at exit).
fn flush_logging() {
    if let Ok(mut g) = LOG_GUARD.lock() {
        g.take();
    }
}

/// Parses arguments and runs the command; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("beacon: cannot start the runtime: {e}");
            return 1;
        }
    };
    let result = runtime.block_on(execute(cli));
    flush_logging();
    match result {
        Ok(()) => 0,
        Err(e) => {
            // Not eprintln!, which panics when stderr is closed.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "beacon: {}", one_line(&e));
            1
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

async fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Daemon { config } => {
            let config = Config::load(&config)?;
            init_logging(&config.log.format, config.log.filter.as_deref());
            run_daemon(config).await
        }
        Command::Dev { data_dir, listen } => {
            init_logging(&LogFormat::Human, None);
            let layout = beacon::tools::dev::prepare(&data_dir, listen)?;
            let config = Config::load(&layout.config)?;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let addr = listener.local_addr()?;
            print_dev_banner(&layout, addr);
            serve(config, listener).await
        }
        Command::Ca(cmd) => run_ca(cmd),
        Command::Bench(BenchCommand::Publish {
            concurrency,
            count,
            size,
            rate,
            api,
            algorithms,
        }) => {
            init_logging(&LogFormat::Human, Some("warn"));
            let algorithms: Vec<Algorithm> = algorithms.into_iter().map(Into::into).collect();
            bench_publish(&concurrency, count, size, rate, api.apis(), &algorithms).await
        }
        Command::Bench(BenchCommand::Sync { dir, count, size }) => {
            init_logging(&LogFormat::Human, Some("warn"));
            let rows = tokio::task::spawn_blocking(move || {
                beacon::tools::bench::sync::run(&dir, count.max(1), size.max(1))
            })
            .await??;
            beacon::tools::bench::sync::print(&rows, size);
            Ok(())
        }
        Command::Bench(BenchCommand::Subscribe(runs)) => {
            init_logging(&LogFormat::Human, Some("warn"));
            bench_subscribe(runs).await
        }
        Command::Bench(BenchCommand::Retention {
            count,
            background,
            replay,
            publishes,
            size,
        }) => {
            init_logging(&LogFormat::Human, Some("warn"));
            bench_retention(count, background, replay, publishes, size).await
        }
        Command::Bench(BenchCommand::Restart { stored, tail, size }) => {
            init_logging(&LogFormat::Human, Some("warn"));
            bench_restart(&stored, tail, size).await
        }
        Command::Bench(BenchCommand::Taxii { count, limit, size }) => {
            init_logging(&LogFormat::Human, Some("warn"));
            bench_taxii(count, limit, size).await
        }
        Command::Bench(BenchCommand::Federation {
            catch_up,
            relay,
            samples,
            size,
        }) => {
            init_logging(&LogFormat::Human, Some("warn"));
            bench_federation(catch_up, relay, samples, size).await
        }
        Command::Client(cmd) => {
            init_logging(&LogFormat::Human, Some("warn"));
            client::run(cmd).await
        }
        Command::Admin(cmd) => {
            init_logging(&LogFormat::Human, Some("warn"));
            admin::run(cmd).await
        }
        Command::Status { conn, json } => {
            let (_, channel) = conn.dial().await?;
            let status = AdminClient::new(channel)
                .status(pb::StatusRequest::default())
                .await
                .map_err(beacon::net::client::ClientError::from)?
                .into_inner();
            print_status(&status, json);
            Ok(())
        }
    }
}

async fn bench_publish(
    concurrency: &[usize],
    count: usize,
    size: usize,
    rate: u64,
    apis: &[beacon::tools::bench::Api],
    algorithms: &[Algorithm],
) -> Result<()> {
    use beacon::tools::bench;
    let (exe, cores) = bench_host()?;
    let mut rows = Vec::new();
    let mut sign_rates = Vec::new();
    for &algorithm in algorithms {
        let target = bench::Target::start_with(&exe, algorithm)?;
        println!(
            "beacon bench publish: {size}-byte signed bulletins, {algorithm} certificates, node at {} (child process, mutual TLS 1.3, fsync per batch), {} cores",
            target.addr,
            cores
        );
        let mut first = 0;
        // Warm up: connections, the chain cache, the store's first pages.
        let _ = bench::closed_loop(&target, 4, 400, size, first).await?;
        first += 4;
        for &n in concurrency {
            let n = n.max(1);
            let total = if n == 1 { (count / 10).max(100) } else { count };
            for &api in apis {
                let (mut fig, sign_rate) =
                    bench::closed_loop_with(&target, api, n, total, size, first).await?;
                first += n;
                sign_rates.push((algorithm, sign_rate));
                if algorithms.len() > 1 {
                    fig.label = format!("{algorithm}: {}", fig.label);
                }
                rows.push(fig);
            }
            if n == 1 {
                let mut fig = bench::get_loop(&target, total, size, first).await?;
                first += 1;
                if algorithms.len() > 1 {
                    fig.label = format!("{algorithm}: {}", fig.label);
                }
                rows.push(fig);
            }
        }
        if rate > 0 {
            let total = (rate as usize * 5).max(100);
            let mut fig = bench::open_loop(&target, 16, rate, total, size, first).await?;
            if algorithms.len() > 1 {
                fig.label = format!("{algorithm}: {}", fig.label);
            }
            rows.push(fig);
        }
    }
    bench::print_table(&rows);
    for &algorithm in algorithms {
        let best = sign_rates
            .iter()
            .filter(|(a, _)| *a == algorithm)
            .map(|(_, r)| *r)
            .fold(0.0, f64::max);
        println!(
            "client-side signing with {algorithm} (before the clock): about {best:.0} envelopes/s on one core"
        );
    }
    Ok(())
}

/// The `beacon` binary the benchmarks start as a node, and this host's cores.
async fn bench_retention(
    count: usize,
    background: usize,
    replay: usize,
    publishes: usize,
    size: usize,
) -> Result<()> {
    use beacon::store::{backup, retention, Store, StoreOptions};
    use beacon::tools::bench;
    use std::time::{Duration, Instant, SystemTime};
    let (exe, cores) = bench_host()?;
    println!("beacon bench retention: {size}-byte signed bulletins, {cores} cores");
    println!("| workload | figure |");
    println!("|---|---|");
    // 1. Disk space: a store of `count` expired bulletins, pruned, compacted.
    if count > 0 {
        let target = bench::Target::prepare()?;
        let expires = SystemTime::now() + Duration::from_secs(2);
        let load = target
            .bulk_load_expiring(count, size, Some(expires))
            .await?;
        println!(
            "| bulk load of {count} bulletins that expire | {:.0}/s |",
            count as f64 / load.as_secs_f64()
        );
        let dir = target.dir.join("store");
        let before = backup::size_of(&dir.join("sled"));
        if let Ok(wait) = expires.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        let store = Store::open(&dir, StoreOptions::defaults(beacon::interop::stix::SPANS))?;
        let rules = retention::Retention::from_config(&beacon::base::config::RetentionConfig {
            after_expiry: Some(Duration::ZERO),
            ..Default::default()
        })
        .map_err(anyhow::Error::msg)?;
        let mut pruner = retention::Pruner::new();
        let t0 = Instant::now();
        let mut pruned = 0u64;
        loop {
            let due = pruner.due(&store, &rules, SystemTime::now())?;
            if due.is_empty() {
                break;
            }
            pruned += store.prune(due).await?;
        }
        let took = t0.elapsed().as_secs_f64();
        drop(store);
        println!(
            "| pruning {pruned} (batches of {}, one fsync each) | {:.0}/s ({took:.1} s) |",
            rules.batch,
            pruned as f64 / took
        );
        let after_prune = backup::size_of(&dir.join("sled"));
        let t0 = Instant::now();
        let c = tokio::task::spawn_blocking(move || {
            backup::compact(&dir, &StoreOptions::defaults(beacon::interop::stix::SPANS))
        })
        .await??;
        println!(
            "| store size: {count} stored / all pruned / after `beacon admin compact` ({:.1} s) | {:.0} MB / {:.0} MB / {:.1} MB |",
            t0.elapsed().as_secs_f64(),
            before as f64 / 1e6,
            after_prune as f64 / 1e6,
            c.after as f64 / 1e6
        );
    }
    // 2. Speed while retention prunes in the background, against the same
    //    node before pruning starts and after it ends.
    if background > 0 {
        let mut target = bench::Target::prepare()?;
        let expires = SystemTime::now() + Duration::from_secs(2);
        target
            .bulk_load_expiring(background, size, Some(expires))
            .await?;
        target.bulk_load(replay, size).await?;
        let from = background as u64 + 1;
        // Pruning starts a fixed time after the load: time for the first run.
        let start_in = Duration::from_secs(20);
        let after_expiry = expires
            .elapsed()
            .unwrap_or_default()
            .saturating_add(start_in);
        target.add_config(&format!(
            "\n[retention]\nafter_expiry = \"{}ms\"\ninterval = \"100ms\"\n",
            after_expiry.as_millis()
        ))?;
        let launched = Instant::now();
        target.launch(&exe)?;
        target.wait_serving().await?;
        let mut admin = target.admin().await?;
        let mut rows = Vec::new();
        let mut published = 0u64;
        let mut first = 0;
        for phase in ["before pruning", "while pruning", "after pruning"] {
            match phase {
                "while pruning" => {
                    // Wait until retention is at work.
                    while pruned_so_far(&mut admin).await? == 0 {
                        if launched.elapsed() > start_in + Duration::from_secs(60) {
                            anyhow::bail!("retention never started");
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                "after pruning" => {
                    while pruned_so_far(&mut admin).await? < background as u64 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                _ => {}
            }
            let p0 = pruned_so_far(&mut admin).await?;
            let (fig, _) =
                bench::closed_loop_with(&target, bench::Api::Stream, 16, publishes, size, first)
                    .await?;
            first += 16;
            published += fig.count as u64;
            let (n, secs) =
                bench::replay_from(&target, from, replay as u64 + published, first).await?;
            first += 1;
            let p1 = pruned_so_far(&mut admin).await?;
            rows.push((phase, fig.rate(), n, n as f64 / secs, p1 - p0));
            if phase == "before pruning" && p1 > 0 {
                anyhow::bail!("pruning started during the first run; raise the delay");
            }
        }
        for (phase, publish, n, replay_rate, pruned) in &rows {
            println!(
                "| {phase}: publishes/s (16 publishers, PublishStream) / replay/s of {n} / pruned meanwhile | {publish:.0} / {replay_rate:.0} / {pruned} |"
            );
        }
        let (_, base_p, _, base_r, _) = rows[0];
        let (_, mid_p, _, mid_r, _) = rows[1];
        let (_, end_p, _, end_r, _) = rows[2];
        println!(
            "| while pruning ÷ before (same store) / ÷ after (expired ones gone): publishes, replay | {:.2} / {:.2}, {:.2} / {:.2} |",
            mid_p / base_p,
            mid_p / end_p,
            mid_r / base_r,
            mid_r / end_r
        );
    }
    Ok(())
}

async fn bench_taxii(count: usize, limit: usize, size: usize) -> Result<()> {
    use beacon::tools::bench;
    let (exe, cores) = bench_host()?;
    let mut target = bench::Target::prepare()?;
    let taxii = bench::free_port()?;
    target.add_config(&format!(
        "\n[taxii]\nlisten = \"{taxii}\"\nmax_page = 10000\n"
    ))?;
    target.bulk_load(count, size).await?;
    target.launch(&exe)?;
    target.wait_serving().await?;
    println!("beacon bench taxii: {count} bulletins of {size} bytes, pages of {limit}, node as a child process, {cores} cores");
    println!("| run | objects/s over TAXII (HTTPS, HTTP/1.1) | slowest TAXII page | bulletins/s over gRPC List | slowest List page |");
    println!("|---|---:|---:|---:|---:|");
    for run in 1..=2 {
        let (objects, pages, secs, slowest) =
            bench::taxii_walk(&target, taxii, limit, 10 * run).await?;
        let (n, lsecs, lslowest) = bench::list_walk(&target, limit as u32, 10 * run + 1).await?;
        println!(
            "| {run} | {:.0} ({objects} in {pages} pages, {secs:.1} s) | {slowest:.1} ms | {:.0} ({n} in {lsecs:.1} s) | {lslowest:.1} ms |",
            objects as f64 / secs,
            n as f64 / lsecs
        );
    }
    Ok(())
}

async fn bench_restart(stored: &[usize], tail: usize, size: usize) -> Result<()> {
    use beacon::tools::bench;
    let (exe, cores) = bench_host()?;
    println!("beacon bench restart: bulletins of {size} bytes, {tail} published just before the SIGKILL, node as a child process, {cores} cores");
    println!("| stored | bulk load | restart after SIGKILL until serving | frames applied again | store on disk |");
    println!("|---:|---:|---:|---:|---:|");
    for &n in stored {
        let mut target = bench::Target::prepare()?;
        let load = target.bulk_load(n, size).await?;
        target.launch(&exe)?;
        target.wait_serving().await?;
        // Publishing right up to the kill: the log has a tail past its
        // last checkpoint, as after a crash under load.
        bench::closed_loop(&target, 16, tail, size, n + 1).await?;
        let restart = target.kill_and_restart(&exe).await?;
        let mut admin = target.admin().await?;
        let status = admin
            .status(pb::StatusRequest::default())
            .await
            .map_err(beacon::net::client::ClientError::from)?
            .into_inner();
        let store = status.store.unwrap_or_default();
        println!(
            "| {n} | {:.1} s | {:.3} s | {} | {:.0} MiB |",
            load.as_secs_f64(),
            restart.as_secs_f64(),
            store.repaired_frames,
            store.size_bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

async fn pruned_so_far(admin: &mut beacon::net::client::AdminClient) -> Result<u64> {
    Ok(admin
        .status(pb::StatusRequest::default())
        .await
        .map_err(beacon::net::client::ClientError::from)?
        .into_inner()
        .store
        .map(|s| s.pruned)
        .unwrap_or(0))
}

fn bench_host() -> Result<(PathBuf, usize)> {
    let exe = std::env::current_exe().context("cannot find the beacon binary")?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Ok((exe, cores))
}

async fn bench_federation(
    catch_up: usize,
    relay: usize,
    samples: usize,
    size: usize,
) -> Result<()> {
    use beacon::tools::bench::{self, Target};
    use std::time::{Duration, Instant};
    let (exe, cores) = bench_host()?;
    // A chain: B pulls from A, C pulls from B; three members, one alliance CA.
    let mut a = Target::prepare_node(None, "a.bench", "a", &[])?;
    let mut b = Target::prepare_node(Some(&a), "b.bench", "b", &[(a.addr, a.identity.clone())])?;
    let mut c = Target::prepare_node(Some(&a), "c.bench", "c", &[(b.addr, b.identity.clone())])?;
    println!("beacon bench federation: {size}-byte signed bulletins, three nodes as child processes in a chain A → B → C (mutual TLS 1.3, every relay verified and fsynced), {cores} cores shared by the nodes and the load generator");
    println!("| workload | figure |");
    println!("|---|---|");
    let stored = catch_up as u64;
    if catch_up > 0 {
        a.bulk_load(catch_up, size).await?;
    }
    a.launch(&exe)?;
    a.wait_serving().await?;
    let t0 = Instant::now();
    b.launch(&exe)?;
    c.launch(&exe)?;
    let mut admin_b = b.admin().await?;
    let mut admin_c = c.admin().await?;
    if catch_up > 0 {
        let limit = Duration::from_secs(900);
        let b_done = bench::wait_head(&mut admin_b, stored, limit).await?;
        let c_done = bench::wait_head(&mut admin_c, stored, limit).await?;
        let rate = |t: Instant| stored as f64 / t.duration_since(t0).as_secs_f64();
        println!(
            "| catch-up of {stored} published while B and C were down: B (one hop) / C (two hops, behind B) | {:.0}/s ({:.1} s) / {:.0}/s ({:.1} s) |",
            rate(b_done),
            b_done.duration_since(t0).as_secs_f64(),
            rate(c_done),
            c_done.duration_since(t0).as_secs_f64()
        );
    }
    if relay > 0 {
        let watch = tokio::spawn(async move {
            bench::wait_head(
                &mut admin_c,
                // closed_loop gives every publisher the same share, rounded up.
                stored + (relay.div_ceil(64) * 64) as u64,
                Duration::from_secs(900),
            )
            .await
        });
        let (fig, _) = bench::closed_loop(&a, 64, relay, size, 1000).await?;
        let published_at = Instant::now();
        let started = published_at - Duration::from_secs_f64(fig.seconds);
        let c_done = watch.await.context("watcher")??;
        println!(
            "| relay: 64 publishers at A, {} publishes; A acknowledged / C holds all | {:.0}/s / {:.0}/s end to end (C done {:.2} s after the last ack) |",
            fig.count,
            fig.rate(),
            fig.count as f64 / c_done.duration_since(started).as_secs_f64(),
            c_done.saturating_duration_since(published_at).as_secs_f64()
        );
    }
    if samples > 0 {
        let fig = bench::convergence(&a, &c, samples, size, 2000).await?;
        println!(
            "| convergence A → C (two relays), one bulletin at a time, {} samples | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
            fig.count,
            fig.p50_us as f64 / 1000.0,
            fig.p99_us as f64 / 1000.0,
            fig.max_us as f64 / 1000.0
        );
    }
    Ok(())
}

async fn bench_subscribe(runs: SubscribeRuns) -> Result<()> {
    use beacon::tools::bench;
    let SubscribeRuns {
        replay,
        replays,
        fan_out,
        publishes,
        subscriptions,
        size,
    } = runs;
    let (exe, cores) = bench_host()?;
    println!("beacon bench subscribe: {size}-byte signed bulletins, node as a child process, mutual TLS 1.3, {cores} cores");
    println!("| workload | figure |");
    println!("|---|---|");
    if replay > 0 {
        let mut target = bench::Target::prepare()?;
        let load = target.bulk_load(replay, size).await?;
        println!(
            "| bulk load of {replay} bulletins (store group commit, no network) | {:.0}/s |",
            replay as f64 / load.as_secs_f64()
        );
        let t0 = std::time::Instant::now();
        target.launch(&exe)?;
        target.wait_serving().await?;
        println!(
            "| node start with {replay} stored, until it serves | {:.2} s |",
            t0.elapsed().as_secs_f64()
        );
        for run in 1..=replays.max(1) {
            let (n, secs) = bench::replay(&target, replay as u64, run).await?;
            println!(
                "| replay of {n} to a reconnecting subscriber (run {run}) | {:.0}/s ({secs:.1} s) |",
                n as f64 / secs
            );
        }
        println!(
            "| daemon RSS after the replay | {:.0} MB |",
            target.rss().unwrap_or(0) as f64 / 1e6
        );
    }
    if fan_out > 0 {
        let target = bench::Target::start(&exe)?;
        let (n, secs) = bench::fan_out(&target, fan_out, publishes, size, 0).await?;
        println!("| fan-out, 1 publisher (16 in flight) → {fan_out} subscribers, {publishes} publishes | {:.0} deliveries/s ({n} in {secs:.1} s) |", n as f64 / secs);
    }
    if subscriptions > 0 {
        let target = bench::Target::start(&exe)?;
        let (base, open, after) = bench::memory(&target, subscriptions, 10_000, size, 0).await?;
        println!(
            "| daemon RSS: idle / {subscriptions} open + 1 stalled / after 10,000 more publishes | {:.0} / {:.0} / {:.0} MB |",
            base as f64 / 1e6,
            open as f64 / 1e6,
            after as f64 / 1e6
        );
    }
    Ok(())
}

fn print_dev_banner(l: &beacon::tools::dev::DevLayout, addr: SocketAddr) {
    let p = |p: &Path| p.display().to_string();
    println!("Beacon dev node (throwaway PKI in {})", p(&l.data_dir));
    if l.ed25519 {
        println!(
            "  note: this dev PKI is Ed25519 (made by an earlier version), which grpcio and the other \
             gRPC C-core clients cannot use; remove {} to start afresh with ECDSA P-256",
            p(&l.data_dir)
        );
    }
    println!("  listening on {addr} (mutual TLS 1.3)");
    println!("  connect as a client of member drc:");
    println!("    export BEACON_NODE={addr}");
    println!("    export BEACON_CA={}", p(&l.ca_cert));
    println!("    export BEACON_CERT={}", p(&l.client_cert));
    println!("    export BEACON_KEY={}", p(&l.client_key));
    println!(
        "  as the operator: BEACON_CERT={} BEACON_KEY={} beacon status",
        p(&l.operator_cert),
        p(&l.operator_key)
    );
    println!("  Ctrl-C stops the node; rerunning reuses the data directory.");
}

async fn run_daemon(config: Config) -> Result<()> {
    let listener = TcpListener::bind(config.node.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.node.listen))?;
    serve(config, listener).await
}

async fn serve(config: Config, listener: TcpListener) -> Result<()> {
    let shutdown = CancellationToken::new();
    let reload = Arc::new(tokio::sync::Notify::new());
    {
        let shutdown = shutdown.clone();
        let reload = reload.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        // Registered before the task first runs (a `ctrl_c()` future only
        // registers when polled).
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    // Cancel first, then say so: nothing may stand between
                    // a signal and the drain.
                    _ = int.recv() => { shutdown.cancel(); tracing::info!("SIGINT: shutting down"); return; }
                    _ = term.recv() => { shutdown.cancel(); tracing::info!("SIGTERM: shutting down"); return; }
                    _ = hup.recv() => { tracing::info!("SIGHUP: reloading certificates and CRLs"); reload.notify_one(); }
                }
            }
        });
    }
    beacon::node::serve::run_with_reload(config, listener, shutdown, reload).await?;
    Ok(())
}

fn print_status(s: &pb::StatusResponse, json: bool) {
    if json {
        let v = serde_json::json!({
            "node": s.node,
            "version": s.version,
            "head": s.head,
            "connections": s.connections,
            "revoked_certificates": s.revoked_certificates,
            "certificate_serial": s.certificate_serial,
            "certificate_expires_at": s.certificate_expires_at.as_ref().map(|t| t.seconds),
            "log_id": s.store.as_ref().map(|x| x.log_id.clone()).unwrap_or_default(),
            "subscriptions_total": s.subscriptions_total,
            "subscriptions": s.subscriptions.iter().map(|x| serde_json::json!({
                "identity": x.identity, "name": x.name, "durable": x.durable,
                "connected": x.connected, "cursor": x.cursor, "lag": x.lag,
            })).collect::<Vec<_>>(),
            "peers": s.peers.iter().map(|p| serde_json::json!({
                "address": p.address, "identity": p.expected_identity, "connected": p.connected,
                "cursor": p.cursor, "lag": p.lag, "last_error": p.last_error,
                "stored": p.stored, "duplicates": p.duplicates, "refused": p.refused,
                "log_id": p.log_id, "log_changes": p.log_changes, "last_log_change": p.last_log_change,
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
        return;
    }
    println!("node:        {}", s.node);
    println!("version:     {}", s.version);
    println!("head:        {}", s.head);
    println!("connections: {}", s.connections);
    println!("revoked:     {}", s.revoked_certificates);
    if let Some(t) = &s.certificate_expires_at {
        let left = t.seconds
            - std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
        let at = std::time::SystemTime::try_from(*t)
            .map(beacon::interop::document::rfc3339)
            .unwrap_or_default();
        let days = left / 86_400;
        println!(
            "certificate: serial {}, expires {at} ({})",
            s.certificate_serial,
            if left < 0 {
                "EXPIRED".to_owned()
            } else if days < 14 {
                format!("in {days} days: renew it now")
            } else {
                format!("in {days} days")
            }
        );
    }
    if let Some(store) = &s.store {
        match &store.forked_from {
            Some(f) => println!(
                "log:         {} (restored from a backup of log {} at {})",
                store.log_id, f.log_id, f.size
            ),
            None => println!("log:         {}", store.log_id),
        }
        if store.repaired_frames > 0 {
            println!(
                "repaired:    {} frames of the write-ahead log applied again at start (after an unclean stop)",
                store.repaired_frames
            );
        }
    }
    if s.subscriptions_total > s.subscriptions.len() as u64 {
        println!(
            "subscriptions: {} (the first {}; beacon admin subscriptions list shows all)",
            s.subscriptions_total,
            s.subscriptions.len()
        );
    } else {
        println!("subscriptions: {}", s.subscriptions.len());
    }
    for x in &s.subscriptions {
        println!(
            "  {} {:?} cursor={} lag={} connected={}",
            x.identity, x.name, x.cursor, x.lag, x.connected
        );
    }
    println!("peers: {}", s.peers.len());
    for p in &s.peers {
        println!(
            "  {} {} connected={} cursor={} lag={} stored={} duplicates={} refused={} {}",
            p.address,
            p.expected_identity,
            p.connected,
            p.cursor,
            p.lag,
            p.stored,
            p.duplicates,
            p.refused,
            p.last_error
        );
        if !p.last_log_change.is_empty() {
            println!(
                "    log changed {} time(s): {}",
                p.log_changes, p.last_log_change
            );
        }
    }
}

fn run_ca(cmd: CaCommand) -> Result<()> {
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
            let (cert_path, key_path) = out_paths(&out);
            for p in [&cert_path, &key_path] {
                if p.exists() && !force {
                    bail!("{} already exists (use --force to overwrite)", p.display());
                }
            }
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
            let (cert_path, key_path) = out_paths(&out);
            for p in [&cert_path, &key_path] {
                if p.exists() && !force {
                    bail!("{} already exists (use --force to overwrite)", p.display());
                }
            }
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
        CaCommand::List { dir, json } => {
            let ca = Ca::open(&dir)?;
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
        CaCommand::Inspect { file } => {
            print!("{}", pki::inspect(&file)?);
            Ok(())
        }
    }
}

fn out_paths(out: &Path) -> (PathBuf, PathBuf) {
    let s = out.as_os_str().to_string_lossy().into_owned();
    (
        PathBuf::from(format!("{s}.pem")),
        PathBuf::from(format!("{s}.key")),
    )
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
