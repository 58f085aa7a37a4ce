//! The PROXY protocol toward a pool's backends, with a backend that requires it: each client
//! connection's requests reach it on a connection of their own whose header names that client,
//! in v1 and v2; that connection carries no other client's request and closes with the client's;
//! the pool's health checks send the header that names no client and find the backend up.
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, body::Incoming, client::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{
    config::{HealthCheck, HealthKind, ProxyVersion},
    health::{Probe, probe},
    proxy::{proxy_protocol, test_bed},
};

/// A backend that reads a PROXY header off each connection (closing it when there is none),
/// keeps the source it named (None for one that names no client), and answers with it; `open`
/// counts its connections open.
async fn backend(seen: Arc<Mutex<Vec<Option<SocketAddr>>>>, open: Arc<AtomicUsize>) -> SocketAddr {
    test_bed::listening(move |mut stream| {
        let (seen, open) = (seen.clone(), open.clone());
        async move {
            let read = tokio::time::timeout(Duration::from_secs(2), proxy_protocol::read(&mut stream)).await;
            let Ok(Ok(source)) = read else { return };
            seen.lock().unwrap().push(source);
            open.fetch_add(1, Ordering::SeqCst);
            let service = service_fn(move |_: Request<Incoming>| async move {
                let text = source.map_or("local".to_owned(), |s| s.to_string());
                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(text))))
            });
            test_bed::serve(stream, false, service).await;
            open.fetch_sub(1, Ordering::SeqCst);
        }
    })
    .await
}

/// A keep-alive HTTP/1.1 client of the proxy, and the address it connects from.
async fn client(proxy: SocketAddr) -> (http1::SendRequest<Empty<Bytes>>, SocketAddr) {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let from = stream.local_addr().unwrap();
    let (send, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    (send, from)
}

/// A GET of `host` on `client`'s connection: the status and the body.
async fn get(client: &mut http1::SendRequest<Empty<Bytes>>, host: &str) -> (u16, String) {
    let request = Request::builder().uri("/").header("host", host).body(Empty::new()).unwrap();
    let response = client.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn each_client_connection_reaches_the_backend_on_its_own_connection_named_by_it() {
    let (seen, open) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
    let port = backend(seen.clone(), open.clone()).await.port();
    let routes = format!(
        "[[pool]]\nname = \"v1\"\nport = {port}\nproxy_protocol = \"v1\"\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[pool]]\nname = \"v2\"\nport = {port}\nproxy_protocol = \"v2\"\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\nhost = \"v1.test\"\npool = \"v1\"\n\
         [[route]]\nlistener = \"l\"\nhost = \"v2.test\"\npool = \"v2\"\n"
    );
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    let (address, _, _) = super::mutations::start_listener(listener, &routes).await;
    for host in ["v1.test", "v2.test"] {
        // Two clients, their requests taking turns: each client's go on one backend connection
        // named by it, never on the other's (a shared pool would hand A's idle connection to B).
        let mut clients = [client(address).await, client(address).await];
        for turn in [0, 1, 0, 1] {
            let (client, from) = &mut clients[turn];
            assert_eq!(get(client, host).await, (200, from.to_string()), "{host}");
        }
        let (from_a, from_b) = (clients[0].1, clients[1].1);
        let sources: Vec<SocketAddr> = seen.lock().unwrap().drain(..).map(Option::unwrap).collect();
        assert_eq!(sources, [from_a, from_b], "one backend connection per client connection: {host}");
        assert_eq!(open.load(Ordering::SeqCst), 2);
        // The backend connections close with their clients'.
        drop(clients);
        let closed = async {
            while open.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed).await.expect("backend connections closed");
    }
    // A health check of such a pool sends the header that names no client.
    for version in [ProxyVersion::V1, ProxyVersion::V2] {
        let check = HealthCheck {
            kind: HealthKind::Http,
            port,
            path: "/".into(),
            expect_status: 200,
            expect_body: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 1,
            host: None,
            service: None,
        };
        assert_eq!(probe(&check, "127.0.0.1".parse().unwrap(), None, Some(version)).await, Probe::Up);
        assert_eq!(seen.lock().unwrap().drain(..).collect::<Vec<_>>(), [None], "{version:?}");
    }
}
