//! Upstream: sending a request to one backend (HTTP/1.1 on the own engine's pooled keep-alive
//! connections, `h1::upstream`, or HTTP/2 to h2c and h2 pools, `h2::upstream`, with the client's
//! host as `:authority`; either over TLS where the pool says), and the tries of one request: a
//! retry (of what the route's `retry_on` names) goes to another backend within the route's
//! budget; an answer that cannot be retried reaches the client as the backend sent it; every
//! answer feeds outlier detection.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU16, Ordering},
    },
    time::Duration,
};

use hyper::{
    HeaderMap, Method, Request, Response, StatusCode, Uri, Version,
    body::Body as _,
    header::{self, HeaderValue},
    http::request::Parts,
};
use smallvec::SmallVec;
use tokio::time::Instant;

use crate::{
    config::{Fallback, UpstreamProtocol},
    proxy::{
        access_log::ClientConn,
        backend_stream::{ConnectFailed, ForClient},
        body::{self, Body},
        deadline, h1,
        h2::upstream::{self as http2, StreamRefused},
        metrics::{Label, ProxyMetrics},
        phase::{
            Refusal,
            headers::{self, Forwarding},
        },
        pool::{L7Pool, Upstream},
        proxy_protocol,
        replay::{self, Replay},
        routes::CompiledRoute,
    },
    state::Command,
};

type SendError = Box<dyn std::error::Error + Send + Sync>;

/// How many other backends a request whose backend could not be reached goes to at most.
const REDISPATCHES: u32 = 3;

/// A request in flight on an upstream, from send until its response body is done.
pub struct InFlight(Arc<Upstream>);

impl InFlight {
    pub fn start(upstream: &Arc<Upstream>) -> InFlight {
        upstream.runtime.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(upstream.clone())
    }

    /// The upstream the request is in flight on.
    pub fn upstream(&self) -> &Upstream {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.runtime.in_flight.fetch_sub(1, Ordering::SeqCst);
        // Waking takes the Notify's lock: only when a request waits (see `PoolRuntime::pending`).
        if self.0.pool.pending.load(Ordering::SeqCst) > 0 {
            self.0.pool.freed.notify_waiters();
        }
    }
}

/// The connections to every backend.
#[derive(Default)]
pub struct Upstreams {
    http1: Arc<h1::upstream::Pool>,
    http2: http2::Pool,
}

impl Upstreams {
    /// Closes this worker's connections that have idled too long (HTTP/2: also those closed by
    /// their backend).
    pub fn sweep(&self) {
        self.http1.sweep();
        self.http2.sweep();
    }

    /// Sends the request (`parts` with `headers`) to `upstream` in its pool's protocol. HTTP/1.1
    /// keeps the client's Host, and an HTTP/1.0 request that came without one gets the
    /// backend's address, as nginx sends by default (every HTTP/1.1 request has a Host, RFC 9112
    /// §3.2); HTTP/2 carries the client's host as `:authority` and no Host (RFC 9113 §8.3.1).
    /// An HTTP/1.1 backend's interim answers go to the client connection `conn` (an h2c
    /// backend's are not passed on: hyper's client reads past them); None: a cache fill or a
    /// shadow copy, whose answer no client waits for.
    ///
    /// HTTP/1.1 writes the head from `headers` as they are; HTTP/2 needs them as its own, and
    /// takes them (`take_headers`) or a copy, and the body, only once its connection is open.
    /// So a try that could not connect ([`ConnectFailed`]) leaves both for another backend. A
    /// bodiless request, or one whose body is `kept` ([`replay`]), that an HTTP/2 backend refuses
    /// unprocessed fails with [`StreamRefused`], its headers copied rather than taken.
    #[allow(clippy::too_many_arguments, reason = "the request's parts and where it goes")]
    pub async fn send(
        &self,
        protocol: UpstreamProtocol,
        upstream: &Upstream,
        parts: &Parts,
        headers: &mut HeaderMap,
        take_headers: bool,
        forwarding: &Forwarding,
        host: &str,
        body: &mut Option<Body>,
        kept: bool,
        conn: Option<&ClientConn>,
    ) -> Result<Response<Body>, SendError> {
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        if protocol == UpstreamProtocol::Http1 {
            // A pool that sends the PROXY protocol: a header for this client, on a connection
            // that is the client's alone, kept by its connection between its requests (config
            // refuses it on HTTP/2 pools, whose connections are shared).
            let proxy_header = match (upstream.proxy_protocol, forwarding.ends) {
                (Some(version), Some((client, local))) => {
                    let tls = conn.and_then(|conn| {
                        Some(proxy_protocol::ClientTls {
                            version: conn.tls_version?,
                            sni: conn.sni.as_deref(),
                            alpn: conn.alpn,
                            verified: conn.client_verified,
                        })
                    });
                    Some(proxy_protocol::header(version, client, local, tls))
                }
                _ => None,
            };
            let proxy =
                proxy_header.as_deref().map(|header| ForClient { header, kept: conn.map(|conn| &conn.kept) });
            let with_host;
            let mut fields = &*headers;
            if parts.version == Version::HTTP_10
                && !headers.contains_key(header::HOST)
                && let Ok(host) = HeaderValue::from_str(upstream.authority.as_str())
            {
                with_host = {
                    let mut copy = headers.clone();
                    copy.insert(header::HOST, host);
                    copy
                };
                fields = &with_host;
            }
            let added = h1::encode::Added { lines: forwarding.lines(), replacing: &headers::SET_BY_PROXY };
            let (method, body) = (&parts.method, body.get_or_insert_with(body::empty));
            return self
                .http1
                .send(
                    upstream.dial(host, proxy),
                    method,
                    target,
                    fields,
                    added,
                    body,
                    conn.map(|conn| &conn.interim),
                )
                .await;
        }
        // Boxed: HTTP/2's state is not carried by every HTTP/1.1 request's future.
        Box::pin(async move {
            let stream = self.http2.stream(upstream.dial(host, None), &upstream.http2).await?;
            // A request the backend refuses unprocessed may go to another backend if its body
            // can be sent again, so its headers are copied, never taken.
            let resendable = kept || body.as_ref().is_none_or(hyper::body::Body::is_end_stream);
            let mut headers =
                if take_headers && !resendable { std::mem::take(headers) } else { headers.clone() };
            forwarding.apply(&mut headers);
            headers.remove(header::HOST);
            let authority = host.parse().unwrap_or_else(|_| upstream.authority.clone());
            let scheme = if upstream.tls.is_some() { "https" } else { "http" };
            let uri = Uri::builder().scheme(scheme).authority(authority).path_and_query(target).build()?;
            let mut request = Request::new(body.take().unwrap_or_else(body::empty));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = uri;
            *request.version_mut() = Version::HTTP_2;
            *request.headers_mut() = headers;
            self.http2.send(stream, request, resendable).await
        })
        .await
    }
}

/// Passive outlier ejection: failures in a row; at the pool's threshold the backend is ejected
/// (it also leaves the XDP tables) for a time that grows with each ejection, then let back.
/// Probes neither end nor start an ejection.
pub fn observe(
    pool: &L7Pool,
    upstream: &Upstream,
    failed: bool,
    commands: &tokio::sync::mpsc::UnboundedSender<Command>,
) {
    let Some(outlier) = pool.outlier else { return };
    let runtime = &upstream.runtime;
    if !failed {
        runtime.failures.store(0, Ordering::Relaxed);
        return;
    }
    if runtime.failures.fetch_add(1, Ordering::Relaxed) + 1 != outlier.consecutive_failures {
        return;
    }
    let duration = outlier.ejection_time(runtime.count_ejection(outlier.ejection_ms));
    log::warn!(
        "pool {}: backend {} ejected for {duration:?} after {} failures in a row",
        pool.name,
        upstream.address,
        outlier.consecutive_failures
    );
    let (name, address) = (pool.name.to_string(), upstream.address.ip());
    let _ = commands.send(Command::SetEjected { pool: name.clone(), address, ejected: true });
    let commands = commands.clone();
    let runtime = runtime.clone();
    tokio::spawn(async move {
        tokio::time::sleep(duration).await;
        runtime.let_back();
        let _ = commands.send(Command::SetEjected { pool: name, address, ejected: false });
    });
}

/// A backend's answer, with its request still in flight.
pub struct Answered {
    pub response: Response<Body>,
    pub in_flight: InFlight,
    /// Time to response headers.
    pub seconds: f64,
    pub backend: Label,
    /// The tries it took (1: the first backend answered).
    pub tries: u32,
}

/// No answer to pass on: what to tell the client.
pub struct Failed {
    pub status: StatusCode,
    pub reason: &'static str,
    /// The last backend tried (empty if none).
    pub backend: Label,
    /// The tries made (0 if none).
    pub tries: u32,
}

impl Failed {
    /// The failure after `tries` tries.
    fn after(mut self, tries: usize) -> Failed {
        self.tries = tries as u32;
        self
    }

    /// What the client is told: a 502 is the route's fallback if it has one; a bad request
    /// body (400) closes the connection, whose stream is no longer trusted.
    pub fn refusal(self, fallback: Option<&Fallback>) -> Refusal {
        match self.status {
            StatusCode::BAD_GATEWAY => Refusal::fallback(fallback, self.status, self.reason),
            StatusCode::BAD_REQUEST => Refusal::new(self.status, self.reason).closing(),
            status => Refusal::new(status, self.reason),
        }
    }
}

/// How many tries a request gets: 1, or 1 + the route's retries for an idempotent request
/// that can be sent again (`resendable`: no protocol switch, and no body or one the route keeps,
/// `retry_buffer_bytes`).
pub fn tries(route: &CompiledRoute, method: &Method, resendable: bool) -> u32 {
    let idempotent = matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE");
    if route.retries > 0 && resendable && idempotent { route.retries + 1 } else { 1 }
}

/// What the tries of one request need.
pub struct Tries<'a> {
    pub upstreams: &'a Upstreams,
    /// Where outlier ejections go.
    pub commands: &'a tokio::sync::mpsc::UnboundedSender<Command>,
    /// Counts every answer dropped for a retry (the one the client gets is counted when written).
    pub metrics: &'a ProxyMetrics,
    pub route: &'a CompiledRoute,
    pub pool: &'a L7Pool,
    pub host: &'a str,
    pub client: std::net::IpAddr,
    /// How many tries at most (1 + retries when the request may be retried).
    pub tries: u32,
    /// Set by the body reader when the client's body was bad: 413 (too long) or 400. None:
    /// the request has no body.
    pub body_error: Option<Arc<AtomicU16>>,
    /// The fields the proxy adds (`headers::upstream_request`).
    pub forwarding: &'a Forwarding,
    /// The client connection: where the backends' interim answers go, and where it keeps its
    /// connections to a pool with `proxy_protocol`.
    pub conn: Option<&'a ClientConn>,
}

impl Tries<'_> {
    /// The next backend for a retry: one not tried yet, if the budget allows.
    fn next(&self, request: &Parts, tried: &[SocketAddr]) -> Option<Arc<Upstream>> {
        self.pool.pick(request, self.client, tried).filter(|_| self.route.take_retry())
    }

    /// Sends the request to `first`; on what the route retries (`retry_on`: a broken exchange
    /// and a 502/503/504 by default), to other backends while tries and budget last. A try that
    /// could not connect sent nothing: the request goes to another backend whatever its method
    /// or body, up to `REDISPATCHES` times within the budget and the try's deadline, not counted
    /// as a try (nginx's `proxy_next_upstream error`, HAProxy's `retry-on conn-failure` with
    /// `option redispatch`); so does one an HTTP/2 backend refused unprocessed (to that backend
    /// again, on another connection, when every other was tried). A body goes to another try
    /// only if it was kept (`replay`: up to the route's `retry_buffer_bytes`).
    pub async fn run(
        &self,
        first: Arc<Upstream>,
        parts: &mut Parts,
        body: Body,
        draw: impl Fn() -> f64,
    ) -> Result<Answered, Failed> {
        let mut upstream = first;
        let bodiless = body.is_end_stream();
        let mut replay = None;
        let mut body = Some(if self.keeps(&body) {
            let (body, kept) = replay::record(body, self.route.retry_buffer_bytes);
            replay = Some(kept);
            body
        } else {
            body
        });
        let mut tried: SmallVec<[SocketAddr; 4]> = SmallVec::new();
        let (mut attempt, mut redispatched) = (0, 0);
        // The route's deadline, from the first try over every other; the try's own, which a
        // redispatched try keeps from the one it stands in for.
        let (mut whole, mut deadline) = (None, None);
        loop {
            tried.push(upstream.address);
            let last = attempt + 1 >= self.tries;
            let in_flight = InFlight::start(&upstream);
            // One clock read for both the try's deadline and its duration.
            let sent = tokio::time::Instant::now();
            let whole = *whole.get_or_insert(sent + self.route.timeout);
            let until = *deadline.get_or_insert_with(|| match self.route.try_timeout {
                Some(try_timeout) => whole.min(sent + try_timeout),
                None => whole,
            });
            // The headers are lent to the try (HTTP/2 takes them on the last) and put back.
            let mut headers = std::mem::take(&mut parts.headers);
            let result = {
                let (protocol, forwarding, host) = (self.pool.protocol, self.forwarding, self.host);
                let sending = std::pin::pin!(self.upstreams.send(
                    protocol,
                    &upstream,
                    parts,
                    &mut headers,
                    last,
                    forwarding,
                    host,
                    &mut body,
                    replay.is_some(),
                    self.conn
                ));
                deadline::within(until, sending).await
            };
            parts.headers = headers;
            let seconds = sent.elapsed().as_secs_f64();
            let response = match self.judged(&upstream, result, until < whole) {
                Sent::Answer(response) => response,
                Sent::Failed(failed) => return Err(failed.after(tried.len())),
                Sent::Unreached { failed, refused } => {
                    // A refused HTTP/2 stream took the body: the kept one goes instead.
                    if body.is_none() && !rewind(&mut body, &mut replay, bodiless, whole).await {
                        return Err(failed.after(tried.len()));
                    }
                    // A backend that refused may take the request on another connection (it
                    // was retiring its own): when every backend was tried, any may have it.
                    let next = (redispatched < REDISPATCHES)
                        .then(|| {
                            self.next(parts, &tried)
                                .or_else(|| refused.then(|| self.next(parts, &[])).flatten())
                        })
                        .flatten();
                    match next {
                        Some(next) => {
                            redispatched += 1;
                            upstream = next;
                            continue;
                        }
                        None => return Err(failed.after(tried.len())),
                    }
                }
                Sent::Broken { failed, late } => {
                    // A try past its own timeout is retried as a reset (no answer came) or as
                    // the 504 it stands for; it is counted as that 504 when it is.
                    let retried = if late { self.route.retry_on.late() } else { self.route.retry_on.reset };
                    let next = if !last && retried {
                        rewind(&mut body, &mut replay, bodiless, whole)
                            .await
                            .then(|| self.next(parts, &tried))
                            .flatten()
                    } else {
                        None
                    };
                    match next {
                        Some(next) => {
                            if late {
                                let (route, pool) = (self.route.name.clone(), self.pool.name.clone());
                                self.metrics.request(route, pool, upstream.label.clone(), 504, Some(seconds));
                            }
                            upstream = next;
                            attempt += 1;
                            deadline = None;
                            self.back_off(attempt, &draw).await;
                            continue;
                        }
                        None => return Err(failed.after(tried.len())),
                    }
                }
            };
            let status = response.status().as_u16();
            if !last
                && self.route.retry_on.statuses.contains(&status)
                && rewind(&mut body, &mut replay, bodiless, whole).await
                && let Some(next) = self.next(parts, &tried)
            {
                let (route, pool) = (self.route.name.clone(), self.pool.name.clone());
                self.metrics.request(route, pool, upstream.label.clone(), status, Some(seconds));
                upstream = next;
                attempt += 1;
                deadline = None;
                self.back_off(attempt, &draw).await;
                continue;
            }
            let (backend, tries) = (upstream.label.clone(), tried.len() as u32);
            return Ok(Answered { response, in_flight, seconds, backend, tries });
        }
    }

    /// Whether the request's body is kept as it is sent, for another try: one that may have
    /// another (retries, or an HTTP/2 backend that may refuse it unprocessed), of no declared
    /// length over the route's bound.
    fn keeps(&self, body: &Body) -> bool {
        let limit = self.route.retry_buffer_bytes;
        !body.is_end_stream()
            && limit > 0
            && (self.tries > 1 || self.pool.protocol != UpstreamProtocol::Http1)
            && body.size_hint().lower() <= limit as u64
    }

    /// The pause before retry `attempt` (1, 2, …): 5 ms doubling per try, times a draw in
    /// [0.5, 1.5).
    async fn back_off(&self, attempt: u32, draw: &impl Fn() -> f64) {
        let backoff = 5.0 * 2f64.powi(attempt as i32 - 1) * (0.5 + draw() / 100.0);
        tokio::time::sleep(Duration::from_secs_f64(backoff / 1000.0)).await;
    }

    /// How one try ended, fed to outlier detection; `own_deadline`: the deadline it had was
    /// its own (`try_timeout_ms`), before the route's.
    fn judged(
        &self,
        upstream: &Upstream,
        result: Result<Result<Response<Body>, SendError>, deadline::Elapsed>,
        own_deadline: bool,
    ) -> Sent {
        let body_error = self.body_error.as_ref().map_or(0, |e| e.load(Ordering::Relaxed));
        let bad = match &result {
            Err(_) => true,
            Ok(Err(_)) => body_error == 0,
            Ok(Ok(response)) => response.status().is_server_error(),
        };
        observe(self.pool, upstream, bad, self.commands);
        let failed = |status, reason| Failed { status, reason, backend: upstream.label.clone(), tries: 0 };
        match result {
            Ok(Ok(response)) => Sent::Answer(response),
            Err(_) if own_deadline => {
                Sent::Broken { failed: failed(StatusCode::GATEWAY_TIMEOUT, "upstream timed out"), late: true }
            }
            Err(_) => Sent::Failed(failed(StatusCode::GATEWAY_TIMEOUT, "upstream timed out")),
            Ok(Err(err)) if err.is::<StreamRefused>() => {
                log::debug!("upstream {}: {err}", upstream.address);
                upstream.runtime.unprocessed.fetch_add(1, Ordering::Relaxed);
                Sent::Unreached {
                    failed: failed(StatusCode::BAD_GATEWAY, "upstream refused the stream"),
                    refused: true,
                }
            }
            Ok(Err(err)) if err.is::<ConnectFailed>() => {
                log::debug!("upstream {}: connect: {err}", upstream.address);
                let (tls, why) =
                    err.downcast_ref::<ConnectFailed>().map_or((false, "refused"), |c| (c.tls, c.reason()));
                self.metrics.connect_failed(&self.pool.name, &upstream.label, why);
                let reason = if tls { "upstream TLS failed" } else { "upstream unreachable" };
                Sent::Unreached { failed: failed(StatusCode::BAD_GATEWAY, reason), refused: false }
            }
            Ok(Err(err)) => {
                log::debug!("upstream {}: {err}", upstream.address);
                match body_error {
                    413 => Sent::Failed(failed(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")),
                    400 => Sent::Failed(failed(StatusCode::BAD_REQUEST, "malformed request body")),
                    _ => Sent::Broken {
                        failed: failed(StatusCode::BAD_GATEWAY, "upstream failed"),
                        late: false,
                    },
                }
            }
        }
    }
}

/// Makes `body` the request's body again for another try: none for a bodiless request, else
/// the kept one, once the last try let go of it (at the latest at `until`). false: the body was
/// not kept, or not whole (longer than the route's bound), so no other try can have it.
async fn rewind(
    body: &mut Option<Body>,
    replay: &mut Option<Replay>,
    bodiless: bool,
    until: Instant,
) -> bool {
    *body = None;
    if bodiless {
        return true;
    }
    let Some(kept) = replay.take() else { return false };
    match kept.again(until).await {
        Some((again, kept)) => {
            (*body, *replay) = (Some(again), Some(kept));
            true
        }
        None => false,
    }
}

/// How one try ended.
enum Sent {
    /// The backend answered (a 5xx too).
    Answer(Response<Body>),
    /// The client is told this; no retry helps (a timeout, the client's bad body).
    Failed(Failed),
    /// The connection or the exchange broke, or (`late`) no answer came within the try's own
    /// timeout (`try_timeout_ms`): another backend may be tried (within the route's timeout),
    /// else this (a 504 when late).
    Broken { failed: Failed, late: bool },
    /// No connection could be made, or (`refused`) an HTTP/2 backend did not process the
    /// request: another backend may take it whatever it is (a backend that refused, on another
    /// connection), else this.
    Unreached { failed: Failed, refused: bool },
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        config::Config,
        proxy::{runtime::Runtime, snapshot::Snapshot},
        state::State,
    };

    /// A snapshot with one route on listener `l` (its settings `route`).
    fn snapshot(route: &str) -> Snapshot {
        let text = format!(
            "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n[[route]]\nlistener = \"l\"\npool = \"p\"\n{route}"
        );
        Snapshot::build(&State::new(Config::parse(Path::new("t.toml"), &text).unwrap()), &Runtime::default())
    }

    #[test]
    fn only_idempotent_resendable_requests_get_the_routes_retries() {
        let s = snapshot("retries = 2\n");
        let route = &s.routes["l"][0];
        assert_eq!(tries(route, &Method::GET, true), 3);
        assert_eq!(tries(route, &Method::PUT, true), 3);
        assert_eq!(tries(route, &Method::POST, true), 1, "not idempotent");
        assert_eq!(tries(route, &Method::GET, false), 1, "a body not kept, or a protocol switch");
        let s = snapshot("");
        assert_eq!(tries(&s.routes["l"][0], &Method::GET, true), 1, "no retries configured");
    }

    #[test]
    fn a_failure_becomes_the_fallback_a_timeout_or_a_closing_400() {
        let failed = |status, reason| Failed { status, reason, backend: Label::from(""), tries: 0 };
        let fallback = Fallback { status: 503, body: "later".into(), content_type: None };
        let gateway = failed(StatusCode::BAD_GATEWAY, "upstream failed").refusal(Some(&fallback));
        assert_eq!(
            (gateway.response.status(), gateway.reason),
            (StatusCode::SERVICE_UNAVAILABLE, "upstream failed")
        );
        let plain = failed(StatusCode::BAD_GATEWAY, "upstream failed").refusal(None);
        assert_eq!(plain.response.status(), StatusCode::BAD_GATEWAY);
        let timeout = failed(StatusCode::GATEWAY_TIMEOUT, "upstream timed out").refusal(Some(&fallback));
        assert_eq!(timeout.response.status(), StatusCode::GATEWAY_TIMEOUT, "the fallback is for 502 only");
        assert!(!timeout.response.headers().contains_key(header::CONNECTION));
        let bad = failed(StatusCode::BAD_REQUEST, "malformed request body").refusal(None);
        assert_eq!(bad.response.headers()[header::CONNECTION], "close");
    }

    /// A try that could not connect is one another backend may take; the client's 502 says
    /// whether TLS failed (certificates, names) or the connection itself.
    #[test]
    fn a_try_that_could_not_connect_says_whether_tls_failed() {
        let s = snapshot("");
        let (route, pool) = (&s.routes["l"][0], &s.pools["p"]);
        let (commands, _held) = tokio::sync::mpsc::unbounded_channel();
        let (upstreams, metrics, forwarding) =
            (Upstreams::default(), ProxyMetrics::default(), Forwarding::default());
        let tries = Tries {
            upstreams: &upstreams,
            commands: &commands,
            metrics: &metrics,
            route,
            pool,
            host: "a.test",
            client: "192.0.2.1".parse().unwrap(),
            tries: 1,
            body_error: None,
            forwarding: &forwarding,
            conn: None,
        };
        let upstream = &pool.upstreams[0];
        for (tls, reason) in [(false, "upstream unreachable"), (true, "upstream TLS failed")] {
            let error = std::io::Error::other("no");
            let failed: SendError = Box::new(ConnectFailed { error, tls });
            let Sent::Unreached { failed, refused: false } = tries.judged(upstream, Ok(Err(failed)), false)
            else {
                panic!("a try that could not connect was not taken as unreached");
            };
            assert_eq!((failed.status, failed.reason), (StatusCode::BAD_GATEWAY, reason));
        }
        let timed_out = ConnectFailed::new(std::io::Error::new(std::io::ErrorKind::TimedOut, "late"));
        let _ = tries.judged(upstream, Ok(Err(Box::new(timed_out))), false);
        let text = metrics.text();
        for reason in ["refused", "tls", "timeout"] {
            let series = format!(
                "http_upstream_connect_failures_total{{pool=\"p\",backend=\"10.0.0.1:80\",reason=\"{reason}\"}} 1"
            );
            assert!(text.contains(&series), "{series} not in {text}");
        }
    }
}
