//! Dialling a node with a member (or operator) certificate.
//!
//! The TLS handshake is ours (tokio-rustls with [`crate::trust::tls::client_config`]),
//! so the node's certificate is checked against the same trust routine as
//! everywhere else, and its SPIFFE identity is checked too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::base::identity::{Identity, MemberScope};
use crate::base::proto::v1 as pb;
use crate::domain::bulletin::{Bulletin, BulletinError, Envelope, Signer};
use crate::trust::tls::{self, ExpectedServer, KeyedChain, TlsError};
use crate::trust::{self, TrustBundle, TrustError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("missing setting: {0}")]
    Missing(&'static str),
    #[error("client config {path}: {reason}")]
    Config { path: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Bulletin(#[from] BulletinError),
    #[error("invalid node address {0:?}: use host:port")]
    Address(String),
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("your certificate {path} {what}: no node would accept it. Ask your CA's operator for a new one (beacon ca renew --cert {path}, or beacon ca issue for a revoked one)")]
    OwnCertificate { path: String, what: String },
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(tonic::Status),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Rpc(s)
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
        .chars()
        .flat_map(|c| {
            if c.is_uppercase() {
                vec!['_', c]
            } else {
                vec![c.to_ascii_uppercase()]
            }
        })
        .collect::<String>()
        .trim_start_matches('_')
        .to_owned()
}

/// Where and as whom to connect.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// host:port of the node.
    pub node: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// CA certificates that vouch for nodes (PEM, one or more per file),
    /// for any member.
    pub ca: Vec<PathBuf>,
    /// CA certificates with the members each may vouch for (as a node's
    /// `[[trust]]` entries): a member's CA then cannot pass off a node of
    /// another member.
    pub trust: Vec<(PathBuf, MemberScope)>,
    /// CRLs to apply to the node's certificate.
    pub crl: Vec<PathBuf>,
    /// Require exactly this node identity (e.g. another member's node)
    /// instead of a node of the client's own member naming the host.
    pub node_identity: Option<Identity>,
}

/// A client config file: any of `node`, `cert`, `key`, `ca`, `crl`,
/// `node_identity`, and `[[trust]]` entries; relative paths are relative to
/// the file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ClientFile {
    node: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Vec<PathBuf>,
    crl: Vec<PathBuf>,
    node_identity: Option<String>,
    trust: Vec<ClientTrust>,
}

/// A CA and the members it may vouch for, as in a node's `beacon.toml`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientTrust {
    ca: PathBuf,
    members: Vec<String>,
}

impl ClientSettings {
    /// Reads a client config file (TOML).
    pub fn from_file(path: &std::path::Path) -> Result<ClientSettings, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| ClientError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let f: ClientFile = toml::from_str(&text).map_err(|e| ClientError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        let anchor = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let node_identity = match f.node_identity {
            Some(s) => Some(s.parse::<Identity>().map_err(|e| ClientError::Config {
                path: path.display().to_string(),
                reason: format!("node_identity: {e}"),
            })?),
            None => None,
        };
        let mut trust = Vec::new();
        for t in f.trust {
            let scope = MemberScope::parse_list(&t.members).map_err(|e| ClientError::Config {
                path: path.display().to_string(),
                reason: format!("trust {}: {e}", t.ca.display()),
            })?;
            trust.push((anchor(t.ca), scope));
        }
        Ok(ClientSettings {
            node: f.node,
            cert: f.cert.map(anchor),
            key: f.key.map(anchor),
            ca: f.ca.into_iter().map(anchor).collect(),
            trust,
            crl: f.crl.into_iter().map(anchor).collect(),
            node_identity,
        })
    }
}

/// A loaded client identity plus the bundle it checks nodes against.
#[derive(Debug, Clone)]
pub struct Dialer {
    pub own: KeyedChain,
    pub bundle: Arc<TrustBundle>,
    /// The node identity pinned in the settings, if any.
    pub pin: Option<Identity>,
}

impl Dialer {
    pub fn load(settings: &ClientSettings) -> Result<Dialer, ClientError> {
        let cert = settings
            .cert
            .as_ref()
            .ok_or(ClientError::Missing("certificate (--cert or BEACON_CERT)"))?;
        let key = settings
            .key
            .as_ref()
            .ok_or(ClientError::Missing("private key (--key or BEACON_KEY)"))?;
        if settings.ca.is_empty() && settings.trust.is_empty() {
            return Err(ClientError::Missing("CA bundle (--ca or BEACON_CA)"));
        }
        let own = KeyedChain::load(cert, key)?;
        // A certificate past its validity is refused by every node: say so
        // here, in a sentence, rather than as a failed handshake.
        if let Some(leaf) = own.chain.first() {
            let now = std::time::SystemTime::now();
            let at = crate::interop::document::rfc3339;
            if let Some(end) = trust::cert_not_after(leaf) {
                if end < now {
                    return Err(ClientError::OwnCertificate {
                        path: cert.display().to_string(),
                        what: format!("expired at {}", at(end)),
                    });
                }
            }
            if let Some(start) = trust::cert_not_before(leaf) {
                if start > now + Duration::from_secs(60) {
                    return Err(ClientError::OwnCertificate {
                        path: cert.display().to_string(),
                        what: format!(
                            "is not valid before {} (is this machine's clock right?)",
                            at(start)
                        ),
                    });
                }
            }
        }
        let cas = settings
            .ca
            .iter()
            .map(|p| (p.as_path(), MemberScope::any()))
            .chain(settings.trust.iter().map(|(p, s)| (p.as_path(), s.clone())));
        let bundle = Arc::new(trust::read_bundle(
            &own.identity.trust_domain,
            cas,
            settings.crl.iter().map(PathBuf::as_path),
        )?);
        Ok(Dialer {
            own,
            bundle,
            pin: settings.node_identity.clone(),
        })
    }

    /// What this caller requires of the node by default: the pinned identity,
    /// or else a node of its own member (operators: any node) whose
    /// certificate names the host dialled.
    pub fn expected(&self) -> ExpectedServer {
        ExpectedServer::for_caller(&self.own.identity, self.pin.clone())
    }

    /// Opens a channel to `address` (host:port), checking the node as
    /// [`Dialer::expected`] says.
    pub async fn dial(&self, address: &str) -> Result<Channel, ClientError> {
        self.connect(address, self.expected()).await
    }

    /// Opens a channel to `address` (host:port).
    pub async fn connect(
        &self,
        address: &str,
        expected: ExpectedServer,
    ) -> Result<Channel, ClientError> {
        let config = Arc::new(tls::client_config(
            self.bundle.clone(),
            &self.own,
            expected,
        )?);
        connect_with(address, config).await
    }
}

/// The largest HTTP/2 frame this client accepts (16 KiB is the protocol's
/// default and minimum).
const MAX_FRAME_BYTES: u32 = 256 * 1024;

/// HTTP/2 keepalive of a channel: a PING after `interval` without traffic;
/// no answer within `timeout` closes the connection (and fails its calls).
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for Keepalive {
    /// What clients use: lenient, for long-lived subscriptions over slow links.
    fn default() -> Self {
        Keepalive {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(20),
        }
    }
}

/// Opens a gRPC channel over mutual TLS using `config`.
pub async fn connect_with(
    address: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Channel, ClientError> {
    connect_keepalive(address, config, Keepalive::default()).await
}

/// As [`connect_with`], with the HTTP/2 keepalive given (peer links use a
/// short one, so a silent peer is noticed within seconds).
pub async fn connect_keepalive(
    address: &str,
    config: Arc<rustls::ClientConfig>,
    keepalive: Keepalive,
) -> Result<Channel, ClientError> {
    let uri: Uri = format!("http://{address}")
        .parse()
        .map_err(|_| ClientError::Address(address.to_owned()))?;
    if uri.port_u16().is_none() || uri.host().is_none() {
        return Err(ClientError::Address(address.to_owned()));
    }
    let endpoint = Endpoint::from(uri)
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        // Lets a node send a stream's data in frames of up to 256 KiB
        // instead of 16 KiB: fewer HTTP/2 frames, fewer flushes and system
        // calls on both sides while a replay streams.
        .max_frame_size(MAX_FRAME_BYTES)
        .http2_keep_alive_interval(keepalive.interval)
        .keep_alive_timeout(keepalive.timeout);
    let connector = tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other("address has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .ok_or_else(|| std::io::Error::other("address has no port"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)
                .map_err(|e| std::io::Error::other(format!("bad server name: {e}")))?;
            // A refusal reads as a sentence (which check failed, and why),
            // not as rustls' debug form.
            let mut tls = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    std::io::Error::new(e.kind(), tls::describe_io(&e, tls::Peer::Node))
                })?;
            // In TLS 1.3 the node checks this side's certificate after the
            // handshake has completed here: its refusal (revoked, expired,
            // an unknown CA) arrives as an alert on the first read. Read the
            // node's first bytes (its HTTP/2 settings) now, so a refusal is
            // a sentence and not a "transport error" on the first call.
            let mut first = vec![0u8; 16 * 1024];
            let n = match tokio::time::timeout(
                FIRST_BYTES,
                tokio::io::AsyncReadExt::read(&mut tls, &mut first),
            )
            .await
            {
                Ok(Ok(0)) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the node closed the connection right after the TLS handshake",
                    ))
                }
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        tls::describe_io(&e, tls::Peer::Node),
                    ))
                }
                // Nothing yet: go on (the first call will tell).
                Err(_) => 0,
            };
            first.truncate(n);
            Ok::<_, std::io::Error>(TokioIo::new(Prefixed {
                prefix: first,
                at: 0,
                inner: tls,
            }))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| ClientError::Connect {
            address: address.to_owned(),
            reason: error_chain(&e),
        })
}

/// How long a dialler waits for the node's first bytes after the TLS
/// handshake (a node sends its HTTP/2 settings at once).
const FIRST_BYTES: Duration = Duration::from_secs(5);

/// A stream that first yields bytes already read from it.
struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An error and its sources on one line.
/// Generic words (tonic's "transport error") give way to the cause that
/// follows them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let msg = err.to_string();
        if !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = err.source();
    }
    if parts.len() > 1 {
        parts.retain(|p| p != "transport error");
    }
    parts.join(": ")
}

/// The result of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub id: String,
    pub sequence: u64,
    pub duplicate: bool,
    pub digest: Vec<u8>,
    /// What the node accepted but wants the publisher to know.
    pub warnings: Vec<String>,
    /// The receipt (C2SP tlog-proof), when asked for and made in time.
    pub receipt: String,
}

/// A connected member client that reads (subscribe, and the generated
/// client's `Get`, `List`, `Status`) and publishes envelopes already signed
/// (relaying, replaying an export). It holds no signing key. Cheap to clone
/// (clones share the connection).
#[derive(Clone)]
pub struct BeaconReader {
    pub bulletins: BulletinsClient,
}

/// What a reader accepts in one message, unless told otherwise.
const READER_MAX_MESSAGE: usize = 64 * 1024 * 1024;

impl BeaconReader {
    /// Dials the node in `settings` with the certificate and key of its
    /// TLS identity (as [`BeaconClient::connect`], without loading a signer).
    pub async fn connect(settings: &ClientSettings) -> Result<BeaconReader, ClientError> {
        let dialer = Dialer::load(settings)?;
        let node = settings
            .node
            .as_ref()
            .ok_or(ClientError::Missing("node address (--node or BEACON_NODE)"))?;
        let channel = dialer.connect(node, dialer.expected()).await?;
        Ok(BeaconReader::new(channel))
    }

    pub fn new(channel: Channel) -> BeaconReader {
        Self::with_limit(channel, READER_MAX_MESSAGE)
    }

    /// A reader that sends and accepts messages of at most `max` bytes.
    pub fn with_limit(channel: Channel, max: usize) -> BeaconReader {
        BeaconReader {
            bulletins: BulletinsClient::new(channel)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        }
    }

    /// Publishes an already signed envelope (relaying, or replaying an export).
    pub async fn publish_envelope(
        &mut self,
        envelope: &Envelope,
    ) -> Result<Published, ClientError> {
        self.publish_envelope_with(envelope, false).await
    }

    /// As [`BeaconReader::publish_envelope`]; with `receipt`, the answer
    /// waits for a checkpoint that covers the bulletin and carries its
    /// receipt (`Published::receipt`).
    pub async fn publish_envelope_with(
        &mut self,
        envelope: &Envelope,
        receipt: bool,
    ) -> Result<Published, ClientError> {
        let r = self
            .bulletins
            .publish(pb::PublishRequest {
                envelope: Some(crate::domain::bulletin::codec::envelope_to_proto(envelope)),
                receipt,
            })
            .await?
            .into_inner();
        Ok(published(r))
    }

    /// Opens a `PublishStream`: many publishes on one HTTP/2 stream.
    pub async fn publish_stream(&mut self) -> Result<PublishStream, ClientError> {
        // Requests queue here until the node reads them; it reads a bounded
        // number ahead of its answers (`limits.publish_stream_window`).
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let inbound = self
            .bulletins
            .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(PublishStream {
            outbound: Some(tx),
            inbound,
            waiting: 0,
        })
    }
}

/// A [`BeaconReader`] that also signs what it publishes, with the key of
/// its certificate. Cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct BeaconClient {
    pub reader: BeaconReader,
    pub signer: Arc<Signer>,
}

impl std::ops::Deref for BeaconClient {
    type Target = BeaconReader;
    fn deref(&self) -> &BeaconReader {
        &self.reader
    }
}

impl std::ops::DerefMut for BeaconClient {
    fn deref_mut(&mut self) -> &mut BeaconReader {
        &mut self.reader
    }
}

impl BeaconClient {
    /// Dials the node in `settings` and loads the signing key from the same
    /// certificate and key files as the TLS identity. The node must be one
    /// of the client's own member naming the host dialled, or the pinned
    /// `node_identity`.
    pub async fn connect(settings: &ClientSettings) -> Result<BeaconClient, ClientError> {
        let dialer = Dialer::load(settings)?;
        let expected = dialer.expected();
        Self::connect_expecting(settings, expected).await
    }

    /// As [`BeaconClient::connect`], with an explicit requirement on the node.
    pub async fn connect_expecting(
        settings: &ClientSettings,
        expected: ExpectedServer,
    ) -> Result<BeaconClient, ClientError> {
        let dialer = Dialer::load(settings)?;
        let node = settings
            .node
            .as_ref()
            .ok_or(ClientError::Missing("node address (--node or BEACON_NODE)"))?;
        let channel = dialer.connect(node, expected).await?;
        let signer = Signer::new(dialer.own.chain.clone(), dialer.own.key.secret_der())?;
        Ok(BeaconClient::new(channel, Arc::new(signer)))
    }

    pub fn new(channel: Channel, signer: Arc<Signer>) -> BeaconClient {
        BeaconClient {
            reader: BeaconReader::new(channel),
            signer,
        }
    }

    /// Signs and publishes a bulletin.
    pub async fn publish(&mut self, bulletin: &Bulletin) -> Result<Published, ClientError> {
        let envelope = self.signer.sign(bulletin.to_bytes())?;
        self.reader.publish_envelope(&envelope).await
    }

    /// Signs and publishes a bulletin, and waits for its receipt.
    pub async fn publish_with_receipt(
        &mut self,
        bulletin: &Bulletin,
    ) -> Result<(Published, Envelope), ClientError> {
        let envelope = self.signer.sign(bulletin.to_bytes())?;
        let p = self.reader.publish_envelope_with(&envelope, true).await?;
        Ok((p, envelope))
    }
}

/// A stream (a subscription, a publish stream) that cannot go on.
fn stream_error(stream: &str, reason: impl Into<String>) -> ClientError {
    ClientError::Connect {
        address: stream.to_owned(),
        reason: reason.into(),
    }
}

fn published(r: pb::PublishResponse) -> Published {
    Published {
        id: r.id,
        sequence: r.sequence,
        duplicate: r.duplicate,
        digest: r.envelope_digest,
        warnings: r.warnings,
        receipt: r.receipt,
    }
}

/// An open `PublishStream`: send envelopes, then read their results, which
/// come in the order sent. A refusal answers one publish; the stream goes on.
pub struct PublishStream {
    outbound: Option<tokio::sync::mpsc::Sender<pb::PublishRequest>>,
    inbound: tonic::Streaming<pb::PublishResult>,
    /// Sent and not yet answered.
    waiting: usize,
}

impl PublishStream {
    /// Sends one envelope without waiting for its result.
    pub async fn send(&mut self, envelope: &Envelope) -> Result<(), ClientError> {
        let closed = || stream_error("publish stream", "the stream is closed");
        self.outbound
            .as_ref()
            .ok_or_else(closed)?
            .send(pb::PublishRequest {
                receipt: false,
                envelope: Some(crate::domain::bulletin::codec::envelope_to_proto(envelope)),
            })
            .await
            .map_err(|_| closed())?;
        self.waiting += 1;
        Ok(())
    }

    /// Publishes sent and not yet answered.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// The result of the oldest publish not yet answered: `Ok(Err(status))`
    /// when the node refused that one (with the status `Publish` would give).
    pub async fn result(&mut self) -> Result<Result<Published, tonic::Status>, ClientError> {
        use pb::publish_result::Outcome;
        loop {
            let Some(r) = self.inbound.message().await? else {
                return Err(stream_error(
                    "publish stream",
                    format!(
                        "the node ended the stream with {} publishes unanswered",
                        self.waiting
                    ),
                ));
            };
            let outcome = match r.outcome {
                Some(Outcome::Accepted(a)) => Ok(published(a)),
                Some(Outcome::Refused(f)) => Err(tonic::Status::new(f.code.into(), f.message)),
                None => continue,
            };
            self.waiting = self.waiting.saturating_sub(1);
            return Ok(outcome);
        }
    }

    /// Sends one envelope and waits for its result (closed loop: results of
    /// earlier sends must have been read).
    pub async fn publish(&mut self, envelope: &Envelope) -> Result<Published, ClientError> {
        if self.waiting > 0 {
            return Err(stream_error(
                "publish stream",
                format!("{} earlier results are still unread", self.waiting),
            ));
        }
        self.send(envelope).await?;
        self.result().await?.map_err(ClientError::Rpc)
    }

    /// Closes the sending side, reads the results still owed, and waits for
    /// the node to end the stream.
    pub async fn finish(mut self) -> Result<Vec<Result<Published, tonic::Status>>, ClientError> {
        self.outbound = None;
        let mut out = Vec::with_capacity(self.waiting);
        while self.waiting > 0 {
            out.push(self.result().await?);
        }
        while self.inbound.message().await?.is_some() {}
        Ok(out)
    }
}

/// An open subscription stream: read events, send cumulative acks.
pub struct SubscriptionStream {
    outbound: Option<tokio::sync::mpsc::Sender<pb::SubscribeRequest>>,
    inbound: tonic::Streaming<pb::SubscribeResponse>,
}

impl SubscriptionStream {
    /// The next event; `Ok(None)` when the node closed the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<pb::subscribe_response::Msg>, ClientError> {
        loop {
            match self.inbound.message().await? {
                None => return Ok(None),
                Some(pb::SubscribeResponse { msg: Some(m) }) => return Ok(Some(m)),
                Some(_) => continue,
            }
        }
    }

    /// Acknowledges everything up to and including `sequence`.
    pub async fn ack(&self, sequence: u64) -> Result<(), ClientError> {
        let closed = || stream_error("subscription", "the stream is closed");
        self.outbound
            .as_ref()
            .ok_or_else(closed)?
            .send(pb::SubscribeRequest {
                msg: Some(pb::subscribe_request::Msg::Ack(pb::Ack { sequence })),
            })
            .await
            .map_err(|_| closed())
    }

    /// Says goodbye: closes the sending side after the acks already sent, and
    /// waits (up to `limit`) for the node to end the stream, which it does
    /// once the cursor is durable at the last ack. Deliveries arriving
    /// meanwhile are dropped unacknowledged (the next run gets them again).
    pub async fn finish(mut self, limit: Duration) -> Result<(), ClientError> {
        self.outbound = None;
        let drained = tokio::time::timeout(limit, async {
            while self.inbound.message().await?.is_some() {}
            Ok::<(), ClientError>(())
        })
        .await;
        match drained {
            Ok(r) => r,
            Err(_) => Err(stream_error(
                "subscription",
                format!("the node did not confirm the cursor within {limit:?}"),
            )),
        }
    }
}

impl BeaconReader {
    /// Opens a subscription (durable when `open.name` is set).
    pub async fn subscribe(
        &mut self,
        open: pb::SubscribeOpen,
    ) -> Result<SubscriptionStream, ClientError> {
        // A few acks may queue while the node is busy; more wait for room.
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tx.send(pb::SubscribeRequest {
            msg: Some(pb::subscribe_request::Msg::Open(open)),
        })
        .await
        .map_err(|_| stream_error("subscription", "cannot queue the open message"))?;
        let inbound = self
            .bulletins
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(SubscriptionStream {
            outbound: Some(tx),
            inbound,
        })
    }
}

/// The envelope of a delivery, as a reader takes it: the bytes received must
/// match the digest sent with them, then they are decoded.
pub fn delivered_envelope(d: &pb::Delivery) -> Result<crate::domain::bulletin::Envelope, String> {
    let bytes = d
        .envelope
        .as_ref()
        .ok_or("the delivery carries no envelope")?;
    if crate::domain::bulletin::sha256(bytes).as_slice() != d.envelope_digest.as_slice() {
        return Err("the envelope does not match the digest sent with it".into());
    }
    crate::domain::bulletin::codec::decode_envelope(bytes)
}

/// What a delivery's sequence commits to in the serving node's tree,
/// computed from the delivery itself (its sequence, the SHA-256 of the bytes
/// received, its acceptance time and origin): a reader checks that what it
/// was served is what the log holds, without taking the node's word for the
/// leaf.
pub fn delivered_leaf_entry(d: &pb::Delivery) -> Result<Vec<u8>, String> {
    let envelope = d
        .envelope
        .as_ref()
        .ok_or("the delivery carries no envelope")?;
    let at = d
        .accepted_at
        .as_ref()
        .ok_or("the delivery carries no acceptance time")?;
    let accepted = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            u64::try_from(at.seconds).map_err(|_| "a bad acceptance time")?,
            u32::try_from(at.nanos).map_err(|_| "a bad acceptance time")?,
        );
    Ok(crate::store::leaf_entry(
        d.sequence,
        &crate::domain::bulletin::sha256(envelope),
        accepted,
        &d.origin_node,
        d.origin_sequence,
    ))
}

/// Clients for the node's services.
pub type BulletinsClient = pb::bulletins_client::BulletinsClient<Channel>;
pub type AdminClient = pb::admin_client::AdminClient<Channel>;
