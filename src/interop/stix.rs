//! STIX 2.1 views of bulletins: what TAXII serves and `--stix` writes.
//!
//! A bulletin is a group of objects, in this order: the publishing
//! member's `identity`, the TLP `marking-definition` (in the marking
//! profile of the reader's collection), one `indicator` per indicator STIX
//! can express, and the `report`. Each group is complete on its own (every
//! object it references is in it), so any page of whole groups is a valid
//! bundle for tools that refuse missing references.
//!
//! Versions: a revision is a new version of the same report (the id of the
//! first bulletin of the chain, `created` from it, `modified` from the
//! revision); a retraction is a last version with `revoked: true`.
//!
//! Beacon's own fields travel in `x_beacon_*` properties (STIX cannot say
//! "these members and groups may read this": the node enforces it). No Rust
//! STIX crate is mature enough to take (the field has none for 2.1 worth
//! a dependency), so these few objects are written here with serde_json.

use std::time::SystemTime;

use serde_json::{json, Map, Value};

use crate::domain::bulletin::{codec, Bulletin, Kind, Relation, Severity, Tlp};

/// Objects a bulletin's group can hold beyond its indicators: identity,
/// marking definition, report.
pub const FIXED_OBJECTS: u32 = 3;

/// The most objects one bulletin's group holds (and the microseconds of
/// acceptance time it occupies, so that every object gets its own
/// `date_added`).
pub fn span(b: &Bulletin) -> u32 {
    FIXED_OBJECTS + u32::try_from(b.indicators.len()).unwrap_or(u32::MAX - FIXED_OBJECTS)
}

/// The largest span: a bulletin with as many indicators as one may hold.
pub const MAX_SPAN: u32 = FIXED_OBJECTS + crate::domain::bulletin::MAX_INDICATORS as u32;

const _: () =
    assert!(crate::domain::bulletin::MAX_INDICATORS <= (u32::MAX - FIXED_OBJECTS) as usize);

/// The spans the node's store leaves between records, so that TAXII gives
/// each object of a group a `date_added` of its own.
pub const SPANS: crate::store::Spans = crate::store::Spans {
    of: span,
    max: MAX_SPAN,
};

/// Which marking-definition objects a collection serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// TLP 2.0 (the OASIS common objects, with their property extension).
    #[default]
    OasisTlp2,
    /// The TLP 1.0 definitions OpenCTI keeps (CLEAR as WHITE), and its own
    /// AMBER+STRICT.
    OpenCti,
}

impl Profile {
    pub fn parse(s: &str) -> Option<Profile> {
        match s {
            "oasis-tlp2" => Some(Profile::OasisTlp2),
            "opencti" => Some(Profile::OpenCti),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::OasisTlp2 => "oasis-tlp2",
            Profile::OpenCti => "opencti",
        }
    }
}

const TLP2_EXTENSION: &str = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d";

/// The id of the marking definition for `tlp` in `profile`.
pub fn marking_id(tlp: Tlp, profile: Profile) -> &'static str {
    match (profile, tlp) {
        (Profile::OasisTlp2, Tlp::Clear) => {
            "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487"
        }
        (Profile::OasisTlp2, Tlp::Green) => {
            "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
        }
        (Profile::OasisTlp2, Tlp::Amber) => {
            "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"
        }
        (Profile::OasisTlp2, Tlp::AmberStrict) => {
            "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003"
        }
        (Profile::OasisTlp2, Tlp::Red) => {
            "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"
        }
        (Profile::OpenCti, Tlp::Clear) => {
            "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9"
        }
        (Profile::OpenCti, Tlp::Green) => {
            "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da"
        }
        (Profile::OpenCti, Tlp::Amber) => {
            "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"
        }
        (Profile::OpenCti, Tlp::AmberStrict) => {
            "marking-definition--826578e1-40ad-459f-bc73-ede076f81f37"
        }
        (Profile::OpenCti, Tlp::Red) => "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
    }
}

/// The marking-definition object for `tlp` in `profile`, exactly as its
/// publisher defines it.
pub fn marking(tlp: Tlp, profile: Profile) -> Value {
    let id = marking_id(tlp, profile);
    match profile {
        Profile::OasisTlp2 => {
            let level = match tlp {
                Tlp::Clear => "clear",
                Tlp::Green => "green",
                Tlp::Amber => "amber",
                Tlp::AmberStrict => "amber+strict",
                Tlp::Red => "red",
            };
            json!({
                "type": "marking-definition",
                "spec_version": "2.1",
                "id": id,
                "created": "2022-10-01T00:00:00.000Z",
                "name": tlp.label(),
                "extensions": {
                    TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": level}
                }
            })
        }
        Profile::OpenCti => match tlp {
            Tlp::AmberStrict => json!({
                "type": "marking-definition",
                "spec_version": "2.1",
                "id": id,
                "created": "2022-10-01T00:00:00.000Z",
                "name": "TLP:AMBER+STRICT",
                "definition_type": "statement",
                "definition": {"statement": "TLP:AMBER+STRICT"},
                "x_opencti_definition_type": "TLP",
                "x_opencti_definition": "TLP:AMBER+STRICT"
            }),
            _ => {
                let level = match tlp {
                    Tlp::Clear => "white",
                    Tlp::Green => "green",
                    Tlp::Amber => "amber",
                    _ => "red",
                };
                json!({
                    "type": "marking-definition",
                    "spec_version": "2.1",
                    "id": id,
                    "created": "2017-01-20T00:00:00.000Z",
                    "name": format!("TLP:{}", level.to_uppercase()),
                    "definition_type": "tlp",
                    "definition": {"tlp": level}
                })
            }
        },
    }
}

/// Beacon's namespace for the ids it derives (UUIDv5).
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5d4c_6f3a_8e1b_4c2d_9a7f_3b6e_1c0d_2f4a);

fn derived(kind: &str, name: &str) -> String {
    format!(
        "{kind}--{}",
        uuid::Uuid::new_v5(&NAMESPACE, format!("{kind}/{name}").as_bytes())
    )
}

/// The identity of a publishing member.
pub fn identity_id(member: &str) -> String {
    derived("identity", member)
}

/// The identity object of a publishing member (one version, for good).
pub fn identity(member: &str) -> Value {
    json!({
        "type": "identity",
        "spec_version": "2.1",
        "id": identity_id(member),
        "created": EPOCH,
        "modified": EPOCH,
        "name": member,
        "identity_class": "organization",
        "x_beacon_member": member
    })
}

/// Timestamps of objects that do not change.
const EPOCH: &str = "2020-01-01T00:00:00.000Z";

/// STIX time: UTC, microseconds.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let micros = i128::from(d.as_secs()) * 1_000_000 + i128::from(d.subsec_micros());
    time::OffsetDateTime::from_unix_timestamp_nanos(micros * 1000)
        .ok()
        .and_then(|dt| {
            dt.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| EPOCH.to_owned())
}

/// A STIX pattern for one indicator, if STIX can express its kind.
pub fn pattern(kind: &str, value: &str) -> Option<String> {
    let quoted = |v: &str| v.replace('\\', "\\\\").replace('\'', "\\'");
    let k = kind.trim().to_ascii_lowercase();
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    let (object, path) = match k.as_str() {
        "domain" | "domain-name" | "hostname" | "fqdn" => ("domain-name", "value"),
        "url" | "uri" => ("url", "value"),
        "ip" | "ipv4" | "ipv4-addr" | "ipv6" | "ipv6-addr" | "ip-addr" => {
            let addr = v.split('/').next().unwrap_or(v);
            match addr.parse::<std::net::IpAddr>().ok()? {
                std::net::IpAddr::V4(_) => ("ipv4-addr", "value"),
                std::net::IpAddr::V6(_) => ("ipv6-addr", "value"),
            }
        }
        "email" | "email-addr" | "email-address" => ("email-addr", "value"),
        "account" | "user-account" | "handle" | "username" => ("user-account", "account_login"),
        "sha256" | "sha-256" => ("file", "hashes.'SHA-256'"),
        "sha1" | "sha-1" => ("file", "hashes.'SHA-1'"),
        "md5" => ("file", "hashes.MD5"),
        _ => return None,
    };
    if object == "file" {
        let want = match k.as_str() {
            "sha256" | "sha-256" => 64,
            "sha1" | "sha-1" => 40,
            _ => 32,
        };
        if v.len() != want || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
    }
    Some(format!("[{object}:{path} = '{}']", quoted(v)))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_for_what_stix_can_say_and_none_for_the_rest() {
        assert_eq!(
            pattern("domain", "memo-leak.example").as_deref(),
            Some("[domain-name:value = 'memo-leak.example']")
        );
        assert_eq!(
            pattern("ip", "198.51.100.7").as_deref(),
            Some("[ipv4-addr:value = '198.51.100.7']")
        );
        assert_eq!(
            pattern("ip", "2001:db8::1").as_deref(),
            Some("[ipv6-addr:value = '2001:db8::1']")
        );
        assert_eq!(
            pattern("url", "https://x.example/a'b\\c").as_deref(),
            Some("[url:value = 'https://x.example/a\\'b\\\\c']")
        );
        assert_eq!(
            pattern("account", "@handle").as_deref(),
            Some("[user-account:account_login = '@handle']")
        );
        assert!(pattern("sha256", &"a".repeat(64)).is_some());
        assert_eq!(pattern("sha256", "nothex"), None);
        assert_eq!(pattern("ip", "not an address"), None);
        assert_eq!(pattern("telegram-channel", "x"), None);
    }

    #[test]
    fn timestamps_have_microseconds() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_764_233_333_521_382_999);
        assert_eq!(timestamp(t), "2025-11-27T08:48:53.521382Z");
    }
}

/// What became of one object of a bundle taken in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub id: String,
    pub version: String,
    /// `None`: taken (a report became a bulletin, or an object it needs was
    /// read with it); `Some(why)`: not taken.
    pub failure: Option<String>,
}

/// A report of a bundle, as the bulletin it becomes.
#[derive(Debug, Clone)]
pub struct Taken {
    /// The report's id (and version), for the outcome.
    pub id: String,
    pub version: String,
    pub bulletin: Bulletin,
}

/// Reads a STIX 2.1 bundle (JSON) taken in for `publisher`: each `report`
/// becomes a bulletin (its indicators from the `indicator`s it refers to,
/// its TLP from its marking, its audience from `x_beacon_audience`); the
/// identities, marking definitions and indicators it refers to are read
/// with it. Any other object, a report that cannot be mapped, and an
/// indicator whose pattern is not one Beacon can hold, is a failure with
/// its reason, never dropped silently. The returned bulletins are not yet
/// validated (the admission path does that).
pub fn take_bundle(json: &[u8], publisher: &str) -> Result<(Vec<Taken>, Vec<Outcome>), String> {
    let bundle: Value =
        serde_json::from_slice(json).map_err(|e| format!("the body is not JSON: {e}"))?;
    // A bundle, or a TAXII envelope (what a TAXII client posts).
    let objects = match (
        bundle.get("type").and_then(Value::as_str),
        bundle.get("objects"),
    ) {
        (Some("bundle") | None, Some(Value::Array(o))) => o,
        (Some("bundle") | None, None) if bundle.is_object() => return Ok((Vec::new(), Vec::new())),
        _ => {
            return Err(
                "not a STIX bundle or TAXII envelope (an object with an \"objects\" list)".into(),
            )
        }
    };
    let by_id: std::collections::HashMap<&str, &Value> = objects
        .iter()
        .filter_map(|o| Some((o.get("id")?.as_str()?, o)))
        .collect();
    let mut used: std::collections::HashSet<&str> = std::collections::HashSet::new();
    // Indicators refused, with the report that refers to them.
    let mut failed: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    let mut taken = Vec::new();
    let mut outcomes = Vec::new();
    let version = |o: &Value| {
        o.get("modified")
            .or_else(|| o.get("created"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    for o in objects {
        if o.get("type").and_then(Value::as_str) != Some("report") {
            continue;
        }
        let id = o
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match report_to_bulletin(o, &by_id, publisher, &mut used, &mut failed) {
            Ok(bulletin) => taken.push(Taken {
                id,
                version: version(o),
                bulletin,
            }),
            Err(why) => outcomes.push(Outcome {
                id,
                version: version(o),
                failure: Some(why),
            }),
        }
    }
    for o in objects {
        let kind = o.get("type").and_then(Value::as_str).unwrap_or("(no type)");
        let id = o.get("id").and_then(Value::as_str).unwrap_or("(no id)");
        if kind == "report" {
            continue;
        }
        let failure = match kind {
            // Counted as added only when this node serves it under the
            // id it was posted with.
            "identity" if id == identity_id(publisher) => None,
            "identity" => Some(format!(
                "not kept: the reports are signed by this node for {publisher}, whose identity here is {}; other identity objects are not kept",
                identity_id(publisher)
            )),
            "marking-definition" if tlp_of_marking(id).is_some() => None,
            "marking-definition" => Some(
                "not kept: Beacon marks bulletins with TLP marking definitions only".to_owned(),
            ),
            "indicator" if failed.contains_key(id) => failed.get(id).cloned(),
            "indicator" if used.contains(id) => None,
            "indicator" => Some(
                "an indicator no report refers to: Beacon carries indicators in bulletins"
                    .to_owned(),
            ),
            other => Some(format!(
                "objects of type {other} are not mapped to bulletins"
            )),
        };
        outcomes.push(Outcome {
            id: id.to_owned(),
            version: version(o),
            failure,
        });
    }
    Ok((taken, outcomes))
}

fn parse_stix_time(t: &str) -> Option<SystemTime> {
    let dt = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    let ns = u64::try_from(dt.unix_timestamp_nanos()).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns))
}

/// The TLP a marking-definition id stands for, in either profile.
pub fn tlp_of_marking(id: &str) -> Option<Tlp> {
    for profile in [Profile::OasisTlp2, Profile::OpenCti] {
        for tlp in Tlp::ALL {
            if marking_id(tlp, profile) == id {
                return Some(tlp);
            }
        }
    }
    None
}

/// The indicators a STIX pattern stands for, if Beacon can hold it: a
/// Beacon indicator is one exact value of a kind [`pattern`] writes, so a
/// pattern is held when it is one or more equality comparisons (`=`, or
/// `IN` a set of strings) on such paths, joined by `OR` — between
/// observations or within one — each comparison one indicator. Anything
/// else (`AND`, `FOLLOWEDBY`, qualifiers, `NOT`, `LIKE`, `MATCHES`,
/// ranges, other object paths) is refused, saying which construct it was.
/// The pattern is parsed by its grammar ([`crate::interop::pattern`]).
pub fn indicators_of_pattern(p: &str) -> Result<Vec<(String, String)>, String> {
    use crate::interop::pattern::{Comparison, Literal, Op, Pattern};
    let tree = crate::interop::pattern::parse(p)
        .map_err(|e| format!("pattern {p:?} is not valid STIX patterning: {e}"))?;
    let refuse = |what: &str| {
        format!(
            "pattern {p:?} uses {what}: Beacon holds an indicator as exact values (equality comparisons, or IN, joined by OR)"
        )
    };
    fn observations<'t>(
        pat: &'t Pattern,
        out: &mut Vec<&'t Comparison>,
        refuse: &dyn Fn(&str) -> String,
    ) -> Result<(), String> {
        match pat {
            Pattern::Observation(c) => out.push(c),
            Pattern::Or(v) => {
                for x in v {
                    observations(x, out, refuse)?;
                }
            }
            Pattern::And(_) => {
                return Err(refuse(
                    "AND between observations (all of them seen together)",
                ))
            }
            Pattern::FollowedBy(_) => return Err(refuse("FOLLOWEDBY (observations in sequence)")),
            Pattern::Qualified(_, q) => return Err(refuse(&format!("the qualifier {}", q.name()))),
        }
        Ok(())
    }
    fn tests<'t>(
        c: &'t Comparison,
        out: &mut Vec<&'t crate::interop::pattern::Test>,
        refuse: &dyn Fn(&str) -> String,
    ) -> Result<(), String> {
        match c {
            Comparison::Test(t) => out.push(t),
            Comparison::Or(v) => {
                for x in v {
                    tests(x, out, refuse)?;
                }
            }
            Comparison::And(_) => {
                return Err(refuse(
                    "AND between comparisons (one object matching all of them)",
                ))
            }
        }
        Ok(())
    }
    let mut obs = Vec::new();
    observations(&tree, &mut obs, &refuse)?;
    let mut found = Vec::new();
    for c in obs {
        tests(c, &mut found, &refuse)?;
    }
    let mut out = Vec::new();
    for t in found {
        if t.negated {
            return Err(refuse(&format!("NOT {}", t.op.name())));
        }
        let path = t.path.to_string();
        let kind = match path.as_str() {
            "domain-name:value" => "domain",
            "url:value" => "url",
            "ipv4-addr:value" => "ipv4",
            "ipv6-addr:value" => "ipv6",
            "email-addr:value" => "email",
            "user-account:account_login" => "account",
            "file:hashes.'SHA-256'" | "file:hashes.SHA256" => "sha256",
            "file:hashes.'SHA-1'" | "file:hashes.SHA1" => "sha1",
            "file:hashes.MD5" => "md5",
            other => {
                return Err(format!(
                    "pattern {p:?}: {other} is not an indicator type Beacon holds (domain-name, url, ipv4-addr, ipv6-addr, email-addr values, user-account logins, file hashes)"
                ))
            }
        };
        let values: Vec<&str> = match (t.op, &t.value) {
            (Op::Eq, Some(Literal::Str(v))) => vec![v.as_str()],
            (Op::In, Some(Literal::Set(items))) => items
                .iter()
                .map(|i| match i {
                    Literal::Str(v) => Ok(v.as_str()),
                    _ => Err(format!("pattern {p:?}: {path} IN takes strings only")),
                })
                .collect::<Result<_, _>>()?,
            (Op::Eq, _) => {
                return Err(format!(
                    "pattern {p:?}: {path} is compared with a value that is not a string"
                ))
            }
            (op, _) => return Err(refuse(&format!("the operator {}", op.name()))),
        };
        for value in values {
            if pattern(kind, value).is_none() {
                return Err(format!("pattern {p:?}: {value:?} is not a valid {kind}"));
            }
            out.push((kind.to_owned(), value.to_owned()));
        }
    }
    if out.is_empty() {
        return Err(format!("pattern {p:?} names no value"));
    }
    Ok(out)
}

fn report_to_bulletin<'a>(
    r: &Value,
    by_id: &std::collections::HashMap<&'a str, &'a Value>,
    publisher: &str,
    used: &mut std::collections::HashSet<&'a str>,
    failed: &mut std::collections::HashMap<&'a str, String>,
) -> Result<Bulletin, String> {
    let s = |k: &str| r.get(k).and_then(Value::as_str);
    let name = s("name").ok_or("a report without a name")?;
    let id = s("id").unwrap_or_default();
    let uuid = id
        .strip_prefix("report--")
        .and_then(|u| uuid::Uuid::parse_str(u).ok())
        .ok_or_else(|| format!("{id:?} is not a report id"))?;
    let marking_refs: Vec<&str> = r
        .get("object_marking_refs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let tlps: Vec<Tlp> = marking_refs
        .iter()
        .filter_map(|m| tlp_of_marking(m))
        .collect();
    let tlp =
        match tlps.as_slice() {
            [one] => *one,
            [] => return Err(
                "the report has no TLP marking (object_marking_refs with a TLP marking definition)"
                    .into(),
            ),
            _ => return Err("the report has more than one TLP marking".into()),
        };
    let mut b = Bulletin::draft(
        publisher,
        s("x_beacon_kind")
            .and_then(Kind::parse)
            .unwrap_or(Kind::Advisory),
        s("x_beacon_severity")
            .and_then(Severity::parse)
            .unwrap_or(Severity::Medium),
        tlp,
        name,
        "",
    );
    // The report's id is the bulletin's: the same report sent twice is the
    // same bulletin (a duplicate), never two.
    b.id = uuid.hyphenated().to_string();
    let description = s("description").unwrap_or_default();
    let (summary, body) = match description.split_once("\n\n") {
        Some((a, rest)) => (a, rest),
        None => (description, ""),
    };
    if summary.chars().count() > crate::domain::bulletin::MAX_SUMMARY {
        b.summary = summary
            .chars()
            .take(crate::domain::bulletin::MAX_SUMMARY)
            .collect();
        b.body = description.to_owned();
    } else {
        b.summary = summary.to_owned();
        b.body = body.to_owned();
    }
    if b.summary.is_empty() {
        b.summary = name.to_owned();
    }
    if let Some(t) = s("published")
        .or_else(|| s("created"))
        .and_then(parse_stix_time)
    {
        b.created_at = Some(t.min(SystemTime::now()));
    }
    if let Some(labels) = r.get("labels").and_then(Value::as_array) {
        b.topics = labels
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
    }
    if let Some(refs) = r.get("external_references").and_then(Value::as_array) {
        b.references = refs
            .iter()
            .filter_map(|e| {
                Some(crate::domain::bulletin::Reference {
                    url: e.get("url")?.as_str()?.to_owned(),
                    description: e
                        .get("source_name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    external_id: e
                        .get("external_id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                })
            })
            .collect();
    }
    if let Some(a) = r.get("x_beacon_audience") {
        let list = |k: &str| -> Vec<String> {
            a.get(k)
                .and_then(Value::as_array)
                .map(|v| {
                    v.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        b.audience.members = list("members");
        b.audience.groups = list("groups");
    }
    let mut expires: Option<SystemTime> = s("x_beacon_expires_at").and_then(parse_stix_time);
    for reference in r
        .get("object_refs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let Some((key, o)) = by_id.get_key_value(reference) else {
            continue; // refers to something outside the bundle
        };
        if o.get("type").and_then(Value::as_str) != Some("indicator") {
            continue;
        }
        let p = o.get("pattern").and_then(Value::as_str).unwrap_or_default();
        if o.get("pattern_type")
            .and_then(Value::as_str)
            .unwrap_or("stix")
            != "stix"
        {
            return Err(format!(
                "indicator {reference}: only STIX patterns are taken"
            ));
        }
        let values = match indicators_of_pattern(p) {
            Ok(v) => v,
            Err(e) => {
                let why = format!("indicator {reference}: {e}");
                failed.insert(
                    key,
                    format!("refused with the report {id} that refers to it: {e}"),
                );
                return Err(why);
            }
        };
        // The STIX id travels with the values (served under it again),
        // when it is one a bulletin may carry.
        let stix_id = reference
            .strip_prefix("indicator--")
            .filter(|u| crate::domain::bulletin::canonical_uuid(u))
            .map(|_| reference.to_owned())
            .unwrap_or_default();
        let description: String = o
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .chars()
            .take(1000)
            .collect();
        for (kind, value) in values {
            b.indicators.push(crate::domain::bulletin::Indicator {
                kind,
                value,
                description: description.clone(),
                stix_id: stix_id.clone(),
            });
        }
        if let Some(until) = o
            .get("valid_until")
            .and_then(Value::as_str)
            .and_then(parse_stix_time)
        {
            expires = Some(expires.map_or(until, |e| e.min(until)));
        }
        used.insert(key);
    }
    b.expires_at = expires;
    if r.get("revoked").and_then(Value::as_bool) == Some(true) {
        return Err(
            "a revoked report: retract the bulletin it stands for with beacon publish --retracts"
                .into(),
        );
    }
    Ok(b)
}

#[cfg(test)]
mod inbound_tests {
    use super::*;

    #[test]
    fn what_beacon_writes_it_reads_back() {
        for (kind, value) in [
            ("domain", "memo-leak.example"),
            ("url", "https://x.example/it's\\here"),
            ("ipv4", "198.51.100.7"),
            ("ipv6", "2001:db8::7"),
            ("email", "a@b.example"),
            ("account", "@x"),
            ("sha256", &"ab".repeat(32)),
            ("md5", &"cd".repeat(16)),
        ] {
            let p = pattern(kind, value).unwrap();
            assert_eq!(
                indicators_of_pattern(&p).unwrap(),
                vec![(kind.to_owned(), value.to_owned())],
                "{p}"
            );
        }
        let pair = |a: &str, b: &str| {
            vec![
                ("domain".to_owned(), a.to_owned()),
                ("domain".to_owned(), b.to_owned()),
            ]
        };
        for (p, want) in [
            (
                "[domain-name:value = 'a.example'] OR [domain-name:value = 'b.example']",
                pair("a.example", "b.example"),
            ),
            (
                "[domain-name:value = 'a.example' OR domain-name:value = 'b.example']",
                pair("a.example", "b.example"),
            ),
            (
                "[domain-name:value IN ('a.example', 'b.example')]",
                pair("a.example", "b.example"),
            ),
            (
                "([domain-name:value = 'a.example']) OR ([domain-name:value == 'b.example'])",
                pair("a.example", "b.example"),
            ),
        ] {
            assert_eq!(indicators_of_pattern(p).unwrap(), want, "{p}");
        }
        for (bad, says) in [
            (
                "[domain-name:value = 'a'] AND [url:value = 'b']",
                "AND between observations",
            ),
            (
                "[domain-name:value = 'a' AND domain-name:value = 'b']",
                "AND between comparisons",
            ),
            (
                "[domain-name:value = 'a'] FOLLOWEDBY [url:value = 'b']",
                "FOLLOWEDBY",
            ),
            ("[domain-name:value = 'a'] WITHIN 5 SECONDS", "WITHIN"),
            ("[domain-name:value LIKE '%.example']", "operator LIKE"),
            ("[domain-name:value NOT = 'a']", "NOT ="),
            ("[process:name = 'x']", "not an indicator type"),
            ("[ipv4-addr:value = 'not an ip']", "not a valid ipv4"),
            ("domain-name:value = 'x'", "not valid STIX patterning"),
            ("[domain-name:value = 'it's']", "not valid STIX patterning"),
        ] {
            let e = indicators_of_pattern(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn an_indicator_refused_with_its_report_says_why() {
        let b = json!({"type": "bundle", "id": "bundle--1", "objects": [
            {"type": "indicator", "id": "indicator--a", "pattern": "[domain-name:value = 'a'] FOLLOWEDBY [url:value = 'b']", "pattern_type": "stix"},
            {"type": "report", "id": "report--6f1a2e55-3f45-4a8b-9c1d-2e6f5a7b8c9d", "name": "R",
             "object_refs": ["indicator--a"], "object_marking_refs": [marking_id(Tlp::Amber, Profile::OasisTlp2)]},
        ]});
        let (taken, outcomes) = take_bundle(b.to_string().as_bytes(), "uk.ncsc").unwrap();
        assert!(taken.is_empty());
        let why = |id: &str| {
            outcomes
                .iter()
                .find(|o| o.id == id)
                .and_then(|o| o.failure.clone())
                .unwrap_or_default()
        };
        assert!(why("report--6f1a2e55-3f45-4a8b-9c1d-2e6f5a7b8c9d").contains("FOLLOWEDBY"));
        let ind = why("indicator--a");
        assert!(
            ind.contains("refused with the report") && ind.contains("FOLLOWEDBY"),
            "{ind}"
        );
        assert!(!ind.contains("no report refers"), "{ind}");
    }

    #[test]
    fn a_pattern_with_or_is_one_indicator_again_under_its_id() {
        let ind = "indicator--0b1a2e55-3f45-4a8b-9c1d-2e6f5a7b8c9d";
        let b = json!({"type": "bundle", "id": "bundle--1", "objects": [
            {"type": "indicator", "id": ind, "pattern": "[domain-name:value = 'a.example'] OR [domain-name:value = 'b.example']", "pattern_type": "stix"},
            {"type": "report", "id": "report--6f1a2e55-3f45-4a8b-9c1d-2e6f5a7b8c9d", "name": "R",
             "object_refs": [ind], "object_marking_refs": [marking_id(Tlp::Amber, Profile::OasisTlp2)]},
        ]});
        let (taken, outcomes) = take_bundle(b.to_string().as_bytes(), "uk.ncsc").unwrap();
        assert!(outcomes.iter().all(|o| o.failure.is_none()), "{outcomes:?}");
        let bulletin = &taken[0].bulletin;
        assert_eq!(bulletin.indicators.len(), 2);
        assert!(bulletin.indicators.iter().all(|i| i.stix_id == ind));
        let ctx = Context {
            root: (bulletin.id.clone(), SystemTime::now()),
            signer: String::new(),
            envelope_sha256: String::new(),
            origin_node: String::new(),
            origin_sequence: 1,
            sequence: 1,
            profile: Profile::OasisTlp2,
        };
        let served = objects(bulletin, &ctx);
        let indicators: Vec<&Value> = served.iter().filter(|o| o["type"] == "indicator").collect();
        assert_eq!(indicators.len(), 1);
        assert_eq!(indicators[0]["id"], ind);
        assert_eq!(
            indicators[0]["pattern"],
            "[domain-name:value = 'a.example'] OR [domain-name:value = 'b.example']"
        );
    }

    #[test]
    fn a_bundle_in_and_every_object_accounted_for() {
        let b = json!({"type": "bundle", "id": "bundle--1", "objects": [
            {"type": "identity", "id": "identity--x", "spec_version": "2.1", "created": "2026-01-01T00:00:00Z", "modified": "2026-01-01T00:00:00Z", "name": "x"},
            {"type": "indicator", "id": "indicator--a", "pattern": "[domain-name:value = 'a.example']", "pattern_type": "stix", "valid_until": "2030-01-01T00:00:00Z"},
            {"type": "report", "id": "report--6f1a2e55-3f45-4a8b-9c1d-2e6f5a7b8c9d", "name": "R", "published": "2026-01-01T00:00:00Z",
             "object_refs": ["indicator--a"], "object_marking_refs": [marking_id(Tlp::Amber, Profile::OasisTlp2)],
             "labels": ["elections"], "description": "short\n\nlong body"},
            {"type": "report", "id": "report--7f1a2e55-3f45-4a8b-9c1d-2e6f5a7b8c9d", "name": "no marking", "object_refs": ["identity--x"]},
            {"type": "malware", "id": "malware--m"}
        ]});
        let (taken, outcomes) = take_bundle(b.to_string().as_bytes(), "uk.ncsc").unwrap();
        assert_eq!(taken.len(), 1);
        let t = &taken[0].bulletin;
        assert_eq!(t.id, "6f1a2e55-3f45-4a8b-9c1d-2e6f5a7b8c9d");
        assert_eq!(t.summary, "short");
        assert_eq!(t.body, "long body");
        assert_eq!(t.indicators[0].value, "a.example");
        assert!(t.expires_at.is_some());
        assert_eq!(codec::tlp_from_i32(t.tlp), Some(Tlp::Amber));
        let failed: Vec<&str> = outcomes
            .iter()
            .filter(|o| o.failure.is_some())
            .map(|o| o.id.as_str())
            .collect();
        // The posted identity is not what this node serves for uk.ncsc:
        // it is not counted as added.
        assert_eq!(
            failed,
            vec![
                "report--7f1a2e55-3f45-4a8b-9c1d-2e6f5a7b8c9d",
                "identity--x",
                "malware--m"
            ]
        );
        assert!(take_bundle(b"{not json", "x").is_err());
        assert!(take_bundle(br#"{"type": "report"}"#, "x").is_err());
        assert!(take_bundle(b"[1, 2]", "x").is_err());
    }
}

#[cfg(test)]
mod span_tests {
    use super::*;
    use crate::domain::bulletin::{Indicator, Reference, Relation};

    /// The largest bulletin there can be: every indicator it may hold, a
    /// relation, references, an audience, each TLP and each profile. Its
    /// group fits in its span, and no span is larger than [`MAX_SPAN`].
    #[test]
    fn a_group_fits_its_span_up_to_the_largest_bulletin() {
        for n in [0, 1, crate::domain::bulletin::MAX_INDICATORS] {
            for tlp in [
                Tlp::Clear,
                Tlp::Green,
                Tlp::Amber,
                Tlp::AmberStrict,
                Tlp::Red,
            ] {
                let mut b = Bulletin::draft(
                    "uk.ncsc",
                    Kind::InfluenceOperation,
                    Severity::High,
                    tlp,
                    "the largest",
                    "every part filled",
                );
                b.audience.members = vec!["fr.anssi".into(), "de.bsi".into()];
                b.audience.groups = vec!["five-eyes".into()];
                b.topics = vec!["election".into()];
                b.relation = Some(Relation::Supersedes(uuid::Uuid::new_v4().to_string()));
                b.references = (0..10)
                    .map(|i| Reference {
                        url: format!("https://ref{i}.example/"),
                        description: "a source".into(),
                        external_id: format!("REF-{i}"),
                    })
                    .collect();
                b.indicators = (0..n)
                    .map(|i| Indicator {
                        kind: "domain".into(),
                        value: format!("d{i}.example"),
                        description: String::new(),
                        stix_id: String::new(),
                    })
                    .collect();
                for profile in [Profile::OasisTlp2, Profile::OpenCti] {
                    let ctx = Context {
                        root: (
                            "00000000-0000-4000-8000-000000000000".into(),
                            SystemTime::now(),
                        ),
                        signer: "spiffe://uk.example/client/uk.ncsc/analyst".into(),
                        envelope_sha256: "00".repeat(32),
                        origin_node: "spiffe://uk.example/node/uk.ncsc/london-1".into(),
                        origin_sequence: 1,
                        sequence: 1,
                        profile,
                    };
                    let objects = objects(&b, &ctx).len();
                    assert!(
                        objects <= span(&b) as usize,
                        "{n} indicators, {tlp:?}, {profile:?}: {objects} objects, span {}",
                        span(&b)
                    );
                    assert!(span(&b) <= MAX_SPAN);
                }
            }
        }
        assert_eq!(SPANS.max, MAX_SPAN);
    }
}
