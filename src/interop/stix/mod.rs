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
//! - `out.rs`: a bulletin as its group, and bundles;
//! - `take.rs`: a bundle taken in as bulletins;
//! - here: what both use (markings, identities, timestamps, patterns) and
//!   the span of a group.
//!
//! Beacon's own fields travel in `x_beacon_*` properties (STIX cannot say
//! "these members and groups may read this": the node enforces it). No Rust
//! STIX crate is mature enough to take (the field has none for 2.1 worth
//! a dependency), so these few objects are written here with serde_json.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::domain::bulletin::{Bulletin, Tlp};

mod out;
mod take;

pub use out::{bundle, objects, Context};
pub use take::{indicators_of_pattern, take_bundle, tlp_of_marking, Outcome, Taken};

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

#[cfg(test)]
mod span_tests {
    use super::*;
    use crate::domain::bulletin::{Indicator, Kind, Reference, Relation, Severity};

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
