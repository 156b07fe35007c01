//! Hostile clients on loopback, bounded in count and time, against a node run
//! as a child process (so its memory can be read): a flood of connections that
//! never finish their TLS handshake, junk bytes, oversized and malformed
//! messages, and one client opening thousands of streams. Well-behaved clients
//! stay served throughout, and the node's memory stays bounded.

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::*;

/// Resident memory of a process, in bytes (Linux).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// A well-behaved client gets a publish through within `limit`.
async fn served_within(
    addr: std::net::SocketAddr,
    files: &CertFiles,
    ca: &[PathBuf],
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    let ok = tokio::time::timeout(limit, async {
        loop {
            let mut s = settings(files, ca);
            s.node = Some(addr.to_string());
            if let Ok(mut c) = beacon::net::client::BeaconClient::connect_expecting(
                &s,
                beacon::trust::tls::ExpectedServer::AnyNode,
            )
            .await
            {
                if c.publish(&bulletin("fr.anssi", "still served"))
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "a well-behaved client was not served within {limit:?}"
    );
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_bad_clients_leave_good_ones_served_and_memory_bounded() {
    let pki = TestPki::new();
    let mut opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    opts.timing = "handshake_timeout = \"1s\"\n".into();
    opts.extra = "[limits]\nmax_connections = 64\nmax_subscriptions = 500\n".into();
    let (dir, addr) = child_config(&opts);
    let mut node = ChildNode::spawn(dir.path(), &["daemon", "--config", "beacon.toml"], addr);
    let pid = node.child.id();
    let ca = vec![pki.ca_cert()];
    let good = pki.client("fr.anssi", "good");
    served_within(addr, &good, &ca, Duration::from_secs(20)).await;
    let baseline = rss(pid);

    // 1. Slowloris: 300 connections that open TCP and never speak TLS, and
    //    100 that send junk. Handshakes time out after 1 s; at most 64 are
    //    held at once; the rest wait in the kernel's backlog.
    let mut idle = Vec::new();
    for i in 0..400 {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            if i % 4 == 0 {
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03\x01\xff\xff junk");
            }
            idle.push(s);
        }
    }
    let took = served_within(addr, &good, &ca, Duration::from_secs(30)).await;
    eprintln!(
        "served after {took:?} behind {} idle or junk connections",
        idle.len()
    );
    drop(idle);

    // 2. Oversized and malformed messages: each refused with a clear status.
    let ch = dial(addr, &good, &ca).await.expect("dial");
    let mut raw = beacon::net::client::BulletinsClient::new(ch)
        .max_encoding_message_size(8 << 20)
        .max_decoding_message_size(8 << 20);
    let huge = beacon::base::proto::v1::PublishRequest {
        receipt: false,
        envelope: Some(beacon::base::proto::v1::Envelope {
            payload_type: beacon::domain::bulletin::PAYLOAD_TYPE.into(),
            payload: vec![0x42; 4 << 20],
            signatures: vec![],
        }),
    };
    // Beyond the decoded-message cap, refused before decoding, with gRPC's
    // code for a message over the maximum, naming the size and the limit.
    let e = raw.publish(huge).await.expect_err("too large");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("limit of 524288 bytes")
            && e.message().contains("limits.max_message_bytes"),
        "{e:?}"
    );
    // Within the message cap but beyond the envelope limit.
    let big = beacon::base::proto::v1::PublishRequest {
        receipt: false,
        envelope: Some(beacon::base::proto::v1::Envelope {
            payload_type: beacon::domain::bulletin::PAYLOAD_TYPE.into(),
            payload: vec![0x42; 300 * 1024],
            signatures: vec![],
        }),
    };
    let e = raw.publish(big).await.expect_err("too large");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("the limit is 262144"), "{e:?}");
    let garbage = beacon::base::proto::v1::PublishRequest {
        receipt: false,
        envelope: Some(beacon::base::proto::v1::Envelope {
            payload_type: beacon::domain::bulletin::PAYLOAD_TYPE.into(),
            payload: vec![0xff; 64],
            signatures: vec![beacon::base::proto::v1::Signature {
                keyid: String::new(),
                sig: vec![1; 64],
                cert_chain: vec![vec![0x30, 0x82, 0xff]],
            }],
        }),
    };
    let e = raw.publish(garbage).await.expect_err("malformed");
    assert!(
        matches!(
            e.code(),
            tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
        ),
        "{e:?}"
    );

    // 3. One client opens thousands of streams over a few connections: the
    //    node caps them (RESOURCE_EXHAUSTED beyond max_subscriptions) and
    //    never stops serving others. None of them ever acknowledges.
    let hog = pki.client("xx.hog", "hog");
    let mut streams = Vec::new();
    let mut refused = 0;
    // 250 per connection stays under the per-connection HTTP/2 stream cap
    // (256), so the subscription cap is what refuses them.
    for conn in 0..10 {
        let mut c = member(addr, &hog, &ca).await;
        for k in 0..250 {
            let name = format!("s{conn}-{k}");
            match c.subscribe(open(&name, earliest())).await {
                Ok(mut s) => {
                    // The node answers `subscribed` or refuses.
                    match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
                        Ok(Ok(Some(_))) => streams.push(s),
                        Ok(Err(e)) if e.to_string().contains("RESOURCE_EXHAUSTED") => refused += 1,
                        other => panic!(
                            "stream {name}: {other:?}",
                            other = other.map(|r| r.map(|_| ()))
                        ),
                    }
                }
                Err(e) if e.to_string().contains("RESOURCE_EXHAUSTED") => refused += 1,
                Err(e) => panic!("stream {name}: {e}"),
            }
        }
    }
    eprintln!("{} streams open, {refused} refused", streams.len());
    assert!(
        streams.len() <= 500,
        "{} streams exceed the cap",
        streams.len()
    );
    assert_eq!(streams.len() + refused, 2500);
    assert!(refused >= 2000, "only {refused} refused");
    // Publishers are not slowed down by 500 stalled subscribers.
    let took = served_within(addr, &good, &ca, Duration::from_secs(20)).await;
    eprintln!("a publish with 500 stalled subscribers took {took:?}");
    for _ in 0..200 {
        member(addr, &good, &ca)
            .await
            .publish(&bulletin("fr.anssi", "more"))
            .await
            .expect("publish");
    }
    let loaded = rss(pid);
    eprintln!(
        "RSS: {:.0} MB at rest, {:.0} MB with 500 stalled streams after the floods",
        baseline as f64 / 1e6,
        loaded as f64 / 1e6
    );
    assert!(
        loaded < baseline + 200_000_000,
        "memory grew by {} bytes",
        loaded - baseline
    );
    drop(streams);
    node.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(node.wait(Duration::from_secs(30)), Some(0));
}

/// Every port (gRPC, TAXII, operations) is served by the same accept loop,
/// with the same cap: at `max_connections` a port waits for a connection to
/// end before it accepts another (none is dropped), and a TLS port frees the
/// place of a client that never finishes its handshake after the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_waits_at_its_cap_and_frees_places_of_silent_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CAP: usize = 3;
    let pki = TestPki::new();
    let ops = free_addr();
    let taxii = free_addr();
    let mut opts = NodeOptions::new(&pki, pki.node("drc", "hub-1"));
    opts.timing = "handshake_timeout = \"1s\"\n".into();
    opts.extra = format!(
        "[limits]\nmax_connections = {CAP}\n[metrics]\nlisten = \"{ops}\"\n[taxii]\nlisten = \"{taxii}\"\n"
    );
    let node = TestNode::start(&opts).await;
    let ca = vec![pki.ca_cert()];
    let good = pki.client("fr.anssi", "good");

    // Each TLS port: CAP silent connections fill it; a good client is
    // served once the handshake timeout has freed a place, well within
    // the time a dropped connection's retries would take.
    for (port, addr) in [("gRPC", node.addr), ("TAXII", taxii)] {
        let mut silent = Vec::new();
        for _ in 0..CAP {
            silent.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let started = Instant::now();
        let served = match port {
            "gRPC" => health(addr, &good, &ca).await.map(|()| 200),
            _ => https(
                addr,
                Some(&good),
                &ca,
                "GET",
                "/taxii2/",
                &[("accept", "application/taxii+json;version=2.1")],
                b"",
            )
            .await
            .map(|r| r.status),
        };
        assert_eq!(served, Ok(200), "{port}: a good client is served");
        eprintln!(
            "{port}: served after {:?} with {CAP} silent connections",
            started.elapsed()
        );
        // The silent ones were closed by the node (handshake timeout).
        for mut s in silent {
            let mut buf = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
            assert!(
                matches!(r, Ok(Ok(0)) | Ok(Err(_))),
                "{port}: a silent connection is closed after the handshake timeout: {r:?}"
            );
        }
    }

    // The operations port (plain text, no handshake): CAP idle connections
    // hold every place; a scrape waits (it is not dropped) and is answered
    // as soon as one of them goes.
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(tokio::net::TcpStream::connect(ops).await.expect("connect"));
    }
    let scrape = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(ops).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    });
    // Not answered while every place is held (the accept loop waits).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !scrape.is_finished(),
        "the port took a connection beyond its cap"
    );
    drop(idle.pop());
    let answer = tokio::time::timeout(Duration::from_secs(10), scrape)
        .await
        .expect("answered once a place is free")
        .expect("task");
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "{answer:?}"
    );
    node.stop().await;
}
