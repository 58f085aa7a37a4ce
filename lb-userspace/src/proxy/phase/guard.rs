//! Guard: what is refused before routing: plain HTTP on a redirect listener, ambiguous framing
//! (Content-Length with Transfer-Encoding), more header fields than allowed, two Host headers,
//! a declared body over the limit. Framing errors inside a body are the engine's (`h1::body`).
use hyper::{
    HeaderMap, StatusCode,
    header::{self, HeaderValue},
};

use crate::{
    config::Listener,
    proxy::{h1::head::MAX_HEADER_FIELDS, phase::Refusal},
};

/// The request head's facts the guard looks at.
pub struct Head<'a> {
    pub headers: &'a HeaderMap,
    pub host: &'a str,
    pub target: &'a str,
}

pub fn check(head: &Head<'_>, listener: &Listener, tls: bool) -> Result<(), Refusal> {
    if listener.redirect_https && !tls {
        let mut refusal = Refusal::new(StatusCode::MOVED_PERMANENTLY, "moved to https");
        if let Ok(location) = HeaderValue::from_str(&format!("https://{}{}", head.host, head.target)) {
            refusal.response.headers_mut().insert(header::LOCATION, location);
        }
        return Err(refusal);
    }
    let headers = head.headers;
    // Request smuggling (RFC 9112 §6.3): a message with both framings is refused, not forwarded
    // with one of them, and the connection is closed after the answer.
    if headers.contains_key(header::TRANSFER_ENCODING) && headers.contains_key(header::CONTENT_LENGTH) {
        return Err(closing(Refusal::new(
            StatusCode::BAD_REQUEST,
            "both Content-Length and Transfer-Encoding",
        )));
    }
    // RFC 9112 §3.2: a request with more than one Host field gets 400.
    if headers.get_all(header::HOST).iter().count() > 1 {
        return Err(closing(Refusal::new(StatusCode::BAD_REQUEST, "more than one Host header")));
    }
    // HTTP/1.1's parser enforces this too; HTTP/2 only bounds the header list's bytes.
    if headers.len() > MAX_HEADER_FIELDS {
        return Err(Refusal::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields"));
    }
    let too_big = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > listener.max_body_bytes);
    if too_big {
        return Err(Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"));
    }
    Ok(())
}

/// The refusal with `Connection: close` (the rest of the stream cannot be trusted).
fn closing(mut refusal: Refusal) -> Refusal {
    refusal.response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    refusal
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

    fn status(headers: &[(&str, &str)]) -> Option<u16> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let head = Head { headers: &map, host: "a", target: "/" };
        check(&head, &listener(), false).err().map(|r| r.response.status().as_u16())
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
}
