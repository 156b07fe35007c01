//! Beacon: signed threat bulletins between allied agencies, over mutual TLS.
//!
//! # Crate map, in the order data flows
//! The folders are named after their layers; each module uses only modules
//! of lower layers (`tests/it/layering.rs` checks it; `ARCHITECTURE.md` has the
//! file-by-file map, layer by layer).
//!
//! - [`base`]: [`base::identity`] (SPIFFE identities), [`base::proto`] (the
//!   generated `beacon.v1` code), [`base::disk`] (durable file steps),
//!   [`base::config`] (`beacon.toml`, typed when read), [`base::metrics`].
//! - [`trust`]: the trust bundle and the one routine that decides whether a
//!   chain is an accepted identity; [`trust::tls`] (rustls configurations and
//!   what a dialler requires of a node); [`trust::state`] (the trust in
//!   force).
//! - [`domain`]: [`domain::bulletin`] (bulletins and envelopes, signing and
//!   verification, [`domain::bulletin::codec`], [`domain::bulletin::Meta`]),
//!   `domain::policy` (who may read), `domain::filter` (what a reader asked
//!   for), `domain::tokens` (the API token register).
//! - [`store`]: the durable, group-committed log, which knows bulletins but
//!   not their forms.
//! - [`broker`]: [`broker::ingest`] (everything entering the log: size,
//!   canonical bytes, verification, origin and policy for relays),
//!   `broker::view` (the log as one reader may see it: every read asks policy
//!   there), `broker::subscription` (replay that has caught up).
//! - [`interop`]: the forms of a bulletin: [`interop::pattern`],
//!   [`interop::stix`], `interop::misp`, [`interop::document`], and the
//!   TAXII 2.1 server, `interop::taxii`.
//! - [`net`]: [`net::client`] (dialling a node; `BeaconReader`,
//!   `BeaconClient`) and `net::edge` (one accept loop for every port,
//!   connection registries, reloads).
//! - [`node`]: `node::federation` (peer links), `node::state` (what the
//!   services share), `api` (the gRPC services, translations, the one
//!   mapping of errors to `tonic::Status`), `node::ops` (metrics and health),
//!   and [`node::serve`]: **the node's entry point**,
//!   [`node::serve::run`]`(config, listener, shutdown)`.
//! - [`tools`]: [`tools::pki`] (the operator's CA, `beacon ca`),
//!   [`tools::dev`] (`beacon dev`), [`tools::bench`] (`beacon bench`),
//!   [`tools::fuzzing`] (fuzz target bodies); the binary's `cli` sits on top.
//!
//! Modules not linked above are internal (`pub(crate)`), so the compiler
//! reports what nothing uses.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub(crate) mod api;
pub mod base;
pub mod broker;
pub mod domain;
pub mod interop;
pub mod net;
pub mod node;
pub mod store;
pub mod tlog;
pub mod tools;
pub mod trust;

/// The version reported by `Admin.Status` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
