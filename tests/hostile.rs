//! Hostile clients on loopback, bounded in count and time, against a node run
//! as a child process (so its memory can be read): a flood of connections that
//! never finish their TLS handshake, junk bytes, oversized and malformed
//! messages, and one client opening thousands of streams. Well-behaved clients
//! stay served throughout, and the node's memory stays bounded.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

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
            if let Ok(mut c) = beacon::client::BeaconClient::connect_expecting(
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
    let mut raw = beacon::client::BulletinsClient::new(ch)
        .max_encoding_message_size(8 << 20)
        .max_decoding_message_size(8 << 20);
    let huge = beacon::proto::v1::PublishRequest {
        envelope: Some(beacon::proto::v1::Envelope {
            payload_type: beacon::bulletin::PAYLOAD_TYPE.into(),
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
    let big = beacon::proto::v1::PublishRequest {
        envelope: Some(beacon::proto::v1::Envelope {
            payload_type: beacon::bulletin::PAYLOAD_TYPE.into(),
            payload: vec![0x42; 300 * 1024],
            signatures: vec![],
        }),
    };
    let e = raw.publish(big).await.expect_err("too large");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("the limit is 262144"), "{e:?}");
    let garbage = beacon::proto::v1::PublishRequest {
        envelope: Some(beacon::proto::v1::Envelope {
            payload_type: beacon::bulletin::PAYLOAD_TYPE.into(),
            payload: vec![0xff; 64],
            signatures: vec![beacon::proto::v1::Signature {
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
