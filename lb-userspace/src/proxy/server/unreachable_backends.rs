//! A backend that cannot be reached (nothing listens: the connect is refused) through a
//! listener, with real clients: every request, a POST with its body too, goes to another
//! backend of the pool, on HTTP/1.1 and h2c pools and with no `retries`; with none left, or the
//! retry budget spent, the client gets 502.
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{Full, StreamBody};
use hyper::{Method, Request, body::Frame};

use crate::proxy::test_bed;

/// A listener whose pools each have a live backend on 127.0.0.1 and a dead one on 127.0.0.2
/// (the same port: nothing listens there): `a.test` on HTTP/1.1, `grpc.test` on h2c, and
/// `spent.test` with a retry budget of 0; `dead.test`'s pool has the dead one alone.
async fn listener() -> SocketAddr {
    let (http1, h2c) = (test_bed::http1().await.port(), test_bed::h2c().await.port());
    let both = "backends = [{ address = \"127.0.0.2\" }, { address = \"127.0.0.1\" }]";
    let routes = format!(
        "[[pool]]\nname = \"p\"\nport = {http1}\n{both}\n\
         [[pool]]\nname = \"g\"\nport = {h2c}\nprotocol = \"h2c\"\n{both}\n\
         [[pool]]\nname = \"d\"\nport = {http1}\nbackends = [{{ address = \"127.0.0.2\" }}]\n\
         [[route]]\nlistener = \"l\"\nhost = \"grpc.test\"\npool = \"g\"\n\
         [[route]]\nlistener = \"l\"\nhost = \"dead.test\"\npool = \"d\"\n\
         [[route]]\nlistener = \"l\"\nhost = \"spent.test\"\npool = \"p\"\nretry_budget_percent = 0\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\n"
    );
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    super::mutations::start_listener(listener, &routes).await.0
}

/// A POST of `body` to `host`, with a length or chunked (HTTP/1.1), or over HTTP/2: the status
/// and the answer's body.
async fn post(
    address: SocketAddr,
    host: &str,
    body: &'static str,
    chunked: bool,
    http2: bool,
) -> (u16, String) {
    let request = Request::builder().method(Method::POST).uri(format!("http://{host}/up"));
    let (head, text) = if chunked {
        let frames = [Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(body)))];
        let request = request.body(StreamBody::new(futures_util::stream::iter(frames))).unwrap();
        test_bed::ask(address, request, http2).await
    } else {
        test_bed::ask(address, request.body(Full::new(Bytes::from(body))).unwrap(), http2).await
    };
    (head.status.as_u16(), text)
}

#[tokio::test]
async fn a_request_whose_backend_refuses_goes_to_another_body_and_all() {
    let address = listener().await;
    // Round robin puts every other request on the dead backend.
    for i in 0..8 {
        let (chunked, http2) = (i % 2 == 0, i % 4 >= 2);
        assert_eq!(post(address, "a.test", "hello", chunked, http2).await, (200, "read 5".into()), "{i}");
        // The h2c backend echoes the body.
        assert_eq!(post(address, "grpc.test", "hello", chunked, http2).await, (200, "hello".into()), "{i}");
    }
}

#[tokio::test]
async fn with_no_backend_left_or_no_budget_the_client_gets_502() {
    let address = listener().await;
    assert_eq!(post(address, "dead.test", "hello", false, false).await.0, 502);
    // A budget of 0%: only its floor of 3 retries, then every other request fails.
    let mut failed = 0;
    for _ in 0..20 {
        failed += usize::from(post(address, "spent.test", "hello", false, false).await.0 == 502);
    }
    assert!((5..=10).contains(&failed), "{failed} of 20 failed");
}
