//! A client's HTTP/1.1 connection, driven in one task: read a request head, hand the request
//! to the pipeline (its body streamed from this connection while the pipeline runs), write
//! the answer (`server::answer`), and go again while keep-alive holds. An idle connection holds
//! no buffer. Requests the parser refuses are answered, counted and logged. A connection that
//! opens with HTTP/2's preface is handed back.
use std::{
    future::Future,
    io,
    mem::MaybeUninit,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{
    Request, StatusCode, Version,
    body::{Frame, SizeHint},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    sync::mpsc,
};

use crate::{
    config::Listener,
    proxy::{
        access_log::{self, ClientConn},
        body,
        boxed::boxed,
        deadline::Alarm,
        h1::{
            body::{BodyError, Decoded, Decoder, Framing},
            encode,
            head::{self, Refused},
            upstream::Switched,
        },
        idle::{Activity, Closed, Watched},
        interim::Interim,
        phase::headers,
        pipeline::Forwarder,
        server::answer::{BROKE, write_response},
        snapshot::Snapshot,
    },
};

/// The start of HTTP/2's client preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
/// What one read from a client asks for: a request head's first read is small (most heads
/// fit; many requests in flight at once then cost little memory), later reads larger.
const FIRST_READ: usize = 2 * 1024;
const READ_SIZE: usize = 8 * 1024;
/// Request body chunks queued between this connection and the pipeline.
const BODY_QUEUE: usize = 4;

/// A client connection's stream.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// Polls for what the client sends and appends it to `buf`, holding no buffer while it
    /// waits: `Some(0)` at end of stream. `None`: there is something to read, but this stream
    /// is read the usual way, into a buffer (TLS: rustls holds decrypted bytes, or the socket
    /// is readable).
    fn poll_read_when_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _buf: &mut BytesMut,
    ) -> Poll<Option<io::Result<usize>>> {
        Poll::Ready(None)
    }
}

impl ClientIo for Watched<TcpStream> {
    fn poll_read_when_ready(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<Option<io::Result<usize>>> {
        // Each poll reads into a stack buffer that is not held across the wait; only bytes
        // that came get a heap buffer. Through AsyncRead, a short read tells tokio the socket
        // is drained, and an EAGAIN (tokio's first readiness on a fresh socket can be a false
        // positive) clears readiness: either way the next wait is a real one, with no syscall.
        // Left uninitialized: the socket writes what it reads (zeroing 2 KiB first was ~250
        // instructions a request, `bench l7-instructions`).
        let mut chunk = [const { MaybeUninit::uninit() }; FIRST_READ];
        let mut chunk = ReadBuf::uninit(&mut chunk);
        if let Err(err) = ready!(Pin::new(&mut *self).poll_read(cx, &mut chunk)) {
            return Poll::Ready(Some(Err(err)));
        }
        buf.extend_from_slice(chunk.filled());
        Poll::Ready(Some(Ok(chunk.filled().len())))
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<Watched<TcpStream>> {
    fn poll_read_when_ready(
        &mut self,
        cx: &mut Context<'_>,
        _buf: &mut BytesMut,
    ) -> Poll<Option<io::Result<usize>>> {
        // While rustls holds no decrypted bytes, wait for the socket with no buffer held (as a
        // plain connection does); then the stream is read the usual way.
        let (tcp, session) = self.get_ref();
        if session.wants_read() && tcp.get_ref().poll_read_ready(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(None)
    }
}

/// What the connection serves requests with.
#[derive(Clone)]
pub struct Session {
    pub forwarder: Arc<Forwarder>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub listener: Arc<Listener>,
    pub conn: Arc<ClientConn>,
    pub activity: Arc<Activity>,
    /// Fires when the listener stops: idle connections close, busy ones after their answer.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// How the connection ended.
pub enum Ended {
    /// Closed (by either side, or after a refusal).
    Closed,
    /// The client spoke HTTP/2: these bytes were read, the rest is on the stream.
    Http2(BytesMut),
}

/// A request body read from the connection while the pipeline consumes it (its data, then its
/// trailers if it has any).
struct RequestBody {
    chunks: mpsc::Receiver<Result<Frame<Bytes>, BodyError>>,
    left: Option<u64>,
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.chunks.poll_recv(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(left), Some(data)) = (&mut self.left, frame.data_ref()) {
                    *left = left.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        self.left.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// Reads the body into the pipeline's queue. Returns whether the body was read to its end.
async fn pump<S: ClientIo>(
    io: &mut S,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    chunks: mpsc::Sender<Result<Frame<Bytes>, BodyError>>,
    mut expect_continue: bool,
) -> bool {
    loop {
        match decoder.decode(buf) {
            Ok(Decoded::Data(data)) => {
                if chunks.send(Ok(Frame::data(data))).await.is_err() {
                    return false; // the pipeline no longer wants it
                }
            }
            Ok(Decoded::Done) => {
                if let Some(trailers) = decoder.trailers() {
                    let _ = chunks.send(Ok(Frame::trailers(trailers))).await;
                }
                return true;
            }
            Ok(Decoded::NeedMore) => {
                if expect_continue {
                    expect_continue = false;
                    if io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                        return false;
                    }
                    let _ = io.flush().await;
                }
                buf.reserve(READ_SIZE);
                match io.read_buf(buf).await {
                    Ok(0) => {
                        let err = decoder.eof().err().unwrap_or(BodyError::Truncated);
                        let _ = chunks.send(Err(err)).await;
                        return false;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let _ = chunks.send(Err(BodyError::Truncated)).await;
                        return false;
                    }
                }
            }
            Err(err) => {
                let _ = chunks.send(Err(err)).await;
                return false;
            }
        }
    }
}

/// Answers a request the parser refused, counts and logs it.
async fn refuse<S: ClientIo>(io: &mut S, cx: &Session, refused: Refused) {
    let status = refused.status;
    let snapshot = cx.snapshot.load();
    let page = snapshot.error_pages(&cx.listener.name).and_then(|pages| pages.page(status.as_u16()));
    let mut answer =
        format!("HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or("")).into_bytes();
    match page {
        Some((content_type, body)) => {
            answer.extend_from_slice(b"content-type: ");
            answer.extend_from_slice(content_type.as_bytes());
            answer.extend_from_slice(
                format!("\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).as_bytes(),
            );
            answer.extend_from_slice(&body);
        }
        None => answer.extend_from_slice(b"content-length: 0\r\nconnection: close\r\n\r\n"),
    }
    let _ = io.write_all(&answer).await;
    let _ = io.shutdown().await;
    cx.forwarder.metrics.parser_refused(&cx.listener.name, status.as_u16());
    if cx.listener.access_log {
        let (format, filter) = (cx.listener.access_log_format, cx.listener.access_log_filter.as_ref());
        access_log::refused(&cx.conn, status.as_u16(), refused.reason, format, filter);
    }
}

/// What ended an idle connection's wait.
enum Woken {
    /// The client sent something (or closed).
    Read(io::Result<usize>),
    /// Evicted, or the listener stops.
    Nudged,
    /// The connection's timer fired: the first-byte or keep-alive limit may have passed.
    Timer,
    /// The listener stopped and the grace for one more request passed.
    TimedOut,
}

/// How long a connection may wait idle for a request, and what closing it then is counted as:
/// before the first request the first-byte timeout, after one the header read timeout (and the
/// idle timeout, if shorter).
fn idle_limit(listener: &Listener, first: bool) -> (Duration, Closed) {
    match first {
        true => (listener.first_byte_timeout, Closed::FirstByte),
        false => (listener.header_read_timeout.min(listener.idle_timeout), Closed::KeepAlive),
    }
}

/// Sets the connection's timer `wait` from now, or sooner: never further ahead than the
/// keep-alive limit, so an idle wait that starts finds it due within its own limit (see `serve`).
fn rearm(timer: &mut Alarm, wait: Duration, listener: &Listener) {
    let wait = wait.min(idle_limit(listener, false).0);
    timer.set(tokio::time::Instant::now() + wait);
}

/// Waits, holding no buffer, for an idle connection's next bytes: true when some came (in
/// `buf`), false when the connection is to close (the client closed, it was evicted, or its
/// idle limit passed). A stopping listener's nudge is a wait again: once the listener stops,
/// an idle connection still gets STOP_GRACE for one more request (answered with `Connection:
/// close`); closed at once, it would race a request the client is sending (a failed request).
/// A nudge is kept until a wait takes it, so a stop cannot fall between the stop flag's reading
/// and the wait.
#[allow(clippy::manual_async_fn, reason = "an async fn keeps a second copy of its arguments")]
fn wait_idle<'a, S: ClientIo>(
    io: &'a mut S,
    buf: &'a mut BytesMut,
    cx: &'a Session,
    first: bool,
    timer: &'a mut Alarm,
) -> impl Future<Output = bool> + Send + 'a {
    async move {
        let listener = &*cx.listener;
        loop {
            *buf = BytesMut::new();
            let limit = idle_limit(listener, first).0;
            // Stopping, the grace counts from now, not from the last byte: boxed, as the
            // idle wait's future would otherwise carry its room on every connection.
            let mut grace = match *cx.stop.borrow() {
                true => Some(Box::pin(tokio::time::sleep(limit.min(crate::proxy::idle::STOP_GRACE)))),
                false => None,
            };
            let woken = std::future::poll_fn(|task| {
                match io.poll_read_when_ready(task, buf) {
                    Poll::Ready(Some(read)) => return Poll::Ready(Woken::Read(read)),
                    // TLS: its stream may hold decrypted bytes already; read into a buffer.
                    Poll::Ready(None) => {
                        buf.reserve(FIRST_READ);
                        if let Poll::Ready(read) =
                            tokio_util::io::poll_read_buf(Pin::new(&mut *io), task, buf)
                        {
                            return Poll::Ready(Woken::Read(read));
                        }
                    }
                    Poll::Pending => {}
                }
                if cx.activity.poll_nudged(task).is_ready() {
                    return Poll::Ready(Woken::Nudged);
                }
                if let Some(grace) = grace.as_mut()
                    && grace.as_mut().poll(task).is_ready()
                {
                    return Poll::Ready(Woken::TimedOut);
                }
                timer.poll(task).map(|()| Woken::Timer)
            });
            match woken.await {
                Woken::Read(Ok(0) | Err(_)) => return false,
                Woken::Read(Ok(_)) => return true,
                Woken::Nudged if cx.activity.take_eviction() => {
                    cx.forwarder.metrics.closed_idle(&listener.name, Closed::Evicted.label());
                    return false;
                }
                Woken::Nudged => continue, // the listener stops: wait again, for STOP_GRACE
                Woken::Timer
                    if let Some(left) = limit.checked_sub(cx.activity.quiet_for())
                        && !left.is_zero() =>
                {
                    rearm(timer, left, listener);
                    continue;
                }
                Woken::Timer | Woken::TimedOut => {
                    cx.forwarder.metrics.closed_idle(&listener.name, idle_limit(listener, first).1.label());
                    return false;
                }
            }
        }
    }
}

/// Reads the next request head; None when the client closed (or was refused).
///
/// Not an `async fn` (one keeps a second copy of its arguments), and a refusal is answered
/// after the loop: this future is what an idle connection waits in, so it holds no more than
/// the wait needs.
#[allow(clippy::manual_async_fn, reason = "an async fn keeps a second copy of its arguments")]
fn read_head<'a, S: ClientIo>(
    io: &'a mut S,
    buf: &'a mut BytesMut,
    cx: &'a Session,
    first: bool,
    timer: &'a mut Alarm,
) -> impl Future<Output = Result<Option<head::RequestHead>, Ended>> + Send + 'a {
    async move {
        let listener = &*cx.listener;
        let mut deadline = None;
        let refused = loop {
            if !buf.is_empty() {
                if first && (buf.starts_with(H2_PREFACE) || H2_PREFACE.starts_with(buf)) {
                    if buf.len() >= H2_PREFACE.len() {
                        return Err(Ended::Http2(std::mem::take(buf)));
                    }
                } else {
                    match head::parse_request(buf, listener.max_header_bytes.max(1024)) {
                        Ok(Some(head)) => return Ok(Some(head)),
                        Ok(None) => {}
                        Err(refused) => break refused,
                    }
                }
                // A request has started: the rest of its head must come within the timeout.
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + cx.listener.header_read_timeout);
            } else {
                match wait_idle(io, buf, cx, first, timer).await {
                    true => continue, // the head's first bytes
                    false => return Ok(None),
                }
            }
            // A request head has started and is not whole: read more of it.
            buf.reserve(READ_SIZE);
            let read = match deadline {
                Some(at) => match tokio::time::timeout_at(at, io.read_buf(buf)).await {
                    Ok(read) => read,
                    Err(_) => {
                        break Refused {
                            status: StatusCode::REQUEST_TIMEOUT,
                            reason: "request head timed out",
                        };
                    }
                },
                None => io.read_buf(buf).await,
            };
            match read {
                Ok(0) if !buf.is_empty() && deadline.is_some() => {
                    break Refused { status: StatusCode::BAD_REQUEST, reason: "incomplete request head" };
                }
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        };
        Box::pin(refuse(io, cx, refused)).await;
        Ok(None)
    }
}

/// Serves requests on `io` until either side closes; gives the stream and the session back.
///
/// Not an `async fn`: one would keep a second copy of its arguments in the future, and this
/// future is most of what an idle connection holds.
#[allow(clippy::manual_async_fn, reason = "an async fn keeps a second copy of its arguments")]
pub fn serve<S: ClientIo>(mut io: S, cx: Session) -> impl Future<Output = (S, Ended, Session)> + Send {
    async move {
        let mut buf = BytesMut::new();
        let mut first = true;
        // The connection's one timer, for its idle waits and its exchanges' stream idle timeout,
        // kept registered for its life: a timer made and dropped per wait cost 2-6% of the rate
        // (the wheel's insert and removal). It is not set per request: when it fires, the time
        // since the last byte says whether the limit passed, and if not it is set again for
        // what is left. It is never set further ahead than the keep-alive limit, so an idle wait
        // finds it due within that wait's limit.
        let first_limit = idle_limit(&cx.listener, true).0.min(idle_limit(&cx.listener, false).0);
        let mut timer = Alarm::new(tokio::time::Instant::now() + first_limit);
        loop {
            // One request and its answer run boxed: an idle connection carries none of their state.
            let exchanged = match read_head(&mut io, &mut buf, &cx, first, &mut timer).await {
                Ok(Some(head)) => boxed(|| exchange(&mut io, &mut buf, &cx, head)),
                Ok(None) => return (io, Ended::Closed, cx),
                Err(ended) => return (io, ended, cx),
            };
            first = false;
            match watch_exchange(exchanged, &mut timer, &cx.activity, &cx.listener).await {
                Next::Request => {}
                Next::Close => {
                    let _ = io.shutdown().await;
                    return (io, Ended::Closed, cx);
                }
                Next::Closed => return (io, Ended::Closed, cx),
                Next::StreamIdle => {
                    cx.forwarder.metrics.closed_idle(&cx.listener.name, Closed::StreamIdle.label());
                    return (io, Ended::Closed, cx);
                }
            }
        }
    }
}

/// Runs an exchange until it ends, or until its connection has moved no byte either way for
/// `limit` (a client that stopped reading its answer or sending its body, a backend that stalled
/// mid-answer, a silent tunnel): then the request is given up and the connection closed.
/// `timer` (the connection's) is set again for what is left if bytes moved meanwhile.
async fn watch_exchange(
    mut exchanged: Pin<Box<impl Future<Output = Next>>>,
    timer: &mut Alarm,
    activity: &Activity,
    listener: &Listener,
) -> Next {
    let limit = listener.stream_idle_timeout;
    std::future::poll_fn(|task| {
        if let Poll::Ready(next) = exchanged.as_mut().poll(task) {
            return Poll::Ready(next);
        }
        while timer.poll(task).is_ready() {
            let quiet = activity.quiet_for();
            if quiet >= limit {
                return Poll::Ready(Next::StreamIdle);
            }
            rearm(timer, limit - quiet, listener);
        }
        Poll::Pending
    })
    .await
}

/// What the connection does after an exchange.
enum Next {
    /// Read the next request.
    Request,
    /// Close it (a body not read to its end, `Connection: close`, the listener stopping).
    Close,
    /// Already over (a tunnel after `101 Switching Protocols` ended).
    Closed,
    /// Given up: no byte moved for the stream idle timeout.
    StreamIdle,
}

/// One request: handed to the pipeline (its body pumped from the connection meanwhile), then
/// the answer written.
async fn exchange<S: ClientIo>(
    io: &mut S,
    buf: &mut BytesMut,
    cx: &Session,
    head: head::RequestHead,
) -> Next {
    let busy = cx.activity.start();
    let head::RequestHead { method, uri, version, headers, framing, keep_alive, expect_continue } = head;
    let mut decoder = Decoder::new(framing);
    let left = match framing {
        Framing::Length(n) => Some(n),
        Framing::Empty => Some(0),
        _ => None,
    };
    let (body, chunks) = if decoder.is_done() {
        (body::empty(), None)
    } else {
        let (tx, rx) = mpsc::channel(BODY_QUEUE);
        (RequestBody { chunks: rx, left }.boxed(), Some(tx))
    };
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    // Inside the exchange's own box (`serve`): no second allocation for the pipeline's future.
    let mut handled = std::pin::pin!(cx.forwarder.clone().handle(
        request,
        cx.snapshot.load_full(),
        cx.listener.clone(),
        cx.conn.clone(),
    ));
    // Interim answers go out while the pipeline waits, once the body is read (the stream is
    // the pump's until then), and before the final answer.
    let interim = &cx.conn.interim;
    let mut handled = 'answered: {
        if let Some(chunks) = chunks {
            let mut pumped = Box::pin(pump(io, buf, &mut decoder, chunks, expect_continue));
            tokio::select! {
                biased;
                answer = &mut handled => break 'answered answer,
                _ = &mut pumped => {}
            }
        }
        loop {
            match answer_or_interim(handled.as_mut(), interim).await {
                Some(answer) => break answer,
                None => relay_interim(io, interim, version).await,
            }
        }
    };
    if interim.waiting() {
        relay_interim(io, interim, version).await;
    }
    // A body not read to its end leaves the stream unusable for another request; a stopping
    // listener's connections close, and so does one past its `max_connection_age_ms`.
    let retired = cx.listener.max_connection_age.is_some() && cx.activity.retired();
    let keep_alive = keep_alive && decoder.is_done() && !*cx.stop.borrow() && !retired;
    let beside = encode::Beside { request_id: handled.request_id.as_bytes(), via: handled.via };
    let written = write_response(io, &method, version, handled.response, beside, keep_alive).await;
    drop(handled.in_flight);
    // Counted and logged as the client got it.
    if written.broke {
        handled.counted.status = StatusCode::BAD_GATEWAY.as_u16();
        if let Some(entry) = &mut handled.entry {
            entry.status = StatusCode::BAD_GATEWAY.as_u16();
            entry.reason = Some(BROKE);
        }
    }
    drop(handled.counted);
    if let Some(entry) = &handled.entry {
        entry.write(&cx.conn, written.bytes);
    }
    if let Some(switched) = written.switched {
        tunnel(io, buf, switched).await;
        drop(busy);
        return Next::Closed;
    }
    drop(busy);
    if written.keep_alive { Next::Request } else { Next::Close }
}

/// The pipeline's answer, or None when interim answers wait first. They are put there only
/// while the pipeline's future is polled, here (same task, same poll): no waker is needed.
fn answer_or_interim<'a, F: Future>(
    mut handled: Pin<&'a mut F>,
    interim: &'a Interim,
) -> impl Future<Output = Option<F::Output>> + 'a {
    std::future::poll_fn(move |task| match handled.as_mut().poll(task) {
        Poll::Ready(answer) => Poll::Ready(Some(answer)),
        Poll::Pending if interim.waiting() => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    })
}

/// Writes the interim answers waiting, their hop-by-hop fields left out. An HTTP/1.0 client
/// gets none (RFC 9110 §15.2). A failed write is left for the final answer's to find.
async fn relay_interim<S: ClientIo>(io: &mut S, interim: &Interim, version: Version) {
    let heads = interim.take();
    if heads.is_empty() || version == Version::HTTP_10 {
        return;
    }
    let mut out = Vec::new();
    for (status, mut fields) in heads {
        headers::strip_hop_by_hop(&mut fields, false);
        encode::interim_head(&mut out, status, &fields);
    }
    if io.write_all(&out).await.is_ok() {
        let _ = io.flush().await;
    }
}

/// After `101 Switching Protocols`: bytes both ways until either side closes (or the stream
/// idle timeout: `serve`).
async fn tunnel<S: ClientIo>(io: &mut S, buf: &mut BytesMut, switched: Switched) {
    let Some(conn) = switched.0.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
    let (mut upstream, read_ahead) = conn.into_parts();
    if !read_ahead.is_empty() && io.write_all(&read_ahead).await.is_err() {
        return;
    }
    if !buf.is_empty() && upstream.write_all(buf).await.is_err() {
        return;
    }
    buf.clear();
    let _ = io.flush().await;
    let _ = tokio::io::copy_bidirectional(io, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An exchange that stalls is given up once its connection has been quiet for the limit,
    /// counted from the last byte, and one that ends is left alone; the timer is kept for the
    /// next exchange. It is never set further ahead than the keep-alive limit (100 ms here), so
    /// it fires more often than the stream limit, and finds the exchange still moving.
    #[tokio::test]
    async fn a_stalled_exchange_is_given_up_after_the_stream_idle_timeout() {
        let activity = Arc::new(Activity::default());
        let limit = Duration::from_millis(150);
        let text = "[dataplane]\ninterface = \"lo\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
                    stream_idle_timeout_ms = 150\nheader_read_timeout_ms = 100\n";
        let listener =
            crate::config::Config::parse(std::path::Path::new("t.toml"), text).unwrap().listeners.remove(0);
        let mut timer = Alarm::new(tokio::time::Instant::now() + limit);
        let done = watch_exchange(Box::pin(async { Next::Request }), &mut timer, &activity, &listener).await;
        assert!(matches!(done, Next::Request));
        // Bytes move for 200 ms, then nothing: given up from 350 ms.
        let started = std::time::Instant::now();
        let bytes = activity.clone();
        tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = bytes.start(); // a request's end marks the connection active
            }
        });
        let stalled =
            watch_exchange(Box::pin(std::future::pending()), &mut timer, &activity, &listener).await;
        assert!(matches!(stalled, Next::StreamIdle));
        assert!(started.elapsed() >= Duration::from_millis(300), "given up after {:?}", started.elapsed());
    }

    /// An idle plain connection waits without a buffer and reads only when a byte comes.
    #[tokio::test]
    async fn a_silent_plain_connection_waits_without_reading() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut stream = Watched::new(accepted, Arc::new(Activity::default()));
        let mut buf = BytesMut::new();
        let waited = tokio::time::timeout(
            Duration::from_millis(200),
            std::future::poll_fn(|cx| stream.poll_read_when_ready(cx, &mut buf)),
        )
        .await;
        assert!(waited.is_err() && buf.capacity() == 0, "read before the client sent a byte");
        tokio::io::AsyncWriteExt::write_all(&mut { client }, b"GET").await.unwrap();
        let read = std::future::poll_fn(|cx| stream.poll_read_when_ready(cx, &mut buf));
        let read = tokio::time::timeout(Duration::from_secs(2), read).await.unwrap();
        assert_eq!((read.unwrap().unwrap(), &buf[..]), (3, &b"GET"[..]));
    }
}
