//! A listener's `max_connections_per_client` with real sockets: a client at its limit has its
//! next connection closed at once and counted, while other clients are served; a connection it
//! closes gives its place back. Behind a balancer, the client is the PROXY header's.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::proxy::pipeline::Forwarder;

/// A listener with `extra` whose routes answer by themselves.
async fn listener(extra: &str) -> (SocketAddr, Arc<Forwarder>) {
    let listener = format!(
        "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\nmax_connections_per_client = 2\n{extra}"
    );
    let routes = "[[route]]\nlistener = \"l\"\nrespond = { status = 200 }\n";
    let (address, _, forwarder) = super::mutations::start_listener(&listener, routes).await;
    (address, forwarder)
}

/// A connection that sends `first` (maybe nothing) and is then left open, once the listener has
/// had time to accept it.
async fn open(address: SocketAddr, first: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream
}

/// Whether a GET on `stream` is answered (false: the listener closed it).
async fn answered(mut stream: TcpStream) -> bool {
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut got)).await;
    got.starts_with(b"HTTP/1.1 200")
}

fn limited(forwarder: &Forwarder) -> String {
    let text = forwarder.metrics.text();
    let series = "http_client_limited_connections_total{listener=\"l\"} ";
    text.lines().find_map(|l| l.strip_prefix(series)).unwrap_or("0").to_owned()
}

#[tokio::test]
async fn a_client_at_its_limit_is_refused_until_one_of_its_connections_closes() {
    let (address, forwarder) = listener("").await;
    let first = open(address, b"").await;
    let second = open(address, b"").await;
    assert!(!answered(open(address, b"").await).await, "a third connection was served");
    assert_eq!(limited(&forwarder), "1");
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(answered(open(address, b"").await).await, "the closed connection's place was not given back");
    assert!(answered(second).await);
}

#[tokio::test]
async fn behind_a_balancer_each_headers_client_has_its_own_limit() {
    let (address, forwarder) = listener("proxy_protocol = true\n").await;
    let header = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 4242 80\r\n").into_bytes();
    let _held = [open(address, &header("192.0.2.1")).await, open(address, &header("192.0.2.1")).await];
    assert!(!answered(open(address, &header("192.0.2.1")).await).await);
    assert_eq!(limited(&forwarder), "1");
    // The balancer's own address has nothing to do with it.
    assert!(answered(open(address, &header("192.0.2.2")).await).await);
}
