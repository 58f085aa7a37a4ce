//! Choose: the pool a request goes to (a sticky cookie's pool, else the route's split by a
//! uniform draw) and whether to set the sticky cookie. The backend is picked by the pool
//! (`L7Pool::pick_or_wait`: balancer, circuit breaking).
use hyper::{HeaderMap, header::HeaderValue};

use crate::proxy::{
    metrics::Label,
    routes::{self, CompiledRoute},
};

/// The cookie that keeps a client on the pool a sticky split gave it.
pub const STICKY_COOKIE: &str = "sluice_pool";

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

/// The Set-Cookie value that keeps a client on `pool`.
pub fn sticky_cookie(pool: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{STICKY_COOKIE}={pool}; Path=/; HttpOnly")).ok()
}
