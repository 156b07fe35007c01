//! The node (layers 9 to 12): peer links, the state its services share,
//! the operations port, and `serve`, which composes and runs it all.

pub(crate) mod federation;
pub(crate) mod ops;
pub mod serve;
pub(crate) mod state;
