//! The node's transparency log: signed checkpoints of its Merkle tree, the
//! keys that sign them, and the announcements that tie each log to the node.
//!
//! - The **log key** (Ed25519, the type witnesses and Go's `note` package
//!   verify, whatever the TLS certificates use) signs checkpoints in the
//!   C2SP `tlog-checkpoint` form. Its origin names the node and the log:
//!   `<trust domain>/<node path>/log/<log id>`; the key's name is the
//!   node's SPIFFE id without its scheme.
//! - Every log is **announced** in a statement signed with the node's
//!   certificate (DSSE, `ANNOUNCEMENT_TYPE`): the node, the origin, the log
//!   key. An ally ties the key to the node through the member's CA, without
//!   trusting the operator. A node whose store was rebuilt or restored (a new
//!   log id) names in the new log's announcement the old log and the last
//!   checkpoint it signed of it: its witnesses can tell a declared rebuild
//!   from a rollback.
//! - **Never two inconsistent checkpoints.** A checkpoint is signed only of
//!   the committed (fsynced) head, only after a consistency proof from the
//!   last one it signed checks out, and it is written durably (aside,
//!   fsynced, renamed) before anyone is shown it. At start, a log whose
//!   tree no longer leads to the last signed checkpoint (files edited, or
//!   replaced by older copies under the same id) is refused: the node signs
//!   nothing for it and raises an alarm (log, metric, status).
//!
//! The directory (`[transparency] dir`) lives apart from the store, so a
//! store that is restored or rebuilt leaves it in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::base::identity::Identity;
use crate::domain::bulletin::{BulletinError, Envelope, Signer};
use crate::interop::document;
use crate::store::{Store, StoreError};
use crate::tlog::merkle;
use crate::tlog::note::{self, Checkpoint, Note, NoteError, NoteSigner, Verifier};

/// The DSSE payload type of a log announcement.
pub const ANNOUNCEMENT_TYPE: &str = "application/vnd.beacon.log-announcement+json";

const LOG_KEY: &str = "log.key";
const WITNESS_KEY: &str = "witness.key";
const CHECKPOINT: &str = "checkpoint";
const ANNOUNCEMENTS: &str = "announcements.json";
/// The recent checkpoint most witnesses cosigned, with their cosignatures.
const COSIGNED: &str = "cosigned";
/// The last checkpoint cosigned of each peer's log (one file per peer).
const WITNESSED: &str = "witnessed";
/// Both signed checkpoints of each split view or rollback seen of a peer.
const EVIDENCE: &str = "evidence";
/// Recent checkpoints kept with their cosignatures.
const RECENT: usize = 64;
/// Cosigned checkpoints kept for good (one file per size): what proves
/// later that the log held an entry by the time a witness cosigned.
const HISTORY: &str = "history";
/// The witnesses' announcements, as they handed them with a cosignature.
const WITNESSES: &str = "witnesses";
/// A new checkpoint joins the history at most this often (the first
/// cosigned one after it).
const HISTORY_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TransparencyError {
    #[error("transparency directory {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{path}: {source}")]
    Key { path: String, source: NoteError },
    #[error("{0}")]
    Note(#[from] NoteError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("this node cannot sign its log announcement: {0}")]
    Sign(#[from] BulletinError),
    #[error("{0}")]
    Refused(String),
}

fn io(path: &Path, e: impl std::fmt::Display) -> TransparencyError {
    TransparencyError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The log a previous announcement or checkpoint was of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousLog {
    pub origin: String,
    /// The size of the last checkpoint this node signed of it.
    pub size: u64,
    /// That checkpoint, as signed.
    pub checkpoint: String,
}

/// What an announcement states, signed with the node's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    /// The node's SPIFFE id (its certificate's, which signs this).
    pub node: String,
    /// The checkpoints' origin line.
    pub origin: String,
    /// The log key, as a note verifier key (`name+id+key`).
    pub log_key: String,
    /// The key the node cosigns its peers' checkpoints with, as a verifier key.
    pub witness_key: String,
    /// When (RFC 3339).
    pub announced_at: String,
    /// The log this one replaces, when the node's store was rebuilt or
    /// restored after it signed checkpoints of another.
    pub previous: Option<PreviousLog>,
}

/// A checkpoint signed by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub checkpoint: Checkpoint,
    /// The note as served: text, blank line, signatures.
    pub note: String,
}

/// The node's log: its keys, announcements and last signed checkpoint.
pub struct TransparencyLog {
    dir: PathBuf,
    key: NoteSigner,
    witness: NoteSigner,
    origin: String,
    store: Arc<Store>,
    /// DSSE JSON of every announcement, oldest first.
    announcements: Mutex<Vec<String>>,
    latest: watch::Sender<Option<Arc<Signed>>>,
    /// Why this node signs no checkpoint of its log, if it refuses to.
    alarm: Mutex<Option<String>>,
    /// Recent checkpoints, oldest first, each with the cosignatures
    /// witnesses added.
    recent: Mutex<std::collections::VecDeque<Note>>,
    /// What this node holds of each peer's log it witnesses.
    witnessed: Mutex<std::collections::BTreeMap<String, (Checkpoint, String)>>,
    /// Cosignatures this node made of its peers' checkpoints.
    cosigned_total: std::sync::atomic::AtomicU64,
    /// The sizes of this log's checkpoints in the history (files under
    /// `history/<log id>/`), and when the last one joined.
    history: Mutex<(std::collections::BTreeSet<u64>, Option<Instant>)>,
    /// Split views, rollbacks and undeclared rebuilds seen of peers.
    peer_alarms: Mutex<Vec<String>>,
    /// The one signer at a time.
    signing: Mutex<()>,
    interval: Duration,
    entries: u64,
    signed_total: std::sync::atomic::AtomicU64,
}

/// The key name for `identity`: its SPIFFE id without the scheme.
pub fn key_name(identity: &Identity) -> String {
    let id = identity.to_string();
    id.strip_prefix("spiffe://").unwrap_or(&id).to_string()
}

/// Loads the Ed25519 key at `path`, or makes one there (0600) if none.
fn load_or_make_key(path: &Path, name: &str, kind: u8) -> Result<NoteSigner, TransparencyError> {
    let key_err = |source| TransparencyError::Key {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let pem = pem::parse(&bytes)
                .map_err(|e| key_err(NoteError::Key(format!("not a PEM private key: {e}"))))?;
            NoteSigner::from_pkcs8(name, kind, pem.contents()).map_err(key_err)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = NoteSigner::generate(name, kind).map_err(key_err)?;
            let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", key.pkcs8().to_vec()));
            crate::base::disk::replace_file(path, pem.as_bytes(), true).map_err(|e| io(path, e))?;
            info!(path = %path.display(), key = %key.verifier(), "made a new key");
            Ok(key)
        }
        Err(e) => Err(io(path, e)),
    }
}

impl TransparencyLog {
    /// Opens (or starts) the node's log in `dir`, over `store`: its keys, its
    /// announcements (a new one, signed by `signer`, the node's certificate,
    /// when the store holds a log not announced yet), and the last signed
    /// checkpoint, checked against the store's tree.
    pub fn open(
        dir: &Path,
        identity: &Identity,
        signer: &Signer,
        store: Arc<Store>,
        config: &crate::base::config::TransparencyConfig,
    ) -> Result<TransparencyLog, TransparencyError> {
        crate::base::disk::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let name = key_name(identity);
        let key = load_or_make_key(&dir.join(LOG_KEY), &name, note::ED25519)?;
        let witness = load_or_make_key(&dir.join(WITNESS_KEY), &name, note::COSIGNATURE_V1)?;
        let origin = format!("{name}/log/{}", store.log().id);
        let (latest, _) = watch::channel(None);
        let mut log = TransparencyLog {
            dir: dir.to_path_buf(),
            key,
            witness,
            origin,
            store,
            announcements: Mutex::new(Vec::new()),
            latest,
            alarm: Mutex::new(None),
            recent: Mutex::new(Default::default()),
            witnessed: Mutex::new(Default::default()),
            cosigned_total: Default::default(),
            history: Mutex::new(Default::default()),
            peer_alarms: Mutex::new(Vec::new()),
            signing: Mutex::new(()),
            interval: Duration::from_millis(config.checkpoint_interval_ms),
            entries: config.checkpoint_entries,
            signed_total: Default::default(),
        };
        *log.announcements.lock() = log.read_announcements()?;
        let last = log.read_last()?;
        let previous = match &last {
            Some(s) if s.checkpoint.origin == log.origin => {
                log.resume(s.clone());
                None
            }
            Some(s) => Some(PreviousLog {
                origin: s.checkpoint.origin.clone(),
                size: s.checkpoint.size,
                checkpoint: s.note.clone(),
            }),
            None => None,
        };
        if previous.is_some() || !log.announced_with(signer) {
            log.announce(identity, signer, previous)?;
        }
        log.read_witnessed()?;
        Ok(log)
    }

    /// What this node witnessed of its peers, and the alarms it raised.
    fn read_witnessed(&mut self) -> Result<(), TransparencyError> {
        let dir = self.dir.join(WITNESSED);
        crate::base::disk::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let mut held = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let path = e.map_err(|e| io(&dir, e))?.path();
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            // peer identity, then the note.
            let Some((peer, note)) = text.split_once('\n') else {
                continue;
            };
            if let Ok(n) = Note::parse(note) {
                if let Ok(c) = Checkpoint::parse(&n.text) {
                    held.insert(peer.to_string(), (c, note.to_string()));
                }
            }
        }
        *self.witnessed.lock() = held;
        // This log's history, by size (the last one's time is taken as now:
        // the next joins after HISTORY_EVERY).
        if let Ok(d) = std::fs::read_dir(self.history_dir()) {
            let sizes: std::collections::BTreeSet<u64> = d
                .filter_map(Result::ok)
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_suffix(".note")
                        .and_then(|s| s.parse::<u64>().ok())
                })
                .collect();
            let at = (!sizes.is_empty()).then(Instant::now);
            *self.history.lock() = (sizes, at);
        }
        let evidence = self.dir.join(EVIDENCE);
        if let Ok(entries) = std::fs::read_dir(&evidence) {
            let mut alarms: Vec<String> = entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let text = std::fs::read_to_string(e.path()).ok()?;
                    let why = text.lines().next()?.to_string();
                    Some(format!("{why} (evidence: {})", e.path().display()))
                })
                .collect();
            alarms.sort();
            *self.peer_alarms.lock() = alarms;
        }
        if let Some(last) = self.latest() {
            // The cosignatures kept of the last checkpoints, if of this log.
            if let Ok(text) = std::fs::read_to_string(self.dir.join(COSIGNED)) {
                if let Ok(n) = Note::parse(&text) {
                    if Checkpoint::parse(&n.text).is_ok_and(|c| c.origin == self.origin) {
                        self.recent.lock().push_back(n);
                    }
                }
            }
            if let Ok(n) = Note::parse(&last.note) {
                let mut recent = self.recent.lock();
                if recent.back().is_none_or(|b| b.text != n.text) {
                    recent.push_back(n);
                }
            }
        }
        Ok(())
    }

    /// The last checkpoint signed, from its file, checked with the log key.
    fn read_last(&self) -> Result<Option<Signed>, TransparencyError> {
        let path = self.dir.join(CHECKPOINT);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, e)),
        };
        let n = Note::parse(&text)?;
        if n.verified_by(&self.key.verifier())?.is_none() {
            return Err(TransparencyError::Refused(format!(
                "{} is not signed by this node's log key ({}): the key was replaced; put back the key that signed it",
                path.display(),
                self.key.verifier()
            )));
        }
        Ok(Some(Signed {
            checkpoint: Checkpoint::parse(&n.text)?,
            note: text,
        }))
    }

    /// Takes up the log where the last checkpoint left it, if the store's
    /// tree still leads to it; raises the alarm if not.
    fn resume(&mut self, s: Signed) {
        let head = self.store.head();
        let size = s.checkpoint.size;
        let why = if head < size {
            Some(format!(
                "the store holds {head} entries of log {}, but this node signed a checkpoint of {size}: its files were replaced by older ones. It signs nothing of this log again; restore the store into a new log (beacon admin restore) or let it refill from its peers",
                self.origin
            ))
        } else {
            match self.store.tree_head(size) {
                Ok(root) if root == s.checkpoint.root => None,
                Ok(_) => Some(format!(
                    "the store's tree at {size} entries is not the one this node signed for log {}: its records were altered. It signs nothing of this log again",
                    self.origin
                )),
                Err(e) => Some(format!("the store's tree cannot be read: {e}")),
            }
        };
        match why {
            Some(why) => {
                error!(target: "beacon::audit", alarm = %why, "transparency log refused");
                *self.alarm.lock() = Some(why);
            }
            None => {
                self.latest.send_replace(Some(Arc::new(s)));
            }
        }
    }

    fn read_announcements(&self) -> Result<Vec<String>, TransparencyError> {
        let path = self.dir.join(ANNOUNCEMENTS);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| io(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(&path, e)),
        }
    }

    /// Whether the current log has an announcement signed with `signer`'s
    /// certificate (a renewed certificate announces the log again, so that
    /// the announcement verifies for as long as the node's certificate does).
    fn announced_with(&self, signer: &Signer) -> bool {
        let leaf = signer.leaf();
        self.announcements.lock().iter().any(|a| {
            document::envelope_from_dsse(a).ok().is_some_and(|env| {
                env.signatures
                    .first()
                    .and_then(|s| s.cert_chain.first())
                    .is_some_and(|c| c.as_slice() == leaf)
                    && serde_json::from_slice::<Announcement>(&env.payload)
                        .is_ok_and(|a| a.origin == self.origin)
            })
        })
    }

    /// Announces the log again if the node's certificate changed since it
    /// last did (renewed and installed without a restart).
    pub fn announce_with_current(
        &self,
        identity: &Identity,
        own: &crate::trust::tls::KeyedChain,
    ) -> Result<bool, TransparencyError> {
        let signer = Signer::new(own.chain.clone(), own.key.secret_der())?;
        if self.announced_with(&signer) {
            return Ok(false);
        }
        self.announce(identity, &signer, None)?;
        Ok(true)
    }

    fn announce(
        &self,
        identity: &Identity,
        signer: &Signer,
        previous: Option<PreviousLog>,
    ) -> Result<(), TransparencyError> {
        let a = Announcement {
            node: identity.to_string(),
            origin: self.origin.clone(),
            log_key: self.key.verifier().to_string(),
            witness_key: self.witness.verifier().to_string(),
            announced_at: document::rfc3339(SystemTime::now()),
            previous,
        };
        let payload = serde_json::to_vec(&a).map_err(|e| io(&self.dir, e))?;
        let env = signer.sign_statement(ANNOUNCEMENT_TYPE, payload)?;
        let mut all = self.announcements.lock();
        all.push(document::envelope_to_dsse(&env));
        let path = self.dir.join(ANNOUNCEMENTS);
        let bytes = serde_json::to_vec_pretty(&*all).map_err(|e| io(&path, e))?;
        crate::base::disk::replace_file(&path, &bytes, false).map_err(|e| io(&path, e))?;
        drop(all);
        match &a.previous {
            Some(p) => warn!(
                target: "beacon::audit",
                origin = %a.origin,
                previous = %p.origin,
                previous_size = p.size,
                "a new log replaces one this node signed checkpoints of (its store was restored or rebuilt); announced"
            ),
            None => info!(origin = %a.origin, key = %a.log_key, "log announced"),
        }
        Ok(())
    }

    /// The checkpoints' origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The log key, as a verifier key.
    pub fn log_key(&self) -> Verifier {
        self.key.verifier()
    }

    /// The witness key, as a verifier key.
    pub fn witness_key(&self) -> Verifier {
        self.witness.verifier()
    }

    /// Every announcement (DSSE JSON), oldest first.
    pub fn announcements(&self) -> Vec<String> {
        self.announcements.lock().clone()
    }

    /// The latest signed checkpoint.
    pub fn latest(&self) -> Option<Arc<Signed>> {
        self.latest.borrow().clone()
    }

    /// Follows the latest signed checkpoint.
    pub fn watch(&self) -> watch::Receiver<Option<Arc<Signed>>> {
        self.latest.subscribe()
    }

    /// Why the node signs no checkpoint of its log, if it refuses to.
    pub fn alarm(&self) -> Option<String> {
        self.alarm.lock().clone()
    }

    /// Checkpoints signed since the node started.
    pub fn signed_total(&self) -> u64 {
        self.signed_total.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Signs a checkpoint of the committed head if the log grew since the
    /// last one (or none was signed yet); blocking (reads the tree, writes
    /// and fsyncs the checkpoint file).
    pub fn sign_now(&self) -> Result<Option<Arc<Signed>>, TransparencyError> {
        let _one = self.signing.lock();
        if let Some(why) = self.alarm() {
            return Err(TransparencyError::Refused(why));
        }
        let size = self.store.head();
        let last = self.latest();
        if last.as_ref().is_some_and(|l| l.checkpoint.size >= size) {
            return Ok(None);
        }
        let root = self.store.tree_head(size)?;
        if let Some(l) = &last {
            // Never two inconsistent checkpoints: what is signed extends
            // what was, proven with the same math any verifier uses.
            let old = &l.checkpoint;
            let proof = self.store.consistency_proof(old.size, size)?;
            if let Err(e) = merkle::verify_consistency(old.size, size, &old.root, &root, &proof) {
                let why = format!(
                    "the tree at {size} does not extend the checkpoint of {} this node signed ({e}); it signs nothing more",
                    old.size
                );
                error!(alarm = %why, "transparency log refused");
                *self.alarm.lock() = Some(why.clone());
                return Err(TransparencyError::Refused(why));
            }
        }
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size,
            root,
            extensions: Vec::new(),
        };
        let text = checkpoint.text();
        let note = Note {
            signatures: vec![self.key.sign(&text)],
            text,
        }
        .render();
        let path = self.dir.join(CHECKPOINT);
        crate::base::disk::replace_file(&path, note.as_bytes(), false).map_err(|e| io(&path, e))?;
        {
            let mut recent = self.recent.lock();
            if let Ok(n) = Note::parse(&note) {
                recent.push_back(n);
            }
            while recent.len() > RECENT {
                recent.pop_front();
            }
        }
        let signed = Arc::new(Signed { checkpoint, note });
        self.latest.send_replace(Some(signed.clone()));
        self.signed_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(signed))
    }

    /// Signs checkpoints until `shutdown`: `checkpoint_interval_ms` after
    /// the last one if the log grew, or as soon as `checkpoint_entries`
    /// wait for one.
    pub async fn run(
        self: Arc<Self>,
        trust: Arc<crate::trust::state::TrustState>,
        identity: Identity,
        shutdown: CancellationToken,
    ) {
        let mut head = self.store.watch_head();
        let mut due = Instant::now();
        let mut generation = trust.generation();
        loop {
            // A certificate renewed without a restart: the log is announced
            // again with it.
            if trust.generation() != generation {
                generation = trust.generation();
                if trust.own_refusal().is_none() {
                    if let Err(e) = self.announce_with_current(&identity, &trust.own()) {
                        warn!(error = %e, "the log could not be announced with the renewed certificate");
                    }
                }
            }
            let waiting = {
                let signed = self.latest().map_or(0, |s| s.checkpoint.size);
                let h = *head.borrow_and_update();
                h.saturating_sub(signed)
            };
            let now = Instant::now();
            let sign = (waiting > 0 && now >= due) || waiting >= self.entries;
            if sign {
                let me = self.clone();
                match tokio::task::spawn_blocking(move || me.sign_now()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        warn!(error = %e, "no checkpoint signed");
                    }
                    Err(e) => warn!(error = %e, "the checkpoint signer failed"),
                }
                due = Instant::now() + self.interval;
                if self.alarm().is_some() {
                    // Nothing more will be signed of this log.
                    shutdown.cancelled().await;
                    return;
                }
                continue;
            }
            let wait = if waiting > 0 {
                due.saturating_duration_since(now)
            } else {
                // Wake now and then to notice a renewed certificate.
                Duration::from_secs(5)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                r = head.changed() => if r.is_err() { return },
            }
        }
    }

    /// The latest checkpoint, with the cosignatures witnesses added to it.
    pub fn latest_note(&self) -> Option<String> {
        let latest = self.latest()?;
        let recent = self.recent.lock();
        Some(
            recent
                .iter()
                .rev()
                .find(|n| {
                    Checkpoint::parse(&n.text).is_ok_and(|c| c.size == latest.checkpoint.size)
                })
                .map(Note::render)
                .unwrap_or_else(|| latest.note.clone()),
        )
    }

    /// Of the recent checkpoints, the one most witnesses cosigned (the
    /// newest among equals), if any is.
    pub fn cosigned(&self) -> Option<String> {
        let recent = self.recent.lock();
        // Oldest first: `max_by_key` keeps the last of equals, the newest.
        recent
            .iter()
            .filter(|n| n.signatures.len() > 1)
            .max_by_key(|n| n.signatures.len())
            .map(Note::render)
    }

    /// Adds a witness's cosignature of the recent checkpoint of `size`: the
    /// key must be a cosignature key named as `caller`, and the line must
    /// verify over that checkpoint. Returns how many witnesses cosigned it.
    pub fn add_cosignature(
        &self,
        caller: &Identity,
        size: u64,
        line: &str,
        key: &str,
        announcement: &str,
        chains: &dyn crate::trust::ChainCheck,
    ) -> Result<u32, TransparencyError> {
        let key: Verifier = key.parse()?;
        if !announcement.is_empty() {
            let a = verify_announcement(announcement, chains, SystemTime::now()).map_err(|e| {
                TransparencyError::Refused(format!("the witness's announcement: {e}"))
            })?;
            if a.node != caller.to_string() || a.witness_key != key.to_string() {
                return Err(TransparencyError::Refused(
                    "the announcement is not the caller's, or names another witness key".into(),
                ));
            }
            let path = self
                .dir
                .join(WITNESSES)
                .join(format!("{}.json", file_name(&caller.to_string())));
            crate::base::disk::create_dir_all(&self.dir.join(WITNESSES))
                .and_then(|()| {
                    crate::base::disk::replace_file(&path, announcement.as_bytes(), false)
                })
                .map_err(|e| io(&path, e))?;
        }
        if key.kind != note::COSIGNATURE_V1 || key.name != key_name(caller) {
            return Err(TransparencyError::Refused(format!(
                "{caller} may add cosignatures only with its own witness key, named {} (type 4); this one is {key}",
                key_name(caller)
            )));
        }
        let mut recent = self.recent.lock();
        let Some(n) = recent
            .iter_mut()
            .rev()
            .find(|n| Checkpoint::parse(&n.text).is_ok_and(|c| c.size == size))
        else {
            return Err(TransparencyError::Refused(format!(
                "no recent checkpoint of {size} entries to cosign: fetch the latest again"
            )));
        };
        let line = format!("{}\n", line.trim_end_matches('\n'));
        let parsed = Note::parse(&format!("{}\n{line}", n.text))?;
        let [sig] = parsed.signatures.as_slice() else {
            return Err(TransparencyError::Refused(
                "send exactly one signature line".into(),
            ));
        };
        let mut with = n.clone();
        with.add(sig.clone());
        match with.verified_by(&key)? {
            Some(_) => {}
            None => {
                return Err(TransparencyError::Refused(format!(
                    "the line is not a cosignature by {key}"
                )))
            }
        }
        *n = with;
        let count = n.signatures.len() as u32 - 1;
        let cosigned = n.clone();
        drop(recent);
        self.keep_in_history(size, &cosigned)?;
        if let Some(best) = self.cosigned() {
            let path = self.dir.join(COSIGNED);
            crate::base::disk::replace_file(&path, best.as_bytes(), false)
                .map_err(|e| io(&path, e))?;
        }
        Ok(count)
    }

    /// Keeps a cosigned checkpoint in the history: a checkpoint of the
    /// size last kept gets its new cosignatures; a larger one joins at most
    /// every `HISTORY_EVERY`.
    fn keep_in_history(&self, size: u64, note: &Note) -> Result<(), TransparencyError> {
        let mut history = self.history.lock();
        let last = history.0.last().copied();
        let keep = match (last, history.1) {
            (None, _) => true,
            (Some(s), _) if s == size => true,
            (Some(s), Some(at)) => size > s && at.elapsed() >= HISTORY_EVERY,
            (Some(s), None) => size > s,
        };
        if !keep {
            return Ok(());
        }
        let dir = self.history_dir();
        let path = dir.join(format!("{size:020}.note"));
        crate::base::disk::create_dir_all(&dir)
            .and_then(|()| crate::base::disk::replace_file(&path, note.render().as_bytes(), false))
            .map_err(|e| io(&path, e))?;
        if last != Some(size) {
            history.0.insert(size);
            history.1 = Some(Instant::now());
        }
        Ok(())
    }

    /// Where this log's history is kept: one folder per log.
    fn history_dir(&self) -> PathBuf {
        self.dir.join(HISTORY).join(self.store.log().id.to_string())
    }

    /// The receipt of `seq` against the earliest cosigned checkpoint of
    /// this log that covers it, with the announcements of its witnesses.
    pub fn prove_earliest(&self, seq: u64) -> Result<(String, Vec<String>), TransparencyError> {
        if seq == 0 {
            return Err(TransparencyError::Refused("sequences start at 1".into()));
        }
        let dir = self.history_dir();
        // The first few that cover it: one whose file cannot be read is
        // passed over for the next.
        let candidates: Vec<u64> = self
            .history
            .lock()
            .0
            .range(seq..)
            .take(16)
            .copied()
            .collect();
        for size in candidates {
            let name = format!("{size:020}.note");
            let path = dir.join(&name);
            let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            let note = Note::parse(&text)?;
            let c = Checkpoint::parse(&note.text)?;
            if c.origin != self.origin || c.size != size {
                continue;
            }
            let receipt = crate::tlog::receipt::Receipt {
                extra: Some(self.store.leaf_entry(seq)?),
                index: seq - 1,
                hashes: self.store.inclusion_proof(seq, size)?,
                checkpoint: text,
            }
            .render();
            let announcements = self.witness_announcements(&note);
            return Ok((receipt, announcements));
        }
        Err(TransparencyError::Refused(format!(
            "no checkpoint witnesses cosigned covers sequence {seq} of this log"
        )))
    }

    /// The announcements the witnesses that cosigned `note` handed with
    /// their cosignatures (DSSE JSON).
    pub fn witness_announcements(&self, note: &Note) -> Vec<String> {
        note.signatures
            .iter()
            .filter_map(|s| {
                let id: Identity = format!("spiffe://{}", s.name).parse().ok()?;
                let path = self
                    .dir
                    .join(WITNESSES)
                    .join(format!("{}.json", file_name(&id.to_string())));
                std::fs::read_to_string(path).ok()
            })
            .collect()
    }

    /// The key a witness cosigns with.
    pub fn cosign(&self, text: &str) -> note::NoteSignature {
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.cosigned_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.witness.cosign(text, now)
    }

    /// The last checkpoint this node cosigned of `peer`'s log.
    pub fn witnessed(&self, peer: &str) -> Option<Checkpoint> {
        self.witnessed.lock().get(peer).map(|(c, _)| c.clone())
    }

    /// That checkpoint as the peer signed it.
    pub fn witnessed_note(&self, peer: &str) -> Option<String> {
        self.witnessed.lock().get(peer).map(|(_, n)| n.clone())
    }

    /// Cosignatures this node made of its peers' checkpoints since it started.
    pub fn cosigned_total(&self) -> u64 {
        self.cosigned_total
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every peer log witnessed: (peer, checkpoint).
    pub fn witnessed_all(&self) -> Vec<(String, Checkpoint)> {
        self.witnessed
            .lock()
            .iter()
            .map(|(p, (c, _))| (p.clone(), c.clone()))
            .collect()
    }

    /// Split views, rollbacks and undeclared rebuilds seen of peers.
    pub fn peer_alarms(&self) -> Vec<String> {
        self.peer_alarms.lock().clone()
    }

    /// Keeps `note` as the last checkpoint witnessed of `peer` (durably,
    /// before it is cosigned).
    pub fn keep_witnessed(&self, peer: &str, note: &str) -> Result<(), TransparencyError> {
        let n = Note::parse(note)?;
        let c = Checkpoint::parse(&n.text)?;
        let path = self.dir.join(WITNESSED).join(file_name(peer));
        crate::base::disk::replace_file(&path, format!("{peer}\n{note}").as_bytes(), false)
            .map_err(|e| io(&path, e))?;
        self.witnessed
            .lock()
            .insert(peer.to_string(), (c, note.to_string()));
        Ok(())
    }

    /// Raises an alarm about `peer`: `why`, with both signed checkpoints
    /// kept as evidence. Said once per pair of checkpoints.
    pub fn raise_peer_alarm(&self, peer: &str, why: &str, held: &str, shown: &str) {
        let dir = self.dir.join(EVIDENCE);
        let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        h.update(held.as_bytes());
        h.update(shown.as_bytes());
        let tag: String = h.finish().as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let path = dir.join(format!("{}-{tag}.txt", file_name(peer)));
        if path.exists() {
            return;
        }
        error!(target: "beacon::audit", peer, alarm = why, evidence = %path.display(), "a peer's log is inconsistent");
        let text = format!(
            "{why}\n\n== the checkpoint this node held ==\n{held}\n== the checkpoint the peer showed ==\n{shown}"
        );
        let written = crate::base::disk::create_dir_all(&dir)
            .and_then(|()| crate::base::disk::replace_file(&path, text.as_bytes(), false));
        if let Err(e) = written {
            error!(error = %e, "the evidence could not be written");
        }
        self.peer_alarms
            .lock()
            .push(format!("{why} (evidence: {})", path.display()));
    }

    /// The note of the recent checkpoint of `size`, with its cosignatures.
    fn note_of(&self, size: u64) -> Option<String> {
        self.recent
            .lock()
            .iter()
            .rev()
            .find(|n| Checkpoint::parse(&n.text).is_ok_and(|c| c.size == size))
            .map(Note::render)
    }

    /// A receipt (C2SP `tlog-proof`, the leaf entry as its `extra`) for
    /// sequence `seq`, once a checkpoint covers it: waits at most `wait`
    /// for one. The error says why there is none.
    pub async fn receipt(
        self: &Arc<Self>,
        seq: u64,
        wait: Duration,
    ) -> Result<String, TransparencyError> {
        let mut latest = self.watch();
        let covered = tokio::time::timeout(wait, async {
            loop {
                if let Some(why) = self.alarm() {
                    return Err(TransparencyError::Refused(why));
                }
                if let Some(s) = latest.borrow_and_update().clone() {
                    if s.checkpoint.size >= seq {
                        return Ok(s);
                    }
                }
                if latest.changed().await.is_err() {
                    return Err(TransparencyError::Refused("the node is stopping".into()));
                }
            }
        })
        .await
        .map_err(|_| {
            TransparencyError::Refused(format!("no checkpoint covered it within {wait:?}"))
        })??;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let size = covered.checkpoint.size;
            let hashes = me.store.inclusion_proof(seq, size)?;
            let entry = me.store.leaf_entry(seq)?;
            Ok(crate::tlog::receipt::Receipt {
                extra: Some(entry),
                index: seq - 1,
                hashes,
                checkpoint: me.note_of(size).unwrap_or_else(|| covered.note.clone()),
            }
            .render())
        })
        .await
        .map_err(|e| TransparencyError::Refused(format!("the receipt task failed: {e}")))?
    }

    /// How long a publish that asked for a receipt waits for a checkpoint.
    pub fn receipt_wait(&self) -> Duration {
        self.interval * 2 + Duration::from_secs(5)
    }

    /// Signs the head once more before the node stops, so the last
    /// acknowledged entries are covered by a checkpoint.
    pub fn close(&self) {
        if self.alarm().is_none() {
            if let Err(e) = self.sign_now() {
                warn!(error = %e, "no final checkpoint signed");
            }
        }
    }
}

/// A file name for a peer's identity.
fn file_name(peer: &str) -> String {
    peer.strip_prefix("spiffe://")
        .unwrap_or(peer)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What a witness makes of a peer's checkpoint, given the one it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCheck {
    /// Cosign it (and keep it): the first seen, the same, or consistent.
    Cosign,
    /// A consistency proof from the held size is needed first.
    NeedProof { old: u64, new: u64 },
    /// Older than the held one under the same log: nothing to do.
    Older,
    /// A split view, a rollback, an undeclared rebuild: the alarm's words.
    Alarm(String),
}

/// The witness's decision for `shown`, a checkpoint of `peer`'s log whose
/// signature was checked, given `held` (the last cosigned), the peer's
/// verified announcements, and a consistency proof if one was fetched.
pub fn check_peer(
    held: Option<&Checkpoint>,
    shown: &Checkpoint,
    announcements: &[Announcement],
    proof: Option<&[merkle::Hash]>,
) -> PeerCheck {
    let Some(held) = held else {
        return PeerCheck::Cosign;
    };
    if held.origin != shown.origin {
        let declared = announcements
            .iter()
            .find(|a| a.origin == shown.origin)
            .and_then(|a| a.previous.as_ref());
        return match declared {
            Some(p) if p.origin == held.origin && p.size >= held.size => PeerCheck::Cosign,
            Some(p) if p.origin == held.origin => PeerCheck::Alarm(format!(
                "rollback: log {} had at least {} entries when this node cosigned it, but its replacement {} declares it ended at {}",
                held.origin, held.size, shown.origin, p.size
            )),
            _ => {
                // An older log of the peer's, still served while a newer was
                // announced, is not a rollback of the one held.
                let newer_announced = announcements.iter().any(|a| {
                    a.previous.as_ref().is_some_and(|p| p.origin == shown.origin)
                });
                if newer_announced {
                    PeerCheck::Older
                } else {
                    PeerCheck::Alarm(format!(
                        "undeclared rebuild: the peer serves log {} and announced no replacement of {}, the log this node cosigned at {} entries",
                        shown.origin, held.origin, held.size
                    ))
                }
            }
        };
    }
    if shown.size < held.size {
        return PeerCheck::Older;
    }
    if shown.size == held.size {
        return if shown.root == held.root {
            PeerCheck::Cosign
        } else {
            PeerCheck::Alarm(format!(
                "split view: two checkpoints of log {} at {} entries with different roots",
                shown.origin, shown.size
            ))
        };
    }
    match proof {
        None => PeerCheck::NeedProof {
            old: held.size,
            new: shown.size,
        },
        Some(p) => match merkle::verify_consistency(held.size, shown.size, &held.root, &shown.root, p) {
            Ok(()) => PeerCheck::Cosign,
            Err(e) => PeerCheck::Alarm(format!(
                "split view: log {}'s checkpoint of {} entries does not extend the one of {} this node cosigned ({e})",
                shown.origin, shown.size, held.size
            )),
        },
    }
}

/// An announcement's statement, checked: the DSSE signature by a node
/// certificate the trust accepts (`chains`, at `now`), of the node it names.
pub fn verify_announcement(
    dsse_json: &str,
    chains: &dyn crate::trust::ChainCheck,
    now: SystemTime,
) -> Result<Announcement, String> {
    let env: Envelope = document::envelope_from_dsse(dsse_json).map_err(|e| e.to_string())?;
    let signer = crate::domain::bulletin::verify_statement(&env, ANNOUNCEMENT_TYPE, chains, now)
        .map_err(|e| e.to_string())?;
    let a: Announcement = serde_json::from_slice(&env.payload)
        .map_err(|e| format!("the announcement is not valid JSON: {e}"))?;
    if a.node != signer.to_string() {
        return Err(format!(
            "the announcement names {} but is signed by {signer}",
            a.node
        ));
    }
    let key: Verifier = a.log_key.parse().map_err(|e: NoteError| e.to_string())?;
    if key.name != key_name(&signer) || !a.origin.starts_with(&format!("{}/log/", key.name)) {
        return Err(format!(
            "the announcement's key {} or origin {} is not of {signer}",
            a.log_key, a.origin
        ));
    }
    Ok(a)
}
