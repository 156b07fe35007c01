//! Out: a bulletin as its STIX group (what TAXII serves and `--stix`
//! writes), and bundles.

use std::time::SystemTime;

use serde_json::{json, Map, Value};

use super::{derived, identity, identity_id, marking, marking_id, pattern, timestamp, Profile};
use crate::domain::bulletin::{codec, Bulletin, Kind, Relation, Severity, Tlp};

/// What a view of a bulletin needs besides the bulletin: where it sits in
/// the log and its chain of versions.
#[derive(Debug, Clone)]
pub struct Context {
    /// The first bulletin of its revision chain: (id, created_at). The
    /// bulletin itself when it revises nothing.
    pub root: (String, SystemTime),
    /// The signer's identity (SPIFFE id), as verified.
    pub signer: String,
    /// SHA-256 of the stored envelope, hex.
    pub envelope_sha256: String,
    pub origin_node: String,
    pub origin_sequence: u64,
    /// This node's sequence.
    pub sequence: u64,
    pub profile: Profile,
}

fn report_types(kind: Option<Kind>) -> &'static str {
    match kind {
        Some(Kind::Disinformation) | Some(Kind::InfluenceOperation) => "campaign",
        Some(Kind::Espionage) => "threat-actor",
        Some(Kind::CyberIntrusion) => "intrusion-set",
        _ => "threat-report",
    }
}

/// The group of objects for `b` (see the module's introduction).
pub fn objects(b: &Bulletin, ctx: &Context) -> Vec<Value> {
    let tlp = codec::tlp_from_i32(b.tlp).unwrap_or(Tlp::Red);
    let kind = codec::kind_from_i32(b.kind);
    let severity = codec::severity_from_i32(b.severity);
    let created_at = b.created_at.unwrap_or(ctx.root.1);
    let marking_ref = marking_id(tlp, ctx.profile);
    let creator = identity_id(&b.publisher);
    let mut out = vec![identity(&b.publisher), marking(tlp, ctx.profile)];
    let mut refs = Vec::new();
    let mut unmapped = Vec::new();
    // Values taken from one STIX indicator (a pattern with OR) share its
    // id, and are served again as that one indicator.
    let mut served_ids: Vec<&str> = Vec::new();
    for (i, ind) in b.indicators.iter().enumerate() {
        let Some(first) = pattern(&ind.kind, &ind.value) else {
            unmapped.push(json!({"type": ind.kind, "value": ind.value}));
            continue;
        };
        let (id, pattern, shown) = if ind.stix_id.is_empty() {
            (
                derived("indicator", &format!("{}/{i}", b.id)),
                first,
                format!(
                    "{}: {}",
                    ind.kind,
                    ind.value.chars().take(200).collect::<String>()
                ),
            )
        } else {
            if served_ids.contains(&ind.stix_id.as_str()) {
                continue;
            }
            served_ids.push(&ind.stix_id);
            let same: Vec<&crate::domain::bulletin::Indicator> = b
                .indicators
                .iter()
                .filter(|x| x.stix_id == ind.stix_id)
                .collect();
            let patterns: Vec<String> = same
                .iter()
                .filter_map(|x| pattern(&x.kind, &x.value))
                .collect();
            let mut shown = format!(
                "{}: {}",
                ind.kind,
                ind.value.chars().take(200).collect::<String>()
            );
            if same.len() > 1 {
                shown.push_str(&format!(" (and {} more)", same.len() - 1));
            }
            (ind.stix_id.clone(), patterns.join(" OR "), shown)
        };
        let mut o = json!({
            "type": "indicator",
            "spec_version": "2.1",
            "id": id,
            "created": timestamp(created_at),
            "modified": timestamp(created_at),
            "created_by_ref": creator,
            "name": shown,
            "pattern": pattern,
            "pattern_type": "stix",
            "valid_from": timestamp(created_at),
            "indicator_types": ["malicious-activity"],
            "object_marking_refs": [marking_ref]
        });
        o["description"] = json!(if ind.description.is_empty() {
            format!("From Beacon bulletin {}: {}", b.id, b.title)
        } else {
            ind.description.clone()
        });
        if let Some(until) = b.expires_at {
            o["valid_until"] = json!(timestamp(until));
        }
        refs.push(id);
        out.push(o);
    }
    if refs.is_empty() {
        // A report must refer to something: its author, at least.
        refs.push(creator.clone());
    }
    let mut description = b.summary.clone();
    if !b.body.is_empty() {
        description.push_str("\n\n");
        description.push_str(&b.body);
    }
    let mut report = Map::new();
    let set = |m: &mut Map<String, Value>, k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    set(&mut report, "type", json!("report"));
    set(&mut report, "spec_version", json!("2.1"));
    set(&mut report, "id", json!(format!("report--{}", ctx.root.0)));
    set(&mut report, "created", json!(timestamp(ctx.root.1)));
    set(&mut report, "modified", json!(timestamp(created_at)));
    set(&mut report, "created_by_ref", json!(creator));
    set(&mut report, "name", json!(b.title));
    if !description.is_empty() {
        set(&mut report, "description", json!(description));
    }
    set(&mut report, "published", json!(timestamp(created_at)));
    set(&mut report, "report_types", json!([report_types(kind)]));
    set(&mut report, "object_refs", json!(refs));
    set(&mut report, "object_marking_refs", json!([marking_ref]));
    if !b.topics.is_empty() {
        set(&mut report, "labels", json!(b.topics));
    }
    if !b.references.is_empty() {
        let refs: Vec<Value> = b
            .references
            .iter()
            .map(|r| {
                let mut e = json!({
                    "source_name": if r.description.is_empty() { "beacon-reference" } else { r.description.as_str() },
                    "url": r.url
                });
                if !r.external_id.is_empty() {
                    e["external_id"] = json!(r.external_id);
                }
                e
            })
            .collect();
        set(&mut report, "external_references", json!(refs));
    }
    if matches!(b.relation, Some(Relation::Retracts(_))) {
        set(&mut report, "revoked", json!(true));
    }
    set(
        &mut report,
        "x_beacon_kind",
        json!(kind.map(Kind::name).unwrap_or("unknown")),
    );
    set(
        &mut report,
        "x_beacon_severity",
        json!(severity.map(Severity::name).unwrap_or("unknown")),
    );
    set(&mut report, "x_beacon_tlp", json!(tlp.label()));
    set(
        &mut report,
        "x_beacon_audience",
        json!({"members": b.audience.members, "groups": b.audience.groups}),
    );
    set(&mut report, "x_beacon_bulletin_id", json!(b.id));
    set(&mut report, "x_beacon_signer", json!(ctx.signer));
    if !b.submitted_by.is_empty() {
        set(&mut report, "x_beacon_submitted_by", json!(b.submitted_by));
    }
    set(
        &mut report,
        "x_beacon_envelope_sha256",
        json!(ctx.envelope_sha256),
    );
    set(
        &mut report,
        "x_beacon_origin",
        json!({"node": ctx.origin_node, "sequence": ctx.origin_sequence}),
    );
    set(&mut report, "x_beacon_sequence", json!(ctx.sequence));
    if let Some(until) = b.expires_at {
        set(&mut report, "x_beacon_expires_at", json!(timestamp(until)));
    }
    if !unmapped.is_empty() {
        set(&mut report, "x_beacon_other_indicators", json!(unmapped));
    }
    out.push(Value::Object(report));
    out
}

/// A bundle of `objects`.
pub fn bundle(objects: Vec<Value>) -> Value {
    json!({
        "type": "bundle",
        "id": format!("bundle--{}", uuid::Uuid::new_v4()),
        "objects": objects
    })
}
