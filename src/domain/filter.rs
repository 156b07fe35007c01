//! What a reader asks for: kinds, minimum severity, TLP labels, topics,
//! publishers and a creation-time window. Empty lists mean "any". Filters
//! narrow what `policy` allows; they never widen it.

use std::time::SystemTime;

use crate::domain::bulletin::Meta;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Wire numbers of accepted kinds.
    pub kinds: Vec<u8>,
    /// Wire number of the lowest severity accepted (0: any).
    pub min_severity: u8,
    /// Wire numbers of accepted TLP labels.
    pub tlp: Vec<u8>,
    /// A bulletin matches when it has at least one of these topics.
    pub topics: Vec<String>,
    pub publishers: Vec<String>,
    pub created_after: Option<SystemTime>,
    pub created_before: Option<SystemTime>,
}

impl Filter {
    pub fn matches(&self, m: &Meta) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&m.kind))
            && m.severity >= self.min_severity
            && (self.tlp.is_empty() || self.tlp.contains(&m.tlp))
            && (self.topics.is_empty() || m.topics.iter().any(|t| self.topics.contains(t)))
            && (self.publishers.is_empty() || self.publishers.contains(&m.publisher))
            && self
                .created_after
                .is_none_or(|t| m.created_at.is_some_and(|c| c >= t))
            && self
                .created_before
                .is_none_or(|t| m.created_at.is_some_and(|c| c < t))
    }
}
