//! Beacon's tests, one binary (one link of the crate instead of one per
//! file): each module tests a boundary a user sees (gRPC, HTTP, the CLI,
//! files on disk) with real daemons from the one harness in `common`.
//! Run one file's tests with `cargo test --test it <module>::`.

mod common;

mod cli_ca;
mod cli_client;
mod client_trust;
mod config_examples;
mod corruption;
mod crash;
mod federation;
mod fuzz_corpus;
mod grpcurl_interop;
mod handshake;
mod hostile;
mod identity;
mod layering;
mod metrics;
mod operations;
mod power_loss;
mod publish;
mod python_interop;
mod retention;
mod revisions;
mod sealed;
mod shared_log;
mod stix_interop;
mod store_format;
mod store_model;
mod subscribe;
mod taxii_interop;
mod transparency;
