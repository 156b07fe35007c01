//! `beacon bench`: benchmarks against a node this command starts.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use super::AlgArg;
use beacon::base::proto::v1 as pb;
use beacon::tools::pki::Algorithm;

#[derive(Subcommand, Debug)]
pub(super) enum BenchCommand {
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
        /// First, the same catch-up with B alone (C not started), so B's
        /// checks have the machine's cores to themselves.
        #[arg(long)]
        one_hop: bool,
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
    /// The store's engines side by side: publish at 1/16/64 publishers
    /// (PublishStream) and replay of a bulk-loaded log, on the embedded
    /// engine and on PostgreSQL (the database given), alternated in one run.
    Engines {
        /// The PostgreSQL to run on (each node gets a schema of its own).
        #[arg(long)]
        postgres: String,
        /// Publishers of the closed-loop runs.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        concurrency: Vec<usize>,
        /// Publishes per closed-loop run (1 publisher runs a tenth of it).
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Rounds of the comparison, alternated.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Bulletins loaded and replayed to a new subscriber (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        replay: usize,
        /// Serialized bulletin size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// Replay to a reconnecting subscriber, fan-out, and memory of many subscriptions.
    Subscribe(SubscribeRuns),
    /// Transparency: publish throughput with checkpoints every 100 ms against
    /// a node that signs none (runs alternated, same binary, same run),
    /// inclusion proofs served, and the store (with its tree) opened at size.
    Transparency {
        /// Publishes per closed-loop run (1 publisher runs a tenth of it).
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Rounds of the with/without comparison, alternated.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Bulletins stored for the proof and open runs.
        #[arg(long, default_value_t = 1_000_000)]
        stored: usize,
        /// Inclusion proofs asked for (16 clients).
        #[arg(long, default_value_t = 100_000)]
        proofs: usize,
        /// `[store] cache_mb` of the node that serves the proofs (and of
        /// the in-process measure); the node's default is 16.
        #[arg(long, default_value_t = 16)]
        cache_mb: u64,
        /// Serialized bulletin size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// Sealed TLP:RED against signed TLP:RED: node publish at 1, 16 and 64
    /// publishers (alternated, one node), and on the client, seals and
    /// opens per second on one core and the sealed size.
    Sealed {
        /// Publishes per closed-loop run (1 publisher runs a tenth of it).
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Rounds of the comparison, alternated.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Recipient keys each published bulletin is sealed to.
        #[arg(long, default_value_t = 3)]
        recipients: usize,
        /// Serialized bulletin size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
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
pub(super) struct SubscribeRuns {
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
    /// `[store] cache_mb` of the replay runs; with several (comma-separated),
    /// the node is restarted on the same store with each in turn and its
    /// memory reported for each.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    cache_mb: Vec<u64>,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub(super) enum ApiArg {
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

/// Runs one benchmark.
pub(super) async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Publish {
            concurrency,
            count,
            size,
            rate,
            api,
            algorithms,
        } => {
            let algorithms: Vec<Algorithm> = algorithms.into_iter().map(Into::into).collect();
            bench_publish(&concurrency, count, size, rate, api.apis(), &algorithms).await
        }
        BenchCommand::Sync { dir, count, size } => {
            let rows = tokio::task::spawn_blocking(move || {
                beacon::tools::bench::sync::run(&dir, count.max(1), size.max(1))
            })
            .await??;
            beacon::tools::bench::sync::print(&rows, size);
            Ok(())
        }
        BenchCommand::Subscribe(runs) => bench_subscribe(runs).await,
        BenchCommand::Engines {
            postgres,
            concurrency,
            count,
            rounds,
            replay,
            size,
        } => bench_engines(&postgres, &concurrency, count, rounds, replay, size).await,
        BenchCommand::Transparency {
            count,
            rounds,
            stored,
            proofs,
            cache_mb,
            size,
        } => bench_transparency(count, rounds, stored, proofs, cache_mb, size).await,
        BenchCommand::Sealed {
            count,
            rounds,
            recipients,
            size,
        } => bench_sealed(count, rounds, recipients, size).await,
        BenchCommand::Retention {
            count,
            background,
            replay,
            publishes,
            size,
        } => bench_retention(count, background, replay, publishes, size).await,
        BenchCommand::Restart { stored, tail, size } => bench_restart(&stored, tail, size).await,
        BenchCommand::Taxii { count, limit, size } => bench_taxii(count, limit, size).await,
        BenchCommand::Federation {
            catch_up,
            relay,
            samples,
            size,
            one_hop,
        } => bench_federation(catch_up, relay, samples, size, one_hop).await,
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
    let mut node_cpu = Vec::new();
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
                let cpu0 = target.cpu_seconds().unwrap_or(0.0);
                let (mut fig, sign_rate) =
                    bench::closed_loop_with(&target, api, n, total, size, first).await?;
                // The node is idle while the envelopes are signed (before
                // the clock): its CPU time over the run is the run's.
                let cpu = target.cpu_seconds().unwrap_or(0.0) - cpu0;
                node_cpu.push((
                    format!("{algorithm}: {}", fig.label),
                    cpu / fig.count.max(1) as f64 * 1e6,
                    cpu / fig.seconds.max(1e-9),
                ));
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
    println!();
    println!("| closed-loop run | node CPU per publish | node's cores busy (of {cores}) |");
    println!("|---|---:|---:|");
    for (label, per, busy) in &node_cpu {
        println!("| {label} | {per:.0} µs | {busy:.2} |");
    }
    println!();
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
    let (exe, cores) = bench_host()?;
    println!("beacon bench retention: {size}-byte signed bulletins, {cores} cores");
    println!("| workload | figure |");
    println!("|---|---|");
    // 1. Disk space: a store of `count` expired bulletins, pruned, compacted.
    if count > 0 {
        retention_disk_space(count, size).await?;
    }
    // 2. Speed while retention prunes in the background, against the same
    //    node before pruning starts and after it ends.
    if background > 0 {
        retention_while_serving(&exe, background, replay, publishes, size).await?;
    }
    Ok(())
}

/// A store of `count` expired bulletins: load, prune, compact; the rates
/// and the disk space at each step.
async fn retention_disk_space(count: usize, size: usize) -> Result<()> {
    use beacon::store::{backup, retention, Store, StoreOptions};
    use beacon::tools::bench;
    use std::time::{Duration, Instant, SystemTime};
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
    Ok(())
}

/// Publish and replay speed on one node before, while and after
/// retention prunes `background` expired bulletins.
async fn retention_while_serving(
    exe: &std::path::Path,
    background: usize,
    replay: usize,
    publishes: usize,
    size: usize,
) -> Result<()> {
    use beacon::tools::bench;
    use std::time::{Duration, Instant, SystemTime};
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
    target.launch(exe)?;
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
        let (n, secs) = bench::replay_from(&target, from, replay as u64 + published, first).await?;
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

async fn bench_engines(
    url: &str,
    concurrency: &[usize],
    count: usize,
    rounds: usize,
    replay: usize,
    size: usize,
) -> Result<()> {
    use beacon::tools::bench;
    let (exe, cores) = bench_host()?;
    println!(
        "beacon bench engines: {size}-byte signed bulletins, nodes as child processes (PublishStream), sled against PostgreSQL at {}, {cores} cores",
        url.split('@').next_back().unwrap_or(url)
    );
    // A node on PostgreSQL: a schema of its own.
    let postgres = |t: &bench::Target| -> Result<()> {
        let schema = format!("bench_{:016x}", rand::random::<u64>());
        t.add_config(&format!(
            "\n[store]\nengine = \"postgres\"\n\n[store.postgres]\nurl = {url:?}\nschema = {schema:?}\n"
        ))?;
        Ok(())
    };
    let start = |pg: bool| -> Result<bench::Target> {
        let mut t = bench::Target::prepare()?;
        if pg {
            postgres(&t)?;
        }
        t.launch(&exe)?;
        Ok(t)
    };
    let sled = start(false)?;
    let pg = start(true)?;
    sled.wait_serving().await?;
    pg.wait_serving().await?;
    let mut first = 0;
    for t in [&sled, &pg] {
        let _ = bench::closed_loop(t, 4, 400, size, first).await?;
    }
    first += 4;
    println!("| publishers | sled | PostgreSQL | PostgreSQL / sled |");
    println!("|---:|---:|---:|---:|");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let list = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for &n in concurrency {
        let n = n.max(1);
        let total = if n == 1 { (count / 10).max(100) } else { count };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..rounds.max(1) {
            let order: [(&bench::Target, bool); 2] = if round % 2 == 0 {
                [(&sled, false), (&pg, true)]
            } else {
                [(&pg, true), (&sled, false)]
            };
            for (t, is_pg) in order {
                let (fig, _) =
                    bench::closed_loop_with(t, bench::Api::Stream, n, total, size, first).await?;
                first += n;
                match is_pg {
                    true => b.push(fig.rate()),
                    false => a.push(fig.rate()),
                }
            }
        }
        println!(
            "| {n} | {:.0}/s ({}) | {:.0}/s ({}) | {:.2}× |",
            mean(&a),
            list(&a),
            mean(&b),
            list(&b),
            mean(&b) / mean(&a).max(1e-9)
        );
    }
    println!(
        "| daemon RSS after the publish runs | {:.0} MB | {:.0} MB | |",
        sled.rss().unwrap_or(0) as f64 / 1e6,
        pg.rss().unwrap_or(0) as f64 / 1e6
    );
    drop(sled);
    drop(pg);
    if replay > 0 {
        println!("| {replay} stored | sled | PostgreSQL | PostgreSQL / sled |");
        println!("|---|---:|---:|---:|");
        let mut loads = Vec::new();
        let mut replays = Vec::new();
        let mut rss = Vec::new();
        for is_pg in [false, true] {
            let mut t = bench::Target::prepare()?;
            if is_pg {
                postgres(&t)?;
            }
            let load = t.bulk_load(replay, size).await?;
            loads.push(replay as f64 / load.as_secs_f64());
            t.launch(&exe)?;
            t.wait_serving().await?;
            let (n, secs) = bench::replay(&t, replay as u64, 1).await?;
            replays.push(n as f64 / secs);
            rss.push(t.rss().unwrap_or(0) as f64 / 1e6);
        }
        println!(
            "| bulk load (store group commit, no network) | {:.0}/s | {:.0}/s | {:.2}× |",
            loads[0],
            loads[1],
            loads[1] / loads[0].max(1e-9)
        );
        println!(
            "| replay to a new durable subscriber | {:.0}/s | {:.0}/s | {:.2}× |",
            replays[0],
            replays[1],
            replays[1] / replays[0].max(1e-9)
        );
        println!(
            "| daemon RSS after the replay | {:.0} MB | {:.0} MB | {:.2}× |",
            rss[0],
            rss[1],
            rss[1] / rss[0].max(1e-9)
        );
    }
    Ok(())
}

async fn bench_sealed(count: usize, rounds: usize, recipients: usize, size: usize) -> Result<()> {
    use beacon::tools::bench;
    let (exe, cores) = bench_host()?;
    let target = bench::Target::start(&exe)?;
    target.wait_serving().await?;
    println!(
        "beacon bench sealed: {size}-byte TLP:RED bulletins, signed or sealed to {recipients} P-256 keys, node at {} (child process), {cores} cores",
        target.addr
    );
    let mut first = 0;
    for sealed in [false, true] {
        let _ = bench::red_closed_loop(&target, 4, 400, size, first, sealed, recipients).await?;
        first += 4;
    }
    println!("| publishers | signed | sealed | sealed/signed |");
    println!("|---:|---:|---:|---:|");
    for n in [1usize, 16, 64] {
        let total = if n == 1 { (count / 10).max(100) } else { count };
        let (mut signed, mut sealed) = (Vec::new(), Vec::new());
        for round in 0..rounds.max(1) {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for is_sealed in order {
                let fig =
                    bench::red_closed_loop(&target, n, total, size, first, is_sealed, recipients)
                        .await?;
                first += n;
                if fig.errors > 0 {
                    println!("({} errors in a {} run)", fig.errors, fig.label);
                }
                match is_sealed {
                    true => sealed.push(fig.rate()),
                    false => signed.push(fig.rate()),
                }
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let show = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {n} | {:.0}/s ({}) | {:.0}/s ({}) | {:.2}× |",
            mean(&signed),
            show(&signed),
            mean(&sealed),
            show(&sealed),
            mean(&sealed) / mean(&signed).max(1e-9)
        );
    }
    // On the client, one core (this process, one thread).
    let settings = target.client(first)?;
    let dialer = beacon::net::client::Dialer::load(&settings)?;
    let signer = beacon::domain::bulletin::Signer::new(
        dialer.own.chain.clone(),
        dialer.own.key.secret_der(),
    )?;
    let member = format!("m{first}.bench");
    println!();
    println!("| recipients | seals/s | opens/s | signed size | sealed size |");
    println!("|---:|---:|---:|---:|---:|");
    let mut sizes = Vec::new();
    for r in [1usize, 3, 20] {
        let (seal, open, plain, sealed) = bench::seal_figures(
            &signer,
            &*dialer.bundle,
            &member,
            r,
            size,
            if r >= 20 { 500 } else { 2000 },
        )?;
        sizes.push((r, sealed));
        println!(
            "| {r} | {seal:.0} | {open:.0} | {plain} B | {sealed} B (+{}) |",
            sealed - plain
        );
    }
    let per = (sizes[2].1 as f64 - sizes[1].1 as f64) / 17.0;
    println!("per recipient key: {per:.0} B");
    Ok(())
}

async fn bench_transparency(
    count: usize,
    rounds: usize,
    stored: usize,
    proofs: usize,
    cache_mb: u64,
    size: usize,
) -> Result<()> {
    use beacon::tools::bench;
    use std::time::Instant;
    let (exe, cores) = bench_host()?;
    println!("beacon bench transparency: {size}-byte signed bulletins, nodes as child processes, {cores} cores");
    // 1. Publish with checkpoints every 100 ms, and with none signed (the
    //    tree is kept either way: it is written with the records).
    let start = |config: &str| -> Result<bench::Target> {
        let mut t = bench::Target::prepare()?;
        t.add_config(config)?;
        t.launch(&exe)?;
        Ok(t)
    };
    let with = start("\n[transparency]\ncheckpoint_interval_ms = 100\n")?;
    let without = start(
        "\n[transparency]\ncheckpoint_interval_ms = 86400000\ncheckpoint_entries = 9223372036854775807\n",
    )?;
    with.wait_serving().await?;
    without.wait_serving().await?;
    let mut first = 0;
    for t in [&with, &without] {
        let _ = bench::closed_loop(t, 4, 400, size, first).await?;
    }
    first += 4;
    println!("| publishers | with checkpoints every 100 ms | without | ratio |");
    println!("|---:|---:|---:|---:|");
    for n in [1usize, 16, 64] {
        let total = if n == 1 { (count / 10).max(100) } else { count };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..rounds.max(1) {
            // Alternate which goes first.
            let order: [(&bench::Target, bool); 2] = if round % 2 == 0 {
                [(&with, true), (&without, false)]
            } else {
                [(&without, false), (&with, true)]
            };
            for (t, is_with) in order {
                let (fig, _) = bench::closed_loop(t, n, total, size, first).await?;
                first += n;
                if is_with {
                    a.push(fig.rate())
                } else {
                    b.push(fig.rate())
                }
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!(
            "| {n} | {:.0}/s ({}) | {:.0}/s ({}) | {:.2}× |",
            mean(&a),
            a.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            mean(&b),
            b.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            mean(&a) / mean(&b).max(1e-9)
        );
    }
    let mut admin = with.admin().await?;
    let t = admin
        .status(pb::StatusRequest::default())
        .await
        .map_err(beacon::net::client::ClientError::from)?
        .into_inner()
        .transparency
        .unwrap_or_default();
    println!(
        "checkpoints: the node with them signed up to {} entries",
        t.checkpoint_size
    );
    drop(with);
    drop(without);
    if stored == 0 {
        return Ok(());
    }
    // 2. A store of `stored` bulletins (with its tree): opened offline, then
    //    served; inclusion proofs asked of it.
    let mut target = bench::Target::prepare()?;
    let load = target.bulk_load(stored, size).await?;
    let opening = Instant::now();
    let store = beacon::store::Store::open(
        &target.dir.join("store"),
        beacon::store::StoreOptions {
            cache_bytes: cache_mb << 20,
            ..beacon::store::StoreOptions::defaults(beacon::interop::stix::SPANS)
        },
    )?;
    let open = opening.elapsed();
    let head = store.head();
    let t0 = Instant::now();
    let root = store.tree_head(head)?;
    let head_time = t0.elapsed();
    // In process, without the RPC: what a proof and a leaf entry cost.
    let n = 20_000u64;
    let t0 = Instant::now();
    for i in 0..n {
        let seq = 1 + (i.wrapping_mul(2_654_435_761) % head.max(1));
        store.inclusion_proof(seq, head)?;
    }
    let per_proof = t0.elapsed() / n as u32;
    let t0 = Instant::now();
    for i in 0..n {
        let seq = 1 + (i.wrapping_mul(2_654_435_761) % head.max(1));
        store.leaf_entry(seq)?;
    }
    let per_entry = t0.elapsed() / n as u32;
    println!(
        "in process ({cache_mb} MiB cache): an inclusion proof at {head} takes {:.1} µs, a leaf entry {:.1} µs (mean of {n}, random sequences)",
        per_proof.as_secs_f64() * 1e6,
        per_entry.as_secs_f64() * 1e6
    );
    drop(store);
    println!(
        "| {stored} stored | bulk load {:.1} s ({:.0}/s, tree included) | store and tree opened in {:.3} s | tree head of {head} in {:.3} ms ({}) |",
        load.as_secs_f64(),
        stored as f64 / load.as_secs_f64(),
        open.as_secs_f64(),
        head_time.as_secs_f64() * 1000.0,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, root)
    );
    target.add_config(&format!(
        "\n[transparency]\ncheckpoint_interval_ms = 100\n\n[store]\ncache_mb = {cache_mb}\n"
    ))?;
    target.launch(&exe)?;
    target.wait_serving().await?;
    // The first checkpoint covers the whole log.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let mut admin = target.admin().await?;
    loop {
        let size_signed = admin
            .status(pb::StatusRequest::default())
            .await
            .map_err(beacon::net::client::ClientError::from)?
            .into_inner()
            .transparency
            .map_or(0, |t| t.checkpoint_size);
        if size_signed >= head || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The load generator shares this machine's cores with the node: the
    // node's own CPU time says what a proof costs it.
    let cpu = || target.cpu_seconds().unwrap_or(0.0);
    let c0 = cpu();
    let floor = bench::checkpoint_loop(&target, 16, proofs).await?;
    let c1 = cpu();
    let fig = bench::proof_loop(&target, 16, proofs).await?;
    let c2 = cpu();
    let per_cpu = |n: usize, secs: f64| n as f64 / secs.max(1e-9);
    bench::print_table(&[floor, fig]);
    println!(
        "node CPU time: {:.0} checkpoints and {:.0} inclusion proofs served per CPU-second of the node",
        per_cpu(proofs, c1 - c0),
        per_cpu(proofs, c2 - c1)
    );
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
    one_hop: bool,
) -> Result<()> {
    use beacon::tools::bench;
    use std::time::{Duration, Instant};
    let (exe, cores) = bench_host()?;
    let mut chain = bench::Chain::prepare()?;
    println!("beacon bench federation: {size}-byte signed bulletins, three nodes as child processes in a chain A → B → C (mutual TLS 1.3, every relay verified and fsynced), {cores} cores shared by the nodes and the load generator");
    println!("| workload | figure |");
    println!("|---|---|");
    let stored = catch_up as u64;
    if one_hop && catch_up > 0 {
        let mut alone = bench::Chain::prepare()?;
        let b_done = alone.catch_up_one_hop(&exe, catch_up, size).await?;
        println!(
            "| catch-up of {stored} by B alone (C not started) | {:.0}/s ({:.1} s) |",
            stored as f64 / b_done.as_secs_f64(),
            b_done.as_secs_f64()
        );
    }
    let (b_done, c_done) = chain.catch_up(&exe, catch_up, size).await?;
    if catch_up > 0 {
        let rate = |t: Duration| stored as f64 / t.as_secs_f64();
        println!(
            "| catch-up of {stored} published while B and C were down: B (one hop) / C (two hops, behind B) | {:.0}/s ({:.1} s) / {:.0}/s ({:.1} s) |",
            rate(b_done),
            b_done.as_secs_f64(),
            rate(c_done),
            c_done.as_secs_f64()
        );
    }
    let (a, c) = (&chain.a, &chain.c);
    let mut admin_c = c.admin().await?;
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
        let (fig, _) = bench::closed_loop(a, 64, relay, size, 1000).await?;
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
        let fig = bench::convergence(a, c, samples, size, 2000).await?;
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
        cache_mb,
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
        for (i, &mb) in cache_mb.iter().enumerate() {
            if i > 0 {
                target.stop();
            }
            target.set_cache_mb(mb)?;
            let t0 = std::time::Instant::now();
            target.launch(&exe)?;
            target.wait_serving().await?;
            println!(
                "| node start with {replay} stored (cache_mb = {mb}), until it serves | {:.2} s |",
                t0.elapsed().as_secs_f64()
            );
            let idle = target.rss().unwrap_or(0);
            for run in 1..=replays.max(1) {
                let (n, secs) = bench::replay(&target, replay as u64, run).await?;
                println!(
                    "| replay of {n} to a reconnecting subscriber (cache_mb = {mb}, run {run}) | {:.0}/s ({secs:.1} s) |",
                    n as f64 / secs
                );
            }
            println!(
                "| daemon RSS with cache_mb = {mb}: after start / after the replay | {:.0} / {:.0} MB |",
                idle as f64 / 1e6,
                target.rss().unwrap_or(0) as f64 / 1e6
            );
        }
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
