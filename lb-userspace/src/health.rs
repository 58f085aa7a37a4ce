//! Active health checks: per pool, TCP connect, HTTP GET or gRPC's health check (over TLS for a
//! pool with TLS) to every backend each interval; `rise` successes bring a backend up, `fall`
//! failures take it down, through Command::SetHealth.
use std::{collections::HashMap, net::IpAddr, net::SocketAddr, sync::Arc};

use futures_util::future::join_all;

use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use log::{debug, info, warn};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};

mod grpc;

use crate::{
    config::{HEALTH_BODY_BYTES, HealthCheck, HealthKind, ProxyVersion},
    daemon::{Shared, lock},
    proxy::{backend_tls::BackendTls, proxy_protocol},
    state::Command,
};

/// Whether a connect error is this host's (out of descriptors or buffers), not the backend's.
fn local_shortage(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Up,
    /// Down, and why (for the log line that takes a backend out, as HAProxy gives one).
    Down(String),
    /// This host could not even try (out of descriptors): nothing is said of the backend.
    Skipped,
}

/// One probe of `address` as `check` says, within its timeout. An HTTP probe of a pool with
/// TLS shakes hands as the proxy does (`tls`: the same client, so the same CA and name); a
/// handshake that fails is the backend's failure, as HAProxy's `check-ssl` counts it.
pub async fn probe(
    check: &HealthCheck,
    address: IpAddr,
    tls: Option<&BackendTls>,
    proxy: Option<ProxyVersion>,
) -> Probe {
    let target = SocketAddr::new(address, check.port);
    let attempt = async {
        let mut stream = match TcpStream::connect(target).await {
            Ok(stream) => stream,
            Err(err) if local_shortage(&err) => return Probe::Skipped,
            Err(err) => return Probe::Down(format!("TCP connect to {target}: {err}")),
        };
        // A pool whose backends read the PROXY protocol: the header that names no client.
        if let Some(version) = proxy
            && let Err(err) = stream.write_all(&proxy_protocol::local_header(version)).await
        {
            return Probe::Down(format!("PROXY header to {target}: {err}"));
        }
        if check.kind == HealthKind::Tcp {
            return Probe::Up;
        }
        let host = check.host.clone().unwrap_or_else(|| target.to_string());
        let answered = match tls {
            None => ask(stream, None, check, &host).await,
            Some(tls) => match tls.handshake(stream, target, check.host.as_deref().unwrap_or_default()).await
            {
                Ok(stream) => {
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    ask(stream, Some(h2), check, &host).await
                }
                Err(err) => Err(format!("TLS to {target}: {err}")),
            },
        };
        match answered {
            Ok(()) => Probe::Up,
            Err(why) => Probe::Down(why),
        }
    };
    tokio::time::timeout(check.timeout, attempt)
        .await
        .unwrap_or_else(|_| Probe::Down(format!("no answer from {target} within {:?}", check.timeout)))
}

/// Asks `check`'s question on `io` (`tls`: None for plain TCP, else whether the backend agreed
/// to HTTP/2 by ALPN): the status of `GET check.path` (HTTP/1.1 unless so agreed), or gRPC's
/// health check (HTTP/2 always, by prior knowledge on plain TCP, as h2c is).
async fn ask<I>(io: I, tls: Option<bool>, check: &HealthCheck, host: &str) -> Result<(), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if check.kind == HealthKind::Grpc {
        let scheme = if tls.is_some() { "https" } else { "http" };
        return grpc_serving(io, check, &format!("{scheme}://{host}")).await;
    }
    let answer = get(io, tls == Some(true), check, host).await?;
    let status = answer.status().as_u16();
    if status != check.expect_status {
        return Err(format!("HTTP GET {} answered {status}, expected {}", check.path, check.expect_status));
    }
    let Some(expected) = &check.expect_body else { return Ok(()) };
    let start = head_of(answer.into_body(), HEALTH_BODY_BYTES).await?;
    match start.windows(expected.len()).any(|w| w == expected.as_bytes()) {
        true => Ok(()),
        false => Err(format!("HTTP GET {} answered without {expected:?}", check.path)),
    }
}

/// The first `limit` bytes of `body` (all of it if shorter); the rest is not read.
async fn head_of(mut body: hyper::body::Incoming, limit: usize) -> Result<Vec<u8>, String> {
    let mut start = Vec::new();
    while start.len() < limit {
        match body.frame().await {
            None => break,
            Some(Err(err)) => return Err(format!("HTTP body: {err}")),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    start.extend_from_slice(&data[..data.len().min(limit - start.len())]);
                }
            }
        }
    }
    Ok(start)
}

/// Whether the backend at `origin` (`scheme://host`) answers gRPC's health check SERVING for
/// `check.service` (HTTP 200, `grpc-status` 0 in its trailers, or in its head for an answer of
/// trailers only); an answer longer than `grpc::MAX_ANSWER` fails.
async fn grpc_serving<I>(io: I, check: &HealthCheck, origin: &str) -> Result<(), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request = Request::post(format!("{origin}{}", grpc::CHECK_PATH))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "sluice-health/1")
        .body(Full::new(grpc::request(check.service.as_deref().unwrap_or_default())))
        .map_err(|err| format!("gRPC request: {err}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|err| format!("HTTP/2: {err}"))?;
    tokio::spawn(connection);
    let answer = sender.send_request(request).await.map_err(|err| format!("gRPC health check: {err}"))?;
    if answer.status() != hyper::StatusCode::OK {
        return Err(format!("gRPC health check answered HTTP {}", answer.status().as_u16()));
    }
    let head = answer.headers().clone();
    let body = http_body_util::Limited::new(answer.into_body(), grpc::MAX_ANSWER).collect().await;
    let body = body.map_err(|err| format!("gRPC health check: {err}"))?;
    let trailers = body.trailers().cloned().unwrap_or_default();
    let field = |name: &str| {
        let value = trailers.get(name).or_else(|| head.get(name));
        value.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    match field("grpc-status").as_deref() {
        Some("0") => grpc::serving(&body.to_bytes()),
        Some(code) => {
            let message = field("grpc-message").map(|m| format!(": {m}")).unwrap_or_default();
            Err(format!("gRPC health check: grpc-status {code}{message}"))
        }
        None => Err("gRPC health check: no grpc-status".into()),
    }
}

/// The answer to `GET check.path` on `io`, in HTTP/2 when `h2` (a backend that agreed to it by
/// ALPN), else HTTP/1.1.
async fn get<I>(
    io: I,
    h2: bool,
    check: &HealthCheck,
    host: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let request = |uri: &str| {
        let request = Request::get(uri).header("user-agent", "sluice-health/1");
        let request = if h2 { request } else { request.header("host", host) };
        request.body(Empty::<Bytes>::new()).map_err(|err| format!("HTTP request: {err}"))
    };
    let sent = if h2 {
        let request = request(&format!("https://{host}{}", check.path))?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|err| format!("HTTP/2: {err}"))?;
        tokio::spawn(connection);
        sender.send_request(request).await
    } else {
        let request = request(&check.path)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(io).await.map_err(|err| format!("HTTP: {err}"))?;
        tokio::spawn(connection);
        sender.send_request(request).await
    };
    sent.map_err(|err| format!("HTTP GET {}: {err}", check.path))
}

/// Consecutive results of one backend.
#[derive(Default)]
struct Streak {
    ok: u32,
    failed: u32,
}

/// Checks pool `pool` until it disappears or loses its health check.
pub async fn run_pool(core: Shared, pool: String) {
    let mut streaks: HashMap<IpAddr, Streak> = HashMap::new();
    loop {
        let (check, backends, tls_pool, proxy, runtime) = {
            let core = lock(&core);
            let Some(p) = core.state.config.pools.get(&pool) else { return };
            let Some(check) = p.health.clone() else { return };
            let backends: Vec<(IpAddr, bool)> =
                p.backends.iter().map(|b| (b.addr, core.state.healthy(&pool, b.addr))).collect();
            let tls_pool = (check.kind == HealthKind::Http && p.tls.is_some()).then(|| p.clone());
            (check, backends, tls_pool, p.proxy_protocol, core.runtime.clone())
        };
        // The proxy's own client to the pool (its files looked at off the core's lock).
        let tls: Option<Arc<BackendTls>> = tls_pool.and_then(|p| runtime.backend_tls(&p));
        let results =
            join_all(backends.iter().map(|(addr, _)| probe(&check, *addr, tls.as_deref(), proxy))).await;
        let mut commands = Vec::new();
        for ((address, healthy), result) in backends.iter().zip(results) {
            let streak = streaks.entry(*address).or_default();
            match &result {
                Probe::Skipped => {
                    debug!("probe {pool}/{address}: skipped (this host is out of descriptors)");
                    continue;
                }
                Probe::Up => {
                    streak.ok += 1;
                    streak.failed = 0;
                }
                Probe::Down(_) => {
                    streak.failed += 1;
                    streak.ok = 0;
                }
            }
            debug!("probe {pool}/{address}: {result:?}");
            if *healthy && streak.failed >= check.fall {
                let why = match &result {
                    Probe::Down(why) => why.as_str(),
                    _ => "",
                };
                warn!("pool {pool}: backend {address} is DOWN after {} failed probes: {why}", streak.failed);
                commands.push(Command::SetHealth { pool: pool.clone(), address: *address, healthy: false });
            } else if !*healthy && streak.ok >= check.rise {
                info!("pool {pool}: backend {address} is UP after {} good probes", streak.ok);
                commands.push(Command::SetHealth { pool: pool.clone(), address: *address, healthy: true });
            }
        }
        streaks.retain(|addr, _| backends.iter().any(|(a, _)| a == addr));
        if !commands.is_empty() {
            match lock(&core).execute(&commands) {
                Ok(_) => {}
                // A new lbd took over, with checks of its own.
                Err(crate::daemon::ExecError::Retired) => return,
                Err(err) => log::error!("pool {pool}: applying health results: {err}"),
            }
        }
        tokio::time::sleep(check.interval).await;
    }
}

/// Starts checkers for pools with a health check that have none running.
pub fn spawn_missing(core: &Shared, running: &mut std::collections::HashSet<String>) {
    crate::daemon::spawn_per_pool(core, running, |p| p.health.is_some(), run_pool);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A one-shot HTTP server on loopback answering `status`.
    async fn server(status: &'static str) -> u16 {
        answering(status, String::new()).await
    }

    /// A one-shot HTTP server on loopback answering `status` with `body`.
    async fn answering(status: &'static str, body: String) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let reply = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            let _ = stream.write_all(reply.as_bytes()).await;
        });
        port
    }

    fn check(kind: HealthKind, port: u16) -> HealthCheck {
        HealthCheck {
            kind,
            port,
            path: "/healthz".into(),
            expect_status: 200,
            expect_body: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 1,
            host: None,
            service: None,
        }
    }

    /// An h2c gRPC server on loopback whose health servicer knows the whole server (`""`) and
    /// `pkg.Echo`, each with its status (1 SERVING, 2 NOT_SERVING); any other service is
    /// SERVICE_UNKNOWN. `unimplemented`: it has no health servicer (an answer of trailers only,
    /// grpc-status 12).
    async fn grpc_server(server: u8, echo: u8, unimplemented: bool) -> u16 {
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        let address = crate::proxy::test_bed::listening(move |stream| async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| async move {
                    let path_ok = request.uri().path() == grpc::CHECK_PATH;
                    let asked = request.into_body().collect().await?.to_bytes();
                    let (status, padding) = match &asked[5..] {
                        [] => (server, 0),
                        [0x0a, 8, name @ ..] if name == b"pkg.Echo" => (echo, 0),
                        // SERVING, with an unknown field of 8 KiB before it.
                        [0x0a, 7, name @ ..] if name == b"pkg.Big" => (1, 8192),
                        _ => (3, 0),
                    };
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                    let frames: Vec<Result<Frame<Bytes>, hyper::Error>> = if unimplemented || !path_ok {
                        Vec::new()
                    } else {
                        let mut field = vec![0x12, 0x80, 0x40]; // field 2, 8192 bytes
                        field.resize(3 + 8192, 0);
                        let field = if padding > 0 { field } else { Vec::new() };
                        let length = (field.len() as u32 + 2).to_be_bytes();
                        let message = [&[0][..], &length, &field, &[0x08, status]].concat();
                        let message = Bytes::from(message);
                        vec![Ok(Frame::data(message)), Ok(Frame::trailers(trailers))]
                    };
                    let mut answer =
                        hyper::Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                    answer.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
                    if unimplemented || !path_ok {
                        answer.headers_mut().insert("grpc-status", "12".parse().unwrap());
                        answer.headers_mut().insert("grpc-message", "unknown service".parse().unwrap());
                    }
                    Ok::<_, hyper::Error>(answer)
                });
            crate::proxy::test_bed::serve(stream, true, service).await;
        })
        .await;
        address.port()
    }

    #[tokio::test]
    async fn grpc_probe_wants_serving_for_its_service() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let grpc = |port, service: Option<&str>| HealthCheck {
            service: service.map(str::to_owned),
            ..check(HealthKind::Grpc, port)
        };
        let serving = grpc_server(1, 2, false).await;
        assert_eq!(probe(&grpc(serving, None), local, None, None).await, Probe::Up);
        assert_eq!(
            probe(&grpc(serving, Some("pkg.Echo")), local, None, None).await,
            Probe::Down("gRPC health check: NOT_SERVING".into())
        );
        assert_eq!(
            probe(&grpc(serving, Some("pkg.Other")), local, None, None).await,
            Probe::Down("gRPC health check: SERVICE_UNKNOWN".into())
        );
        let Probe::Down(why) = probe(&grpc(serving, Some("pkg.Big")), local, None, None).await else {
            panic!("an answer of 8 KiB passed");
        };
        assert!(why.starts_with("gRPC health check: length limit exceeded"), "{why}");
        let echo_only = grpc_server(2, 1, false).await;
        assert_eq!(probe(&grpc(echo_only, Some("pkg.Echo")), local, None, None).await, Probe::Up);
        let unimplemented = grpc_server(1, 1, true).await;
        assert_eq!(
            probe(&grpc(unimplemented, None), local, None, None).await,
            Probe::Down("gRPC health check: grpc-status 12: unknown service".into())
        );
        let http1 = server("200 OK").await;
        let Probe::Down(why) = probe(&grpc(http1, None), local, None, None).await else {
            panic!("an HTTP/1.1 server passed a gRPC check");
        };
        assert!(why.starts_with("gRPC health check") || why.starts_with("HTTP/2"), "{why}");
    }

    #[tokio::test]
    async fn http_probe_wants_the_expected_status() {
        let ok = server("200 OK").await;
        assert_eq!(
            probe(&check(HealthKind::Http, ok), "127.0.0.1".parse().unwrap(), None, None).await,
            Probe::Up
        );
        let bad = server("503 Service Unavailable").await;
        assert_eq!(
            probe(&check(HealthKind::Http, bad), "127.0.0.1".parse().unwrap(), None, None).await,
            Probe::Down("HTTP GET /healthz answered 503, expected 200".into())
        );
    }

    #[tokio::test]
    async fn http_probe_may_want_text_within_the_answers_start() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let expect_body = Some(r#""status":"ok""#.to_owned());
        let wants = |port| HealthCheck { expect_body: expect_body.clone(), ..check(HealthKind::Http, port) };
        let ok = answering("200 OK", r#"{"db":"up","status":"ok"}"#.into()).await;
        assert_eq!(probe(&wants(ok), local, None, None).await, Probe::Up);
        let down = Probe::Down(r#"HTTP GET /healthz answered without "\"status\":\"ok\"""#.into());
        let degraded = answering("200 OK", r#"{"status":"degraded"}"#.into()).await;
        assert_eq!(probe(&wants(degraded), local, None, None).await, down);
        let past = answering("200 OK", format!("{}\"status\":\"ok\"", " ".repeat(HEALTH_BODY_BYTES))).await;
        assert_eq!(probe(&wants(past), local, None, None).await, down, "past what is read");
        let failing = answering("503 Service Unavailable", r#"{"status":"ok"}"#.into()).await;
        let why = Probe::Down("HTTP GET /healthz answered 503, expected 200".into());
        assert_eq!(probe(&wants(failing), local, None, None).await, why, "the status first");
    }

    /// A one-shot HTTP server on loopback serving only the name `app.test` (404 to any other
    /// Host, as a server of named sites answers).
    async fn named_server() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            let status = if head.contains("\r\nhost: app.test\r\n") { "200 OK" } else { "404 Not Found" };
            let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            let _ = stream.write_all(reply.as_bytes()).await;
        });
        port
    }

    #[tokio::test]
    async fn http_probe_names_the_host_it_is_given() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let by_address = check(HealthKind::Http, named_server().await);
        assert_eq!(
            probe(&by_address, local, None, None).await,
            Probe::Down("HTTP GET /healthz answered 404, expected 200".into())
        );
        let by_name =
            HealthCheck { host: Some("app.test".into()), ..check(HealthKind::Http, named_server().await) };
        assert_eq!(probe(&by_name, local, None, None).await, Probe::Up);
    }

    #[tokio::test]
    async fn tcp_probe_wants_a_listener() {
        let open = server("200 OK").await;
        assert_eq!(
            probe(&check(HealthKind::Tcp, open), "127.0.0.1".parse().unwrap(), None, None).await,
            Probe::Up
        );
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let Probe::Down(why) =
            probe(&check(HealthKind::Tcp, closed), "127.0.0.1".parse().unwrap(), None, None).await
        else {
            panic!("a closed port was up");
        };
        assert!(why.contains("Connection refused"), "{why}");
    }

    /// An HTTP probe of a pool with TLS shakes hands with the pool's client: up when the
    /// backend's certificate is trusted, in HTTP/1.1 or in HTTP/2 for an h2 pool; down, with
    /// the handshake's error, when it is not.
    #[tokio::test]
    async fn an_http_probe_of_a_pool_with_tls_shakes_hands_as_the_proxy_does() {
        use crate::{
            config::{BackendTls as Settings, UpstreamProtocol},
            proxy::test_bed::{self, Pki},
        };
        let pki = Pki::new("health");
        let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let config = pki.backend_config(&[&b"h2"[..], &b"http/1.1"[..]], false);
        let backend = test_bed::tls_backend(config, handshakes.clone()).await;
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let http = check(HealthKind::Http, backend.port());
        let settings = |ca: &std::path::Path| Settings {
            ca: Some(ca.to_owned()),
            verify: true,
            server_name: None,
            sni_from_host: false,
            client_cert: None,
        };
        for protocol in [UpstreamProtocol::Http1, UpstreamProtocol::H2] {
            let trusted = BackendTls::load(&settings(&pki.ca), protocol);
            assert_eq!(probe(&http, local, Some(&trusted), None).await, Probe::Up, "{protocol:?}");
        }
        assert_eq!(handshakes.load(std::sync::atomic::Ordering::Relaxed), 2);
        let untrusted = BackendTls::load(&settings(&pki.other_ca), UpstreamProtocol::Http1);
        let Probe::Down(why) = probe(&http, local, Some(&untrusted), None).await else {
            panic!("a backend whose certificate is not trusted was up");
        };
        assert!(why.starts_with("TLS to 127.0.0.1:") && why.contains("UnknownIssuer"), "{why}");
    }
}
