//! Bulletins as a MISP feed: one event per bulletin (`<uuid>.json`) and the
//! feed's `manifest.json`, so that a MISP instance adds a node as a feed
//! without a plugin. TLP travels as MISP's `tlp:` tags and as the event's
//! distribution; Beacon's kind, severity and topics as tags.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::domain::bulletin::{codec, Bulletin, Relation, Severity, Tlp};

fn secs(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn date(t: SystemTime) -> String {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs(t)).unwrap_or(0))
        .ok()
        .and_then(|d| {
            d.format(time::macros::format_description!("[year]-[month]-[day]"))
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01".into())
}

/// MISP's threat level (1 high … 4 undefined) for a severity.
fn threat_level(s: Option<Severity>) -> &'static str {
    match s {
        Some(Severity::Critical | Severity::High) => "1",
        Some(Severity::Medium) => "2",
        Some(Severity::Low) => "3",
        _ => "4",
    }
}

/// MISP's distribution for a TLP label: 0 this organisation only, 1 this
/// community, 2 connected communities, 3 all communities.
fn distribution(tlp: Tlp) -> &'static str {
    match tlp {
        Tlp::Red | Tlp::AmberStrict => "0",
        Tlp::Amber => "1",
        Tlp::Green => "2",
        Tlp::Clear => "3",
    }
}

fn tags(b: &Bulletin) -> Vec<Value> {
    let tlp = codec::tlp_from_i32(b.tlp).unwrap_or(Tlp::Red);
    let mut out = vec![json!({"name": tlp.label().to_ascii_lowercase()})];
    if let Some(k) = codec::kind_from_i32(b.kind) {
        out.push(json!({"name": format!("beacon:kind=\"{}\"", k.name())}));
    }
    if let Some(s) = codec::severity_from_i32(b.severity) {
        out.push(json!({"name": format!("beacon:severity=\"{}\"", s.name())}));
    }
    for t in &b.topics {
        out.push(json!({"name": format!("beacon:topic=\"{t}\"")}));
    }
    match &b.relation {
        Some(Relation::Supersedes(id)) => {
            out.push(json!({"name": format!("beacon:supersedes=\"{id}\"")}))
        }
        Some(Relation::Retracts(id)) => {
            out.push(json!({"name": format!("beacon:retracts=\"{id}\"")}))
        }
        None => {}
    }
    out
}

/// The organisation of a publishing member (a stable UUID per member).
fn orgc(member: &str) -> Value {
    let uuid = uuid::Uuid::new_v5(
        &uuid::Uuid::from_u128(0x1b7e_3c5d_9a2f_4e6b_8c1d_7f0a_2b3c_4d5e),
        member.as_bytes(),
    );
    json!({"name": member, "uuid": uuid.hyphenated().to_string()})
}

/// A MISP attribute (type, category) for an indicator, if MISP has one.
fn attribute_type(kind: &str, value: &str) -> Option<(&'static str, &'static str)> {
    Some(match kind.trim().to_ascii_lowercase().as_str() {
        "domain" | "domain-name" | "hostname" | "fqdn" => ("domain", "Network activity"),
        "url" | "uri" => ("url", "Network activity"),
        "ip" | "ipv4" | "ipv4-addr" | "ipv6" | "ipv6-addr" | "ip-addr" => {
            value.split('/').next()?.parse::<std::net::IpAddr>().ok()?;
            ("ip-dst", "Network activity")
        }
        "email" | "email-addr" | "email-address" => ("email-src", "Payload delivery"),
        "account" | "user-account" | "handle" | "username" => ("text", "Social network"),
        "sha256" | "sha-256" => ("sha256", "Payload delivery"),
        "sha1" | "sha-1" => ("sha1", "Payload delivery"),
        "md5" => ("md5", "Payload delivery"),
        _ => ("text", "Other"),
    })
}

/// The feed's event for `b`.
pub fn event(b: &Bulletin, accepted_at: SystemTime) -> Value {
    let tlp = codec::tlp_from_i32(b.tlp).unwrap_or(Tlp::Red);
    let mut e = manifest_entry(b, accepted_at);
    let ts = e["timestamp"].clone();
    let attributes: Vec<Value> = b
        .indicators
        .iter()
        .enumerate()
        .map(|(i, ind)| {
            let (kind, category) = attribute_type(&ind.kind, &ind.value).unwrap_or(("text", "Other"));
            let uuid = uuid::Uuid::new_v5(
                &uuid::Uuid::from_u128(0x2c8f_4d6e_0b3a_4f7c_9d2e_8a1b_3c4d_5e6f),
                format!("{}/{i}", b.id).as_bytes(),
            );
            json!({
                "uuid": uuid.hyphenated().to_string(),
                "type": kind,
                "category": category,
                "value": ind.value,
                "to_ids": kind != "text",
                "comment": if kind == "text" { format!("{}: {}", ind.kind, ind.description) } else { ind.description.clone() },
                "timestamp": ts,
                "distribution": "5",
            })
        })
        .collect();
    e["uuid"] = json!(b.id);
    e["publish_timestamp"] = json!(secs(accepted_at).to_string());
    e["published"] = json!(true);
    e["distribution"] = json!(distribution(tlp));
    e["Attribute"] = json!(attributes);
    json!({ "Event": e })
}

/// The lines of the feed's `hashes.csv` for `b`'s event, as MISP's feed
/// generator writes them: the MD5 (hex) of each attribute's value, and the
/// event's uuid. MISP reads them to correlate and cache a feed's values
/// without fetching every event.
pub fn hash_lines(b: &Bulletin) -> Vec<String> {
    use md5::{Digest, Md5};
    b.indicators
        .iter()
        .map(|ind| {
            let digest = Md5::digest(ind.value.as_bytes());
            let hex: String = digest.iter().map(|x| format!("{x:02x}")).collect();
            format!("{hex},{}", b.id)
        })
        .collect()
}

/// The manifest entry of `b`'s event: the fields of the event a feed's
/// manifest repeats (the event adds its uuid, distribution and attributes).
pub fn manifest_entry(b: &Bulletin, accepted_at: SystemTime) -> Value {
    let created = b.created_at.unwrap_or(accepted_at);
    let info = if !b.summary.is_empty() && b.summary != b.title {
        format!("{} — {}", b.title, b.summary)
    } else {
        b.title.clone()
    };
    json!({
        "info": info,
        "Orgc": orgc(&b.publisher),
        "analysis": "2",
        "timestamp": secs(created).to_string(),
        "date": date(created),
        "threat_level_id": threat_level(codec::severity_from_i32(b.severity)),
        "Tag": tags(b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::bulletin::Kind;

    #[test]
    fn hash_lines_are_md5_of_each_value_and_the_event() {
        let mut b = Bulletin::draft(
            "uk.ncsc",
            Kind::Advisory,
            Severity::Low,
            Tlp::Clear,
            "t",
            "s",
        );
        b.indicators.push(crate::domain::bulletin::Indicator {
            kind: "domain".into(),
            value: "example.com".into(),
            ..Default::default()
        });
        // md5("example.com")
        assert_eq!(
            hash_lines(&b),
            vec![format!("5ababd603b22780302dd8d83498e5172,{}", b.id)]
        );
    }

    #[test]
    fn tlp_becomes_tag_and_distribution() {
        let mut b = Bulletin::draft(
            "uk.ncsc",
            Kind::Disinformation,
            Severity::High,
            Tlp::Amber,
            "t",
            "s",
        );
        b.indicators.push(crate::domain::bulletin::Indicator {
            kind: "ip".into(),
            value: "198.51.100.7".into(),
            ..Default::default()
        });
        let e = event(&b, SystemTime::now());
        assert_eq!(e["Event"]["Tag"][0]["name"], "tlp:amber");
        assert_eq!(e["Event"]["distribution"], "1");
        assert_eq!(e["Event"]["threat_level_id"], "1");
        assert_eq!(e["Event"]["Attribute"][0]["type"], "ip-dst");
    }
}
