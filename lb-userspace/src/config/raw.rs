//! The config file as serde reads it: raw structs (`deny_unknown_fields`, spans kept for
//! file:line messages) and their defaults; `validate` turns them into the typed model.
use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// None: an L7-only host (no XDP, no VIPs).
    pub(super) dataplane: Option<RawDataplane>,
    #[serde(default)]
    pub(super) vip: Vec<RawVip>,
    #[serde(default)]
    pub(super) pool: Vec<RawPool>,
    #[serde(default)]
    pub(super) deny: RawDeny,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) proxy: RawProxy,
    pub(super) bgp: Option<RawBgp>,
    pub(super) cluster: Option<RawCluster>,
    pub(super) resolver: Option<RawResolver>,
    #[serde(default)]
    pub(super) listener: Vec<RawListener>,
    #[serde(default)]
    pub(super) route: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Spanned<String>,
    pub(super) address: Spanned<String>,
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) redirect_https: bool,
    #[serde(default = "yes")]
    pub(super) access_log: bool,
    #[serde(default)]
    pub(super) access_log_format: AccessLogFormat,
    pub(super) access_log_filter: Option<Spanned<RawLogFilter>>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_client: Option<u32>,
    pub(super) client_ipv6_prefix: Option<u8>,
    pub(super) header_read_timeout_ms: Option<u64>,
    pub(super) handshake_timeout_ms: Option<u64>,
    pub(super) first_byte_timeout_ms: Option<u64>,
    #[serde(default = "yes")]
    pub(super) defer_accept: bool,
    pub(super) idle_timeout_ms: Option<u64>,
    pub(super) stream_idle_timeout_ms: Option<u64>,
    pub(super) max_connection_age_ms: Option<u64>,
    pub(super) http2_max_concurrent_streams: Option<u32>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) drain_timeout_ms: Option<u64>,
    pub(super) client_address: Option<Spanned<RawClientAddress>>,
    #[serde(default)]
    pub(super) proxy_protocol: bool,
    pub(super) error_pages: Option<Spanned<BTreeMap<String, PathBuf>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogFilter {
    pub(super) status_at_least: Option<u16>,
    pub(super) slower_than_ms: Option<u64>,
    pub(super) sample_percent: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientAddress {
    pub(super) header: String,
    pub(super) trusted: Vec<Spanned<String>>,
}

pub(super) fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    #[serde(default)]
    pub(super) certificates: Vec<RawCertificate>,
    pub(super) client_ca: Option<Spanned<PathBuf>>,
    pub(super) cipher_suites: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(super) forward_client_cert: bool,
    pub(super) forward_client_cert_details: Option<Spanned<Vec<String>>>,
    pub(super) acme: Option<Spanned<RawAcme>>,
    #[serde(default)]
    pub(super) http3: bool,
    pub(super) alt_svc_max_age_s: Option<Spanned<u64>>,
    pub(super) http3_retry: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    pub(super) directory: String,
    #[serde(default)]
    pub(super) contact: Vec<String>,
    pub(super) names: Vec<String>,
    pub(super) state: Spanned<PathBuf>,
    pub(super) directory_ca: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) accept_terms: bool,
    pub(super) external_account: Option<RawExternalAccount>,
    #[serde(default)]
    pub(super) challenge: AcmeChallenge,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExternalAccount {
    pub(super) kid: String,
    pub(super) hmac_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub(super) cert: Spanned<PathBuf>,
    pub(super) key: Spanned<PathBuf>,
    pub(super) ocsp: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Option<String>,
    pub(super) listener: Spanned<String>,
    pub(super) host: Option<String>,
    pub(super) path: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) path_regex: Option<Spanned<String>>,
    pub(super) rewrite_prefix: Option<Spanned<String>>,
    pub(super) method: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) cookies: BTreeMap<String, String>,
    pub(super) query: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    pub(super) clients: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) sticky: bool,
    pub(super) pool: Option<Spanned<String>>,
    pub(super) redirect: Option<Spanned<RawRedirect>>,
    pub(super) respond: Option<Spanned<Fallback>>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) try_timeout_ms: Option<Spanned<u64>>,
    pub(super) max_body_bytes: Option<u64>,
    #[serde(default)]
    pub(super) split: Vec<RawSplit>,
    #[serde(default)]
    pub(super) allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) deny: Vec<Spanned<String>>,
    pub(super) rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub(super) retries: u32,
    pub(super) retry_on: Option<Spanned<Vec<String>>>,
    pub(super) retry_budget_percent: Option<f64>,
    pub(super) retry_buffer_bytes: Option<u64>,
    pub(super) fallback: Option<Fallback>,
    pub(super) api_key: Option<RawApiKey>,
    pub(super) jwt: Option<JwtConfig>,
    pub(super) basic_auth: Option<RawBasicAuth>,
    pub(super) shadow: Option<RawShadow>,
    pub(super) cache: Option<CacheConfig>,
    pub(super) compress: Option<Spanned<RawCompress>>,
    pub(super) request_headers: Option<Spanned<RawHeaderEdits>>,
    pub(super) response_headers: Option<Spanned<RawHeaderEdits>>,
    #[serde(default)]
    pub(super) grpc_web: bool,
    pub(super) cors: Option<Spanned<RawCors>>,
    #[serde(default = "yes")]
    pub(super) access_log: bool,
    #[serde(default)]
    pub(super) intercept_errors: bool,
    pub(super) fault: Option<Spanned<FaultSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCors {
    pub(super) allow_origins: Vec<String>,
    #[serde(default)]
    pub(super) allow_methods: Vec<String>,
    #[serde(default)]
    pub(super) allow_headers: Vec<String>,
    #[serde(default)]
    pub(super) expose_headers: Vec<String>,
    pub(super) max_age_s: Option<u64>,
    #[serde(default)]
    pub(super) allow_credentials: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedirect {
    pub(super) location: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) status: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompress {
    pub(super) types: Option<Vec<String>>,
    pub(super) min_bytes: Option<u64>,
    pub(super) level: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderEdits {
    #[serde(default)]
    pub(super) set: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) remove: Vec<String>,
}

pub(super) fn default_cache_entries() -> usize {
    10_000
}

/// Envoy's `max_ejection_time`.
pub(super) fn default_max_ejection_ms() -> u64 {
    300_000
}

pub(super) fn default_cache_bytes() -> usize {
    64 << 20
}

pub(super) fn default_cache_object() -> usize {
    1 << 20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShadow {
    pub(super) pool: Spanned<String>,
    pub(super) percent: f64,
    pub(super) max_body_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiKey {
    pub(super) header: Option<String>,
    pub(super) query: Option<String>,
    pub(super) file: Spanned<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBasicAuth {
    pub(super) file: Spanned<PathBuf>,
    pub(super) realm: Option<Spanned<String>>,
    pub(super) user_header: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSplit {
    pub(super) pool: Spanned<String>,
    pub(super) percent: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) requests_per_second: f64,
    pub(super) burst: Option<f64>,
    #[serde(default)]
    pub(super) key: RateKey,
    pub(super) header: Option<String>,
    #[serde(default)]
    pub(super) headers: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) socket: Option<PathBuf>,
    pub(super) metrics: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub(super) busy_poll_us: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) endpoints: Spanned<Vec<String>>,
    pub(super) prefix: Option<String>,
    #[serde(default)]
    pub(super) vips: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    pub(super) routes_file: Spanned<PathBuf>,
    pub(super) control_socket: Option<PathBuf>,
    pub(super) birdc: Option<PathBuf>,
    #[serde(default)]
    pub(super) drained: bool,
    pub(super) withdraw_wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDataplane {
    pub(super) interface: Spanned<String>,
    #[serde(default)]
    pub(super) xdp_mode: XdpModeSetting,
    pub(super) pin_dir: Option<Spanned<PathBuf>>,
    pub(super) next_hop_mac: Option<Spanned<String>>,
    pub(super) encap_source_v4: Option<Spanned<String>>,
    pub(super) encap_source_v6: Option<Spanned<String>>,
    pub(super) max_vips: Option<Spanned<u32>>,
    pub(super) flow_grace_seconds: Option<u64>,
    pub(super) redirect_interface: Option<Spanned<String>>,
    pub(super) syn_rate_per_prefix: Option<Spanned<u32>>,
    pub(super) syn_burst: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    pub(super) name: Spanned<String>,
    pub(super) address: Spanned<String>,
    pub(super) port: Option<u16>,
    pub(super) protocol: Protocol,
    pub(super) pool: Spanned<String>,
    #[serde(default)]
    pub(super) mode: VipMode,
    #[serde(default)]
    pub(super) drop_fragments: bool,
    #[serde(default)]
    pub(super) syn_cookies: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) backends: Vec<RawBackend>,
    pub(super) health: Option<Spanned<RawHealth>>,
    pub(super) port: Option<u16>,
    #[serde(default)]
    pub(super) balance: Balance,
    pub(super) hash_key: Option<String>,
    #[serde(default)]
    pub(super) protocol: UpstreamProtocol,
    pub(super) max_requests_per_backend: Option<usize>,
    #[serde(default)]
    pub(super) max_pending_requests: usize,
    pub(super) outlier: Option<Spanned<Outlier>>,
    pub(super) connect_timeout_ms: Option<Spanned<u64>>,
    pub(super) slow_start_ms: Option<Spanned<u64>>,
    pub(super) keepalive_timeout_ms: Option<Spanned<u64>>,
    pub(super) max_requests_per_connection: Option<Spanned<u32>>,
    pub(super) http2_max_concurrent_streams: Option<Spanned<u32>>,
    pub(super) http2_keepalive: Option<Spanned<RawHttp2Keepalive>>,
    pub(super) proxy_protocol: Option<Spanned<ProxyVersion>>,
    pub(super) tls: Option<Spanned<RawBackendTls>>,
    pub(super) sticky_cookie: Option<Spanned<StickyCookie>>,
    pub(super) dns: Option<Spanned<RawPoolDns>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPoolDns {
    pub(super) name: String,
    pub(super) interval_ms: Option<u64>,
    pub(super) empty_hold_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResolver {
    pub(super) nameservers: Spanned<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendTls {
    pub(super) ca: Option<Spanned<PathBuf>>,
    pub(super) verify: Option<Spanned<bool>>,
    pub(super) server_name: Option<Spanned<String>>,
    pub(super) sni_from_host: Option<Spanned<bool>>,
    pub(super) cert: Option<Spanned<PathBuf>>,
    pub(super) key: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: Spanned<String>,
    pub(super) weight: Option<Spanned<u32>>,
    #[serde(default)]
    pub(super) drain: bool,
    #[serde(default)]
    pub(super) backup: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp2Keepalive {
    pub(super) interval_ms: u64,
    pub(super) timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) kind: HealthKind,
    pub(super) port: u16,
    #[serde(default = "default_path")]
    pub(super) path: String,
    #[serde(default = "default_status")]
    pub(super) expect_status: u16,
    pub(super) expect_body: Option<String>,
    #[serde(default = "default_interval")]
    pub(super) interval_ms: u64,
    #[serde(default = "default_timeout")]
    pub(super) timeout_ms: u64,
    #[serde(default = "default_rise_fall")]
    pub(super) rise: u32,
    #[serde(default = "default_rise_fall")]
    pub(super) fall: u32,
    pub(super) host: Option<String>,
    pub(super) service: Option<String>,
}

pub(super) fn default_path() -> String {
    "/".into()
}

pub(super) fn default_status() -> u16 {
    200
}

pub(super) fn default_interval() -> u64 {
    2000
}

pub(super) fn default_timeout() -> u64 {
    1000
}

pub(super) fn default_rise_fall() -> u32 {
    2
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeny {
    #[serde(default)]
    pub(super) prefixes: Vec<Spanned<String>>,
}
