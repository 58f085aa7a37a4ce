//! Caching: a cache route's GET/HEAD is answered from the store when fresh; concurrent misses of
//! one key make one upstream request (picked with the request's own headers, so hashing holds)
//! whose answer every waiter gets. An answer larger than `max_object_bytes` streams through
//! uncached; a timeout is 504, any other failure 502.
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
        body::{self, Body},
        cache::{self, CacheStore, Fill},
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
/// without credentials on a cache route.
pub fn applies<'a>(route: &'a CompiledRoute, parts: &Parts) -> Option<&'a CacheConfig> {
    let config = route.cache.as_ref()?;
    let plain = matches!(parts.method, hyper::Method::GET | hyper::Method::HEAD)
        && !parts.headers.contains_key(header::AUTHORIZATION);
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
    let sent = upstreams.send(
        pool.protocol,
        &upstream,
        parts,
        parts.headers.clone(),
        request.forwarding,
        request.host,
        body::empty(),
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
    head.headers.remove(header::CONTENT_LENGTH);
    let ttl = cache::lifetime(parts, head.status, &head.headers);
    Fetched::Whole(head.status, head.headers, read.freeze(), ttl)
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
        Ok(hit) => return Cached { response: respond::cached(&hit, "HIT"), reason: None },
        Err(cell) => cell,
    };
    let mut mine = None;
    let fill = cell
        .get_or_init(|| async {
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
                    Fill::Answer(stored.unwrap_or_else(|| cache::Cached::now(status, headers, body)))
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
    match fill {
        Fill::Answer(answer) => Cached { response: respond::cached(&answer, "MISS"), reason: None },
        Fill::Failed(status) => failed(route, status),
        Fill::Uncached => match mine {
            Some(response) => Cached { response, reason: None },
            // Waited on a fill too big to share: this request fetches its own.
            None => match fetch(upstreams, request).await {
                Fetched::Whole(status, headers, body, _) => {
                    let answer = cache::Cached::now(status, headers, body);
                    Cached { response: respond::cached(&answer, "MISS"), reason: None }
                }
                Fetched::TooBig(response) => Cached { response, reason: None },
                Fetched::Failed(status) => failed(route, status),
            },
        },
    }
}
