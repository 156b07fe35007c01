//! The store against a model: random appends (new, duplicate, conflicting,
//! with and without a required earlier bulletin), reopening the store mid-run;
//! after every step the store and the model agree. Plus properties of the
//! record encoding: round trips, and any damage is detected.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use beacon::domain::bulletin::Meta;
use beacon::store::{
    NewRecord, Record, Related, Replaced, Store, StoreError, StoreOptions, Tombstone,
};
use bytes::Bytes;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Append (publisher index, id index, content variant, requires id index).
    Append(u8, u8, u8, Option<u8>),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..3, 0u8..12, 0u8..2, proptest::option::weighted(0.2, 0u8..12))
            .prop_map(|(p, i, v, r)| Op::Append(p, i, v, r)),
        1 => Just(Op::Reopen),
    ]
}

fn id(i: u8) -> String {
    format!("00000000-0000-4000-8000-{:012x}", i)
}

fn new_record(p: u8, i: u8, v: u8, requires: Option<u8>) -> NewRecord {
    let envelope = format!("envelope p{p} i{i} v{v}").into_bytes();
    NewRecord {
        meta: Meta {
            id: id(i),
            publisher: format!("m{p}.example"),
            digest: beacon::domain::bulletin::sha256(&envelope),
            origin_node: "spiffe://td/node/m0.example/n".into(),
            origin_seq: 0,
            kind: 1,
            severity: 3,
            tlp: 2,
            created_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            expires_at: None,
            audience_members: vec![],
            audience_groups: vec![],
            topics: vec![format!("t{v}")],
        },
        envelope,
        // A different version `v` is different content.
        payload_digest: beacon::domain::bulletin::sha256(
            format!("payload p{p} i{i} v{v}").as_bytes(),
        ),
        related: requires.map(|r| Related {
            how: Replaced::Superseded,
            id: id(r),
            required: true,
        }),
        span: 1 + u32::from(v % 4),
    }
}

struct Model {
    /// (publisher, id) -> (seq, digest)
    index: HashMap<(String, String), (u64, [u8; 32])>,
    /// seq - 1 -> envelope
    log: Vec<Vec<u8>>,
    /// seq - 1 -> the record's span (µs it occupies)
    spans: Vec<u32>,
    /// (publisher, id) -> the sequence of the bulletin that superseded it
    superseded_by: HashMap<(String, String), u64>,
}

fn check(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(store.head(), model.log.len() as u64);
    for (i, env) in model.log.iter().enumerate() {
        let seq = i as u64 + 1;
        let rec = store
            .get(seq)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let rec = rec.ok_or_else(|| TestCaseError::fail(format!("record {seq} missing")))?;
        prop_assert_eq!(&rec.envelope, env);
        prop_assert_eq!(rec.meta.origin_seq, seq);
    }
    prop_assert!(store.get(model.log.len() as u64 + 1).unwrap().is_none());
    // Each record is accepted at least its predecessor's span later, so
    // every object of a reader's view of it has a distinct time.
    for seq in 2..=model.log.len() as u64 {
        let at = |s: u64| store.get(s).unwrap().unwrap().accepted_at;
        let gap = at(seq).duration_since(at(seq - 1)).unwrap_or_default();
        let span = u128::from(model.spans[seq as usize - 2]);
        prop_assert!(
            gap.as_micros() >= span,
            "record {} only {:?} after its predecessor (span {})",
            seq,
            gap,
            span
        );
    }
    for ((p, i), (seq, digest)) in &model.index {
        prop_assert_eq!(store.lookup(p, i).unwrap(), Some((*seq, *digest)));
        let key = (p.clone(), i.clone());
        prop_assert_eq!(
            store.successor(p, i).unwrap().map(|s| (s.how, s.seq)),
            model
                .superseded_by
                .get(&key)
                .map(|&s| (Replaced::Superseded, s))
        );
    }
    let scanned: Vec<u64> = store
        .range(1, u64::MAX)
        .map(|r| r.map(|r| r.seq))
        .collect::<Result<_, _>>()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(scanned, (1..=model.log.len() as u64).collect::<Vec<_>>());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_across_reopens(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), StoreOptions::defaults(beacon::interop::stix::SPANS)).unwrap();
        let mut model = Model { index: HashMap::new(), log: Vec::new(), spans: Vec::new(), superseded_by: HashMap::new() };
        for op in ops {
            match op {
                Op::Reopen => {
                    drop(store);
                    store = Store::open(dir.path(), StoreOptions::defaults(beacon::interop::stix::SPANS)).unwrap();
                }
                Op::Append(p, i, v, req) => {
                    let rec = new_record(p, i, v, req);
                    let key = (rec.meta.publisher.clone(), rec.meta.id.clone());
                    let digest = rec.meta.digest;
                    let envelope = rec.envelope.clone();
                    let span = rec.span;
                    let requires_missing = req.is_some_and(|r| !model.index.contains_key(&(key.0.clone(), id(r))));
                    let got = rt.block_on(store.append(rec));
                    match model.index.get(&key) {
                        Some(&(seq, d)) if d == digest => {
                            let a = got.map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert!(a.duplicate);
                            prop_assert_eq!(a.seq, seq);
                        }
                        Some(_) => prop_assert!(matches!(got, Err(StoreError::Conflict { .. })), "{:?}", got),
                        None if requires_missing => {
                            prop_assert!(matches!(got, Err(StoreError::MissingRelated { .. })), "{:?}", got)
                        }
                        None => {
                            let a = got.map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert!(!a.duplicate);
                            model.log.push(envelope);
                            model.spans.push(span);
                            prop_assert_eq!(a.seq, model.log.len() as u64);
                            if let Some(r) = req {
                                model.superseded_by.insert((key.0.clone(), id(r)), a.seq);
                            }
                            model.index.insert(key, (a.seq, digest));
                        }
                    }
                }
            }
            check(&store, &model)?;
        }
    }

    #[test]
    fn records_round_trip(seq in 1u64..u64::MAX, env in prop::collection::vec(any::<u8>(), 0..2048),
                          members in prop::collection::vec("[a-z.]{1,12}", 0..5),
                          topics in prop::collection::vec(".{0,20}", 0..5),
                          created in proptest::option::of(1u64..4_000_000_000),
                          expires in proptest::option::of(1u64..4_000_000_000)) {
        let rec = Record {
            seq,
            accepted_at: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            meta: Meta {
                id: "x".into(),
                publisher: "uk.ncsc".into(),
                digest: beacon::domain::bulletin::sha256(&env),
                origin_node: "spiffe://td/node/uk.ncsc/n1".into(),
                origin_seq: seq,
                kind: 3,
                severity: 4,
                tlp: 5,
                created_at: created.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
                expires_at: expires.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
                audience_members: members,
                audience_groups: vec!["eu".into()],
                topics,
            },
            envelope: env.into(),
        };
        let bytes = Bytes::from(rec.encode());
        prop_assert_eq!(Record::decode(seq, bytes).unwrap(), rec);
    }

    #[test]
    fn tombstones_round_trip_and_damage_is_detected(seq in 1u64..u64::MAX, id in "[a-f0-9-]{0,36}",
                                                   publisher in "[a-z.]{1,20}", digest in any::<[u8; 32]>(),
                                                   payload_digest in any::<Option<[u8; 32]>>(),
                                                   origin_node in "[a-z:/.-]{0,40}", origin_seq in any::<u64>(),
                                                   pos in any::<usize>(), flip in 1u8..=255) {
        let t = Tombstone {
            seq,
            accepted_at: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            pruned_at: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_800_000_000_000_000_001),
            digest,
            payload_digest,
            publisher,
            id,
            origin_node,
            origin_seq,
        };
        let bytes = t.encode();
        prop_assert_eq!(Tombstone::decode(seq, &bytes).unwrap(), t);
        let mut flipped = bytes.clone();
        let i = pos % flipped.len();
        flipped[i] ^= flip;
        prop_assert!(Tombstone::decode(seq, &flipped).is_err(), "flip at {} went unnoticed", i);
        prop_assert!(Tombstone::decode(seq.wrapping_add(1), &bytes).is_err());
    }

    #[test]
    fn any_damage_to_a_record_is_detected(env in prop::collection::vec(any::<u8>(), 1..512),
                                          pos in any::<usize>(), flip in 1u8..=255, cut in any::<usize>()) {
        let rec = Record {
            seq: 7,
            accepted_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            meta: Meta {
                id: "x".into(), publisher: "uk.ncsc".into(), digest: beacon::domain::bulletin::sha256(&env),
                origin_node: "n".into(), origin_seq: 7, kind: 1, severity: 1, tlp: 1, created_at: None, expires_at: None,
                audience_members: vec![], audience_groups: vec![], topics: vec![],
            },
            envelope: env.into(),
        };
        let bytes = rec.encode();
        let mut flipped = bytes.clone();
        let i = pos % flipped.len();
        flipped[i] ^= flip;
        let is_corrupt = |r: &Result<Record, StoreError>| matches!(r, Err(StoreError::Corrupt { seq: 7, .. }));
        prop_assert!(is_corrupt(&Record::decode(7, flipped.into())), "flip at {} went unnoticed", i);
        let truncated = Bytes::copy_from_slice(&bytes[..cut % bytes.len()]);
        prop_assert!(is_corrupt(&Record::decode(7, truncated)));
        // A valid record under the wrong key is refused too.
        prop_assert!(Record::decode(8, bytes.clone().into()).is_err());
        // A well-framed record whose envelope does not match its digest is
        // refused before it is served.
        let mut forged = rec.clone();
        let mut envelope = forged.envelope.to_vec();
        let j = pos % envelope.len();
        envelope[j] ^= flip;
        forged.envelope = envelope.into();
        let reread = Record::decode(7, forged.encode().into()).unwrap();
        let refused = matches!(reread.check_digest(), Err(StoreError::Corrupt { seq: 7, .. }));
        prop_assert!(refused, "a forged envelope passed its digest check");
        prop_assert!(Record::decode(7, bytes.into()).unwrap().check_digest().is_ok());
    }
}
