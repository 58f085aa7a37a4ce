//! gRPC-Web through a listener (a route's `grpc_web`), with an HTTP/1.1 client as a browser's
//! and an h2c backend as gRPC's: the call reaches the backend as gRPC (its content type, `te:
//! trailers`, its message decoded from base64 for `-text`), and its answer, message then
//! trailers, reaches the client as gRPC-Web (the trailers a frame of the body; base64 again).
use std::net::SocketAddr;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{Request, Response, body::Incoming, service::service_fn};

use crate::proxy::test_bed;

/// An h2c backend as a gRPC server: each call's message echoed (`content-type:
/// application/grpc`), then trailers; the call's content type and `te` said back in
/// `x-got-content-type` and `x-got-te`.
async fn grpc_backend() -> SocketAddr {
    test_bed::listening(|stream| async move {
        let service = service_fn(|request: Request<Incoming>| async move {
            let got =
                |name: &str| request.headers().get(name).cloned().unwrap_or_else(|| "-".parse().unwrap());
            let (content_type, te) = (got("content-type"), got("te"));
            let message = request.into_body().collect().await?.to_bytes();
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = [
                Ok::<_, hyper::Error>(hyper::body::Frame::data(message)),
                Ok(hyper::body::Frame::trailers(trailers)),
            ];
            let mut answer = Response::new(StreamBody::new(stream::iter(frames)));
            let headers = answer.headers_mut();
            headers.insert("content-type", "application/grpc".parse().unwrap());
            headers.insert("x-got-content-type", content_type);
            headers.insert("x-got-te", te);
            Ok::<_, hyper::Error>(answer)
        });
        test_bed::serve(stream, true, service).await;
    })
    .await
}

/// A health check's message (`HealthCheckRequest{service: "x"}`) in gRPC's frame.
const MESSAGE: &[u8] = b"\0\0\0\0\x03\x0a\x01x";

#[tokio::test]
async fn a_grpc_web_call_reaches_a_grpc_backend_and_its_answer_the_browser() {
    let port = grpc_backend().await.port();
    let routes = format!(
        "[[pool]]\nname = \"g\"\nport = {port}\nprotocol = \"h2c\"\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\npool = \"g\"\ngrpc_web = true\n"
    );
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    let address = super::mutations::start_listener(listener, &routes).await.0;
    // The whole answer: the message, then the trailers' frame (flag 0x80, length 15).
    let answer = [MESSAGE, b"\x80\0\0\0\x0fgrpc-status:0\r\n"].concat();
    for (content_type, text, grpc) in [
        ("application/grpc-web+proto", false, "application/grpc+proto"),
        ("application/grpc-web-text", true, "application/grpc"),
    ] {
        let body = if text { Bytes::from(STANDARD.encode(MESSAGE)) } else { Bytes::from_static(MESSAGE) };
        let request = Request::post("http://g.test/grpc.health.v1.Health/Check")
            .header("content-type", content_type)
            .header("x-grpc-web", "1")
            .body(Full::new(body))
            .unwrap();
        let (head, body) = test_bed::ask(address, request, false).await;
        assert_eq!(head.status, 200, "{content_type}: {head:?}");
        let field = |name: &str| head.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(field("x-got-content-type").as_deref(), Some(grpc), "what the backend got");
        assert_eq!(field("x-got-te").as_deref(), Some("trailers"));
        assert_eq!(field("content-type").as_deref(), Some(content_type), "the client's own type back");
        let expected =
            if text { STANDARD.encode(&answer) } else { String::from_utf8_lossy(&answer).into_owned() };
        assert_eq!(body, expected, "{content_type}");
    }
}

/// A call the proxy refuses once it is routed (its pool cannot be reached, its route's gate
/// denies the client) is told a gRPC status in the client's gRPC-Web type, over HTTP/1.1 as
/// over HTTP/2.
#[tokio::test]
async fn a_refused_grpc_web_call_is_told_a_grpc_status_in_its_own_type() {
    let routes = "[[pool]]\nname = \"gone\"\nport = 1\nprotocol = \"h2c\"\nbackends = [{ address = \"127.0.0.1\" }]\n\
                  [[route]]\nlistener = \"l\"\nhost = \"closed.test\"\npool = \"gone\"\ngrpc_web = true\n\
                  deny = [\"0.0.0.0/0\"]\n\
                  [[route]]\nlistener = \"l\"\npool = \"gone\"\ngrpc_web = true\n";
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    let address = super::mutations::start_listener(listener, routes).await.0;
    let cases = [
        ("g.test", "14", "upstream unreachable"),
        ("closed.test", "7", "client address not allowed on this route"),
    ];
    for ((host, code, message), http2) in cases.into_iter().flat_map(|case| [(case, false), (case, true)]) {
        let request = Request::post(format!("http://{host}/sluice.Echo/Call"))
            .header("content-type", "application/grpc-web-text")
            .body(Full::new(Bytes::from(STANDARD.encode(MESSAGE))))
            .unwrap();
        let (head, body) = test_bed::ask(address, request, http2).await;
        let field = |name: &str| head.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(field("content-type").as_deref(), Some("application/grpc-web-text"));
        assert_eq!(field("grpc-status").as_deref(), Some(code), "{host}");
        assert_eq!(field("grpc-message").as_deref(), Some(message));
        assert!(body.is_empty(), "{body:?}");
    }
}
