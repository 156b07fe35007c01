//! Beacon: signed threat bulletins between allied agencies, over mutual TLS.
//!
//! # Crate map, in the order data flows
//! Each module uses only modules above it in this list (`tests/layering.rs`
//! checks it; `ARCHITECTURE.md` has the file-by-file map).
//!
//! - [`identity`], [`proto`]: SPIFFE identities; the generated `beacon.v1` code;
//!   [`pattern`]: the STIX patterning grammar.
//! - [`config`]: the daemon's `beacon.toml`, typed when read.
//! - [`trust`]: the trust bundle and the one routine that decides whether a
//!   chain is an accepted identity; [`trust::tls`] (rustls configurations and
//!   what a dialler requires of a node); [`trust::state`] (the trust in force).
//! - [`bulletin`]: bulletins and envelopes, signing and verification,
//!   [`bulletin::codec`] (what is signed and stored), [`bulletin::Meta`];
//!   [`pki`]: the operator's CA (`beacon ca`).
//! - `policy`, `filter`, `metrics`: who may read, what a reader asked for,
//!   counters; [`document`]: bulletins as JSON/YAML, envelopes as DSSE JSON;
//!   [`stix`]: bulletins as STIX 2.1 objects (out and in); `misp`: as a MISP
//!   feed; `tokens`: the API token register.
//! - [`store`]: the durable, group-committed log.
//! - `ingest` (everything entering the log: size, canonical bytes,
//!   verification, origin and policy for relays) and `broker` (subscriptions:
//!   replay that has caught up).
//! - [`client`] (dialling a node; `BeaconClient`) and `net` (the accept loop,
//!   connection registry, reloads).
//! - `federation`: peer links.
//! - `state`: what the services share.
//! - `api` (the gRPC services, translations, the one mapping of errors to
//!   `tonic::Status`), `taxii` (TAXII 2.1 over HTTPS) and `ops` (metrics and
//!   health).
//! - [`node`]: **the node's entry point**, [`node::run`]`(config, listener,
//!   shutdown)`.
//! - [`dev`] (`beacon dev`), [`bench`](mod@bench) (`beacon bench`), [`fuzzing`] (fuzz
//!   target bodies); the binary's `cli` sits on top.
//!
//! Modules not linked above are internal (`pub(crate)`), so the compiler
//! reports what nothing uses.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub(crate) mod api;
pub mod bench;
pub(crate) mod broker;
pub mod bulletin;
pub mod client;
pub mod config;
pub mod dev;
pub mod disk;
pub mod document;
pub(crate) mod federation;
pub(crate) mod filter;
pub mod fuzzing;
pub mod identity;
pub mod ingest;
pub mod metrics;
pub(crate) mod misp;
pub(crate) mod net;
pub mod node;
pub(crate) mod ops;
pub mod pattern;
pub mod pki;
pub(crate) mod policy;
pub mod proto;
pub(crate) mod state;
pub mod stix;
pub mod store;
pub(crate) mod taxii;
pub(crate) mod tokens;
pub mod trust;
pub(crate) mod view;

/// The version reported by `Admin.Status` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
