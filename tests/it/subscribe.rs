//! Subscriptions through the gRPC API: replay then live, durable resume after
//! disconnect / restart / SIGKILL, the replay-to-live handoff under concurrent
//! publishing, authorization on every delivery, filters, takeover, window and
//! backpressure, and many concurrent subscriptions.

use std::time::Duration;

use crate::common::*;
use beacon::base::proto::v1 as pb;
use beacon::domain::bulletin::Tlp;
use beacon::net::client::BeaconClient;
use pb::start_position::At;
use rand::Rng;

async fn publish_n(c: &mut BeaconClient, member_id: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let b = bulletin(member_id, &format!("bulletin {i}"));
        c.publish(&b).await.unwrap();
        ids.push(b.id);
    }
    ids
}

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_then_live_in_order() {
    let w = world().await;
    let mut publisher = member(w.node.addr, &w.pki.client("uk.ncsc", "pub"), &w.ca).await;
    publish_n(&mut publisher, "uk.ncsc", 10).await;
    let mut reader = member(w.node.addr, &w.pki.client("fr.anssi", "reader"), &w.ca).await;
    let mut sub = reader.subscribe(open("feed", resume())).await.unwrap();
    let seen = read_deliveries(&mut sub, 10, true, T).await;
    assert_eq!(
        seen.subscribed.as_ref().map(|s| (s.cursor, s.head)),
        Some((0, 10))
    );
    assert_eq!(seen.seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(seen.caught_up, Some(10));
    publish_n(&mut publisher, "uk.ncsc", 3).await;
    let live = read_deliveries(&mut sub, 3, false, T).await;
    assert_eq!(live.seqs, vec![11, 12, 13]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_disconnect_and_restart_delivers_exactly_the_rest() {
    let w = world().await;
    let mut publisher = member(w.node.addr, &w.pki.client("uk.ncsc", "pub"), &w.ca).await;
    publish_n(&mut publisher, "uk.ncsc", 20).await;
    let reader_files = w.pki.client("fr.anssi", "reader");
    let mut reader = member(w.node.addr, &reader_files, &w.ca).await;
    let mut sub = reader.subscribe(open("feed", resume())).await.unwrap();
    read_deliveries(&mut sub, 20, true, T).await;
    sub.ack(10).await.unwrap();
    wait_cursor(
        w.node.addr,
        &w.op,
        &w.ca,
        &reader_files.identity,
        "feed",
        10,
    )
    .await;
    drop(sub);

    // Reconnect: exactly 11..=20.
    let mut sub = reader.subscribe(open("feed", resume())).await.unwrap();
    let seen = read_deliveries(&mut sub, 10, true, T).await;
    assert_eq!(seen.subscribed.unwrap().cursor, 10);
    assert_eq!(seen.seqs, (11..=20).collect::<Vec<_>>());
    sub.ack(15).await.unwrap();
    wait_cursor(
        w.node.addr,
        &w.op,
        &w.ca,
        &reader_files.identity,
        "feed",
        15,
    )
    .await;
    drop(sub);

    // Restart the node between: exactly 16..=20, then live.
    let node = w.node.restart().await;
    let mut reader = member(node.addr, &reader_files, &w.ca).await;
    let mut sub = reader.subscribe(open("feed", resume())).await.unwrap();
    let seen = read_deliveries(&mut sub, 5, true, T).await;
    assert_eq!(seen.seqs, (16..=20).collect::<Vec<_>>());
    let mut publisher = member(node.addr, &w.pki.client("uk.ncsc", "pub2"), &w.ca).await;
    publish_n(&mut publisher, "uk.ncsc", 2).await;
    assert_eq!(
        read_deliveries(&mut sub, 2, false, T).await.seqs,
        vec![21, 22]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_streaming_resumes_with_the_unacknowledged_remainder() {
    let pki = TestPki::new();
    let (dir, addr) = child_config(&NodeOptions::new(&pki, pki.node("drc", "hub-1")));
    let ca = vec![pki.ca_cert()];
    let op = pki.operator("alice");
    let reader_files = pki.client("fr.anssi", "reader");
    let mut node = ChildNode::spawn(dir.path(), &["daemon", "--config", "beacon.toml"], addr);
    let mut publisher = member(addr, &pki.client("uk.ncsc", "pub"), &ca).await;
    publish_n(&mut publisher, "uk.ncsc", 40).await;
    let mut reader = member(addr, &reader_files, &ca).await;
    let mut sub = reader.subscribe(open("feed", resume())).await.unwrap();
    read_deliveries(&mut sub, 40, true, T).await;
    sub.ack(25).await.unwrap();
    // The node reports a cursor only once it is durable.
    wait_cursor(addr, &op, &ca, &reader_files.identity, "feed", 25).await;
    // Keep publishing while the node dies.
    let storm = tokio::spawn(async move {
        for i in 0..1000 {
            if publisher
                .publish(&bulletin("uk.ncsc", &format!("storm {i}")))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(rand::rng().random_range(20..200))).await;
    node.signal(nix::sys::signal::Signal::SIGKILL);
    node.wait(Duration::from_secs(10));
    storm.await.unwrap();
    drop(sub);

    let _node = ChildNode::spawn(dir.path(), &["daemon", "--config", "beacon.toml"], addr);
    let mut reader = member(addr, &reader_files, &ca).await;
    let head = head(addr, &op, &ca).await;
    // The remainder is read without acks, so the window must hold all of it:
    // the storm publishes at most 1,000 (the default window of 256 was not
    // enough whenever the node lived long enough to accept more).
    let mut resume_open = open("feed", resume());
    resume_open.window = 2048;
    let mut sub = reader.subscribe(resume_open).await.unwrap();
    let seen = read_deliveries(&mut sub, (head - 25) as usize, true, T).await;
    assert_eq!(seen.subscribed.unwrap().cursor, 25);
    assert_eq!(
        seen.seqs,
        (26..=head).collect::<Vec<_>>(),
        "exactly the unacknowledged remainder, in order"
    );
}

/// Many publishers; subscribers open at random moments from the earliest
/// position; every stream is strictly increasing and complete against the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_to_live_handoff_is_exact_under_concurrent_publishing() {
    let w = world().await;
    const PUBLISHERS: usize = 6;
    const EACH: usize = 60;
    const SUBSCRIBERS: usize = 8;
    let total = (PUBLISHERS * EACH) as u64;
    let mut pubs = Vec::new();
    for p in 0..PUBLISHERS {
        let mut c = member(
            w.node.addr,
            &w.pki.client(&format!("m{p}.example"), "pub"),
            &w.ca,
        )
        .await;
        let member_id = format!("m{p}.example");
        pubs.push(tokio::spawn(async move {
            for i in 0..EACH {
                c.publish(&bulletin(&member_id, &format!("p{i}")))
                    .await
                    .unwrap();
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let mut subs = Vec::new();
    for s in 0..SUBSCRIBERS {
        let delay = Duration::from_millis(rand::rng().random_range(0..300));
        let mut c = member(w.node.addr, &w.pki.client("drc", &format!("sub{s}")), &w.ca).await;
        subs.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut o = open("", earliest());
            o.window = 32;
            let mut sub = c.subscribe(o).await.unwrap();
            let mut seqs = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while (seqs.len() as u64) < total {
                let ev = tokio::time::timeout_at(deadline, sub.next())
                    .await
                    .expect("in time")
                    .unwrap()
                    .unwrap();
                if let pb::subscribe_response::Msg::Delivery(d) = ev {
                    seqs.push(d.sequence);
                    if seqs.len() % 8 == 0 {
                        sub.ack(d.sequence).await.unwrap();
                    }
                }
            }
            seqs
        }));
    }
    for p in pubs {
        p.await.unwrap();
    }
    for s in subs {
        let seqs = s.await.unwrap();
        assert_eq!(
            seqs,
            (1..=total).collect::<Vec<_>>(),
            "each bulletin exactly once, in order"
        );
    }
}

/// A replay many read batches long (the node reads ahead while it sends):
/// with two publishers interleaved, a reader filtering on one publisher gets
/// exactly that publisher's sequences and a reader of everything gets every
/// sequence, each once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_replay_across_many_read_batches_is_exact() {
    let w = world().await;
    const EACH: usize = 700;
    let mut a = member(w.node.addr, &w.pki.client("uk.ncsc", "a"), &w.ca).await;
    let mut b = member(w.node.addr, &w.pki.client("de.bsi", "b"), &w.ca).await;
    let mut sa = a.publish_stream().await.unwrap();
    let mut sb = b.publish_stream().await.unwrap();
    for i in 0..EACH {
        let ea = a
            .signer
            .sign(bulletin("uk.ncsc", &format!("a{i}")).to_bytes());
        let eb = b
            .signer
            .sign(bulletin("de.bsi", &format!("b{i}")).to_bytes());
        sa.send(&ea.unwrap()).await.unwrap();
        sb.send(&eb.unwrap()).await.unwrap();
    }
    let mut from_a = Vec::new();
    for r in sa.finish().await.unwrap() {
        from_a.push(r.unwrap().sequence);
    }
    for r in sb.finish().await.unwrap() {
        r.unwrap();
    }
    let total = (2 * EACH) as u64;
    from_a.sort_unstable();

    let mut reader = member(w.node.addr, &w.pki.client("fr.anssi", "r"), &w.ca).await;
    let mut o = open("", earliest());
    o.window = 2048;
    o.filter = Some(pb::Filter {
        publishers: vec!["uk.ncsc".into()],
        ..Default::default()
    });
    let mut sub = reader.subscribe(o).await.unwrap();
    let seen = read_deliveries(&mut sub, EACH, true, T).await;
    assert_eq!(seen.seqs, from_a, "exactly uk.ncsc's bulletins, in order");
    assert_eq!(seen.caught_up, Some(total));

    let mut o = open("", earliest());
    o.window = 2048;
    let mut sub = reader.subscribe(o).await.unwrap();
    let seen = read_deliveries(&mut sub, 2 * EACH, true, T).await;
    assert_eq!(seen.seqs, (1..=total).collect::<Vec<_>>());
}

/// TLP × audience on replay and live deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_deliver_only_what_the_member_may_read() {
    let pki = TestPki::new();
    let mut opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    opts.extra = "[groups]\neu = [\"fr.anssi\", \"de.bsi\"]\n".into();
    let node = TestNode::start(&opts).await;
    let ca = vec![pki.ca_cert()];
    let mut uk = member(node.addr, &pki.client("uk.ncsc", "pub"), &ca).await;
    let readers = ["uk.ncsc", "us.cisa", "fr.anssi", "nz.ncsc"];
    type Case<'a> = (Tlp, Vec<&'a str>, Vec<&'a str>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            Tlp::Green,
            vec![],
            vec![],
            vec!["us.cisa", "fr.anssi", "nz.ncsc"],
        ),
        (Tlp::Amber, vec!["us.cisa"], vec![], vec!["us.cisa"]),
        (Tlp::Amber, vec![], vec!["eu"], vec!["fr.anssi"]),
        (Tlp::AmberStrict, vec!["nz.ncsc"], vec![], vec!["nz.ncsc"]),
        (Tlp::Red, vec!["fr.anssi"], vec!["eu"], vec!["fr.anssi"]),
        (Tlp::Red, vec!["us.cisa"], vec![], vec!["us.cisa"]),
    ];
    let publish_cases = |uk: BeaconClient, round: &'static str| {
        let cases = cases.clone();
        async move {
            let mut uk = uk;
            let mut ids = Vec::new();
            for (tlp, members, groups, _) in &cases {
                let mut b = bulletin("uk.ncsc", &format!("{round} {}", tlp.label()));
                b.tlp = beacon::domain::bulletin::codec::tlp_to_i32(*tlp);
                b.audience.members = members.iter().map(|s| s.to_string()).collect();
                b.audience.groups = groups.iter().map(|s| s.to_string()).collect();
                uk.publish(&b).await.unwrap();
                ids.push(b.id);
            }
            ids
        }
    };
    // Round 1 is replayed; round 2 arrives live.
    let replayed = publish_cases(uk.clone(), "replay").await;
    let mut subs = Vec::new();
    for r in readers {
        let mut c = member(node.addr, &pki.client(r, "reader"), &ca).await;
        let mut sub = c.subscribe(open("", earliest())).await.unwrap();
        let expected = cases
            .iter()
            .filter(|c| r == "uk.ncsc" || c.3.contains(&r))
            .count();
        let seen = read_deliveries(&mut sub, expected, true, T).await;
        subs.push((r, sub, seen, c));
    }
    let live = publish_cases(uk.clone(), "live").await;
    for (r, mut sub, replay_seen, _c) in subs {
        let allowed: Vec<usize> = (0..cases.len())
            .filter(|&i| r == "uk.ncsc" || cases[i].3.contains(&r))
            .collect();
        let want_replay: Vec<String> = allowed.iter().map(|&i| replayed[i].clone()).collect();
        assert_eq!(replay_seen.ids, want_replay, "{r} replay");
        let live_seen = read_deliveries(&mut sub, allowed.len(), false, T).await;
        let want_live: Vec<String> = allowed.iter().map(|&i| live[i].clone()).collect();
        assert_eq!(live_seen.ids, want_live, "{r} live");
        expect_no_delivery(&mut sub, Duration::from_millis(300)).await;
    }
    let _ = uk.publish(&bulletin("uk.ncsc", "done")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_start_positions() {
    let w = world().await;
    let mut c = member(w.node.addr, &w.pki.client("uk.ncsc", "pub"), &w.ca).await;
    for i in 0..12u32 {
        let mut b = bulletin("uk.ncsc", &format!("n{i}"));
        b.severity = beacon::domain::bulletin::codec::severity_to_i32(if i % 3 == 0 {
            beacon::domain::bulletin::Severity::Critical
        } else {
            beacon::domain::bulletin::Severity::Low
        });
        b.kind = beacon::domain::bulletin::codec::kind_to_i32(if i % 2 == 0 {
            beacon::domain::bulletin::Kind::Espionage
        } else {
            beacon::domain::bulletin::Kind::Advisory
        });
        c.publish(&b).await.unwrap();
    }
    let mut reader = member(w.node.addr, &w.pki.client("fr.anssi", "r"), &w.ca).await;
    let mut o = open("", earliest());
    o.filter = Some(pb::Filter {
        min_severity: pb::Severity::High as i32,
        kinds: vec![pb::Kind::Espionage as i32],
        ..Default::default()
    });
    let mut sub = reader.subscribe(o).await.unwrap();
    let seen = read_deliveries(&mut sub, 2, true, T).await;
    assert_eq!(seen.seqs, vec![1, 7], "critical espionage only");

    let mut sub = reader.subscribe(open("", At::Sequence(9))).await.unwrap();
    assert_eq!(
        read_deliveries(&mut sub, 4, true, T).await.seqs,
        vec![9, 10, 11, 12]
    );

    let mut sub = reader.subscribe(open("", latest())).await.unwrap();
    let seen = read_deliveries(&mut sub, 0, true, T).await;
    assert_eq!(seen.caught_up, Some(12));
    c.publish(&bulletin("uk.ncsc", "new")).await.unwrap();
    assert_eq!(read_deliveries(&mut sub, 1, false, T).await.seqs, vec![13]);

    let far_future = std::time::SystemTime::now() + Duration::from_secs(3600);
    let mut sub = reader
        .subscribe(open("", At::Time(prost_types::Timestamp::from(far_future))))
        .await
        .unwrap();
    let seen = read_deliveries(&mut sub, 0, true, T).await;
    assert_eq!(
        seen.subscribed.unwrap().cursor,
        13,
        "a start time after everything starts at the head"
    );
    let mut sub = reader
        .subscribe(open(
            "",
            At::Time(prost_types::Timestamp::from(
                std::time::UNIX_EPOCH + Duration::from_secs(1),
            )),
        ))
        .await
        .unwrap();
    assert_eq!(read_deliveries(&mut sub, 13, true, T).await.seqs.len(), 13);

    // Bad requests are refused clearly.
    let mut bad = open("", earliest());
    bad.filter = Some(pb::Filter {
        kinds: vec![99],
        ..Default::default()
    });
    let err = match reader.subscribe(bad).await {
        Ok(mut s) => s.next().await.unwrap_err(),
        Err(e) => e,
    };
    assert!(err.to_string().contains("INVALID_ARGUMENT"), "{err}");
    let err = match reader.subscribe(open("bad/name", earliest())).await {
        Ok(mut s) => s.next().await.unwrap_err(),
        Err(e) => e,
    };
    assert!(err.to_string().contains("not a valid name"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_durable_name_again_takes_it_over() {
    let w = world().await;
    let mut c = member(w.node.addr, &w.pki.client("uk.ncsc", "pub"), &w.ca).await;
    publish_n(&mut c, "uk.ncsc", 3).await;
    let files = w.pki.client("fr.anssi", "r");
    let mut a = member(w.node.addr, &files, &w.ca).await;
    let mut first = a.subscribe(open("feed", resume())).await.unwrap();
    read_deliveries(&mut first, 3, true, T).await;
    let mut b = member(w.node.addr, &files, &w.ca).await;
    let mut second = b.subscribe(open("feed", resume())).await.unwrap();
    read_deliveries(&mut second, 3, true, T).await;
    let end = stream_end(&mut first, T).await;
    let err = end.expect_err("ended with a status");
    assert!(
        err.to_string().contains("ABORTED") && err.to_string().contains("taken over"),
        "{err}"
    );
    // The other member's stream of the same name is unaffected (names belong to identities).
    let mut other = member(w.node.addr, &w.pki.client("us.cisa", "r"), &w.ca).await;
    let mut third = other.subscribe(open("feed", resume())).await.unwrap();
    read_deliveries(&mut third, 3, true, T).await;
    c.publish(&bulletin("uk.ncsc", "after")).await.unwrap();
    assert_eq!(
        read_deliveries(&mut second, 1, false, T).await.seqs,
        vec![4]
    );
    assert_eq!(read_deliveries(&mut third, 1, false, T).await.seqs, vec![4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_acking_stops_receiving_and_slows_nobody() {
    let w = world().await;
    let mut c = member(w.node.addr, &w.pki.client("uk.ncsc", "pub"), &w.ca).await;
    let mut slow_client = member(w.node.addr, &w.pki.client("fr.anssi", "slow"), &w.ca).await;
    let mut o = open("", earliest());
    o.window = 5;
    let mut slow = slow_client.subscribe(o).await.unwrap();
    let mut fast_client = member(w.node.addr, &w.pki.client("us.cisa", "fast"), &w.ca).await;
    let mut fast = fast_client.subscribe(open("", earliest())).await.unwrap();
    read_deliveries(&mut slow, 0, true, T).await;
    read_deliveries(&mut fast, 0, true, T).await;

    let t0 = std::time::Instant::now();
    publish_n(&mut c, "uk.ncsc", 300).await;
    let publish_time = t0.elapsed();
    // The fast subscriber gets everything while the slow one sits on its window.
    let mut got = 0;
    while got < 300 {
        let seen = read_deliveries(&mut fast, 1, false, T).await;
        fast.ack(*seen.seqs.last().unwrap()).await.unwrap();
        got += 1;
    }
    let seen = read_deliveries(&mut slow, 5, false, T).await;
    assert_eq!(seen.seqs, vec![1, 2, 3, 4, 5]);
    expect_no_delivery(&mut slow, Duration::from_millis(700)).await;
    eprintln!("300 publishes took {publish_time:?} with a stalled subscriber");
    // Acking opens the window by exactly that much.
    slow.ack(3).await.unwrap();
    assert_eq!(
        read_deliveries(&mut slow, 3, false, T).await.seqs,
        vec![6, 7, 8]
    );
    expect_no_delivery(&mut slow, Duration::from_millis(500)).await;
    // Acking something never delivered is a protocol error.
    slow.ack(299).await.unwrap();
    let end = stream_end(&mut slow, T).await;
    assert!(end.unwrap_err().to_string().contains("never delivered"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_subscriptions_all_receive() {
    let w = world().await;
    const CONNECTIONS: usize = 8;
    const PER: usize = 125;
    let mut subs = Vec::new();
    for c in 0..CONNECTIONS {
        let client = member(w.node.addr, &w.pki.client("drc", &format!("c{c}")), &w.ca).await;
        for _ in 0..PER {
            let mut client = client.clone();
            subs.push(client.subscribe(open("", latest())).await.unwrap());
        }
    }
    for s in subs.iter_mut() {
        read_deliveries(s, 0, true, T).await;
    }
    let mut p = member(w.node.addr, &w.pki.client("uk.ncsc", "pub"), &w.ca).await;
    publish_n(&mut p, "uk.ncsc", 2).await;
    for (i, s) in subs.iter_mut().enumerate() {
        let seen = read_deliveries(s, 2, false, T).await;
        assert_eq!(seen.seqs, vec![1, 2], "subscription {i}");
    }
    let ch = dial(w.node.addr, &w.op, &w.ca).await.unwrap();
    let mut admin = beacon::net::client::AdminClient::new(ch);
    let st = admin
        .status(pb::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Status is bounded (100 by default) and says how many there are.
    assert_eq!(st.subscriptions_total as usize, CONNECTIONS * PER);
    assert_eq!(st.subscriptions.len(), 100.min(CONNECTIONS * PER));
    // ListSubscriptions pages through all of them, each once, in order.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_subscriptions(pb::ListSubscriptionsRequest {
                limit: 128,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.subscriptions.len() <= 128);
        assert_eq!(page.total as usize, CONNECTIONS * PER);
        seen.extend(page.subscriptions);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), CONNECTIONS * PER, "each once, in {pages} pages");
    let err = admin
        .list_subscriptions(pb::ListSubscriptionsRequest {
            limit: 10,
            page_token: "not a token".into(),
        })
        .await
        .expect_err("a token the node never gave");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_subscriber_is_cut_off() {
    let w = world().await;
    let files = w.pki.client("fr.anssi", "soon-revoked");
    let mut c = member(w.node.addr, &files, &w.ca).await;
    let mut sub = c.subscribe(open("feed", resume())).await.unwrap();
    read_deliveries(&mut sub, 0, true, T).await;
    w.pki.revoke(&files);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = sub.next().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the revoked subscriber's stream outlived 5 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_subscriptions_and_lag() {
    let w = world().await;
    let mut c = member(w.node.addr, &w.pki.client("uk.ncsc", "pub"), &w.ca).await;
    publish_n(&mut c, "uk.ncsc", 6).await;
    let files = w.pki.client("fr.anssi", "r");
    let mut r = member(w.node.addr, &files, &w.ca).await;
    let mut sub = r.subscribe(open("feed", resume())).await.unwrap();
    read_deliveries(&mut sub, 6, true, T).await;
    sub.ack(4).await.unwrap();
    wait_cursor(w.node.addr, &w.op, &w.ca, &files.identity, "feed", 4).await;
    let ch = dial(w.node.addr, &w.op, &w.ca).await.unwrap();
    let st = beacon::net::client::AdminClient::new(ch)
        .status(pb::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let s = st.subscriptions.iter().find(|s| s.name == "feed").unwrap();
    assert!(s.durable && s.connected);
    assert_eq!((s.cursor, s.lag, s.delivered), (4, 2, 6));
    drop(sub);
    // A durable subscription that is not connected still shows its cursor.
    let ok = wait_until(Duration::from_secs(10), || async {
        let ch = dial(w.node.addr, &w.op, &w.ca).await.unwrap();
        let st = beacon::net::client::AdminClient::new(ch)
            .status(pb::StatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        st.subscriptions
            .iter()
            .any(|s| s.name == "feed" && !s.connected && s.cursor == 4 && s.lag == 2)
    })
    .await;
    assert!(ok.is_some());
}

/// A raw stream: whatever the test sends, as it sends it.
async fn raw_subscribe(
    c: &BeaconClient,
    first: Vec<pb::SubscribeRequest>,
) -> (
    tokio::sync::mpsc::Sender<pb::SubscribeRequest>,
    Result<tonic::Streaming<pb::SubscribeResponse>, tonic::Status>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for m in first {
        tx.send(m).await.unwrap();
    }
    let r = c
        .bulletins
        .clone()
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    (tx, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_protocol_errors_are_clear() {
    use pb::subscribe_request::Msg;
    let w = world().await;
    let c = member(w.node.addr, &w.pki.client("fr.anssi", "r"), &w.ca).await;

    // The first message must be `open`.
    let (_tx, r) = raw_subscribe(
        &c,
        vec![pb::SubscribeRequest {
            msg: Some(Msg::Ack(pb::Ack { sequence: 1 })),
        }],
    )
    .await;
    let err = match r {
        Err(s) => s,
        Ok(mut s) => s.message().await.unwrap_err(),
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("must be `open`"),
        "{}",
        err.message()
    );

    // A second `open` on the same stream ends it.
    let o = || pb::SubscribeRequest {
        msg: Some(Msg::Open(open("", earliest()))),
    };
    let (tx, r) = raw_subscribe(&c, vec![o()]).await;
    let mut s = r.unwrap();
    tx.send(o()).await.unwrap();
    let end = loop {
        match tokio::time::timeout(T, s.message())
            .await
            .expect("stream ends")
        {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let err = end.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("may only send `ack`"),
        "{}",
        err.message()
    );

    // A start sequence of 0 is refused.
    let (_tx, r) = raw_subscribe(
        &c,
        vec![pb::SubscribeRequest {
            msg: Some(Msg::Open(open("", At::Sequence(0)))),
        }],
    )
    .await;
    let err = match r {
        Err(s) => s,
        Ok(mut s) => s.message().await.unwrap_err(),
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_capped_per_node() {
    let pki = TestPki::new();
    let mut opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    opts.extra = "[limits]\nmax_subscriptions = 3\n".into();
    let node = TestNode::start(&opts).await;
    let ca = vec![pki.ca_cert()];
    let files = pki.client("fr.anssi", "r");
    let mut c = member(node.addr, &files, &ca).await;
    let mut open_subs = Vec::new();
    for name in ["a", "b", "c"] {
        let mut s = c.subscribe(open(name, resume())).await.unwrap();
        read_deliveries(&mut s, 0, true, T).await;
        open_subs.push(s);
    }
    let refused = match c.subscribe(open("d", resume())).await {
        Ok(mut s) => s.next().await.unwrap_err(),
        Err(e) => e,
    };
    assert!(
        refused.to_string().contains("RESOURCE_EXHAUSTED")
            && refused.to_string().contains("maximum of 3"),
        "{refused}"
    );
    // Taking over an open durable name does not need a free slot.
    let mut again = c.subscribe(open("a", resume())).await.unwrap();
    read_deliveries(&mut again, 0, true, T).await;
    // Closing one frees a slot.
    open_subs.pop();
    let ok = wait_until(Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            match c.subscribe(open("d", resume())).await {
                Ok(mut s) => matches!(
                    s.next().await,
                    Ok(Some(pb::subscribe_response::Msg::Subscribed(_)))
                ),
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(ok.is_some(), "a freed slot was not reusable");
}

/// An ephemeral subscription from `seq`, naming the log it was taken on.
fn open_on_log(seq: u64, log_id: &str) -> pb::SubscribeOpen {
    pb::SubscribeOpen {
        checkpoints: false,
        log_id: log_id.to_owned(),
        ..open("", At::Sequence(seq))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_is_applied_only_on_the_log_it_was_taken_on() {
    let w = world().await;
    let mut publisher = member(w.node.addr, &w.pki.client("uk.ncsc", "pub"), &w.ca).await;
    publish_n(&mut publisher, "uk.ncsc", 10).await;
    let reader_files = w.pki.client("fr.anssi", "reader");
    let mut reader = member(w.node.addr, &reader_files, &w.ca).await;
    let mut sub = reader.subscribe(open("feed", resume())).await.unwrap();
    let seen = read_deliveries(&mut sub, 10, true, T).await;
    let first = seen.subscribed.expect("subscribed");
    let log = first.log_id.clone();
    assert_eq!(log.len(), 32, "a log id: {log:?}");
    assert_eq!(first.forked_from, None);
    assert_eq!(first.restarted, "");
    sub.ack(6).await.unwrap();
    wait_cursor(w.node.addr, &w.op, &w.ca, &reader_files.identity, "feed", 6).await;
    drop(sub);

    // A reader keeping its own position: on the same log it is applied.
    let mut sub = reader.subscribe(open_on_log(8, &log)).await.unwrap();
    let seen = read_deliveries(&mut sub, 3, true, T).await;
    let s = seen.subscribed.expect("subscribed");
    assert_eq!((s.cursor, s.restarted.as_str()), (7, ""));
    assert_eq!(seen.seqs, vec![8, 9, 10]);
    drop(sub);
    // Taken on another log: from the start, and said.
    let other = "0123456789abcdef0123456789abcdef";
    let mut sub = reader.subscribe(open_on_log(8, other)).await.unwrap();
    let seen = read_deliveries(&mut sub, 10, true, T).await;
    let s = seen.subscribed.expect("subscribed");
    assert_eq!(s.cursor, 0);
    assert!(
        s.restarted.contains(other) && s.restarted.contains("from the start"),
        "{}",
        s.restarted
    );
    assert_eq!(seen.seqs, (1..=10).collect::<Vec<_>>());
    drop(sub);
    // Not a log id: refused, naming it.
    let err = match reader.subscribe(open_on_log(8, "not-a-log")).await {
        Err(e) => e,
        Ok(mut sub) => sub.next().await.expect_err("refused"),
    };
    match &err {
        beacon::net::client::ClientError::Rpc(s) => {
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{err}")
        }
        other => panic!("not a refusal by the node: {other}"),
    }
    assert!(err.to_string().contains("not a log id"), "{err}");

    // Restored from a backup: a new log, continuing this one up to 10.
    let file = backup_bytes(w.node.addr, &w.op, &w.ca).await;
    let (data, config) = TestNode::prepare(&NodeOptions::new(&w.pki, w.pki.node("drc", "hub-2")));
    let backup = data.path().join("node.backup");
    std::fs::write(&backup, &file).unwrap();
    let (code, out, err) = beacon(
        data.path(),
        &[
            "admin",
            "restore",
            &backup.display().to_string(),
            "--config",
            &config.display().to_string(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let node = TestNode::start_prepared(data, config).await;
    let mut publisher = member(node.addr, &w.pki.client("uk.ncsc", "pub2"), &w.ca).await;
    publish_n(&mut publisher, "uk.ncsc", 5).await;
    let mut reader = member(node.addr, &reader_files, &w.ca).await;

    // The durable cursor travelled with the backup: it holds on the new log.
    let mut sub = reader.subscribe(open("feed", resume())).await.unwrap();
    let seen = read_deliveries(&mut sub, 9, true, T).await;
    let s = seen.subscribed.expect("subscribed");
    assert_ne!(s.log_id, log, "a restored log is a new log");
    assert_eq!(
        s.forked_from.map(|f| (f.log_id, f.size)),
        Some((log.clone(), 10))
    );
    assert_eq!((s.cursor, s.restarted.as_str()), (6, ""));
    assert_eq!(seen.seqs, (7..=15).collect::<Vec<_>>());
    drop(sub);
    // A position on the old log holds up to the backup's head...
    let mut sub = reader.subscribe(open_on_log(5, &log)).await.unwrap();
    let s = read_deliveries(&mut sub, 11, true, T)
        .await
        .subscribed
        .expect("subscribed");
    assert_eq!((s.cursor, s.restarted.as_str()), (4, ""));
    drop(sub);
    // ...and no further: what the old log held past it is not this log's.
    let mut sub = reader.subscribe(open_on_log(14, &log)).await.unwrap();
    let seen = read_deliveries(&mut sub, 5, true, T).await;
    let s = seen.subscribed.expect("subscribed");
    assert_eq!(s.cursor, 10);
    assert!(
        s.restarted.contains("continuing after 10"),
        "{}",
        s.restarted
    );
    assert_eq!(seen.seqs, (11..=15).collect::<Vec<_>>());
    node.stop().await;
}
