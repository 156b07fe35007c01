//! The bulletin and who may read it (layers 3 and 4): the signed bulletin
//! and its envelope, TLP and audience policy, reader filters.

pub mod bulletin;
pub(crate) mod filter;
pub mod hpke;
pub mod keys;
pub(crate) mod policy;
pub mod sealed;
pub(crate) mod tokens;
