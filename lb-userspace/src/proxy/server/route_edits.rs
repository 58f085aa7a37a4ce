//! A route's edits through a listener, with real clients and backends: the backend gets the
//! request with the route's fields set (the client's own of those names replaced), its removed
//! ones gone and its path prefix rewritten, over HTTP/1.1 and h2c; the client gets the answer
//! edited and its redirect under the route's prefix, from an HTTP/1.1 or an HTTP/2 connection,
//! fresh from the backend or from the cache. And a field only the proxy sets: a client's own
//! X-Forwarded-Client-Cert reaches no backend.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};

use crate::proxy::test_bed;

/// The route's edits, one of each kind in each direction, and its path prefix rewritten.
const EDITS: &str = "path_prefix = \"/old/\"\nrewrite_prefix = \"/new/v2/\"\n\
     request_headers = { set = { \"X-Env\" = \"prod\" }, remove = [\"cookie\", \"x-debug\"] }\n\
     response_headers = { set = { server = \"edge\", \"strict-transport-security\" = \"max-age=600\" }, \
     remove = [\"x-internal\"] }\n";

/// A backend that answers with the request's target and fields as its body (`path …`, then
/// `name: value` lines), its own Server and an internal field, cacheable; `asked` counts the
/// requests it got.
async fn echoing(h2c: bool, asked: Arc<AtomicUsize>) -> SocketAddr {
    test_bed::listening(move |stream| {
        let asked = asked.clone();
        async move {
            let service = service_fn(move |request: Request<Incoming>| {
                asked.fetch_add(1, Ordering::Relaxed);
                let mut seen = format!("path {}\n", request.uri());
                for (name, value) in request.headers() {
                    seen.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
                }
                let answer = Response::builder()
                    .header("server", "backend")
                    .header("x-internal", "secret")
                    .header("cache-control", "max-age=60")
                    .header("location", "http://a.test/new/v2/next")
                    .body(Full::new(Bytes::from(seen)))
                    .unwrap();
                async move { Ok::<_, hyper::Error>(answer) }
            });
            test_bed::serve(stream, h2c, service).await;
        }
    })
    .await
}

/// A listener whose route edits fields, in front of an HTTP/1.1 or an h2c backend; with
/// `cache`, the route caches.
async fn listener(h2c: bool, cache: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let asked = Arc::new(AtomicUsize::new(0));
    let backend = echoing(h2c, asked.clone()).await;
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    let routes = format!(
        "[[pool]]\nname = \"p\"\nport = {}\nprotocol = \"{}\"\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\n{EDITS}{}",
        backend.port(),
        if h2c { "h2c" } else { "http1" },
        if cache { "cache = { max_entries = 10 }\n" } else { "" },
    );
    (super::mutations::start_listener(listener, &routes).await.0, asked)
}

/// One GET from an HTTP/1.1 client, or an HTTP/2 one (prior knowledge), with fields the route
/// replaces and removes: the answer's head and body.
async fn get(address: SocketAddr, http2: bool) -> (hyper::http::response::Parts, String) {
    let request = Request::get("http://a.test/old/a%2Fb?q=/old/")
        .header("cookie", "session=1")
        .header("x-debug", "1")
        .header("x-env", "dev")
        .header("x-kept", "1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    test_bed::ask(address, request, http2).await
}

/// The request the backend saw (its echo) and the answer the client got carry the edits.
fn assert_edited(head: &hyper::http::response::Parts, seen: &str) {
    assert_eq!(head.status, 200, "{head:?}");
    let fields: Vec<&str> = seen.lines().collect();
    // The prefix the route matched replaced, the rest of the path and the query kept.
    assert!(
        fields[0] == "path /new/v2/a%2Fb?q=/old/" || fields[0] == "path http://a.test/new/v2/a%2Fb?q=/old/",
        "{seen}"
    );
    assert!(fields.contains(&"x-env: prod"), "the route's value not set: {seen}");
    assert!(!fields.contains(&"x-env: dev"), "the client's value kept beside it: {seen}");
    assert!(
        !seen.contains("cookie") && !seen.contains("x-debug"),
        "removed fields reached the backend: {seen}"
    );
    assert!(fields.contains(&"x-kept: 1"), "an unedited field lost: {seen}");
    assert!(seen.contains("x-forwarded-for: 127.0.0.1"), "lbd's own fields lost: {seen}");
    let all = |name: &str| head.headers.get_all(name).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>();
    assert_eq!(all("server"), ["edge"], "{head:?}");
    assert_eq!(all("strict-transport-security"), ["max-age=600"], "{head:?}");
    assert!(all("x-internal").is_empty(), "a removed field reached the client: {head:?}");
    assert_eq!(all("cache-control"), ["max-age=60"], "an unedited field lost: {head:?}");
    assert_eq!(
        all("location"),
        ["http://a.test/old/next"],
        "a redirect not given the route's prefix: {head:?}"
    );
}

#[tokio::test]
async fn a_route_edits_the_fields_of_requests_and_answers_over_http1_and_http2() {
    for h2c in [false, true] {
        let (address, _) = listener(h2c, false).await;
        for http2 in [false, true] {
            let (head, seen) = get(address, http2).await;
            assert_edited(&head, &seen);
        }
    }
}

#[tokio::test]
async fn an_answer_from_the_cache_is_edited_as_the_backend_s() {
    let (address, asked) = listener(false, true).await;
    for http2 in [false, true, false] {
        let (head, seen) = get(address, http2).await;
        assert_edited(&head, &seen);
    }
    // The cache stored the backend's answer as it came; each answer was edited on its way out.
    assert_eq!(asked.load(Ordering::Relaxed), 1, "the answers did not come from the cache");
}

#[tokio::test]
async fn a_client_s_own_client_cert_field_reaches_no_backend() {
    for h2c in [false, true] {
        let (address, _) = listener(h2c, false).await;
        for http2 in [false, true] {
            let request = Request::get("http://a.test/old/x")
                .header("x-forwarded-client-cert", "Hash=forged;Subject=\"CN=admin\"")
                .header("x-kept", "1")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let (head, seen) = test_bed::ask(address, request, http2).await;
            assert_eq!(head.status, 200, "{head:?}");
            assert!(seen.contains("x-kept: 1"), "{seen}");
            assert!(
                !seen.contains("x-forwarded-client-cert"),
                "a forged certificate reached the backend: {seen}"
            );
        }
    }
}
