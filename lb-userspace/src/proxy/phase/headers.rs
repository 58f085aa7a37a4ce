//! Headers: the upstream request's head and the client's response head. Hop-by-hop fields
//! (RFC 9110 §7.6.1) and the ones Connection names are dropped, but never Host; forwarding
//! fields are added (X-Forwarded-For/-Proto, Forwarded, Via, X-Request-Id).
use hyper::{
    HeaderMap, Version,
    header::{self, HeaderName, HeaderValue},
    http::request::Parts,
};

use crate::proxy::{access_log::ClientConn, header_tokens};

/// Fields a Connection header may not remove: the request would lose its meaning.
const END_TO_END: [&str; 1] = ["host"];
/// Hop-by-hop fields besides Connection and Upgrade (names made once, not per request).
const HOP_BY_HOP: [HeaderName; 5] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const VIA: HeaderName = HeaderName::from_static("via");

/// Drops hop-by-hop fields (keeping Upgrade and Connection for a protocol switch).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        for name in header_tokens(headers, header::CONNECTION) {
            if !(keep_upgrade && name == "upgrade") && !END_TO_END.contains(&name.as_str()) {
                headers.remove(name.as_str());
            }
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Rewrites the client's request head for the backend.
pub fn upstream_request(
    parts: &mut Parts,
    host: &str,
    conn: &ClientConn,
    request_id: &str,
    h2_upstream: bool,
    upgrade: bool,
) {
    if parts.version == Version::HTTP_2
        && !parts.headers.contains_key(header::HOST)
        && let Ok(value) = HeaderValue::from_str(host)
    {
        parts.headers.insert(header::HOST, value);
    }
    // gRPC needs `te: trailers` end to end; every other hop-by-hop header stops here.
    let te_trailers =
        parts.headers.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if h2_upstream && te_trailers {
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let client = conn.address.ip();
    let forwarded_for = match parts.headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {client}"),
        None => client.to_string(),
    };
    let proto = if conn.tls() { "https" } else { "http" };
    let for_node = if client.is_ipv6() { format!("\"[{client}]\"") } else { client.to_string() };
    for (name, value) in [
        (X_FORWARDED_FOR, forwarded_for),
        (header::FORWARDED, format!("for={for_node};proto={proto};host={host}")),
        (X_REQUEST_ID, request_id.to_owned()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            parts.headers.insert(name, v);
        }
    }
    parts.headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    parts.headers.insert(VIA, HeaderValue::from_static("1.1 sluice"));
}

/// Rewrites the backend's response head for the client.
pub fn client_response(headers: &mut HeaderMap, switching: bool) {
    strip_hop_by_hop(headers, switching);
    headers.insert(VIA, HeaderValue::from_static("1.1 sluice"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_cannot_remove_host() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "example.test".parse().unwrap());
        headers.insert(header::CONNECTION, "close, Host, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.get(header::HOST).unwrap(), "example.test");
        assert!(!headers.contains_key("x-secret") && !headers.contains_key(header::CONNECTION));
    }

    #[test]
    fn an_upgrade_keeps_its_fields() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        strip_hop_by_hop(&mut headers, true);
        assert!(headers.contains_key(header::UPGRADE) && headers.contains_key(header::CONNECTION));
        assert!(!headers.contains_key("keep-alive"));
    }
}
