//! The fields the proxy writes as itself, both ways and in both protocols: the request's ID
//! and Via.
use hyper::header::HeaderName;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const VIA: HeaderName = HeaderName::from_static("via");
/// What the proxy says in Via, both ways.
pub const VIA_VALUE: &str = "1.1 sluice";
