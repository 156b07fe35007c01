//! The network edge (layer 8): dialling a node (`client`) and accepting
//! on every port (`edge`).

pub mod client;
pub(crate) mod edge;
