//! The node's network edge: the mutual-TLS accept loop, the connection
//! wrapper and registry, and the reload loop.
//!
//! The accept loop performs each TLS handshake in its own task under a
//! timeout (a slow handshake never blocks others), caps open connections with
//! a semaphore, and hands verified connections to tonic. Every connection
//! carries a [`PeerInfo`] (the verified identity) into each request's
//! extensions. The ClientHello is read first, so a TCP probe that closes
//! before any TLS is counted, not logged as a refusal.
//!
//! The reload loop watches the node's certificate, key, CA and CRL files (and
//! SIGHUP, through its `reload` notifier): it rebuilds the trust bundle and
//! the TLS config for new connections, then re-checks every open connection
//! against the new bundle and closes those that no longer pass (revoked,
//! expired, CA removed). A bundle that refuses the node's own certificate is
//! applied all the same; the node then serves no one until that changes.

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
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, error, info, warn};

use parking_lot::{Mutex, RwLock};

use crate::config::Config;
use crate::identity::Identity;
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
    pub connections: Arc<Connections>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub shutdown: CancellationToken,
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
    identity: Identity,
    addr: SocketAddr,
    chain: Vec<CertificateDer<'static>>,
    not_after: Option<SystemTime>,
    cancel: CancellationToken,
    /// Why the node is about to close the connection: streams on it end
    /// with this reason (UNAUTHENTICATED) before the connection goes.
    closing: tokio::sync::watch::Sender<Option<String>>,
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
                warn!(target: "beacon::audit", conn = id, peer = %conn.identity, addr = %conn.addr,
                      reason = %e, "closing connection: identity no longer accepted");
                let serial = trust::identity_of(leaf)
                    .map(|(_, s)| s.iter().map(|b| format!("{b:02x}")).collect::<String>())
                    .unwrap_or_default();
                Self::close_with(
                    conn,
                    format!(
                        "the node closed this connection: your certificate ({}, serial {serial}) is no longer accepted: {e}",
                        conn.identity
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
                warn!(target: "beacon::audit", conn = id, peer = %conn.identity,
                      "closing connection: certificate expired");
                Self::close_with(
                    conn,
                    format!(
                        "the node closed this connection: your certificate ({}) has expired",
                        conn.identity
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
/// TLS config for new connections, the node's identity and chain, and
/// whether the bundle refuses that chain.
pub struct Material {
    pub bundle: Arc<TrustBundle>,
    pub tls: Arc<rustls::ServerConfig>,
    pub identity: Identity,
    pub own: Arc<KeyedChain>,
    /// Why the bundle refuses the node's own certificate, if it does.
    pub own_refused: Option<String>,
}

pub fn load_material(config: &Config) -> Result<Material, NetError> {
    let own = KeyedChain::load(&config.node.cert, &config.node.key)?;
    if own.identity.kind() != crate::identity::RoleKind::Node {
        return Err(NetError::NotANode(own.identity.to_string()));
    }
    let bundle = Arc::new(trust::load_bundle(config, &own.identity.trust_domain)?);
    for (issuer, next) in bundle.stale_crls() {
        warn!(%issuer, next_update = next, "a CRL is past its next update; still applying it — publish a fresh one with `beacon ca crl`");
    }
    let own_refused = tls::check_own_certificate(&bundle, &own)
        .err()
        .map(|e| e.to_string());
    let tls = Arc::new(tls::server_config(bundle.clone(), &own)?);
    Ok(Material {
        bundle,
        tls,
        identity: own.identity.clone(),
        own: Arc::new(own),
        own_refused,
    })
}

/// A verified TLS connection as tonic sees it. Reading or writing fails once
/// the connection's cancellation token fires, which makes hyper drop the
/// connection and every stream on it.
pub struct MtlsConn {
    io: TlsStream<TcpStream>,
    info: PeerInfo,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    connections: Arc<Connections>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for MtlsConn {
    fn drop(&mut self) {
        self.connections.remove(self.info.conn_id);
    }
}

impl MtlsConn {
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

impl AsyncRead for MtlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for MtlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
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
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for MtlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

/// Accepts connections until `shutdown`: each TLS handshake in its own task
/// under a timeout, at most `limits.max_connections` at once; verified
/// connections go to `tx` (tonic).
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<Net>,
    tls_config: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    tx: mpsc::Sender<Result<MtlsConn, io::Error>>,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(state.config.limits.max_connections));
    let handshake_timeout = state.config.timing.handshake_timeout;
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
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        if let Some(reason) = state.trust.own_refusal() {
            // A node whose own certificate is refused serves no one.
            state
                .metrics
                .handshake_failures
                .inc("own_certificate_refused");
            debug!(%addr, %reason, "connection dropped: this node's own certificate is refused");
            continue;
        }
        let config = tls_config.read().clone();
        let state = state.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let handshake = async {
                // Read the ClientHello first, so that a connection closed
                // before any TLS (a load balancer's or Kubernetes' TCP
                // probe) is told apart from a refused handshake.
                let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
                    .await
                    .map_err(Handshake::BeforeHello)?;
                start.into_stream(config).await.map_err(Handshake::Failed)
            };
            let stream = match tokio::time::timeout(handshake_timeout, handshake).await {
                Ok(Ok(s)) => s,
                Ok(Err(Handshake::BeforeHello(e)))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    state.metrics.closed_before_tls.inc();
                    debug!(%addr, "connection closed before a TLS ClientHello (a TCP probe?)");
                    return;
                }
                Ok(Err(Handshake::BeforeHello(e) | Handshake::Failed(e))) => {
                    state.metrics.handshake_failures.inc(handshake_reason(&e));
                    let reason = tls::describe_io(&e, tls::Peer::Client);
                    warn!(target: "beacon::audit", %addr, %reason, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    state.metrics.handshake_failures.inc("timeout");
                    warn!(target: "beacon::audit", %addr, timeout = ?handshake_timeout,
                          "TLS handshake refused: the client did not finish it in time");
                    return;
                }
            };
            let chain: Vec<CertificateDer<'static>> = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let Some(leaf) = chain.first() else {
                warn!(%addr, "handshake completed without a client certificate");
                return;
            };
            let identity = match trust::identity_of(leaf) {
                Ok((id, _)) => id,
                Err(e) => {
                    warn!(%addr, reason = %e, "client certificate has no usable identity");
                    return;
                }
            };
            let cancel = state.shutdown.child_token();
            let not_after = trust::cert_not_after(leaf);
            let conn_id = state.connections.insert(LiveConn {
                identity: identity.clone(),
                addr,
                chain,
                not_after,
                cancel: cancel.clone(),
                closing: tokio::sync::watch::Sender::new(None),
            });
            debug!(conn = conn_id, peer = %identity, %addr, "connection accepted");
            let conn = MtlsConn {
                io: stream,
                info: PeerInfo {
                    identity,
                    addr,
                    conn_id,
                },
                cancelled: Box::pin(cancel.cancelled_owned()),
                connections: state.connections.clone(),
                _permit: permit,
            };
            // If the server is gone the connection is simply dropped.
            let _ = tx.send(Ok(conn)).await;
        });
    }
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
pub async fn reload_loop(
    state: Arc<Net>,
    tls_config: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    reload: Arc<Notify>,
    shutdown: CancellationToken,
) {
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
        state.connections.close_expired();
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
                *tls_config.write() = m.tls;
                state.trust.install(m.bundle.clone(), m.own.clone());
                let closed = state.connections.recheck(&m.bundle);
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
                        state.connections.cancel_all();
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
