//! A backend's interim answers through a listener: 103 Early Hints reaches an HTTP/1.1 client
//! and an HTTP/2 client before the final answer, while the backend still works on it, with its
//! hop-by-hop fields left out, each HTTP/2 stream its own; an HTTP/1.0 client gets none; a
//! backend that never stops sending them gets a 502.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{Mutex, mpsc},
};

use crate::proxy::test_bed;

const WITHIN: Duration = Duration::from_secs(5);
const HINTS: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\
                       Connection: x-hop\r\nX-Hop: 1\r\n\r\n";

/// A backend that answers each request (its body read by its length) with `interims`, then
/// waits for a word on the returned sender before its final answer.
async fn hinting_backend(interims: Vec<u8>) -> (SocketAddr, mpsc::Sender<()>) {
    let (go, went) = mpsc::channel::<()>(4);
    let went = Arc::new(Mutex::new(went));
    let address = test_bed::listening(move |mut stream| {
        let (interims, went) = (interims.clone(), went.clone());
        async move {
            let mut read = Vec::new();
            while let Some(end) = test_bed::head_read(&mut stream, &mut read).await {
                let head = String::from_utf8_lossy(&read[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                while read.len() < end + length {
                    let mut chunk = [0; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read.extend_from_slice(&chunk[..n]),
                    }
                }
                read.drain(..end + length);
                if stream.write_all(&interims).await.is_err() || went.lock().await.recv().await.is_none() {
                    return;
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            }
        }
    })
    .await;
    (address, go)
}

async fn listener_to(backend: SocketAddr) -> SocketAddr {
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    let routes = format!(
        "[[pool]]\nname = \"p\"\nport = {}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\n",
        backend.port()
    );
    super::mutations::start_listener(listener, &routes).await.0
}

/// An HTTP/2 client (prior knowledge) connected to `address`.
async fn h2_client(address: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let io = TcpStream::connect(address).await.unwrap();
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Reads until `got` holds `wanted`.
async fn read_until(client: &mut TcpStream, got: &mut Vec<u8>, wanted: &[u8]) {
    let reading = async {
        while !got.windows(wanted.len()).any(|w| w == wanted) {
            let mut chunk = [0; 4096];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before {:?}: {:?}",
                String::from_utf8_lossy(wanted),
                String::from_utf8_lossy(got)
            );
            got.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WITHIN, reading).await.unwrap_or_else(|_| {
        panic!("no {:?} in {:?}", String::from_utf8_lossy(wanted), String::from_utf8_lossy(got))
    });
}

#[tokio::test]
async fn early_hints_reach_an_http1_client_before_the_backend_answers() {
    let (backend, go) = hinting_backend(HINTS.to_vec()).await;
    let address = listener_to(backend).await;
    let mut client = TcpStream::connect(address).await.unwrap();
    // A GET, then a POST whose body the listener reads first: the hints come while the
    // backend still holds its answer back (it sends it only when told, below).
    for request in [
        &b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        client.write_all(request).await.unwrap();
        let mut got = Vec::new();
        read_until(&mut client, &mut got, b"\r\n\r\n").await;
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 103 early hints\r\n"), "{text}");
        assert!(text.contains("\r\nlink: </s.css>; rel=preload\r\n"), "{text}");
        assert!(!text.contains("x-hop") && !text.contains("connection"), "hop-by-hop fields passed: {text}");
        assert!(!text.contains("200 ok"), "the final answer came with the hints: {text}");
        go.send(()).await.unwrap();
        read_until(&mut client, &mut got, b"\r\n\r\nok").await;
        let text = String::from_utf8_lossy(&got);
        assert_eq!(text.matches("HTTP/1.1 103").count(), 1, "{text}");
        assert!(text.contains("\r\n\r\nHTTP/1.1 200 OK\r\n"), "{text}");
    }
}

#[tokio::test]
async fn an_http10_client_gets_no_interim_answer() {
    let (backend, go) = hinting_backend(HINTS.to_vec()).await;
    let address = listener_to(backend).await;
    let mut client = TcpStream::connect(address).await.unwrap();
    client.write_all(b"GET / HTTP/1.0\r\nHost: a.test\r\n\r\n").await.unwrap();
    go.send(()).await.unwrap();
    let mut got = Vec::new();
    read_until(&mut client, &mut got, b"\r\n\r\nok").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && !text.contains("103"), "{text}");
}

#[tokio::test]
async fn a_backend_that_keeps_sending_interim_answers_is_a_bad_gateway() {
    let endless = HINTS.repeat(crate::proxy::interim::MAX_PER_REQUEST + 1);
    let (backend, _go) = hinting_backend(endless).await;
    let address = listener_to(backend).await;
    let mut client = TcpStream::connect(address).await.unwrap();
    client.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    read_until(&mut client, &mut got, b"HTTP/1.1 502 ").await;
}

#[tokio::test]
async fn early_hints_reach_an_http2_client_before_the_backend_answers() {
    let (backend, go) = hinting_backend(HINTS.to_vec()).await;
    let mut client = h2_client(listener_to(backend).await).await;
    let request = hyper::Request::get("http://a.test/").body(()).unwrap();
    let (mut response, _) = client.send_request(request, true).unwrap();
    let hints = std::future::poll_fn(|cx| response.poll_informational(cx));
    let hints = tokio::time::timeout(WITHIN, hints).await.expect("no interim answer").unwrap().unwrap();
    assert_eq!(hints.status(), hyper::StatusCode::EARLY_HINTS);
    assert_eq!(hints.headers()["link"], "</s.css>; rel=preload");
    assert!(!hints.headers().contains_key("x-hop"), "{:?}", hints.headers());
    go.send(()).await.unwrap();
    let answer = tokio::time::timeout(WITHIN, response).await.expect("no answer").unwrap();
    assert_eq!(answer.status(), hyper::StatusCode::OK);
}

#[tokio::test]
async fn each_http2_stream_gets_its_own_interim_answers() {
    let (backend, go) = hinting_backend(HINTS.to_vec()).await;
    let mut client = h2_client(listener_to(backend).await).await;
    // Two streams of one connection wait side by side: each gets one 103, the other's not.
    let mut responses = Vec::new();
    for path in ["/a", "/b"] {
        let request = hyper::Request::get(format!("http://a.test{path}")).body(()).unwrap();
        client = client.ready().await.unwrap();
        responses.push(client.send_request(request, true).unwrap().0);
    }
    for response in &mut responses {
        let hints = std::future::poll_fn(|cx| response.poll_informational(cx));
        let hints = tokio::time::timeout(WITHIN, hints).await.expect("a stream got no interim answer");
        assert_eq!(hints.unwrap().unwrap().status(), hyper::StatusCode::EARLY_HINTS);
    }
    go.send(()).await.unwrap();
    go.send(()).await.unwrap();
    for response in responses {
        let answer = tokio::time::timeout(WITHIN, response).await.expect("no answer").unwrap();
        assert_eq!(answer.status(), hyper::StatusCode::OK);
    }
}
