//! What everything stands on (layers 0 and 1): identities, the generated
//! protobuf code, durable file steps, counters, and the node's config.

pub mod config;
pub mod disk;
pub mod identity;
pub mod metrics;
pub mod proto;
