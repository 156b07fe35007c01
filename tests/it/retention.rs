//! Expiry and retention, at the API: a bulletin past `expires_at` is passed
//! over unless a reader asks for expired ones (then marked), `Get` marks it;
//! retention prunes it (and, per TLP label, old bulletins without an expiry)
//! down to a tombstone: sequences stay gapless, the same bulletin sent
//! again is still a duplicate, readers pass over pruned ones and
//! `Subscribed` counts them, and the store reopens.

use std::time::{Duration, SystemTime};

use crate::common::*;
use beacon::base::proto::v1 as pb;
use beacon::domain::bulletin::Tlp;
use tonic::Code;

const RETENTION: &str = "[retention]\nafter_expiry = \"2s\"\ninterval = \"50ms\"\nbatch = 2\n\n[retention.tlp.\"TLP:CLEAR\"]\nmax_age = \"4s\"\n";

async fn list(
    c: &mut beacon::net::client::BeaconClient,
    include_expired: bool,
    current_only: bool,
) -> Vec<(u64, bool)> {
    c.bulletins
        .list(pb::ListRequest {
            limit: 100,
            include_expired,
            current_only,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .deliveries
        .iter()
        .map(|d| (d.sequence, d.expired))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_bulletins_are_passed_over_then_pruned_to_tombstones() {
    let pki = TestPki::new();
    let mut opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    opts.extra = RETENTION.into();
    let node = TestNode::start(&opts).await;
    let ca = vec![pki.ca_cert()];
    let files = pki.client("uk.ncsc", "analyst");
    let mut c = member(node.addr, &files, &ca).await;

    // 1 and 4 expire soon; 2 is kept; 3 is TLP:CLEAR without an expiry (max_age).
    let expires = SystemTime::now() + Duration::from_millis(1200);
    let mut a = bulletin("uk.ncsc", "expires soon");
    a.expires_at = Some(expires);
    let b = bulletin("uk.ncsc", "kept");
    let mut clear = bulletin("uk.ncsc", "public, ages out");
    clear.tlp = beacon::domain::bulletin::codec::tlp_to_i32(Tlp::Clear);
    let mut d = bulletin("uk.ncsc", "expires soon too");
    d.expires_at = Some(expires);
    for (x, seq) in [(&a, 1), (&b, 2), (&clear, 3), (&d, 4)] {
        assert_eq!(c.publish(x).await.unwrap().sequence, seq);
    }
    // A durable reader takes everything before anything expires.
    let mut early = c.subscribe(open("early", earliest())).await.unwrap();
    let seen = read_deliveries(&mut early, 4, true, Duration::from_secs(20)).await;
    assert_eq!(seen.seqs, vec![1, 2, 3, 4]);
    early.ack(2).await.unwrap();
    early
        .finish(Duration::from_secs(10))
        .await
        .expect("the cursor is made durable");
    assert!(
        list(&mut c, false, false).await.iter().all(|(_, e)| !e),
        "nothing is expired yet"
    );

    // Expired: passed over by default, marked where still returned. (Once
    // expired, they are pruned 2 s later; read in that window.)
    wait_until(Duration::from_secs(20), || async {
        SystemTime::now() >= expires
    })
    .await
    .expect("expiry passes");
    let default_view = list(&mut c, false, false).await;
    assert!(
        !default_view.iter().any(|(s, _)| *s == 1 || *s == 4),
        "expired bulletins are not listed by default: {default_view:?}"
    );
    assert_eq!(default_view, vec![(2, false), (3, false)]);
    let with_expired = list(&mut c, true, false).await;
    assert_eq!(
        with_expired,
        vec![(1, true), (2, false), (3, false), (4, true)],
        "include_expired returns them, marked"
    );
    assert!(
        list(&mut c, true, true)
            .await
            .iter()
            .all(|(s, _)| *s != 1 && *s != 4),
        "current_only leaves expired ones out even with include_expired"
    );
    assert!(
        get_by_id(&mut c, &a.id).await.unwrap().expired,
        "Get marks an expired bulletin"
    );
    assert!(!get_by_id(&mut c, &b.id).await.unwrap().expired);
    for (include_expired, want) in [(false, vec![2, 3]), (true, vec![1, 2, 3, 4])] {
        let mut o = open("", earliest());
        o.include_expired = include_expired;
        let mut sub = c.subscribe(o).await.unwrap();
        let seen = read_deliveries(&mut sub, 0, true, Duration::from_secs(20)).await;
        assert_eq!(seen.seqs, want, "include_expired={include_expired}");
    }

    // Pruned: the expired pair after 300 ms, the TLP:CLEAR one by age.
    let gone = wait_until(Duration::from_secs(30), || async {
        let mut c = member(node.addr, &files, &ca).await;
        list(&mut c, true, false)
            .await
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>()
            == vec![2]
    })
    .await;
    assert!(
        gone.is_some(),
        "pruned down to the kept bulletin: {:?}",
        list(&mut c, true, false).await
    );
    let e = get_by_id(&mut c, &a.id)
        .await
        .expect_err("a pruned bulletin is gone");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Sent again, it is still the same bulletin: a duplicate of sequence 1.
    let again = c.publish(&a).await.unwrap();
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.sequence, 1);
    // The log stays gapless.
    let e5 = bulletin("uk.ncsc", "after pruning");
    assert_eq!(c.publish(&e5).await.unwrap().sequence, 5);

    // A reader resuming in a pruned range is told how many were passed over.
    let mut sub = c.subscribe(open("early", resume())).await.unwrap();
    let seen = read_deliveries(&mut sub, 1, true, Duration::from_secs(20)).await;
    let subscribed = seen.subscribed.expect("subscribed");
    assert_eq!(subscribed.cursor, 2);
    assert_eq!(subscribed.pruned, 2, "3 and 4 were pruned: {subscribed:?}");
    assert_eq!(seen.seqs, vec![5]);
    drop(sub);
    let mut sub = c.subscribe(open("fresh", earliest())).await.unwrap();
    let seen = read_deliveries(&mut sub, 2, true, Duration::from_secs(20)).await;
    assert_eq!(seen.seqs, vec![2, 5]);
    assert_eq!(seen.subscribed.map(|s| s.pruned), Some(3));
    drop(sub);
    drop(c);

    // The store reopens with its tombstones; the head is the same.
    let node = node.restart_in_place().await;
    let mut c = member(node.addr, &files, &ca).await;
    assert_eq!(
        list(&mut c, true, false)
            .await
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>(),
        vec![2, 5]
    );
    let e6 = bulletin("uk.ncsc", "after restart");
    assert_eq!(c.publish(&e6).await.unwrap().sequence, 6);
    let before = list(&mut c, true, false).await;
    drop(c);

    // Compaction (node stopped) keeps exactly what readers see, tombstones
    // included; a compaction cut short between its renames is finished at open.
    let node = node
        .restart_after(|store| {
            let (code, out, err) = beacon(
                store,
                &[
                    "admin",
                    "compact",
                    "--data-dir",
                    &store.display().to_string(),
                ],
            );
            assert_eq!(code, 0, "{out}{err}");
            assert!(out.contains("head 6, 3 bulletins, 3 pruned"), "{out}");
            // As if cut short: the new files complete, the old ones moved aside.
            copy_dir(&store.join("sled"), &store.join("sled.new"));
            std::fs::rename(store.join("sled"), store.join("sled.old")).unwrap();
        })
        .await;
    let mut c = member(node.addr, &files, &ca).await;
    assert_eq!(list(&mut c, true, false).await, before);
    let again = c.publish(&a).await.unwrap();
    assert!(again.duplicate && again.sequence == 1, "{again:?}");
    assert_eq!(
        c.publish(&bulletin("uk.ncsc", "seventh"))
            .await
            .unwrap()
            .sequence,
        7
    );
    drop(c);
    let store = node.data.path().join("store");
    assert!(!store.join("sled.old").exists() && !store.join("sled.new").exists());
    node.stop().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tlp_label_in_retention_is_refused_at_start() {
    let pki = TestPki::new();
    let mut opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    opts.extra = "[retention.tlp.\"TLP:PURPLE\"]\nmax_age = \"1d\"\n".into();
    let mut node = TestNode::try_start(&opts).await.expect("spawned");
    let run = node.task.take().expect("task");
    let e = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the node stops at once")
        .expect("task")
        .expect_err("refused");
    assert!(e.to_string().contains("TLP:PURPLE"), "{e}");
}

/// Each prune step is said in the node's log, with how many bulletins of
/// which labels: pruning removes TLP:RED bulletins for good, and an
/// operator must be able to see when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_prune_step_is_logged_with_its_labels() {
    let pki = TestPki::new();
    let mut opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    opts.extra = RETENTION.into();
    let (dir, addr) = child_config(&opts);
    let node = ChildNode::spawn(dir.path(), &["daemon", "--config", "beacon.toml"], addr);
    let ca = vec![pki.ca_cert()];
    let mut c = member(addr, &pki.client("uk.ncsc", "analyst"), &ca).await;
    let mut red = bulletin("uk.ncsc", "for fr.anssi, briefly");
    red.tlp = beacon::domain::bulletin::codec::tlp_to_i32(Tlp::Red);
    red.audience.members = vec!["fr.anssi".into()];
    red.expires_at = Some(SystemTime::now() + Duration::from_millis(500));
    c.publish(&red).await.unwrap();
    let logged = wait_until(Duration::from_secs(30), || async {
        node.log()
            .lines()
            .any(|l| l.contains("retention: pruned bulletins") && l.contains("TLP:RED 1"))
    })
    .await;
    assert!(logged.is_some(), "no prune line: {}", node.log());
}
