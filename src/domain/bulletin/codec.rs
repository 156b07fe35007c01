//! The codecs of what is signed and stored: the signed payload (a protobuf
//! `beacon.v1.Bulletin`) and the DSSE envelope (a protobuf
//! `beacon.v1.Envelope`), to and from the domain types, and the wire numbers
//! of kinds, severities and TLP labels. Part of the domain, not of the gRPC
//! edge: verification decodes the payload it checked, and the store keeps
//! the envelope's canonical encoding.

use std::time::SystemTime;

use prost::Message;

use super::{
    Attachment, Audience, Bulletin, Envelope, Indicator, Kind, Reference, Relation, Severity,
    Signature, Tlp,
};
use crate::base::proto::v1 as pb;

pub fn kind_from_i32(v: i32) -> Option<Kind> {
    Some(match pb::Kind::try_from(v).ok()? {
        pb::Kind::Unspecified => return None,
        pb::Kind::Disinformation => Kind::Disinformation,
        pb::Kind::InfluenceOperation => Kind::InfluenceOperation,
        pb::Kind::Espionage => Kind::Espionage,
        pb::Kind::IllicitFinance => Kind::IllicitFinance,
        pb::Kind::CyberIntrusion => Kind::CyberIntrusion,
        pb::Kind::ElectionInfrastructure => Kind::ElectionInfrastructure,
        pb::Kind::Advisory => Kind::Advisory,
        pb::Kind::Other => Kind::Other,
    })
}

pub fn kind_to_i32(k: Kind) -> i32 {
    (match k {
        Kind::Disinformation => pb::Kind::Disinformation,
        Kind::InfluenceOperation => pb::Kind::InfluenceOperation,
        Kind::Espionage => pb::Kind::Espionage,
        Kind::IllicitFinance => pb::Kind::IllicitFinance,
        Kind::CyberIntrusion => pb::Kind::CyberIntrusion,
        Kind::ElectionInfrastructure => pb::Kind::ElectionInfrastructure,
        Kind::Advisory => pb::Kind::Advisory,
        Kind::Other => pb::Kind::Other,
    }) as i32
}

pub fn severity_from_i32(v: i32) -> Option<Severity> {
    Some(match pb::Severity::try_from(v).ok()? {
        pb::Severity::Unspecified => return None,
        pb::Severity::Info => Severity::Info,
        pb::Severity::Low => Severity::Low,
        pb::Severity::Medium => Severity::Medium,
        pb::Severity::High => Severity::High,
        pb::Severity::Critical => Severity::Critical,
    })
}

pub fn severity_to_i32(s: Severity) -> i32 {
    s as i32
}

pub fn tlp_from_i32(v: i32) -> Option<Tlp> {
    Some(match pb::Tlp::try_from(v).ok()? {
        pb::Tlp::Unspecified => return None,
        pb::Tlp::Clear => Tlp::Clear,
        pb::Tlp::Green => Tlp::Green,
        pb::Tlp::Amber => Tlp::Amber,
        pb::Tlp::AmberStrict => Tlp::AmberStrict,
        pb::Tlp::Red => Tlp::Red,
    })
}

pub fn tlp_to_i32(t: Tlp) -> i32 {
    (match t {
        Tlp::Clear => pb::Tlp::Clear,
        Tlp::Green => pb::Tlp::Green,
        Tlp::Amber => pb::Tlp::Amber,
        Tlp::AmberStrict => pb::Tlp::AmberStrict,
        Tlp::Red => pb::Tlp::Red,
    }) as i32
}

/// A protobuf timestamp as a time (none stays none).
pub fn time_from(ts: Option<prost_types::Timestamp>) -> Result<Option<SystemTime>, String> {
    match ts {
        None => Ok(None),
        Some(ts) => SystemTime::try_from(ts)
            .map(Some)
            .map_err(|e| format!("bad timestamp: {e}")),
    }
}

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// Decodes signed payload bytes into a domain bulletin.
pub fn decode_bulletin(bytes: &[u8]) -> Result<Bulletin, String> {
    let b = pb::Bulletin::decode(bytes).map_err(|e| e.to_string())?;
    let audience = b.audience.unwrap_or_default();
    Ok(Bulletin {
        id: b.id,
        publisher: b.publisher,
        created_at: time_from(b.created_at)?,
        kind: b.kind,
        severity: b.severity,
        tlp: b.tlp,
        audience: Audience {
            members: audience.members,
            groups: audience.groups,
        },
        topics: b.topics,
        title: b.title,
        summary: b.summary,
        body: b.body,
        indicators: b
            .indicators
            .into_iter()
            .map(|i| Indicator {
                kind: i.r#type,
                value: i.value,
                description: i.description,
                stix_id: i.stix_id,
            })
            .collect(),
        references: b
            .references
            .into_iter()
            .map(|r| Reference {
                url: r.url,
                description: r.description,
                external_id: r.external_id,
            })
            .collect(),
        relation: match b.relation {
            Some(pb::bulletin::Relation::Supersedes(id)) => Some(Relation::Supersedes(id)),
            Some(pb::bulletin::Relation::Retracts(id)) => Some(Relation::Retracts(id)),
            None => None,
        },
        expires_at: time_from(b.expires_at)?,
        submitted_by: b.submitted_by,
        attachment: b.attachment.map(|a| Attachment {
            media_type: a.media_type,
            filename: a.filename,
            data: a.data,
        }),
    })
}

/// Serializes a domain bulletin (what a publisher then signs).
pub fn encode_bulletin(b: &Bulletin) -> Vec<u8> {
    pb::Bulletin {
        id: b.id.clone(),
        publisher: b.publisher.clone(),
        created_at: b.created_at.map(timestamp),
        kind: b.kind,
        severity: b.severity,
        tlp: b.tlp,
        audience: Some(pb::Audience {
            members: b.audience.members.clone(),
            groups: b.audience.groups.clone(),
        }),
        topics: b.topics.clone(),
        title: b.title.clone(),
        summary: b.summary.clone(),
        body: b.body.clone(),
        indicators: b
            .indicators
            .iter()
            .map(|i| pb::Indicator {
                r#type: i.kind.clone(),
                value: i.value.clone(),
                description: i.description.clone(),
                stix_id: i.stix_id.clone(),
            })
            .collect(),
        references: b
            .references
            .iter()
            .map(|r| pb::Reference {
                url: r.url.clone(),
                description: r.description.clone(),
                external_id: r.external_id.clone(),
            })
            .collect(),
        relation: b.relation.as_ref().map(|r| match r {
            Relation::Supersedes(id) => pb::bulletin::Relation::Supersedes(id.clone()),
            Relation::Retracts(id) => pb::bulletin::Relation::Retracts(id.clone()),
        }),
        expires_at: b.expires_at.map(timestamp),
        submitted_by: b.submitted_by.clone(),
        attachment: b.attachment.as_ref().map(|a| pb::Attachment {
            media_type: a.media_type.clone(),
            filename: a.filename.clone(),
            data: a.data.clone(),
        }),
    }
    .encode_to_vec()
}

pub fn envelope_from_proto(e: pb::Envelope) -> Envelope {
    Envelope {
        payload_type: e.payload_type,
        payload: e.payload,
        signatures: e
            .signatures
            .into_iter()
            .map(|s| Signature {
                keyid: s.keyid,
                sig: s.sig,
                cert_chain: s.cert_chain,
            })
            .collect(),
    }
}

pub fn envelope_to_proto(e: &Envelope) -> pb::Envelope {
    pb::Envelope {
        payload_type: e.payload_type.clone(),
        payload: e.payload.clone(),
        signatures: e
            .signatures
            .iter()
            .map(|s| pb::Signature {
                keyid: s.keyid.clone(),
                sig: s.sig.clone(),
                cert_chain: s.cert_chain.clone(),
            })
            .collect(),
    }
}

/// The canonical bytes of an envelope: what is stored, digested and served.
pub fn encode_envelope(e: &Envelope) -> Vec<u8> {
    envelope_to_proto(e).encode_to_vec()
}

pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, String> {
    pb::Envelope::decode(bytes)
        .map(envelope_from_proto)
        .map_err(|e| e.to_string())
}
