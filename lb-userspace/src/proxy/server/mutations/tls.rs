//! Mutation tests of a TLS listener through its whole loop (`serve`): ClientHellos changed a few
//! bytes at a time; and after a valid handshake (TLS 1.3 or 1.2, ALPN h2, http/1.1 or none),
//! mutated HTTP/1.1 requests and HTTP/2 conversations inside it, or bytes that break its
//! records. Every connection ends by the listener's own timeouts, no task panics, every slot
//! comes back.
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::{
    AT_ONCE, CONNECTIONS, ENDS_WITHIN, PREFACE, TIMEOUT_MS, all_ended, conversations, mutated, start_listener,
};
use crate::{
    mutation::{Rng, mutate},
    proxy::{h1, test_bed},
};

/// A test CA, and a certificate it issued (for `a`, the routes' hosts and 127.0.0.1, until
/// 2126) with its key. For these tests only.
const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBiTCCAS+gAwIBAgIUSJmsIIFuQTsAr53lf2Oi1fpYH7kwCgYIKoZIzj0EAwIw
GTEXMBUGA1UEAwwOU2x1aWNlIHRlc3QgQ0EwIBcNMjYxMjAyMDgxODUwWhgPMjEy
NjExMDgwODE4NTBaMBkxFzAVBgNVBAMMDlNsdWljZSB0ZXN0IENBMFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAECN49szg4tydanSu89imRYAdzVMB8jzlQ8PsHWJTa
p5EqNSCXuLscJA0vAg4FGjehXuU9SKWKsqmB9DkzP3cyvaNTMFEwHQYDVR0OBBYE
FOGGFEM0Ac+4jzJAJoJqReEtPk9rMB8GA1UdIwQYMBaAFOGGFEM0Ac+4jzJAJoJq
ReEtPk9rMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgOKUn7OlL
kWA3xnYg9/EfGwFR0cub8AopEN2KmK+wHZMCIQD7Qmb7JeQKCgR6YhsNv4qHPVk4
W/k5Cf/AoUtPhATIWg==
-----END CERTIFICATE-----
";
const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBwzCCAWmgAwIBAgIUDpzIciwmZwzETWOd0GTvZ44lTvYwCgYIKoZIzj0EAwIw
GTEXMBUGA1UEAwwOU2x1aWNlIHRlc3QgQ0EwIBcNMjYxMjAyMDgxODUwWhgPMjEy
NjExMDgwODE4NTBaMAwxCjAIBgNVBAMMAWEwWTATBgcqhkjOPQIBBggqhkjOPQMB
BwNCAASjGTjM+P7aI8kqgTwu2MKUM8ne9tgK54zuLebGOokW4AVMRqD+ilSJc2pa
XVeiB9QfWxYE8VOzE5tve5k4oi65o4GZMIGWMDQGA1UdEQQtMCuCAWGCCWhhc2gu
dGVzdIIKY2FjaGUudGVzdIIJZ3JwYy50ZXN0hwR/AAABMAkGA1UdEwQCMAAwEwYD
VR0lBAwwCgYIKwYBBQUHAwEwHQYDVR0OBBYEFG2Je+MthmbzYAB6oYMoO4TKVfqj
MB8GA1UdIwQYMBaAFOGGFEM0Ac+4jzJAJoJqReEtPk9rMAoGCCqGSM49BAMCA0gA
MEUCIHY0nwOTkgCgCW4lLC/xd26/1YRqv1Fb5mDiFbIG3cVjAiEAjkxjf3xRau+m
+jnzRC+Cbm2ye+SehOtsAMrdnK1rcp0=
-----END CERTIFICATE-----
";
const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgGAgKzPz2rJgIwB0v
0HUFUEnn1FVrT+gcUe2TdPwHc8ahRANCAASjGTjM+P7aI8kqgTwu2MKUM8ne9tgK
54zuLebGOokW4AVMRqD+ilSJc2paXVeiB9QfWxYE8VOzE5tve5k4oi65
-----END PRIVATE KEY-----
";

/// Bytes the mutations insert into a ClientHello or a record: record and handshake headers,
/// lengths, versions, extension types, an alert.
const TLS_SPICE: &[&[u8]] = &[
    b"\x16\x03\x01",
    b"\x16\x03\x03\x00\x05",
    b"\x17\x03\x03\x40\x01",
    b"\x01\x00\x00",
    b"\x00\x00",
    b"\x00\x10",
    b"\x00\x2b",
    b"\x03\x04",
    b"\xff\xff",
    b"\x00",
    b"\x15\x03\x03\x00\x02\x02\x28",
];

/// An application-data record's header and 16 bytes that are no cipher text of the session.
const RECORD: &[u8] = b"\x17\x03\x03\x00\x10\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10";

/// Where the certificate files are, for one test run.
struct Files(PathBuf);

impl Files {
    fn new() -> Files {
        let dir = std::env::temp_dir().join(format!("sluice-tls-mutations-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), CERT).unwrap();
        std::fs::write(dir.join("key.pem"), KEY).unwrap();
        Files(dir)
    }

    /// The mutation tests' listener, with TLS over these files and the handshake's timeout.
    fn listener(&self) -> String {
        format!(
            "{}handshake_timeout_ms = {TIMEOUT_MS}\ntls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n",
            super::listener_section(),
            self.0.join("cert.pem").display(),
            self.0.join("key.pem").display()
        )
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A client trusting the test CA, offering `alpn`, with TLS 1.2 only or 1.2 and 1.3.
fn client(alpn: &[&[u8]], tls12_only: bool) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(CA.as_bytes()).unwrap()).unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] = match tls12_only {
        true => &[&rustls::version::TLS12],
        false => rustls::DEFAULT_VERSIONS,
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// What a client does on one connection.
enum Case {
    /// Sends these bytes as they are: a mutated ClientHello.
    Hello(Vec<u8>),
    /// Shakes hands, then sends these bytes inside TLS (a mutated HTTP/1.1 or HTTP/2 stream).
    Inside(Vec<u8>),
    /// Shakes hands, sends a valid request inside TLS, then these bytes outside it.
    Broken(Vec<u8>),
}

/// One connection to the listener; whether it was answered 200.
async fn exchange(
    address: SocketAddr,
    case: Case,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    close: bool,
) -> bool {
    let mut tcp = TcpStream::connect(address).await.unwrap();
    let (inside, outside) = match case {
        Case::Hello(hello) => {
            // The listener may refuse and close before it has read everything.
            let _ = tcp.write_all(&hello).await;
            if close {
                let _ = tcp.shutdown().await;
            }
            let _ = tcp.read_to_end(&mut Vec::new()).await;
            return false;
        }
        Case::Inside(bytes) => (bytes, None),
        Case::Broken(bytes) => (h1::mutations::REQUESTS[0].to_vec(), Some(bytes)),
    };
    // A valid handshake; on a slow machine, 100 of them on the test's one thread may outlast
    // the listener's handshake timeout (the answered share below would show it).
    let Ok(mut tls) = TlsConnector::from(config).connect(name, tcp).await else { return false };
    let _ = tls.write_all(&inside).await;
    let _ = tls.flush().await;
    if let Some(outside) = outside {
        let _ = tls.get_mut().0.write_all(&outside).await;
    }
    if close {
        // close_notify, then the end of the client's input.
        let _ = tls.shutdown().await;
    }
    let mut got = Vec::new();
    let _ = tls.read_to_end(&mut got).await;
    got.starts_with(b"HTTP/1.1 200") || test_bed::answered_200(&got)
}

#[tokio::test]
async fn every_mutated_tls_connection_ends_by_the_listeners_timeouts_without_a_panic() {
    let files = Files::new();
    let port = test_bed::http1().await.port();
    let (address, shared, _) = start_listener(
        &files.listener(),
        &format!(
            "[[pool]]\nname = \"p\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
             [[route]]\nlistener = \"l\"\npool = \"p\"\n"
        ),
    )
    .await;
    let conversations = conversations();
    let alpns: [&[&[u8]]; 4] = [&[b"h2"], &[b"http/1.1"], &[], &[b"h2", b"http/1.1"]];
    let mut rng = Rng(0x5eed_0008);
    let mut answered = 0;
    for _ in 0..CONNECTIONS / AT_ONCE {
        let batch: Vec<_> = (0..AT_ONCE)
            .map(|_| {
                let alpn = alpns[rng.below(alpns.len())];
                let config = client(alpn, rng.below(3) == 0);
                // An IP address is sent no SNI: the listener's default certificate.
                let name = match rng.below(3) {
                    0 => ServerName::try_from("127.0.0.1").unwrap(),
                    _ => ServerName::try_from("a").unwrap(),
                };
                let case = match rng.below(4) {
                    0 => {
                        let mut hello = Vec::new();
                        rustls::ClientConnection::new(config.clone(), name.clone())
                            .unwrap()
                            .write_tls(&mut hello)
                            .unwrap();
                        Case::Hello(mutate(&mut rng, &hello, TLS_SPICE))
                    }
                    1 => Case::Broken(mutate(&mut rng, RECORD, TLS_SPICE)),
                    // HTTP/2 where the client offered it first (else the listener reads HTTP/1.1).
                    _ if alpn.first() == Some(&&b"h2"[..]) => {
                        let conversation = &conversations[rng.below(conversations.len())];
                        Case::Inside([PREFACE, &mutated(&mut rng, conversation)].concat())
                    }
                    _ => {
                        let mut input = Vec::new();
                        for _ in 0..rng.below(3) {
                            input.extend_from_slice(h1::mutations::REQUESTS[rng.below(2)]);
                        }
                        let seed = h1::mutations::REQUESTS[rng.below(h1::mutations::REQUESTS.len())];
                        input.extend(h1::mutations::mutate(&mut rng, seed));
                        Case::Inside(input)
                    }
                };
                let close = rng.below(2) == 0;
                async move {
                    tokio::time::timeout(ENDS_WITHIN, exchange(address, case, config, name, close))
                        .await
                        .unwrap_or_else(|_| panic!("no end within {ENDS_WITHIN:?}"))
                }
            })
            .collect();
        // Each client a task of its own, as they would be apart.
        for case in futures_util::future::join_all(batch.into_iter().map(tokio::spawn)).await {
            match case {
                Ok(was_answered) => answered += usize::from(was_answered),
                Err(failed) => std::panic::resume_unwind(failed.into_panic()),
            }
        }
    }
    all_ended(&shared).await;
    // The mutations leave many conversations whole: the test reaches the backend, not only
    // the refusals.
    assert!(answered >= CONNECTIONS / 10, "only {answered} of {CONNECTIONS} answered");
}

/// A full TLS listener makes room by closing the connection quiet the longest: one stalled
/// inside its ClientHello goes, and a new client is served (while a stalled handshake ignored
/// the eviction, the new client was refused, though an idle keep-alive connection could have
/// gone).
#[tokio::test]
async fn a_connection_stalled_in_its_handshake_is_evicted_to_make_room() {
    let files = Files::new();
    let routes = "[[route]]\nlistener = \"l\"\nrespond = { status = 200 }\n";
    let (address, _, forwarder) =
        start_listener(&format!("{}max_connections = 2\n", files.listener()), routes).await;
    let mut stalled = TcpStream::connect(address).await.unwrap();
    stalled.write_all(b"\x16\x03\x01").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let config = client(&[b"http/1.1"], false);
    let name = ServerName::try_from("a").unwrap();
    // A kept-alive connection, answered, then idle (quiet for less time than the stalled one).
    let tcp = TcpStream::connect(address).await.unwrap();
    let mut idle = TlsConnector::from(config.clone()).connect(name.clone(), tcp).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut got = vec![0; 1024];
    let n = idle.read(&mut got).await.unwrap();
    assert!(got[..n].starts_with(b"HTTP/1.1 200"));
    let tcp = TcpStream::connect(address).await.unwrap();
    let mut third = TlsConnector::from(config).connect(name, tcp).await.expect("the new client was refused");
    third.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(ENDS_WITHIN, third.read_to_end(&mut answer)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer));
    let closed = tokio::time::timeout(ENDS_WITHIN, stalled.read_to_end(&mut Vec::new())).await;
    assert!(closed.is_ok(), "the stalled handshake is still open");
    let text = forwarder.metrics.text();
    assert!(
        text.contains("http_idle_closed_connections_total{listener=\"l\",reason=\"evicted_idle\"} 1"),
        "{text}"
    );
}
