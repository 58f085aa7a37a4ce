//! Conditional requests answered from a stored answer (RFC 9110 §13.1): `If-None-Match` by weak
//! comparison, else `If-Modified-Since` against `Last-Modified`; which requests the cache leaves
//! to the backend, and the fields a fill leaves out so that it stores the whole answer.
//!
//! A fill is made with the first waiting client's fields, and every client waiting on the same
//! key gets its answer: with that client's `If-None-Match` it would be a 304, with its `Range` a
//! 206, either handed to clients that hold nothing. So a fill asks without them, as nginx's
//! cache does, and each client's condition is then judged against the stored answer here.
use hyper::{
    HeaderMap,
    header::{self, HeaderName, HeaderValue},
};

/// Requests with these fields pass the cache by: their answers are one client's (a part of the
/// stored answer, a precondition the origin judges, a protocol switch: 206, 412, 101).
pub static PASSED_BY: [HeaderName; 5] =
    [header::RANGE, header::IF_RANGE, header::IF_MATCH, header::IF_UNMODIFIED_SINCE, header::UPGRADE];

/// The conditions judged here, left out of a fill's request.
pub static JUDGED_HERE: [HeaderName; 2] = [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE];

/// Whether a request with `request`'s fields is answered from the cache at all.
pub fn cacheable_request(request: &HeaderMap) -> bool {
    !PASSED_BY.iter().any(|name| request.contains_key(name))
}

/// Whether a GET or HEAD with `request`'s fields gets 304 from a stored 200 with `stored`'s
/// (RFC 9110 §13.2.2): `If-None-Match` when present, else `If-Modified-Since`.
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let mut wanted = request.get_all(header::IF_NONE_MATCH).iter().peekable();
    if wanted.peek().is_some() {
        let etag = stored.get(header::ETAG).and_then(|v| entity_tags(v.as_bytes()).next().flatten());
        return wanted.any(|value| {
            value.as_bytes().trim_ascii() == b"*"
                || entity_tags(value.as_bytes())
                    .any(|tag| matches!((tag, etag), (Some(a), Some(b)) if a == b))
        });
    }
    let date = |headers: &HeaderMap, name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
    };
    match (date(request, header::IF_MODIFIED_SINCE), date(stored, header::LAST_MODIFIED)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// The opaque tags of a list of entity tags (`W/` taken off: the weak comparison), each None
/// where the list stops being one (an unquoted tag, a quote left open): such a list matches
/// nothing from there on.
fn entity_tags(list: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    let mut rest = list;
    std::iter::from_fn(move || {
        rest = rest.trim_ascii_start();
        while let [b',', tail @ ..] = rest {
            rest = tail.trim_ascii_start();
        }
        if rest.is_empty() {
            return None;
        }
        let tag = rest.strip_prefix(b"W/").unwrap_or(rest);
        let Some(quoted) = tag.strip_prefix(b"\"") else {
            rest = b"";
            return Some(None);
        };
        let Some(end) = quoted.iter().position(|&b| b == b'"') else {
            rest = b"";
            return Some(None);
        };
        rest = &quoted[end + 1..];
        Some(Some(&tag[..end + 2]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn if_none_match_is_a_weak_comparison_over_a_list() {
        let stored = fields(&[("etag", "W/\"v1\""), ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")]);
        let asks = |value| not_modified(&fields(&[("if-none-match", value)]), &stored);
        assert!(asks("\"v1\""));
        assert!(asks("W/\"v1\""));
        assert!(asks("\"v0\", \"v1\""));
        assert!(asks(",,\"x,y\" ,W/\"v1\""), "a comma inside a tag is the tag's");
        assert!(asks("*"));
        assert!(!asks("\"v2\""));
        assert!(!asks("\"v1"), "an open quote");
        assert!(!asks("v1"), "unquoted");
        assert!(!asks("\"v1 \""));
        // If-None-Match rules over If-Modified-Since.
        let both =
            fields(&[("if-none-match", "\"v2\""), ("if-modified-since", "Tue, 01 Dec 2026 10:00:00 GMT")]);
        assert!(!not_modified(&both, &stored));
        // No stored ETag: only `*` matches.
        let untagged = fields(&[("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")]);
        assert!(!not_modified(&fields(&[("if-none-match", "\"v1\"")]), &untagged));
        assert!(not_modified(&fields(&[("if-none-match", "*")]), &untagged));
    }

    #[test]
    fn if_modified_since_holds_for_a_date_at_or_after_the_last_change() {
        let stored = fields(&[("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")]);
        let since = |value| not_modified(&fields(&[("if-modified-since", value)]), &stored);
        assert!(since("Tue, 01 Dec 2026 10:00:00 GMT"));
        assert!(since("Wed, 02 Dec 2026 10:00:00 GMT"));
        assert!(!since("Tue, 01 Dec 2026 09:59:59 GMT"));
        assert!(!since("yesterday"), "not a date: ignored");
        assert!(!not_modified(
            &fields(&[("if-modified-since", "Wed, 02 Dec 2026 10:00:00 GMT")]),
            &HeaderMap::new()
        ));
        assert!(!not_modified(&HeaderMap::new(), &stored), "no condition");
    }

    #[test]
    fn ranges_and_preconditions_pass_the_cache_by() {
        assert!(cacheable_request(&fields(&[("if-none-match", "\"v1\""), ("accept", "*/*")])));
        for name in ["range", "if-range", "if-match", "if-unmodified-since", "upgrade"] {
            assert!(!cacheable_request(&fields(&[(name, "x")])), "{name}");
        }
    }
}
