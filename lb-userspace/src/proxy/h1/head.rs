//! Message heads (RFC 9112 §2-§6): a request head from a client and a response head from a
//! backend, parsed with `httparse` into `http` types, with the framing each one's body has.
//! Ambiguous framing (Content-Length with Transfer-Encoding, differing lengths, a coding
//! other than a lone `chunked`) is refused here, before anything is forwarded.
use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use hyper::{
    HeaderMap, Method, StatusCode, Uri, Version,
    header::{self, HeaderName, HeaderValue},
};

use smallvec::SmallVec;

use crate::proxy::h1::body::Framing;

/// Header fields a request may carry (HTTP/1.1 and HTTP/2 alike); more get 431.
pub const MAX_HEADER_FIELDS: usize = 100;
/// Header fields a backend's response may carry.
const MAX_RESPONSE_FIELDS: usize = 200;

/// Why a request head is refused: the status it is answered with, and a reason for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {reason}")]
pub struct Refused {
    pub status: StatusCode,
    pub reason: &'static str,
}

fn bad(reason: &'static str) -> Refused {
    Refused { status: StatusCode::BAD_REQUEST, reason }
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request after this one (before the answer's say).
    pub keep_alive: bool,
    /// `Expect: 100-continue` on a request with a body.
    pub expect_continue: bool,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The backend keeps the connection open after this answer.
    pub keep_alive: bool,
}

/// The fields of one head, on the stack when there are few (most heads).
type Ranges = SmallVec<[(HeaderName, std::ops::Range<usize>); 16]>;

/// Where each field of a parsed head sits in its buffer (httparse borrows the buffer; the
/// head is cut out of it afterwards, and the values become slices of that cut, not copies).
/// Fills the caller's list: returned, the list (~800 bytes inline) would be copied.
fn field_ranges(
    buf: &[u8],
    fields: &[httparse::Header<'_>],
    ranges: &mut Ranges,
) -> Result<(), &'static str> {
    let base = buf.as_ptr() as usize;
    ranges.reserve(fields.len());
    for field in fields {
        let name = match common_name(field.name.as_bytes()) {
            Some(name) => name,
            None => HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| "bad header name")?,
        };
        let start = field.value.as_ptr() as usize - base;
        ranges.push((name, start..start + field.value.len()));
    }
    Ok(())
}

/// The names most heads carry, found by their length and first byte, then one compare that
/// ignores case. `HeaderName::from_bytes` lowercases a name into a buffer through a table and
/// then matches it against every standard name: ~115 instructions a field, ~800 a request
/// (`bench l7-instructions`). `name` is a token (httparse lets no other name through): a
/// token that is one of these but for case is that standard name to `from_bytes` too, so both
/// ways give the same `HeaderName`.
fn common_name(name: &[u8]) -> Option<HeaderName> {
    let (candidate, lower): (HeaderName, &[u8]) = match (name.len(), name.first()? | 0x20) {
        (4, b'h') => (header::HOST, b"host"),
        (4, b'd') => (header::DATE, b"date"),
        (6, b's') => (header::SERVER, b"server"),
        (6, b'a') => (header::ACCEPT, b"accept"),
        (10, b'c') => (header::CONNECTION, b"connection"),
        (10, b'u') => (header::USER_AGENT, b"user-agent"),
        (12, b'c') => (header::CONTENT_TYPE, b"content-type"),
        (13, b'c') => (header::CACHE_CONTROL, b"cache-control"),
        (14, b'c') => (header::CONTENT_LENGTH, b"content-length"),
        (15, b'a') => (header::ACCEPT_ENCODING, b"accept-encoding"),
        (17, b't') => (header::TRANSFER_ENCODING, b"transfer-encoding"),
        _ => return None,
    };
    // Setting bit 5 lowercases a letter and leaves the other bytes of a token that these names
    // hold (`-`) as they are; the only other byte it turns into one of them is CR, not a token
    // byte. No early exit: a dozen bytes folded are cheaper than a branch each.
    let differ = name.iter().zip(lower).fold(0u8, |differ, (byte, want)| differ | ((byte | 0x20) ^ want));
    (differ == 0).then_some(candidate)
}

/// A head's fields, read where they sit before they go into a map: what the parser needs of
/// them (framing, connection options, `Expect`) is found by comparing names, with no hashing.
#[derive(Clone, Copy)]
struct Fields<'a> {
    head: &'a [u8],
    ranges: &'a Ranges,
}

impl<'a> Fields<'a> {
    /// The values of every field named `name`, in order.
    fn all(self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.ranges.iter().filter(move |(n, _)| n == name).map(move |(_, range)| &self.head[range.clone()])
    }

    fn has(self, name: &HeaderName) -> bool {
        self.ranges.iter().any(|(n, _)| n == name)
    }

    /// Whether the Connection fields list `token`.
    fn connection_has(self, token: &str) -> bool {
        lists(self.all(&header::CONNECTION), token)
    }
}

/// The comma-separated tokens of a field value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// Whether a field's value lists `token` (case-insensitive).
pub fn value_lists(value: &[u8], token: &str) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether any of a field's values lists `token`.
fn lists<'a>(mut values: impl Iterator<Item = &'a [u8]>, token: &str) -> bool {
    values.any(|value| value_lists(value, token))
}

/// Fields that only speak of this connection and that the parser has read: a Connection field
/// of nothing but `close` / `keep-alive`, and Keep-Alive. They are hop-by-hop, so they would be
/// stripped before forwarding anyway; left out of the map, they cost neither an insert nor a
/// removal (nginx answers every request with `Connection: keep-alive`).
fn read_by_parser(name: &HeaderName, value: &[u8]) -> bool {
    if name == header::CONNECTION {
        return tokens(value)
            .all(|t| t.eq_ignore_ascii_case(b"close") || t.eq_ignore_ascii_case(b"keep-alive"));
    }
    name.as_str() == "keep-alive"
}

/// The head's fields as a map; the values are slices of the head, not copies.
fn header_map(head: &Bytes, ranges: &mut Ranges) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(ranges.len());
    for (name, range) in ranges.drain(..) {
        if read_by_parser(&name, &head[range.clone()]) {
            continue;
        }
        // SAFETY: httparse let through only a value's bytes (HTAB, SP to `~`, and 0x80 and
        // above), all of which a HeaderValue may hold; checking them again was ~2.3% of an
        // HTTP/1.1 request (`bench l7-instructions`). A debug build checks anyway and panics.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(range)) };
        map.append(name, value);
    }
    map
}

/// Why a head's Transfer-Encoding is refused: codings before a final `chunked`.
const UNKNOWN_CODING: &str = "unsupported Transfer-Encoding";
/// The same: no `chunked` last, or `chunked` twice (the body's end cannot be found).
const CHUNKED_NOT_LAST: &str = "Transfer-Encoding not ending in one chunked";

/// A request's framing refused: a coding the proxy does not implement is 501 (RFC 9112 §6.1;
/// nginx answers 501 to every coding but chunked); ambiguous or malformed framing is 400.
fn framing_refused(reason: &'static str) -> Refused {
    match reason {
        UNKNOWN_CODING => Refused { status: StatusCode::NOT_IMPLEMENTED, reason },
        _ => bad(reason),
    }
}

/// The body framing a head's Content-Length and Transfer-Encoding fields give (RFC 9112 §6.3):
/// `Ok(None)` when the message has neither.
fn declared_framing(fields: Fields<'_>) -> Result<Option<Framing>, &'static str> {
    let mut codings = fields.all(&header::TRANSFER_ENCODING).peekable();
    if codings.peek().is_some() {
        if fields.has(&header::CONTENT_LENGTH) {
            return Err("both Content-Length and Transfer-Encoding");
        }
        // Only a lone `chunked` is understood. Without `chunked` last ("xchunked", "chunked,
        // identity") the body's end cannot be found (400, RFC 9112 §6.3); with it last after
        // other codings ("gzip, chunked"), the body could be framed but the proxy does not
        // implement the rest (501, §6.1), and chunked twice is malformed.
        let chunked = |t: &[u8]| t.eq_ignore_ascii_case(b"chunked");
        let (mut count, mut chunked_before, mut last) = (0, false, &b""[..]);
        for token in codings.flat_map(tokens) {
            chunked_before |= count > 0 && chunked(last);
            (count, last) = (count + 1, token);
        }
        return match (chunked(last), count, chunked_before) {
            (true, 1, _) => Ok(Some(Framing::Chunked)),
            (true, _, false) => Err(UNKNOWN_CODING),
            _ => Err(CHUNKED_NOT_LAST),
        };
    }
    let mut length = None;
    for value in fields.all(&header::CONTENT_LENGTH) {
        // `Content-Length: 5, 5` and repeated equal fields are one length; anything else is not.
        for part in tokens(value) {
            if part.is_empty() || part.len() > 18 || !part.iter().all(u8::is_ascii_digit) {
                return Err("bad Content-Length");
            }
            let n: u64 =
                std::str::from_utf8(part).ok().and_then(|s| s.parse().ok()).ok_or("bad Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("differing Content-Length values");
            }
            length = Some(n);
        }
    }
    Ok(length.map(Framing::Length))
}

/// A length sent as several equal values (`5, 5`, repeated fields, `05`) becomes one field in
/// its plain form: what is forwarded (an HTTP/2 peer gets the fields as they are) says the
/// length once, as HAProxy does. A plain single field, the common case, is left as it is, and
/// is found so in the parsed fields, not looked up in the map (~110 instructions a head).
fn one_length(fields: Fields<'_>, framing: Framing) -> Option<HeaderValue> {
    let Framing::Length(n) = framing else { return None };
    let mut values = fields.all(&header::CONTENT_LENGTH);
    let plain = |v: &[u8]| v.iter().all(u8::is_ascii_digit) && (v.len() == 1 || v.first() != Some(&b'0'));
    match (values.next(), values.next()) {
        (Some(value), None) if plain(value) => None,
        _ => Some(HeaderValue::from(n)),
    }
}

/// The head's map, with its length made one (`one_length`).
fn headers(head: &Bytes, ranges: &mut Ranges, framing: Framing) -> HeaderMap {
    let length = one_length(Fields { head, ranges }, framing);
    let mut headers = header_map(head, ranges);
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, length);
    }
    headers
}

/// Parses a request head at the start of `buf` and takes it out: `Ok(None)` while it is
/// incomplete (and under `max_bytes`).
pub fn parse_request(buf: &mut BytesMut, max_bytes: usize) -> Result<Option<RequestHead>, Refused> {
    // Left uninitialized: httparse writes the fields it finds (zeroing 100 would cost more).
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADER_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    // A request line that alone fills the limit is a target too long (414, as nginx answers);
    // else the fields are too large (431).
    let too_large = |buf: &[u8]| match buf[..max_bytes.min(buf.len())].contains(&b'\n') {
        true => {
            Refused { status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, reason: "request head too large" }
        }
        false => Refused { status: StatusCode::URI_TOO_LONG, reason: "request target too long" },
    };
    let length = match request.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) if n > max_bytes => return Err(too_large(buf)),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_bytes => return Err(too_large(buf)),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refused {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                reason: "too many header fields",
            });
        }
        Err(httparse::Error::Version) => {
            return Err(Refused {
                status: StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                reason: "bad HTTP version",
            });
        }
        Err(err) => return Err(bad(parse_reason(err))),
    };
    let method =
        Method::from_bytes(request.method.unwrap_or_default().as_bytes()).map_err(|_| bad("bad method"))?;
    let target = request.path.unwrap_or_default();
    let target_start = target.as_ptr() as usize - buf.as_ptr() as usize;
    let target = target_start..target_start + target.len();
    let version = if request.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut ranges = Ranges::new();
    field_ranges(buf, request.headers, &mut ranges).map_err(bad)?;
    let head = buf.split_to(length).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target)).map_err(|_| bad("bad request target"))?;
    let fields = Fields { head: &head, ranges: &ranges };
    let framing = match declared_framing(fields).map_err(framing_refused)? {
        Some(Framing::Chunked) if version == Version::HTTP_10 => return Err(bad("chunked HTTP/1.0 request")),
        Some(framing) => framing,
        None => Framing::Empty,
    };
    let keep_alive = match version {
        Version::HTTP_10 => fields.connection_has("keep-alive"),
        _ => !fields.connection_has("close"),
    };
    let expect_continue = framing != Framing::Empty
        && framing != Framing::Length(0)
        && fields.all(&header::EXPECT).next().is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    let headers = headers(&head, &mut ranges, framing);
    Ok(Some(RequestHead { method, uri, version, headers, framing, keep_alive, expect_continue }))
}

fn parse_reason(err: httparse::Error) -> &'static str {
    match err {
        httparse::Error::HeaderName => "bad header name",
        httparse::Error::HeaderValue => "bad header value",
        httparse::Error::NewLine => "bad line ending",
        httparse::Error::Status => "bad status",
        httparse::Error::Token => "bad request line",
        _ => "malformed request head",
    }
}

/// Whether an answer to a request with `method` has no body whatever its head says (RFC 9112
/// §6.3): an answer to HEAD, 1xx, 204 and 304.
pub fn answer_is_bodiless(method: &Method, status: StatusCode) -> bool {
    *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Parses a backend's response head to a request with `method` and takes it out of `buf`:
/// `Ok(None)` while incomplete.
pub fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
    max_bytes: usize,
) -> Result<Option<ResponseHead>, &'static str> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_RESPONSE_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let parsed =
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, &mut fields);
    let length = match parsed {
        Ok(httparse::Status::Complete(n)) if n <= max_bytes => n,
        Ok(httparse::Status::Partial) if buf.len() < max_bytes => return Ok(None),
        Ok(_) => return Err("response head too large"),
        Err(_) => return Err("malformed response head"),
    };
    let status = StatusCode::from_u16(response.code.unwrap_or(0)).map_err(|_| "bad status code")?;
    let version = if response.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut ranges = Ranges::new();
    field_ranges(buf, response.headers, &mut ranges)?;
    let head = buf.split_to(length).freeze();
    let fields = Fields { head: &head, ranges: &ranges };
    let framing = if answer_is_bodiless(method, status) {
        Framing::Empty
    } else {
        // A coding other than a lone chunked (`gzip`, `gzip, chunked`) is refused, as HAProxy
        // refuses it: Transfer-Encoding is hop-by-hop, so the client would get the coded bytes
        // with no word of their coding.
        match declared_framing(fields)? {
            Some(framing) => framing,
            None => Framing::Close,
        }
    };
    let keep_alive = framing != Framing::Close
        && match version {
            Version::HTTP_10 => fields.connection_has("keep-alive"),
            _ => !fields.connection_has("close"),
        };
    let headers = headers(&head, &mut ranges, framing);
    Ok(Some(ResponseHead { status, version, headers, framing, keep_alive }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Result<Option<RequestHead>, Refused> {
        parse_request(&mut BytesMut::from(text.as_bytes()), 16 * 1024)
    }

    fn status(text: &str) -> u16 {
        request(text).map(|_| 0).unwrap_or_else(|r| r.status.as_u16())
    }

    #[test]
    fn a_request_head_is_parsed_with_its_framing_and_the_rest_left() {
        let mut buf =
            BytesMut::from(&b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET"[..]);
        let head = parse_request(&mut buf, 1024).unwrap().unwrap();
        assert_eq!((head.method, head.uri.to_string()), (Method::POST, "/a?b=1".to_owned()));
        assert_eq!((head.framing, head.keep_alive), (Framing::Length(3), true));
        assert_eq!(head.headers.get("host").unwrap(), "x");
        assert_eq!(&buf[..], b"abcGET");
        assert!(request("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none(), "incomplete");
        // Bytes above ASCII (obs-text) and tabs are a value's too; the map keeps them as sent.
        let long = format!("caf\u{e9}\t{}", "z".repeat(40));
        let text =
            request(&format!("GET / HTTP/1.1\r\nX-A: caf\u{e9}\r\nX-B: {long}\r\n\r\n")).unwrap().unwrap();
        assert_eq!(text.headers.get("x-a").unwrap().as_bytes(), "caf\u{e9}".as_bytes());
        assert_eq!(text.headers.get("x-b").unwrap().as_bytes(), long.as_bytes());
        let close = request("GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n").unwrap().unwrap();
        assert!(!close.keep_alive);
        let old = request("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!old.keep_alive && old.version == Version::HTTP_10);
        let chunked = request("PUT / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n");
        let chunked = chunked.unwrap().unwrap();
        assert!(chunked.framing == Framing::Chunked && chunked.expect_continue);
        let same = request("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\n\r\n");
        let same = same.unwrap().unwrap();
        assert_eq!(same.framing, Framing::Length(5));
        // Forwarded as one plain length (found by the mutation tests: `3` and `03` went on as two).
        let lengths: Vec<_> = same.headers.get_all(header::CONTENT_LENGTH).iter().collect();
        assert_eq!(lengths, ["5"]);
        let padded = request("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 03\r\n\r\n");
        assert_eq!(
            padded.unwrap().unwrap().headers.get_all(header::CONTENT_LENGTH).iter().collect::<Vec<_>>(),
            ["3"]
        );
        let answer = parse_response(
            &mut BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"[..]),
            &Method::GET,
            1024,
        );
        assert_eq!(answer.unwrap().unwrap().headers.get(header::CONTENT_LENGTH).unwrap(), "2");
    }

    #[test]
    fn ambiguous_or_malformed_requests_are_refused() {
        // Smuggling: both framings, differing lengths, codings other than a lone chunked.
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Length: 4 4\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked,\r\n\r\n"), 400);
        // Chunked last after a coding the proxy does not implement: 501 (RFC 9112 §6.1).
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"),
            501
        );
        assert_eq!(status("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n"), 501);
        assert_eq!(status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
        // Bytes the grammar forbids: NUL, obs-fold, bad request line, bare CR.
        assert_eq!(status("GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n"), 400);
        // DEL, short and long (httparse checks long values 32 bytes at a time): the map's
        // values are taken unchecked, trusting that the parser refused it.
        assert_eq!(status("GET / HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n"), 400);
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nX-A: {}\x7f{}\r\n\r\n", "a".repeat(40), "b".repeat(40))),
            400
        );
        assert_eq!(status("GET / HTTP/1.1\r\nX-A: a\r\n folded\r\n\r\n"), 400);
        assert_eq!(status("GET  HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\rX-A: a\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/3.0\r\n\r\n"), 505);
        // Too much: fields over the count, a head over the byte limit.
        let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), 431);
        assert_eq!(status(&format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "y".repeat(20_000))), 431);
        assert_eq!(status(&format!("GET / HTTP/1.1\r\nx-big: {}", "y".repeat(20_000))), 431, "unfinished");
        let long = "a".repeat(20_000);
        assert_eq!(status(&format!("GET /{long} HTTP/1.1\r\nHost: a\r\n\r\n")), 414);
        assert_eq!(status(&format!("GET /{long}")), 414, "unfinished");
    }

    #[test]
    fn a_response_head_says_how_its_body_ends() {
        let parse = |text: &str, method: &Method| {
            let mut buf = BytesMut::from(text.as_bytes());
            parse_response(&mut buf, method, 1024).unwrap().unwrap()
        };
        let get = Method::GET;
        let ok = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", &get);
        assert_eq!((ok.framing, ok.keep_alive), (Framing::Length(3), true));
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", &Method::HEAD).framing,
            Framing::Empty
        );
        assert_eq!(
            parse("HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n", &get).framing,
            Framing::Empty
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &get).framing,
            Framing::Chunked
        );
        let close = parse("HTTP/1.1 200 OK\r\n\r\n", &get);
        assert_eq!((close.framing, close.keep_alive), (Framing::Close, false));
        let old = parse("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", &get);
        assert!(!old.keep_alive);
        let mut both = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        );
        assert!(parse_response(&mut both, &get, 1024).is_err());
        for (coded, reason) in [
            ("gzip", CHUNKED_NOT_LAST),
            ("gzip, chunked", UNKNOWN_CODING),
            ("chunked, gzip", CHUNKED_NOT_LAST),
        ] {
            let text = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {coded}\r\n\r\n");
            let mut buf = BytesMut::from(text.as_bytes());
            assert_eq!(parse_response(&mut buf, &get, 1024).err(), Some(reason));
        }
    }

    /// A name's bytes as httparse lets them through: a token's (RFC 9110 §5.6.2).
    const TOKEN: [bool; 256] = crate::proxy::byte_set::TCHAR;

    #[test]
    fn common_names_are_the_names_from_bytes_makes() {
        let names = [
            "Host",
            "host",
            "HOST",
            "Date",
            "Server",
            "Accept",
            "Connection",
            "User-Agent",
            "Content-Type",
            "Cache-Control",
            "Content-Length",
            "Accept-Encoding",
            "Transfer-Encoding",
            "CONTENT-length",
        ];
        for name in names {
            let common = common_name(name.as_bytes()).unwrap_or_else(|| panic!("{name} is common"));
            assert_eq!(common, HeaderName::from_bytes(name.as_bytes()).unwrap(), "{name}");
        }
        // Same length and first byte, another name: left to `from_bytes`.
        for name in
            ["Hist", "Dare", "Sender", "Access", "Connexion", "User-Agenx", "Content-Typo", "x", "", "h\0st"]
        {
            assert_eq!(common_name(name.as_bytes()), None, "{name}");
        }
        // Every token byte tried at every place of each name: a match is the name.
        for name in names {
            for at in 0..name.len() {
                for b in (0..=255u8).filter(|b| TOKEN[*b as usize]) {
                    let mut bytes = name.as_bytes().to_vec();
                    bytes[at] = b;
                    if let Some(common) = common_name(&bytes) {
                        assert_eq!(
                            Some(common),
                            HeaderName::from_bytes(&bytes).ok(),
                            "{:?}",
                            String::from_utf8_lossy(&bytes)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn connection_fields_the_parser_has_read_stay_out_of_the_map() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let ok = parse_response(&mut buf, &Method::GET, 1024).unwrap().unwrap();
        assert!(ok.keep_alive);
        assert_eq!(ok.headers.len(), 1, "only Content-Length: {:?}", ok.headers);
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n"[..]);
        let closing = parse_response(&mut buf, &Method::GET, 1024).unwrap().unwrap();
        assert!(!closing.keep_alive && !closing.headers.contains_key(header::CONNECTION));
        // Other options stay for the hop-by-hop stripping to act on (or for a protocol switch).
        let upgrade = request("GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(upgrade.unwrap().unwrap().headers.get(header::CONNECTION).unwrap(), "Upgrade");
        let named = request("GET / HTTP/1.1\r\nConnection: close, x-secret\r\nx-secret: 1\r\n\r\n");
        let named = named.unwrap().unwrap();
        assert!(!named.keep_alive && named.headers.contains_key(header::CONNECTION));
    }
}
