//! The publish path through the gRPC API: tampering, validation rules,
//! idempotence, and Get/List authorization across TLP × audience.

use std::time::{Duration, SystemTime};

use crate::common::*;
use beacon::base::proto::v1 as pb;
use beacon::domain::bulletin::{self, Bulletin, Envelope, Relation, Tlp};
use beacon::net::client::{BeaconClient, ClientError};
use tonic::Code;

fn rpc(r: Result<beacon::net::client::Published, ClientError>) -> (Code, String) {
    match r {
        Ok(p) => panic!("expected a refusal, got {p:?}"),
        Err(ClientError::Rpc(s)) => (s.code(), s.message().to_owned()),
        Err(e) => panic!("expected an RPC status, got {e}"),
    }
}

/// Publishes `env`, expects `code` with `needle` in the message, and nothing stored.
async fn refused(w: &World, c: &mut BeaconClient, env: &Envelope, code: Code, needle: &str) {
    let before = w.head().await;
    let (got, msg) = rpc(c.publish_envelope(env).await);
    assert_eq!(got, code, "wrong status for {needle:?}: {msg}");
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
    assert_eq!(
        w.head().await,
        before,
        "a refused bulletin was stored ({needle})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_get_and_verify_round_trip() {
    let w = world().await;
    let (mut c, _) = w.client("uk.ncsc", "analyst").await;
    let b = bulletin("uk.ncsc", "fake accounts amplify a forged memo");
    let env = c.signer.sign(b.to_bytes()).unwrap();
    let p = c.publish_envelope(&env).await.unwrap();
    assert_eq!((p.sequence, p.duplicate), (1, false));
    let p2 = c.publish(&bulletin("uk.ncsc", "second")).await.unwrap();
    assert_eq!(p2.sequence, 2, "sequences are gapless");

    let got = c
        .bulletins
        .get(pb::GetRequest {
            id: b.id.clone(),
            publisher: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap();
    assert_eq!(got.sequence, 1);
    assert_eq!(got.origin_sequence, 1);
    assert_eq!(got.origin_node, format!("spiffe://{TD}/node/drc/hub-1"));
    let served = beacon::net::client::delivered_envelope(&got).unwrap();
    assert_eq!(
        served.payload, env.payload,
        "payload bytes are served exactly as signed"
    );
    assert_eq!(
        got.envelope_digest,
        bulletin::sha256(&beacon::domain::bulletin::codec::encode_envelope(&env)).to_vec()
    );
    // Anyone holding the trust bundle can verify who wrote it.
    let bundle = beacon::trust::load_bundle(
        &beacon::base::config::Config::load(&w.node.config_path).unwrap(),
        &td(),
    )
    .unwrap();
    let v = bulletin::verify_envelope(&served, &bundle, SystemTime::now()).unwrap();
    assert_eq!(
        v.signer().to_string(),
        format!("spiffe://{TD}/client/uk.ncsc/analyst")
    );
    assert_eq!(v.bulletin(), &b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_signers_publish_too() {
    let pki = TestPki::with_ca("*", beacon::tools::pki::Algorithm::Ed25519);
    let node = TestNode::start(&NodeOptions::new(&pki, pki.node("drc", "hub-1"))).await;
    let files = pki.client("de.bsi", "ed25519");
    let mut c = member(node.addr, &files, &[pki.ca_cert()]).await;
    assert_eq!(
        c.publish(&bulletin("de.bsi", "ed25519 signed"))
            .await
            .unwrap()
            .sequence,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_envelopes_are_refused_and_nothing_is_stored() {
    let w = world().await;
    let (mut alice, alice_files) = w.client("uk.ncsc", "alice").await;
    let (mut bob, bob_files) = w.client("uk.ncsc", "bob").await;
    let good = alice
        .signer
        .sign(bulletin("uk.ncsc", "original").to_bytes())
        .unwrap();

    let mut env = good.clone();
    let mid = env.payload.len() / 2;
    env.payload[mid] ^= 0x01;
    refused(
        &w,
        &mut alice,
        &env,
        Code::InvalidArgument,
        "signature does not verify",
    )
    .await;

    let mut env = good.clone();
    env.signatures[0].sig[3] ^= 0x80;
    refused(
        &w,
        &mut alice,
        &env,
        Code::InvalidArgument,
        "signature does not verify",
    )
    .await;

    // Swapped chain: bob's valid certificate under alice's signature.
    let mut env = good.clone();
    env.signatures[0].cert_chain = vec![std::fs::read(&bob_files.cert)
        .map(|pem| {
            beacon::trust::parse_pem_or_der(&pem, "CERTIFICATE")
                .unwrap()
                .remove(0)
        })
        .unwrap()];
    refused(
        &w,
        &mut alice,
        &env,
        Code::InvalidArgument,
        "signature does not verify",
    )
    .await;

    // A chain from a CA outside the bundle (signature itself is valid).
    let rogue_dir = w.pki.other_ca("rogue", "*");
    let rogue = w.pki.issue_from(
        &rogue_dir,
        beacon::tools::pki::IssueRequest::new(id(
            beacon::base::identity::RoleKind::Client,
            Some("uk.ncsc"),
            "alice",
        )),
    );
    let env = signer(&rogue)
        .sign(bulletin("uk.ncsc", "rogue").to_bytes())
        .unwrap();
    refused(
        &w,
        &mut alice,
        &env,
        Code::PermissionDenied,
        "signer certificate refused",
    )
    .await;

    // A client signing as another member.
    let mut b = bulletin("us.cisa", "impersonation");
    b.publisher = "us.cisa".into();
    let env = alice.signer.sign(b.to_bytes()).unwrap();
    refused(
        &w,
        &mut alice,
        &env,
        Code::PermissionDenied,
        "may not publish for member us.cisa",
    )
    .await;

    // An empty publisher is named as empty, never left blank.
    let mut b = bulletin("uk.ncsc", "no publisher");
    b.publisher = String::new();
    let env = alice.signer.sign(b.to_bytes()).unwrap();
    refused(
        &w,
        &mut alice,
        &env,
        Code::PermissionDenied,
        "its publisher field is empty",
    )
    .await;

    // A client relaying another client's envelope.
    refused(
        &w,
        &mut bob,
        &good,
        Code::PermissionDenied,
        "publishes only what it signed itself",
    )
    .await;

    // A revoked signer, relayed by a node of its member. Carol publishes once
    // before the revocation, so the node holds a cached verdict on her chain
    // that the CRL reload must void.
    let carol_files = w.pki.client("uk.ncsc", "carol");
    let carol = signer(&carol_files);
    let relay_files = w.pki.node("uk.ncsc", "relay");
    let mut relay = member(w.node.addr, &relay_files, &w.ca).await;
    let before = carol
        .sign(bulletin("uk.ncsc", "carol before").to_bytes())
        .unwrap();
    assert_eq!(relay.publish_envelope(&before).await.unwrap().sequence, 1);
    let after = carol
        .sign(bulletin("uk.ncsc", "carol after").to_bytes())
        .unwrap();
    w.pki.revoke(&carol_files);
    wait_revocations(w.node.addr, &w.op, &w.ca, 1).await;
    refused(
        &w,
        &mut relay,
        &after,
        Code::PermissionDenied,
        "signer certificate refused: certificate has been revoked",
    )
    .await;
    assert_eq!(w.head().await, 1, "only carol's earlier bulletin is stored");

    // The untouched envelope still goes through, relayed by a node of the member.
    let p = relay.publish_envelope(&good).await.unwrap();
    assert_eq!(p.sequence, 2);
    let _ = alice_files;
}

fn signed(c: &BeaconClient, b: &Bulletin) -> Envelope {
    c.signer.sign(b.to_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_refuses_and_stores_nothing() {
    let w = world().await;
    let (mut c, _) = w.client("uk.ncsc", "a").await;
    let base = bulletin("uk.ncsc", "base");
    let now = SystemTime::now();
    type Mutate = Box<dyn Fn(&mut Bulletin)>;
    let cases: Vec<(&str, Mutate, Code, &str)> = vec![
        (
            "id not a uuid",
            Box::new(|b| b.id = "not-a-uuid".into()),
            Code::InvalidArgument,
            "not a lower-case hyphenated UUID",
        ),
        (
            "id upper case",
            Box::new(|b| b.id = b.id.to_uppercase()),
            Code::InvalidArgument,
            "UUID",
        ),
        (
            "TLP unspecified",
            Box::new(|b| b.tlp = 0),
            Code::InvalidArgument,
            "TLP label 0 is not known",
        ),
        (
            "TLP unknown",
            Box::new(|b| b.tlp = 42),
            Code::InvalidArgument,
            "TLP label 42 is not known",
        ),
        (
            "kind unknown",
            Box::new(|b| b.kind = 99),
            Code::InvalidArgument,
            "kind 99",
        ),
        (
            "severity unspecified",
            Box::new(|b| b.severity = 0),
            Code::InvalidArgument,
            "severity 0",
        ),
        (
            "RED without recipients",
            Box::new(|b| {
                b.tlp = beacon::domain::bulletin::codec::tlp_to_i32(Tlp::Red);
                b.audience.groups = vec!["five-eyes".into()];
            }),
            Code::InvalidArgument,
            "TLP:RED must name at least one member",
        ),
        (
            "bad audience member",
            Box::new(|b| b.audience.members = vec!["Not A Member".into()]),
            Code::InvalidArgument,
            "audience",
        ),
        (
            "empty title",
            Box::new(|b| b.title = "  ".into()),
            Code::InvalidArgument,
            "title is empty",
        ),
        (
            "long title",
            Box::new(|b| b.title = "x".repeat(201)),
            Code::InvalidArgument,
            "title is longer",
        ),
        (
            "empty summary",
            Box::new(|b| b.summary.clear()),
            Code::InvalidArgument,
            "summary is empty",
        ),
        (
            "control chars",
            Box::new(|b| b.title = "bell\u{7}".into()),
            Code::InvalidArgument,
            "control characters",
        ),
        (
            "no created_at",
            Box::new(|b| b.created_at = None),
            Code::InvalidArgument,
            "created_at is missing",
        ),
        (
            "future created_at",
            Box::new(move |b| b.created_at = Some(now + Duration::from_secs(3600))),
            Code::InvalidArgument,
            "in the future",
        ),
        (
            "ancient created_at",
            Box::new(|b| b.created_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(10))),
            Code::InvalidArgument,
            "before the year 2000",
        ),
        (
            "expires before created",
            Box::new(move |b| b.expires_at = Some(now - Duration::from_secs(60))),
            Code::InvalidArgument,
            "expires_at",
        ),
        (
            "supersedes itself",
            Box::new(|b| b.relation = Some(Relation::Supersedes(b.id.clone()))),
            Code::InvalidArgument,
            "itself",
        ),
        (
            "supersedes unknown",
            Box::new(|b| {
                b.relation = Some(Relation::Supersedes(
                    "5f0c6a8e-8e4c-4f51-9a39-3f1b0f1b2c3d".into(),
                ))
            }),
            Code::FailedPrecondition,
            "supersedes names bulletin",
        ),
        (
            "retracts unknown",
            Box::new(|b| {
                b.relation = Some(Relation::Retracts(
                    "5f0c6a8e-8e4c-4f51-9a39-3f1b0f1b2c3d".into(),
                ))
            }),
            Code::FailedPrecondition,
            "retracts names bulletin",
        ),
        (
            "too many topics",
            Box::new(|b| b.topics = (0..40).map(|i| format!("t{i}")).collect()),
            Code::InvalidArgument,
            "topics",
        ),
        (
            "empty indicator",
            Box::new(|b| {
                b.indicators = vec![bulletin::Indicator {
                    kind: "domain".into(),
                    value: String::new(),
                    ..Default::default()
                }]
            }),
            Code::InvalidArgument,
            "indicator value is empty",
        ),
    ];
    for (what, mutate, code, needle) in cases {
        let mut b = base.clone();
        b.id = uuid::Uuid::new_v4().to_string();
        mutate(&mut b);
        eprintln!("case: {what}");
        let env = signed(&c, &b);
        refused(&w, &mut c, &env, code, needle).await;
    }

    // Envelope-level rules.
    let good = signed(&c, &base);
    let mut env = good.clone();
    env.payload_type = "application/json".into();
    refused(
        &w,
        &mut c,
        &env,
        Code::InvalidArgument,
        "unknown payload type",
    )
    .await;
    let mut env = good.clone();
    env.signatures.clear();
    refused(
        &w,
        &mut c,
        &env,
        Code::InvalidArgument,
        "exactly one signature",
    )
    .await;
    let mut env = good.clone();
    env.signatures.push(env.signatures[0].clone());
    refused(
        &w,
        &mut c,
        &env,
        Code::InvalidArgument,
        "exactly one signature",
    )
    .await;
    let env = c
        .signer
        .sign(b"\xff\xff\xff not protobuf".to_vec())
        .unwrap();
    refused(
        &w,
        &mut c,
        &env,
        Code::InvalidArgument,
        "not a well-formed Bulletin",
    )
    .await;
    let mut big = base.clone();
    big.body = "x".repeat(300 * 1024);
    let env = signed(&c, &big);
    refused(
        &w,
        &mut c,
        &env,
        Code::ResourceExhausted,
        "the limit is 262144",
    )
    .await;

    // A bulletin of another member cannot be superseded.
    let (mut other, _) = w.client("fr.anssi", "b").await;
    let theirs = bulletin("fr.anssi", "theirs");
    other.publish(&theirs).await.unwrap();
    let mut b = bulletin("uk.ncsc", "hijack");
    b.relation = Some(Relation::Retracts(theirs.id.clone()));
    let env = signed(&c, &b);
    refused(&w, &mut c, &env, Code::FailedPrecondition, "does not hold").await;

    // And the base bulletin itself is fine, as is a correct supersede and retraction.
    c.publish(&base).await.unwrap();
    let mut newer = bulletin("uk.ncsc", "update");
    newer.relation = Some(Relation::Supersedes(base.id.clone()));
    c.publish(&newer).await.unwrap();
    let mut retraction = bulletin("uk.ncsc", "retracted");
    retraction.relation = Some(Relation::Retracts(newer.id.clone()));
    assert_eq!(c.publish(&retraction).await.unwrap().sequence, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_idempotent_and_conflicts_are_refused() {
    let w = world().await;
    let (mut c, _) = w.client("uk.ncsc", "a").await;
    let b = bulletin("uk.ncsc", "once");
    let env = signed(&c, &b);
    let first = c.publish_envelope(&env).await.unwrap();
    let again = c.publish_envelope(&env).await.unwrap();
    assert_eq!(again.sequence, first.sequence);
    assert!(again.duplicate && !first.duplicate);
    assert_eq!(again.digest, first.digest);

    // The same bulletin signed again (ECDSA signatures differ on every
    // signing: a client that re-signs when it retries) is a duplicate too,
    // answered with the original; the original envelope stays what is served.
    let resigned = signed(&c, &b);
    assert_ne!(resigned.signatures[0].sig, env.signatures[0].sig);
    let retried = c.publish_envelope(&resigned).await.unwrap();
    assert_eq!(retried.sequence, first.sequence);
    assert!(retried.duplicate);
    let again_and_again = c.publish(&b).await.unwrap();
    assert!(again_and_again.duplicate && again_and_again.sequence == first.sequence);
    let served = c
        .bulletins
        .get(pb::GetRequest {
            id: b.id.clone(),
            publisher: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap();
    assert_eq!(served.envelope_digest, first.digest);

    let mut changed = b.clone();
    changed.title = "changed".into();
    let (code, msg) = rpc(c.publish(&changed).await);
    assert_eq!(code, Code::AlreadyExists, "{msg}");
    // Concurrent identical publishes: one record.
    let b2 = bulletin("uk.ncsc", "racing");
    let env2 = signed(&c, &b2);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c2 = c.clone();
        let env2 = env2.clone();
        tasks.push(tokio::spawn(async move {
            c2.publish_envelope(&env2).await.unwrap()
        }));
    }
    let mut seqs = std::collections::BTreeSet::new();
    let mut fresh = 0;
    for t in tasks {
        let p = t.await.unwrap();
        seqs.insert(p.sequence);
        fresh += usize::from(!p.duplicate);
    }
    assert_eq!(seqs.len(), 1, "one sequence for one envelope");
    assert_eq!(fresh, 1, "exactly one publish stored it");
    assert_eq!(w.head().await, 2);
}

/// The authorization matrix for Get and List: TLP × audience × reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_list_follow_tlp_and_audience() {
    let pki = TestPki::new();
    let mut opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    opts.extra = "[groups]\neu = [\"fr.anssi\", \"de.bsi\"]\n".into();
    let node = TestNode::start(&opts).await;
    let ca = vec![pki.ca_cert()];
    let mut uk = member(node.addr, &pki.client("uk.ncsc", "pub"), &ca).await;
    let readers = ["uk.ncsc", "us.cisa", "fr.anssi", "de.bsi", "nz.ncsc"];

    // (tlp, audience members, audience groups, who may read besides the publisher)
    type Case<'a> = (Tlp, Vec<&'a str>, Vec<&'a str>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            Tlp::Clear,
            vec![],
            vec![],
            vec!["us.cisa", "fr.anssi", "de.bsi", "nz.ncsc"],
        ),
        (
            Tlp::Green,
            vec!["us.cisa"],
            vec![],
            vec!["us.cisa", "fr.anssi", "de.bsi", "nz.ncsc"],
        ),
        (
            Tlp::Amber,
            vec![],
            vec![],
            vec!["us.cisa", "fr.anssi", "de.bsi", "nz.ncsc"],
        ),
        (Tlp::Amber, vec!["us.cisa"], vec![], vec!["us.cisa"]),
        (Tlp::Amber, vec![], vec!["eu"], vec!["fr.anssi", "de.bsi"]),
        (Tlp::AmberStrict, vec![], vec![], vec![]),
        (
            Tlp::AmberStrict,
            vec!["nz.ncsc"],
            vec!["eu"],
            vec!["nz.ncsc", "fr.anssi", "de.bsi"],
        ),
        (Tlp::Red, vec!["us.cisa"], vec![], vec!["us.cisa"]),
        (Tlp::Red, vec!["fr.anssi"], vec!["eu"], vec!["fr.anssi"]),
        (Tlp::Red, vec!["unknown.member"], vec![], vec![]),
    ];
    let mut ids = Vec::new();
    for (tlp, members, groups, _) in &cases {
        let mut b = bulletin(
            "uk.ncsc",
            &format!("{} to {members:?} {groups:?}", tlp.label()),
        );
        b.tlp = beacon::domain::bulletin::codec::tlp_to_i32(*tlp);
        b.audience.members = members.iter().map(|s| s.to_string()).collect();
        b.audience.groups = groups.iter().map(|s| s.to_string()).collect();
        uk.publish(&b).await.unwrap();
        ids.push(b.id);
    }
    for reader in readers {
        let mut c = member(node.addr, &pki.client(reader, "reader"), &ca).await;
        let listed: Vec<String> = c
            .bulletins
            .list(pb::ListRequest {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries
            .into_iter()
            .map(|d| {
                beacon::domain::bulletin::codec::decode_bulletin(
                    &beacon::net::client::delivered_envelope(&d).unwrap().payload,
                )
                .unwrap()
                .id
            })
            .collect();
        for ((tlp, members, groups, allowed), id) in cases.iter().zip(&ids) {
            let may = reader == "uk.ncsc" || allowed.contains(&reader);
            let got = c
                .bulletins
                .get(pb::GetRequest {
                    id: id.clone(),
                    publisher: String::new(),
                })
                .await;
            match (&got, may) {
                (Ok(_), true) => {}
                (Err(s), false) => {
                    assert_eq!(s.code(), Code::NotFound, "refusal looks like absence");
                    assert_eq!(s.message(), format!("no bulletin {id}"));
                }
                _ => panic!(
                    "{reader} Get {} {members:?} {groups:?}: may={may}, got {got:?}",
                    tlp.label()
                ),
            }
            assert_eq!(
                listed.contains(id),
                may,
                "{reader} List {} {members:?} {groups:?}",
                tlp.label()
            );
        }
    }
    // Operators read no bulletins.
    let op = pki.operator("alice");
    let err = beacon::net::client::BulletinsClient::new(dial(node.addr, &op, &ca).await.unwrap())
        .list(pb::ListRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_and_filters() {
    let w = world().await;
    let (mut c, _) = w.client("uk.ncsc", "a").await;
    for i in 0..25 {
        let mut b = bulletin("uk.ncsc", &format!("n{i}"));
        b.severity = beacon::domain::bulletin::codec::severity_to_i32(if i % 5 == 0 {
            bulletin::Severity::Critical
        } else {
            bulletin::Severity::Low
        });
        b.topics = vec![if i % 2 == 0 {
            "even".into()
        } else {
            "odd".into()
        }];
        c.publish(&b).await.unwrap();
    }
    // Paging by sequence covers everything exactly once.
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = c
            .bulletins
            .list(pb::ListRequest {
                after_sequence: after,
                limit: 7,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.deliveries.iter().map(|d| d.sequence));
        after = page.next_after_sequence;
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, (1..=25).collect::<Vec<u64>>());
    let critical = c
        .bulletins
        .list(pb::ListRequest {
            limit: 100,
            filter: Some(pb::Filter {
                min_severity: pb::Severity::High as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(
        critical.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        vec![1, 6, 11, 16, 21]
    );
    let odd = c
        .bulletins
        .list(pb::ListRequest {
            limit: 100,
            until_sequence: 10,
            filter: Some(pb::Filter {
                topics: vec!["odd".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(
        odd.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        vec![2, 4, 6, 8, 10]
    );
    let bad = c
        .bulletins
        .list(pb::ListRequest {
            filter: Some(pb::Filter {
                tlp: vec![77],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

/// Pages end by bytes as well as by count, so each fits what clients accept:
/// bulletins at the envelope limit, and many mid-sized ones, are all served
/// through List and through the CLI's default `beacon list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_are_cut_by_bytes_and_bulletins_at_the_size_limit_are_served() {
    let w = world().await;
    let (mut c, files) = w.client("uk.ncsc", "big").await;
    // Six bulletins of about 240 KiB, within the 256 KiB envelope limit.
    let mut s = c.publish_stream().await.unwrap();
    for _ in 0..6 {
        let b = beacon::tools::bench::sized_bulletin("uk.ncsc", 240 * 1024);
        s.send(&signed(&c, &b)).await.unwrap();
    }
    for r in s.finish().await.unwrap() {
        r.expect("accepted");
    }
    // A plain client with tonic's default 4 MiB receive limit.
    let ch = dial(w.node.addr, &files, &w.ca).await.unwrap();
    let mut plain = beacon::net::client::BulletinsClient::new(ch);
    let page_bytes = 1024 * 1024;
    for limit in [0, 1000] {
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let page = plain
                .list(pb::ListRequest {
                    after_sequence: after,
                    limit,
                    ..Default::default()
                })
                .await
                .expect("every page fits")
                .into_inner();
            assert!(!page.deliveries.is_empty(), "a page always holds one");
            assert!(prost::Message::encoded_len(&page) <= page_bytes + 64);
            seen.extend(page.deliveries.iter().map(|d| d.sequence));
            after = page.next_after_sequence;
            if !page.more {
                break;
            }
        }
        assert_eq!(seen, (1..=6).collect::<Vec<u64>>(), "limit {limit}");
    }
    // The CLI's default list shows them all.
    let out = std::process::Command::new(beacon_bin())
        .args(["list", "--json", "--node", &w.node.addr.to_string()])
        .arg("--cert")
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key)
        .arg("--ca")
        .arg(w.pki.ca_cert())
        .args(["--node-id", &w.node_id])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 6, "{stdout}");

    // 1,000 bulletins of about 1.5 KiB with limit=1000: about 1.5 MB, more
    // than one page's bytes; each page is cut to fit and nothing is lost.
    let mut s = c.publish_stream().await.unwrap();
    for _ in 0..1000 {
        let b = beacon::tools::bench::sized_bulletin("uk.ncsc", 1500);
        s.send(&signed(&c, &b)).await.unwrap();
    }
    for r in s.finish().await.unwrap() {
        r.expect("accepted");
    }
    let first = plain
        .list(pb::ListRequest {
            after_sequence: 6,
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("the page fits")
        .into_inner();
    assert!(first.more && first.deliveries.len() < 1000);
    let all = list_all(w.node.addr, &files, &w.ca).await.unwrap();
    assert_eq!(
        all.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        (1..=1006).collect::<Vec<u64>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_stream_answers_in_order_and_goes_on_after_a_refusal() {
    let w = world().await;
    let (mut c, _) = w.client("uk.ncsc", "streamer").await;
    let first = bulletin("uk.ncsc", "first on the stream");
    let good = signed(&c, &first);
    let mut tampered = signed(&c, &bulletin("uk.ncsc", "tampered"));
    tampered.signatures[0].sig[3] ^= 0x80;
    let second = signed(&c, &bulletin("uk.ncsc", "second on the stream"));
    let mut other = bulletin("uk.ncsc", "same id, other content");
    other.id = first.id.clone();
    let conflicting = signed(&c, &other);

    let mut s = c.publish_stream().await.unwrap();
    for env in [&good, &tampered, &second, &good, &conflicting] {
        s.send(env).await.unwrap();
    }
    assert_eq!(s.waiting(), 5);
    let p = s.result().await.unwrap().unwrap();
    assert_eq!(
        (p.sequence, p.duplicate, p.id.as_str()),
        (1, false, first.id.as_str())
    );
    let refusal = s.result().await.unwrap().unwrap_err();
    assert_eq!(refusal.code(), Code::InvalidArgument, "{refusal:?}");
    assert!(refusal.message().contains("signature does not verify"));
    let p = s.result().await.unwrap().unwrap();
    assert_eq!(
        (p.sequence, p.duplicate),
        (2, false),
        "the stream goes on after a refusal"
    );
    let p = s.result().await.unwrap().unwrap();
    assert_eq!(
        (p.sequence, p.duplicate),
        (1, true),
        "republishing is idempotent"
    );
    let refusal = s.result().await.unwrap().unwrap_err();
    assert_eq!(refusal.code(), Code::AlreadyExists, "{refusal:?}");
    // Closed loop on the same stream, then a clean end.
    let p = s
        .publish(&signed(&c, &bulletin("uk.ncsc", "third")))
        .await
        .unwrap();
    assert_eq!(p.sequence, 3);
    assert!(s.finish().await.unwrap().is_empty());
    assert_eq!(w.head().await, 3, "refused publishes stored nothing");

    // Many in flight (more than the node works on at once): every result
    // comes back, in request order.
    let n = 300;
    let envelopes: Vec<Envelope> = (0..n)
        .map(|i| signed(&c, &bulletin("uk.ncsc", &format!("pipelined {i}"))))
        .collect();
    let ids: Vec<String> = envelopes
        .iter()
        .map(|e| {
            beacon::domain::bulletin::codec::decode_bulletin(&e.payload)
                .unwrap()
                .id
        })
        .collect();
    let mut s = c.publish_stream().await.unwrap();
    // The answers are small: all of them fit in the transport's buffers while
    // the sender is still sending, so sending everything first cannot block.
    tokio::time::timeout(Duration::from_secs(60), async {
        for e in &envelopes {
            s.send(e).await.unwrap();
        }
    })
    .await
    .expect("the node keeps reading as it answers");
    let mut last = 3;
    for id in &ids {
        let p = s.result().await.unwrap().unwrap();
        assert_eq!(&p.id, id, "results come in request order");
        assert_eq!(p.sequence, last + 1);
        last = p.sequence;
    }
    assert!(s.finish().await.unwrap().is_empty());
    assert_eq!(w.head().await, 3 + n as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_cannot_open_a_publish_stream() {
    let w = world().await;
    let ch = dial(w.node.addr, &w.op, &w.ca).await.unwrap();
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::PublishRequest>(1);
    let err = pb::bulletins_client::BulletinsClient::new(ch)
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_stream_that_sends_an_oversized_message_ends_with_its_status() {
    let w = world().await;
    let (mut c, _) = w.client("uk.ncsc", "oversized").await;
    let good = signed(&c, &bulletin("uk.ncsc", "before the oversized one"));
    let mut huge = good.clone();
    huge.payload.extend(std::iter::repeat_n(0u8, 600 * 1024));
    let mut s = c.publish_stream().await.unwrap();
    s.send(&good).await.unwrap();
    s.send(&huge).await.unwrap();
    let p = s.result().await.unwrap().unwrap();
    assert_eq!(
        p.sequence, 1,
        "what was read before the failure is answered"
    );
    match s.result().await {
        Err(ClientError::Rpc(status)) => {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(
                status
                    .message()
                    .contains("over this node's limit of 524288 bytes"),
                "{status:?}"
            );
        }
        other => panic!("expected the stream to end with the decoder's status, got {other:?}"),
    }
    assert_eq!(w.head().await, 1);
}
