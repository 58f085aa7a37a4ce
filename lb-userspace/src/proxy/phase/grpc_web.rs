//! gRPC-Web: a browser's gRPC call (HTTP/1.1 or HTTP/2, content type `application/grpc-web…`)
//! sent on as gRPC to the route's h2/h2c pool, and its answer sent back as gRPC-Web: the
//! trailers as the body's last frame (flag 0x80, then `name:value\r\n` lines), and the whole
//! body in base64 both ways for `application/grpc-web-text` (Envoy's grpc_web filter; the
//! protocol is grpc/grpc's PROTOCOL-WEB.md).
use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{
    HeaderMap, Response,
    body::{Body as HttpBody, Frame},
    header::{self, HeaderValue},
};

use crate::proxy::{
    access_log::FramedStatus,
    body::{Body, Error},
};

/// A gRPC-Web call on its way: what its answer is to look like.
pub struct Call {
    /// Base64 both ways (`application/grpc-web-text`).
    text: bool,
    /// The answer's content type: the one the client sent.
    content_type: HeaderValue,
}

/// The call `headers` make, if their content type is gRPC-Web's.
pub fn call(headers: &HeaderMap) -> Option<Call> {
    let content_type = headers.get(header::CONTENT_TYPE)?;
    let rest = content_type.as_bytes().strip_prefix(b"application/grpc-web")?;
    let text = rest.starts_with(b"-text");
    let rest = if text { &rest[5..] } else { rest };
    (rest.is_empty() || rest.starts_with(b"+") || rest.starts_with(b";"))
        .then(|| Call { text, content_type: content_type.clone() })
}

impl Call {
    /// The content type the client sent (and gets back).
    pub fn content_type(&self) -> &HeaderValue {
        &self.content_type
    }

    /// The request as gRPC: its content type (`application/grpc` and the same `+format`),
    /// `te: trailers` (gRPC servers want it), no length if its body is decoded from base64.
    pub fn to_grpc(&self, headers: &mut HeaderMap, body: Body) -> Body {
        let sent = self.content_type.as_bytes();
        let format = sent.iter().position(|&b| b == b'+').map_or(&b""[..], |at| &sent[at..]);
        let format = format.split(|&b| b == b';').next().unwrap_or_default();
        let grpc = [&b"application/grpc"[..], format].concat();
        if let Ok(grpc) = HeaderValue::from_bytes(&grpc) {
            headers.insert(header::CONTENT_TYPE, grpc);
        }
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        if !self.text {
            return body;
        }
        headers.remove(header::CONTENT_LENGTH);
        Decoded { inner: body, pending: BytesMut::new() }.boxed()
    }

    /// The backend's answer as gRPC-Web: the client's content type, its trailers a frame of the
    /// body, the body in base64 for `-text`. An answer that is not gRPC's (an error page from
    /// the backend) goes as it came.
    pub fn to_grpc_web(self, response: &mut Response<Body>) {
        let grpc = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            return;
        }
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, self.content_type);
        headers.remove(header::CONTENT_LENGTH);
        let body = std::mem::replace(response.body_mut(), crate::proxy::body::empty());
        // A trailers-only answer (its status in its head) has no body to frame.
        if !body.is_end_stream() {
            let status = FramedStatus::default();
            response.extensions_mut().insert(status.clone());
            *response.body_mut() =
                Framed { inner: body, text: self.text, pending: BytesMut::new(), done: false, status }
                    .boxed();
        }
    }
}

/// The frame gRPC-Web carries trailers in: flag 0x80, the length, then each field as
/// `name:value\r\n` (names lowercase, as HTTP/2 has them).
fn trailers_frame(trailers: &HeaderMap) -> BytesMut {
    let mut lines = Vec::new();
    for (name, value) in trailers {
        lines.extend_from_slice(name.as_str().as_bytes());
        lines.push(b':');
        lines.extend_from_slice(value.as_bytes());
        lines.extend_from_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + lines.len());
    frame.put_u8(0x80);
    frame.put_u32(lines.len() as u32);
    frame.extend_from_slice(&lines);
    frame
}

/// A request body in base64 (`-text`), decoded: whole groups of four characters as they come
/// (a group with padding ends a segment; the client may pad each message it sends).
struct Decoded {
    inner: Body,
    /// Characters of a group not yet whole.
    pending: BytesMut,
}

/// Decodes `text`, a whole number of 4-character groups, each segment up to a padded group
/// decoded alone.
fn decode_groups(text: &[u8], out: &mut Vec<u8>) -> Result<(), base64::DecodeError> {
    let mut start = 0;
    for (i, group) in text.as_chunks::<4>().0.iter().enumerate() {
        if group[3] == b'=' {
            STANDARD.decode_vec(&text[start..(i + 1) * 4], out)?;
            start = (i + 1) * 4;
        }
    }
    if start < text.len() {
        STANDARD.decode_vec(&text[start..], out)?;
    }
    Ok(())
}

impl HttpBody for Decoded {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None if self.pending.is_empty() => return Poll::Ready(None),
                None => {
                    return Poll::Ready(Some(Err("gRPC-Web text body ends inside a base64 group".into())));
                }
            };
            let Ok(data) = frame.into_data() else { continue }; // a request's trailers: none in gRPC-Web
            self.pending.extend_from_slice(&data);
            let whole = self.pending.len() / 4 * 4;
            if whole == 0 {
                continue;
            }
            let text = self.pending.split_to(whole);
            let mut out = Vec::with_capacity(whole / 4 * 3);
            if let Err(err) = decode_groups(&text, &mut out) {
                return Poll::Ready(Some(Err(format!("gRPC-Web text body: {err}").into())));
            }
            return Poll::Ready(Some(Ok(Frame::data(out.into()))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }
}

/// An answer's body as gRPC-Web: its data as it comes, its trailers as its last frame; in
/// base64 for `-text` (whole groups of three bytes as they come, the rest padded at the end).
struct Framed {
    inner: Body,
    text: bool,
    /// Bytes of a group of three not yet whole (`-text`).
    pending: BytesMut,
    done: bool,
    /// The trailers' status, for the access log.
    status: FramedStatus,
}

impl Framed {
    /// `bytes` as the client gets them: as they are, or what of them makes whole base64 groups
    /// (all, padded, at the `end`).
    fn out(&mut self, bytes: &[u8], end: bool) -> Option<Bytes> {
        if !self.text {
            return (!bytes.is_empty()).then(|| Bytes::copy_from_slice(bytes));
        }
        self.pending.extend_from_slice(bytes);
        let whole = if end { self.pending.len() } else { self.pending.len() / 3 * 3 };
        (whole > 0).then(|| STANDARD.encode(self.pending.split_to(whole)).into())
    }
}

impl HttpBody for Framed {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        while !self.done {
            let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => {
                    self.done = true;
                    match self.out(&[], true) {
                        Some(rest) => return Poll::Ready(Some(Ok(Frame::data(rest)))),
                        None => break,
                    }
                }
            };
            let out = match frame.into_data() {
                Ok(data) if !self.text => Some(data),
                Ok(data) => self.out(&data, false),
                Err(frame) => {
                    self.done = true;
                    let trailers = frame.into_trailers().map_or_else(
                        |_| BytesMut::new(),
                        |t| {
                            self.status.set(&t);
                            trailers_frame(&t)
                        },
                    );
                    self.out(&trailers, true)
                }
            };
            if let Some(out) = out {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;
    use crate::{
        mutation::{Rng, mutate},
        proxy::body,
    };

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        headers
    }

    /// A body of these frames, one poll each.
    fn frames(frames: Vec<Frame<Bytes>>) -> Body {
        let stream = futures_util::stream::iter(frames.into_iter().map(Ok::<_, Error>));
        StreamBody::new(stream).boxed()
    }

    #[test]
    fn grpc_web_content_types_are_calls_and_become_grpcs() {
        for (sent, grpc, text) in [
            ("application/grpc-web", "application/grpc", false),
            ("application/grpc-web+proto", "application/grpc+proto", false),
            ("application/grpc-web-text", "application/grpc", true),
            ("application/grpc-web-text+proto", "application/grpc+proto", true),
            ("application/grpc-web+json; charset=utf-8", "application/grpc+json", false),
        ] {
            let mut fields = headers(sent);
            fields.insert(header::CONTENT_LENGTH, "8".parse().unwrap());
            let call = call(&fields).unwrap_or_else(|| panic!("{sent}"));
            assert_eq!(call.text, text, "{sent}");
            let _ = call.to_grpc(&mut fields, body::empty());
            assert_eq!(fields[header::CONTENT_TYPE], grpc, "{sent}");
            assert_eq!(fields[header::TE], "trailers");
            assert_eq!(fields.contains_key(header::CONTENT_LENGTH), !text, "{sent}");
        }
        for other in ["application/grpc", "application/grpc-webx", "text/plain"] {
            assert!(call(&headers(other)).is_none(), "{other}");
        }
        assert!(call(&HeaderMap::new()).is_none());
    }

    #[tokio::test]
    async fn a_text_body_is_decoded_across_its_pieces_and_padded_segments() {
        // "hello" padded, then " world!" split mid-group.
        let pieces = ["aGVsbG8=", "IHdv", "cm", "xkIQ=="];
        let sent = frames(pieces.iter().map(|p| Frame::data(Bytes::from_static(p.as_bytes()))).collect());
        let mut fields = headers("application/grpc-web-text");
        let decoded = call(&fields).unwrap().to_grpc(&mut fields, sent);
        assert_eq!(decoded.collect().await.unwrap().to_bytes(), "hello world!");

        for bad in ["aGVsbG8", "aGV*bG8="] {
            let sent = frames(vec![Frame::data(Bytes::from_static(bad.as_bytes()))]);
            let mut fields = headers("application/grpc-web-text");
            let decoded = call(&fields).unwrap().to_grpc(&mut fields, sent);
            assert!(decoded.collect().await.is_err(), "{bad}");
        }
    }

    /// The answer of a gRPC backend: a message, then trailers.
    fn grpc_answer() -> Response<Body> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "fine".parse().unwrap());
        let message = Bytes::from_static(b"\0\0\0\0\x02\x08\x01");
        let mut answer = Response::new(frames(vec![Frame::data(message), Frame::trailers(trailers)]));
        answer.headers_mut().insert(header::CONTENT_TYPE, "application/grpc".parse().unwrap());
        answer.headers_mut().insert(header::CONTENT_LENGTH, "7".parse().unwrap());
        answer
    }

    const GRPC_WEB_ANSWER: &[u8] =
        b"\0\0\0\0\x02\x08\x01\x80\0\0\0\x22grpc-status:0\r\ngrpc-message:fine\r\n";

    #[tokio::test]
    async fn an_answer_carries_its_trailers_as_its_last_frame() {
        let mut answer = grpc_answer();
        call(&headers("application/grpc-web+proto")).unwrap().to_grpc_web(&mut answer);
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/grpc-web+proto");
        assert!(!answer.headers().contains_key(header::CONTENT_LENGTH));
        let status = answer.extensions().get::<FramedStatus>().unwrap().clone();
        assert_eq!(status.code(), None, "no trailers yet");
        let collected = answer.into_body().collect().await.unwrap();
        assert!(collected.trailers().is_none(), "the trailers went into the body");
        assert_eq!(collected.to_bytes(), GRPC_WEB_ANSWER);
        assert_eq!(status.code(), Some(0), "their status, for the access log");
    }

    #[tokio::test]
    async fn a_text_answer_is_base64_padded_once_at_its_end() {
        let mut answer = grpc_answer();
        call(&headers("application/grpc-web-text")).unwrap().to_grpc_web(&mut answer);
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/grpc-web-text");
        let text = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(text, STANDARD.encode(GRPC_WEB_ANSWER));
    }

    /// `whole` cut into pieces at `rng`'s points, a frame each.
    fn pieces(rng: &mut Rng, whole: &[u8]) -> Body {
        let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(whole.len() + 1)).collect();
        cuts.extend([0, whole.len()]);
        cuts.sort_unstable();
        let pieces = cuts.windows(2).map(|w| Frame::data(Bytes::copy_from_slice(&whole[w[0]..w[1]])));
        frames(pieces.collect())
    }

    /// Seeded: messages, each base64-encoded and padded apart (as a client may send them),
    /// cut anywhere, decode to the messages; the same text with a few bytes changed decodes or
    /// fails, never panics. Answers of any frames, cut anywhere, come out in base64 that decodes
    /// to the binary answer.
    #[tokio::test]
    async fn base64_both_ways_holds_for_any_cut() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let messages: Vec<Vec<u8>> = (0..1 + rng.below(4))
                .map(|_| (0..rng.below(40)).map(|_| rng.draw() as u8).collect())
                .collect();
            let text: String = messages.iter().map(|m| STANDARD.encode(m)).collect();
            let mut fields = headers("application/grpc-web-text");
            let sent = pieces(&mut rng, text.as_bytes());
            let decoded = call(&fields).unwrap().to_grpc(&mut fields, sent).collect().await;
            assert_eq!(decoded.unwrap().to_bytes(), messages.concat(), "{text}");

            let mutated = mutate(&mut rng, text.as_bytes(), &[b"=", b"*", b"\n"]);
            let mut fields = headers("application/grpc-web-text");
            let sent = pieces(&mut rng, &mutated);
            let _ = call(&fields).unwrap().to_grpc(&mut fields, sent).collect().await;

            let data = messages.concat();
            let answer = |rng: &mut Rng| {
                let mut answer = Response::new(pieces(rng, &data));
                answer.headers_mut().insert(header::CONTENT_TYPE, "application/grpc".parse().unwrap());
                answer
            };
            let mut text = answer(&mut rng);
            call(&headers("application/grpc-web-text")).unwrap().to_grpc_web(&mut text);
            let text = text.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(STANDARD.decode(&text).unwrap(), data);
        }
    }

    #[tokio::test]
    async fn a_trailers_only_answer_or_one_not_grpcs_goes_as_it_came() {
        let mut answer = Response::new(body::empty());
        answer.headers_mut().insert(header::CONTENT_TYPE, "application/grpc".parse().unwrap());
        answer.headers_mut().insert("grpc-status", "12".parse().unwrap());
        call(&headers("application/grpc-web")).unwrap().to_grpc_web(&mut answer);
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/grpc-web");
        assert!(answer.body().is_end_stream());

        let mut page = Response::new(body::full(Bytes::from_static(b"<h1>502</h1>")));
        page.headers_mut().insert(header::CONTENT_TYPE, "text/html".parse().unwrap());
        call(&headers("application/grpc-web-text")).unwrap().to_grpc_web(&mut page);
        assert_eq!(page.headers()[header::CONTENT_TYPE], "text/html");
        assert_eq!(page.into_body().collect().await.unwrap().to_bytes(), "<h1>502</h1>");
    }
}
