//! One request through the proxy, as a short sequence of phases (see `phase`): guard, route,
//! client, gate, the route's own answer, fault, choose, headers, caching or shadow, upstream,
//! respond; then count and log.
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use hyper::{
    Method, Request, Response, StatusCode, Uri, Version,
    header::{self, HeaderValue},
};

use crate::{
    config::{Listener, OwnAnswer},
    proxy::{
        access_log::{self, ClientConn, Entry, FramedStatus, GrpcStatus},
        acme,
        body::Body,
        cache::CacheStore,
        client_cert,
        error_pages::ErrorPages,
        metrics::{Label, ProxyMetrics},
        phase::{
            Refusal, caching, choose, client, compress, cors, fault, gate, grpc_web, guard, headers, path,
            respond, shadow,
            upstream::{self, Answered, InFlight, Tries, Upstreams},
        },
        routes::CompiledRoute,
        snapshot::Snapshot,
    },
    state::Command,
};

/// What the log and the metrics need of a request: its host and ID, and where its answer came
/// from.
struct Labels {
    /// The request's host (`host_of`).
    host: String,
    /// The client's request ID, or a new one.
    request_id: HeaderValue,
    route: Label,
    pool: Label,
    backend: Label,
    /// Set when an upstream answered: its time to response headers.
    upstream_seconds: Option<f64>,
    /// The backends tried.
    tries: u32,
    /// The query parameter the route takes API keys in (redacted from the log).
    api_key_query: Option<String>,
    /// Set when an upstream answered: its request, in flight until the answer's body is done.
    in_flight: Option<InFlight>,
    /// The client a trusted proxy forwarded, when it is not the connection's peer.
    forwarded_client: Option<std::net::IpAddr>,
    /// false when the route's requests are not logged (`access_log = false`).
    logged: bool,
    /// The user basic auth let in.
    user: Option<std::sync::Arc<str>>,
    /// A gRPC call's content type (an HTTP/2 call marked as it was read, a gRPC-Web call once
    /// routed): the proxy's refusals go to it as gRPC statuses, in that type.
    grpc: Option<HeaderValue>,
    /// The route's CORS policy as it applies to this request's answer, whatever makes it
    /// (boxed: a word in every request's future).
    cors: Option<Box<cors::Reply>>,
    /// Where a cache route's answer came from (its `X-Cache`).
    cache: Option<&'static str>,
}

impl Labels {
    /// The route a request took, and the route's pool until one is chosen.
    fn routed(&mut self, route: &CompiledRoute) {
        self.route = route.name.clone();
        self.pool = route.pool.clone();
        self.logged = route.access_log;
        self.api_key_query = route.runtime.api_keys.as_ref().and_then(|k| k.query_param()).map(str::to_owned);
    }

    /// The request's client as trusted proxies forwarded it (`client`), noted for the log when
    /// it is not the connection's peer.
    fn client_behind(&mut self, client: std::net::IpAddr, conn: &ClientConn) -> std::net::IpAddr {
        if client != conn.address.ip() {
            self.forwarded_client = Some(client);
        }
        client
    }

    /// The backend that answered, and what stays in flight with its answer, which this returns.
    fn answered(&mut self, answered: Answered) -> Response<Body> {
        self.backend = answered.backend;
        self.upstream_seconds = Some(answered.seconds);
        self.tries = answered.tries;
        self.in_flight = Some(answered.in_flight);
        answered.response
    }
}

/// An answer, and what stays with it until its body has been written.
pub struct Handled {
    pub response: Response<Body>,
    /// The request's ID, which the answer carries as X-Request-Id: written with the head by an
    /// HTTP/1.1 connection, put into the map by an HTTP/2 one (an insert into every answer's
    /// map was ~330 instructions of an HTTP/1.1 request). Sensitive: HTTP/2 sends it as a
    /// literal, never indexed (unique per answer, in the HPACK tables of both ends it would
    /// only push out entries that repeat).
    pub request_id: HeaderValue,
    /// The answer is a backend's or the cache's (not one the proxy made): it carries Via
    /// (`own_fields::via` of this, the backend's protocol), written with the head or put into
    /// the map as the request's ID is. The protocol, a byte, not its text: two words in every
    /// request's future.
    pub via: Option<Version>,
    /// The access-log line (written when the body is done), if the listener logs.
    pub entry: Option<Entry>,
    /// The backend's request stays in flight (circuit breaking, least requests) until the
    /// answer's body is done: the connection drops this after the body.
    pub in_flight: Option<InFlight>,
    /// The request's metrics, counted when the connection drops this, as it writes the log line.
    pub counted: Counted,
}

/// A request's count in the metrics, made when this is dropped: after the answer has been
/// written, so an answer the connection replaced (a 502 for a backend's answer that broke
/// before its first byte) is counted as the client got it, as the access log has it.
pub struct Counted {
    forwarder: Arc<Forwarder>,
    /// Taken when counted.
    labels: Option<(Label, Label, Label, Option<f64>)>,
    /// The status the client got.
    pub status: u16,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some((route, pool, backend, upstream_seconds)) = self.labels.take() {
            self.forwarder.metrics.request(route, pool, backend, self.status, upstream_seconds);
        }
    }
}

/// How often a worker closes its upstream connections that have idled too long.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Forwards requests; one per lbd, shared by every listener.
pub struct Forwarder {
    /// Routes' response caches (shared with the admin API for purges).
    cache: Arc<CacheStore>,
    /// HTTP-01 validations' answers, while an ACME order waits for them.
    challenges: Arc<acme::Challenges>,
    /// Where outlier ejections go (into the State, like health results).
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    upstreams: Arc<Upstreams>,
    pub metrics: ProxyMetrics,
    next_id: AtomicU64,
    id_seed: u64,
    /// A request ID with the seed's 16 hex digits written (they are the same in every ID).
    id_start: [u8; 24],
    /// The metrics label of no route, pool or backend (the proxy answered by itself).
    none: Label,
    /// The backend label of answers from a route's cache.
    cache_label: Label,
}

/// The request's host: the URI's (HTTP/2, absolute form), else the Host header's, without the
/// port, lowercase, and without a trailing dot (`admin.test.` is `admin.test` to DNS and to
/// nginx: a route's host must match it too, or a gate on the host would be passed).
fn host_of(uri: &Uri, host: Option<&HeaderValue>) -> String {
    let host = uri.host().or_else(|| {
        let host = host?.to_str().ok()?;
        Some(
            host.rsplit_once(':')
                .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
                .map_or(host, |(h, _)| h),
        )
    });
    let host = host.unwrap_or_default();
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Writes the last `out.len()` hex digits of `value` (lowercase), the last digit last.
fn hex_digits(mut value: u64, out: &mut [u8]) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

impl Forwarder {
    pub fn new(
        metrics: ProxyMetrics,
        commands: tokio::sync::mpsc::UnboundedSender<Command>,
        cache: Arc<CacheStore>,
        challenges: Arc<acme::Challenges>,
    ) -> Forwarder {
        let id_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut id_start = [0u8; 24];
        hex_digits(id_seed, &mut id_start[..16]);
        Forwarder {
            cache,
            challenges,
            commands,
            upstreams: Arc::new(Upstreams::default()),
            metrics,
            next_id: AtomicU64::new(1),
            id_seed,
            id_start,
            none: Label::from(""),
            cache_label: Label::from("cache"),
        }
    }

    /// Closes the idle upstream connections of the worker it runs on once they have idled too
    /// long, every few seconds; never finishes. Spawned once on each worker.
    pub async fn sweep_upstreams(self: Arc<Self>) {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            self.upstreams.sweep();
        }
    }

    /// A uniform draw in [0, 100) for traffic splits (a hash of a counter: no RNG state).
    fn draw(&self) -> f64 {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        lb_common::hash::murmur3_32(&n.to_le_bytes(), 0x5eed) as f64 / (u32::MAX as f64 + 1.0) * 100.0
    }

    /// The client's request ID when it is printable and short, else a new one.
    fn request_id_for(&self, given: Option<&HeaderValue>) -> HeaderValue {
        match given {
            Some(id) if !id.is_empty() && id.len() <= 200 && id.to_str().is_ok() => id.clone(),
            _ => self.request_id(),
        }
    }

    /// A new request ID: the lbd's seed and a hash of a counter, 24 hex digits.
    fn request_id(&self) -> HeaderValue {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let low = lb_common::hash::murmur3_32(&n.to_le_bytes(), self.id_seed as u32) ^ n as u32;
        let mut id = self.id_start;
        hex_digits(u64::from(low), &mut id[16..]);
        HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
    }

    /// Answers one request (the backend's interim answers for the client go to `conn`'s
    /// `interim`). Not an `async fn` (nor is `answer`): one keeps a second copy of its arguments
    /// in its future, and this future is made and moved for every request.
    #[allow(clippy::manual_async_fn, reason = "an async fn keeps a second copy of its arguments")]
    pub fn handle(
        self: Arc<Self>,
        request: Request<Body>,
        snapshot: Arc<Snapshot>,
        listener: Arc<Listener>,
        conn: Arc<ClientConn>,
    ) -> impl Future<Output = Handled> + Send {
        async move {
            // What the log line needs of the request, taken before the request moves on (the
            // start too: only the log needs that clock read).
            let logged = listener.access_log.then(|| {
                let target = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                let field = |name| {
                    request
                        .headers()
                        .get(name)
                        .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
                };
                let agents = (field(header::USER_AGENT), field(header::REFERER));
                (Instant::now(), request.method().to_string(), target, agents)
            });
            let mut labels = Labels {
                host: String::new(),
                request_id: HeaderValue::from_static(""),
                route: self.none.clone(),
                pool: self.none.clone(),
                backend: self.none.clone(),
                upstream_seconds: None,
                tries: 0,
                api_key_query: None,
                in_flight: None,
                forwarded_client: None,
                logged: true,
                user: None,
                grpc: request
                    .extensions()
                    .get::<respond::GrpcCall>()
                    .map(|_| HeaderValue::from_static("application/grpc")),
                cors: None,
                cache: None,
            };
            let (mut response, reason) =
                match self.answer(request, &snapshot, &listener, &conn, &mut labels).await {
                    Ok(response) => (response, None),
                    Err(refusal) => (*refusal.response, Some(refusal.reason)),
                };
            // The log and the metrics keep the status the proxy meant; a gRPC client gets its
            // refusal as a gRPC status. A call's gRPC status for the log: the refusal's, the
            // answer's head's (trailers-only), or (Unknown) its trailers' as the body ends.
            let status = response.status().as_u16();
            let grpc = labels.grpc.take().map(|content_type| match reason {
                Some(reason) if status >= 400 => {
                    response = respond::grpc_refusal(status, reason, content_type);
                    GrpcStatus::Code(respond::grpc_code(status))
                }
                // A gRPC-Web answer's trailers go into its body, which says their status.
                _ => {
                    match (GrpcStatus::of(response.headers()), response.extensions().get::<FramedStatus>()) {
                        (GrpcStatus::Unknown, Some(framed)) => GrpcStatus::Framed(framed.clone()),
                        (status, _) => status,
                    }
                }
            });
            // lbd's own error in the listener's page for it, if it has one.
            if grpc.is_none()
                && reason.is_some()
                && let Some(pages) = snapshot.error_pages(&listener.name)
            {
                pages.dress(&mut response);
            }
            if let Some(reply) = labels.cors.take() {
                reply.apply(&mut response);
            }
            // A listener with HTTP/3 says so in every answer (a browser tries it only once told).
            if let Some(alt_svc) = listener.tls.as_ref().and_then(|tls| tls.http3.as_ref()?.alt_svc.as_ref())
            {
                response.headers_mut().insert(header::ALT_SVC, alt_svc.clone());
            }
            let entry =
                logged.filter(|_| labels.logged).map(|(started, method, target, (user_agent, referer))| {
                    Entry {
                        started,
                        method,
                        // A key presented in the query stays out of the log.
                        target: match &labels.api_key_query {
                            Some(param) => access_log::redact_query(&target, param),
                            None => target,
                        },
                        host: std::mem::take(&mut labels.host),
                        status,
                        upstream: labels.backend.clone(),
                        upstream_seconds: labels.upstream_seconds,
                        tries: labels.tries,
                        cache: labels.cache,
                        request_id: labels.request_id.to_str().unwrap_or_default().to_owned(),
                        reason,
                        forwarded_client: labels.forwarded_client,
                        user_agent,
                        referer,
                        user: labels.user.take(),
                        grpc,
                        format: listener.access_log_format,
                        filter: listener.access_log_filter,
                    }
                });
            let mut request_id = labels.request_id;
            request_id.set_sensitive(true);
            // The labels go into the metrics' keys (no clones but the log's).
            let counted = Counted {
                labels: Some((labels.route, labels.pool, labels.backend, labels.upstream_seconds)),
                forwarder: self,
                status,
            };
            let via = reason.is_none().then_some(response.version());
            Handled { response, request_id, via, entry, in_flight: labels.in_flight, counted }
        }
    }

    /// The phases, in order; an Err is an answer the proxy made itself. The request's host and
    /// ID are put in `labels` first, for the log of every answer.
    #[allow(clippy::manual_async_fn, reason = "an async fn keeps a second copy of its arguments")]
    fn answer<'a>(
        &'a self,
        mut request: Request<Body>,
        snapshot: &'a Snapshot,
        listener: &'a Listener,
        conn: &'a ClientConn,
        labels: &'a mut Labels,
    ) -> impl Future<Output = Result<Response<Body>, Refusal>> + Send + 'a {
        async move {
            // Guard: the fields read before routing, the request's labels, framing and limits.
            let read = guard::Read::of(request.headers());
            labels.host = host_of(request.uri(), read.host);
            labels.request_id = self.request_id_for(read.request_id);
            // An ACME CA's HTTP-01 validation, before any redirect to https or route.
            if !conn.tls()
                && let Some(answer) = self.challenges.http_answer(request.uri().path())
            {
                return Err(Refusal::with(respond::acme_answer(answer), "acme challenge"));
            }
            let checked =
                guard::check(&guard::Head::of(&request, &read, &labels.host), listener, conn.tls())?;
            let (upgrade, forwarded_for) = (read.upgrade, read.forwarded_for.cloned());
            let client_cert_sent = read.client_cert;
            let received_host = read.host.cloned();
            path::make_canonical(&mut request)?;

            // The client (routes may match it), route, its body limit, gate; the route's own
            // answer, or choose.
            let client = match &listener.client_address {
                Some(from) => {
                    labels.client_behind(client::address(from, conn.address.ip(), request.headers()), conn)
                }
                None => conn.address.ip(),
            };
            let route = snapshot
                .route(&listener.name, &labels.host, &request, client)
                .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "no route"))?;
            labels.routed(route);
            // A browser's call from another origin: its preflight answered here, before the
            // gates (it carries no credentials); its answer marked for the origin, below.
            if let Some(policy) = &route.cors {
                labels.cors = cors::see(policy, request.method(), request.headers()).map(Box::new);
                if let Some(reply) = labels.cors.as_ref().filter(|reply| reply.preflight) {
                    return Err(reply.preflight());
                }
            }
            // A browser's gRPC-Web call on a route that takes them: refused from here on as a
            // gRPC status; sent on as gRPC once its headers are done.
            let grpc_web = route.grpc_web.then(|| grpc_web::call(request.headers())).flatten();
            if let Some(call) = &grpc_web {
                labels.grpc = Some(call.content_type().clone());
            }
            let max_body_bytes = route.max_body_bytes.unwrap_or(listener.max_body_bytes);
            guard::body_fits(&checked, max_body_bytes)?;
            let (mut parts, body) = request.into_parts();
            let allowance = gate::admit(route, &mut parts.headers, &parts.uri, client)?;
            if let Some(auth) = &route.runtime.basic_auth {
                labels.user = Some(gate::logged_in(auth, &mut parts.headers).await?);
            }
            if let Some((prefix, with)) = &route.rewrite {
                path::rewrite(&mut parts.uri, prefix, with)?;
            }
            if let Some(own) = &route.answer {
                return Err(own_answer(own, route, &parts.uri));
            }
            if let Some(injected) = &route.fault {
                fault::inject(injected, || self.draw()).await?;
            }
            let choice = choose::pool(route, &parts.headers, self.draw());
            labels.pool = choice.pool.clone();
            let pool = choose::serving(snapshot, route, &choice)?;
            let resendable = (checked.bodiless || route.retry_buffer_bytes > 0) && !upgrade;
            let tries = upstream::tries(route, &parts.method, resendable);
            route.runtime.count_request();

            // Path and headers; then the answer, from the cache or from a backend (a shadow copy
            // beside it), compressed if the client takes gzip.
            let gzip = route.compress.is_some() && compress::accepts_gzip(&parts.headers);
            let (host, request_id) = (&labels.host, &labels.request_id);
            let h2_upstream = pool.protocol.is_http2();
            if client_cert_sent {
                // Only the proxy says which certificate a client showed (`forward_client_cert`).
                parts.headers.remove(client_cert::X_FORWARDED_CLIENT_CERT);
            }
            let forwarding = headers::upstream_request(
                &mut parts,
                received_host.as_ref(),
                conn,
                listener.address,
                forwarded_for.as_ref(),
                request_id,
                h2_upstream,
                upgrade,
            );
            headers::edit(&mut parts.headers, &route.request_headers);
            // A gRPC-Web call goes on as gRPC (the route's pools speak HTTP/2).
            let body = match &grpc_web {
                Some(call) => call.to_grpc(&mut parts.headers, body),
                None => body,
            };
            // A request with a forwarded certificate is a credentialed one, as with Authorization:
            // its answer may be that client's alone.
            if let Some(config) = caching::applies(route, &parts).filter(|_| conn.client_cert.is_none()) {
                labels.backend = self.cache_label.clone();
                let (parts, forwarding) = (&parts, &forwarding);
                let request = caching::CacheRequest { route, config, pool, parts, forwarding, host, client };
                // Boxed: the cache's state is not carried by every request's future.
                let cached = Box::pin(caching::serve(&self.cache, &self.upstreams, &self.metrics, &request));
                let cached = cached.await;
                labels.cache = Some(cached.x_cache);
                let mut response = cached.into_answer()?;
                let pages = || snapshot.error_pages(&listener.name);
                route_edits(&mut response, route, host, gzip, &parts.method, pages);
                if let Some(allowance) = &allowance {
                    gate::tell(response.headers_mut(), allowance);
                }
                return Ok(response);
            }
            let (mut body, body_error) = guard::limit_body(body, max_body_bytes);
            if !upgrade && let Some(shadow) = shadow::chosen(route, snapshot, &body, || self.draw()) {
                let (upstreams, metrics, label) = (&self.upstreams, &self.metrics, &route.shadow_label);
                let request = (&parts, body);
                body = shadow::send(upstreams, shadow, request, &forwarding, host, client, metrics, label);
            }
            let first = choose::backend(pool, route, &parts, client).await?;
            let tries = Tries {
                upstreams: &self.upstreams,
                commands: &self.commands,
                metrics: &self.metrics,
                route,
                pool,
                host,
                client,
                tries,
                body_error,
                forwarding: &forwarding,
                conn: Some(conn),
            };
            let answered = match tries.run(first, &mut parts, body, || self.draw()).await {
                Ok(answered) => answered,
                Err(failed) => {
                    labels.backend = failed.backend.clone();
                    labels.tries = failed.tries;
                    return Err(failed.refusal(route.fallback.as_ref()));
                }
            };

            // Respond: the backend's answer as the client gets it.
            let backend_cookie = pool.sticky_cookie(&parts, answered.in_flight.upstream());
            let mut response = labels.answered(answered);
            // A 101 carries its backend connection; the client's connection tunnels to it.
            let switching = upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS;
            headers::client_response(response.headers_mut(), switching);
            if let Some(call) = grpc_web {
                call.to_grpc_web(&mut response);
            }
            let pages = || snapshot.error_pages(&listener.name);
            route_edits(&mut response, route, &labels.host, gzip, &parts.method, pages);
            if choice.set_sticky
                && let Some(cookie) = choose::sticky_cookie(&choice.pool)
            {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            if let Some(cookie) = backend_cookie {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            if let Some(allowance) = &allowance {
                gate::tell(response.headers_mut(), allowance);
            }
            Ok(response)
        }
    }
}

/// A route's own answer (a redirect or a fixed answer: no pool, no backend), with its
/// `response_headers`; an answer the proxy made, so a `Refusal` with its reason for the log.
fn own_answer(own: &OwnAnswer, route: &CompiledRoute, uri: &Uri) -> Refusal {
    let (mut response, reason) = respond::own(own, uri);
    headers::edit(response.headers_mut(), &route.response_headers);
    Refusal::with(response, reason)
}

/// A route's touches on an answer from a backend or the cache, in order: an error answer in
/// its listener's page (`intercept_errors`; `pages` looked up only then), a redirect under its
/// rewritten prefix given the route's prefix back, its `response_headers`, its gzip (`gzip`:
/// the client takes it; `host` and `method`: the request's).
fn route_edits<'a>(
    response: &mut Response<Body>,
    route: &CompiledRoute,
    host: &str,
    gzip: bool,
    method: &Method,
    pages: impl FnOnce() -> Option<&'a ErrorPages>,
) {
    if route.intercept_errors
        && let Some(pages) = pages()
    {
        pages.intercept(response);
    }
    if let Some((prefix, with)) = &route.rewrite {
        path::restore_location(response.headers_mut(), prefix, with, host);
    }
    headers::edit(response.headers_mut(), &route.response_headers);
    if let Some(config) = &route.compress {
        compress::apply(response, config, gzip, method);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use http_body_util::BodyExt;

    use super::*;
    use crate::{config::Config, proxy::test_bed};

    /// A request through the pipeline to `host` on a listener whose pool `p` has a backend that
    /// refuses connections (127.0.0.2) before a live one, and pool `d` only the refusing one:
    /// the answer's status and its log entry.
    async fn logged(host: &str) -> (u16, Entry) {
        let port = test_bed::http1().await.port();
        let text = format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
             [[pool]]\nname = \"p\"\nport = {port}\nbackends = [{{ address = \"127.0.0.2\" }}, {{ address = \"127.0.0.1\" }}]\n\
             [[pool]]\nname = \"d\"\nport = {port}\nbackends = [{{ address = \"127.0.0.2\" }}]\n\
             [[route]]\nlistener = \"l\"\nhost = \"dead.test\"\npool = \"d\"\n\
             [[route]]\nlistener = \"l\"\npool = \"p\"\n"
        );
        let config = Config::parse(Path::new("t.toml"), &text).unwrap();
        let listener = Arc::new(config.listeners[0].clone());
        let (snapshot, forwarder, _ejections) = test_bed::forwarding(config);
        let request = Request::get("/").header(header::HOST, host).body(crate::proxy::body::empty()).unwrap();
        let conn = Arc::new(ClientConn::new("192.0.2.1:4000".parse().unwrap(), None, None));
        let handled = forwarder.handle(request, snapshot.load_full(), listener, conn).await;
        let status = handled.response.status().as_u16();
        let _ = handled.response.into_body().collect().await;
        (status, handled.entry.expect("the listener logs"))
    }

    #[tokio::test]
    async fn the_log_says_how_many_backends_a_request_tried_and_how_long_the_answer_took() {
        // Round robin starts on the refusing backend: its connect fails, the live one answers.
        let (status, entry) = logged("a.test").await;
        assert_eq!((status, entry.tries), (200, 2));
        assert!(entry.upstream.starts_with("127.0.0.1:"), "the one that answered: {}", &*entry.upstream);
        assert!(entry.upstream_seconds.is_some_and(|s| s > 0.0), "{:?}", entry.upstream_seconds);
        let (status, entry) = logged("dead.test").await;
        assert_eq!((status, entry.tries, entry.upstream_seconds), (502, 1, None), "one backend, no answer");
    }

    #[test]
    fn hex_digits_are_the_values_last_ones() {
        let mut out = [0u8; 24];
        hex_digits(0x0123_4567_89ab_cdef, &mut out[..16]);
        hex_digits(0xfeed_0042, &mut out[16..]);
        assert_eq!(&out, b"0123456789abcdeffeed0042");
        let mut short = [0u8; 3];
        hex_digits(0xabcd, &mut short);
        assert_eq!(&short, b"bcd");
    }

    #[test]
    fn a_host_is_routed_as_dns_reads_it() {
        let with_host = |uri: &str, host: Option<&str>| {
            let mut request = Request::builder().uri(uri);
            if let Some(host) = host {
                request = request.header(header::HOST, host);
            }
            let request = request.body(()).unwrap();
            host_of(request.uri(), request.headers().get(header::HOST))
        };
        assert_eq!(with_host("/", Some("Admin.TEST.:8080")), "admin.test");
        assert_eq!(with_host("/", Some("admin.test")), "admin.test");
        assert_eq!(with_host("http://A.test./x", Some("b.test")), "a.test", "the target's host wins");
        assert_eq!(with_host("/", Some("[::1]:80")), "[::1]");
        assert_eq!(with_host("/", None), "");
    }
}
