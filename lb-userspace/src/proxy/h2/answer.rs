//! A stream's answer: given up if the client resets the stream first, the backend's interim
//! answers sent while it waits, its head sent with Date and length, its body written a frame at
//! a time as the stream's window allows.
use std::{
    future::{Future, poll_fn},
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use h2::{Reason, SendStream, server::SendResponse};
use hyper::{
    Response,
    body::Body as HttpBody,
    header::{self, HeaderValue},
};

use std::sync::Arc;

use crate::proxy::{access_log::ClientConn, clock, date::date, interim::Interim, phase::headers};

/// A reset this soon after a stream began counts as early (a long poll given up later does not).
pub(super) const EARLY_RESET_MS: u64 = 1000;
/// The largest last chunk of an answer's body handed to h2 before the stream has window for
/// it (smaller answers skip the wait; h2 holds the bytes until it may send them).
const SMALL_LAST_CHUNK: usize = 4 * 1024;

/// Why an answer's body stopped before its end (logged; the stream is reset).
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    H2(#[from] h2::Error),
    #[error("stream closed")]
    Closed,
    #[error("stream reset by the client: {0:?}")]
    Reset(Reason),
    #[error("the body failed: {0}")]
    Body(String),
}

/// How a stream ended: answered (or failed on the proxy's side, or given up by the client
/// late), or reset by the client before its answer's head and within EARLY_RESET_MS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    Yes,
    ResetEarly,
}

/// Serves one stream: its answer (given up if the client resets the stream first), then the
/// answer's body. The backend's interim answers are sent as they come: from `conn`'s, which a
/// stream takes right after its own answer was polled (the streams of a connection are polled
/// one at a time, in its task).
///
/// This future is moved into the connection's set of streams for every request, so what it
/// holds across its waits is kept small: the head is sent by a plain function, and the body's
/// state is a `Sending` (an async block would keep room for every local it ever had).
pub async fn answer<F, B>(
    answer: F,
    mut respond: SendResponse<Bytes>,
    conn: Option<Arc<ClientConn>>,
) -> Answered
where
    F: Future<Output = Response<B>>,
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut answer = std::pin::pin!(answer);
    let started_ms = clock::coarse_ms();
    let response = poll_fn(|cx| {
        let polled = answer.as_mut().poll(cx);
        // Put there as the answer was polled (same task, same poll: no waker), and sent before it.
        if let Some(conn) = &conn {
            send_interim(&conn.interim, &mut respond);
        }
        if let Poll::Ready(response) = polled {
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

/// Sends the interim answers waiting as informational HEADERS, their hop-by-hop fields left
/// out (h2 refuses connection fields).
fn send_interim(interim: &Interim, respond: &mut SendResponse<Bytes>) {
    for (status, mut fields) in interim.take() {
        headers::strip_hop_by_hop(&mut fields, false);
        let mut head = Response::new(());
        *head.status_mut() = status;
        *head.headers_mut() = fields;
        if let Err(err) = respond.send_informational(head) {
            log::debug!("HTTP/2 interim answer: {err}");
        }
    }
}

/// Sends the answer's head; what is left to send of its body, if anything.
fn send_head<B>(response: Response<B>, respond: &mut SendResponse<Bytes>) -> Option<Sending<B>>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    let (mut head, body) = response.into_parts();
    let end = body.is_end_stream();
    head_fields(&mut head.headers, end, body.size_hint().exact());
    match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(send) => (!end).then_some(Sending { body, send, waiting: None }),
        Err(err) => {
            log::debug!("HTTP/2 answer: {err}");
            respond.send_reset(Reason::INTERNAL_ERROR);
            None
        }
    }
}

/// An answer's head as HTTP/2 and HTTP/3 send it: no connection-specific fields (RFC 9113
/// §8.2.2, RFC 9114 §4.2; h2 refuses an answer with any, and a backend's HTTP/1.1 answer may
/// have some), a Date, and the body's `length` when it is known and not `end`.
pub fn head_fields(headers: &mut hyper::HeaderMap, end: bool, length: Option<u64>) {
    headers::strip_hop_by_hop(headers, false);
    // Date and Content-Length found in one pass over the names (a lookup hashes its name).
    let (mut dated, mut sized) = (false, false);
    for name in headers.keys() {
        dated |= name == header::DATE;
        sized |= name == header::CONTENT_LENGTH;
    }
    if !dated {
        headers.insert(header::DATE, date());
    }
    if !end
        && !sized
        && let Some(length) = length
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
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
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let Sending { body, send, waiting } = self;
        loop {
            if let Some((data, end)) = waiting.take() {
                // Wait for window before handing h2 the chunk (it would buffer it all).
                while send.capacity() == 0 {
                    match send.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(0))) => {}
                        Poll::Ready(Some(Ok(_))) => break,
                        Poll::Ready(Some(Err(err))) => return Poll::Ready(Err(err.into())),
                        Poll::Ready(None) => return Poll::Ready(Err(SendError::Closed)),
                        Poll::Pending => {
                            *waiting = Some((data, end));
                            return reset_or_pending(send, cx);
                        }
                    }
                }
                send.send_data(data, end)?;
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
                            send.send_data(data, end)?;
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
                            send.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(err)) => return Poll::Ready(Err(SendError::Body(err.to_string()))),
                None => {
                    send.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// Pending, with the stream's reset registered: a RST_STREAM from the client ends a wait for
/// the body or for window. (A body that is ready is sent without asking: h2 refuses data for
/// a stream already reset.)
fn reset_or_pending(send: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
    match send.poll_reset(cx) {
        Poll::Ready(Ok(reason)) => Poll::Ready(Err(SendError::Reset(reason))),
        Poll::Ready(Err(err)) => Poll::Ready(Err(err.into())),
        Poll::Pending => Poll::Pending,
    }
}
