//! A TAXII 2.1 server on the node (`[taxii] listen`): discovery, one API
//! root, collections, objects, object, versions and manifest, over HTTPS
//! with a client certificate the node's trust accepts (TLS 1.2 or 1.3).
//! Every object served passes `policy` exactly as a `Get` would: a reader
//! sees the bulletins its member may read, and a page never shows that
//! something was left out.
//!
//! # Files
//! - `mod.rs`: the listener (on the node's one accept loop), who is calling,
//!   routing, error bodies (the one mapping of errors to HTTP), collections.
//! - `headers.rs`: media types with their parameters, `Accept`, queries,
//!   timestamps.
//! - `post.rs`: `POST objects` and the status resources of posts.
//! - `misp_feed.rs`: the MISP feed under `/misp/`.
//! - `view.rs`: a collection's objects for one reader, in pages.
//!
//! Routing is a handful of fixed paths, matched here by hand: a web
//! framework would add a layer without removing any of this.

mod headers;
mod misp_feed;
mod post;
mod view;

use headers::{accept, parse_query, parse_time};
use post::Statuses;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::base::identity::Identity;
use crate::interop::stix::Profile;
use crate::net::edge as net;
use crate::node::state::NodeState;
use view::{Query, Versions};

/// TAXII's media type, the one this server speaks.
pub const TAXII: &str = "application/taxii+json;version=2.1";
const STIX: &str = "application/stix+json;version=2.1";
/// The API root's path.
const ROOT: &str = "/taxii2/beacon/";
/// Bulletins a MISP manifest covers: the newest of the log.
const MISP_WINDOW: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaxiiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the request's Accept header allows no TAXII 2.1 response ({0})")]
    NotAcceptable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the certificate of {0} is no longer accepted (revoked or expired)")]
    Revoked(String),
    #[error("present a client certificate, or an API token as the HTTP Basic password or a Bearer token")]
    NoCredentials,
    #[error("the request body is larger than max_content_length ({0} bytes)")]
    TooLarge(usize),
    #[error("Content-Type {0:?} is not application/taxii+json;version=2.1")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("this node serves no one: its own certificate is refused ({0})")]
    NodeRefused(String),
}

impl TaxiiError {
    fn status(&self) -> StatusCode {
        match self {
            TaxiiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            TaxiiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            TaxiiError::NotFound(_) => StatusCode::NOT_FOUND,
            TaxiiError::Forbidden(_) => StatusCode::FORBIDDEN,
            TaxiiError::Revoked(_) | TaxiiError::NoCredentials => StatusCode::UNAUTHORIZED,
            TaxiiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            TaxiiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            TaxiiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            TaxiiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            TaxiiError::NodeRefused(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The TAXII error resource.
    fn response(&self) -> Response<Full<Bytes>> {
        let status = self.status();
        let body = json!({
            "title": status.canonical_reason().unwrap_or("error"),
            "description": self.to_string(),
            "http_status": status.as_str(),
        });
        let headers: &[(&'static str, String)] = match self {
            // The connection is not to be used again: its caller is cut
            // off, or its body was not all read.
            TaxiiError::Revoked(_) | TaxiiError::TooLarge(_) | TaxiiError::NodeRefused(_) => {
                &[("Connection", "close".into())]
            }
            TaxiiError::NoCredentials => &[(
                "WWW-Authenticate",
                "Basic realm=\"Beacon TAXII\", Bearer".into(),
            )],
            _ => &[],
        };
        respond(status, body, headers)
    }
}

fn respond(
    status: StatusCode,
    body: Value,
    headers: &[(&'static str, String)],
) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, TAXII);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// A configured collection.
#[derive(Debug, Clone)]
struct Collection {
    id: String,
    alias: String,
    title: String,
    profile: Profile,
}

/// What the server serves.
struct Server {
    state: Arc<NodeState>,
    collections: Vec<Collection>,
    statuses: Statuses,
}

/// A collection's id: stable across restarts, derived from the node's
/// identity and the alias, in the UUIDv4 form TAXII asks for.
fn collection_id(node: &Identity, alias: &str) -> String {
    let digest =
        crate::domain::bulletin::sha256(format!("taxii-collection/{node}/{alias}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Serves TAXII on `listener` until `shutdown`, through the node's one
/// accept loop ([`net::listen`]): its connections are registered in
/// `connections`, where a reload's revocations reach them.
pub async fn serve(
    state: Arc<NodeState>,
    listener: TcpListener,
    net: Arc<net::Net>,
    connections: Arc<net::Connections>,
    shutdown: CancellationToken,
) {
    let collections = state
        .config
        .taxii
        .collections
        .iter()
        .map(|c| Collection {
            id: collection_id(&state.identity, &c.alias),
            alias: c.alias.clone(),
            title: c.title.clone().unwrap_or_else(|| c.alias.clone()),
            profile: Profile::parse(&c.markings).unwrap_or_default(),
        })
        .collect();
    let server = Arc::new(Server {
        state: state.clone(),
        collections,
        statuses: Statuses::default(),
    });
    // A client certificate is optional with tokens on: each request then
    // names its caller with a token.
    let tokens = state.config.taxii.tokens;
    let door = net::Door {
        name: "TAXII",
        security: net::Security::Tls(Box::new(move |trust: &crate::trust::state::TrustState| {
            crate::trust::tls::https_server_config(trust.bundle(), &trust.own(), tokens)
        })),
        connections,
        max_connections: state.config.limits.max_connections,
    };
    let executor = net::Executor(net.tasks.clone());
    net::listen(
        listener,
        door,
        net,
        move |conn: net::Conn| {
            let server = server.clone();
            let executor = executor.clone();
            async move {
                let caller = Arc::new(Caller {
                    identity: conn.identity.clone(),
                    chain: conn.chain.clone(),
                    // Checked at the first request (the trust may have
                    // changed since the handshake), then after each reload.
                    checked: parking_lot::Mutex::new((u64::MAX, false)),
                });
                let service = hyper::service::service_fn(move |req| {
                    let server = server.clone();
                    let caller = caller.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(server.handle(&caller, req).await)
                    }
                });
                // The connection ends when the node closes it (a revocation,
                // its own certificate refused, shutdown): its reads and
                // writes fail from then on.
                let _ = hyper_util::server::conn::auto::Builder::new(executor)
                .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                .await;
            }
        },
        shutdown,
    )
    .await;
}

/// Binds the listener if `[taxii] listen` is set.
pub async fn bind(state: &NodeState) -> std::io::Result<Option<TcpListener>> {
    match state.config.taxii.listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).await?;
            let at: SocketAddr = l.local_addr()?;
            info!(addr = %at, "TAXII 2.1 listening (HTTPS, client certificates)");
            Ok(Some(l))
        }
        None => Ok(None),
    }
}

/// Who is calling on a connection, and whether the trust in force still
/// accepts them.
struct Caller {
    /// From the certificate; `None`: a token names the caller per request.
    identity: Option<Identity>,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// (trust generation last checked, accepted then).
    checked: parking_lot::Mutex<(u64, bool)>,
}

impl Caller {
    /// Checks the chain again whenever the trust changed (a CRL reload):
    /// a revocation applies to connections already open.
    fn still_accepted(&self, state: &NodeState) -> bool {
        let generation = state.trust.generation();
        let mut checked = self.checked.lock();
        if checked.0 != generation {
            let ok = match self.chain.split_first() {
                Some((leaf, rest)) => state
                    .trust
                    .bundle()
                    .verify(
                        leaf,
                        rest,
                        rustls::pki_types::UnixTime::now(),
                        crate::trust::Usage::ClientAuth,
                    )
                    .is_ok(),
                None => false,
            };
            *checked = (generation, ok);
        }
        checked.1
    }
}

impl Server {
    /// Answers one request, counted by its status class.
    async fn handle(
        &self,
        caller: &Caller,
        req: Request<hyper::body::Incoming>,
    ) -> Response<Full<Bytes>> {
        let response = self.answer(caller, req).await;
        self.state
            .metrics
            .taxii_requests
            .inc(match response.status().as_u16() {
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "5xx",
            });
        response
    }

    async fn answer(
        &self,
        caller: &Caller,
        req: Request<hyper::body::Incoming>,
    ) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        // A body is read only where one is taken (POST objects), and only
        // up to max_content_length; elsewhere a little is drained so the
        // connection stays usable.
        let cap = if parts.method == Method::POST {
            self.max_content_length()
        } else {
            64 * 1024
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let body = if declared.is_some_and(|n| n > cap) {
            // Too large: read (and drop) a bounded amount, so that the
            // client gets the 413 rather than a reset while it sends.
            let _ = http_body_util::Limited::new(body, cap.saturating_mul(2))
                .collect()
                .await;
            None
        } else {
            http_body_util::Limited::new(body, cap)
                .collect()
                .await
                .ok()
                .map(|b| b.to_bytes())
        };
        if let Some(reason) = self.state.trust.own_refusal() {
            return TaxiiError::NodeRefused(reason).response();
        }
        let identity = match &caller.identity {
            Some(i) if !caller.still_accepted(&self.state) => {
                return TaxiiError::Revoked(i.to_string()).response()
            }
            Some(i) => i.clone(),
            None => match self.token_caller(&parts) {
                Some(i) => i,
                None => return TaxiiError::NoCredentials.response(),
            },
        };
        let result = if parts.method == Method::POST {
            match body {
                Some(body) => self.post(&identity, &parts, body).await,
                None => Err(TaxiiError::TooLarge(self.max_content_length())),
            }
        } else {
            self.route(&identity, &parts).await
        };
        result.unwrap_or_else(|e| e.response())
    }

    /// The client an API token in `Authorization` stands for (Basic: the
    /// password; Bearer: the token), if tokens are on and it is valid.
    fn token_caller(&self, parts: &http::request::Parts) -> Option<Identity> {
        use base64::Engine as _;
        if !self.state.config.taxii.tokens {
            return None;
        }
        let header = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, value) = header.split_once(' ')?;
        let token = match scheme.to_ascii_lowercase().as_str() {
            "bearer" => value.trim().to_owned(),
            "basic" => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(value.trim())
                    .ok()?;
                let text = String::from_utf8(decoded).ok()?;
                text.split_once(':')?.1.to_owned()
            }
            _ => return None,
        };
        self.state.tokens.identity_of(&token)
    }

    async fn route(
        &self,
        identity: &Identity,
        parts: &http::request::Parts,
    ) -> Result<Response<Full<Bytes>>, TaxiiError> {
        let member = self.member(identity)?.to_owned();
        let path = parts.uri.path();
        if parts.method != Method::GET {
            return Err(TaxiiError::MethodNotAllowed(format!(
                "{} is not served on {path}",
                parts.method
            )));
        }
        // The MISP feed is plain JSON, whatever the client accepts.
        if let Some(file) = path.strip_prefix("/misp/") {
            return self.misp(&member, file).await;
        }
        accept(parts)?;
        if path == "/taxii2/" {
            return Ok(respond(
                StatusCode::OK,
                json!({
                    "title": self.state.config.taxii.title,
                    "description": format!("Beacon node {}", self.state.identity),
                    "default": ROOT,
                    "api_roots": [ROOT],
                }),
                &[],
            ));
        }
        let Some(rest) = path.strip_prefix(ROOT) else {
            return Err(TaxiiError::NotFound(format!("no TAXII resource at {path}")));
        };
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let query = parse_query(parts.uri.query().unwrap_or(""))?;
        match segments.as_slice() {
            [] => Ok(respond(
                StatusCode::OK,
                json!({
                    "title": self.state.config.taxii.title,
                    "versions": [TAXII],
                    "max_content_length": self.max_content_length(),
                }),
                &[],
            )),
            ["status", id] => self
                .statuses
                .get(&member, id)
                .map(|s| respond(StatusCode::OK, s, &[]))
                .ok_or_else(|| TaxiiError::NotFound(format!("no status {id}"))),
            ["collections"] => Ok(respond(
                StatusCode::OK,
                json!({"collections": self.collections.iter().map(|c| describe(c, self.may_write(identity))).collect::<Vec<_>>()}),
                &[],
            )),
            ["collections", id] => Ok(respond(
                StatusCode::OK,
                describe(self.collection(id)?, self.may_write(identity)),
                &[],
            )),
            ["collections", id, "objects"] => {
                let c = self.collection(id)?.clone();
                let q = self.query(&query, None)?;
                self.objects(&member, &c, q, Shape::Envelope).await
            }
            ["collections", id, "manifest"] => {
                let c = self.collection(id)?.clone();
                let q = self.query(&query, None)?;
                self.objects(&member, &c, q, Shape::Manifest).await
            }
            ["collections", id, "objects", object] => {
                let c = self.collection(id)?.clone();
                let q = self.query(&query, Some(object))?;
                self.objects(&member, &c, q, Shape::Object).await
            }
            ["collections", id, "objects", object, "versions"] => {
                let c = self.collection(id)?.clone();
                let mut q = self.query(&query, Some(object))?;
                q.versions = Versions::all();
                self.objects(&member, &c, q, Shape::Versions).await
            }
            _ => Err(TaxiiError::NotFound(format!("no TAXII resource at {path}"))),
        }
    }

    fn collection(&self, id: &str) -> Result<&Collection, TaxiiError> {
        self.collections
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| TaxiiError::NotFound(format!("no collection {id}")))
    }

    /// The filters of a request; `object` fixes `match[id]`.
    fn query(
        &self,
        q: &HashMap<String, String>,
        object: Option<&str>,
    ) -> Result<Query, TaxiiError> {
        let list = |k: &str| -> Vec<String> {
            q.get(k)
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let max = self.state.config.taxii.max_page;
        let limit = match q.get("limit") {
            None => max,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|l| *l > 0)
                .ok_or_else(|| {
                    TaxiiError::BadRequest(format!("limit {l:?} is not a positive integer"))
                })?
                .min(max),
        };
        let added_after = match q.get("added_after") {
            None => None,
            Some(t) => Some(parse_time(t)?),
        };
        let next = match q.get("next") {
            None => None,
            Some(n) => Some(view::decode_next(n).ok_or_else(|| {
                TaxiiError::BadRequest(format!("next {n:?} is not one this server gave"))
            })?),
        };
        let asked = list("match[version]");
        let versions = if asked.is_empty() {
            Versions::last()
        } else {
            let mut v = Versions::default();
            for x in &asked {
                match x.as_str() {
                    "all" => v.all = true,
                    "last" => v.last = true,
                    "first" => v.first = true,
                    t => v.at.push(crate::interop::stix::timestamp(view::from_micros(
                        parse_time(t)?,
                    ))),
                }
            }
            v
        };
        let mut ids = list("match[id]");
        if let Some(o) = object {
            ids = vec![o.to_owned()];
        }
        Ok(Query {
            ids,
            types: list("match[type]"),
            versions,
            spec_versions: list("match[spec_version]"),
            added_after,
            next,
            limit,
        })
    }

    async fn objects(
        &self,
        member: &str,
        c: &Collection,
        q: Query,
        shape: Shape,
    ) -> Result<Response<Full<Bytes>>, TaxiiError> {
        let state = self.state.clone();
        let member = member.to_owned();
        let profile = c.profile;
        let added_after = q.added_after;
        let page = self
            .state
            .tasks
            .spawn_blocking(move || view::page(&state, &member, profile, &q))
            .await
            .map_err(|_| TaxiiError::NotFound("the request was cut short".into()))?;
        let mut headers = Vec::new();
        // An empty page repeats the client's added_after, so a poller that
        // keeps X-TAXII-Date-Added-Last asks the same question next time
        // (a missing header makes some take "now", and skip what comes).
        let dates = match (page.items.first(), page.items.last()) {
            (Some(first), Some(last)) => Some((first.date_added, last.date_added)),
            _ => added_after.map(|a| (a, a)),
        };
        if let Some((first, last)) = dates {
            headers.push((
                "X-TAXII-Date-Added-First",
                crate::interop::stix::timestamp(view::from_micros(first)),
            ));
            headers.push((
                "X-TAXII-Date-Added-Last",
                crate::interop::stix::timestamp(view::from_micros(last)),
            ));
        }
        let mut body = serde_json::Map::new();
        if page.more {
            body.insert("more".into(), json!(true));
            if let Some(n) = page.next {
                body.insert("next".into(), json!(view::encode_next(n)));
            }
        }
        match shape {
            Shape::Object if page.items.is_empty() && !page.more => {
                // As its versions endpoint answers: one answer for an object
                // that is not there and one the reader may not see.
                return Err(TaxiiError::NotFound(
                    "no such object in this collection".into(),
                ));
            }
            Shape::Envelope | Shape::Object => {
                if !page.items.is_empty() {
                    body.insert(
                        "objects".into(),
                        Value::Array(page.items.into_iter().map(|i| i.object).collect()),
                    );
                }
            }
            Shape::Manifest => {
                if !page.items.is_empty() {
                    let records: Vec<Value> = page
                        .items
                        .iter()
                        .map(|i| {
                            json!({
                                "id": i.object.get("id"),
                                "date_added": crate::interop::stix::timestamp(view::from_micros(i.date_added)),
                                "version": view::version_of(&i.object),
                                "media_type": STIX,
                            })
                        })
                        .collect();
                    body.insert("objects".into(), Value::Array(records));
                }
            }
            Shape::Versions => {
                let mut versions: Vec<String> = page
                    .items
                    .iter()
                    .map(|i| view::version_of(&i.object))
                    .collect();
                versions.sort();
                versions.dedup();
                if versions.is_empty() && !page.more {
                    return Err(TaxiiError::NotFound(
                        "no such object in this collection".into(),
                    ));
                }
                if !versions.is_empty() {
                    body.insert("versions".into(), json!(versions));
                }
            }
        }
        Ok(respond(StatusCode::OK, Value::Object(body), &headers))
    }
}

/// What an objects request returns.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Envelope,
    /// One object's versions as an envelope (404 when there is none).
    Object,
    Manifest,
    Versions,
}

fn describe(c: &Collection, can_write: bool) -> Value {
    json!({
        "id": c.id,
        "title": c.title,
        "alias": c.alias,
        "description": format!("Every Beacon bulletin you may read, as STIX 2.1 ({} markings)", c.profile.name()),
        "can_read": true,
        "can_write": can_write,
        "media_types": [STIX],
    })
}
