//! Caching: a cache route's GET/HEAD is answered from the store when fresh; concurrent misses of
//! one key make one upstream request (picked with the request's own headers, so hashing holds,
//! and without its conditions, so it asks for the whole answer) whose answer every waiter gets
//! that does not differ in a field it Varies on, each waiter's `If-None-Match` or
//! `If-Modified-Since` judged against it (304). An answer larger
//! than `max_object_bytes` streams through uncached; a timeout is 504, any other failure 502.
use std::{
    net::IpAddr,
    pin::Pin,
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

use crate::{
    config::CacheConfig,
    proxy::{
        body::Body,
        cache::{self, CacheStore, Fill, conditional},
        metrics::{Label, ProxyMetrics},
        phase::{
            Refusal,
            headers::{self, Forwarding},
            respond,
            upstream::{InFlight, Upstreams},
        },
        routes::{CompiledRoute, L7Pool},
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
    /// The request's path and query.
    fn target(&self) -> &str {
        self.parts.uri.path_and_query().map_or("/", |p| p.as_str())
    }
}

/// What the cache phase answered.
pub struct Cached {
    pub response: Response<Body>,
    pub reason: Option<&'static str>,
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

async fn fetch(upstreams: &Upstreams, request: &CacheRequest<'_>) -> Fetched {
    let (pool, parts, route) = (request.pool, request.parts, request.route);
    let Some(upstream) = pool.pick(&parts.headers, request.client, &[]) else {
        return Fetched::Failed(StatusCode::SERVICE_UNAVAILABLE);
    };
    let in_flight = InFlight::start(&upstream);
    let deadline = tokio::time::Instant::now() + route.timeout;
    let mut fields = parts.headers.clone();
    for name in &conditional::JUDGED_HERE {
        fields.remove(name);
    }
    let mut no_body = None;
    let sent = upstreams.send(
        pool.protocol,
        &upstream,
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
    let max = request.config.max_object_bytes;
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

/// A stored (or just fetched) answer to this request: 304 when it is a 200 the request's
/// condition holds for.
fn answered(answer: &cache::Cached, parts: &Parts, x_cache: &'static str) -> Cached {
    let response =
        match answer.status == StatusCode::OK && conditional::not_modified(&parts.headers, &answer.headers) {
            true => respond::not_modified(answer, x_cache),
            false => respond::cached(answer, x_cache),
        };
    Cached { response, reason: None }
}

fn failed(route: &CompiledRoute, status: StatusCode) -> Cached {
    let reason = match status {
        StatusCode::GATEWAY_TIMEOUT => "upstream timed out",
        StatusCode::SERVICE_UNAVAILABLE => "no backend available",
        _ => "upstream failed",
    };
    Cached { response: respond::fallback_or(route.fallback.as_ref(), status, reason), reason: Some(reason) }
}

/// Answers a cache route's request from the store, or fills it.
pub async fn serve(
    store: &CacheStore,
    upstreams: &Upstreams,
    metrics: &ProxyMetrics,
    request: &CacheRequest<'_>,
) -> Cached {
    let (route, config, parts) = (request.route, request.config, request.parts);
    let key = store.key(&route.name, config, &parts.method, request.host, request.target(), &parts.headers);
    let cell = match store.lookup(&route.name, config, &key) {
        Ok(hit) => return answered(&hit, parts, "HIT"),
        Err(cell) => cell,
    };
    let mut mine = None;
    let mut filled = false;
    let fill = cell
        .get_or_init(|| async {
            filled = true;
            let fetched = fetch(upstreams, request).await;
            // Upstream fills are counted apart (route NAME:fill): coalescing shows there.
            let status = match &fetched {
                Fetched::Whole(status, ..) => status.as_u16(),
                Fetched::TooBig(response) => response.status().as_u16(),
                Fetched::Failed(status) => status.as_u16(),
            };
            metrics.request(
                route.fill_label.clone(),
                request.pool.name.clone(),
                Label::from(""),
                status,
                None,
            );
            let described = (&parts.method, request.host, request.target());
            match fetched {
                Fetched::Whole(status, headers, body, ttl) => {
                    let answer = ttl.map(|ttl| (status, headers.clone(), body.clone(), ttl));
                    let stored = store.finish(&route.name, config, &parts.headers, described, answer, &key);
                    let its_key = cache::answer_key(described, &headers, &parts.headers);
                    Fill::Answer(stored.unwrap_or_else(|| cache::Cached::now(status, headers, body)), its_key)
                }
                Fetched::TooBig(response) => {
                    store.finish(&route.name, config, &parts.headers, described, None, &key);
                    mine = Some(response);
                    Fill::Uncached
                }
                Fetched::Failed(status) => {
                    store.finish(&route.name, config, &parts.headers, described, None, &key);
                    Fill::Failed(status)
                }
            }
        })
        .await
        .clone();
    let described = (&parts.method, request.host, request.target());
    match (fill, mine) {
        (Fill::Answer(answer, its_key), _)
            if filled
                || its_key.is_some()
                    && its_key == cache::answer_key(described, &answer.headers, &parts.headers) =>
        {
            answered(&answer, parts, "MISS")
        }
        (Fill::Failed(status), _) => failed(route, status),
        (Fill::Uncached, Some(response)) => Cached { response, reason: None },
        // Waited on a fill too big to share, or on one whose answer varies on a field in which
        // this request differs from the one that fetched it: this request fetches its own.
        (Fill::Answer(..) | Fill::Uncached, _) => match fetch(upstreams, request).await {
            Fetched::Whole(status, headers, body, _) => {
                answered(&cache::Cached::now(status, headers, body), parts, "MISS")
            }
            Fetched::TooBig(response) => Cached { response, reason: None },
            Fetched::Failed(status) => failed(route, status),
        },
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
        snapshot: Arc<crate::proxy::routes::Snapshot>,
        listener: Arc<crate::config::Listener>,
        _ejections: tokio::sync::mpsc::UnboundedReceiver<crate::state::Command>,
    }

    impl Client {
        fn new(port: u16) -> Client {
            let text = format!(
                "[dataplane]\ninterface = \"lo\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n\
                 [[pool]]\nname = \"p\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
                 [[route]]\nlistener = \"l\"\npool = \"p\"\ncache = {{ max_entries = 10 }}\n"
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
}
