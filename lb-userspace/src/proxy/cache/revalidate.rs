//! Revalidation (RFC 9111 §4.3): a fill for a key whose stored answer has gone stale asks the
//! origin with that answer's validators (`If-None-Match` with its ETag, `If-Modified-Since`
//! with its Last-Modified), and a 304 keeps the stored body with the 304's fields laid over its
//! own (§3.2), as nginx's `proxy_cache_revalidate`: an unchanged page costs the origin a head,
//! not its body.
use hyper::{
    HeaderMap,
    header::{self, HeaderName},
};

/// Fields a 304 does not replace in a stored answer (RFC 9111 §3.2): the stored body's own
/// framing and coding.
static KEPT: [HeaderName; 4] =
    [header::CONTENT_LENGTH, header::CONTENT_ENCODING, header::CONTENT_RANGE, header::TRANSFER_ENCODING];

/// Adds a stored answer's validators to a fill's request fields (whose own conditions were
/// taken out: the fill asks for this cache's copy, not a client's); false when it has none.
pub fn ask(fields: &mut HeaderMap, stored: &HeaderMap) -> bool {
    let mut asked = false;
    if let Some(etag) = stored.get(header::ETAG) {
        fields.insert(header::IF_NONE_MATCH, etag.clone());
        asked = true;
    }
    if let Some(modified) = stored.get(header::LAST_MODIFIED) {
        fields.insert(header::IF_MODIFIED_SINCE, modified.clone());
        asked = true;
    }
    asked
}

/// The stored answer's fields updated by a 304 to the check, or None when the 304 names
/// another version than the stored one (an ETag that differs by the weak comparison, RFC 9110
/// §8.8.3.2: a broken origin; the stored answer must not be updated from it, §4.3.4).
pub fn updated(stored: &HeaderMap, not_modified: &HeaderMap) -> Option<HeaderMap> {
    let tag = |fields: &HeaderMap| {
        fields.get(header::ETAG).map(|v| {
            let v = v.as_bytes().trim_ascii();
            v.strip_prefix(b"W/").unwrap_or(v).to_vec()
        })
    };
    if let (Some(old), Some(new)) = (tag(stored), tag(not_modified))
        && old != new
    {
        return None;
    }
    let mut fields = stored.clone();
    // Its age is the 304's alone (how old the check's answer is), if it has one.
    fields.remove(header::AGE);
    for name in not_modified.keys().filter(|name| !KEPT.contains(name)) {
        fields.remove(name);
        for value in not_modified.get_all(name) {
            fields.append(name.clone(), value.clone());
        }
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn fields(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn a_fill_asks_with_the_stored_validators() {
        let mut asked = fields(&[(header::ACCEPT, "*/*")]);
        let stored =
            fields(&[(header::ETAG, "W/\"v1\""), (header::LAST_MODIFIED, "Tue, 01 Dec 2026 10:00:00 GMT")]);
        assert!(ask(&mut asked, &stored));
        assert_eq!(asked[header::IF_NONE_MATCH], "W/\"v1\"");
        assert_eq!(asked[header::IF_MODIFIED_SINCE], "Tue, 01 Dec 2026 10:00:00 GMT");
        assert!(!ask(&mut HeaderMap::new(), &fields(&[(header::CACHE_CONTROL, "max-age=5")])));
    }

    #[test]
    fn a_304_lays_its_fields_over_the_stored_ones_but_the_bodys_own() {
        let stored = fields(&[
            (header::ETAG, "\"v1\""),
            (header::CACHE_CONTROL, "max-age=5"),
            (header::CONTENT_LENGTH, "16"),
            (header::CONTENT_ENCODING, "gzip"),
            (header::AGE, "40"),
            (header::LINK, "</a.css>"),
            (header::LINK, "</b.js>"),
            (header::CONTENT_TYPE, "text/plain"),
        ]);
        let not_modified = fields(&[
            (header::ETAG, "W/\"v1\""),
            (header::CACHE_CONTROL, "max-age=60"),
            (header::CONTENT_LENGTH, "0"),
            (header::CONTENT_ENCODING, "br"),
            (header::AGE, "3"),
            (header::LINK, "</c.css>"),
        ]);
        let updated = updated(&stored, &not_modified).unwrap();
        assert_eq!(updated[header::CACHE_CONTROL], "max-age=60");
        assert_eq!(updated[header::CONTENT_LENGTH], "16");
        assert_eq!(updated[header::CONTENT_ENCODING], "gzip");
        assert_eq!(updated[header::AGE], "3", "the check's age");
        assert_eq!(updated.get_all(header::LINK).iter().collect::<Vec<_>>(), ["</c.css>"]);
        assert_eq!(updated[header::CONTENT_TYPE], "text/plain");
        let no_age = updated_without_age(&stored);
        assert!(!no_age.contains_key(header::AGE), "the stored answer's old age went");
    }

    fn updated_without_age(stored: &HeaderMap) -> HeaderMap {
        updated(stored, &fields(&[(header::CACHE_CONTROL, "max-age=60")])).unwrap()
    }

    #[test]
    fn a_304_about_another_version_updates_nothing() {
        let stored = fields(&[(header::ETAG, "\"v1\"")]);
        assert_eq!(updated(&stored, &fields(&[(header::ETAG, "\"v2\"")])), None);
        assert!(updated(&stored, &HeaderMap::new()).is_some(), "no tag: the one asked about");
    }
}
