//! Shadow copies through a listener, with a real client and backends: a bodiless request's copy,
//! and a body's (said or chunked) once the backend has read it, up to the route's
//! `shadow.max_body_bytes`; a longer one, said or grown past it, is not copied. The client's
//! answer is its backend's either way.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use tokio::sync::mpsc;

use crate::proxy::test_bed;

/// A backend that answers 204 to everything and tells what it got: each request's path and
/// body.
async fn recording() -> (SocketAddr, mpsc::UnboundedReceiver<(String, Bytes)>) {
    let (got, seen) = mpsc::unbounded_channel();
    let address = test_bed::listening(move |stream| {
        let got = got.clone();
        async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let got = got.clone();
                async move {
                    let path = request.uri().path().to_owned();
                    let body = request.into_body().collect().await?.to_bytes();
                    let _ = got.send((path, body));
                    let mut answer = Response::new(Empty::<Bytes>::new());
                    *answer.status_mut() = hyper::StatusCode::NO_CONTENT;
                    Ok::<_, hyper::Error>(answer)
                }
            });
            test_bed::serve(stream, false, service).await;
        }
    })
    .await;
    (address, seen)
}

#[tokio::test]
async fn a_copy_carries_the_body_the_backend_read_up_to_the_routes_bound() {
    let (primary, (shadow, mut seen)) = (test_bed::http1().await, recording().await);
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    let routes = format!(
        "[[pool]]\nname = \"p\"\nport = {}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[pool]]\nname = \"s\"\nport = {}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\nshadow = {{ pool = \"s\", percent = 100, max_body_bytes = 1024 }}\n",
        primary.port(),
        shadow.port()
    );
    let address = super::mutations::start_listener(listener, &routes).await.0;
    let get = Request::get("http://a.test/get").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(test_bed::ask(address, get, false).await.1, "read 0");
    for (path, size, chunked) in [
        ("/said", 500, false),
        ("/chunked", 600, true),
        ("/long-said", 2048, false),
        ("/long-chunked", 2048, true),
    ] {
        let answer = super::body_limits::post(address, path, size, chunked).await;
        assert_eq!(answer, (200, format!("read {size}")), "{path}: the client's answer is its backend's");
    }
    let end = Request::get("http://a.test/end").body(Empty::<Bytes>::new()).unwrap();
    test_bed::ask(address, end, false).await;
    // The copies, as the shadow backend got them, until the last request's and a little after.
    let mut copies = BTreeMap::new();
    let mut wait = Duration::from_secs(5);
    while let Ok(Some((path, body))) = tokio::time::timeout(wait, seen.recv()).await {
        if path == "/end" {
            wait = Duration::from_millis(300);
        }
        copies.insert(path, body);
    }
    let sizes: Vec<(&str, usize)> = copies.iter().map(|(path, body)| (path.as_str(), body.len())).collect();
    assert_eq!(sizes, [("/chunked", 600), ("/end", 0), ("/get", 0), ("/said", 500)]);
    assert!(copies["/said"].iter().all(|b| *b == b'x'));
}
