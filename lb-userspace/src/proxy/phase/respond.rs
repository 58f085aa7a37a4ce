//! Respond: the answers the proxy makes itself (plain text, a route's fallback, a cached
//! answer), the body type every response has, and the `Date` every answer gets.
use std::{
    cell::RefCell,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::{
    Response, StatusCode,
    header::{self, HeaderValue},
};

use crate::{config::Fallback, proxy::cache::Cached};

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A `text/plain` answer with `text` and a newline.
pub fn text(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
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

/// The route's fallback if it has one, else `text`.
pub fn fallback_or(fallback_config: Option<&Fallback>, status: StatusCode, reason: &str) -> Response<Body> {
    match fallback_config {
        Some(f) => fallback(f),
        None => text(status, reason),
    }
}

/// A response from a cached (or just fetched) answer, marked `X-Cache: HIT|MISS`.
pub fn cached(answer: &Cached, x_cache: &'static str) -> Response<Body> {
    let mut response = Response::new(full(answer.body.clone()));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers.clone();
    response.headers_mut().insert("x-cache", HeaderValue::from_static(x_cache));
    response
}

/// The `Date` value for an answer that has none, made once a second per worker thread (a clone
/// is a reference count, not a copy).
pub fn date() -> HeaderValue {
    thread_local! {
        static DATE: RefCell<(u64, HeaderValue)> = const { RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    DATE.with_borrow_mut(|(at, value)| {
        if *at != second {
            let text = httpdate::fmt_http_date(now);
            *value = HeaderValue::from_str(&text).expect("an HTTP date is a valid field value");
            *at = second;
        }
        value.clone()
    })
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|e| match e {}).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_is_an_http_date() {
        let value = super::date();
        assert!(httpdate::parse_http_date(value.to_str().unwrap()).is_ok());
    }
}
