//! Who may read a bulletin: TLP 2.0 and the audience. Every read path (Get,
//! List, Subscribe replay and live, relay to a peer node, TAXII, the MISP
//! feed) asks [`Policy::may_read`], through the reader's view (`view`).
//!
//! | label | may read |
//! |---|---|
//! | `TLP:CLEAR`, `TLP:GREEN` | every member of the alliance |
//! | `TLP:AMBER` | the audience (members, and groups resolved from this node's config); every member when the audience is empty |
//! | `TLP:AMBER+STRICT` | the audience only |
//! | `TLP:RED` | the members named in `audience.members` only; groups do not count, since each node resolves groups from its own config |
//!
//! The publishing member may always read its own bulletins. Operators belong to
//! no member and read no bulletins.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::bulletin::Tlp;

/// What policy needs to know about a bulletin.
#[derive(Debug, Clone, Copy)]
pub struct Marking<'a> {
    pub publisher: &'a str,
    pub tlp: Tlp,
    pub audience_members: &'a [String],
    pub audience_groups: &'a [String],
}

/// The node's policy: its group definitions.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Shared: every reader's view holds the policy.
    groups: std::sync::Arc<BTreeMap<String, BTreeSet<String>>>,
}

impl Policy {
    pub fn new(groups: &BTreeMap<String, Vec<String>>) -> Policy {
        Policy {
            groups: std::sync::Arc::new(
                groups
                    .iter()
                    .map(|(g, ms)| (g.clone(), ms.iter().cloned().collect()))
                    .collect(),
            ),
        }
    }

    fn in_groups(&self, member: &str, groups: &[String]) -> bool {
        groups
            .iter()
            .any(|g| self.groups.get(g).is_some_and(|ms| ms.contains(member)))
    }

    /// May `reader` read a stored bulletin? An unknown TLP code is a refusal.
    /// The audience groups among `groups` that this node does not define
    /// (nobody here reads a bulletin through them).
    pub fn unknown_groups<'g>(&self, groups: &'g [String]) -> Vec<&'g str> {
        groups
            .iter()
            .filter(|g| !self.groups.contains_key(g.as_str()))
            .map(String::as_str)
            .collect()
    }

    pub fn may_read_meta(&self, reader: &str, meta: &crate::domain::bulletin::Meta) -> bool {
        Tlp::from_code(meta.tlp).is_some_and(|tlp| {
            self.may_read(
                reader,
                &Marking {
                    publisher: &meta.publisher,
                    tlp,
                    audience_members: &meta.audience_members,
                    audience_groups: &meta.audience_groups,
                },
            )
        })
    }

    /// May `reader` (a member id) read a bulletin with this marking?
    pub fn may_read(&self, reader: &str, m: &Marking<'_>) -> bool {
        if reader == m.publisher {
            return true;
        }
        let named = m.audience_members.iter().any(|a| a == reader);
        match m.tlp {
            Tlp::Clear | Tlp::Green => true,
            Tlp::Amber => {
                (m.audience_members.is_empty() && m.audience_groups.is_empty())
                    || named
                    || self.in_groups(reader, m.audience_groups)
            }
            Tlp::AmberStrict => named || self.in_groups(reader, m.audience_groups),
            Tlp::Red => named,
        }
    }
}

impl<'a> Marking<'a> {
    /// The marking of a stored bulletin; `None` for an unknown TLP code.
    pub fn of(meta: &'a crate::domain::bulletin::Meta) -> Option<Marking<'a>> {
        Some(Marking {
            publisher: &meta.publisher,
            tlp: Tlp::from_code(meta.tlp)?,
            audience_members: &meta.audience_members,
            audience_groups: &meta.audience_groups,
        })
    }

    /// Readable by every member of the alliance.
    fn everyone(&self) -> bool {
        match self.tlp {
            Tlp::Clear | Tlp::Green => true,
            Tlp::Amber => self.audience_members.is_empty() && self.audience_groups.is_empty(),
            Tlp::AmberStrict | Tlp::Red => false,
        }
    }
}

/// Can everyone who may read a bulletin marked `old` also read one marked
/// `new`, on every node? A retraction or revision must reach every reader of
/// the original, or someone keeps a stale copy unaware. Groups are resolved
/// by each node from its own config, so this asks it of the markings
/// themselves: `new` is readable by everyone, or it names at least the
/// members and groups `old` names (groups only count where `new`'s TLP lets
/// them: not under `TLP:RED`).
pub fn reaches_every_reader(new: &Marking<'_>, old: &Marking<'_>) -> bool {
    if new.everyone() {
        return true;
    }
    if old.everyone() {
        return false;
    }
    let has_all = |have: &[String], want: &[String]| want.iter().all(|w| have.contains(w));
    let old_groups: &[String] = match old.tlp {
        Tlp::Red => &[],
        _ => old.audience_groups,
    };
    has_all(new.audience_members, old.audience_members)
        && (old_groups.is_empty()
            || (new.tlp != Tlp::Red && has_all(new.audience_groups, old_groups)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m<'a>(tlp: Tlp, members: &'a [String], groups: &'a [String]) -> Marking<'a> {
        Marking {
            publisher: "uk.ncsc",
            tlp,
            audience_members: members,
            audience_groups: groups,
        }
    }

    #[test]
    fn a_revision_reaches_every_reader_of_the_original() {
        let none: Vec<String> = vec![];
        let us = vec!["us.cisa".to_string()];
        let us_fr = vec!["us.cisa".to_string(), "fr.anssi".to_string()];
        let eu = vec!["eu".to_string()];
        let ok = |new: Marking<'_>, old: Marking<'_>| reaches_every_reader(&new, &old);
        // Wider or equal: accepted.
        assert!(ok(m(Tlp::Clear, &none, &none), m(Tlp::Red, &us, &none)));
        assert!(ok(
            m(Tlp::Amber, &none, &none),
            m(Tlp::AmberStrict, &us, &eu)
        ));
        assert!(ok(m(Tlp::Red, &us, &none), m(Tlp::Red, &us, &none)));
        assert!(ok(m(Tlp::Red, &us_fr, &none), m(Tlp::Red, &us, &none)));
        assert!(ok(m(Tlp::Amber, &us, &eu), m(Tlp::AmberStrict, &us, &eu)));
        assert!(ok(m(Tlp::AmberStrict, &us, &none), m(Tlp::Red, &us, &eu)));
        // The same readers under another label.
        assert!(ok(m(Tlp::Red, &us_fr, &none), m(Tlp::Amber, &us_fr, &none)));
        // Narrower: refused.
        assert!(!ok(m(Tlp::Amber, &us, &none), m(Tlp::Green, &none, &none)));
        assert!(!ok(m(Tlp::Red, &us, &none), m(Tlp::Red, &us_fr, &none)));
        assert!(!ok(
            m(Tlp::AmberStrict, &us, &none),
            m(Tlp::Amber, &us, &eu)
        ));
        // Groups do not open TLP:RED, so a RED revision of a group's bulletin narrows it.
        assert!(!ok(m(Tlp::Red, &us, &eu), m(Tlp::Amber, &us, &eu)));
    }

    #[test]
    fn matrix() {
        let mut groups = BTreeMap::new();
        groups.insert("eu".to_string(), vec!["fr.anssi".to_string()]);
        let p = Policy::new(&groups);
        let none: Vec<String> = vec![];
        let us = vec!["us.cisa".to_string()];
        let eu = vec!["eu".to_string()];
        for tlp in Tlp::ALL {
            assert!(
                p.may_read("uk.ncsc", &m(tlp, &none, &none)),
                "publisher reads its own {tlp:?}"
            );
        }
        assert!(p.may_read("fr.anssi", &m(Tlp::Green, &none, &none)));
        assert!(p.may_read("fr.anssi", &m(Tlp::Amber, &none, &none)));
        assert!(!p.may_read("fr.anssi", &m(Tlp::Amber, &us, &none)));
        assert!(p.may_read("fr.anssi", &m(Tlp::Amber, &us, &eu)));
        assert!(!p.may_read("fr.anssi", &m(Tlp::AmberStrict, &none, &none)));
        assert!(p.may_read("fr.anssi", &m(Tlp::AmberStrict, &none, &eu)));
        assert!(p.may_read("us.cisa", &m(Tlp::Red, &us, &none)));
        assert!(
            !p.may_read("fr.anssi", &m(Tlp::Red, &us, &eu)),
            "groups never open TLP:RED"
        );
    }
}
