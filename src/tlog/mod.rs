//! Transparency: the Merkle tree over the log and the signed notes that
//! commit to it (checkpoints, cosignatures).

pub mod merkle;
pub mod note;
pub mod receipt;
