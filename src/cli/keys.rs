//! `beacon keys`: a member's recipient keys for sealed bulletins — made
//! and kept on the client (the private key never leaves its file),
//! announced and revoked as records signed with the client's certificate,
//! listed (each record checked here against the CAs, not taken on the
//! node's word); and what the other client commands use to seal and open.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use beacon::base::proto::v1 as pb;
use beacon::domain::bulletin::codec;
use beacon::domain::bulletin::Signer;
use beacon::domain::hpke::{self, Suite};
use beacon::domain::keys::{self, KeyRecord};
use beacon::domain::sealed::{self, OpeningKey, RecipientKey};
use beacon::trust::TrustBundle;

use super::client::ConnArgs;

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a recipient key pair in a file of its own (0600; keep it, and
    /// keep older ones for as long as you read what was sealed to them).
    Generate {
        /// Your member id (the key's owner).
        #[arg(long)]
        member: String,
        /// p256 (DHKEM P-256, AES-128-GCM; the default) or x25519
        /// (DHKEM X25519, ChaCha20-Poly1305).
        #[arg(long, default_value = "p256")]
        suite: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Announce a key to your node (signed with your certificate); nodes
    /// pass it on to their peers.
    Announce {
        #[command(flatten)]
        conn: ConnArgs,
        /// The key file `beacon keys generate` wrote.
        #[arg(long)]
        key_file: PathBuf,
        /// Days it is valid from now.
        #[arg(long, default_value_t = 90)]
        days: u64,
        /// The key id (hex) this one replaces.
        #[arg(long)]
        replaces: Option<String>,
    },
    /// Revoke one of your member's keys (from now on, nothing is sealed to it).
    Revoke {
        #[command(flatten)]
        conn: ConnArgs,
        /// The key id (hex).
        #[arg(long)]
        key_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The recipient keys a node knows, each checked against your CAs.
    List {
        #[command(flatten)]
        conn: ConnArgs,
        /// Only this member's.
        #[arg(long)]
        member: Option<String>,
        /// Expired and revoked keys too.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
}

/// A recipient key file: the private key and what it belongs to.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    member: String,
    suite: String,
    key_id: String,
    /// Hex.
    public_key: String,
    /// Hex. Never sent anywhere.
    private_key: String,
}

fn suite_arg(s: &str) -> Result<Suite> {
    match s.to_ascii_lowercase().as_str() {
        "p256" => Ok(Suite::P256Sha256Aes128Gcm),
        "x25519" => Ok(Suite::X25519Sha256ChaCha20Poly1305),
        other => Suite::parse(other).with_context(|| format!("suite {other:?}: p256 or x25519")),
    }
}

fn read_key_file(path: &Path) -> Result<(KeyFile, OpeningKey, Vec<u8>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let f: KeyFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a recipient key file", path.display()))?;
    let suite = Suite::parse(&f.suite).with_context(|| format!("{}: suite", path.display()))?;
    let private =
        keys::unhex(&f.private_key).with_context(|| format!("{}: private_key", path.display()))?;
    let public = hpke::public_of(suite, &private)
        .with_context(|| format!("{}: the private key", path.display()))?;
    if keys::hex(&public) != f.public_key || keys::hex(&keys::key_id(suite, &public)) != f.key_id {
        bail!(
            "{}: the public key or key id does not match the private key",
            path.display()
        );
    }
    let opening = OpeningKey::new(&f.member, suite, private)?;
    Ok((f, opening, public))
}

/// The keys `--decrypt-key` names, ready to open with.
pub fn opening_keys(paths: &[PathBuf]) -> Result<Vec<OpeningKey>> {
    paths
        .iter()
        .map(|p| read_key_file(p).map(|(_, k, _)| k))
        .collect()
}

/// The recipient keys of `members` usable now, as the node lists them,
/// each record checked here (signed by a certificate of its member under
/// `bundle`, within its validity). A member without one stops it, naming
/// the member.
pub async fn recipients_of(
    channel: &tonic::transport::Channel,
    bundle: &TrustBundle,
    members: &[String],
) -> Result<Vec<RecipientKey>> {
    let mut client = pb::bulletins_client::BulletinsClient::new(channel.clone());
    let now = SystemTime::now();
    let mut out = Vec::new();
    for m in members {
        let listed = client
            .list_recipient_keys(pb::ListRecipientKeysRequest {
                member: m.clone(),
                all: false,
            })
            .await
            .map_err(beacon::net::client::ClientError::from)
            .with_context(|| format!("the recipient keys of {m}"))?
            .into_inner();
        let mut found = 0;
        for k in listed.keys {
            let env = codec::envelope_from_proto(k);
            let r = match keys::verify_key(&env, bundle, now) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("warning: a recipient key of {m} from the node is refused here: {e}");
                    continue;
                }
            };
            if &r.member != m || now < r.not_before || now >= r.not_after {
                continue;
            }
            found += 1;
            out.push(RecipientKey::from(&r));
        }
        if found == 0 {
            bail!("{m} has announced no recipient key this node knows: nothing can be sealed to it (its clients run beacon keys generate and beacon keys announce)");
        }
    }
    // One suite per bulletin: the default's keys, if every member has one.
    let p256: Vec<RecipientKey> = out
        .iter()
        .filter(|k| k.suite == Suite::P256Sha256Aes128Gcm)
        .cloned()
        .collect();
    let covers = |v: &[RecipientKey]| members.iter().all(|m| v.iter().any(|k| &k.member == m));
    if covers(&p256) {
        return Ok(p256);
    }
    let x: Vec<RecipientKey> = out
        .iter()
        .filter(|k| k.suite == Suite::X25519Sha256ChaCha20Poly1305)
        .cloned()
        .collect();
    if covers(&x) {
        return Ok(x);
    }
    bail!("the recipients' keys share no suite (each member needs a key of one suite)")
}

/// A sealed envelope, checked (outer signature under `bundle`, at now or,
/// its signer expired since, when it was made) and opened with the first
/// of `keys` it is sealed to.
pub fn open_envelope(
    env: &beacon::domain::bulletin::Envelope,
    bundle: &TrustBundle,
    keys: &[OpeningKey],
) -> Result<sealed::Opened, sealed::SealError> {
    let now = SystemTime::now();
    let v = sealed::verify_stored(env, bundle, now)?;
    let at = v.sealed.header.created_at.unwrap_or(now).min(now);
    sealed::open(&v, keys, at)
}

pub async fn run(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Generate {
            member,
            suite,
            out,
            force,
        } => {
            let suite = suite_arg(&suite)?;
            member
                .parse::<beacon::base::identity::MemberId>()
                .map_err(|e| anyhow::anyhow!("--member: {e}"))?;
            if out.exists() && !force {
                bail!("{} exists (--force to overwrite)", out.display());
            }
            let (public, private) = hpke::generate(suite)?;
            let id = keys::key_id(suite, &public);
            let f = KeyFile {
                member,
                suite: suite.name().to_owned(),
                key_id: keys::hex(&id),
                public_key: keys::hex(&public),
                private_key: keys::hex(&private),
            };
            beacon::tools::pki::write_file(
                &out,
                serde_json::to_string_pretty(&f)?.as_bytes(),
                true,
                force,
            )?;
            println!(
                "recipient key {} ({}) of {} written to {}",
                f.key_id,
                f.suite,
                f.member,
                out.display()
            );
            println!(
                "announce it: beacon keys announce --key-file {}",
                out.display()
            );
            Ok(())
        }
        KeysCommand::Announce {
            conn,
            key_file,
            days,
            replaces,
        } => {
            let (f, _, public) = read_key_file(&key_file)?;
            let (dialer, channel) = conn.dial().await?;
            let signer = Signer::new(dialer.own.chain.clone(), dialer.own.key.secret_der())?;
            let replaces = replaces
                .map(|r| keys::parse_key_id(&r).with_context(|| format!("--replaces {r:?}")))
                .transpose()?;
            let suite = Suite::parse(&f.suite).context("suite")?;
            let env = keys::announce(
                &signer,
                &f.member,
                suite,
                &public,
                SystemTime::now(),
                Duration::from_secs(days.saturating_mul(86_400)),
                replaces,
            )?;
            let r = pb::bulletins_client::BulletinsClient::new(channel)
                .announce_recipient_key(pb::RecipientKeyRequest {
                    record: Some(codec::envelope_to_proto(&env)),
                })
                .await
                .map_err(beacon::net::client::ClientError::from)
                .context("announce refused")?
                .into_inner();
            println!(
                "{} recipient key {} of {} (valid {days} days)",
                if r.added {
                    "announced"
                } else {
                    "already known:"
                },
                r.key_id,
                r.member
            );
            Ok(())
        }
        KeysCommand::Revoke {
            conn,
            key_id,
            reason,
        } => {
            let id = keys::parse_key_id(&key_id).with_context(|| format!("--key-id {key_id:?}"))?;
            let (dialer, channel) = conn.dial().await?;
            let member = dialer
                .own
                .identity
                .member()
                .map(|m| m.as_str().to_owned())
                .context("only a member's client can revoke its member's keys")?;
            let signer = Signer::new(dialer.own.chain.clone(), dialer.own.key.secret_der())?;
            let env = keys::revoke(&signer, &member, id, SystemTime::now(), &reason)?;
            let r = pb::bulletins_client::BulletinsClient::new(channel)
                .revoke_recipient_key(pb::RecipientKeyRequest {
                    record: Some(codec::envelope_to_proto(&env)),
                })
                .await
                .map_err(beacon::net::client::ClientError::from)
                .context("revocation refused")?
                .into_inner();
            println!(
                "{} recipient key {} of {}",
                if r.added {
                    "revoked"
                } else {
                    "already revoked:"
                },
                r.key_id,
                r.member
            );
            Ok(())
        }
        KeysCommand::List {
            conn,
            member,
            all,
            json,
        } => {
            let (dialer, channel) = conn.dial().await?;
            let listed = pb::bulletins_client::BulletinsClient::new(channel)
                .list_recipient_keys(pb::ListRecipientKeysRequest {
                    member: member.unwrap_or_default(),
                    all,
                })
                .await
                .map_err(beacon::net::client::ClientError::from)?
                .into_inner();
            let now = SystemTime::now();
            let revoked: Vec<keys::Revocation> = listed
                .revocations
                .into_iter()
                .filter_map(|r| {
                    keys::verify_revocation(&codec::envelope_from_proto(r), &*dialer.bundle, now)
                        .ok()
                })
                .collect();
            for k in listed.keys {
                let env = codec::envelope_from_proto(k);
                let line = match keys::verify_key(&env, &*dialer.bundle, now) {
                    Ok(r) => describe(&r, &revoked, now, json),
                    Err(e) => format!("✗ a record that does not verify here: {e}"),
                };
                println!("{line}");
            }
            Ok(())
        }
    }
}

fn describe(r: &KeyRecord, revoked: &[keys::Revocation], now: SystemTime, json: bool) -> String {
    let rev = revoked
        .iter()
        .find(|x| x.member == r.member && x.key_id == r.key_id);
    let state = match rev {
        Some(x) if x.revoked_at <= now => "revoked",
        _ if now >= r.not_after => "expired",
        _ if now < r.not_before => "not yet valid",
        _ => "valid",
    };
    if json {
        return serde_json::json!({
            "member": r.member,
            "key_id": keys::hex(&r.key_id),
            "suite": r.suite.name(),
            "not_before": keys::when(r.not_before),
            "not_after": keys::when(r.not_after),
            "state": state,
            "signer": r.signer.to_string(),
        })
        .to_string();
    }
    format!(
        "{} {} {} {} to {} ({state}; announced by {})",
        r.member,
        keys::hex(&r.key_id),
        r.suite.name(),
        keys::when(r.not_before),
        keys::when(r.not_after),
        r.signer
    )
}
