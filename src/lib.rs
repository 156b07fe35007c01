//! Beacon: signed threat bulletins between allied agencies, over mutual TLS.
//!
//! # Layout
//! - [`identity`]: SPIFFE IDs parsed into typed identities (node, client, operator).
//! - [`trust`]: the trust bundle (CAs with member scopes, CRLs) and the one
//!   routine that decides whether a certificate chain is an accepted identity.
//!   [`trust::tls`]: rustls configurations whose verifiers call it.
//! - [`pki`]: the operator's CA (`beacon ca`), built on rcgen.
//! - [`config`]: the daemon's `beacon.toml`.
//! - [`bulletin`]: bulletins, envelopes, signing and verification; [`bulletin::codec`]
//!   for the signed payload and the envelope; [`bulletin::Meta`], what policy,
//!   filters and the store work from.
//! - [`policy`], [`filter`], [`metrics`]: who may read, what a reader asked for, counters.
//! - [`store`]: the durable, group-committed log.
//! - [`ingest`]: the one admission path (size, canonical bytes, verification,
//!   origin and policy for relays) of publishes and relays.
//! - [`broker`]: subscriptions (replay that has caught up).
//! - [`net`]: the accept loop, connection wrapper and registry, reloads.
//! - [`state`]: what the services share ([`state::NodeState`]).
//! - [`node`]: `run(config, listener, shutdown)`: compose, serve, drain, close.
//! - [`api`]: the tonic services, the API's translations ([`api::convert`]) and
//!   the one mapping of errors to `tonic::Status` ([`api::status`]).
//! - [`ops`]: the operations port (metrics, health).
//! - [`client`]: dialling a node with a member certificate.
//! - [`federation`]: peer links: a durable subscription on each peer, relays verified again.
//! - [`dev`]: the embedded default (`beacon dev`): throwaway PKI and a local node.
//! - [`proto`]: generated code; the codec of what is signed and the gRPC edge use it.
//!
//! See `ARCHITECTURE.md` for the dependency direction and the invariants.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod bench;
pub mod broker;
pub mod bulletin;
pub mod client;
pub mod config;
pub mod dev;
pub mod document;
pub mod federation;
pub mod filter;
pub mod fuzzing;
pub mod identity;
pub mod ingest;
pub mod metrics;
pub mod net;
pub mod node;
pub mod ops;
pub mod pki;
pub mod policy;
pub mod proto;
pub mod state;
pub mod store;
pub mod trust;

/// The version reported by `Admin.Status` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
