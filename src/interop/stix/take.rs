//! In: a STIX 2.1 bundle (or TAXII envelope) taken in as bulletins, each
//! object accounted for.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use serde_json::Value;

use super::{identity_id, marking_id, pattern, Profile};
use crate::domain::bulletin::{Bulletin, Kind, Severity, Tlp};

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

/// One report as the bulletin it becomes, in steps: its id and TLP, the
/// text and fields it carries ([`describe`]), the indicators it refers to
/// ([`take_indicators`]).
fn report_to_bulletin<'a>(
    r: &Value,
    by_id: &HashMap<&'a str, &'a Value>,
    publisher: &str,
    used: &mut HashSet<&'a str>,
    failed: &mut HashMap<&'a str, String>,
) -> Result<Bulletin, String> {
    let s = |k: &str| r.get(k).and_then(Value::as_str);
    let name = s("name").ok_or("a report without a name")?;
    let id = s("id").unwrap_or_default();
    let uuid = id
        .strip_prefix("report--")
        .and_then(|u| uuid::Uuid::parse_str(u).ok())
        .ok_or_else(|| format!("{id:?} is not a report id"))?;
    let mut b = Bulletin::draft(
        publisher,
        s("x_beacon_kind")
            .and_then(Kind::parse)
            .unwrap_or(Kind::Advisory),
        s("x_beacon_severity")
            .and_then(Severity::parse)
            .unwrap_or(Severity::Medium),
        report_tlp(r)?,
        name,
        "",
    );
    // The report's id is the bulletin's: the same report sent twice is the
    // same bulletin (a duplicate), never two.
    b.id = uuid.hyphenated().to_string();
    describe(&mut b, r, name);
    let until = take_indicators(&mut b, r, id, by_id, used, failed)?;
    b.expires_at = match (s("x_beacon_expires_at").and_then(parse_stix_time), until) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if r.get("revoked").and_then(Value::as_bool) == Some(true) {
        return Err(
            "a revoked report: retract the bulletin it stands for with beacon publish --retracts"
                .into(),
        );
    }
    Ok(b)
}

/// The one TLP marking a report must carry.
fn report_tlp(r: &Value) -> Result<Tlp, String> {
    let tlps: Vec<Tlp> = r
        .get("object_marking_refs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(tlp_of_marking)
        .collect();
    match tlps.as_slice() {
        [one] => Ok(*one),
        [] => Err(
            "the report has no TLP marking (object_marking_refs with a TLP marking definition)"
                .into(),
        ),
        _ => Err("the report has more than one TLP marking".into()),
    }
}

/// The report's text and fields: summary and body from its description,
/// creation time, topics from its labels, references, and the audience in
/// `x_beacon_audience`.
fn describe(b: &mut Bulletin, r: &Value, name: &str) {
    let s = |k: &str| r.get(k).and_then(Value::as_str);
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
        let text = |e: &Value, k: &str| {
            e.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        b.references = refs
            .iter()
            .filter_map(|e| {
                Some(crate::domain::bulletin::Reference {
                    url: e.get("url")?.as_str()?.to_owned(),
                    description: text(e, "source_name"),
                    external_id: text(e, "external_id"),
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
}

/// The indicators of the bundle the report `id` refers to, as `b`'s;
/// returns the earliest `valid_until` among them. One whose pattern Beacon
/// cannot hold refuses the report (and is marked failed with it).
fn take_indicators<'a>(
    b: &mut Bulletin,
    r: &Value,
    id: &str,
    by_id: &HashMap<&'a str, &'a Value>,
    used: &mut HashSet<&'a str>,
    failed: &mut HashMap<&'a str, String>,
) -> Result<Option<SystemTime>, String> {
    let mut until: Option<SystemTime> = None;
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
        if let Some(t) = o
            .get("valid_until")
            .and_then(Value::as_str)
            .and_then(parse_stix_time)
        {
            until = Some(until.map_or(t, |u| u.min(t)));
        }
        used.insert(key);
    }
    Ok(until)
}

#[cfg(test)]
mod inbound_tests {
    use super::super::{objects, Context};
    use super::*;
    use crate::domain::bulletin::codec;
    use serde_json::json;

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
