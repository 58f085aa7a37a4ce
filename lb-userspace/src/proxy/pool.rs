//! Pools as the proxy balances them: each usable backend an `Upstream` (its address, weight,
//! connections and runtime counters), and the pick of one for a request (round robin, least
//! requests, a consistent hash; a backend cookie's backend first; retries to the next).
use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use hyper::{header::HeaderValue, http::request::Parts};
use lb_common::hash::murmur3_32;

use crate::{
    config::{Balance, DEFAULT_CONNECT_TIMEOUT, HashKey, Outlier, Pool, StickyCookie, UpstreamProtocol},
    dataplane::tables::addr_of,
    maglev::{self, Weighted},
    proxy::{
        backend_stream::{Dial, ForClient},
        backend_tls::BackendTls,
        metrics::Label,
        round_robin,
        routes::{cookie, query_param},
        runtime::{BackendRuntime, PoolRuntime, Runtime},
    },
    state::State,
};

/// Buckets of an L7 consistent-hash table (prime).
const HASH_TABLE_SIZE: u32 = 4093;

/// One upstream of a pool.
pub struct Upstream {
    pub address: SocketAddr,
    /// `address` as the metrics label.
    pub label: Label,
    /// `address` as the authority of upstream request URIs.
    pub authority: hyper::http::uri::Authority,
    /// In-flight count and failure streak (kept across rebuilds).
    pub runtime: Arc<BackendRuntime>,
    /// Its pool's runtime: woken when a request ends (pending requests wait on it).
    pub pool: Arc<PoolRuntime>,
    /// How long a connect to it may take (its pool's `connect_timeout_ms`).
    pub connect_timeout: Duration,
    /// Its pool's TLS client (None: plain TCP).
    pub tls: Option<Arc<BackendTls>>,
    /// The PROXY header its pool sends (None: none).
    pub proxy_protocol: Option<crate::config::ProxyVersion>,
    /// Its effective weight (above 0).
    pub weight: u32,
    /// How its pool keeps connections alive.
    pub keep_alive: crate::config::KeepAlive,
    /// How its pool uses HTTP/2 connections (streams at once on one, PINGs).
    pub http2: crate::config::Http2Upstream,
    /// Its pool's backend cookie for it (a pool with `sticky_cookie`).
    pub sticky: Option<StickyId>,
}

/// What a pool's backend cookie says of one backend: its id (not its address: a client learns
/// nothing of the network behind), the same on every lbd of a pool (hosts behind ECMP), and
/// the Set-Cookie that gives it.
pub struct StickyId {
    pub id: String,
    pub set_cookie: HeaderValue,
}

impl StickyId {
    fn new(cookie: &StickyCookie, pool: &str, address: SocketAddr) -> Option<StickyId> {
        let named = format!("{pool}/{address}");
        let id = format!("{:08x}{:08x}", murmur3_32(named.as_bytes(), 0), murmur3_32(named.as_bytes(), 1));
        let age = cookie.max_age_s.map(|s| format!("; Max-Age={s}")).unwrap_or_default();
        let set_cookie =
            HeaderValue::from_str(&format!("{}={id}; Path=/; HttpOnly{age}", cookie.name)).ok()?;
        Some(StickyId { id, set_cookie })
    }
}

impl Upstream {
    /// Where a try for a request to `host` connects, with its client's PROXY header when the
    /// pool sends one.
    pub fn dial<'a>(&'a self, host: &'a str, proxy: Option<ForClient<'a>>) -> Dial<'a> {
        Dial {
            address: self.address,
            timeout: self.connect_timeout,
            tls: self.tls.as_ref(),
            host,
            proxy,
            keep_alive: self.keep_alive,
            class: self.pool.class,
            opened: Some(&self.runtime.connections_opened),
        }
    }

    pub fn in_flight(&self) -> usize {
        // SeqCst: a waiter's look after counting itself (`PoolRuntime::pending`); free on x86.
        self.runtime.in_flight.load(Ordering::SeqCst)
    }
}

/// A pool as the proxy balances it: usable backends only (drained and down ones are out,
/// unless the pool fails open).
pub struct L7Pool {
    pub name: Label,
    pub upstreams: Vec<Arc<Upstream>>,
    /// The name of its backend cookie (`sticky_cookie`), if it has one.
    sticky: Option<String>,
    /// With a backend cookie: drained backends still up, which keep the clients their cookie
    /// names (HAProxy's and nginx's drain with sticky sessions) and take no others.
    draining: Vec<Arc<Upstream>>,
    pub protocol: UpstreamProtocol,
    max_in_flight: Option<usize>,
    max_pending: usize,
    /// Requests waiting for a backend under its limit, and round robin's turns (kept across
    /// rebuilds).
    runtime: Arc<PoolRuntime>,
    pub outlier: Option<Outlier>,
    balance: Balance,
    hash_key: HashKey,
    /// The turns of weighted round robin (indexes into upstreams; `round_robin::order`), empty
    /// when the weights are all the same; for Balance::RoundRobin and LeastRequests.
    order: Vec<u32>,
    /// Consistent-hash table (indexes into upstreams), for Balance::Hash.
    table: Vec<u32>,
}

/// What the key of a consistent-hash pool is for `request` from `client`; empty when the
/// request lacks it (so all such requests share a backend, as a missing header's do).
fn hash_input<'a>(key: &HashKey, request: &'a Parts, client: IpAddr) -> Cow<'a, [u8]> {
    let uri = &request.uri;
    match key {
        HashKey::Header(name) => request.headers.get(name).map_or(&[][..], |v| v.as_bytes()).into(),
        HashKey::Cookie(name) => cookie(&request.headers, name).unwrap_or_default().as_bytes().into(),
        HashKey::ClientIp => addr_of(client).to_vec().into(),
        HashKey::Path => uri.path().as_bytes().into(),
        HashKey::Uri => uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes().into(),
        HashKey::Query(name) => {
            query_param(uri.query().unwrap_or_default(), name).unwrap_or_default().as_bytes().into()
        }
    }
}

impl L7Pool {
    /// The pool as the proxy balances it in a snapshot of `state`: its usable backends at their
    /// effective weights (in thousandths through a slow start: `first` says whether this is
    /// the first snapshot, `now_ms` is the coarse clock), and whether one is still ramping up.
    pub fn build(
        pool: &Pool,
        state: &State,
        runtime: &Runtime,
        (first, now_ms): (bool, u64),
    ) -> (L7Pool, bool) {
        let mut ramping = false;
        let (weighted, _) = state.effective_backends(pool);
        let mut usable: Vec<(IpAddr, u32)> = Vec::new();
        for (backend, w) in pool.backends.iter().zip(&weighted) {
            let mut weight = w.weight;
            // Slow start: weights in thousandths, a backend that came up lately at its
            // share so far; the snapshot is built again while one ramps (`ramping`).
            if let Some(window) = pool.slow_start {
                let address = SocketAddr::new(backend.addr, pool.port);
                let share =
                    runtime.backend(&pool.name, address).slow_start(weight > 0, now_ms, first, window);
                ramping |= weight > 0 && share < 1000;
                weight = (u64::from(weight) * share) as u32;
            }
            if weight > 0 {
                usable.push((backend.addr, weight));
            }
        }
        let table = if pool.balance == Balance::Hash {
            let w: Vec<Weighted> =
                usable.iter().map(|(a, w)| Weighted { addr: addr_of(*a), weight: *w }).collect();
            maglev::table(&w, HASH_TABLE_SIZE)
        } else {
            Vec::new()
        };
        let pool_runtime = runtime.pool(&pool.name);
        let tls = runtime.backend_tls(pool);
        let order = match pool.balance {
            Balance::Hash => Vec::new(),
            _ => round_robin::order(&usable.iter().map(|(_, w)| *w).collect::<Vec<_>>()),
        };
        let upstream = |addr: IpAddr, weight: u32| {
            let address = SocketAddr::new(addr, pool.port);
            Arc::new(Upstream {
                address,
                label: address.to_string().into(),
                authority: address.to_string().parse().expect("a socket address is an authority"),
                runtime: runtime.backend(&pool.name, address),
                pool: pool_runtime.clone(),
                connect_timeout: pool.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                tls: tls.clone(),
                proxy_protocol: pool.proxy_protocol,
                weight,
                keep_alive: pool.keep_alive,
                http2: pool.http2,
                sticky: pool.sticky_cookie.as_ref().and_then(|c| StickyId::new(c, &pool.name, address)),
            })
        };
        let upstreams = usable.iter().map(|(addr, weight)| upstream(*addr, *weight)).collect();
        // Drained by the operator (not standing by as a backup), still up.
        let draining = match pool.sticky_cookie {
            None => Vec::new(),
            Some(_) => pool
                .backends
                .iter()
                .filter(|b| (b.drain || b.weight == 0) && state.usable(&pool.name, b.addr))
                .map(|b| upstream(b.addr, b.weight.max(1)))
                .collect(),
        };
        let l7 = L7Pool {
            name: pool.name.as_str().into(),
            upstreams,
            sticky: pool.sticky_cookie.as_ref().map(|c| c.name.clone()),
            draining,
            protocol: pool.protocol,
            max_in_flight: pool.max_requests_per_backend,
            max_pending: pool.max_pending_requests,
            runtime: pool_runtime,
            outlier: pool.outlier,
            balance: pool.balance,
            hash_key: pool.hash_key.clone(),
            order,
            table,
        };
        (l7, ramping)
    }

    /// Picks an upstream for `request` from `client`: the balancer's choice, else (tried
    /// already, or at its circuit breaker's limit) the next usable one in pool order. None:
    /// every upstream was tried or is at its limit.
    pub fn pick(&self, request: &Parts, client: IpAddr, tried: &[SocketAddr]) -> Option<Arc<Upstream>> {
        // A retry does not consult the balancer again (that would skew round robin): it takes
        // the next backend after the last one tried.
        let first = match tried.last() {
            None => match self.stuck(request) {
                Some(stuck) => stuck,
                None => self.choose(request, client)?,
            },
            Some(last) => self.upstreams.iter().find(|u| u.address == *last)?.clone(),
        };
        let usable = |u: &Upstream| {
            !tried.contains(&u.address) && self.max_in_flight.is_none_or(|max| u.in_flight() < max)
        };
        if usable(&first) {
            return Some(first);
        }
        let start = self.upstreams.iter().position(|u| u.address == first.address).unwrap_or(0);
        (1..self.upstreams.len())
            .map(|k| &self.upstreams[(start + k) % self.upstreams.len()])
            .find(|u| usable(u))
            .cloned()
    }

    /// [`L7Pool::pick`] that, when every backend is at its limit, waits (at most `timeout`, as
    /// one of at most `max_pending_requests`) for one to free up.
    pub async fn pick_or_wait(
        &self,
        request: &Parts,
        client: IpAddr,
        timeout: Duration,
    ) -> Option<Arc<Upstream>> {
        if let Some(upstream) = self.pick(request, client, &[]) {
            return Some(upstream);
        }
        let pending = &self.runtime.pending;
        if self.upstreams.is_empty() || pending.fetch_add(1, Ordering::SeqCst) >= self.max_pending {
            pending.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let picked = loop {
            // Registered before the check, so a request ending in between still wakes us.
            let freed = self.runtime.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(upstream) = self.pick(request, client, &[]) {
                break Some(upstream);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break None;
            }
        };
        pending.fetch_sub(1, Ordering::Relaxed);
        picked
    }

    /// The backend `request`'s backend cookie names, if it still takes the requests of its
    /// clients (up, not ejected; drained or not).
    fn stuck(&self, request: &Parts) -> Option<Arc<Upstream>> {
        let id = cookie(&request.headers, self.sticky.as_deref()?)?;
        let named = |u: &&Arc<Upstream>| u.sticky.as_ref().is_some_and(|s| s.id == id);
        self.upstreams.iter().chain(&self.draining).find(named).cloned()
    }

    /// The Set-Cookie that keeps the client of `request` on `upstream`, which answered it: for
    /// a pool with a backend cookie, when the request named another backend or none.
    pub fn sticky_cookie(&self, request: &Parts, upstream: &Upstream) -> Option<HeaderValue> {
        let sticky = upstream.sticky.as_ref()?;
        let sent = cookie(&request.headers, self.sticky.as_deref()?);
        (sent != Some(sticky.id.as_str())).then(|| sticky.set_cookie.clone())
    }

    /// The balancing rule's choice for `request` from `client`.
    fn choose(&self, request: &Parts, client: IpAddr) -> Option<Arc<Upstream>> {
        let n = self.upstreams.len();
        if n == 0 {
            return None;
        }
        let turns = self.order.len();
        let index = match self.balance {
            Balance::RoundRobin if turns == 0 => self.runtime.turns.fetch_add(1, Ordering::Relaxed) % n,
            Balance::RoundRobin => {
                self.order[self.runtime.turns.fetch_add(1, Ordering::Relaxed) % turns] as usize
            }
            Balance::LeastRequests if turns == 0 => {
                // Power of two choices; the pair walks every combination (no RNG on the hot path).
                let c = self.runtime.turns.fetch_add(1, Ordering::Relaxed);
                let a = c % n;
                let b = if n > 1 { (a + 1 + (c / n) % (n - 1)) % n } else { a };
                let load = |i: usize| self.upstreams[i].in_flight();
                if load(b) < load(a) { b } else { a }
            }
            Balance::LeastRequests => {
                // Weighted: the pair is two turns of the weighted order, and the lighter by
                // requests in flight per weight wins (Envoy's weighted least request). The first
                // wins ties, so idle backends share requests by weight.
                let c = self.runtime.turns.fetch_add(1, Ordering::Relaxed);
                let a = self.order[c % turns] as usize;
                let b = self.order[(c + 1 + (c / turns) % (turns - 1)) % turns] as usize;
                let (a_up, b_up) = (&self.upstreams[a], &self.upstreams[b]);
                let weighed = |u: &Upstream, other: &Upstream| u.in_flight() as u64 * u64::from(other.weight);
                if weighed(b_up, a_up) < weighed(a_up, b_up) { b } else { a }
            }
            Balance::Hash => {
                let key = hash_input(&self.hash_key, request, client);
                self.table[(murmur3_32(&key, 0) % HASH_TABLE_SIZE) as usize] as usize
            }
        };
        Some(self.upstreams[index].clone())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use hyper::Request;

    use super::*;
    use crate::{config::Config, proxy::snapshot::Snapshot};

    fn snapshot(pool: &str) -> Snapshot {
        let text = format!(
            "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"p\"\n\
             backends = [{{ address = \"10.0.0.1\" }}, {{ address = \"10.0.0.2\" }}, {{ address = \"10.0.0.3\" }}]\n{pool}"
        );
        Snapshot::build(&State::new(Config::parse(Path::new("t.toml"), &text).unwrap()), &Runtime::default())
    }

    fn request() -> Parts {
        Request::new(()).into_parts().0
    }

    #[test]
    fn least_requests_avoids_the_busy_backend() {
        let s = snapshot("balance = \"least_requests\"\n");
        let pool = &s.pools["p"];
        pool.upstreams[0].runtime.in_flight.store(10, Ordering::Relaxed);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..30 {
            let picked = pool.pick(&request(), client, &[]).unwrap();
            assert_ne!(picked.address, pool.upstreams[0].address);
        }
    }

    #[test]
    fn round_robin_visits_every_backend_in_turn() {
        let s = snapshot("");
        let pool = &s.pools["p"];
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let picks: Vec<SocketAddr> =
            (0..6).map(|_| pool.pick(&request(), client, &[]).unwrap().address).collect();
        assert_eq!(picks[..3], picks[3..]);
        assert_eq!(picks[..3].iter().collect::<std::collections::BTreeSet<_>>().len(), 3);
    }

    /// How many of `picks` requests each backend of a pool of weights 100, 300 and 0 (drained)
    /// gets with `balance`, with `busy` requests in flight on each.
    fn weighted_shares(balance: &str, picks: usize, busy: [usize; 2]) -> Vec<usize> {
        let text = format!(
            "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"p\"\nbalance = \"{balance}\"\n\
             backends = [{{ address = \"10.0.0.1\" }}, {{ address = \"10.0.0.2\", weight = 300 }}, \
             {{ address = \"10.0.0.3\", weight = 0 }}]\n"
        );
        let s = Snapshot::build(
            &State::new(Config::parse(Path::new("t.toml"), &text).unwrap()),
            &Runtime::default(),
        );
        let pool = &s.pools["p"];
        assert_eq!(pool.upstreams.len(), 2, "weight 0 takes no requests");
        for (upstream, busy) in pool.upstreams.iter().zip(busy) {
            upstream.runtime.in_flight.store(busy, Ordering::Relaxed);
        }
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let mut shares = vec![0; 2];
        for _ in 0..picks {
            let picked = pool.pick(&request(), client, &[]).unwrap();
            shares[pool.upstreams.iter().position(|u| u.address == picked.address).unwrap()] += 1;
        }
        shares
    }

    #[test]
    fn round_robin_and_least_requests_follow_the_weights() {
        assert_eq!(weighted_shares("round_robin", 400, [0, 0]), [100, 300]);
        // Idle backends share by weight; the one with more in flight per weight is passed over
        // whenever the other is drawn: 3 requests on weight 300 weigh less than 2 on 100.
        assert_eq!(weighted_shares("least_requests", 400, [0, 0]), [100, 300]);
        let shares = weighted_shares("least_requests", 400, [2, 3]);
        assert!(shares[1] > 300, "{shares:?}");
        let shares = weighted_shares("least_requests", 400, [0, 3]);
        assert!(shares[0] > 100, "{shares:?}");
    }

    #[test]
    fn a_backend_back_from_down_ramps_up_to_its_weight_over_the_slow_start() {
        let text = "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"p\"\nslow_start_ms = 400\n\
             backends = [{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\" }]\n";
        let mut state = State::new(Config::parse(Path::new("t.toml"), text).unwrap());
        let runtime = Runtime::default();
        let shares = |s: &Snapshot, picks: usize| {
            let pool = &s.pools["p"];
            let client: IpAddr = "192.0.2.1".parse().unwrap();
            let second = (0..picks)
                .filter(|_| {
                    pool.pick(&request(), client, &[]).unwrap().address.ip().to_string() == "10.0.0.2"
                })
                .count();
            (picks - second, second)
        };
        let start = Snapshot::build(&state, &runtime);
        assert!(!start.ramping, "backends usable at start take their share at once");
        assert_eq!(shares(&start, 20), (10, 10));
        let health = |healthy| crate::state::Command::SetHealth {
            pool: "p".into(),
            address: "10.0.0.2".parse().unwrap(),
            healthy,
        };
        state.apply(&health(false)).unwrap();
        assert_eq!(shares(&Snapshot::build(&state, &runtime), 20), (20, 0));
        state.apply(&health(true)).unwrap();
        let back = Snapshot::build(&state, &runtime);
        assert!(back.ramping);
        let (first, second) = shares(&back, 110);
        assert!((10..=15).contains(&second), "a tenth of its weight at first: {first} {second}");
        std::thread::sleep(Duration::from_millis(450));
        let later = Snapshot::build(&state, &runtime);
        assert!(!later.ramping);
        assert_eq!(shares(&later, 20), (10, 10));
    }

    #[test]
    fn runtime_state_survives_a_rebuild_for_an_unrelated_change() {
        let text = "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"p\"\n\
             backends = [{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\" }, { address = \"10.0.0.3\" }]\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
             [[route]]\nname = \"r\"\nlistener = \"l\"\npool = \"p\"\n\
             rate_limit = { requests_per_second = 1, burst = 1 }\n";
        let mut state = State::new(Config::parse(Path::new("t.toml"), text).unwrap());
        let runtime = Runtime::default();
        let before = Snapshot::build(&state, &runtime);
        let first = &before.pools["p"].upstreams[0];
        first.runtime.in_flight.store(7, Ordering::Relaxed);
        first.runtime.failures.store(2, Ordering::Relaxed);
        let route = &before.routes["l"][0];
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(route.runtime.refused(client, (None, None), &hyper::HeaderMap::new()), None);
        assert!(
            route.runtime.refused(client, (None, None), &hyper::HeaderMap::new()).is_some(),
            "burst of 1 spent"
        );
        // Another backend goes down: the snapshot is rebuilt.
        let down = crate::state::Command::SetHealth {
            pool: "p".into(),
            address: "10.0.0.3".parse().unwrap(),
            healthy: false,
        };
        state.apply(&down).unwrap();
        let after = Snapshot::build(&state, &runtime);
        let same = after.pools["p"].upstreams.iter().find(|u| u.address == first.address).unwrap();
        assert_eq!(same.in_flight(), 7, "in-flight count reset");
        assert_eq!(same.runtime.failures.load(Ordering::Relaxed), 2, "failure streak reset");
        assert!(
            after.routes["l"][0].runtime.refused(client, (None, None), &hyper::HeaderMap::new()).is_some(),
            "rate-limit bucket refilled"
        );
        assert_eq!(after.pools["p"].upstreams.len(), 2);
    }

    #[test]
    fn two_pools_of_one_backend_file_their_connections_apart() {
        let text = "[dataplane]\ninterface = \"lo\"\n\
             [[pool]]\nname = \"p\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
             [[pool]]\nname = \"q\"\nbackends = [{ address = \"10.0.0.1\" }]\nmax_requests_per_connection = 1\n";
        let state = State::new(Config::parse(Path::new("t.toml"), text).unwrap());
        let runtime = Runtime::default();
        let key = |s: &Snapshot, pool: &str| s.pools[pool].upstreams[0].dial("", None).key();
        let before = Snapshot::build(&state, &runtime);
        assert_ne!(key(&before, "p"), key(&before, "q"), "q's settings would count p's requests");
        let after = Snapshot::build(&state, &runtime);
        assert_eq!(key(&before, "p"), key(&after, "p"), "a rebuild keeps a pool's idle connections");
    }

    /// The backend a hash pool keyed by `hash_key` picks for a GET of `target`.
    fn hashed(pool: &L7Pool, target: &str) -> SocketAddr {
        let request = Request::get(target).body(()).unwrap().into_parts().0;
        pool.pick(&request, "192.0.2.1".parse().unwrap(), &[]).unwrap().address
    }

    #[test]
    fn a_hash_pool_keys_by_the_path_the_uri_or_a_query_parameter() {
        let s = snapshot("balance = \"hash\"\nhash_key = \"path\"\n");
        let pool = &s.pools["p"];
        let spread: std::collections::BTreeSet<_> = (0..30).map(|i| hashed(pool, &format!("/{i}"))).collect();
        assert_eq!(spread.len(), 3, "30 paths on one or two backends");
        assert_eq!(hashed(pool, "/a?x=1"), hashed(pool, "/a?x=2"), "the query is not the path's");
        let s = snapshot("balance = \"hash\"\nhash_key = \"uri\"\n");
        let pool = &s.pools["p"];
        let spread: std::collections::BTreeSet<_> =
            (0..30).map(|i| hashed(pool, &format!("/a?x={i}"))).collect();
        assert_eq!(spread.len(), 3, "30 queries of one path on one or two backends");
        let s = snapshot("balance = \"hash\"\nhash_key = \"query:user\"\n");
        let pool = &s.pools["p"];
        for i in 0..10 {
            let first = hashed(pool, &format!("/a?user={i}"));
            assert_eq!(hashed(pool, &format!("/b/c?x=1&user={i}&y")), first, "user {i}");
        }
        let spread: std::collections::BTreeSet<_> =
            (0..30).map(|i| hashed(pool, &format!("/?user={i}"))).collect();
        assert_eq!(spread.len(), 3);
        // A request without it: as an empty value, one backend for all.
        assert_eq!(hashed(pool, "/a"), hashed(pool, "/b?users=1&user"));
    }

    #[test]
    fn a_backup_is_picked_only_while_the_other_backends_are_down() {
        let text = "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"p\"\n\
             backends = [{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\", backup = true }]\n";
        let mut state = State::new(Config::parse(Path::new("t.toml"), text).unwrap());
        let runtime = Runtime::default();
        let picked = |state: &State| {
            let s = Snapshot::build(state, &runtime);
            let client: IpAddr = "192.0.2.1".parse().unwrap();
            let picks =
                (0..4).map(|_| s.pools["p"].pick(&request(), client, &[]).unwrap().address.ip().to_string());
            picks.collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>()
        };
        assert_eq!(picked(&state), ["10.0.0.1"]);
        let health = |healthy| crate::state::Command::SetHealth {
            pool: "p".into(),
            address: "10.0.0.1".parse().unwrap(),
            healthy,
        };
        state.apply(&health(false)).unwrap();
        assert_eq!(picked(&state), ["10.0.0.2"]);
        state.apply(&health(true)).unwrap();
        assert_eq!(picked(&state), ["10.0.0.1"]);
    }

    #[test]
    fn a_backend_cookie_keeps_its_client_on_its_backend_drained_or_not() {
        let text = |drain: bool| {
            format!(
                "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"p\"\n\
                 sticky_cookie = {{ name = \"srv\", max_age_s = 60 }}\n\
                 backends = [{{ address = \"10.0.0.1\" }}, {{ address = \"10.0.0.2\", drain = {drain} }}]\n"
            )
        };
        let mut state = State::new(Config::parse(Path::new("t.toml"), &text(false)).unwrap());
        let runtime = Runtime::default();
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let with = |cookie: &str| {
            let mut request = request();
            request.headers.insert(hyper::header::COOKIE, cookie.parse().unwrap());
            request
        };
        let s = Snapshot::build(&state, &runtime);
        let pool = &s.pools["p"];
        let second = pool.upstreams.iter().find(|u| u.address.ip().to_string() == "10.0.0.2").unwrap();
        let id = second.sticky.as_ref().unwrap().id.clone();
        assert_eq!(id.len(), 16);
        assert_eq!(
            second.sticky.as_ref().unwrap().set_cookie,
            format!("srv={id}; Path=/; HttpOnly; Max-Age=60").as_str()
        );
        let stuck = with(&format!("a=1; srv={id}"));
        let picked = |s: &Snapshot, request: &Parts| {
            (0..4)
                .map(|_| s.pools["p"].pick(request, client, &[]).unwrap().address.ip().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(picked(&s, &stuck), ["10.0.0.2"; 4]);
        assert_eq!(picked(&s, &with("srv=0000")).len(), 4);
        assert!(picked(&s, &with("srv=0000")).contains(&"10.0.0.1".to_owned()), "an unknown id: balanced");
        // Set when the request named another backend or none; not when it named this one.
        assert!(pool.sticky_cookie(&request(), second).is_some());
        assert!(pool.sticky_cookie(&with("srv=0000"), second).is_some());
        assert!(pool.sticky_cookie(&stuck, second).is_none());
        // Drained: its clients stay, new ones never come.
        let drained = State::new(Config::parse(Path::new("t.toml"), &text(true)).unwrap());
        let s = Snapshot::build(&drained, &runtime);
        assert_eq!(picked(&s, &stuck), ["10.0.0.2"; 4]);
        assert_eq!(picked(&s, &request()), ["10.0.0.1"; 4]);
        // Down: its clients go elsewhere (and get the other's cookie).
        let down = crate::state::Command::SetHealth {
            pool: "p".into(),
            address: "10.0.0.2".parse().unwrap(),
            healthy: false,
        };
        state.apply(&down).unwrap();
        let s = Snapshot::build(&state, &runtime);
        assert_eq!(picked(&s, &stuck), ["10.0.0.1"; 4]);
    }

    #[test]
    fn a_retry_takes_the_next_backend_not_tried() {
        let s = snapshot("");
        let pool = &s.pools["p"];
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let first = pool.pick(&request(), client, &[]).unwrap().address;
        let second = pool.pick(&request(), client, &[first]).unwrap().address;
        let third = pool.pick(&request(), client, &[first, second]).unwrap().address;
        assert!(first != second && second != third && first != third);
        assert!(pool.pick(&request(), client, &[first, second, third]).is_none());
    }
}
