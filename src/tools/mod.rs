//! What operators and developers run beside a node: the CA directory
//! (`pki`, layer 3), `beacon dev`, the benchmarks, the fuzz targets
//! (layer 13).

pub mod bench;
pub mod dev;
pub mod fuzzing;
pub mod pki;
