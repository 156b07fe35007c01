//! Receipts: the offline proof that an entry is in a log (C2SP `tlog-proof`):
//! the entry's index, its inclusion proof, and a checkpoint signed by the
//! log and cosigned by witnesses. Beacon carries the leaf entry (what the
//! sequence commits to: its envelope's digest, acceptance time and origin)
//! as the proof's `extra` data, so a receipt is checked against an
//! exported bulletin with nothing else.
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! extra <base64 leaf entry>
//! index <leaf index>
//! <base64 hash>…
//!
//! <signed checkpoint>
//! ```

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::merkle::{self, Hash, ProofError};
use super::note::{open_checkpoint, Checkpoint, NoteError, Verifier};

const HEADER: &str = "c2sp.org/tlog-proof@v1";
/// Hashes a receipt may carry (a tree of 2^64 entries needs 64).
const MAX_HASHES: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    #[error("malformed receipt: {0}")]
    Malformed(String),
    #[error("its checkpoint: {0}")]
    Note(#[from] NoteError),
    #[error("its inclusion proof: {0}")]
    Proof(#[from] ProofError),
    #[error("{got} of the witnesses named cosigned it, {want} needed")]
    Quorum { got: usize, want: usize },
}

/// A parsed receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The leaf entry (Beacon's `extra`), if carried.
    pub extra: Option<Vec<u8>>,
    pub index: u64,
    pub hashes: Vec<Hash>,
    /// The signed checkpoint, as a note.
    pub checkpoint: String,
}

/// What a receipt proves, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    pub checkpoint: Checkpoint,
    /// The witnesses named that cosigned it, with the time each did.
    pub cosigned_by: Vec<(String, u64)>,
}

impl Receipt {
    pub fn render(&self) -> String {
        let mut s = format!("{HEADER}\n");
        if let Some(e) = &self.extra {
            s.push_str(&format!("extra {}\n", B64.encode(e)));
        }
        s.push_str(&format!("index {}\n", self.index));
        for h in &self.hashes {
            s.push_str(&B64.encode(h));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint);
        s
    }

    pub fn parse(text: &str) -> Result<Receipt, ReceiptError> {
        let bad = |m: &str| ReceiptError::Malformed(m.to_string());
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(HEADER) {
            return Err(bad("it does not start with c2sp.org/tlog-proof@v1"));
        }
        let mut line = lines.next().ok_or_else(|| bad("no index line"))?;
        let mut extra = None;
        if let Some(e) = line.strip_prefix("extra ") {
            extra = Some(B64.decode(e).map_err(|_| bad("extra is not base64"))?);
            line = lines.next().ok_or_else(|| bad("no index line"))?;
        }
        let index = line
            .strip_prefix("index ")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| bad("no index line"))?;
        let mut hashes = Vec::new();
        for l in lines {
            if hashes.len() == MAX_HASHES {
                return Err(bad("too many hashes"));
            }
            let h: Hash = B64
                .decode(l)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad("a proof hash is not 32 bytes in base64"))?;
            hashes.push(h);
        }
        Ok(Receipt {
            extra,
            index,
            hashes,
            checkpoint: checkpoint.to_string(),
        })
    }

    /// Checks the receipt for the leaf `leaf`: the checkpoint signed by
    /// `log_key`, the inclusion proof to its root, and cosignatures by at
    /// least `quorum` of `witnesses`.
    pub fn verify(
        &self,
        leaf: &Hash,
        log_key: &Verifier,
        witnesses: &[Verifier],
        quorum: usize,
    ) -> Result<Proven, ReceiptError> {
        let (checkpoint, note) = open_checkpoint(&self.checkpoint, log_key)?;
        merkle::verify_inclusion(
            self.index,
            checkpoint.size,
            leaf,
            &self.hashes,
            &checkpoint.root,
        )?;
        let mut cosigned_by = Vec::new();
        for w in witnesses {
            if let Ok(Some(t)) = note.verified_by(w) {
                cosigned_by.push((w.name.clone(), t));
            }
        }
        if cosigned_by.len() < quorum {
            return Err(ReceiptError::Quorum {
                got: cosigned_by.len(),
                want: quorum,
            });
        }
        Ok(Proven {
            checkpoint,
            cosigned_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlog::note::{Note, NoteSigner, COSIGNATURE_V1, ED25519};

    #[test]
    fn a_receipt_round_trips_and_checks_its_quorum() {
        let leaves: Vec<Hash> = (0..5u8).map(|i| merkle::leaf_hash(&[i])).collect();
        // A tree of 5 by hand: ((0,1),(2,3)),4.
        let n01 = merkle::node_hash(&leaves[0], &leaves[1]);
        let n23 = merkle::node_hash(&leaves[2], &leaves[3]);
        let n03 = merkle::node_hash(&n01, &n23);
        let root = merkle::node_hash(&n03, &leaves[4]);
        let log = NoteSigner::generate("example.org/log", ED25519).unwrap();
        let w1 = NoteSigner::generate("w1.example", COSIGNATURE_V1).unwrap();
        let w2 = NoteSigner::generate("w2.example", COSIGNATURE_V1).unwrap();
        let text = Checkpoint {
            origin: "example.org/log".into(),
            size: 5,
            root,
            extensions: vec![],
        }
        .text();
        let mut note = Note {
            text: text.clone(),
            signatures: vec![log.sign(&text)],
        };
        note.add(w1.cosign(&text, 1_700_000_000));
        let r = Receipt {
            extra: Some(b"entry".to_vec()),
            index: 2,
            hashes: vec![leaves[3], n01, leaves[4]],
            checkpoint: note.render(),
        };
        let back = Receipt::parse(&r.render()).unwrap();
        assert_eq!(back, r);
        let ws = [w1.verifier(), w2.verifier()];
        let p = back.verify(&leaves[2], &log.verifier(), &ws, 1).unwrap();
        assert_eq!(
            p.cosigned_by,
            vec![("w1.example".to_string(), 1_700_000_000)]
        );
        assert_eq!(
            back.verify(&leaves[2], &log.verifier(), &ws, 2),
            Err(ReceiptError::Quorum { got: 1, want: 2 })
        );
        assert!(back.verify(&leaves[3], &log.verifier(), &ws, 0).is_err());
        let other = NoteSigner::generate("example.org/log", ED25519).unwrap();
        assert!(back.verify(&leaves[2], &other.verifier(), &ws, 0).is_err());
        for bad in [
            "",
            "c2sp.org/tlog-proof@v1\n\n",
            "c2sp.org/tlog-proof@v1\nindex x\n\nc\n",
        ] {
            assert!(Receipt::parse(bad).is_err(), "{bad:?}");
        }
    }
}
