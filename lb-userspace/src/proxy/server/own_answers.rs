//! A route's own answers through a listener, with real clients: a redirect by prefix (the path
//! a backend would get and the query after it) and by location, a fixed answer with the route's
//! response fields, each after the route's gates, over HTTP/1.1 and HTTP/2; counted under the
//! route with no pool or backend. And lbd's answers to HEAD over HTTP/2: the head alone.
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request};

use crate::proxy::test_bed;

/// Routes that answer by themselves, by host; none has a pool, and no pool is defined.
const ROUTES: &str = "[[route]]\nlistener = \"l\"\nhost = \"old.test\"\npath_prefix = \"/old/\"\n\
     rewrite_prefix = \"/new/\"\nredirect = { prefix = \"https://www.a.test\" }\n\
     [[route]]\nlistener = \"l\"\nhost = \"moved.test\"\nredirect = { location = \"/maintenance.html\", status = 302 }\n\
     [[route]]\nlistener = \"l\"\nhost = \"ok.test\"\nrespond = { status = 200, body = \"ok\\n\", content_type = \"text/plain\" }\n\
     response_headers = { set = { \"cache-control\" = \"no-store\" } }\n\
     [[route]]\nlistener = \"l\"\nhost = \"gated.test\"\nallow = [\"10.0.0.0/8\"]\nrespond = { status = 200 }\n";

async fn listener() -> (SocketAddr, std::sync::Arc<crate::proxy::pipeline::Forwarder>) {
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    let (address, _, forwarder) = super::mutations::start_listener(listener, ROUTES).await;
    (address, forwarder)
}

/// One request for `uri` from an HTTP/1.1 or an HTTP/2 client: the answer's head and body.
async fn ask(
    address: SocketAddr,
    method: Method,
    uri: &str,
    http2: bool,
) -> (hyper::http::response::Parts, String) {
    let request = Request::builder().method(method).uri(uri).body(Empty::<Bytes>::new()).unwrap();
    test_bed::ask(address, request, http2).await
}

fn field<'a>(head: &'a hyper::http::response::Parts, name: &str) -> Option<&'a str> {
    head.headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_route_redirects_or_answers_by_itself_after_its_gates() {
    let (address, forwarder) = listener().await;
    for http2 in [false, true] {
        // By prefix: the path as a backend would get it (canonical, the prefix rewritten), the
        // query kept.
        let (head, body) = ask(address, Method::GET, "http://old.test/old/a/../b%2Fc?q=1", http2).await;
        assert_eq!(head.status, 301, "{head:?}");
        assert_eq!(field(&head, "location"), Some("https://www.a.test/new/b%2Fc?q=1"));
        // No body: a length of 0 over HTTP/1.1, the head's END_STREAM over HTTP/2.
        assert_eq!(body, "");
        assert!(http2 || field(&head, "content-length") == Some("0"), "{head:?}");
        assert!(field(&head, "x-request-id").is_some() && field(&head, "via").is_none(), "{head:?}");

        let (head, _) = ask(address, Method::GET, "http://moved.test/any/where?x", http2).await;
        assert_eq!((head.status.as_u16(), field(&head, "location")), (302, Some("/maintenance.html")));

        let (head, body) = ask(address, Method::GET, "http://ok.test/healthz", http2).await;
        assert_eq!((head.status.as_u16(), body.as_str()), (200, "ok\n"), "{head:?}");
        assert_eq!(field(&head, "content-type"), Some("text/plain"));
        assert_eq!(field(&head, "cache-control"), Some("no-store"), "the route's response fields");
        let (head, body) = ask(address, Method::HEAD, "http://ok.test/healthz", http2).await;
        assert_eq!((head.status.as_u16(), body.as_str()), (200, ""), "{head:?}");

        // Any answer lbd makes to a HEAD is its head alone, with the length of its body.
        let (head, body) = ask(address, Method::HEAD, "http://nowhere.test/", http2).await;
        assert_eq!((head.status.as_u16(), body.as_str()), (404, ""), "{head:?}");
        assert_eq!(field(&head, "content-length"), Some("9"), "{head:?}");

        // The gates come first: this client is outside the route's allow list.
        let (head, _) = ask(address, Method::GET, "http://gated.test/", http2).await;
        assert_eq!(head.status, 403, "{head:?}");
    }
    // Counted under each route, with no pool and no backend.
    let text = forwarder.metrics.text();
    let requests: Vec<&str> = text.lines().filter(|l| l.starts_with("http_requests_total")).collect();
    let counted = |route: &str, class: &str| {
        requests
            .iter()
            .find(|l| l.contains(&format!("route=\"{route}\"")) && l.contains(&format!("class=\"{class}\"")))
    };
    let redirects = counted("l#0", "3xx").unwrap_or_else(|| panic!("{requests:?}"));
    assert!(
        redirects.contains("pool=\"\"") && redirects.contains("backend=\"\"") && redirects.ends_with(" 2")
    );
    assert!(counted("l#2", "2xx").is_some_and(|l| l.ends_with(" 4")), "{requests:?}");
}
