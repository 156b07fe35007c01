//! Bulletins and envelopes as people and other tools write them: bulletin
//! documents in JSON or YAML (what `beacon publish --file` reads and
//! `beacon subscribe --json` writes), and envelopes as DSSE JSON (what
//! `beacon export` writes and `beacon verify` / `beacon import` read), so
//! standard DSSE tooling can check a Beacon signature.
//!
//! DSSE JSON is the envelope of the DSSE specification: `payloadType`,
//! `payload` (base64) and `signatures` of `keyid` and `sig` (base64). Each
//! signature also carries `cert`: the signer's certificate chain in PEM, leaf
//! first, which DSSE tools ignore and Beacon needs to check the signer.

use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::domain::bulletin::{
    Attachment, Audience, Bulletin, Envelope, Indicator, Kind, Reference, Relation, Severity,
    Signature, Tlp,
};

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("not valid YAML: {0}")]
    Yaml(String),
    #[error("{0}")]
    Field(String),
    #[error("not a DSSE envelope: {0}")]
    Dsse(String),
}

fn field(msg: impl Into<String>) -> DocumentError {
    DocumentError::Field(msg.into())
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AudienceDoc {
    pub members: Vec<String>,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IndicatorDoc {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The STIX indicator the value was taken from, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stix_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReferenceDoc {
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub external_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttachmentDoc {
    pub media_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filename: String,
    /// Base64 of the attached bytes.
    pub data: String,
}

/// A bulletin as a document. On input, `id`, `publisher` and `created_at` may
/// be left out (a fresh UUID, the member of the signing certificate, now).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BulletinDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// disinformation, influence_operation, espionage, illicit_finance,
    /// cyber_intrusion, election_infrastructure, advisory, other.
    pub kind: String,
    /// info, low, medium, high, critical.
    pub severity: String,
    /// TLP:CLEAR, TLP:GREEN, TLP:AMBER, TLP:AMBER+STRICT, TLP:RED.
    pub tlp: String,
    #[serde(default, skip_serializing_if = "audience_is_empty")]
    pub audience: AudienceDoc,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    pub title: String,
    pub summary: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indicators: Vec<IndicatorDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<ReferenceDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retracts: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<AttachmentDoc>,
}

fn audience_is_empty(a: &AudienceDoc) -> bool {
    a.members.is_empty() && a.groups.is_empty()
}

/// A time as RFC 3339. Never panics: a time the calendar cannot hold (a
/// hostile timestamp far beyond year 9999) is written as `unix:<seconds>`.
pub fn rfc3339(t: SystemTime) -> String {
    let nanos: i128 = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|dt| {
            dt.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix:{}", nanos / 1_000_000_000))
}

fn parse_time(what: &str, s: &str) -> Result<SystemTime, DocumentError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| field(format!("{what} {s:?} is not an RFC 3339 time: {e}")))
}

impl BulletinDoc {
    /// The bulletin this document describes, published by `member`.
    pub fn to_bulletin(&self, member: &str) -> Result<Bulletin, DocumentError> {
        if let Some(p) = &self.publisher {
            if p != member {
                return Err(field(format!(
                    "publisher {p:?} is not the member of your certificate ({member})"
                )));
            }
        }
        let kind = Kind::parse(&self.kind).ok_or_else(|| {
            field(format!(
                "kind {:?} is not one of: {}",
                self.kind,
                Kind::ALL.map(Kind::name).join(", ")
            ))
        })?;
        let severity = Severity::parse(&self.severity).ok_or_else(|| {
            field(format!(
                "severity {:?} is not one of: {}",
                self.severity,
                Severity::ALL.map(Severity::name).join(", ")
            ))
        })?;
        let tlp = Tlp::parse(&self.tlp).ok_or_else(|| {
            field(format!(
                "tlp {:?} is not one of: {}",
                self.tlp,
                Tlp::ALL.map(Tlp::label).join(", ")
            ))
        })?;
        let mut b = Bulletin::draft(member, kind, severity, tlp, &self.title, &self.summary);
        if let Some(id) = &self.id {
            b.id = id.clone();
        }
        if let Some(t) = &self.created_at {
            b.created_at = Some(parse_time("created_at", t)?);
        }
        b.audience = Audience {
            members: self.audience.members.clone(),
            groups: self.audience.groups.clone(),
        };
        b.topics = self.topics.clone();
        b.body = self.body.clone();
        b.indicators = self
            .indicators
            .iter()
            .map(|i| Indicator {
                kind: i.kind.clone(),
                value: i.value.clone(),
                description: i.description.clone(),
                stix_id: i.stix_id.clone(),
            })
            .collect();
        b.references = self
            .references
            .iter()
            .map(|r| Reference {
                url: r.url.clone(),
                description: r.description.clone(),
                external_id: r.external_id.clone(),
            })
            .collect();
        b.relation = match (&self.supersedes, &self.retracts) {
            (Some(_), Some(_)) => {
                return Err(field("a bulletin may supersede or retract, not both"))
            }
            (Some(id), None) => Some(Relation::Supersedes(id.clone())),
            (None, Some(id)) => Some(Relation::Retracts(id.clone())),
            (None, None) => None,
        };
        if let Some(t) = &self.expires_at {
            b.expires_at = Some(parse_time("expires_at", t)?);
        }
        if let Some(a) = &self.attachment {
            b.attachment = Some(Attachment {
                media_type: a.media_type.clone(),
                filename: a.filename.clone(),
                data: B64
                    .decode(a.data.trim())
                    .map_err(|e| field(format!("attachment data is not base64: {e}")))?,
            });
        }
        Ok(b)
    }

    /// The document of a bulletin (for output); unknown enum numbers are
    /// written as `unknown(N)`.
    pub fn from_bulletin(b: &Bulletin) -> BulletinDoc {
        let name = |o: Option<&'static str>, n: i32| {
            o.map(str::to_owned)
                .unwrap_or_else(|| format!("unknown({n})"))
        };
        let (supersedes, retracts) = match &b.relation {
            Some(Relation::Supersedes(id)) => (Some(id.clone()), None),
            Some(Relation::Retracts(id)) => (None, Some(id.clone())),
            None => (None, None),
        };
        BulletinDoc {
            id: Some(b.id.clone()),
            publisher: Some(b.publisher.clone()),
            created_at: b.created_at.map(rfc3339),
            kind: name(
                crate::domain::bulletin::codec::kind_from_i32(b.kind).map(Kind::name),
                b.kind,
            ),
            severity: name(
                crate::domain::bulletin::codec::severity_from_i32(b.severity).map(Severity::name),
                b.severity,
            ),
            tlp: name(
                crate::domain::bulletin::codec::tlp_from_i32(b.tlp).map(Tlp::label),
                b.tlp,
            ),
            audience: AudienceDoc {
                members: b.audience.members.clone(),
                groups: b.audience.groups.clone(),
            },
            topics: b.topics.clone(),
            title: b.title.clone(),
            summary: b.summary.clone(),
            body: b.body.clone(),
            indicators: b
                .indicators
                .iter()
                .map(|i| IndicatorDoc {
                    kind: i.kind.clone(),
                    value: i.value.clone(),
                    description: i.description.clone(),
                    stix_id: i.stix_id.clone(),
                })
                .collect(),
            references: b
                .references
                .iter()
                .map(|r| ReferenceDoc {
                    url: r.url.clone(),
                    description: r.description.clone(),
                    external_id: r.external_id.clone(),
                })
                .collect(),
            supersedes,
            retracts,
            expires_at: b.expires_at.map(rfc3339),
            attachment: b.attachment.as_ref().map(|a| AttachmentDoc {
                media_type: a.media_type.clone(),
                filename: a.filename.clone(),
                data: B64.encode(&a.data),
            }),
        }
    }
}

/// One document or a list of them, in JSON or YAML (a sequence, or several
/// `---` documents). `yaml` says which; `None` tries JSON, then YAML.
pub fn parse_bulletins(text: &str, yaml: Option<bool>) -> Result<Vec<BulletinDoc>, DocumentError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<BulletinDoc>),
        One(Box<BulletinDoc>),
    }
    let flatten = |o: OneOrMany| match o {
        OneOrMany::Many(v) => v,
        OneOrMany::One(b) => vec![*b],
    };
    let json = || -> Result<Vec<BulletinDoc>, DocumentError> {
        // Parse strictly (to get field errors), one value or an array.
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| DocumentError::Json(e.to_string()))?;
        if v.is_array() {
            serde_json::from_value::<Vec<BulletinDoc>>(v)
                .map_err(|e| DocumentError::Json(e.to_string()))
        } else {
            serde_json::from_value::<BulletinDoc>(v)
                .map(|b| vec![b])
                .map_err(|e| DocumentError::Json(e.to_string()))
        }
    };
    let yaml_docs = || -> Result<Vec<BulletinDoc>, DocumentError> {
        let mut out = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let v = serde_yaml_ng::Value::deserialize(doc)
                .map_err(|e| DocumentError::Yaml(e.to_string()))?;
            if v.is_null() {
                continue;
            }
            let docs = if v.is_sequence() {
                serde_yaml_ng::from_value::<Vec<BulletinDoc>>(v).map(OneOrMany::Many)
            } else {
                serde_yaml_ng::from_value::<BulletinDoc>(v).map(|b| OneOrMany::One(Box::new(b)))
            }
            .map_err(|e| DocumentError::Yaml(e.to_string()))?;
            out.extend(flatten(docs));
        }
        Ok(out)
    };
    let docs = match yaml {
        Some(true) => yaml_docs()?,
        Some(false) => json()?,
        None => match json() {
            Ok(d) => d,
            Err(DocumentError::Json(e)) if text.trim_start().starts_with(['{', '[']) => {
                return Err(DocumentError::Json(e))
            }
            Err(_) => yaml_docs()?,
        },
    };
    if docs.is_empty() {
        return Err(field("the file holds no bulletin"));
    }
    Ok(docs)
}

#[derive(Debug, Serialize, Deserialize)]
struct DsseSignature {
    keyid: String,
    sig: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    cert: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Dsse {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<DsseSignature>,
}

/// An envelope as DSSE JSON (pretty-printed).
pub fn envelope_to_dsse(env: &Envelope) -> String {
    let d = Dsse {
        payload_type: env.payload_type.clone(),
        payload: B64.encode(&env.payload),
        signatures: env
            .signatures
            .iter()
            .map(|s| DsseSignature {
                keyid: s.keyid.clone(),
                sig: B64.encode(&s.sig),
                cert: s
                    .cert_chain
                    .iter()
                    .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
                    .collect::<String>(),
            })
            .collect(),
    };
    serde_json::to_string_pretty(&d).unwrap_or_default()
}

/// Reads a DSSE JSON envelope; each signature's `cert` (PEM chain) is required.
pub fn envelope_from_dsse(text: &str) -> Result<Envelope, DocumentError> {
    let bad = |m: String| DocumentError::Dsse(m);
    let d: Dsse = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let payload = B64
        .decode(d.payload.trim())
        .map_err(|e| bad(format!("payload is not base64: {e}")))?;
    let signatures = d
        .signatures
        .into_iter()
        .map(|s| {
            let sig = B64
                .decode(s.sig.trim())
                .map_err(|e| bad(format!("sig is not base64: {e}")))?;
            let cert_chain = pem::parse_many(s.cert.as_bytes())
                .map_err(|e| bad(format!("cert is not PEM: {e}")))?
                .into_iter()
                .filter(|p| p.tag() == "CERTIFICATE")
                .map(|p| p.into_contents())
                .collect::<Vec<_>>();
            if cert_chain.is_empty() {
                return Err(bad(
                    "a signature carries no certificate chain (`cert`)".into()
                ));
            }
            Ok(Signature {
                keyid: s.keyid,
                sig,
                cert_chain,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Envelope {
        payload_type: d.payload_type,
        payload,
        signatures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doc() -> BulletinDoc {
        BulletinDoc {
            id: None,
            publisher: None,
            created_at: None,
            kind: "disinformation".into(),
            severity: "high".into(),
            tlp: "TLP:AMBER".into(),
            audience: AudienceDoc::default(),
            topics: vec!["elections".into()],
            title: "t".into(),
            summary: "s".into(),
            body: String::new(),
            indicators: vec![],
            references: vec![],
            supersedes: None,
            retracts: None,
            expires_at: None,
            attachment: None,
        }
    }

    #[test]
    fn json_yaml_one_or_many() {
        let one = r#"{"kind":"advisory","severity":"low","tlp":"clear","title":"a","summary":"b"}"#;
        assert_eq!(parse_bulletins(one, None).unwrap().len(), 1);
        let many = format!("[{one},{one}]");
        assert_eq!(parse_bulletins(&many, None).unwrap().len(), 2);
        let yaml = "kind: advisory\nseverity: low\ntlp: TLP:GREEN\ntitle: a\nsummary: b\n---\n- kind: other\n  severity: info\n  tlp: TLP:CLEAR\n  title: c\n  summary: d\n";
        assert_eq!(parse_bulletins(yaml, None).unwrap().len(), 2);
    }

    #[test]
    fn unknown_fields_and_values_are_named() {
        let e = parse_bulletins(r#"{"kind":"advisory","severity":"low","tlp":"clear","title":"a","summary":"b","colour":"red"}"#, None).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let mut d = doc();
        d.tlp = "TLP:WHITE".into();
        let e = d.to_bulletin("fr.anssi").unwrap_err();
        assert!(e.to_string().contains("TLP:WHITE"), "{e}");
        let mut d = doc();
        d.publisher = Some("de.bsi".into());
        assert!(d.to_bulletin("fr.anssi").is_err());
    }

    proptest! {
        #[test]
        fn bulletin_documents_round_trip(title in "[^\u{0}]{1,40}", topics in proptest::collection::vec("[a-z]{1,8}", 0..4), data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut d = doc();
            d.title = title;
            d.topics = topics;
            d.attachment = Some(AttachmentDoc { media_type: "application/stix+json".into(), filename: "b.json".into(), data: B64.encode(&data) });
            let b = d.to_bulletin("fr.anssi").unwrap();
            let back = BulletinDoc::from_bulletin(&b);
            let again = back.to_bulletin("fr.anssi").unwrap();
            prop_assert_eq!(b, again);
        }

        #[test]
        fn dsse_json_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..256), sig in proptest::collection::vec(any::<u8>(), 1..96), chain in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..64), 1..3)) {
            let env = Envelope {
                payload_type: crate::domain::bulletin::PAYLOAD_TYPE.into(),
                payload,
                signatures: vec![Signature { keyid: "k".into(), sig, cert_chain: chain }],
            };
            prop_assert_eq!(envelope_from_dsse(&envelope_to_dsse(&env)).unwrap(), env);
        }

        #[test]
        fn dsse_parsing_never_panics(text in ".{0,200}") {
            let _ = envelope_from_dsse(&text);
            let _ = parse_bulletins(&text, None);
        }
    }
}
