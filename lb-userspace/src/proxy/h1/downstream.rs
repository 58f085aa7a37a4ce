//! A client's HTTP/1.1 connection, driven in one task: read a request head, hand the request
//! to the pipeline (its body streamed from this connection while the pipeline runs), write
//! the answer's head and body with as few writes as possible, and go again while keep-alive
//! holds. An idle connection holds no buffer. Requests the parser refuses are answered,
//! counted and logged. A connection that opens with HTTP/2's preface is handed back.
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode, Version,
    body::{Body as _, Frame, SizeHint},
    header,
};
use smallvec::SmallVec;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    sync::mpsc,
};

use crate::{
    config::Listener,
    proxy::{
        access_log::{self, ClientConn},
        h1::{
            body::{BodyError, Decoded, Decoder, Framing},
            encode::{self, Out},
            head::{self, Refused},
            scratch,
            upstream::{Switched, write_all_vectored},
        },
        idle::{Activity, Closed, Watched},
        phase::{
            headers::X_REQUEST_ID,
            respond::{self, Body},
        },
        pipeline::Forwarder,
        routes::Snapshot,
        turn,
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
/// An answer's first body piece up to this size is copied behind its head and sent with it in
/// one `send`; a larger one goes beside the head (`writev`), not copied.
const SMALL_BODY: usize = 1024;

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
        let mut chunk = [0u8; FIRST_READ];
        let mut chunk = ReadBuf::new(&mut chunk);
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

/// A request body read from the connection while the pipeline consumes it.
struct RequestBody {
    chunks: mpsc::Receiver<Result<Bytes, BodyError>>,
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
            Poll::Ready(Some(Ok(data))) => {
                if let Some(left) = &mut self.left {
                    *left = left.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
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
    chunks: mpsc::Sender<Result<Bytes, BodyError>>,
    mut expect_continue: bool,
) -> bool {
    loop {
        match decoder.decode(buf) {
            Ok(Decoded::Data(data)) => {
                if chunks.send(Ok(data)).await.is_err() {
                    return false; // the pipeline no longer wants it
                }
            }
            Ok(Decoded::Done) => return true,
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
    let line = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    let _ = io.write_all(line.as_bytes()).await;
    let _ = io.shutdown().await;
    cx.forwarder.metrics.parser_refused(&cx.listener.name, status.as_u16());
    if cx.listener.access_log {
        access_log::refused(&cx.conn, status.as_u16(), refused.reason, cx.listener.access_log_format);
    }
}

/// What ended an idle connection's wait.
enum Woken {
    /// The client sent something (or closed).
    Read(io::Result<usize>),
    /// Evicted, or the listener stops.
    Nudged,
    /// The first-byte or keep-alive limit passed.
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
                // Idle: wait for a byte with no buffer held, the listener's stop, an eviction, or
                // the idle limit. Once the listener stops, an idle connection still gets
                // STOP_GRACE for one more request (answered with `Connection: close`): closed at
                // once, it would race a request the client is sending (a failed request). The
                // nudge's wait exists before the stop flag is read, so a stop cannot fall between.
                *buf = BytesMut::new();
                let mut nudged = std::pin::pin!(cx.activity.nudged());
                nudged.as_mut().enable();
                let limit = idle_limit(listener, first).0;
                let limit = match *cx.stop.borrow() {
                    true => limit.min(crate::proxy::idle::STOP_GRACE),
                    false => limit,
                };
                let mut sleep = std::pin::pin!(tokio::time::sleep(limit));
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
                    if nudged.as_mut().poll(task).is_ready() {
                        return Poll::Ready(Woken::Nudged);
                    }
                    sleep.as_mut().poll(task).map(|()| Woken::TimedOut)
                });
                match woken.await {
                    Woken::Read(Ok(0) | Err(_)) => return Ok(None),
                    Woken::Read(Ok(_)) => continue,
                    Woken::Nudged if cx.activity.take_eviction() => {
                        cx.forwarder.metrics.closed_idle(&listener.name, Closed::Evicted.label());
                        return Ok(None);
                    }
                    Woken::Nudged => continue, // the listener stops: wait again, for STOP_GRACE
                    Woken::TimedOut => {
                        cx.forwarder
                            .metrics
                            .closed_idle(&listener.name, idle_limit(listener, first).1.label());
                        return Ok(None);
                    }
                }
            }
            // A request head has started (the idle wait above has read its first bytes).
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
        // The stream idle timeout's timer, made at the first request and kept registered for the
        // connection's life: a timer made and dropped per request cost 2-6% of the rate.
        let mut stale: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            // One request and its answer run boxed: an idle connection carries none of their state.
            let exchanged = match read_head(&mut io, &mut buf, &cx, first).await {
                Ok(Some(head)) => Box::pin(exchange(&mut io, &mut buf, &cx, head)),
                Ok(None) => return (io, Ended::Closed, cx),
                Err(ended) => return (io, ended, cx),
            };
            first = false;
            let limit = cx.listener.stream_idle_timeout;
            let stale = stale.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            match watch_exchange(exchanged, stale, &cx.activity, limit).await {
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
/// `timer` fires at the earliest moment that can be, and is set again if bytes moved meanwhile.
async fn watch_exchange(
    mut exchanged: Pin<Box<impl Future<Output = Next>>>,
    timer: &mut Pin<Box<tokio::time::Sleep>>,
    activity: &Activity,
    limit: Duration,
) -> Next {
    loop {
        tokio::select! {
            biased;
            next = &mut exchanged => return next,
            () = timer.as_mut() => {
                let quiet = activity.quiet_for();
                if quiet >= limit {
                    return Next::StreamIdle;
                }
                timer.as_mut().reset(tokio::time::Instant::now() + (limit - quiet));
            }
        }
    }
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
        (respond::empty(), None)
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
    let mut handled = match chunks {
        None => handled.await,
        Some(chunks) => {
            let mut pumped = Box::pin(pump(io, buf, &mut decoder, chunks, expect_continue));
            let mut pumping = true;
            loop {
                tokio::select! {
                    biased;
                    answer = &mut handled => break answer,
                    _ = &mut pumped, if pumping => pumping = false,
                }
            }
        }
    };
    // A body not read to its end leaves the stream unusable for another request.
    let keep_alive = keep_alive && decoder.is_done() && !*cx.stop.borrow();
    let written = write_response(io, &method, version, handled.response, keep_alive).await;
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

/// What writing an answer did.
struct Written {
    bytes: u64,
    keep_alive: bool,
    /// The backend connection of a `101 Switching Protocols`.
    switched: Option<Switched>,
    /// The backend's answer broke before a byte of it was written: a 502 went instead.
    broke: bool,
}

/// The reason logged for an answer that broke before a byte of it was written.
const BROKE: &str = "upstream answer broke";

/// Writes the answer's head and body; the head and the first piece of the body go in one
/// write when the body is ready.
async fn write_response<S: ClientIo>(
    io: &mut S,
    method: &Method,
    version: Version,
    response: Response<Body>,
    keep_alive: bool,
) -> Written {
    let (mut parts, mut body) = response.into_parts();
    let mut status = parts.status;
    let switched =
        if status == StatusCode::SWITCHING_PROTOCOLS { parts.extensions.remove::<Switched>() } else { None };
    let mut keep_alive = keep_alive && !head::connection_has(&parts.headers, "close") && switched.is_none();
    let bodiless = head::answer_is_bodiless(method, status);
    let mut first = None;
    let mut done = bodiless;
    let mut broke = false;
    if !bodiless {
        let mut polled = body.frame().now_or_never();
        if let Some(Some(Err(_))) = polled {
            // Nothing is written yet: the client gets a 502 rather than a connection closed
            // with nothing on it. (A body that breaks later is cut short: the head is out.)
            (parts, body) = broke_answer(parts.headers.remove(X_REQUEST_ID));
            (status, keep_alive, broke) = (parts.status, false, true);
            polled = body.frame().now_or_never();
        }
        match polled {
            Some(Some(Ok(frame))) => first = frame.into_data().ok(),
            Some(None) => done = true,
            Some(Some(Err(_))) => return Written { bytes: 0, keep_alive: false, switched: None, broke },
            None => {}
        }
        done = done || body.is_end_stream();
    }
    let first_len = first.as_ref().map_or(0, |f| f.len() as u64);
    let out = match framing(bodiless, done, first_len, body.size_hint().exact(), version) {
        Out::Close => {
            keep_alive = false;
            Out::Close
        }
        out => out,
    };
    let kept_length = bodiless.then(|| kept_length(method, status, &parts.headers, &body)).flatten();
    let mut head = scratch::take();
    let keep_alive_10 = keep_alive && version == Version::HTTP_10;
    encode::response_head(
        &mut head,
        status,
        &parts.headers,
        out,
        kept_length.as_deref(),
        !keep_alive && switched.is_none(),
        keep_alive_10,
    );
    let mut bytes = 0u64;
    let failed = Written { bytes: 0, keep_alive: false, switched: None, broke: false };
    // Head and first piece together: a small piece is copied behind the head (one plain
    // send costs the kernel less than a writev of two pieces).
    if let Some(data) = first.take_if(|d| out != Out::Chunked && d.len() <= SMALL_BODY) {
        bytes += data.len() as u64;
        head.extend_from_slice(&data);
    }
    {
        let size;
        let mut slices: SmallVec<[io::IoSlice<'_>; 5]> = SmallVec::new();
        slices.push(io::IoSlice::new(&head));
        if let Some(data) = &first {
            bytes += data.len() as u64;
            if out == Out::Chunked && !data.is_empty() {
                size = encode::chunk_size(data.len());
                slices.push(io::IoSlice::new(size.as_bytes()));
                slices.push(io::IoSlice::new(data));
                slices.push(io::IoSlice::new(b"\r\n"));
            } else {
                slices.push(io::IoSlice::new(data));
            }
        }
        if out == Out::Chunked && done {
            slices.push(io::IoSlice::new(encode::LAST_CHUNK));
        }
        // The answers of every connection the same readiness woke are written back to back
        // (turn.rs): HTTP/1.1 89.8-92.2k -> 92.6-95.1k req/s, TLS 81.9-82.5k -> 84.0-87.3k.
        turn::one_turn().await;
        if write_all_vectored(io, &mut slices).await.is_err() {
            return failed;
        }
    }
    if !done {
        match stream_rest(io, &mut body, out, &mut bytes).await {
            Streamed::Whole => {}
            Streamed::CutUpstream => {
                return Written { bytes, keep_alive: false, switched: None, broke: false };
            }
            Streamed::WriteFailed => return failed,
        }
    }
    if io.flush().await.is_err() {
        return failed;
    }
    Written { bytes, keep_alive, switched, broke }
}

/// The 502 written instead of an answer that broke before a byte of it was, with the request's
/// ID.
fn broke_answer(request_id: Option<header::HeaderValue>) -> (hyper::http::response::Parts, Body) {
    let mut answer = respond::text(StatusCode::BAD_GATEWAY, BROKE);
    if let Some(id) = request_id {
        answer.headers_mut().insert(X_REQUEST_ID, id);
    }
    answer.into_parts()
}

/// How an answer's body is delimited on the wire: nothing for a bodiless answer, a length when
/// the whole body is known (`first_len` read, `rest` still to come), chunked for HTTP/1.1, and
/// the connection's close for HTTP/1.0 (`Out::Close`: the caller closes after it).
fn framing(bodiless: bool, done: bool, first_len: u64, rest: Option<u64>, version: Version) -> Out {
    match (bodiless, done, rest) {
        (true, _, _) => Out::None,
        (false, true, _) => Out::Length(first_len),
        (false, false, Some(rest)) => Out::Length(first_len + rest),
        _ if version == Version::HTTP_11 => Out::Chunked,
        _ => Out::Close,
    }
}

/// The Content-Length a bodiless answer keeps: HEAD and 304 say what the full answer would have
/// had (the backend's field, or a HEAD answer's known size); 204 and 1xx say nothing.
fn kept_length(method: &Method, status: StatusCode, headers: &HeaderMap, body: &Body) -> Option<Vec<u8>> {
    if status == StatusCode::NO_CONTENT || status.is_informational() {
        return None;
    }
    headers.get(header::CONTENT_LENGTH).map(|v| v.as_bytes().to_vec()).or_else(|| {
        (*method == Method::HEAD)
            .then(|| body.size_hint().exact())
            .flatten()
            .map(|n| n.to_string().into_bytes())
    })
}

/// How streaming the rest of a body ended.
enum Streamed {
    Whole,
    /// The backend's body failed: the client must see the answer end abnormally.
    CutUpstream,
    WriteFailed,
}

/// Writes the body's remaining pieces as they come (each flushed: streamed answers reach the
/// client as they are made), chunk-framed when `out` says so, then the last chunk.
async fn stream_rest<S: ClientIo>(io: &mut S, body: &mut Body, out: Out, bytes: &mut u64) -> Streamed {
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            let _ = io.flush().await;
            return Streamed::CutUpstream;
        };
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        *bytes += data.len() as u64;
        let result = if out == Out::Chunked {
            let size = encode::chunk_size(data.len());
            let mut slices =
                [io::IoSlice::new(size.as_bytes()), io::IoSlice::new(&data), io::IoSlice::new(b"\r\n")];
            write_all_vectored(io, &mut slices).await
        } else {
            io.write_all(&data).await
        };
        if result.is_err() {
            return Streamed::WriteFailed;
        }
        let _ = io.flush().await;
    }
    if out == Out::Chunked && io.write_all(encode::LAST_CHUNK).await.is_err() {
        return Streamed::WriteFailed;
    }
    Streamed::Whole
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
    /// next exchange.
    #[tokio::test]
    async fn a_stalled_exchange_is_given_up_after_the_stream_idle_timeout() {
        let activity = Arc::new(Activity::default());
        let limit = Duration::from_millis(150);
        let mut timer = Box::pin(tokio::time::sleep(limit));
        let done = watch_exchange(Box::pin(async { Next::Request }), &mut timer, &activity, limit).await;
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
        let stalled = watch_exchange(Box::pin(std::future::pending()), &mut timer, &activity, limit).await;
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

    /// A backend's answer whose body breaks before a byte of it is written reaches the client
    /// as a 502 (with the request's ID), not as a connection closed with nothing on it.
    #[tokio::test]
    async fn an_answer_that_breaks_before_a_byte_is_written_is_a_502() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut stream = Watched::new(accepted, Arc::new(Activity::default()));
        let broken = futures_util::stream::iter([Err::<hyper::body::Frame<Bytes>, _>("a bad chunk".into())]);
        let mut answer = Response::new(http_body_util::StreamBody::new(broken).boxed());
        answer.headers_mut().insert(X_REQUEST_ID, "id-1".parse().unwrap());
        let written = write_response(&mut stream, &Method::GET, Version::HTTP_11, answer, true).await;
        assert!(written.broke && !written.keep_alive);
        drop(stream);
        let mut got = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut client, &mut got).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 502"), "{got}");
        assert!(got.contains("x-request-id: id-1") && got.ends_with("upstream answer broke\n"), "{got}");
    }

    #[test]
    fn an_answer_is_framed_by_what_is_known_of_its_body() {
        let v11 = Version::HTTP_11;
        assert_eq!(framing(true, false, 0, None, v11), Out::None, "bodiless");
        assert_eq!(framing(false, true, 3, None, v11), Out::Length(3), "all of it read");
        assert_eq!(framing(false, false, 3, Some(7), v11), Out::Length(10), "its size known");
        assert_eq!(framing(false, false, 3, None, v11), Out::Chunked);
        assert_eq!(framing(false, false, 3, None, Version::HTTP_10), Out::Close);
    }

    #[test]
    fn head_and_304_answers_keep_their_length_204_does_not() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "42".parse().unwrap());
        let body = respond::full(bytes::Bytes::from_static(b"12345"));
        let kept = |method, status, headers: &HeaderMap| kept_length(&method, status, headers, &body);
        assert_eq!(kept(Method::GET, StatusCode::NOT_MODIFIED, &headers).as_deref(), Some(&b"42"[..]));
        assert_eq!(kept(Method::GET, StatusCode::NO_CONTENT, &headers), None);
        assert_eq!(kept(Method::GET, StatusCode::CONTINUE, &headers), None);
        // A HEAD answer without the field says the size its body would have had.
        assert_eq!(kept(Method::HEAD, StatusCode::OK, &HeaderMap::new()).as_deref(), Some(&b"5"[..]));
    }
}
