//! The body every request and answer in the proxy has (a boxed `http_body`, whatever made
//! it: a connection, h2, the cache, the proxy itself), and its two plain makings.
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

pub type Body = BoxBody<Bytes, Error>;

/// What a body's failure is (whatever made the body).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A body of these bytes.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|e| match e {}).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}
