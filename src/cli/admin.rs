//! Operator commands on a node's store: backup (over the API, or from a
//! stopped node's data directory), restore (verified, into an empty
//! directory), and durable subscriptions (list, delete, and delete those
//! whose identity has only revoked certificates).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use beacon::base::config::Config;
use beacon::base::proto::v1 as pb;
use beacon::net::client::AdminClient;
use beacon::store::{backup, Store, StoreOptions};

use super::client::ConnArgs;

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Back up a node's store: over the API as an operator (the node keeps
    /// running), or with --data-dir from a stopped node's directory.
    Backup {
        /// The backup file to write (written aside, then moved into place).
        #[arg(long)]
        out: PathBuf,
        /// Read this data directory instead of asking a node (the node must
        /// be stopped: the store is locked while it runs).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Build a node's store from a backup, verifying every record (CRC,
    /// digest, signature chain to the node's CAs) and the manifest. The
    /// target must be absent or empty; nothing is written unless all of it
    /// verifies.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The node's config: its CAs verify the signatures, and its data_dir
        /// is the target unless --data-dir is given.
        #[arg(long, short, env = "BEACON_CONFIG", default_value = "beacon.toml")]
        config: PathBuf,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Restore a backup of another member's node all the same (its log
        /// then serves, as this node, what that member's node could read).
        #[arg(long)]
        force: bool,
    },
    /// Give the space of pruned bulletins back to the filesystem: rewrite a
    /// stopped node's store with only what is live (checked on the way).
    Compact {
        /// The node's data directory (`data_dir` in beacon.toml).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Durable subscriptions of a node.
    #[command(subcommand)]
    Subscriptions(SubscriptionsCommand),
    /// API tokens for TAXII clients that cannot present a certificate
    /// (`[taxii] tokens = true`): HTTP Basic password or Bearer.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Issue a token standing for the client `--name` of `--member`; it is
    /// printed once (the node keeps only its digest).
    Issue {
        #[arg(long)]
        member: String,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Revoke a token (from the next request on).
    Revoke {
        #[arg(long)]
        id: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Every token: id, identity, when issued, whether revoked.
    List {
        #[command(flatten)]
        conn: ConnArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum SubscriptionsCommand {
    /// Every open subscription and stored cursor.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Delete one durable subscription (its stored cursor; an open stream
    /// is ended).
    Delete {
        /// The subscriber's identity (a SPIFFE id).
        #[arg(long)]
        identity: String,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Delete the durable subscriptions of identities whose every
    /// certificate in a CA's register is revoked.
    PruneRevoked {
        /// The CA directory (`beacon ca init --dir`).
        #[arg(long)]
        ca_dir: PathBuf,
        /// Only show what would be deleted.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

pub async fn run(cmd: AdminCommand) -> Result<()> {
    match cmd {
        AdminCommand::Backup {
            out,
            data_dir,
            force,
            conn,
        } => backup_cmd(&out, data_dir.as_deref(), force, &conn).await,
        AdminCommand::Restore {
            file,
            config,
            data_dir,
            force,
        } => restore_cmd(&file, &config, data_dir, force),
        AdminCommand::Compact { data_dir } => {
            if !data_dir.join("sled").exists() && !data_dir.join("sled.new").exists() {
                bail!("{} holds no store", data_dir.display());
            }
            let c = backup::compact(
                &data_dir,
                &StoreOptions::defaults(beacon::interop::stix::SPANS),
            )
            .with_context(|| {
                format!(
                    "cannot compact the store in {} (is its node stopped?)",
                    data_dir.display()
                )
            })?;
            println!(
                "compacted {}: {:.1} MB before, {:.1} MB after; head {}, {} bulletins, {} pruned",
                data_dir.display(),
                c.before as f64 / 1e6,
                c.after as f64 / 1e6,
                c.manifest.head,
                c.manifest.records,
                c.manifest.tombstones
            );
            Ok(())
        }
        AdminCommand::Subscriptions(cmd) => subscriptions(cmd).await,
        AdminCommand::Token(cmd) => token(cmd).await,
    }
}

async fn token(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Issue { member, name, conn } => {
            let (_, channel) = conn.dial().await?;
            let r = AdminClient::new(channel)
                .issue_token(pb::IssueTokenRequest { member, name })
                .await
                .map_err(beacon::net::client::ClientError::from)?
                .into_inner();
            eprintln!(
                "token {} for {} (shown once; the node keeps its digest only):",
                r.id, r.identity
            );
            println!("{}", r.token);
        }
        TokenCommand::Revoke { id, conn } => {
            let (_, channel) = conn.dial().await?;
            let r = AdminClient::new(channel)
                .revoke_token(pb::RevokeTokenRequest { id: id.clone() })
                .await
                .map_err(beacon::net::client::ClientError::from)?
                .into_inner();
            println!("revoked token {id} of {}", r.identity);
        }
        TokenCommand::List { conn } => {
            let (_, channel) = conn.dial().await?;
            let r = AdminClient::new(channel)
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(beacon::net::client::ClientError::from)?
                .into_inner();
            for t in r.tokens {
                println!(
                    "{} {}{}",
                    t.id,
                    t.identity,
                    if t.revoked { " (revoked)" } else { "" }
                );
            }
        }
    }
    Ok(())
}

fn bar(head: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(head);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} {wide_bar} {pos}/{len} ({per_sec}, {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// The temporary file a backup is written to before it is complete.
fn partial(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Makes a finished backup durable and moves it into place.
fn finish(file: std::fs::File, tmp: &Path, out: &Path) -> Result<()> {
    file.sync_all().context("fsync of the backup failed")?;
    drop(file);
    std::fs::rename(tmp, out)
        .with_context(|| format!("cannot move the backup to {}", out.display()))?;
    beacon::base::disk::sync_parent(out).context("fsync of the backup's directory failed")?;
    Ok(())
}

async fn backup_cmd(
    out: &Path,
    data_dir: Option<&Path>,
    force: bool,
    conn: &ConnArgs,
) -> Result<()> {
    if out.exists() && !force {
        bail!("{} exists (use --force to replace it)", out.display());
    }
    let tmp = partial(out);
    // A backup holds every bulletin, TLP:RED included: readable by its
    // owner only, like a key (a leftover partial file is replaced).
    let _ = std::fs::remove_file(&tmp);
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?
    };
    let result = match data_dir {
        Some(dir) => backup_offline(dir, &file),
        None => backup_online(conn, &file).await,
    };
    let m = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    finish(file, &tmp, out)?;
    println!(
        "backup of head {} written to {}: {} bulletins, {} pruned, {} subscription cursors, {} peer positions; sha256 {}",
        m.0,
        out.display(),
        m.1,
        m.2,
        m.3,
        m.4,
        beacon::tools::pki::hex(&m.5)
    );
    Ok(())
}

/// (head, records, tombstones, cursors, positions, sha256)
type Summary = (u64, u64, u64, u64, u64, [u8; 32]);

fn backup_offline(dir: &Path, file: &std::fs::File) -> Result<Summary> {
    if !dir.join("sled").exists() {
        bail!("{} holds no store", dir.display());
    }
    let mut store = Store::open(dir, StoreOptions::defaults(beacon::interop::stix::SPANS)).with_context(|| {
        format!(
            "cannot open the store in {} (a running node holds it: back it up over the API, without --data-dir)",
            dir.display()
        )
    })?;
    let bar = bar(store.head());
    bar.set_message("backup");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let m = store.backup(&mut w, |seq, _| bar.set_position(seq))?;
    w.flush()?;
    bar.finish_and_clear();
    store.close()?;
    Ok((
        m.head,
        m.records,
        m.tombstones,
        m.cursors,
        m.positions,
        m.sha256,
    ))
}

async fn backup_online(conn: &ConnArgs, file: &std::fs::File) -> Result<Summary> {
    let (_, channel) = conn.dial().await?;
    let mut stream = AdminClient::new(channel)
        .max_decoding_message_size(8 << 20)
        .backup(pb::BackupRequest {})
        .await
        .map_err(beacon::net::client::ClientError::from)?
        .into_inner();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut bar: Option<indicatif::ProgressBar> = None;
    // The stream is checked the way a restore reads it, so a backup cut
    // short by the network is never left as if complete.
    let mut copy = Vec::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(beacon::net::client::ClientError::from)?
    {
        let b = bar.get_or_insert_with(|| {
            let b = self::bar(chunk.head);
            b.set_message("backup");
            b
        });
        b.set_position(chunk.position);
        w.write_all(&chunk.data)?;
        // Keep the tail only: the manifest is the last entry.
        copy.extend_from_slice(&chunk.data);
        let keep = copy.len().saturating_sub(MANIFEST_TAIL);
        copy.drain(..keep);
    }
    w.flush()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    drop(w);
    manifest_tail(&copy).context("the node ended the backup stream before its manifest")
}

/// Bytes of a manifest entry: tag, length, six counters, digest.
const MANIFEST_TAIL: usize = 5 + 48 + 32;

fn manifest_tail(tail: &[u8]) -> Option<Summary> {
    if tail.len() != MANIFEST_TAIL || tail[0] != b'M' {
        return None;
    }
    let n = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&tail[5 + 8 * i..13 + 8 * i]);
        u64::from_be_bytes(a)
    };
    let mut sha = [0u8; 32];
    sha.copy_from_slice(&tail[53..]);
    Some((n(0), n(1), n(2), n(4), n(5), sha))
}

fn restore_cmd(file: &Path, config: &Path, data_dir: Option<PathBuf>, force: bool) -> Result<()> {
    let config = Config::load(config)?;
    let dir = data_dir.unwrap_or_else(|| config.node.data_dir.clone());
    let own = beacon::trust::tls::KeyedChain::load(&config.node.cert, &config.node.key)
        .context("cannot read the node's certificate (its trust domain names the CAs)")?;
    // The CAs only: a bulletin in the log was accepted before any revocation
    // the node applies today, and it is restored as it was held.
    let bundle = beacon::trust::read_bundle(
        &own.identity.trust_domain,
        config
            .trust
            .iter()
            .map(|t| (t.ca.as_path(), t.members.clone())),
        std::iter::empty(),
    )?;
    let input =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let bar = bar(0);
    bar.set_message("restore");
    let verify = beacon::broker::ingest::stored_check(&bundle);
    // A backup of another member's node holds what that member may read:
    // restored under this config it would be served as this node's log.
    let this = own.identity.clone();
    let check = move |node: Option<&str>| -> std::result::Result<(), String> {
        let Some(node) = node else { return Ok(()) };
        let Ok(theirs) = node.parse::<beacon::base::identity::Identity>() else {
            return Ok(());
        };
        let (a, b) = (theirs.member(), this.member());
        if a != b && !force {
            return Err(format!(
                "this backup is of node {theirs} (member {}), and this config is of node {this} (member {}): restored here it would serve {}'s log, and what {}'s node may read, as this node. Restore it with that member's config, or add --force to restore it all the same",
                a.map(|m| m.as_str()).unwrap_or("none"),
                b.map(|m| m.as_str()).unwrap_or("none"),
                a.map(|m| m.as_str()).unwrap_or("none"),
                a.map(|m| m.as_str()).unwrap_or("none"),
            ));
        }
        Ok(())
    };
    let r = backup::restore(
        input,
        &dir,
        &StoreOptions::new(&config.store, beacon::interop::stix::SPANS),
        &verify,
        &check,
        |seq, head| {
            bar.set_length(head);
            bar.set_position(seq);
        },
    )
    .with_context(|| format!("nothing was written to {}", dir.display()))?;
    bar.finish_and_clear();
    let m = &r.manifest;
    println!(
        "restored head {} into {}: {} bulletins verified, {} pruned, {} subscription cursors, {} peer positions",
        m.head,
        dir.display(),
        m.records,
        m.tombstones,
        m.cursors,
        m.positions
    );
    if r.files.iter().any(|f| f == "tokens.json") {
        println!("the API tokens (tokens.json) were restored with it");
    } else {
        println!("the backup holds no API tokens: tokens issued before it must be issued again (beacon admin token issue)");
    }
    match &r.node {
        Some(n) if *n != own.identity.to_string() => {
            println!(
                "note: the backup is of node {n}; it is now the log of {}",
                own.identity
            )
        }
        _ => {}
    }
    Ok(())
}

/// Every subscription the node lists, page by page.
async fn all_subscriptions(
    channel: tonic::transport::Channel,
) -> Result<Vec<pb::SubscriptionStatus>> {
    let mut client = AdminClient::new(channel);
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_subscriptions(pb::ListSubscriptionsRequest {
                limit: 0,
                page_token: token,
            })
            .await
            .map_err(beacon::net::client::ClientError::from)?
            .into_inner();
        out.extend(page.subscriptions);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

async fn subscriptions(cmd: SubscriptionsCommand) -> Result<()> {
    match cmd {
        SubscriptionsCommand::List { json, conn } => {
            let (_, channel) = conn.dial().await?;
            let subs = all_subscriptions(channel).await?;
            for s in subs {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "identity": s.identity, "name": s.name, "durable": s.durable,
                            "connected": s.connected, "cursor": s.cursor, "lag": s.lag,
                        })
                    );
                } else {
                    println!(
                        "{} {:?} cursor {} lag {}{}{}",
                        s.identity,
                        s.name,
                        s.cursor,
                        s.lag,
                        if s.durable { "" } else { " (ephemeral)" },
                        if s.connected { " connected" } else { "" }
                    );
                }
            }
            Ok(())
        }
        SubscriptionsCommand::Delete {
            identity,
            name,
            conn,
        } => {
            let (_, channel) = conn.dial().await?;
            let r = delete(channel, &identity, &name).await?;
            if !r.deleted {
                bail!("no durable subscription {name:?} of {identity}");
            }
            println!("deleted {identity} {name:?} (cursor was {})", r.cursor);
            Ok(())
        }
        SubscriptionsCommand::PruneRevoked {
            ca_dir,
            dry_run,
            conn,
        } => {
            let ca = beacon::tools::pki::Ca::open(&ca_dir)?;
            let index = ca.index()?;
            let (_, channel) = conn.dial().await?;
            let subs = all_subscriptions(channel.clone()).await?;
            let mut n = 0;
            for s in subs.iter().filter(|s| s.durable) {
                let certs: Vec<_> = index.iter().filter(|c| c.identity == s.identity).collect();
                if certs.is_empty() || certs.iter().any(|c| c.revoked.is_none()) {
                    continue;
                }
                n += 1;
                if dry_run {
                    println!(
                        "would delete {} {:?} (every certificate revoked)",
                        s.identity, s.name
                    );
                } else {
                    delete(channel.clone(), &s.identity, &s.name).await?;
                    println!(
                        "deleted {} {:?} (every certificate revoked)",
                        s.identity, s.name
                    );
                }
            }
            println!(
                "{n} durable subscriptions of revoked identities{}",
                if dry_run { " (dry run)" } else { " deleted" }
            );
            Ok(())
        }
    }
}

async fn delete(
    channel: tonic::transport::Channel,
    identity: &str,
    name: &str,
) -> Result<pb::DeleteSubscriptionResponse> {
    Ok(AdminClient::new(channel)
        .delete_subscription(pb::DeleteSubscriptionRequest {
            identity: identity.to_owned(),
            name: name.to_owned(),
        })
        .await
        .map_err(beacon::net::client::ClientError::from)?
        .into_inner())
}
