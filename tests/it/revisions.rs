//! Revisions and retractions in every read: `Get` says what replaced a
//! bulletin, `List` and `Subscribe` can ask for the current view only, the
//! CLI shows it, and a revision or retraction may not narrow the audience
//! of what it replaces. A store from before index entries knew their
//! successors is upgraded in place at open.

use std::time::Duration;

use crate::common::*;
use beacon::base::proto::v1 as pb;
use beacon::domain::bulletin::{Relation, Tlp};
use tonic::Code;

fn marked(
    publisher: &str,
    title: &str,
    tlp: Tlp,
    members: &[&str],
) -> beacon::domain::bulletin::Bulletin {
    let mut b = bulletin(publisher, title);
    b.tlp = beacon::domain::bulletin::codec::tlp_to_i32(tlp);
    b.audience.members = members.iter().map(|s| s.to_string()).collect();
    b
}

fn how(d: &pb::Delivery) -> Option<(pb::replacement::How, u64, String)> {
    d.replaced_by.as_ref().map(|r| {
        (
            pb::replacement::How::try_from(r.how).expect("known how"),
            r.sequence,
            r.id.clone(),
        )
    })
}

async fn get(c: &mut beacon::net::client::BeaconClient, id: &str) -> pb::Delivery {
    c.bulletins
        .get(pb::GetRequest {
            id: id.to_owned(),
            publisher: String::new(),
        })
        .await
        .expect("get")
        .into_inner()
        .delivery
        .expect("a delivery")
}

async fn list(c: &mut beacon::net::client::BeaconClient, current_only: bool) -> Vec<pb::Delivery> {
    c.bulletins
        .list(pb::ListRequest {
            after_sequence: 0,
            until_sequence: 0,
            limit: 100,
            filter: None,
            current_only,
            include_expired: false,
        })
        .await
        .expect("list")
        .into_inner()
        .deliveries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_and_retractions_show_in_every_read() {
    let w = world().await;
    let (mut uk, _) = w.client("uk.ncsc", "analyst").await;
    let (mut us, us_files) = w.client("us.cisa", "reader").await;

    // 1: an AMBER bulletin for us.cisa; 2: a revision that widens it; 3: an
    // unrelated one; 4: the revision retracted (GREEN: everyone).
    let original = marked("uk.ncsc", "forged memo", Tlp::Amber, &["us.cisa"]);
    uk.publish(&original).await.unwrap();
    let mut revision = marked(
        "uk.ncsc",
        "forged memo (updated)",
        Tlp::Amber,
        &["us.cisa", "fr.anssi"],
    );
    revision.relation = Some(Relation::Supersedes(original.id.clone()));
    assert_eq!(uk.publish(&revision).await.unwrap().sequence, 2);
    let other = marked("uk.ncsc", "unrelated", Tlp::Green, &[]);
    uk.publish(&other).await.unwrap();

    // A retraction that some reader of the revision could not read is refused.
    for (tlp, members) in [
        (Tlp::Amber, vec!["us.cisa"]),
        (Tlp::Red, vec!["fr.anssi"]),
        (Tlp::AmberStrict, vec!["us.cisa"]),
    ] {
        let mut narrow = marked("uk.ncsc", "retracted quietly", tlp, &members);
        narrow.relation = Some(Relation::Retracts(revision.id.clone()));
        let env = uk.signer.sign(narrow.to_bytes()).unwrap();
        let before = w.head().await;
        match uk.publish_envelope(&env).await {
            Err(beacon::net::client::ClientError::Rpc(s)) => {
                assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
                assert!(
                    s.message()
                        .contains("readable by everyone who could read the original"),
                    "{}",
                    s.message()
                );
            }
            other => {
                panic!("a narrowing retraction ({tlp:?} {members:?}) was not refused: {other:?}")
            }
        }
        assert_eq!(w.head().await, before, "nothing stored");
    }
    let mut retraction = marked("uk.ncsc", "memo was genuine", Tlp::Green, &[]);
    retraction.relation = Some(Relation::Retracts(revision.id.clone()));
    assert_eq!(uk.publish(&retraction).await.unwrap().sequence, 4);

    // Get says what replaced each.
    use pb::replacement::How;
    assert_eq!(
        how(&get(&mut us, &original.id).await),
        Some((How::Superseded, 2, revision.id.clone()))
    );
    assert_eq!(
        how(&get(&mut us, &revision.id).await),
        Some((How::Retracted, 4, retraction.id.clone()))
    );
    assert_eq!(how(&get(&mut us, &retraction.id).await), None);
    assert_eq!(how(&get(&mut us, &other.id).await), None);

    // List: everything, annotated; or the current view only.
    let all = list(&mut us, false).await;
    assert_eq!(
        all.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(how(&all[0]).map(|h| h.0), Some(How::Superseded));
    assert_eq!(how(&all[1]).map(|h| h.0), Some(How::Retracted));
    let current = list(&mut us, true).await;
    assert_eq!(
        current.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        vec![3, 4],
        "the current view has no superseded or retracted bulletin, and keeps the retraction"
    );

    // Subscribe: the same two views, in order.
    for (current_only, want) in [(false, vec![1, 2, 3, 4]), (true, vec![3, 4])] {
        let mut o = open("", earliest());
        o.current_only = current_only;
        let mut sub = us.subscribe(o).await.unwrap();
        let seen = read_deliveries(&mut sub, want.len(), true, Duration::from_secs(20)).await;
        assert_eq!(seen.seqs, want, "current_only={current_only}");
    }

    // The CLI shows it, for people and in JSON.
    let dir = tempfile::tempdir().unwrap();
    let addr = w.node.addr.to_string();
    let ca = w.pki.ca_cert();
    let conn = [
        "--node",
        addr.as_str(),
        "--cert",
        us_files.cert.to_str().unwrap(),
        "--key",
        us_files.key.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
        "--node-id",
        w.node_id.as_str(),
    ];
    let mut args = vec!["get", revision.id.as_str()];
    args.extend_from_slice(&conn);
    let (code, out, err) = beacon(dir.path(), &args);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("[retracted by #4 id={}]", retraction.id)),
        "{out}"
    );
    args.push("--json");
    let (code, out, err) = beacon(dir.path(), &args);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["replaced_by"]["how"], "retracted");
    assert_eq!(v["replaced_by"]["sequence"], 4);
    assert_eq!(v["replaced_by"]["id"], retraction.id.as_str());
    let mut args = vec!["list", "--current-only", "--json"];
    args.extend_from_slice(&conn);
    let (code, out, err) = beacon(dir.path(), &args);
    assert_eq!(code, 0, "{err}");
    let seqs: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["sequence"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![3, 4]);
}

/// The store's own check, whether the original is already stored or still in
/// the commit batch of the bulletin that replaces it (appends queued back to
/// back, unawaited, usually share a batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowing_retraction_in_the_same_batch_as_its_original_is_refused() {
    use beacon::store::{Replaced, Store, StoreError, StoreOptions};
    let pki = TestPki::new();
    let signer = signer(&pki.client("uk.ncsc", "analyst"));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreOptions::defaults(beacon::interop::stix::SPANS),
    )
    .unwrap();

    let original = marked("uk.ncsc", "original", Tlp::Amber, &["us.cisa", "fr.anssi"]);
    let mut narrow = marked("uk.ncsc", "narrow", Tlp::Red, &["us.cisa"]);
    narrow.relation = Some(Relation::Retracts(original.id.clone()));
    let mut wide = marked("uk.ncsc", "wide", Tlp::Green, &[]);
    wide.relation = Some(Relation::Retracts(original.id.clone()));
    let mut pending = Vec::new();
    for b in [&original, &narrow, &wide] {
        pending.push(store.enqueue(store_record(&signer, b)).await.unwrap());
    }
    let mut outcomes = Vec::new();
    for p in pending {
        outcomes.push(p.await);
    }
    assert_eq!(outcomes[0].as_ref().unwrap().seq, 1);
    assert!(
        matches!(outcomes[1], Err(StoreError::Narrows { .. })),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(outcomes[2].as_ref().unwrap().seq, 2);
    let s = store.successor("uk.ncsc", &original.id).unwrap().unwrap();
    assert_eq!((s.how, s.seq), (Replaced::Retracted, 2));
}
