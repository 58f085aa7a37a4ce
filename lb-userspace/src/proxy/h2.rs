//! HTTP/2 from clients on the h2 crate: one task drives a connection and all of its streams'
//! requests (no task per stream), and writes each answer's body under the stream's flow control.
//!
//! hyper's HTTP/2 server spawns a task for every stream and wraps each request and answer in
//! its own types; here a stream is a future in the connection's `FuturesUnordered`, polled
//! before the connection so that the answers it finishes go out in the connection's next write.
use std::{
    future::{Future, poll_fn},
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::{
    Reason, RecvStream, SendStream,
    server::{Builder, Connection, Handshake, SendResponse},
};
use http_body_util::BodyExt;
use hyper::{
    Request, Response,
    body::{Body as HttpBody, Frame},
    header::{self, HeaderValue},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{
    config::Listener,
    proxy::{
        body::{self, Body},
        clock,
        date::date,
        phase::{guard::Malformed, headers},
        turn::Turn,
    },
};

/// The connection's settings (hyper's defaults for its server, which Sluice used before).
const WINDOW: u32 = 1024 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_STREAMS: u32 = 200;
const MAX_LOCAL_RESETS: usize = 1024;
/// h2's own default, said here: streams reset before they are taken up.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Rapid reset (CVE-2023-44487): a client that opens streams and resets each before its
/// answer sets backends working on requests nobody waits for, unbounded by MAX_STREAMS (a
/// reset stream no longer counts). Once a connection has opened this many streams, it is cut
/// (GOAWAY ENHANCE_YOUR_CALM) if more than half were reset before their answer and within
/// EARLY_RESET_MS of their start, as Envoy does with its premature resets. h2 itself cuts a
/// connection whose streams are reset before they are accepted (MAX_PENDING_ACCEPT_RESETS), but
/// a client that waits for the accept passes that check.
const RESETS_JUDGED_AFTER: u32 = 500;
/// A reset this soon after a stream began counts as early (a long poll given up later does not).
const EARLY_RESET_MS: u64 = 1000;
/// The largest last chunk of an answer's body handed to h2 before the stream has window for
/// it (smaller answers skip the wait; h2 holds the bytes until it may send them).
const SMALL_LAST_CHUNK: usize = 4 * 1024;

/// The h2 settings of a listener.
pub fn builder(listener: &Listener) -> Builder {
    let mut builder = Builder::new();
    builder
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(listener.max_header_bytes as u32)
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(MAX_STREAMS);
    builder
}

/// A request's body: its DATA frames (their flow-control credit given back as each is read),
/// then its trailers.
struct Incoming {
    recv: RecvStream,
    data_done: bool,
}

impl HttpBody for Incoming {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(err) => Poll::Ready(Some(Err(err.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

/// A request as the pipeline takes it: a request that ends with its head (most) has an empty
/// body, which needs no box; its cookies in one field. A field value that begins or ends with a
/// space or tab makes it malformed (RFC 9113 §8.2.1), which h2 lets through: it is marked for
/// the guard to refuse (400, logged and counted), as nghttp2, and so Envoy, refuse it. An
/// HTTP/1.1 backend would read such a value trimmed where the proxy's own steps read it whole.
fn request(mut request: Request<RecvStream>) -> Request<Body> {
    let (mut cookies, mut padded) = (0, false);
    for (name, value) in request.headers() {
        if let (Some(first), Some(last)) = (value.as_bytes().first(), value.as_bytes().last()) {
            padded |= matches!(first, b' ' | b'\t') || matches!(last, b' ' | b'\t');
        }
        cookies += usize::from(name == header::COOKIE);
    }
    if padded {
        request.extensions_mut().insert(Malformed("a field value begins or ends with whitespace"));
    }
    if cookies > 1 {
        join_cookies(request.headers_mut());
    }
    request.map(|recv| match recv.is_end_stream() {
        true => body::empty(),
        false => Incoming { recv, data_done: false }.boxed(),
    })
}

/// Joins a request's Cookie fields into one, `; ` between them (RFC 9113 §8.2.3). HTTP/2 lets
/// a client send each cookie as a field of its own, and browsers do (HPACK then indexes each
/// apart), but an HTTP/1.1 backend expects one Cookie field (RFC 6265 §5.4) and may read only
/// the first. nginx, HAProxy and Envoy join them too.
fn join_cookies(headers: &mut hyper::HeaderMap) {
    let mut joined = Vec::new();
    for crumb in headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes) {
        if crumb.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb);
    }
    // Field values joined by `; ` are a field value.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// One connection being served: the handshake, then its streams, each served by the future
/// `handler` makes of its request and its `SendResponse` (see `answer`).
pub struct Served<T, H, S> {
    state: State<HalfClosable<T>>,
    streams: FuturesUnordered<S>,
    handler: H,
    close_pending: bool,
    /// The turn the connection's write waits after streams finished.
    turn: Turn,
    seen: Arc<Seen>,
    resets: Resets,
}

/// A connection's streams taken up and those its client reset before their answers
/// (RESETS_JUDGED_AFTER), and whether it was cut for them.
#[derive(Default)]
struct Resets {
    opened: u32,
    early: u32,
    cut: bool,
}

impl Resets {
    /// Counts a finished stream; true when the connection has just reset so many of its
    /// streams early that it must be cut.
    fn finished(&mut self, answered: Answered) -> bool {
        self.early += (answered == Answered::ResetEarly) as u32;
        let cut = !self.cut && self.opened >= RESETS_JUDGED_AFTER && self.early > self.opened / 2;
        self.cut |= cut;
        cut
    }
}

/// How a stream ended: answered (or failed on the proxy's side, or given up by the client
/// late), or reset by the client before its answer's head and within EARLY_RESET_MS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    Yes,
    ResetEarly,
}

/// How a connection ended without an error: all done, or cut for resetting its streams
/// (RESETS_JUDGED_AFTER).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Done,
    CutForResets,
}

enum State<T> {
    Handshaking(Handshake<T, Bytes>),
    Serving(Connection<T, Bytes>),
}

/// What the client's stream showed as h2 drove it.
#[derive(Default)]
struct Seen {
    /// The client has sent all it will (it half-closed).
    input_ended: AtomicBool,
    /// The last write or flush could not finish: h2 still holds bytes to send.
    write_blocked: AtomicBool,
}

/// The client's stream as h2 sees it, with the end of its input held back. h2 drops every open
/// stream when it reads the end, so a client that half-closes after its requests would get no
/// answers (nginx and HAProxy answer them); instead the end is noted in `Seen` and the read
/// stays pending, and `Served` closes once the answers are out.
struct HalfClosable<T> {
    io: T,
    seen: Arc<Seen>,
}

impl<T: AsyncRead + Unpin> AsyncRead for HalfClosable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.seen.input_ended.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        if buf.filled().len() == before && buf.remaining() > 0 {
            // Nothing more will come, so nothing needs waking: `Served` looks at the flag
            // before it waits.
            self.seen.input_ended.store(true, Ordering::Relaxed);
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> HalfClosable<T> {
    fn blocked_unless_ready<R>(&self, polled: Poll<R>) -> Poll<R> {
        self.seen.write_blocked.store(polled.is_pending(), Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HalfClosable<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.blocked_unless_ready(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.blocked_unless_ready(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.blocked_unless_ready(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<T, H, S> Served<T, H, S>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<Body>, SendResponse<Bytes>) -> S + Unpin,
    S: Future<Output = Answered>,
{
    pub fn new(io: T, builder: &Builder, handler: H) -> Self {
        let seen = Arc::new(Seen::default());
        Served {
            state: State::Handshaking(builder.handshake(HalfClosable { io, seen: seen.clone() })),
            streams: FuturesUnordered::new(),
            handler,
            close_pending: false,
            turn: Turn::default(),
            seen,
            resets: Resets::default(),
        }
    }

    /// How the connection ends on `err`: a client whose input ended and who then takes no more
    /// bytes has closed altogether, an end like the one h2 makes of its input's end.
    fn gone(&self, err: h2::Error) -> Result<Ended, h2::Error> {
        if self.resets.cut {
            Ok(Ended::CutForResets)
        } else if self.seen.input_ended.load(Ordering::Relaxed) && err.is_io() {
            Ok(Ended::Done)
        } else {
            Err(err)
        }
    }

    /// The client half-closed and everything it asked for is answered: its streams are done
    /// and h2 has written all it holds (what waits for window the client can no longer give).
    fn answered_all(&self) -> bool {
        self.seen.input_ended.load(Ordering::Relaxed)
            && self.streams.is_empty()
            && !self.seen.write_blocked.load(Ordering::Relaxed)
    }

    /// GOAWAY: no new streams; the open ones finish.
    pub fn graceful_shutdown(&mut self) {
        match &mut self.state {
            State::Handshaking(_) => self.close_pending = true,
            State::Serving(conn) => conn.graceful_shutdown(),
        }
    }
}

impl<T, H, S> Future for Served<T, H, S>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<Body>, SendResponse<Bytes>) -> S + Unpin,
    S: Future<Output = Answered>,
{
    type Output = Result<Ended, h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        if let State::Handshaking(handshake) = &mut me.state {
            let Poll::Ready(conn) = Pin::new(handshake).poll(cx) else {
                // Gone before its preface was done: nothing to answer.
                return match me.seen.input_ended.load(Ordering::Relaxed) {
                    true => Poll::Ready(Ok(Ended::Done)),
                    false => Poll::Pending,
                };
            };
            let mut conn = match conn {
                Ok(conn) => conn,
                Err(err) => return Poll::Ready(me.gone(err)),
            };
            if me.close_pending {
                conn.graceful_shutdown();
            }
            me.state = State::Serving(conn);
        }
        let State::Serving(conn) = &mut me.state else { unreachable!("the handshake is done") };
        loop {
            // Streams first: what they finish is buffered before the connection writes. When
            // some finished, the write waits one turn of the worker's queue (turn.rs), so that the
            // streams (of every connection) woken by the same readiness finish first and each
            // write, and each wake-up of the client, carries more answers (h2load on the bed:
            // 73k req/s writing at once, 85k with the turn; hyper's task per stream got the same
            // batching from the queue, 83k).
            let mut finished = false;
            while let Poll::Ready(Some(answered)) = me.streams.poll_next_unpin(cx) {
                finished = true;
                if me.resets.finished(answered) {
                    // h2 writes the GOAWAY and then ends the connection (`gone`); the streams
                    // still open are dropped with it, and their upstream requests.
                    conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                }
            }
            if (finished || me.turn.waiting()) && me.turn.poll(cx).is_pending() {
                return Poll::Pending;
            }
            let mut accepted = false;
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((head, respond)))) => {
                        me.streams.push((me.handler)(request(head), respond));
                        me.resets.opened = me.resets.opened.saturating_add(1);
                        accepted = true;
                    }
                    Poll::Ready(Some(Err(err))) => return Poll::Ready(me.gone(err)),
                    Poll::Ready(None) if me.resets.cut => return Poll::Ready(Ok(Ended::CutForResets)),
                    Poll::Ready(None) => return Poll::Ready(Ok(Ended::Done)),
                    Poll::Pending => break,
                }
            }
            if !accepted {
                return match me.answered_all() {
                    true => Poll::Ready(Ok(Ended::Done)),
                    false => Poll::Pending,
                };
            }
        }
    }
}

/// Serves one stream: its answer (given up if the client resets the stream first), then the
/// answer's body.
///
/// This future is moved into the connection's set of streams for every request, so what it
/// holds across its waits is kept small: the head is sent by a plain function, and the body's
/// state is a `Sending` (an async block would keep room for every local it ever had).
pub async fn answer<F, B>(answer: F, mut respond: SendResponse<Bytes>) -> Answered
where
    F: Future<Output = Response<B>>,
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut answer = std::pin::pin!(answer);
    let started_ms = clock::coarse_ms();
    let response = poll_fn(|cx| {
        if let Poll::Ready(response) = answer.as_mut().poll(cx) {
            return Poll::Ready(Ok(response));
        }
        // Not ready: a RST_STREAM from the client cancels the request.
        match respond.poll_reset(cx) {
            Poll::Ready(Ok(_)) if clock::coarse_ms().saturating_sub(started_ms) < EARLY_RESET_MS => {
                Poll::Ready(Err(Answered::ResetEarly))
            }
            Poll::Ready(Ok(_)) => Poll::Ready(Err(Answered::Yes)),
            // The connection failed: it ends, whatever is counted.
            Poll::Ready(Err(_)) => Poll::Ready(Err(Answered::Yes)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let response = match response {
        Ok(response) => response,
        Err(answered) => return answered,
    };
    if let Some(sending) = send_head(response, &mut respond) {
        sending.await;
    }
    Answered::Yes
}

/// Sends the answer's head; what is left to send of its body, if anything.
fn send_head<B>(response: Response<B>, respond: &mut SendResponse<Bytes>) -> Option<Sending<B>>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    let (mut head, body) = response.into_parts();
    // Connection-specific fields are not allowed in HTTP/2 (RFC 9113 §8.2.2; h2 refuses an
    // answer with any): a backend's HTTP/1.1 answer may have some.
    headers::strip_hop_by_hop(&mut head.headers, false);
    // Date and Content-Length found in one pass over the names (a lookup hashes its name).
    let (mut dated, mut sized) = (false, false);
    for name in head.headers.keys() {
        dated |= name == header::DATE;
        sized |= name == header::CONTENT_LENGTH;
    }
    if !dated {
        head.headers.insert(header::DATE, date());
    }
    let end = body.is_end_stream();
    if !end
        && !sized
        && let Some(length) = body.size_hint().exact()
    {
        head.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(send) => (!end).then_some(Sending { body, send, waiting: None }),
        Err(err) => {
            log::debug!("HTTP/2 answer: {err}");
            respond.send_reset(Reason::INTERNAL_ERROR);
            None
        }
    }
}

/// An answer's body being written to its stream, a frame at a time as the stream's window
/// allows; the stream is reset if the body fails.
struct Sending<B> {
    body: B,
    send: SendStream<Bytes>,
    /// A chunk read from the body, waiting for window.
    waiting: Option<(Bytes, bool)>,
}

impl<B> Future for Sending<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let me = self.get_mut();
        if let Err(err) = ready!(me.poll_send(cx)) {
            log::debug!("HTTP/2 answer body: {err}");
            me.send.send_reset(Reason::INTERNAL_ERROR);
        }
        Poll::Ready(())
    }
}

impl<B> Sending<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        let Sending { body, send, waiting } = self;
        loop {
            if let Some((data, end)) = waiting.take() {
                // Wait for window before handing h2 the chunk (it would buffer it all).
                while send.capacity() == 0 {
                    match send.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(0))) => {}
                        Poll::Ready(Some(Ok(_))) => break,
                        Poll::Ready(Some(Err(err))) => return Poll::Ready(Err(err.to_string())),
                        Poll::Ready(None) => return Poll::Ready(Err("stream closed".into())),
                        Poll::Pending => {
                            *waiting = Some((data, end));
                            return reset_or_pending(send, cx);
                        }
                    }
                }
                send.send_data(data, end).map_err(|e| e.to_string())?;
                if end {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let frame = match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => return reset_or_pending(send, cx),
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = body.is_end_stream();
                        // An empty chunk, or a small last one (most answers' whole body), goes
                        // to h2 as it is: h2 holds it until the window allows, at most
                        // SMALL_LAST_CHUNK a stream. Others wait for window first.
                        if data.remaining() == 0 || (end && data.remaining() <= SMALL_LAST_CHUNK) {
                            send.send_data(data, end).map_err(|e| e.to_string())?;
                            if end {
                                return Poll::Ready(Ok(()));
                            }
                        } else {
                            // A claim of one byte: h2 raises it to the chunk's length as it sends.
                            send.reserve_capacity(1);
                            *waiting = Some((data, end));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            send.reserve_capacity(0);
                            send.send_trailers(trailers).map_err(|e| e.to_string())?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(err)) => return Poll::Ready(Err(err.to_string())),
                None => {
                    send.send_data(Bytes::new(), true).map_err(|e| e.to_string())?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// Pending, with the stream's reset registered: a RST_STREAM from the client ends a wait for
/// the body or for window. (A body that is ready is sent without asking: h2 refuses data for
/// a stream already reset.)
fn reset_or_pending(send: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
    match send.poll_reset(cx) {
        Poll::Ready(reason) => Poll::Ready(Err(format!("stream reset by the client: {reason:?}"))),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hyper::HeaderMap;

    use super::*;

    /// Serves one connection with an echo: the request's body and trailers back, with a
    /// connection field the stream must strip.
    fn echo(io: tokio::io::DuplexStream) -> impl Future<Output = Result<Ended, h2::Error>> {
        use http_body_util::BodyExt;
        let mut builder = Builder::new();
        builder.initial_window_size(WINDOW).initial_connection_window_size(WINDOW);
        Served::new(io, &builder, |request: Request<Body>, respond| {
            let echoed = async move {
                let collected = request.into_body().collect().await.expect("the request's body");
                let trailers = collected.trailers().cloned();
                let body = collected.to_bytes();
                let mut frames = vec![Ok::<_, std::convert::Infallible>(Frame::data(body))];
                if let Some(trailers) = trailers {
                    frames.push(Ok(Frame::trailers(trailers)));
                }
                let mut response =
                    Response::new(http_body_util::StreamBody::new(futures_util::stream::iter(frames)));
                response.headers_mut().insert(header::CONNECTION, "close".parse().unwrap());
                response
            };
            answer(echoed, respond)
        })
    }

    #[tokio::test]
    async fn an_answer_of_known_size_says_its_length_once_and_is_dated() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = Served::new(server_io, &Builder::new(), |request: Request<Body>, respond| {
            let answered = async move {
                let mut response = Response::new(http_body_util::Full::new(Bytes::from_static(b"hello")));
                if request.uri().path() == "/sized" {
                    response.headers_mut().insert(header::CONTENT_LENGTH, "5".parse().unwrap());
                }
                response
            };
            answer(answered, respond)
        });
        let server = tokio::spawn(server);
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        for path in ["/sized", "/unsized"] {
            let request = Request::get(format!("http://test{path}")).body(()).unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            let response = tokio::time::timeout(Duration::from_secs(5), response).await.unwrap().unwrap();
            let lengths: Vec<_> = response.headers().get_all(header::CONTENT_LENGTH).iter().collect();
            assert_eq!(lengths, ["5"], "{path}");
            assert_eq!(response.headers().get_all(header::DATE).iter().count(), 1, "{path}");
        }
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    }

    #[test]
    fn cookie_crumbs_are_joined_into_one_field() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("only=1"));
        for crumb in ["b=2", "", "c=3; d=4"] {
            headers.append(header::COOKIE, HeaderValue::from_static(crumb));
        }
        join_cookies(&mut headers);
        assert_eq!(headers.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["only=1; b=2; c=3; d=4"]);
    }

    #[tokio::test]
    async fn a_request_s_cookie_crumbs_reach_the_pipeline_as_one_field() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = Served::new(server_io, &Builder::new(), |request: Request<Body>, respond| {
            let cookies: Vec<_> = request.headers().get_all(header::COOKIE).iter().cloned().collect();
            let answered = async move {
                let said = cookies.iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>().join("|");
                Response::new(http_body_util::Full::new(Bytes::from(said)))
            };
            answer(answered, respond)
        });
        let server = tokio::spawn(server);
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        let mut request = Request::get("http://test/").body(()).unwrap();
        for crumb in ["a=1", "b=2"] {
            request.headers_mut().append(header::COOKIE, HeaderValue::from_static(crumb));
        }
        let (response, _) = client.send_request(request, true).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), response).await.unwrap().unwrap();
        let mut body = response.into_body();
        let mut said = Vec::new();
        while let Some(chunk) = body.data().await {
            said.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(said, b"a=1; b=2");
        drop((body, client));
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_request_with_a_padded_field_value_is_marked_malformed() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = Served::new(server_io, &Builder::new(), |request: Request<Body>, respond| {
            let status = match request.extensions().get::<Malformed>() {
                Some(_) => 400,
                None => 200,
            };
            let answered = async move {
                let mut response = Response::new(http_body_util::Full::new(Bytes::new()));
                *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                response
            };
            answer(answered, respond)
        });
        let server = tokio::spawn(server);
        let (client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        for (value, status) in [(" v", 400), ("v\t", 400), ("v", 200), ("a b", 200), ("", 200)] {
            let mut request = Request::get("http://test/").body(()).unwrap();
            request.headers_mut().insert("x-field", HeaderValue::from_static(value));
            let (response, _) = client.clone().ready().await.unwrap().send_request(request, true).unwrap();
            let response = tokio::time::timeout(Duration::from_secs(5), response).await.unwrap().unwrap();
            assert_eq!(response.status(), status, "{value:?}");
        }
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn bodies_larger_than_the_windows_go_both_ways_with_trailers() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(echo(server_io));
        // The client's default windows (64 KiB) hold the answer back until it reads.
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        let body: Bytes = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
        let request = Request::post("http://test/echo").body(()).unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        let sending = {
            let body = body.clone();
            tokio::spawn(async move {
                let mut rest = body;
                while !rest.is_empty() {
                    send.reserve_capacity(rest.len().min(64 * 1024));
                    let granted = poll_fn(|cx| send.poll_capacity(cx)).await.unwrap().unwrap();
                    send.send_data(rest.split_to(granted.min(rest.len())), false).unwrap();
                }
                let mut trailers = HeaderMap::new();
                trailers.insert("x-sum", "42".parse().unwrap());
                send.send_trailers(trailers).unwrap();
            })
        };
        // A side that did not give its window back would stall here.
        let response = tokio::time::timeout(Duration::from_secs(10), response).await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key(header::DATE));
        assert!(!response.headers().contains_key(header::CONNECTION));
        let mut recv = response.into_body();
        let mut echoed = Vec::new();
        while let Some(data) = tokio::time::timeout(Duration::from_secs(10), recv.data()).await.unwrap() {
            let data = data.unwrap();
            recv.flow_control().release_capacity(data.len()).unwrap();
            echoed.extend_from_slice(&data);
        }
        assert!(echoed == body, "the echo differs ({} bytes of {})", echoed.len(), body.len());
        let trailers = recv.trailers().await.unwrap().expect("trailers");
        assert_eq!(trailers["x-sum"], "42");
        sending.await.unwrap();
        drop((recv, client));
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(echo(server_io));
        // The preface, empty SETTINGS, a GET on stream 1 (HPACK: GET, http, `/`, `:authority`
        // a), then the end of the client's input.
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
        input.extend(b"\0\0\x06\x01\x05\0\0\0\x01\x82\x86\x84\x01\x01a");
        client.write_all(&input).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got)).await.unwrap().unwrap();
        assert!(crate::proxy::test_bed::answered_200(&got), "no answer in {got:?}");
        // And the connection ended once it was answered.
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_reset_stream_drops_its_answer() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let mut dropped_tx = Some(dropped_tx);
        let builder = Builder::new();
        let server = Served::new(server_io, &builder, move |_request: Request<Body>, respond| {
            // An answer that never comes; its end shows as the channel's sender dropped.
            let dropped = dropped_tx.take();
            answer(
                async move {
                    let _dropped = dropped;
                    std::future::pending::<()>().await;
                    Response::new(crate::proxy::body::empty())
                },
                respond,
            )
        });
        let server = tokio::spawn(server);
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        let (_response, mut send) =
            client.send_request(Request::get("http://test/").body(()).unwrap(), true).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        send.send_reset(Reason::CANCEL);
        let dropped = tokio::time::timeout(Duration::from_secs(5), dropped_rx).await;
        assert!(dropped.is_ok(), "the reset stream's answer is still held");
        drop(client);
        server.abort();
    }

    /// A connection whose handler counts its streams and answers those to `/now` at once, the
    /// others never.
    fn counting(
        io: tokio::io::DuplexStream,
        accepted: Arc<std::sync::atomic::AtomicUsize>,
    ) -> tokio::task::JoinHandle<Result<Ended, h2::Error>> {
        tokio::spawn(Served::new(io, &builder(&test_listener()), move |request: Request<Body>, respond| {
            accepted.fetch_add(1, Ordering::Relaxed);
            let now = request.uri().path() == "/now";
            let answered = async move {
                if !now {
                    std::future::pending::<()>().await;
                }
                Response::new(crate::proxy::body::empty())
            };
            answer(answered, respond)
        }))
    }

    fn test_listener() -> Listener {
        let text =
            "[dataplane]\ninterface = \"lo\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n";
        crate::config::Config::parse(std::path::Path::new("t.toml"), text).unwrap().listeners[0].clone()
    }

    /// Opens a stream to each of `paths`, waits until the server has taken them all up (so h2's
    /// own check of streams reset before that does not apply) and `held` more, then resets those
    /// not to `/now` before their answers; false once the connection refuses new streams.
    async fn opened_then_reset(
        client: &mut h2::client::SendRequest<Bytes>,
        accepted: &std::sync::atomic::AtomicUsize,
        paths: impl Iterator<Item = &'static str>,
        held: Duration,
    ) -> bool {
        let mut sent = Vec::new();
        for path in paths {
            // Ready: under the server's limit on streams (the streams just reset have left it).
            match tokio::time::timeout(Duration::from_secs(2), client.clone().ready()).await {
                Ok(Ok(ready)) => *client = ready,
                _ => return false,
            }
            let request = Request::get(format!("http://test{path}")).body(()).unwrap();
            match client.send_request(request, true) {
                Ok((response, send)) => sent.push((path, response, send)),
                Err(_) => return false,
            }
        }
        let target = accepted.load(Ordering::Relaxed) + sent.len();
        let taken_up = async {
            while accepted.load(Ordering::Relaxed) < target {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(2), taken_up).await.is_err() {
            return false;
        }
        tokio::time::sleep(held).await;
        for (path, response, mut send) in sent {
            match path {
                "/now" => assert_eq!(response.await.expect("an answer").status(), 200),
                _ => send.send_reset(Reason::CANCEL),
            }
        }
        true
    }

    #[tokio::test]
    async fn a_client_that_resets_most_streams_before_their_answers_is_cut() {
        let (client_io, server_io) = tokio::io::duplex(1024 * 1024);
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = counting(server_io, accepted.clone());
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        let connection = tokio::spawn(connection);
        let mut batches = 0;
        let never = || std::iter::repeat_n("/never", 100);
        while batches < 20 && opened_then_reset(&mut client, &accepted, never(), Duration::ZERO).await {
            batches += 1;
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), server).await.expect("the connection ends");
        assert_eq!(ended.unwrap().unwrap(), Ended::CutForResets);
        // Cut as its 500th stream's reset came in: no stream after it was taken up.
        let taken = accepted.load(Ordering::Relaxed);
        assert!(
            (RESETS_JUDGED_AFTER as usize..=RESETS_JUDGED_AFTER as usize + 100).contains(&taken),
            "{taken}"
        );
        let err = connection.await.unwrap().expect_err("a GOAWAY");
        assert_eq!(err.reason(), Some(Reason::ENHANCE_YOUR_CALM), "{err}");
    }

    #[tokio::test]
    async fn a_client_that_resets_some_streams_keeps_its_connection() {
        let (client_io, server_io) = tokio::io::duplex(1024 * 1024);
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = counting(server_io, accepted.clone());
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        // 2,000 streams, 45% of them reset before their answers (a browser leaving pages).
        let paths = || (0..100).map(|i| if i < 45 { "/never" } else { "/now" });
        for batch in 0..20 {
            assert!(
                opened_then_reset(&mut client, &accepted, paths(), Duration::ZERO).await,
                "cut at batch {batch}"
            );
        }
        assert!(!server.is_finished());
        server.abort();
    }

    #[tokio::test]
    async fn a_client_that_gives_up_long_waits_keeps_its_connection() {
        let (client_io, server_io) = tokio::io::duplex(1024 * 1024);
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = counting(server_io, accepted.clone());
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        // 600 streams, every one reset before its answer, but each after EARLY_RESET_MS.
        let held = Duration::from_millis(EARLY_RESET_MS + 100);
        for batch in 0..3 {
            let never = std::iter::repeat_n("/never", 200);
            assert!(opened_then_reset(&mut client, &accepted, never, held).await, "cut at batch {batch}");
        }
        assert!(opened_then_reset(&mut client, &accepted, std::iter::once("/now"), Duration::ZERO).await);
        assert!(!server.is_finished());
        server.abort();
    }
}
