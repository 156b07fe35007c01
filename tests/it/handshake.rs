//! Mutual TLS at the node's edge: who is refused at the handshake, who is
//! accepted, and revocation of open connections without a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use beacon::base::identity::RoleKind;
use beacon::base::proto::v1 as pb;
use beacon::net::client::AdminClient;
use beacon::tools::pki::IssueRequest;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use time::OffsetDateTime;

/// A certificate signed by the test CA's key, with arbitrary SANs, bypassing
/// `beacon ca`'s own checks: what a careless or hostile CA could produce.
fn forge(pki: &TestPki, name: &str, sans: Vec<SanType>) -> CertFiles {
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(pki.ca_dir.join("ca.key")).unwrap()).unwrap();
    let issuer =
        Issuer::from_ca_cert_pem(&std::fs::read_to_string(pki.ca_cert()).unwrap(), ca_key).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + time::Duration::days(1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let files = CertFiles {
        cert: pki.path().join(format!("{name}.pem")),
        key: pki.path().join(format!("{name}.key")),
        serial: String::new(),
        identity: String::new(),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.to_string().try_into().unwrap())
}

async fn node(pki: &TestPki) -> TestNode {
    TestNode::start(&NodeOptions::new(pki, pki.node("uk.ncsc", "london-1"))).await
}

async fn refused(node: &TestNode, files: &CertFiles, ca: &[PathBuf], what: &str) {
    let r = health(node.addr, files, ca).await;
    assert!(r.is_err(), "{what}: the node accepted it");
}

/// Dials with `files` as they are, without the client's own checks (a
/// client that does not check its certificate first): the node must
/// refuse, and says why.
async fn node_refuses(node: &TestNode, files: &CertFiles, ca: &[PathBuf], why: &str) {
    let own = beacon::trust::tls::KeyedChain::load(&files.cert, &files.key).expect("keys");
    let bundle = beacon::trust::read_bundle(
        &own.identity.trust_domain,
        ca.iter()
            .map(|p| (p.as_path(), beacon::base::identity::MemberScope::any())),
        std::iter::empty(),
    )
    .expect("bundle");
    let config = beacon::trust::tls::client_config(
        std::sync::Arc::new(bundle),
        &own,
        beacon::trust::tls::ExpectedServer::AnyNode,
    )
    .expect("config");
    let r = match beacon::net::client::connect_with(
        &node.addr.to_string(),
        std::sync::Arc::new(config),
    )
    .await
    {
        Ok(ch) => health_on(ch).await,
        Err(e) => Err(e.to_string()),
    };
    let e = r.expect_err("the node accepted it");
    assert!(e.contains(why), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_valid_client_node_and_operator() {
    let pki = TestPki::new();
    let n = node(&pki).await;
    let ca = [pki.ca_cert()];
    health(n.addr, &pki.client("us.cisa", "soc"), &ca)
        .await
        .expect("client");
    health(n.addr, &pki.node("fr.anssi", "paris-1"), &ca)
        .await
        .expect("node");
    let op = pki.operator("alice");
    health(n.addr, &op, &ca).await.expect("operator");

    // The operator may call Admin; a client may not.
    let status = AdminClient::new(dial(n.addr, &op, &ca).await.unwrap())
        .status(pb::StatusRequest::default())
        .await
        .expect("operator status")
        .into_inner();
    assert_eq!(status.node, format!("spiffe://{TD}/node/uk.ncsc/london-1"));
    let err = AdminClient::new(
        dial(n.addr, &pki.client("us.cisa", "soc2"), &ca)
            .await
            .unwrap(),
    )
    .status(pb::StatusRequest::default())
    .await
    .expect_err("client must not read Admin");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_pki_works_too() {
    let pki = TestPki::with_ca("*", beacon::tools::pki::Algorithm::Ed25519);
    let n = node(&pki).await;
    health(n.addr, &pki.client("de.bsi", "a"), &[pki.ca_cert()])
        .await
        .expect("ed25519 client");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_client_without_certificate() {
    let pki = TestPki::new();
    let n = node(&pki).await;
    let bundle = Arc::new(
        beacon::trust::TrustBundle::new(
            td(),
            vec![beacon::trust::CaEntry::new(
                beacon::trust::read_certs(&pki.ca_cert()).unwrap().remove(0),
                beacon::base::identity::MemberScope::any(),
            )
            .unwrap()],
            vec![],
        )
        .unwrap(),
    );
    let verifier = Arc::new(beacon::trust::tls::BundleServerVerifier::new(
        bundle,
        beacon::trust::tls::ExpectedServer::AnyNode,
    ));
    let mut config = rustls::ClientConfig::builder_with_provider(beacon::trust::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let result =
        match beacon::net::client::connect_with(&n.addr.to_string(), Arc::new(config)).await {
            Ok(channel) => health_on(channel).await,
            Err(e) => Err(e.to_string()),
        };
    assert!(result.is_err(), "a client without a certificate was served");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_ca_outside_the_bundle() {
    let pki = TestPki::new();
    let n = node(&pki).await;
    let rogue = pki.other_ca("rogue", "*");
    let files = pki.issue_from(
        &rogue,
        IssueRequest::new(id(RoleKind::Client, Some("us.cisa"), "x")),
    );
    refused(&n, &files, &[pki.ca_cert()], "foreign CA").await;
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_expired_and_not_yet_valid() {
    let pki = TestPki::new();
    let n = node(&pki).await;
    let now = OffsetDateTime::now_utc();
    let mut expired = IssueRequest::new(id(RoleKind::Client, Some("us.cisa"), "old"));
    expired.not_before = Some(now - time::Duration::days(10));
    expired.not_after = Some(now - time::Duration::days(1));
    let expired = pki.issue(expired);
    refused(&n, &expired, &[pki.ca_cert()], "expired").await;
    node_refuses(&n, &expired, &[pki.ca_cert()], "it has expired").await;

    let mut future = IssueRequest::new(id(RoleKind::Client, Some("us.cisa"), "new"));
    future.not_before = Some(now + time::Duration::days(1));
    future.not_after = Some(now + time::Duration::days(10));
    let future = pki.issue(future);
    refused(&n, &future, &[pki.ca_cert()], "not yet valid").await;
    node_refuses(
        &n,
        &future,
        &[pki.ca_cert()],
        "refused this side's certificate",
    )
    .await;
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_certificate_revoked_before_connecting() {
    let pki = TestPki::new();
    let files = pki.client("us.cisa", "gone");
    pki.revoke(&files);
    let n = node(&pki).await;
    refused(&n, &files, &[pki.ca_cert()], "revoked").await;
    // Others still get in.
    health(
        n.addr,
        &pki.client("us.cisa", "still-here"),
        &[pki.ca_cert()],
    )
    .await
    .unwrap();
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_closes_open_streams_within_five_seconds() {
    let pki = TestPki::new();
    let n = node(&pki).await;
    let victim = pki.client("us.cisa", "victim");
    let bystander = pki.client("us.cisa", "bystander");
    let ca = [pki.ca_cert()];

    // A long-lived server stream on each connection (gRPC health Watch).
    let open_watch = |files: CertFiles| {
        let ca = ca.clone();
        let addr = n.addr;
        async move {
            let ch = dial(addr, &files, &ca).await.unwrap();
            let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
            let mut stream = c
                .watch(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            stream.message().await.unwrap().expect("first status");
            stream
        }
    };
    let mut victim_stream = open_watch(victim.clone()).await;
    let mut bystander_stream = open_watch(bystander.clone()).await;

    let t0 = std::time::Instant::now();
    pki.revoke(&victim);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = victim_stream.message().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the revoked client's stream stayed open for 5 s"
    );
    eprintln!("revoked stream closed after {:?}", t0.elapsed());

    // The bystander's stream is unaffected, and the victim cannot reconnect.
    let still_open =
        tokio::time::timeout(Duration::from_millis(300), bystander_stream.message()).await;
    assert!(
        still_open.is_err(),
        "the bystander's stream ended too: {still_open:?}"
    );
    refused(&n, &victim, &ca, "revoked, reconnecting").await;
    health(n.addr, &bystander, &ca).await.unwrap();
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_member_the_ca_may_not_vouch_for() {
    let pki = TestPki::new();
    // A second CA that will happily sign anything, but that this node trusts
    // only for uk.* members.
    let uk_ca = pki.other_ca("uk-ca", "*");
    let mut opts = NodeOptions::new(&pki, pki.node("uk.ncsc", "london-1"));
    opts.trust.push((
        beacon::tools::pki::Ca::cert_path(&uk_ca),
        "uk.*".into(),
        None,
    ));
    let n = TestNode::start(&opts).await;
    let ca = [pki.ca_cert()];
    let uk_client = pki.issue_from(
        &uk_ca,
        IssueRequest::new(id(RoleKind::Client, Some("uk.gchq"), "a")),
    );
    health(n.addr, &uk_client, &ca)
        .await
        .expect("uk.* client of the UK CA");
    let us_client = pki.issue_from(
        &uk_ca,
        IssueRequest::new(id(RoleKind::Client, Some("us.cisa"), "b")),
    );
    refused(&n, &us_client, &ca, "us.cisa vouched by the UK CA").await;
    let operator = pki.issue_from(
        &uk_ca,
        IssueRequest::new(id(RoleKind::Operator, None, "eve")),
    );
    refused(
        &n,
        &operator,
        &ca,
        "operator vouched by a member-restricted CA",
    )
    .await;
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_certificates_without_a_valid_spiffe_identity() {
    let pki = TestPki::new();
    let n = node(&pki).await;
    let ca = [pki.ca_cert()];
    // Positive control: a forged-but-correct certificate is accepted, so the
    // refusals below are about the SAN alone.
    let good = forge(
        &pki,
        "good",
        vec![uri(&format!("spiffe://{TD}/client/us.cisa/ok"))],
    );
    health(n.addr, &good, &ca)
        .await
        .expect("well-formed forged certificate");

    let cases: Vec<(&str, Vec<SanType>)> = vec![
        ("no SAN", vec![]),
        (
            "DNS only",
            vec![SanType::DnsName("client.example".try_into().unwrap())],
        ),
        (
            "two URI SANs",
            vec![
                uri(&format!("spiffe://{TD}/client/us.cisa/a")),
                uri(&format!("spiffe://{TD}/client/us.cisa/b")),
            ],
        ),
        (
            "not spiffe",
            vec![uri("https://alliance.example/client/us.cisa/a")],
        ),
        (
            "unknown path",
            vec![uri(&format!("spiffe://{TD}/admin/us.cisa/a"))],
        ),
        (
            "dot-dot",
            vec![uri(&format!("spiffe://{TD}/client/us.cisa/.."))],
        ),
        (
            "bad member",
            vec![uri(&format!("spiffe://{TD}/client/US_CISA/a"))],
        ),
        (
            "other trust domain",
            vec![uri("spiffe://elsewhere.example/client/us.cisa/a")],
        ),
        (
            "query",
            vec![uri(&format!("spiffe://{TD}/client/us.cisa/a?x=1"))],
        ),
    ];
    for (i, (what, sans)) in cases.into_iter().enumerate() {
        let files = forge(&pki, &format!("bad{i}"), sans);
        refused(&n, &files, &ca, what).await;
    }
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_a_node_presenting_another_identity() {
    let pki = TestPki::new();
    let n = node(&pki).await;
    let files = pki.client("us.cisa", "x");
    let dialer = beacon::net::client::Dialer::load(&settings(&files, &[pki.ca_cert()])).unwrap();
    let wrong = id(RoleKind::Node, Some("fr.anssi"), "paris-1");
    let r = dialer
        .connect(
            &n.addr.to_string(),
            beacon::trust::tls::ExpectedServer::Exactly(wrong),
        )
        .await;
    let r = match r {
        Ok(ch) => health_on(ch).await,
        Err(e) => Err(e.to_string()),
    };
    assert!(r.is_err(), "client accepted the wrong node identity");
    let right = id(RoleKind::Node, Some("uk.ncsc"), "london-1");
    let ch = dialer
        .connect(
            &n.addr.to_string(),
            beacon::trust::tls::ExpectedServer::Exactly(right),
        )
        .await
        .unwrap();
    health_on(ch).await.unwrap();
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificate_reloads_without_restart() {
    let pki = TestPki::new();
    let node_files = pki.node("uk.ncsc", "london-1");
    let n = TestNode::start(&NodeOptions::new(&pki, node_files.clone())).await;
    let ca = [pki.ca_cert()];
    let client = pki.client("us.cisa", "x");
    health(n.addr, &client, &ca).await.unwrap();

    // Renew the node's certificate in place; new connections must see the new serial.
    let renewed = pki
        .ca()
        .renew(
            &beacon::tools::pki::Selector::Serial(node_files.serial.clone()),
            None,
        )
        .unwrap();
    beacon::tools::pki::write_file(&node_files.key, renewed.key_pem.as_bytes(), true, true)
        .unwrap();
    beacon::tools::pki::write_file(&node_files.cert, renewed.cert_pem.as_bytes(), false, true)
        .unwrap();
    let want = renewed.serial.clone();
    let seen = wait_until(Duration::from_secs(10), || {
        let want = want.clone();
        let addr = n.addr;
        let ca = pki.ca_cert();
        async move { served_serial(addr, &ca).await.as_deref() == Some(want.as_str()) }
    })
    .await;
    assert!(seen.is_some(), "the node kept serving the old certificate");
    health(n.addr, &client, &ca).await.unwrap();
    n.stop().await;
}

/// The serial of the certificate a node serves (a raw TLS handshake).
async fn served_serial(addr: std::net::SocketAddr, ca: &std::path::Path) -> Option<String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in beacon::trust::read_certs(ca).ok()? {
        roots.add(c).ok()?;
    }
    let config = rustls::ClientConfig::builder_with_provider(beacon::trust::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    let leaf = tls.get_ref().1.peer_certificates()?.first()?.clone();
    beacon::trust::identity_of(&leaf)
        .ok()
        .map(|(_, serial)| beacon::tools::pki::hex(&serial))
}

/// The services a reflection reply lists; panics on any other reply.
macro_rules! reflected_services {
    ($v:ident, $ch:expr) => {{
        use tonic_reflection::pb::$v::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new($ch)
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .expect("reflection answers")
            .into_inner();
        let resp = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("unexpected reflection response");
        };
        list.service
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<String>>()
    }};
}

/// Reflection v1, and v1alpha for the tools that speak only it (grpcurl
/// 1.8, grpcio-reflection's client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reflection_lists_the_services_in_v1_and_v1alpha() {
    let pki = TestPki::new();
    let n = node(&pki).await;
    let ch = dial(n.addr, &pki.client("us.cisa", "tool"), &[pki.ca_cert()])
        .await
        .unwrap();
    let v1 = reflected_services!(v1, ch.clone());
    let v1alpha = reflected_services!(v1alpha, ch);
    for names in [&v1, &v1alpha] {
        for want in [
            "beacon.v1.Bulletins",
            "beacon.v1.Admin",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
    }
    n.stop().await;
}

/// Records the CA names a server's CertificateRequest offers.
#[derive(Debug, Default)]
struct HintRecorder {
    seen: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl rustls::client::ResolvesClientCert for HintRecorder {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if let Ok(mut s) = self.seen.lock() {
            s.extend(root_hint_subjects.iter().map(|h| h.to_vec()));
        }
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// OpenSSL and BoringSSL clients (grpcio, grpcurl) refuse a CertificateRequest
/// whose CA names are not whole DER Names; each hint must parse as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_request_names_the_cas_as_der_names() {
    use x509_parser::prelude::FromDer;
    let pki = TestPki::new();
    let node = node(&pki).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in beacon::trust::read_certs(&pki.ca_cert()).expect("ca") {
        roots.add(c).expect("root");
    }
    let recorder = Arc::new(HintRecorder::default());
    let mut config = rustls::ClientConfig::builder_with_provider(beacon::trust::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.client_auth_cert_resolver = recorder.clone();
    let tcp = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    // The node refuses us (no certificate); the hints were offered before that.
    let _ = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    let hints = recorder.seen.lock().expect("lock").clone();
    assert_eq!(hints.len(), 1, "one CA in the bundle, one hint");
    let (rest, parsed) = x509_parser::x509::X509Name::from_der(&hints[0]).expect("a DER Name");
    assert!(rest.is_empty());
    assert!(parsed.to_string().contains("Test CA"), "{parsed}");
    node.stop().await;
}

/// TCP probes (a load balancer's, Kubernetes') are counted and logged at
/// debug, not as refused handshakes; refusals read as sentences in the audit
/// log, with a short code in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_counted_quietly_and_refusals_read_as_sentences() {
    let alliance = Alliance::new(&["uk.ncsc"]);
    let ops = free_addr();
    let mut opts = alliance.options(alliance.node("uk.ncsc", "london-1"), &[]);
    opts.extra
        .push_str(&format!("[metrics]\nlisten = \"{ops}\"\n"));
    // A CA that issues for anyone, which this node trusts for uk.ncsc only.
    let wide = alliance.pki.other_ca("wide", "*");
    opts.trust.push((
        beacon::tools::pki::Ca::cert_path(&wide),
        "uk.ncsc".into(),
        None,
    ));
    let (dir, addr) = child_config(&opts);
    let node = ChildNode::spawn(dir.path(), &["daemon", "--config", "beacon.toml"], addr);

    // Probes: connect and close without a byte.
    for _ in 0..5 {
        drop(std::net::TcpStream::connect(addr).expect("connect"));
    }
    // A client of fr.anssi from that CA: it may not vouch for fr.anssi here.
    let eve = alliance.pki.issue_from(
        &wide,
        IssueRequest::new(id(RoleKind::Client, Some("fr.anssi"), "eve")),
    );
    assert!(health(addr, &eve, &alliance.ca).await.is_err());
    // Plain HTTP on the TLS port.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = [0u8; 64];
        let _ = std::io::Read::read(&mut s, &mut buf);
    }

    let metrics = wait_until(Duration::from_secs(10), || async {
        let body = ops_get(ops, "/metrics").await;
        body.contains("beacon_connections_closed_before_tls_total")
            && metric(&body, "beacon_connections_closed_before_tls_total") >= 5.0
            && body.contains("reason=\"protocol\"")
    })
    .await;
    let body = ops_get(ops, "/metrics").await;
    assert!(metrics.is_some(), "{body}");
    for quiet in ["reason=\"eof\"", "reason=\"io\""] {
        assert!(
            !body.contains(quiet),
            "a probe counted as a refusal: {body}"
        );
    }
    // The log is written by a thread of its own: wait for both lines.
    let both = wait_until(Duration::from_secs(10), || async {
        let log = node.log();
        log.contains("did not speak TLS") && log.contains("may not vouch for")
    })
    .await;
    assert!(both.is_some(), "{}", node.log());
    let log = node.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS handshake refused"))
        .collect();
    assert!(
        refusals.len() >= 2 && refusals.len() <= 4,
        "one line per refused handshake, none per probe: {refusals:#?}\nthe whole log:\n{log}"
    );
    for line in &refusals {
        assert!(
            !line.contains("OtherError") && !line.contains("Other("),
            "a sentence, not a debug dump: {line}"
        );
    }
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("the client's certificate was refused")
                && l.contains("may not vouch for")),
        "{refusals:#?}"
    );
    assert!(
        refusals.iter().any(|l| l.contains("did not speak TLS")),
        "{refusals:#?}"
    );
}

/// GET `path` on the operations port; the whole response.
async fn ops_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// The value of an unlabelled sample, or 0.
fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A client that is refused is told why, in a sentence, before or at its
/// first call (not `transport error`); the node's log names the refused
/// identity and serial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_is_told_why_and_the_node_names_it() {
    let pki = TestPki::new();
    let revoked = pki.client("uk.ncsc", "gone");
    pki.revoke(&revoked);
    let opts = NodeOptions::new(&pki, pki.node("uk.ncsc", "london-1"));
    let (dir, addr) = child_config(&opts);
    let node = ChildNode::spawn(dir.path(), &["daemon", "--config", "beacon.toml"], addr);
    let ca = pki.ca_cert();
    let list = |files: &CertFiles| {
        let mut args = vec!["list".to_owned(), "--limit".into(), "1".into()];
        args.extend(conn_args(addr, files, &ca));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        beacon(dir.path(), &args)
    };

    // Expired: the client says so before dialling.
    let now = OffsetDateTime::now_utc();
    let mut old = IssueRequest::new(id(RoleKind::Client, Some("uk.ncsc"), "old"));
    old.not_before = Some(now - time::Duration::days(10));
    old.not_after = Some(now - time::Duration::days(1));
    let old = pki.issue(old);
    let (code, _, err) = list(&old);
    assert_ne!(code, 0);
    assert!(
        err.contains("your certificate") && err.contains("expired at"),
        "{err}"
    );

    // Revoked: the node's refusal, as a sentence.
    let (code, _, err) = list(&revoked);
    assert_ne!(code, 0);
    assert!(
        err.contains("refused this side's certificate: it is revoked"),
        "{err}"
    );
    assert!(
        !err.contains("transport error") && !err.contains("CANCELLED"),
        "{err}"
    );

    // Issued by a CA the node does not trust.
    let rogue = pki.other_ca("rogue", "*");
    let stranger = pki.issue_from(
        &rogue,
        IssueRequest::new(id(RoleKind::Client, Some("uk.ncsc"), "stranger")),
    );
    let (code, _, err) = list(&stranger);
    assert_ne!(code, 0);
    assert!(err.contains("refused this side's certificate"), "{err}");

    // The node names who it refused.
    let named = wait_until(Duration::from_secs(10), || async {
        node.log().lines().any(|l| {
            l.contains("client certificate refused")
                && l.contains(&revoked.identity)
                && l.to_ascii_lowercase()
                    .contains(&revoked.serial.to_ascii_lowercase())
        })
    })
    .await;
    assert!(named.is_some(), "{}", node.log());
}

/// A subscriber revoked mid-stream is told why: its stream ends with
/// UNAUTHENTICATED naming its certificate and the reason, not with a broken
/// HTTP/2 stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_revoked_mid_stream_is_told_why() {
    let pki = TestPki::new();
    let n = node(&pki).await;
    let ca = vec![pki.ca_cert()];
    let victim = pki.client("us.cisa", "victim");
    let mut c = member(n.addr, &victim, &ca).await;
    let mut sub = c.subscribe(open("feed", earliest())).await.unwrap();
    read_deliveries(&mut sub, 0, true, Duration::from_secs(10)).await;
    // A publish stream open on the same connection.
    let mut publishing = c.publish_stream().await.unwrap();
    let env = signer(&victim)
        .sign(bulletin("us.cisa", "before").to_bytes())
        .unwrap();
    publishing.send(&env).await.unwrap();
    publishing.result().await.unwrap().expect("accepted");
    pki.revoke(&victim);
    let e = stream_end(&mut sub, Duration::from_secs(10))
        .await
        .expect_err("the stream ends with a reason");
    let msg = e.to_string();
    assert!(
        msg.contains("UNAUTHENTICATED")
            && msg.contains("your certificate")
            && msg.contains(&victim.identity)
            && msg.contains("revoked"),
        "{msg}"
    );
    // The publish stream is told the same.
    let e = publishing
        .finish()
        .await
        .expect_err("the publish stream ends with a reason");
    assert!(
        e.to_string().contains("UNAUTHENTICATED") && e.to_string().contains("your certificate"),
        "{e}"
    );
    n.stop().await;
}
