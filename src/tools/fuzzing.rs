//! The bodies of the fuzz targets (`fuzz/fuzz_targets/`), in the library so
//! that the stable test suite can run them over the checked-in corpus
//! (`tests/it/fuzz_corpus.rs`) and `cargo fuzz` can explore from there. Each
//! takes arbitrary bytes; the property is that it returns (an error is fine)
//! and never panics, and that what decodes re-encodes consistently.
//!
//! Its `expect`s and asserts are the fuzz properties themselves (and set-up
//! from fixed inputs): a panic here is a finding, not input handling.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A fixed time, so runs are reproducible.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A trust bundle with one throwaway CA, made once.
fn bundle() -> &'static crate::trust::TrustBundle {
    static B: OnceLock<crate::trust::TrustBundle> = OnceLock::new();
    B.get_or_init(|| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let cert = params.self_signed(&key).expect("self-signed");
        let entry = crate::trust::CaEntry::new(
            cert.der().clone(),
            crate::base::identity::MemberScope::any(),
        )
        .expect("CA entry");
        let td = "fuzz.example".parse().expect("trust domain");
        crate::trust::TrustBundle::new(td, vec![entry], vec![]).expect("bundle")
    })
}

/// Envelope bytes (as `Publish` receives them): decode, then verify.
pub fn envelope(data: &[u8]) {
    if let Ok(env) = crate::domain::bulletin::codec::decode_envelope(data) {
        let again = crate::domain::bulletin::codec::encode_envelope(&env);
        // Decoding the canonical form gives the same envelope.
        assert_eq!(
            crate::domain::bulletin::codec::decode_envelope(&again).ok(),
            Some(env.clone())
        );
        let _ = crate::domain::bulletin::verify_envelope(&env, bundle(), now());
        let _ = crate::domain::bulletin::verify_stored_envelope(&env, bundle(), now());
    }
}

/// Bulletin payload bytes: decode, validate, round-trip.
pub fn bulletin(data: &[u8]) {
    if let Ok(b) = crate::domain::bulletin::codec::decode_bulletin(data) {
        let _ = crate::domain::bulletin::validate(&b, now());
        let again =
            crate::domain::bulletin::codec::decode_bulletin(&b.to_bytes()).expect("re-decodes");
        assert_eq!(again, b);
        let doc = crate::interop::document::BulletinDoc::from_bulletin(&b);
        let _ = doc.to_bulletin(&b.publisher);
    }
}

/// SPIFFE ids, member ids, names and member patterns.
pub fn identity(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = s.parse::<crate::base::identity::Identity>() {
        // What parses prints back to itself.
        assert_eq!(
            id.to_string()
                .parse::<crate::base::identity::Identity>()
                .ok(),
            Some(id)
        );
    }
    let _ = s.parse::<crate::base::identity::MemberId>();
    let _ = s.parse::<crate::base::identity::Name>();
    let parts: Vec<&str> = s.split(',').collect();
    let _ = crate::base::identity::MemberScope::parse_list(&parts);
}

/// `beacon.toml` text.
pub fn config(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::base::config::Config::parse(s, std::path::Path::new("/etc/beacon"));
    }
}

/// Bulletin documents (JSON/YAML) and DSSE JSON.
pub fn documents(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(docs) = crate::interop::document::parse_bulletins(s, None) {
            for d in docs {
                let _ = d.to_bulletin("fuzz.member");
            }
        }
        if let Ok(env) = crate::interop::document::envelope_from_dsse(s) {
            let text = crate::interop::document::envelope_to_dsse(&env);
            assert_eq!(
                crate::interop::document::envelope_from_dsse(&text).ok(),
                Some(env)
            );
        }
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name (for the corpus runner).
pub const TARGETS: &[(&str, Target)] = &[
    ("envelope", envelope),
    ("bulletin", bulletin),
    ("identity", identity),
    ("config", config),
    ("documents", documents),
];
