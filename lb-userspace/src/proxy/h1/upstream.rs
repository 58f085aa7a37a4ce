//! HTTP/1.1 to backends, plain or over TLS, driven in the request's own task: a request head
//! and body written on a pooled keep-alive connection, the response head read back, and the
//! response body cut from the same connection, which goes back to the pool when its body is
//! done. No task and no channel per connection. An idle connection the backend closed is not
//! taken (`BackendStream::is_quiet`, as it leaves the pool); one it closes while a request
//! goes out is replaced once for a request without a body.
use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque},
    io::{self, IoSlice},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{
    HeaderMap, Method, Response,
    body::{Body as _, Frame, SizeHint},
    header,
};
use smallvec::SmallVec;
use thread_local::ThreadLocal;
use tokio::io::AsyncWriteExt;

use crate::{
    config::KeepAlive,
    proxy::{
        backend_stream::{BackendStream, ConnKey, ConnectFailed, Dial, Parked, Slot},
        body::{self, Body},
        clock,
        h1::{
            body::{Decoded, Decoder},
            encode::{self, Out},
            head, scratch,
        },
        interim::{self, Interim},
    },
};

type SendError = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections kept per backend, per worker. Above the requests a worker has in flight to
/// one backend under load: 64 HTTP/2 clients with 10 streams each put ~320 on each of two
/// backends, and a cap of 256 closed and reopened ~75 connections a second (HAProxy keeps every
/// idle connection; they still go after their pool's `keepalive_timeout_ms`).
const MAX_IDLE_PER_BACKEND: usize = 1024;
/// The longest response head read from a backend.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// What one read from a backend asks for: small for the first (a head and a short body), larger
/// once a body streams.
const FIRST_READ: usize = 4 * 1024;
const READ_SIZE: usize = 16 * 1024;

/// One keep-alive connection to a backend, with what was read past the last message.
pub struct Conn {
    stream: BackendStream,
    buf: BytesMut,
    /// The requests it carried before this one.
    requests: u32,
}

impl Conn {
    fn new(stream: BackendStream) -> Conn {
        Conn { stream, buf: BytesMut::new(), requests: 0 }
    }

    /// A connection that waited in a client connection's slot.
    fn unparked(parked: Parked) -> Conn {
        Conn { stream: parked.stream, buf: BytesMut::new(), requests: parked.requests }
    }

    /// Reads more into the buffer; 0 means the backend closed.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(if self.buf.capacity() == 0 { FIRST_READ } else { READ_SIZE });
        }
        // Through AsyncRead: a short read tells tokio the socket is drained, so the next read
        // waits for epoll instead of costing an EAGAIN (try_read clears only on EAGAIN).
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    /// The socket and the bytes already read from it (after a 101 answer).
    pub fn into_parts(self) -> (BackendStream, BytesMut) {
        (self.stream, self.buf)
    }
}

/// A connection handed over after `101 Switching Protocols` (in the response's extensions).
#[derive(Clone)]
pub struct Switched(pub Arc<Mutex<Option<Conn>>>);

struct Idle {
    conn: Conn,
    /// When it is too old to be used, on the coarse clock (ms): its pool's keep-alive timeout
    /// after it went idle.
    until_ms: u64,
}

/// One worker's idle connections by backend address and TLS client (`Dial::key`), most
/// recently used last.
type IdleLists = HashMap<ConnKey, VecDeque<Idle>, foldhash::fast::RandomState>;

/// Idle keep-alive connections, each worker thread's apart: a connection is registered with
/// the reactor of the worker that opened it, so one worker's request never waits on another
/// worker's reactor (and no lock is shared between workers).
#[derive(Default)]
pub struct Pool {
    /// foldhash: two lookups a request, where SipHash's cost showed.
    idle: ThreadLocal<RefCell<IdleLists>>,
}

impl Pool {
    /// This thread's idle connections.
    fn mine(&self) -> std::cell::RefMut<'_, IdleLists> {
        self.idle.get_or_default().borrow_mut()
    }

    /// The most recently used idle connection for `key` from which the backend has said
    /// nothing since it went idle: one that closed, or sent bytes nobody asked for, is skipped.
    /// Unasked bytes would be read as the next request's answer (response desync: one
    /// client's answer given to another; `server/mutations/relayed.rs`).
    ///
    /// On a plain connection the check makes no syscall while tokio's readiness is clear
    /// (`BackendStream::is_quiet`): the short read that ended the connection's last answer
    /// cleared it (`poll_read_more`), and only an event from the reactor since (bytes, a close)
    /// sets it again, as nginx's handler on idle keep-alive connections hears them. A close the
    /// reactor has not seen yet goes unnoticed: a bodiless request is then sent again on a new
    /// connection (`send`).
    fn checkout(&self, key: ConnKey) -> Option<Conn> {
        let mut idle = self.mine();
        let list = idle.get_mut(&key)?;
        let now = clock::coarse_ms();
        while let Some(Idle { mut conn, until_ms }) = list.pop_back() {
            if now >= until_ms {
                list.clear(); // the rest are older still
                return None;
            }
            if conn.stream.is_quiet() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, key: ConnKey, conn: Conn, now: u64, until_ms: u64) {
        let mut idle = self.mine();
        let list = idle.entry(key).or_default();
        // The oldest go first: when the list is full, or when they have idled too long.
        while list.front().is_some_and(|i| now >= i.until_ms) || list.len() >= MAX_IDLE_PER_BACKEND {
            list.pop_front();
        }
        list.push_back(Idle { conn, until_ms });
    }

    /// Closes this thread's connections that have idled too long, to every backend: without it
    /// a backend no request goes to any more (left the pool, or the traffic stopped) kept its
    /// idle connections open, up to `MAX_IDLE_PER_BACKEND` descriptors each, for good.
    pub fn sweep(&self) {
        self.sweep_at(clock::coarse_ms());
    }

    /// `sweep` as of `now` (coarse ms).
    fn sweep_at(&self, now: u64) {
        self.mine().retain(|_, list| {
            list.retain(|i| now < i.until_ms);
            !list.is_empty()
        });
    }

    async fn connect(dial: Dial<'_>) -> Result<Conn, ConnectFailed> {
        Ok(Conn::new(dial.connect().await?))
    }

    /// Sends a request where `dial` says and reads the response head (the interim answers the
    /// client gets put in `interim`); the response's body reads the rest from the connection.
    /// `body` is read only once a connection is open: when none can be made
    /// ([`ConnectFailed`]), the caller still has it whole.
    #[allow(clippy::too_many_arguments, reason = "the request's parts, and where its interim answers go")]
    pub async fn send(
        self: &Arc<Self>,
        dial: Dial<'_>,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        added: encode::Added<'_>,
        body: &mut Body,
        interim: Option<&Interim>,
    ) -> Result<Response<Body>, SendError> {
        let bodiless = body.is_end_stream();
        // Found in a pass over the request's few fields: a lookup hashes the name (~140
        // instructions a request, `bench l7-instructions`), and most requests have no length.
        let length =
            headers.iter().find_map(|(name, value)| (name == header::CONTENT_LENGTH).then_some(value));
        let out = if bodiless {
            // A client's `Content-Length: 0` is kept as it came.
            if length.is_some_and(|v| v.as_bytes() == b"0") { Out::Length(0) } else { Out::None }
        } else {
            match length.and_then(|v| v.to_str().ok()?.parse().ok()) {
                Some(n) => Out::Length(n),
                None => Out::Chunked,
            }
        };
        // The head is encoded into a worker's spare buffer when it is about to be written, and
        // the buffer goes back once it is: a request waiting for its answer holds none (held
        // across the waits, 64 requests in flight emptied the spares: an allocation each).
        let head = || {
            let mut head = scratch::take();
            encode::request_head(&mut head, method, target, headers, added, out);
            head
        };
        // Let the worker's other ready connections reach this point first: their requests then
        // go out back to back, and a backend woken once finds several waiting (HAProxy's loop
        // does the same). Measured: backend context switches per request 0.18 -> 0.06,
        // +9% requests/s at 64 connections (docs/performance.md).
        tokio::task::yield_now().await;
        let key = dial.key();
        // A connection that names its client in a PROXY header is that client's alone: kept by
        // its client connection, never in the worker's pool.
        let keep_alive = dial.keep_alive;
        let (reused, home) = match dial.proxy {
            None => (self.checkout(key), Home::Pool(keep_alive)),
            Some(proxy) => match proxy.kept {
                Some(kept) => {
                    let parked = kept.take(key, clock::coarse_ms());
                    (parked.map(Conn::unparked), Home::Kept(kept.slot(), keep_alive))
                }
                None => (None, Home::Closed),
            },
        };
        if bodiless {
            if let Some(mut conn) = reused
                && conn.stream.write_all_sent(&head()).await.is_ok()
            {
                match read_head(&mut conn, method, headers, interim).await {
                    Ok(Some(answer)) => return Ok(self.response(home, key, conn, answer)),
                    // Closed or reset before answering: the backend dropped the idle
                    // connection; the request goes again on a new one.
                    Ok(None) => {}
                    Err(err) if err.is::<io::Error>() => {}
                    Err(err) => return Err(err),
                }
            }
            let mut conn = Box::pin(Self::connect(dial)).await?;
            conn.stream.write_all_sent(&head()).await?;
            return match read_head(&mut conn, method, headers, interim).await? {
                Some(answer) => Ok(self.response(home, key, conn, answer)),
                None => Err("backend closed the connection before answering".into()),
            };
        }
        let mut conn = match reused {
            Some(conn) => conn,
            None => Box::pin(Self::connect(dial)).await?,
        };
        write_body(&mut conn, &head(), body, out).await?;
        match read_head(&mut conn, method, headers, interim).await? {
            Some(answer) => Ok(self.response(home, key, conn, answer)),
            None => Err("backend closed the connection before answering".into()),
        }
    }

    /// The response to a request whose answer's head was read from `conn`: its body is read
    /// from the connection, which goes `home` when the body is done.
    fn response(
        self: &Arc<Self>,
        home: Home,
        key: ConnKey,
        mut conn: Conn,
        answer: head::ResponseHead,
    ) -> Response<Body> {
        let mut response = Response::new(body::empty());
        *response.status_mut() = answer.status;
        *response.version_mut() = answer.version;
        if answer.status == hyper::StatusCode::SWITCHING_PROTOCOLS {
            response.extensions_mut().insert(Switched(Arc::new(Mutex::new(Some(conn)))));
            *response.headers_mut() = answer.headers;
            return response;
        }
        let mut decoder = Decoder::new(answer.framing);
        // The whole body is often read with its head: answer from the buffer, and give the
        // connection back before the client has even been written to.
        if let Some(left) = decoder.remaining()
            && (conn.buf.len() as u64) >= left
        {
            let data = conn.buf.split_to(left as usize).freeze();
            if answer.keep_alive {
                home.checkin(self, key, conn);
            }
            if !data.is_empty() {
                *response.body_mut() = body::full(data);
            }
            *response.headers_mut() = answer.headers;
            return response;
        }
        let _ = decoder.decode(&mut BytesMut::new());
        *response.headers_mut() = answer.headers;
        let keep_alive = answer.keep_alive;
        *response.body_mut() =
            UpstreamBody { conn: Some(conn), decoder, pool: self.clone(), home, key, keep_alive }.boxed();
        response
    }
}

/// Where a connection goes when its answer is done (and the backend keeps it alive), and for
/// how long and how many requests its pool keeps it.
enum Home {
    /// The worker's idle connections.
    Pool(KeepAlive),
    /// Its client connection's slot (a PROXY header names that client).
    Kept(Arc<Slot>, KeepAlive),
    /// Nowhere: it is closed (a PROXY connection of a cache fill or a shadow copy).
    Closed,
}

impl Home {
    fn checkin(&self, pool: &Pool, key: ConnKey, mut conn: Conn) {
        let keep_alive = match self {
            Home::Pool(keep_alive) | Home::Kept(_, keep_alive) => keep_alive,
            Home::Closed => return,
        };
        conn.requests += 1;
        // Bytes nobody asked for: the connection cannot be trusted. Its last request: closed.
        if !conn.buf.is_empty() || keep_alive.max_requests.is_some_and(|max| conn.requests >= max) {
            return;
        }
        let now = clock::coarse_ms();
        let until_ms = now + keep_alive.idle_timeout.as_millis() as u64;
        // Its read buffer goes (an answer cut from it may still hold the allocation): an idle
        // connection holds none.
        conn.buf = BytesMut::new();
        match self {
            Home::Pool(_) => pool.checkin(key, conn, now, until_ms),
            Home::Kept(slot, _) => {
                slot.keep(Parked { key, stream: conn.stream, requests: conn.requests, until_ms })
            }
            Home::Closed => {}
        }
    }
}

/// Writes the head and the body, framed as `out` says, and its trailers after a chunked one.
async fn write_body(conn: &mut Conn, head: &[u8], body: &mut Body, out: Out) -> Result<(), SendError> {
    let mut head = Some(head);
    let mut written = 0u64;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let data = match frame?.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        written += data.len() as u64;
        // Never past the length the head said: the backend would read the rest as a request
        // of its own. HTTP/1.1 bodies are cut to it by their decoder and h2 refuses a stream
        // whose DATA outgrows it, but the writer does not lean on either.
        if let Out::Length(n) = out
            && written > n
        {
            return Err("request body longer than its Content-Length".into());
        }
        let size = encode::chunk_size(data.len());
        let mut slices: SmallVec<[IoSlice<'_>; 4]> = SmallVec::new();
        if let Some(head) = head.take() {
            slices.push(IoSlice::new(head));
        }
        if out == Out::Chunked {
            slices.push(IoSlice::new(size.as_bytes()));
            slices.push(IoSlice::new(&data));
            slices.push(IoSlice::new(b"\r\n"));
        } else {
            slices.push(IoSlice::new(&data));
        }
        write_all_vectored(&mut conn.stream, &mut slices).await?;
    }
    if let Out::Length(n) = out
        && n != written
    {
        return Err("request body shorter than its Content-Length".into());
    }
    // A body's trailers go on in chunked framing only (a length leaves no room for them).
    let last = trailers.as_ref().filter(|_| out == Out::Chunked).map(encode::last_chunk_with);
    let mut tail: SmallVec<[IoSlice<'_>; 2]> = SmallVec::new();
    if let Some(head) = head {
        tail.push(IoSlice::new(head));
    }
    if out == Out::Chunked {
        tail.push(IoSlice::new(last.as_deref().unwrap_or(encode::LAST_CHUNK)));
    }
    write_all_vectored(&mut conn.stream, &mut tail).await?;
    conn.stream.sent().await?;
    Ok(())
}

/// Writes every slice, in as few calls as the socket allows.
pub async fn write_all_vectored<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    while !slices.is_empty() {
        // One piece: a plain send (writev costs the kernel more per call).
        let n = match slices {
            [one] => writer.write(one).await?,
            _ => writer.write_vectored(slices).await?,
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Reads a response head; None if the backend closed before sending a byte of an answer.
/// Interim answers (1xx but 101) are read past, and those the client gets go to `interim` (at
/// most `interim::MAX_PER_REQUEST` of any kind: more are the backend's error). A 101 to a
/// request (`request`: its fields) that asked for no `Upgrade` is the backend's error (RFC 9110
/// §15.2.2: a server switches only to what the client asked for).
async fn read_head(
    conn: &mut Conn,
    method: &Method,
    request: &HeaderMap,
    interim: Option<&Interim>,
) -> Result<Option<head::ResponseHead>, SendError> {
    let mut interims = 0;
    loop {
        if !conn.buf.is_empty()
            && let Some(answer) = head::parse_response(&mut conn.buf, method, MAX_HEAD_BYTES)?
        {
            // The request's fields are looked at only for a 101, not for every answer.
            if answer.status == hyper::StatusCode::SWITCHING_PROTOCOLS
                && !request.contains_key(header::UPGRADE)
            {
                return Err("backend switched protocols unasked".into());
            }
            if answer.status.is_informational() && answer.status != hyper::StatusCode::SWITCHING_PROTOCOLS {
                interims += 1;
                if interims > interim::MAX_PER_REQUEST {
                    return Err("backend sent too many interim answers".into());
                }
                if let Some(interim) = interim
                    && Interim::relayed(answer.status)
                {
                    interim.put(answer.status, answer.headers);
                }
                continue;
            }
            return Ok(Some(answer));
        }
        let read_before = conn.buf.len();
        if conn.read_more().await? == 0 {
            // After an interim answer the backend has begun to answer: the request is not sent
            // again on another connection.
            return match (read_before, interims) {
                (0, 0) => Ok(None),
                _ => Err("backend closed mid-head".into()),
            };
        }
    }
}

/// A response body read from its backend connection; the connection goes back to the pool
/// when the body is done (and is closed if the body is dropped before).
struct UpstreamBody {
    conn: Option<Conn>,
    decoder: Decoder,
    pool: Arc<Pool>,
    home: Home,
    key: ConnKey,
    keep_alive: bool,
}

impl UpstreamBody {
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.keep_alive
        {
            self.home.checkin(&self.pool, self.key, conn);
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = SendError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SendError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match this.decoder.decode(&mut conn.buf) {
                Err(err) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(err.into())));
                }
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Done) => {
                    this.finish();
                    return Poll::Ready(this.decoder.trailers().map(|t| Ok(Frame::trailers(t))));
                }
                Ok(Decoded::NeedMore) => match ready!(conn.poll_read_more(cx)) {
                    Ok(0) => {
                        this.keep_alive = false;
                        if let Err(err) = this.decoder.eof() {
                            this.conn = None;
                            return Poll::Ready(Some(Err(err.into())));
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(err.into())));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use std::{net::SocketAddr, time::Duration};

    use tokio::{io::AsyncReadExt, net::TcpStream};

    use super::*;
    use crate::config::DEFAULT_CONNECT_TIMEOUT;

    /// A plain connection to `address`.
    fn plain(address: SocketAddr) -> Dial<'static> {
        Dial {
            address,
            timeout: DEFAULT_CONNECT_TIMEOUT,
            tls: None,
            host: "",
            proxy: None,
            keep_alive: KeepAlive::default(),
            class: 0,
            opened: None,
        }
    }

    /// A backend on 127.0.0.1 answering by path: `/length`, `/chunked`, `/close` (a body
    /// delimited by closing), `/switch` (101, whatever was asked), `/once` (answers, then
    /// closes the kept-alive connection); any other request gets `once` and the connection is
    /// kept.
    async fn backend() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut read = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        while !read.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => read.extend_from_slice(&buf[..n]),
                            }
                        }
                        let end = read.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        let head = String::from_utf8_lossy(&read[..end]).to_string();
                        read.drain(..end);
                        // A body of a stated length is read and dropped.
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length: ")?.parse().ok()
                            })
                            .unwrap_or(0);
                        while read.len() < length {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => read.extend_from_slice(&buf[..n]),
                            }
                        }
                        read.drain(..length);
                        let answer: &[u8] = if head.starts_with("GET /length") {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nlength"
                        } else if head.starts_with("GET /chunked") {
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nchu\r\n4\r\nnked\r\n0\r\n\r\n"
                        } else if head.starts_with("GET /close") {
                            b"HTTP/1.1 200 OK\r\n\r\nuntil close"
                        } else if head.starts_with("GET /switch") {
                            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce"
                        };
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                        if ["GET /close", "GET /once", "GET /switch"].iter().any(|p| head.starts_with(p)) {
                            return;
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    /// POSTs `body` to `/up` at `address` through `pool`.
    async fn post(
        pool: &Arc<Pool>,
        address: SocketAddr,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response<Body>, SendError> {
        let added = encode::Added::default();
        let mut body = body;
        pool.send(plain(address), &Method::POST, "/up", headers, added, &mut body, None).await
    }

    async fn get(pool: &Arc<Pool>, address: SocketAddr, path: &str) -> String {
        get_via(pool, plain(address), path).await
    }

    async fn get_via(pool: &Arc<Pool>, dial: Dial<'_>, path: &str) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "backend.test".parse().unwrap());
        let response = pool
            .send(dial, &Method::GET, path, &headers, encode::Added::default(), &mut body::empty(), None)
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// A backend that takes no more connections (its accept queue full, so the kernel drops
    /// the SYN) is given up on after the pool's connect timeout.
    #[tokio::test]
    async fn a_connect_that_is_never_answered_gives_up_at_its_timeout() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let address = listener.local_addr().unwrap();
        // Never accepted: these fill its queue (a backlog of 1 holds two on Linux).
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(TcpStream::connect(address).await.unwrap());
        }
        let pool = Arc::new(Pool::default());
        let started = std::time::Instant::now();
        let timeout = Duration::from_millis(200);
        let headers = HeaderMap::new();
        let sent = pool
            .send(
                Dial {
                    address,
                    timeout,
                    tls: None,
                    host: "",
                    proxy: None,
                    keep_alive: KeepAlive::default(),
                    class: 0,
                    opened: None,
                },
                &Method::GET,
                "/",
                &headers,
                encode::Added::default(),
                &mut body::empty(),
                None,
            )
            .await;
        let took = started.elapsed();
        assert_eq!(sent.err().map(|e| e.to_string()).as_deref(), Some("connect timed out"));
        assert!(took >= timeout && took < Duration::from_secs(2), "{took:?}");
        drop((held, listener));
    }

    #[tokio::test]
    async fn connections_are_reused_and_every_framing_is_read() {
        let (address, accepted) = backend().await;
        let pool = Arc::new(Pool::default());
        assert_eq!(get(&pool, address, "/length").await, "length");
        assert_eq!(get(&pool, address, "/chunked").await, "chunked");
        assert_eq!(get(&pool, address, "/length").await, "length");
        assert_eq!(accepted.load(Ordering::Relaxed), 1, "one kept-alive connection");
        assert_eq!(get(&pool, address, "/close").await, "until close");
        assert_eq!(get(&pool, address, "/length").await, "length");
        assert_eq!(accepted.load(Ordering::Relaxed), 2, "a close-delimited answer ends its connection");
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_read_buffer() {
        let (address, accepted) = backend().await;
        let pool = Arc::new(Pool::default());
        for path in ["/length", "/chunked"] {
            assert_eq!(get(&pool, address, path).await, &path[1..]);
            let idle = pool.mine();
            let conns: Vec<&Idle> = idle.values().flatten().collect();
            assert!(conns.len() == 1 && conns[0].conn.buf.capacity() == 0, "{path}");
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_pool_s_keep_alive_closes_idle_connections_and_caps_their_requests() {
        let (address, accepted) = backend().await;
        let pool = Arc::new(Pool::default());
        let idle_timeout = Duration::from_millis(100);
        let brief = Dial { keep_alive: KeepAlive { idle_timeout, max_requests: None }, ..plain(address) };
        assert_eq!(get_via(&pool, brief, "/length").await, "length");
        assert_eq!(get_via(&pool, brief, "/length").await, "length");
        assert_eq!(accepted.load(Ordering::Relaxed), 1, "reused while fresh");
        tokio::time::sleep(idle_timeout + Duration::from_millis(50)).await;
        assert_eq!(get_via(&pool, brief, "/length").await, "length");
        assert_eq!(accepted.load(Ordering::Relaxed), 2, "idle past the pool's keep-alive timeout");
        let pool = Arc::new(Pool::default());
        let max_requests = Some(2);
        let capped =
            Dial { keep_alive: KeepAlive { max_requests, ..KeepAlive::default() }, ..plain(address) };
        for _ in 0..5 {
            assert_eq!(get_via(&pool, capped, "/length").await, "length");
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 2 + 3, "five requests, two a connection");
    }

    #[tokio::test]
    async fn an_idle_connection_the_backend_closed_costs_a_bodiless_request_nothing() {
        let (address, accepted) = backend().await;
        let pool = Arc::new(Pool::default());
        assert_eq!(get(&pool, address, "/once").await, "once");
        // Let the backend's close arrive: the pooled connection is now dead.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(get(&pool, address, "/length").await, "length");
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }

    /// A request with a body is not sent again here once written, so it must not go out on a
    /// connection the backend has closed: an idle connection whose FIN is already in is
    /// dropped as it leaves the pool, for a new one.
    #[tokio::test]
    async fn an_idle_connection_the_backend_closed_is_not_given_a_request_with_a_body() {
        let (address, accepted) = backend().await;
        let pool = Arc::new(Pool::default());
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "backend.test".parse().unwrap());
        headers.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        for round in 1..=3 {
            assert_eq!(get(&pool, address, "/once").await, "once");
            tokio::time::sleep(Duration::from_millis(50)).await;
            let response = post(&pool, address, &headers, streamed(["hello"])).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"once");
            assert_eq!(accepted.load(Ordering::Relaxed), 1 + round);
        }
    }

    #[tokio::test]
    async fn each_worker_reuses_its_own_connections_and_long_idle_ones_are_closed() {
        let (address, accepted) = backend().await;
        let pool = Arc::new(Pool::default());
        assert_eq!(get(&pool, address, "/length").await, "length");
        // Another worker: its own runtime on its own thread opens its own connection.
        let other = pool.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(get(&other, address, "/length"))
        });
        assert_eq!(answer.await.unwrap(), "length");
        assert_eq!(accepted.load(Ordering::Relaxed), 2, "a connection of another worker was reused");
        assert_eq!(get(&pool, address, "/length").await, "length");
        assert_eq!(accepted.load(Ordering::Relaxed), 2, "this worker's connection was not reused");
        // A sweep leaves a connection idle for less than the timeout, and closes it after.
        pool.sweep();
        assert_eq!(pool.mine().get(&(address, 0)).map(VecDeque::len), Some(1));
        // A minute on (not the stamps a minute back: a machine up for less would underflow).
        pool.sweep_at(clock::coarse_ms() + crate::config::DEFAULT_KEEPALIVE_TIMEOUT.as_millis() as u64);
        assert!(pool.mine().is_empty(), "a connection idle past the timeout stayed open");
    }

    #[tokio::test]
    async fn a_101_is_the_backends_error_unless_the_request_asked_to_upgrade() {
        let (address, _) = backend().await;
        let pool = Arc::new(Pool::default());
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "backend.test".parse().unwrap());
        let send = |headers: HeaderMap| {
            let pool = pool.clone();
            async move {
                pool.send(
                    plain(address),
                    &Method::GET,
                    "/switch",
                    &headers,
                    encode::Added::default(),
                    &mut body::empty(),
                    None,
                )
                .await
            }
        };
        let unasked = send(headers.clone()).await;
        assert!(unasked.is_err(), "a 101 nobody asked for was taken: {:?}", unasked.map(|r| r.status()));
        headers.insert(header::CONNECTION, "upgrade".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        let asked = send(headers).await.unwrap();
        assert_eq!(asked.status(), hyper::StatusCode::SWITCHING_PROTOCOLS);
    }

    /// A request body that comes in these pieces.
    fn streamed<const N: usize>(pieces: [&'static str; N]) -> Body {
        let frames = pieces.map(|s| Ok::<_, SendError>(Frame::data(Bytes::from(s))));
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn a_body_longer_than_its_length_is_not_sent_past_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut read = Vec::new();
            let _ = stream.read_to_end(&mut read).await;
            String::from_utf8(read).unwrap()
        });
        let pool = Arc::new(Pool::default());
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "backend.test".parse().unwrap());
        headers.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        let body = streamed(["hello", "GET /hidden HTTP/1.1\r\n\r\n"]);
        let sent = post(&pool, address, &headers, body).await;
        assert!(sent.is_err());
        drop(pool);
        let request = seen.await.unwrap();
        assert!(request.ends_with("\r\n\r\nhello"), "{request}");
    }

    #[tokio::test]
    async fn a_request_body_is_sent_with_its_framing() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut read = Vec::new();
            let mut buf = [0u8; 4096];
            while !read.ends_with(b"0\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0);
                read.extend_from_slice(&buf[..n]);
            }
            stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
            String::from_utf8(read).unwrap()
        });
        let pool = Arc::new(Pool::default());
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "backend.test".parse().unwrap());
        let body = streamed(["ab", "cde"]);
        let response = post(&pool, address, &headers, body).await.unwrap();
        assert_eq!(response.status(), hyper::StatusCode::NO_CONTENT);
        let request = seen.await.unwrap();
        assert!(
            request
                .starts_with("POST /up HTTP/1.1\r\nhost: backend.test\r\ntransfer-encoding: chunked\r\n\r\n")
        );
        assert!(request.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"), "{request}");
    }
}
