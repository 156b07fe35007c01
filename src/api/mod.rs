//! The gRPC edge of the node: tonic service implementations.
//!
//! - `bulletins.rs`: `beacon.v1.Bulletins` (members);
//! - `admin.rs`: `beacon.v1.Admin` (operators), with `backup.rs`, which
//!   cuts a backup into stream chunks;
//! - here: who is calling ([`caller`]), the routes and the connection
//!   serving, the decoder-limit rewrite.
//!
//! Every handler starts by taking the caller's verified identity from the
//! connection ([`PeerInfo`]) and checking its role. Errors of the other modules
//! become `tonic::Status` in one place, [`status`].

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Status};

use crate::base::identity::RoleKind;
use crate::base::proto::v1 as pb;
use crate::net::edge::PeerInfo;
use crate::node::state::NodeState;

mod admin;
mod backup;
mod bulletins;
pub mod convert;
pub mod status;
mod transparency;

pub use admin::AdminService;
pub use bulletins::BulletinsService;

/// Rewrites a response that tonic's decoder ended before any handler ran
/// (a unary request over the message limit: a trailers-only response with
/// `OUT_OF_RANGE`) into [`status::from_decoder`]'s `RESOURCE_EXHAUSTED`.
/// Streams see the decoder's error in their handler and map it there.
#[derive(Clone, Copy, Default)]
pub struct DecodeLimitLayer;

impl<S> tower::Layer<S> for DecodeLimitLayer {
    type Service = tower::util::MapResponse<S, fn(HttpResponse) -> HttpResponse>;

    fn layer(&self, inner: S) -> Self::Service {
        tower::util::MapResponse::new(inner, decode_limit_response)
    }
}

fn decode_limit_response(response: HttpResponse) -> HttpResponse {
    match Status::from_header_map(response.headers()) {
        Some(s) if s.code() == tonic::Code::OutOfRange => {
            let mapped = status::from_decoder(s);
            if mapped.code() == tonic::Code::OutOfRange {
                response
            } else {
                mapped.into_http()
            }
        }
        _ => response,
    }
}

type HttpResponse = http::Response<tonic::body::Body>;

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// The verified caller of a request, required to hold one of `allowed` roles.
pub fn caller<T>(request: &Request<T>, allowed: &[RoleKind]) -> Result<PeerInfo, Status> {
    let peer = request
        .extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(status::no_peer)?;
    if !allowed.contains(&peer.identity.kind()) {
        return Err(status::wrong_role(&peer.identity.to_string(), allowed));
    }
    Ok(peer)
}

const MEMBERS: &[RoleKind] = &[RoleKind::Node, RoleKind::Client];
const OPERATORS: &[RoleKind] = &[RoleKind::Operator];

/// Serves gRPC on one connection of the node's accept loop until it ends:
/// HTTP/2 only (the port's TLS offers `h2` alone), each request carrying the
/// connection's verified peer ([`PeerInfo`]), every stream a tracked task of
/// the node. A connection without a client certificate is not served (the
/// port's TLS requires one).
pub async fn serve_connection(
    conn: crate::net::edge::Conn,
    routes: tonic::service::Routes,
    limits: &crate::base::config::Limits,
    tasks: tokio_util::task::TaskTracker,
) {
    use tower::ServiceExt;
    let Some(peer) = conn.peer() else {
        return;
    };
    let service = tower::ServiceBuilder::new()
        .layer(DecodeLimitLayer)
        .service(routes);
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            service.clone().oneshot(req.map(tonic::body::Body::new))
        });
    let mut http2 = hyper::server::conn::http2::Builder::new(crate::net::edge::Executor(tasks));
    http2
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    // The connection ends when the node closes it (a revocation, its own
    // certificate refused, shutdown): its reads and writes fail then.
    if let Err(e) = http2
        .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
        .await
    {
        tracing::debug!(error = %e, "gRPC connection ended");
    }
}

/// All services of a node: Bulletins, Admin, gRPC health and reflection.
pub async fn router(
    state: Arc<NodeState>,
) -> Result<tonic::service::Routes, tonic_reflection::server::Error> {
    let max = state.config.limits.max_message_bytes;
    let bulletins = pb::bulletins_server::BulletinsServer::new(BulletinsService {
        state: state.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(state.config.limits.max_response_bytes());
    let admin = pb::admin_server::AdminServer::new(AdminService {
        state: state.clone(),
    });
    let transparency =
        pb::transparency_server::TransparencyServer::new(transparency::TransparencyService {
            state: state.clone(),
        });
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::bulletins_server::BulletinsServer<BulletinsService>>()
        .await;
    health_reporter
        .set_serving::<pb::admin_server::AdminServer<AdminService>>()
        .await;
    health_reporter
        .set_serving::<pb::transparency_server::TransparencyServer<transparency::TransparencyService>>()
        .await;
    // Reflection in both versions: v1, and v1alpha, which older tools still
    // speak only (grpcurl 1.8, grpcio-reflection's client).
    // Each lists both reflection services (and each builder adds its own).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::base::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok(tonic::service::Routes::new(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(bulletins)
        .add_service(admin)
        .add_service(transparency))
}
