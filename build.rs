//! Generates the gRPC code from `proto/` with a vendored `protoc`, so building
//! Beacon needs no system package.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // The build script is single-threaded; the variable only tells
    // tonic-prost-build which protoc to run.
    std::env::set_var("PROTOC", protoc);
    let include = protoc_bin_vendored::include_path()?
        .to_string_lossy()
        .into_owned();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("beacon_descriptor.bin"))
        .build_server(true)
        .build_client(true)
        // Written by hand (src/base/proto.rs): the envelope is served as the
        // stored bytes, with the same encoding on the wire.
        .extern_path(
            ".beacon.v1.Delivery",
            "crate::base::proto::delivery::Delivery",
        )
        .compile_protos(
            &[
                "proto/beacon/v1/bulletin.proto",
                "proto/beacon/v1/service.proto",
            ],
            &["proto", include.as_str()],
        )?;
    Ok(())
}
