//! HPKE (RFC 9180) Base mode, single-shot, for the two suites a sealed
//! bulletin may use — the one file that names an HPKE implementation, so it
//! can be swapped (for the `hpke` crate, or the provider crate rustls 0.24
//! moves it to) without touching the sealed format.
//!
//! It is rustls's `crypto::aws_lc_rs::hpke`: already linked, on the one
//! crypto provider the node uses everywhere (aws-lc-rs), and checked here
//! against RFC 9180's Base-mode test vectors of both suites. Base mode is
//! all sealing needs: who sealed is proven by signatures, not by HPKE's
//! Auth mode (which suffers key-compromise impersonation, RFC 9180 §9.1.1).

use rustls::crypto::aws_lc_rs::hpke as provider;
use rustls::crypto::hpke::{EncapsulatedSecret, Hpke, HpkePrivateKey, HpkePublicKey};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpkeError {
    #[error("a {suite} public key is {expected} bytes, not {got}")]
    PublicKeyLength {
        suite: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("a {suite} encapsulated key is {expected} bytes, not {got}")]
    EncLength {
        suite: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("HPKE sealing failed (is the public key a point of the suite's curve?)")]
    Seal,
    /// The one answer to every way opening can fail (wrong key, altered
    /// `enc`, `info` or ciphertext): no oracle for which.
    #[error("HPKE opening failed: not sealed to this key, or altered")]
    Open,
    #[error("HPKE key generation failed")]
    Generate,
}

/// The suites a sealed bulletin may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Suite {
    /// DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-128-GCM: the default.
    P256Sha256Aes128Gcm,
    /// DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
    X25519Sha256ChaCha20Poly1305,
}

impl Suite {
    pub const ALL: [Suite; 2] = [
        Suite::P256Sha256Aes128Gcm,
        Suite::X25519Sha256ChaCha20Poly1305,
    ];

    /// RFC 9180's identifiers: (KEM, KDF, AEAD).
    pub fn ids(self) -> (u16, u16, u16) {
        match self {
            Suite::P256Sha256Aes128Gcm => (0x0010, 0x0001, 0x0001),
            Suite::X25519Sha256ChaCha20Poly1305 => (0x0020, 0x0001, 0x0003),
        }
    }

    pub fn from_ids(kem: u16, kdf: u16, aead: u16) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.ids() == (kem, kdf, aead))
    }

    /// Its name, as keys, records and messages spell it.
    pub fn name(self) -> &'static str {
        match self {
            Suite::P256Sha256Aes128Gcm => "P256-SHA256-AES128GCM",
            Suite::X25519Sha256ChaCha20Poly1305 => "X25519-SHA256-CHACHA20POLY1305",
        }
    }

    pub fn parse(name: &str) -> Option<Suite> {
        Suite::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// Bytes of a public key and of an encapsulated key (`Npk` = `Nenc`).
    pub fn public_len(self) -> usize {
        match self {
            Suite::P256Sha256Aes128Gcm => 65,
            Suite::X25519Sha256ChaCha20Poly1305 => 32,
        }
    }

    /// Bytes of a private key (`Nsk`).
    pub fn private_len(self) -> usize {
        32
    }

    /// The AEAD's tag length (`Nt`): a sealed text is this much longer.
    pub fn tag_len(self) -> usize {
        16
    }

    fn provider(self) -> &'static dyn Hpke {
        match self {
            Suite::P256Sha256Aes128Gcm => provider::DH_KEM_P256_HKDF_SHA256_AES_128,
            Suite::X25519Sha256ChaCha20Poly1305 => {
                provider::DH_KEM_X25519_HKDF_SHA256_CHACHA20_POLY1305
            }
        }
    }

    fn check_public(self, key: &[u8]) -> Result<(), HpkeError> {
        match key.len() == self.public_len() {
            true => Ok(()),
            false => Err(HpkeError::PublicKeyLength {
                suite: self.name(),
                expected: self.public_len(),
                got: key.len(),
            }),
        }
    }
}

/// A key pair of `suite`: (public key, private key), each as RFC 9180
/// serializes it (an uncompressed point or 32 bytes; a 32-byte scalar).
pub fn generate(suite: Suite) -> Result<(Vec<u8>, Vec<u8>), HpkeError> {
    let (public, private) = suite
        .provider()
        .generate_key_pair()
        .map_err(|_| HpkeError::Generate)?;
    Ok((public.0, private.secret_bytes().to_vec()))
}

/// SealBase(pkR, info, aad, pt): the encapsulated key and the ciphertext.
pub fn seal(
    suite: Suite,
    public: &[u8],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), HpkeError> {
    suite.check_public(public)?;
    let (enc, ct) = suite
        .provider()
        .seal(info, aad, plaintext, &HpkePublicKey(public.to_vec()))
        .map_err(|_| HpkeError::Seal)?;
    Ok((enc.0, ct))
}

/// OpenBase(enc, skR, info, aad, ct).
pub fn open(
    suite: Suite,
    private: &[u8],
    enc: &[u8],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, HpkeError> {
    if enc.len() != suite.public_len() {
        return Err(HpkeError::EncLength {
            suite: suite.name(),
            expected: suite.public_len(),
            got: enc.len(),
        });
    }
    if private.len() != suite.private_len() {
        return Err(HpkeError::Open);
    }
    suite
        .provider()
        .open(
            &EncapsulatedSecret(enc.to_vec()),
            info,
            aad,
            ciphertext,
            &HpkePrivateKey::from(private.to_vec()),
        )
        .map_err(|_| HpkeError::Open)
}

/// The public key of `private` (a client checks the key file it was given
/// matches the key it announced).
pub fn public_of(suite: Suite, private: &[u8]) -> Result<Vec<u8>, HpkeError> {
    use aws_lc_rs::agreement;
    let alg = match suite {
        Suite::P256Sha256Aes128Gcm => &agreement::ECDH_P256,
        Suite::X25519Sha256ChaCha20Poly1305 => &agreement::X25519,
    };
    let key = agreement::PrivateKey::from_private_key(alg, private).map_err(|_| HpkeError::Open)?;
    key.compute_public_key()
        .map(|p| p.as_ref().to_vec())
        .map_err(|_| HpkeError::Open)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// RFC 9180 Appendix A, Base mode, for both suites: the recipient's
    /// public key follows from its private key, and the first encryption of
    /// each vector opens to its plaintext (and altered, does not).
    #[test]
    fn rfc9180_base_mode_vectors_open() {
        let text = include_str!("../../tests/data/hpke/rfc9180-base.json");
        let vectors: serde_json::Value = serde_json::from_str(text).expect("vectors");
        let mut seen = std::collections::BTreeSet::new();
        for v in vectors.as_array().expect("array") {
            let id = |k: &str| v[k].as_u64().expect("id") as u16;
            let suite = Suite::from_ids(id("kem_id"), id("kdf_id"), id("aead_id")).expect("suite");
            assert_eq!(v["mode"], 0);
            let s = |k: &str| hex(v[k].as_str().expect("hex field"));
            let (sk, pk, enc, info) = (s("skRm"), s("pkRm"), s("enc"), s("info"));
            assert_eq!(
                public_of(suite, &sk).expect("public"),
                pk,
                "{}",
                suite.name()
            );
            let e = &v["encryptions"][0];
            let e = |k: &str| hex(e[k].as_str().expect("hex field"));
            let (aad, ct, pt) = (e("aad"), e("ct"), e("pt"));
            assert_eq!(open(suite, &sk, &enc, &info, &aad, &ct).expect("open"), pt);
            let mut bad = ct.clone();
            bad[0] ^= 1;
            assert_eq!(
                open(suite, &sk, &enc, &info, &aad, &bad),
                Err(HpkeError::Open)
            );
            assert_eq!(
                open(suite, &sk, &enc, b"other info", &aad, &ct),
                Err(HpkeError::Open)
            );
            seen.insert(suite);
        }
        assert_eq!(seen.len(), Suite::ALL.len(), "a vector for every suite");
    }

    #[test]
    fn sealed_opens_with_its_key_only() {
        for suite in Suite::ALL {
            let (pk, sk) = generate(suite).expect("keys");
            assert_eq!(pk.len(), suite.public_len());
            assert_eq!(public_of(suite, &sk).expect("public"), pk);
            let (enc, ct) = seal(suite, &pk, b"info", b"", b"a content key").expect("seal");
            assert_eq!(ct.len(), 13 + suite.tag_len());
            assert_eq!(
                open(suite, &sk, &enc, b"info", b"", &ct).expect("open"),
                b"a content key"
            );
            let (_, other) = generate(suite).expect("keys");
            assert_eq!(
                open(suite, &other, &enc, b"info", b"", &ct),
                Err(HpkeError::Open)
            );
            assert!(matches!(
                seal(suite, &pk[1..], b"info", b"", b"x"),
                Err(HpkeError::PublicKeyLength { .. })
            ));
            assert!(matches!(
                open(suite, &sk, &enc[1..], b"info", b"", &ct),
                Err(HpkeError::EncLength { .. })
            ));
        }
    }
}
