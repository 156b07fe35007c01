//! Signed notes (C2SP `signed-note`), the checkpoints they carry (C2SP
//! `tlog-checkpoint`) and witness cosignatures (C2SP `tlog-cosignature`,
//! Ed25519 v1), with Ed25519 keys: the form Go's `sumdb/note`, witnesses
//! and other logs' tools read.
//!
//! Written here rather than taken from a crate: the format is a few lines of
//! text, the one Rust implementation (azul's `signed_note`) is young, and CI
//! checks ours with Go's `golang.org/x/mod/sumdb/note`.

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::merkle::Hash;

/// Signature type of an Ed25519 note signature.
pub const ED25519: u8 = 0x01;
/// Signature type of an Ed25519 cosignature (`cosignature/v1`).
pub const COSIGNATURE_V1: u8 = 0x04;
/// Signature lines a reader accepts on one note.
pub const MAX_SIGNATURES: usize = 100;
/// Bytes of a note a reader accepts.
pub const MAX_NOTE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("malformed checkpoint: {0}")]
    Checkpoint(String),
    #[error("malformed verifier key: {0}")]
    Key(String),
    #[error("the note carries no valid signature by {0}")]
    Unsigned(String),
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
    #[error("could not make a key: {0}")]
    Crypto(String),
}

/// A key name: non-empty, no white space, no '+'.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(format!(
            "{name:?} is not a key name (non-empty, no spaces or '+')"
        ));
    }
    Ok(())
}

/// The 4-byte key id: SHA-256(name ‖ "\n" ‖ type ‖ public key)[..4].
pub fn key_id(name: &str, kind: u8, public: &[u8]) -> [u8; 4] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[kind]);
    ctx.update(public);
    let d = ctx.finish();
    let mut id = [0u8; 4];
    id.copy_from_slice(&d.as_ref()[..4]);
    id
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A checkpoint: the log it is of, its size and its tree head, and any
/// extension lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The checkpoint's text (the signed part of its note).
    pub fn text(&self) -> String {
        let mut t = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for e in &self.extensions {
            t.push_str(e);
            t.push('\n');
        }
        t
    }

    /// The checkpoint in a note's text.
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let bad = |m: &str| NoteError::Checkpoint(m.to_string());
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("it does not end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(bad("no origin line"));
        }
        let size = lines.next().ok_or_else(|| bad("no size line"))?;
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad(
                "the size is not a decimal number without leading zeros",
            ));
        }
        let size: u64 = size.parse().map_err(|_| bad("the size is too large"))?;
        let root = lines.next().ok_or_else(|| bad("no root hash line"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("the root hash is not 32 bytes in base64"))?;
        let extensions: Vec<String> = lines.map(str::to_string).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(bad("an empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions,
        })
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: [u8; 4],
    /// The bytes after the key id (a signature, or for a cosignature the
    /// timestamp and the signature).
    pub body: Vec<u8>,
}

impl NoteSignature {
    fn line(&self) -> String {
        let mut b = self.key_id.to_vec();
        b.extend_from_slice(&self.body);
        format!("\u{2014} {} {}\n", self.name, B64.encode(b))
    }
}

/// A signed note: its text (ending with a newline) and its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub text: String,
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    /// The note as it travels: text, a blank line, one line per signature.
    pub fn render(&self) -> String {
        let mut s = self.text.clone();
        s.push('\n');
        for sig in &self.signatures {
            s.push_str(&sig.line());
        }
        s
    }

    /// A note as it travels; every signature line well formed.
    pub fn parse(note: &str) -> Result<Note, NoteError> {
        let bad = |m: &str| NoteError::Malformed(m.to_string());
        if note.len() > MAX_NOTE {
            return Err(bad("larger than 64 KiB"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| bad("no blank line before the signatures"))?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(bad("control characters in the text"));
        }
        let sigs = sigs
            .strip_suffix('\n')
            .ok_or_else(|| bad("the signatures do not end with a newline"))?;
        let mut signatures = Vec::new();
        for line in sigs.split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(bad("too many signatures"));
            }
            let rest = line
                .strip_prefix("\u{2014} ")
                .ok_or_else(|| bad("a signature line does not start with an em dash"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or_else(|| bad("a signature line has no name"))?;
            check_name(name).map_err(NoteError::Malformed)?;
            let raw = B64
                .decode(b64)
                .map_err(|_| bad("a signature is not base64"))?;
            if raw.len() < 5 {
                return Err(bad("a signature is too short"));
            }
            signatures.push(NoteSignature {
                name: name.to_string(),
                key_id: [raw[0], raw[1], raw[2], raw[3]],
                body: raw[4..].to_vec(),
            });
        }
        if signatures.is_empty() {
            return Err(bad("no signatures"));
        }
        Ok(Note {
            text: text.to_string(),
            signatures,
        })
    }

    /// Adds a signature line, replacing one by the same key.
    pub fn add(&mut self, sig: NoteSignature) {
        self.signatures
            .retain(|s| !(s.name == sig.name && s.key_id == sig.key_id));
        self.signatures.push(sig);
    }

    /// The signature by `v`'s key, verified: `Ok(None)` if it has none,
    /// an error if it has one that does not verify. For a cosignature, the
    /// time it was made (unix seconds).
    pub fn verified_by(&self, v: &Verifier) -> Result<Option<u64>, NoteError> {
        let Some(sig) = self
            .signatures
            .iter()
            .find(|s| s.name == v.name && s.key_id == v.id)
        else {
            return Ok(None);
        };
        let key = UnparsedPublicKey::new(&signature::ED25519, &v.public);
        let bad = || NoteError::BadSignature(v.name.clone());
        match v.kind {
            ED25519 => {
                key.verify(self.text.as_bytes(), &sig.body)
                    .map_err(|_| bad())?;
                Ok(Some(0))
            }
            COSIGNATURE_V1 => {
                if sig.body.len() != 72 {
                    return Err(bad());
                }
                let mut t = [0u8; 8];
                t.copy_from_slice(&sig.body[..8]);
                let time = u64::from_be_bytes(t);
                key.verify(
                    cosigned_message(time, &self.text).as_bytes(),
                    &sig.body[8..],
                )
                .map_err(|_| bad())?;
                Ok(Some(time))
            }
            _ => Err(bad()),
        }
    }
}

/// The checkpoint in `note`, signed by `log_key` (signatures by other keys
/// are left for the caller to count as cosignatures).
pub fn open_checkpoint(note: &str, log_key: &Verifier) -> Result<(Checkpoint, Note), NoteError> {
    let n = Note::parse(note)?;
    if n.verified_by(log_key)?.is_none() {
        return Err(NoteError::Unsigned(log_key.name.clone()));
    }
    let c = Checkpoint::parse(&n.text)?;
    Ok((c, n))
}

/// What a cosignature v1 signs.
fn cosigned_message(time: u64, text: &str) -> String {
    format!("cosignature/v1\ntime {time}\n{text}")
}

/// A public key that checks notes: `name+hex(id)+base64(type ‖ key)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub name: String,
    pub id: [u8; 4],
    pub kind: u8,
    pub public: Vec<u8>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verifier({self})")
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut k = vec![self.kind];
        k.extend_from_slice(&self.public);
        write!(f, "{}+{}+{}", self.name, hex(&self.id), B64.encode(k))
    }
}

impl std::str::FromStr for Verifier {
    type Err = NoteError;

    fn from_str(s: &str) -> Result<Verifier, NoteError> {
        let bad = |m: &str| NoteError::Key(format!("{s:?}: {m}"));
        let mut parts = s.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("not name+id+key"));
        };
        check_name(name).map_err(|e| bad(&e))?;
        if id.len() != 8 {
            return Err(bad("the key id is not 8 hex digits"));
        }
        let mut idb = [0u8; 4];
        for (i, out) in idb.iter_mut().enumerate() {
            *out = u8::from_str_radix(id.get(2 * i..2 * i + 2).unwrap_or("x"), 16)
                .map_err(|_| bad("the key id is not 8 hex digits"))?;
        }
        let key = B64.decode(key).map_err(|_| bad("the key is not base64"))?;
        let (&kind, public) = key.split_first().ok_or_else(|| bad("no key"))?;
        if !matches!(kind, ED25519 | COSIGNATURE_V1) || public.len() != 32 {
            return Err(bad("not an Ed25519 key (type 1 or 4, 32 bytes)"));
        }
        if key_id(name, kind, public) != idb {
            return Err(bad("the key id does not match the key"));
        }
        Ok(Verifier {
            name: name.to_string(),
            id: idb,
            kind,
            public: public.to_vec(),
        })
    }
}

/// An Ed25519 key that signs notes as a log (`ED25519`) or cosigns them as
/// a witness (`COSIGNATURE_V1`). Kept as PKCS#8.
pub struct NoteSigner {
    name: String,
    kind: u8,
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl NoteSigner {
    /// A new random key.
    pub fn generate(name: &str, kind: u8) -> Result<NoteSigner, NoteError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| NoteError::Crypto(e.to_string()))?;
        NoteSigner::from_pkcs8(name, kind, doc.as_ref())
    }

    /// A key from its PKCS#8 form.
    pub fn from_pkcs8(name: &str, kind: u8, pkcs8: &[u8]) -> Result<NoteSigner, NoteError> {
        check_name(name).map_err(NoteError::Key)?;
        if !matches!(kind, ED25519 | COSIGNATURE_V1) {
            return Err(NoteError::Key(format!("unknown signature type {kind}")));
        }
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| NoteError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(NoteSigner {
            name: name.to_string(),
            kind,
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// The PKCS#8 form, to keep.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its public half.
    pub fn verifier(&self) -> Verifier {
        let public = self.pair.public_key().as_ref().to_vec();
        Verifier {
            name: self.name.clone(),
            id: key_id(&self.name, self.kind, &public),
            kind: self.kind,
            public,
        }
    }

    /// A note of `text` signed by this key (a log key).
    pub fn sign(&self, text: &str) -> NoteSignature {
        NoteSignature {
            name: self.name.clone(),
            key_id: self.verifier().id,
            body: self.pair.sign(text.as_bytes()).as_ref().to_vec(),
        }
    }

    /// A cosignature v1 of `text` at `time` (unix seconds).
    pub fn cosign(&self, text: &str, time: u64) -> NoteSignature {
        let mut body = time.to_be_bytes().to_vec();
        body.extend_from_slice(
            self.pair
                .sign(cosigned_message(time, text).as_bytes())
                .as_ref(),
        );
        NoteSignature {
            name: self.name.clone(),
            key_id: self.verifier().id,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> Checkpoint {
        Checkpoint {
            origin: "example.org/log".into(),
            size: 12,
            root: [7u8; 32],
            extensions: vec![],
        }
    }

    #[test]
    fn a_signed_checkpoint_round_trips_and_verifies() {
        let log = NoteSigner::generate("example.org/log", ED25519).unwrap();
        let w = NoteSigner::generate("witness.example", COSIGNATURE_V1).unwrap();
        let text = cp().text();
        let mut note = Note {
            text: text.clone(),
            signatures: vec![log.sign(&text)],
        };
        note.add(w.cosign(&text, 1_700_000_000));
        let back = Note::parse(&note.render()).unwrap();
        assert_eq!(back, note);
        assert_eq!(Checkpoint::parse(&back.text).unwrap(), cp());
        let lv: Verifier = log.verifier().to_string().parse().unwrap();
        let wv: Verifier = w.verifier().to_string().parse().unwrap();
        assert_eq!(back.verified_by(&lv), Ok(Some(0)));
        assert_eq!(back.verified_by(&wv), Ok(Some(1_700_000_000)));
        let other = NoteSigner::generate("example.org/log", ED25519).unwrap();
        assert_eq!(back.verified_by(&other.verifier()), Ok(None));
        // The same key, another text: refused.
        let mut forged = back.clone();
        forged.text = forged.text.replace("12", "11");
        assert!(forged.verified_by(&lv).is_err());
        assert!(forged.verified_by(&wv).is_err());
        // A key survives its PKCS#8 form.
        let again = NoteSigner::from_pkcs8("example.org/log", ED25519, log.pkcs8()).unwrap();
        assert_eq!(again.verifier(), log.verifier());
    }

    #[test]
    fn malformed_checkpoints_and_keys_are_refused() {
        for t in [
            "",
            "o\n",
            "o\n01\nAAAA\n",
            "o\n1\nAAAA\n",
            "o\n-1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n",
            "o\n1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
        ] {
            assert!(Checkpoint::parse(t).is_err(), "{t:?}");
        }
        for k in ["", "a+b", "a+0000000+AQ==", "a b+00000000+AQ=="] {
            assert!(k.parse::<Verifier>().is_err(), "{k:?}");
        }
        for n in [
            "text\n",
            "text\n\n",
            "text\n\n\u{2014} a AAAA\n",
            "text\n\nx a AAAAAAA=\n",
        ] {
            assert!(Note::parse(n).is_err(), "{n:?}");
        }
    }
}
