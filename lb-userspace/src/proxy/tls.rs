//! TLS for L7 listeners: certificates chosen by SNI (exact, then wildcard, then the first as
//! default), ALPN h2 and http/1.1 (h3 over QUIC), TLS 1.2 and 1.3, session tickets, optional client
//! certificates (mTLS), OCSP stapling, a certificate from an ACME CA (`acme.rs`). Certificates
//! reload without a restart; a bad file keeps the old one.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::{
    config::{Acme, CertFiles, Tls},
    proxy::{
        acme,
        ocsp::{self, Staple},
        validity,
    },
};

/// Why a listener's certificates or TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{doing} {file}: {error}")]
    Pem { doing: &'static str, file: PathBuf, error: rustls_pki_types::pem::Error },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("{cert} does not match its key: {error}")]
    KeyMismatch { cert: PathBuf, error: rustls::Error },
    #[error("no certificate")]
    Empty,
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
    #[error("HTTP/3: {0}")]
    Quic(String),
}

type Result<T, E = TlsError> = std::result::Result<T, E>;

/// A PEM error of `file` while `doing`.
pub fn pem(doing: &'static str, file: &Path) -> impl FnOnce(rustls_pki_types::pem::Error) -> TlsError {
    let file = file.to_path_buf();
    move |error| TlsError::Pem { doing, file, error }
}

/// The certificates of one listener, by name.
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// "example.com" for "*.example.com".
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For names none matches, and clients that send none; None only while a listener with no
    /// certificate of its own awaits its first from ACME (its handshakes fail until then).
    default: Option<Arc<CertifiedKey>>,
    /// When the first stapled OCSP response goes stale: the files are read again then, and
    /// it is stapled no more (unless a fresh one has come).
    pub stale_at: Option<SystemTime>,
    /// What each certificate is, in the order they were loaded (the default first).
    pub served: Vec<Served>,
}

/// A certificate a listener serves, as the metrics and `lbctl listener list` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The least of its names (alphabetically; `-` without one): the same whatever order a CA
    /// lists them in.
    pub name: String,
    /// How many names it has.
    pub names: usize,
    /// Its not-after (None: it does not parse as X.509, which rustls did not mind).
    pub not_after: Option<SystemTime>,
    /// Its OCSP staple's next update, when one is stapled (`Some(None)`: with no end).
    pub stapled: Option<Option<SystemTime>>,
    /// lbd ordered it from the listener's ACME CA.
    pub acme: bool,
}

/// The certificates of a PEM file, at least one (a listener's chain, a pool's client
/// certificate).
pub fn read_chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(pem("reading", cert))?
        .collect::<Result<_, _>>()
        .map_err(pem("parsing", cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    Ok(chain)
}

/// A certificate with its key and its OCSP staple, if it has one that can be stapled now; its
/// DNS names; when its staple goes stale.
fn load_pair(files: &CertFiles) -> Result<(Arc<CertifiedKey>, Vec<String>, Option<SystemTime>)> {
    let (cert, key) = (&files.cert, &files.key);
    let chain = read_chain(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem("reading the key", key))?;
    let provider = rustls::crypto::ring::default_provider();
    let mut certified = CertifiedKey::from_der(chain.clone(), key, &provider)
        .map_err(|error| TlsError::KeyMismatch { cert: cert.to_path_buf(), error })?;
    let mut stale_at = None;
    if let Some(file) = &files.ocsp {
        match ocsp::read(file, &chain, SystemTime::now()) {
            Staple::Good { der, until } => (certified.ocsp, stale_at) = (Some(der), until),
            Staple::Unusable(why) => {
                log::warn!("OCSP response {}: not stapled: {why}", file.display());
            }
        }
    }
    let names = names_of(&chain[0]);
    Ok((Arc::new(certified), names, stale_at))
}

/// DNS names of a certificate (subject alternative names), lowercase.
fn names_of(cert: &CertificateDer<'_>) -> Vec<String> {
    // webpki parses the certificate; its DNS names iterate as strings.
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee.valid_dns_names().map(|n| n.to_ascii_lowercase()).collect(),
        Err(_) => Vec::new(),
    }
}

impl CertStore {
    pub fn load(tls: &Tls) -> Result<CertStore> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        let mut stale_at: Option<SystemTime> = None;
        let mut pairs = tls.certificates.iter().map(load_pair).collect::<Result<Vec<_>>>()?;
        let listed = pairs.len();
        // lbd's own ACME certificate once it has one, after the listed ones: it serves its names
        // (and is the default only without them). One that does not load is ordered again.
        if let Some(files) = tls.acme.as_ref().map(Acme::files).filter(|f| f.cert.exists()) {
            match load_pair(&files) {
                Ok(pair) => pairs.push(pair),
                Err(err) => log::warn!("ACME certificate {}: not served: {err}", files.cert.display()),
            }
        }
        let mut served = Vec::new();
        for (i, (certified, names, until)) in pairs.into_iter().enumerate() {
            served.push(Served {
                name: names.iter().min().cloned().unwrap_or_else(|| "-".into()),
                names: names.len(),
                not_after: validity::of_der(&certified.cert[0]).map(|(_, not_after)| not_after),
                stapled: certified.ocsp.is_some().then_some(until),
                acme: i >= listed,
            });
            stale_at = stale_at.into_iter().chain(until).min();
            default.get_or_insert_with(|| certified.clone());
            for name in names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.insert(parent.to_owned(), certified.clone()),
                    None => exact.insert(name, certified.clone()),
                };
            }
        }
        if default.is_none() && tls.acme.is_none() {
            return Err(TlsError::Empty);
        }
        Ok(CertStore { exact, wildcard, default, stale_at, served })
    }

    /// The certificate for a server name (None: the listener has none yet).
    pub fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name.map(str::to_ascii_lowercase) else { return self.default.clone() };
        if let Some(c) = self.exact.get(&name) {
            return Some(c.clone());
        }
        let mut rest = name.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(c) = self.wildcard.get(parent) {
                return Some(c.clone());
            }
            rest = parent;
        }
        self.default.clone()
    }
}

/// SNI resolver over a store that can be swapped while connections are accepted, and the
/// answers to an ACME CA's TLS-ALPN-01 validations of lbd's orders in flight (shared by every
/// listener: a CA may validate a name at any of its addresses).
#[derive(Debug)]
pub struct Resolver {
    pub store: ArcSwap<CertStore>,
    challenges: Arc<acme::Challenges>,
}

impl Resolver {
    pub fn new(store: CertStore, challenges: Arc<acme::Challenges>) -> Resolver {
        Resolver { store: ArcSwap::from_pointee(store), challenges }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Only a CA's validation asks for `acme-tls/1` (and only then is it on offer, below).
        if hello.alpn().is_some_and(|mut offered| offered.any(|p| p == acme::ALPN)) {
            return self.challenges.answer(hello.server_name());
        }
        self.store.load().pick(hello.server_name())
    }
}

/// The suites a listener offers, in the order the server picks them: the listener's
/// `cipher_suites` if it lists any, else ring's suites with
/// the AES-128-GCM ones first (TLS 1.3's, then TLS 1.2's). OpenSSL's clients (curl, wrk, h2load,
/// most API clients) ask for AES-256-GCM-SHA384 first, whose key schedule and transcript hash
/// run SHA-512 in software (~12% of a handshake's CPU here, on both ends), where SHA-256 has
/// the CPU's SHA extensions; AES-128 also takes fewer rounds per record. Every suite stays on
/// offer: a client without AES-128-GCM gets what it asks for. (HAProxy too picks by server
/// order by default; nginx by the client's.)
fn provider(listed: &[rustls::SupportedCipherSuite]) -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS13_AES_128_GCM_SHA256,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    if !listed.is_empty() {
        provider.cipher_suites = listed.to_vec();
        return provider;
    }
    let aes_128 = [
        TLS13_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    // A stable sort: the AES-128 suites keep their order, and so do the rest.
    provider
        .cipher_suites
        .sort_by_key(|s| aes_128.iter().position(|&a| a == s.suite()).unwrap_or(aes_128.len()));
    provider
}

/// A listener's rustls config over `resolver`, for TCP: TLS 1.3 and 1.2, ALPN h2 and
/// http/1.1 (and ACME's on listeners that order their certificate).
pub fn server_config(tls: &Tls, resolver: Arc<Resolver>) -> Result<Arc<ServerConfig>> {
    let mut config = config(tls, resolver, &[&rustls::version::TLS13, &rustls::version::TLS12])?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if tls.acme.is_some() {
        config.alpn_protocols.push(acme::ALPN.to_vec());
    }
    Ok(Arc::new(config))
}

/// A listener's rustls config over `resolver` for HTTP/3 over QUIC (`http3 = true`): the same
/// certificates, suites and client certificates, TLS 1.3 alone (QUIC has no other, RFC 9001
/// §4.2), ALPN h3 alone, no early data (0-RTT requests could be replayed).
pub fn quic_config(tls: &Tls, resolver: Arc<Resolver>) -> Result<quinn::crypto::rustls::QuicServerConfig> {
    let mut config = config(tls, resolver, &[&rustls::version::TLS13])?;
    config.alpn_protocols = vec![b"h3".to_vec()];
    config.max_early_data_size = 0;
    // QUIC's Initial packets are sealed with TLS13_AES_128_GCM_SHA256 whatever is listed (the
    // config refuses `http3` with a list of suites without it).
    quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(config))
        .map_err(|error| TlsError::Quic(error.to_string()))
}

/// What the TCP and QUIC configs share: the suites in the server's order, the `versions` they
/// serve, client certificates, session tickets.
fn config(
    tls: &Tls,
    resolver: Arc<Resolver>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<ServerConfig> {
    let provider = Arc::new(provider(&tls.cipher_suites));
    // Only the versions the suites serve (a list of TLS 1.2 suites alone turns TLS 1.3 off).
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = versions
        .iter()
        .copied()
        .filter(|v| provider.cipher_suites.iter().any(|s| s.version() == *v))
        .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(pem("reading", ca))? {
                roots.add(cert.map_err(pem("parsing", ca))?)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    // The suite is the server's pick (`provider`), not the client's.
    config.ignore_client_order = true;
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    // One TLS 1.3 ticket per connection (rustls and OpenSSL send two): a client resuming one
    // connection after another needs one, and each new connection brings its own. The second
    // ticket cost the client a message to process on every handshake: 3.86-3.89k -> 4.10-4.21k
    // new handshakes a second when the client is the bottleneck (docs/performance.md).
    config.send_tls13_tickets = 1;
    Ok(config)
}

/// The stamps of a listener's certificate files (keys and OCSP responses too), in order.
pub fn files_stamp(tls: &Tls) -> Vec<Option<crate::config::FileStamp>> {
    let ordered = tls.acme.as_ref().map(Acme::files);
    tls.certificates
        .iter()
        .chain(ordered.iter())
        .flat_map(|files| [Some(&files.cert), Some(&files.key), files.ocsp.as_ref()])
        .flatten()
        .map(|p: &PathBuf| crate::config::stamp(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener's certificate replaced by one with an older time than its key's (`rsync -t`
    /// keeps the source's) changes what the watch compares.
    #[test]
    fn a_certificate_replaced_with_an_older_time_is_seen() {
        let responder = ocsp::tests::Responder::new("stamps");
        let tls = Tls {
            certificates: vec![CertFiles {
                cert: responder.leaf_pem.clone(),
                key: responder.leaf_key.clone(),
                ocsp: None,
            }],
            client_ca: None,
            cipher_suites: Vec::new(),
            forward_client_cert: false,
            forward_client_cert_details: Default::default(),
            acme: None,
            http3: None,
        };
        // The newest modification time, which the watch compared before: it does not move.
        let newest = |tls: &Tls| {
            [&tls.certificates[0].cert, &tls.certificates[0].key]
                .iter()
                .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
                .max()
        };
        let (before, newest_before) = (files_stamp(&tls), newest(&tls));
        assert!(before.iter().all(Option::is_some));
        let staged = responder.dir.join("leaf.pem.new");
        std::fs::copy(&responder.leaf_pem, &staged).unwrap();
        let older = SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&staged).unwrap().set_modified(older).unwrap();
        std::fs::rename(&staged, &responder.leaf_pem).unwrap();
        assert_eq!(newest(&tls), newest_before);
        assert_ne!(files_stamp(&tls), before);
    }

    #[test]
    fn a_good_ocsp_response_is_stapled_and_the_store_knows_when_it_goes_stale() {
        let responder = ocsp::tests::Responder::new("store");
        let files = |ocsp: Option<PathBuf>| Tls {
            certificates: vec![CertFiles {
                cert: responder.leaf_pem.clone(),
                key: responder.leaf_key.clone(),
                ocsp,
            }],
            client_ca: None,
            cipher_suites: Vec::new(),
            forward_client_cert: false,
            forward_client_cert_details: Default::default(),
            acme: None,
            http3: None,
        };
        let store = CertStore::load(&files(Some(responder.respond("fresh", Some('V'), 10)))).unwrap();
        let stapled = store.pick(Some("stapled.test")).unwrap();
        // Its expiry, for the metrics (rcgen's default not-after: the year 4096).
        let [served] = &store.served[..] else { panic!("{:?}", store.served) };
        assert_eq!((served.name.as_str(), served.names, served.acme), ("stapled.test", 1, false));
        assert!(
            served.not_after.unwrap()
                > SystemTime::now() + std::time::Duration::from_secs(1000 * 365 * 86400)
        );
        assert_eq!(served.stapled, Some(store.stale_at));
        assert!(stapled.ocsp.as_ref().is_some_and(|der| !der.is_empty()));
        let left = store.stale_at.unwrap().duration_since(SystemTime::now()).unwrap();
        assert!(left > std::time::Duration::from_secs(8 * 60), "{left:?}");
        // Revoked: served, with no staple and nothing to watch for.
        let store = CertStore::load(&files(Some(responder.respond("revoked", Some('R'), 10)))).unwrap();
        assert!(store.pick(None).unwrap().ocsp.is_none() && store.stale_at.is_none());
        assert_eq!(store.served[0].stapled, None);
        // Another file than an OCSP response: the certificate serves, unstapled.
        let store = CertStore::load(&files(Some(responder.leaf_key.clone()))).unwrap();
        assert!(store.pick(None).unwrap().ocsp.is_none() && store.stale_at.is_none());
    }

    fn names(provider: &rustls::crypto::CryptoProvider) -> Vec<String> {
        provider.cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect()
    }

    #[test]
    fn the_server_picks_aes_128_first_unless_the_listener_lists_its_own_order() {
        let default = names(&provider(&[]));
        assert_eq!(default.len(), rustls::crypto::ring::default_provider().cipher_suites.len());
        let aes_128 = [
            "TLS13_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ];
        assert_eq!(default[..3], aes_128, "{default:?}");
        assert_eq!(default[3], "TLS13_AES_256_GCM_SHA384", "the rest in rustls's order: {default:?}");
        use rustls::crypto::ring::cipher_suite::{TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256};
        let listed = [TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_256_GCM_SHA384];
        assert_eq!(names(&provider(&listed)), ["TLS13_CHACHA20_POLY1305_SHA256", "TLS13_AES_256_GCM_SHA384"]);
    }
}
