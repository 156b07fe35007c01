//! A node: `run(config, listener, shutdown)` composes everything a node runs
//! (store, trust, broker, peer links, the accept and reload loops, the
//! services, the operations port), serves until `shutdown`, drains, and
//! closes the store.

use std::io;
use std::sync::Arc;

use std::time::SystemTime;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::base::config::Config;
use crate::trust::state::TrustState;

use crate::net::edge::{self as net, Connections, Net, NetError};
use crate::node::state::NodeState;
use crate::store::Duty;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("config: {0}")]
    Retention(String),
    #[error(transparent)]
    Tokens(#[from] crate::domain::tokens::TokenError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: String,
        source: io::Error,
    },
    #[error("reflection setup failed: {0}")]
    Reflection(String),
    /// Already a sentence ("this node's own certificate is refused …").
    #[error("{0}")]
    OwnCertificate(String),
    #[error("transparency log: {0}")]
    Transparency(#[from] crate::node::transparency::TransparencyError),
    #[error("{0}")]
    Evidence(#[from] crate::node::evidence::EvidenceError),
    #[error("{0}")]
    Keys(#[from] crate::domain::keys::KeyError),
}

/// Runs a node until `shutdown` is cancelled; SIGHUP-style reloads come through `reload`.
pub async fn run_with_reload(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    reload: Arc<Notify>,
) -> Result<(), NodeError> {
    let material = net::load_material(&config)?;
    // Refusing at start beats failing every handshake later.
    if let Some(reason) = &material.own_refused {
        return Err(NodeError::OwnCertificate(format!(
            "{reason}. A revoked certificate is replaced by a new one with a new key (beacon ca issue node …; beacon ca renew refuses a revoked certificate), an expired one with beacon ca renew"
        )));
    }
    let local = listener.local_addr().map_err(|source| NodeError::Listen {
        what: "gRPC ([node] listen)",
        addr: config.node.listen.to_string(),
        source,
    })?;
    let ops_listener = bind_ops(&config).await?;
    let retention = crate::store::retention::Retention::from_config(&config.retention)
        .map_err(NodeError::Retention)?;
    let store = open_store(&config, &material)?;
    let tasks = tokio_util::task::TaskTracker::new();
    let drain = config.timing.drain_timeout;
    let node = compose(config, &material, store.clone(), &shutdown, &tasks)?;
    info!(node = %node.state.identity, addr = %local, "beacon node listening (mutual TLS 1.3)");
    let routes = crate::api::router(node.state.clone())
        .await
        .map_err(|e| NodeError::Reflection(e.to_string()))?;
    let taxii_listener = crate::interop::taxii::bind(&node.state)
        .await
        .map_err(|source| NodeError::Listen {
            what: "TAXII ([taxii] listen)",
            addr: node
                .state
                .config
                .taxii
                .listen
                .map(|a| a.to_string())
                .unwrap_or_default(),
            source,
        })?;
    let running = Running::start(
        &node,
        Ports {
            grpc: listener,
            routes,
            ops: ops_listener,
            taxii: taxii_listener,
        },
        retention,
        reload,
        &shutdown,
    );
    shutdown.cancelled().await;
    running.stop(&node).await;
    drop(node);
    close_store(store, &tasks, drain).await;
    info!("beacon node stopped");
    Ok(())
}

/// Binds the operations port, if `[metrics] listen` is set.
async fn bind_ops(config: &Config) -> Result<Option<TcpListener>, NodeError> {
    let Some(addr) = config.metrics.listen else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| NodeError::Listen {
            what: "the operations port ([metrics] listen)",
            addr: addr.to_string(),
            source,
        })
}

/// Opens the node's store, with the spans TAXII needs.
fn open_store(
    config: &Config,
    material: &net::Material,
) -> Result<Arc<crate::store::Store>, NodeError> {
    let opening = std::time::Instant::now();
    let store = Arc::new(crate::store::Store::open(
        &config.node.data_dir,
        crate::store::StoreOptions {
            node: Some(material.identity.to_string()),
            ..crate::store::StoreOptions::new(&config.store, crate::interop::stix::SPANS)
        },
    )?);
    info!(
        head = store.head(),
        dir = %config.node.data_dir.display(),
        took_ms = opening.elapsed().as_millis() as u64,
        "store opened"
    );
    Ok(store)
}

/// What the node is made of once composed: the state its services share,
/// the edge's, and the TAXII port's connections.
struct Node {
    state: Arc<NodeState>,
    net: Arc<Net>,
    taxii_connections: Arc<Connections>,
}

fn compose(
    config: Config,
    material: &net::Material,
    store: Arc<crate::store::Store>,
    shutdown: &CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<Node, NodeError> {
    // The open connections of each TLS port.
    let connections = Arc::new(Connections::default());
    let taxii_connections = Arc::new(Connections::default());
    let config = Arc::new(config);
    let trust = Arc::new(TrustState::new(
        material.bundle.clone(),
        material.own.clone(),
    ));
    let metrics = Arc::new(crate::base::metrics::Metrics::default());
    let tlog_dir = config.transparency.dir_for(&config.node.data_dir);
    let evidence = Arc::new(crate::node::evidence::Equivocations::open(
        &tlog_dir.join("equivocations"),
    )?);
    let transparency = {
        let own = material.own.clone();
        let signer = crate::domain::bulletin::Signer::new(own.chain.clone(), own.key.secret_der())
            .map_err(crate::node::transparency::TransparencyError::Sign)?;
        Arc::new(crate::node::transparency::TransparencyLog::open(
            &tlog_dir,
            &material.identity,
            &signer,
            store.clone(),
            &config.transparency,
        )?)
    };
    let net = Arc::new(Net {
        config: config.clone(),
        identity: material.identity.clone(),
        trust: trust.clone(),
        registries: vec![connections.clone(), taxii_connections.clone()],
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
    });
    let keys = Arc::new(crate::domain::keys::KeyStore::open(
        &config.node.data_dir,
        &trust.signer_check(),
        SystemTime::now(),
    )?);
    let state = Arc::new(NodeState {
        identity: material.identity.clone(),
        started_at: SystemTime::now(),
        connections,
        trust,
        store,
        transparency,
        evidence: evidence.clone(),
        policy: crate::domain::policy::Policy::new(&config.groups),
        broker: Arc::new(crate::broker::subscription::Broker::new(
            config.limits.max_subscriptions,
            tasks.clone(),
        )),
        peers: crate::node::federation::links(&config, &material.identity),
        metrics,
        tokens: Arc::new(crate::domain::tokens::Tokens::open(&config.node.data_dir)?),
        keys,
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        config,
    });
    Ok(Node {
        state,
        net,
        taxii_connections,
    })
}

/// The node's listeners, bound.
struct Ports {
    grpc: TcpListener,
    routes: tonic::service::Routes,
    ops: Option<TcpListener>,
    taxii: Option<TcpListener>,
}

/// The node's long-running tasks, each awaited at shutdown.
struct Running {
    acceptor: JoinHandle<()>,
    ops: Option<JoinHandle<()>>,
    taxii: Option<JoinHandle<()>>,
    expiries: JoinHandle<()>,
    pruner: JoinHandle<()>,
    checkpoints: JoinHandle<()>,
    links: Option<JoinHandle<()>>,
    witnesses: Vec<JoinHandle<()>>,
    reloader: JoinHandle<()>,
}

impl Running {
    /// Starts the ports, the expiry watch, retention, the peer links and the
    /// reload loop.
    fn start(
        node: &Node,
        ports: Ports,
        retention: crate::store::retention::Retention,
        reload: Arc<Notify>,
        shutdown: &CancellationToken,
    ) -> Running {
        let (state, net) = (&node.state, &node.net);
        let ops = ports.ops.map(|l| {
            if let Ok(at) = l.local_addr() {
                info!(addr = %at, "operations port: /metrics, /healthz, gRPC health (plain text)");
            }
            let scrape = crate::node::ops::Scrape {
                metrics: state.metrics.clone(),
                store: state.store.clone(),
                trust: state.trust.clone(),
                connections: state.connections.clone(),
                broker: state.broker.clone(),
                peers: state.peers.clone(),
                transparency: state.transparency.clone(),
                evidence: state.evidence.clone(),
            };
            tokio::spawn(crate::node::ops::serve(
                scrape,
                l,
                net.clone(),
                shutdown.clone(),
            ))
        });
        let taxii = ports.taxii.map(|l| {
            tokio::spawn(crate::interop::taxii::serve(
                state.clone(),
                l,
                net.clone(),
                node.taxii_connections.clone(),
                shutdown.clone(),
            ))
        });
        // Certificates and CRLs that are about to expire are said in the log.
        let expiries = tokio::spawn(crate::trust::state::watch_expiries(
            state.trust.clone(),
            shutdown.clone(),
        ));
        // Retention: prunes what is due in the background, until shutdown,
        // on one node of the log at a time.
        let pruner = {
            let store = state.store.clone();
            let held = store.duty(Duty::Pruning);
            tokio::spawn(crate::node::duty::while_held(
                Duty::Pruning,
                held,
                shutdown.clone(),
                move |token| crate::store::retention::run(store.clone(), retention.clone(), token),
            ))
        };
        // Checkpoints of the log, signed until shutdown.
        let checkpoints = tokio::spawn(state.transparency.clone().run(
            state.trust.clone(),
            state.identity.clone(),
            shutdown.clone(),
        ));
        // Peer links: one task each, until shutdown, on one node of the
        // log at a time.
        let links = (!state.peers.is_empty()).then(|| {
            let state = state.clone();
            let held = state.store.duty(Duty::PeerLinks);
            tokio::spawn(crate::node::duty::while_held(
                Duty::PeerLinks,
                held,
                shutdown.clone(),
                move |token| {
                    let context = Arc::new(crate::node::federation::LinkContext {
                        identity: state.identity.clone(),
                        timing: state.config.timing.clone(),
                        limits: state.config.limits.clone(),
                        trust: state.trust.clone(),
                        store: state.store.clone(),
                        policy: state.policy.clone(),
                        evidence: state.evidence.clone(),
                        shutdown: token,
                        keys: state.keys.clone(),
                        carry_sealed: state.config.federation.carry_sealed,
                    });
                    crate::node::federation::run_all(
                        context,
                        state.peers.clone(),
                        state.shutdown.clone(),
                    )
                },
            ))
        });
        // Each peer's log witnessed, until shutdown.
        let witness_context = Arc::new(crate::node::witness::WitnessContext {
            trust: state.trust.clone(),
            log: state.transparency.clone(),
            interval: std::time::Duration::from_millis(
                state.config.transparency.witness_interval_ms,
            ),
            shutdown: shutdown.clone(),
        });
        let witnesses = state
            .config
            .peers
            .iter()
            .map(|p| {
                tokio::spawn(crate::node::witness::run(
                    witness_context.clone(),
                    p.address.clone(),
                    p.identity.clone(),
                ))
            })
            .collect();
        // Reload: files and SIGHUP.
        let reloader = tokio::spawn(net::reload_loop(net.clone(), reload, shutdown.clone()));
        // The gRPC port: mutual TLS, each connection served in its own task.
        let grpc = net::Door {
            name: "gRPC",
            security: net::Security::Tls(Box::new(|trust: &TrustState| {
                crate::trust::tls::server_config(trust.bundle(), &trust.own())
            })),
            connections: state.connections.clone(),
            max_connections: state.config.limits.max_connections,
        };
        let acceptor = {
            let (routes, limits, tasks) = (
                ports.routes,
                state.config.limits.clone(),
                state.tasks.clone(),
            );
            tokio::spawn(net::listen(
                ports.grpc,
                grpc,
                net.clone(),
                move |conn| {
                    let (routes, limits, tasks) = (routes.clone(), limits.clone(), tasks.clone());
                    async move { crate::api::serve_connection(conn, routes, &limits, tasks).await }
                },
                shutdown.clone(),
            ))
        };
        Running {
            acceptor,
            ops,
            taxii,
            expiries,
            pruner,
            checkpoints,
            links,
            witnesses,
            reloader,
        }
    }

    /// After shutdown: every port stops accepting, open connections close
    /// (their streams end), peer links and background work stop.
    async fn stop(self, node: &Node) {
        node.state.connections.cancel_all();
        let _ = self.acceptor.await;
        self.reloader.abort();
        let _ = self.reloader.await;
        if let Some(links) = self.links {
            let _ = links.await;
        }
        for w in self.witnesses {
            let _ = w.await;
        }
        let _ = self.pruner.await;
        let _ = self.checkpoints.await;
        // A last checkpoint covers everything acknowledged.
        let log = node.state.transparency.clone();
        let _ = tokio::task::spawn_blocking(move || log.close()).await;
        let _ = self.expiries.await;
        if let Some(t) = self.taxii {
            let _ = t.await;
        }
        if let Some(ops) = self.ops {
            let _ = ops.await;
        }
    }
}

/// Every task that holds the store (connections and their streams,
/// subscriptions and their cursor commits, blocking reads) is tracked: waits
/// for them (at most `drain`), then closes the store (writer and flusher
/// joined, final flush), so that whoever opens this data directory next
/// finds it free.
async fn close_store(
    store: Arc<crate::store::Store>,
    tasks: &tokio_util::task::TaskTracker,
    drain: std::time::Duration,
) {
    tasks.close();
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        warn!(deadline = ?drain, tasks = tasks.len(), "drain deadline passed with tasks still running");
    }
    match Arc::try_unwrap(store) {
        Ok(mut s) => {
            if let Err(e) = tokio::task::spawn_blocking(move || s.close())
                .await
                .unwrap_or(Ok(()))
            {
                warn!(error = %e, "closing the store failed");
            }
        }
        Err(shared) => {
            warn!("tasks still hold the store; flushing and leaving it open");
            if let Err(e) = shared.flush() {
                warn!(error = %e, "final store flush failed");
            }
        }
    }
}

/// Runs a node until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    run_with_reload(config, listener, shutdown, Arc::new(Notify::new())).await
}
