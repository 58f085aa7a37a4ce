//! The admin API's request and response bodies as types, shared by lbd (which writes them)
//! and lbctl (which reads them): one definition of each shape, as Sozu shares its
//! request/response types between its server and its CLI.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

pub use crate::inspect::{FlowAnswer as Flow, VipPlan};
use crate::{config::Protocol, state::Command};

/// `POST /flow`: which backend a flow of `protocol` from `source` to `vip` goes to (answer:
/// [`Flow`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowQuery {
    pub protocol: Protocol,
    pub source: SocketAddr,
    pub vip: SocketAddr,
}

/// `POST /plan`: what `commands`, or a reload to the config text sent, would move (answer: a
/// [`VipPlan`] per VIP). The client sends the text: lbd opens no path a client names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanQuery {
    #[serde(default)]
    pub commands: Vec<Command>,
    pub config_text: Option<String>,
    /// The file's name, for messages only.
    pub config_name: Option<String>,
}

/// `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The edge NIC (empty on an L7-only host).
    pub interface: String,
    pub pin_dir: PathBuf,
    /// The config file changes are written back to.
    pub config: PathBuf,
    pub uptime_seconds: u64,
    pub vips: usize,
    pub pools: usize,
    /// Pools whose every backend is down (traffic goes to all of them).
    pub failing_open: Vec<String>,
    pub last_reload: Option<LastReload>,
    /// BGP (`[bgp]`); None: this host announces nothing.
    #[serde(default)]
    pub bgp: Option<Announcing>,
    /// etcd (`[cluster]`); None: pools come from the config file and lbctl.
    #[serde(default)]
    pub cluster: Option<Following>,
}

/// How this host follows etcd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Following {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// The etcd revision whose pools are applied (0: none yet).
    pub revision: i64,
    /// Why etcd could not be read at the last attempt (None: it could).
    pub error: Option<String>,
}

/// What this host announces over BGP.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcing {
    /// The node is drained (`lbctl node drain`): nothing is announced.
    pub drained: bool,
    /// The addresses BIRD was last told to announce.
    pub announced: Vec<IpAddr>,
    /// Why the last attempt to tell BIRD failed (None: it worked).
    pub error: Option<String>,
}

/// How the last reload went.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LastReload {
    pub unix_seconds: u64,
    pub applied: bool,
}

/// One entry of `GET /routes`: what it matches and where its requests go.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Route {
    pub name: String,
    pub listener: String,
    /// `*` for any host.
    pub host: String,
    /// `*`, `=/exact`, `/prefix` or `~regex`.
    pub path: String,
    /// Empty when the route answers by itself (`answer`).
    pub pool: String,
    /// What the route answers by itself: `redirect 301 https://a.test…` (`…`: the path and
    /// query follow) or `respond 200` (absent from an older lbd's answer, as the fields below).
    #[serde(default)]
    pub answer: Option<String>,
    /// Other pools and their share (percent) of the route's requests.
    pub split: Vec<(String, f64)>,
    pub sticky: bool,
    /// What replaces the path prefix for the backend.
    #[serde(default)]
    pub rewrite_prefix: Option<String>,
    /// Fields the route sets or removes, both ways.
    #[serde(default)]
    pub header_edits: usize,
    /// Answers gzipped for clients that take it.
    #[serde(default)]
    pub compress: bool,
    /// Who may use it, in the order checked: `allow`, `deny`, `api_key`, `jwt`,
    /// `rate_limit 50/s`, `basic_auth`.
    #[serde(default)]
    pub gates: Vec<String>,
    /// Its retries and what they retry (`2 on reset, 502, 503, 504 (budget 20%)`); None: none.
    #[serde(default)]
    pub retries: Option<String>,
    /// Its response cache's bounds and stale windows (`10000 entries, 64 MiB, 1 MiB each; stale
    /// 30 s updating, 600 s on error`); None: it caches nothing.
    #[serde(default)]
    pub cache: Option<String>,
    /// The client prefixes it matches (empty: any).
    #[serde(default)]
    pub clients: Vec<String>,
    /// Its injected faults (`delay 200 ms to 10%, abort 503 to 1%`); None: none.
    #[serde(default)]
    pub fault: Option<String>,
    /// Whether backends' errors go out as the listener's pages.
    #[serde(default)]
    pub intercept_errors: bool,
}

/// One entry of `GET /listeners`: an L7 listener, its limits and its open connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listener {
    pub name: String,
    pub address: std::net::SocketAddr,
    /// `http`, or `https` with its certificates' count (`https 2 certs`), `+acme` when it orders
    /// one itself, `+mtls` when it asks clients for certificates, `+h3` when it serves HTTP/3 too.
    pub protocol: String,
    /// Reads a PROXY protocol header first (`proxy_protocol`).
    pub proxy_protocol: bool,
    /// The field a client's address is read from behind trusted proxies (`client_address`).
    pub client_address: Option<String>,
    pub max_connections: usize,
    pub max_connections_per_client: Option<u32>,
    pub client_ipv6_prefix: u8,
    /// Routes on it.
    pub routes: usize,
    /// Client connections open now, over every worker.
    pub open_connections: i64,
    /// The certificates it serves now (absent from an older lbd's answer).
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    /// The statuses it has error pages for.
    #[serde(default)]
    pub error_pages: Vec<u16>,
}

/// A certificate a TLS listener serves now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Certificate {
    /// The least of its names.
    pub name: String,
    /// How many names it has.
    pub names: usize,
    /// Its not-after, Unix seconds (None: it does not parse as X.509).
    pub not_after: Option<u64>,
    /// An OCSP response is stapled to it.
    pub stapled: bool,
    /// Its staple's next update, Unix seconds (None: not stapled, or no end).
    pub stapled_until: Option<u64>,
    /// lbd ordered it from the listener's ACME CA.
    pub acme: bool,
}

/// One entry of `GET /vips`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vip {
    pub name: String,
    pub address: IpAddr,
    /// 0: every port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    pub pool: String,
    /// `l4` or `l7`.
    pub mode: String,
    /// SYNs answered with SYN cookies in XDP (`syn_cookies`; absent from an older lbd's answer).
    #[serde(default)]
    pub syn_cookies: bool,
}

/// `GET /pools/NAME`, and each entry of `GET /pools`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    pub backends: Vec<Backend>,
    /// Every backend is down: traffic goes to all of them.
    pub failing_open: bool,
    /// The pool's health check as configured (durations as `interval_ms`/`timeout_ms`).
    pub health_check: Option<serde_json::Value>,
    /// How the L7 proxy uses it (absent from an older lbd's answer).
    #[serde(default)]
    pub proxy: Option<PoolProxy>,
    /// Where its backends come from in DNS: `NAME, asked every N ms, emptied after N ms
    /// without an address`.
    #[serde(default)]
    pub dns: Option<String>,
}

/// A pool's settings for the L7 proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolProxy {
    pub port: u16,
    /// `http1`, `h2c` or `h2`.
    pub protocol: String,
    /// `round_robin`, `least_requests`, or `hash client_ip`, `hash header:NAME`, `hash cookie:NAME`,
    /// `hash query:NAME`, `hash path`, `hash uri`.
    pub balance: String,
    pub connect_timeout_ms: u64,
    /// Circuit breaking: requests in flight per backend, and how many may wait beyond.
    pub max_requests_per_backend: Option<usize>,
    pub max_pending_requests: usize,
    /// `5 failures, 10000 ms` (up to `max_ejection_ms`).
    pub outlier: Option<String>,
    /// TLS to the backends: `ca FILE`, or `any certificate`; the name checked (`name NAME`,
    /// `name from host`, else the address); `client cert`.
    pub tls: Option<String>,
    /// The PROXY protocol version sent to the backends (`v1`, `v2`).
    #[serde(default)]
    pub proxy_protocol: Option<String>,
    /// How long a backend that comes up takes to reach its full share.
    #[serde(default)]
    pub slow_start_ms: Option<u64>,
    /// How long an idle connection to a backend is kept, and how many requests one carries
    /// (None: no limit).
    #[serde(default)]
    pub keepalive_timeout_ms: u64,
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
    /// Streams at once on one HTTP/2 connection to a backend (h2 and h2c pools only).
    #[serde(default)]
    pub http2_max_concurrent_streams: Option<u32>,
    /// Its HTTP/2 connections' PINGs (`PING every 30000 ms, answered within 20000 ms`).
    #[serde(default)]
    pub http2_keepalive: Option<String>,
    /// The cookie that keeps a client on its backend (`sticky_cookie`), by name.
    #[serde(default)]
    pub sticky_cookie: Option<String>,
}

/// One backend of a pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backend {
    pub address: IpAddr,
    pub weight: u32,
    pub drain: bool,
    pub healthy: bool,
    /// Taken out by the proxy's outlier detection (probes do not end it).
    pub ejected: bool,
    /// The weight Maglev uses: 0 when drained, down or ejected (unless the pool fails open).
    pub effective_weight: u32,
    /// In its pool's slow start: the percent of its weight the proxy gives it so far.
    #[serde(default)]
    pub slow_start_percent: Option<u32>,
    /// A backup: it takes flows only while the pool's other backends cannot.
    #[serde(default)]
    pub backup: bool,
}

/// `GET /stats`: the fast path's counters, summed over CPUs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Per verdict and reason (`pass`, `tx`, `drop_…`).
    pub counters: Vec<Counter>,
    pub vips: Vec<VipTraffic>,
    pub backends: Vec<BackendTraffic>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Counter {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// What passed one VIP (address, port, protocol).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VipTraffic {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub traffic: Traffic,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendTraffic {
    pub address: IpAddr,
    pub traffic: Traffic,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub lru_hits: u64,
    pub lru_misses: u64,
}

/// The answer to `POST /commands` and `POST /reload`: one line per change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Changes {
    pub changes: Vec<String>,
}

/// `POST /cache/purge`'s request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Purge {
    pub route: String,
    pub path: Option<String>,
}

/// `POST /cache/purge`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Purged {
    pub purged: usize,
}

/// Every refusal and failure: 4xx and 5xx bodies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_as_lbctl_reads_it() {
        let status = Status {
            interface: "eth0".into(),
            pin_dir: "/sys/fs/bpf/sluice".into(),
            config: "/etc/sluice/sluice.toml".into(),
            uptime_seconds: 5,
            vips: 2,
            pools: 1,
            failing_open: vec![],
            last_reload: Some(LastReload { unix_seconds: 1, applied: true }),
            bgp: None,
            cluster: None,
        };
        let text = serde_json::to_string(&status).unwrap();
        let back: Status = serde_json::from_str(&text).unwrap();
        assert_eq!((back.interface, back.last_reload.map(|r| r.applied)), ("eth0".to_owned(), Some(true)));
    }

    #[test]
    fn flow_and_plan_queries_read_what_lbctl_sends() {
        let flow: FlowQuery =
            serde_json::from_str(r#"{"protocol": "udp", "source": "10.0.0.1:5", "vip": "[2001:db8::1]:53"}"#)
                .unwrap();
        assert_eq!(flow.protocol, Protocol::Udp);
        assert!(
            serde_json::from_str::<FlowQuery>(
                r#"{"protocol": "icmp", "source": "1.1.1.1:1", "vip": "1.1.1.1:1"}"#
            )
            .is_err()
        );
        let plan: PlanQuery =
            serde_json::from_str(r#"{"config_text": "x", "config_name": "n.toml"}"#).unwrap();
        assert!(plan.commands.is_empty() && plan.config_text.as_deref() == Some("x"));
        assert!(serde_json::from_str::<PlanQuery>(r#"{"config_path": "/dev/zero"}"#).is_err());
    }
}

/// `POST /upgrade`: the new lbd that took over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upgraded {
    pub pid: u32,
}
