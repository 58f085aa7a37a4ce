//! Trailers through a listener, with real clients and backends: an HTTP/1.1 backend's chunked
//! answer keeps its trailers to an HTTP/1.1 client (in the last chunk) and to an HTTP/2 one; a
//! client's chunked request keeps its own to the backend; an h2c backend's (gRPC's status)
//! reach an HTTP/1.1 client. Fields that frame or route are left out.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::proxy::test_bed;

/// The answer of the raw backend: a chunked body with trailers, one of them framing.
const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
    5\r\nhello\r\n0\r\nX-Checksum: abc\r\nContent-Length: 99\r\n\r\n";

/// A raw HTTP/1.1 backend: reads a request (a chunked body to its end), keeps what it read in
/// `seen`, answers ANSWER.
async fn backend(seen: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    test_bed::listening(move |mut stream| {
        let seen = seen.clone();
        async move {
            let mut read = Vec::new();
            let Some(head) = test_bed::head_read(&mut stream, &mut read).await else { return };
            let chunked = String::from_utf8_lossy(&read[..head]).to_ascii_lowercase().contains("chunked");
            while chunked && !read[head..].ends_with(b"\r\n\r\n") {
                let mut chunk = [0; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read.extend_from_slice(&chunk[..n]),
                }
            }
            seen.lock().unwrap().push(String::from_utf8_lossy(&read).into_owned());
            let _ = stream.write_all(ANSWER).await;
        }
    })
    .await
}

/// A listener with a route to the raw backend (host `raw.test`) and one to an h2c backend that
/// echoes bodies and ends with `grpc-status: 0` (host `grpc.test`).
async fn listener(seen: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let (raw, h2c) = (backend(seen).await, test_bed::h2c().await);
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    let routes = format!(
        "[[pool]]\nname = \"raw\"\nport = {}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[pool]]\nname = \"grpc\"\nport = {}\nprotocol = \"h2c\"\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\nhost = \"raw.test\"\npool = \"raw\"\n\
         [[route]]\nlistener = \"l\"\nhost = \"grpc.test\"\npool = \"grpc\"\n",
        raw.port(),
        h2c.port()
    );
    super::mutations::start_listener(listener, &routes).await.0
}

/// Sends `request` on a new connection and reads the answer up to the end of a chunked body.
async fn exchange(address: SocketAddr, request: &[u8]) -> String {
    let mut client = TcpStream::connect(address).await.unwrap();
    client.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let ended = async {
        let Some(head) = test_bed::head_read(&mut client, &mut got).await else { return };
        while !(got[head..].starts_with(b"0\r\n") || got[head..].windows(5).any(|w| w == b"\r\n0\r\n"))
            || !got.ends_with(b"\r\n\r\n")
        {
            let mut chunk = [0; 4096];
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), ended).await.unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn trailers_pass_through_to_an_http1_client_and_from_it() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let address = listener(seen.clone()).await;
    let answer = exchange(address, b"GET / HTTP/1.1\r\nHost: raw.test\r\n\r\n").await;
    assert!(answer.to_ascii_lowercase().contains("\r\ntransfer-encoding: chunked\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n"), "{answer}");

    // A client's trailers reach the backend in its last chunk, the framing one left out.
    let request = b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\n\r\n\
        3\r\nabc\r\n0\r\nX-Signature: s1\r\nHost: evil.test\r\n\r\n";
    exchange(address, request).await;
    let seen = seen.lock().unwrap().pop().unwrap();
    assert!(seen.ends_with("\r\n3\r\nabc\r\n0\r\nx-signature: s1\r\n\r\n"), "{seen}");

    // An h2c backend's trailers (gRPC's status) reach an HTTP/1.1 client.
    let request = b"POST / HTTP/1.1\r\nHost: grpc.test\r\nContent-Length: 2\r\n\r\nhi";
    let answer = exchange(address, request).await;
    assert!(answer.ends_with("\r\n2\r\nhi\r\n0\r\ngrpc-status: 0\r\n\r\n"), "{answer}");
}

#[tokio::test]
async fn an_http1_backend_s_trailers_reach_an_http2_client() {
    let address = listener(Arc::new(Mutex::new(Vec::new()))).await;
    let io = TokioIo::new(TcpStream::connect(address).await.unwrap());
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get("http://raw.test/").body(Empty::<Bytes>::new()).unwrap();
    let collected = send.send_request(request).await.unwrap().into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(collected.to_bytes(), "hello");
    assert_eq!(trailers.get("x-checksum").unwrap(), "abc");
    assert!(trailers.get("content-length").is_none(), "{trailers:?}");
}
