//! The node (layers 9 to 13): its transparency log, peer links, the state its services share,
//! the operations port, and `serve`, which composes and runs it all.

pub(crate) mod duty;
pub mod evidence;
pub(crate) mod federation;
pub(crate) mod ops;
pub mod serve;
pub(crate) mod state;
pub mod transparency;
pub(crate) mod witness;
