//! The MISP feed under `/misp/`: the manifest, `hashes.csv` and one event
//! per bulletin, of what the member may read.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::{Server, TaxiiError, MISP_WINDOW};

impl Server {
    /// The MISP feed: `manifest.json` (the newest `MISP_WINDOW` bulletins
    /// of the log this member may read) and `<uuid>.json` (one event).
    pub(super) async fn misp(
        &self,
        member: &str,
        file: &str,
    ) -> Result<Response<Full<Bytes>>, TaxiiError> {
        let state = self.state.clone();
        let member = member.to_owned();
        let file = file.to_owned();
        enum Body {
            Json(Value),
            Csv(String),
        }
        // MISP appends `/manifest.json` to the feed URL it is given: a URL
        // ending in `/` gives `…/misp//manifest.json`.
        let file = file.trim_start_matches('/').to_owned();
        let body = self
            .state
            .tasks
            .spawn_blocking(move || -> Result<Body, TaxiiError> {
                let store = &state.store;
                // Everything the member may read, expired and replaced
                // bulletins included.
                let view =
                    crate::broker::view::View::new(store.clone(), state.policy.clone(), member);
                let bulletin_of = |rec: &crate::store::Record| {
                    crate::domain::bulletin::codec::decode_envelope(&rec.envelope)
                        .ok()
                        // Sealed bulletins are left out of the feed.
                        .filter(|e| e.payload_type == crate::domain::bulletin::PAYLOAD_TYPE)
                        .and_then(|e| {
                            crate::domain::bulletin::codec::decode_bulletin(&e.payload).ok()
                        })
                };
                // The newest MISP_WINDOW bulletins this member may read
                // (what cannot be read is passed over: the store logs it).
                let window = || {
                    let head = store.head();
                    view.scan(head.saturating_sub(MISP_WINDOW - 1).max(1), head)
                        .into_iter()
                        .flatten()
                        .filter_map(|step| match step {
                            Ok(crate::broker::view::Step::Seen(seen)) => Some(seen),
                            _ => None,
                        })
                        .filter_map(|seen| {
                            let rec = seen.record();
                            bulletin_of(rec).map(|b| (b, rec.accepted_at))
                        })
                };
                if file == "manifest.json" {
                    let mut manifest = serde_json::Map::new();
                    for (b, accepted_at) in window() {
                        manifest.insert(
                            b.id.clone(),
                            crate::interop::misp::manifest_entry(&b, accepted_at),
                        );
                    }
                    return Ok(Body::Json(Value::Object(manifest)));
                }
                if file == "hashes.csv" {
                    let mut csv = String::new();
                    for (b, _) in window() {
                        for line in crate::interop::misp::hash_lines(&b) {
                            csv.push_str(&line);
                            csv.push('\n');
                        }
                    }
                    return Ok(Body::Csv(csv));
                }
                let uuid = file
                    .strip_suffix(".json")
                    .filter(|u| crate::domain::bulletin::canonical_uuid(u))
                    .ok_or_else(|| TaxiiError::NotFound(format!("no MISP feed file {file}")))?;
                for (_, seq) in store.lookup_id(uuid).unwrap_or_default() {
                    let Ok(crate::broker::view::Found::Seen(seen)) = view.at(seq) else {
                        continue;
                    };
                    let rec = seen.record();
                    if let Some(b) = bulletin_of(rec) {
                        return Ok(Body::Json(crate::interop::misp::event(&b, rec.accepted_at)));
                    }
                }
                Err(TaxiiError::NotFound(format!("no event {uuid}")))
            })
            .await
            .map_err(|_| TaxiiError::NotFound("the request was cut short".into()))??;
        let (ctype, body) = match body {
            Body::Json(v) => ("application/json", v.to_string()),
            Body::Csv(s) => ("text/csv", s),
        };
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
    }
}
