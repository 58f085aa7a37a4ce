//! Compress: a route's answers gzipped on their way to a client that accepts gzip (`compress`),
//! as nginx's `gzip` and Envoy's compressor do. An answer is compressed when it is a success
//! with a body (2xx but 204 and 206, to a method other than HEAD), of one of the route's media
//! types, not coded already, not marked `no-transform`, and not shorter than the route's least
//! length when its length is known. Its Content-Length goes (the coded length is not known
//! until the end), Vary gains Accept-Encoding, a strong ETag becomes weak (the bytes differ
//! from the identity answer's) and Accept-Ranges goes (ranges would be of the identity bytes),
//! as nginx does.
//!
//! A body of known length up to 64 KiB is gathered and deflated whole, and goes out with its
//! coded length. Any other is deflated frame by frame, each frame flushed (a sync flush), so a
//! streamed answer (server-sent events, a long poll) reaches the client as promptly as it would
//! uncompressed; a long frame is deflated 64 KiB a poll, so one answer holds its worker for at
//! most about 140 µs at a time.
//!
//! flate2 on zlib-rs (pure Rust) does the deflating. Its state (zlib's window, hash chains and
//! pending buffer: 316 KiB resident, measured) is taken when deflating starts and reset into a
//! few spares per worker when it ends (`SPARE`): made afresh for each answer, zeroing it took
//! 16% of the worker's time.
use std::{
    cell::RefCell,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, FlushCompress, Status};
use http_body_util::BodyExt as _;
use hyper::{
    HeaderMap, Method, Response, StatusCode,
    body::{Frame, SizeHint},
    header::{self, HeaderValue},
};

use crate::{
    config::CompressConfig,
    proxy::{body::Body, phase::headers::vary_by},
};

/// Whether a request's Accept-Encoding takes gzip (RFC 9110 §12.5.3): named (or `x-gzip`) with
/// a weight above 0, or not named and `*` with a weight above 0.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let (mut gzip, mut any) = (None, None);
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for element in value.split(',') {
            let mut params = element.split(';');
            let coding = params.next().unwrap_or("").trim();
            let weighted = params.all(|p| !is_zero_weight(p));
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(gzip.unwrap_or(false) || weighted);
            } else if coding == "*" {
                any = Some(weighted);
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// Whether a parameter is a weight of zero (`q=0`, `q=0.0`, `Q=0.000`).
fn is_zero_weight(param: &str) -> bool {
    let Some((name, value)) = param.split_once('=') else { return false };
    name.trim().eq_ignore_ascii_case("q") && {
        let value = value.trim();
        value
            .strip_prefix('0')
            .is_some_and(|rest| rest.is_empty() || rest.trim_start_matches('.').bytes().all(|b| b == b'0'))
    }
}

/// Gzips `response` when the route's `config` and the answer allow it (the module's header
/// says when); `gzip` is whether the client accepts it, `method` its request's.
pub fn apply(response: &mut Response<Body>, config: &CompressConfig, gzip: bool, method: &Method) {
    let Some(length) = gzip.then(|| compressible(response, config, method)).flatten() else { return };
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ACCEPT_RANGES);
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    vary_by(headers, "Accept-Encoding");
    if let Some(etag) = headers.get(header::ETAG)
        && !etag.as_bytes().starts_with(b"W/")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(weak) = HeaderValue::from_bytes(&weak) {
            headers.insert(header::ETAG, weak);
        }
    }
    let body = std::mem::replace(response.body_mut(), crate::proxy::body::empty());
    *response.body_mut() = Gzipped::new(body, config.level, length).boxed();
}

/// Deflate states kept per worker thread for the next answers, with their levels.
const SPARE: usize = 4;
thread_local! {
    static SPARES: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
}

/// A gzip stream's deflate state (zlib's, with its gzip header and trailer: window bits 15),
/// given back to its worker's spares when dropped.
struct Encoder {
    level: u32,
    deflate: Option<Compress>,
}

impl Encoder {
    /// A spare state at `level`, or a new one.
    fn take(level: u32) -> Encoder {
        let spare = SPARES.with(|spares| {
            let mut spares = spares.borrow_mut();
            let at = spares.iter().position(|(l, _)| *l == level)?;
            Some(spares.swap_remove(at).1)
        });
        let deflate = spare.unwrap_or_else(|| Compress::new_gzip(Compression::new(level), 15));
        Encoder { level, deflate: Some(deflate) }
    }

    /// `input` deflated, all of it flushed out (`Sync`) or the stream ended (`Finish`).
    fn deflate(&mut self, input: &[u8], flush: FlushCompress) -> Result<Bytes, BoxError> {
        let deflate = self.deflate.as_mut().expect("held until dropped");
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let mut rest = input;
        loop {
            let before = deflate.total_in();
            let status = deflate.compress_vec(rest, &mut out, flush)?;
            rest = &rest[(deflate.total_in() - before) as usize..];
            // zlib's rule: a flush is done when it left room in the output, a finish at the end.
            let done = match flush {
                FlushCompress::Finish => status == Status::StreamEnd,
                _ => rest.is_empty() && out.len() < out.capacity(),
            };
            if done {
                return Ok(Bytes::from(out));
            }
            out.reserve(out.capacity().max(1024));
        }
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        let Some(mut deflate) = self.deflate.take() else { return };
        // Reset (its hash table cleared) only when kept; a thread's spares are gone once it
        // ends, and a state dropped then is just freed.
        let _ = SPARES.try_with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < SPARE {
                deflate.reset();
                spares.push((self.level, deflate));
            }
        });
    }
}

/// Whether the answer is one to compress (the module's header): then Some, with its length if
/// known.
fn compressible(response: &Response<Body>, config: &CompressConfig, method: &Method) -> Option<Option<u64>> {
    use hyper::body::Body as _;
    let status = response.status();
    if *method == Method::HEAD
        || !status.is_success()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::PARTIAL_CONTENT
    {
        return None;
    }
    let headers = response.headers();
    if headers.contains_key(header::CONTENT_ENCODING) {
        return None;
    }
    let no_transform = headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("no-transform")))
    });
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let listed = media.is_some_and(|media| config.types.contains(&media));
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .or(response.body().size_hint().exact());
    (!no_transform && listed && length.is_none_or(|n| n >= config.min_bytes)).then_some(length)
}

/// A body gzipped. One of a known length up to `WHOLE` is gathered and deflated whole, at once:
/// its deflate state is taken and given back in that one step, so a worker's few spares serve
/// every such answer however many are in flight (taken when the answer began, 64 connections
/// in flight made one a request). Any other is deflated frame by frame, each flushed; trailers,
/// if the inner body has them, come after the gzip's end.
struct Gzipped {
    inner: Body,
    level: u32,
    stage: Stage,
    /// Taken at the first deflate; given back at the gzip's end or when the body is dropped.
    encoder: Option<Encoder>,
    trailers: Option<HeaderMap>,
}

enum Stage {
    /// Gathering a body of known length before deflating it whole.
    Gathering(BytesMut),
    /// Deflating frame by frame: what is left of the last frame.
    Streaming(Bytes),
    /// The gzip's end is out; the trailers may follow.
    Ended,
}

/// The longest body gathered to be deflated whole (nginx's gzip buffers hold 32 KiB to 128 KiB).
const WHOLE: u64 = 64 * 1024;
/// The most of a streamed frame deflated in one poll (about 140 µs at level 1).
const PIECE: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Gzipped {
    fn new(inner: Body, level: u32, length: Option<u64>) -> Gzipped {
        let stage = match length {
            Some(n) if n <= WHOLE => Stage::Gathering(BytesMut::with_capacity(n as usize)),
            _ => Stage::Streaming(Bytes::new()),
        };
        Gzipped { inner, level, stage, encoder: None, trailers: None }
    }

    /// `input` deflated and flushed out; with `end`, the gzip's end too, the state given back.
    fn deflate(&mut self, input: &[u8], end: bool) -> Result<Bytes, BoxError> {
        let level = self.level;
        let encoder = self.encoder.get_or_insert_with(|| Encoder::take(level));
        if !end {
            return encoder.deflate(input, FlushCompress::Sync);
        }
        let out = encoder.deflate(input, FlushCompress::Finish);
        self.encoder = None;
        self.stage = Stage::Ended;
        out
    }

    /// What is gathered (or nothing), deflated to the gzip's end.
    fn end(&mut self) -> Result<Bytes, BoxError> {
        match std::mem::replace(&mut self.stage, Stage::Ended) {
            Stage::Gathering(gathered) => self.deflate(&gathered, true),
            _ => self.deflate(&[], true),
        }
    }
}

impl hyper::body::Body for Gzipped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Stage::Ended = this.stage {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            // A long frame is deflated a piece a poll: the worker's other connections wait for
            // at most one piece's work.
            if let Stage::Streaming(pending) = &mut this.stage
                && !pending.is_empty()
            {
                let piece = pending.split_to(pending.len().min(PIECE));
                let ended = pending.is_empty() && this.inner.is_end_stream();
                match this.deflate(&piece, ended) {
                    Ok(out) if out.is_empty() => continue,
                    out => return Poll::Ready(Some(out.map(Frame::data))),
                }
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => return Poll::Ready(Some(this.end().map(Frame::data))),
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    this.trailers = frame.into_trailers().ok();
                    return Poll::Ready(Some(this.end().map(Frame::data)));
                }
            };
            match &mut this.stage {
                Stage::Gathering(gathered) => {
                    gathered.extend_from_slice(&data);
                    if this.inner.is_end_stream() {
                        return Poll::Ready(Some(this.end().map(Frame::data)));
                    }
                    if gathered.len() as u64 > WHOLE {
                        // Longer than its length said: streamed from here.
                        this.stage = Stage::Streaming(std::mem::take(gathered).freeze());
                    }
                }
                Stage::Streaming(pending) => *pending = data,
                Stage::Ended => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.stage, Stage::Ended) && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    use crate::proxy::{body, test_bed::gunzip};

    fn config() -> CompressConfig {
        CompressConfig { types: vec!["text/html".into(), "application/json".into()], min_bytes: 16, level: 1 }
    }

    fn answer(content_type: &str, body: &'static str) -> Response<Body> {
        let mut response = Response::new(body::full(Bytes::from_static(body.as_bytes())));
        response.headers_mut().insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        response.headers_mut().insert(header::CONTENT_LENGTH, body.len().into());
        response
    }

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        let accepts = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, value.parse().unwrap());
            accepts_gzip(&headers)
        };
        for yes in ["gzip", "GZIP", "br, gzip;q=0.5", "x-gzip", "*", "gzip;q=0.001", "identity, *;q=1"] {
            assert!(accepts(yes), "{yes}");
        }
        for no in ["br", "identity", "gzip;q=0", "gzip; q=0.000", "*;q=0", "*, gzip;q=0", "gzip;Q=0."] {
            assert!(!accepts(no), "{no}");
        }
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn a_listed_answer_is_gzipped_whole_and_marked() {
        let text = "<p>hello hello hello hello hello</p>";
        let mut response = answer("text/html; charset=utf-8", text);
        response.headers_mut().insert(header::ETAG, "\"v1\"".parse().unwrap());
        response.headers_mut().insert(header::ACCEPT_RANGES, "bytes".parse().unwrap());
        response.headers_mut().insert(header::VARY, "Cookie".parse().unwrap());
        apply(&mut response, &config(), true, &Method::GET);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_ENCODING], "gzip");
        assert_eq!(headers[header::ETAG], "W/\"v1\"");
        assert!(
            !headers.contains_key(header::CONTENT_LENGTH) && !headers.contains_key(header::ACCEPT_RANGES)
        );
        let vary: Vec<_> = headers.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Cookie", "Accept-Encoding"]);
        // Whole at once: one frame, and the body says it has ended (so it is sent with a length).
        let body = response.body_mut();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(hyper::body::Body::is_end_stream(body));
        assert_eq!(gunzip(&first), text);
    }

    #[tokio::test]
    async fn a_long_frame_is_deflated_a_piece_a_poll() {
        let text: String = (0..20_000).map(|i| format!("{i:09} ")).collect();
        let mut response = Response::new(body::full(Bytes::from(text.clone())));
        response.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        apply(&mut response, &config(), true, &Method::GET);
        let (mut coded, mut frames) = (Vec::new(), 0);
        while let Some(frame) = response.body_mut().frame().await {
            coded.extend_from_slice(&frame.unwrap().into_data().unwrap());
            frames += 1;
        }
        // 200,000 bytes in one frame: four pieces of at most 64 KiB.
        assert_eq!(frames, text.len().div_ceil(PIECE));
        assert_eq!(gunzip(&coded), text);
    }

    #[tokio::test]
    async fn a_reused_state_starts_each_answer_afresh() {
        // The first answer, streamed, is dropped half sent (a client gone); its state is reset
        // and reused.
        let text = "<p>hello hello hello hello hello</p>";
        let (sender, frames) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let mut cut = Response::new(tokio_stream_like(frames));
        cut.headers_mut().insert(header::CONTENT_TYPE, "text/html".parse().unwrap());
        apply(&mut cut, &config(), true, &Method::GET);
        sender.send(Ok(Frame::data(Bytes::from_static(b"<p>a beginning, never ended")))).await.unwrap();
        cut.body_mut().frame().await.unwrap().unwrap();
        drop(cut);
        assert_eq!(SPARES.with(|spares| spares.borrow().len()), 1, "the cut answer's state was not kept");
        for round in 0..3 {
            let mut response = answer("text/html", text);
            apply(&mut response, &config(), true, &Method::GET);
            let data = response.body_mut().frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(gunzip(&data), text, "answer {round}");
        }
        assert!(SPARES.with(|spares| spares.borrow().len()) >= 1, "no state was kept");
    }

    #[tokio::test]
    async fn answers_that_must_stay_as_they_are_are_left_alone() {
        let text = "{\"a\": \"long enough to compress\"}";
        type Change = Box<dyn Fn(&mut Response<Body>)>;
        let cases: [(&str, Change); 8] = [
            (
                "an unlisted type",
                Box::new(|r| {
                    drop(r.headers_mut().insert(header::CONTENT_TYPE, "image/png".parse().unwrap()))
                }),
            ),
            ("no type", Box::new(|r| drop(r.headers_mut().remove(header::CONTENT_TYPE)))),
            (
                "coded already",
                Box::new(|r| drop(r.headers_mut().insert(header::CONTENT_ENCODING, "br".parse().unwrap()))),
            ),
            (
                "no-transform",
                Box::new(|r| {
                    drop(
                        r.headers_mut()
                            .insert(header::CACHE_CONTROL, "public, No-Transform".parse().unwrap()),
                    )
                }),
            ),
            ("too short", Box::new(|r| drop(r.headers_mut().insert(header::CONTENT_LENGTH, 15.into())))),
            ("a 204", Box::new(|r| *r.status_mut() = StatusCode::NO_CONTENT)),
            ("a 206", Box::new(|r| *r.status_mut() = StatusCode::PARTIAL_CONTENT)),
            ("a 404", Box::new(|r| *r.status_mut() = StatusCode::NOT_FOUND)),
        ];
        for (what, change) in cases {
            let mut response = answer("application/json", text);
            change(&mut response);
            apply(&mut response, &config(), true, &Method::GET);
            assert!(!response.headers().get(header::CONTENT_ENCODING).is_some_and(|v| v == "gzip"), "{what}");
        }
        for (gzip, method) in [(false, Method::GET), (true, Method::HEAD)] {
            let mut response = answer("application/json", text);
            apply(&mut response, &config(), gzip, &method);
            assert!(!response.headers().contains_key(header::CONTENT_ENCODING), "{gzip} {method}");
            assert_eq!(response.headers()[header::CONTENT_LENGTH], text.len().to_string().as_str());
        }
    }

    #[tokio::test]
    async fn a_streamed_answer_is_flushed_frame_by_frame_and_keeps_its_trailers() {
        let (sender, inner) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = tokio_stream_like(inner);
        let mut response = Response::new(stream);
        response.headers_mut().insert(header::CONTENT_TYPE, "text/html".parse().unwrap());
        apply(&mut response, &config(), true, &Method::GET);
        let body = response.body_mut();
        // Each event reaches the client before the next is sent: decodable as far as it goes.
        let mut got = Vec::new();
        for event in ["data: one\n\n", "data: two\n\n"] {
            sender.send(Ok(Frame::data(Bytes::from_static(event.as_bytes())))).await.unwrap();
            got.extend_from_slice(&body.frame().await.unwrap().unwrap().into_data().unwrap());
            let mut decoded = Vec::new();
            let mut decoder = flate2::write::GzDecoder::new(&mut decoded);
            decoder.write_all(&got).unwrap();
            decoder.flush().unwrap();
            drop(decoder);
            assert!(String::from_utf8_lossy(&decoded).ends_with(event), "{event:?} not yet decodable");
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "1".parse().unwrap());
        sender.send(Ok(Frame::trailers(trailers))).await.unwrap();
        drop(sender);
        got.extend_from_slice(&body.frame().await.unwrap().unwrap().into_data().unwrap());
        assert_eq!(gunzip(&got), "data: one\n\ndata: two\n\n");
        let last = body.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(last["x-checksum"], "1");
        assert!(body.frame().await.is_none());
    }

    /// A body whose frames come from a channel, as a backend's streamed answer.
    fn tokio_stream_like(mut frames: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>) -> Body {
        let stream = futures_util::stream::poll_fn(move |cx| frames.poll_recv(cx));
        http_body_util::StreamBody::new(stream).boxed()
    }
}
