//! The response cache of routes with `cache`: GET/HEAD answers that Cache-Control (max-age,
//! s-maxage, no-store, private) or Expires allow, keyed by method, host, path and the request
//! headers the answer Varies on; bounded by entries and bytes (LRU); concurrent misses of one
//! key make one upstream request; a stale answer is kept to be revalidated, and served while it
//! is or when that fails, as long as its grace allows; `lbctl cache purge` empties a route or
//! one path.
use std::{
    collections::HashMap,
    num::NonZeroUsize,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_cache_semantics::{CacheOptions, CachePolicy};
use hyper::{HeaderMap, Method, StatusCode, header};
use lru::LruCache;
use tokio::sync::OnceCell;

use crate::config::{CacheConfig, Config};

pub mod conditional;
pub mod revalidate;
pub mod stale;

use stale::Grace;

/// A stored answer.
#[derive(Clone)]
pub struct Cached {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    expires: Instant,
    /// When it was stored, and its age then (its `Age` field: another cache's time): what its
    /// `Age` says when served (RFC 9111 §4: a stored answer says how long it has been held).
    /// None: not stored.
    stored: Option<(Instant, u64)>,
    /// How long past `expires` it may be served stale.
    grace: Grace,
}

impl Cached {
    /// An answer that is not stored (served once to the requests that waited for it).
    pub fn now(status: StatusCode, headers: HeaderMap, body: Bytes) -> Cached {
        Cached { status, headers, body, expires: Instant::now(), stored: None, grace: Grace::NONE }
    }

    pub fn fresh(&self) -> bool {
        Instant::now() < self.expires
    }

    /// Whether it may be served while one request fetches it again (`stale-while-revalidate`).
    pub fn served_while_revalidating(&self, config: &CacheConfig) -> bool {
        self.grace.while_revalidating(self.stale_for(), config)
    }

    /// Whether it may be served when fetching it again failed (`stale-if-error`).
    pub fn served_on_error(&self, config: &CacheConfig) -> bool {
        self.grace.if_error(self.stale_for(), config)
    }

    fn stale_for(&self) -> Duration {
        Instant::now().saturating_duration_since(self.expires)
    }

    /// Its age in seconds, if it was stored.
    pub fn age(&self) -> Option<u64> {
        self.stored.map(|(at, then)| then.saturating_add(at.elapsed().as_secs()))
    }
}

/// One route's cache. Every part is bounded, whatever the clients ask for: entries by count and
/// bytes, Vary records by the entries' count, misses in flight by the requests waiting on them.
struct RouteCache {
    config: CacheConfig,
    entries: LruCache<String, Cached>,
    bytes: usize,
    /// Header names a path's answers Vary on (to build keys for later requests). A record
    /// pushed out costs its path's next request a miss, which records it again.
    vary: LruCache<String, Vec<String>>,
    /// Misses being fetched: later requests of the same key wait for the first. The requests
    /// hold the cell; a fill whose requests have all gone (clients that left before the answer)
    /// leaves a dead entry here, swept once the map has doubled since the last sweep.
    pending: HashMap<String, Weak<OnceCell<Fill>>>,
    sweep_at: usize,
}

/// The fewest entries `pending` holds before a sweep.
const SWEEP_FLOOR: usize = 64;

impl RouteCache {
    fn new(config: &CacheConfig) -> RouteCache {
        let cap = capacity(config);
        RouteCache {
            config: config.clone(),
            entries: LruCache::new(cap),
            bytes: 0,
            vary: LruCache::new(cap),
            pending: HashMap::new(),
            sweep_at: SWEEP_FLOOR,
        }
    }

    /// Takes a reloaded route's limits: what no longer fits goes, oldest first.
    fn reconfigure(&mut self, config: &CacheConfig) {
        if self.config == *config {
            return;
        }
        self.config = config.clone();
        let cap = capacity(config);
        while self.entries.len() > cap.get() {
            self.pop_oldest();
        }
        self.entries.resize(cap);
        self.vary.resize(cap);
        self.shed_bytes();
    }

    /// Drops the entry of `key`, and its bytes from the count.
    fn remove(&mut self, key: &str) {
        if let Some(old) = self.entries.pop(key) {
            self.bytes -= old.body.len();
        }
    }

    fn pop_oldest(&mut self) -> bool {
        match self.entries.pop_lru() {
            Some((_, old)) => {
                self.bytes -= old.body.len();
                true
            }
            None => false,
        }
    }

    fn shed_bytes(&mut self) {
        while self.bytes > self.config.max_bytes && self.pop_oldest() {}
    }

    /// The cell of a miss being fetched, or a new one (true: the caller fetches).
    fn pending(&mut self, key: &str) -> (Arc<OnceCell<Fill>>, bool) {
        if let Some(cell) = self.pending.get(key).and_then(Weak::upgrade) {
            return (cell, false);
        }
        let cell = Arc::new(OnceCell::new());
        self.pending.insert(key.to_owned(), Arc::downgrade(&cell));
        if self.pending.len() >= self.sweep_at {
            self.pending.retain(|_, cell| cell.strong_count() > 0);
            self.sweep_at = (self.pending.len() * 2).max(SWEEP_FLOOR);
        }
        (cell, true)
    }
}

fn capacity(config: &CacheConfig) -> NonZeroUsize {
    NonZeroUsize::new(config.max_entries.max(1)).expect("at least one")
}

/// What a request finds in the cache.
pub enum Lookup {
    /// A fresh stored answer.
    Fresh(Cached),
    /// None fresh: the cell that coalesces fills of the key, whether this request made it (and
    /// so starts the fill, when it runs apart from any request), and the stale answer stored,
    /// if any: the fill revalidates it, and it may be served meanwhile or if the fill fails.
    Fill { cell: Arc<OnceCell<Fill>>, new: bool, stale: Option<Cached> },
}

/// What the requests waiting on one miss get.
#[derive(Clone)]
pub enum Fill {
    /// The answer (stored, or served once to the waiters), its `X-Cache` (MISS, or REVALIDATED
    /// when the origin said the stale one still holds), and its key for the request that
    /// fetched it (`answer_key`): a waiter whose own key differs (it differs in a field the
    /// answer Varies on, which the key it waited on could not hold before the answer said so)
    /// fetches its own.
    Answer(Box<Cached>, &'static str, Option<String>),
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

/// The statuses stored, given a lifetime: those whose meaning is the same for every client of
/// a target, which RFC 9110 §15.1 calls cacheable by default (200, 203, 204, 300, 301, 308,
/// 404, 405, 410, 414, 501). A 404 or 410 stored spares the backend a crawler's or a broken
/// link's repeats (negative caching, as CDNs and Varnish do); a 302 or 307 is a redirect for
/// now, and 5xx errors are passing: neither is stored.
const STORED: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// How long a response to `request` may be cached; None: not cacheable. RFC 9111 for a
/// shared cache (the `http-cache-semantics` crate: `s-maxage` over `max-age`, `Age` taken off,
/// `Expires` counted from `Date`, `private`/`no-store`/`no-cache` refused, no heuristic
/// freshness), plus Sluice's own rules: only the statuses of [`STORED`], and never an answer
/// that sets a cookie.
pub fn lifetime(
    request: &hyper::http::request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
) -> Option<Duration> {
    if !STORED.contains(&status.as_u16()) || headers.contains_key(header::SET_COOKIE) {
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

/// The header names an answer Varies on; None when it cannot be keyed on them (`Vary: *`, or a
/// `Vary` that is not text: stored, such an answer would be served whatever the request).
fn varies_on(answer: &HeaderMap) -> Option<Vec<String>> {
    let vary = super::header_tokens(answer, header::VARY);
    let unreadable = answer.get_all(header::VARY).iter().any(|v| v.to_str().is_err());
    (!unreadable && !vary.iter().any(|v| v == "*")).then_some(vary)
}

/// A request's key for an answer with the fields `answer` (`vary_key`); None when the answer
/// cannot be keyed (`varies_on`). Two requests may share the answer only if both are Some and
/// equal.
pub fn answer_key(
    (method, host, path): (&Method, &str, &str),
    answer: &HeaderMap,
    request: &HeaderMap,
) -> Option<String> {
    Some(vary_key(&base_key(method, host, path), &varies_on(answer)?, request))
}

/// A request's key for an answer that varies on `names`: the base key, then each name with the
/// request's values of it (all its fields, as one list; every byte kept), or the name alone
/// when the request has none. Built alike when an answer is stored (`finish`) and looked up
/// (`key`). Each part counts: keyed on a first field only, or on text only, a request with
/// two fields, a byte above ASCII or none at all would share a key with one that differs, and
/// an answer made for one would be served to the other (cache poisoning); keyed on values
/// without names, an entry stored when the answers varied on one field would match a request
/// whose other field has the same value once they vary on another.
fn vary_key(base: &str, names: &[String], headers: &HeaderMap) -> String {
    let mut key = base.to_owned();
    for name in names {
        key.push('\n');
        key.push_str(name);
        for (i, value) in headers.get_all(name.as_str()).iter().enumerate() {
            key.push_str(if i == 0 { ":" } else { ", " });
            key.extend(value.as_bytes().iter().map(|&b| b as char));
        }
    }
    key
}

impl CacheStore {
    fn with<T>(&self, route: &str, config: &CacheConfig, f: impl FnOnce(&mut RouteCache) -> T) -> T {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let cache = routes.entry(route.to_owned()).or_insert_with(|| RouteCache::new(config));
        cache.reconfigure(config);
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
        self.with(route, config, |c| match c.vary.get(&base) {
            Some(names) => vary_key(&base, names, headers),
            None => base.clone(),
        })
    }

    /// A fresh stored answer, else the cell that coalesces misses of `key` (every caller gets
    /// the same one until it is done) with the stale answer, if any. One lock for both: a fill
    /// that ends between a caller's miss and its cell would otherwise start a second fill.
    pub fn lookup(&self, route: &str, config: &CacheConfig, key: &str) -> Lookup {
        self.with(route, config, |c| match c.entries.get(key) {
            Some(hit) if hit.fresh() => Lookup::Fresh(hit.clone()),
            stored => {
                let stale = stored.cloned();
                let (cell, new) = c.pending(key);
                Lookup::Fill { cell, new, stale }
            }
        })
    }

    /// Drops the stored answer of `key`: the origin answered again and it was not stored (no
    /// longer storable), so the stale one must not be served or revalidated.
    pub fn forget(&self, route: &str, config: &CacheConfig, key: &str) {
        self.with(route, config, |c| c.remove(key))
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
            let vary = varies_on(&headers)?;
            let full_key = vary_key(&base, &vary, request_headers);
            c.vary.put(base, vary);
            let then =
                headers.get(header::AGE).and_then(|v| v.to_str().ok()?.trim().parse().ok()).unwrap_or(0);
            let (now, grace) = (Instant::now(), Grace::of(&headers));
            let entry =
                Cached { status, headers, body, expires: now + ttl, stored: Some((now, then)), grace };
            c.bytes += entry.body.len();
            if let Some((_, old)) = c.entries.push(full_key, entry.clone()) {
                c.bytes -= old.body.len();
            }
            c.shed_bytes();
            Some(entry)
        })
    }

    /// Each route's cache: its name, the answers it holds, and their bodies' bytes.
    pub fn sizes(&self) -> Vec<(String, usize, usize)> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.iter().map(|(route, cache)| (route.clone(), cache.entries.len(), cache.bytes)).collect()
    }

    /// Drops the caches of routes that no longer cache (removed, or `cache` taken off): their
    /// entries would otherwise stay in memory until lbd restarts.
    pub fn retain(&self, config: &Config) {
        let cached = |name: &str| config.routes.iter().any(|r| r.name == name && r.cache.is_some());
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).retain(|name, _| cached(name));
    }

    /// Empties a route's cache, or only the entries of one path (its query included), or of
    /// every path that begins with `PREFIX` when the path is `PREFIX*` (Varnish's ban by URL
    /// prefix); returns how many went.
    pub fn purge(&self, route: &str, path: Option<&str>) -> usize {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cache) = routes.get_mut(route) else { return 0 };
        let matches = |target: &str| match path {
            None => true,
            Some(path) => match path.strip_suffix('*') {
                Some(prefix) => target.starts_with(prefix),
                None => target == path,
            },
        };
        // A key is `METHOD HOST/PATH?QUERY`, then the varied fields on lines of their own.
        let target = |key: &str| key.split('\n').next()?.split_once('/').map(|(_, rest)| format!("/{rest}"));
        let doomed: Vec<String> = cache
            .entries
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| target(k).is_some_and(|t| matches(&t)))
            .collect();
        for key in &doomed {
            cache.remove(key);
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
        for status in [404, 410, 301, 308, 204] {
            let status = StatusCode::from_u16(status).unwrap();
            let stored = lifetime(status, &headers(&[(cc.clone(), "max-age=60")]));
            assert_eq!(stored, Some(Duration::from_secs(60)), "{status}");
            assert_eq!(lifetime(status, &HeaderMap::new()), None, "{status} without a lifetime");
        }
        for status in [302, 307, 206, 304, 500, 502, 503] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(lifetime(status, &headers(&[(cc.clone(), "max-age=60")])), None, "{status}");
        }
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
        let config =
            CacheConfig { max_entries: 100, max_bytes: 10, max_object_bytes: 8, ..Default::default() };
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
        assert!(fresh(&store, &config, &gzip_key).is_some());
        assert!(fresh(&store, &config, &plain_key).is_none(), "Vary ignored");
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
        assert!(fresh(&store, &config, &gzip_key).is_none(), "LRU by bytes");
        assert_eq!(store.sizes(), [("r".to_owned(), 1, 7)]);

        assert_eq!(store.purge("r", Some("/q")), 1);
    }

    /// Requests that differ in what an answer varies on never share its key: two fields
    /// against one, a byte above ASCII, an empty value or none; nor does an entry stored when
    /// answers varied on one field match a request once they vary on another.
    #[test]
    fn a_stored_answer_is_as_old_as_its_age_then_and_its_time_held() {
        let store = CacheStore::default();
        let config =
            CacheConfig { max_entries: 100, max_bytes: 1000, max_object_bytes: 100, ..Default::default() };
        let request = (&Method::GET, "h", "/p");
        let answer = |age: &str| {
            Some((StatusCode::OK, headers(&[(header::AGE, age)]), Bytes::new(), Duration::from_secs(60)))
        };
        let stored = store.finish("r", &config, &HeaderMap::new(), request, answer("50"), "k").unwrap();
        assert!((50..52).contains(&stored.age().unwrap()), "{:?}", stored.age());
        let stored = store.finish("r", &config, &HeaderMap::new(), request, answer("soon"), "k").unwrap();
        assert!(stored.age().unwrap() < 2, "an Age that is not a number counts as 0");
        assert_eq!(Cached::now(StatusCode::OK, HeaderMap::new(), Bytes::new()).age(), None, "not stored");
    }

    #[test]
    fn requests_that_differ_in_a_varied_field_never_share_a_key() {
        let store = CacheStore::default();
        let config =
            CacheConfig { max_entries: 100, max_bytes: 1000, max_object_bytes: 100, ..Default::default() };
        let request = (&Method::GET, "h", "/p");
        let ttl = Duration::from_secs(60);
        let store_for = |asked: &HeaderMap, vary: &str| {
            let answer = headers(&[(header::VARY, vary)]);
            let body = Bytes::from(format!("{asked:?}"));
            store.finish("r", &config, asked, request, Some((StatusCode::OK, answer, body, ttl)), "k");
        };
        let served = |asked: &HeaderMap| {
            let key = store.key("r", &config, &Method::GET, "h", "/p", asked);
            fresh(&store, &config, &key).map(|hit| hit.body)
        };
        let mut two = HeaderMap::new();
        two.append(header::ACCEPT_ENCODING, "identity".parse().unwrap());
        two.append(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        let first = headers(&[(header::ACCEPT_ENCODING, "identity")]);
        let mut high = HeaderMap::new();
        high.insert(header::ACCEPT_ENCODING, HeaderValue::from_bytes(b"\xe9").unwrap());
        let empty = headers(&[(header::ACCEPT_ENCODING, "")]);
        let none = HeaderMap::new();
        let asks = [&two, &first, &high, &empty, &none];
        for asked in asks {
            store_for(asked, "accept-encoding");
            for other in asks {
                let hit = served(other);
                if std::ptr::eq(asked, other) {
                    assert_eq!(hit, Some(Bytes::from(format!("{asked:?}"))));
                } else {
                    assert_ne!(hit, Some(Bytes::from(format!("{asked:?}"))), "{asked:?} served to {other:?}");
                }
            }
            assert_eq!(store.purge("r", None), 1);
        }
        // Stored while answers varied on Accept; then they vary on Accept-Encoding.
        store_for(&headers(&[(header::ACCEPT, "x")]), "accept");
        store_for(&none, "accept-encoding");
        assert_eq!(served(&headers(&[(header::ACCEPT_ENCODING, "x")])), None);
        // An unreadable Vary is not stored at all.
        let mut answer = HeaderMap::new();
        answer.insert(header::VARY, HeaderValue::from_bytes(b"accept, \xe9").unwrap());
        let stored = store.finish(
            "r",
            &config,
            &none,
            request,
            Some((StatusCode::OK, answer, Bytes::new(), ttl)),
            "k",
        );
        assert!(stored.is_none());
    }

    /// The fresh answer stored for `key` on route `r`.
    fn fresh(store: &CacheStore, config: &CacheConfig, key: &str) -> Option<Cached> {
        match store.lookup("r", config, key) {
            Lookup::Fresh(hit) => Some(hit),
            Lookup::Fill { .. } => None,
        }
    }

    /// The cell of a miss of `key` on route `r`.
    fn miss(store: &CacheStore, config: &CacheConfig, key: &str) -> Arc<OnceCell<Fill>> {
        match store.lookup("r", config, key) {
            Lookup::Fill { cell, .. } => cell,
            Lookup::Fresh(_) => panic!("a hit"),
        }
    }

    /// How many entries, Vary records and misses in flight a route's cache holds.
    fn held(store: &CacheStore, route: &str) -> (usize, usize, usize) {
        let routes = store.routes.lock().unwrap();
        let c = &routes[route];
        (c.entries.len(), c.vary.len(), c.pending.len())
    }

    fn store_paths(
        store: &CacheStore,
        config: &CacheConfig,
        paths: std::ops::Range<usize>,
        body: &'static str,
    ) {
        for i in paths {
            let path = format!("/p?{i}");
            let answer = (StatusCode::OK, HeaderMap::new(), Bytes::from(body), Duration::from_secs(60));
            store.finish("r", config, &HeaderMap::new(), (&Method::GET, "h", &path), Some(answer), "k");
        }
    }

    #[test]
    fn a_client_asking_for_ever_new_paths_fills_nothing_past_the_bounds() {
        let store = CacheStore::default();
        let config =
            CacheConfig { max_entries: 8, max_bytes: 1 << 20, max_object_bytes: 1024, ..Default::default() };
        // Every answer stored, each path new (a query string a request).
        store_paths(&store, &config, 0..1000, "x");
        let (entries, vary, _) = held(&store, "r");
        assert_eq!((entries, vary), (8, 8), "Vary records outlived their entries");
        // Misses whose clients all left before the answer: the cells are dropped unfilled.
        for i in 0..1000 {
            drop(store.lookup("r", &config, &format!("gone {i}")));
        }
        let (_, _, pending) = held(&store, "r");
        assert!(pending <= SWEEP_FLOOR, "{pending} abandoned misses kept");
        // A miss still waited on is shared, and a fresh cell replaces an abandoned one.
        let first = miss(&store, &config, "live");
        let second = miss(&store, &config, "live");
        assert!(Arc::ptr_eq(&first, &second), "a second fill of one key");
        let abandoned = miss(&store, &config, "gone 999");
        assert!(!abandoned.initialized() && Arc::strong_count(&abandoned) == 1);
    }

    #[test]
    fn a_purge_takes_one_target_or_every_target_under_a_prefix() {
        let store = CacheStore::default();
        let config = CacheConfig::default();
        store_paths(&store, &config, 0..3, "x");
        for path in ["/a/b?c", "/a/b", "/ab"] {
            let answer = (StatusCode::OK, HeaderMap::new(), Bytes::from("y"), Duration::from_secs(60));
            store.finish("r", &config, &HeaderMap::new(), (&Method::GET, "h", path), Some(answer), "k");
        }
        assert_eq!(store.purge("r", Some("/a/b")), 1, "one target, exactly");
        assert_eq!(store.purge("r", Some("/a/*")), 1, "a prefix");
        assert_eq!(store.purge("r", Some("/p?*")), 3);
        assert_eq!(store.purge("r", Some("/nothing*")), 0);
        assert_eq!(store.purge("r", None), 1, "/ab");
    }

    #[test]
    fn a_route_that_no_longer_caches_leaves_nothing_behind() {
        let config = |routes: &str| {
            let text = format!(
                "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n\
                 [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n{routes}"
            );
            Config::parse(std::path::Path::new("t.toml"), &text).unwrap()
        };
        let route = |name: &str, cache: bool| {
            let cache = if cache { "cache = { max_entries = 10 }\n" } else { "" };
            format!(
                "[[route]]\nname = \"{name}\"\nlistener = \"l\"\npool = \"p\"\nhost = \"{name}.test\"\n{cache}"
            )
        };
        let store = CacheStore::default();
        let limits =
            CacheConfig { max_entries: 10, max_bytes: 1000, max_object_bytes: 100, ..Default::default() };
        for name in ["kept", "uncached", "removed"] {
            let answer = (StatusCode::OK, HeaderMap::new(), Bytes::from("x"), Duration::from_secs(60));
            store.finish(name, &limits, &HeaderMap::new(), (&Method::GET, "h", "/"), Some(answer), "k");
        }
        store.retain(&config(&(route("kept", true) + &route("uncached", false))));
        let left: Vec<String> = store.routes.lock().unwrap().keys().cloned().collect();
        assert_eq!(left, ["kept"]);
    }

    #[test]
    fn a_reloaded_routes_new_limits_apply_at_once() {
        let store = CacheStore::default();
        let config =
            CacheConfig { max_entries: 10, max_bytes: 1000, max_object_bytes: 100, ..Default::default() };
        store_paths(&store, &config, 0..10, "0123456789");
        assert_eq!(held(&store, "r").0, 10);
        // Fewer entries: the oldest go, the newest stay.
        let fewer = CacheConfig { max_entries: 3, ..config.clone() };
        let key = |i: usize| store.key("r", &fewer, &Method::GET, "h", &format!("/p?{i}"), &HeaderMap::new());
        assert!(fresh(&store, &fewer, &key(9)).is_some());
        assert!(fresh(&store, &fewer, &key(0)).is_none());
        assert_eq!(held(&store, "r").0, 3);
        // Fewer bytes: down to what fits. A smaller object limit refuses what it used to take.
        let smaller =
            CacheConfig { max_entries: 3, max_bytes: 15, max_object_bytes: 5, ..Default::default() };
        drop(store.lookup("r", &smaller, "any"));
        assert_eq!(held(&store, "r").0, 1, "one 10-byte entry fits in 15 bytes");
        store_paths(&store, &smaller, 20..21, "0123456789");
        let new_key = store.key("r", &smaller, &Method::GET, "h", "/p?20", &HeaderMap::new());
        assert!(
            fresh(&store, &smaller, &new_key).is_none(),
            "an object over the new max_object_bytes was stored"
        );
    }
}
