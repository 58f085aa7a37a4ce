//! Request body limits through a listener, with a real client and backend: a route's own
//! `max_body_bytes` in place of the listener's, larger (an upload path) or smaller, for a body
//! whose length is said (413 before a byte is read) and for a chunked one (cut, 413).
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{Request, body::Frame};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::proxy::test_bed;

/// A listener taking 1 KiB bodies, with an upload route that takes 64 KiB and a form route
/// that takes 16 bytes, in front of a backend that answers with the size it read.
async fn listener() -> SocketAddr {
    let backend = test_bed::http1().await;
    let listener =
        "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\nmax_body_bytes = 1024\n";
    let routes = format!(
        "[[pool]]\nname = \"p\"\nport = {}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/upload\"\npool = \"p\"\nmax_body_bytes = 65536\n\
         [[route]]\nlistener = \"l\"\npath_prefix = \"/form\"\npool = \"p\"\nmax_body_bytes = 16\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\n",
        backend.port()
    );
    super::mutations::start_listener(listener, &routes).await.0
}

/// POSTs `size` bytes to `path`, with their length said or chunked: the status and body.
pub(super) async fn post(address: SocketAddr, path: &str, size: usize, chunked: bool) -> (u16, String) {
    let io = TokioIo::new(TcpStream::connect(address).await.unwrap());
    let (mut send, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let data = Bytes::from(vec![b'x'; size]);
    let body = if chunked {
        let frames = data
            .chunks(512)
            .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::copy_from_slice(c))));
        StreamBody::new(futures_util::stream::iter(frames.collect::<Vec<_>>())).boxed()
    } else {
        Full::new(data).boxed()
    };
    let request = Request::post(format!("http://a.test{path}")).body(body).unwrap();
    let response = send.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let text = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (status, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test]
async fn a_route_s_body_limit_stands_in_for_the_listener_s() {
    let address = listener().await;
    for chunked in [false, true] {
        assert_eq!(
            post(address, "/upload", 32 * 1024, chunked).await,
            (200, "read 32768".into()),
            "chunked {chunked}"
        );
        assert_eq!(post(address, "/other", 1024, chunked).await, (200, "read 1024".into()));
        assert_eq!(post(address, "/other", 2048, chunked).await.0, 413, "the listener's limit");
        assert_eq!(post(address, "/upload", 65537, chunked).await.0, 413, "the route's, larger");
        assert_eq!(post(address, "/form", 17, chunked).await.0, 413, "the route's, smaller");
        assert_eq!(post(address, "/form", 16, chunked).await, (200, "read 16".into()));
    }
}
