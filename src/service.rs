//! The gRPC edge of the node: tonic service implementations.
//!
//! Every handler starts by taking the caller's verified identity from the
//! connection ([`PeerInfo`]) and checking its role. Errors of the other modules
//! become `tonic::Status` in one place, [`status`].

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status, Streaming};

use crate::identity::RoleKind;
use crate::proto::v1 as pb;
use crate::server::{NodeState, PeerInfo, ServerError};

/// The one mapping of module errors to gRPC statuses.
pub mod status {
    use tonic::Status;

    use crate::identity::RoleKind;

    pub fn no_peer() -> Status {
        Status::unauthenticated("no verified client certificate on this connection")
    }

    pub fn wrong_role(who: &str, allowed: &[RoleKind]) -> Status {
        let allowed: Vec<String> = allowed.iter().map(|k| k.to_string()).collect();
        Status::permission_denied(format!(
            "{who} may not call this; allowed: {}",
            allowed.join(", ")
        ))
    }

    pub fn unimplemented(what: &str) -> Status {
        Status::unimplemented(format!("{what} is not implemented by this node yet"))
    }
}

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

/// `beacon.v1.Bulletins`.
pub struct BulletinsService {
    #[allow(dead_code)]
    state: Arc<NodeState>,
}

#[tonic::async_trait]
impl pb::bulletins_server::Bulletins for BulletinsService {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        caller(&request, MEMBERS)?;
        Err(status::unimplemented("Publish"))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        caller(&request, MEMBERS)?;
        Err(status::unimplemented("Get"))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        caller(&request, MEMBERS)?;
        Err(status::unimplemented("List"))
    }

    type SubscribeStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        caller(&request, MEMBERS)?;
        Err(status::unimplemented("Subscribe"))
    }
}

/// `beacon.v1.Admin`, for operators.
pub struct AdminService {
    state: Arc<NodeState>,
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        caller(&request, OPERATORS)?;
        let s = &self.state;
        Ok(Response::new(pb::StatusResponse {
            node: s.identity.to_string(),
            version: crate::VERSION.to_owned(),
            started_at: Some(timestamp(s.started_at)),
            head: 0,
            connections: u32::try_from(s.connections.count()).unwrap_or(u32::MAX),
            store: None,
            subscriptions: Vec::new(),
            peers: Vec::new(),
            revoked_certificates: u32::try_from(s.bundle().revoked_count()).unwrap_or(u32::MAX),
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        caller(&request, OPERATORS)?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: Vec::new(),
        }))
    }
}

/// All services of a node: Bulletins, Admin, gRPC health and reflection.
pub async fn router(state: Arc<NodeState>) -> Result<tonic::service::Routes, ServerError> {
    let max = state.config.limits.max_message_bytes;
    let bulletins = pb::bulletins_server::BulletinsServer::new(BulletinsService {
        state: state.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max * 2);
    let admin = pb::admin_server::AdminServer::new(AdminService {
        state: state.clone(),
    });
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::bulletins_server::BulletinsServer<BulletinsService>>()
        .await;
    health_reporter
        .set_serving::<pb::admin_server::AdminServer<AdminService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    Ok(tonic::service::Routes::new(health)
        .add_service(reflection)
        .add_service(bulletins)
        .add_service(admin))
}
