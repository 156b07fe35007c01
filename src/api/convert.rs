//! The API's translations between its messages and domain types:
//! deliveries, filters, start positions, subscription events. (The codecs of
//! the signed payload and the envelope are the domain's own:
//! `bulletin::codec`; a reader's check of a delivery is `client`'s.)

use std::time::SystemTime;

use crate::base::proto::v1 as pb;
use crate::domain::bulletin::codec::{
    kind_from_i32, kind_to_i32, severity_from_i32, time_from, timestamp, tlp_from_i32, tlp_to_i32,
};

/// A record a reader's view let through, as the API serves it.
/// The envelope goes out as the stored bytes (checked against their digest
/// when they were read), never decoded and re-encoded. It takes the record,
/// so its origin and envelope move into the message instead of being copied.
pub fn delivery(seen: crate::broker::view::Seen) -> pb::Delivery {
    let (rec, replaced_by, expired) = seen.into_parts();
    pb::Delivery {
        expired,
        sequence: rec.seq,
        accepted_at: Some(timestamp(rec.accepted_at)),
        origin_node: rec.meta.origin_node,
        origin_sequence: rec.meta.origin_seq,
        envelope: Some(rec.envelope),
        envelope_digest: rec.meta.digest.to_vec(),
        replaced_by: replaced_by.map(replacement),
    }
}

fn replacement(r: crate::store::Replacement) -> pb::Replacement {
    use crate::store::Replaced;
    let how = match r.how {
        Replaced::Superseded => pb::replacement::How::Superseded,
        Replaced::Retracted => pb::replacement::How::Retracted,
    };
    pb::Replacement {
        how: how as i32,
        sequence: r.seq,
        id: r.id,
    }
}

/// A request's filter, checked: unknown enum values are refused.
pub fn filter_from_proto(f: Option<pb::Filter>) -> Result<crate::domain::filter::Filter, String> {
    let Some(f) = f else {
        return Ok(crate::domain::filter::Filter::default());
    };
    let kinds = f
        .kinds
        .iter()
        .map(|&k| {
            kind_from_i32(k)
                .map(|k| kind_to_i32(k) as u8)
                .ok_or(format!("unknown kind {k}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tlp = f
        .tlp
        .iter()
        .map(|&t| {
            tlp_from_i32(t)
                .map(|t| tlp_to_i32(t) as u8)
                .ok_or(format!("unknown TLP label {t}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let min_severity = match f.min_severity {
        0 => 0,
        s => severity_from_i32(s).ok_or(format!("unknown severity {s}"))? as u8,
    };
    Ok(crate::domain::filter::Filter {
        kinds,
        min_severity,
        tlp,
        topics: f.topics,
        publishers: f.publishers,
        created_after: time_from(f.created_after)?,
        created_before: time_from(f.created_before)?,
    })
}

/// A subscription's start position.
pub fn start_from_proto(
    s: Option<pb::StartPosition>,
) -> Result<crate::broker::subscription::Start, String> {
    use crate::broker::subscription::Start;
    use pb::start_position::At;
    Ok(match s.and_then(|s| s.at) {
        None | Some(At::Resume(_)) => Start::Resume,
        Some(At::Sequence(0)) => return Err("start sequence must be at least 1".into()),
        Some(At::Sequence(n)) => Start::Sequence(n),
        Some(At::Time(t)) => Start::Time(time_from(Some(t))?.unwrap_or(std::time::UNIX_EPOCH)),
        Some(At::Earliest(_)) => Start::Earliest,
        Some(At::Latest(_)) => Start::Latest,
    })
}

/// The log a reader names (`SubscribeOpen.log_id`; empty: none).
pub fn log_from_proto(s: &str) -> Result<Option<crate::store::LogId>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some)
}

/// Where a restored log came from, as the API says it.
pub fn fork_to_proto(log: crate::store::LogInfo) -> Option<pb::LogFork> {
    log.forked_from.map(|f| pb::LogFork {
        log_id: f.log.to_string(),
        size: f.size,
    })
}

/// A broker event as the messages the API sends for it, in order; an `End`
/// is the last item, as an error.
pub fn subscribe_messages(
    name: &str,
    e: crate::broker::subscription::Event,
) -> Vec<Result<pb::SubscribeResponse, crate::broker::subscription::BrokerError>> {
    use crate::broker::subscription::Event;
    use pb::subscribe_response::Msg;
    let one = |msg| vec![Ok(pb::SubscribeResponse { msg: Some(msg) })];
    match e {
        Event::Opened {
            position,
            head,
            window,
            pruned,
            log,
            restarted,
        } => one(Msg::Subscribed(pb::Subscribed {
            name: name.to_owned(),
            cursor: position,
            head,
            window,
            pruned,
            log_id: log.id.to_string(),
            forked_from: fork_to_proto(log),
            restarted: restarted.unwrap_or_default(),
        })),
        Event::Deliveries(batch) => batch
            .into_iter()
            .map(|d| {
                Ok(pb::SubscribeResponse {
                    msg: Some(Msg::Delivery(delivery(d))),
                })
            })
            .collect(),
        Event::CaughtUp { head } => one(Msg::CaughtUp(pb::CaughtUp { head })),
        Event::Heartbeat { head } => one(Msg::Heartbeat(pb::Heartbeat {
            head,
            at: Some(timestamp(SystemTime::now())),
        })),
        Event::End(e) => vec![Err(e)],
    }
}

/// Evidence of an equivocation, as the API says it.
pub fn equivocation(q: crate::node::evidence::Equivocation) -> pb::Equivocation {
    pb::Equivocation {
        publisher: q.publisher,
        id: q.id,
        envelope_digests: q.digests.to_vec(),
        envelopes: q.envelopes.to_vec(),
        source: q.source,
        detected_at: q.detected_at,
    }
}
