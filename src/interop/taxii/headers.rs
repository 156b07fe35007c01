//! What TAXII's HTTP asks of a request: media types with their parameters,
//! `Accept`, query strings, timestamps.

use std::collections::HashMap;

use http::header;

use super::TaxiiError;

/// A media type or range as (type/subtype, parameters), lower-cased, with
/// quoted parameter values unquoted (RFC 9110 §5.6.6: `version="2.1"` and
/// `version=2.1` are the same).
pub(super) fn media_type(s: &str) -> (String, Vec<(String, String)>) {
    let mut parts = s.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .map(|x| x.replace("\\\"", "\"").replace("\\\\", "\\"))
                .unwrap_or_else(|| v.to_owned());
            Some((k.trim().to_ascii_lowercase(), v))
        })
        .collect();
    (essence, params)
}

/// Whether a media type names TAXII 2.1 JSON: `application/taxii+json`
/// with no version, or version 2.1.
pub(super) fn is_taxii21(essence: &str, params: &[(String, String)]) -> bool {
    essence == "application/taxii+json"
        && params
            .iter()
            .filter(|(k, _)| k == "version")
            .all(|(_, v)| v == "2.1")
}

/// The request's `Accept` must allow TAXII 2.1 JSON (a range with `q=0`
/// refuses it).
pub(super) fn accept(parts: &http::request::Parts) -> Result<(), TaxiiError> {
    let Some(a) = parts.headers.get(header::ACCEPT) else {
        return Ok(());
    };
    let a = a.to_str().unwrap_or_default();
    let ok = a.split(',').any(|m| {
        let (essence, params) = media_type(m);
        let refused = params
            .iter()
            .any(|(k, v)| k == "q" && v.parse::<f32>().is_ok_and(|q| q <= 0.0));
        !refused
            && (essence == "*/*" || essence == "application/*" || is_taxii21(&essence, &params))
    });
    if ok {
        Ok(())
    } else {
        Err(TaxiiError::NotAcceptable(a.to_owned()))
    }
}

pub(super) fn parse_query(q: &str) -> Result<HashMap<String, String>, TaxiiError> {
    let mut out = HashMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k)?;
        let v = percent_decode(v)?;
        out.insert(k, v);
    }
    Ok(out)
}

pub(super) fn percent_decode(s: &str) -> Result<String, TaxiiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| TaxiiError::BadRequest(format!("bad escape in {s:?}")))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| TaxiiError::BadRequest(format!("{s:?} is not UTF-8")))
}

/// A TAXII timestamp (RFC 3339, UTC; 0 to 9 fractional digits) as µs.
pub(super) fn parse_time(t: &str) -> Result<u128, TaxiiError> {
    let dt = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|_| TaxiiError::BadRequest(format!("{t:?} is not an RFC 3339 timestamp")))?;
    let ns = dt.unix_timestamp_nanos();
    u128::try_from(ns / 1000).map_err(|_| TaxiiError::BadRequest(format!("{t:?} is before 1970")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_with_any_number_of_fractional_digits() {
        assert_eq!(parse_time("2026-11-27T08:42:13Z").unwrap() % 1_000_000, 0);
        assert_eq!(
            parse_time("2026-11-27T08:42:13.5Z").unwrap() % 1_000_000,
            500_000
        );
        assert_eq!(
            parse_time("2026-11-27T08:42:13.521382Z").unwrap() % 1_000_000,
            521_382
        );
        assert_eq!(
            parse_time("2026-11-27T08:42:13.521382999Z").unwrap() % 1_000_000,
            521_382
        );
        assert!(parse_time("yesterday").is_err());
    }

    fn accepts(value: &str) -> bool {
        let (parts, ()) = http::Request::builder()
            .header(header::ACCEPT, value)
            .body(())
            .unwrap()
            .into_parts();
        accept(&parts).is_ok()
    }

    #[test]
    fn media_types_are_read_with_their_parameters() {
        for yes in [
            "application/taxii+json;version=2.1",
            "application/taxii+json; version=\"2.1\"",
            "Application/TAXII+JSON;Version=2.1",
            "application/taxii+json",
            "application/json, application/taxii+json;version=\"2.1\";q=0.9",
            "*/*",
            "application/*",
        ] {
            assert!(accepts(yes), "{yes}");
        }
        for no in [
            "application/taxii+json;version=2.0",
            "application/taxii+json;version=\"2.0\"",
            "application/json",
            "application/taxii+json;version=2.1;q=0",
        ] {
            assert!(!accepts(no), "{no}");
        }
    }

    #[test]
    fn queries_decode_brackets_and_escapes() {
        let q = parse_query(
            "match%5Btype%5D=report,indicator&limit=5&added_after=2026-11-27T08%3A42%3A13Z",
        )
        .unwrap();
        assert_eq!(q["match[type]"], "report,indicator");
        assert_eq!(q["limit"], "5");
        assert_eq!(q["added_after"], "2026-11-27T08:42:13Z");
    }
}
