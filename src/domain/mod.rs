//! The bulletin and who may read it (layers 3 and 4): the signed bulletin
//! and its envelope, TLP and audience policy, reader filters.

pub mod bulletin;
pub mod hpke;
pub(crate) mod filter;
pub(crate) mod policy;
pub(crate) mod tokens;
