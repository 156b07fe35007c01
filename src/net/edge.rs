//! The node's network edge: one accept loop for every port ([`listen`]:
//! gRPC, TAXII, the operations port), the connection wrapper and registries,
//! and the reload loop.
//!
//! Every port is a [`Door`] served by the same loop: a connection cap with
//! permits (at the cap it waits), back-off on accept errors, each TLS
//! handshake in its own task under a timeout (a slow handshake never blocks
//! others), the TLS configuration built from the trust in force (rebuilt
//! after a reload), and the same refusal while the node's own certificate is
//! refused. The ClientHello is read first, so a TCP probe that closes before
//! any TLS is counted, not logged as a refusal. Every accepted connection is
//! registered with its door, where revocation and expiry reach it; gRPC's
//! carry a [`PeerInfo`] (the verified identity) into each request's
//! extensions.
//!
//! The reload loop watches the node's certificate, key, CA and CRL files (and
//! SIGHUP, through its `reload` notifier): it installs the new trust bundle
//! (the ports build their TLS configuration from it), then re-checks every
//! open connection of every TLS port against it and closes those that no
//! longer pass (revoked, expired, CA removed). A bundle that refuses the
//! node's own certificate is applied all the same; the node then serves no
//! one until that changes.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use parking_lot::Mutex;

use crate::base::config::Config;
use crate::base::identity::Identity;
use crate::trust::state::TrustState;
use crate::trust::tls::{self, KeyedChain, TlsError};
use crate::trust::{self, TrustBundle, TrustError, Usage};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("node certificate identity {0} is not a node identity")]
    NotANode(String),
}

/// What the accept and reload loops work with.
pub struct Net {
    pub config: Arc<Config>,
    pub identity: Identity,
    pub trust: Arc<TrustState>,
    /// The open connections of every TLS port (gRPC's, TAXII's): a reload
    /// re-checks them all, and the node's own certificate refused closes
    /// them all.
    pub registries: Vec<Arc<Connections>>,
    pub metrics: Arc<crate::base::metrics::Metrics>,
    pub shutdown: CancellationToken,
    /// The node's tasks: each connection runs in one (and the HTTP/2
    /// streams on it, through [`Executor`]), so shutdown can wait for them.
    pub tasks: TaskTracker,
}

/// Runs hyper's background work (an HTTP/2 stream each) as tracked tasks
/// of the node.
#[derive(Clone)]
pub struct Executor(pub TaskTracker);

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// The verified peer of a connection; every request carries it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub identity: Identity,
    pub addr: SocketAddr,
    pub conn_id: u64,
}

/// A connection the node currently holds open.
struct LiveConn {
    /// `None` without a client certificate (a TAXII token caller, the
    /// operations port).
    identity: Option<Identity>,
    addr: SocketAddr,
    chain: Vec<CertificateDer<'static>>,
    not_after: Option<SystemTime>,
    cancel: CancellationToken,
    /// Why the node is about to close the connection: streams on it end
    /// with this reason (UNAUTHENTICATED) before the connection goes.
    closing: tokio::sync::watch::Sender<Option<String>>,
}

impl LiveConn {
    fn who(&self) -> String {
        self.identity.as_ref().map_or_else(
            || "a client without a certificate".into(),
            ToString::to_string,
        )
    }
}

/// How long streams on a connection whose identity is no longer accepted
/// get to send their reason before the connection is closed.
const CLOSING_GRACE: Duration = Duration::from_millis(300);

/// Open connections, so that revocation can reach them.
#[derive(Default)]
pub struct Connections {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, LiveConn>>,
}

impl Connections {
    pub fn count(&self) -> usize {
        self.live.lock().len()
    }

    fn insert(&self, conn: LiveConn) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.live.lock().insert(id, conn);
        id
    }

    fn remove(&self, id: u64) {
        self.live.lock().remove(&id);
    }

    /// Follows why connection `id` is about to be closed (`None` while it
    /// is not).
    pub fn closing(&self, id: u64) -> Option<tokio::sync::watch::Receiver<Option<String>>> {
        self.live.lock().get(&id).map(|c| c.closing.subscribe())
    }

    /// Tells the streams on `conn` why it closes, then closes it after a
    /// short grace (so a subscriber reads the reason, not a broken stream).
    fn close_with(conn: &LiveConn, reason: String) {
        conn.closing.send_replace(Some(reason));
        let cancel = conn.cancel.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(CLOSING_GRACE).await;
                    cancel.cancel();
                });
            }
            Err(_) => cancel.cancel(),
        }
    }

    /// Closes every connection whose chain `bundle` no longer accepts.
    fn recheck(&self, bundle: &TrustBundle) -> usize {
        let m = self.live.lock();
        let now = UnixTime::now();
        let mut closed = 0;
        for (id, conn) in m.iter() {
            if conn.cancel.is_cancelled() || conn.closing.borrow().is_some() {
                continue;
            }
            let Some((leaf, rest)) = conn.chain.split_first() else {
                continue;
            };
            if let Err(e) = bundle.verify(leaf, rest, now, Usage::ClientAuth) {
                warn!(target: "beacon::audit", conn = id, peer = %conn.who(), addr = %conn.addr,
                      reason = %e, "closing connection: identity no longer accepted");
                let serial = trust::identity_of(leaf)
                    .map(|(_, s)| s.iter().map(|b| format!("{b:02x}")).collect::<String>())
                    .unwrap_or_default();
                Self::close_with(
                    conn,
                    format!(
                        "the node closed this connection: your certificate ({}, serial {serial}) is no longer accepted: {e}",
                        conn.who()
                    ),
                );
                closed += 1;
            }
        }
        closed
    }

    /// Closes connections whose certificate has expired.
    fn close_expired(&self) {
        let m = self.live.lock();
        let now = SystemTime::now();
        for (id, conn) in m.iter() {
            if conn.not_after.is_some_and(|t| t <= now)
                && !conn.cancel.is_cancelled()
                && conn.closing.borrow().is_none()
            {
                warn!(target: "beacon::audit", conn = id, peer = %conn.who(),
                      "closing connection: certificate expired");
                Self::close_with(
                    conn,
                    format!(
                        "the node closed this connection: your certificate ({}) has expired",
                        conn.who()
                    ),
                );
            }
        }
    }

    pub fn cancel_all(&self) {
        for conn in self.live.lock().values() {
            conn.cancel.cancel();
        }
    }
}

fn files_to_watch(config: &Config) -> Vec<PathBuf> {
    let mut files = vec![config.node.cert.clone(), config.node.key.clone()];
    for t in &config.trust {
        files.push(t.ca.clone());
        if let Some(c) = &t.crl {
            files.push(c.clone());
        }
    }
    files
}

/// Says what a changed `beacon.toml` would change: its settings apply at a
/// restart only (SIGHUP and the file watch reload the certificate, key, CA
/// and CRL files the running config names).
fn config_changed(running: &Config, path: &std::path::Path, bytes: &[u8], back: bool) {
    if back {
        info!(config = %path.display(), "the config file is back to the settings in force");
        return;
    }
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let text = String::from_utf8_lossy(bytes);
    match Config::parse(&text, base) {
        Err(e) => warn!(config = %path.display(), error = %e,
                        "the config file changed and does not load; the node goes on with the settings it started with"),
        Ok(new) => {
            let sections = running.changed_sections(&new);
            if sections.is_empty() {
                return;
            }
            warn!(config = %path.display(), sections = %sections.join(", "),
                  "the config file changed; its settings are not applied until the node restarts (SIGHUP reloads the certificate, key, CA and CRL files only)");
        }
    }
}

/// A cheap fingerprint of the watched files: (length, mtime) of each.
fn fingerprint(files: &[PathBuf]) -> Vec<Option<(u64, SystemTime)>> {
    files
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
        })
        .collect()
}

/// What the node's certificate files and trust config make: the bundle, the
/// node's identity and chain, and whether the bundle refuses that chain.
/// (The TLS configuration of each port is built from them, and this checks
/// that it can be.)
pub struct Material {
    pub bundle: Arc<TrustBundle>,
    pub identity: Identity,
    pub own: Arc<KeyedChain>,
    /// Why the bundle refuses the node's own certificate, if it does.
    pub own_refused: Option<String>,
}

pub fn load_material(config: &Config) -> Result<Material, NetError> {
    let own = KeyedChain::load(&config.node.cert, &config.node.key)?;
    if own.identity.kind() != crate::base::identity::RoleKind::Node {
        return Err(NetError::NotANode(own.identity.to_string()));
    }
    let bundle = Arc::new(trust::load_bundle(config, &own.identity.trust_domain)?);
    for (issuer, next) in bundle.stale_crls() {
        warn!(%issuer, next_update = next, "a CRL is past its next update; still applying it — publish a fresh one with `beacon ca crl`");
    }
    let own_refused = tls::check_own_certificate(&bundle, &own)
        .err()
        .map(|e| e.to_string());
    tls::server_config(bundle.clone(), &own)?;
    Ok(Material {
        bundle,
        identity: own.identity.clone(),
        own: Arc::new(own),
        own_refused,
    })
}

/// How a port secures its connections.
pub enum Security {
    /// TLS with the node's certificate. The server configuration is built
    /// from the trust in force, and again after every reload (a new CRL, CA
    /// or certificate), before the next handshake.
    Tls(ServerConfigFn),
    /// Plain TCP: the operations port, meant for loopback or a pod network.
    Plain,
}

/// Builds a port's TLS server configuration from the trust in force.
pub type ServerConfigFn =
    Box<dyn Fn(&TrustState) -> Result<rustls::ServerConfig, TlsError> + Send + Sync>;

/// One of the node's ports (gRPC, TAXII, operations), as [`listen`] serves it.
pub struct Door {
    /// For the log: "gRPC", "TAXII", "operations".
    pub name: &'static str,
    pub security: Security,
    /// The port's open connections: revocation and expiry reach them there.
    pub connections: Arc<Connections>,
    /// At most this many connections at once; at the cap the port waits for
    /// one to end before it accepts another.
    pub max_connections: usize,
}

/// The stream under a connection.
enum Io {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

/// A connection accepted on a [`Door`]: TLS done (if the door has it), its
/// verified identity known, registered with the door's connections. Reading
/// or writing fails once the connection's cancellation token fires (a
/// revocation, the node's own certificate refused, shutdown), which makes
/// hyper drop the connection and every stream on it.
pub struct Conn {
    io: Io,
    /// The verified identity of the client certificate; `None` on a plain
    /// port, or on TLS without a client certificate (TAXII with tokens).
    pub identity: Option<Identity>,
    /// The client's certificate chain, leaf first (empty without one).
    pub chain: Vec<CertificateDer<'static>>,
    pub addr: SocketAddr,
    pub conn_id: u64,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    connections: Arc<Connections>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.connections.remove(self.conn_id);
    }
}

impl Conn {
    /// What each request on a connection with a client certificate
    /// carries; `None` without one.
    pub fn peer(&self) -> Option<PeerInfo> {
        Some(PeerInfo {
            identity: self.identity.clone()?,
            addr: self.addr,
            conn_id: self.conn_id,
        })
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.cancelled.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed by the node (identity no longer accepted or shutting down)",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        match &mut self.io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        match &mut self.io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    /// Forwarded, so HTTP/2 writes a frame's head and payload in one call
    /// (without it, h2 copies the first KiB and each frame costs two
    /// TLS records and two system calls).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        match &mut self.io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tls(s) => s.is_write_vectored(),
            Io::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The one accept loop of every port: until `shutdown`, accepts at most
/// `door.max_connections` at once (waiting for a permit at the cap), backs
/// off on accept errors (out of file descriptors), drops every connection
/// before TLS while the node's own certificate is refused (a TLS port; the
/// operations port stays open to say so), performs each TLS handshake in its
/// own task under the handshake timeout, registers the connection with the
/// door, and hands it to `serve`, which runs in that task.
pub async fn listen<F, Fut>(
    listener: TcpListener,
    door: Door,
    net: Arc<Net>,
    serve: F,
    shutdown: CancellationToken,
) where
    F: Fn(Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let door = Arc::new(door);
    let limit = Arc::new(Semaphore::new(door.max_connections.max(1)));
    let handshake_timeout = net.config.timing.handshake_timeout;
    // The TLS configuration of the trust generation it was built from.
    let mut tls: Option<(u64, Arc<rustls::ServerConfig>)> = None;
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    warn!(port = door.name, error = %e, "accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let config = match &door.security {
            Security::Plain => None,
            Security::Tls(build) => {
                if let Some(reason) = net.trust.own_refusal() {
                    // A node whose own certificate is refused serves no one.
                    net.metrics
                        .handshake_failures
                        .inc("own_certificate_refused");
                    debug!(port = door.name, %addr, %reason,
                           "connection dropped: this node's own certificate is refused");
                    continue;
                }
                // The generation is read before the trust it names, so a
                // reload between the two only makes the next accept rebuild.
                let generation = net.trust.generation();
                if tls.as_ref().is_none_or(|(g, _)| *g != generation) {
                    match build(&net.trust) {
                        Ok(c) => tls = Some((generation, Arc::new(c))),
                        Err(e) => {
                            warn!(port = door.name, error = %e,
                                  "cannot build the TLS configuration; connection dropped");
                            continue;
                        }
                    }
                }
                tls.as_ref().map(|(_, c)| c.clone())
            }
        };
        let net = net.clone();
        let door = door.clone();
        let serve = serve.clone();
        net.tasks.clone().spawn(async move {
            let (io, chain) = match config {
                None => (Io::Plain(tcp), Vec::new()),
                Some(config) => {
                    match handshake(tcp, addr, config, handshake_timeout, &net, door.name).await {
                        Some((stream, chain)) => (Io::Tls(Box::new(stream)), chain),
                        None => return,
                    }
                }
            };
            let identity = match chain.first() {
                None => None,
                Some(leaf) => match trust::identity_of(leaf) {
                    Ok((id, _)) => Some(id),
                    Err(e) => {
                        warn!(port = door.name, %addr, reason = %e,
                              "client certificate has no usable identity");
                        return;
                    }
                },
            };
            let cancel = net.shutdown.child_token();
            let conn_id = door.connections.insert(LiveConn {
                identity: identity.clone(),
                addr,
                chain: chain.clone(),
                not_after: chain.first().and_then(trust::cert_not_after),
                cancel: cancel.clone(),
                closing: tokio::sync::watch::Sender::new(None),
            });
            debug!(port = door.name, conn = conn_id, peer = ?identity.as_ref().map(ToString::to_string),
                   %addr, "connection accepted");
            serve(Conn {
                io,
                identity,
                chain,
                addr,
                conn_id,
                cancelled: Box::pin(cancel.cancelled_owned()),
                connections: door.connections.clone(),
                _permit: permit,
            })
            .await;
        });
    }
}

/// How long the accept loop rests after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A TLS handshake under `timeout`, the ClientHello read first so that a
/// connection closed before any TLS (a load balancer's or Kubernetes' TCP
/// probe) is told apart from a refused handshake. Failures are counted and
/// logged here; `None` then.
async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    net: &Net,
    port: &'static str,
) -> Option<(TlsStream<TcpStream>, Vec<CertificateDer<'static>>)> {
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
            .await
            .map_err(Handshake::BeforeHello)?;
        start.into_stream(config).await.map_err(Handshake::Failed)
    };
    let stream = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(Handshake::BeforeHello(e)))
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
            ) =>
        {
            net.metrics.closed_before_tls.inc();
            debug!(port, %addr, "connection closed before a TLS ClientHello (a TCP probe?)");
            return None;
        }
        Ok(Err(Handshake::BeforeHello(e) | Handshake::Failed(e))) => {
            net.metrics.handshake_failures.inc(handshake_reason(&e));
            let reason = tls::describe_io(&e, tls::Peer::Client);
            warn!(target: "beacon::audit", port, %addr, %reason, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            net.metrics.handshake_failures.inc("timeout");
            warn!(target: "beacon::audit", port, %addr, ?timeout,
                  "TLS handshake refused: the client did not finish it in time");
            return None;
        }
    };
    let chain = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    Some((stream, chain))
}

/// Where a handshake failed.
enum Handshake {
    /// Before a complete ClientHello arrived.
    BeforeHello(io::Error),
    /// During the handshake proper.
    Failed(io::Error),
}

/// A short, fixed reason for a failed handshake (a metric label).
fn handshake_reason(e: &io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as R};
    match e.get_ref().and_then(|x| x.downcast_ref::<R>()) {
        Some(R::InvalidCertificate(c)) => match c {
            C::Revoked => "revoked",
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not_yet_valid",
            C::UnknownIssuer => "unknown_issuer",
            C::BadSignature => "bad_signature",
            _ => "certificate_refused",
        },
        Some(R::NoCertificatesPresented) => "no_client_certificate",
        Some(R::PeerIncompatible(_)) | Some(R::NoApplicationProtocol) => "incompatible",
        Some(R::InvalidMessage(_)) | Some(R::PeerMisbehaved(_)) => "protocol",
        Some(_) => "tls",
        None if e.kind() == io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}

/// Reloads certificates, keys, CAs and CRLs when their files change (and on
/// `reload`): puts the new trust in force, closes connections it no longer
/// accepts, and stops or resumes serving with the node's own certificate.
pub async fn reload_loop(state: Arc<Net>, reload: Arc<Notify>, shutdown: CancellationToken) {
    let files = files_to_watch(&state.config);
    let mut seen = fingerprint(&files);
    let mut failed: Option<String> = None;
    // beacon.toml itself is read at start only: a change to it is said
    // (which sections, and that they need a restart), not silently ignored.
    let source = state.config.source.clone();
    let read_source = |p: &Option<PathBuf>| p.as_ref().and_then(|p| std::fs::read(p).ok());
    let started_with = state
        .config
        .source_text
        .as_ref()
        .map(|t| t.as_bytes().to_vec());
    let mut config_seen = started_with.clone();
    // Read only when its size or time changed (and once at the first tick,
    // for a change made between the load and this loop).
    let mut config_fp = None;
    let mut tick = tokio::time::interval(state.config.timing.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = reload.notified() => true,
            _ = tick.tick() => false,
        };
        for r in &state.registries {
            r.close_expired();
        }
        let fp = source
            .as_ref()
            .map(|p| fingerprint(std::slice::from_ref(p)));
        if forced || fp != config_fp {
            config_fp = fp;
            let text = read_source(&source);
            if text != config_seen || (forced && text != started_with) {
                config_seen = text.clone();
                if let (Some(path), Some(bytes)) = (&source, &text) {
                    config_changed(&state.config, path, bytes, text == started_with);
                }
            }
        }
        let now = fingerprint(&files);
        if !forced && now == seen {
            continue;
        }
        match load_material(&state.config) {
            Ok(m) => {
                seen = now;
                failed = None;
                if m.identity != state.identity {
                    warn!(old = %state.identity, new = %m.identity,
                          "the node certificate now names another identity; keeping the old one until restart");
                    continue;
                }
                // A newer bundle is always applied, even when it refuses this
                // node's own certificate: the other identities it revokes
                // must be refused at once.
                state.trust.install(m.bundle.clone(), m.own.clone());
                // Each port builds its TLS configuration again from the
                // trust installed here before its next handshake.
                let closed: usize = state.registries.iter().map(|r| r.recheck(&m.bundle)).sum();
                info!(
                    revoked = m.bundle.revoked_count(),
                    closed, forced, "reloaded certificates and CRLs"
                );
                let was_refused = state.trust.own_refusal().is_some();
                match &m.own_refused {
                    Some(reason) => {
                        if !was_refused {
                            error!(target: "beacon::audit", node = %state.identity, %reason,
                                   "this node's own certificate is refused: closing every connection \
                                    (gRPC and TAXII), accepting none and stopping peer links until a \
                                    valid certificate is installed. A revoked one is replaced by a new \
                                    certificate with a new key (beacon ca issue node …; renewing a \
                                    revoked certificate is refused), an expired one by beacon ca renew; \
                                    then SIGHUP the node or wait for the reload");
                        }
                        state.trust.set_own_refusal(Some(reason.clone()));
                        for r in &state.registries {
                            r.cancel_all();
                        }
                    }
                    None if was_refused => {
                        info!(target: "beacon::audit", node = %state.identity,
                              "this node's certificate is accepted again: serving and peering resume");
                        state.trust.set_own_refusal(None);
                    }
                    None => {}
                }
            }
            // `seen` stays as it was, so the next tick tries again (a
            // certificate and key replaced one after the other, say); the
            // same failure is logged once.
            Err(e) => {
                let msg = e.to_string();
                if failed.as_ref() != Some(&msg) {
                    warn!(error = %msg, "reload failed; keeping the current certificates and CRLs until the files load");
                    failed = Some(msg);
                }
            }
        }
    }
}
