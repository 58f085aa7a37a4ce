//! A route's `retry_on` through a listener, with a real client: each pool has a serving
//! HTTP/1.1 backend on 127.0.0.1 and a failing one on 127.0.0.2 (the same port), which answers
//! 500 or closes without an answer (a reset); round robin sends every other GET there. What
//! `retry_on` names is retried on the serving backend; the rest reaches the client. A body the
//! route kept (`retry_buffer_bytes`) goes with the retry. A backend that never answers is left
//! at the route's `try_timeout_ms` for the serving one, all within its `timeout_ms`.
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::{Method, Request, Response, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::proxy::test_bed;

/// How the backend on 127.0.0.2 fails.
#[derive(Clone, Copy)]
enum Failing {
    /// Answers 500.
    Status500,
    /// Reads the request and closes the connection.
    Reset,
    /// Reads the request and never answers (holding the connection open for a minute).
    Silent,
}

/// A serving backend on 127.0.0.1 and a `failing` one on 127.0.0.2, on one port: the port.
async fn backends(failing: Failing) -> u16 {
    let port = test_bed::http1().await.port();
    let listener = TcpListener::bind(("127.0.0.2", port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                match failing {
                    Failing::Status500 => {
                        let service = service_fn(|_| async {
                            let mut answer = Response::new(Empty::<Bytes>::new());
                            *answer.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                            Ok::<_, hyper::Error>(answer)
                        });
                        let served = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service);
                        let _ = served.await;
                    }
                    Failing::Reset => {
                        let _ = test_bed::head_read(&mut stream, &mut Vec::new()).await;
                    }
                    Failing::Silent => {
                        let _ = test_bed::head_read(&mut stream, &mut Vec::new()).await;
                        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                    }
                }
            });
        }
    });
    port
}

/// A listener with a route per host, each over a pool of both backends, one retry, and the
/// route's `retry_on` line: `500.test` and `500-default.test` on the backend answering 500,
/// `reset.test` and `reset-default.test` on the one that resets; `tight.test` retries 500s
/// but keeps no body over 4 bytes.
async fn listener() -> SocketAddr {
    let (status500, reset) = (backends(Failing::Status500).await, backends(Failing::Reset).await);
    let both = "backends = [{ address = \"127.0.0.2\" }, { address = \"127.0.0.1\" }]";
    let mut routes = format!(
        "[[pool]]\nname = \"s\"\nport = {status500}\n{both}\n\
         [[pool]]\nname = \"r\"\nport = {reset}\n{both}\n"
    );
    for (host, pool, retry_on) in [
        ("500.test", "s", "retry_on = [\"500\"]"),
        ("500-default.test", "s", ""),
        ("reset.test", "r", "retry_on = [\"gateway-error\"]"),
        ("reset-default.test", "r", ""),
        ("tight.test", "s", "retry_on = [\"500\"]\nretry_buffer_bytes = 4"),
    ] {
        routes += &format!(
            "[[route]]\nlistener = \"l\"\nhost = \"{host}\"\npool = \"{pool}\"\nretries = 1\n\
             retry_budget_percent = 100\n{retry_on}\n"
        );
    }
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    super::mutations::start_listener(listener, &routes).await.0
}

/// The statuses of 8 GETs to `host`, sorted.
async fn statuses(address: SocketAddr, host: &str) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let request = Request::get(format!("http://{host}/")).body(Empty::<Bytes>::new()).unwrap();
        statuses.push(test_bed::ask(address, request, false).await.0.status.as_u16());
    }
    statuses.sort_unstable();
    statuses
}

#[tokio::test]
async fn a_route_retries_what_its_retry_on_names_and_passes_the_rest_on() {
    let address = listener().await;
    assert_eq!(statuses(address, "500.test").await, [200; 8], "500 retried");
    assert_eq!(statuses(address, "500-default.test").await, [200, 200, 200, 200, 500, 500, 500, 500]);
    assert_eq!(statuses(address, "reset-default.test").await, [200; 8], "a reset retried by default");
    assert_eq!(
        statuses(address, "reset.test").await,
        [200, 200, 200, 200, 502, 502, 502, 502],
        "gateway-error alone: a reset reaches the client as 502"
    );
}

/// The statuses and answers of 8 `method`s to `host` with a 5-byte body, sorted (the serving
/// backend answers how many bytes it read).
async fn answers_with_a_body(address: SocketAddr, host: &str, method: Method) -> Vec<(u16, String)> {
    let mut answers = Vec::new();
    for i in 0..8 {
        let request = Request::builder().method(method.clone()).uri(format!("http://{host}/"));
        let request = request.body(Full::new(Bytes::from_static(b"hello"))).unwrap();
        let (head, body) = test_bed::ask(address, request, i % 2 == 1).await;
        answers.push((head.status.as_u16(), body));
    }
    answers.sort_unstable();
    answers
}

#[tokio::test]
async fn a_kept_body_goes_with_the_retry_and_one_not_kept_gets_no_retry() {
    let address = listener().await;
    let read = (200, "read 5".to_owned());
    let failed = |status: u16| (status, String::new());
    assert_eq!(answers_with_a_body(address, "500.test", Method::PUT).await, vec![read.clone(); 8]);
    assert_eq!(answers_with_a_body(address, "reset-default.test", Method::PUT).await, vec![read.clone(); 8]);
    let half = |status| [vec![read.clone(); 4], vec![failed(status); 4]].concat();
    assert_eq!(
        answers_with_a_body(address, "500.test", Method::POST).await,
        half(500),
        "POST: not idempotent"
    );
    assert_eq!(answers_with_a_body(address, "tight.test", Method::PUT).await, half(500), "over the bound");
}

/// A listener whose pool `t` has a serving backend (127.0.0.1) and one that never answers
/// (127.0.0.2), and whose pool `q` has two that never answer (127.0.0.2 and .3). Routes:
/// `late.test` leaves a try at 200 ms for another backend; `once.test` has no retries;
/// `not-named.test` retries only 500s; `whole.test` tries three silent backends, 300 ms each,
/// within a route timeout of 500 ms.
async fn late_listener() -> SocketAddr {
    let port = backends(Failing::Silent).await;
    let third = TcpListener::bind(("127.0.0.3", port)).await.unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = third.accept().await {
            held.push(stream);
        }
    });
    let mut routes = format!(
        "[[pool]]\nname = \"t\"\nport = {port}\n\
         backends = [{{ address = \"127.0.0.2\" }}, {{ address = \"127.0.0.1\" }}]\n\
         [[pool]]\nname = \"q\"\nport = {port}\n\
         backends = [{{ address = \"127.0.0.2\" }}, {{ address = \"127.0.0.3\" }}]\n"
    );
    for (host, pool, settings) in [
        ("late.test", "t", "retries = 1\ntry_timeout_ms = 200"),
        ("once.test", "t", "try_timeout_ms = 200"),
        ("not-named.test", "t", "retries = 1\nretry_on = [\"500\"]\ntry_timeout_ms = 200"),
        ("whole.test", "q", "retries = 2\ntry_timeout_ms = 300\ntimeout_ms = 500"),
    ] {
        routes += &format!(
            "[[route]]\nlistener = \"l\"\nhost = \"{host}\"\npool = \"{pool}\"\n\
             retry_budget_percent = 100\n{settings}\n"
        );
    }
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    super::mutations::start_listener(listener, &routes).await.0
}

/// The statuses of 4 GETs to `host` (two of them first sent to the silent backend), sorted,
/// and the longest any took.
async fn timed_statuses(address: SocketAddr, host: &str) -> (Vec<u16>, std::time::Duration) {
    let (mut statuses, mut longest) = (Vec::new(), std::time::Duration::ZERO);
    for _ in 0..4 {
        let request = Request::get(format!("http://{host}/")).body(Empty::<Bytes>::new()).unwrap();
        let started = std::time::Instant::now();
        statuses.push(test_bed::ask(address, request, false).await.0.status.as_u16());
        longest = longest.max(started.elapsed());
    }
    statuses.sort_unstable();
    (statuses, longest)
}

#[tokio::test]
async fn a_try_past_its_timeout_goes_to_another_backend_within_the_routes_timeout() {
    let address = late_listener().await;
    let second = std::time::Duration::from_secs(1);
    let (statuses, longest) = timed_statuses(address, "late.test").await;
    assert_eq!(statuses, [200; 4], "the silent backend's tries retried");
    assert!(longest >= std::time::Duration::from_millis(190) && longest < second, "{longest:?}");
    for host in ["once.test", "not-named.test"] {
        let (statuses, longest) = timed_statuses(address, host).await;
        assert_eq!(statuses, [200, 200, 504, 504], "{host}: no retry, 504 at the try's timeout");
        assert!(longest < second, "{host}: {longest:?}");
    }
    // Three tries of 300 ms would take 900: the route's 500 ms bound them all.
    let request = Request::get("http://whole.test/").body(Empty::<Bytes>::new()).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(test_bed::ask(address, request, false).await.0.status, 504);
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(490) && took < std::time::Duration::from_millis(850),
        "{took:?}"
    );
}
