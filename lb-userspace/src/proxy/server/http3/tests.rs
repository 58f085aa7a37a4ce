//! HTTP/3 through a listener with `http3`, from quinn's and h3's own client: requests with and
//! without a body, the fields a backend sees, the refusals, Alt-Svc over TCP, and a full
//! listener making room by closing an idle QUIC connection.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;

use super::super::{Shared, mutations::start_listening};
use crate::proxy::test_bed;

/// A listener's certificate for `a` and 127.0.0.1, in a folder removed when dropped.
struct Cert {
    dir: std::path::PathBuf,
    der: rustls_pki_types::CertificateDer<'static>,
}

impl Cert {
    fn new(tag: &str) -> Cert {
        let dir = std::env::temp_dir().join(format!("sluice-h3-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["a".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        Cert { der: cert.der().clone(), dir }
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A backend that answers each request with what it saw: `{host} {via} {body length}`.
async fn backend() -> SocketAddr {
    test_bed::listening(|stream| async move {
        let service = service_fn(|request: Request<Incoming>| async move {
            let field = |name: &str| {
                request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned()
            };
            let (host, via) = (field("host"), field("via"));
            let body = request.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Response::new(http_body_util::Full::new(Bytes::from(format!(
                "{host} {via} {}",
                body.len()
            )))))
        });
        let _ =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
    })
    .await
}

/// A listener with `http3` (and `extra` settings) routed to `backend`, serving TCP and UDP on
/// 127.0.0.1; their addresses.
async fn start(cert: &Cert, extra: &str, backend: SocketAddr) -> (SocketAddr, SocketAddr, Arc<Shared>) {
    let (tcp, udp, shared, _) = start_with(cert, extra, "", backend).await;
    (tcp, udp, shared)
}

/// `start`, with `tls` settings beside the certificate and `http3 = true`; its forwarder too.
async fn start_with(
    cert: &Cert,
    extra: &str,
    tls: &str,
    backend: SocketAddr,
) -> (SocketAddr, SocketAddr, Arc<Shared>, Arc<crate::proxy::pipeline::Forwarder>) {
    let listener = format!(
        "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:443\"\naccess_log = false\n{extra}\n\
         tls = {{ certificates = [{{ cert = \"{dir}/cert.pem\", key = \"{dir}/key.pem\" }}], http3 = true{tls} }}\n",
        dir = cert.dir.display(),
    );
    let routes = format!(
        "[[pool]]\nname = \"p\"\nport = {}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\n",
        backend.port(),
    );
    let (tcp, udp, shared, forwarder) = start_listening(&listener, &routes).await;
    (tcp, udp.expect("an HTTP/3 listener"), shared, forwarder)
}

type Client = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// An HTTP/3 client connected to `address`, trusting `cert`; its QUIC connection too.
async fn connect(address: SocketAddr, cert: &Cert) -> (Client, quinn::Connection) {
    let quic = client_endpoint(cert).connect(address, "a").unwrap().await.unwrap();
    let (mut driver, client) = h3::client::new(h3_quinn::Connection::new(quic.clone())).await.unwrap();
    tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    (client, quic)
}

/// A QUIC client endpoint on 127.0.0.1 trusting `cert`, offering h3.
fn client_endpoint(cert: &Cert) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// Sends `request` with `body` and reads the answer: its status, fields and body.
async fn ask(client: &mut Client, request: Request<()>, body: &[u8]) -> (Response<()>, String) {
    let asked = async {
        let mut stream = client.send_request(request).await.unwrap();
        if !body.is_empty() {
            stream.send_data(Bytes::copy_from_slice(body)).await.unwrap();
        }
        stream.finish().await.unwrap();
        let response = stream.recv_response().await.unwrap();
        let mut got = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.unwrap() {
            got.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        (response, String::from_utf8_lossy(&got).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), asked).await.expect("an answer within 5 s")
}

/// A GET over TLS and HTTP/1.1 to `address`; the answer's head.
async fn over_tcp(address: SocketAddr, cert: &Cert) -> hyper::http::response::Parts {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("a").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.unwrap();
    let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get("/").header("host", "a").body(http_body_util::Empty::<Bytes>::new()).unwrap();
    send.send_request(request).await.unwrap().into_parts().0
}

/// The status of a GET of `/`.
async fn get_root(client: &mut Client) -> hyper::StatusCode {
    ask(client, get("/").body(()).unwrap(), b"").await.0.status()
}

fn get(path: &str) -> hyper::http::request::Builder {
    Request::get(format!("https://a{path}"))
}

#[tokio::test]
async fn requests_over_http3_reach_the_backend_with_its_host_and_via() {
    let cert = Cert::new("requests");
    let (tcp, udp, _) = start(&cert, "", backend().await).await;
    let (mut client, _quic) = connect(udp, &cert).await;
    let (answer, body) = ask(&mut client, get("/").body(()).unwrap(), b"").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(body, "a 3 sluice 0", "the backend's view: Host from :authority, Via of HTTP/3");
    assert!(answer.headers().contains_key("x-request-id"));
    assert!(answer.headers().contains_key("date"));
    // A body, on the same connection.
    let post = Request::post("https://a/up").header("content-length", "5").body(()).unwrap();
    let (answer, body) = ask(&mut client, post, b"hello").await;
    assert_eq!((answer.status().as_u16(), body.as_str()), (200, "a 3 sluice 5"));
    // TCP clients are told of HTTP/3 on the listener's port.
    let head = over_tcp(tcp, &cert).await;
    assert_eq!(head.headers.get("alt-svc").unwrap(), "h3=\":443\"; ma=86400");
    // HTTP/3 answers say it too (a client keeps it fresh).
    assert_eq!(answer.headers().get("alt-svc").unwrap(), "h3=\":443\"; ma=86400");
}

#[tokio::test]
async fn malformed_http3_requests_are_refused() {
    let cert = Cert::new("refused");
    let (_, udp, _) = start(&cert, "max_header_bytes = 8192", backend().await).await;
    let (mut client, _quic) = connect(udp, &cert).await;
    // A connection-specific field (RFC 9114 §4.2), which a backend could take for framing.
    let smuggled = get("/").header("transfer-encoding", "chunked").body(()).unwrap();
    assert_eq!(ask(&mut client, smuggled, b"").await.0.status(), 400);
    let padded = get("/").header("x-a", " b").body(()).unwrap();
    assert_eq!(ask(&mut client, padded, b"").await.0.status(), 400);
    // More fields than the guard allows.
    let mut many = get("/");
    for n in 0..150 {
        many = many.header(format!("x-{n}"), "1");
    }
    assert_eq!(ask(&mut client, many.body(()).unwrap(), b"").await.0.status(), 431);
    // A head over the listener's limit: the client was told it (SETTINGS), and keeps it.
    let big = get("/").header("x-big", "b".repeat(9000)).body(()).unwrap();
    let refused = client.send_request(big).await.err().expect("a head over the limit was sent");
    assert!(matches!(refused, h3::error::StreamError::HeaderTooBig { max_size: 8192, .. }), "{refused}");
    // The connection still serves.
    assert_eq!(get_root(&mut client).await, 200);
}

#[tokio::test]
async fn a_full_listener_closes_an_idle_quic_connection_for_a_new_one() {
    let cert = Cert::new("full");
    let (_, udp, _) = start(&cert, "max_connections = 1", backend().await).await;
    let (mut first, first_quic) = connect(udp, &cert).await;
    assert_eq!(get_root(&mut first).await, 200);
    let (mut second, _quic) = connect(udp, &cert).await;
    assert_eq!(get_root(&mut second).await, 200);
    let closed = tokio::time::timeout(Duration::from_secs(2), first_quic.closed()).await;
    assert!(closed.is_ok(), "the idle connection was not closed");
}

#[tokio::test]
async fn a_quiet_quic_connection_closes_at_the_keep_alive_limit() {
    let cert = Cert::new("idle");
    let (_, udp, shared) = start(&cert, "idle_timeout_ms = 300", backend().await).await;
    let (mut client, quic) = connect(udp, &cert).await;
    assert_eq!(get_root(&mut client).await, 200);
    let closed = tokio::time::timeout(Duration::from_secs(3), quic.closed()).await;
    assert!(closed.is_ok(), "still open after 3 s of a 300 ms keep-alive limit");
    super::super::mutations::all_ended(&shared).await;
}

#[tokio::test]
async fn a_listener_that_always_retries_serves_clients_that_prove_their_address() {
    let cert = Cert::new("retry");
    let (_, udp, _, forwarder) = start_with(&cert, "", ", http3_retry = \"always\"", backend().await).await;
    let (mut client, _quic) = connect(udp, &cert).await;
    assert_eq!(get_root(&mut client).await, 200);
    let text = forwarder.metrics.text();
    assert!(text.contains("quic_retries_total{listener=\"l\"} 1"), "{text}");
    assert!(text.contains("tls_handshakes_total{listener=\"l\",result=\"ok\"} 1"), "{text}");
}

#[tokio::test]
async fn under_load_only_a_listener_with_many_handshakes_in_progress_retries() {
    let cert = Cert::new("no-retry");
    let (_, udp, shared, forwarder) = start_with(&cert, "", "", backend().await).await;
    let (mut client, _quic) = connect(udp, &cert).await;
    assert_eq!(get_root(&mut client).await, 200);
    assert!(!forwarder.metrics.text().contains("quic_retries_total{"), "a Retry with no load");
    // As if RETRY_THRESHOLD handshakes were under way (a flood of Initials).
    let flood: Vec<_> = (0..super::RETRY_THRESHOLD).map(|_| super::Handshaking::new(&shared)).collect();
    let (mut client, _quic) = connect(udp, &cert).await;
    assert_eq!(get_root(&mut client).await, 200);
    drop(flood);
    let text = forwarder.metrics.text();
    assert!(text.contains("quic_retries_total{listener=\"l\"} 1"), "{text}");
}

#[tokio::test]
async fn a_body_over_the_listener_s_limit_is_refused_with_or_without_its_length() {
    let cert = Cert::new("body");
    let (_, udp, _) = start(&cert, "max_body_bytes = 1000", backend().await).await;
    let (mut client, _quic) = connect(udp, &cert).await;
    let said = Request::post("https://a/").header("content-length", "5000").body(()).unwrap();
    assert_eq!(ask(&mut client, said, &[b'x'; 5000]).await.0.status(), 413);
    let (mut client, _quic) = connect(udp, &cert).await;
    let unsaid = Request::post("https://a/").body(()).unwrap();
    assert_eq!(ask(&mut client, unsaid, &[b'x'; 5000]).await.0.status(), 413);
    let small = Request::post("https://a/").body(()).unwrap();
    let (answer, body) = ask(&mut client, small, &[b'x'; 900]).await;
    assert_eq!((answer.status().as_u16(), body.as_str()), (200, "a 3 sluice 900"));
}

/// Datagrams a client could send: 150 real clients' Initials, each sent unchanged (a handshake
/// begun and abandoned) and twice changed a few bytes at a time, each from a port of its own.
/// Every connection they open ends (failed, or by the listener's handshake timeout), its slot
/// comes back, nothing panics, and a real client is served meanwhile.
#[tokio::test]
async fn mutated_and_abandoned_initials_end_by_the_handshake_timeout() {
    use crate::mutation::{Rng, mutate};
    crate::mutation::record_panics();
    let cert = Cert::new("initials");
    let (_, udp, shared, forwarder) =
        start_with(&cert, "handshake_timeout_ms = 1000\nmax_connections = 1000", "", backend().await).await;
    // Real clients' first datagrams (each its own connection ID), caught on their way.
    let catcher = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let endpoint = client_endpoint(&cert);
    let mut initials = Vec::new();
    for _ in 0..150 {
        let connecting = endpoint.connect(catcher.local_addr().unwrap(), "a").unwrap();
        let mut initial = vec![0; 2048];
        let caught = tokio::time::timeout(Duration::from_secs(2), catcher.recv_from(&mut initial)).await;
        let (n, _) = caught.unwrap().unwrap();
        initial.truncate(n);
        initials.push(initial);
        drop(connecting);
    }
    let mut rng = Rng(0x51_1c3e_0003);
    let spice: &[&[u8]] = &[b"\xc0\x00\x00\x00\x01", b"\x08", b"\x00\x00", b"\xff\xff\xff\xff", b"\x40\x00"];
    for initial in &initials {
        for datagram in [initial.clone(), mutate(&mut rng, initial, spice), mutate(&mut rng, initial, spice)]
        {
            let from = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            from.send_to(&datagram, udp).unwrap();
        }
        // Paced: a burst would overflow the socket's receive buffer, and the kernel drop them.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (mut client, quic) = connect(udp, &cert).await;
    assert_eq!(get_root(&mut client).await, 200);
    drop((client, quic, endpoint));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    super::super::mutations::all_ended(&shared).await;
    let text = forwarder.metrics.text();
    assert!(text.contains("tls_handshakes_total{listener=\"l\",result=\"timeout\"}"), "{text}");
}

/// A worker's UDP socket holds RECEIVE_BUFFER (the kernel reports twice what it was asked, its
/// bookkeeping included); without CAP_NET_ADMIN, as much as `net.core.rmem_max` allows.
#[test]
fn a_worker_s_udp_socket_holds_a_burst() {
    let socket = socket2::Socket::from(super::socket("127.0.0.1:0".parse().unwrap()).unwrap());
    let held = socket.recv_buffer_size().unwrap();
    let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap().trim().parse().unwrap();
    // SAFETY: geteuid reads this process's effective user ID.
    let root = unsafe { libc::geteuid() } == 0;
    let wanted = if root { super::RECEIVE_BUFFER } else { max.min(super::RECEIVE_BUFFER) };
    assert!(held >= wanted, "{held} bytes, {wanted} wanted (rmem_max {max})");
}

/// A client may open the listener's `http2_max_concurrent_streams` request streams at once,
/// at most 100 (each costs every connection an entry in quinn's tables).
#[tokio::test]
async fn a_client_may_open_the_listener_s_streams_at_most_100() {
    let cert = Cert::new("streams");
    for (setting, allowed) in [("http2_max_concurrent_streams = 3", 3), ("", 100)] {
        let (_, udp, _) = start(&cert, setting, backend().await).await;
        let (_client, quic) = connect(udp, &cert).await;
        let mut open = Vec::new();
        for n in 0..=allowed {
            match tokio::time::timeout(Duration::from_millis(200), quic.open_bi()).await {
                Ok(stream) => open.push(stream.unwrap()),
                Err(_) => {
                    assert_eq!(n, allowed, "{setting:?}: only {n} streams opened");
                    break;
                }
            }
        }
        assert_eq!(open.len(), allowed, "{setting:?}: more streams opened than allowed");
    }
}
