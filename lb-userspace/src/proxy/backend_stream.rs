//! A connection to a backend, plain TCP or TLS: opened within the pool's connect timeout
//! (the TLS handshake included), read and written as one stream, and asked whether the
//! backend said anything while it sat idle.
use std::{
    io::{self, IoSlice},
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

use crate::{config::KeepAlive, proxy::backend_tls::BackendTls};

/// A connection to a backend that could not be made (refused, unreachable, past the pool's
/// connect timeout, its TLS handshake failed): nothing of the request was sent, so it may go
/// to another backend whatever its method or body (`phase::upstream::Tries`).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ConnectFailed {
    pub error: io::Error,
    /// Whether TLS failed (the connection itself was made): the access log says so apart, as
    /// it is a matter of certificates and names, not of a backend that is down.
    pub tls: bool,
}

impl ConnectFailed {
    pub fn new(error: io::Error) -> ConnectFailed {
        ConnectFailed { error, tls: false }
    }

    /// Why, as the metrics say it: `tls`, `timeout` or `refused` (refused, unreachable, reset).
    pub fn reason(&self) -> &'static str {
        match (self.tls, self.error.kind()) {
            (true, _) => "tls",
            (false, io::ErrorKind::TimedOut) => "timeout",
            (false, _) => "refused",
        }
    }
}

/// What connections a try may reuse are filed under: the backend, and the class of connection
/// (`backend_tls::new_class`): the TLS client that opened them, or the plain pool's own. So one
/// pool never takes another's idle connection (nginx and HAProxy keep theirs per upstream and
/// backend too): its keep-alive settings count every request a connection carried.
pub type ConnKey = (SocketAddr, u64);

/// Where a try goes: the backend, how long its connect may take, its pool's TLS, the
/// request's host (the server name of a pool with `sni_from_host`), for a pool with
/// `proxy_protocol` the client's header and where its connection is kept, and how long and for
/// how many requests the connection is kept alive.
#[derive(Clone, Copy)]
pub struct Dial<'a> {
    pub address: SocketAddr,
    pub timeout: Duration,
    pub tls: Option<&'a Arc<BackendTls>>,
    pub host: &'a str,
    pub proxy: Option<ForClient<'a>>,
    pub keep_alive: KeepAlive,
    /// The plain pool's class of connection (`backend_tls::new_class`; a TLS pool's is its
    /// client's).
    pub class: u64,
    /// Counts the connections made to this backend (its runtime's), where one counts.
    pub opened: Option<&'a AtomicU64>,
}

/// A connection that belongs to one client, as a PROXY header names it: the header written
/// first, and the client connection's slot that keeps it between that client's requests (None:
/// a cache fill or a shadow copy, whose connection is closed after it).
#[derive(Clone, Copy)]
pub struct ForClient<'a> {
    pub header: &'a [u8],
    pub kept: Option<&'a Kept>,
}

impl Dial<'_> {
    /// The key of the connections this try may reuse.
    pub fn key(&self) -> ConnKey {
        (self.address, self.tls.map_or(self.class, |tls| tls.id_for(self.host)))
    }

    /// A new connection: TCP (Nagle off), the PROXY header, then the pool's TLS handshake, all
    /// within the connect timeout.
    pub async fn connect(&self) -> Result<BackendStream, ConnectFailed> {
        let timed_out = || ConnectFailed::new(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        let connecting = async {
            let mut stream = TcpStream::connect(self.address).await.map_err(ConnectFailed::new)?;
            let _ = stream.set_nodelay(true);
            if let Some(proxy) = self.proxy {
                use tokio::io::AsyncWriteExt;
                stream.write_all(proxy.header).await.map_err(ConnectFailed::new)?;
            }
            Ok(match self.tls {
                None => BackendStream::Plain(stream),
                Some(tls) => {
                    let stream = tls.handshake(stream, self.address, self.host).await.map_err(|err| {
                        ConnectFailed {
                            error: io::Error::new(err.kind(), format!("TLS to {}: {err}", self.address)),
                            tls: true,
                        }
                    })?;
                    BackendStream::Tls(Box::new(stream))
                }
            })
        };
        let stream = tokio::time::timeout(self.timeout, connecting).await.map_err(|_| timed_out())??;
        if let Some(opened) = self.opened {
            opened.fetch_add(1, Ordering::Relaxed);
        }
        Ok(stream)
    }
}

/// The backend connection one client connection keeps between its requests to a pool with
/// `proxy_protocol` (HAProxy's private connections): its header names that client, so no other
/// client's request may use it. One at most, closed with the client connection. Its slot is made
/// on first use: the client of a pool without the protocol carries one empty word.
#[derive(Default)]
pub struct Kept(OnceLock<Arc<Slot>>);

/// Where a kept connection waits.
#[derive(Default)]
pub struct Slot(Mutex<Option<Parked>>);

/// A connection waiting for its next request.
pub struct Parked {
    /// The key it was opened under.
    pub key: ConnKey,
    pub stream: BackendStream,
    /// The requests it has carried.
    pub requests: u32,
    /// When it is too old to be used (coarse ms).
    pub until_ms: u64,
}

impl Kept {
    /// The kept connection, if it was opened under `key`, is not too old (at `now_ms`), and its
    /// backend has said nothing since (`BackendStream::is_quiet`). One opened under another key
    /// stays.
    pub fn take(&self, key: ConnKey, now_ms: u64) -> Option<Parked> {
        let mut kept = self.0.get()?.0.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.as_ref().is_none_or(|parked| parked.key != key) {
            return None;
        }
        let mut parked = kept.take()?;
        (now_ms < parked.until_ms && parked.stream.is_quiet()).then_some(parked)
    }

    /// Where this client's connections go back when their answers are done.
    pub fn slot(&self) -> Arc<Slot> {
        self.0.get_or_init(Default::default).clone()
    }
}

impl Slot {
    /// Keeps a connection, closing the one kept before: two requests of one HTTP/2 client at
    /// once each have a connection, and one of them stays.
    pub fn keep(&self, parked: Parked) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(parked);
    }
}

/// A connection to a backend.
pub enum BackendStream {
    Plain(TcpStream),
    /// Boxed: rustls's state is ~1 KiB, and plain connections are the common case.
    Tls(Box<TlsStream<TcpStream>>),
}

impl BackendStream {
    /// Writes `bytes` and sends them on: TLS holds what it is given until flushed; a plain
    /// socket's write is its send (its own `write_all`, with no match per poll).
    pub async fn write_all_sent(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match self {
            BackendStream::Plain(stream) => stream.write_all(bytes).await,
            BackendStream::Tls(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
        }
    }

    /// Sends on what TLS holds (nothing to do on a plain socket).
    pub async fn sent(&mut self) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match self {
            BackendStream::Plain(_) => Ok(()),
            BackendStream::Tls(stream) => stream.flush().await,
        }
    }

    /// Whether the backend has said nothing (no bytes, no close) since the connection's last
    /// read: one that did cannot carry another request (its bytes would be read as that
    /// request's answer).
    ///
    /// Plain: `try_read` asks tokio's readiness first and makes no syscall while it is clear.
    /// TLS: one read with a waker that does nothing, so records that carry no data (a TLS 1.3
    /// session ticket sent late) are taken in and the connection stays usable.
    pub fn is_quiet(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self {
            BackendStream::Plain(stream) => {
                matches!(stream.try_read(&mut byte), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
            }
            BackendStream::Tls(stream) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut buf = ReadBuf::new(&mut byte);
                Pin::new(stream.as_mut()).poll_read(&mut cx, &mut buf).is_pending()
            }
        }
    }
}

impl AsyncRead for BackendStream {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            BackendStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            BackendStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            BackendStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Plain(stream) => stream.is_write_vectored(),
            BackendStream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            BackendStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            BackendStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
