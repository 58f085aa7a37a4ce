//! A route's CORS policy through a listener, with real HTTP/1.1 and HTTP/2 clients and a real
//! backend: an allowed origin's preflight is answered by the proxy before the route's gates and
//! never reaches the backend; another origin's goes on to it; an allowed origin's answers (the
//! backend's, the route's own, the proxy's refusals) name it, and every answer varies by origin.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::{Method, Request, Response, body::Incoming, service::service_fn};

use crate::proxy::test_bed;

const POLICY: &str = "cors = { allow_origins = [\"https://app.test\", \"https://*.app.test\"], \
     allow_methods = [\"GET\", \"PUT\"], allow_headers = [\"content-type\", \"x-api-key\"], \
     expose_headers = [\"x-total\"], max_age_s = 600, allow_credentials = true }\n";

/// A backend that answers every request with its method as the body and CORS fields of its
/// own (which the proxy replaces for the origins it allows); `asked` counts its requests.
async fn backend(asked: Arc<AtomicUsize>) -> SocketAddr {
    test_bed::listening(move |stream| {
        let asked = asked.clone();
        async move {
            let service = service_fn(move |request: Request<Incoming>| {
                asked.fetch_add(1, Ordering::Relaxed);
                let answer = Response::builder()
                    .header("access-control-allow-origin", "https://backend-said.test")
                    .header("x-total", "3")
                    .body(Full::new(Bytes::from(request.method().to_string())))
                    .unwrap();
                async move { Ok::<_, hyper::Error>(answer) }
            });
            test_bed::serve(stream, false, service).await;
        }
    })
    .await
}

/// Routes with the policy: `open.test` to the backend, `shut.test` denying this client,
/// `own.test` answering by itself.
async fn listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let asked = Arc::new(AtomicUsize::new(0));
    let backend = backend(asked.clone()).await;
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    let routes = format!(
        "[[pool]]\nname = \"p\"\nport = {}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\nhost = \"open.test\"\npool = \"p\"\n{POLICY}\
         [[route]]\nlistener = \"l\"\nhost = \"shut.test\"\npool = \"p\"\ndeny = [\"127.0.0.0/8\"]\n{POLICY}\
         [[route]]\nlistener = \"l\"\nhost = \"own.test\"\nrespond = {{ status = 200, body = \"own\" }}\n{POLICY}",
        backend.port()
    );
    (super::mutations::start_listener(listener, &routes).await.0, asked)
}

async fn ask(
    address: SocketAddr,
    method: Method,
    host: &str,
    fields: &[(&str, &str)],
    http2: bool,
) -> (hyper::http::response::Parts, String) {
    let mut request = Request::builder().method(method).uri(format!("http://{host}/items"));
    for (name, value) in fields {
        request = request.header(*name, *value);
    }
    test_bed::ask(address, request.body(Empty::<Bytes>::new()).unwrap(), http2).await
}

fn field<'a>(head: &'a hyper::http::response::Parts, name: &str) -> Option<&'a str> {
    head.headers.get(name).map(|v| v.to_str().unwrap())
}

/// The fields that tell the browser `origin` may read the answer.
fn assert_allowed(head: &hyper::http::response::Parts, origin: &str) {
    assert_eq!(field(head, "access-control-allow-origin"), Some(origin), "{head:?}");
    assert_eq!(field(head, "access-control-allow-credentials"), Some("true"), "{head:?}");
    assert_eq!(field(head, "access-control-expose-headers"), Some("x-total"), "{head:?}");
    assert_eq!(field(head, "vary"), Some("origin"), "{head:?}");
}

#[tokio::test]
async fn a_route_answers_allowed_preflights_and_marks_its_answers_for_their_origin() {
    let (address, asked) = listener().await;
    let preflight = |origin| {
        [
            ("origin", origin),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-api-key"),
        ]
    };
    for http2 in [false, true] {
        for origin in ["https://app.test", "https://eu.app.test"] {
            // The preflight: the proxy's 204, on the route whose gates would refuse the call.
            for host in ["open.test", "shut.test"] {
                let before = asked.load(Ordering::Relaxed);
                let (head, body) = ask(address, Method::OPTIONS, host, &preflight(origin), http2).await;
                assert_eq!((head.status.as_u16(), body.as_str()), (204, ""), "{host}: {head:?}");
                assert_allowed(&head, origin);
                assert_eq!(field(&head, "access-control-allow-methods"), Some("GET, PUT"));
                assert_eq!(field(&head, "access-control-allow-headers"), Some("content-type, x-api-key"));
                assert_eq!(field(&head, "access-control-max-age"), Some("600"));
                assert_eq!(asked.load(Ordering::Relaxed), before, "a preflight reached the backend");
            }

            // The call: the backend's answer, its CORS fields replaced by the policy's.
            let (head, body) = ask(address, Method::PUT, "open.test", &[("origin", origin)], http2).await;
            assert_eq!((head.status.as_u16(), body.as_str()), (200, "PUT"), "{head:?}");
            assert_allowed(&head, origin);
            assert_eq!(field(&head, "x-total"), Some("3"));
            assert_eq!(field(&head, "access-control-allow-methods"), None, "only preflights say them");

            // The proxy's refusal and the route's own answer are readable by the page too.
            let (head, _) = ask(address, Method::GET, "shut.test", &[("origin", origin)], http2).await;
            assert_eq!(head.status, 403, "{head:?}");
            assert_allowed(&head, origin);
            let (head, body) = ask(address, Method::GET, "own.test", &[("origin", origin)], http2).await;
            assert_eq!((head.status.as_u16(), body.as_str()), (200, "own"), "{head:?}");
            assert_allowed(&head, origin);
        }

        // Another origin: its preflight is the backend's to answer, and the proxy adds nothing
        // to any answer but Vary (the backend's own field passes).
        for origin in ["https://evil.test", "https://app.test.evil.test", "http://app.test", "null"] {
            let before = asked.load(Ordering::Relaxed);
            let (head, body) = ask(address, Method::OPTIONS, "open.test", &preflight(origin), http2).await;
            assert_eq!((head.status.as_u16(), body.as_str()), (200, "OPTIONS"), "{origin}: {head:?}");
            assert_eq!(asked.load(Ordering::Relaxed), before + 1);
            assert_eq!(field(&head, "access-control-allow-origin"), Some("https://backend-said.test"));
            assert_eq!(field(&head, "access-control-allow-credentials"), None);
            assert_eq!(field(&head, "vary"), Some("origin"));
            let (head, _) = ask(address, Method::GET, "shut.test", &[("origin", origin)], http2).await;
            assert_eq!((head.status.as_u16(), field(&head, "access-control-allow-origin")), (403, None));
        }

        // No origin (not a browser's cross-origin call): only Vary.
        let (head, body) = ask(address, Method::GET, "open.test", &[], http2).await;
        assert_eq!((head.status.as_u16(), body.as_str()), (200, "GET"));
        assert_eq!(field(&head, "vary"), Some("origin"));
        assert_eq!(field(&head, "access-control-expose-headers"), None);
    }
}
