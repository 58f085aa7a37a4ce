//! h2c backends that say they did not process a request (RFC 9113 §8.7): one that refuses
//! every stream (`REFUSED_STREAM`), one that answers with GOAWAY naming no stream processed
//! (a backend shutting down). Through a listener with real clients, with no `retries`: a
//! request goes to another backend of the pool, whatever its method, as if the connect had
//! failed, with its body if the route kept it (`retry_buffer_bytes`), else it gets 502.
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::{Method, Request};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::mutations::{FrameReader, HEADERS, frame};
use crate::proxy::test_bed;

const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const REFUSED_STREAM: u32 = 7;

/// How the backend on 127.0.0.2 says no.
#[derive(Clone, Copy)]
enum Refusal {
    /// `RST_STREAM` with `REFUSED_STREAM` for every stream; the connection stays.
    Stream,
    /// GOAWAY with last stream 0 (none processed), then the connection closes.
    GoAway,
}

/// Speaks just enough HTTP/2 to refuse: its SETTINGS, an ack of the proxy's, then `refusal`
/// for each request's HEADERS.
async fn refusing(mut stream: TcpStream, refusal: Refusal) {
    if stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.is_err() {
        return;
    }
    let mut frames = FrameReader::new();
    while let Some((kind, flags, id)) = frames.next(&mut stream).await {
        let answer = match (kind, refusal) {
            (SETTINGS, _) if flags & 1 == 0 => frame(SETTINGS, 1, 0, &[]),
            (HEADERS, Refusal::Stream) => frame(RST_STREAM, 0, id, &REFUSED_STREAM.to_be_bytes()),
            (HEADERS, Refusal::GoAway) => frame(GOAWAY, 0, 0, &[0; 8]),
            _ => continue,
        };
        if stream.write_all(&answer).await.is_err() || matches!((kind, refusal), (HEADERS, Refusal::GoAway)) {
            return;
        }
    }
}

/// A listener whose h2c pools each have a refusing backend on 127.0.0.2 and a serving one on
/// 127.0.0.1 (the same port): `refuse.test` refuses streams, `away.test` goes away.
async fn listener() -> SocketAddr {
    let mut ports = Vec::new();
    for refusal in [Refusal::Stream, Refusal::GoAway] {
        let port = test_bed::h2c().await.port();
        let refuser = TcpListener::bind(("127.0.0.2", port)).await.unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = refuser.accept().await {
                tokio::spawn(refusing(stream, refusal));
            }
        });
        ports.push(port);
    }
    let both = "backends = [{ address = \"127.0.0.2\" }, { address = \"127.0.0.1\" }]";
    let routes = format!(
        "[[pool]]\nname = \"r\"\nport = {}\nprotocol = \"h2c\"\n{both}\n\
         [[pool]]\nname = \"a\"\nport = {}\nprotocol = \"h2c\"\n{both}\n\
         [[route]]\nlistener = \"l\"\nhost = \"refuse.test\"\npool = \"r\"\n\
         [[route]]\nlistener = \"l\"\nhost = \"away.test\"\npool = \"a\"\n\
         [[route]]\nlistener = \"l\"\nhost = \"tight.test\"\npool = \"r\"\nretry_buffer_bytes = 4\n",
        ports[0], ports[1]
    );
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    super::mutations::start_listener(listener, &routes).await.0
}

/// The status of a `method` to `host` over HTTP/1.1 or HTTP/2, with `body` if any, and the
/// answer's body (the serving backend echoes the request's).
async fn status(
    address: SocketAddr,
    host: &str,
    method: Method,
    body: Option<&'static str>,
    http2: bool,
) -> (u16, String) {
    let request = Request::builder().method(method).uri(format!("http://{host}/"));
    let (head, answer) = match body {
        Some(body) => {
            test_bed::ask(address, request.body(Full::new(Bytes::from(body))).unwrap(), http2).await
        }
        None => test_bed::ask(address, request.body(Empty::<Bytes>::new()).unwrap(), http2).await,
    };
    (head.status.as_u16(), answer)
}

#[tokio::test]
async fn a_bodiless_request_a_backend_did_not_process_goes_to_another() {
    let address = listener().await;
    // Round robin puts every other request on the refusing backend.
    for host in ["refuse.test", "away.test"] {
        for i in 0..8 {
            let (method, http2) = (if i % 2 == 0 { Method::GET } else { Method::DELETE }, i >= 4);
            assert_eq!(status(address, host, method, None, http2).await.0, 200, "{host} {i}");
        }
    }
}

#[tokio::test]
async fn a_request_with_a_kept_body_a_backend_did_not_process_goes_to_another_whole() {
    let address = listener().await;
    for host in ["refuse.test", "away.test"] {
        for i in 0..4 {
            let answer = status(address, host, Method::POST, Some("hello"), i >= 2).await;
            assert_eq!(answer, (200, "hello".to_owned()), "{host} {i}");
        }
    }
}

/// A body that comes in two parts, the second after the refusal: the kept part, then the
/// rest as it comes, reach the other backend.
#[tokio::test]
async fn a_body_refused_half_sent_goes_to_another_with_its_rest() {
    let address = listener().await;
    for i in 0..4 {
        let mut client = TcpStream::connect(address).await.unwrap();
        let head =
            "POST / HTTP/1.1\r\nHost: refuse.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        client.write_all(format!("{head}5\r\nhello\r\n").as_bytes()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        client.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let read = client.read_to_end(&mut answer);
        tokio::time::timeout(std::time::Duration::from_secs(5), read).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("hello world"), "{i}: {answer}");
    }
}

#[tokio::test]
async fn a_body_longer_than_the_routes_bound_a_backend_refused_gets_502() {
    let address = listener().await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(status(address, "tight.test", Method::POST, Some("hello"), i >= 2).await.0);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 502, 502], "round robin: half on the refusing backend");
}
