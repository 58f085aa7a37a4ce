//! What a client reads is what its own backend answer said: each request's answer is made for
//! its path (its body names the request), changed a few bytes at a time, and hyper's client,
//! reading the same bytes, is the reference. A client gets the answer hyper reads (status and
//! body) or a proxy-made error, never another request's answer nor a body cut elsewhere: a
//! backend connection left holding bytes after an answer must not serve the next request
//! (response desync, the way in to poisoning a cache or another client's answer).
use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::{AT_ONCE, CONNECTIONS, ENDS_WITHIN, TIMEOUT_MS, all_ended, answers::ANSWER_SPICE, start};
use crate::{
    mutation::{Rng, mutate},
    proxy::test_bed,
};

/// What a backend does after an answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    Close,
    /// Waits for the next request on the connection.
    Wait,
    /// Sends an answer nobody asked for a moment later (the proxy's connection is idle by
    /// then), then waits.
    Unasked,
}

/// The answer a backend gives to request `i`, and what it does then: an answer of one of each
/// framing (length, chunks, until close; after an interim answer; an error; a bodiless 204
/// with a length; one given twice, the second unasked), its body naming `i`, changed in three
/// of four cases.
fn answer(seed: u64, i: usize) -> (Vec<u8>, Then) {
    let mut rng = Rng(seed.wrapping_add(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let body = format!("answer {i}");
    let n = body.len();
    let answer = match rng.below(7) {
        0 => format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n{body}"),
        1 => format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\r\n{body}\r\n0\r\n\r\n"),
        2 => format!("HTTP/1.0 200 OK\r\n\r\n{body}"),
        3 => format!("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n{body}"),
        4 => format!("HTTP/1.1 404 Not Found\r\nContent-Length: {n}\r\nConnection: keep-alive\r\n\r\n{body}"),
        5 => "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n".to_owned(),
        _ => unasked(i).repeat(2),
    };
    let answer = match rng.below(4) {
        0 => answer.into_bytes(),
        _ => mutate(&mut rng, answer.as_bytes(), ANSWER_SPICE),
    };
    (answer, [Then::Close, Then::Wait, Then::Unasked][rng.below(3)])
}

/// A whole answer whose body names request `i`.
fn unasked(i: usize) -> String {
    let body = format!("unasked {i}");
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

/// A backend that answers each request for `/i` with `answer(seed, i)`, then does what that says.
async fn backend(seed: u64) -> SocketAddr {
    test_bed::listening(move |mut stream| async move {
        let mut read = Vec::new();
        loop {
            let Some(end) = test_bed::head_read(&mut stream, &mut read).await else { return };
            let head = String::from_utf8_lossy(&read[..end]).into_owned();
            read.drain(..end);
            let Some(i) = head.split(' ').nth(1).and_then(|t| t.strip_prefix('/')?.parse().ok()) else {
                return;
            };
            let (answer, then) = answer(seed, i);
            if stream.write_all(&answer).await.is_err() || then == Then::Close {
                return;
            }
            if then == Then::Unasked {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if stream.write_all(unasked(i).as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

/// What a client read: the status, whether the proxy said Via (the answer is a backend's), and
/// the body; an error when the answer broke.
type Got = Result<(u16, bool, Vec<u8>), hyper::Error>;

/// `GET /i` (`HEAD /i` for one in four: an answer whose head says it has a body has none) by
/// hyper's client over `io`, its answer read whole.
async fn get<T>(io: T, i: usize) -> Got
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(connection);
    let method = if i % 4 == 3 { Method::HEAD } else { Method::GET };
    let request = Request::builder().method(method).uri(format!("/{i}")).header("host", "a");
    let request = request.body(Empty::<Bytes>::new()).unwrap();
    let answer = sender.send_request(request).await?;
    let (status, via) = (answer.status().as_u16(), answer.headers().contains_key("via"));
    let body = answer.into_body().collect().await?.to_bytes();
    Ok((status, via, body.to_vec()))
}

/// hyper's client reading `answer(seed, i)` straight from a backend (and the unasked answer
/// after it, the same bytes the proxy may read), which then closes its side and waits for the
/// client to go.
async fn reference(seed: u64, i: usize) -> Got {
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let (mut answer, then) = answer(seed, i);
    if then == Then::Unasked {
        answer.extend(unasked(i).as_bytes());
    }
    tokio::spawn(async move {
        let _ = test_bed::head_read(&mut server, &mut Vec::new()).await;
        let _ = server.write_all(&answer).await;
        let _ = server.shutdown().await;
        let _ = server.read_to_end(&mut Vec::new()).await;
    });
    get(client, i).await
}

#[tokio::test]
async fn every_client_reads_its_own_backends_answer_or_an_error() {
    const SEED: u64 = 0x5eed_0011;
    let port = backend(SEED).await.port();
    let (address, shared, _) = start(&format!(
        "[[pool]]\nname = \"p\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\ntimeout_ms = {}\n",
        TIMEOUT_MS / 2
    ))
    .await;
    let mut passed = 0;
    for batch in 0..CONNECTIONS / AT_ONCE {
        // Requests at once, so that backend connections are reused from one to the next.
        let clients = (0..AT_ONCE).map(|at| async move {
            let i = batch * AT_ONCE + at;
            let through = async { get(TcpStream::connect(address).await.unwrap(), i).await };
            let got = tokio::time::timeout(ENDS_WITHIN, through).await.expect("a client's answer in time");
            (i, got)
        });
        for (i, got) in futures_util::future::join_all(clients).await {
            let expected = reference(SEED, i).await;
            let shown = String::from_utf8_lossy(&answer(SEED, i).0).into_owned();
            match got {
                Ok((status, true, body)) => {
                    let expected = expected.as_ref().map(|(s, _, b)| (*s, b.clone())).ok();
                    assert_eq!(Some((status, body)), expected, "request {i}, its backend's answer {shown:?}");
                    passed += 1;
                }
                Ok((status, false, _)) => {
                    assert!(matches!(status, 502 | 504), "request {i}: {status}, {shown:?}")
                }
                Err(_) => {}
            }
        }
    }
    all_ended(&shared).await;
    // Both what passes and what breaks were reached.
    assert!((CONNECTIONS / 4..=CONNECTIONS * 9 / 10).contains(&passed), "{passed} of {CONNECTIONS} passed");
}
