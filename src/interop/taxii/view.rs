//! A collection's objects as one reader sees them: the log, read in order,
//! each bulletin the reader may read turned into its STIX group, each
//! object dated `accepted_at + its place in the group` (microseconds; the
//! store leaves that room, so dates are distinct and increasing), filtered
//! and cut into pages that never exceed `limit`.
//!
//! `next` is stateless: the position (sequence and place in its group) of
//! the last object a page held. A page ends before a group that would not
//! fit whole, unless the group alone is larger than `limit`, so pages are
//! self-contained bundles wherever they can be.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::broker::view::{Found, Step, View};
use crate::domain::bulletin::{codec, Relation};
use crate::interop::stix::{self, Profile};
use crate::node::state::NodeState;
use crate::store::StoreError;

/// Records examined at most per request: a reader who may read little of a
/// large log gets a short page with `more` and a `next`, not a long wait.
const SCAN_BUDGET: u64 = 50_000;

/// Which versions `match[version]` asks for: any of its values (a list,
/// as TAXII 2.1 §3.4.1 allows: `first,last`, `first,<timestamp>,last`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versions {
    /// The earliest version the reader may see.
    pub first: bool,
    pub last: bool,
    pub all: bool,
    /// Versions whose `modified` (or `created`) is one of these.
    pub at: Vec<String>,
}

impl Versions {
    /// What a request without `match[version]` gets.
    pub fn last() -> Versions {
        Versions {
            last: true,
            ..Versions::default()
        }
    }

    pub fn all() -> Versions {
        Versions {
            all: true,
            ..Versions::default()
        }
    }
}

/// A request's filters (`match[...]`).
#[derive(Debug, Clone)]
pub struct Query {
    pub ids: Vec<String>,
    pub types: Vec<String>,
    pub versions: Versions,
    pub spec_versions: Vec<String>,
    /// Strictly after this time (µs since the epoch).
    pub added_after: Option<u128>,
    /// Strictly after this position.
    pub next: Option<(u64, u32)>,
    pub limit: usize,
}

/// One object of a page.
#[derive(Debug, Clone)]
pub struct Item {
    pub object: Value,
    /// µs since the epoch.
    pub date_added: u128,
    pub position: (u64, u32),
}

#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<Item>,
    pub more: bool,
    /// Where the next page starts (after this position), when `more`.
    pub next: Option<(u64, u32)>,
}

pub fn micros(t: SystemTime) -> u128 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

pub fn from_micros(us: u128) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
}

/// `next` as the client sees it.
pub fn encode_next(p: (u64, u32)) -> String {
    format!("{}-{}", p.0, p.1)
}

pub fn decode_next(s: &str) -> Option<(u64, u32)> {
    let (a, b) = s.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The version string of an object: `modified`, or `created` for objects
/// that have none (marking definitions).
pub fn version_of(o: &Value) -> String {
    o.get("modified")
        .or_else(|| o.get("created"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The page of `query` for `member` in a collection of `profile`.
pub fn page(state: &NodeState, member: &str, profile: Profile, query: &Query) -> Page {
    let store = &state.store;
    let head = store.head();
    let mut start = match (query.next, query.added_after) {
        (Some((seq, _)), _) => seq,
        (None, Some(after)) => {
            // Groups start at most the largest span before their objects.
            let from = after.saturating_sub(u128::from(stix::MAX_SPAN));
            store.first_seq_at_or_after(from_micros(from)).unwrap_or(1)
        }
        (None, None) => 1,
    };
    // A report's id is its first bulletin's: it cannot appear earlier.
    if let [only] = query.ids.as_slice() {
        if let Some(uuid) = only.strip_prefix("report--") {
            if let Some(first) = store
                .lookup_id(uuid)
                .ok()
                .and_then(|v| v.iter().map(|(_, s)| *s).min())
            {
                start = start.max(first);
            }
        }
    }
    let mut page = Page::default();
    let start = start.max(1);
    if start > head {
        return page;
    }
    let stop = head.min(start.saturating_add(SCAN_BUDGET - 1));
    // Everything the member may read, expired and replaced bulletins
    // included (a report's versions are objects of their own).
    let view = View::new(store.clone(), state.policy.clone(), member);
    let Ok(scan) = view.scan(start, stop) else {
        return page;
    };
    let mut last_examined = start.saturating_sub(1);
    // An object version appears once per page: shared objects (a member's
    // identity, a marking definition) head every group that refers to
    // them, and a page keeps the first.
    let mut in_page: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
    // Asked only for objects that have one version (identities, marking
    // definitions): the first of each is the answer.
    let single_version = !query.ids.is_empty()
        && query
            .ids
            .iter()
            .all(|i| i.starts_with("identity--") || i.starts_with("marking-definition--"));
    for step in scan {
        let seen = match step {
            Ok(Step::Seen(seen)) => seen,
            Ok(Step::Passed(seq)) => {
                last_examined = seq;
                continue;
            }
            // Refused as it was read (logged and counted by the store):
            // passed over, so that paging goes on past it.
            Err(StoreError::Corrupt { seq, .. }) => {
                last_examined = seq;
                continue;
            }
            Err(_) => break,
        };
        let rec = seen.record();
        last_examined = rec.seq;
        let superseded = seen.replaced_by().is_some();
        let Some(group) = group_of(&view, rec, profile) else {
            continue;
        };
        let base = micros(rec.accepted_at);
        let mut kept = Vec::new();
        for (j, object) in group.into_iter().enumerate() {
            let j = j as u32;
            let position = (rec.seq, j);
            if query.next.is_some_and(|n| position <= n) {
                continue;
            }
            let date_added = base + u128::from(j);
            if query.added_after.is_some_and(|a| date_added <= a) {
                continue;
            }
            if !matches(query, &object, superseded) {
                continue;
            }
            // A page that ends before this group returns at once, so the
            // keys of a group left out never hide anything.
            let key = (
                object
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                version_of(&object),
            );
            if !in_page.insert(key) {
                continue;
            }
            kept.push(Item {
                object,
                date_added,
                position,
            });
        }
        if kept.is_empty() {
            continue;
        }
        let room = query.limit - page.items.len();
        if kept.len() > room {
            if !page.items.is_empty() {
                // The group does not fit whole: it starts the next page.
                page.more = true;
                page.next = page.items.last().map(|i| i.position);
                return page;
            }
            // Larger than a page on its own: cut it.
            kept.truncate(room);
            page.items = kept;
            page.more = true;
            page.next = page.items.last().map(|i| i.position);
            return page;
        }
        page.items.extend(kept);
        if single_version
            && query
                .ids
                .iter()
                .all(|id| in_page.iter().any(|(k, _)| k == id))
        {
            return page;
        }
        if page.items.len() == query.limit {
            page.more = rec.seq < head;
            page.next = page.more.then_some((rec.seq, u32::MAX));
            return page;
        }
    }
    if last_examined < head {
        // The scan budget ran out before the log did.
        page.more = true;
        page.next = Some((last_examined, u32::MAX));
    }
    page
}

/// The STIX group of a stored record for `member`, with its version chain
/// resolved as far as `member` may see it.
fn group_of(view: &View, rec: &crate::store::Record, profile: Profile) -> Option<Vec<Value>> {
    // The envelope was verified when it was accepted, and its digest was
    // checked as it was read (`Store::served`): as on every gRPC path, it
    // is not verified again here. The signer is the identity its chain's
    // leaf names.
    let env = codec::decode_envelope(&rec.envelope).ok()?;
    // A sealed bulletin has no STIX form a node could make: it is left out.
    if env.payload_type != crate::domain::bulletin::PAYLOAD_TYPE {
        return None;
    }
    let b = codec::decode_bulletin(&env.payload).ok()?;
    let signer = env
        .signatures
        .first()
        .and_then(|s| s.cert_chain.first())
        .and_then(|leaf| {
            crate::trust::identity_of(&rustls::pki_types::CertificateDer::from(leaf.as_slice()))
                .ok()
        })
        .map(|(id, _)| id.to_string())
        .unwrap_or_default();
    let ctx = stix::Context {
        root: root_of(view, &b),
        signer,
        envelope_sha256: rec.meta.digest.iter().map(|x| format!("{x:02x}")).collect(),
        origin_node: rec.meta.origin_node.clone(),
        origin_sequence: rec.meta.origin_seq,
        sequence: rec.seq,
        profile,
    };
    Some(stix::objects(&b, &ctx))
}

/// The first bulletin of `b`'s chain of versions that `member` may read,
/// as this node holds it. A revision reaches every reader of what it
/// replaces, so what a reader may see of a chain is its end: the walk back
/// stops before the first version hidden from it, and that version leaves
/// no trace (the report's id and `created` are those of the first version
/// it may see, which `match[version]=first` returns).
fn root_of(view: &View, b: &crate::domain::bulletin::Bulletin) -> (String, SystemTime) {
    let mut root = (b.id.clone(), b.created_at.unwrap_or(std::time::UNIX_EPOCH));
    let mut relation = b.relation.clone();
    for _ in 0..64 {
        let Some(Relation::Supersedes(id) | Relation::Retracts(id)) = relation.take() else {
            break;
        };
        let held = view
            .store()
            .lookup(&b.publisher, &id)
            .ok()
            .flatten()
            .map_or(Ok(Found::Absent), |(seq, _)| view.at(seq))
            .unwrap_or(Found::Absent);
        let prev = match held {
            Found::Hidden => break,
            Found::Absent => None,
            Found::Seen(seen) => codec::decode_envelope(&seen.record().envelope)
                .ok()
                .filter(|e| e.payload_type == crate::domain::bulletin::PAYLOAD_TYPE)
                .and_then(|e| codec::decode_bulletin(&e.payload).ok()),
        };
        match prev {
            Some(p) => {
                root = (p.id.clone(), p.created_at.unwrap_or(root.1));
                relation = p.relation;
            }
            None => {
                // Not held (pruned, or never relayed here): its id stands.
                root.0 = id;
                break;
            }
        }
    }
    root
}

fn matches(q: &Query, o: &Value, superseded: bool) -> bool {
    let kind = o.get("type").and_then(Value::as_str).unwrap_or_default();
    let id = o.get("id").and_then(Value::as_str).unwrap_or_default();
    if !q.types.is_empty() && !q.types.iter().any(|t| t == kind) {
        return false;
    }
    if !q.ids.is_empty() && !q.ids.iter().any(|i| i == id) {
        return false;
    }
    if !q.spec_versions.is_empty() && !q.spec_versions.iter().any(|v| v == "2.1") {
        return false;
    }
    // Only reports have more than one version (revisions, a retraction).
    let is_report = kind == "report";
    let v = &q.versions;
    v.all
        || (v.last && !(is_report && superseded))
        // A later version of a report was created before it was modified
        // (`created` is that of the first version the reader may see).
        || (v.first && !(is_report && o.get("created") != o.get("modified")))
        || v.at.iter().any(|t| t == &version_of(o))
}
