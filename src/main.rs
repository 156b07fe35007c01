//! The `beacon` binary: a thin shell over the library (see `cli`).

#![forbid(unsafe_code)]

mod cli;

fn main() {
    std::process::exit(cli::main());
}
