//! The PROXY protocol toward a pool's backends, with a backend that requires it: each request
//! reaches it on a connection of its own whose header names the client, in v1 and v2; a backend
//! connection is never reused (not even by the same client's next request); the pool's health
//! checks send the header that names no client and find the backend up.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};

use crate::{
    config::{HealthCheck, HealthKind, ProxyVersion},
    health::{Probe, probe},
    proxy::{proxy_protocol, test_bed},
};

/// A backend that reads a PROXY header off each connection (closing it when there is none),
/// keeps the source it named (None for one that names no client), and answers with it.
async fn backend(seen: Arc<Mutex<Vec<Option<SocketAddr>>>>) -> SocketAddr {
    test_bed::listening(move |mut stream| {
        let seen = seen.clone();
        async move {
            let read = tokio::time::timeout(Duration::from_secs(2), proxy_protocol::read(&mut stream)).await;
            let Ok(Ok(source)) = read else { return };
            seen.lock().unwrap().push(source);
            let service = service_fn(move |_: Request<Incoming>| async move {
                let text = source.map_or("local".to_owned(), |s| s.to_string());
                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(text))))
            });
            test_bed::serve(stream, false, service).await;
        }
    })
    .await
}

#[tokio::test]
async fn each_request_reaches_the_backend_on_its_own_connection_named_by_its_client() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let port = backend(seen.clone()).await.port();
    let routes = format!(
        "[[pool]]\nname = \"v1\"\nport = {port}\nproxy_protocol = \"v1\"\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[pool]]\nname = \"v2\"\nport = {port}\nproxy_protocol = \"v2\"\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\nhost = \"v1.test\"\npool = \"v1\"\n\
         [[route]]\nlistener = \"l\"\nhost = \"v2.test\"\npool = \"v2\"\n"
    );
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    let (address, _, _) = super::mutations::start_listener(listener, &routes).await;
    for host in ["v1.test", "v2.test"] {
        // Two requests on one client connection: two backend connections, each named by it.
        let two = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\n\r\nGET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        );
        let got =
            String::from_utf8(super::mutations::exchange(address, two.as_bytes(), false).await).unwrap();
        let answers: Vec<&str> = got.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 2, "{got}");
        let sources: Vec<SocketAddr> = seen.lock().unwrap().drain(..).map(Option::unwrap).collect();
        assert_eq!(sources.len(), 2, "one backend connection per request: {got}");
        assert!(sources[0] == sources[1] && sources[0].ip().is_loopback(), "{sources:?}");
        assert!(
            answers.iter().all(|a| a.starts_with("200") && a.ends_with(&sources[0].to_string())),
            "{got}"
        );
        assert_ne!(sources[0].port(), port, "the client's port, not the backend's");
    }
    // A health check of such a pool sends the header that names no client.
    for version in [ProxyVersion::V1, ProxyVersion::V2] {
        let check = HealthCheck {
            kind: HealthKind::Http,
            port,
            path: "/".into(),
            expect_status: 200,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 1,
            host: None,
        };
        assert_eq!(probe(&check, "127.0.0.1".parse().unwrap(), None, Some(version)).await, Probe::Up);
        assert_eq!(seen.lock().unwrap().drain(..).collect::<Vec<_>>(), [None], "{version:?}");
    }
}
