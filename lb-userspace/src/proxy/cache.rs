//! The response cache of routes with `cache`: GET/HEAD answers that Cache-Control (max-age,
//! s-maxage, no-store, private) or Expires allow, keyed by method, host, path and the request
//! headers the answer Varies on; bounded by entries and bytes (LRU); concurrent misses of one
//! key make one upstream request; `lbctl cache purge` empties a route or one path.
use std::{
    collections::HashMap,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_cache_semantics::{CacheOptions, CachePolicy};
use hyper::{HeaderMap, Method, StatusCode, header};
use lru::LruCache;
use tokio::sync::OnceCell;

use crate::config::CacheConfig;

/// A stored answer.
#[derive(Clone)]
pub struct Cached {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    expires: Instant,
}

impl Cached {
    /// An answer that is not stored (served once to the requests that waited for it).
    pub fn now(status: StatusCode, headers: HeaderMap, body: Bytes) -> Cached {
        Cached { status, headers, body, expires: Instant::now() }
    }

    pub fn fresh(&self) -> bool {
        Instant::now() < self.expires
    }
}

/// One route's cache.
struct RouteCache {
    config: CacheConfig,
    entries: LruCache<String, Cached>,
    bytes: usize,
    /// Header names a path's answers Vary on (to build keys for later requests).
    vary: HashMap<String, Vec<String>>,
    /// Misses being fetched: later requests of the same key wait for the first.
    pending: HashMap<String, Arc<OnceCell<Fill>>>,
}

/// What the requests waiting on one miss get.
#[derive(Clone)]
pub enum Fill {
    /// The answer (stored, or served once to the waiters).
    Answer(Cached),
    /// The upstream failed: every waiter answers with this status (502, 504).
    Failed(StatusCode),
    /// Too big to share: every waiter makes its own upstream request.
    Uncached,
}

/// Every route's cache.
#[derive(Default)]
pub struct CacheStore {
    routes: Mutex<HashMap<String, RouteCache>>,
}

/// How long a response to `request` may be cached; None: not cacheable. RFC 9111 for a
/// shared cache (the `http-cache-semantics` crate: `s-maxage` over `max-age`, `Age` taken off,
/// `Expires` counted from `Date`, `private`/`no-store`/`no-cache` refused, no heuristic
/// freshness), plus Sluice's own rules: only 200s, and never an answer that sets a cookie.
pub fn lifetime(
    request: &hyper::http::request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
) -> Option<Duration> {
    if status != StatusCode::OK || headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    let mut response = hyper::Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers.clone();
    let (response, ()) = response.into_parts();
    let options = CacheOptions {
        shared: true,
        cache_heuristic: 0.0,
        immutable_min_time_to_live: Duration::ZERO,
        ignore_cargo_cult: false,
    };
    let now = SystemTime::now();
    let policy = CachePolicy::new_options(request, &response, now, options);
    if !policy.is_storable() {
        return None;
    }
    let ttl = policy.time_to_live(now);
    (ttl > Duration::ZERO).then_some(ttl)
}

fn base_key(method: &Method, host: &str, path: &str) -> String {
    format!("{method} {host}{path}")
}

impl CacheStore {
    fn with<T>(&self, route: &str, config: &CacheConfig, f: impl FnOnce(&mut RouteCache) -> T) -> T {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let cache = routes.entry(route.to_owned()).or_insert_with(|| RouteCache {
            config: config.clone(),
            entries: LruCache::new(NonZeroUsize::new(config.max_entries.max(1)).expect("at least one")),
            bytes: 0,
            vary: HashMap::new(),
            pending: HashMap::new(),
        });
        f(cache)
    }

    /// The full key of a request (base key plus the values of the headers its answers Vary on).
    pub fn key(
        &self,
        route: &str,
        config: &CacheConfig,
        method: &Method,
        host: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> String {
        let base = base_key(method, host, path);
        self.with(route, config, |c| {
            let mut key = base.clone();
            for name in c.vary.get(&base).into_iter().flatten() {
                key.push('\n');
                key.push_str(headers.get(name.as_str()).and_then(|v| v.to_str().ok()).unwrap_or_default());
            }
            key
        })
    }

    /// A fresh stored answer, else the cell that coalesces misses of `key` (every caller gets
    /// the same one until it is done). One lock for both: a fill that ends between a caller's
    /// miss and its cell would otherwise start a second fill.
    pub fn lookup(
        &self,
        route: &str,
        config: &CacheConfig,
        key: &str,
    ) -> Result<Cached, Arc<OnceCell<Fill>>> {
        self.with(route, config, |c| match c.entries.get(key).filter(|e| e.fresh()) {
            Some(hit) => Ok(hit.clone()),
            None => Err(c.pending.entry(key.to_owned()).or_default().clone()),
        })
    }

    /// Stores an answer (if it fits) and ends the coalescing of its key.
    pub fn finish(
        &self,
        route: &str,
        config: &CacheConfig,
        request_headers: &HeaderMap,
        (method, host, path): (&Method, &str, &str),
        answer: Option<(StatusCode, HeaderMap, Bytes, Duration)>,
        key: &str,
    ) -> Option<Cached> {
        self.with(route, config, |c| {
            c.pending.remove(key);
            let (status, headers, body, ttl) = answer?;
            if body.len() > c.config.max_object_bytes {
                return None;
            }
            let base = base_key(method, host, path);
            let vary = super::header_tokens(&headers, header::VARY);
            if vary.iter().any(|v| v == "*") {
                return None;
            }
            let mut full_key = base.clone();
            for name in &vary {
                full_key.push('\n');
                full_key.push_str(
                    request_headers.get(name.as_str()).and_then(|v| v.to_str().ok()).unwrap_or_default(),
                );
            }
            c.vary.insert(base, vary);
            let entry = Cached { status, headers, body, expires: Instant::now() + ttl };
            c.bytes += entry.body.len();
            if let Some((_, old)) = c.entries.push(full_key, entry.clone()) {
                c.bytes -= old.body.len();
            }
            while c.bytes > c.config.max_bytes {
                match c.entries.pop_lru() {
                    Some((_, old)) => c.bytes -= old.body.len(),
                    None => break,
                }
            }
            Some(entry)
        })
    }

    /// Empties a route's cache, or only the entries of one path; returns how many went.
    pub fn purge(&self, route: &str, path: Option<&str>) -> usize {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cache) = routes.get_mut(route) else { return 0 };
        let doomed: Vec<String> = cache
            .entries
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| {
                path.is_none_or(|p| {
                    k.split('\n').next().is_some_and(|base| {
                        base.split_once('/').is_some_and(|(_, rest)| format!("/{rest}") == p)
                    })
                })
            })
            .collect();
        for key in &doomed {
            if let Some(old) = cache.entries.pop(key) {
                cache.bytes -= old.body.len();
            }
        }
        doomed.len()
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn get() -> hyper::http::request::Parts {
        hyper::Request::get("http://example.test/a").body(()).unwrap().into_parts().0
    }

    fn lifetime(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
        super::lifetime(&get(), status, headers)
    }

    #[test]
    fn age_and_date_count() {
        let ok = StatusCode::OK;
        let cc = header::CACHE_CONTROL;
        // 60 s of life, 50 of them already spent in another cache.
        let aged = lifetime(ok, &headers(&[(cc.clone(), "max-age=60"), (header::AGE, "50")])).unwrap();
        assert!(aged <= Duration::from_secs(10), "{aged:?}");
        // Expires counts from the response's Date (the origin's clock), not from this host's:
        // a skewed origin clock does not shorten or stretch the lifetime.
        let date = SystemTime::now() - Duration::from_secs(30);
        let expires = date + Duration::from_secs(100);
        let dated = headers(&[
            (header::DATE, &httpdate::fmt_http_date(date)),
            (header::EXPIRES, &httpdate::fmt_http_date(expires)),
        ]);
        let ttl = lifetime(ok, &dated).unwrap();
        assert!(ttl > Duration::from_secs(90) && ttl <= Duration::from_secs(100), "{ttl:?}");
    }

    #[test]
    fn cache_control_decides_the_lifetime() {
        let ok = StatusCode::OK;
        let cc = header::CACHE_CONTROL;
        assert_eq!(lifetime(ok, &headers(&[(cc.clone(), "max-age=60")])), Some(Duration::from_secs(60)));
        assert_eq!(
            lifetime(ok, &headers(&[(cc.clone(), "max-age=60, s-maxage=5")])),
            Some(Duration::from_secs(5))
        );
        for no in ["no-store", "private, max-age=60", "no-cache", "max-age=0"] {
            assert_eq!(lifetime(ok, &headers(&[(cc.clone(), no)])), None, "{no}");
        }
        assert_eq!(lifetime(StatusCode::NOT_FOUND, &headers(&[(cc.clone(), "max-age=60")])), None);
        let cookie = headers(&[(cc.clone(), "max-age=60"), (header::SET_COOKIE, "a=b")]);
        assert_eq!(lifetime(ok, &cookie), None, "answers that set cookies are per client");
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let ttl = lifetime(ok, &headers(&[(header::EXPIRES, &later)])).unwrap();
        assert!(ttl > Duration::from_secs(100) && ttl <= Duration::from_secs(120), "{ttl:?}");
        assert_eq!(lifetime(ok, &HeaderMap::new()), None);
    }

    #[test]
    fn vary_separates_entries_and_bytes_are_bounded() {
        let store = CacheStore::default();
        let config = CacheConfig { max_entries: 100, max_bytes: 10, max_object_bytes: 8 };
        let vary = headers(&[(header::VARY, "accept-encoding")]);
        let gzip = headers(&[(header::ACCEPT_ENCODING, "gzip")]);
        let plain = HeaderMap::new();
        let request = (&Method::GET, "h", "/p");
        let ttl = Duration::from_secs(60);
        store.finish(
            "r",
            &config,
            &gzip,
            request,
            Some((StatusCode::OK, vary.clone(), Bytes::from("zzzz"), ttl)),
            "k",
        );
        let gzip_key = store.key("r", &config, &Method::GET, "h", "/p", &gzip);
        let plain_key = store.key("r", &config, &Method::GET, "h", "/p", &plain);
        assert!(store.lookup("r", &config, &gzip_key).is_ok());
        assert!(store.lookup("r", &config, &plain_key).is_err(), "Vary ignored");
        // Too big for one object: not stored. Over max_bytes: the oldest goes.
        assert!(
            store
                .finish(
                    "r",
                    &config,
                    &plain,
                    request,
                    Some((StatusCode::OK, vary.clone(), Bytes::from("123456789"), ttl)),
                    "k"
                )
                .is_none()
        );
        store.finish(
            "r",
            &config,
            &plain,
            (&Method::GET, "h", "/q"),
            Some((StatusCode::OK, HeaderMap::new(), Bytes::from("1234567"), ttl)),
            "k",
        );
        assert!(store.lookup("r", &config, &gzip_key).is_err(), "LRU by bytes");
        assert_eq!(store.purge("r", Some("/q")), 1);
    }
}
