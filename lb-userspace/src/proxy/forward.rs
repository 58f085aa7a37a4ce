//! One request through the proxy: route, pick an upstream, rewrite headers, forward with a
//! pooled keep-alive connection, stream both bodies, log and count. WebSocket upgrades are
//! passed through.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited, combinators::BoxBody};
use hyper::{
    HeaderMap, Request, Response, StatusCode, Uri, Version,
    body::Incoming,
    header::{self, HeaderValue},
    http::uri::PathAndQuery,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use log::info;

use crate::{
    config::{Listener, UpstreamProtocol},
    proxy::{
        cache::{self, CacheStore},
        metrics::{Label, ProxyMetrics},
        routes::{self, L7Pool, Snapshot, Upstream},
    },
    state::Command,
};

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(status: StatusCode, text: &str) -> Response<Body> {
    let mut response =
        Response::new(Full::new(Bytes::from(format!("{text}\n"))).map_err(|e| match e {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the ones a Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named = super::header_tokens(headers, header::CONNECTION);
    for name in named {
        if !(keep_upgrade && name == "upgrade") {
            headers.remove(name.as_str());
        }
    }
    for name in ["keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"] {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// The cookie that keeps a client on the pool a sticky split gave it.
const STICKY_COOKIE: &str = "sluice_pool";

/// A request in flight on an upstream, from send until its response body is done.
struct InFlight(Arc<Upstream>);

impl InFlight {
    fn start(upstream: &Arc<Upstream>) -> InFlight {
        upstream.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(upstream.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.freed.notify_waiters();
    }
}

/// Forwards requests; one per lbd, shared by every listener.
pub struct Forwarder {
    /// Routes' response caches (shared with the admin API for purges).
    cache: Arc<CacheStore>,
    /// Where outlier ejections go (into the State, like health results).
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    /// Times each backend was ejected: the next ejection lasts that much longer.
    ejections: std::sync::Mutex<std::collections::HashMap<(String, SocketAddr), u32>>,
    client: Client<HttpConnector, Body>,
    /// Prior-knowledge HTTP/2 to h2c pools.
    h2c: Client<HttpConnector, Body>,
    pub metrics: ProxyMetrics,
    next_id: AtomicU64,
    id_seed: u64,
    /// The metrics label of no route, pool or backend (the proxy answered by itself).
    none: Label,
    /// The backend label of answers from a route's cache.
    cache_label: Label,
}

impl Forwarder {
    pub fn new(
        metrics: ProxyMetrics,
        commands: tokio::sync::mpsc::UnboundedSender<Command>,
        cache: Arc<CacheStore>,
    ) -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(3)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector.clone());
        let h2c = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .http2_only(true)
            .build(connector);
        let id_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Forwarder {
            cache,
            commands,
            ejections: Default::default(),
            client,
            h2c,
            metrics,
            next_id: AtomicU64::new(1),
            id_seed,
            none: Label::from(""),
            cache_label: Label::from("cache"),
        }
    }

    /// Passive outlier ejection: counts failures in a row; at the pool's threshold the backend
    /// is marked down (so it also leaves the XDP tables) for a time that grows with each
    /// ejection, then marked up again.
    fn observe(&self, pool: &L7Pool, upstream: &Upstream, failed: bool) {
        let Some(outlier) = pool.outlier else { return };
        if !failed {
            upstream.failures.store(0, Ordering::Relaxed);
            return;
        }
        if upstream.failures.fetch_add(1, Ordering::Relaxed) + 1 != outlier.consecutive_failures {
            return;
        }
        let times = {
            let mut ejections = self.ejections.lock().unwrap_or_else(|p| p.into_inner());
            let n = ejections.entry((pool.name.to_string(), upstream.address)).or_default();
            *n += 1;
            *n
        };
        let duration = std::time::Duration::from_millis(outlier.ejection_ms * times as u64);
        log::warn!(
            "pool {}: backend {} ejected for {duration:?} after {} failures in a row",
            pool.name,
            upstream.address,
            outlier.consecutive_failures
        );
        let (name, address) = (pool.name.to_string(), upstream.address.ip());
        let _ = self.commands.send(Command::SetHealth { pool: name.clone(), address, healthy: false });
        let commands = self.commands.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            let _ = commands.send(Command::SetHealth { pool: name, address, healthy: true });
        });
    }

    /// The request to send to `upstream` for the client's `parts` with `headers` (the parts'
    /// headers, already rewritten), in the pool's protocol, and the client pool that speaks it.
    /// None: no valid request target.
    fn upstream_request(
        &self,
        parts: &hyper::http::request::Parts,
        headers: HeaderMap,
        upstream: &Upstream,
        pool: &L7Pool,
        body: Body,
    ) -> Option<(Request<Body>, &Client<HttpConnector, Body>)> {
        let mut target = hyper::http::uri::Parts::default();
        target.scheme = Some(hyper::http::uri::Scheme::HTTP);
        target.authority = Some(upstream.authority.clone());
        target.path_and_query =
            Some(parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
        let uri = Uri::from_parts(target).ok()?;
        let h2 = pool.protocol == UpstreamProtocol::H2c;
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };
        *request.headers_mut() = headers;
        Some((request, if h2 { &self.h2c } else { &self.client }))
    }

    /// One upstream request for the cache: the whole answer buffered (up to `max_bytes`), with
    /// how long it may be stored. None when no backend answered.
    async fn fetch(
        &self,
        pool: &L7Pool,
        parts: &hyper::http::request::Parts,
        client: std::net::IpAddr,
        timeout: std::time::Duration,
        max_bytes: usize,
    ) -> Option<(StatusCode, HeaderMap, Bytes, Option<std::time::Duration>)> {
        let upstream = pool.pick(&Request::new(()), client, &[])?;
        let (request, client_pool) =
            self.upstream_request(parts, parts.headers.clone(), &upstream, pool, empty())?;
        let _in_flight = InFlight::start(&upstream);
        let response = tokio::time::timeout(timeout, client_pool.request(request)).await.ok()?.ok()?;
        let (mut head, body) = response.into_parts();
        let body = tokio::time::timeout(timeout, Limited::new(body, max_bytes).collect())
            .await
            .ok()?
            .ok()?
            .to_bytes();
        strip_hop_by_hop(&mut head.headers, false);
        head.headers.insert("via", HeaderValue::from_static("1.1 sluice"));
        head.headers.remove(header::CONTENT_LENGTH);
        let ttl = cache::lifetime(head.status, &head.headers);
        Some((head.status, head.headers, body, ttl))
    }

    /// A uniform draw in [0, 100) for traffic splits (a hash of a counter: no RNG state).
    fn draw(&self) -> f64 {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        lb_common::hash::murmur3_32(&n.to_le_bytes(), 0x5eed) as f64 / (u32::MAX as f64 + 1.0) * 100.0
    }

    fn request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:016x}{:08x}",
            self.id_seed,
            lb_common::hash::murmur3_32(&n.to_le_bytes(), self.id_seed as u32) ^ n as u32
        )
    }

    /// Answers one request.
    pub async fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        snapshot: Arc<Snapshot>,
        listener: Arc<Listener>,
        client: SocketAddr,
        tls: bool,
    ) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        let host = request
            .uri()
            .host()
            .map(str::to_owned)
            .or_else(|| {
                request
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| h.rsplit_once(':').map_or(h, |(a, _)| a).to_owned())
            })
            .unwrap_or_default()
            .to_ascii_lowercase();
        let request_id = match request.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
            Some(id) if !id.is_empty() && id.len() <= 200 => id.to_owned(),
            _ => self.request_id(),
        };
        let path =
            request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
        let method = request.method().clone();
        // Set when an upstream answered: its time to response headers.
        let mut upstream_seconds = None;
        let (route_label, pool_label, backend_label, response) = 'answer: {
            if listener.redirect_https && !tls {
                let mut r = full(StatusCode::MOVED_PERMANENTLY, "moved to https");
                if let Ok(location) = HeaderValue::from_str(&format!("https://{host}{path}")) {
                    r.headers_mut().insert(header::LOCATION, location);
                }
                break 'answer (self.none.clone(), self.none.clone(), self.none.clone(), r);
            }
            // Request smuggling (RFC 9112 §6.3): a message with both framings is refused, not
            // forwarded with one of them, and the connection is closed after the answer.
            if request.headers().contains_key(header::TRANSFER_ENCODING)
                && request.headers().contains_key(header::CONTENT_LENGTH)
            {
                let mut r = full(StatusCode::BAD_REQUEST, "both Content-Length and Transfer-Encoding");
                r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                break 'answer (self.none.clone(), self.none.clone(), self.none.clone(), r);
            }
            let too_big = request
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n > listener.max_body_bytes);
            if too_big {
                break 'answer (
                    self.none.clone(),
                    self.none.clone(),
                    self.none.clone(),
                    full(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
                );
            }
            let Some(route) = snapshot.route(&listener.name, &host, &request) else {
                break 'answer (
                    self.none.clone(),
                    self.none.clone(),
                    self.none.clone(),
                    full(StatusCode::NOT_FOUND, "no route"),
                );
            };
            let route_label = route.name.clone();
            // Gateway steps before any upstream: access control, rate limit, pool choice.
            if !route.admits(client.ip()) {
                let r = full(StatusCode::FORBIDDEN, "client address not allowed on this route");
                break 'answer (route_label, route.pool.clone(), self.none.clone(), r);
            }
            let mut api_key = None;
            if let Some(keys) = &route.api_keys {
                match keys.check(request.headers(), request.uri()) {
                    Ok(key) => api_key = Some(key),
                    Err((status, why)) => {
                        break 'answer (
                            route_label,
                            route.pool.clone(),
                            self.none.clone(),
                            full(status, why),
                        );
                    }
                }
            }
            if let Some(jwt) = &route.jwt {
                let subject = match jwt.check(request.headers()) {
                    Ok(subject) => subject,
                    Err((status, why)) => {
                        let mut r = full(status, why);
                        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                        break 'answer (route_label, route.pool.clone(), self.none.clone(), r);
                    }
                };
                // Only the verified subject reaches the backend under that header.
                if let Some(name) = &jwt.subject_header {
                    request.headers_mut().remove(name);
                    if let Some(value) = subject.as_deref().and_then(|s| HeaderValue::from_str(s).ok()) {
                        request.headers_mut().insert(name.clone(), value);
                    }
                }
            }
            if let Some(wait) = route.rate_limited(client.ip(), api_key.as_deref()) {
                let mut r = full(StatusCode::TOO_MANY_REQUESTS, "rate limited");
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
                break 'answer (route_label, route.pool.clone(), self.none.clone(), r);
            }
            let remembered = route
                .sticky
                .then(|| routes::cookie(request.headers(), STICKY_COOKIE))
                .flatten()
                .and_then(|p| route.serves(p))
                .cloned();
            let set_sticky = route.sticky && remembered.is_none();
            let pool_name = remembered.unwrap_or_else(|| route.pool_for(self.draw()).clone());
            let fallback = |status: StatusCode, text: &str| match &route.fallback {
                Some(f) => fallback_response(f),
                None => full(status, text),
            };
            let Some(pool) = snapshot.pools.get(&*pool_name).filter(|p| !p.upstreams.is_empty()) else {
                let r = fallback(StatusCode::SERVICE_UNAVAILABLE, "no backend available");
                break 'answer (route_label, pool_name, self.none.clone(), r);
            };
            let h2 = pool.protocol == UpstreamProtocol::H2c;

            // The upstream request's parts, shared by every try.
            let upgrade = request.headers().contains_key(header::UPGRADE);
            let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
            let bodiless = !request.headers().contains_key(header::TRANSFER_ENCODING)
                && request.headers().get(header::CONTENT_LENGTH).is_none_or(|v| v.as_bytes() == b"0");
            let idempotent =
                matches!(request.method().as_str(), "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE");
            let tries =
                if route.retries > 0 && bodiless && idempotent && !upgrade { route.retries + 1 } else { 1 };
            route.count_request();
            let Some(picked_first) = pool.pick_or_wait(&request, client.ip(), route.timeout).await else {
                // Circuit breaking: every backend is at max_requests_per_backend.
                let r = fallback(StatusCode::SERVICE_UNAVAILABLE, "every backend is at its request limit");
                break 'answer (route_label, pool_name, self.none.clone(), r);
            };
            let (mut parts, body) = request.into_parts();
            if parts.version == Version::HTTP_2
                && !parts.headers.contains_key(header::HOST)
                && let Ok(value) = HeaderValue::from_str(&host)
            {
                parts.headers.insert(header::HOST, value);
            }
            // gRPC needs `te: trailers` end to end; every other hop-by-hop header stops here.
            let te_trailers =
                parts.headers.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
            strip_hop_by_hop(&mut parts.headers, upgrade);
            if h2 && te_trailers {
                parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
            }
            let forwarded_for = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(previous) => format!("{previous}, {}", client.ip()),
                None => client.ip().to_string(),
            };
            let proto = if tls { "https" } else { "http" };
            let for_node =
                if client.is_ipv6() { format!("\"[{}]\"", client.ip()) } else { client.ip().to_string() };
            for (name, value) in [
                ("x-forwarded-for", forwarded_for),
                ("forwarded", format!("for={for_node};proto={proto};host={host}")),
                ("x-request-id", request_id.clone()),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    parts.headers.insert(name, v);
                }
            }
            parts.headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
            parts.headers.insert("via", HeaderValue::from_static("1.1 sluice"));
            // A body that fails while streaming (too long, bad chunking) is the client's fault:
            // remember which, to answer 413 / 400 rather than 502.
            let limit = listener.max_body_bytes as usize;
            let body_error = Arc::new(std::sync::atomic::AtomicU16::new(0));
            let seen = body_error.clone();
            let mut body: Option<Body> = Some(
                Limited::new(body, limit)
                    .map_err(move |err| {
                        let status = if err.is::<http_body_util::LengthLimitError>() { 413 } else { 400 };
                        seen.store(status, Ordering::Relaxed);
                        err
                    })
                    .boxed(),
            );

            // The route's cache: fresh answers are served from it; concurrent misses of one key
            // make one upstream request, whose answer every waiter gets.
            if let Some(config) = &route.cache
                && matches!(parts.method, hyper::Method::GET | hyper::Method::HEAD)
                && !parts.headers.contains_key(header::AUTHORIZATION)
            {
                let key = self.cache.key(&route.name, config, &parts.method, &host, &path, &parts.headers);
                if let Some(hit) = self.cache.get(&route.name, config, &key) {
                    break 'answer (
                        route_label,
                        pool_name,
                        self.cache_label.clone(),
                        cached_response(&hit, "HIT"),
                    );
                }
                let cell = self.cache.pending(&route.name, config, &key);
                let fetched = cell
                    .get_or_init(|| async {
                        let answer = self
                            .fetch(pool, &parts, client.ip(), route.timeout, config.max_object_bytes)
                            .await;
                        // Upstream fills are counted apart (route NAME:fill): coalescing shows there.
                        let status = answer.as_ref().map_or(502, |a| a.0.as_u16());
                        let fill = Label::from(format!("{}:fill", route.name));
                        self.metrics.request(&fill, &pool_name, &self.none, status, None);
                        let request = (&parts.method, host.as_str(), path.as_str());
                        match answer {
                            Some((status, headers, body, Some(ttl))) => {
                                let stored = self.cache.finish(
                                    &route.name,
                                    config,
                                    &parts.headers,
                                    request,
                                    Some((status, headers.clone(), body.clone(), ttl)),
                                    &key,
                                );
                                stored.or(Some(cache::Cached::now(status, headers, body)))
                            }
                            Some((status, headers, body, None)) => {
                                self.cache.finish(&route.name, config, &parts.headers, request, None, &key);
                                Some(cache::Cached::now(status, headers, body))
                            }
                            None => {
                                self.cache.finish(&route.name, config, &parts.headers, request, None, &key);
                                None
                            }
                        }
                    })
                    .await
                    .clone();
                let response = match fetched {
                    Some(answer) => cached_response(&answer, "MISS"),
                    None => fallback(StatusCode::BAD_GATEWAY, "upstream failed"),
                };
                break 'answer (route_label, pool_name, self.cache_label.clone(), response);
            }

            // Shadowing: a copy of a share of bodiless requests goes to the shadow pool on its own
            // task; its answer is dropped.
            if let Some((shadow_pool, percent)) = &route.shadow
                && bodiless
                && !upgrade
                && self.draw() < *percent
                && let Some(shadow) = snapshot.pools.get(shadow_pool)
                && let Some(target) = shadow.pick(&Request::new(()), client.ip(), &[])
                && let Some((copy, client_pool)) =
                    self.upstream_request(&parts, parts.headers.clone(), &target, shadow, empty())
            {
                let (client_pool, metrics) = (client_pool.clone(), self.metrics.clone());
                let (label, pool_label) = (Label::from(format!("{route_label}:shadow")), shadow.name.clone());
                tokio::spawn(async move {
                    let status = match tokio::time::timeout(
                        std::time::Duration::from_secs(30),
                        client_pool.request(copy),
                    )
                    .await
                    {
                        Ok(Ok(response)) => {
                            let status = response.status().as_u16();
                            let _ = response.into_body().collect().await;
                            status
                        }
                        _ => 502,
                    };
                    metrics.request(&label, &pool_label, &target.label, status, None);
                });
            }

            // Tries: a retry goes to another backend, after a connect failure or a 502/503/504.
            let mut tried = Vec::new();
            let mut last_label = None;
            let mut failure = full(StatusCode::BAD_GATEWAY, "upstream failed");
            let mut answered = None;
            for attempt in 0..tries {
                let upstream = if attempt == 0 {
                    picked_first.clone()
                } else {
                    // A retry: within the route's budget, on a backend not tried yet, after a
                    // short backoff with jitter (5 ms doubling per try, times a draw in [0.5, 1.5)).
                    let upstream = match pool.pick(&Request::new(()), client.ip(), &tried) {
                        Some(u) if route.take_retry() => u,
                        _ => break,
                    };
                    let backoff = 5.0 * 2f64.powi(attempt as i32 - 1) * (0.5 + self.draw() / 100.0);
                    tokio::time::sleep(std::time::Duration::from_secs_f64(backoff / 1000.0)).await;
                    upstream
                };
                tried.push(upstream.address);
                last_label = Some(upstream.label.clone());
                let request_body = body.take().unwrap_or_else(empty);
                // The last try takes the headers; earlier ones send a copy.
                let headers = if attempt + 1 == tries {
                    std::mem::take(&mut parts.headers)
                } else {
                    parts.headers.clone()
                };
                let Some((upstream_request, upstream_client)) =
                    self.upstream_request(&parts, headers, &upstream, pool, request_body)
                else {
                    failure = full(StatusCode::BAD_REQUEST, "bad request target");
                    break;
                };
                let in_flight = InFlight::start(&upstream);
                let sent = Instant::now();
                let result =
                    tokio::time::timeout(route.timeout, upstream_client.request(upstream_request)).await;
                let elapsed = sent.elapsed().as_secs_f64();
                let failed = match &result {
                    Err(_) => true,
                    Ok(Err(_)) => body_error.load(Ordering::Relaxed) == 0,
                    Ok(Ok(response)) => response.status().is_server_error(),
                };
                self.observe(pool, &upstream, failed);
                match result {
                    Err(_) => {
                        failure = full(StatusCode::GATEWAY_TIMEOUT, "upstream timed out");
                        break;
                    }
                    Ok(Err(err)) => {
                        log::debug!("upstream {}: {err}", upstream.address);
                        match body_error.load(Ordering::Relaxed) {
                            413 => {
                                failure = full(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
                                break;
                            }
                            400 => {
                                failure = full(StatusCode::BAD_REQUEST, "malformed request body");
                                failure
                                    .headers_mut()
                                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                                break;
                            }
                            _ => failure = full(StatusCode::BAD_GATEWAY, "upstream failed"),
                        }
                    }
                    Ok(Ok(response))
                        if attempt + 1 < tries && matches!(response.status().as_u16(), 502..=504) =>
                    {
                        self.metrics.request(
                            &route_label,
                            &pool_name,
                            &upstream.label,
                            response.status().as_u16(),
                            Some(elapsed),
                        );
                    }
                    Ok(Ok(response)) => {
                        answered = Some((response, in_flight, elapsed));
                        break;
                    }
                }
            }
            let backend_label = last_label.unwrap_or_else(|| self.none.clone());
            let Some((mut response, in_flight, elapsed)) = answered else {
                let r = if failure.status() == StatusCode::BAD_GATEWAY {
                    fallback(StatusCode::BAD_GATEWAY, "upstream failed")
                } else {
                    failure
                };
                break 'answer (route_label, pool_name, backend_label, r);
            };
            if response.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(downstream) = downstream_upgrade
            {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    if let (Ok(down), Ok(up)) = (downstream.await, upstream_upgrade.await) {
                        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(down), &mut TokioIo::new(up))
                            .await;
                    }
                });
            }
            let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            strip_hop_by_hop(response.headers_mut(), switching);
            response.headers_mut().insert("via", HeaderValue::from_static("1.1 sluice"));
            // The request stays in flight (circuit breaking, least requests) until its body is done.
            let response = response.map(|b| {
                b.map_frame(move |frame| {
                    let _ = &in_flight;
                    frame
                })
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                .boxed()
            });
            let mut response = response;
            if set_sticky
                && let Ok(v) =
                    HeaderValue::from_str(&format!("{STICKY_COOKIE}={pool_name}; Path=/; HttpOnly"))
            {
                response.headers_mut().append(header::SET_COOKIE, v);
            }
            upstream_seconds = Some(elapsed);
            break 'answer (route_label, pool_name, backend_label, response);
        };
        self.metrics.request(
            &route_label,
            &pool_label,
            &backend_label,
            response.status().as_u16(),
            upstream_seconds,
        );
        if listener.access_log {
            access_log(
                client,
                &host,
                &method,
                &path,
                response.status(),
                &backend_label,
                started,
                &request_id,
            );
        }
        let mut response = response;
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", v);
        }
        Ok(response)
    }
}

#[allow(clippy::too_many_arguments)]
fn access_log(
    client: SocketAddr,
    host: &str,
    method: &hyper::Method,
    path: &str,
    status: StatusCode,
    upstream: &str,
    started: Instant,
    request_id: &str,
) {
    info!(
        target: "access",
        "client={client} host={host} method={method} path={path} status={} upstream={} duration_ms={:.3} request_id={request_id}",
        status.as_u16(),
        if upstream.is_empty() { "-" } else { upstream },
        started.elapsed().as_secs_f64() * 1000.0
    );
}

/// The route's static answer when no backend can take a request.
fn fallback_response(fallback: &crate::config::Fallback) -> Response<Body> {
    let mut response =
        Response::new(Full::new(Bytes::from(fallback.body.clone())).map_err(|e| match e {}).boxed());
    *response.status_mut() = StatusCode::from_u16(fallback.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let content_type = fallback.content_type.as_deref().unwrap_or("text/plain");
    if let Ok(v) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

/// A response from a cached (or just fetched) answer, marked `X-Cache: HIT|MISS`.
fn cached_response(answer: &cache::Cached, x_cache: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(answer.body.clone()).map_err(|e| match e {}).boxed());
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers.clone();
    response.headers_mut().insert("x-cache", HeaderValue::from_static(x_cache));
    response
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}
