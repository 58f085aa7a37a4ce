//! The proxy's own refusals of gRPC calls, through a listener with a real HTTP/2 client: a
//! call (content type `application/grpc`) gets them as gRPC statuses (200, `grpc-status`,
//! `grpc-message`), as Envoy answers; other requests get the HTTP status; the metrics count
//! the status the proxy meant.
use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use crate::proxy::test_bed;

#[tokio::test]
async fn a_refused_grpc_call_is_told_a_grpc_status_and_the_reason() {
    // A pool whose one backend listens nowhere, and a route that lets no client in.
    let routes = "[[pool]]\nname = \"gone\"\nport = 1\nbackends = [{ address = \"127.0.0.1\" }]\nprotocol = \"h2c\"\n\
                  [[route]]\nlistener = \"l\"\nhost = \"gone.test\"\npool = \"gone\"\n\
                  [[route]]\nlistener = \"l\"\nhost = \"closed.test\"\npool = \"gone\"\ndeny = [\"0.0.0.0/0\"]\n";
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    let (address, _shared, forwarder) = super::mutations::start_listener(listener, routes).await;
    let call = |host: &str, content_type: &str| {
        Request::post(format!("http://{host}/sluice.Echo/Call"))
            .header("content-type", content_type)
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };
    let field = |head: &hyper::http::response::Parts, name: &str| {
        head.headers.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
    };
    for (host, code, message) in [
        ("gone.test", "14", "upstream unreachable"),
        ("closed.test", "7", "client address not allowed on this route"),
    ] {
        let (head, body) = test_bed::ask(address, call(host, "application/grpc+proto"), true).await;
        assert_eq!(head.status, 200, "{host}: {head:?}");
        assert_eq!(field(&head, "grpc-status"), code, "{host}");
        assert_eq!(field(&head, "grpc-message"), message, "{host}");
        assert_eq!(field(&head, "content-type"), "application/grpc");
        assert!(body.is_empty(), "trailers-only: {body:?}");
    }
    // Not a gRPC call: the HTTP status.
    let (head, _) = test_bed::ask(address, call("gone.test", "application/json"), true).await;
    assert_eq!(head.status, 502);
    // Counted as the proxy meant them.
    let text = forwarder.metrics.text();
    let count = |class: &str| {
        text.lines()
            .filter(|l| l.starts_with("http_requests_total") && l.contains(&format!("class=\"{class}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    assert_eq!((count("5xx"), count("4xx"), count("2xx")), (2, 1, 0), "{text}");
}
