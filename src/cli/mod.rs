//! The `beacon` command line. The only module that uses `anyhow`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod admin;
mod bench;
mod ca;
mod client;
mod keys;
mod log;

use bench::BenchCommand;
use ca::CaCommand;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use beacon::base::config::{Config, LogFormat};
use beacon::base::proto::v1 as pb;
use beacon::net::client::AdminClient;
use beacon::tools::pki::Algorithm;

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
    /// Recipient keys for sealed bulletins: generate, announce, revoke, list.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Check a node's log: signed checkpoints, inclusion, consistency.
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Audit a node's log (as `beacon log audit`): consistent with what you
    /// saw last time, every bulletin you may read in it, its witnesses.
    Audit(log::AuditArgs),
    /// Node status (operators): head, connections, subscriptions, peers.
    Status {
        #[command(flatten)]
        conn: client::ConnArgs,
        #[arg(long)]
        json: bool,
    },
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
        Command::Ca(cmd) => ca::run(cmd),
        Command::Bench(cmd) => {
            init_logging(&LogFormat::Human, Some("warn"));
            bench::run(cmd).await
        }
        Command::Client(cmd) => {
            init_logging(&LogFormat::Human, Some("warn"));
            client::run(cmd).await
        }
        Command::Admin(cmd) => {
            init_logging(&LogFormat::Human, Some("warn"));
            admin::run(cmd).await
        }
        Command::Log(cmd) => {
            init_logging(&LogFormat::Human, Some("warn"));
            log::run(cmd).await
        }
        Command::Keys(cmd) => {
            init_logging(&LogFormat::Human, Some("warn"));
            keys::run(cmd).await
        }
        Command::Audit(args) => {
            init_logging(&LogFormat::Human, Some("warn"));
            log::run(log::LogCommand::Audit(args)).await
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
            "duties_held": s.store.as_ref().map(|x| x.duties_held.clone()).unwrap_or_default(),
            "duties_waiting": s.store.as_ref().map(|x| x.duties_waiting.clone()).unwrap_or_default(),
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
            "transparency": s.transparency.as_ref().map(|t| serde_json::json!({
                "origin": t.origin, "checkpoint_size": t.checkpoint_size, "refused": t.refused,
                "witnessed": t.witnessed.iter().map(|w| serde_json::json!({
                    "peer": w.peer, "origin": w.origin, "size": w.size,
                })).collect::<Vec<_>>(),
                "alarms": t.alarms, "equivocations": t.equivocations,
            })),
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
        if !store.duties_waiting.is_empty() {
            println!(
                "duties:      holds {}; another node of this shared log holds {}",
                match store.duties_held.is_empty() {
                    true => "none".to_owned(),
                    false => store.duties_held.join(", "),
                },
                store.duties_waiting.join(", ")
            );
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
    if let Some(t) = &s.transparency {
        if t.refused.is_empty() {
            println!("checkpoint:  {} entries of {}", t.checkpoint_size, t.origin);
        } else {
            println!("checkpoint:  REFUSED: {}", t.refused);
        }
        for w in &t.witnessed {
            println!(
                "  witnessed {} at {} entries ({})",
                w.peer, w.size, w.origin
            );
        }
        for a in &t.alarms {
            println!("  ALARM: {a}");
        }
        for q in &t.equivocations {
            println!(
                "  EQUIVOCATION: {q} signed two different bulletins under one id (evidence kept)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own checks of every command and argument (names unique, …),
    /// which it otherwise makes only when a command is parsed.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
