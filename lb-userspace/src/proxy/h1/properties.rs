//! What the HTTP/1.1 engine's parsers keep for any input bytes: no panic, the same outcome
//! whether the input arrives whole or in pieces, and the smuggling rules on every head they
//! accept. Two drivers check them: the seeded mutation tests (`mutations.rs`, in every
//! `cargo test`) and coverage-guided fuzzing (`fuzz/`, built with `cfg(fuzzing)`).
use bytes::BytesMut;
use hyper::http::{Method, header};

use super::{
    body::{BodyError, Decoded, Decoder, Framing},
    head::{self, Refused},
};

/// The head size limit the properties parse with.
const MAX_HEAD: usize = 16 * 1024;

/// A parse's outcome in comparable form: the head's parts (as text) and the bytes left after it.
pub type Outcome<E> = Result<Option<(String, usize)>, E>;

/// A request head accepted, and the smuggling rules it must meet: never both framings, one
/// length however often it is repeated, `chunked` alone as the coding.
pub fn request(buf: &mut BytesMut) -> Outcome<Refused> {
    Ok(head::parse_request(buf, MAX_HEAD)?.map(|h| {
        let (lengths, codings) =
            (h.headers.get_all(header::CONTENT_LENGTH), h.headers.get_all(header::TRANSFER_ENCODING));
        assert!(lengths.iter().next().is_none() || codings.iter().next().is_none(), "both framings: {h:?}");
        assert!(lengths.iter().nth(1).is_none(), "two lengths: {h:?}");
        if let Framing::Length(n) = h.framing {
            assert_eq!(
                h.headers.get(header::CONTENT_LENGTH).map(|v| v.as_bytes()),
                Some(n.to_string().as_bytes())
            );
        }
        if codings.iter().next().is_some() {
            assert_eq!(h.framing, Framing::Chunked, "{h:?}");
        }
        let parts = format!(
            "{} {} {:?} {:?} {:?} keep_alive={} continue={}",
            h.method, h.uri, h.version, h.headers, h.framing, h.keep_alive, h.expect_continue
        );
        (parts, buf.len())
    }))
}

/// A response head to a request with `method`, accepted or not.
pub fn response(buf: &mut BytesMut, method: &Method) -> Outcome<&'static str> {
    Ok(head::parse_response(buf, method, MAX_HEAD)?.map(|h| {
        let parts = format!(
            "{} {:?} {:?} {:?} keep_alive={}",
            h.status, h.version, h.headers, h.framing, h.keep_alive
        );
        (parts, buf.len())
    }))
}

/// `parse` on `input` whole, and on its first `split` bytes then all of it (the second read
/// only if the first found the head incomplete): both must agree. Returns the whole's outcome.
pub fn whole_and_in_two<E: PartialEq + std::fmt::Debug>(
    input: &[u8],
    split: usize,
    parse: impl Fn(&mut BytesMut) -> Outcome<E>,
) -> Outcome<E> {
    let whole = parse(&mut BytesMut::from(input));
    let mut buf = BytesMut::from(&input[..split]);
    let first = parse(&mut buf);
    let two = match first {
        Ok(None) => {
            buf.extend_from_slice(&input[split..]);
            parse(&mut buf)
        }
        // Complete in the first read: the same head, with the rest of the input after it.
        Ok(Some((parts, left))) => Ok(Some((parts, left + input.len() - split))),
        Err(err) => Err(err),
    };
    assert_eq!(two, whole, "read whole and in two at {split}: {:?}", String::from_utf8_lossy(input));
    whole
}

/// A chunked body decoded from reads of the given sizes (the last one takes the rest): the
/// data, how it ended (`Ok(true)`: complete), and the input after it.
fn decode_in(input: &[u8], reads: &[usize]) -> (Vec<u8>, Result<bool, BodyError>, Vec<u8>) {
    let mut decoder = Decoder::new(Framing::Chunked);
    let (mut data, mut buf, mut fed) = (Vec::new(), BytesMut::new(), 0);
    let mut reads = reads.iter().copied().chain(std::iter::once(usize::MAX));
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(bytes)) => data.extend_from_slice(&bytes),
            Ok(Decoded::Done) => return (data, Ok(true), [&buf[..], &input[fed..]].concat()),
            Ok(Decoded::NeedMore) if fed == input.len() => return (data, Ok(false), Vec::new()),
            Ok(Decoded::NeedMore) => {
                let n = reads.next().unwrap_or(usize::MAX).min(input.len() - fed);
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
            }
            Err(err) => return (data, Err(err), Vec::new()),
        }
    }
}

/// A chunked body decodes alike whole and in reads of the given sizes, gives out nothing that
/// did not go in, and when finished leaves what follows it. How it ended (`Ok(true)`: complete).
pub fn chunked_alike(input: &[u8], reads: &[usize]) -> Result<bool, BodyError> {
    let whole = decode_in(input, &[]);
    let pieces = decode_in(input, reads);
    assert_eq!(pieces, whole, "reads {reads:?}: {:?}", String::from_utf8_lossy(input));
    let (data, ended, after) = whole;
    assert!(data.len() + after.len() <= input.len());
    if ended == Ok(true) {
        assert!(input.ends_with(&after));
    }
    ended
}
