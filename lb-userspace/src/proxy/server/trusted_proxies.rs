//! A listener behind trusted proxies, with a real client: the client address they forward in
//! X-Forwarded-For is what a route's allow list, its rate limit per client and its `clients`
//! match see; from a peer that is not trusted, the field is the client's own claim and is not
//! believed.
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Routes that answer by themselves: one open only to 192.0.2.0/24, one limited to a request
/// per client for the test's length; `office.test` answers 201 to clients of 203.0.113.0/24
/// (a route matching them), 200 to the others.
const ROUTES: &str = "[[route]]\nlistener = \"l\"\nhost = \"gated.test\"\nallow = [\"192.0.2.0/24\"]\n\
     respond = { status = 200 }\n\
     [[route]]\nlistener = \"l\"\nhost = \"office.test\"\nclients = [\"203.0.113.0/24\"]\nrespond = { status = 201 }\n\
     [[route]]\nlistener = \"l\"\nhost = \"office.test\"\nrespond = { status = 200 }\n\
     [[route]]\nlistener = \"l\"\nhost = \"limited.test\"\n\
     rate_limit = { requests_per_second = 0.001, burst = 1, key = \"client_ip\" }\nrespond = { status = 200 }\n";

/// A listener that trusts the proxies in `trusted` (the test's client connects from 127.0.0.1).
async fn listener(trusted: &str) -> SocketAddr {
    let listener = format!(
        "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n\
         client_address = {{ header = \"X-Forwarded-For\", trusted = [\"{trusted}\"] }}\n"
    );
    super::mutations::start_listener(&listener, ROUTES).await.0
}

/// The status of a GET to `host`, with X-Forwarded-For `forwarded` if given.
async fn status(address: SocketAddr, host: &str, forwarded: Option<&str>) -> u16 {
    let io = TokioIo::new(TcpStream::connect(address).await.unwrap());
    let (mut send, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let mut request = Request::get(format!("http://{host}/"));
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    send.send_request(request.body(Empty::<Bytes>::new()).unwrap()).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_gates_see_the_client_it_forwarded() {
    let address = listener("127.0.0.0/8").await;
    assert_eq!(status(address, "gated.test", Some("192.0.2.1")).await, 200);
    // A client's own claim before the address the proxy saw counts for nothing.
    assert_eq!(status(address, "gated.test", Some("192.0.2.1, 198.51.100.1")).await, 403);
    assert_eq!(status(address, "gated.test", None).await, 403, "the proxy itself is outside the list");
    // Each forwarded client has its own bucket.
    assert_eq!(status(address, "limited.test", Some("198.51.100.1")).await, 200);
    assert_eq!(status(address, "limited.test", Some("198.51.100.1")).await, 429);
    assert_eq!(status(address, "limited.test", Some("198.51.100.2")).await, 200);
    // Routes by the forwarded client.
    assert_eq!(status(address, "office.test", Some("203.0.113.9")).await, 201);
    assert_eq!(status(address, "office.test", Some("198.51.100.1")).await, 200);
    assert_eq!(status(address, "office.test", None).await, 200, "the proxy itself is not in the office");
}

#[tokio::test]
async fn from_a_peer_that_is_not_trusted_the_field_is_not_believed() {
    let address = listener("10.0.0.0/8").await;
    assert_eq!(status(address, "gated.test", Some("192.0.2.1")).await, 403);
    assert_eq!(status(address, "limited.test", Some("198.51.100.1")).await, 200);
    assert_eq!(status(address, "limited.test", Some("198.51.100.2")).await, 429, "one bucket: the peer's");
    assert_eq!(status(address, "office.test", Some("203.0.113.9")).await, 200, "routed by the peer");
}
