//! A listener's error pages through its loop, with real clients: lbd's own 404, 502, 429 and
//! 400s (the parser's and the guard's) come as the listener's pages, over HTTP/1.1 and HTTP/2,
//! their other fields kept; a route's fixed answer, its fallback and a backend's own answers
//! pass as they are; a page's file changed is read again, one gone keeps the page read before.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::test_bed;

/// A folder of pages for this test: 404 and 502 in HTML, 429 in JSON, 400 as text.
fn pages(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-error-pages-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("404.html"), "<h1>Not here</h1>\n").unwrap();
    std::fs::write(dir.join("502.html"), "<h1>Down for a moment</h1>\n").unwrap();
    std::fs::write(dir.join("429.json"), "{\"error\":\"slow down\"}").unwrap();
    std::fs::write(dir.join("400.txt"), "That request could not be read.\n").unwrap();
    dir
}

/// A listener with the pages of `dir`: `a.test` to a live backend, `dead.test` to a pool
/// nothing listens on (with and without a fallback), `fixed.test` answering 404 by itself,
/// `slow.test` limited to one request at a time.
async fn listener(dir: &std::path::Path) -> SocketAddr {
    let port = test_bed::http1().await.port();
    let listener = format!(
        "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n\
         error_pages = {{ 404 = \"{d}/404.html\", 502 = \"{d}/502.html\", 429 = \"{d}/429.json\", 400 = \"{d}/400.txt\" }}\n",
        d = dir.display()
    );
    let routes = format!(
        "[[pool]]\nname = \"p\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[pool]]\nname = \"d\"\nport = {port}\nbackends = [{{ address = \"127.0.0.2\" }}]\n\
         [[route]]\nlistener = \"l\"\nhost = \"a.test\"\npool = \"p\"\n\
         [[route]]\nlistener = \"l\"\nhost = \"dead.test\"\npool = \"d\"\n\
         [[route]]\nlistener = \"l\"\nhost = \"fallback.test\"\npool = \"d\"\n\
         fallback = {{ status = 502, body = \"the route's own\" }}\n\
         [[route]]\nlistener = \"l\"\nhost = \"fixed.test\"\nrespond = {{ status = 404, body = \"gone\" }}\n\
         [[route]]\nlistener = \"l\"\nhost = \"slow.test\"\npool = \"p\"\n\
         rate_limit = {{ requests_per_second = 1, burst = 1 }}\n"
    );
    super::mutations::start_listener(&listener, &routes).await.0
}

async fn get(address: SocketAddr, host: &str, http2: bool) -> (hyper::http::response::Parts, String) {
    let request = Request::get(format!("http://{host}/x")).body(Empty::<Bytes>::new()).unwrap();
    test_bed::ask(address, request, http2).await
}

fn content_type(head: &hyper::http::response::Parts) -> &str {
    head.headers.get("content-type").map_or("", |v| v.to_str().unwrap())
}

/// The bytes a raw HTTP/1.1 client gets for `request` until lbd closes.
async fn raw(address: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await.unwrap().unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn lbds_own_errors_come_as_the_listeners_pages_and_no_other_answer_does() {
    let dir = pages("own");
    let address = listener(&dir).await;
    for http2 in [false, true] {
        let (head, body) = get(address, "none.test", http2).await;
        assert_eq!((head.status.as_u16(), body.as_str()), (404, "<h1>Not here</h1>\n"), "no route");
        assert_eq!(content_type(&head), "text/html; charset=utf-8");
        let (head, body) = get(address, "dead.test", http2).await;
        assert_eq!((head.status.as_u16(), body.as_str()), (502, "<h1>Down for a moment</h1>\n"));
        assert_eq!(content_type(&head), "text/html; charset=utf-8");
        // Answers lbd did not make as its own errors pass as they are.
        let (head, body) = get(address, "a.test", http2).await;
        assert_eq!((head.status.as_u16(), body.as_str()), (200, "read 0"), "the backend's");
        let (head, body) = get(address, "fallback.test", http2).await;
        assert_eq!((head.status.as_u16(), body.as_str()), (502, "the route's own"), "a route's fallback");
        let (head, body) = get(address, "fixed.test", http2).await;
        assert_eq!((head.status.as_u16(), body.as_str()), (404, "gone"), "a route's fixed answer");
    }
    // A 429's page keeps the refusal's Retry-After.
    let mut limited = None;
    for _ in 0..4 {
        let (head, body) = get(address, "slow.test", false).await;
        if head.status == 429 {
            limited = Some((head, body));
            break;
        }
    }
    let (head, body) = limited.expect("a 429 within 4 requests at 1 a second");
    assert_eq!((body.as_str(), content_type(&head)), ("{\"error\":\"slow down\"}", "application/json"));
    assert!(head.headers.contains_key("retry-after"), "{head:?}");
    // 400s: the parser's (a bad request line) and the guard's (two Host fields), and a status
    // with no page (a method lbd does not take: the plain text).
    let parser = raw(address, b"GET /\x01 HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(parser.starts_with("HTTP/1.1 400 "), "{parser}");
    assert!(parser.contains("content-type: text/plain; charset=utf-8\r\n"), "{parser}");
    assert!(parser.ends_with("\r\n\r\nThat request could not be read.\n"), "{parser}");
    let guard = raw(address, b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n").await;
    assert!(
        guard.starts_with("HTTP/1.1 400 ") && guard.ends_with("That request could not be read.\n"),
        "{guard}"
    );
    let plain = raw(address, b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n").await;
    assert!(plain.starts_with("HTTP/1.1 501 ") && plain.contains("text/plain"), "{plain}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_page_changed_is_sent_as_it_is_now_and_one_gone_keeps_the_page_read_before() {
    let dir = pages("changed");
    let address = listener(&dir).await;
    assert_eq!(get(address, "none.test", false).await.1, "<h1>Not here</h1>\n");
    std::fs::write(dir.join("404.html"), "<h1>Nothing at this address</h1>\n").unwrap();
    // A page's file is looked at once a second at most.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(address, "none.test", false).await.1, "<h1>Nothing at this address</h1>\n");
    // Gone: the page read before stays (as a broken credentials file keeps the keys read).
    std::fs::remove_file(dir.join("404.html")).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(address, "none.test", false).await.1, "<h1>Nothing at this address</h1>\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A backend answering each request with the status its path names (`/status/503`), a body of
/// its own and a field.
async fn erring_backend() -> SocketAddr {
    test_bed::listening(|stream| async move {
        let service = hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
            let status = request.uri().path().rsplit('/').next().and_then(|s| s.parse().ok()).unwrap_or(200);
            let mut answer =
                hyper::Response::new(http_body_util::Full::new(Bytes::from("the backend's own\n")));
            *answer.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            answer.headers_mut().insert("x-backend", "yes".parse().unwrap());
            Ok::<_, std::convert::Infallible>(answer)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    })
    .await
}

#[tokio::test]
async fn a_route_that_intercepts_sends_the_page_for_its_backends_errors_that_have_one() {
    let dir = pages("intercepted");
    let port = erring_backend().await.port();
    let listener = format!(
        "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n\
         error_pages = {{ 404 = \"{d}/404.html\", 502 = \"{d}/502.html\" }}\n",
        d = dir.display()
    );
    let routes = format!(
        "[[pool]]\nname = \"p\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\nhost = \"site.test\"\npool = \"p\"\nintercept_errors = true\n\
         response_headers = {{ set = {{ \"x-site\" = \"1\" }} }}\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\n"
    );
    let address = super::mutations::start_listener(&listener, &routes).await.0;
    let ask = |host: &'static str, path: &'static str, http2: bool| async move {
        let request = Request::get(format!("http://{host}{path}")).body(Empty::<Bytes>::new()).unwrap();
        test_bed::ask(address, request, http2).await
    };
    for http2 in [false, true] {
        let (head, body) = ask("site.test", "/status/404", http2).await;
        assert_eq!((head.status.as_u16(), body.as_str()), (404, "<h1>Not here</h1>\n"));
        assert_eq!(content_type(&head), "text/html; charset=utf-8");
        assert!(!head.headers.contains_key("x-backend"), "the backend's fields dropped: {head:?}");
        assert!(head.headers.contains_key("x-site"), "the route's edits still made: {head:?}");
        // No page for 503, and a 200: the backend's answers as they are.
        let (head, body) = ask("site.test", "/status/503", http2).await;
        assert_eq!((head.status.as_u16(), body.as_str()), (503, "the backend's own\n"));
        assert!(head.headers.contains_key("x-backend"));
        assert_eq!(ask("site.test", "/status/200", http2).await.1, "the backend's own\n");
        // A route that does not intercept passes the backend's 404.
        let (head, body) = ask("other.test", "/status/404", http2).await;
        assert_eq!((head.status.as_u16(), body.as_str()), (404, "the backend's own\n"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
