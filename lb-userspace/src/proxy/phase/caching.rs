//! Caching: a cache route's GET/HEAD is answered from the store when fresh; concurrent misses of
//! one key make one upstream request (picked with the request's own headers, so hashing holds,
//! and without its conditions, so it asks for the whole answer) whose answer every waiter gets
//! that does not differ in a field it Varies on, each waiter's `If-None-Match` or
//! `If-Modified-Since` judged against it (304). A stale stored answer is revalidated with its own
//! validators (a 304 keeps its body), served at once while a fill runs apart within its
//! `stale-while-revalidate` grace, and served instead of a failure within its `stale-if-error`
//! one. An answer larger than `max_object_bytes` streams through uncached; a timeout is 504, any
//! other failure 502.
use std::{
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::{
    HeaderMap, Response, StatusCode,
    body::{Frame, SizeHint},
    header,
    http::request::Parts,
};
use tokio::sync::OnceCell;

use crate::{
    config::{CacheConfig, UpstreamProtocol},
    proxy::{
        body::Body,
        cache::{self, CacheStore, Fill, Lookup, conditional, revalidate, stale},
        metrics::{Label, ProxyMetrics},
        phase::{
            Refusal,
            headers::{self, Forwarding},
            respond,
            upstream::{InFlight, Upstreams},
        },
        pool::{L7Pool, Upstream},
        routes::CompiledRoute,
    },
};

/// The route's cache settings when this request may be answered from the cache: a GET or HEAD
/// on a cache route without credentials, a range or a precondition (`conditional::PASSED_BY`).
pub fn applies<'a>(route: &'a CompiledRoute, parts: &Parts) -> Option<&'a CacheConfig> {
    let config = route.cache.as_ref()?;
    let plain = matches!(parts.method, hyper::Method::GET | hyper::Method::HEAD)
        && !parts.headers.contains_key(header::AUTHORIZATION)
        && conditional::cacheable_request(&parts.headers);
    plain.then_some(config)
}

/// A request as the cache sees it.
pub struct CacheRequest<'a> {
    pub route: &'a CompiledRoute,
    pub config: &'a CacheConfig,
    pub pool: &'a L7Pool,
    pub parts: &'a Parts,
    /// The fields the proxy adds to the fill's request.
    pub forwarding: &'a Forwarding,
    pub host: &'a str,
    pub client: IpAddr,
}

impl CacheRequest<'_> {
    /// An upstream request for this one (its backend picked now), revalidating `stale`.
    fn fetch<'a>(&'a self, stale: Option<&'a cache::Cached>) -> Fetch<'a> {
        Fetch {
            upstream: self.pool.pick(self.parts, self.client, &[]),
            protocol: self.pool.protocol,
            parts: self.parts,
            forwarding: self.forwarding,
            host: self.host,
            timeout: self.route.timeout,
            max_object_bytes: self.config.max_object_bytes,
            stale,
        }
    }
}

/// What the cache phase answered.
pub struct Cached {
    pub response: Response<Body>,
    pub reason: Option<&'static str>,
    /// Where the answer came from, as its `X-Cache` says (MISS also for a failed fill and an
    /// answer too big to store), for the access log.
    pub x_cache: &'static str,
}

impl Cached {
    /// The answer as the pipeline takes it: Err when the proxy made it (no backend answered).
    pub fn into_answer(self) -> Result<Response<Body>, Refusal> {
        match self.reason {
            Some(reason) => Err(Refusal::with(self.response, reason)),
            None => Ok(self.response),
        }
    }
}

/// One upstream answer for the cache.
enum Fetched {
    /// Read whole: status, headers, body, how long it may be stored.
    Whole(StatusCode, HeaderMap, Bytes, Option<Duration>),
    /// Over `max_object_bytes`: what was read so far, then the rest, streamed.
    TooBig(Response<Body>),
    Failed(StatusCode),
    /// A 304 to a revalidation: the stored answer still holds; the 304's fields.
    NotModified(HeaderMap),
}

/// A body that starts with bytes already read and goes on with the rest of the upstream body;
/// the request stays in flight until it is done.
struct Prefixed {
    head: Option<Bytes>,
    rest: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Prefixed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(head) = self.head.take().filter(|h| !h.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.as_ref().is_none_or(Bytes::is_empty) && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        hint.set_lower(hint.lower() + head);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + head);
        }
        hint
    }
}

/// One upstream request of a fill: to whom, what, and the stale answer it revalidates.
/// Borrowed from the request it serves, or from what a background fill owns.
struct Fetch<'a> {
    /// None: no backend usable.
    upstream: Option<Arc<Upstream>>,
    protocol: UpstreamProtocol,
    parts: &'a Parts,
    forwarding: &'a Forwarding,
    host: &'a str,
    timeout: Duration,
    max_object_bytes: usize,
    stale: Option<&'a cache::Cached>,
}

async fn fetch(upstreams: &Upstreams, request: &Fetch<'_>) -> Fetched {
    let Some(upstream) = &request.upstream else {
        return Fetched::Failed(StatusCode::SERVICE_UNAVAILABLE);
    };
    let parts = request.parts;
    let in_flight = InFlight::start(upstream);
    let deadline = tokio::time::Instant::now() + request.timeout;
    let mut fields = parts.headers.clone();
    for name in &conditional::JUDGED_HERE {
        fields.remove(name);
    }
    let asked = request.stale.is_some_and(|stale| revalidate::ask(&mut fields, &stale.headers));
    let mut no_body = None;
    let sent = upstreams.send(
        request.protocol,
        upstream,
        parts,
        &mut fields,
        true,
        request.forwarding,
        request.host,
        &mut no_body,
        false,
        None, // a fill's interim answers are not a client's
    );
    let response = match tokio::time::timeout_at(deadline, sent).await {
        Err(_) => return Fetched::Failed(StatusCode::GATEWAY_TIMEOUT),
        Ok(Err(_)) => return Fetched::Failed(StatusCode::BAD_GATEWAY),
        Ok(Ok(response)) => response,
    };
    let (mut head, mut body) = response.into_parts();
    headers::client_response(&mut head.headers, false);
    if asked && head.status == StatusCode::NOT_MODIFIED {
        return Fetched::NotModified(head.headers);
    }
    let max = request.max_object_bytes;
    let mut read = BytesMut::new();
    let too_big = |head: hyper::http::response::Parts, read: BytesMut, rest: Body, in_flight: InFlight| {
        let body = Prefixed { head: Some(read.freeze()), rest, _in_flight: in_flight };
        Fetched::TooBig(Response::from_parts(head, body.boxed()))
    };
    if body.size_hint().lower() > max as u64 {
        return too_big(head, read, body, in_flight);
    }
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Fetched::Failed(StatusCode::GATEWAY_TIMEOUT),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Fetched::Failed(StatusCode::BAD_GATEWAY),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    read.extend_from_slice(&data);
                    if read.len() > max {
                        return too_big(head, read, body, in_flight);
                    }
                }
            }
        }
    }
    // The body read gives a GET answer's length; a HEAD answer's is the backend's field (the
    // length its GET would have), which a HEAD hit says again.
    if parts.method != hyper::Method::HEAD {
        head.headers.remove(header::CONTENT_LENGTH);
    }
    let ttl = cache::lifetime(parts, head.status, &head.headers);
    Fetched::Whole(head.status, head.headers, read.freeze(), ttl)
}

/// One fill of a key: fetched, counted (route `NAME:fill`: coalescing shows there), stored. What
/// its waiters get, and the answer itself when it streams through (too big to store).
struct FillJob<'a> {
    store: &'a CacheStore,
    route: &'a str,
    label: &'a Label,
    pool: &'a Label,
    config: &'a CacheConfig,
    key: &'a str,
    fetch: Fetch<'a>,
}

async fn fill(
    upstreams: &Upstreams,
    metrics: &ProxyMetrics,
    job: FillJob<'_>,
) -> (Fill, Option<Response<Body>>) {
    let fetched = fetch(upstreams, &job.fetch).await;
    let status = match &fetched {
        Fetched::Whole(status, ..) => status.as_u16(),
        Fetched::NotModified(_) => 304,
        Fetched::TooBig(response) => response.status().as_u16(),
        Fetched::Failed(status) => status.as_u16(),
    };
    metrics.request(job.label.clone(), job.pool.clone(), Label::from(""), status, None);
    let (store, route, config, key) = (job.store, job.route, job.config, job.key);
    let parts = job.fetch.parts;
    let described = (&parts.method, job.fetch.host, target(parts));
    match fetched {
        Fetched::Whole(status, headers, body, ttl) => {
            let answer = ttl.map(|ttl| (status, headers.clone(), body.clone(), ttl));
            let stored = store.finish(route, config, &parts.headers, described, answer, key);
            if stored.is_none() && !stale::is_error(status) {
                // The origin's new answer replaces the stale one, stored or not.
                store.forget(route, config, key);
            }
            let its_key = cache::answer_key(described, &headers, &parts.headers);
            let answer = stored.unwrap_or_else(|| cache::Cached::now(status, headers, body));
            (Fill::Answer(Box::new(answer), "MISS", its_key), None)
        }
        Fetched::NotModified(fields) => {
            let stale = job.fetch.stale.expect("a 304 only to a revalidation");
            let Some(updated) = revalidate::updated(&stale.headers, &fields) else {
                store.finish(route, config, &parts.headers, described, None, key);
                return (Fill::Failed(StatusCode::BAD_GATEWAY), None);
            };
            let ttl = cache::lifetime(parts, stale.status, &updated);
            let answer = ttl.map(|ttl| (stale.status, updated.clone(), stale.body.clone(), ttl));
            let stored = store.finish(route, config, &parts.headers, described, answer, key);
            let its_key = cache::answer_key(described, &updated, &parts.headers);
            let answer =
                stored.unwrap_or_else(|| cache::Cached::now(stale.status, updated, stale.body.clone()));
            (Fill::Answer(Box::new(answer), "REVALIDATED", its_key), None)
        }
        Fetched::TooBig(response) => {
            store.finish(route, config, &parts.headers, described, None, key);
            (Fill::Uncached, Some(response))
        }
        Fetched::Failed(status) => {
            store.finish(route, config, &parts.headers, described, None, key);
            (Fill::Failed(status), None)
        }
    }
}

/// A request's path and query.
fn target(parts: &Parts) -> &str {
    parts.uri.path_and_query().map_or("/", |p| p.as_str())
}

/// A stored (or just fetched) answer to this request: 304 when it is a 200 the request's
/// condition holds for.
fn answered(answer: &cache::Cached, parts: &Parts, x_cache: &'static str) -> Cached {
    let response =
        match answer.status == StatusCode::OK && conditional::not_modified(&parts.headers, &answer.headers) {
            true => respond::not_modified(answer, x_cache),
            false => respond::cached(answer, x_cache),
        };
    Cached { response, reason: None, x_cache }
}

fn failed(route: &CompiledRoute, status: StatusCode) -> Cached {
    let reason = match status {
        StatusCode::GATEWAY_TIMEOUT => "upstream timed out",
        StatusCode::SERVICE_UNAVAILABLE => "no backend available",
        _ => "upstream failed",
    };
    let response = respond::fallback_or(route.fallback.as_ref(), status, reason);
    Cached { response, reason: Some(reason), x_cache: "MISS" }
}

/// Starts a fill on a task of its own, for a request served a stale answer meanwhile
/// (`stale-while-revalidate`). It holds the key's cell, so requests that come while it runs
/// are served the stale answer too, or wait for it once that is too old; it is bounded as any
/// fill (the route's timeout, `max_object_bytes`).
fn revalidate_apart(
    store: &Arc<CacheStore>,
    upstreams: &Arc<Upstreams>,
    metrics: &ProxyMetrics,
    request: &CacheRequest<'_>,
    (cell, key, stale): (Arc<OnceCell<Fill>>, String, cache::Cached),
) {
    let (route, parts) = (request.route, request.parts);
    let upstream = request.pool.pick(parts, request.client, &[]);
    let mut parts = Parts::clone(parts);
    parts.extensions = Default::default();
    let (store, upstreams, metrics) = (store.clone(), upstreams.clone(), metrics.clone());
    let (name, label, pool) = (route.name.clone(), route.fill_label.clone(), request.pool.name.clone());
    let (config, forwarding, host) =
        (request.config.clone(), request.forwarding.clone(), request.host.to_owned());
    let (protocol, timeout) = (request.pool.protocol, route.timeout);
    tokio::spawn(async move {
        let fetch = Fetch {
            upstream,
            protocol,
            parts: &parts,
            forwarding: &forwarding,
            host: &host,
            timeout,
            max_object_bytes: config.max_object_bytes,
            stale: Some(&stale),
        };
        let job = FillJob {
            store: &store,
            route: &name,
            label: &label,
            pool: &pool,
            config: &config,
            key: &key,
            fetch,
        };
        // An answer too big to store is dropped unread: no client waits for it.
        cell.get_or_init(|| async { fill(&upstreams, &metrics, job).await.0 }).await;
    });
}

/// Answers a cache route's request from the store, or fills it.
pub async fn serve(
    store: &Arc<CacheStore>,
    upstreams: &Arc<Upstreams>,
    metrics: &ProxyMetrics,
    request: &CacheRequest<'_>,
) -> Cached {
    let (route, config, parts) = (request.route, request.config, request.parts);
    let key = store.key(&route.name, config, &parts.method, request.host, target(parts), &parts.headers);
    let (cell, stale) = match store.lookup(&route.name, config, &key) {
        Lookup::Fresh(hit) => return answered(&hit, parts, "HIT"),
        Lookup::Fill { cell, new, stale: Some(stale) } if stale.served_while_revalidating(config) => {
            if new {
                revalidate_apart(store, upstreams, metrics, request, (cell, key, stale.clone()));
            }
            return answered(&stale, parts, "UPDATING");
        }
        Lookup::Fill { cell, stale, .. } => (cell, stale),
    };
    let mut mine = None;
    let mut filled = false;
    let fill = cell
        .get_or_init(|| async {
            filled = true;
            let fetch = request.fetch(stale.as_ref());
            let (name, label, pool) = (&route.name, &route.fill_label, &request.pool.name);
            let job = FillJob { store, route: name, label, pool, config, key: &key, fetch };
            let (fill, response) = fill(upstreams, metrics, job).await;
            mine = response;
            fill
        })
        .await
        .clone();
    let described = (&parts.method, request.host, target(parts));
    let outcome = match (fill, mine) {
        (Fill::Answer(answer, x_cache, its_key), _)
            if filled
                || its_key.is_some()
                    && its_key == cache::answer_key(described, &answer.headers, &parts.headers) =>
        {
            Ok((*answer, x_cache))
        }
        (Fill::Failed(status), _) => Err(status),
        (Fill::Uncached, Some(response)) => return Cached { response, reason: None, x_cache: "MISS" },
        // Waited on a fill too big to share, or on one whose answer varies on a field in which
        // this request differs from the one that fetched it: this request fetches its own.
        (Fill::Answer(..) | Fill::Uncached, _) => {
            // The stale answer is another key's: not revalidated here.
            match fetch(upstreams, &request.fetch(None)).await {
                Fetched::Whole(status, headers, body, _) => {
                    Ok((cache::Cached::now(status, headers, body), "MISS"))
                }
                Fetched::TooBig(response) => return Cached { response, reason: None, x_cache: "MISS" },
                // Asked with no validator, a 304 is no answer to this request.
                Fetched::NotModified(_) => Err(StatusCode::BAD_GATEWAY),
                Fetched::Failed(status) => Err(status),
            }
        }
    };
    let error = match &outcome {
        Ok((answer, _)) => stale::is_error(answer.status),
        Err(_) => true,
    };
    // The stale answer, when fetching failed and its grace allows (`stale-if-error`).
    if error && let Some(stale) = stale.as_ref().filter(|stale| stale.served_on_error(config)) {
        return answered(stale, parts, "STALE");
    }
    match outcome {
        Ok((answer, x_cache)) => answered(&answer, parts, x_cache),
        Err(status) => failed(route, status),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::Path,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use hyper::{Request, service::service_fn};
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::{
        config::Config,
        proxy::{access_log::ClientConn, test_bed},
    };

    const LAST_MODIFIED: &str = "Tue, 01 Dec 2026 10:00:00 GMT";

    /// A backend that notes each request's conditions and range, and after 100 ms (so that
    /// concurrent misses wait on one fill) answers as an origin does: 304 to `If-None-Match:
    /// "v1"`, 206 to a range, else the whole answer, tagged `"v1"` and storable.
    async fn origin() -> (u16, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let noted = seen.clone();
        let address = test_bed::listening(move |stream| {
            let noted = noted.clone();
            async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let noted = noted.clone();
                    async move {
                        let field = |name| request.headers().get(name).map_or("-", |v| v.to_str().unwrap());
                        let (inm, range) = (field(header::IF_NONE_MATCH), field(header::RANGE));
                        noted
                            .lock()
                            .unwrap()
                            .push(format!("{} inm={inm} range={range}", request.uri().path()));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let language = field(header::ACCEPT_LANGUAGE);
                        let (status, body) = match (inm, range, language) {
                            _ if request.headers().contains_key(header::UPGRADE) => (101, ""),
                            ("\"v1\"", _, _) => (304, ""),
                            (_, "bytes=0-3", _) => (206, "whol"),
                            (_, _, "fr") => (200, "la réponse entière"),
                            _ => (200, "the whole answer"),
                        };
                        let vary =
                            if request.uri().path() == "/greeting" { "accept-language" } else { "accept" };
                        let answer = Response::builder()
                            .header(header::VARY, vary)
                            .status(status)
                            .header(header::ETAG, "\"v1\"")
                            .header(header::LAST_MODIFIED, LAST_MODIFIED)
                            .header(header::CACHE_CONTROL, "max-age=60")
                            .header(header::CONTENT_TYPE, "text/plain")
                            .body(http_body_util::Full::new(Bytes::from(body)))
                            .unwrap();
                        Ok::<_, hyper::Error>(answer)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        })
        .await;
        (address.port(), seen)
    }

    /// A request to the cache route through the whole pipeline: its status, fields and body.
    struct Client {
        forwarder: Arc<crate::proxy::pipeline::Forwarder>,
        snapshot: Arc<crate::proxy::snapshot::Snapshot>,
        listener: Arc<crate::config::Listener>,
        _ejections: tokio::sync::mpsc::UnboundedReceiver<crate::state::Command>,
    }

    impl Client {
        fn new(port: u16) -> Client {
            Client::with(port, "max_entries = 10")
        }

        /// A client of a route whose `cache` is `{ settings }`.
        fn with(port: u16, settings: &str) -> Client {
            let text = format!(
                "[dataplane]\ninterface = \"lo\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
                 [[pool]]\nname = \"p\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
                 [[route]]\nlistener = \"l\"\npool = \"p\"\ntimeout_ms = 1000\ncache = {{ {settings} }}\n"
            );
            let config = Config::parse(Path::new("t.toml"), &text).unwrap();
            let listener = Arc::new(config.listeners[0].clone());
            let (snapshot, forwarder, _ejections) = test_bed::forwarding(config);
            Client { forwarder, snapshot: snapshot.load_full(), listener, _ejections }
        }

        async fn get(&self, path: &str, fields: &[(&str, &str)]) -> (u16, HeaderMap, String) {
            self.ask(hyper::Method::GET, path, fields).await
        }

        async fn ask(
            &self,
            method: hyper::Method,
            path: &str,
            fields: &[(&str, &str)],
        ) -> (u16, HeaderMap, String) {
            let mut request = Request::builder().method(method).uri(path).header(header::HOST, "a.test");
            for (name, value) in fields {
                request = request.header(*name, *value);
            }
            let conn = Arc::new(ClientConn::new("192.0.2.1:4000".parse().unwrap(), None, None));
            let handled = self
                .forwarder
                .clone()
                .handle(
                    request.body(crate::proxy::body::empty()).unwrap(),
                    self.snapshot.clone(),
                    self.listener.clone(),
                    conn,
                )
                .await;
            let (head, body) = handled.response.into_parts();
            // The access log says where the answer came from, as X-Cache does.
            if let Some(x_cache) = head.headers.get("x-cache") {
                let logged = handled.entry.as_ref().and_then(|entry| entry.cache);
                assert_eq!(logged, Some(x_cache.to_str().unwrap()));
            }
            let body = body.collect().await.unwrap().to_bytes();
            (head.status.as_u16(), head.headers, String::from_utf8(body.to_vec()).unwrap())
        }
    }

    #[tokio::test]
    async fn a_fill_asks_for_the_whole_answer_and_each_waiter_gets_what_it_asked_for() {
        let (port, seen) = origin().await;
        let client = Client::new(port);
        // A client revalidating its copy and one that holds nothing miss together: one fill,
        // made without the condition; the first gets 304, the second the whole answer.
        let holds = client.get("/page", &[("if-none-match", "\"v1\"")]);
        let fresh = client.get("/page", &[]);
        let (holds, fresh) = tokio::join!(holds, fresh);
        assert_eq!(seen.lock().unwrap().as_slice(), ["/page inm=- range=-"]);
        assert_eq!((holds.0, holds.2.as_str()), (304, ""));
        assert_eq!(holds.1[header::ETAG], "\"v1\"");
        assert_eq!(holds.1[header::CACHE_CONTROL], "max-age=60");
        assert!(!holds.1.contains_key(header::CONTENT_TYPE), "{:?}", holds.1);
        assert_eq!((fresh.0, fresh.2.as_str()), (200, "the whole answer"));
        // Stored: conditions are judged against it, without the backend.
        let hit = |fields: &'static [(&'static str, &'static str)]| client.get("/page", fields);
        assert_eq!(hit(&[("if-none-match", "W/\"v1\"")]).await.0, 304);
        assert_eq!(hit(&[("if-none-match", "\"v0\", \"v1\"")]).await.0, 304);
        assert_eq!(hit(&[("if-none-match", "\"v2\"")]).await.0, 200);
        assert_eq!(hit(&[("if-modified-since", LAST_MODIFIED)]).await.0, 304);
        assert_eq!(hit(&[("if-modified-since", "Mon, 30 Nov 2026 10:00:00 GMT")]).await.0, 200);
        let (status, fields, body) = hit(&[]).await;
        assert_eq!((status, body.as_str()), (200, "the whole answer"));
        assert_eq!(fields["x-cache"], "HIT");
        let age: u64 = fields[header::AGE].to_str().unwrap().parse().unwrap();
        assert!(age < 5, "held {age} s");
        // HEAD is stored apart, and says the length its GET has, missed and hit alike.
        for x_cache in ["MISS", "HIT"] {
            let (status, fields, body) = client.ask(hyper::Method::HEAD, "/page", &[]).await;
            assert_eq!((status, body.as_str(), fields["x-cache"].to_str().unwrap()), (200, "", x_cache));
            assert_eq!(fields[header::CONTENT_LENGTH], "16");
        }
        assert_eq!(seen.lock().unwrap().len(), 2, "{:?}", seen.lock().unwrap());
    }

    #[tokio::test]
    async fn a_range_passes_the_cache_by_and_does_not_reach_other_clients() {
        let (port, seen) = origin().await;
        let client = Client::new(port);
        let part = client.get("/video", &[("range", "bytes=0-3")]);
        let whole = client.get("/video", &[]);
        let (part, whole) = tokio::join!(part, whole);
        assert_eq!((part.0, part.2.as_str()), (206, "whol"));
        assert_eq!((whole.0, whole.2.as_str()), (200, "the whole answer"));
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, ["/video inm=- range=-", "/video inm=- range=bytes=0-3"]);
    }

    #[tokio::test]
    async fn an_upgrade_passes_the_cache_by_and_does_not_reach_other_clients() {
        let (port, seen) = origin().await;
        let client = Client::new(port);
        let upgrade = [("connection", "upgrade"), ("upgrade", "websocket")];
        let (switched, plain) = tokio::join!(client.get("/socket", &upgrade), client.get("/socket", &[]));
        assert_eq!(switched.0, 101);
        assert!(!switched.1.contains_key("x-cache"), "{:?}", switched.1);
        assert_eq!((plain.0, plain.2.as_str()), (200, "the whole answer"));
        assert_eq!(seen.lock().unwrap().len(), 2, "{:?}", seen.lock().unwrap());
    }

    #[tokio::test]
    async fn clients_that_differ_in_a_varied_field_never_share_a_fill() {
        let (port, seen) = origin().await;
        let client = Client::new(port);
        // Cold: nothing says yet that the answers vary, so both wait on one key; the answer
        // then says it varies on the language, in which they differ.
        let english = client.get("/greeting", &[("accept-language", "en")]);
        let french = client.get("/greeting", &[("accept-language", "fr")]);
        let (english, french) = tokio::join!(english, french);
        assert_eq!((english.0, english.2.as_str()), (200, "the whole answer"));
        assert_eq!((french.0, french.2.as_str()), (200, "la réponse entière"));
        assert_eq!(seen.lock().unwrap().len(), 2, "{:?}", seen.lock().unwrap());
        // Clients that agree on it share one.
        let (one, two) = tokio::join!(
            client.get("/greeting", &[("accept-language", "de")]),
            client.get("/greeting", &[("accept-language", "de")])
        );
        assert_eq!((one.2.as_str(), two.2.as_str()), ("the whole answer", "the whole answer"));
        assert_eq!(seen.lock().unwrap().len(), 3, "{:?}", seen.lock().unwrap());
    }

    /// What the versioned origin does next.
    #[derive(Clone, Copy, PartialEq)]
    enum Mood {
        /// Answers with version `n`: 304 when asked `If-None-Match` with its tag.
        Serving(u8),
        /// 503.
        Failing,
        /// Closes the connection unanswered.
        Down,
        /// 404.
        Missing,
    }

    /// An origin whose mood the test sets; every answer after 50 ms, with `Cache-Control:
    /// CC` (the path's query), so a test picks each answer's freshness and grace. Notes each
    /// request's `If-None-Match`.
    async fn versioned() -> (u16, Arc<Mutex<Mood>>, Arc<Mutex<Vec<String>>>) {
        let mood = Arc::new(Mutex::new(Mood::Serving(1)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (moody, noted) = (mood.clone(), seen.clone());
        let address = test_bed::listening(move |stream| {
            let (moody, noted) = (moody.clone(), noted.clone());
            async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (moody, noted) = (moody.clone(), noted.clone());
                    async move {
                        let inm = request.headers().get(header::IF_NONE_MATCH);
                        let inm = inm.map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
                        noted.lock().unwrap().push(inm.clone());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let cache_control = request.uri().query().unwrap_or("max-age=60").replace("%20", " ");
                        let answer = Response::builder().header(header::CACHE_CONTROL, cache_control);
                        let mood = *moody.lock().unwrap();
                        let answer = match mood {
                            Mood::Down => return Err("down"),
                            Mood::Failing => answer.status(503).body(Bytes::from("busy")),
                            Mood::Missing => answer.status(404).body(Bytes::from("no such page")),
                            Mood::Serving(n) if inm == format!("\"v{n}\"") => {
                                answer.status(304).header(header::ETAG, inm).body(Bytes::new())
                            }
                            Mood::Serving(n) => answer
                                .header(header::ETAG, format!("\"v{n}\""))
                                .body(Bytes::from(format!("version {n}"))),
                        };
                        Ok::<_, &str>(answer.unwrap().map(http_body_util::Full::new))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        })
        .await;
        (address.port(), mood, seen)
    }

    /// Waits out a 1 s lifetime.
    async fn expire() {
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }

    fn said(answer: &(u16, HeaderMap, String)) -> (u16, &str, &str) {
        let x_cache = answer.1.get("x-cache").map_or("-", |v| v.to_str().unwrap());
        (answer.0, x_cache, answer.2.as_str())
    }

    #[tokio::test]
    async fn a_stale_answer_is_revalidated_and_a_304_keeps_its_body() {
        let (port, mood, seen) = versioned().await;
        let client = Client::new(port);
        let short = "/page?max-age=1";
        assert_eq!(said(&client.get(short, &[]).await), (200, "MISS", "version 1"));
        expire().await;
        // The origin says version 1 still holds, for another second.
        let revalidated = client.get(short, &[]).await;
        assert_eq!(said(&revalidated), (200, "REVALIDATED", "version 1"));
        assert_eq!(seen.lock().unwrap().as_slice(), ["-", "\"v1\""], "asked with the stored tag");
        // Stored again, with the 304's fields: fresh for that second.
        assert_eq!(said(&client.get(short, &[]).await), (200, "HIT", "version 1"));
        // A client's own condition is still judged here, against the revalidated answer.
        assert_eq!(client.get(short, &[("if-none-match", "\"v1\"")]).await.0, 304);
        assert_eq!(seen.lock().unwrap().len(), 2);
        // Changed at the origin: its 200 replaces the stored answer.
        *mood.lock().unwrap() = Mood::Serving(2);
        let (_, _, body) = client.get("/other?max-age=1", &[]).await;
        assert_eq!(body, "version 2");
        expire().await;
        *mood.lock().unwrap() = Mood::Serving(3);
        assert_eq!(said(&client.get("/other?max-age=1", &[]).await), (200, "MISS", "version 3"));
    }

    #[tokio::test]
    async fn a_failed_fill_serves_the_stale_answer_within_its_grace() {
        let (port, mood, _) = versioned().await;
        let client = Client::with(port, "max_entries = 10, stale_if_error_s = 60");
        let paths = [
            "/a?max-age=1",
            "/b?max-age=1",
            "/c?max-age=1,%20must-revalidate",
            "/d?max-age=1,%20stale-if-error=0",
        ];
        for path in paths {
            assert_eq!(said(&client.get(path, &[]).await), (200, "MISS", "version 1"), "{path}");
        }
        expire().await;
        *mood.lock().unwrap() = Mood::Failing;
        assert_eq!(said(&client.get(paths[0], &[]).await), (200, "STALE", "version 1"));
        *mood.lock().unwrap() = Mood::Down;
        let stale = client.get(paths[1], &[]).await;
        assert_eq!(said(&stale), (200, "STALE", "version 1"));
        let age: u64 = stale.1[header::AGE].to_str().unwrap().parse().unwrap();
        assert!(age >= 1, "a stale answer's Age is past its lifetime: {age}");
        // An answer that must be revalidated, or whose own grace is over, is not served stale.
        assert_eq!(client.get(paths[2], &[]).await.0, 502);
        *mood.lock().unwrap() = Mood::Failing;
        assert_eq!(said(&client.get(paths[3], &[]).await), (503, "MISS", "busy"));
        // Without a route setting or a directive, no grace at all.
        let plain = Client::new(port);
        *mood.lock().unwrap() = Mood::Serving(1);
        plain.get(paths[0], &[]).await;
        expire().await;
        *mood.lock().unwrap() = Mood::Failing;
        assert_eq!(said(&plain.get(paths[0], &[]).await), (503, "MISS", "busy"));
    }

    #[tokio::test]
    async fn within_its_grace_a_stale_answer_is_served_at_once_and_fetched_again_apart() {
        let (port, mood, seen) = versioned().await;
        let client = Client::new(port);
        let path = "/feed?max-age=1,%20stale-while-revalidate=30";
        assert_eq!(said(&client.get(path, &[]).await), (200, "MISS", "version 1"));
        expire().await;
        *mood.lock().unwrap() = Mood::Serving(2);
        // Five clients at once: each gets the stale answer; one fill runs apart.
        let asks = (0..5).map(|_| client.get(path, &[]));
        for answer in futures_util::future::join_all(asks).await {
            assert_eq!(said(&answer), (200, "UPDATING", "version 1"));
        }
        let mut refreshed = None;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let answer = client.get(path, &[]).await;
            if said(&answer).1 == "HIT" {
                refreshed = Some(answer);
                break;
            }
        }
        let refreshed = refreshed.expect("the fill apart stored the new version");
        assert_eq!(said(&refreshed), (200, "HIT", "version 2"));
        assert_eq!(seen.lock().unwrap().as_slice(), ["-", "\"v1\""], "one revalidation for five clients");
    }

    #[tokio::test]
    async fn a_404_with_a_lifetime_is_stored_and_a_503_never() {
        let (port, mood, seen) = versioned().await;
        let client = Client::new(port);
        *mood.lock().unwrap() = Mood::Missing;
        for x_cache in ["MISS", "HIT"] {
            assert_eq!(said(&client.get("/gone?max-age=60", &[]).await), (404, x_cache, "no such page"));
        }
        *mood.lock().unwrap() = Mood::Failing;
        for _ in 0..2 {
            assert_eq!(said(&client.get("/busy?max-age=60", &[]).await), (503, "MISS", "busy"));
        }
        assert_eq!(seen.lock().unwrap().len(), 3, "the 404 once, the 503 each time");
    }
}
