//! `beacon log`: a member checks a node's log without trusting its
//! operator: the latest checkpoint (signed by a log key that the node's
//! certificate announced), inclusion of a sequence or an exported bulletin,
//! and consistency with the checkpoint this member saw last time.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::Subcommand;

use beacon::base::proto::v1 as pb;
use beacon::base::proto::v1::transparency_client::TransparencyClient;
use beacon::node::transparency::{verify_announcement, Announcement};
use beacon::tlog::merkle;
use beacon::tlog::note::{open_checkpoint, Checkpoint, Note, Verifier};
use beacon::tlog::receipt::Receipt;
use beacon::trust::TrustBundle;

use super::client::ConnArgs;

#[derive(Subcommand, Debug)]
pub enum LogCommand {
    /// The node's latest signed checkpoint, checked: the announcement of its
    /// log is signed by the node's certificate (checked against your CAs),
    /// and the checkpoint by the log key it announces.
    Checkpoint {
        #[command(flatten)]
        conn: ConnArgs,
        /// Print only the signed note (for other tools, or to keep).
        #[arg(long)]
        note: bool,
    },
    /// Prove that a sequence is in the node's log at its latest checkpoint,
    /// checked here; with --envelope, that it is this exported bulletin.
    Prove {
        #[command(flatten)]
        conn: ConnArgs,
        sequence: u64,
        /// A bulletin exported as DSSE JSON (`beacon export`): the leaf must
        /// commit to its envelope.
        #[arg(long)]
        envelope: Option<PathBuf>,
        /// Write the receipt (C2SP tlog-proof) here, for `beacon verify
        /// --receipt`: against the checkpoint most witnesses cosigned if it
        /// covers the sequence, the latest otherwise.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check that the node's log extends the checkpoint kept in FILE (the
    /// last one this command saw), then keep the new one there. A smaller
    /// tree, a different one of the same size, or a failed consistency proof
    /// is a fork or a rollback: it is reported and the file keeps the old
    /// checkpoint as evidence. A new log the node announced as replacing the
    /// old one is accepted only if it declares at least what you saw.
    Audit(AuditArgs),
}

/// What `beacon audit` / `beacon log audit` take.
#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Where the last checkpoint seen of this node is kept (default: a
    /// file named after the node's address, in the current directory).
    #[arg(long)]
    state: Option<PathBuf>,
}

pub async fn run(cmd: LogCommand) -> Result<()> {
    match cmd {
        LogCommand::Checkpoint { conn, note } => {
            let (log, _) = fetch(&conn).await?;
            if note {
                print!("{}", log.note_text);
                return Ok(());
            }
            println!("{}", describe(&log));
            Ok(())
        }
        LogCommand::Prove {
            conn,
            sequence,
            envelope,
            out,
        } => prove(&conn, sequence, envelope.as_deref(), out.as_deref()).await,
        LogCommand::Audit(AuditArgs { conn, state }) => {
            let state = match state {
                Some(s) => s,
                None => {
                    let node = conn.settings()?.node.unwrap_or_default();
                    let name: String = node
                        .chars()
                        .map(|c| {
                            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                                c
                            } else {
                                '_'
                            }
                        })
                        .collect();
                    PathBuf::from(format!("beacon-audit-{name}.checkpoint"))
                }
            };
            audit(&conn, &state).await
        }
    }
}

/// A node's latest checkpoint, checked.
struct Checked {
    announcement: Announcement,
    key: Verifier,
    checkpoint: Checkpoint,
    note: Note,
    note_text: String,
    /// Every announcement that verifies, oldest first.
    announcements: Vec<Announcement>,
    /// The checkpoint most witnesses cosigned, if any, checked.
    cosigned: Option<(Checkpoint, String)>,
    /// Its cosignatures that verify with a witness key announced by another
    /// node (checked against your CAs): (witness node, unix time).
    witnesses: Vec<(String, u64)>,
}

fn describe(log: &Checked) -> String {
    let c = &log.checkpoint;
    let mut s = format!(
        "node {}\nlog {}\ncheckpoint: {} entries, root {}\nsigned by the log key {} (announced {} by the node's certificate)\n",
        log.announcement.node,
        c.origin,
        c.size,
        B64.encode(c.root),
        log.key,
        log.announcement.announced_at
    );
    let cosigners: Vec<&str> = log
        .note
        .signatures
        .iter()
        .filter(|sig| sig.name != log.key.name || sig.key_id != log.key.id)
        .map(|sig| sig.name.as_str())
        .collect();
    s.push_str(&format!(
        "cosigned by {} witness(es){}{}\n",
        cosigners.len(),
        if cosigners.is_empty() { "" } else { ": " },
        cosigners.join(", ")
    ));
    if let Some((c, _)) = &log.cosigned {
        s.push_str(&format!(
            "witnessed: the checkpoint of {} entries cosigned by {} witness(es) whose keys your CAs vouch for{}{}\n",
            c.size,
            log.witnesses.len(),
            if log.witnesses.is_empty() { "" } else { ": " },
            log.witnesses
                .iter()
                .map(|(n, t)| format!(
                    "{n} at {}",
                    beacon::interop::document::rfc3339(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(*t)
                    )
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for a in &log.announcements {
        if let Some(p) = &a.previous {
            s.push_str(&format!(
                "log {} replaced {} at its checkpoint of {} entries ({})\n",
                a.origin, p.origin, p.size, a.announced_at
            ));
        }
    }
    s
}

/// Fetches the latest checkpoint and checks it against the trust bundle.
async fn fetch(
    conn: &ConnArgs,
) -> Result<(Checked, TransparencyClient<tonic::transport::Channel>)> {
    let (dialer, channel) = conn.dial().await?;
    let mut client = TransparencyClient::new(channel);
    let r = client
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .map_err(beacon::net::client::ClientError::from)?
        .into_inner();
    let log = check(&r, &dialer.bundle, conn.pinned_node()?.as_deref())?;
    Ok((log, client))
}

fn check(
    r: &pb::GetCheckpointResponse,
    bundle: &TrustBundle,
    pinned: Option<&str>,
) -> Result<Checked> {
    let now = SystemTime::now();
    let mut current = None;
    let mut announcements = Vec::new();
    for (i, text) in r.announcements.iter().enumerate() {
        match verify_announcement(text, bundle, now) {
            Ok(a) => {
                if a.origin == r.origin {
                    current = Some(a.clone());
                }
                announcements.push(a);
            }
            Err(e) if i + 1 == r.announcements.len() => {
                bail!("the node's announcement of its current log does not verify: {e}")
            }
            Err(e) => eprintln!("warning: an older announcement does not verify: {e}"),
        }
    }
    let announcement = current.with_context(|| {
        format!(
            "the node announced no log {} with a certificate your CAs accept",
            r.origin
        )
    })?;
    if let Some(p) = pinned {
        if announcement.node != p {
            bail!(
                "the log is announced by {}, not the node you asked for ({p})",
                announcement.node
            );
        }
    }
    let key: Verifier = announcement.log_key.parse()?;
    if r.checkpoint.is_empty() {
        bail!("the node has signed no checkpoint of {} yet", r.origin);
    }
    let (checkpoint, note) = open_checkpoint(&r.checkpoint, &key)
        .context("the checkpoint is not signed by the announced log key")?;
    if checkpoint.origin != announcement.origin {
        bail!(
            "the checkpoint is of {}, not of the announced log {}",
            checkpoint.origin,
            announcement.origin
        );
    }
    let mut witnesses = Vec::new();
    let cosigned = match r.cosigned.as_str() {
        "" => None,
        text => {
            let (c, n) = open_checkpoint(text, &key)
                .context("the cosigned checkpoint is not signed by the announced log key")?;
            for a in &r.witness_announcements {
                let Ok(w) = verify_announcement(a, bundle, now) else {
                    continue;
                };
                let Ok(wk) = w.witness_key.parse::<Verifier>() else {
                    continue;
                };
                if w.node == announcement.node {
                    continue;
                }
                if let Ok(Some(t)) = n.verified_by(&wk) {
                    witnesses.push((w.node.clone(), t));
                }
            }
            Some((c, text.to_string()))
        }
    };
    Ok(Checked {
        announcement,
        key,
        checkpoint,
        note,
        note_text: r.checkpoint.clone(),
        announcements,
        cosigned,
        witnesses,
    })
}

fn hashes(v: &[Vec<u8>]) -> Result<Vec<merkle::Hash>> {
    v.iter()
        .map(|h| {
            h.as_slice()
                .try_into()
                .map_err(|_| anyhow::anyhow!("a proof hash is not 32 bytes"))
        })
        .collect()
}

async fn prove(
    conn: &ConnArgs,
    sequence: u64,
    envelope: Option<&Path>,
    out: Option<&Path>,
) -> Result<()> {
    let (log, mut client) = fetch(conn).await?;
    // The cosigned checkpoint when it covers the sequence: its receipt
    // carries the witnesses' cosignatures.
    let (checkpoint, note_text) = match &log.cosigned {
        Some((c, text)) if c.size >= sequence => (c.clone(), text.clone()),
        _ => (log.checkpoint.clone(), log.note_text.clone()),
    };
    let size = checkpoint.size;
    let p = client
        .prove_inclusion(pb::ProveInclusionRequest {
            sequence,
            tree_size: size,
        })
        .await
        .map_err(beacon::net::client::ClientError::from)?
        .into_inner();
    let entry = &p.leaf_entry;
    if entry.len() < 57 || entry[0] != 1 || entry[1..9] != sequence.to_be_bytes() {
        bail!("the node's leaf entry is not of sequence {sequence}");
    }
    let leaf = merkle::leaf_hash(entry);
    let proof = hashes(&p.hashes)?;
    merkle::verify_inclusion(sequence - 1, size, &leaf, &proof, &checkpoint.root)
        .context("the inclusion proof does not verify")?;
    if let Some(out) = out {
        let receipt = Receipt {
            extra: Some(entry.clone()),
            index: sequence - 1,
            hashes: proof,
            checkpoint: note_text,
        };
        beacon::base::disk::replace_file(out, receipt.render().as_bytes(), false)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let digest = &entry[9..41];
    if let Some(path) = envelope {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let env = beacon::interop::document::envelope_from_dsse(&text)?;
        let own = beacon::domain::bulletin::sha256(
            &beacon::domain::bulletin::codec::encode_envelope(&env),
        );
        if own != digest {
            bail!(
                "sequence {sequence} of the log commits to another envelope than {} (its SHA-256 {} ≠ {})",
                path.display(),
                hex(&own),
                hex(digest)
            );
        }
    }
    let accepted = u64::from_be_bytes(entry[41..49].try_into()?);
    let origin_seq = u64::from_be_bytes(entry[49..57].try_into()?);
    let origin = String::from_utf8_lossy(&entry[57..]);
    println!(
        "sequence {sequence} is in log {} at its checkpoint of {size} entries: verified\nenvelope SHA-256 {}{}\naccepted at {}\norigin {origin} sequence {origin_seq}",
        checkpoint.origin,
        hex(digest),
        if envelope.is_some() { " (the envelope given)" } else { "" },
        beacon::interop::document::rfc3339(
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(accepted)
        ),
    );
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn audit(conn: &ConnArgs, state: &Path) -> Result<()> {
    let (log, mut client) = fetch(conn).await?;
    let new = &log.checkpoint;
    let kept = match std::fs::read_to_string(state) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", state.display())),
    };
    let Some(kept) = kept else {
        let checked = check_received(conn, &mut client, 0, new).await?;
        keep(state, &log.note_text)?;
        println!(
            "first audit of {}: checkpoint of {} entries kept in {}; the {checked} bulletins you may read in it are included, as served",
            new.origin,
            new.size,
            state.display()
        );
        return Ok(());
    };
    // The kept note was checked when it was kept; it is read as text here.
    let old_note =
        Note::parse(&kept).with_context(|| format!("{} holds no checkpoint", state.display()))?;
    let old = Checkpoint::parse(&old_note.text)?;
    if old.origin != new.origin {
        // A new log: only as declared, and declaring at least what was seen.
        let declared = log
            .announcements
            .iter()
            .find(|a| a.origin == new.origin)
            .and_then(|a| a.previous.as_ref());
        match declared {
            Some(p) if p.origin == old.origin && p.size >= old.size => {
                println!(
                    "the node replaced log {} (declared at {} entries; you had seen {}) by {}",
                    old.origin, p.size, old.size, new.origin
                );
            }
            Some(p) if p.origin == old.origin => bail!(
                "ROLLBACK: the node's log {} had at least {} entries when you last audited it, but the node declared it ended at {}",
                old.origin,
                old.size,
                p.size
            ),
            _ => bail!(
                "the node now serves log {}, and announced no replacement of {}, the log you audited last: it was rebuilt without saying so",
                new.origin,
                old.origin
            ),
        }
    } else if new.size < old.size {
        bail!(
            "ROLLBACK: log {} has {} entries now, {} when you last audited it",
            new.origin,
            new.size,
            old.size
        );
    } else {
        let p = client
            .prove_consistency(pb::ProveConsistencyRequest {
                old_size: old.size,
                new_size: new.size,
            })
            .await
            .map_err(beacon::net::client::ClientError::from)?
            .into_inner();
        if let Err(e) = merkle::verify_consistency(
            old.size,
            new.size,
            &old.root,
            &new.root,
            &hashes(&p.hashes)?,
        ) {
            let evidence = state.with_extension("fork");
            std::fs::write(&evidence, format!("{kept}\n{}", log.note_text))?;
            bail!(
                "FORK: log {}'s checkpoint of {} entries does not extend the one of {} you kept ({e}); both signed checkpoints are in {}",
                new.origin,
                new.size,
                old.size,
                evidence.display()
            );
        }
        let checked = check_received(conn, &mut client, old.size, new).await?;
        println!(
            "log {} is consistent: {} entries when you last audited it, {} now; the {checked} bulletins you may read since are included, as served",
            new.origin, old.size, new.size
        );
    }
    keep(state, &log.note_text)?;
    match &log.cosigned {
        Some((c, _)) => println!(
            "witnesses: {} checked cosignature(s) on the checkpoint of {} entries{}{}",
            log.witnesses.len(),
            c.size,
            if log.witnesses.is_empty() { "" } else { ": " },
            log.witnesses
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => println!("witnesses: no checkpoint of this log is cosigned yet"),
    }
    Ok(())
}

/// Every bulletin this member may read after `from`, up to the
/// checkpoint, is in the tree as it is served to this member: the leaf is
/// computed here from the delivery (sequence, the envelope's SHA-256 over
/// the bytes received, acceptance time, origin), not taken from the node.
async fn check_received(
    conn: &ConnArgs,
    client: &mut TransparencyClient<tonic::transport::Channel>,
    from: u64,
    checkpoint: &Checkpoint,
) -> Result<u64> {
    let (_, channel) = conn.dial().await?;
    let mut bulletins =
        beacon::net::client::BulletinsClient::new(channel).max_decoding_message_size(64 << 20);
    let mut after = from;
    let mut checked = 0u64;
    while after < checkpoint.size {
        let page = bulletins
            .list(pb::ListRequest {
                after_sequence: after,
                until_sequence: checkpoint.size,
                limit: 500,
                include_expired: true,
                ..Default::default()
            })
            .await
            .map_err(beacon::net::client::ClientError::from)?
            .into_inner();
        for d in &page.deliveries {
            let entry = beacon::net::client::delivered_leaf_entry(d)
                .map_err(|e| anyhow::anyhow!("sequence {}: {e}", d.sequence))?;
            let p = client
                .prove_inclusion(pb::ProveInclusionRequest {
                    sequence: d.sequence,
                    tree_size: checkpoint.size,
                })
                .await
                .map_err(beacon::net::client::ClientError::from)?
                .into_inner();
            merkle::verify_inclusion(
                d.sequence - 1,
                checkpoint.size,
                &merkle::leaf_hash(&entry),
                &hashes(&p.hashes)?,
                &checkpoint.root,
            )
            .with_context(|| {
                format!(
                    "sequence {} as served to you is not what the log holds at that place",
                    d.sequence
                )
            })?;
            checked += 1;
        }
        if !page.more || page.next_after_sequence <= after {
            break;
        }
        after = page.next_after_sequence;
    }
    Ok(checked)
}

fn keep(state: &Path, note: &str) -> Result<()> {
    beacon::base::disk::replace_file(state, note.as_bytes(), false)
        .with_context(|| format!("writing {}", state.display()))
}

/// Checks `receipt` (a file) for `env`: the leaf entry it carries commits
/// to this envelope, the checkpoint is signed by `log_key`, the inclusion
/// proof leads to its root, and `quorum` of `witnesses` cosigned it.
pub fn check_receipt(
    env: &beacon::domain::bulletin::Envelope,
    receipt: &Path,
    log_key: &str,
    witnesses: &[String],
    quorum: usize,
) -> Result<String> {
    let text = std::fs::read_to_string(receipt)
        .with_context(|| format!("reading {}", receipt.display()))?;
    let r = Receipt::parse(&text).with_context(|| format!("{}", receipt.display()))?;
    let entry = r
        .extra
        .as_deref()
        .context("the receipt carries no leaf entry (its extra line)")?;
    if entry.len() < 57 || entry[0] != 1 {
        bail!("the receipt's leaf entry is not a Beacon leaf entry");
    }
    let digest =
        beacon::domain::bulletin::sha256(&beacon::domain::bulletin::codec::encode_envelope(env));
    if entry[9..41] != digest {
        bail!(
            "the receipt is for another envelope (SHA-256 {}, this one {})",
            hex(&entry[9..41]),
            hex(&digest)
        );
    }
    let key: Verifier = log_key.parse().context("--log-key")?;
    let ws: Vec<Verifier> = witnesses
        .iter()
        .map(|w| w.parse().with_context(|| format!("--witness {w}")))
        .collect::<Result<_>>()?;
    let proven = r
        .verify(&merkle::leaf_hash(entry), &key, &ws, quorum)
        .with_context(|| format!("{} does not verify", receipt.display()))?;
    let seq = u64::from_be_bytes(entry[1..9].try_into()?);
    let by: Vec<&str> = proven.cosigned_by.iter().map(|(n, _)| n.as_str()).collect();
    Ok(format!(
        "receipt verified: sequence {seq} of log {} (checkpoint of {} entries), cosigned by {} of the {} witnesses named{}{}",
        proven.checkpoint.origin,
        proven.checkpoint.size,
        by.len(),
        ws.len(),
        if by.is_empty() { "" } else { ": " },
        by.join(", ")
    ))
}
