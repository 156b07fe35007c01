//! The log's ways in and out: the one admission path (layer 6), each
//! reader's view of the log (layer 6), and subscriptions (layer 8).

pub mod ingest;
pub(crate) mod subscription;
pub(crate) mod view;
