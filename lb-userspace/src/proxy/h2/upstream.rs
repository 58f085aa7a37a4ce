//! HTTP/2 to h2c and h2 backends, on hyper's client: the connections per backend and worker,
//! a stream on the first with room (more connections when all are full), and one request sent
//! on a stream, with what its failure says (the connection is let go; a request the backend did
//! not process may go elsewhere).
use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use http_body_util::BodyExt;
use hyper::{Request, Response, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use smallvec::SmallVec;
use thread_local::ThreadLocal;

use crate::{
    config::Http2Upstream,
    proxy::{
        backend_stream::{ConnKey, ConnectFailed, Dial},
        body::Body,
        clock,
    },
};

type SendError = Box<dyn std::error::Error + Send + Sync>;

/// Open HTTP/2 connections to h2c and h2 backends, per backend, TLS client and worker (their
/// tasks run on the worker that opened them, as do their requests). Streams are multiplexed on
/// the first with room for one more (its pool's `http2_max_concurrent_streams`); another is
/// opened when none has, as Envoy does, so long-lived streams (gRPC streaming calls) never wait
/// behind each other for a backend's stream limit.
#[derive(Default)]
pub struct Pool(ThreadLocal<RefCell<HashMap<ConnKey, SmallVec<[Connection; 1]>>>>);

/// One open HTTP/2 connection.
struct Connection {
    sender: http2::SendRequest<Body>,
    /// When it is too old to be used again (coarse ms: its pool's `keepalive_timeout_ms` after
    /// its last stream began).
    until_ms: u64,
    /// Streams it may still begin (its pool's `max_requests_per_connection`); None: no limit.
    left: Option<u32>,
    /// Its streams open now (each answer's body holds a [`StreamSlot`]).
    streams: Arc<AtomicU32>,
}

impl Connection {
    fn usable(&self, now: u64) -> bool {
        !self.sender.is_closed() && now < self.until_ms
    }

    /// Usable, with fewer than `max_streams` streams open.
    fn has_room(&self, now: u64, max_streams: u32) -> bool {
        self.usable(now) && self.streams.load(Ordering::Relaxed) < max_streams
    }
}

/// A stream about to be opened on a connection: its sender, its slot in the connection's count
/// of open streams, and what the connection is filed under.
pub struct Stream {
    sender: http2::SendRequest<Body>,
    slot: StreamSlot,
    key: ConnKey,
}

/// One open stream of an HTTP/2 connection, counted until its answer's body is dropped.
struct StreamSlot(Arc<AtomicU32>);

impl StreamSlot {
    fn new(streams: &Arc<AtomicU32>) -> StreamSlot {
        streams.fetch_add(1, Ordering::Relaxed);
        StreamSlot(streams.clone())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// A stream on an open connection `dial` names with room for it (fewer than
    /// `settings.max_streams` open), or on a new one (with the pool's PINGs): a connect (and TLS
    /// handshake) within its timeout and the HTTP/2 handshake, either of which failing is a
    /// [`ConnectFailed`] (no request was sent on it). A connection given its last stream is let
    /// go at once: hyper closes it when its streams end.
    pub async fn stream(&self, dial: Dial<'_>, settings: &Http2Upstream) -> Result<Stream, ConnectFailed> {
        let max_streams = settings.max_streams;
        let key = dial.key();
        let now = clock::coarse_ms();
        let until_ms = now + dial.keep_alive.idle_timeout.as_millis() as u64;
        let open = {
            let mut open = self.0.get_or_default().borrow_mut();
            open.get_mut(&key).and_then(|connections| {
                connections.retain(|connection| connection.usable(now));
                let i = connections.iter().position(|connection| connection.has_room(now, max_streams))?;
                let connection = &mut connections[i];
                connection.until_ms = until_ms;
                let slot = StreamSlot::new(&connection.streams);
                let stream = Stream { sender: connection.sender.clone(), slot, key };
                if let Some(left) = &mut connection.left {
                    *left -= 1;
                    if *left == 0 {
                        connections.remove(i);
                    }
                }
                Some(stream)
            })
        };
        if let Some(stream) = open {
            return Ok(stream);
        }
        let stream = dial.connect().await?;
        let address = dial.address;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        if let Some(keepalive) = settings.keepalive {
            builder.keep_alive_interval(keepalive.interval).keep_alive_timeout(keepalive.timeout);
        }
        let (sender, connection) = builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| ConnectFailed::new(std::io::Error::other(err)))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                log::debug!("HTTP/2 upstream {address}: {err}");
            }
        });
        let streams = Arc::default();
        let slot = StreamSlot::new(&streams);
        // Kept unless it is to carry no other stream, or another opened meanwhile (by a request
        // that came at the same time) has room: a burst of first requests leaves one connection,
        // not one each.
        let left = dial.keep_alive.max_requests.map(|max| max.saturating_sub(1));
        let mut open = self.0.get_or_default().borrow_mut();
        let connections = open.entry(key).or_default();
        if left != Some(0) && !connections.iter().any(|connection| connection.has_room(now, max_streams)) {
            connections.push(Connection { sender: sender.clone(), until_ms, left, streams });
        }
        Ok(Stream { sender, slot, key })
    }

    /// Sends `request` on `stream`. A connection that fails is let go; a `resendable`
    /// (bodiless) request the backend did not process fails with [`StreamRefused`]. The
    /// answer's body holds the stream's slot.
    pub async fn send(
        &self,
        stream: Stream,
        request: Request<Body>,
        resendable: bool,
    ) -> Result<Response<Body>, SendError> {
        let Stream { mut sender, slot, key } = stream;
        let answer = match sender.ready().await {
            Ok(()) => sender.send_request(request).await,
            Err(err) => Err(err),
        };
        let answer = answer.map_err(|err| -> SendError {
            if !stream_reset(&err) {
                // The connection failed: no other stream goes on it.
                self.forget(key, &slot);
            }
            if resendable && unprocessed(&err) { Box::new(StreamRefused(err)) } else { Box::new(err) }
        })?;
        // The stream is counted open until its answer's body is dropped (the closure holds its
        // slot).
        Ok(answer.map(|body| {
            body.map_err(move |err| {
                let _open = &slot;
                err.into()
            })
            .boxed()
        }))
    }

    /// Lets go of this worker's connections that are closed or have idled too long (a
    /// connection let go is closed by hyper once the streams still on it are done).
    pub fn sweep(&self) {
        let now = clock::coarse_ms();
        self.0.get_or_default().borrow_mut().retain(|_, connections| {
            connections.retain(|connection| connection.usable(now));
            !connections.is_empty()
        });
    }

    /// Lets go of the connection whose stream `slot` is (its exchange failed with the
    /// connection): no other request is sent on it, even before hyper says it is closed.
    fn forget(&self, key: ConnKey, slot: &StreamSlot) {
        let mut open = self.0.get_or_default().borrow_mut();
        if let Some(connections) = open.get_mut(&key) {
            connections.retain(|connection| !Arc::ptr_eq(&connection.streams, &slot.0));
            if connections.is_empty() {
                open.remove(&key);
            }
        }
    }
}

/// The h2 error under a hyper one, if any.
fn h2_error(err: &hyper::Error) -> Option<&h2::Error> {
    std::error::Error::source(err).and_then(|e| e.downcast_ref::<h2::Error>())
}

/// Whether an HTTP/2 exchange failed on its stream alone (the backend reset it); else its
/// connection failed (a GOAWAY, a protocol error, a close).
fn stream_reset(err: &hyper::Error) -> bool {
    h2_error(err).is_some_and(h2::Error::is_reset)
}

/// Whether the backend never processed the request: it refused its stream (RFC 9113 §8.7,
/// `REFUSED_STREAM`), or its GOAWAY's last stream came before it (a backend shutting down or
/// at its own request limit), or hyper never sent it (canceled: the request was still queued
/// for a connection that closed, as one does once a GOAWAY's streams are done; a gRPC
/// server's MAX_CONNECTION_AGE every few minutes).
fn unprocessed(err: &hyper::Error) -> bool {
    err.is_canceled()
        || h2_error(err).is_some_and(|e| {
            e.is_remote()
                && (e.is_go_away() || (e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM)))
        })
}

/// An HTTP/2 request its backend did not process: like a connect that failed, it may go to
/// another backend (bodiless requests only: a body was sent as it was read).
#[derive(Debug, thiserror::Error)]
#[error("stream refused: {0}")]
pub struct StreamRefused(hyper::Error);

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        sync::atomic::{AtomicU64, AtomicUsize},
        time::Duration,
    };

    use hyper::StatusCode;

    use super::*;
    use crate::proxy::body;

    /// An h2c backend that counts the connections opened to it and those still open.
    async fn counting_h2c_backend() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (opened, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (counted, counted_open) = (opened.clone(), open.clone());
        let address = crate::proxy::test_bed::listening(move |stream| {
            let (opened, open) = (counted.clone(), counted_open.clone());
            async move {
                opened.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_| async {
                    Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
                });
                crate::proxy::test_bed::serve(stream, true, service).await;
                open.fetch_sub(1, Ordering::SeqCst);
            }
        })
        .await;
        (address, opened, open)
    }

    fn h2c_dial(address: SocketAddr, keep_alive: crate::config::KeepAlive) -> Dial<'static> {
        Dial {
            address,
            timeout: Duration::from_secs(1),
            tls: None,
            host: "",
            proxy: None,
            keep_alive,
            class: 0,
            opened: None,
        }
    }

    /// Sends a request on the stream and checks its answer; the stream's slot is let go with it.
    async fn ask(Stream { mut sender, .. }: Stream, address: SocketAddr) {
        sender.ready().await.unwrap();
        let request = Request::builder().uri(format!("http://{address}/")).body(body::empty()).unwrap();
        assert_eq!(sender.send_request(request).await.unwrap().status(), StatusCode::OK);
    }

    /// Waits (up to 2 s) until no connection to the backend is open.
    async fn all_closed(open: &AtomicUsize) {
        let closed = async {
            while open.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(2), closed).await.expect("the connections closed");
    }

    /// An h2c connection unused past its pool's keep-alive timeout is let go, and closed; one
    /// in use is kept.
    #[tokio::test]
    async fn an_http2_connection_idle_past_the_keep_alive_timeout_is_closed() {
        let (address, opened, open) = counting_h2c_backend().await;
        let keep_alive =
            crate::config::KeepAlive { idle_timeout: Duration::from_millis(100), max_requests: None };
        let dial = h2c_dial(address, keep_alive);
        let pool = Pool::default();
        for _ in 0..3 {
            ask(pool.stream(dial, &Http2Upstream::default()).await.unwrap(), address).await;
            tokio::time::sleep(Duration::from_millis(40)).await;
            pool.sweep();
        }
        assert_eq!(opened.load(Ordering::SeqCst), 1, "used within its timeout: kept");
        tokio::time::sleep(Duration::from_millis(150)).await;
        pool.sweep();
        all_closed(&open).await;
        ask(pool.stream(dial, &Http2Upstream::default()).await.unwrap(), address).await;
        assert_eq!(opened.load(Ordering::SeqCst), 2);
    }

    /// With `max_requests_per_connection`, an h2c connection carries that many streams, then is
    /// let go and closed once they end; the next request opens another.
    #[tokio::test]
    async fn an_http2_connection_carries_at_most_its_pool_s_requests() {
        let (address, opened, open) = counting_h2c_backend().await;
        let keep_alive = crate::config::KeepAlive { max_requests: Some(2), ..Default::default() };
        let dial = h2c_dial(address, keep_alive);
        let pool = Pool::default();
        for _ in 0..5 {
            ask(pool.stream(dial, &Http2Upstream::default()).await.unwrap(), address).await;
        }
        assert_eq!(opened.load(Ordering::SeqCst), 3, "5 requests, 2 a connection");
        drop(pool);
        all_closed(&open).await;
        let once =
            h2c_dial(address, crate::config::KeepAlive { max_requests: Some(1), ..Default::default() });
        let pool = Pool::default();
        ask(pool.stream(once, &Http2Upstream::default()).await.unwrap(), address).await;
        all_closed(&open).await;
        assert_eq!(opened.load(Ordering::SeqCst), 4, "one request, then closed: none kept");
    }

    /// Streams go on the first connection with room for one more; when none has, another
    /// connection is opened, and a stream that ends makes room again.
    #[tokio::test]
    async fn an_http2_connection_full_of_streams_opens_another() {
        let (address, opened, _) = counting_h2c_backend().await;
        let dial = h2c_dial(address, crate::config::KeepAlive::default());
        let pool = Pool::default();
        let kept = || pool.0.get_or_default().borrow().get(&dial.key()).map_or(0, |c| c.len());
        let two = Http2Upstream { max_streams: 2, ..Http2Upstream::default() };
        let first = pool.stream(dial, &two).await.unwrap();
        let second = pool.stream(dial, &two).await.unwrap();
        assert_eq!(kept(), 1, "two streams on one connection");
        let third = pool.stream(dial, &two).await.unwrap();
        assert_eq!(kept(), 2, "the first is full: another");
        ask(first, address).await;
        ask(pool.stream(dial, &two).await.unwrap(), address).await;
        assert_eq!(kept(), 2, "a stream ended: room on the first");
        ask(second, address).await;
        ask(third, address).await;
        let streams = [(); 4].map(|_| pool.stream(dial, &two));
        let streams = futures_util::future::try_join_all(streams).await.unwrap();
        assert_eq!(kept(), 2, "four streams fill the two connections");
        for stream in streams {
            ask(stream, address).await;
        }
        assert_eq!(opened.load(Ordering::SeqCst), 2, "the backend saw two connections");
    }

    /// Requests that all find no connection open one each, but only one is kept; the others
    /// close once their streams end.
    #[tokio::test]
    async fn a_burst_of_first_requests_keeps_one_http2_connection() {
        let (address, opened, open) = counting_h2c_backend().await;
        let counted = AtomicU64::new(0);
        let dial = Dial { opened: Some(&counted), ..h2c_dial(address, crate::config::KeepAlive::default()) };
        let pool = Pool::default();
        let settings = Http2Upstream::default();
        let streams = [(); 5].map(|_| pool.stream(dial, &settings));
        for stream in futures_util::future::try_join_all(streams).await.unwrap() {
            ask(stream, address).await;
        }
        assert_eq!(pool.0.get_or_default().borrow()[&dial.key()].len(), 1);
        let settled = async {
            while opened.load(Ordering::SeqCst) != 5 || open.load(Ordering::SeqCst) != 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(2), settled).await.expect("five opened, one left open");
        assert_eq!(counted.load(Ordering::Relaxed), 5, "each counted as opened");
    }

    /// A backend that answers a stream's head and then goes silent (a host gone without a
    /// reset): with the pool's PINGs, the connection is found dead and the answer's body fails
    /// within the interval and the timeout; without, it would wait for the listener's stream
    /// timeout.
    #[tokio::test]
    async fn an_http2_connection_whose_backend_stops_answering_pings_fails_its_streams() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = crate::proxy::test_bed::listening(|mut stream| async move {
            // The server's SETTINGS, an ack of the proxy's, a head for its first stream; then
            // reads what comes (PINGs too) and answers nothing.
            let settings = |flags: u8| [&[0, 0, 0, 4, flags][..], &[0; 4]].concat();
            let head = [&[0, 0, 1, 1, 4, 0, 0, 0, 1][..], &[0x88]].concat(); // HEADERS, :status 200
            let _ = stream.write_all(&[settings(0), settings(1), head].concat()).await;
            let mut sink = [0; 4096];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        let pool = Pool::default();
        let dial = h2c_dial(address, crate::config::KeepAlive::default());
        let keepalive = Some(crate::config::Http2Keepalive {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
        });
        let settings = Http2Upstream { keepalive, ..Http2Upstream::default() };
        let stream = pool.stream(dial, &settings).await.unwrap();
        let request = Request::builder().uri(format!("http://{address}/")).body(body::empty()).unwrap();
        let answer = pool.send(stream, request, true).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let body = tokio::time::timeout(Duration::from_secs(2), answer.into_body().collect()).await;
        assert!(body.expect("the body ended within 2 s").is_err(), "a dead connection's stream fails");
    }
}
