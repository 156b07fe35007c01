//! API tokens: for tools that cannot present a client certificate (MISP's
//! TAXII module speaks only HTTP Basic). An operator issues a token bound to
//! a client identity of a member; the node keeps only its SHA-256, in
//! `tokens.json` in the data directory (written aside, fsynced, renamed),
//! and a revocation applies to the next request, without a restart.
//!
//! A token reads `bcn_<id>_<secret>`: the id finds the entry, the whole
//! token's digest is compared in constant time.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::base::identity::{Identity, RoleKind};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("cannot read or write the token register {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{0} is not a member's client identity")]
    NotAClient(String),
    #[error("no token {0}")]
    Unknown(String),
}

/// What the register keeps of one token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    /// The client identity (SPIFFE id) the token stands for.
    pub identity: String,
    /// SHA-256 of the whole token, hex.
    pub sha256: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub revoked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    tokens: Vec<TokenInfo>,
}

/// The token register of a node.
pub struct Tokens {
    path: PathBuf,
    entries: parking_lot::Mutex<Vec<TokenInfo>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Tokens {
    /// Loads the register in `dir` (none yet: empty).
    pub fn open(dir: &Path) -> Result<Tokens, TokenError> {
        let path = dir.join("tokens.json");
        let io = |e: &dyn std::fmt::Display| TokenError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let entries = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<File>(&bytes)
                    .map_err(|e| io(&e))?
                    .tokens
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&e)),
        };
        Ok(Tokens {
            path,
            entries: parking_lot::Mutex::new(entries),
        })
    }

    /// Issues a token for `identity` (a client of a member); returns the
    /// entry and the token, which is shown once and never kept.
    pub fn issue(&self, identity: &Identity) -> Result<(TokenInfo, String), TokenError> {
        if identity.kind() != RoleKind::Client || identity.member().is_none() {
            return Err(TokenError::NotAClient(identity.to_string()));
        }
        let id = hex(&rand::random::<[u8; 6]>());
        let secret =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let token = format!("bcn_{id}_{secret}");
        let info = TokenInfo {
            id,
            identity: identity.to_string(),
            sha256: hex(&crate::domain::bulletin::sha256(token.as_bytes())),
            created: SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            revoked: false,
        };
        let mut entries = self.entries.lock();
        let mut next = entries.clone();
        next.push(info.clone());
        self.save(&next)?;
        *entries = next;
        Ok((info, token))
    }

    /// Revokes token `id`; from the next request on it opens nothing.
    pub fn revoke(&self, id: &str) -> Result<TokenInfo, TokenError> {
        let mut entries = self.entries.lock();
        let mut next = entries.clone();
        let entry = next
            .iter_mut()
            .find(|t| t.id == id)
            .ok_or_else(|| TokenError::Unknown(id.to_owned()))?;
        entry.revoked = true;
        let info = entry.clone();
        self.save(&next)?;
        *entries = next;
        Ok(info)
    }

    pub fn list(&self) -> Vec<TokenInfo> {
        self.entries.lock().clone()
    }

    /// The identity `token` stands for, if it is one this node issued and
    /// has not revoked.
    pub fn identity_of(&self, token: &str) -> Option<Identity> {
        let id = token.strip_prefix("bcn_")?.split('_').next()?;
        let digest = hex(&crate::domain::bulletin::sha256(token.as_bytes()));
        let entries = self.entries.lock();
        let entry = entries.iter().find(|t| t.id == id && !t.revoked)?;
        aws_lc_rs::constant_time::verify_slices_are_equal(
            entry.sha256.as_bytes(),
            digest.as_bytes(),
        )
        .ok()?;
        entry.identity.parse().ok()
    }

    /// Writes the register aside, fsyncs it and renames it into place.
    fn save(&self, entries: &[TokenInfo]) -> Result<(), TokenError> {
        let io = |e: &dyn std::fmt::Display| TokenError::Io {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        };
        let text = serde_json::to_vec_pretty(&File {
            tokens: entries.to_vec(),
        })
        .map_err(|e| io(&e))?;
        crate::base::disk::replace_file(&self.path, &text, true).map_err(|e| io(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_open_until_revoked_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::open(dir.path()).unwrap();
        let client: Identity = "spiffe://alliance.example/client/uk.ncsc/misp"
            .parse()
            .unwrap();
        let (info, token) = t.issue(&client).unwrap();
        assert_eq!(t.identity_of(&token), Some(client.clone()));
        assert_eq!(t.identity_of(&format!("{token}x")), None);
        assert_eq!(t.identity_of("bcn_000000000000_x"), None);
        assert!(!std::fs::read_to_string(dir.path().join("tokens.json"))
            .unwrap()
            .contains(&token));
        let again = Tokens::open(dir.path()).unwrap();
        assert_eq!(again.identity_of(&token), Some(client));
        again.revoke(&info.id).unwrap();
        assert_eq!(again.identity_of(&token), None);
        assert_eq!(Tokens::open(dir.path()).unwrap().identity_of(&token), None);
        let op: Identity = "spiffe://alliance.example/operator/alice".parse().unwrap();
        assert!(t.issue(&op).is_err());
    }
}
