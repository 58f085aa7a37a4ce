//! Choose: the pool a request goes to (a sticky cookie's pool, else the route's split by a
//! uniform draw) and whether to set the sticky cookie; then the pool's backend for the request
//! (`L7Pool::pick_or_wait`: balancer, circuit breaking).
use std::{net::IpAddr, sync::Arc};

use hyper::{HeaderMap, StatusCode, header::HeaderValue, http::request::Parts};

use crate::{
    config::STICKY_COOKIE,
    proxy::{
        metrics::Label,
        phase::Refusal,
        pool::{L7Pool, Upstream},
        routes::{self, CompiledRoute},
        snapshot::Snapshot,
    },
};

pub struct Choice {
    pub pool: Label,
    /// A sticky route's first answer to this client sets the cookie.
    pub set_sticky: bool,
}

/// The pool for a request with `headers`, given a uniform draw in [0, 100).
pub fn pool(route: &CompiledRoute, headers: &HeaderMap, draw: f64) -> Choice {
    let remembered = route
        .sticky
        .then(|| routes::cookie(headers, STICKY_COOKIE))
        .flatten()
        .and_then(|p| route.serves(p))
        .cloned();
    let set_sticky = route.sticky && remembered.is_none();
    Choice { pool: remembered.unwrap_or_else(|| route.pool_for(draw).clone()), set_sticky }
}

/// The chosen pool, if it has backends (else 503, or the route's fallback).
pub fn serving<'s>(
    snapshot: &'s Snapshot,
    route: &CompiledRoute,
    choice: &Choice,
) -> Result<&'s L7Pool, Refusal> {
    snapshot
        .pools
        .get(&*choice.pool)
        .filter(|p| !p.upstreams.is_empty())
        .ok_or_else(|| unavailable(route, "no backend available"))
}

/// The pool's backend for `request` from `client`; while every backend is at its request
/// limit, waits for one within the route's timeout.
pub async fn backend(
    pool: &L7Pool,
    route: &CompiledRoute,
    request: &Parts,
    client: IpAddr,
) -> Result<Arc<Upstream>, Refusal> {
    pool.pick_or_wait(request, client, route.timeout)
        .await
        .ok_or_else(|| unavailable(route, "every backend is at its request limit"))
}

fn unavailable(route: &CompiledRoute, reason: &'static str) -> Refusal {
    Refusal::fallback(route.fallback.as_ref(), StatusCode::SERVICE_UNAVAILABLE, reason)
}

/// The Set-Cookie value that keeps a client on `pool`.
pub fn sticky_cookie(pool: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{STICKY_COOKIE}={pool}; Path=/; HttpOnly")).ok()
}
