//! Generated protobuf and gRPC code for `beacon.v1` (from `proto/`).
//!
//! Only the gRPC edge (`service`, `client`, `federation`) and the conversion
//! functions next to the domain types use these types.

#![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]

pub mod v1 {
    tonic::include_proto!("beacon.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("beacon_descriptor");
