//! A client's HTTP/2 request as the pipeline takes it: its body read under flow control, its
//! cookies in one field, a padded field value marked malformed, a gRPC call marked (the head's
//! marks are HTTP/3's too).
use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use h2::RecvStream;
use http_body_util::BodyExt;
use hyper::{
    Request,
    body::{Body as HttpBody, Frame, SizeHint},
    header::{self, HeaderValue},
};

use crate::proxy::{
    body::{self, Body},
    phase::{guard::Malformed, respond::GrpcCall},
};

/// then its trailers.
struct Incoming {
    recv: RecvStream,
    data_done: bool,
    /// What its Content-Length leaves to read (h2 refuses a body of another length).
    left: Option<u64>,
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
                    self.left = self.left.map(|left| left.saturating_sub(data.len() as u64));
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

    fn size_hint(&self) -> SizeHint {
        self.left.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// A request as the pipeline takes it (`marked`): a request that ends with its head (most) has
/// an empty body, which needs no box.
pub(super) fn request(mut request: Request<RecvStream>) -> Request<Body> {
    marked(&mut request);
    if request.body().is_end_stream() {
        return request.map(|_| body::empty());
    }
    let left = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    request.map(|recv| Incoming { recv, data_done: false, left }.boxed())
}

/// An HTTP/2 or HTTP/3 request's head as the pipeline takes it: its cookies in one field, a
/// gRPC call marked, and a field value that begins or ends with a space or tab marked
/// malformed (RFC 9113 §8.2.1, RFC 9114 §4.2), which h2 and h3 let through, for the guard to
/// refuse (400, logged and counted), as nghttp2, and so Envoy, refuse it. An HTTP/1.1 backend
/// would read such a value trimmed where the proxy's own steps read it whole.
pub fn marked<T>(request: &mut Request<T>) {
    let (mut cookies, mut padded, mut grpc) = (0, false, false);
    for (name, value) in request.headers() {
        if let (Some(first), Some(last)) = (value.as_bytes().first(), value.as_bytes().last()) {
            padded |= matches!(first, b' ' | b'\t') || matches!(last, b' ' | b'\t');
        }
        cookies += usize::from(name == header::COOKIE);
        grpc |= name == header::CONTENT_TYPE && value.as_bytes().starts_with(b"application/grpc");
    }
    if padded {
        request.extensions_mut().insert(Malformed("a field value begins or ends with whitespace"));
    }
    if grpc {
        request.extensions_mut().insert(GrpcCall);
    }
    if cookies > 1 {
        join_cookies(request.headers_mut());
    }
}

/// Joins a request's Cookie fields into one, `; ` between them (RFC 9113 §8.2.3). HTTP/2 lets
/// a client send each cookie as a field of its own, and browsers do (HPACK then indexes each
/// apart), but an HTTP/1.1 backend expects one Cookie field (RFC 6265 §5.4) and may read only
/// the first. nginx, HAProxy and Envoy join them too.
pub(super) fn join_cookies(headers: &mut hyper::HeaderMap) {
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
