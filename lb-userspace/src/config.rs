//! The TOML config: raw serde structs, validation that reports every error with file:line,
//! and the typed config the daemon runs with.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
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

/// Default backend weight.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 65535;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// None: an L7-only host (no XDP, no VIPs).
    dataplane: Option<RawDataplane>,
    #[serde(default)]
    vip: Vec<RawVip>,
    #[serde(default)]
    pool: Vec<RawPool>,
    #[serde(default)]
    deny: RawDeny,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    address: Spanned<String>,
    tls: Option<RawTls>,
    #[serde(default)]
    redirect_https: bool,
    #[serde(default = "yes")]
    access_log: bool,
    #[serde(default)]
    access_log_format: AccessLogFormat,
    max_connections: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_body_bytes: Option<u64>,
    max_header_bytes: Option<usize>,
    drain_timeout_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificates: Vec<RawCertificate>,
    client_ca: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    listener: Spanned<String>,
    host: Option<String>,
    path: Option<String>,
    path_prefix: Option<String>,
    path_regex: Option<Spanned<String>>,
    method: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    cookies: BTreeMap<String, String>,
    #[serde(default)]
    sticky: bool,
    pool: Spanned<String>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    split: Vec<RawSplit>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    retries: u32,
    retry_budget_percent: Option<f64>,
    fallback: Option<Fallback>,
    api_key: Option<RawApiKey>,
    jwt: Option<JwtConfig>,
    shadow: Option<RawShadow>,
    cache: Option<CacheConfig>,
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
}

fn default_cache_entries() -> usize {
    10_000
}
fn default_cache_bytes() -> usize {
    64 << 20
}
fn default_cache_object() -> usize {
    1 << 20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    pool: Spanned<String>,
    percent: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    header: Option<String>,
    query: Option<String>,
    file: Spanned<PathBuf>,
}

/// API keys: presented in a header or a query parameter, accepted from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyConfig {
    pub header: Option<String>,
    pub query: Option<String>,
    pub file: PathBuf,
}

/// JWT bearer tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256, RS256 or ES256.
    pub algorithm: String,
    /// The HS256 secret.
    pub secret: Option<String>,
    /// The RS256/ES256 public key (PEM).
    pub key_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Pass the verified subject (`sub`) to the backend in this header.
    pub subject_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSplit {
    pool: Spanned<String>,
    percent: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    requests_per_second: f64,
    burst: Option<f64>,
    #[serde(default)]
    key: RateKey,
}

/// What a rate limit counts per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    #[default]
    ClientIp,
    /// The API key the request presented (needs the route's `api_key`).
    ApiKey,
    /// The whole route.
    Route,
}

/// A token bucket: `requests_per_second` sustained, `burst` at once; over it, 429.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: f64,
    pub key: RateKey,
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
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// A TLS handshake not done by then is dropped.
    pub handshake_timeout: Duration,
    /// A connection whose first request has not begun by then is closed.
    pub first_byte_timeout: Duration,
    /// A connection with no request in flight and no byte either way for this long is closed.
    pub idle_timeout: Duration,
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    /// On SIGTERM, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// (certificate chain PEM, private key PEM) files.
    pub certificates: Vec<(PathBuf, PathBuf)>,
    /// Require client certificates signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
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
    pub method: Option<String>,
    /// Headers that must be present with these values.
    pub headers: BTreeMap<String, String>,
    /// Cookies that must be present with these values (A/B routing).
    pub cookies: BTreeMap<String, String>,
    /// With `split`: a client keeps the pool it was first given (cookie `sluice_pool`).
    pub sticky: bool,
    pub pool: String,
    /// The whole request, upstream included; over it the client gets 504.
    pub timeout: Duration,
    /// Share (percent) of requests sent to other pools instead of `pool` (canary, blue-green).
    pub split: Vec<(String, f64)>,
    /// Client addresses allowed (empty: all) and denied; others get 403.
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub rate_limit: Option<RateLimit>,
    /// Extra tries on another backend after a connect failure or a 502/503/504, for requests
    /// without a body of idempotent methods.
    pub retries: u32,
    /// Retries stay under this share of the route's requests (plus a few), so they never
    /// multiply an outage's load.
    pub retry_budget_percent: f64,
    pub fallback: Option<Fallback>,
    pub api_key: Option<ApiKeyConfig>,
    pub jwt: Option<JwtConfig>,
    /// Mirror this share (percent) of bodiless requests to another pool; its answers are
    /// discarded and never wait for or change the client's.
    pub shadow: Option<(String, f64)>,
    pub cache: Option<CacheConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: Option<PathBuf>,
    metrics: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    interface: Spanned<String>,
    #[serde(default)]
    xdp_mode: XdpModeSetting,
    pin_dir: Option<Spanned<PathBuf>>,
    next_hop_mac: Option<Spanned<String>>,
    encap_source_v4: Option<Spanned<String>>,
    encap_source_v6: Option<Spanned<String>>,
    max_vips: Option<Spanned<u32>>,
    flow_grace_seconds: Option<u64>,
    redirect_interface: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Spanned<String>,
    address: Spanned<String>,
    port: Option<u16>,
    protocol: Protocol,
    pool: Spanned<String>,
    #[serde(default)]
    mode: VipMode,
    #[serde(default)]
    drop_fragments: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: Spanned<String>,
    #[serde(default)]
    backends: Vec<RawBackend>,
    health: Option<Spanned<RawHealth>>,
    port: Option<u16>,
    #[serde(default)]
    balance: Balance,
    hash_key: Option<String>,
    #[serde(default)]
    protocol: UpstreamProtocol,
    max_requests_per_backend: Option<usize>,
    #[serde(default)]
    max_pending_requests: usize,
    outlier: Option<Outlier>,
}

/// Passive outlier ejection: a backend that fails this many requests in a row (connect error
/// or 5xx) is marked down (for L4 too) for `ejection_ms`, longer each time it happens again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Outlier {
    pub consecutive_failures: u32,
    pub ejection_ms: u64,
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
}

/// How the L7 proxy picks a backend inside a pool (L4 VIPs always use Maglev).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The less busy of two random backends (power of two choices).
    LeastRequests,
    /// Consistent hash of `hash_key`: `header:NAME`, `cookie:NAME` or `client_ip`.
    Hash,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    weight: Option<Spanned<u32>>,
    #[serde(default)]
    drain: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: HealthKind,
    port: u16,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_status")]
    expect_status: u16,
    #[serde(default = "default_interval")]
    interval_ms: u64,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_rise_fall")]
    rise: u32,
    #[serde(default = "default_rise_fall")]
    fall: u32,
}

fn default_path() -> String {
    "/".into()
}
fn default_status() -> u16 {
    200
}
fn default_interval() -> u64 {
    2000
}
fn default_timeout() -> u64 {
    1000
}
fn default_rise_fall() -> u32 {
    2
}

/// How a pool's backends are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP connect must succeed.
    Tcp,
    /// An HTTP/1.1 GET of `path` must answer `expect_status`.
    Http,
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
    /// Shown as `interval_ms` and `timeout_ms`, as in the config.
    #[serde(rename = "interval_ms", serialize_with = "millis")]
    pub interval: Duration,
    #[serde(rename = "timeout_ms", serialize_with = "millis")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDeny {
    #[serde(default)]
    prefixes: Vec<Spanned<String>>,
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
}

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
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pool {
    pub name: String,
    pub backends: Vec<BackendSpec>,
    pub health: Option<HealthCheck>,
    /// Upstream port for the L7 proxy (L4 forwarding keeps the client's port).
    pub port: u16,
    pub balance: Balance,
    /// For `balance = "hash"`: `header:NAME`, `cookie:NAME` or `client_ip`.
    pub hash_key: String,
    pub protocol: UpstreamProtocol,
    /// Circuit breaking: requests in flight per backend at most; past it, another backend or 503.
    pub max_requests_per_backend: Option<usize>,
    /// With `max_requests_per_backend`: requests that may wait (up to the route's timeout) for
    /// a backend under its limit; past them, 503 at once.
    pub max_pending_requests: usize,
    pub outlier: Option<Outlier>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BackendSpec {
    pub addr: IpAddr,
    /// Share of new flows relative to the pool's other backends; 0: none.
    pub weight: u32,
    /// Set by the operator: no new flows, established flows stay; the weight is kept.
    pub drain: bool,
}

/// One thing wrong with a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            // About the file as a whole (unreadable, not UTF-8): no line to point at.
            0 => write!(f, "{}: {}", self.file.display(), self.message),
            line => write!(f, "{}:{line}: {}", self.file.display(), self.message),
        }
    }
}

/// Every error found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Collects errors against one source text, turning byte spans into line numbers.
struct Errors<'a> {
    file: &'a Path,
    text: &'a str,
    found: Vec<ConfigError>,
    /// Whether files the config names (certificates, keys, key lists) are checked for
    /// readability; not for a config an admin client sent (lbd opens no path a client names).
    open_files: bool,
}

/// The longest `flow_grace_seconds` (a day; larger values overflow the tables' clock math).
pub const MAX_FLOW_GRACE_SECONDS: u64 = 86_400;
/// The longest name of a VIP, pool, listener or route (they become metric labels).
pub const MAX_NAME_BYTES: usize = 128;

/// `text` with the section (from its `[header]` line to the next header) around byte `at`
/// replaced by empty lines; None when there is no header to cut at (a syntax error, or one in
/// the top-level keys), since nothing more can be read then.
fn blank_section(text: &str, at: usize) -> Option<String> {
    let is_header = |line: &str| line.trim_start().starts_with('[');
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut offset = 0;
    let mut line_of_error = lines.len().saturating_sub(1);
    for (i, line) in lines.iter().enumerate() {
        if at < offset + line.len() {
            line_of_error = i;
            break;
        }
        offset += line.len();
    }
    let start = (0..=line_of_error).rev().find(|&i| is_header(lines[i]))?;
    let end = (line_of_error + 1..lines.len()).find(|&i| is_header(lines[i])).unwrap_or(lines.len());
    let blanked: String = lines
        .iter()
        .enumerate()
        .map(|(i, line)| if (start..end).contains(&i) { "\n" } else { line })
        .collect();
    // A section that blanks to the same text (an error toml reports again) ends the search.
    (blanked != text).then_some(blanked)
}

/// Why `addr` cannot be a VIP's or a backend's address, if it cannot.
fn not_a_host(addr: IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("the unspecified address is no host")
    } else if addr.is_multicast() {
        Some("a multicast address is no host")
    } else if addr == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("the broadcast address is no host")
    } else {
        None
    }
}

/// A name cut short for a message.
fn short(name: &str) -> String {
    match name.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &name[..at]),
        None => name.to_owned(),
    }
}

/// The largest config file read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Opens `path` for reading without blocking (a FIFO or a device would hang a plain open or
/// read) and checks it is a regular file of at most `MAX_FILE_BYTES`.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {} MiB", MAX_FILE_BYTES >> 20),
        ));
    }
    Ok(file)
}

/// Reads a config file: a regular file, bounded, UTF-8.
pub fn read_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    open_regular(path)?.take(MAX_FILE_BYTES).read_to_string(&mut text)?;
    Ok(text)
}

impl Errors<'_> {
    /// A name must be 1 to `MAX_NAME_BYTES` bytes.
    fn name(&mut self, name: &Spanned<String>, what: &str) {
        let n = name.get_ref().len();
        if n == 0 || n > MAX_NAME_BYTES {
            self.at(
                name.span(),
                format!("{what} name must be 1 to {MAX_NAME_BYTES} bytes (this one has {n})"),
            );
        }
    }

    fn line_of(&self, span: Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())].matches('\n').count() + 1
    }

    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let line = self.line_of(span);
        self.found.push(ConfigError { file: self.file.to_owned(), line, message: message.into() });
    }

    /// Parses a spanned string with `parse`, reporting `what` on failure.
    fn parse<T>(
        &mut self,
        value: &Spanned<String>,
        what: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let parsed = parse(value.get_ref());
        if parsed.is_none() {
            self.at(value.span(), format!("`{}` is not {what}", value.get_ref()));
        }
        parsed
    }
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

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

    /// What only the host can tell: the interfaces named exist in this network namespace.
    pub fn check_host(&self, file: &Path) -> Result<(), ConfigErrors> {
        if !self.dataplane {
            return Ok(());
        }
        let mut found = Vec::new();
        for name in std::iter::once(&self.interface).chain(&self.redirect_interface) {
            if crate::host::ifindex(name).is_err() {
                found.push(ConfigError {
                    file: file.to_owned(),
                    line: self.interface_line,
                    message: format!("interface `{name}` does not exist in this network namespace"),
                });
            }
        }
        if found.is_empty() { Ok(()) } else { Err(ConfigErrors(found)) }
    }

    /// The pool a VIP sends to (validated to exist).
    pub fn pool_of(&self, vip: &Vip) -> &Pool {
        &self.pools[&vip.pool]
    }
}

fn validate(raw: RawConfig, errors: &mut Errors) -> Config {
    let has_dataplane = raw.dataplane.is_some();
    if !has_dataplane && !raw.vip.is_empty() {
        errors.at(raw.vip[0].name.span(), "VIPs are balanced in XDP: they need a [dataplane] section");
    }
    if !has_dataplane && !raw.deny.prefixes.is_empty() {
        errors.at(0..0, "[deny] drops sources in XDP: it needs a [dataplane] section");
    }
    let dp = raw.dataplane.unwrap_or(RawDataplane {
        interface: Spanned::new(0..0, String::new()),
        xdp_mode: XdpModeSetting::default(),
        pin_dir: None,
        next_hop_mac: None,
        encap_source_v4: None,
        encap_source_v6: None,
        max_vips: None,
        flow_grace_seconds: None,
        redirect_interface: None,
    });
    let interface = dp.interface;
    if has_dataplane && (interface.get_ref().is_empty() || interface.get_ref().len() >= libc::IFNAMSIZ) {
        errors.at(interface.span(), format!("interface name must be 1 to {} bytes", libc::IFNAMSIZ - 1));
    }
    let pin_dir = match dp.pin_dir {
        Some(dir) if !dir.get_ref().starts_with("/sys/fs/bpf") => {
            errors.at(dir.span(), "pin_dir must be under /sys/fs/bpf (bpffs)");
            PathBuf::new()
        }
        Some(dir) => dir.into_inner(),
        None => PathBuf::from(lb_common::PIN_DIR),
    };
    let next_hop_mac = match dp.next_hop_mac {
        None => NextHop::Unset,
        Some(m) if m.get_ref() == "auto" => NextHop::Auto,
        Some(m) => errors
            .parse(&m, "\"auto\" or a MAC address like 02:00:00:00:00:01", parse_mac)
            .map_or(NextHop::Unset, NextHop::Mac),
    };
    let encap_source_v4 = dp
        .encap_source_v4
        .and_then(|a| errors.parse(&a, "an IPv4 address", |s| s.parse().ok()))
        .unwrap_or(Ipv4Addr::new(172, 16, 0, 0));
    let encap_source_v6 = dp
        .encap_source_v6
        .and_then(|a| errors.parse(&a, "an IPv6 address", |s| s.parse().ok()))
        .unwrap_or(Ipv6Addr::new(0xfd00, 0x5e, 0xffff, 0, 0, 0, 0, 0));
    let max_vips = match dp.max_vips {
        Some(n) if *n.get_ref() == 0 || *n.get_ref() > lb_common::vip::MAX_VIPS => {
            errors.at(n.span(), format!("max_vips must be 1 to {}", lb_common::vip::MAX_VIPS));
            lb_common::vip::MAX_VIPS // already reported: no second error about the VIP count
        }
        Some(n) => n.into_inner(),
        None => 16,
    };

    let mut pools = BTreeMap::new();
    for raw_pool in raw.pool {
        errors.name(&raw_pool.name, "pool");
        let name = raw_pool.name.get_ref().clone();
        let mut backends: Vec<BackendSpec> = Vec::new();
        for b in raw_pool.backends {
            let Some(addr) = errors.parse(&b.address, "an IP address", |s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            if backends.iter().any(|x| x.addr == addr) {
                errors.at(b.address.span(), format!("backend {addr} is listed twice in pool `{name}`"));
            }
            if let Some(why) = not_a_host(addr) {
                errors.at(b.address.span(), format!("backend {addr} in pool `{name}`: {why}"));
            }
            let weight = match b.weight {
                Some(w) if *w.get_ref() > MAX_WEIGHT => {
                    errors.at(w.span(), format!("weight must be 0 (drained) to {MAX_WEIGHT}"));
                    0
                }
                Some(w) => w.into_inner(),
                None => DEFAULT_WEIGHT,
            };
            backends.push(BackendSpec { addr, weight, drain: b.drain });
        }
        let health = raw_pool.health.map(|h| {
            let span = h.span();
            let h = h.into_inner();
            let check = HealthCheck {
                kind: h.kind,
                port: h.port,
                path: h.path,
                expect_status: h.expect_status,
                interval: Duration::from_millis(h.interval_ms),
                timeout: Duration::from_millis(h.timeout_ms),
                rise: h.rise,
                fall: h.fall,
            };
            if check.port == 0 || check.rise == 0 || check.fall == 0 {
                errors.at(span, format!("pool `{name}` health: port, rise and fall must be at least 1"));
            } else if check.timeout.is_zero() || check.timeout >= check.interval {
                errors.at(
                    span,
                    format!("pool `{name}` health: timeout_ms must be above 0 and below interval_ms"),
                );
            } else if !check.path.starts_with('/') {
                errors.at(span, format!("pool `{name}` health: path must start with /"));
            }
            check
        });
        let hash_key = raw_pool.hash_key.unwrap_or_else(|| "client_ip".into());
        if raw_pool.balance == Balance::Hash
            && !(hash_key == "client_ip"
                || hash_key.starts_with("header:")
                || hash_key.starts_with("cookie:"))
        {
            errors.at(
                raw_pool.name.span(),
                format!("pool `{name}`: hash_key must be header:NAME, cookie:NAME or client_ip"),
            );
        }
        let pool = Pool {
            name: name.clone(),
            backends,
            health,
            port: raw_pool.port.unwrap_or(80),
            balance: raw_pool.balance,
            hash_key,
            protocol: raw_pool.protocol,
            max_requests_per_backend: raw_pool.max_requests_per_backend,
            max_pending_requests: raw_pool.max_pending_requests,
            outlier: raw_pool.outlier,
        };
        if pools.insert(name.clone(), pool).is_some() {
            errors.at(raw_pool.name.span(), format!("pool `{name}` is defined twice"));
        }
    }

    let mut vips = Vec::new();
    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    for raw_vip in raw.vip {
        let name = raw_vip.name.get_ref().clone();
        if !names.insert(name.clone()) {
            errors.at(raw_vip.name.span(), format!("VIP `{name}` is defined twice"));
        }
        errors.name(&raw_vip.name, "VIP");
        let Some(addr) = errors.parse(&raw_vip.address, "an IP address", |s| s.parse::<IpAddr>().ok()) else {
            continue;
        };
        if let Some(why) = not_a_host(addr) {
            errors.at(raw_vip.address.span(), format!("VIP `{}`: {addr}: {why}", short(&name)));
        }
        let port = raw_vip.port.unwrap_or(0);
        if !keys.insert((addr, port, raw_vip.protocol)) {
            errors.at(raw_vip.address.span(), format!("VIP `{name}`: {addr} port {port} is already a VIP"));
        }
        let pool_name = raw_vip.pool.get_ref();
        match pools.get(pool_name) {
            None => errors.at(
                raw_vip.pool.span(),
                format!("VIP `{name}` uses pool `{pool_name}`, which is not defined"),
            ),
            Some(pool) if addr.is_ipv6() && raw_vip.mode == VipMode::L4 => {
                if let Some(b) = pool.backends.iter().find(|b| b.addr.is_ipv4()) {
                    errors.at(
                        raw_vip.pool.span(),
                        format!(
                            "IPv6 VIP `{name}` cannot reach IPv4 backend {} of pool `{pool_name}`",
                            b.addr
                        ),
                    );
                }
            }
            Some(_) => {}
        }
        vips.push(Vip {
            name,
            addr,
            port,
            protocol: raw_vip.protocol,
            pool: pool_name.clone(),
            mode: raw_vip.mode,
            drop_fragments: raw_vip.drop_fragments,
        });
    }
    if vips.len() > max_vips as usize {
        errors.at(0..0, format!("{} VIPs configured but max_vips is {max_vips}", vips.len()));
    }

    let mut deny = Vec::new();
    for prefix in raw.deny.prefixes {
        let parsed = errors.parse(&prefix, "a prefix like 203.0.113.0/24", |s| {
            s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        });
        if let Some(net) = parsed {
            if net.trunc() != net {
                errors.at(prefix.span(), format!("`{net}` has host bits set; did you mean {}?", net.trunc()));
            }
            deny.push(net);
        }
    }

    // Relative paths (certificates, key files) are relative to the config file's directory.
    let base = errors.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let resolve = |p: Spanned<PathBuf>| {
        let span = p.span();
        let path = p.into_inner();
        Spanned::new(span, if path.is_relative() { base.join(path) } else { path })
    };
    let mut listeners = Vec::new();
    for raw in raw.listener {
        let name = raw.name.get_ref().clone();
        if listeners.iter().any(|l: &Listener| l.name == name) {
            errors.at(raw.name.span(), format!("listener `{name}` is defined twice"));
        }
        errors.name(&raw.name, "listener");
        let Some(address) =
            errors.parse(&raw.address, "an address:port", |s| s.parse::<std::net::SocketAddr>().ok())
        else {
            continue;
        };
        if address.port() == 0 {
            errors.at(
                raw.address.span(),
                format!("listener `{}`: port 0 is not a port to listen on", short(&name)),
            );
        }
        if raw.max_connections == Some(0) {
            errors
                .at(raw.name.span(), format!("listener `{}`: max_connections must be above 0", short(&name)));
        }
        // An L4 VIP on the same address and port would take the listener's packets in XDP.
        if let Some(vip) = vips.iter().find(|v: &&Vip| {
            v.mode == VipMode::L4
                && v.port == address.port()
                && (v.addr == address.ip() || address.ip().is_unspecified())
        }) {
            errors.at(
                raw.address.span(),
                format!(
                    "listener `{}` on {address} is also L4 VIP `{}`: XDP would take its packets",
                    short(&name),
                    vip.name
                ),
            );
        }
        let tls = raw.tls.map(|t| {
            let t = RawTls {
                certificates: t
                    .certificates
                    .into_iter()
                    .map(|c| RawCertificate { cert: resolve(c.cert), key: resolve(c.key) })
                    .collect(),
                client_ca: t.client_ca.map(resolve),
            };
            if t.certificates.is_empty() {
                errors.at(raw.name.span(), format!("listener `{name}`: tls needs at least one certificate"));
            }
            let mut readable = |file: &Spanned<PathBuf>| {
                if !errors.open_files {
                    return;
                }
                if let Err(err) = open_regular(file.get_ref()) {
                    errors.at(file.span(), format!("cannot read {}: {err}", file.get_ref().display()));
                }
            };
            for c in &t.certificates {
                readable(&c.cert);
                readable(&c.key);
            }
            if let Some(ca) = &t.client_ca {
                readable(ca);
            }
            Tls {
                certificates: t
                    .certificates
                    .into_iter()
                    .map(|c| (c.cert.into_inner(), c.key.into_inner()))
                    .collect(),
                client_ca: t.client_ca.map(Spanned::into_inner),
            }
        });
        for (what, value) in [
            ("header_read_timeout_ms", raw.header_read_timeout_ms),
            ("handshake_timeout_ms", raw.handshake_timeout_ms),
            ("first_byte_timeout_ms", raw.first_byte_timeout_ms),
            ("idle_timeout_ms", raw.idle_timeout_ms),
        ] {
            if value == Some(0) {
                errors.at(raw.name.span(), format!("listener `{name}`: {what} must be above 0"));
            }
        }
        listeners.push(Listener {
            name,
            address,
            tls,
            redirect_https: raw.redirect_https,
            access_log: raw.access_log,
            access_log_format: raw.access_log_format,
            max_connections: raw.max_connections.unwrap_or(10_000),
            header_read_timeout: Duration::from_millis(raw.header_read_timeout_ms.unwrap_or(10_000)),
            handshake_timeout: Duration::from_millis(raw.handshake_timeout_ms.unwrap_or(10_000)),
            first_byte_timeout: Duration::from_millis(raw.first_byte_timeout_ms.unwrap_or(10_000)),
            idle_timeout: Duration::from_millis(raw.idle_timeout_ms.unwrap_or(60_000)),
            max_body_bytes: raw.max_body_bytes.unwrap_or(10 << 20),
            max_header_bytes: raw.max_header_bytes.unwrap_or(16 << 10),
            drain_timeout: Duration::from_millis(raw.drain_timeout_ms.unwrap_or(10_000)),
        });
    }
    // An L7 VIP is passed up to the stack for a listener: one must listen there (on its port,
    // or on any port of a VIP with every port).
    for vip in vips.iter().filter(|v| v.mode == VipMode::L7) {
        let heard = listeners.iter().any(|l: &Listener| {
            (vip.port == 0 || l.address.port() == vip.port)
                && (l.address.ip() == vip.addr || l.address.ip().is_unspecified())
        });
        if !heard {
            errors.at(
                0..0,
                format!(
                    "L7 VIP `{}` ({} port {}) has no listener on that address and port",
                    short(&vip.name),
                    vip.addr,
                    vip.port
                ),
            );
        }
    }
    let mut routes = Vec::new();
    for raw in raw.route {
        if !listeners.iter().any(|l| l.name == *raw.listener.get_ref()) {
            errors.at(
                raw.listener.span(),
                format!("route uses listener `{}`, which is not defined", raw.listener.get_ref()),
            );
        }
        if !pools.contains_key(raw.pool.get_ref()) {
            errors.at(
                raw.pool.span(),
                format!("route uses pool `{}`, which is not defined", raw.pool.get_ref()),
            );
        }
        let path = match (raw.path, raw.path_prefix, raw.path_regex) {
            (None, None, None) => PathMatch::Any,
            (Some(p), None, None) => PathMatch::Exact(p),
            (None, Some(p), None) => PathMatch::Prefix(p),
            (None, None, Some(r)) => {
                if let Err(err) = regex::Regex::new(r.get_ref()) {
                    errors.at(r.span(), format!("path_regex does not compile: {err}"));
                }
                PathMatch::Regex(r.into_inner())
            }
            _ => {
                errors.at(raw.pool.span(), "a route takes one of path, path_prefix and path_regex");
                PathMatch::Any
            }
        };
        let method = raw.method.map(|m| {
            if hyper::Method::from_bytes(m.get_ref().as_bytes()).is_err() {
                errors.at(m.span(), format!("`{}` is not an HTTP method", m.get_ref()));
            }
            m.into_inner().to_ascii_uppercase()
        });
        let mut split = Vec::new();
        for s in raw.split {
            if !pools.contains_key(s.pool.get_ref()) {
                errors.at(
                    s.pool.span(),
                    format!("split uses pool `{}`, which is not defined", s.pool.get_ref()),
                );
            }
            split.push((s.pool.into_inner(), s.percent));
        }
        let total: f64 = split.iter().map(|(_, p)| p).sum();
        if split.iter().any(|(_, p)| !(0.0..=100.0).contains(p)) || total > 100.0 {
            errors.at(raw.pool.span(), "split percents must be 0 to 100 and add up to at most 100");
        }
        let mut nets = |list: Vec<Spanned<String>>| -> Vec<IpNet> {
            list.iter()
                .filter_map(|n| {
                    errors.parse(n, "a prefix like 10.0.0.0/8", |s| {
                        s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
                    })
                })
                .collect()
        };
        let (allow, deny) = (nets(raw.allow), nets(raw.deny));
        let rate_limit = raw.rate_limit.map(|r| RateLimit {
            requests_per_second: r.requests_per_second,
            burst: r.burst.unwrap_or(r.requests_per_second.max(1.0)),
            key: r.key,
        });
        if rate_limit.as_ref().is_some_and(|r| r.key == RateKey::ApiKey) && raw.api_key.is_none() {
            errors.at(raw.pool.span(), "rate_limit key = \"api_key\" needs the route's api_key");
        }
        if rate_limit.as_ref().is_some_and(|r| r.requests_per_second <= 0.0 || r.burst < 1.0) {
            errors
                .at(raw.pool.span(), "rate_limit needs requests_per_second above 0 and burst of at least 1");
        }
        if raw.fallback.as_ref().is_some_and(|f| !(200..=599).contains(&f.status)) {
            errors.at(raw.pool.span(), "fallback status must be 200 to 599");
        }
        let api_key = raw.api_key.map(|k| {
            if k.header.is_some() == k.query.is_some() {
                errors.at(k.file.span(), "api_key takes one of header and query");
            }
            let file = resolve(k.file);
            if let Err(err) = if errors.open_files { open_regular(file.get_ref()).map(drop) } else { Ok(()) }
            {
                errors.at(file.span(), format!("cannot read {}: {err}", file.get_ref().display()));
            }
            ApiKeyConfig {
                header: k.header.map(|h| h.to_ascii_lowercase()),
                query: k.query,
                file: file.into_inner(),
            }
        });
        let jwt = raw.jwt.map(|mut j| {
            j.key_file = j.key_file.map(|f| if f.is_relative() { base.join(f) } else { f });
            if let Err(err) = crate::proxy::auth::Jwt::new(&j) {
                errors.at(raw.pool.span(), format!("jwt: {err:#}"));
            }
            j
        });
        let shadow = raw.shadow.map(|sh| {
            if !pools.contains_key(sh.pool.get_ref()) {
                errors.at(
                    sh.pool.span(),
                    format!("shadow uses pool `{}`, which is not defined", sh.pool.get_ref()),
                );
            }
            if !(0.0..=100.0).contains(&sh.percent) {
                errors.at(sh.pool.span(), "shadow percent must be 0 to 100");
            }
            (sh.pool.into_inner(), sh.percent)
        });
        let place = routes.iter().filter(|r: &&Route| r.listener == *raw.listener.get_ref()).count();
        routes.push(Route {
            name: raw.name.unwrap_or_else(|| format!("{}#{place}", raw.listener.get_ref())),
            listener: raw.listener.into_inner(),
            host: raw.host.map(|h| h.to_ascii_lowercase()),
            path,
            method,
            headers: raw.headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect(),
            cookies: raw.cookies,
            sticky: raw.sticky,
            pool: raw.pool.into_inner(),
            timeout: Duration::from_millis(raw.timeout_ms.unwrap_or(30_000)),
            split,
            allow,
            deny,
            rate_limit,
            retries: raw.retries,
            retry_budget_percent: raw.retry_budget_percent.unwrap_or(20.0),
            fallback: raw.fallback,
            api_key,
            jwt,
            shadow,
            cache: raw.cache,
        });
    }

    let interface_line = errors.line_of(interface.span());
    Config {
        dataplane: has_dataplane,
        interface: interface.into_inner(),
        interface_line,
        xdp_mode: dp.xdp_mode,
        pin_dir,
        next_hop_mac,
        encap_source_v4,
        encap_source_v6,
        max_vips,
        flow_grace: Duration::from_secs(match dp.flow_grace_seconds {
            Some(n) if n > MAX_FLOW_GRACE_SECONDS => {
                errors.at(
                    0..0,
                    format!("flow_grace_seconds must be at most {MAX_FLOW_GRACE_SECONDS} (one day)"),
                );
                60
            }
            n => n.unwrap_or(60),
        }),
        redirect_interface: dp.redirect_interface.map(Spanned::into_inner),
        admin_socket: raw.admin.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET)),
        metrics: raw
            .admin
            .metrics
            .and_then(|m| errors.parse(&m, "an address:port like 127.0.0.1:9100", |s| s.parse().ok())),
        listeners,
        routes,
        vips,
        pools,
        deny,
    }
}

#[cfg(test)]
mod tests;
