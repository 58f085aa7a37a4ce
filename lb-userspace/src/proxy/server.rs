//! A listener's accept loop and its client connections: the connection cap (idle connections
//! are closed first when full), accept errors backed off, the TLS handshake timeout, the
//! first-byte and keep-alive idle timeouts, HTTP/1.1 served by the own engine (`h1`) and
//! HTTP/2 by hyper, and the drain on stop.
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::Result;
use arc_swap::ArcSwap;
use bytes::Bytes;
use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::{
    Request,
    body::{Frame, Incoming, SizeHint},
    server::conn::http2,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use log::{info, warn};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{
    config::Listener,
    proxy::{
        access_log::{ClientConn, Entry},
        h1::{
            downstream::{self, Ended, Session},
            rewind::Rewind,
        },
        idle::{self, Busy, Registry, Watched},
        phase::respond::Body,
        pipeline::Forwarder,
        routes::Snapshot,
        tls,
    },
};

/// How long a full listener waits for an evicted idle connection to free its slot.
const EVICTION_WAIT: Duration = Duration::from_millis(100);
/// The pause after a failed accept (out of descriptors, mostly), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A response body that keeps its request in flight on the connection until it is done, counts
/// the bytes sent, and writes the request's access-log line at the end.
struct Tracked {
    body: Body,
    _busy: Busy,
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
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes += data.len() as u64;
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
/// open connections (the longest-idle one anywhere is closed first when full), and one TLS
/// config (one session cache and ticket key, so a session resumes on any worker).
pub struct Shared {
    slots: Arc<Semaphore>,
    registry: Arc<Registry>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
}

impl Shared {
    pub fn new(listener: &Listener, resolver: Option<&Arc<tls::Resolver>>) -> Result<Arc<Shared>> {
        let acceptor = match (&listener.tls, resolver) {
            (Some(tls), Some(resolver)) => {
                Some(tokio_rustls::TlsAcceptor::from(tls::server_config(tls, resolver.clone())?))
            }
            _ => None,
        };
        Ok(Arc::new(Shared {
            slots: Arc::new(Semaphore::new(listener.max_connections)),
            registry: Arc::new(Registry::default()),
            acceptor,
        }))
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
) -> Result<()> {
    let acceptor = shared.acceptor.clone();
    let (slots, registry) = (shared.slots.clone(), shared.registry.clone());
    let graceful = GracefulShutdown::new();
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new()).max_header_list_size(listener.max_header_bytes as u32);
    let http2 = Arc::new(http2);
    let listener = Arc::new(listener);
    let mut errors = AcceptErrors { since_log: 0, logged: None };
    loop {
        let (stream, client) = tokio::select! {
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
            _ = stop.changed() => break,
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            // Full: an idle keep-alive connection makes room, else the new one is refused.
            Err(_) if registry.evict_idle() => {
                match tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        forwarder.metrics.refused(&listener.name);
                        continue;
                    }
                }
            }
            Err(_) => {
                forwarder.metrics.refused(&listener.name);
                continue; // every connection is busy: closed at once
            }
        };
        let _ = stream.set_nodelay(true);
        let registered = registry.register();
        let (snapshot, forwarder, listener, http2) =
            (snapshot.clone(), forwarder.clone(), listener.clone(), http2.clone());
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let activity = registered.activity.clone();
            let stream = Watched::new(stream, activity.clone());
            forwarder.metrics.connection_opened(&listener.name);
            let session = |conn: Arc<ClientConn>| Session {
                forwarder: forwarder.clone(),
                snapshot: snapshot.clone(),
                listener: listener.clone(),
                conn,
                activity: activity.clone(),
                stop: stop.clone(),
            };
            // HTTP/2 (ALPN h2, or a plain connection opening with the preface) is hyper's.
            let service = |conn: Arc<ClientConn>| {
                let listener = listener.clone();
                let forwarder = forwarder.clone();
                let activity = activity.clone();
                let snapshot = snapshot.clone();
                service_fn(move |request: Request<Incoming>| {
                    let busy = activity.start();
                    let conn = conn.clone();
                    let request = request.map(|body| body.map_err(Into::into).boxed());
                    let answer = forwarder.clone().handle(
                        request,
                        snapshot.load_full(),
                        listener.clone(),
                        conn.clone(),
                    );
                    async move {
                        let (response, entry) = answer.await;
                        let response =
                            response.map(|body| Tracked { body, _busy: busy, entry, conn, bytes: 0 });
                        Ok::<_, std::convert::Infallible>(response)
                    }
                })
            };
            let plain = Arc::new(ClientConn { address: client, tls_version: None, sni: None });
            let watchdog = idle::watchdog(&activity, listener.first_byte_timeout, listener.idle_timeout);
            // The connection's result, with what the client connection turned out to be.
            // The connection's result, with what the client connection turned out to be. Each
            // kind is its own boxed future: a plain connection does not carry the size of TLS
            // and HTTP/2 state it never uses.
            type Served<'a> = std::pin::Pin<
                Box<
                    dyn std::future::Future<
                            Output = (Result<(), Box<dyn std::error::Error + Send + Sync>>, Arc<ClientConn>),
                        > + Send
                        + 'a,
                >,
            >;
            let served: Served<'_> = match &acceptor {
                Some(acceptor) => Box::pin(async {
                    match tokio::time::timeout(listener.handshake_timeout, Box::pin(acceptor.accept(stream)))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            forwarder.metrics.handshake(&listener.name, "ok");
                            let session_info = stream.get_ref().1;
                            let conn = Arc::new(ClientConn {
                                address: client,
                                tls_version: session_info.protocol_version().and_then(|v| v.as_str()),
                                sni: session_info.server_name().map(str::to_owned),
                            });
                            let h2 = session_info.alpn_protocol() == Some(b"h2");
                            let (stream, read) = if h2 {
                                (stream, BytesMut::new())
                            } else {
                                match downstream::serve(stream, session(conn.clone())).await {
                                    (_, Ended::Closed) => return (Ok(()), conn),
                                    (stream, Ended::Http2(read)) => (stream, read),
                                }
                            };
                            let connection = http2.serve_connection(
                                TokioIo::new(Rewind::new(read, stream)),
                                service(conn.clone()),
                            );
                            (Box::pin(watcher.watch(connection)).await.map_err(Into::into), conn)
                        }
                        Ok(Err(err)) => {
                            forwarder.metrics.handshake(&listener.name, "failed");
                            log::debug!("listener {}: TLS handshake from {client}: {err}", listener.name);
                            (Ok(()), plain.clone())
                        }
                        Err(_) => {
                            forwarder.metrics.handshake(&listener.name, "timeout");
                            log::debug!("listener {}: TLS handshake from {client} timed out", listener.name);
                            (Ok(()), plain.clone())
                        }
                    }
                }),
                None => Box::pin(async {
                    match downstream::serve(stream, session(plain.clone())).await {
                        (_, Ended::Closed) => (Ok(()), plain.clone()),
                        (stream, Ended::Http2(read)) => {
                            let connection = http2.serve_connection(
                                TokioIo::new(Rewind::new(read, stream)),
                                service(plain.clone()),
                            );
                            (Box::pin(watcher.watch(connection)).await.map_err(Into::into), plain.clone())
                        }
                    }
                }),
            };
            tokio::select! {
                (result, conn) = served => {
                    if let Err(err) = result {
                        let err: Box<dyn std::error::Error + Send + Sync> = err;
                        forwarder.refused_by_parser(&listener, &conn, &*err);
                    }
                }
                closed = watchdog => forwarder.metrics.closed_idle(&listener.name, closed.label()),
            }
            forwarder.metrics.connection_closed(&listener.name);
            drop(registered);
        });
    }
    drop(socket);
    info!(
        "listener {}: draining {} connections (up to {:?})",
        listener.name,
        listener.max_connections - slots.available_permits(),
        listener.drain_timeout
    );
    // Every connection gives its slot back when it closes: HTTP/1.1 ones at their next idle
    // moment (an answer in progress is sent with `Connection: close`), HTTP/2 ones by GOAWAY.
    let drained = async {
        graceful.shutdown().await;
        let _ = slots.acquire_many(listener.max_connections as u32).await;
    };
    if tokio::time::timeout(listener.drain_timeout, drained).await.is_err() {
        warn!("listener {}: drain deadline passed, closing the rest", listener.name);
    }
    Ok(())
}
