//! The phases one request goes through, in order: guard (framing and size limits), path (made
//! canonical before routing), cors (a browser's preflight answered, its origin's answers
//! marked), client (the address behind trusted proxies), gate (allow/deny, API key, JWT, rate
//! limit), fault (a share held or refused, to test with), choose (split,
//! sticky, circuit breaking), headers, grpc_web (a browser's call as gRPC, its answer back),
//! caching, shadow, upstream (tries, retries, outlier
//! observation), respond, compress. Each is a short function of the request's parts; `pipeline` calls
//! them in turn.
pub mod caching;
pub mod choose;
pub mod client;
pub mod compress;
pub mod cors;
pub mod fault;
pub mod gate;
pub mod grpc_web;
pub mod guard;
pub mod headers;
pub mod path;
pub mod respond;
pub mod shadow;
pub mod upstream;

use hyper::{
    Response,
    header::{self, HeaderValue},
};

use crate::{config::Fallback, proxy::body::Body};

/// A request the proxy answers by itself, and why (for the access log).
pub struct Refusal {
    pub response: Box<Response<Body>>,
    pub reason: &'static str,
}

impl Refusal {
    pub fn new(status: hyper::StatusCode, reason: &'static str) -> Refusal {
        Refusal::with(respond::text(status, reason), reason)
    }

    pub fn with(response: Response<Body>, reason: &'static str) -> Refusal {
        Refusal { response: Box::new(response), reason }
    }

    /// No backend could answer: the route's fallback answer if it has one, else `status` with
    /// `reason` as text.
    pub fn fallback(fallback: Option<&Fallback>, status: hyper::StatusCode, reason: &'static str) -> Refusal {
        Refusal::with(respond::fallback_or(fallback, status, reason), reason)
    }

    /// The refusal with `Connection: close`: what follows on the connection cannot be trusted.
    pub fn closing(mut self) -> Refusal {
        self.response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        self
    }
}
