//! Guard: what is refused before routing: what its engine found malformed, plain HTTP on a
//! redirect listener, ambiguous framing (Content-Length with Transfer-Encoding), more header
//! fields than allowed, CONNECT, a bare authority as a target and `*` but for OPTIONS, two Host
//! headers, no Host or an invalid one, a declared body over the limit; and the limit on a body
//! as it streams. Framing errors inside a body are the engine's (`h1::body`).
use std::sync::{
    Arc,
    atomic::{AtomicU16, Ordering},
};

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::{
    HeaderMap, Method, Request, StatusCode, Uri, Version,
    header::{self, HeaderValue},
};

use crate::{
    config::Listener,
    proxy::{
        body::Body,
        byte_set::byte_set,
        client_cert::X_FORWARDED_CLIENT_CERT,
        h1::head::MAX_HEADER_FIELDS,
        own_fields::X_REQUEST_ID,
        phase::{Refusal, headers::X_FORWARDED_FOR},
    },
};

/// Put in a request's extensions by the engine that read it: the request is malformed in a way
/// its protocol layer let through (what, for the refusal's reason), and is refused with 400.
#[derive(Debug, Clone, Copy)]
pub struct Malformed(pub &'static str);

/// The request head's facts the guard looks at.
pub struct Head<'a> {
    pub method: &'a Method,
    pub version: Version,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub read: &'a Read<'a>,
    pub host: &'a str,
    pub malformed: Option<Malformed>,
}

impl<'a> Head<'a> {
    /// `request`'s head, with the fields `read` from it and its `host`.
    pub fn of<B>(request: &'a Request<B>, read: &'a Read<'a>, host: &'a str) -> Head<'a> {
        let (method, version, uri, headers) =
            (request.method(), request.version(), request.uri(), request.headers());
        let malformed = request.extensions().get::<Malformed>().copied();
        Head { method, version, uri, headers, read, host, malformed }
    }
}

/// The request's fields that the pipeline reads before routing, found in one pass over the
/// map. A lookup hashes its name (~110 instructions), and each of these names was looked up,
/// though most requests carry only Host of them.
#[derive(Debug, Default)]
pub struct Read<'a> {
    /// The first Host field.
    pub host: Option<&'a HeaderValue>,
    /// How many Host fields there are.
    pub hosts: usize,
    /// The first Content-Length field.
    pub length: Option<&'a HeaderValue>,
    pub transfer_encoding: bool,
    pub upgrade: bool,
    /// The first X-Request-Id field.
    pub request_id: Option<&'a HeaderValue>,
    /// The first X-Forwarded-For field (the proxy appends the client to it).
    pub forwarded_for: Option<&'a HeaderValue>,
    /// An X-Forwarded-Client-Cert field: a client's own, which no backend gets.
    pub client_cert: bool,
}

impl<'a> Read<'a> {
    pub fn of(headers: &'a HeaderMap) -> Read<'a> {
        let mut read = Read::default();
        for (name, value) in headers {
            if name == header::HOST {
                read.hosts += 1;
                read.host.get_or_insert(value);
            } else if name == header::CONTENT_LENGTH {
                read.length.get_or_insert(value);
            } else if name == header::TRANSFER_ENCODING {
                read.transfer_encoding = true;
            } else if name == header::UPGRADE {
                read.upgrade = true;
            } else if name == X_REQUEST_ID {
                read.request_id.get_or_insert(value);
            } else if name == X_FORWARDED_FOR {
                read.forwarded_for.get_or_insert(value);
            } else if name == X_FORWARDED_CLIENT_CERT {
                read.client_cert = true;
            }
        }
        read
    }
}

/// The bytes of a host name: a URI's unreserved, sub-delims and `%` (RFC 3986 §3.2.2), and any
/// above ASCII (every request's Host goes through it).
const NAME_BYTE: [bool; 256] = byte_set(b"-._~%!$&'()*+,;=", true);

/// Whether a Host value (or a target's authority) is `host [":" port]` (RFC 9110 §7.2, RFC 3986
/// §3.2.2): a bracketed IPv6 literal, or a name of the characters a URI allows there, then an
/// optional port of digits. Bytes above ASCII pass, as nginx lets them; spaces, controls, `/`,
/// `"`, `@` (userinfo) and an empty host do not.
pub fn valid_host(value: &[u8]) -> bool {
    let (host, rest) = match value.strip_prefix(b"[") {
        Some(literal) => {
            let Some(end) = literal.iter().position(|&b| b == b']') else { return false };
            let address = &literal[..end];
            if !address.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                return false;
            }
            (address, &literal[end + 1..])
        }
        // One pass: the name ends at the first byte that is not a name's (`:` or a bad one).
        None => value.split_at(value.iter().position(|&b| !NAME_BYTE[b as usize]).unwrap_or(value.len())),
    };
    let port_ok = match rest.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    !host.is_empty() && port_ok
}

/// What the checks found that a later phase needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The head says the request has no body (neither chunked nor a length above zero).
    pub bodiless: bool,
    /// The body's length as the head says it (Content-Length), when it says one.
    pub length: Option<u64>,
}

pub fn check(head: &Head<'_>, listener: &Listener, tls: bool) -> Result<Checked, Refusal> {
    if let Some(Malformed(reason)) = head.malformed {
        return Err(Refusal::new(StatusCode::BAD_REQUEST, reason));
    }
    if listener.redirect_https && !tls {
        let mut refusal = Refusal::new(StatusCode::MOVED_PERMANENTLY, "moved to https");
        let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Ok(location) = HeaderValue::from_str(&format!("https://{}{target}", head.host)) {
            refusal.response.headers_mut().insert(header::LOCATION, location);
        }
        return Err(refusal);
    }
    let (chunked, length) = (head.read.transfer_encoding, head.read.length);
    // Request smuggling (RFC 9112 §6.3): a message with both framings is refused, not forwarded
    // with one of them, and the connection is closed after the answer.
    if chunked && length.is_some() {
        return Err(
            Refusal::new(StatusCode::BAD_REQUEST, "both Content-Length and Transfer-Encoding").closing()
        );
    }
    // RFC 9112 §3.2: a request with more than one Host field gets 400.
    if head.read.hosts > 1 {
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "more than one Host header").closing());
    }
    // A reverse proxy has no tunnel to open for CONNECT; a target that is only an authority
    // (`GET a.test:80`) is CONNECT's form, and `*` is OPTIONS' alone (RFC 9112 §3.2.3, §3.2.4).
    if head.method == Method::CONNECT {
        return Err(Refusal::new(StatusCode::NOT_IMPLEMENTED, "CONNECT is not supported").closing());
    }
    let authority_form = head.uri.scheme().is_none() && head.uri.authority().is_some();
    if authority_form || (head.uri.path() == "*" && head.method != Method::OPTIONS) {
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "bad request target").closing());
    }
    // RFC 9110 §7.2: an invalid Host gets 400, and so does an HTTP/1.1 request without one (an
    // HTTP/2 request names its host in `:authority` or Host). HTTP/1.0 may leave it out.
    match (head.read.host, head.uri.authority().map(|a| a.as_str())) {
        (Some(host), _) if !valid_host(host.as_bytes()) => {
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "invalid Host header").closing());
        }
        (_, Some(authority)) if !valid_host(authority.as_bytes()) => {
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "invalid authority").closing());
        }
        (None, None) if head.version >= Version::HTTP_11 => {
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "no Host header").closing());
        }
        _ => {}
    }
    // HTTP/1.1's parser enforces this too; HTTP/2 only bounds the header list's bytes.
    if head.headers.len() > MAX_HEADER_FIELDS {
        return Err(Refusal::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields"));
    }
    Ok(Checked {
        bodiless: !chunked && length.is_none_or(|v| v.as_bytes() == b"0"),
        length: length.and_then(|v| v.to_str().ok()?.parse::<u64>().ok()),
    })
}

/// A body its head says is longer than `max_bytes` (the route's limit, else the listener's) gets
/// 413 before a byte of it is read; one that turns out longer is cut (`limit_body`).
pub fn body_fits(checked: &Checked, max_bytes: u64) -> Result<(), Refusal> {
    match checked.length {
        Some(n) if n > max_bytes => {
            Err(Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"))
        }
        _ => Ok(()),
    }
}

/// The body cut off past `max_bytes`. A body that fails while streaming (too long, bad
/// chunking) is the client's fault: the returned cell says which (413 or 400), so the answer is
/// that rather than 502. A request that ends with its head has nothing to limit or remember
/// (no box, no allocation): None.
pub fn limit_body(body: Body, max_bytes: u64) -> (Body, Option<Arc<AtomicU16>>) {
    if hyper::body::Body::is_end_stream(&body) {
        return (body, None);
    }
    let body_error = Arc::new(AtomicU16::new(0));
    let seen = body_error.clone();
    let limited = Limited::new(body, max_bytes as usize)
        .map_err(move |err| {
            let status = if err.is::<LengthLimitError>() { 413 } else { 400 };
            seen.store(status, Ordering::Relaxed);
            err
        })
        .boxed();
    (limited, Some(body_error))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn listener() -> Listener {
        let text = "[dataplane]\ninterface = \"lo\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\nmax_body_bytes = 100\n";
        Config::parse(Path::new("t.toml"), text).unwrap().listeners.remove(0)
    }

    fn status_of(version: Version, authority: Option<&str>, headers: &[(&str, &str)]) -> Option<u16> {
        let uri: Uri = match authority {
            Some(authority) => format!("http://{authority}/").parse().unwrap(),
            None => "/".parse().unwrap(),
        };
        status_for(&Method::GET, &uri, version, headers)
    }

    fn checked(
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &[(&str, &str)],
    ) -> Result<Checked, Refusal> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let head =
            Head { method, version, uri, headers: &map, read: &Read::of(&map), host: "a", malformed: None };
        let checked = check(&head, &listener(), false)?;
        body_fits(&checked, listener().max_body_bytes).map(|()| checked)
    }

    fn status_for(method: &Method, uri: &Uri, version: Version, headers: &[(&str, &str)]) -> Option<u16> {
        checked(method, uri, version, headers).err().map(|r| r.response.status().as_u16())
    }

    fn status(headers: &[(&str, &str)]) -> Option<u16> {
        let mut with_host = headers.to_vec();
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            with_host.push(("host", "a"));
        }
        status_of(Version::HTTP_11, None, &with_host)
    }

    #[test]
    fn a_host_is_a_name_or_an_address_then_a_port() {
        for good in [
            "a",
            "example.test",
            "a:80",
            "a:",
            "xn--bcher-kva.example",
            "a_b.test",
            "[::1]",
            "[2001:db8::5]:8443",
            "192.0.2.1:80",
            "a;b=c,d",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        assert!(valid_host("bücher.example".as_bytes()), "bytes above ASCII pass, as in nginx");
        for bad in [
            "", ":80", "a b", "a/b", "a\\b", "a\"b", "u@a", "a:8x", "a:80:90", "[::1", "[::1]x", "[]",
            "[v1.x]", "a?b", "a#b", "a\tb",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn a_request_names_one_valid_host() {
        assert_eq!(status_of(Version::HTTP_11, None, &[]), Some(400), "HTTP/1.1 without Host");
        assert_eq!(status_of(Version::HTTP_10, None, &[]), None, "HTTP/1.0 may leave it out");
        assert_eq!(status_of(Version::HTTP_2, None, &[]), Some(400), "HTTP/2 with neither");
        assert_eq!(status_of(Version::HTTP_2, Some("a:443"), &[]), None);
        assert_eq!(status_of(Version::HTTP_11, Some("a"), &[]), None, "absolute form");
        assert_eq!(status_of(Version::HTTP_11, Some("u@a"), &[("host", "a")]), Some(400));
        let host = [("host", "a")];
        let authority_form: Uri = "a.test:80".parse().unwrap();
        assert_eq!(status_for(&Method::GET, &authority_form, Version::HTTP_11, &host), Some(400));
        assert_eq!(status_for(&Method::CONNECT, &authority_form, Version::HTTP_11, &host), Some(501));
        let star: Uri = "*".parse().unwrap();
        assert_eq!(status_for(&Method::OPTIONS, &star, Version::HTTP_11, &host), None);
        assert_eq!(status_for(&Method::GET, &star, Version::HTTP_11, &host), Some(400));
        for bad in ["", "a b", "a/b", "a\"b"] {
            assert_eq!(status(&[("host", bad)]), Some(400), "{bad:?}");
            assert_eq!(status_of(Version::HTTP_10, None, &[("host", bad)]), Some(400), "{bad:?}");
        }
    }

    #[test]
    fn ambiguous_or_oversized_requests_are_refused() {
        assert_eq!(status(&[("host", "a")]), None);
        assert_eq!(status(&[("host", "a"), ("host", "b")]), Some(400), "two Host headers");
        assert_eq!(status(&[("content-length", "4"), ("transfer-encoding", "chunked")]), Some(400));
        assert_eq!(status(&[("content-length", "101")]), Some(413));
        let many: Vec<(String, &str)> = (0..150).map(|i| (format!("x-h{i}"), "v")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(status(&many), Some(431));
    }

    #[test]
    fn a_request_its_engine_found_malformed_is_refused_with_its_reason() {
        let mut request = Request::get("http://a/").body(()).unwrap();
        request.extensions_mut().insert(Malformed("a field value begins or ends with whitespace"));
        let read = Read::of(request.headers());
        let refusal = check(&Head::of(&request, &read, "a"), &listener(), false).unwrap_err();
        assert_eq!(refusal.response.status(), 400);
        assert_eq!(refusal.reason, "a field value begins or ends with whitespace");
        let plain = Request::get("http://a/").body(()).unwrap();
        assert!(check(&Head::of(&plain, &read, "a"), &listener(), false).is_ok());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_cut_and_marked_413() {
        use http_body_util::{BodyExt, Full};
        let body = |text: &'static str| Full::new(bytes::Bytes::from(text)).map_err(|e| match e {}).boxed();
        let (empty, seen) = limit_body(crate::proxy::body::empty(), 4);
        assert!(seen.is_none() && empty.collect().await.is_ok(), "an empty body is left as it is");
        let (small, seen) = limit_body(body("abcd"), 4);
        assert_eq!(small.collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(seen.unwrap().load(Ordering::Relaxed), 0);
        let (large, seen) = limit_body(body("abcde"), 4);
        assert!(large.collect().await.is_err());
        assert_eq!(seen.unwrap().load(Ordering::Relaxed), 413);
    }

    #[test]
    fn one_pass_reads_the_fields_routing_needs() {
        let mut map = HeaderMap::new();
        for (k, v) in [
            ("host", "a"),
            ("x-request-id", "id-1"),
            ("host", "b"),
            ("content-length", "3"),
            ("upgrade", "websocket"),
            ("x-other", "1"),
            ("x-request-id", "id-2"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2"),
        ] {
            map.append(header::HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let read = Read::of(&map);
        assert_eq!((read.host.unwrap(), read.hosts), (&HeaderValue::from_static("a"), 2));
        assert_eq!(read.request_id.unwrap(), "id-1", "the first, as a lookup finds it");
        assert_eq!(read.length.unwrap(), "3");
        assert_eq!(read.forwarded_for.unwrap(), "192.0.2.1");
        assert!(read.upgrade && !read.transfer_encoding);
        let empty = HeaderMap::new();
        let none = Read::of(&empty);
        assert!(none.host.is_none() && none.hosts == 0 && none.request_id.is_none() && !none.upgrade);
        assert!(none.forwarded_for.is_none());
    }

    #[test]
    fn a_head_without_length_or_chunking_is_bodiless() {
        let bodiless = |pairs: &[(&str, &str)]| {
            let with_host = [&[("host", "a")], pairs].concat();
            let Ok(checked) = checked(&Method::POST, &Uri::from_static("/"), Version::HTTP_11, &with_host)
            else {
                panic!("refused {pairs:?}")
            };
            checked.bodiless
        };
        assert!(bodiless(&[]));
        assert!(bodiless(&[("content-length", "0")]));
        assert!(!bodiless(&[("content-length", "3")]));
        assert!(!bodiless(&[("transfer-encoding", "chunked")]));
    }
}
