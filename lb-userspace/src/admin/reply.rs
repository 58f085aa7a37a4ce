//! The admin API's answers: JSON bodies, errors as `{"error": "..."}`.
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

/// One answer of the admin API (and of the metrics server).
pub type Answer = Response<Full<Bytes>>;

/// `body` as JSON with `status`.
pub fn reply(status: StatusCode, body: Value) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    response
}

/// `{"error": why}` with `status`.
pub fn fail(status: StatusCode, why: impl std::fmt::Display) -> Answer {
    reply(status, json!({ "error": why.to_string() }))
}
