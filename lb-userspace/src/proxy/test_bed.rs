//! What the proxy's tests run on: real backends on 127.0.0.1 (each connection served in a task
//! of its own), and the routes and forwarder of a config.
use std::{future::Future, net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc::UnboundedReceiver,
};

use crate::{
    config::Config,
    proxy::{metrics::ProxyMetrics, pipeline::Forwarder, runtime::Runtime, snapshot::Snapshot},
    state::{Command, State},
};

/// The routes of `config` and a forwarder over them; the commands it sends (outlier
/// ejections) arrive on the receiver, which the caller holds while requests are served.
pub fn forwarding(config: Config) -> (Arc<ArcSwap<Snapshot>>, Arc<Forwarder>, UnboundedReceiver<Command>) {
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(&State::new(config), &Runtime::default())));
    let (commands, ejections) = tokio::sync::mpsc::unbounded_channel();
    let forwarder =
        Arc::new(Forwarder::new(ProxyMetrics::default(), commands, Default::default(), Default::default()));
    (snapshot, forwarder, ejections)
}

/// A server on 127.0.0.1 that serves each connection it accepts with `serve`; its address.
pub async fn listening<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    address
}

/// Reads from `stream` into `read` until it holds a whole head; the head's length (up to its
/// blank line), or None if the stream ended first. For the tests' raw backends.
pub async fn head_read(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    read: &mut Vec<u8>,
) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(at + 4);
        }
        let mut chunk = [0; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => read.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An HTTP/1.1 backend (hyper) that reads each request's whole body and answers with its size
/// as text/plain, storable for a minute and varying by what the client accepts; upgrades
/// allowed.
pub async fn http1() -> SocketAddr {
    listening(|stream| async move {
        let service = service_fn(|request: Request<Incoming>| async move {
            let body = request.into_body().collect().await?.to_bytes();
            let mut answer = Response::new(Full::new(Bytes::from(format!("read {}", body.len()))));
            let headers = answer.headers_mut();
            headers.insert(hyper::header::CACHE_CONTROL, "max-age=60".parse().unwrap());
            headers.insert(hyper::header::CONTENT_TYPE, "text/plain".parse().unwrap());
            headers.insert(hyper::header::VARY, "accept".parse().unwrap());
            Ok::<_, hyper::Error>(answer)
        });
        let served = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let _ = served.await;
    })
    .await
}

/// An h2c backend (hyper; gRPC's shape): each request's body echoed, then trailers.
pub async fn h2c() -> SocketAddr {
    listening(|stream| async move {
        let service = service_fn(|request: Request<Incoming>| async move {
            let body = request.into_body().collect().await?.to_bytes();
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = [
                Ok::<_, hyper::Error>(hyper::body::Frame::data(body)),
                Ok(hyper::body::Frame::trailers(trailers)),
            ];
            Ok::<_, hyper::Error>(Response::new(StreamBody::new(stream::iter(frames))))
        });
        serve(stream, true, service).await;
    })
    .await
}

/// Sends `request` on a new connection to `address` (HTTP/2 with prior knowledge, or
/// HTTP/1.1), as a client of the proxy's would; the answer's head and its body as text.
pub async fn ask<B>(
    address: SocketAddr,
    request: Request<B>,
    http2: bool,
) -> (hyper::http::response::Parts, String)
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync,
{
    let io = TokioIo::new(TcpStream::connect(address).await.unwrap());
    let response = if http2 {
        let (mut send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(connection);
        send.send_request(request).await.unwrap()
    } else {
        let (mut send, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        send.send_request(request).await.unwrap()
    };
    let (head, body) = response.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// A GET to `host` through the listener at `address`, over HTTP/2 or HTTP/1.1: the status and
/// the body as text.
pub async fn get(address: SocketAddr, host: &str, http2: bool) -> (u16, String) {
    let request =
        Request::get(format!("http://{host}/")).body(http_body_util::Empty::<Bytes>::new()).unwrap();
    let (head, body) = ask(address, request, http2).await;
    (head.status.as_u16(), body)
}

/// Whether an HTTP/2 server's bytes hold an answer's HEADERS that starts `:status: 200` (HPACK's
/// static index 8, as h2 writes it).
pub fn answered_200(got: &[u8]) -> bool {
    let mut at = 0;
    while let Some(head) = got.get(at..at + 9) {
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if head[3] == 1 && stream != 0 && got.get(at + 9) == Some(&0x88) {
            return true;
        }
        at += 9 + len;
    }
    false
}

/// A gzip stream's text, for the tests of compressed answers.
pub fn gunzip(bytes: &[u8]) -> String {
    let mut out = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(bytes), &mut out).unwrap();
    out
}

/// Certificates made at run time in a folder of their own: a CA, a backend's certificate
/// from it (for 127.0.0.1 and `backend.test`), a client certificate from it, and a second CA
/// that signed neither. Removed when dropped.
pub struct Pki {
    pub dir: std::path::PathBuf,
    pub ca: std::path::PathBuf,
    pub other_ca: std::path::PathBuf,
    /// The client certificate and its key.
    pub client: (std::path::PathBuf, std::path::PathBuf),
    backend: (Vec<rustls::pki_types::CertificateDer<'static>>, rcgen::KeyPair),
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = std::env::temp_dir().join(format!("sluice-pki-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            (cert, Issuer::new(params, key))
        };
        let ((ca_cert, issuer), (other, _)) = (ca("Sluice test CA"), ca("Another CA"));
        let leaf = |names: &[&str]| {
            let key = KeyPair::generate().unwrap();
            let params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            (params.signed_by(&key, &issuer).unwrap(), key)
        };
        let (backend, backend_key) = leaf(&["127.0.0.1", "backend.test"]);
        let (client, client_key) = leaf(&["client.test"]);
        let write = |name: &str, text: String| {
            std::fs::write(dir.join(name), text).unwrap();
            dir.join(name)
        };
        Pki {
            ca: write("ca.pem", ca_cert.pem()),
            other_ca: write("other-ca.pem", other.pem()),
            client: (write("client.pem", client.pem()), write("client.key", client_key.serialize_pem())),
            backend: (vec![backend.der().clone()], backend_key),
            ca_der: ca_cert.der().clone(),
            dir,
        }
    }

    /// A backend's TLS config: the backend's certificate, ALPN `alpn`, and client
    /// certificates from the CA required when `mtls`.
    pub fn backend_config(&self, alpn: &[&[u8]], mtls: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if mtls {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = rustls::pki_types::PrivateKeyDer::try_from(self.backend.1.serialize_der()).unwrap();
        let mut config = builder.with_single_cert(self.backend.0.clone(), key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A backend over TLS (hyper; HTTP/2 when the handshake agreed to h2, else HTTP/1.1) that
/// answers each request with what it saw: `{version} {host or :authority} {client certificate
/// or none}`. `handshakes` counts the connections it took in.
pub async fn tls_backend(
    config: Arc<rustls::ServerConfig>,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    listening(move |stream| {
        let (acceptor, handshakes) = (acceptor.clone(), handshakes.clone());
        async move {
            let Ok(stream) = acceptor.accept(stream).await else { return };
            handshakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let client =
                if stream.get_ref().1.peer_certificates().is_some() { "client-cert" } else { "none" };
            let service = service_fn(move |request: Request<Incoming>| async move {
                let host = match request.headers().get(hyper::header::HOST) {
                    Some(host) => host.to_str().unwrap_or("?").to_owned(),
                    None => request.uri().authority().map_or("-".into(), |a| a.to_string()),
                };
                let text = format!("{:?} {host} {client}", request.version());
                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(text))))
            });
            serve(stream, h2, service).await;
        }
    })
    .await
}

/// Serves one connection with `service` (hyper), in HTTP/2 or HTTP/1.1, until it ends.
pub async fn serve<I, S>(io: I, http2: bool, service: S)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(io);
    let _ = if http2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service).await
    } else {
        hyper::server::conn::http1::Builder::new().serve_connection(io, service).await
    };
}
