//! The TOML config: the typed model the daemon runs with (this file), read from the file by
//! `files`, deserialized into `raw` structs, turned into the model by `validate`, which
//! reports every error with its file and line (`errors`).
use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

mod errors;
mod files;
mod raw;
mod validate;

pub use errors::{ConfigError, ConfigErrors};
pub use files::{FileStamp, MAX_FILE_BYTES, open_regular, read_file, stamp, writable_folder};
use raw::{
    RawConfig, default_cache_bytes, default_cache_entries, default_cache_object, default_max_ejection_ms,
};
use validate::{Errors, blank_section, validate};

/// How to attach XDP to the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Driver mode; fail if the driver cannot do it.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
    /// Native, falling back to generic with a logged reason.
    #[default]
    Auto,
}

/// L4 protocol of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Its name as the config writes it (`tcp`, `udp`).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// Who handles a VIP's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VipMode {
    /// Balanced in XDP and encapsulated to a backend (direct server return).
    #[default]
    L4,
    /// Passed up to the kernel stack for lbd's TLS/HTTP proxy.
    L7,
}

impl VipMode {
    /// Its name as the config writes it (`l4`, `l7`).
    pub fn name(self) -> &'static str {
        match self {
            VipMode::L4 => "l4",
            VipMode::L7 => "l7",
        }
    }
}

/// Default backend weight.
pub const DEFAULT_WEIGHT: u32 = 100;

/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 65535;

/// The most, in percent, a route's split sends to other pools: each share and all of them
/// together (the rest stays on the route's own pool). The config's check and `SetSplit`'s.
pub const MAX_SPLIT_PERCENT: f64 = 100.0;

/// Whether `percent` can be a split's share (0 to `MAX_SPLIT_PERCENT`; NaN cannot).
pub fn is_split_share(percent: f64) -> bool {
    (0.0..=MAX_SPLIT_PERCENT).contains(&percent)
}

/// A route's response cache.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: usize,
    #[serde(default = "default_cache_object")]
    pub max_object_bytes: usize,
    /// How long past its lifetime a stored answer may be served while one request fetches it
    /// again in the background, for answers that say nothing of it (RFC 5861's
    /// `stale-while-revalidate`, which an answer's own Cache-Control overrides).
    #[serde(default)]
    pub stale_while_revalidate_s: u32,
    /// How long past its lifetime a stored answer may be served when fetching it again fails
    /// (RFC 5861's `stale-if-error`; nginx's `proxy_cache_use_stale error timeout http_5xx`).
    #[serde(default)]
    pub stale_if_error_s: u32,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig {
            max_entries: default_cache_entries(),
            max_bytes: default_cache_bytes(),
            max_object_bytes: default_cache_object(),
            stale_while_revalidate_s: 0,
            stale_if_error_s: 0,
        }
    }
}

/// A route's answers gzipped for clients that accept it (`compress`), as nginx's `gzip` and
/// Envoy's compressor: answers of these media types, at least `min_bytes` long when their
/// length is known, at `level` (1 fastest, 9 smallest; nginx's default is 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressConfig {
    pub types: Vec<String>,
    pub min_bytes: u64,
    pub level: u32,
}

/// A route's CORS policy (the Fetch standard's; Envoy's `cors`): the origins whose pages may
/// read its answers, and what their calls may use. Validated: origins are `*` alone or
/// lowercase `scheme://host[:port]` (a host may begin with `*.`); methods are tokens, header
/// names lowercase, either list may be `*`; no `*` anywhere with `allow_credentials`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age_s: Option<u64>,
    pub allow_credentials: bool,
}

/// API keys: presented in a header or a query parameter, accepted from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyConfig {
    pub header: Option<String>,
    pub query: Option<String>,
    pub file: PathBuf,
}

/// Basic auth (RFC 7617): users and their password hashes from an htpasswd file, re-read when
/// it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuthConfig {
    pub file: PathBuf,
    /// Named to clients in `WWW-Authenticate`.
    pub realm: String,
    /// Pass the user's name to the backend in this header (the client's own is removed).
    pub user_header: Option<String>,
}

/// A JWT signature algorithm (the names RFC 7518 and RFC 8037 give them): HMAC with a shared
/// secret, RSA (PKCS#1 v1.5 or PSS), ECDSA on P-256 or P-384, or Ed25519.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    /// Whether tokens are signed with a shared secret (HMAC), not a key pair.
    pub fn is_hmac(self) -> bool {
        matches!(self, JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512)
    }

    /// The algorithm as the JWT library names it.
    pub fn library(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            JwtAlgorithm::HS256 => A::HS256,
            JwtAlgorithm::HS384 => A::HS384,
            JwtAlgorithm::HS512 => A::HS512,
            JwtAlgorithm::RS256 => A::RS256,
            JwtAlgorithm::RS384 => A::RS384,
            JwtAlgorithm::RS512 => A::RS512,
            JwtAlgorithm::PS256 => A::PS256,
            JwtAlgorithm::PS384 => A::PS384,
            JwtAlgorithm::PS512 => A::PS512,
            JwtAlgorithm::ES256 => A::ES256,
            JwtAlgorithm::ES384 => A::ES384,
            JwtAlgorithm::EdDSA => A::EdDSA,
        }
    }
}

/// JWT bearer tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    /// The HMAC (HS256, HS384, HS512) secret.
    pub secret: Option<String>,
    /// The public key (PEM) of the other algorithms.
    pub key_file: Option<PathBuf>,
    /// A JWK Set file: the keys a token's `kid` chooses from (`jwk_set`), re-read when it
    /// changes.
    pub jwks_file: Option<PathBuf>,
    /// A JWK Set's https URL (an identity provider's `jwks_uri`), fetched every
    /// `jwks_refresh_s` and soon after a token names a key the set lacks.
    pub jwks_url: Option<String>,
    /// The CA that signs `jwks_url`'s server (default: the system's roots).
    pub jwks_ca: Option<PathBuf>,
    pub jwks_refresh_s: Option<u32>,
    pub issuer: Option<String>,
    /// The audiences a token may be for (one of them must be in its `aud`); empty: any.
    /// `audience = "api"` or `audience = ["api", "admin"]`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// Pass the verified subject (`sub`) to the backend in this header.
    pub subject_header: Option<String>,
    /// Pass these claims of a verified token to the backend, each in its header (claim name →
    /// header name; Envoy's `claim_to_headers`).
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
}

impl JwtConfig {
    /// The key tokens are verified with: the HMAC secret, or the public key read from its PEM
    /// file (config validation and the proxy both build it here).
    pub fn decoding_key(&self) -> Result<jsonwebtoken::DecodingKey, JwtKeyError> {
        use jsonwebtoken::DecodingKey;
        let pem = || -> Result<Vec<u8>, JwtKeyError> {
            let file = self.key_file.as_ref().ok_or(JwtKeyError::NoKeyFile)?;
            files::read_file(file)
                .map(String::into_bytes)
                .map_err(|error| JwtKeyError::Unreadable { file: file.clone(), error: error.to_string() })
        };
        use JwtAlgorithm as A;
        match self.algorithm {
            A::HS256 | A::HS384 | A::HS512 => match self.secret.as_deref() {
                Some(secret) if !secret.is_empty() => Ok(DecodingKey::from_secret(secret.as_bytes())),
                _ => Err(JwtKeyError::NoSecret),
            },
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
                Ok(DecodingKey::from_rsa_pem(&pem()?)?)
            }
            A::ES256 | A::ES384 => Ok(DecodingKey::from_ec_pem(&pem()?)?),
            A::EdDSA => Ok(DecodingKey::from_ed_pem(&pem()?)?),
        }
    }

    /// How often `jwks_url` is fetched again (Envoy's `cache_duration` is 10 minutes too).
    pub fn jwks_refresh(&self) -> Duration {
        Duration::from_secs(self.jwks_refresh_s.unwrap_or(DEFAULT_JWKS_REFRESH_S).into())
    }
}

/// A string, or a list of them.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// `jwks_refresh_s`'s default and bounds.
pub const DEFAULT_JWKS_REFRESH_S: u32 = 600;
pub const JWKS_REFRESH_S: std::ops::RangeInclusive<u32> = 10..=86_400;

/// Why a route's JWT key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    #[error("an HMAC algorithm (HS256, HS384, HS512) needs a secret")]
    NoSecret,
    #[error("key_file required")]
    NoKeyFile,
    #[error("cannot read {}: {error}", file.display())]
    Unreadable { file: PathBuf, error: String },
    #[error("key_file: {0}")]
    NotAKey(#[from] jsonwebtoken::errors::Error),
}

/// What a rate limit counts per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    #[default]
    ClientIp,
    /// The API key the request presented (needs the route's `api_key`).
    ApiKey,
    /// The verified `sub` of the request's JWT (needs the route's `jwt`; tokens without one
    /// share a bucket).
    JwtSubject,
    /// The whole route.
    Route,
    /// The value of the request's field `header` (a tenant or a user a proxy in front names;
    /// Kong's `limit_by = "header"`); a request without it counts by its client address.
    Header,
}

/// What a route's `retries` retry (Envoy's `retry_on`, HAProxy's `retry-on`): an exchange that
/// broke once connected (`reset`: a reset, a close before the answer), and answers with these
/// statuses. By default both, with 502, 503 and 504.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    pub reset: bool,
    pub statuses: Vec<u16>,
}

impl RetryOn {
    /// Whether a try past its own timeout is retried: it got no answer, as a reset gets none,
    /// and stands for the 504 the client would get (Envoy retries it under both).
    pub fn late(&self) -> bool {
        self.reset || self.statuses.contains(&504)
    }
}

impl Default for RetryOn {
    fn default() -> RetryOn {
        RetryOn { reset: true, statuses: vec![502, 503, 504] }
    }
}

/// A token bucket: `requests_per_second` sustained, `burst` at once; over it, 429.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: f64,
    pub key: RateKey,
    /// The field counted by with `key = "header"`.
    pub header: Option<hyper::header::HeaderName>,
    /// The route's listener's `client_ipv6_prefix`: IPv6 clients' buckets are by this prefix.
    pub ipv6_prefix: u8,
    /// Answers tell the client its bucket (`RateLimit-Limit`, `-Remaining`, `-Reset`).
    pub headers: bool,
}

/// A static answer when no backend can take the request (none usable, or all tries failed).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub content_type: Option<String>,
}

/// What a route answers by itself, sending nothing to a pool (`redirect` or `respond`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnAnswer {
    /// `status` (301, 302, 303, 307 or 308) to `Location: to`; with `prefix`, `to` followed by
    /// the path a backend would get and the query (HAProxy's `redirect prefix`).
    Redirect { status: u16, to: String, prefix: bool },
    /// A fixed answer (nginx's `return`, Envoy's `direct_response`).
    Respond(Fallback),
}

/// How access-log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// `key=value` pairs, values quoted and escaped when they need it.
    #[default]
    Logfmt,
    /// One JSON object per line.
    Json,
}

/// Which requests leave an access-log line (`access_log_filter`, Envoy's access log filters
/// joined by `or`): those answered with a status of at least `status_at_least`, those slower
/// than `slower_than`, and a `sample_percent` share of the rest (by request ID, so the same
/// requests are sampled on every host an ID crosses). None of them given: every request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogFilter {
    pub status_at_least: Option<u16>,
    pub slower_than: Option<Duration>,
    pub sample_percent: Option<f64>,
}

/// An L7 listener: TLS or plain HTTP, on lbd's own socket.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: std::net::SocketAddr,
    /// Certificates chosen by SNI; the first is the default.
    pub tls: Option<Tls>,
    /// Plain HTTP only: answer every request with a redirect to https.
    pub redirect_https: bool,
    pub access_log: bool,
    pub access_log_format: AccessLogFormat,
    /// Which requests are logged (None: every one).
    pub access_log_filter: Option<LogFilter>,
    pub max_connections: usize,
    /// Connections one client address may have open at once; None: no limit of its own.
    pub max_connections_per_client: Option<u32>,
    /// IPv6 clients are counted by this prefix of their address (default 64: one client's
    /// network) by `max_connections_per_client` and the routes' `rate_limit`s by client.
    pub client_ipv6_prefix: u8,
    pub header_read_timeout: Duration,
    /// A TLS handshake not done by then is dropped.
    pub handshake_timeout: Duration,
    /// A connection whose first request has not begun by then is closed.
    pub first_byte_timeout: Duration,
    /// The kernel hands a connection to lbd once its first bytes arrive (`TCP_DEFER_ACCEPT`),
    /// or after about a second without any.
    pub defer_accept: bool,
    /// A connection with no request in flight and no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// A connection with a request in flight (or a tunnel after `101`) and no byte either way
    /// for this long is closed (Envoy's stream idle timeout; HAProxy's `timeout client` and
    /// `timeout tunnel`, nginx's `send_timeout`).
    pub stream_idle_timeout: Duration,
    /// A client connection older than this (±10%) is retired: an HTTP/1.1 one closes after its
    /// next answer, an HTTP/2 one gets GOAWAY at a quiet moment (gRPC's `MAX_CONNECTION_AGE`,
    /// Envoy's `max_connection_duration`, nginx's `keepalive_time`). None: never.
    pub max_connection_age: Option<Duration>,
    /// Streams an HTTP/2 client may have open at once on one connection (SETTINGS).
    pub http2_max_concurrent_streams: u32,
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    /// On SIGTERM, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
    /// Behind trusted proxies: where a request's client address is read from.
    pub client_address: Option<ClientAddress>,
    /// Every connection begins with a PROXY protocol header (v1 or v2) from a balancer in
    /// front, whose source address is the client's (HAProxy's `accept-proxy`).
    pub proxy_protocol: bool,
    /// The pages sent in place of the plain text of the errors lbd makes itself, by status
    /// (nginx's `error_page`, HAProxy's `errorfile`); in status order. A reload applies them.
    pub error_pages: Vec<ErrorPage>,
}

/// A listener's page for one status of the errors lbd makes itself (not a backend's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPage {
    pub status: u16,
    /// Read when the snapshot is first built with it, and again when it changes.
    pub file: PathBuf,
    /// By the file's extension.
    pub content_type: &'static str,
}

/// The largest error page: a page, not a site; kept in memory and sent in one write.
pub const MAX_ERROR_PAGE_BYTES: usize = 64 * 1024;

/// An error page file's text as it is sent, or why it cannot be (over `MAX_ERROR_PAGE_BYTES`).
pub fn error_page_body(text: &str) -> Result<bytes::Bytes, String> {
    match text.len() {
        n if n > MAX_ERROR_PAGE_BYTES => {
            Err(format!("{n} bytes, over the {MAX_ERROR_PAGE_BYTES} an error page may have"))
        }
        _ => Ok(bytes::Bytes::copy_from_slice(text.as_bytes())),
    }
}

impl Listener {
    /// The listener as binding and serving it depend on: its settings but for the error pages,
    /// which a reload applies (a change of the rest needs a restart).
    pub fn bound_settings(&self) -> Listener {
        Listener { error_pages: Vec::new(), ..self.clone() }
    }
}

/// A request's client address as trusted proxies in front forward it (nginx's `realip`):
/// taken from `header` when the connection comes from one of `trusted`. From
/// X-Forwarded-For, it is the last address of the list that is not a trusted proxy's.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientAddress {
    /// Lowercase: `x-forwarded-for`, or a field of one address (`x-real-ip`).
    pub header: hyper::header::HeaderName,
    pub trusted: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// Certificate chains with their keys, chosen by SNI.
    pub certificates: Vec<CertFiles>,
    /// Require client certificates signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
    /// The cipher suites offered, in the order the server picks them (named in the config as
    /// rustls names them, `TLS13_AES_128_GCM_SHA256`); empty: AES-128-GCM first, then rustls's
    /// order.
    pub cipher_suites: Vec<rustls::SupportedCipherSuite>,
    /// Tell backends the client's certificate (`X-Forwarded-Client-Cert`; with `client_ca`).
    pub forward_client_cert: bool,
    /// What the field carries beside the hash, subject and names.
    pub forward_client_cert_details: ClientCertDetails,
    /// A certificate for these names from an ACME CA, kept renewed (`proxy::acme`).
    pub acme: Option<Acme>,
    /// HTTP/3 over QUIC on the listener's UDP port too (`proxy::h3`).
    pub http3: Option<Http3>,
}

/// A listener's HTTP/3: served on the same address's UDP port, and made known to its TCP
/// clients by `Alt-Svc` (RFC 7838), since a browser tries HTTP/3 only once told of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Http3 {
    /// `h3=":PORT"; ma=SECONDS`, added to every answer over TCP; None: not said (`alt_svc_max_age_s = 0`).
    pub alt_svc: Option<hyper::header::HeaderValue>,
    /// When a new QUIC connection must first prove its address with a Retry.
    pub retry: Http3Retry,
}

/// When a QUIC handshake gets a Retry (RFC 9000 §8.1.2): its client must echo a token to show
/// that it receives at its source address, which costs a round trip, and a flood of Initials
/// from spoofed addresses nothing but the Retries (HAProxy's `quic-force-retry` and
/// `tune.quic.retry-threshold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http3Retry {
    /// Once more handshakes are in progress than `server::http3::RETRY_THRESHOLD`.
    #[default]
    UnderLoad,
    Always,
}

/// The client certificate's PEM in X-Forwarded-Client-Cert (Envoy's
/// `set_current_client_cert_details`): the certificate itself (`Cert=`), and the chain it
/// showed (`Chain=`), each URL-encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCertDetails {
    pub cert: bool,
    pub chain: bool,
}

/// A listener's certificate from an ACME CA (RFC 8555: Let's Encrypt, ZeroSSL, a company's
/// own), ordered when there is none or it is two-thirds through its life, proved by TLS-ALPN-01
/// (RFC 8737) on the listener itself, so only its port 443 is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The CA's directory URL (https).
    pub directory: String,
    /// The account's contact URLs (`mailto:ops@example.com`); may be none.
    pub contact: Vec<String>,
    /// The names the certificate is for, lowercase (no wildcard: TLS-ALPN-01 cannot prove one).
    pub names: Vec<String>,
    /// Where the account key and certificate are kept: `<state>/<least name>/`, one folder
    /// (and one order) for every listener asking for the same certificate.
    pub folder: PathBuf,
    /// The CA the directory's own HTTPS certificate is checked against, in place of the
    /// system's roots (a private or test CA such as Pebble's).
    pub directory_ca: Option<PathBuf>,
    /// The CA's external account the new account is bound to (RFC 8555 §7.3.4: ZeroSSL,
    /// Google Trust Services, most company CAs): its key ID and HMAC key.
    pub external_account: Option<ExternalAccount>,
    /// How the CA is shown that lbd holds each name.
    pub challenge: AcmeChallenge,
}

/// How an ACME CA validates a name (RFC 8555 §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum AcmeChallenge {
    /// A TLS handshake to the name's port 443 with ALPN `acme-tls/1` (RFC 8737), answered by
    /// the listener itself.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// `GET http://NAME/.well-known/acme-challenge/TOKEN` on port 80, answered by any plain
    /// listener on port 80 (HAProxy's and nginx's `acme`).
    #[serde(rename = "http-01")]
    Http01,
}

/// An ACME CA's external account binding: a key ID and an HMAC key, as the CA hands them out.
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalAccount {
    pub kid: String,
    /// The HMAC key's bytes (decoded from the base64url the CA gives).
    pub hmac_key: Vec<u8>,
}

impl std::fmt::Debug for ExternalAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never in a log or a debug dump.
        f.debug_struct("ExternalAccount").field("kid", &self.kid).field("hmac_key", &"REDACTED").finish()
    }
}

impl Acme {
    /// The certificate (its chain) and key lbd keeps, there once ordered.
    pub fn files(&self) -> CertFiles {
        CertFiles { cert: self.folder.join("cert.pem"), key: self.folder.join("key.pem"), ocsp: None }
    }
}

/// A listener certificate's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The chain, PEM, the leaf first.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// An OCSP response about the leaf (DER, as `openssl ocsp -respout` writes it), stapled to
    /// handshakes (nginx's `ssl_stapling_file`, HAProxy's `.ocsp` file).
    pub ocsp: Option<PathBuf>,
}

/// An L7 route: the first route of a listener that matches a request wins.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// For metrics and logs; default `LISTENER#N` (N: its place among the listener's routes).
    pub name: String,
    pub listener: String,
    /// Exact host, or `*.example.com` for any one-or-more-label subdomain.
    pub host: Option<String>,
    pub path: PathMatch,
    /// With a `path_prefix`: what replaces the prefix in the path the backend gets.
    pub rewrite_prefix: Option<String>,
    pub method: Option<String>,
    /// Headers that must be present with these values.
    pub headers: BTreeMap<String, String>,
    /// Cookies that must be present with these values (A/B routing).
    pub cookies: BTreeMap<String, String>,
    /// Query parameters that must be present with these values, as sent (`?version=2`).
    pub query: BTreeMap<String, String>,
    /// The client addresses it takes (prefixes; empty: any), the one behind trusted proxies
    /// where the listener has them (HAProxy's `use_backend … if { src … }`).
    pub clients: Vec<IpNet>,
    /// With `split`: a client keeps the pool it was first given (cookie `sluice_pool`).
    pub sticky: bool,
    /// Where the route sends its requests; None when it answers them itself (`answer`).
    pub pool: Option<String>,
    /// What the route answers with, in place of a pool's backends.
    pub answer: Option<OwnAnswer>,
    /// The whole request, upstream included, every try; over it the client gets 504.
    pub timeout: Duration,
    /// One try, until the backend's response head (`try_timeout_ms`; Envoy's
    /// `per_try_timeout`): past it the try has failed and may be retried on another backend.
    pub try_timeout: Option<Duration>,
    /// The longest request body this route takes, in place of the listener's.
    pub max_body_bytes: Option<u64>,
    /// Share (percent) of requests sent to other pools instead of `pool` (canary, blue-green).
    pub split: Vec<(String, f64)>,
    /// Client addresses allowed (empty: all) and denied; others get 403.
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub rate_limit: Option<RateLimit>,
    /// Extra tries on another backend after what `retry_on` names, for requests of idempotent
    /// methods whose body (if any) fits `retry_buffer_bytes` (a backend that cannot be reached
    /// gets no request, which goes to another backend whatever it is, retries or not).
    pub retries: u32,
    /// What `retries` retry.
    pub retry_on: RetryOn,
    /// Retries stay under this share of the route's requests (plus a few), so they never
    /// multiply an outage's load.
    pub retry_budget_percent: f64,
    /// A request body up to this long is kept while it is sent, so that a retry, or another
    /// backend after an HTTP/2 backend refused it unprocessed, can be sent it too (0: none).
    pub retry_buffer_bytes: usize,
    pub fallback: Option<Fallback>,
    pub api_key: Option<ApiKeyConfig>,
    pub jwt: Option<JwtConfig>,
    pub basic_auth: Option<BasicAuthConfig>,
    /// Mirror this share (percent) of bodiless requests to another pool; its answers are
    /// discarded and never wait for or change the client's.
    pub shadow: Option<Shadow>,
    pub cache: Option<CacheConfig>,
    pub compress: Option<CompressConfig>,
    /// Fields edited on the request the backend gets (`request_headers`).
    pub request_headers: HeaderEdits,
    /// Fields edited on the answer the client gets from a backend or the cache
    /// (`response_headers`).
    pub response_headers: HeaderEdits,
    /// Browsers' gRPC-Web calls go to the pool (h2/h2c) as gRPC, their answers back as
    /// gRPC-Web (Envoy's grpc_web filter).
    pub grpc_web: bool,
    /// Which other sites' pages may call the route from a browser (`phase::cors`).
    pub cors: Option<CorsConfig>,
    /// false: the route's requests leave no access-log line (health checks, static files), as
    /// nginx's `access_log off` in a `location`; they are still counted.
    pub access_log: bool,
    /// A backend's error answer goes to the client as the listener's page for its status, when
    /// it has one (nginx's `proxy_intercept_errors on`).
    pub intercept_errors: bool,
    /// A share of its requests delayed or refused before a backend sees them (`phase::fault`).
    pub fault: Option<Fault>,
}

/// Faults a route injects (Envoy's fault injection), each into its share of the requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// How long, and the share (percent) of requests held that long first.
    pub delay: Option<(Duration, f64)>,
    /// The status, and the share (percent) of requests answered with it (no backend asked).
    pub abort: Option<(u16, f64)>,
}

/// A route's `fault` as the file and `lbctl route fault` give it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_percent: Option<f64>,
}

impl FaultSpec {
    /// The fault, or why this is none: a delay of 1 ms to a minute, an abort status of 400 to
    /// 599, each with its share (0 to 100, 100 when not given); a share only with its fault,
    /// and one fault at least.
    pub fn check(&self) -> Result<Fault, String> {
        let share = |percent: Option<f64>, what: &str| match percent.unwrap_or(100.0) {
            p if (0.0..=100.0).contains(&p) => Ok(p),
            _ => Err(format!("{what}_percent must be 0 to 100")),
        };
        if self.delay_percent.is_some() && self.delay_ms.is_none() {
            return Err("delay_percent needs delay_ms".into());
        }
        if self.abort_percent.is_some() && self.abort_status.is_none() {
            return Err("abort_percent needs abort_status".into());
        }
        let delay = match self.delay_ms {
            Some(ms) if !(1..=60_000).contains(&ms) => return Err("delay_ms must be 1 to 60000".into()),
            Some(ms) => Some((Duration::from_millis(ms), share(self.delay_percent, "delay")?)),
            None => None,
        };
        let abort = match self.abort_status {
            Some(status) if !(400..=599).contains(&status) => {
                return Err("abort_status must be 400 to 599".into());
            }
            Some(status) => Some((status, share(self.abort_percent, "abort")?)),
            None => None,
        };
        if delay.is_none() && abort.is_none() {
            return Err("give delay_ms, abort_status or both".into());
        }
        Ok(Fault { delay, abort })
    }
}

/// A route's shadow copies: a share of its requests copied to another pool, whose answers are
/// counted and dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    pub pool: String,
    /// The share (percent) of requests copied.
    pub percent: f64,
    /// The longest request body copied (a request with a longer one is not).
    pub max_body_bytes: usize,
}

/// A route's edits of one direction's fields, as HAProxy's `set-header` and `del-header`:
/// the fields named in `remove` are dropped, then each of `set` replaces every field of its
/// name. Names are lowercase; none is a field lbd frames or sets itself (validated).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderEdits {
    pub set: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    pub remove: Vec<hyper::header::HeaderName>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// Passive outlier ejection: a backend that fails this many requests in a row (connect error
/// or 5xx) is marked down (for L4 too) for `ejection_ms`, longer each time it happens again,
/// never longer than `max_ejection_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Outlier {
    pub consecutive_failures: u32,
    pub ejection_ms: u64,
    #[serde(default = "default_max_ejection_ms")]
    pub max_ejection_ms: u64,
}

impl Outlier {
    /// How long the `times`th ejection in a row lasts.
    pub fn ejection_time(&self, times: u32) -> Duration {
        Duration::from_millis(self.ejection_ms.saturating_mul(times as u64).min(self.max_ejection_ms))
    }
}

/// A PROXY protocol version a pool's backends read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyVersion {
    /// The text header (`PROXY TCP4 …`).
    V1,
    /// The binary header.
    V2,
}

/// How the L7 proxy talks to a pool's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (requests from HTTP/2 clients are translated).
    #[default]
    Http1,
    /// Cleartext HTTP/2 with prior knowledge: gRPC, trailers.
    H2c,
    /// HTTP/2 over TLS (the pool's `tls`), agreed by ALPN.
    H2,
}

impl UpstreamProtocol {
    pub fn is_http2(self) -> bool {
        self != UpstreamProtocol::Http1
    }
}

/// TLS to a pool's backends (`[pool.tls]`; HAProxy's `ssl` on a server line, nginx's
/// `proxy_pass https://`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendTls {
    /// The CA whose certificates the backends' must chain to; None only with `verify = false`.
    pub ca: Option<PathBuf>,
    /// Whether the backend's certificate is checked (chain and name); false: any is taken.
    pub verify: bool,
    /// The name sent in SNI and checked in the certificate; None: the backend's IP address,
    /// checked against the certificate's IP addresses, and no SNI.
    pub server_name: Option<String>,
    /// The name is each request's host instead (Envoy's `auto_sni`, nginx's `proxy_ssl_name
    /// $host`): each host's connections are its own.
    pub sni_from_host: bool,
    /// A client certificate and its key, for backends that ask for one (mTLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// How the L7 proxy picks a backend inside a pool (L4 VIPs always use Maglev).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The less busy of two random backends (power of two choices).
    LeastRequests,
    /// Consistent hash of `hash_key`: `header:NAME`, `cookie:NAME`, `client_ip`, `path`, `uri`
    /// or `query:NAME`.
    Hash,
}

/// What a consistent-hash pool hashes (`hash_key`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashKey {
    /// `client_ip`: the client's address.
    #[default]
    ClientIp,
    /// `header:NAME`: a request header's value.
    Header(hyper::header::HeaderName),
    /// `cookie:NAME`: a cookie's value.
    Cookie(String),
    /// `path`: the path the backend gets, without the query (HAProxy's `balance uri`).
    Path,
    /// `uri`: the path the backend gets and its query (nginx's `hash $request_uri`).
    Uri,
    /// `query:NAME`: a query parameter's value, as sent (HAProxy's `balance url_param`,
    /// Envoy's `query_parameter`).
    Query(String),
}

impl HashKey {
    /// `client_ip`, `header:NAME`, `cookie:NAME`, `path`, `uri` or `query:NAME`; None for
    /// anything else.
    pub fn parse(text: &str) -> Option<HashKey> {
        match text {
            "client_ip" => return Some(HashKey::ClientIp),
            "path" => return Some(HashKey::Path),
            "uri" => return Some(HashKey::Uri),
            _ => {}
        }
        if let Some(name) = text.strip_prefix("header:") {
            return hyper::header::HeaderName::from_bytes(name.as_bytes()).ok().map(HashKey::Header);
        }
        if let Some(name) = text.strip_prefix("query:") {
            let plain = |c: char| c.is_ascii_graphic() && !matches!(c, '&' | '=' | '#');
            return (!name.is_empty() && name.chars().all(plain)).then(|| HashKey::Query(name.to_owned()));
        }
        let name = text.strip_prefix("cookie:").filter(|n| !n.is_empty() && !n.contains([';', '=', ' ']))?;
        Some(HashKey::Cookie(name.to_owned()))
    }
}

/// How much of an HTTP health check's answer is read for its `expect_body` (Envoy reads 1 KiB
/// by default; a status page is seldom longer than this).
pub const HEALTH_BODY_BYTES: usize = 64 << 10;

/// How a pool's backends are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP connect must succeed.
    Tcp,
    /// A GET of `path` must answer `expect_status` (HTTP/1.1; HTTP/2 where a TLS pool's
    /// backend agrees to it by ALPN).
    Http,
    /// The gRPC health checking protocol (`grpc.health.v1.Health/Check`, h2 and h2c pools):
    /// the backend must answer SERVING.
    Grpc,
}

/// A duration as whole milliseconds (JSON views say `…_ms`, like the config).
fn millis<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(duration.as_millis() as u64)
}

/// Active health checking of a pool.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HealthCheck {
    pub kind: HealthKind,
    pub port: u16,
    pub path: String,
    pub expect_status: u16,
    /// Text an HTTP check's answer must hold within its first `HEALTH_BODY_BYTES` (HAProxy's
    /// `http-check expect string`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
    /// Shown as `interval_ms` and `timeout_ms`, as in the config.
    #[serde(rename = "interval_ms", serialize_with = "millis")]
    pub interval: Duration,
    #[serde(rename = "timeout_ms", serialize_with = "millis")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// An HTTP check's Host (a backend that serves by name); None: the backend's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The service a gRPC check asks about; None: the server as a whole (`""`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// The validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The edge NIC the balancer attaches to.
    /// Whether the host runs the XDP balancer (`[dataplane]`); false: L7 only.
    pub dataplane: bool,
    pub interface: String,
    /// Where `interface` is set in the file (for errors found later, on the host).
    pub interface_line: usize,
    pub xdp_mode: XdpModeSetting,
    /// bpffs directory for the link and maps.
    pub pin_dir: PathBuf,
    /// Destination MAC of encapsulated packets.
    pub next_hop_mac: NextHop,
    /// Outer source addresses: the top 16 (IPv4) / 96 (IPv6) bits, the rest from the flow hash.
    pub encap_source_v4: Ipv4Addr,
    pub encap_source_v6: Ipv6Addr,
    /// VIPs the data plane is sized for.
    pub max_vips: u32,
    /// After a pool change, how long non-SYN packets missing the connection table keep going
    /// to the previous Maglev table's backend.
    pub flow_grace: Duration,
    /// Send encapsulated packets out of this interface (bpf_redirect) instead of XDP_TX.
    pub redirect_interface: Option<String>,
    /// SYNs per source prefix (None: no limit).
    pub syn_limit: Option<SynLimit>,
    pub vips: Vec<Vip>,
    pub pools: BTreeMap<String, Pool>,
    /// Source prefixes dropped in XDP.
    pub deny: Vec<IpNet>,
    /// The admin API's unix socket.
    pub admin_socket: PathBuf,
    /// Where Prometheus metrics are served (TCP).
    pub metrics: Option<std::net::SocketAddr>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    /// How long an L7 worker that ran out of work keeps polling its sockets before it sleeps
    /// (`[proxy] busy_poll_us`, default 40 µs; zero: it sleeps at once). See `proxy::busy_poll`.
    pub busy_poll: Duration,
    /// VIP announcements through BIRD (`[bgp]`); None: nothing is announced.
    pub bgp: Option<Bgp>,
    /// Pools' backends from etcd (`[cluster]`); None: from this file and lbctl only.
    pub cluster: Option<Cluster>,
    /// The DNS servers of pools with `dns` (`[resolver]`); None: /etc/resolv.conf's.
    pub resolver: Option<Resolver>,
}

/// Where the pools' backends come from when several hosts share them: etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `HOST:PORT` of each etcd endpoint (its client URL, plain HTTP), tried in order.
    pub endpoints: Vec<String>,
    /// Key prefix; backends live at `PREFIX/pools/POOL/ADDRESS`. Ends with `/`.
    pub prefix: String,
    /// The VIPs come from etcd too (`PREFIX/vips/NAME`, the `[[vip]]` table's keys as JSON):
    /// etcd's set replaces the file's.
    pub vips: bool,
}

/// How this host announces its VIPs: lbd writes the routes it wants announced into a file that
/// BIRD's config includes, and asks BIRD to reload it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bgp {
    /// The file lbd writes (two BIRD `protocol static` blocks, `sluice_vips4` and
    /// `sluice_vips6`); bird.conf includes it and exports those protocols over BGP.
    pub routes_file: PathBuf,
    /// BIRD's control socket.
    pub control_socket: PathBuf,
    /// The birdc binary.
    pub birdc: PathBuf,
    /// The node is drained: nothing is announced (`lbctl node drain`, written back here).
    pub drained: bool,
    /// On SIGTERM, how long lbd keeps serving after withdrawing, so the router moves the
    /// traffic before the listeners stop.
    pub withdraw_wait: Duration,
}

/// BIRD's default control socket on Debian.
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";

/// Default admin socket.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/sluice/lbd.sock";

/// Where encapsulated packets go at L2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// Not configured: L4 VIP traffic is passed up to the stack instead of forwarded.
    Unset,
    /// The MAC of the interface's IPv4 default gateway, resolved by lbd at start and reload.
    Auto,
    Mac([u8; 6]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub name: String,
    pub addr: IpAddr,
    /// 0: every port.
    pub port: u16,
    pub protocol: Protocol,
    pub pool: String,
    pub mode: VipMode,
    pub drop_fragments: bool,
    /// SYNs answered with SYN cookies in XDP, the connection opened by netfilter's SYNPROXY
    /// (L7 TCP VIPs only).
    pub syn_cookies: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pool {
    pub name: String,
    pub backends: Vec<BackendSpec>,
    pub health: Option<HealthCheck>,
    /// Upstream port for the L7 proxy (L4 forwarding keeps the client's port).
    pub port: u16,
    pub balance: Balance,
    /// For `balance = "hash"`: what is hashed.
    pub hash_key: HashKey,
    pub protocol: UpstreamProtocol,
    /// Circuit breaking: requests in flight per backend at most; past it, another backend or 503.
    pub max_requests_per_backend: Option<usize>,
    /// With `max_requests_per_backend`: requests that may wait (up to the route's timeout) for
    /// a backend under its limit; past them, 503 at once.
    pub max_pending_requests: usize,
    pub outlier: Option<Outlier>,
    /// How long the proxy's connect to one of its backends may take (then the next, or 502);
    /// None: `DEFAULT_CONNECT_TIMEOUT`.
    pub connect_timeout: Option<Duration>,
    /// TLS to the backends (None: plain TCP).
    pub tls: Option<BackendTls>,
    /// A PROXY protocol header before each connection's first byte (HAProxy's `send-proxy`,
    /// `send-proxy-v2`): the backends learn the client's address from it. Such a connection
    /// carries one client connection's requests only.
    pub proxy_protocol: Option<ProxyVersion>,
    /// How long a backend that comes up (or joins) takes to reach its full share of the
    /// proxy's requests (HAProxy's `slowstart`); None: at once.
    pub slow_start: Option<Duration>,
    /// How the proxy keeps its connections to the backends between requests.
    pub keep_alive: KeepAlive,
    /// How the proxy uses its HTTP/2 connections to the backends (h2 and h2c pools).
    pub http2: Http2Upstream,
    /// A cookie that keeps a client on the backend that first answered it (HAProxy's `cookie
    /// … insert`, nginx's `sticky cookie`).
    pub sticky_cookie: Option<StickyCookie>,
    /// The backends are a DNS name's addresses, asked again and again (`dns_pools`); None:
    /// the file's, lbctl's and etcd's.
    pub dns: Option<PoolDns>,
}

/// Where a pool's backends come from in DNS: every A and AAAA record of `name` (Envoy's
/// `STRICT_DNS` cluster, HAProxy's `server-template` with `resolvers`, nginx's `resolve`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDns {
    /// Lowercase, without a trailing dot: asked as it is (no search domains).
    pub name: String,
    /// How often it is asked (whatever the records' TTL, as nginx's `resolver valid=`).
    pub interval: Duration,
    /// How long an answer with no address (NXDOMAIN, or no A and no AAAA record) must last
    /// before the pool is emptied (HAProxy's `hold nx`); failures to get an answer never empty it.
    pub empty_hold: Duration,
}

/// The DNS servers pools' names are asked of (`[resolver]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    /// In order; none: /etc/resolv.conf's.
    pub nameservers: Vec<std::net::SocketAddr>,
}

/// The cookie that keeps a client on the pool a route's sticky split gave it.
pub const STICKY_COOKIE: &str = "sluice_pool";

/// A pool's backend cookie: its name, and how long a browser keeps it (None: until it closes).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StickyCookie {
    pub name: String,
    pub max_age_s: Option<u32>,
}

/// How the proxy uses its HTTP/2 connections to a pool's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Upstream {
    /// Streams opened at once on one connection; past it, another connection.
    pub max_streams: u32,
    /// PINGs on a connection with streams open: every `interval` without a frame from the
    /// backend, and the connection closed (its streams failed) if none answers in `timeout`
    /// (Envoy's `connection_keepalive`). None: no PINGs.
    pub keepalive: Option<Http2Keepalive>,
}

impl Default for Http2Upstream {
    fn default() -> Http2Upstream {
        Http2Upstream { max_streams: DEFAULT_HTTP2_UPSTREAM_STREAMS, keepalive: None }
    }
}

/// HTTP/2 PINGs on a backend connection: how often, and how long an answer may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

/// Streams open at once on one HTTP/2 connection to a backend unless its pool says: RFC 9113
/// §6.5.2 asks servers to allow at least 100 (nginx allows 128, Go 250).
pub const DEFAULT_HTTP2_UPSTREAM_STREAMS: u32 = 100;

/// How long an idle connection to a backend is kept for the next request (nginx's upstream
/// `keepalive_timeout`), and how many requests (HTTP/2: streams) one carries before it is closed
/// (nginx's `keepalive_requests`, Envoy's `max_requests_per_connection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    pub idle_timeout: Duration,
    /// None: no limit.
    pub max_requests: Option<u32>,
}

impl Default for KeepAlive {
    fn default() -> KeepAlive {
        KeepAlive { idle_timeout: DEFAULT_KEEPALIVE_TIMEOUT, max_requests: None }
    }
}

/// How long an idle connection to a backend is kept unless its pool says (nginx's 60 s).
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest `keepalive_timeout_ms`.
pub const MAX_KEEPALIVE_TIMEOUT_MS: u64 = 3_600_000;

/// The longest `slow_start_ms`.
pub const MAX_SLOW_START_MS: u64 = 3_600_000;

/// How long the proxy's connect to a backend may take unless its pool says (HAProxy's and
/// Envoy's examples use 5 s, nginx 60 s; a backend on the same network answers in well under
/// a millisecond).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BackendSpec {
    pub addr: IpAddr,
    /// Share of new flows relative to the pool's other backends; 0: none.
    pub weight: u32,
    /// Set by the operator: no new flows, established flows stay; the weight is kept.
    pub drain: bool,
    /// Takes new flows only while no other backend of the pool can (nginx's and HAProxy's
    /// `backup`).
    pub backup: bool,
}

/// The highest `syn_rate_per_prefix` and `syn_burst`.
pub const MAX_SYN_RATE: u32 = 10_000_000;

/// A per-source-prefix SYN limit (`[dataplane] syn_rate_per_prefix`, `syn_burst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynLimit {
    /// SYNs per second per source /24 (IPv4) or /64 (IPv6).
    pub rate: u32,
    /// SYNs a prefix may send at once.
    pub burst: u32,
}

/// The longest `flow_grace_seconds` (a day; larger values overflow the tables' clock math).
pub const MAX_FLOW_GRACE_SECONDS: u64 = 86_400;

/// The longest name of a VIP, pool, listener or route (they become metric labels).
pub const MAX_NAME_BYTES: usize = 128;

impl Config {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
        let text = read_file(file).map_err(|err| {
            ConfigErrors(vec![ConfigError {
                file: file.to_owned(),
                line: 0,
                message: format!("cannot read: {err}"),
            }])
        })?;
        Config::parse(file, &text)
    }

    /// Validates `text` as the contents of `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
        Config::parse_with(file, text, true)
    }

    /// Validates `text` sent by an admin client (`lbctl plan -c`): the files it names are not
    /// opened.
    pub fn parse_sent(name: &Path, text: &str) -> Result<Config, ConfigErrors> {
        Config::parse_with(name, text, false)
    }

    fn parse_with(file: &Path, text: &str, open_files: bool) -> Result<Config, ConfigErrors> {
        let mut errors = Errors { file, text, found: Vec::new(), open_files };
        // serde stops at the first type error: the section holding it is blanked (its lines
        // kept, so line numbers hold) and the rest read again, so every section's first error
        // is reported at once. Validation waits until they are fixed.
        let mut readable = text.to_owned();
        let raw: RawConfig = loop {
            match toml::from_str(&readable) {
                Ok(raw) if errors.found.is_empty() => break raw,
                Ok(_) => return Err(ConfigErrors(errors.found)),
                Err(err) => {
                    let start = err.span().unwrap_or(0..0).start.min(readable.len());
                    // A field missing after a section was blanked is that blanking's doing.
                    let cascade = !errors.found.is_empty() && err.message().starts_with("missing field");
                    if !cascade {
                        // Blanked lines are shorter but as many: the line is read from this text.
                        let line = readable[..start].matches('\n').count() + 1;
                        errors.found.push(ConfigError {
                            file: file.to_owned(),
                            line,
                            message: err.message().to_owned(),
                        });
                    }
                    match blank_section(&readable, start).filter(|_| !cascade) {
                        Some(next) if errors.found.len() < 50 => readable = next,
                        _ => return Err(ConfigErrors(errors.found)),
                    }
                }
            }
        };
        let config = validate(raw, &mut errors);
        if errors.found.is_empty() { Ok(config) } else { Err(ConfigErrors(errors.found)) }
    }

    /// The pool a VIP sends to (validated to exist).
    pub fn pool_of(&self, vip: &Vip) -> &Pool {
        &self.pools[&vip.pool]
    }
}

#[cfg(test)]
mod tests;
