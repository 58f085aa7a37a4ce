//! Body framing (RFC 9112 §6, §7): one state machine that cuts a message body out of the bytes
//! read from a connection: none, Content-Length, chunked, or until the peer closes (responses
//! only). Every framing rule is one match arm; anything it cannot read exactly is an error. A
//! chunked body's trailer fields are kept for the next hop.
use bytes::{Buf, Bytes, BytesMut};
use hyper::{
    HeaderMap,
    header::{self, HeaderName, HeaderValue},
};

use crate::proxy::byte_set::TCHAR;

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (GET without a length, HEAD and 204/304 answers, 1xx).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the peer closes (a response with neither length nor chunking).
    Close,
}

/// What went wrong reading a body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("bad chunk size line")]
    ChunkSize,
    #[error("chunk size too large")]
    ChunkTooLarge,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("trailer section too long or malformed")]
    Trailer,
    #[error("connection closed before the body ended")]
    Truncated,
}

/// Fields never passed on in a trailer section: those that frame the message, name its target
/// or ride on the connection (RFC 9110 §6.5.1; h2 refuses the connection ones too).
pub static TRAILER_FORBIDDEN: [HeaderName; 9] = [
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::HOST,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The longest chunk-size line (digits, extensions) and trailer section accepted.
const MAX_LINE: usize = 4096;
/// The most trailer fields passed on (a section with more is dropped whole; its bytes are
/// bounded by MAX_LINE).
const MAX_TRAILERS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of the next chunk's size (`digits` read so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size: more of it, then `;` and extensions, or CR.
    SizeLws {
        size: u64,
    },
    /// `;extensions` up to CR.
    Extension {
        size: u64,
    },
    /// CR seen after the size line; LF next.
    SizeLf {
        size: u64,
    },
    /// Chunk data still to come.
    Data {
        left: u64,
    },
    /// CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// After the last chunk: the start of a trailer field line, or the final CRLF.
    TrailerStart,
    /// A trailer field's name, up to its colon; then its value (both kept: `Decoder::trailers`).
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// CR of the final empty line seen; LF next.
    EndLf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

/// What one call to `Decoder::decode` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The buffer holds no more of the body: read more, then call again.
    NeedMore,
    /// The body is complete (the bytes after it belong to the next message).
    Done,
}

/// Cuts one body out of a connection's read buffer.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// Bytes of the current size line or trailer section (bounded by `MAX_LINE`).
    line: usize,
    /// The trailer section's field lines as they came (empty: none, the usual case).
    trailer_lines: Vec<u8>,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
            Framing::Close => State::Close,
        };
        Decoder { state, line: 0, trailer_lines: Vec::new() }
    }

    /// The body's trailer fields, once it is done (None when it had none): the fields that
    /// frame, route or ride on the connection left out (`TRAILER_FORBIDDEN`).
    pub fn trailers(&mut self) -> Option<HeaderMap> {
        if self.trailer_lines.is_empty() || self.state != State::Done {
            return None;
        }
        self.trailer_lines.extend_from_slice(b"\r\n");
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
        // Checked byte by byte as they came (field lines); more than MAX_TRAILERS: dropped.
        let parsed = match httparse::parse_headers(&self.trailer_lines, &mut fields) {
            Ok(httparse::Status::Complete((_, parsed))) => parsed,
            _ => return None,
        };
        let mut trailers = HeaderMap::new();
        for field in parsed {
            let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(field.name.as_bytes()), HeaderValue::from_bytes(field.value))
            else {
                continue;
            };
            if !TRAILER_FORBIDDEN.contains(&name) {
                trailers.append(name, value);
            }
        }
        self.trailer_lines = Vec::new();
        (!trailers.is_empty()).then_some(trailers)
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes the body still has, when that is known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The peer closed its side: the end of a close-delimited body, else a truncated one.
    pub fn eof(&mut self) -> Result<(), BodyError> {
        match self.state {
            State::Close | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(BodyError::Truncated),
        }
    }

    /// Takes the next piece of the body out of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, BodyError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::Done),
                State::Close => {
                    return Ok(if buf.is_empty() {
                        Decoded::NeedMore
                    } else {
                        Decoded::Data(buf.split().freeze())
                    });
                }
                State::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    let left = left - n as u64;
                    self.state = if left == 0 { State::Done } else { State::Length(left) };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                State::Chunked(Chunk::Data { left }) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    let left = left - n as u64;
                    self.state = State::Chunked(if left == 0 { Chunk::DataCr } else { Chunk::Data { left } });
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                State::Chunked(chunk) => {
                    let Some(&byte) = buf.first() else { return Ok(Decoded::NeedMore) };
                    buf.advance(1);
                    self.state = self.chunk_byte(chunk, byte)?;
                }
            }
        }
    }

    /// Keeps a byte of a trailer field line; the state it leads to.
    fn trailer_byte(&mut self, byte: u8, next: Chunk) -> Chunk {
        self.trailer_lines.push(byte);
        next
    }

    /// One byte of chunked framing outside chunk data.
    fn chunk_byte(&mut self, chunk: Chunk, byte: u8) -> Result<State, BodyError> {
        // A size line, or the last chunk's line with the trailer section, is bounded.
        self.line += 1;
        let long = self.line > MAX_LINE;
        Ok(State::Chunked(match chunk {
            Chunk::Size { size, digits } => match byte {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    // 16 hex digits overflow nothing; more could (or smuggle with leading zeros).
                    if digits >= 16 {
                        return Err(BodyError::ChunkTooLarge);
                    }
                    let value = (byte as char).to_digit(16).unwrap_or(0) as u64;
                    Chunk::Size { size: size << 4 | value, digits: digits + 1 }
                }
                _ if digits == 0 => return Err(BodyError::ChunkSize),
                b'\r' => Chunk::SizeLf { size },
                b';' => Chunk::Extension { size },
                b' ' | b'\t' => Chunk::SizeLws { size },
                _ => return Err(BodyError::ChunkSize),
            },
            // RFC 9112 §7.1.1: only whitespace before an extension's `;` (`0 v` is no last
            // chunk: hyper and HAProxy refuse it, and so does this).
            Chunk::SizeLws { size } => match byte {
                _ if long => return Err(BodyError::ChunkSize),
                b' ' | b'\t' => Chunk::SizeLws { size },
                b';' => Chunk::Extension { size },
                b'\r' => Chunk::SizeLf { size },
                _ => return Err(BodyError::ChunkSize),
            },
            Chunk::Extension { size } => match byte {
                _ if long => return Err(BodyError::ChunkSize),
                b'\r' => Chunk::SizeLf { size },
                // Extensions are ignored, but may not hold line breaks or control bytes.
                b'\n' | 0..=8 | 10..=31 | 127 => return Err(BodyError::ChunkSize),
                _ => Chunk::Extension { size },
            },
            Chunk::SizeLf { size } => match byte {
                b'\n' if size == 0 => Chunk::TrailerStart,
                b'\n' => Chunk::Data { left: size },
                _ => return Err(BodyError::ChunkSize),
            },
            Chunk::Data { .. } => unreachable!("chunk data is taken whole"),
            Chunk::DataCr => match byte {
                b'\r' => Chunk::DataLf,
                _ => return Err(BodyError::ChunkEnd),
            },
            Chunk::DataLf => match byte {
                b'\n' => {
                    self.line = 0;
                    Chunk::Size { size: 0, digits: 0 }
                }
                _ => return Err(BodyError::ChunkEnd),
            },
            // Trailer fields are field lines (RFC 9112 §7.1.2, §5): a token, a colon, a value
            // with no control byte but tab. A line that is not one (no name, no colon, a bare
            // LF, a fold) is refused, as hyper and HAProxy refuse it, not passed over.
            Chunk::TrailerStart => match byte {
                _ if long => return Err(BodyError::Trailer),
                b'\r' => Chunk::EndLf,
                _ if TCHAR[byte as usize] => self.trailer_byte(byte, Chunk::TrailerName),
                _ => return Err(BodyError::Trailer),
            },
            Chunk::TrailerName => match byte {
                _ if long => return Err(BodyError::Trailer),
                b':' => self.trailer_byte(byte, Chunk::TrailerValue),
                _ if TCHAR[byte as usize] => self.trailer_byte(byte, Chunk::TrailerName),
                _ => return Err(BodyError::Trailer),
            },
            Chunk::TrailerValue => match byte {
                _ if long => return Err(BodyError::Trailer),
                b'\r' => self.trailer_byte(byte, Chunk::TrailerLf),
                b'\t' => self.trailer_byte(byte, Chunk::TrailerValue),
                0..=31 | 127 => return Err(BodyError::Trailer),
                _ => self.trailer_byte(byte, Chunk::TrailerValue),
            },
            Chunk::TrailerLf => match byte {
                b'\n' => self.trailer_byte(byte, Chunk::TrailerStart),
                _ => return Err(BodyError::Trailer),
            },
            Chunk::EndLf => match byte {
                b'\n' => return Ok(State::Done),
                _ => return Err(BodyError::Trailer),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the body and what was left after it.
    fn run(framing: Framing, input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), BodyError> {
        let mut decoder = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::Done => return Ok((body, [&buf[..], &input[fed..]].concat())),
                Decoded::NeedMore if fed < input.len() => {
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
                Decoded::NeedMore => {
                    decoder.eof()?;
                    return Ok((body, Vec::new()));
                }
            }
        }
    }

    #[test]
    fn every_framing_reads_its_body_whatever_the_pieces() {
        let chunked = b"5\r\nhello\r\n6;ext=\"x\"\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next";
        for step in [1, 2, 7, 1000] {
            assert_eq!(
                run(Framing::Length(5), b"helloGET", step).unwrap(),
                (b"hello".to_vec(), b"GET".to_vec())
            );
            assert_eq!(
                run(Framing::Chunked, chunked, step).unwrap(),
                (b"hello world".to_vec(), b"GET /next".to_vec()),
                "step {step}"
            );
            assert_eq!(run(Framing::Close, b"until the end", step).unwrap().0, b"until the end".to_vec());
            assert_eq!(
                run(Framing::Chunked, b"2 \t ; x\r\nok\r\n0 \r\n\r\n", step).unwrap().0,
                b"ok".to_vec()
            );
        }
        assert_eq!(run(Framing::Empty, b"GET", 10).unwrap(), (Vec::new(), b"GET".to_vec()));
        assert_eq!(run(Framing::Chunked, b"0\r\n\r\n", 1).unwrap(), (Vec::new(), Vec::new()));
        assert_eq!(run(Framing::Chunked, b"A\r\n0123456789\r\n0\r\n\r\n", 3).unwrap().0, b"0123456789");
    }

    #[test]
    fn a_chunked_body_keeps_its_trailers_but_those_that_frame_or_route() {
        let trailers = |input: &[u8], step: usize| {
            let mut decoder = Decoder::new(Framing::Chunked);
            let mut buf = BytesMut::new();
            for piece in input.chunks(step) {
                buf.extend_from_slice(piece);
                while let Ok(Decoded::Data(_)) = decoder.decode(&mut buf) {}
            }
            assert!(decoder.is_done(), "{:?}", String::from_utf8_lossy(input));
            decoder.trailers()
        };
        for step in [1, 3, 1000] {
            let got = trailers(
                b"2\r\nok\r\n0\r\nX-Checksum: abc\r\ngrpc-status:0\r\nX-Checksum: def\r\n\r\n",
                step,
            )
            .unwrap();
            assert_eq!(got.get_all("x-checksum").iter().collect::<Vec<_>>(), ["abc", "def"]);
            assert_eq!(got["grpc-status"], "0");
            assert!(trailers(b"0\r\n\r\n", step).is_none(), "no trailers");
        }
        let framing =
            trailers(b"0\r\nContent-Length: 5\r\nHost: a\r\nConnection: close\r\nX-A: 1\r\n\r\n", 1000);
        assert_eq!(framing.unwrap().keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-a"]);
        assert!(trailers(b"0\r\nTransfer-Encoding: chunked\r\n\r\n", 1000).is_none(), "none left");
        // Past MAX_TRAILERS fields, the section is dropped rather than cut at an arbitrary field.
        let many: String = (0..MAX_TRAILERS + 1).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(trailers(format!("0\r\n{many}\r\n").as_bytes(), 1000).is_none());
    }

    #[test]
    fn malformed_or_truncated_bodies_are_errors() {
        let err = |framing, input: &[u8]| run(framing, input, 1000).unwrap_err();
        assert_eq!(err(Framing::Chunked, b"ZZ\r\nhello\r\n0\r\n\r\n"), BodyError::ChunkSize);
        assert_eq!(err(Framing::Chunked, b"\r\n"), BodyError::ChunkSize, "no digits");
        assert_eq!(err(Framing::Chunked, b"5\nhello\r\n0\r\n\r\n"), BodyError::ChunkSize, "bare LF");
        assert_eq!(err(Framing::Chunked, b"-5\r\n"), BodyError::ChunkSize);
        assert_eq!(err(Framing::Chunked, b"0 v\r\n\r\n"), BodyError::ChunkSize, "no `;` after the space");
        assert_eq!(err(Framing::Chunked, b"0x5\r\n"), BodyError::ChunkSize);
        assert_eq!(
            err(Framing::Chunked, b"5\r\nhelloXX0\r\n\r\n"),
            BodyError::ChunkEnd,
            "data longer than its size"
        );
        assert_eq!(err(Framing::Chunked, b"11111111111111111\r\n"), BodyError::ChunkTooLarge);
        assert_eq!(
            err(Framing::Chunked, b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
            BodyError::ChunkSize,
            "LF in extension"
        );
        assert_eq!(err(Framing::Chunked, b"0\r\n folded\r\n\r\n"), BodyError::Trailer);
        assert_eq!(err(Framing::Chunked, b"0\r\nno colon\r\n\r\n"), BodyError::Trailer);
        assert_eq!(err(Framing::Chunked, b"0\r\n: no name\r\n\r\n"), BodyError::Trailer);
        assert_eq!(err(Framing::Chunked, b"0\r\nT: a\x01b\r\n\r\n"), BodyError::Trailer);
        assert_eq!(err(Framing::Chunked, b"0\r\nT: v\n\r\n"), BodyError::Trailer, "bare LF");
        assert_eq!(err(Framing::Chunked, b"5\r\nhel"), BodyError::Truncated);
        assert_eq!(err(Framing::Length(10), b"short"), BodyError::Truncated);
        let long_extension = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(5000));
        assert_eq!(err(Framing::Chunked, long_extension.as_bytes()), BodyError::ChunkSize);
        let long_trailer = format!("0\r\nx: {}\r\n\r\n", "y".repeat(5000));
        assert_eq!(err(Framing::Chunked, long_trailer.as_bytes()), BodyError::Trailer);
    }
}
