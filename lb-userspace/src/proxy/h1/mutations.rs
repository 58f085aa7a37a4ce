//! Mutation tests of the HTTP/1.1 engine: valid and hostile messages, changed a few bytes at a
//! time (`crate::mutation`), never make a parser panic, every parser gives the same answer
//! whether its input arrives whole or in two reads, and every connection ends.
use bytes::BytesMut;
use hyper::http::{Method, header};

use super::{
    body::{BodyError, Decoded, Decoder, Framing},
    head::{self, Refused},
};
use crate::mutation::Rng;

/// Cases per property: a few hundred milliseconds in a debug build.
const CASES: usize = 20_000;

pub(crate) const REQUESTS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /p?q=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET http://a/b HTTP/1.1\r\nHost: a\r\nConnection: close, Host\r\nX: \"q\"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    // The gateway's own parsing: cookies (hash key, sticky pool), forwarding fields, the cache's
    // Vary, a client's request ID.
    b"GET /h HTTP/1.1\r\nHost: hash.test\r\nCookie: sid=abc; sluice_pool=p\r\nX-Forwarded-For: 10.0.0.1, ::1\r\n\r\n",
    b"GET /c?x=1 HTTP/1.1\r\nHost: cache.test:80\r\nAccept: text/html\r\nForwarded: for=\"[::1]\";proto=http\r\nX-Request-Id: abc\r\n\r\n",
    b"HEAD /c HTTP/1.1\r\nHost: CACHE.test\r\nCache-Control: no-cache\r\nVia: 1.0 x\r\n\r\n",
];

const RESPONSES: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\nConnection: close\r\n\r\n",
];

const BODIES: &[&[u8]] = &[
    b"5\r\nhello\r\n0\r\n\r\nNEXT",
    b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nA: b\r\nC: d\r\n\r\n",
    b"0\r\n\r\n",
    b"F \r\n0123456789abcde\r\n0\r\n\r\n",
];

/// Bytes the mutations insert: line breaks, separators, digits and the framing words.
const SPICE: &[&[u8]] = &[
    b"\r",
    b"\n",
    b"\0",
    b":",
    b" ",
    b"\t",
    b",",
    b";",
    b"0",
    b"f",
    b"\xff",
    b"chunked",
    b"\r\n\r\n",
    b"Content-Length: 1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Host: b\r\n",
];

/// `seed` with one to four changes, spiced with [`SPICE`].
pub(crate) fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    crate::mutation::mutate(rng, seed, SPICE)
}

/// A parse's outcome in comparable form: the head's parts (as text) and the bytes left after it.
type Outcome<E> = Result<Option<(String, usize)>, E>;

/// A request head accepted, and the smuggling rules it must meet: never both framings, one
/// length however often it is repeated, `chunked` alone as the coding.
fn request(buf: &mut BytesMut) -> Outcome<Refused> {
    Ok(head::parse_request(buf, 16 * 1024)?.map(|h| {
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

fn response(buf: &mut BytesMut, method: &Method) -> Outcome<&'static str> {
    Ok(head::parse_response(buf, method, 16 * 1024)?.map(|h| {
        let parts = format!(
            "{} {:?} {:?} {:?} keep_alive={}",
            h.status, h.version, h.headers, h.framing, h.keep_alive
        );
        (parts, buf.len())
    }))
}

/// How many cases ended each way: a head, incomplete, refused. Each property checks that the
/// mutations reach all three (else it would test nothing much).
#[derive(Default, Debug)]
struct Mix([usize; 3]);

impl Mix {
    fn count<T, E>(&mut self, outcome: &Result<Option<T>, E>) {
        self.0[match outcome {
            Ok(Some(_)) => 0,
            Ok(None) => 1,
            Err(_) => 2,
        }] += 1;
    }

    fn assert_varied(&self) {
        assert!(self.0.iter().all(|&n| n >= CASES / 20), "too few cases of some outcome: {self:?}");
    }
}

/// `parse` on `input` whole, and on its first `split` bytes then all of it (the second read
/// only if the first found the head incomplete): both must agree. Returns the whole's outcome.
fn whole_and_in_two<E: PartialEq + std::fmt::Debug>(
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

/// `CASES` mutations of `seeds`, each parsed whole and in two reads; `parse` also gets a coin
/// that falls heads one time in four.
fn heads_read_alike<E: PartialEq + std::fmt::Debug>(
    seed: u64,
    seeds: &[&[u8]],
    parse: impl Fn(bool, &mut BytesMut) -> Outcome<E>,
) {
    let (mut rng, mut mix) = (Rng(seed), Mix::default());
    for _ in 0..CASES {
        let seed = seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed);
        let split = rng.below(input.len() + 1);
        let coin = rng.below(4) == 0;
        mix.count(&whole_and_in_two(&input, split, |buf| parse(coin, buf)));
    }
    mix.assert_varied();
}

#[test]
fn request_heads_read_alike_whole_or_in_pieces() {
    heads_read_alike(0x5eed_0001, REQUESTS, |_, buf| request(buf));
}

/// Answers to GET, and one in four to HEAD (no body whatever the head says).
#[test]
fn response_heads_read_alike_whole_or_in_pieces() {
    heads_read_alike(0x5eed_0002, RESPONSES, |head, buf| {
        response(buf, if head { &Method::HEAD } else { &Method::GET })
    });
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

#[test]
fn chunked_bodies_decode_alike_in_any_reads() {
    let (mut rng, mut mix) = (Rng(0x5eed_0003), Mix::default());
    for _ in 0..CASES {
        let seed = BODIES[rng.below(BODIES.len())];
        let input = mutate(&mut rng, seed);
        let whole = decode_in(&input, &[]);
        let reads: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(8)).collect();
        let pieces = decode_in(&input, &reads);
        assert_eq!(pieces, whole, "reads {reads:?}: {:?}", String::from_utf8_lossy(&input));
        let (data, ended, after) = whole;
        mix.count(&ended.as_ref().map(|done| done.then_some(())));
        // Nothing comes out that did not go in, and a finished body leaves what follows it.
        assert!(data.len() + after.len() <= input.len());
        if ended == Ok(true) {
            assert!(input.ends_with(&after));
        }
    }
    mix.assert_varied();
}
