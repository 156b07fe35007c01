//! The hub's engine: the log in PostgreSQL (`[store] engine = "postgres"`).
//!
//! The same promises as the embedded engine, kept by the database: a write
//! is one transaction; the group commit's staged batches wait in memory and
//! go to the database in one transaction per sync (so one commit, with
//! `synchronous_commit = on` forced for the session, makes a round
//! durable — on the synchronous standby too when the database has one);
//! cursor moves wait for the same commit. Nothing is decided here: the
//! store above assigns sequences, dedupes and keeps the acknowledged head.
//!
//! The engine's interface is synchronous (the store calls it from its own
//! threads and from the runtime's workers, as it reads sled in place), so
//! the asynchronous client (`tokio-postgres`) runs on a small runtime of
//! its own: each call is a task there, under the configured timeout, whose
//! answer the caller waits for. A database that does not answer in time, or
//! whose connection is gone, is `Unavailable` (publishes are refused as
//! `UNAVAILABLE`, never acknowledged); a connection that died is made again
//! at the next call.
//!
//! Tables, in the configured schema (version [`SCHEMA`], kept in `meta`
//! and migrated by Beacon itself; a schema from a newer Beacon is refused):
//! `meta` (key → bytes: `schema`, `head`, `format`, `log`, `node`),
//! `records`, `tombstones` and `successors` (sequence → bytes), `expiries`
//! (expires_at, sequence), `ids` ((publisher, id) → index entry, and by
//! id), `positions` (space, identity, name → sequence and log), `tree`
//! ((level, index) → hash). Values are the bytes `store::record` encodes,
//! with their CRC32, as in every engine.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::engine::{Duty, Engine, RecordIter, Space, WriteSet};
use super::record::{LogId, Position};
use super::StoreError;
use crate::base::config::PostgresConfig;

/// The layout of the tables this version of Beacon writes.
pub(crate) const SCHEMA: u32 = 1;

/// Rows read per request by a scan of records or tombstones.
const PAGE: i64 = 512;

/// How long the size of the tables is taken as known.
const SIZE_FRESH: Duration = Duration::from_secs(5);

/// Key of an advisory lock of one schema: `migrate` serialises its
/// migrations, `writer` is the lock the writers of its log take turns with.
fn lock_key(purpose: &str, schema: &str) -> i64 {
    // FNV-1a: stable across versions and processes (not Rust's hasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in purpose.bytes().chain(*b":").chain(schema.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// A sequence or time as PostgreSQL's `int8` (they are far below 2^63;
/// bounds above it are clamped).
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A database error as the store's: lost connections, timeouts, a server
/// shutting down or read-only (a standby) are `Unavailable` (nothing was
/// acknowledged that was not durable; try again once it is back); anything
/// else the database refused is an I/O error naming it.
fn db(what: &str, e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => {
            let code = d.code().code();
            let class = &code[..2.min(code.len())];
            let gone = matches!(class, "08" | "53" | "55" | "57" | "25" | "40");
            let msg = format!(
                "the store's database refused {what}: {} (SQLSTATE {code})",
                d.message()
            );
            match gone {
                true => StoreError::Unavailable(msg),
                false => StoreError::Io(msg),
            }
        }
        None => StoreError::Unavailable(format!("the store's database, {what}: {e}")),
    }
}

/// The statements of one connection, prepared once when it is made.
struct Stmts {
    record: Statement,
    records: Statement,
    tombstone: Statement,
    tombstones: Statement,
    successors: Statement,
    expiring: Statement,
    index: Statement,
    index_by_id: Statement,
    fence: Statement,
    notify: Statement,
    records_at: Statement,
    index_many: Statement,
    meta: Statement,
    head_and_last: Statement,
    cursor: Statement,
    cursors: Statement,
    tree: Statement,
    put_records: Statement,
    put_successors: Statement,
    put_expiries: Statement,
    put_tombstones: Statement,
    del_records: Statement,
    del_successors: Statement,
    del_expiries: Statement,
    put_index: Statement,
    put_tree: Statement,
    put_meta: Statement,
    advance: Statement,
    replace: Statement,
    remove: Statement,
}

impl Stmts {
    async fn prepare(c: &Client, s: &str) -> Result<Stmts, tokio_postgres::Error> {
        let p = |sql: String| async move { c.prepare(&sql).await };
        Ok(Stmts {
            record: p(format!("SELECT body FROM {s}.records WHERE seq = $1")).await?,
            records: p(format!(
                "SELECT seq, body FROM {s}.records WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3"
            ))
            .await?,
            tombstone: p(format!("SELECT body FROM {s}.tombstones WHERE seq = $1")).await?,
            tombstones: p(format!(
                "SELECT seq, body FROM {s}.tombstones WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3"
            ))
            .await?,
            successors: p(format!(
                "SELECT seq, body FROM {s}.successors WHERE seq >= $1 AND seq <= $2 ORDER BY seq"
            ))
            .await?,
            expiring: p(format!(
                "SELECT expires_at, seq FROM {s}.expiries WHERE (expires_at, seq) >= ($1, $2) \
                 AND expires_at <= $3 ORDER BY expires_at, seq LIMIT $4"
            ))
            .await?,
            index: p(format!(
                "SELECT entry FROM {s}.ids WHERE publisher = $1 AND id = $2"
            ))
            .await?,
            index_by_id: p(format!(
                "SELECT publisher, entry FROM {s}.ids WHERE id = $1 ORDER BY publisher LIMIT $2"
            ))
            .await?,
            fence: p(format!(
                "UPDATE {s}.meta SET value = value WHERE key = 'head' AND value = $1"
            ))
            .await?,
            notify: p("SELECT pg_notify($1, $2)".to_owned()).await?,
            records_at: p(format!(
                "SELECT seq, body FROM {s}.records WHERE seq = ANY($1)"
            ))
            .await?,
            index_many: p(format!(
                "SELECT i.publisher, i.id, i.entry FROM {s}.ids i \
                 JOIN unnest($1::text[], $2::text[]) AS k (publisher, id) \
                 ON i.publisher = k.publisher AND i.id = k.id"
            ))
            .await?,
            meta: p(format!("SELECT value FROM {s}.meta WHERE key = $1")).await?,
            head_and_last: p(format!(
                "SELECT (SELECT value FROM {s}.meta WHERE key = 'head'), \
                 GREATEST((SELECT max(seq) FROM {s}.records), (SELECT max(seq) FROM {s}.tombstones))"
            ))
            .await?,
            cursor: p(format!(
                "SELECT seq, log FROM {s}.positions WHERE space = $1 AND identity = $2 AND name = $3"
            ))
            .await?,
            cursors: p(format!(
                "SELECT identity, name, seq, log FROM {s}.positions WHERE space = $1 ORDER BY identity, name"
            ))
            .await?,
            tree: p(format!(
                "SELECT hash FROM {s}.tree WHERE level = $1 AND idx = $2"
            ))
            .await?,
            put_records: p(format!(
                "INSERT INTO {s}.records (seq, body) SELECT * FROM unnest($1::int8[], $2::bytea[]) \
                 ON CONFLICT (seq) DO UPDATE SET body = excluded.body"
            ))
            .await?,
            put_successors: p(format!(
                "INSERT INTO {s}.successors (seq, body) SELECT * FROM unnest($1::int8[], $2::bytea[]) \
                 ON CONFLICT (seq) DO UPDATE SET body = excluded.body"
            ))
            .await?,
            put_expiries: p(format!(
                "INSERT INTO {s}.expiries (expires_at, seq) SELECT * FROM unnest($1::int8[], $2::int8[]) \
                 ON CONFLICT DO NOTHING"
            ))
            .await?,
            put_tombstones: p(format!(
                "INSERT INTO {s}.tombstones (seq, body) SELECT * FROM unnest($1::int8[], $2::bytea[]) \
                 ON CONFLICT (seq) DO UPDATE SET body = excluded.body"
            ))
            .await?,
            del_records: p(format!("DELETE FROM {s}.records WHERE seq = ANY($1)")).await?,
            del_successors: p(format!("DELETE FROM {s}.successors WHERE seq = ANY($1)")).await?,
            del_expiries: p(format!(
                "DELETE FROM {s}.expiries WHERE (expires_at, seq) IN \
                 (SELECT * FROM unnest($1::int8[], $2::int8[]))"
            ))
            .await?,
            put_index: p(format!(
                "INSERT INTO {s}.ids (publisher, id, entry) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) \
                 ON CONFLICT (publisher, id) DO UPDATE SET entry = excluded.entry"
            ))
            .await?,
            put_tree: p(format!(
                "INSERT INTO {s}.tree (level, idx, hash) \
                 SELECT * FROM unnest($1::int2[], $2::int8[], $3::bytea[]) \
                 ON CONFLICT (level, idx) DO UPDATE SET hash = excluded.hash"
            ))
            .await?,
            put_meta: p(format!(
                "INSERT INTO {s}.meta (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            ))
            .await?,
            // `Position::advanced` in SQL: forward on the same log (or one
            // of no known log), replaced by a position on another.
            advance: p(format!(
                "INSERT INTO {s}.positions AS p (space, identity, name, seq, log) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (space, identity, name) DO UPDATE SET \
                 seq = CASE WHEN excluded.log IS NULL OR p.log IS NULL OR p.log = excluded.log \
                       THEN GREATEST(p.seq, excluded.seq) ELSE excluded.seq END, \
                 log = COALESCE(excluded.log, p.log)"
            ))
            .await?,
            replace: p(format!(
                "INSERT INTO {s}.positions (space, identity, name, seq, log) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (space, identity, name) DO UPDATE SET seq = excluded.seq, log = excluded.log"
            ))
            .await?,
            remove: p(format!(
                "DELETE FROM {s}.positions WHERE space = $1 AND identity = $2 AND name = $3"
            ))
            .await?,
        })
    }
}

/// A connection and its statements.
struct Conn {
    client: Client,
    st: Stmts,
}

/// How the engine reaches its database.
struct Dial {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    schema: String,
    /// Where it is, for messages (hosts and database, no password).
    name: String,
}

impl Dial {
    fn new(c: &PostgresConfig) -> Result<Dial, StoreError> {
        let bad = |m: String| StoreError::Io(format!("[store.postgres] {m}"));
        let mut config: tokio_postgres::Config = c
            .url
            .parse()
            .map_err(|e| bad(format!("url is not a connection string or URL: {e}")))?;
        if let Some(file) = &c.password_file {
            let pw = std::fs::read_to_string(file)
                .map_err(|e| bad(format!("password_file {}: {e}", file.display())))?;
            config.password(pw.trim_end_matches(['\r', '\n']));
        }
        let tls = match &c.ca {
            Some(ca) => {
                let certs = crate::trust::read_certs(ca).map_err(|e| bad(format!("ca: {e}")))?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| bad(format!("ca {}: {e}", ca.display())))?;
                }
                let builder =
                    rustls::ClientConfig::builder_with_provider(crate::trust::tls::provider())
                        .with_safe_default_protocol_versions()
                        .map_err(|e| bad(format!("TLS: {e}")))?
                        .with_root_certificates(roots);
                let tls = match (&c.cert, &c.key) {
                    (Some(cert), Some(key)) => {
                        let chain = crate::trust::read_certs(cert)
                            .map_err(|e| bad(format!("cert: {e}")))?;
                        let key = crate::trust::tls::load_key(key)
                            .map_err(|e| bad(format!("key: {e}")))?;
                        builder
                            .with_client_auth_cert(chain, key)
                            .map_err(|e| bad(format!("cert and key: {e}")))?
                    }
                    _ => builder.with_no_client_auth(),
                };
                if config.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
                    return Err(bad("sets a ca but its url says sslmode=disable".into()));
                }
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            }
            None => {
                if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
                    return Err(bad(
                        "url asks for sslmode=require: set ca, the CA the database's certificate chains to"
                            .into(),
                    ));
                }
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
        };
        config.application_name("beacon");
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A database that vanished without closing the connection is noticed.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let name = format!(
            "{} (database {})",
            hosts.join(","),
            config.get_dbname().unwrap_or("default")
        );
        Ok(Dial {
            config,
            tls,
            schema: c.schema.clone(),
            name,
        })
    }

    /// A new client, its connection driven on the engine's runtime, with
    /// the session settings every connection has.
    async fn client(&self) -> Result<Client, StoreError> {
        self.open(None).await
    }

    /// A new client whose notifications come on the receiver (which ends
    /// when the connection does).
    async fn listener(
        &self,
    ) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<String>), StoreError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Ok((self.open(Some(tx)).await?, rx))
    }

    async fn open(
        &self,
        notes: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Result<Client, StoreError> {
        let fail = |e: tokio_postgres::Error| {
            StoreError::Unavailable(format!(
                "cannot reach the store's database at {}: {e}",
                self.name
            ))
        };
        let client = match &self.tls {
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await.map_err(fail)?;
                tokio::spawn(drive(conn, notes));
                client
            }
            None => {
                let (client, conn) = self
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(fail)?;
                tokio::spawn(drive(conn, notes));
                client
            }
        };
        // Durable before it returns, on the synchronous standby too when the
        // database has one, whatever the server's default.
        client
            .batch_execute("SET synchronous_commit = on; SET statement_timeout = 0")
            .await
            .map_err(|e| db("the session's settings", e))?;
        Ok(client)
    }

    /// A new connection with its statements prepared.
    async fn connect(&self) -> Result<Conn, StoreError> {
        let client = self.client().await?;
        let st = Stmts::prepare(&client, &self.schema)
            .await
            .map_err(|e| db("the store's statements", e))?;
        Ok(Conn { client, st })
    }

    /// Creates the schema's tables, or checks and migrates them.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let s = &self.schema;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db("a transaction", e))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&lock_key("beacon-migrate", s)],
        )
        .await
        .map_err(|e| db("the migration lock", e))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s}; \
             CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value bytea NOT NULL)"
        ))
        .await
        .map_err(|e| db(&format!("creating schema {s}"), e))?;
        let found = tx
            .query_opt(
                &format!("SELECT value FROM {s}.meta WHERE key = 'schema'"),
                &[],
            )
            .await
            .map_err(|e| db("the schema's version", e))?
            .map(|row| row.get::<_, Vec<u8>>(0))
            .map(|v| {
                v.as_slice()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Torn(format!("schema {s}'s version is damaged")))
            })
            .transpose()?;
        match found {
            Some(v) if v > SCHEMA => {
                return Err(StoreError::NewerSchema {
                    at: format!("schema {s} of {}", self.name),
                    found: v,
                    supported: SCHEMA,
                })
            }
            Some(SCHEMA) => {}
            // Version 1 is the first: a schema without one is new.
            _ => {
                tx.batch_execute(&format!(
                    "CREATE TABLE {s}.records (seq int8 PRIMARY KEY, body bytea NOT NULL); \
                     CREATE TABLE {s}.tombstones (seq int8 PRIMARY KEY, body bytea NOT NULL); \
                     CREATE TABLE {s}.successors (seq int8 PRIMARY KEY, body bytea NOT NULL); \
                     CREATE TABLE {s}.expiries (expires_at int8, seq int8, PRIMARY KEY (expires_at, seq)); \
                     CREATE TABLE {s}.ids (publisher text, id text, entry bytea NOT NULL, PRIMARY KEY (publisher, id)); \
                     CREATE INDEX ids_by_id ON {s}.ids (id, publisher); \
                     CREATE TABLE {s}.positions (space int2, identity text, name text, seq int8 NOT NULL, log bytea, \
                        PRIMARY KEY (space, identity, name)); \
                     CREATE TABLE {s}.tree (level int2, idx int8, hash bytea NOT NULL, PRIMARY KEY (level, idx)); \
                     ALTER TABLE {s}.records ALTER body SET STORAGE EXTERNAL"
                ))
                .await
                .map_err(|e| db(&format!("creating the tables of schema {s}"), e))?;
                tx.execute(
                    &format!(
                        "INSERT INTO {s}.meta (key, value) VALUES ('schema', $1), ('head', $2)"
                    ),
                    &[&SCHEMA.to_be_bytes().to_vec(), &0u64.to_be_bytes().to_vec()],
                )
                .await
                .map_err(|e| db("the schema's version", e))?;
            }
        }
        tx.commit()
            .await
            .map_err(|e| db("the schema's migration", e))?;
        Ok(())
    }
}

/// Drives a connection until it ends, handing its notifications'
/// payloads to `notes` if there is one.
async fn drive<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    notes: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
        if let (tokio_postgres::AsyncMessage::Notification(n), Some(tx)) = (msg, &notes) {
            let _ = tx.send(n.payload().to_owned());
        }
    }
}

/// A cursor move waiting for the next sync.
#[derive(Debug, Clone, Copy)]
enum CursorOp {
    /// Forward from what the database holds (`Position::advanced`).
    Advance(Position),
    /// Removed, then maybe set again: what the database holds is gone.
    Replace(Option<Position>),
}

type CursorKey = (u8, String, String);

fn space_no(space: Space) -> u8 {
    match space {
        Space::Subscriptions => 0,
        Space::Links => 1,
    }
}

/// What waits for the next sync.
#[derive(Default)]
struct Waiting {
    sets: Vec<WriteSet>,
    cursors: BTreeMap<CursorKey, CursorOp>,
}

struct Shared {
    dial: Dial,
    timeout: Duration,
    /// Connections for reads (a new one is made when one has died).
    readers: Vec<parking_lot::RwLock<Option<Arc<Conn>>>>,
    next: AtomicUsize,
    /// The connection that writes, one transaction at a time.
    writer: tokio::sync::Mutex<Option<Conn>>,
    waiting: parking_lot::Mutex<Waiting>,
    /// Commits in the order their sets were staged (held by the caller
    /// across a commit, so a sync and a write never overtake each other).
    order: parking_lot::Mutex<()>,
    size: parking_lot::Mutex<Option<(Instant, u64)>>,
    /// The log's head as this process last committed or claimed it: a
    /// commit that moves the head expects to find it there.
    base: std::sync::atomic::AtomicU64,
    /// A commit failed: what it held is lost, and every later write and
    /// sync says so (the store stops writing until a restart).
    failed: parking_lot::Mutex<Option<StoreError>>,
    /// Whether this process holds the log's writer lock, and whether
    /// another waits for it.
    lease: parking_lot::Mutex<Lease>,
    /// The connection that holds the writer lock (a session lock: it goes
    /// with the connection, so a node that dies lets the log go).
    lease_conn: tokio::sync::Mutex<Option<Client>>,
    /// The channel commits notify with their new head.
    channel: String,
    /// What the store asked to be told of heads others append.
    on_head: parking_lot::Mutex<Option<OnHead>>,
    /// The duties asked for, and whether this process holds each.
    duties: parking_lot::Mutex<BTreeMap<Duty, tokio::sync::watch::Sender<bool>>>,
    /// Wakes the task that holds the duties when one more is asked for.
    duty_asked: tokio::sync::Notify,
}

/// What the store is told of each head others append.
type OnHead = Arc<dyn Fn(u64) + Send + Sync>;

#[derive(Default)]
struct Lease {
    held: bool,
    /// Another process waits for the log: let it go at the next claim or
    /// when the applier is idle.
    wanted: bool,
    /// The applier is deciding or staging a batch (from its claim until it
    /// is idle): the log is not let go under it.
    busy: bool,
}

impl Shared {
    async fn reader(&self) -> Result<Arc<Conn>, StoreError> {
        let slot = &self.readers[self.next.fetch_add(1, Ordering::Relaxed) % self.readers.len()];
        if let Some(c) = slot.read().as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(self.dial.connect().await?);
        *slot.write() = Some(c.clone());
        Ok(c)
    }
}

/// The PostgreSQL engine.
pub(crate) struct PgEngine {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    shared: Arc<Shared>,
}

impl Drop for PgEngine {
    fn drop(&mut self) {
        // Dropped maybe inside another runtime: never block here.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl PgEngine {
    /// Connects, creates or migrates the schema, and checks it can be read.
    pub fn open(c: &PostgresConfig) -> Result<PgEngine, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("beacon-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("the database client's runtime: {e}")))?;
        let shared = Arc::new(Shared {
            dial: Dial::new(c)?,
            timeout: Duration::from_millis(c.timeout_ms),
            readers: (0..c.connections.max(1))
                .map(|_| parking_lot::RwLock::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            writer: tokio::sync::Mutex::new(None),
            waiting: parking_lot::Mutex::new(Waiting::default()),
            order: parking_lot::Mutex::new(()),
            size: parking_lot::Mutex::new(None),
            base: std::sync::atomic::AtomicU64::new(0),
            failed: parking_lot::Mutex::new(None),
            lease: parking_lot::Mutex::new(Lease::default()),
            lease_conn: tokio::sync::Mutex::new(None),
            channel: format!("beacon_{}", c.schema),
            on_head: parking_lot::Mutex::new(None),
            duties: parking_lot::Mutex::new(BTreeMap::new()),
            duty_asked: tokio::sync::Notify::new(),
        });
        let engine = PgEngine {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            shared,
        };
        engine.run("the schema's migration", |s| async move {
            s.dial.migrate().await?;
            let conn = s.dial.connect().await?;
            *s.writer.lock().await = Some(conn);
            Ok(())
        })?;
        let head = engine.head()?;
        engine.shared.base.store(head, Ordering::Release);
        engine.handle.spawn(follow(engine.shared.clone()));
        Ok(engine)
    }

    /// Runs `f` on the engine's runtime under the timeout and waits for it.
    fn run<T, F>(&self, what: &str, f: impl FnOnce(Arc<Shared>) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let fut = f(self.shared.clone());
        wait_on(
            &self.handle,
            &self.shared.dial.name,
            what,
            self.shared.timeout,
            fut,
        )
    }

    /// A read on one of the read connections.
    fn read<T, F>(
        &self,
        what: &'static str,
        f: impl FnOnce(Arc<Conn>) -> F + Send + 'static,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        self.run(what, move |s| async move {
            let conn = s.reader().await?;
            f(conn).await.map_err(|e| db(what, e))
        })
    }

    fn meta(&self, key: &'static str) -> Result<Option<Bytes>, StoreError> {
        self.read("the store's markers", move |c| async move {
            Ok(c.client
                .query_opt(&c.st.meta, &[&key])
                .await?
                .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
        })
    }

    /// Commits `sets` and the waiting cursor moves in one transaction, in
    /// the order they came.
    fn commit(
        &self,
        sets: Vec<WriteSet>,
        cursors: BTreeMap<CursorKey, CursorOp>,
    ) -> Result<(), StoreError> {
        if let Some(e) = self.shared.failed.lock().clone() {
            return Err(e);
        }
        if sets.is_empty() && cursors.is_empty() {
            return Ok(());
        }
        let base = self.shared.base.load(Ordering::Acquire);
        let result = self.run("a commit", move |s| async move {
            let mut guard = s.writer.lock().await;
            if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
                *guard = Some(s.dial.connect().await?);
            }
            let Some(conn) = guard.as_mut() else {
                return Err(StoreError::Closed);
            };
            let result = commit_in(conn, &sets, &cursors, base, &s.channel).await;
            if result.is_err() {
                // Its state is unknown (a commit that failed may have been
                // applied or not): the next commit starts on a new one.
                *guard = None;
            }
            result
        });
        match result {
            Ok(head) => {
                if let Some(h) = head {
                    self.shared.base.store(h, Ordering::Release);
                }
                *self.shared.size.lock() = None;
                Ok(())
            }
            Err(e) => {
                // What was staged is gone with the transaction: no later
                // sync may report it durable. The store stops writing.
                *self.shared.failed.lock() = Some(e.clone());
                Err(e)
            }
        }
    }
}

impl PgEngine {
    /// Makes what is staged durable, then lets the log go (another node
    /// may append; this one claims it again before its next batch).
    fn release(&self) -> Result<(), StoreError> {
        let synced = self.sync();
        let unlocked = self.run("letting the log go", |s| async move {
            let mut g = s.lease_conn.lock().await;
            if let Some(c) = g.as_ref() {
                if c.batch_execute("SELECT pg_advisory_unlock_all()")
                    .await
                    .is_err()
                {
                    // Gone with the connection.
                    *g = None;
                }
            }
            Ok(())
        });
        let mut l = self.shared.lease.lock();
        l.held = false;
        l.wanted = false;
        drop(l);
        synced.and(unlocked)
    }
}

/// Follows the log's head as every node of it commits: notifications on
/// the log's channel, and a read of the head every second besides (a lost
/// notification costs latency, not data); the store is told of each head.
/// Also notes when another node waits for the writer lock.
async fn follow(s: Arc<Shared>) {
    let key = lock_key("beacon-writer", &s.dial.schema);
    loop {
        let (client, mut notes) = match s.dial.listener().await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "following the shared log: connecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {}", s.channel)).await {
            tracing::debug!(error = %e, "following the shared log: LISTEN");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let head_sql = format!(
            "SELECT value FROM {}.meta WHERE key = 'head'",
            s.dial.schema
        );
        // Every 100 ms while this node holds the writer lock, whether
        // another waits for it; every second, the head.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut ticks = 0u64;
        loop {
            let head = tokio::select! {
                note = notes.recv() => match note {
                    Some(payload) => payload.parse::<u64>().ok(),
                    None => break, // the connection is gone: make it again
                },
                _ = tick.tick() => {
                    ticks += 1;
                    let held = s.lease.lock().held;
                    if !held && !ticks.is_multiple_of(10) {
                        continue;
                    }
                    let read = async {
                        let head = client.query_one(&head_sql, &[]).await?;
                        let waiting = client
                            .query_one(
                                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                                 AND classid::int8 = $1 AND objid::int8 = $2 AND NOT granted)",
                                &[&((key as u64 >> 32) as i64), &((key as u64 & 0xffff_ffff) as i64)],
                            )
                            .await?;
                        Ok::<_, tokio_postgres::Error>((head, waiting.get::<_, bool>(0)))
                    };
                    match read.await {
                        Ok((row, waiting)) => {
                            if waiting {
                                s.lease.lock().wanted = true;
                                let_go_if_idle(&s).await;
                            }
                            row.get::<_, Vec<u8>>(0)
                                .as_slice()
                                .try_into()
                                .ok()
                                .map(u64::from_be_bytes)
                        }
                        Err(_) => break,
                    }
                }
            };
            if let Some(h) = head {
                let on_head = s.on_head.lock().clone();
                if let Some(f) = on_head {
                    f(h);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often the duties' connection takes the duties it lacks and shows
/// it is alive; a node that lost it stops that work within about this
/// (plus `timeout`), and the database lets a dead node's duties go when it
/// closes its session (at once for a process that died, after the TCP
/// keepalive for a machine that vanished).
const DUTY_BEAT: Duration = Duration::from_secs(1);

/// Holds the duties asked of this process, each a session advisory lock on
/// one connection of its own (not the writer lock's, which is let go and
/// taken again all the time): tries every `DUTY_BEAT` to take those it
/// lacks, and checks the connection is alive; when the connection is lost
/// (the database restarted, failed over, or cannot be reached) every duty
/// is dropped at once and taken again once it is back.
///
/// Safety never rests on a duty: two nodes that both believe they hold one
/// for a moment (a connection the database has not yet seen die) do the
/// same work twice — a peer's bulletins answered as duplicates from the
/// shared index, positions that only advance, prune steps fenced by the
/// writer lock — never anything wrong.
async fn hold_duties(s: Arc<Shared>) {
    let tell = |d: Duty, held: bool| {
        if let Some(tx) = s.duties.lock().get(&d) {
            tx.send_replace(held);
        }
    };
    loop {
        let client = match s.dial.client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "holding the log's duties: connecting");
                tokio::time::sleep(DUTY_BEAT).await;
                continue;
            }
        };
        let mut held: BTreeSet<Duty> = BTreeSet::new();
        loop {
            let lacking: Vec<Duty> = s
                .duties
                .lock()
                .keys()
                .filter(|d| !held.contains(d))
                .copied()
                .collect();
            let step = async {
                let mut taken = Vec::new();
                for d in &lacking {
                    let key = lock_key(&format!("beacon-duty-{}", d.name()), &s.dial.schema);
                    let row = client
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                        .await?;
                    if row.get::<_, bool>(0) {
                        taken.push(*d);
                    }
                }
                if lacking.is_empty() {
                    // The duties held are held while this session lives.
                    client.batch_execute("SELECT 1").await?;
                }
                Ok::<_, tokio_postgres::Error>(taken)
            };
            match tokio::time::timeout(s.timeout, step).await {
                Ok(Ok(taken)) => {
                    for d in taken {
                        tracing::info!(
                            duty = d.name(),
                            "this node took the duty for the shared log"
                        );
                        held.insert(d);
                        tell(d, true);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the connection that holds the log's duties failed");
                    break;
                }
                Err(_) => {
                    tracing::warn!(
                        "the connection that holds the log's duties did not answer in time"
                    );
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(DUTY_BEAT) => {}
                _ = s.duty_asked.notified() => {}
            }
        }
        // Dropping the client closes its session, and with it any lock it
        // held or was being granted.
        drop(client);
        for d in held {
            tracing::warn!(
                duty = d.name(),
                "this node dropped the duty (its hold on the database is gone); it takes it again once it can"
            );
            tell(d, false);
        }
        tokio::time::sleep(DUTY_BEAT).await;
    }
}

/// Lets the log go for another node that waits, if this node's applier is
/// idle and nothing it staged waits for a commit (else its next claim, or
/// its idle, does). The lock's connection is held throughout, so a claim
/// made meanwhile takes the lock again only after it was let go.
async fn let_go_if_idle(s: &Shared) {
    let mut conn = s.lease_conn.lock().await;
    {
        let mut l = s.lease.lock();
        if !l.held || l.busy {
            return;
        }
        // A commit in flight holds `order`; staged sets wait in `waiting`.
        let Some(_order) = s.order.try_lock() else {
            return;
        };
        if !s.waiting.lock().sets.is_empty() {
            return;
        }
        l.held = false;
        l.wanted = false;
    }
    if let Some(c) = conn.as_ref() {
        if c.batch_execute("SELECT pg_advisory_unlock_all()")
            .await
            .is_err()
        {
            // Gone with the connection.
            *conn = None;
        }
    }
}

/// Values of one key kept once, the last written (PostgreSQL refuses to
/// update one row twice in one statement).
fn last_wins<K: Ord + Clone, V>(items: impl IntoIterator<Item = (K, V)>) -> Vec<(K, V)> {
    let mut m = BTreeMap::new();
    for (k, v) in items {
        m.insert(k, v);
    }
    m.into_iter().collect()
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// The statements that apply `set`, in the order the embedded engine
/// applies its operations.
fn statements(st: &Stmts, set: &WriteSet, out: &mut Vec<(Statement, Params)>) {
    let seqs = |v: &[(u64, Vec<u8>)]| -> Params {
        let v = last_wins(v.iter().map(|(k, b)| (*k, b.clone())));
        vec![
            Box::new(v.iter().map(|(k, _)| i(*k)).collect::<Vec<i64>>()),
            Box::new(v.into_iter().map(|(_, b)| b).collect::<Vec<Vec<u8>>>()),
        ]
    };
    if !set.records.is_empty() {
        out.push((st.put_records.clone(), seqs(&set.records)));
    }
    if !set.successors.is_empty() {
        out.push((st.put_successors.clone(), seqs(&set.successors)));
    }
    if !set.expiries.is_empty() {
        out.push((
            st.put_expiries.clone(),
            vec![
                Box::new(
                    set.expiries
                        .iter()
                        .map(|(at, _)| i(*at))
                        .collect::<Vec<i64>>(),
                ),
                Box::new(
                    set.expiries
                        .iter()
                        .map(|(_, s)| i(*s))
                        .collect::<Vec<i64>>(),
                ),
            ],
        ));
    }
    if !set.pruned.is_empty() {
        let tombs: Vec<(u64, Vec<u8>)> = set
            .pruned
            .iter()
            .map(|p| (p.seq, p.tombstone.clone()))
            .collect();
        out.push((st.put_tombstones.clone(), seqs(&tombs)));
        let pruned: Vec<i64> = set.pruned.iter().map(|p| i(p.seq)).collect();
        out.push((st.del_records.clone(), vec![Box::new(pruned.clone())]));
        out.push((st.del_successors.clone(), vec![Box::new(pruned)]));
        let expiring: Vec<(i64, i64)> = set
            .pruned
            .iter()
            .filter_map(|p| p.expires.map(|e| (i(e), i(p.seq))))
            .collect();
        if !expiring.is_empty() {
            out.push((
                st.del_expiries.clone(),
                vec![
                    Box::new(expiring.iter().map(|(e, _)| *e).collect::<Vec<i64>>()),
                    Box::new(expiring.iter().map(|(_, s)| *s).collect::<Vec<i64>>()),
                ],
            ));
        }
    }
    if !set.index.is_empty() {
        let v = last_wins(
            set.index
                .iter()
                .map(|(p, id, e)| ((p.clone(), id.clone()), e.clone())),
        );
        out.push((
            st.put_index.clone(),
            vec![
                Box::new(
                    v.iter()
                        .map(|((p, _), _)| p.clone())
                        .collect::<Vec<String>>(),
                ),
                Box::new(
                    v.iter()
                        .map(|((_, id), _)| id.clone())
                        .collect::<Vec<String>>(),
                ),
                Box::new(v.into_iter().map(|(_, e)| e).collect::<Vec<Vec<u8>>>()),
            ],
        ));
    }
    if !set.tree.is_empty() {
        let v = last_wins(set.tree.iter().map(|(l, x, h)| ((*l, *x), h.to_vec())));
        out.push((
            st.put_tree.clone(),
            vec![
                Box::new(
                    v.iter()
                        .map(|((l, _), _)| i16::from(*l))
                        .collect::<Vec<i16>>(),
                ),
                Box::new(v.iter().map(|((_, x), _)| i(*x)).collect::<Vec<i64>>()),
                Box::new(v.into_iter().map(|(_, h)| h).collect::<Vec<Vec<u8>>>()),
            ],
        ));
    }
    let mut meta = |key: &'static str, value: Vec<u8>| {
        out.push((st.put_meta.clone(), vec![Box::new(key), Box::new(value)]));
    };
    if let Some(h) = set.head {
        meta("head", h.to_be_bytes().to_vec());
    }
    if let Some(f) = set.format {
        meta("format", f.to_be_bytes().to_vec());
    }
    if let Some(l) = &set.log {
        meta("log", l.clone());
    }
    if let Some(n) = &set.node {
        meta("node", n.clone());
    }
}

fn cursor_params(key: &CursorKey, pos: Option<Position>) -> Params {
    let mut p: Params = vec![
        Box::new(i16::from(key.0)),
        Box::new(key.1.clone()),
        Box::new(key.2.clone()),
    ];
    if let Some(pos) = pos {
        p.push(Box::new(i(pos.seq)));
        p.push(Box::new(pos.log.map(|l| l.0.to_vec())));
    }
    p
}

/// One transaction: every statement sent at once (pipelined, executed in
/// order), then the commit. A transaction that moves the head first checks
/// that the log's head is still `base` (the fence: the head row is locked
/// by it, so two writers can never both append after one head), and
/// notifies the other nodes of the log of its new head.
async fn commit_in(
    conn: &mut Conn,
    sets: &[WriteSet],
    cursors: &BTreeMap<CursorKey, CursorOp>,
    base: u64,
    channel: &str,
) -> Result<Option<u64>, StoreError> {
    let mut ops: Vec<(Statement, Params)> = Vec::new();
    let head = sets.iter().filter_map(|s| s.head).next_back();
    if head.is_some() {
        ops.push((
            conn.st.fence.clone(),
            vec![Box::new(base.to_be_bytes().to_vec())],
        ));
    }
    for set in sets {
        statements(&conn.st, set, &mut ops);
    }
    for (key, op) in cursors {
        match op {
            CursorOp::Advance(pos) => {
                ops.push((conn.st.advance.clone(), cursor_params(key, Some(*pos))))
            }
            CursorOp::Replace(pos) => {
                ops.push((conn.st.remove.clone(), cursor_params(key, None)));
                if let Some(pos) = pos {
                    ops.push((conn.st.replace.clone(), cursor_params(key, Some(*pos))));
                }
            }
        }
    }
    if let Some(h) = head {
        ops.push((
            conn.st.notify.clone(),
            vec![Box::new(channel.to_owned()), Box::new(h.to_string())],
        ));
    }
    let tx = conn
        .client
        .transaction()
        .await
        .map_err(|e| db("a transaction", e))?;
    let runs = ops.iter().map(|(stmt, params)| {
        tx.execute_raw(
            stmt,
            params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)),
        )
    });
    let counts = futures_util::future::try_join_all(runs)
        .await
        .map_err(|e| db("a write", e))?;
    if head.is_some() && counts.first() != Some(&1) {
        // Dropped without a commit: rolled back.
        return Err(StoreError::Unavailable(format!(
            "another node appended to this log after sequence {base} while this one held \
             its batch: the batch was not written (the nodes of one log take turns by an \
             advisory lock; this should not happen unless that lock was lost)"
        )));
    }
    tx.commit().await.map_err(|e| db("a commit", e))?;
    Ok(head)
}

fn position(seq: i64, log: Option<Vec<u8>>) -> Result<Position, StoreError> {
    let log = match log {
        Some(b) => Some(LogId(b.as_slice().try_into().map_err(|_| {
            StoreError::Io("a stored position names a damaged log id".into())
        })?)),
        None => None,
    };
    Ok(Position { seq: u(seq), log })
}

impl PgEngine {
    /// One page of `from..=to` from `records` or `tombstones`.
    fn page(&self, tombstones: bool, from: u64, to: u64) -> Result<Vec<(u64, Bytes)>, StoreError> {
        self.read("a scan of the log", move |c| async move {
            let st = match tombstones {
                true => &c.st.tombstones,
                false => &c.st.records,
            };
            Ok(c.client
                .query(st, &[&i(from), &i(to), &PAGE])
                .await?
                .into_iter()
                .map(|r| (u(r.get::<_, i64>(0)), Bytes::from(r.get::<_, Vec<u8>>(1))))
                .collect())
        })
    }

    fn scan(&self, tombstones: bool, from: u64, to: u64) -> RecordIter<'_> {
        let mut next = from;
        let mut buf = std::collections::VecDeque::new();
        let mut done = from > to;
        Box::new(std::iter::from_fn(move || {
            if buf.is_empty() && !done {
                match self.page(tombstones, next, to) {
                    Ok(rows) => {
                        done = (rows.len() as i64) < PAGE;
                        match rows.last() {
                            Some((seq, _)) if *seq < to => next = seq + 1,
                            _ => done = true,
                        }
                        buf.extend(rows);
                    }
                    Err(e) => {
                        done = true;
                        return Some(Err(e));
                    }
                }
            }
            buf.pop_front().map(Ok)
        }))
    }
}

impl Engine for PgEngine {
    fn head(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta("head")?
            .and_then(|b| b.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    fn format(&self) -> Result<Option<u32>, StoreError> {
        Ok(self
            .meta("format")?
            .and_then(|b| b.as_ref().try_into().ok().map(u32::from_be_bytes)))
    }

    fn log(&self) -> Result<Option<Bytes>, StoreError> {
        self.meta("log")
    }

    fn node(&self) -> Result<Option<Bytes>, StoreError> {
        self.meta("node")
    }

    fn last_record(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.head_and_last()?.1)
    }

    fn record(&self, seq: u64) -> Result<Option<Bytes>, StoreError> {
        self.read("a record", move |c| async move {
            Ok(c.client
                .query_opt(&c.st.record, &[&i(seq)])
                .await?
                .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
        })
    }

    fn records(&self, from: u64, to: u64) -> RecordIter<'_> {
        self.scan(false, from, to)
    }

    fn tombstone(&self, seq: u64) -> Result<Option<Bytes>, StoreError> {
        self.read("a tombstone", move |c| async move {
            Ok(c.client
                .query_opt(&c.st.tombstone, &[&i(seq)])
                .await?
                .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
        })
    }

    fn tombstones(&self, from: u64, to: u64) -> RecordIter<'_> {
        self.scan(true, from, to)
    }

    fn expiring(
        &self,
        from: (u64, u64),
        until: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("the expiry entries", move |c| async move {
            Ok(c.client
                .query(&c.st.expiring, &[&i(from.0), &i(from.1), &i(until), &limit])
                .await?
                .into_iter()
                .map(|r| (u(r.get::<_, i64>(0)), u(r.get::<_, i64>(1))))
                .collect())
        })
    }

    fn successors(&self, from: u64, to: u64) -> Result<Vec<(u64, Bytes)>, StoreError> {
        if from > to {
            return Ok(Vec::new());
        }
        self.read("the successors", move |c| async move {
            Ok(c.client
                .query(&c.st.successors, &[&i(from), &i(to)])
                .await?
                .into_iter()
                .map(|r| (u(r.get::<_, i64>(0)), Bytes::from(r.get::<_, Vec<u8>>(1))))
                .collect())
        })
    }

    fn index(&self, publisher: &str, id: &str) -> Result<Option<Bytes>, StoreError> {
        let (p, id) = (publisher.to_owned(), id.to_owned());
        self.read("the id index", move |c| async move {
            Ok(c.client
                .query_opt(&c.st.index, &[&p, &id])
                .await?
                .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
        })
    }

    fn index_by_id(&self, id: &str, limit: usize) -> Result<Vec<(String, Bytes)>, StoreError> {
        let id = id.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("the id index", move |c| async move {
            Ok(c.client
                .query(&c.st.index_by_id, &[&id, &limit])
                .await?
                .into_iter()
                .map(|r| (r.get::<_, String>(0), Bytes::from(r.get::<_, Vec<u8>>(1))))
                .collect())
        })
    }

    fn records_at(&self, seqs: &[u64]) -> Result<Vec<(u64, Bytes)>, StoreError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<i64> = seqs.iter().map(|s| i(*s)).collect();
        let mut found: std::collections::HashMap<u64, Bytes> =
            self.read("records", move |c| async move {
                Ok(c.client
                    .query(&c.st.records_at, &[&wanted])
                    .await?
                    .into_iter()
                    .map(|r| (u(r.get::<_, i64>(0)), Bytes::from(r.get::<_, Vec<u8>>(1))))
                    .collect())
            })?;
        Ok(seqs
            .iter()
            .filter_map(|s| found.remove(s).map(|b| (*s, b)))
            .collect())
    }

    fn index_many(&self, keys: &[(String, String)]) -> Result<Vec<Option<Bytes>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let publishers: Vec<String> = keys.iter().map(|(p, _)| p.clone()).collect();
        let ids: Vec<String> = keys.iter().map(|(_, id)| id.clone()).collect();
        let found: std::collections::HashMap<(String, String), Bytes> =
            self.read("the id index", move |c| async move {
                Ok(c.client
                    .query(&c.st.index_many, &[&publishers, &ids])
                    .await?
                    .into_iter()
                    .map(|r| {
                        (
                            (r.get::<_, String>(0), r.get::<_, String>(1)),
                            Bytes::from(r.get::<_, Vec<u8>>(2)),
                        )
                    })
                    .collect())
            })?;
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    fn write(&self, set: WriteSet) -> Result<(), StoreError> {
        // After everything staged before it, in one transaction.
        let _order = self.shared.order.lock();
        let mut sets = std::mem::take(&mut self.shared.waiting.lock().sets);
        sets.push(set);
        self.commit(sets, BTreeMap::new())
    }

    fn stage(&self, set: WriteSet) -> Result<(), StoreError> {
        if let Some(e) = self.shared.failed.lock().clone() {
            return Err(e);
        }
        self.shared.waiting.lock().sets.push(set);
        Ok(())
    }

    fn head_and_last(&self) -> Result<(u64, Option<u64>), StoreError> {
        self.read("the log's end", |c| async move {
            let row = c.client.query_one(&c.st.head_and_last, &[]).await?;
            let head = row
                .get::<_, Option<Vec<u8>>>(0)
                .and_then(|b| b.as_slice().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0);
            Ok((head, row.get::<_, Option<i64>>(1).map(u)))
        })
    }

    fn claim(&self) -> Result<Option<u64>, StoreError> {
        let (held, wanted) = {
            let mut l = self.shared.lease.lock();
            l.busy = true;
            (l.held, l.wanted)
        };
        if held && !wanted {
            return Ok(None);
        }
        if held {
            // Another node waits: what is staged is made durable, then the
            // log is let go, then taken again behind it.
            self.release()?;
        }
        let key = lock_key("beacon-writer", &self.shared.dial.schema);
        let head = self.run("the log's writer lock", move |s| async move {
            let mut g = s.lease_conn.lock().await;
            if g.as_ref().is_none_or(|c| c.is_closed()) {
                let c = s.dial.client().await?;
                // A wait for the lock ends before the call's own timeout,
                // so no lock is ever granted to a wait given up on.
                let wait = s.timeout.as_millis() * 3 / 4;
                c.batch_execute(&format!("SET lock_timeout = {wait}"))
                    .await
                    .map_err(|e| db("the writer lock's session", e))?;
                *g = Some(c);
            }
            let Some(c) = g.as_ref() else {
                return Err(StoreError::Closed);
            };
            let taken = async {
                c.execute("SELECT pg_advisory_lock($1)", &[&key]).await?;
                c.query_one(
                    &format!(
                        "SELECT value FROM {}.meta WHERE key = 'head'",
                        s.dial.schema
                    ),
                    &[],
                )
                .await
            }
            .await;
            match taken {
                Ok(row) => Ok(row
                    .get::<_, Vec<u8>>(0)
                    .as_slice()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .unwrap_or(0)),
                Err(e) => {
                    // Whatever it holds goes with the connection.
                    *g = None;
                    Err(db("the log's writer lock", e))
                }
            }
        })?;
        {
            let mut l = self.shared.lease.lock();
            l.held = true;
            l.wanted = false;
            l.busy = true;
        }
        let base = self.shared.base.swap(head, Ordering::AcqRel);
        Ok((head != base).then_some(head))
    }

    fn idle(&self) {
        // The log stays with this node while no other waits (its next
        // batch needs no round trip for the lock); the follower lets it go
        // once one does.
        let release = {
            let mut l = self.shared.lease.lock();
            l.busy = false;
            l.held && l.wanted
        };
        if release {
            if let Err(e) = self.release() {
                tracing::warn!(error = %e, "letting the shared log go failed");
            }
        }
    }

    fn follow(&self, on_head: Arc<dyn Fn(u64) + Send + Sync>) {
        *self.shared.on_head.lock() = Some(on_head);
    }

    fn recoverable(&self) -> bool {
        true
    }

    fn recover(&self) -> Result<u64, StoreError> {
        let _order = self.shared.order.lock();
        let head = self.run("taking the log up again", |s| async move {
            // The writer lock's session may live on or not: let it go (its
            // lock goes with it), and take it again at the next claim.
            drop(s.lease_conn.lock().await.take());
            let mut writer = s.writer.lock().await;
            *writer = None;
            let conn = s.dial.connect().await?;
            let row = conn
                .client
                .query_one(&conn.st.meta, &[&"head"])
                .await
                .map_err(|e| db("the log's head", e))?;
            let head = row
                .get::<_, Vec<u8>>(0)
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            *writer = Some(conn);
            Ok(head)
        })?;
        // What was staged and not committed went with the failed
        // transaction, and was never acknowledged. Cursor moves wait on:
        // they only move forward.
        self.shared.waiting.lock().sets.clear();
        {
            let mut l = self.shared.lease.lock();
            l.held = false;
            l.wanted = false;
        }
        self.shared.base.store(head, Ordering::Release);
        *self.shared.failed.lock() = None;
        Ok(head)
    }

    fn duty(&self, duty: Duty) -> tokio::sync::watch::Receiver<bool> {
        let mut duties = self.shared.duties.lock();
        let first = duties.is_empty();
        let rx = duties
            .entry(duty)
            .or_insert_with(|| tokio::sync::watch::channel(false).0)
            .subscribe();
        drop(duties);
        if first {
            self.handle.spawn(hold_duties(self.shared.clone()));
        } else {
            self.shared.duty_asked.notify_one();
        }
        rx
    }

    fn sync(&self) -> Result<(), StoreError> {
        let _order = self.shared.order.lock();
        let (sets, cursors) = {
            let mut w = self.shared.waiting.lock();
            (std::mem::take(&mut w.sets), std::mem::take(&mut w.cursors))
        };
        self.commit(sets, cursors)
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        // The database keeps its own files: nothing is left to redo.
        Ok(())
    }

    fn cursor(
        &self,
        space: Space,
        identity: &str,
        name: &str,
    ) -> Result<Option<Position>, StoreError> {
        let key = (space_no(space), identity.to_owned(), name.to_owned());
        let waiting = self.shared.waiting.lock().cursors.get(&key).copied();
        if let Some(CursorOp::Replace(p)) = waiting {
            return Ok(p);
        }
        let stored = self.read("a cursor", move |c| async move {
            Ok(c.client
                .query_opt(&c.st.cursor, &[&i16::from(key.0), &key.1, &key.2])
                .await?
                .map(|r| (r.get::<_, i64>(0), r.get::<_, Option<Vec<u8>>>(1))))
        })?;
        let stored = stored.map(|(s, l)| position(s, l)).transpose()?;
        Ok(match waiting {
            Some(CursorOp::Advance(next)) => Some(Position::advanced(stored, next)),
            _ => stored,
        })
    }

    fn advance_cursor(
        &self,
        space: Space,
        identity: &str,
        name: &str,
        pos: Position,
    ) -> Result<(), StoreError> {
        let key = (space_no(space), identity.to_owned(), name.to_owned());
        let mut w = self.shared.waiting.lock();
        let op = match w.cursors.get(&key) {
            None => CursorOp::Advance(pos),
            Some(CursorOp::Advance(old)) => CursorOp::Advance(Position::advanced(Some(*old), pos)),
            Some(CursorOp::Replace(old)) => CursorOp::Replace(Some(Position::advanced(*old, pos))),
        };
        w.cursors.insert(key, op);
        Ok(())
    }

    fn remove_cursor(&self, space: Space, identity: &str, name: &str) -> Result<(), StoreError> {
        let key = (space_no(space), identity.to_owned(), name.to_owned());
        self.shared
            .waiting
            .lock()
            .cursors
            .insert(key, CursorOp::Replace(None));
        Ok(())
    }

    fn cursors(&self, space: Space) -> Result<Vec<(String, String, Position)>, StoreError> {
        let no = space_no(space);
        let rows = self.read("the cursors", move |c| async move {
            Ok(c.client
                .query(&c.st.cursors, &[&i16::from(no)])
                .await?
                .into_iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, i64>(2),
                        r.get::<_, Option<Vec<u8>>>(3),
                    )
                })
                .collect::<Vec<_>>())
        })?;
        let mut all = BTreeMap::new();
        for (identity, name, seq, log) in rows {
            all.insert((identity, name), position(seq, log)?);
        }
        for ((sp, identity, name), op) in self.shared.waiting.lock().cursors.iter() {
            if *sp != no {
                continue;
            }
            let key = (identity.clone(), name.clone());
            match op {
                CursorOp::Advance(next) => {
                    let p = Position::advanced(all.get(&key).copied(), *next);
                    all.insert(key, p);
                }
                CursorOp::Replace(Some(p)) => {
                    all.insert(key, *p);
                }
                CursorOp::Replace(None) => {
                    all.remove(&key);
                }
            }
        }
        Ok(all.into_iter().map(|((i, n), p)| (i, n, p)).collect())
    }

    fn size_on_disk(&self) -> u64 {
        if let Some((at, size)) = *self.shared.size.lock() {
            if at.elapsed() < SIZE_FRESH {
                return size;
            }
        }
        let schema = self.shared.dial.schema.clone();
        let size = self
            .read("the store's size", move |c| async move {
                c.client
                    .query_one(
                        "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_class c \
                         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
                        &[&schema],
                    )
                    .await
                    .map(|r| u(r.get::<_, i64>(0)))
            })
            .unwrap_or(0);
        *self.shared.size.lock() = Some((Instant::now(), size));
        size
    }

    fn tree_node(&self, level: u8, index: u64) -> Result<Option<[u8; 32]>, StoreError> {
        self.read("the log's tree", move |c| async move {
            Ok(c.client
                .query_opt(&c.st.tree, &[&i16::from(level), &i(index)])
                .await?
                .and_then(|r| r.get::<_, Vec<u8>>(0).as_slice().try_into().ok()))
        })
    }
}

/// Runs `f` with a new client of the database `c` names, on a runtime of
/// its own (administrative work: a restore's schemas), under the timeout.
fn with_client<T, F>(
    c: &PostgresConfig,
    what: &str,
    f: impl FnOnce(Client) -> F + Send + 'static,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let dial = Dial::new(c)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("beacon-pg-admin")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Io(format!("the database client's runtime: {e}")))?;
    let name = dial.name.clone();
    let run = async move {
        let client = dial.client().await?;
        f(client).await
    };
    let r = wait_on(
        runtime.handle(),
        &name,
        what,
        Duration::from_millis(c.timeout_ms),
        run,
    );
    runtime.shutdown_background();
    r
}

/// Runs `fut` as a task on `runtime` under `timeout` and waits for it from
/// this (synchronous) thread; a late answer is `Unavailable`, naming `what`.
fn wait_on<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    database: &str,
    what: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let late = format!(
        "the store's database at {database} did not answer {what} within {} ms",
        timeout.as_millis()
    );
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let r = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(late)),
        };
        let _ = tx.send(r);
    });
    rx.recv().unwrap_or(Err(StoreError::Closed))
}

/// Drops `schema` and everything in it, if it exists.
pub(crate) fn drop_schema(c: &PostgresConfig, schema: &str) -> Result<(), StoreError> {
    let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
    with_client(c, "dropping a schema", move |client| async move {
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| db("dropping a schema", e))
    })
}

/// Replaces `to` (which holds no log: [`holds_store`]) by `from`, in one
/// transaction.
pub(crate) fn rename_schema(c: &PostgresConfig, from: &str, to: &str) -> Result<(), StoreError> {
    let sql = format!(
        "BEGIN; DROP SCHEMA IF EXISTS {to} CASCADE; ALTER SCHEMA {from} RENAME TO {to}; COMMIT"
    );
    with_client(
        c,
        "putting the restored store in place",
        move |client| async move {
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| db("putting the restored store in place", e))
        },
    )
}

/// Where the schema `c` names holds a log (records, tombstones or
/// positions), it is named.
pub(crate) fn holds_store(c: &PostgresConfig) -> Result<Option<String>, StoreError> {
    let s = c.schema.clone();
    let name = Dial::new(c)?.name;
    with_client(
        c,
        "whether the schema holds a store",
        move |client| async move {
            let exists: bool = client
                .query_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[&format!("{s}.records")],
                )
                .await
                .map_err(|e| db("the schema's tables", e))?
                .get(0);
            if !exists {
                return Ok(None);
            }
            let held: bool = client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {s}.records) OR EXISTS (SELECT 1 FROM {s}.tombstones) \
                     OR EXISTS (SELECT 1 FROM {s}.positions)"
                ),
                &[],
            )
            .await
            .map_err(|e| db("the schema's tables", e))?
            .get(0);
            Ok(held.then(|| format!("schema {s} of {name}")))
        },
    )
}
