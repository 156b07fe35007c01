//! The `beacon` binary: a thin shell over the library (see `cli`).

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod cli;

/// mimalloc: the node allocates and frees many short buffers per publish
/// (TLS records, HTTP/2 frames, protobuf); glibc malloc cost ~15% of the
/// daemon's time under load in `beacon bench publish`. Built without
/// transparent huge pages (`no_thp`): with them, every thread's heap held
/// 2 MiB pages it barely used, and 1,000 open subscriptions showed as 97 MB
/// of RSS instead of 36 MB, for no measurable gain in throughput.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(cli::main());
}
