//! Proxy state that outlives snapshots: per-backend in-flight counts, failure streaks and
//! ejection counts, per-pool pending queues, per-route rate-limit buckets, retry budgets and
//! credentials. Kept by stable identities (pool name and backend address, route name), so the
//! snapshot rebuilt for every command, health flip or reload finds them as they were.
use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock as _};
use tokio::sync::Notify;

use crate::{
    config::{
        ApiKeyConfig, BasicAuthConfig, Config, JwtConfig, Listener, Pool, RateKey, RateLimit, Route,
        error_page_body,
    },
    proxy::{
        auth::{ApiKeys, Jwt},
        backend_tls::{BackendTls, Files},
        basic_auth::BasicAuth,
        client_limit::client_group,
        clock,
        error_pages::{self, ErrorPages},
        watched_file::WatchedFile,
    },
};

/// One backend of one pool, as requests see it.
#[derive(Default)]
pub struct BackendRuntime {
    /// Requests in flight (least-requests balancing, circuit breaking).
    pub in_flight: AtomicUsize,
    /// Failed requests in a row (outlier ejection).
    pub failures: AtomicU32,
    /// Ejections that still count: the next one lasts one more times `ejection_ms`.
    pub ejections: AtomicU32,
    /// When the backend was last let back after an ejection (coarse ms; 0: never).
    pub let_back_ms: AtomicU64,
    /// For slow start: when the backend last became usable (coarse ms); `NOT_USABLE`, or
    /// `SINCE_START` when it was usable in lbd's first snapshot (no ramp at start, as HAProxy).
    came_up_ms: AtomicU64,
    /// Connections the proxy made to it (HTTP/1.1 and HTTP/2, their TLS handshakes done): with
    /// its requests, how well connections are reused (`sluice_http_upstream_connections_total`).
    pub connections_opened: AtomicU64,
    /// Requests it did not process (HTTP/2: a stream refused, past a GOAWAY, or still queued
    /// on a connection that closed), sent on to another backend or answered 502
    /// (`sluice_http_upstream_unprocessed_total`).
    pub unprocessed: AtomicU64,
}

/// Where a counter of a backend's entry is.
pub type BackendCounter = fn(&BackendRuntime) -> &AtomicU64;

/// The counters a backend's entry keeps for the metrics: each one's series name (without
/// `sluice_`), its help, and where it is.
pub const BACKEND_COUNTERS: [(&str, &str, BackendCounter); 2] = [
    (
        "http_upstream_connections_total",
        "Connections the proxy made to the backend (HTTP/1.1 and HTTP/2, TLS handshakes done)",
        |b| &b.connections_opened,
    ),
    (
        "http_upstream_unprocessed_total",
        "Requests the backend did not process (HTTP/2: a stream refused, past a GOAWAY, or queued on a connection that closed), sent on to another backend or answered 502",
        |b| &b.unprocessed,
    ),
];

/// `came_up_ms` of a backend not usable in the last snapshot (or not seen yet).
const NOT_USABLE: u64 = 0;
/// `came_up_ms` of a backend usable since lbd's first snapshot.
const SINCE_START: u64 = 1;
/// The share of its weight a backend gets as soon as it comes up, in thousandths (Envoy's
/// `min_weight_percent` default): at 0 a pool of one ramping backend would take nothing.
const SLOW_START_FLOOR: u64 = 100;

impl BackendRuntime {
    /// Counts an ejection; returns how many count now: one more than before, less one for each
    /// `ejection_ms` the backend has served since it was last let back (Envoy's multiplier,
    /// which falls while a host stays in), so a backend that failed once a week ago starts over.
    pub fn count_ejection(&self, ejection_ms: u64) -> u32 {
        let back = self.let_back_ms.load(Ordering::Relaxed);
        let served = match back {
            0 => 0,
            back => clock::coarse_ms().saturating_sub(back) / ejection_ms.max(1),
        };
        let before = u64::from(self.ejections.load(Ordering::Relaxed));
        let times = u32::try_from(before.saturating_sub(served)).unwrap_or(u32::MAX).saturating_add(1);
        self.ejections.store(times, Ordering::Relaxed);
        times
    }

    /// The ejection is over: a new streak starts.
    pub fn let_back(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.let_back_ms.store(clock::coarse_ms().max(1), Ordering::Relaxed);
    }

    /// Slow start: notes whether the backend is `usable` in the snapshot being built (at
    /// `now_ms`; `first`: lbd's first snapshot), and returns the share of its weight it gets,
    /// in thousandths: from `SLOW_START_FLOOR` when it came up, growing linearly to 1000 at
    /// `window` (HAProxy's `slowstart`, Envoy's `slow_start_config`).
    pub fn slow_start(&self, usable: bool, now_ms: u64, first: bool, window: Duration) -> u64 {
        if !usable {
            self.came_up_ms.store(NOT_USABLE, Ordering::Relaxed);
            return 0;
        }
        let came_up = match self.came_up_ms.load(Ordering::Relaxed) {
            NOT_USABLE => {
                let at = if first { SINCE_START } else { now_ms.max(SINCE_START + 1) };
                self.came_up_ms.store(at, Ordering::Relaxed);
                at
            }
            at => at,
        };
        let window = window.as_millis() as u64;
        let up = now_ms.saturating_sub(came_up);
        if came_up == SINCE_START || up >= window {
            return 1000;
        }
        (up * 1000 / window.max(1)).max(SLOW_START_FLOOR)
    }
}

/// One pool: requests waiting for a backend under its circuit breaker's limit.
pub struct PoolRuntime {
    /// Its plain connections' class (`backend_tls::new_class`): its idle connections are
    /// its own, kept across rebuilds.
    pub class: u64,
    /// Requests waiting. SeqCst on both sides: a waiter counts itself before it looks at the
    /// backends' in-flight counts, and a request that ends lowers its count before it looks
    /// here, so one of the two always sees the other (no wake-up lost, none sent for nobody).
    pub pending: AtomicUsize,
    /// Woken when a request of this pool ends while some wait.
    pub freed: Notify,
    /// Round robin's count of turns taken: a rebuilt snapshot (a health flip, a slow start's
    /// step) goes on from where the last left, so a backend whose turn is far down the order
    /// is not passed over by every rebuild.
    pub turns: AtomicUsize,
}

/// What a rate limit counts per, for one request.
#[derive(Clone, PartialEq, Eq, Hash)]
enum LimitKey {
    Client(IpAddr),
    /// An API key or a JWT subject.
    Named(String),
    Route,
}

/// Most keys a limiter keeps before full buckets are forgotten.
const MAX_BUCKETS: usize = 100_000;

/// A route's token buckets (GCRA, from `governor`), each check telling what is left.
struct Limiter {
    key: RateKey,
    header: Option<hyper::header::HeaderName>,
    ipv6_prefix: u8,
    buckets: Buckets,
    checks: AtomicU64,
    /// The bucket's size, and the time one token takes to come back.
    burst: u32,
    period: Duration,
    told: bool,
}

type Buckets = governor::RateLimiter<
    LimitKey,
    governor::state::keyed::DefaultKeyedStateStore<LimitKey>,
    governor::clock::DefaultClock,
    governor::middleware::StateInformationMiddleware,
>;

/// What a route's rate limit says of one request: whether it may go, and its bucket as the
/// `RateLimit-*` fields tell it (the IETF draft Kong sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub allowed: bool,
    /// The bucket's size (the burst).
    pub limit: u32,
    /// Requests it would let through now.
    pub remaining: u32,
    /// Seconds until it is full again (refused: until the next request may go).
    pub reset_s: u64,
    /// The route's limit tells its clients (`headers = true`).
    pub told: bool,
}

impl Limiter {
    fn new(limit: &RateLimit) -> Limiter {
        let period = Duration::from_secs_f64(1.0 / limit.requests_per_second.max(1e-6));
        let burst = NonZeroU32::new(limit.burst.max(1.0) as u32).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
        Limiter {
            key: limit.key,
            header: limit.header.clone(),
            ipv6_prefix: limit.ipv6_prefix,
            buckets: DefaultKeyedRateLimiter::keyed(quota.allow_burst(burst)).with_middleware(),
            checks: AtomicU64::new(0),
            burst: burst.get(),
            period,
            told: limit.headers,
        }
    }

    /// Whether the request may go, and what is left. `named`: the API key, the JWT subject or
    /// the header's value, as the limit's key says.
    fn check(&self, client: IpAddr, named: Option<&str>) -> Allowance {
        let key = match self.key {
            RateKey::ClientIp => LimitKey::Client(client_group(client, self.ipv6_prefix)),
            RateKey::ApiKey | RateKey::JwtSubject => LimitKey::Named(named.unwrap_or_default().to_owned()),
            RateKey::Header => match named {
                Some(value) => LimitKey::Named(value.to_owned()),
                None => LimitKey::Client(client_group(client, self.ipv6_prefix)),
            },
            RateKey::Route => LimitKey::Route,
        };
        // Now and then, forget the buckets that are full again (they hold nothing).
        if self.checks.fetch_add(1, Ordering::Relaxed).is_multiple_of(4096)
            && self.buckets.len() > MAX_BUCKETS
        {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
        match self.buckets.check_key(&key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity().min(self.burst);
                let empty = self.period.as_secs_f64() * f64::from(self.burst - remaining);
                let reset_s = empty.ceil() as u64;
                Allowance { allowed: true, limit: self.burst, remaining, reset_s, told: self.told }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                let reset_s = wait.as_secs_f64().ceil().max(1.0) as u64;
                Allowance { allowed: false, limit: self.burst, remaining: 0, reset_s, told: self.told }
            }
        }
    }
}

/// Retries always allowed before the budget's share applies.
const RETRY_BUDGET_FLOOR: u64 = 3;
/// The budget counts requests and retries over the current and the previous window.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// A route's retry budget: retries stay under a share of its recent requests.
struct RetryBudget {
    /// When the budget began, on the coarse clock (ms): its windows are seconds long.
    epoch_ms: u64,
    /// The window the current counts belong to.
    window: AtomicU64,
    /// Requests and retries granted, in the current and the previous window.
    requests: [AtomicU64; 2],
    retries: [AtomicU64; 2],
}

impl RetryBudget {
    fn new() -> RetryBudget {
        RetryBudget {
            epoch_ms: clock::coarse_ms(),
            window: AtomicU64::new(0),
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    /// Moves to the current window; returns its slot.
    fn roll(&self) -> usize {
        let now = clock::coarse_ms().saturating_sub(self.epoch_ms) / BUDGET_WINDOW.as_millis() as u64;
        let seen = self.window.load(Ordering::Relaxed);
        if now != seen
            && self.window.compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let slot = (now % 2) as usize;
            // Two windows on, the previous one is stale too.
            if now > seen + 1 {
                self.requests[1 - slot].store(0, Ordering::Relaxed);
                self.retries[1 - slot].store(0, Ordering::Relaxed);
            }
            self.requests[slot].store(0, Ordering::Relaxed);
            self.retries[slot].store(0, Ordering::Relaxed);
        }
        (now % 2) as usize
    }

    fn count_request(&self) {
        let slot = self.roll();
        self.requests[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry if the budget has one; a refused retry costs nothing.
    fn take(&self, percent: f64) -> bool {
        let slot = self.roll();
        let requests = self.requests[0].load(Ordering::Relaxed) + self.requests[1].load(Ordering::Relaxed);
        let allowed = RETRY_BUDGET_FLOOR + (requests as f64 * percent / 100.0) as u64;
        let other = self.retries[1 - slot].load(Ordering::Relaxed);
        let mut used = self.retries[slot].load(Ordering::Relaxed);
        loop {
            if used + other >= allowed {
                return false;
            }
            match self.retries[slot].compare_exchange(used, used + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }
}

/// The settings a route's runtime is made from; a change of any of them makes it anew.
#[derive(Clone, PartialEq)]
struct RouteSettings {
    rate_limit: Option<RateLimit>,
    api_key: Option<ApiKeyConfig>,
    jwt: Option<JwtConfig>,
    basic_auth: Option<BasicAuthConfig>,
}

impl RouteSettings {
    fn of(route: &Route) -> RouteSettings {
        RouteSettings {
            rate_limit: route.rate_limit.clone(),
            api_key: route.api_key.clone(),
            jwt: route.jwt.clone(),
            basic_auth: route.basic_auth.clone(),
        }
    }
}

/// One route's buckets, budget and credentials.
pub struct RouteRuntime {
    settings: RouteSettings,
    limiter: Option<Limiter>,
    budget: RetryBudget,
    pub api_keys: Option<ApiKeys>,
    pub jwt: Option<Jwt>,
    pub basic_auth: Option<BasicAuth>,
}

impl RouteRuntime {
    fn new(route: &Route) -> RouteRuntime {
        RouteRuntime {
            settings: RouteSettings::of(route),
            limiter: route.rate_limit.as_ref().map(Limiter::new),
            budget: RetryBudget::new(),
            api_keys: route.api_key.clone().map(ApiKeys::new),
            // Validated when the config was read; a key file gone since then refuses everything.
            jwt: route
                .jwt
                .as_ref()
                .and_then(|j| Jwt::new(j).map_err(|e| log::error!("route {}: jwt: {e}", route.name)).ok()),
            basic_auth: route.basic_auth.as_ref().map(BasicAuth::new),
        }
    }

    /// None if under the rate limit; else seconds to wait. The limit counts by the client's
    /// address, the request's `api_key`, its JWT's `subject`, a field of its `headers` (text; a
    /// request without it, or with another kind of value, by its client's address), or the
    /// route, as its key says.
    pub fn rate_limited(
        &self,
        client: IpAddr,
        (api_key, subject): (Option<&str>, Option<&str>),
        headers: &hyper::HeaderMap,
    ) -> Option<Allowance> {
        let limiter = self.limiter.as_ref()?;
        let named = match limiter.key {
            RateKey::JwtSubject => subject,
            RateKey::Header => limiter.header.as_ref().and_then(|name| headers.get(name)?.to_str().ok()),
            _ => api_key,
        };
        Some(limiter.check(client, named))
    }

    /// For tests: the wait a refused request is told (None: let through, or no limit).
    #[cfg(test)]
    pub fn refused(
        &self,
        client: IpAddr,
        ids: (Option<&str>, Option<&str>),
        headers: &hyper::HeaderMap,
    ) -> Option<u64> {
        self.rate_limited(client, ids, headers).filter(|a| !a.allowed).map(|a| a.reset_s)
    }

    /// Counts a request (the retry budget's base).
    pub fn count_request(&self) {
        self.budget.count_request();
    }

    /// Takes one retry from the budget (`percent` of recent requests, plus 3), if one is left.
    pub fn take_retry(&self, percent: f64) -> bool {
        self.budget.take(percent)
    }
}

/// Every runtime entry, shared by all snapshots.
#[derive(Default)]
pub struct Runtime {
    backends: Mutex<HashMap<(String, SocketAddr), Arc<BackendRuntime>>>,
    pools: Mutex<HashMap<String, Arc<PoolRuntime>>>,
    routes: Mutex<HashMap<String, Arc<RouteRuntime>>>,
    /// Each pool's TLS client to its backends, and its files as they were last looked at.
    backend_tls: Mutex<HashMap<String, (Arc<BackendTls>, Files)>>,
    /// Listeners' error pages by file: read when first named, again when they change.
    error_pages: Mutex<HashMap<PathBuf, Arc<WatchedFile<Bytes>>>>,
    /// Whether a snapshot was built already (slow start does not ramp the first one's).
    built: AtomicBool,
}

/// Whether `config`'s pool `pool` has the backend at `address` (its address and the pool's port).
fn names_backend(config: &Config, pool: &str, address: SocketAddr) -> bool {
    config
        .pools
        .get(pool)
        .is_some_and(|p| p.port == address.port() && p.backends.iter().any(|b| b.addr == address.ip()))
}

fn entry<K: Hash + Eq, V>(map: &Mutex<HashMap<K, Arc<V>>>, key: K, make: impl FnOnce() -> V) -> Arc<V> {
    map.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_insert_with(|| Arc::new(make())).clone()
}

impl Runtime {
    /// Whether this is the first snapshot built on it (true once).
    pub fn first_build(&self) -> bool {
        !self.built.swap(true, Ordering::Relaxed)
    }

    pub fn backend(&self, pool: &str, address: SocketAddr) -> Arc<BackendRuntime> {
        entry(&self.backends, (pool.to_owned(), address), BackendRuntime::default)
    }

    /// The share of its weight (thousandths) a backend has so far in its slow start of
    /// `window`; None: not in one.
    pub fn slow_start_share(&self, pool: &str, address: SocketAddr, window: Duration) -> Option<u64> {
        let backends = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        let backend = backends.get(&(pool.to_owned(), address))?;
        match backend.came_up_ms.load(Ordering::Relaxed) {
            NOT_USABLE | SINCE_START => None,
            _ => Some(backend.slow_start(true, clock::coarse_ms(), false, window))
                .filter(|&share| share < 1000),
        }
    }

    /// Each backend (pool, address) whose counter `which` (of [`BACKEND_COUNTERS`]) is above
    /// 0, and its count.
    pub fn backend_counts(&self, which: BackendCounter) -> Vec<(String, SocketAddr, u64)> {
        let backends = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        let counted = backends.iter().map(|((pool, address), backend)| {
            (pool.clone(), *address, which(backend).load(Ordering::Relaxed))
        });
        counted.filter(|(_, _, n)| *n > 0).collect()
    }

    /// The backends' counters as text exposition lines
    /// (`http_upstream_connections_total{pool="web",backend="10.0.0.1:80"} 12`): what an
    /// upgrade hands the new lbd beside the proxy's counters, so they continue there.
    pub fn counters_text(&self) -> String {
        let mut text = String::new();
        for (name, _, which) in BACKEND_COUNTERS {
            for (pool, address, n) in self.backend_counts(which) {
                text += &format!("{name}{{pool=\"{pool}\",backend=\"{address}\"}} {n}\n");
            }
        }
        text
    }

    /// Adds the counts of another lbd's [`Runtime::counters_text`] lines in `text` (an
    /// upgrade) for the backends `config` names; other lines are passed over.
    pub fn absorb_counters(&self, text: &str, config: &Config) {
        for (name, labels, value) in text.lines().filter_map(crate::proxy::metrics::parse_sample) {
            let Some((_, _, which)) = BACKEND_COUNTERS.iter().find(|(counter, _, _)| *counter == name) else {
                continue;
            };
            let (Some(pool), Some(Ok(address))) =
                (labels.get("pool"), labels.get("backend").map(|b| b.parse::<SocketAddr>()))
            else {
                continue;
            };
            if names_backend(config, pool, address) {
                which(&self.backend(pool, address)).fetch_add(value as u64, Ordering::Relaxed);
            }
        }
    }

    pub fn pool(&self, pool: &str) -> Arc<PoolRuntime> {
        entry(&self.pools, pool.to_owned(), || PoolRuntime {
            class: crate::proxy::backend_tls::new_class(),
            pending: AtomicUsize::new(0),
            freed: Notify::new(),
            turns: AtomicUsize::new(0),
        })
    }

    /// The route's runtime; made anew only when its limit or credential settings changed
    /// (reading key files then, not on every rebuild).
    pub fn route(&self, route: &Route) -> Arc<RouteRuntime> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        match routes.get(&route.name) {
            Some(existing) if existing.settings == RouteSettings::of(route) => existing.clone(),
            _ => {
                let made = Arc::new(RouteRuntime::new(route));
                routes.insert(route.name.clone(), made.clone());
                made
            }
        }
    }

    /// The TLS client to `pool`'s backends (None: plain TCP). It is made anew only when the
    /// pool's TLS settings or protocol changed, or its files did (their modification times,
    /// looked at when the routes are rebuilt: a reload, a health change); a connection opened
    /// by a client is reused only by that client. The proxy's requests and the health checks
    /// share it, and with it rustls's session cache.
    pub fn backend_tls(&self, pool: &Pool) -> Option<Arc<BackendTls>> {
        let settings = pool.tls.as_ref()?;
        let files = Files::of(settings); // before they are read: a change meanwhile is seen next
        let mut clients = self.backend_tls.lock().unwrap_or_else(|p| p.into_inner());
        let before = clients.get(&pool.name).filter(|(client, _)| client.made_for(settings, pool.protocol));
        if let Some((client, seen)) = before
            && *seen == files
        {
            return Some(client.clone());
        }
        let mut client = Arc::new(BackendTls::load(settings, pool.protocol));
        match (client.broken(), before) {
            // Files changed under the same settings (a certificate rotated) into something that
            // cannot be used (half written, a key that does not match): the client made before
            // goes on, as a listener keeps its certificate (`tls::watch`).
            (Some(why), Some((working, _))) if working.broken().is_none() => {
                log::error!(
                    "pool {}: its TLS files changed and cannot be used ({why}); connections go on with the files read before",
                    pool.name
                );
                client = working.clone();
            }
            (Some(why), _) => log::error!(
                "pool {}: TLS to its backends cannot be set up, every connect fails: {why}",
                pool.name
            ),
            (None, Some(_)) => log::info!("pool {}: TLS files changed; new connections use them", pool.name),
            (None, None) => {}
        }
        clients.insert(pool.name.clone(), (client.clone(), files));
        Some(client)
    }

    /// `listener`'s error pages, each file read when a listener first names it.
    pub fn error_pages(&self, listener: &Listener) -> ErrorPages {
        ErrorPages::new(listener.error_pages.iter().map(|page| {
            let body = entry(&self.error_pages, page.file.clone(), || {
                WatchedFile::new(
                    page.file.clone(),
                    "error page",
                    error_page_body,
                    error_pages::PLAIN_MEANWHILE,
                )
            });
            (page.status, page.content_type, body)
        }))
    }

    /// Forgets what `config` no longer names (removed routes, pools, backends, error pages).
    pub fn retain(&self, config: &Config) {
        self.backends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(pool, address), _| names_backend(config, pool, *address));
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|pool, _| config.pools.contains_key(pool));
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| config.routes.iter().any(|r| r.name == *name));
        self.backend_tls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|pool, _| config.pools.get(pool).is_some_and(|p| p.tls.is_some()));
        self.error_pages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|file, _| config.listeners.iter().flat_map(|l| &l.error_pages).any(|p| p.file == *file));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_ramps_a_backend_that_came_up_but_not_one_there_at_start() {
        let window = Duration::from_millis(10_000);
        let (there, joined) = (BackendRuntime::default(), BackendRuntime::default());
        let t = 5_000_000;
        assert_eq!(there.slow_start(true, t, true, window), 1000, "usable in the first snapshot");
        assert_eq!(there.slow_start(true, t + 1, false, window), 1000);
        assert_eq!(joined.slow_start(true, t, false, window), SLOW_START_FLOOR, "joined later");
        assert_eq!(joined.slow_start(true, t + 2_500, false, window), SLOW_START_FLOOR.max(250));
        assert_eq!(joined.slow_start(true, t + 5_000, false, window), 500);
        assert_eq!(joined.slow_start(true, t + 10_000, false, window), 1000);
        // Down, then up again: it starts over; so does the one that was there at start.
        for backend in [&there, &joined] {
            assert_eq!(backend.slow_start(false, t + 20_000, false, window), 0);
            assert_eq!(backend.slow_start(true, t + 30_000, false, window), SLOW_START_FLOOR);
            assert_eq!(backend.slow_start(true, t + 37_500, false, window), 750);
        }
    }

    #[test]
    fn ejections_count_up_and_wear_off_while_the_backend_serves() {
        let backend = BackendRuntime::default();
        let ms = 1000;
        assert_eq!(backend.count_ejection(ms), 1, "the first");
        backend.let_back();
        assert_eq!(backend.count_ejection(ms), 2, "failed again at once");
        backend.let_back();
        assert_eq!(backend.count_ejection(ms), 3);
        // Let back 2.5 ejection times ago: two of the three have worn off.
        backend.let_back();
        backend.let_back_ms.store(clock::coarse_ms() - 2500, Ordering::Relaxed);
        assert_eq!(backend.count_ejection(ms), 2);
        // Let back long ago (at boot: a fresh machine may not have been up for an hour): it
        // starts over.
        backend.let_back_ms.store(1, Ordering::Relaxed);
        assert_eq!(backend.count_ejection(ms), 1);
        assert_eq!(backend.failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_refused_retry_costs_nothing() {
        let budget = RetryBudget::new();
        for _ in 0..200 {
            budget.count_request();
        }
        // 3 + 20% of 200 = 43, however many are asked for.
        let granted = (0..500).filter(|_| budget.take(20.0)).count();
        assert_eq!(granted, 43);
    }

    #[test]
    fn the_budget_grows_with_requests_after_refusals() {
        let budget = RetryBudget::new();
        let early = (0..10).filter(|_| budget.take(20.0)).count();
        assert_eq!(early, 3, "the floor");
        for _ in 0..100 {
            budget.count_request();
        }
        let later = (0..100).filter(|_| budget.take(20.0)).count();
        assert_eq!(later, 20, "refused retries used up the budget");
    }

    #[test]
    fn buckets_limit_per_client() {
        let limit = RateLimit {
            requests_per_second: 1.0,
            burst: 2.0,
            key: RateKey::ClientIp,
            header: None,
            ipv6_prefix: 64,
            headers: false,
        };
        // The wait a refused request is told (None: let through).
        let refused = |limiter: &Limiter, ip: IpAddr| {
            let allowance = limiter.check(ip, None);
            (!allowance.allowed).then_some(allowance.reset_s)
        };
        let limiter = Limiter::new(&limit);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert_eq!(refused(&limiter, a), None);
        assert_eq!(refused(&limiter, a), None);
        assert_eq!(refused(&limiter, a), Some(1), "the burst is spent");
        assert_eq!(refused(&limiter, b), None, "another client has its own bucket");
        // An IPv6 client's network shares one bucket, whatever address it takes.
        let v6 = |ip: &str| ip.parse::<IpAddr>().unwrap();
        assert_eq!(refused(&limiter, v6("2001:db8:0:1::1")), None);
        assert_eq!(refused(&limiter, v6("2001:db8:0:1::2")), None);
        assert_eq!(refused(&limiter, v6("2001:db8:0:1:ffff::3")), Some(1), "the same /64");
        assert_eq!(refused(&limiter, v6("2001:db8:0:2::1")), None, "another /64");
        let each = Limiter::new(&RateLimit { ipv6_prefix: 128, ..limit });
        assert_eq!(refused(&each, v6("2001:db8::1")), None);
        assert_eq!(refused(&each, v6("2001:db8::1")), None);
        assert_eq!(refused(&each, v6("2001:db8::2")), None, "at /128 each address has its own");
    }

    #[test]
    fn a_pool_s_rotated_tls_files_are_used_and_a_broken_rotation_keeps_the_last_good_ones() {
        let pki = crate::proxy::test_bed::Pki::new("rotated");
        let settings = crate::config::BackendTls {
            ca: Some(pki.ca.clone()),
            verify: true,
            server_name: None,
            sni_from_host: false,
            client_cert: Some(pki.client.clone()),
        };
        let pool = Pool { name: "p".into(), tls: Some(settings), ..Pool::default() };
        let runtime = Runtime::default();
        let first = runtime.backend_tls(&pool).unwrap();
        assert!(first.broken().is_none());
        assert!(Arc::ptr_eq(&runtime.backend_tls(&pool).unwrap(), &first), "files unchanged");
        let key = std::fs::read(&pki.client.1).unwrap();
        // Written anew within the same clock tick, a file may keep its modification time.
        let rewrite = |bytes: &[u8]| {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::write(&pki.client.1, bytes).unwrap();
        };
        rewrite(b"-----BEGIN PRIVATE KEY-----\nhalf written");
        let kept = runtime.backend_tls(&pool).unwrap();
        assert!(Arc::ptr_eq(&kept, &first), "a broken key keeps the client made before");
        rewrite(&key);
        let rotated = runtime.backend_tls(&pool).unwrap();
        assert!(rotated.broken().is_none() && rotated.id != first.id, "made anew from the fixed files");
    }

    #[test]
    fn a_route_limited_per_jwt_subject_keeps_a_bucket_per_user_whatever_the_address() {
        let text = "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"p\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
             [[route]]\nname = \"r\"\nlistener = \"l\"\npool = \"p\"\n\
             jwt = { algorithm = \"HS256\", secret = \"s\" }\n\
             api_key = { header = \"x-key\", file = \"/nonexistent\" }\n\
             rate_limit = { requests_per_second = 0.01, burst = 2, key = \"jwt_subject\" }\n";
        let config = Config::parse_sent(std::path::Path::new("t.toml"), text).unwrap();
        let route = RouteRuntime::new(&config.routes[0]);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "198.51.100.7".parse().unwrap());
        assert_eq!(route.refused(a, (Some("k1"), Some("alice")), &hyper::HeaderMap::new()), None);
        assert_eq!(
            route.refused(b, (Some("k2"), Some("alice")), &hyper::HeaderMap::new()),
            None,
            "alice from elsewhere"
        );
        assert!(
            route.refused(a, (Some("k3"), Some("alice")), &hyper::HeaderMap::new()).is_some(),
            "alice's burst is spent"
        );
        assert_eq!(
            route.refused(a, (Some("k1"), Some("bob")), &hyper::HeaderMap::new()),
            None,
            "bob has his own"
        );
    }

    #[test]
    fn a_route_limited_per_header_keeps_a_bucket_per_value_and_one_per_client_without_it() {
        let text = "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"p\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
             [[route]]\nname = \"r\"\nlistener = \"l\"\npool = \"p\"\n\
             rate_limit = { requests_per_second = 0.01, burst = 2, key = \"header\", header = \"X-Tenant\" }\n";
        let config = Config::parse_sent(std::path::Path::new("t.toml"), text).unwrap();
        let route = RouteRuntime::new(&config.routes[0]);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "198.51.100.7".parse().unwrap());
        let tenant = |value: &str| {
            let mut headers = hyper::HeaderMap::new();
            headers.insert("x-tenant", value.parse().unwrap());
            headers
        };
        let none = hyper::HeaderMap::new();
        assert_eq!(route.refused(a, (None, None), &tenant("acme")), None);
        assert_eq!(route.refused(b, (None, None), &tenant("acme")), None, "acme from elsewhere");
        assert!(route.refused(a, (None, None), &tenant("acme")).is_some(), "acme's burst is spent");
        assert_eq!(route.refused(a, (None, None), &tenant("globex")), None, "globex has its own");
        // Without the field, by the client's address (its own bucket, not a shared one).
        assert_eq!(route.refused(a, (None, None), &none), None);
        assert_eq!(route.refused(a, (None, None), &none), None);
        assert!(route.refused(a, (None, None), &none).is_some());
        assert_eq!(route.refused(b, (None, None), &none), None, "another client");
    }

    /// An upgrade hands the backends' counters over as text; the new lbd adds them to its
    /// own, IPv6 backends alike, for the backends its config names (the proxy's other counters'
    /// lines and a backend gone from the config are passed over).
    #[test]
    fn backend_counters_continue_in_the_next_lbd() {
        let (old, new) = (Runtime::default(), Runtime::default());
        let (v4, v6): (SocketAddr, SocketAddr) =
            ("10.0.0.1:80".parse().unwrap(), "[fd00::1]:8080".parse().unwrap());
        old.backend("web", v4).connections_opened.fetch_add(7, Ordering::Relaxed);
        old.backend("grpc", v6).connections_opened.fetch_add(2, Ordering::Relaxed);
        old.backend("grpc", v6).unprocessed.fetch_add(5, Ordering::Relaxed);
        old.backend("idle", v4); // none made: not handed over
        old.backend("gone", v4).connections_opened.fetch_add(3, Ordering::Relaxed);
        new.backend("web", v4).connections_opened.fetch_add(1, Ordering::Relaxed);
        let config = Config::parse(
            std::path::Path::new("t.toml"),
            "[dataplane]\ninterface = \"lo\"\n\
             [[pool]]\nname = \"web\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
             [[pool]]\nname = \"grpc\"\nport = 8080\nprotocol = \"h2c\"\nbackends = [{ address = \"fd00::1\" }]\n",
        )
        .unwrap();
        let text = format!(
            "http_requests_total{{route=\"r\",pool=\"web\",backend=\"{v4}\",class=\"2xx\"}} 9\n# EOF\n{}",
            old.counters_text()
        );
        new.absorb_counters(&text, &config);
        let mut counts = new.backend_counts(|b| &b.connections_opened);
        counts.sort();
        assert_eq!(counts, [("grpc".to_owned(), v6, 2), ("web".to_owned(), v4, 8)]);
        assert_eq!(new.backend_counts(|b| &b.unprocessed), [("grpc".to_owned(), v6, 5)]);
    }
}
