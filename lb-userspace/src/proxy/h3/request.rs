//! A client's HTTP/3 request as the pipeline takes it: the head's marks HTTP/2's share, a
//! connection-specific field marked malformed, and its body read from the request stream.
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::{
    Request,
    body::{Body as HttpBody, Frame, SizeHint},
    header::{self, HeaderName},
};

use super::RecvHalf;
use crate::proxy::{
    body::{self, Body},
    h2,
    idle::Activity,
    phase::guard::Malformed,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A request stream's body: its DATA frames, then its trailers; each chunk marks the
/// connection active (a QUIC connection has no byte stream to watch).
struct Incoming {
    recv: RecvHalf,
    /// What was read before the pipeline asked (`request` looks for the stream's end).
    first: Option<Result<Frame<Bytes>, Error>>,
    data_done: bool,
    ended: bool,
    left: Option<u64>,
    activity: Arc<Activity>,
}

impl HttpBody for Incoming {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(first));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match ready!(self.recv.poll_recv_data(cx)) {
                Ok(Some(mut chunk)) => {
                    let chunk = chunk.copy_to_bytes(chunk.remaining());
                    return Poll::Ready(Some(Ok(self.data(chunk))));
                }
                Ok(None) => self.data_done = true,
                Err(err) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(err.into())));
                }
            }
        }
        let trailers = ready!(self.recv.poll_recv_trailers(cx));
        self.ended = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(err) => Poll::Ready(Some(Err(err.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.first.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.left.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl Incoming {
    fn data(&mut self, chunk: Bytes) -> Frame<Bytes> {
        self.activity.touch();
        self.left = self.left.map(|left| left.saturating_sub(chunk.len() as u64));
        Frame::data(chunk)
    }
}

/// `head` with the body `recv` brings. A request whose stream ended with its head (most: a
/// client sends HEADERS and the stream's FIN in one packet) has an empty body, which needs no
/// box.
pub fn request(mut head: Request<()>, recv: RecvHalf, activity: Arc<Activity>) -> Request<Body> {
    h2::marked(&mut head);
    if connection_specific(head.headers()) {
        head.extensions_mut().insert(Malformed("a connection-specific field"));
    }
    let left = head.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    let mut body = Incoming { recv, first: None, data_done: false, ended: false, left, activity };
    // What has come already: the end, a first chunk, or nothing yet.
    let waker = futures_util::task::noop_waker();
    if let Poll::Ready(first) = Pin::new(&mut body).poll_frame(&mut Context::from_waker(&waker)) {
        match first {
            None => return head.map(|()| body::empty()),
            Some(first) => body.first = Some(first),
        }
    }
    head.map(|()| body.boxed())
}

/// Whether a head has a field HTTP/3 has no use for and forbids (RFC 9114 §4.2): the
/// connection's own (`Connection`, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`,
/// `Upgrade`), or `TE` other than `trailers`. h2 refuses these in HTTP/2; h3 lets them
/// through, and a backend could read a Transfer-Encoding as framing.
fn connection_specific(headers: &hyper::HeaderMap) -> bool {
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    headers.iter().any(|(name, value)| {
        name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == KEEP_ALIVE
            || name == PROXY_CONNECTION
            || (name == header::TE && value != "trailers")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_fields_are_found_and_te_trailers_passes() {
        let with = |name: &'static str, value: &'static str| {
            let mut headers = hyper::HeaderMap::new();
            headers.insert(header::ACCEPT, "*/*".parse().unwrap());
            headers.insert(HeaderName::from_static(name), value.parse().unwrap());
            connection_specific(&headers)
        };
        for name in ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"] {
            assert!(with(name, "x"), "{name}");
        }
        assert!(with("te", "gzip"));
        assert!(!with("te", "trailers"));
        assert!(!with("accept-encoding", "gzip"));
    }
}
