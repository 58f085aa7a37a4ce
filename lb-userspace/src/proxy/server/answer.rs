//! Writing an answer to a client: its head and the first piece of its body in one write when
//! the body is ready, the rest streamed as it comes (chunked, by length, or to the close for
//! HTTP/1.0), and a 502 in place of an answer that broke before its first byte.
use std::io;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::{
    HeaderMap, Method, Response, StatusCode, Version,
    body::{Body as _, Frame},
    header,
};
use smallvec::SmallVec;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::proxy::{
    body::Body,
    h1::{
        encode::{self, Out},
        head, scratch,
        upstream::{Switched, write_all_vectored},
    },
    phase::respond,
    turn,
};

/// An answer's first body piece up to this size is copied behind its head and sent with it in
/// one `send`; a larger one goes beside the head (`writev`), not copied.
const SMALL_BODY: usize = 1024;

/// What writing an answer did.
pub struct Written {
    pub bytes: u64,
    pub keep_alive: bool,
    /// The backend connection of a `101 Switching Protocols`.
    pub switched: Option<Switched>,
    /// The backend's answer broke before a byte of it was written: a 502 went instead.
    pub broke: bool,
}

/// The reason logged for an answer that broke before a byte of it was written.
pub const BROKE: &str = "upstream answer broke";

/// Writes the answer's head, with the fields the proxy says `beside` it, and body; the head
/// and the first piece of the body go in one write when the body is ready.
pub async fn write_response<S: AsyncWrite + Unpin>(
    io: &mut S,
    method: &Method,
    version: Version,
    response: Response<Body>,
    mut beside: encode::Beside<'_>,
    keep_alive: bool,
) -> Written {
    let (mut parts, mut body) = response.into_parts();
    let switched = if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        parts.extensions.remove::<Switched>()
    } else {
        None
    };
    let Some(mut ready) = Ready::take(&mut parts, &mut body, method, &mut beside) else {
        return Written { bytes: 0, keep_alive: false, switched: None, broke: true };
    };
    // An answer's own `Connection: close` (a refusal made closing) is seen as its head is written.
    let keep_alive = keep_alive && switched.is_none() && !ready.broke;
    let (mut head, out, keep_alive) =
        ready.head(&parts, &body, method, version, keep_alive, switched.is_some(), beside);
    let failed = Written { bytes: 0, keep_alive: false, switched: None, broke: false };
    let Ok(mut bytes) = send_first(io, &mut head, ready.first.take(), out, ready.done).await else {
        return failed;
    };
    if !ready.done {
        match stream_rest(io, &mut body, out, &mut bytes, ready.trailers.take()).await {
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
    Written { bytes, keep_alive, switched, broke: ready.broke }
}

/// What of an answer's body was ready when its head was about to be written.
struct Ready {
    /// The body's first piece, when it was ready.
    first: Option<Bytes>,
    /// Nothing of the body is left to stream (it was all in `first`, or there is none).
    done: bool,
    bodiless: bool,
    /// The backend's answer broke before a byte of it was written: the answer is a 502 now.
    broke: bool,
    /// The body's trailers, when they came first (a body with none of its own).
    trailers: Option<Box<HeaderMap>>,
}

impl Ready {
    /// Takes the body's first piece if it is ready. One that fails at once makes the answer a
    /// 502: nothing is written yet, and a client should not see a connection closed with nothing
    /// on it (a body that breaks later is cut short: the head is out). None: the 502 failed too.
    ///
    /// Inlined, as `head`: left to the compiler, the two calls cost ~100 instructions a request.
    #[inline(always)]
    fn take(
        parts: &mut hyper::http::response::Parts,
        body: &mut Body,
        method: &Method,
        beside: &mut encode::Beside<'_>,
    ) -> Option<Ready> {
        let bodiless = head::answer_is_bodiless(method, parts.status);
        let mut ready = Ready { first: None, done: bodiless, bodiless, broke: false, trailers: None };
        if bodiless {
            return Some(ready);
        }
        let mut polled = body.frame().now_or_never();
        if let Some(Some(Err(_))) = polled {
            (*parts, *body) = respond::text(StatusCode::BAD_GATEWAY, BROKE).into_parts();
            ready.broke = true;
            // The proxy's own answer now: no Via.
            beside.via = None;
            polled = body.frame().now_or_never();
        }
        match polled.map(|f| f.map(|f| f.map(Frame::into_data))) {
            Some(Some(Ok(Ok(data)))) => ready.first = Some(data),
            Some(Some(Ok(Err(frame)))) => ready.trailers = frame.into_trailers().ok().map(Box::new),
            Some(None) => ready.done = true,
            Some(Some(Err(_))) => return None,
            None => {}
        }
        // Trailers are written after the body (chunked): it is not done with its head.
        ready.done = ready.trailers.is_none() && (ready.done || body.is_end_stream());
        Some(ready)
    }

    /// Encodes the head into a scratch buffer, framed by what is known of the body; gives it,
    /// the framing, and whether the connection stays open after the answer.
    #[allow(clippy::too_many_arguments, reason = "the answer's parts, and how it is written")]
    #[inline(always)]
    fn head(
        &self,
        parts: &hyper::http::response::Parts,
        body: &Body,
        method: &Method,
        version: Version,
        keep_alive: bool,
        switched: bool,
        beside: encode::Beside<'_>,
    ) -> (scratch::Scratch, Out, bool) {
        let first_len = self.first.as_ref().map_or(0, |f| f.len() as u64);
        // A body that begins with its trailers is chunked to carry them (its length says 0).
        let rest = body.size_hint().exact().filter(|_| self.trailers.is_none());
        let out = framing(self.bodiless, self.done, first_len, rest, version);
        let keep_alive = keep_alive && out != Out::Close;
        let kept_length =
            self.bodiless.then(|| kept_length(method, parts.status, &parts.headers, body)).flatten();
        let connection = if !keep_alive && !switched {
            encode::Connection::Close
        } else if keep_alive && version == Version::HTTP_10 {
            encode::Connection::KeepAlive
        } else {
            encode::Connection::Unsaid
        };
        let mut head = scratch::take();
        let closing = encode::response_head(
            &mut head,
            parts.status,
            &parts.headers,
            out,
            kept_length.as_deref(),
            connection,
            beside,
        );
        (head, out, keep_alive && !closing)
    }
}

/// Sends the head and the body's first piece in one write, after the turn's other answers
/// (turn.rs); a small piece is copied behind the head (one plain send costs the kernel less
/// than a writev of two pieces). Gives the body bytes sent.
async fn send_first<S: AsyncWrite + Unpin>(
    io: &mut S,
    head: &mut Vec<u8>,
    mut first: Option<Bytes>,
    out: Out,
    done: bool,
) -> io::Result<u64> {
    let mut bytes = 0u64;
    if let Some(data) = first.take_if(|d| out != Out::Chunked && d.len() <= SMALL_BODY) {
        bytes += data.len() as u64;
        head.extend_from_slice(&data);
    }
    let size;
    let mut slices: SmallVec<[io::IoSlice<'_>; 5]> = SmallVec::new();
    slices.push(io::IoSlice::new(&head[..]));
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
    write_all_vectored(io, &mut slices).await?;
    Ok(bytes)
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
/// client as they are made), chunk-framed when `out` says so, then the last chunk with the
/// body's trailers (`trailers`: those that came before any data).
async fn stream_rest<S: AsyncWrite + Unpin>(
    io: &mut S,
    body: &mut Body,
    out: Out,
    bytes: &mut u64,
    mut trailers: Option<Box<HeaderMap>>,
) -> Streamed {
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            let _ = io.flush().await;
            return Streamed::CutUpstream;
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok().map(Box::new);
                continue;
            }
        };
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
    // Trailers go on in chunked framing only (a length or a close leaves no room for them).
    if out == Out::Chunked {
        let last = trailers.map(|t| encode::last_chunk_with(&t));
        if io.write_all(last.as_deref().unwrap_or(encode::LAST_CHUNK)).await.is_err() {
            return Streamed::WriteFailed;
        }
    }
    Streamed::Whole
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::net::TcpStream;

    use super::*;
    use crate::proxy::idle::{Activity, Watched};

    /// A backend's answer whose body breaks before a byte of it is written reaches the client
    /// as a 502 (with the request's ID), not as a connection closed with nothing on it.
    #[tokio::test]
    async fn an_answer_that_breaks_before_a_byte_is_written_is_a_502() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut stream = Watched::new(accepted, Arc::new(Activity::default()));
        let broken = futures_util::stream::iter([Err::<hyper::body::Frame<Bytes>, _>("a bad chunk".into())]);
        let answer = Response::new(http_body_util::StreamBody::new(broken).boxed());
        let beside = encode::Beside { request_id: b"id-1", via: Some(Version::HTTP_11) };
        let written = write_response(&mut stream, &Method::GET, Version::HTTP_11, answer, beside, true).await;
        assert!(written.broke && !written.keep_alive);
        drop(stream);
        let mut got = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut client, &mut got).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 502"), "{got}");
        assert!(got.contains("x-request-id: id-1") && got.ends_with("upstream answer broke\n"), "{got}");
        assert!(!got.contains("via:"), "the 502 is the proxy's own: {got}");
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
        let body = crate::proxy::body::full(bytes::Bytes::from_static(b"12345"));
        let kept = |method, status, headers: &HeaderMap| kept_length(&method, status, headers, &body);
        assert_eq!(kept(Method::GET, StatusCode::NOT_MODIFIED, &headers).as_deref(), Some(&b"42"[..]));
        assert_eq!(kept(Method::GET, StatusCode::NO_CONTENT, &headers), None);
        assert_eq!(kept(Method::GET, StatusCode::CONTINUE, &headers), None);
        // A HEAD answer without the field says the size its body would have had.
        assert_eq!(kept(Method::HEAD, StatusCode::OK, &HeaderMap::new()).as_deref(), Some(&b"5"[..]));
    }
}
