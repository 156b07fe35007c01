//! Publisher equivocation: two different bulletins signed by one publisher
//! under one id. Each node keeps the first it was given and refuses the
//! other, so during a partition two nodes can hold different bulletins for
//! one id. Both envelopes are signed, so together they are proof: a node
//! that sees the second (from a peer) keeps the pair as evidence, tells the
//! peer (`Transparency.ReportEquivocation`, which checks both signatures
//! before it keeps anything), and both say so: `Get` names the conflict,
//! and the audit log, `beacon_equivocations` and `beacon status` report it.
//!
//! The evidence lives beside the node's transparency record (one JSON file
//! per publisher and id, both envelopes as DSSE JSON), apart from the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::domain::bulletin::{codec, sha256, Envelope};
use crate::interop::document;

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("evidence directory {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("not evidence of equivocation: {0}")]
    Invalid(String),
}

/// Two different bulletins signed by one publisher under one id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Equivocation {
    pub publisher: String,
    pub id: String,
    /// Both envelopes, as DSSE JSON, in the order they were seen.
    pub envelopes: [String; 2],
    /// SHA-256 of each envelope's canonical bytes (hex), in that order.
    pub digests: [String; 2],
    /// Where the second came from (a peer's identity, or "reported by …").
    pub source: String,
    /// When this node learned of it (RFC 3339).
    pub detected_at: String,
}

/// The equivocations this node holds evidence of.
pub struct Equivocations {
    dir: PathBuf,
    held: Mutex<BTreeMap<(String, String), Equivocation>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A file name for (publisher, id): both are restricted to safe characters
/// by the bulletin's field rules, but the name is hashed all the same.
fn file_name(publisher: &str, id: &str) -> String {
    let h = sha256(format!("{publisher}\n{id}").as_bytes());
    format!("{}.json", hex(&h[..16]))
}

impl Equivocations {
    /// The evidence kept in `dir` (made if missing).
    pub fn open(dir: &Path) -> Result<Equivocations, EvidenceError> {
        let io = |e: std::io::Error| EvidenceError::Io {
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        crate::base::disk::create_dir_all(dir).map_err(io)?;
        let mut held = BTreeMap::new();
        for e in std::fs::read_dir(dir).map_err(io)? {
            let path = e.map_err(io)?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            if let Ok(q) = serde_json::from_slice::<Equivocation>(&bytes) {
                held.insert((q.publisher.clone(), q.id.clone()), q);
            }
        }
        Ok(Equivocations {
            dir: dir.to_path_buf(),
            held: Mutex::new(held),
        })
    }

    /// Keeps the evidence that `first` and `second` (both already verified
    /// by the caller) are two different bulletins of one publisher under
    /// one id. Returns false if this pair was known already.
    pub fn record(
        &self,
        first: &Envelope,
        second: &Envelope,
        source: &str,
    ) -> Result<bool, EvidenceError> {
        if [first, second]
            .iter()
            .any(|e| e.payload_type == crate::domain::sealed::SEALED_PAYLOAD_TYPE)
        {
            // Sealing one bulletin twice makes two envelopes (a new content
            // key each time): a node, which cannot open them, cannot tell
            // that from two bulletins. No evidence is claimed.
            return Err(EvidenceError::Invalid(
                "a sealed bulletin: a node cannot tell two seals of one bulletin from two bulletins"
                    .into(),
            ));
        }
        let a = codec::decode_bulletin(&first.payload).map_err(EvidenceError::Invalid)?;
        let b = codec::decode_bulletin(&second.payload).map_err(EvidenceError::Invalid)?;
        if (a.publisher.as_str(), a.id.as_str()) != (b.publisher.as_str(), b.id.as_str()) {
            return Err(EvidenceError::Invalid(format!(
                "the envelopes are of {}/{} and {}/{}",
                a.publisher, a.id, b.publisher, b.id
            )));
        }
        if first.payload == second.payload {
            return Err(EvidenceError::Invalid(
                "both envelopes sign the same bulletin".into(),
            ));
        }
        let key = (a.publisher.clone(), a.id.clone());
        let digests = [
            hex(&sha256(&codec::encode_envelope(first))),
            hex(&sha256(&codec::encode_envelope(second))),
        ];
        let mut held = self.held.lock();
        if let Some(q) = held.get(&key) {
            if q.digests.contains(&digests[0]) && q.digests.contains(&digests[1]) {
                return Ok(false);
            }
        }
        let q = Equivocation {
            publisher: a.publisher,
            id: a.id,
            envelopes: [
                document::envelope_to_dsse(first),
                document::envelope_to_dsse(second),
            ],
            digests,
            source: source.to_string(),
            detected_at: document::rfc3339(SystemTime::now()),
        };
        let path = self.dir.join(file_name(&q.publisher, &q.id));
        let bytes = serde_json::to_vec_pretty(&q).map_err(|e| EvidenceError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        crate::base::disk::replace_file(&path, &bytes, false).map_err(|e| EvidenceError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        warn!(target: "beacon::audit", publisher = %q.publisher, id = %q.id, source = %q.source,
              first = %q.digests[0], second = %q.digests[1], evidence = %path.display(),
              "equivocation: the publisher signed two different bulletins under one id");
        held.insert(key, q);
        Ok(true)
    }

    /// The evidence for (publisher, id), or for any publisher's `id` when
    /// `publisher` is empty.
    pub fn get(&self, publisher: &str, id: &str) -> Option<Equivocation> {
        let held = self.held.lock();
        if publisher.is_empty() {
            return held.values().find(|q| q.id == id).cloned();
        }
        held.get(&(publisher.to_string(), id.to_string())).cloned()
    }

    /// Every equivocation held, by publisher and id.
    pub fn all(&self) -> Vec<Equivocation> {
        self.held.lock().values().cloned().collect()
    }

    pub fn count(&self) -> usize {
        self.held.lock().len()
    }
}

/// Checks evidence a peer reports: two DSSE JSON envelopes, each verified
/// as a stored envelope is (`check`: the node's signature check), the same
/// publisher and id, different bulletins.
pub fn verify_report(
    envelopes: &[String],
    check: impl Fn(&Envelope) -> Result<(), String>,
) -> Result<(Envelope, Envelope), EvidenceError> {
    let [a, b] = envelopes else {
        return Err(EvidenceError::Invalid(format!(
            "{} envelopes; evidence is two",
            envelopes.len()
        )));
    };
    let a = document::envelope_from_dsse(a).map_err(|e| EvidenceError::Invalid(e.to_string()))?;
    let b = document::envelope_from_dsse(b).map_err(|e| EvidenceError::Invalid(e.to_string()))?;
    check(&a).map_err(|e| EvidenceError::Invalid(format!("the first envelope: {e}")))?;
    check(&b).map_err(|e| EvidenceError::Invalid(format!("the second envelope: {e}")))?;
    Ok((a, b))
}
