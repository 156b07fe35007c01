//! Bulletins in the forms allies' tools read (layers 0 and 7): the STIX
//! patterning grammar, STIX 2.1, MISP, documents (JSON, YAML, DSSE), and the
//! TAXII 2.1 server (layer 11).

pub mod document;
pub(crate) mod misp;
pub mod pattern;
pub mod stix;
pub(crate) mod taxii;
