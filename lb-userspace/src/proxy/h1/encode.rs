//! Writing HTTP/1.1 heads and chunk framing into a byte buffer: the response head a client
//! gets (and an interim one before it), the request head a backend gets, the size line of a
//! chunk, and the last chunk with its trailers.
use hyper::{HeaderMap, Method, StatusCode, Version, header, header::HeaderName};

use crate::proxy::{
    date::date,
    h1::{body, head},
    own_fields::{self, VIA, X_REQUEST_ID},
};

/// How the body written after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out {
    /// No body follows (HEAD, 1xx/204/304, or an empty one with its length written).
    None,
    /// `Content-Length: n` followed by n bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Written until the connection closes (an HTTP/1.0 client).
    Close,
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What `fields` saw on its way through a head's fields (a lookup would hash each name).
#[derive(Clone, Copy, Default)]
struct Seen {
    date: bool,
    connection: bool,
    /// A Connection field lists `close`.
    close: bool,
}

/// The head's fields but those named in `replaced` (written by the caller instead).
fn fields(out: &mut Vec<u8>, headers: &HeaderMap, replaced: &[HeaderName]) -> Seen {
    let mut seen = Seen::default();
    for (name, value) in headers {
        // Framing is the writer's to say, never copied.
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || replaced.contains(name) {
            continue;
        }
        seen.date |= name == header::DATE;
        if name == header::CONNECTION {
            seen.connection = true;
            seen.close |= head::value_lists(value.as_bytes(), "close");
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    seen
}

fn framing(out: &mut Vec<u8>, body: Out) {
    match body {
        Out::Length(n) => field(out, b"content-length", itoa::Buffer::new().format(n).as_bytes()),
        Out::Chunked => field(out, b"transfer-encoding", b"chunked"),
        Out::None | Out::Close => {}
    }
}

/// What a response head's Connection field says, when it says anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// No field: the connection stays open (HTTP/1.1's default).
    Unsaid,
    /// `Connection: close`.
    Close,
    /// `Connection: keep-alive`, for an HTTP/1.0 client.
    KeepAlive,
}

/// The fields the proxy writes beside an answer's own, in place of the answer's fields of the
/// same names (written here, not inserted into the answer's map: an insert a field and
/// request, ~230-330 instructions).
#[derive(Clone, Copy, Debug)]
pub struct Beside<'a> {
    /// The request's ID, as X-Request-Id.
    pub request_id: &'a [u8],
    /// The answer is a backend's (or the cache's), which came in this protocol: Via names it
    /// and the proxy (`own_fields::via`).
    pub via: Option<Version>,
}

/// Written in place of the answer's own fields: X-Request-Id always, Via too when the proxy
/// says it (a `static`, as `headers::HOP_BY_HOP`).
static WRITTEN_BESIDE: [HeaderName; 2] = [X_REQUEST_ID, VIA];

/// A response head, with the fields the proxy says `beside` the answer's. `length` is the Content-Length
/// to keep for a HEAD or 304 answer (whose body is not sent). The answer's own Connection
/// field, if it has one, is written as it is, and `connection`'s only when it says more (a
/// `close` the answer's lacks; a `keep-alive` when the answer has none). Returns whether the
/// answer's own says `close` (a refusal made `closing`): the connection then closes after it.
#[must_use]
pub fn response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body: Out,
    length: Option<&[u8]>,
    connection: Connection,
    beside: Beside<'_>,
) -> bool {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let replaced = if beside.via.is_some() { &WRITTEN_BESIDE[..] } else { &WRITTEN_BESIDE[..1] };
    let seen = fields(out, headers, replaced);
    field(out, b"x-request-id", beside.request_id);
    if let Some(via) = beside.via {
        field(out, b"via", own_fields::via(via).as_bytes());
    }
    framing(out, body);
    if let Some(length) = length {
        field(out, b"content-length", length);
    }
    if !seen.date {
        field(out, b"date", date().as_bytes());
    }
    match connection {
        Connection::Close if !seen.close => field(out, b"connection", b"close"),
        Connection::KeepAlive if !seen.connection => field(out, b"connection", b"keep-alive"),
        Connection::Close | Connection::KeepAlive | Connection::Unsaid => {}
    }
    out.extend_from_slice(b"\r\n");
    seen.close
}

/// An interim (1xx) answer's head: its status line and fields (framing fields left out: an
/// interim answer has no body).
pub fn interim_head(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    fields(out, headers, &[]);
    out.extend_from_slice(b"\r\n");
}

/// Fields a request head carries after the request's own: their lines (`name: value\r\n`), and
/// the names of the request's own fields they replace (left out).
#[derive(Clone, Copy, Debug, Default)]
pub struct Added<'a> {
    pub lines: &'a [u8],
    pub replacing: &'a [HeaderName],
}

/// A request head to a backend (`target` in origin form; Host among `headers`).
pub fn request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    added: Added<'_>,
    body: Out,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    fields(out, headers, added.replacing);
    out.extend_from_slice(added.lines);
    framing(out, body);
    out.extend_from_slice(b"\r\n");
}

/// The line before a chunk of `len` bytes.
pub fn chunk_size(len: usize) -> String {
    format!("{len:x}\r\n")
}

/// The last chunk and the end of the body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The last chunk with `trailers` after it (those not forbidden), and the end of the body.
pub fn last_chunk_with(trailers: &HeaderMap) -> Vec<u8> {
    let mut out = b"0\r\n".to_vec();
    for (name, value) in trailers {
        if !body::TRAILER_FORBIDDEN.contains(name) {
            field(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 200's head as text, and whether it said close.
    fn answer_head(
        headers: &HeaderMap,
        out: Out,
        connection: Connection,
        beside: Beside<'_>,
    ) -> (String, bool) {
        let mut head = Vec::new();
        let close = response_head(&mut head, StatusCode::OK, headers, out, None, connection, beside);
        (String::from_utf8(head).unwrap(), close)
    }

    #[test]
    fn a_last_chunk_carries_the_trailers_but_those_that_frame_or_route() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        trailers.append("x-sum", "a".parse().unwrap());
        trailers.append("x-sum", "b".parse().unwrap());
        let last = last_chunk_with(&trailers);
        assert_eq!(String::from_utf8(last).unwrap(), "0\r\ngrpc-status: 0\r\nx-sum: a\r\nx-sum: b\r\n\r\n");
        assert_eq!(last_chunk_with(&HeaderMap::new()), LAST_CHUNK);
    }

    #[test]
    fn heads_carry_the_writers_framing_not_the_copied_one() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "a".parse().unwrap());
        headers.insert(header::CONTENT_LENGTH, "99".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        let mut out = Vec::new();
        request_head(&mut out, &Method::POST, "/x", &headers, Added::default(), Out::Length(3));
        assert_eq!(out, b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\n");
        // Added fields come after the request's own and replace theirs.
        let mut own = HeaderMap::new();
        own.insert(header::HOST, "a".parse().unwrap());
        own.insert(header::VIA, "client".parse().unwrap());
        let added = Added { lines: b"via: 1.1 sluice\r\n", replacing: &[header::VIA] };
        out.clear();
        request_head(&mut out, &Method::GET, "/", &own, added, Out::None);
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: a\r\nvia: 1.1 sluice\r\n\r\n");
        headers.insert(header::DATE, "d".parse().unwrap());
        // The answer's own request ID is replaced by the request's.
        headers.insert(X_REQUEST_ID, "backend's".parse().unwrap());
        let beside = Beside { request_id: b"id-1", via: None };
        let (text, close) = answer_head(&headers, Out::Chunked, Connection::Close, beside);
        assert!(!close, "the answer's own fields do not say close");
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nhost: a\r\ndate: d\r\nx-request-id: id-1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        // A head without Date gets the proxy's, once; an HTTP/1.0 client is told keep-alive.
        headers.remove(header::DATE);
        let beside = Beside { request_id: b"id-2", via: None };
        let (text, _) = answer_head(&headers, Out::None, Connection::KeepAlive, beside);
        assert_eq!(text.matches("date: ").count(), 1, "{text}");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nhost: a\r\nx-request-id: id-2\r\ndate: "), "{text}");
        assert!(text.ends_with("connection: keep-alive\r\n\r\n"), "{text}");
        assert_eq!(chunk_size(255), "ff\r\n");
    }

    #[test]
    fn a_backends_answer_names_the_proxy_in_via_once() {
        let mut headers = HeaderMap::new();
        headers.insert(header::DATE, "d".parse().unwrap());
        headers.insert(VIA, "1.1 backend-side".parse().unwrap());
        let head =
            |via| answer_head(&headers, Out::None, Connection::Unsaid, Beside { request_id: b"i", via }).0;
        // The proxy's Via in place of the backend's, as an insert into the map left it.
        assert_eq!(
            head(Some(Version::HTTP_11)),
            "HTTP/1.1 200 OK\r\ndate: d\r\nx-request-id: i\r\nvia: 1.1 sluice\r\n\r\n"
        );
        // An answer the proxy made keeps what its map holds (nothing, in practice).
        assert_eq!(
            head(None),
            "HTTP/1.1 200 OK\r\ndate: d\r\nvia: 1.1 backend-side\r\nx-request-id: i\r\n\r\n"
        );
    }

    #[test]
    fn an_answers_own_connection_field_is_said_once_and_its_close_is_told() {
        let head = |own: &str, connection| {
            let mut headers = HeaderMap::new();
            headers.insert(header::DATE, "d".parse().unwrap());
            headers.insert(header::CONNECTION, own.parse().unwrap());
            let mut out = Vec::new();
            let beside = Beside { request_id: b"i", via: None };
            let close = response_head(
                &mut out,
                StatusCode::BAD_REQUEST,
                &headers,
                Out::None,
                None,
                connection,
                beside,
            );
            (String::from_utf8(out).unwrap(), close)
        };
        // A refusal made closing: its own `close`, not a second one from the writer.
        let (text, close) = head("close", Connection::Close);
        assert_eq!(text.to_ascii_lowercase().matches("connection:").count(), 1, "{text}");
        assert!(close);
        // An HTTP/1.0 client that asked to keep the connection is told close, not both.
        let (text, close) = head("Close", Connection::KeepAlive);
        assert!(text.contains("connection: Close\r\n") && !text.contains("keep-alive"), "{text}");
        assert!(close);
        // A 101's `Connection: upgrade` is written as it is, and does not close.
        let (text, close) = head("upgrade", Connection::Unsaid);
        assert!(text.contains("connection: upgrade\r\n"), "{text}");
        assert!(!close);
        // A connection closing for its own reasons says so beside an answer's other option.
        let (text, close) = head("x-option", Connection::Close);
        assert!(
            text.contains("connection: x-option\r\n") && text.ends_with("connection: close\r\n\r\n"),
            "{text}"
        );
        assert!(!close);
    }
}
