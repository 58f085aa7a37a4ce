//! Respond: the answers the proxy makes itself (plain text, a route's fallback, its redirect
//! or fixed answer, a cached answer, a refused gRPC call).
use bytes::Bytes;
use hyper::{
    Response, StatusCode, Uri,
    header::{self, HeaderValue},
};

use crate::{
    config::{Fallback, OwnAnswer},
    proxy::{
        body::{Body, empty, full},
        cache::Cached,
    },
};

/// Marks an answer `text` made: one a listener's error page may stand in for.
#[derive(Clone, Copy)]
pub struct Plain;

/// A `text/plain` answer with `text` and a newline: an error lbd makes itself.
pub fn text(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response.extensions_mut().insert(Plain);
    response
}

/// An ACME CA's HTTP-01 validation's answer: the key authorization, exactly (RFC 8555 §8.3).
pub fn acme_answer(key_authorization: String) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(key_authorization)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    response
}

/// The route's static answer when no backend can take a request.
pub fn fallback(fallback: &Fallback) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(fallback.body.clone())));
    *response.status_mut() = StatusCode::from_u16(fallback.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let content_type = fallback.content_type.as_deref().unwrap_or("text/plain");
    if let Ok(v) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

/// A route's own answer in place of a backend's, and its reason for the log: a redirect to its
/// `to` (followed, for a prefix, by `uri`'s path and query: the path a backend would get), or
/// its fixed answer.
pub fn own(answer: &OwnAnswer, uri: &Uri) -> (Response<Body>, &'static str) {
    let (status, to, prefix) = match answer {
        OwnAnswer::Respond(fixed) => return (fallback(fixed), "respond"),
        OwnAnswer::Redirect { status, to, prefix } => (status, to, prefix),
    };
    let location = match prefix {
        true => format!("{to}{}", uri.path_and_query().map_or("/", |p| p.as_str())),
        false => to.clone(),
    };
    // Validated text, and a path hyper parsed: always a field value.
    let Ok(location) = HeaderValue::try_from(location) else {
        return (text(StatusCode::INTERNAL_SERVER_ERROR, "bad redirect"), "bad redirect");
    };
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    response.headers_mut().insert(header::LOCATION, location);
    (response, "redirect")
}

/// Marks an HTTP/2 request whose content type is gRPC's (`application/grpc…`): the proxy's
/// refusals of it are gRPC statuses ([`grpc_refusal`]). A gRPC-Web call, once routed, too.
#[derive(Clone, Copy)]
pub struct GrpcCall;

/// The proxy's refusal (`status`, `reason`) of a gRPC call, as gRPC has it (a trailers-only
/// answer in `content_type`, the call's: 200, the code in `grpc-status`, the reason in
/// `grpc-message`), as Envoy answers. gRPC-Web takes the same answer.
/// The code is the one the gRPC spec maps the HTTP status to, which a client would make of the
/// status itself: 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 UNIMPLEMENTED, 400 INTERNAL,
/// 429 and 502–504 UNAVAILABLE, any other UNKNOWN.
pub fn grpc_refusal(status: u16, reason: &str, content_type: HeaderValue) -> Response<Body> {
    let code = grpc_code(status);
    let mut response = Response::new(empty());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert("grpc-status", HeaderValue::from(code));
    // gRPC's message is percent-encoded past printable ASCII, and at `%`.
    let mut message = String::with_capacity(reason.len());
    for byte in reason.bytes() {
        match byte {
            b' '..=b'~' if byte != b'%' => message.push(byte as char),
            _ => message += &format!("%{byte:02X}"),
        }
    }
    if let Ok(message) = HeaderValue::try_from(message) {
        headers.insert("grpc-message", message);
    }
    response
}

/// The gRPC code the gRPC spec maps an HTTP status to ([`grpc_refusal`]).
pub fn grpc_code(status: u16) -> u16 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// The route's fallback if it has one, else `text`.
pub fn fallback_or(fallback_config: Option<&Fallback>, status: StatusCode, reason: &str) -> Response<Body> {
    match fallback_config {
        Some(f) => fallback(f),
        None => text(status, reason),
    }
}

/// The fields a 304 carries from the answer it stands for (RFC 9110 §15.4.5, and Last-Modified).
static NOT_MODIFIED_FIELDS: [header::HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::VARY,
];

/// 304 Not Modified for a cached answer the client holds, marked `X-Cache: HIT|MISS`.
pub fn not_modified(answer: &Cached, x_cache: &'static str) -> Response<Body> {
    let mut response = Response::new(crate::proxy::body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    let headers = response.headers_mut();
    for name in &NOT_MODIFIED_FIELDS {
        for value in answer.headers.get_all(name) {
            headers.append(name, value.clone());
        }
    }
    aged(answer, headers);
    headers.insert("x-cache", HeaderValue::from_static(x_cache));
    response
}

/// A response from a cached (or just fetched) answer, marked `X-Cache: HIT|MISS`, with its
/// `Age` if it was stored.
pub fn cached(answer: &Cached, x_cache: &'static str) -> Response<Body> {
    let mut response = Response::new(full(answer.body.clone()));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers.clone();
    aged(answer, response.headers_mut());
    response.headers_mut().insert("x-cache", HeaderValue::from_static(x_cache));
    response
}

fn aged(answer: &Cached, headers: &mut hyper::HeaderMap) {
    if let Some(age) = answer.age() {
        headers.insert(header::AGE, HeaderValue::from(age));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_grpc_call_is_a_grpc_status_with_the_reason() {
        for (status, code) in
            [(503, "14"), (504, "14"), (429, "14"), (403, "7"), (401, "16"), (404, "12"), (413, "2")]
        {
            let answer =
                grpc_refusal(status, "no healthy backend", HeaderValue::from_static("application/grpc"));
            assert_eq!(answer.status(), StatusCode::OK);
            assert_eq!(answer.headers()["grpc-status"], code, "{status}");
            assert_eq!(answer.headers()["grpc-message"], "no healthy backend");
            assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/grpc");
            assert!(hyper::body::Body::is_end_stream(answer.body()), "trailers-only");
        }
        let grpc = HeaderValue::from_static("application/grpc");
        assert_eq!(grpc_refusal(500, "100% \u{e9}", grpc).headers()["grpc-message"], "100%25 %C3%A9");
    }
}
