//! Writing an answer to a client: its head and the first piece of its body in one write when
//! the body is ready, the rest streamed as it comes (chunked, by length, or to the close for
//! HTTP/1.0), and a 502 in place of an answer that broke before its first byte.
use std::io;

use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::{HeaderMap, Method, Response, StatusCode, Version, body::Body as _, header};
use smallvec::SmallVec;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::proxy::{
    h1::{
        encode::{self, Out},
        head, scratch,
        upstream::{Switched, write_all_vectored},
    },
    phase::respond::{self, Body},
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
    let mut status = parts.status;
    let switched =
        if status == StatusCode::SWITCHING_PROTOCOLS { parts.extensions.remove::<Switched>() } else { None };
    // An answer's own `Connection: close` (a refusal made closing) is seen as its head is written.
    let mut keep_alive = keep_alive && switched.is_none();
    let bodiless = head::answer_is_bodiless(method, status);
    let mut first = None;
    let mut done = bodiless;
    let mut broke = false;
    if !bodiless {
        let mut polled = body.frame().now_or_never();
        if let Some(Some(Err(_))) = polled {
            // Nothing is written yet: the client gets a 502 rather than a connection closed
            // with nothing on it. (A body that breaks later is cut short: the head is out.)
            (parts, body) = respond::text(StatusCode::BAD_GATEWAY, BROKE).into_parts();
            (status, keep_alive, broke) = (parts.status, false, true);
            // The proxy's own answer now: no Via.
            beside.via = false;
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
    let connection = if !keep_alive && switched.is_none() {
        encode::Connection::Close
    } else if keep_alive && version == Version::HTTP_10 {
        encode::Connection::KeepAlive
    } else {
        encode::Connection::Unsaid
    };
    let closing = encode::response_head(
        &mut head,
        status,
        &parts.headers,
        out,
        kept_length.as_deref(),
        connection,
        beside,
    );
    keep_alive &= !closing;
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
async fn stream_rest<S: AsyncWrite + Unpin>(
    io: &mut S,
    body: &mut Body,
    out: Out,
    bytes: &mut u64,
) -> Streamed {
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
        let beside = encode::Beside { request_id: b"id-1", via: true };
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
        let body = respond::full(bytes::Bytes::from_static(b"12345"));
        let kept = |method, status, headers: &HeaderMap| kept_length(&method, status, headers, &body);
        assert_eq!(kept(Method::GET, StatusCode::NOT_MODIFIED, &headers).as_deref(), Some(&b"42"[..]));
        assert_eq!(kept(Method::GET, StatusCode::NO_CONTENT, &headers), None);
        assert_eq!(kept(Method::GET, StatusCode::CONTINUE, &headers), None);
        // A HEAD answer without the field says the size its body would have had.
        assert_eq!(kept(Method::HEAD, StatusCode::OK, &HeaderMap::new()).as_deref(), Some(&b"5"[..]));
    }
}
