//! Mutation tests of the HTTP/1.1 engine: valid and hostile messages, changed a few bytes at a
//! time (`crate::mutation`), checked against the parsers' properties (`properties.rs`): no
//! panic, the same answer whole or in pieces, the smuggling rules.
use bytes::BytesMut;
use hyper::http::Method;

use super::properties::{Outcome, chunked_alike, request, response, whole_and_in_two};
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
    // A route's edits: its path prefix rewritten, fields set and removed, the answer gzipped.
    b"GET /z/a HTTP/1.1\r\nHost: edits.test\r\nAccept-Encoding: br;q=0, gzip\r\nCookie: a=1\r\n\r\n",
    // A route's own answer: a redirect by prefix, the path rewritten and the query after it.
    b"GET /y/a%2Fb?q=1 HTTP/1.1\r\nHost: moved.test\r\n\r\n",
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

#[test]
fn chunked_bodies_decode_alike_in_any_reads() {
    let (mut rng, mut mix) = (Rng(0x5eed_0003), Mix::default());
    for _ in 0..CASES {
        let seed = BODIES[rng.below(BODIES.len())];
        let input = mutate(&mut rng, seed);
        let reads: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(8)).collect();
        let ended = chunked_alike(&input, &reads);
        mix.count(&ended.as_ref().map(|done| done.then_some(())));
    }
    mix.assert_varied();
}
