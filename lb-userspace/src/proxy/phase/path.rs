//! Path: the request's path made canonical before it is routed, so that routes, their gates and
//! the backend all see one path (RFC 3986 §6.2.2, as nginx and Envoy's `normalize_path` do).
//!
//! Without it a path-keyed gate is bypassed by a path the backend reads differently: with an
//! API key on `/admin` and an open route beside it, `/x/../admin`, `/%61dmin` and `//admin`
//! match the open route, and a backend that normalizes serves `/admin`. So: percent-encoded
//! unreserved characters are decoded (`%61` → `a`, `%2E` → `.`), other escapes kept with
//! uppercase digits (`%2f` → `%2F`: an encoded slash stays one), `.` and `..` segments removed
//! (`..` never climbs past the root), and runs of slashes merged. The backend gets the
//! canonical path; the query is left alone. A malformed escape (`%zz`, a lone `%`) is refused.
//! A route's `rewrite_prefix` then replaces the prefix it matched (`rewrite`).
use std::borrow::Cow;

use hyper::{
    HeaderMap, Request, StatusCode, Uri,
    header::{self, HeaderValue},
};

use super::Refusal;

/// Gives `request` its canonical path; a new URI is made only when the path changes.
pub fn make_canonical<B>(request: &mut Request<B>) -> Result<(), Refusal> {
    let bad = || Refusal::new(StatusCode::BAD_REQUEST, "malformed percent escape in the path");
    let uri = request.uri();
    let Cow::Owned(path) = canonical(uri.path()).map_err(|BadEscape| bad())? else { return Ok(()) };
    *request.uri_mut() = with_path(uri, &path).ok_or_else(bad)?;
    Ok(())
}

/// A route's `rewrite_prefix`: the `prefix` the route matched (the path starts with it)
/// replaced with `with` (a canonical path, validated with the config), the query kept.
pub fn rewrite(uri: &mut Uri, prefix: &str, with: &str) -> Result<(), Refusal> {
    let Some(rest) = uri.path().strip_prefix(prefix) else { return Ok(()) };
    let path = format!("{with}{rest}");
    *uri = with_path(uri, &path)
        .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "the rewritten path is not a path"))?;
    Ok(())
}

/// A backend's redirect under the rewritten prefix given back the route's own (nginx's
/// `proxy_redirect default`): with `/api/` rewritten to `/v2/`, `Location: /v2/x` becomes
/// `/api/x`, and so in an absolute URL naming the request's `host` (lowercase, no port; the
/// backend got the client's Host). Any other Location is left as it is.
pub fn restore_location(headers: &mut HeaderMap, prefix: &str, with: &str, host: &str) {
    let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else { return };
    let path_at = if location.starts_with('/') && !location.starts_with("//") {
        0
    } else {
        let Some(rest) = location.strip_prefix("http://").or_else(|| location.strip_prefix("https://"))
        else {
            return;
        };
        let Some(slash) = rest.find('/') else { return };
        let authority = &rest[..slash];
        let name = authority.rsplit_once(':').map_or(authority, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) { name } else { authority }
        });
        if !name.eq_ignore_ascii_case(host) {
            return;
        }
        location.len() - rest.len() + slash
    };
    let Some(tail) = location[path_at..].strip_prefix(with) else { return };
    let restored = format!("{}{prefix}{tail}", &location[..path_at]);
    if let Ok(value) = HeaderValue::from_str(&restored) {
        headers.insert(header::LOCATION, value);
    }
}

/// `uri` with `path` in place of its own; its query, scheme and authority kept.
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// A path with a malformed percent escape.
#[derive(Debug, PartialEq, Eq)]
pub struct BadEscape;

/// The canonical form of `path` (an origin-form path: `/` and what follows, no query);
/// borrowed when it is canonical already, as almost every path is.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, BadEscape> {
    let bytes = path.as_bytes();
    // What can change a path: an escape, a doubled slash, a segment starting with a dot; most
    // paths have none. `*` (OPTIONS) and an authority (CONNECT) have no path to change.
    let needs_work = bytes.starts_with(b"/")
        && (bytes.contains(&b'%')
            || bytes.windows(2).any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.')));
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    let out = remove_dot_segments(&decoded);
    Ok(if out == path { Cow::Borrowed(path) } else { Cow::Owned(out) })
}

/// Percent escapes of unreserved characters decoded, the others' hex digits uppercased.
fn decode_unreserved(bytes: &[u8]) -> Result<String, BadEscape> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2)) else { return Err(BadEscape) };
        let (Some(h), Some(l)) = (hex(hi), hex(lo)) else { return Err(BadEscape) };
        let byte = h << 4 | l;
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte);
        } else {
            out.extend_from_slice(&[b'%', hi.to_ascii_uppercase(), lo.to_ascii_uppercase()]);
        }
        i += 3;
    }
    // Only ASCII was decoded, and the input was text: still text.
    String::from_utf8(out).map_err(|_| BadEscape)
}

/// RFC 3986 §5.2.4's dot-segment removal, with empty segments merged. A path that ended in a
/// slash, `.` or `..` still ends in a slash.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut ends_in_slash = false;
    for segment in path.split('/').skip(1) {
        ends_in_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            _ => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if ends_in_slash || kept.is_empty() {
        out.push('/');
    }
    out
}

/// What `canonical` keeps for any path (checked by a mutation test below and by fuzzing,
/// `fuzz/`): a path that does not start with `/` is left as it is; a canonical path is
/// canonical again, starts with `/`, holds no empty, `.` or `..` segment and no escape of an
/// unreserved byte, and its escapes' digits are uppercase. Whether `path` changed.
#[cfg(any(test, fuzzing))]
pub fn canonical_once(path: &str) -> bool {
    let Ok(out) = canonical(path) else { return false };
    if !path.starts_with('/') {
        assert_eq!(out, path, "only a path that starts with / changes");
        return false;
    }
    assert_eq!(canonical(&out).unwrap(), out, "{path:?} -> {out:?} is canonical");
    assert!(out.starts_with('/'), "{path:?} -> {out:?}");
    let inner = out[1..].strip_suffix('/').unwrap_or(&out[1..]);
    if !inner.is_empty() {
        for segment in inner.split('/') {
            assert!(!matches!(segment, "" | "." | ".."), "{path:?} -> {out:?}");
        }
    }
    for escape in out.match_indices('%').map(|(i, _)| &out[i + 1..i + 3]) {
        let byte = u8::from_str_radix(escape, 16).unwrap();
        assert!(!byte.is_ascii_alphanumeric() && !b"-._~".contains(&byte), "{path:?} -> {out:?}");
        assert_eq!(escape, escape.to_ascii_uppercase(), "{path:?} -> {out:?}");
    }
    out != path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_under_the_rewritten_prefix_gets_the_route_s_back() {
        for (location, restored) in [
            ("/v2/users?id=1", "/api/users?id=1"),
            ("http://a.test/v2/x", "http://a.test/api/x"),
            ("https://A.Test:8443/v2/", "https://A.Test:8443/api/"),
            ("http://other.test/v2/x", "http://other.test/v2/x"),
            ("/v3/x", "/v3/x"),
            ("//a.test/v2/x", "//a.test/v2/x"),
            ("relative/v2/x", "relative/v2/x"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::LOCATION, location.parse().unwrap());
            restore_location(&mut headers, "/api/", "/v2/", "a.test");
            assert_eq!(headers[header::LOCATION], restored, "{location}");
        }
    }

    #[test]
    fn a_rewrite_replaces_the_matched_prefix_and_keeps_the_rest() {
        for (target, prefix, with, rewritten) in [
            ("/api/users?id=/api/", "/api/", "/", "/users?id=/api/"),
            ("/api", "/api", "/v2", "/v2"),
            ("/api/", "/api", "/v2/", "/v2//"),
            ("http://a.test:8080/old/x%2Fy", "/old/", "/new/", "http://a.test:8080/new/x%2Fy"),
            ("/other", "/api", "/v2", "/other"),
        ] {
            let mut uri: Uri = target.parse().unwrap();
            assert!(rewrite(&mut uri, prefix, with).is_ok());
            assert_eq!(uri, rewritten, "{target} with {prefix} -> {with}");
        }
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for path in ["/", "/a", "/a/b.txt", "/a/", "/a-b_c~d", "/.well-known/x", "/a.b/c", "*"] {
            let out = canonical(path).unwrap();
            assert!(matches!(out, Cow::Borrowed(_)), "{path} -> {out}");
            assert_eq!(out, path);
        }
    }

    #[test]
    fn every_spelling_of_a_path_becomes_one() {
        for (path, want) in [
            ("/x/../admin", "/admin"),
            ("/x/./../admin/", "/admin/"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/x/%2E%2E/admin", "/admin"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/%2f/b", "/a/%2F/b"),
            ("/a%20b", "/a%20b"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/%7euser", "/~user"),
        ] {
            assert_eq!(canonical(path).unwrap(), want, "{path}");
            assert_eq!(canonical(want).unwrap(), want, "{want} is canonical");
        }
    }

    #[test]
    fn the_request_keeps_its_query_and_authority() {
        let mut request = Request::new(());
        *request.uri_mut() = "http://a.test/x/../%61dmin?q=%2e%2e/&r".parse().unwrap();
        make_canonical(&mut request).ok().unwrap();
        assert_eq!(request.uri(), "http://a.test/admin?q=%2e%2e/&r");
        *request.uri_mut() = "/%zz".parse().unwrap();
        let refused = make_canonical(&mut request).err().unwrap();
        assert_eq!(refused.response.status(), StatusCode::BAD_REQUEST);
    }

    /// Mutated paths meet `canonical_once`; the mutations lean on what canonicalization
    /// changes (slashes, dots, escapes).
    #[test]
    fn mutated_paths_become_canonical_once() {
        use crate::mutation::{Rng, mutate};
        let seeds: [&[u8]; 3] = [b"/admin/x/y.txt", b"/a/./b/../c//d/", b"/%61%2e%2F/x?"];
        let spice: [&[u8]; 8] = [b"/", b"//", b"/.", b"/..", b"%", b"%2e", b"%2F", b"%7E"];
        let mut rng = Rng(0x5eed_0009);
        let mut changed = 0;
        for case in 0..20_000 {
            let path = mutate(&mut rng, seeds[case % seeds.len()], &spice);
            let Ok(path) = String::from_utf8(path) else { continue };
            changed += usize::from(canonical_once(&path));
        }
        assert!(changed > 5_000, "the mutations reached what canonicalization changes: {changed}");
    }

    #[test]
    fn a_malformed_escape_is_refused() {
        for path in ["/%", "/a%", "/a%2", "/%zz", "/%g1/x", "/a/%%41"] {
            assert_eq!(canonical(path), Err(BadEscape), "{path}");
        }
    }
}
