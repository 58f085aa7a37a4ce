//! Mutation tests of backends' answers through a listener: HTTP/1.1 answers and h2c (HTTP/2)
//! frames, valid ones changed a few bytes at a time, to HTTP/1.1 and HTTP/2 clients. What
//! reaches a client is well framed or an error, every connection ends, no task panics.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper::Request;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    AT_ONCE, CONNECTIONS, END_HEADERS, END_STREAM, ENDS_WITHIN, FrameReader, HEADERS, TIMEOUT_MS, all_ended,
    field, frame, start,
};
use crate::{
    mutation::{Rng, mutate},
    proxy::test_bed,
};

/// Backends' answers, valid and odd: each framing, interim answers, answers that have no body,
/// two equal lengths, a connection field naming another, a 101 nobody asked for, an error.
const ANSWERS: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\nX-T: v\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n\r\nhello",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
];

/// Bytes the mutations insert into answers: line ends, separators, digits, framing fields.
pub(super) const ANSWER_SPICE: &[&[u8]] = &[
    b"\r\n",
    b"\r",
    b"\n",
    b"\0",
    b":",
    b" ",
    b"0",
    b"f",
    b"chunked",
    b"\r\n\r\n",
    b"Content-Length: 1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"HTTP/1.1 ",
    b"\xff",
];

/// A backend that answers each request with a mutated `ANSWERS` (one in four as it is) and
/// then closes at once, or holds the connection past the listener's timeouts and closes, or
/// keeps it for the next request.
async fn mutating_backend(seed: u64) -> SocketAddr {
    let rng = Arc::new(Mutex::new(Rng(seed)));
    test_bed::listening(move |mut stream| {
        let rng = rng.clone();
        async move {
            let mut read = Vec::new();
            loop {
                // A request's head (the proxy sends these requests with no body).
                let Some(end) = test_bed::head_read(&mut stream, &mut read).await else { return };
                read.drain(..end);
                let (answer, then) = {
                    let mut rng = rng.lock().unwrap();
                    let answer = ANSWERS[rng.below(ANSWERS.len())];
                    let answer = match rng.below(4) {
                        0 => answer.to_vec(),
                        _ => mutate(&mut rng, answer, ANSWER_SPICE),
                    };
                    (answer, rng.below(4))
                };
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
                match then {
                    0 => return,
                    1 => {
                        tokio::time::sleep(Duration::from_millis(TIMEOUT_MS * 3 / 2)).await;
                        return;
                    }
                    _ => {}
                }
            }
        }
    })
    .await
}

/// What a raw HTTP/1.1 client got from the listener: interim answers, then one final answer
/// whose head parses, with one framing (never a length beside a coding, at most one length),
/// no body where there may be none, never more body than its length, and a chunked body that
/// does not break where it ends. Its status.
fn final_status(got: &[u8]) -> Result<u16, String> {
    let mut rest = got;
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut head = httparse::Response::new(&mut fields);
        let length = match head.parse(rest) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Err("no whole head".into()),
            Err(err) => return Err(format!("a head that does not parse ({err})")),
        };
        let status = head.code.unwrap_or(0);
        let body = &rest[length..];
        let named = |name: &str| {
            head.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect::<Vec<_>>()
        };
        let (lengths, codings) = (named("content-length"), named("transfer-encoding"));
        match status {
            101 => return Err("101 to a client that asked for no upgrade".into()),
            100..200 => {
                rest = body;
                continue;
            }
            _ => {}
        }
        if lengths.len() > 1 || !(lengths.is_empty() || codings.is_empty()) {
            return Err("two framings".into());
        }
        if matches!(status, 204 | 304) && !body.is_empty() {
            return Err(format!("a body after {status}"));
        }
        if let Some(length) = lengths.first() {
            let length: usize =
                std::str::from_utf8(length).ok().and_then(|l| l.parse().ok()).ok_or("a bad length")?;
            if body.len() > length {
                return Err(format!("{} bytes after a length of {length}", body.len()));
            }
        } else if !codings.is_empty() {
            use crate::proxy::h1::body::{Decoded, Decoder, Framing};
            let (mut decoder, mut buf) = (Decoder::new(Framing::Chunked), bytes::BytesMut::from(body));
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(_)) => {}
                    Ok(Decoded::Done) if buf.is_empty() => break,
                    Ok(Decoded::Done) => return Err("bytes after the chunked body".into()),
                    // Cut short: the connection closed mid-body, as it must when the backend's did.
                    Ok(Decoded::NeedMore) => break,
                    Err(err) => return Err(format!("a chunked body that breaks ({err:?})")),
                }
            }
        }
        return Ok(status);
    }
}

/// One client's request and what it got: an HTTP/1.1 client (even `i`; its answer checked by
/// `final_status`) or an HTTP/2 one (h2 checks the answer's framing itself; 0 when it refused
/// it or the stream was reset).
async fn exchange(address: SocketAddr, i: usize, host: &str) -> Result<u16, String> {
    if i.is_multiple_of(2) {
        let request = format!("GET /{i} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let mut client = TcpStream::connect(address).await.unwrap();
        client.write_all(request.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        return final_status(&got).map_err(|err| format!("{err}: {:?}", String::from_utf8_lossy(&got)));
    }
    let (mut client, connection) =
        h2::client::handshake(TcpStream::connect(address).await.unwrap()).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get(format!("http://{host}/{i}")).body(()).unwrap();
    let Ok((response, _)) = client.send_request(request, true) else { return Ok(0) };
    let Ok(response) = response.await else { return Ok(0) };
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(Ok(data)) = body.data().await {
        let _ = body.flow_control().release_capacity(data.len());
    }
    Ok(status)
}

/// `CONNECTIONS` exchanges with the listener, `AT_ONCE` at a time, each to one of `hosts`; how
/// many got each status. Each must end within `ENDS_WITHIN`, and then every connection.
async fn statuses(
    address: SocketAddr,
    shared: &super::Shared,
    seed: u64,
    hosts: &[&str],
) -> BTreeMap<u16, usize> {
    let mut rng = Rng(seed);
    let mut statuses = BTreeMap::new();
    for _ in 0..CONNECTIONS / AT_ONCE {
        let batch = (0..AT_ONCE).map(|i| {
            let host = hosts[rng.below(hosts.len())];
            async move {
                tokio::time::timeout(ENDS_WITHIN, exchange(address, i, host))
                    .await
                    .unwrap_or_else(|_| panic!("no end within {ENDS_WITHIN:?}"))
                    .unwrap_or_else(|err| panic!("{err}"))
            }
        });
        for status in futures_util::future::join_all(batch).await {
            *statuses.entry(status).or_insert(0) += 1;
        }
    }
    all_ended(shared).await;
    statuses
}

/// The route's timeout (504) comes before the listener's stream timeout, so a client is always
/// answered, whatever the backend does.
fn route(pool: &str, extra: &str) -> String {
    format!("[[route]]\nlistener = \"l\"\npool = \"{pool}\"\ntimeout_ms = {}\n{extra}", TIMEOUT_MS / 2)
}

#[tokio::test]
async fn every_mutated_http1_answer_reaches_the_client_well_framed_or_as_an_error() {
    let port = mutating_backend(0x5eed_0006).await.port();
    let (address, shared, _) = start(&format!(
        "[[pool]]\nname = \"p\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\n{}{}",
        route("p", "host = \"cache.test\"\ncache = { max_entries = 10 }\n"),
        route("p", "")
    ))
    .await;
    let statuses = statuses(address, &shared, 0x5eed_0007, &["a", "cache.test"]).await;
    // Both what passes through and what is refused were reached.
    let (passed, refused) =
        (statuses.get(&200).copied().unwrap_or(0), statuses.get(&502).copied().unwrap_or(0));
    assert!(passed >= CONNECTIONS / 10 && refused >= CONNECTIONS / 20, "{statuses:?}");
}

#[tokio::test]
async fn an_answer_that_broke_before_its_first_byte_is_counted_as_the_502_the_client_got() {
    // A head, then a chunk size that is not one.
    let port = test_bed::listening(|mut stream| async move {
        let _ = test_bed::head_read(&mut stream, &mut Vec::new()).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await;
    })
    .await
    .port();
    let (address, _, forwarder) = start(&format!(
        "[[pool]]\nname = \"p\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\n{}",
        route("p", "")
    ))
    .await;
    let mut client = TcpStream::connect(address).await.unwrap();
    client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(ENDS_WITHIN, client.read_to_end(&mut got)).await;
    assert_eq!(final_status(&got), Ok(502), "{}", String::from_utf8_lossy(&got));
    let text = forwarder.metrics.text();
    let requests: Vec<&str> = text.lines().filter(|l| l.starts_with("http_requests_total")).collect();
    assert!(
        requests.len() == 1 && requests[0].contains("class=\"5xx\"") && requests[0].ends_with(" 1"),
        "{requests:?}"
    );
}

/// An h2c backend's answers for one stream, valid: bodiless, with a length, gRPC's shape (data
/// then trailers), a head split by CONTINUATION, an interim 100 before the head, a reset.
fn h2c_answers(stream: u32) -> Vec<Vec<u8>> {
    let status_200 = |extra: &[u8]| [&[0x88][..], extra].concat();
    let grpc = field("content-type", "application/grpc");
    let mut split = status_200(&grpc);
    let rest = split.split_off(4);
    vec![
        frame(HEADERS, END_STREAM | END_HEADERS, stream, &status_200(&[])),
        [
            frame(HEADERS, END_HEADERS, stream, &status_200(&field("content-length", "2"))),
            frame(0, END_STREAM, stream, b"ok"),
        ]
        .concat(),
        [
            frame(HEADERS, END_HEADERS, stream, &status_200(&grpc)),
            frame(0, 0, stream, b"\0\0\0\0\x02hi"),
            frame(HEADERS, END_STREAM | END_HEADERS, stream, &field("grpc-status", "0")),
        ]
        .concat(),
        [
            frame(HEADERS, 0, stream, &split),
            frame(9, END_HEADERS, stream, &rest),
            frame(0, END_STREAM, stream, b""),
        ]
        .concat(),
        [
            frame(HEADERS, END_HEADERS, stream, &[0x08, 3, b'1', b'0', b'0']),
            frame(HEADERS, END_STREAM | END_HEADERS, stream, &status_200(&[])),
        ]
        .concat(),
        [frame(HEADERS, END_HEADERS, stream, &status_200(&[])), frame(3, 0, stream, &2u32.to_be_bytes())]
            .concat(),
    ]
}

/// An h2c backend that reads the proxy's frames and answers each request's HEADERS on its
/// stream with a mutated `h2c_answers` (one in four as it is); now and then it closes the
/// connection after an answer.
async fn mutating_h2c_backend(seed: u64) -> SocketAddr {
    let rng = Arc::new(Mutex::new(Rng(seed)));
    test_bed::listening(move |mut stream| {
        let rng = rng.clone();
        async move {
            if stream.write_all(&frame(4, 0, 0, &[])).await.is_err() {
                return;
            }
            let mut frames = FrameReader::new();
            while let Some((kind, flags, id)) = frames.next(&mut stream).await {
                let answer = match kind {
                    4 if flags & 1 == 0 => frame(4, 1, 0, &[]),
                    HEADERS if id != 0 => {
                        let mut rng = rng.lock().unwrap();
                        let answers = h2c_answers(id);
                        let answer = &answers[rng.below(answers.len())];
                        match rng.below(4) {
                            0 => answer.clone(),
                            _ => mutate(&mut rng, answer, H2_ANSWER_SPICE),
                        }
                    }
                    _ => continue,
                };
                let close = kind == HEADERS && rng.lock().unwrap().below(8) == 0;
                if stream.write_all(&answer).await.is_err() || close {
                    return;
                }
            }
        }
    })
    .await
}

/// What the mutations insert into h2c answers: frame types and flags, lengths, HPACK prefixes.
const H2_ANSWER_SPICE: &[&[u8]] = &[
    b"\x00",
    b"\x01",
    b"\x04",
    b"\x05",
    b"\x09",
    b"\x88",
    b"\xbe",
    b"\x3f\xe1\x1f",
    b"\xff\xff",
    b"\0\0\0\x04\0\0\0\0\0",
];

#[tokio::test]
async fn every_mutated_h2c_answer_reaches_the_client_well_framed_or_as_an_error() {
    let port = mutating_h2c_backend(0x5eed_0009).await.port();
    // One stream a connection: a mutated answer that breaks the connection (GOAWAY) fails
    // every stream on it, so each answer is judged on a connection of its own.
    let (address, shared, _) = start(&format!(
        "[[pool]]\nname = \"g\"\nport = {port}\nprotocol = \"h2c\"\nhttp2_max_concurrent_streams = 1\n\
         backends = [{{ address = \"127.0.0.1\" }}]\n{}",
        route("g", "")
    ))
    .await;
    let statuses = statuses(address, &shared, 0x5eed_000a, &["a"]).await;
    let (passed, refused) =
        (statuses.get(&200).copied().unwrap_or(0), statuses.get(&502).copied().unwrap_or(0));
    assert!(passed >= CONNECTIONS / 10 && refused >= CONNECTIONS / 20, "{statuses:?}");
}
