//! A listener's accept loop and its client connections: the connection cap (idle connections
//! are closed first when full), accept errors backed off, the TLS handshake timeout, the
//! first-byte and keep-alive idle timeouts, HTTP/1.1 served by the own engine (`h1`) and
//! HTTP/2 on the h2 crate (`h2`), and the drain on stop.
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use bytes::BytesMut;
use futures_util::{FutureExt, future::Either};
use hyper::{
    Method, Request, Response,
    body::{Body as _, Frame, SizeHint},
    header::{self, HeaderValue},
};
use log::{info, warn};
use tokio::{
    net::TcpListener,
    sync::{Notify, Semaphore},
};

use http1::{Ended, Session};

use crate::{
    config::Listener,
    proxy::{
        access_log::{ClientConn, Entry, GrpcStatus},
        acme,
        body::Body,
        boxed::boxed,
        client_cert, client_limit,
        h1::rewind::Rewind,
        h2, h3,
        idle::{self, Busy, Closed, Registry, Watched},
        own_fields::{self, VIA, X_REQUEST_ID},
        phase::upstream::InFlight,
        pipeline::{Counted, Forwarder},
        proxy_protocol,
        snapshot::Snapshot,
        tls,
    },
};

/// How long a full listener waits for an evicted idle connection to free its slot.
const EVICTION_WAIT: Duration = Duration::from_millis(100);
/// The pause after a failed accept (out of descriptors, mostly), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A response body that keeps its request in flight, on the connection and on its backend,
/// until it is done, counts the bytes sent (and a gRPC call's status from its trailers), and
/// writes the request's access-log line at the end.
struct Tracked {
    body: Body,
    _busy: Busy,
    _in_flight: Option<InFlight>,
    _counted: Counted,
    entry: Option<Entry>,
    conn: Arc<ClientConn>,
    bytes: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(entry) = &self.entry {
            entry.write(&self.conn, self.bytes);
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes += data.len() as u64;
            } else if let Some(trailers) = frame.trailers_ref()
                && let Some(Entry { grpc: Some(status), .. }) = &mut self.entry
            {
                // A gRPC call's status comes in its trailers.
                *status = GrpcStatus::of(trailers);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Counts accept errors and logs them at most once a second.
struct AcceptErrors {
    since_log: u64,
    logged: Option<Instant>,
}

impl AcceptErrors {
    fn failed(&mut self, listener: &str, err: &std::io::Error) {
        self.since_log += 1;
        if self.logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            warn!(
                "listener {listener}: accept: {err} ({} failed accepts since the last report)",
                self.since_log
            );
            self.since_log = 0;
            self.logged = Some(Instant::now());
        }
    }
}

/// What every worker's socket of one listener shares: the connection cap, the registry of
/// open connections (the longest-idle one anywhere is closed first when full), one TLS
/// config (one session cache and ticket key, so a session resumes on any worker), and how
/// many workers still accept (the drain starts once none does).
pub struct Shared {
    slots: Arc<Semaphore>,
    max_connections: u32,
    registry: Arc<Registry>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// HTTP/3's TLS and transport, on a listener with `http3` (one config: a session resumes
    /// on any worker).
    quic: Option<quinn::ServerConfig>,
    /// QUIC handshakes in progress (`http3::RETRY_THRESHOLD`).
    quic_handshaking: AtomicUsize,
    /// Open connections by client, with `max_connections_per_client`.
    per_client: Option<Arc<client_limit::ClientCounts>>,
    accepting: AtomicUsize,
    none_accepting: Notify,
}

impl Shared {
    /// `workers`: how many sockets (one per worker) accept for the listener.
    pub fn new(
        listener: &Listener,
        resolver: Option<&Arc<tls::Resolver>>,
        workers: usize,
    ) -> Result<Arc<Shared>, tls::TlsError> {
        let acceptor = match (&listener.tls, resolver) {
            (Some(tls), Some(resolver)) => {
                Some(tokio_rustls::TlsAcceptor::from(tls::server_config(tls, resolver.clone())?))
            }
            _ => None,
        };
        let quic = match (&listener.tls, resolver) {
            (Some(tls), Some(resolver)) if tls.http3.is_some() => {
                let crypto = tls::quic_config(tls, resolver.clone())?;
                let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
                config.transport_config(h3::transport(listener));
                Some(config)
            }
            _ => None,
        };
        Ok(Arc::new(Shared {
            slots: Arc::new(Semaphore::new(listener.max_connections)),
            max_connections: listener.max_connections as u32,
            registry: Arc::new(Registry::default()),
            acceptor,
            quic,
            quic_handshaking: AtomicUsize::new(0),
            per_client: listener
                .max_connections_per_client
                .map(|limit| client_limit::ClientCounts::new(limit, listener.client_ipv6_prefix)),
            accepting: AtomicUsize::new(workers),
            none_accepting: Notify::new(),
        }))
    }

    /// One worker stopped accepting (or never started to).
    pub fn stopped_accepting(&self) {
        if self.accepting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.none_accepting.notify_waiters();
        }
    }

    /// Waits until no worker accepts any more and then until every connection has given its
    /// slot back; false if `limit` passed first. Waiting for the slots while a sibling worker
    /// still accepts would take the free ones from under it, and it would refuse (close) a
    /// connection the kernel had already completed: the client would see it fail.
    pub async fn drained(&self, limit: Duration) -> bool {
        let drained = async {
            loop {
                let mut notified = std::pin::pin!(self.none_accepting.notified());
                notified.as_mut().enable();
                if self.accepting.load(Ordering::Acquire) == 0 {
                    break;
                }
                notified.await;
            }
            let _all = self.slots.acquire_many(self.max_connections).await;
        };
        tokio::time::timeout(limit, drained).await.is_ok()
    }
}

/// What every connection of a listener is served with.
struct Serving {
    listener: Arc<Listener>,
    /// Open connections by client, with `max_connections_per_client`.
    per_client: Option<Arc<client_limit::ClientCounts>>,
    forwarder: Arc<Forwarder>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    http2: Arc<::h2::server::Builder>,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// One accepted connection: what its requests are served with, its listener's slot and its
/// place in the idle registry.
struct Connection {
    /// The client (its TLS version and server name once a handshake gives them), the listener,
    /// the routes.
    session: Session,
    http2: Arc<::h2::server::Builder>,
    registered: idle::Registered,
    _permit: Slot,
}

/// A connection's place: its slot under `max_connections`, and under its client's
/// `max_connections_per_client` when the listener has one (boxed: a connection's task holds a
/// word for it when there is none).
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _client: Option<Box<client_limit::Admitted>>,
}

impl Slot {
    /// Takes `client`'s place under the listener's per-client limit, if it has one; false
    /// when the client is at its limit (the connection is then to be closed and counted).
    fn admit(
        &mut self,
        per_client: Option<&Arc<client_limit::ClientCounts>>,
        client: std::net::IpAddr,
    ) -> bool {
        let Some(per_client) = per_client else { return true };
        match per_client.admit(client) {
            Some(admitted) => self._client = Some(Box::new(admitted)),
            None => return false,
        }
        true
    }
}

impl Connection {
    fn new(
        serving: &Serving,
        conn: Arc<ClientConn>,
        registered: idle::Registered,
        permit: Slot,
    ) -> Connection {
        if let Some(age) = serving.listener.max_connection_age {
            // ±10% by the client's port: connections opened together do not all close together.
            let spread = 0.9 + f64::from(conn.address.port() % 201) / 1000.0;
            registered.activity.retire_after(age.mul_f64(spread));
        }
        let session = Session {
            forwarder: serving.forwarder.clone(),
            snapshot: serving.snapshot.clone(),
            listener: serving.listener.clone(),
            conn,
            activity: registered.activity.clone(),
            stop: serving.stop.clone(),
        };
        Connection { session, http2: serving.http2.clone(), registered, _permit: permit }
    }

    fn opened(&self) {
        self.session.forwarder.metrics.connection_opened(&self.session.listener.name);
    }

    fn closed(self) {
        self.session.forwarder.metrics.connection_closed(&self.session.listener.name);
    }

    /// A plain connection: HTTP/1.1 on the own engine, or HTTP/2 with prior knowledge.
    ///
    /// This task is what an idle connection costs, so it holds HTTP/1.1's future and what the
    /// connection needs after it, and nothing twice: not an `async fn` (it would keep a second
    /// copy of `self`), nor one `async` block around both steps (it would keep the stream it
    /// handed to the first). Its `http1` future measured 472 bytes when this was written, 408 in
    /// the twenty-eighth session (`size_of_val`, dist build); with tokio's task header, in
    /// mimalloc's 640-byte class (with the session held twice it was 520, in the 768-byte one).
    fn plain(self, stream: tokio::net::TcpStream) -> impl Future<Output = ()> + Send {
        self.opened();
        let stream = Watched::new(stream, self.registered.activity.clone());
        self.http1(stream)
    }

    /// HTTP/1.1 on the own engine until either side closes, then HTTP/2 if the client opened
    /// with its preface (prior knowledge); the connection is counted closed at the end. The two
    /// steps are chained (`then`), so the task holds one step's state at a time, and the session
    /// is lent to the first and given back (the task holds one copy of it).
    fn http1<S>(self, stream: S) -> impl Future<Output = ()> + Send
    where
        S: http1::ClientIo + 'static,
    {
        let Connection { session, http2, registered, _permit } = self;
        http1::serve(stream, session).then(move |(stream, ended, session)| async move {
            let this = Connection { session, http2, registered, _permit };
            if let Ended::Http2(read) = ended {
                Box::pin(this.http2(Rewind::new(read, stream))).await;
            }
            this.closed();
        })
    }

    /// A connection from a balancer that speaks the PROXY protocol: its header first, within
    /// the first-byte timeout, whose source address is then the client's; then served as a
    /// plain or TLS connection. One that sends no valid header in time is closed and counted.
    ///
    /// Chained (`then`), as the steps below, so the task never holds the header's read and
    /// the connection's service at once. A plain connection's first-byte timeout still counts
    /// from the accept: the header is part of its first bytes.
    fn proxied(
        mut self,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
        per_client: Option<Arc<client_limit::ClientCounts>>,
        mut stream: tokio::net::TcpStream,
    ) -> impl Future<Output = ()> + Send {
        let wait = self.session.listener.first_byte_timeout;
        let activity = self.registered.activity.clone();
        let header = async move {
            let reading = idle::unless_evicted(activity, proxy_protocol::read(&mut stream));
            let read = tokio::time::timeout(wait, reading).await;
            (read, stream)
        };
        header.then(move |(read, stream)| {
            let (listener, metrics) = (&self.session.listener, &self.session.forwarder.metrics);
            let peer = self.session.conn.address;
            let refused = |reason: &'static str, said: &dyn std::fmt::Display| {
                metrics.proxy_header_refused(&listener.name, reason);
                log::debug!("listener {}: connection from {peer}: {said}", listener.name);
                Either::Left(std::future::ready(()))
            };
            match read {
                Ok(None) => {
                    metrics.closed_idle(&listener.name, Closed::Evicted.label());
                    return Either::Left(std::future::ready(()));
                }
                Ok(Some(Ok(source))) => {
                    if let Some(source) = source {
                        self.session.conn = Arc::new(ClientConn::new(source, None, None));
                    }
                }
                Ok(Some(Err(err))) => return refused(err.reason(), &err),
                Err(_) => {
                    return refused("timeout", &format_args!("no PROXY protocol header within {wait:?}"));
                }
            }
            if !self._permit.admit(per_client.as_ref(), self.session.conn.address.ip()) {
                metrics.client_limited(&listener.name);
                return Either::Left(std::future::ready(()));
            }
            Either::Right(match acceptor {
                None => Either::Left(self.plain(stream)),
                Some(acceptor) => Either::Right(self.tls(acceptor, stream)),
            })
        })
    }

    /// A TLS connection: the handshake within its timeout, then HTTP/1.1 or (ALPN h2) HTTP/2.
    ///
    /// Steps chained as for a plain connection: one `async` block over all of them held the
    /// TLS stream (1.2 KiB) three times, the handshake's result, the stream and HTTP/1.1's
    /// future each keeping room for it.
    fn tls(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: tokio::net::TcpStream,
    ) -> impl Future<Output = ()> + Send {
        self.opened();
        let activity = self.registered.activity.clone();
        let stream = Watched::new(stream, activity.clone());
        let accepting = idle::unless_evicted(activity, acceptor.accept(stream));
        let handshake = tokio::time::timeout(self.session.listener.handshake_timeout, Box::pin(accepting));
        handshake.then(move |handshake| match handshake {
            Ok(None) => {
                self.session
                    .forwarder
                    .metrics
                    .closed_idle(&self.session.listener.name, Closed::Evicted.label());
                self.closed();
                Either::Left(std::future::ready(()))
            }
            Ok(Some(handshake)) => Either::Right(self.after_handshake(Ok(handshake))),
            Err(elapsed) => Either::Right(self.after_handshake(Err(elapsed))),
        })
    }

    /// The TLS handshake's outcome counted (and logged when it failed), then the connection
    /// served by the protocol ALPN chose.
    fn after_handshake(
        mut self,
        handshake: Result<
            std::io::Result<tokio_rustls::server::TlsStream<Watched<tokio::net::TcpStream>>>,
            tokio::time::error::Elapsed,
        >,
    ) -> impl Future<Output = ()> + Send {
        let (listener, metrics, client) =
            (&self.session.listener, &self.session.forwarder.metrics, self.session.conn.address);
        let stream = match handshake {
            Ok(Ok(stream)) => {
                metrics.handshake(&listener.name, "ok");
                stream
            }
            Ok(Err(err)) => {
                metrics.handshake(&listener.name, "failed");
                log::debug!("listener {}: TLS handshake from {client}: {err}", listener.name);
                self.closed();
                return Either::Left(std::future::ready(()));
            }
            Err(_) => {
                metrics.handshake(&listener.name, "timeout");
                log::debug!("listener {}: TLS handshake from {client} timed out", listener.name);
                self.closed();
                return Either::Left(std::future::ready(()));
            }
        };
        let session = stream.get_ref().1;
        if session.alpn_protocol() == Some(acme::ALPN) {
            // A CA's TLS-ALPN-01 validation: it has seen the answer; nothing more is said.
            log::debug!("listener {}: ACME validation from {client}", listener.name);
            self.closed();
            return Either::Left(std::future::ready(()));
        }
        let forward_cert = listener.tls.as_ref().is_some_and(|tls| tls.forward_client_cert);
        let details = listener.tls.as_ref().map(|tls| tls.forward_client_cert_details).unwrap_or_default();
        self.session.conn = Arc::new(ClientConn {
            client_cert: forward_cert
                .then(|| client_cert::details(session.peer_certificates()?, details))
                .flatten(),
            client_verified: session.peer_certificates().is_some(),
            // The listener offers only these two (and ACME's, closed above).
            alpn: match session.alpn_protocol() {
                Some(b"h2") => Some(b"h2"),
                Some(b"http/1.1") => Some(b"http/1.1"),
                _ => None,
            },
            ..ClientConn::new(
                client,
                session.protocol_version().and_then(|v| v.as_str()),
                session.server_name().map(str::to_owned),
            )
        });
        if session.alpn_protocol() == Some(b"h2") {
            // HTTP/2 has a watchdog of its own.
            return Either::Right(Either::Left(async move {
                Box::pin(self.http2(Rewind::new(BytesMut::new(), stream))).await;
                self.closed();
            }));
        }
        // HTTP/1.1's idle wait has the timeouts, the eviction and the stop (as for plain
        // connections).
        Either::Right(Either::Right(self.http1(stream)))
    }

    /// HTTP/2 (`h2`), watched for idleness and for the graceful stop.
    async fn http2<S>(&self, io: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let s = &self.session;
        let session = s.clone();
        let handler = move |request, respond| stream(&session, request, respond);
        let served = h2::Served::new(io, &self.http2, handler);
        let mut served = std::pin::pin!(served);
        let watchdog = idle::watchdog(
            &self.registered.activity,
            idle::Limits {
                first_byte: s.listener.first_byte_timeout,
                keep_alive: s.listener.idle_timeout,
                stream: s.listener.stream_idle_timeout,
            },
        );
        let mut watchdog = std::pin::pin!(watchdog);
        // The listener's stop: GOAWAY at a quiet moment (idle::GOAWAY_QUIET); in-flight
        // streams finish.
        let mut stop = s.stop.clone();
        let activity = self.registered.activity.clone();
        let drain = s.listener.drain_timeout;
        let quiet = move || {
            let latest = tokio::time::Instant::now() + drain.saturating_sub(idle::GOAWAY_BEFORE_DEADLINE);
            let activity = activity.clone();
            Box::pin(async move { activity.quiet(idle::GOAWAY_QUIET, latest).await })
        };
        let mut grace = (*stop.borrow()).then(&quiet);
        let mut stopping = grace.is_some();
        // Past `max_connection_age_ms`, the connection is retired as a stopping one is.
        let mut retire =
            self.registered.activity.retires_in().map(|after| Box::pin(tokio::time::sleep(after)));
        loop {
            tokio::select! {
                result = served.as_mut() => {
                    // A protocol or I/O error ends the connection (a malformed request is
                    // refused on its stream, not here).
                    match result {
                        Ok(h2::Ended::Done) => {}
                        Ok(h2::Ended::CutForResets) => {
                            s.forwarder.metrics.cut(&s.listener.name, "rapid_reset");
                            log::debug!("listener {}: HTTP/2 connection from {} cut: most of its streams reset before their answers", s.listener.name, self.session.conn.address);
                        }
                        Err(err) => {
                            log::debug!("listener {}: HTTP/2 connection from {}: {err}", s.listener.name, self.session.conn.address);
                        }
                    }
                    return;
                }
                closed = watchdog.as_mut() => {
                    s.forwarder.metrics.closed_idle(&s.listener.name, closed.label());
                    return;
                }
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    grace = Some(quiet());
                }
                _ = async { retire.as_mut().expect("armed").await }, if retire.is_some() && !stopping => {
                    retire = None;
                    stopping = true;
                    grace = Some(quiet());
                }
                _ = async { grace.as_mut().expect("armed").await }, if grace.is_some() => {
                    grace = None;
                    served.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// One HTTP/2 stream: its answer (`answered`) sent under the stream's flow control.
fn stream(
    s: &Session,
    request: Request<Body>,
    respond: ::h2::server::SendResponse<Bytes>,
) -> impl Future<Output = h2::Answered> + Send + use<> {
    h2::answer(answered(s, request), respond, Some(s.conn.clone()))
}

/// An HTTP/2 or HTTP/3 request's answer: the pipeline, then the answer's request ID and Via;
/// its body tracked for the access log, the in-flight counts and the connection's activity.
fn answered(s: &Session, request: Request<Body>) -> impl Future<Output = Response<Tracked>> + Send + use<> {
    let busy = s.activity.start();
    let conn = s.conn.clone();
    let head = request.method() == Method::HEAD;
    // The pipeline's future (~3 KiB) is boxed before the stream's future is made: that one is
    // moved into the connection's set of streams, and an async block that made the box itself
    // would carry room for the unboxed future too.
    let handled = boxed(|| {
        s.forwarder.clone().handle(request, s.snapshot.load_full(), s.listener.clone(), conn.clone())
    });
    async move {
        let handled = handled.await;
        let (entry, in_flight, counted) = (handled.entry, handled.in_flight, handled.counted);
        let mut response = handled.response;
        response.headers_mut().insert(X_REQUEST_ID, handled.request_id);
        if let Some(via) = handled.via {
            response.headers_mut().insert(VIA, HeaderValue::from_static(own_fields::via(via)));
        }
        if head {
            head_only(&mut response);
        }
        response.map(|body| Tracked {
            body,
            _busy: busy,
            _in_flight: in_flight,
            _counted: counted,
            entry,
            conn,
            bytes: 0,
        })
    }
}

/// An answer to a HEAD as an HTTP/2 or HTTP/3 stream sends it: the head alone, with the length its body
/// would have had (RFC 9110 §9.3.2). A backend's has no body; one lbd made (a refusal, a
/// route's fixed answer, a cached answer) has, and h2 would send it as DATA, which the client
/// takes for a protocol error.
fn head_only(response: &mut Response<Body>) {
    if response.body().is_end_stream() {
        return;
    }
    if let Some(length) = response.body().size_hint().exact() {
        response.headers_mut().entry(header::CONTENT_LENGTH).or_insert(HeaderValue::from(length));
    }
    *response.body_mut() = crate::proxy::body::empty();
}

/// A connection's slot under `max_connections`. When all are taken, an idle keep-alive
/// connection is evicted to make room (for up to EVICTION_WAIT); None when every connection is
/// busy.
async fn slot(slots: &Arc<Semaphore>, registry: &Registry) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match slots.clone().try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(_) if registry.evict_idle() => {
            tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned()).await.ok()?.ok()
        }
        Err(_) => None,
    }
}

/// Serves `listener` on `socket` until `stop` fires, then drains in-flight requests for up to
/// the listener's drain timeout.
pub async fn serve(
    listener: Listener,
    socket: TcpListener,
    shared: Arc<Shared>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    forwarder: Arc<Forwarder>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = shared.acceptor.clone();
    let (slots, registry) = (shared.slots.clone(), shared.registry.clone());
    let http2 = h2::builder(&listener);
    let listener = Arc::new(listener);
    let serving = Serving {
        listener: listener.clone(),
        per_client: shared.per_client.clone(),
        forwarder: forwarder.clone(),
        snapshot,
        http2: Arc::new(http2),
        stop: stop.clone(),
    };
    let mut errors = AcceptErrors { since_log: 0, logged: None };
    loop {
        let (stream, client) = tokio::select! {
            // The stop first: what is still queued is the next lbd's after an upgrade.
            biased;
            _ = stop.changed() => break,
            accepted = socket.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    errors.failed(&listener.name, &err);
                    // Out of descriptors: an idle connection's is the one to give back.
                    registry.evict_idle();
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some(permit) = slot(&slots, &registry).await else {
            forwarder.metrics.refused(&listener.name);
            continue; // closed at once
        };
        // Behind a balancer, the client is known once its PROXY header is read (`proxied`).
        let mut permit = Slot { _permit: permit, _client: None };
        if !listener.proxy_protocol && !permit.admit(shared.per_client.as_ref(), client.ip()) {
            forwarder.metrics.client_limited(&listener.name);
            continue; // closed at once
        }
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(ClientConn::new(client, None, None));
        let connection = Connection::new(&serving, conn, registry.register(), permit);
        match (&acceptor, listener.proxy_protocol) {
            // Plain connections are one lean task: no TLS or HTTP/2 state (HTTP/1.1's idle wait
            // has the timeouts, the eviction and the stop, as for TLS ones).
            (None, false) => tokio::spawn(connection.plain(stream)),
            (Some(acceptor), false) => tokio::spawn(connection.tls(acceptor.clone(), stream)),
            (acceptor, true) => {
                tokio::spawn(connection.proxied(acceptor.clone(), serving.per_client.clone(), stream))
            }
        };
    }
    drop(socket);
    shared.stopped_accepting();
    registry.stopping();
    info!(
        "listener {}: stopped accepting; draining its connections (up to {:?})",
        listener.name, listener.drain_timeout
    );
    // Every connection gives its slot back when it closes: HTTP/1.1 ones after their next answer
    // (sent with `Connection: close`) or STOP_GRACE idle, HTTP/2 ones by GOAWAY at a quiet moment.
    if !shared.drained(listener.drain_timeout).await {
        warn!("listener {}: drain deadline passed, closing the rest", listener.name);
    }
}

impl Shared {
    /// The listener's HTTP/3 config, when it has `http3`.
    pub fn quic(&self) -> Option<&quinn::ServerConfig> {
        self.quic.as_ref()
    }
}

/// Serves `listener`'s HTTP/3 on `endpoint` until `stop` fires, then drains (`http3`).
pub async fn serve_http3(
    listener: Listener,
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    forwarder: Arc<Forwarder>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let serving = Serving {
        http2: Arc::new(h2::builder(&listener)),
        listener: Arc::new(listener),
        per_client: shared.per_client.clone(),
        forwarder,
        snapshot,
        stop,
    };
    http3::serve(serving, shared, endpoint).await;
}

pub mod answer;
#[cfg(test)]
mod backend_tls;
#[cfg(test)]
mod basic_auth;
#[cfg(test)]
mod body_limits;
#[cfg(test)]
mod compressed;
#[cfg(test)]
mod connection_age;
#[cfg(test)]
mod cors;
#[cfg(test)]
mod error_pages;
#[cfg(test)]
mod faults;
#[cfg(test)]
mod grpc_refusals;
#[cfg(test)]
mod grpc_web;
pub mod http1;
pub mod http3;
#[cfg(test)]
mod interim_relay;
#[cfg(test)]
mod mutations;
#[cfg(test)]
mod own_answers;
#[cfg(test)]
mod per_client_limits;
#[cfg(test)]
mod proxy_headers;
#[cfg(test)]
mod proxy_to_backends;
#[cfg(test)]
mod refused_streams;
#[cfg(test)]
mod retry_on;
#[cfg(test)]
mod route_edits;
#[cfg(test)]
mod shadow_copies;
#[cfg(test)]
mod trailers;
#[cfg(test)]
mod trusted_proxies;
#[cfg(test)]
mod unreachable_backends;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn listener() -> Listener {
        let text = "[dataplane]\ninterface = \"lo\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\nmax_connections = 4\n";
        Config::parse(Path::new("t.toml"), text).unwrap().listeners.remove(0)
    }

    #[tokio::test]
    async fn the_drain_leaves_a_sibling_that_still_accepts_its_slots() {
        let shared = Shared::new(&listener(), None, 2).unwrap();
        let open = shared.slots.clone().try_acquire_owned().unwrap();
        // One worker stops accepting and drains; the other has not seen the stop yet.
        shared.stopped_accepting();
        let draining = tokio::spawn({
            let shared = shared.clone();
            async move { shared.drained(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let late = shared.slots.clone().try_acquire_owned().expect("a slot for the sibling's last accept");
        shared.stopped_accepting();
        drop(open);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!draining.is_finished(), "drained with a connection still open");
        drop(late);
        assert!(draining.await.unwrap(), "drained once every connection closed");
    }

    /// A kept-alive plain connection stays open while requests come more often than its
    /// keep-alive limit (the connection's timer fires between them and finds it busy), then
    /// closes once it has been quiet for that limit: not sooner, and not at the longer
    /// first-byte limit the timer was first set by.
    #[tokio::test]
    async fn a_kept_alive_connection_closes_once_quiet_for_its_limit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let backend = crate::proxy::test_bed::http1().await;
        let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n\
                        first_byte_timeout_ms = 5000\nheader_read_timeout_ms = 300\nidle_timeout_ms = 300\n";
        let routes = format!(
            "[[pool]]\nname = \"p\"\nport = {}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
             [[route]]\nlistener = \"l\"\npool = \"p\"\n",
            backend.port()
        );
        let (address, _, _) = super::mutations::start_listener(listener, &routes).await;
        let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut got = vec![0; 4096];
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(1200) {
            client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
            let n =
                tokio::time::timeout(Duration::from_secs(2), client.read(&mut got)).await.unwrap().unwrap();
            assert!(got[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&got[..n]));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let quiet = std::time::Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(3), client.read(&mut got)).await;
        assert!(matches!(closed, Ok(Ok(0))), "not closed: {closed:?}");
        let after = quiet.elapsed();
        // The coarse clock lags by a few ms; the timer may fire once early and be set again.
        assert!(after >= Duration::from_millis(150), "closed {after:?} into a 300 ms keep-alive limit");
        assert!(after < Duration::from_millis(1000), "closed {after:?} into a 300 ms keep-alive limit");
    }

    /// The listener's `http2_max_concurrent_streams` is what its SETTINGS tell a client.
    #[tokio::test]
    async fn a_client_is_told_the_listeners_stream_limit() {
        let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n\
                        http2_max_concurrent_streams = 7\n";
        let routes = "[[route]]\nlistener = \"l\"\nrespond = { status = 200 }\n";
        let (address, _, _) = super::mutations::start_listener(listener, routes).await;
        let io = tokio::net::TcpStream::connect(address).await.unwrap();
        let (client, connection) = ::h2::client::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let (answer, _) =
            client.send_request(hyper::Request::get("http://a/").body(()).unwrap(), true).unwrap();
        assert_eq!(answer.await.unwrap().status(), 200);
        assert_eq!(client.current_max_send_streams(), 7);
    }

    #[tokio::test]
    async fn a_drain_past_its_limit_says_so() {
        let shared = Shared::new(&listener(), None, 1).unwrap();
        let _open = shared.slots.clone().try_acquire_owned().unwrap();
        shared.stopped_accepting();
        assert!(!shared.drained(Duration::from_millis(50)).await);
    }

    /// Rapid reset through the listener: a client that opens streams, waits until a backend
    /// has each request, and resets them all, is cut once it has opened 500, and the backend
    /// gets no more of its requests. (h2.rs tests the rule itself.)
    #[tokio::test]
    async fn a_client_resetting_its_streams_is_cut_and_counted() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let seen = Arc::new(AtomicUsize::new(0));
        // A backend that counts each request and never answers.
        let backend = crate::proxy::test_bed::listening({
            let seen = seen.clone();
            move |mut stream| {
                let seen = seen.clone();
                async move {
                    let mut read = Vec::new();
                    if crate::proxy::test_bed::head_read(&mut stream, &mut read).await.is_some() {
                        seen.fetch_add(1, Ordering::Relaxed);
                        std::future::pending::<()>().await;
                    }
                }
            }
        })
        .await;
        let routes = format!(
            "[[pool]]\nname = \"p\"\nport = {}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
             [[route]]\nlistener = \"l\"\npool = \"p\"\n",
            backend.port()
        );
        let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
        let (address, _, forwarder) = super::mutations::start_listener(listener, &routes).await;
        let io = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut client, connection) = ::h2::client::handshake(io).await.unwrap();
        let connection = tokio::spawn(connection);
        'batches: for _ in 0..20 {
            let mut sent = Vec::new();
            for _ in 0..100 {
                let request = hyper::Request::get("http://a/").body(()).unwrap();
                match client.send_request(request, true) {
                    Ok((_, send)) => sent.push(send),
                    Err(_) => break 'batches,
                }
            }
            let target = seen.load(Ordering::Relaxed) + sent.len();
            let reached = async {
                while seen.load(Ordering::Relaxed) < target && !connection.is_finished() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            if tokio::time::timeout(Duration::from_secs(2), reached).await.is_err()
                || connection.is_finished()
            {
                break;
            }
            for mut send in sent {
                send.send_reset(::h2::Reason::CANCEL);
            }
        }
        let err = tokio::time::timeout(Duration::from_secs(5), connection)
            .await
            .expect("the connection ends")
            .unwrap()
            .expect_err("a GOAWAY");
        assert_eq!(err.reason(), Some(::h2::Reason::ENHANCE_YOUR_CALM), "{err}");
        let reached = seen.load(Ordering::Relaxed);
        let text = forwarder.metrics.text();
        // Cut as its 500th stream is judged: the streams of the batch that tips it may be
        // dropped before they reach the backend, and none after it reach it.
        assert!((300..=600).contains(&reached), "{reached} requests reached the backend: {text}");
        let cut = "http_cut_connections_total{listener=\"l\",reason=\"rapid_reset\"} 1";
        assert!(text.lines().any(|l| l == cut), "{text}");
    }
}
