//! One client's HTTP/2 connection driven to its end: the handshake, its streams polled before
//! its writes, a client's half-close held back until the answers are out, rapid resets cut.
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::{
    Reason,
    server::{Builder, Connection, Handshake, SendResponse},
};
use hyper::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{answer::Answered, request::request};
use crate::proxy::{body::Body, turn::Turn};

/// Rapid reset (CVE-2023-44487): a client that opens streams and resets each before its
/// answer sets backends working on requests nobody waits for, unbounded by the listener's `http2_max_concurrent_streams` (a
/// reset stream no longer counts). Once a connection has opened this many streams, it is cut
/// (GOAWAY ENHANCE_YOUR_CALM) if more than half were reset before their answer and within
/// `answer::EARLY_RESET_MS` of their start, as Envoy does with its premature resets. h2 itself
/// cuts a connection whose streams are reset before they are accepted
/// (MAX_PENDING_ACCEPT_RESETS), but a client that waits for the accept passes that check.
pub(super) const RESETS_JUDGED_AFTER: u32 = 500;

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
