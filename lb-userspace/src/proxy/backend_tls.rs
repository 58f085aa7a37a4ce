//! TLS to a pool's backends: the rustls client its `tls` settings make (the CA the backends'
//! certificates must chain to, or none checked; the name asked for and checked, the pool's or
//! each request's host; a client certificate), ALPN for its protocol, and the handshake on a
//! new connection.
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::{
    config::{BackendTls as Settings, UpstreamProtocol},
    proxy::tls::{self, TlsError, pem},
};

/// Every class of connection gets the next number: each TLS client (`BackendTls`), each
/// plain pool (`PoolRuntime`), each host of a pool with `sni_from_host`.
static NEXT_CLASS: AtomicU64 = AtomicU64::new(1);

/// A number no other class of connection has (`backend_stream::ConnKey`).
pub fn new_class() -> u64 {
    NEXT_CLASS.fetch_add(1, Ordering::Relaxed)
}

/// Most hosts a pool with `sni_from_host` files connections under before it starts over (the
/// idle connections of the hosts forgotten then are not reused, and close when idle too long).
const MAX_HOSTS: usize = 4096;

/// A pool's TLS client, made from its settings and the files they name.
pub struct BackendTls {
    /// This client among every one made: its connections' class (`new_class`).
    pub id: u64,
    /// The connector, or why none could be made (every connect then fails with it: a pool
    /// with TLS never falls back to plain TCP).
    connector: Result<TlsConnector, String>,
    /// SNI and the name the certificate must hold; None: the backend's address.
    server_name: Option<ServerName<'static>>,
    /// With `sni_from_host`: the number each request host's connections are filed under (as
    /// `id` is for the pool's), given on first use.
    by_host: Option<Mutex<HashMap<Box<str>, u64, foldhash::fast::RandomState>>>,
    /// Whether the backend must agree to HTTP/2 by ALPN.
    h2: bool,
    /// What it was made from: the settings and the protocol.
    made_from: (Settings, UpstreamProtocol),
}

impl BackendTls {
    /// The client `settings` make for a pool speaking `protocol`; a file that cannot be used
    /// makes a client whose every connect fails with the reason (the config's check read the
    /// same files, so this is a file changed since).
    pub fn load(settings: &Settings, protocol: UpstreamProtocol) -> BackendTls {
        let h2 = protocol == UpstreamProtocol::H2;
        let connector = client_config(settings, h2).map(TlsConnector::from).map_err(|err| err.to_string());
        let server_name =
            settings.server_name.as_deref().and_then(|name| ServerName::try_from(name.to_owned()).ok());
        BackendTls {
            id: new_class(),
            connector,
            server_name,
            by_host: settings.sni_from_host.then(Mutex::default),
            h2,
            made_from: (settings.clone(), protocol),
        }
    }

    /// Why this client cannot connect, if it cannot.
    pub fn broken(&self) -> Option<&str> {
        self.connector.as_ref().err().map(String::as_str)
    }

    /// Whether this client was made from `settings` for `protocol` (its files may have
    /// changed since: `Files`).
    pub fn made_for(&self, settings: &Settings, protocol: UpstreamProtocol) -> bool {
        self.made_from == (settings.clone(), protocol)
    }

    /// What the connections of a request for `host` are filed under: the client's `id`, or with
    /// `sni_from_host`, a number of the host's own (connections made for one host never carry
    /// another's requests: its SNI and certificate name would be wrong).
    pub fn id_for(&self, host: &str) -> u64 {
        let Some(by_host) = &self.by_host else { return self.id };
        if host.is_empty() {
            return self.id;
        }
        let mut ids = by_host.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = ids.get(host) {
            return *id;
        }
        if ids.len() >= MAX_HOSTS {
            ids.clear();
        }
        let id = new_class();
        ids.insert(host.into(), id);
        id
    }

    /// The name asked for and checked: with `sni_from_host`, `host` (its port left out); else,
    /// or with no host, the pool's server name, else the backend's address.
    fn name_for(&self, host: &str, address: SocketAddr) -> ServerName<'static> {
        let bare = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None if host.matches(':').count() == 1 => host.split(':').next().unwrap_or_default(),
            None => host,
        };
        if self.by_host.is_some()
            && let Ok(name) = ServerName::try_from(bare.to_owned())
        {
            return name;
        }
        self.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(address.ip().into()))
    }

    /// The handshake on `stream` to `address` for a request to `host` (empty: none): the name
    /// `name_for` gives is asked for and checked, and an HTTP/2 pool's backend must agree to h2.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        address: SocketAddr,
        host: &str,
    ) -> io::Result<TlsStream<TcpStream>> {
        let connector = self.connector.as_ref().map_err(|why| io::Error::other(why.clone()))?;
        let stream = connector.connect(self.name_for(host, address), stream).await?;
        if self.h2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(io::Error::other("the backend did not agree to HTTP/2 (ALPN)"));
        }
        Ok(stream)
    }
}

/// The files the settings name.
fn files(settings: &Settings) -> impl Iterator<Item = &PathBuf> {
    settings.ca.iter().chain(settings.client_cert.iter().flat_map(|(cert, key)| [cert, key]))
}

/// The stamps of the files `settings` name: a client made before they changed is made again.
#[derive(Clone, PartialEq, Eq)]
pub struct Files(Vec<Option<crate::config::FileStamp>>);

impl Files {
    pub fn of(settings: &Settings) -> Files {
        Files(files(settings).map(|p| crate::config::stamp(p)).collect())
    }
}

/// The rustls client: TLS 1.2 and 1.3 with ring, the CA's roots (or any certificate), a
/// client certificate if set, ALPN h2 or http/1.1, and rustls's in-memory session cache (a new
/// connection to a backend resumes).
fn client_config(settings: &Settings, h2: bool) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match (&settings.ca, settings.verify) {
        (Some(ca), true) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(pem("reading", ca))? {
                roots.add(cert.map_err(pem("parsing", ca))?)?;
            }
            if roots.is_empty() {
                return Err(TlsError::NoCertificate(ca.clone()));
            }
            builder.with_root_certificates(roots)
        }
        _ => builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
    };
    let mut config = match &settings.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = tls::read_chain(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(pem("reading the key", key))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| TlsError::KeyMismatch { cert: cert.clone(), error })?
        }
    };
    config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    Ok(Arc::new(config))
}

/// `verify = false`: any certificate is taken (HAProxy's `verify none`); the handshake's
/// signatures are still checked, so the peer holds the key of the certificate it sent.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
