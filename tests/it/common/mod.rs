//! The one test harness: throwaway CAs, certificates, and real nodes on
//! 127.0.0.1:0 (in-process through `node::run`, or the `beacon` binary as a
//! child process). Tests wait on readiness, never on fixed sleeps.

pub mod checks;
pub mod powerfs;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beacon::base::config::Config;
use beacon::base::identity::{Identity, MemberScope, RoleKind, TrustDomain};
use beacon::net::client::{self, ClientError, ClientSettings, Dialer};
use beacon::tools::pki::{self, Algorithm, Ca, InitRequest, IssueRequest};
use beacon::trust::tls::ExpectedServer;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const TD: &str = "alliance.example";

/// A certificate and key on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub serial: String,
    pub identity: String,
}

/// A throwaway PKI in a temporary directory.
pub struct TestPki {
    pub dir: TempDir,
    pub ca_dir: PathBuf,
    counter: std::sync::atomic::AtomicU32,
}

impl TestPki {
    /// An alliance CA vouching for every member, with the default key
    /// algorithm (what `beacon ca init` makes).
    pub fn new() -> TestPki {
        Self::with_ca("*", Algorithm::default())
    }

    pub fn with_ca(members: &str, algorithm: Algorithm) -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        init_ca(&ca_dir, members, algorithm);
        TestPki {
            dir,
            ca_dir,
            counter: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca(&self) -> Ca {
        Ca::open(&self.ca_dir).expect("open CA")
    }

    pub fn ca_cert(&self) -> PathBuf {
        Ca::cert_path(&self.ca_dir)
    }

    pub fn crl(&self) -> PathBuf {
        Ca::crl_path(&self.ca_dir)
    }

    /// Another CA in this temp dir (e.g. one per member, or one outside the bundle).
    pub fn other_ca(&self, name: &str, members: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        init_ca(&dir, members, Algorithm::default());
        dir
    }

    pub fn issue(&self, req: IssueRequest) -> CertFiles {
        issue_with(&self.ca_dir, self.dir.path(), req, &self.counter)
    }

    pub fn issue_from(&self, ca_dir: &Path, req: IssueRequest) -> CertFiles {
        issue_with(ca_dir, self.dir.path(), req, &self.counter)
    }

    pub fn node(&self, member: &str, name: &str) -> CertFiles {
        let mut req = IssueRequest::new(id(RoleKind::Node, Some(member), name));
        req.ip_addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        req.dns_names = vec!["localhost".into()];
        self.issue(req)
    }

    pub fn client(&self, member: &str, name: &str) -> CertFiles {
        self.issue(IssueRequest::new(id(RoleKind::Client, Some(member), name)))
    }

    pub fn operator(&self, name: &str) -> CertFiles {
        self.issue(IssueRequest::new(id(RoleKind::Operator, None, name)))
    }

    pub fn revoke(&self, files: &CertFiles) {
        self.ca()
            .revoke(
                &pki::Selector::Serial(files.serial.clone()),
                pki::Reason::KeyCompromise,
            )
            .expect("revoke");
    }
}

fn init_ca(dir: &Path, members: &str, algorithm: Algorithm) {
    Ca::init(
        dir,
        &InitRequest {
            trust_domain: TD.parse().expect("td"),
            name: format!("Test CA {}", dir.display()),
            members: MemberScope::parse_list(&members.split(',').collect::<Vec<_>>())
                .expect("scope"),
            algorithm,
            validity: Duration::from_secs(3600 * 24 * 30),
            force: false,
        },
    )
    .expect("init CA");
}

fn issue_with(
    ca_dir: &Path,
    out_dir: &Path,
    req: IssueRequest,
    counter: &std::sync::atomic::AtomicU32,
) -> CertFiles {
    let ca = Ca::open(ca_dir).expect("open CA");
    let issued = ca.issue(&req).expect("issue");
    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cert = out_dir.join(format!("cert-{n}.pem"));
    let key = out_dir.join(format!("cert-{n}.key"));
    pki::write_file(&cert, issued.cert_pem.as_bytes(), false, true).expect("write cert");
    pki::write_file(&key, issued.key_pem.as_bytes(), true, true).expect("write key");
    CertFiles {
        cert,
        key,
        serial: issued.serial,
        identity: issued.entry.identity,
    }
}

pub fn td() -> TrustDomain {
    TD.parse().expect("td")
}

pub fn id(kind: RoleKind, member: Option<&str>, name: &str) -> Identity {
    pki::identity_for(&td(), kind, member, name).expect("identity")
}

/// How a test node is set up.
pub struct NodeOptions {
    pub node: CertFiles,
    /// (CA certificate, members, CRL) entries of the trust bundle.
    pub trust: Vec<(PathBuf, String, Option<PathBuf>)>,
    /// Extra keys of the `[timing]` table (lines).
    pub timing: String,
    pub extra: String,
}

impl NodeOptions {
    pub fn new(pki: &TestPki, node: CertFiles) -> Self {
        NodeOptions {
            node,
            trust: vec![(pki.ca_cert(), "*".into(), Some(pki.crl()))],
            timing: String::new(),
            extra: String::new(),
        }
    }

    pub fn config_text(&self, data_dir: &Path, listen: &str) -> String {
        let mut s = format!(
            "[node]\nlisten = \"{listen}\"\ndata_dir = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n[timing]\nreload_interval = \"100ms\"\ndrain_timeout = \"3s\"\nheartbeat_interval = \"300ms\"\npeer_retry_max = \"500ms\"\n{}\n",
            data_dir.display(),
            self.node.cert.display(),
            self.node.key.display(),
            self.timing
        );
        for (ca, members, crl) in &self.trust {
            let members: Vec<String> = members.split(',').map(|m| format!("\"{m}\"")).collect();
            s.push_str(&format!(
                "[[trust]]\nca = \"{}\"\nmembers = [{}]\n",
                ca.display(),
                members.join(", ")
            ));
            if let Some(crl) = crl {
                s.push_str(&format!("crl = \"{}\"\n", crl.display()));
            }
            s.push('\n');
        }
        s.push_str(&self.extra);
        // A test that names its own store settings keeps them.
        if !self.extra.contains("[store") {
            s.push_str(&engine_section(data_dir));
        }
        s
    }
}

/// The `[store]` section that puts a node's store on PostgreSQL when the
/// suite runs on it (`BEACON_TEST_ENGINE=postgres`, with
/// `BEACON_TEST_PG_URL`): one schema per data directory, so a node
/// restarted on its directory finds its log. Empty on the embedded engine.
pub fn engine_section(data_dir: &Path) -> String {
    if !on_postgres() {
        return String::new();
    }
    let url = std::env::var("BEACON_TEST_PG_URL")
        .expect("BEACON_TEST_ENGINE=postgres needs BEACON_TEST_PG_URL (scripts/pg-cluster start)");
    format!(
        "\n[store]\nengine = \"postgres\"\n\n[store.postgres]\nurl = {url:?}\nschema = {:?}\n",
        pg_schema(data_dir)
    )
}

/// The store options of the store in `store_dir` in this run: its schema
/// on PostgreSQL, or the embedded engine's defaults.
pub fn store_options(store_dir: &Path) -> beacon::store::StoreOptions {
    let mut store = beacon::base::config::StoreConfig::default();
    if on_postgres() {
        let url = std::env::var("BEACON_TEST_PG_URL").expect("BEACON_TEST_PG_URL");
        store.engine = beacon::base::config::EngineKind::Postgres;
        store.postgres = Some(
            toml::from_str(&format!(
                "url = {url:?}\nschema = {:?}\n",
                pg_schema(store_dir)
            ))
            .expect("postgres settings"),
        );
    }
    beacon::store::StoreOptions::new(&store, beacon::interop::stix::SPANS)
}

/// Removes a stopped node's store as a lost disk would: its directory,
/// and on PostgreSQL its schema.
pub fn wipe_store(store_dir: &Path) {
    std::fs::remove_dir_all(store_dir).expect("wipe the store");
    if on_postgres() {
        psql(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            pg_schema(store_dir)
        ));
    }
}

/// Runs one statement on the test database (`psql`, from
/// `BEACON_TEST_PG_BIN` where set).
pub fn psql(sql: &str) -> String {
    let url = std::env::var("BEACON_TEST_PG_URL").expect("BEACON_TEST_PG_URL");
    let bin = std::env::var("BEACON_TEST_PG_BIN")
        .map(|b| PathBuf::from(b).join("psql"))
        .unwrap_or_else(|_| PathBuf::from("psql"));
    let out = Command::new(bin)
        .args([url.as_str(), "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether this run keeps nodes' stores on PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("BEACON_TEST_ENGINE").as_deref() == Ok("postgres")
}

/// A schema name of its own for a data directory.
pub fn pg_schema(data_dir: &Path) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        data_dir.as_os_str().as_encoded_bytes(),
    );
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("n_{hex}")
}

/// A node running in this process.
pub struct TestNode {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<Result<(), beacon::node::serve::NodeError>>>,
    pub data: Arc<TempDir>,
    pub config_path: PathBuf,
}

impl TestNode {
    pub async fn start(opts: &NodeOptions) -> TestNode {
        Self::try_start(opts).await.expect("node starts")
    }

    pub async fn try_start(opts: &NodeOptions) -> Result<TestNode, String> {
        let data = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config_path = data.path().join("beacon.toml");
        std::fs::write(
            &config_path,
            opts.config_text(&data.path().join("store"), "127.0.0.1:0"),
        )
        .map_err(|e| e.to_string())?;
        Self::spawn(config_path, Arc::new(data)).await
    }

    /// A data directory with the node's `beacon.toml` (its store in
    /// `store/`, not created yet), for a node started later with
    /// [`TestNode::start_prepared`] — after a restore into it, say.
    pub fn prepare(opts: &NodeOptions) -> (TempDir, PathBuf) {
        let data = tempfile::tempdir().expect("tempdir");
        let config_path = data.path().join("beacon.toml");
        std::fs::write(
            &config_path,
            opts.config_text(&data.path().join("store"), "127.0.0.1:0"),
        )
        .expect("write config");
        (data, config_path)
    }

    /// Starts a node from a directory made by [`TestNode::prepare`].
    pub async fn start_prepared(data: TempDir, config_path: PathBuf) -> TestNode {
        Self::spawn(config_path, Arc::new(data))
            .await
            .expect("node starts")
    }

    /// Starts a node on a listener bound beforehand (so that peers can be
    /// configured with each other's addresses before any of them runs).
    pub async fn start_on(opts: &NodeOptions, listener: TcpListener) -> TestNode {
        let data = tempfile::tempdir().expect("tempdir");
        let config_path = data.path().join("beacon.toml");
        let addr = listener.local_addr().expect("addr");
        std::fs::write(
            &config_path,
            opts.config_text(&data.path().join("store"), &addr.to_string()),
        )
        .expect("write config");
        Self::spawn_on(config_path, Arc::new(data), listener)
            .await
            .expect("node starts")
    }

    /// Runs `node::run` on the config at `config_path`, on a fresh port.
    async fn spawn(config_path: PathBuf, data: Arc<TempDir>) -> Result<TestNode, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        Self::spawn_on(config_path, data, listener).await
    }

    async fn spawn_on(
        config_path: PathBuf,
        data: Arc<TempDir>,
        listener: TcpListener,
    ) -> Result<TestNode, String> {
        let config = Config::load(&config_path).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(beacon::node::serve::run(config, listener, shutdown.clone()));
        Ok(TestNode {
            addr,
            shutdown,
            task: Some(task),
            data,
            config_path,
        })
    }

    /// Cancels the node and waits until `run` has returned cleanly.
    async fn join(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("node stops within its drain deadline")
                .expect("node task");
            r.expect("node exits cleanly");
        }
    }

    /// Stops the node cleanly and starts it again on the same store (new port).
    pub async fn restart(mut self) -> TestNode {
        self.join().await;
        Self::spawn(self.config_path.clone(), self.data.clone())
            .await
            .expect("node restarts")
    }

    /// Stops the node cleanly and starts it again on the same store and address.
    pub async fn restart_in_place(self) -> TestNode {
        self.restart_on_same_address(false).await
    }

    /// Stops the node cleanly, deletes its store (a lost disk, a node
    /// rebuilt empty), and starts it again on the same address.
    pub async fn restart_wiped(self) -> TestNode {
        self.restart_on_same_address(true).await
    }

    /// Stops the node cleanly, runs `between` on its store directory (as an
    /// operator would on a stopped node), and starts it again on the same
    /// address.
    pub async fn restart_after(mut self, between: impl FnOnce(&Path)) -> TestNode {
        self.join().await;
        between(&self.data.path().join("store"));
        self.restart_on_same_address(false).await
    }

    async fn restart_on_same_address(mut self, wipe: bool) -> TestNode {
        self.join().await;
        if wipe {
            wipe_store(&self.data.path().join("store"));
        }
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the node's address");
        Self::spawn_on(self.config_path.clone(), self.data.clone(), listener)
            .await
            .expect("node restarts")
    }

    pub async fn stop(mut self) {
        self.join().await;
    }

    /// Stops the node cleanly, keeping its store and address for
    /// [`StoppedNode::start`] (a node down for a while).
    pub async fn stop_keeping(mut self) -> StoppedNode {
        self.join().await;
        StoppedNode {
            addr: self.addr,
            data: self.data.clone(),
            config_path: self.config_path.clone(),
        }
    }
}

/// A node stopped with its store kept (`TestNode::stop_keeping`).
pub struct StoppedNode {
    pub addr: SocketAddr,
    data: Arc<TempDir>,
    config_path: PathBuf,
}

impl StoppedNode {
    /// Starts it again on its store and address.
    pub async fn start(self) -> TestNode {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the node's address");
        TestNode::spawn_on(self.config_path, self.data, listener)
            .await
            .expect("node restarts")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn settings(files: &CertFiles, ca: &[PathBuf]) -> ClientSettings {
    ClientSettings {
        node: None,
        cert: Some(files.cert.clone()),
        key: Some(files.key.clone()),
        ca: ca.to_vec(),
        trust: Vec::new(),
        crl: Vec::new(),
        node_identity: None,
    }
}

/// Dials `addr` as `files`, trusting `ca` for the node, accepting any node
/// the CA vouches for that names the host (tests reach one node with clients
/// of many members; a client's default, its own member's nodes only, is
/// tested in `tests/it/client_trust.rs`).
pub async fn dial(
    addr: SocketAddr,
    files: &CertFiles,
    ca: &[PathBuf],
) -> Result<Channel, ClientError> {
    let dialer = Dialer::load(&settings(files, ca))?;
    dialer
        .connect(&addr.to_string(), ExpectedServer::AnyNode)
        .await
}

/// A gRPC health check over a fresh connection: Ok when the node served it.
pub async fn health(addr: SocketAddr, files: &CertFiles, ca: &[PathBuf]) -> Result<(), String> {
    let channel = dial(addr, files, ca).await.map_err(|e| e.to_string())?;
    health_on(channel).await
}

pub async fn health_on(channel: Channel) -> Result<(), String> {
    let mut c = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        c.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .map_err(|_| "timed out".to_string())?;
    match r {
        Ok(resp) => {
            if resp.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                Ok(())
            } else {
                Err("not serving".into())
            }
        }
        Err(status) => Err(client::error_chain(&status)),
    }
}

/// Polls `f` until it returns true or `limit` passes; returns the time taken.
pub async fn wait_until<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The Python that interop tests run (`BEACON_PYTHON`, default `python3`)
/// if it can import `modules` (Python's `import` list). Without them the
/// test says so and is skipped, unless `BEACON_REQUIRE_PYTHON=1` (as
/// `.ci/run` sets), where it fails naming `install`.
pub fn python_with(modules: &str, install: &str) -> Option<String> {
    let py = std::env::var("BEACON_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(py);
    }
    let required = std::env::var("BEACON_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "BEACON_REQUIRE_PYTHON=1 but {py} cannot import {modules} ({install})"
    );
    eprintln!("skipping: {py} cannot import {modules}");
    None
}

/// The Go verifier of `tests/interop/go/verify.go` (Go's sumdb `note` and
/// `tlog`), built into `dir`, if Go and golang.org/x/mod are installed
/// (Debian: golang-go, golang-golang-x-mod-dev). Without them the test says
/// so and is skipped, unless `BEACON_REQUIRE_GO=1` (as `.ci/run` sets).
pub fn go_verifier(dir: &Path) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/go/verify.go");
    let out = dir.join("verify");
    let gopath = std::env::var("BEACON_GOPATH").unwrap_or_else(|_| "/usr/share/gocode".into());
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", &gopath)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOFLAGS", "")
        .output();
    match built {
        Ok(o) if o.status.success() => return Some(out),
        Ok(o) => eprintln!("go build failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => eprintln!("go: {e}"),
    }
    let required = std::env::var("BEACON_REQUIRE_GO").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "BEACON_REQUIRE_GO=1 but the Go verifier cannot be built (apt-get install golang-go golang-golang-x-mod-dev)"
    );
    eprintln!("skipping: no Go toolchain with golang.org/x/mod");
    None
}

/// `--node --cert --key --ca` of the CLI for `files` against `addr`.
pub fn conn_args(addr: SocketAddr, files: &CertFiles, ca: &Path) -> Vec<String> {
    vec![
        "--node".into(),
        addr.to_string(),
        "--cert".into(),
        files.cert.display().to_string(),
        "--key".into(),
        files.key.display().to_string(),
        "--ca".into(),
        ca.display().to_string(),
    ]
}

/// The `beacon` binary built for these tests.
pub fn beacon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_beacon"))
}

/// Runs `beacon ARGS` in `dir`; returns (exit code, stdout, stderr).
pub fn beacon(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(beacon_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("BEACON_NODE")
        .env_remove("BEACON_CERT")
        .env_remove("BEACON_KEY")
        .env_remove("BEACON_CA")
        .env_remove("BEACON_NODE_ID")
        .env_remove("BEACON_NODE_IDENTITY")
        .output()
        .expect("run beacon");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `beacon` child process (daemon or dev), killed when dropped.
pub struct ChildNode {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr_path: PathBuf,
}

impl ChildNode {
    /// Starts `beacon ARGS` and waits until `addr` accepts TCP connections.
    pub fn spawn(dir: &Path, args: &[&str], addr: SocketAddr) -> ChildNode {
        let stderr_path = dir.join(format!("child-{}.log", addr.port()));
        let stderr = std::fs::File::create(&stderr_path).expect("log file");
        let child = Command::new(beacon_bin())
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn beacon");
        let node = ChildNode {
            child,
            addr,
            stderr_path,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "beacon did not start listening on {addr}: {}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until the node's log holds `what` (its log is written by a
    /// thread of its own, a moment after the event); whether it came.
    pub fn wait_log(&self, what: &str, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.log().contains(what) {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal");
    }

    /// Waits for exit; returns the exit code (None if killed by a signal).
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                start.elapsed() < limit,
                "beacon did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound then released; the OS does not reuse it at once).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Writes `opts` as `beacon.toml` in a new directory, for a `beacon daemon`
/// child listening on a free loopback port.
pub fn child_config(opts: &NodeOptions) -> (TempDir, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    std::fs::write(
        dir.path().join("beacon.toml"),
        opts.config_text(&dir.path().join("store"), &addr.to_string()),
    )
    .expect("write config");
    (dir, addr)
}

/// A node with an alliance CA, an operator, and the CA bundle clients trust.
pub struct World {
    pub pki: TestPki,
    pub node: TestNode,
    /// The node's identity (clients of other members pin it).
    pub node_id: String,
    pub ca: Vec<PathBuf>,
    pub op: CertFiles,
}

pub async fn world() -> World {
    let pki = TestPki::new();
    let node_files = pki.node("drc", "hub-1");
    let node = TestNode::start(&NodeOptions::new(&pki, node_files.clone())).await;
    let ca = vec![pki.ca_cert()];
    let op = pki.operator("alice");
    World {
        pki,
        node,
        node_id: node_files.identity,
        ca,
        op,
    }
}

impl World {
    /// A new client of `member_id` and its signing client connection.
    pub async fn client(
        &self,
        member_id: &str,
        name: &str,
    ) -> (beacon::net::client::BeaconClient, CertFiles) {
        let files = self.pki.client(member_id, name);
        (member(self.node.addr, &files, &self.ca).await, files)
    }

    pub async fn head(&self) -> u64 {
        head(self.node.addr, &self.op, &self.ca).await
    }
}

/// A signing client of the node at `addr`, as `files` (accepting any node
/// naming the host, as [`dial`] does).
pub async fn member(
    addr: SocketAddr,
    files: &CertFiles,
    ca: &[PathBuf],
) -> beacon::net::client::BeaconClient {
    let mut s = settings(files, ca);
    s.node = Some(addr.to_string());
    beacon::net::client::BeaconClient::connect_expecting(&s, ExpectedServer::AnyNode)
        .await
        .expect("member client connects")
}

/// A signer for `files` without a connection.
pub fn signer(files: &CertFiles) -> beacon::domain::bulletin::Signer {
    beacon::domain::bulletin::Signer::load(&files.cert, &files.key).expect("signer")
}

/// A valid bulletin of `publisher` (TLP:GREEN, advisory, medium).
pub fn bulletin(publisher: &str, title: &str) -> beacon::domain::bulletin::Bulletin {
    use beacon::domain::bulletin::{Bulletin, Kind, Severity, Tlp};
    let mut b = Bulletin::draft(
        publisher,
        Kind::Advisory,
        Severity::Medium,
        Tlp::Green,
        title,
        "summary of the finding",
    );
    b.topics = vec!["elections".into()];
    b
}

/// The head as an operator sees it.
pub async fn head(addr: SocketAddr, op: &CertFiles, ca: &[PathBuf]) -> u64 {
    let ch = dial(addr, op, ca).await.expect("operator dials");
    beacon::net::client::AdminClient::new(ch)
        .status(beacon::base::proto::v1::StatusRequest::default())
        .await
        .expect("status")
        .into_inner()
        .head
}

/// A backup of the node's store over `Admin.Backup`, as bytes.
pub async fn backup_bytes(addr: SocketAddr, op: &CertFiles, ca: &[PathBuf]) -> Vec<u8> {
    let ch = dial(addr, op, ca).await.expect("operator dials");
    let mut chunks = beacon::net::client::AdminClient::new(ch)
        .backup(beacon::base::proto::v1::BackupRequest {})
        .await
        .expect("backup")
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = chunks.message().await.expect("backup chunk") {
        out.extend_from_slice(&c.data);
    }
    out
}

/// Waits until the node reports at least `n` revoked certificates loaded.
pub async fn wait_revocations(addr: SocketAddr, op: &CertFiles, ca: &[PathBuf], n: u32) {
    let loaded = wait_until(Duration::from_secs(10), || async {
        let Ok(ch) = dial(addr, op, ca).await else {
            return false;
        };
        beacon::net::client::AdminClient::new(ch)
            .status(beacon::base::proto::v1::StatusRequest::default())
            .await
            .map(|s| s.into_inner().revoked_certificates >= n)
            .unwrap_or(false)
    })
    .await;
    assert!(loaded.is_some(), "the node did not load the new CRL");
}

/// What a subscriber saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub seqs: Vec<u64>,
    pub ids: Vec<String>,
    pub caught_up: Option<u64>,
    pub subscribed: Option<beacon::base::proto::v1::Subscribed>,
}

/// Reads events until `n` deliveries arrived (and, if `until_caught_up`, the
/// caught-up marker too); panics after `limit`.
pub async fn read_deliveries(
    sub: &mut beacon::net::client::SubscriptionStream,
    n: usize,
    until_caught_up: bool,
    limit: Duration,
) -> Seen {
    use beacon::base::proto::v1::subscribe_response::Msg;
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + limit;
    while seen.seqs.len() < n || (until_caught_up && seen.caught_up.is_none()) {
        let ev = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out with {} of {n} deliveries: {:?}",
                    seen.seqs.len(),
                    seen.seqs
                )
            })
            .expect("stream ok")
            .expect("stream open");
        match ev {
            Msg::Delivery(d) => {
                seen.seqs.push(d.sequence);
                let env = beacon::net::client::delivered_envelope(&d).expect("envelope");
                seen.ids.push(
                    beacon::domain::bulletin::codec::decode_bulletin(&env.payload)
                        .expect("bulletin")
                        .id,
                );
            }
            Msg::CaughtUp(c) => seen.caught_up = Some(c.head),
            Msg::Subscribed(s) => seen.subscribed = Some(s),
            Msg::Heartbeat(_) | Msg::Checkpoint(_) => {}
        }
    }
    seen
}

/// Expects no delivery for `quiet` (heartbeats are fine).
pub async fn expect_no_delivery(
    sub: &mut beacon::net::client::SubscriptionStream,
    quiet: Duration,
) {
    use beacon::base::proto::v1::subscribe_response::Msg;
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Err(_) => return,
            Ok(Ok(Some(Msg::Delivery(d)))) => panic!("unexpected delivery {}", d.sequence),
            Ok(Ok(Some(_))) => continue,
            Ok(other) => panic!("stream ended: {other:?}", other = other.map(|_| ())),
        }
    }
}

pub fn open(
    name: &str,
    start: beacon::base::proto::v1::start_position::At,
) -> beacon::base::proto::v1::SubscribeOpen {
    beacon::base::proto::v1::SubscribeOpen {
        checkpoints: false,
        name: name.to_owned(),
        start: Some(beacon::base::proto::v1::StartPosition { at: Some(start) }),
        filter: None,
        window: 0,
        heartbeat_ms: 0,
        current_only: false,
        include_expired: false,
        log_id: String::new(),
        carry_sealed: false,
    }
}

pub fn resume() -> beacon::base::proto::v1::start_position::At {
    beacon::base::proto::v1::start_position::At::Resume(
        beacon::base::proto::v1::start_position::Resume {},
    )
}

pub fn earliest() -> beacon::base::proto::v1::start_position::At {
    beacon::base::proto::v1::start_position::At::Earliest(
        beacon::base::proto::v1::start_position::Earliest {},
    )
}

pub fn latest() -> beacon::base::proto::v1::start_position::At {
    beacon::base::proto::v1::start_position::At::Latest(
        beacon::base::proto::v1::start_position::Latest {},
    )
}

/// The durable cursor the node reports for (identity, name), once durable.
pub async fn cursor_of(
    addr: SocketAddr,
    op: &CertFiles,
    ca: &[PathBuf],
    identity: &str,
    name: &str,
) -> Option<u64> {
    all_subscriptions(addr, op, ca)
        .await?
        .into_iter()
        .find(|s| s.identity == identity && s.name == name)
        .map(|s| s.cursor)
}

/// Every subscription the node lists, through `ListSubscriptions` pages.
pub async fn all_subscriptions(
    addr: SocketAddr,
    op: &CertFiles,
    ca: &[PathBuf],
) -> Option<Vec<beacon::base::proto::v1::SubscriptionStatus>> {
    let ch = dial(addr, op, ca).await.ok()?;
    let mut admin = beacon::net::client::AdminClient::new(ch);
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_subscriptions(beacon::base::proto::v1::ListSubscriptionsRequest {
                limit: 0,
                page_token: token,
            })
            .await
            .ok()?
            .into_inner();
        out.extend(page.subscriptions);
        if page.next_page_token.is_empty() {
            return Some(out);
        }
        token = page.next_page_token;
    }
}

/// Waits until the node reports the cursor of (identity, name) at `seq`.
pub async fn wait_cursor(
    addr: SocketAddr,
    op: &CertFiles,
    ca: &[PathBuf],
    identity: &str,
    name: &str,
    seq: u64,
) {
    let ok = wait_until(Duration::from_secs(10), || async {
        cursor_of(addr, op, ca, identity, name).await == Some(seq)
    })
    .await;
    assert!(
        ok.is_some(),
        "cursor of {identity}/{name} never reached {seq}"
    );
}

/// Reads a subscription until it ends; returns how it ended (`Ok` for a clean
/// close). Panics if it is still open after `limit`.
pub async fn stream_end(
    sub: &mut beacon::net::client::SubscriptionStream,
    limit: Duration,
) -> Result<(), ClientError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("the stream ends in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// An alliance: an operators' CA vouching for every member, and one CA per
/// member (scoped to it), all in every node's trust bundle.
pub struct Alliance {
    pub pki: TestPki,
    /// (member id, its CA directory).
    pub members: Vec<(String, PathBuf)>,
    pub op: CertFiles,
    /// What clients trust for node certificates: every CA.
    pub ca: Vec<PathBuf>,
}

impl Alliance {
    pub fn new(members: &[&str]) -> Alliance {
        let pki = TestPki::new();
        let members: Vec<(String, PathBuf)> = members
            .iter()
            .map(|m| (m.to_string(), pki.other_ca(&format!("ca-{m}"), m)))
            .collect();
        let mut ca = vec![pki.ca_cert()];
        ca.extend(members.iter().map(|(_, dir)| Ca::cert_path(dir)));
        let op = pki.operator("ops");
        Alliance {
            pki,
            members,
            op,
            ca,
        }
    }

    pub fn ca_dir(&self, member: &str) -> &Path {
        &self
            .members
            .iter()
            .find(|(m, _)| m == member)
            .expect("a member of the alliance")
            .1
    }

    /// A node certificate of `member`, from its own CA.
    pub fn node(&self, member: &str, name: &str) -> CertFiles {
        let mut req = IssueRequest::new(id(RoleKind::Node, Some(member), name));
        req.ip_addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        self.pki.issue_from(self.ca_dir(member), req)
    }

    pub fn client(&self, member: &str, name: &str) -> CertFiles {
        self.pki.issue_from(
            self.ca_dir(member),
            IssueRequest::new(id(RoleKind::Client, Some(member), name)),
        )
    }

    pub fn revoke(&self, member: &str, files: &CertFiles) {
        Ca::open(self.ca_dir(member))
            .expect("open member CA")
            .revoke(
                &pki::Selector::Serial(files.serial.clone()),
                pki::Reason::KeyCompromise,
            )
            .expect("revoke");
    }

    /// A node's options: the shared bundle, and `peers` as (address, identity).
    pub fn options(&self, node: CertFiles, peers: &[(SocketAddr, String)]) -> NodeOptions {
        let mut trust = vec![(self.pki.ca_cert(), "*".to_string(), Some(self.pki.crl()))];
        for (m, dir) in &self.members {
            trust.push((Ca::cert_path(dir), m.clone(), Some(Ca::crl_path(dir))));
        }
        let mut extra = String::new();
        for (addr, identity) in peers {
            extra.push_str(&format!(
                "[[peers]]\naddress = \"{addr}\"\nidentity = \"{identity}\"\n\n"
            ));
        }
        NodeOptions {
            node,
            trust,
            timing: String::new(),
            extra,
        }
    }

    /// The bundle every node uses, for checking envelopes on the client side.
    pub fn bundle(&self) -> beacon::trust::TrustBundle {
        let mut cas = Vec::new();
        let mut crls = Vec::new();
        let mut add = |ca: PathBuf, scope: &str, crl: PathBuf| {
            for c in beacon::trust::read_certs(&ca).expect("CA") {
                cas.push(
                    beacon::trust::CaEntry::new(
                        c,
                        MemberScope::parse_list(&[scope]).expect("scope"),
                    )
                    .expect("CA entry"),
                );
            }
            crls.extend(beacon::trust::read_crls(&crl).expect("CRL"));
        };
        add(self.pki.ca_cert(), "*", self.pki.crl());
        for (m, dir) in &self.members {
            add(Ca::cert_path(dir), m, Ca::crl_path(dir));
        }
        beacon::trust::TrustBundle::new(td(), cas, crls).expect("bundle")
    }
}

/// One node of an alliance mesh: its identity, member, node and a client.
pub struct MeshNode {
    pub member: String,
    pub identity: String,
    pub node: TestNode,
    /// The node's own certificate.
    pub files: CertFiles,
    pub client: CertFiles,
}

/// Starts one node per entry of `members` (node i is of members[i]); node i
/// peers with every j in `links[i]`. Listeners are bound first so every
/// config can name every address.
pub async fn mesh(alliance: &Alliance, members: &[&str], links: &[Vec<usize>]) -> Vec<MeshNode> {
    let mut listeners = Vec::new();
    for _ in members {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr"))
        .collect();
    let certs: Vec<CertFiles> = members
        .iter()
        .enumerate()
        .map(|(i, m)| alliance.node(m, &format!("node-{i}")))
        .collect();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let peers: Vec<(SocketAddr, String)> = links[i]
            .iter()
            .map(|&j| (addrs[j], certs[j].identity.clone()))
            .collect();
        let node = TestNode::start_on(&alliance.options(certs[i].clone(), &peers), listener).await;
        nodes.push(MeshNode {
            member: members[i].to_string(),
            identity: certs[i].identity.clone(),
            node,
            files: certs[i].clone(),
            client: alliance.client(members[i], &format!("analyst-{i}")),
        });
    }
    nodes
}

/// Every node linked to every other.
pub fn full_mesh(n: usize) -> Vec<Vec<usize>> {
    (0..n)
        .map(|i| (0..n).filter(|&j| j != i).collect())
        .collect()
}

/// The node's Admin.Status.
pub async fn status(
    addr: SocketAddr,
    op: &CertFiles,
    ca: &[PathBuf],
) -> Option<beacon::base::proto::v1::StatusResponse> {
    let ch = dial(addr, op, ca).await.ok()?;
    beacon::net::client::AdminClient::new(ch)
        .status(beacon::base::proto::v1::StatusRequest::default())
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Every delivery `files`' member may read at `addr`, paging through List.
pub async fn list_all(
    addr: SocketAddr,
    files: &CertFiles,
    ca: &[PathBuf],
) -> Result<Vec<beacon::base::proto::v1::Delivery>, String> {
    list_all_with(addr, files, ca, false).await
}

/// As [`list_all`], expired bulletins included when `include_expired`.
pub async fn list_all_with(
    addr: SocketAddr,
    files: &CertFiles,
    ca: &[PathBuf],
    include_expired: bool,
) -> Result<Vec<beacon::base::proto::v1::Delivery>, String> {
    let ch = dial(addr, files, ca).await.map_err(|e| e.to_string())?;
    let mut c = beacon::net::client::BulletinsClient::new(ch).max_decoding_message_size(64 << 20);
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = c
            .list(beacon::base::proto::v1::ListRequest {
                after_sequence: after,
                until_sequence: 0,
                limit: 1000,
                filter: None,
                current_only: false,
                include_expired,
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        out.extend(page.deliveries);
        after = page.next_after_sequence;
        if !page.more {
            return Ok(out);
        }
    }
}

/// `Get` of bulletin `id` (any publisher), as `c`'s member may read it.
pub async fn get_by_id(
    c: &mut beacon::net::client::BeaconClient,
    id: &str,
) -> Result<beacon::base::proto::v1::Delivery, tonic::Status> {
    c.bulletins
        .get(beacon::base::proto::v1::GetRequest {
            id: id.to_owned(),
            publisher: String::new(),
        })
        .await
        .map(|r| r.into_inner().delivery.expect("a delivery"))
}

/// The bulletin id of a delivery.
pub fn delivery_id(d: &beacon::base::proto::v1::Delivery) -> String {
    let env = beacon::net::client::delivered_envelope(d).expect("envelope");
    beacon::domain::bulletin::codec::decode_bulletin(&env.payload)
        .expect("bulletin")
        .id
}

/// A TCP proxy on loopback in front of `target` whose open connections can be
/// frozen: they stay open but nothing more is read or written, as with a
/// stalled peer process or a dropped route. Connections made after a freeze
/// pass normally.
pub struct FreezableProxy {
    pub addr: SocketAddr,
    /// Connections accepted so far, each with its own freeze flag.
    conns: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>>,
    task: JoinHandle<()>,
}

impl FreezableProxy {
    pub async fn start(target: SocketAddr) -> FreezableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>> =
            Default::default();
        let registry = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
                registry.lock().expect("registry").push(frozen.clone());
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pipe(ri, wo, frozen.clone()));
                tokio::spawn(pipe(ro, wi, frozen));
            }
        });
        FreezableProxy { addr, conns, task }
    }

    /// Freezes every connection open now.
    pub fn freeze(&self) {
        for c in self.conns.lock().expect("registry").iter() {
            c.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies one direction until EOF; once `frozen`, holds both halves open
/// and moves nothing more (bounded: it waits, it does not buffer).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.load(std::sync::atomic::Ordering::SeqCst) {
            // Hold the sockets for as long as the test runs.
            tokio::time::sleep(Duration::from_secs(300)).await;
            return;
        }
        let n = match tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        if frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(300)).await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The node `beacon dev` runs, with the certificates it prints: the default
/// PKI a new user meets, not one made for this test.
pub struct DevNode {
    pub dir: TempDir,
    pub node: ChildNode,
}

impl DevNode {
    pub fn start() -> DevNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = free_addr();
        let node = ChildNode::spawn(
            dir.path(),
            &["dev", "--data-dir", "dev", "--listen", &addr.to_string()],
            addr,
        );
        DevNode { dir, node }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("dev").join(rel)
    }

    pub fn files(&self, name: &str) -> CertFiles {
        let cert = self.path(&format!("certs/{name}.pem"));
        let chain = beacon::trust::read_certs(&cert).expect("dev certificate");
        let (identity, _) = beacon::trust::identity_of(&chain[0]).expect("identity");
        CertFiles {
            cert,
            key: self.path(&format!("certs/{name}.key")),
            serial: String::new(),
            identity: identity.to_string(),
        }
    }

    /// A client of `member` issued by the dev CA (with its default algorithm).
    pub fn client(&self, member: &str, name: &str) -> CertFiles {
        let ca = beacon::tools::pki::Ca::open(&self.path("ca")).expect("dev CA");
        let td: beacon::base::identity::TrustDomain =
            beacon::tools::dev::DEV_TRUST_DOMAIN.parse().expect("td");
        let id = beacon::tools::pki::identity_for(
            &td,
            beacon::base::identity::RoleKind::Client,
            Some(member),
            name,
        )
        .expect("identity");
        let issued = ca
            .issue(&beacon::tools::pki::IssueRequest::new(id))
            .expect("issue");
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key = self.dir.path().join(format!("{name}.key"));
        beacon::tools::pki::write_file(&cert, issued.cert_pem.as_bytes(), false, true)
            .expect("cert");
        beacon::tools::pki::write_file(&key, issued.key_pem.as_bytes(), true, true).expect("key");
        CertFiles {
            cert,
            key,
            serial: issued.serial,
            identity: issued.entry.identity,
        }
    }

    pub fn bundle(&self) -> beacon::trust::TrustBundle {
        let cert = beacon::trust::read_certs(&self.path("ca/ca.pem"))
            .expect("ca")
            .remove(0);
        let entry = beacon::trust::CaEntry::new(cert, beacon::base::identity::MemberScope::any())
            .expect("entry");
        let td = beacon::tools::dev::DEV_TRUST_DOMAIN.parse().expect("td");
        beacon::trust::TrustBundle::new(td, vec![entry], vec![]).expect("bundle")
    }
}

/// `b`, signed by `signer`, as the store takes it from a publish (what
/// `ingest` makes of it, for tests that drive the store directly).
pub fn store_record(
    signer: &beacon::domain::bulletin::Signer,
    b: &beacon::domain::bulletin::Bulletin,
) -> beacon::store::NewRecord {
    use beacon::domain::bulletin::{codec, sha256, Meta, Relation};
    use beacon::store::{NewRecord, Related, Replaced};
    let env = signer.sign(b.to_bytes()).expect("sign");
    let bytes = codec::encode_envelope(&env);
    let related = b.relation.as_ref().map(|r| {
        let (how, id) = match r {
            Relation::Supersedes(id) => (Replaced::Superseded, id),
            Relation::Retracts(id) => (Replaced::Retracted, id),
        };
        Related {
            how,
            id: id.clone(),
            required: true,
        }
    });
    NewRecord {
        meta: Meta {
            id: b.id.clone(),
            publisher: b.publisher.clone(),
            digest: sha256(&bytes),
            origin_node: format!("spiffe://{TD}/node/drc/hub-1"),
            origin_seq: 0,
            kind: b.kind as u8,
            severity: b.severity as u8,
            tlp: b.tlp as u8,
            created_at: b.created_at,
            expires_at: b.expires_at,
            audience_members: b.audience.members.clone(),
            audience_groups: b.audience.groups.clone(),
            topics: b.topics.clone(),
        },
        payload_digest: sha256(&env.payload),
        envelope: bytes,
        related,
        span: beacon::interop::stix::span(b),
    }
}

/// GET `path` over plain HTTP/1.1; (status line, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    use std::io::{Read, Write};
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").expect("a response");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// The value of the sample `name` (with its labels, exactly as written).
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// An HTTP/1.1 response as a test reads it.
#[derive(Debug)]
pub struct HttpsResponse {
    pub status: u16,
    pub body: String,
}

/// An open HTTP/1.1 connection over TLS (a TAXII or MISP port).
pub struct HttpsConn {
    addr: SocketAddr,
    send: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
}

impl HttpsConn {
    /// Connects to `addr` with the client certificate `files` if given,
    /// trusting the CAs `ca`.
    pub async fn open(
        addr: SocketAddr,
        files: Option<&CertFiles>,
        ca: &[PathBuf],
    ) -> Result<HttpsConn, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in ca {
            for cert in beacon::trust::read_certs(c).map_err(|e| e.to_string())? {
                roots.add(cert).map_err(|e| e.to_string())?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(beacon::trust::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match files {
            Some(f) => {
                let own = beacon::trust::tls::KeyedChain::load(&f.cert, &f.key)
                    .map_err(|e| e.to_string())?;
                builder
                    .with_client_auth_cert(own.chain, own.key)
                    .map_err(|e| e.to_string())?
            }
            None => builder.with_no_client_auth(),
        };
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(HttpsConn { addr, send })
    }

    /// One request on this connection.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpsResponse, String> {
        use http_body_util::BodyExt;
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                body,
            )))
            .map_err(|e| e.to_string())?;
        self.send.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(HttpsResponse {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// One HTTP/1.1 request over TLS on a new connection (see [`HttpsConn`]).
pub async fn https(
    addr: SocketAddr,
    files: Option<&CertFiles>,
    ca: &[PathBuf],
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpsResponse, String> {
    HttpsConn::open(addr, files, ca)
        .await?
        .request(method, path, headers, body)
        .await
}
