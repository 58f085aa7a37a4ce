//! A listener's `max_connection_age_ms` with real clients: a kept-alive HTTP/1.1 connection
//! still in use closes after its first answer past the age (`Connection: close`), and an HTTP/2
//! one gets GOAWAY once quiet; neither closes before it.
use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

async fn listener() -> SocketAddr {
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n\
                    max_connection_age_ms = 300\n";
    let routes = "[[route]]\nlistener = \"l\"\nrespond = { status = 200, body = \"ok\" }\n";
    super::mutations::start_listener(listener, routes).await.0
}

#[tokio::test]
async fn an_http1_connection_past_its_age_closes_after_its_next_answer() {
    let address = listener().await;
    let mut client = TcpStream::connect(address).await.unwrap();
    let started = std::time::Instant::now();
    let mut got = vec![0; 4096];
    loop {
        client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), client.read(&mut got)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&got[..n]).to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        if answer.contains("connection: close") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "kept open past its age");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let aged = started.elapsed();
    // 300 ms ±10%, on a clock that lags a few ms.
    assert!(aged >= Duration::from_millis(250), "closed after {aged:?}");
    let closed = tokio::time::timeout(Duration::from_secs(2), client.read(&mut got)).await.unwrap();
    assert!(matches!(closed, Ok(0)), "{closed:?}");
}

#[tokio::test]
async fn an_http2_connection_past_its_age_gets_goaway_once_quiet() {
    let address = listener().await;
    let io = TokioIo::new(TcpStream::connect(address).await.unwrap());
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    let started = std::time::Instant::now();
    let connection = tokio::spawn(connection);
    let request = || Request::get("http://a/").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(send.send_request(request()).await.unwrap().status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(3), connection).await;
    let aged = started.elapsed();
    assert!(matches!(ended, Ok(Ok(Ok(())))), "no graceful end: {ended:?}");
    assert!(aged >= Duration::from_millis(250), "GOAWAY after {aged:?}");
}
