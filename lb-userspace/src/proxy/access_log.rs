//! The access log: one line per request on log target `access`, logfmt or JSON (per listener),
//! written when the response is done (so it has the bytes sent). Values a client controls are
//! quoted and escaped, so none can forge a field; an API key in the query is redacted.
use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use crate::{
    config::{AccessLogFormat, LogFilter},
    proxy::{backend_stream::Kept, interim::Interim, log_sink, metrics::Label},
};

/// What one client connection is, for every request on it.
pub struct ClientConn {
    pub address: SocketAddr,
    /// `TLSv1_3`, `TLSv1_2`; None for plain HTTP.
    pub tls_version: Option<&'static str>,
    /// The server name the client asked for in its ClientHello.
    pub sni: Option<String>,
    /// The application protocol its handshake agreed (`h3`, `h2`, `http/1.1`; None: none, or
    /// plain).
    pub alpn: Option<&'static [u8]>,
    /// Backends' interim answers for the client, taken by the request that was polled as they
    /// came (`interim.rs`).
    pub interim: Interim,
    /// The backend connection it keeps between its requests to a pool with `proxy_protocol`.
    pub kept: Kept,
    /// Its client certificate as backends are told it (`client_cert`), on a listener with
    /// `forward_client_cert`.
    pub client_cert: Option<hyper::header::HeaderValue>,
    /// It showed a client certificate the listener verified (mTLS).
    pub client_verified: bool,
}

impl ClientConn {
    pub fn new(address: SocketAddr, tls_version: Option<&'static str>, sni: Option<String>) -> ClientConn {
        ClientConn {
            address,
            tls_version,
            sni,
            alpn: None,
            interim: Interim::default(),
            kept: Kept::default(),
            client_cert: None,
            client_verified: false,
        }
    }

    pub fn tls(&self) -> bool {
        self.tls_version.is_some()
    }

    /// The protocol its handshake agreed, as text (the listeners offer only ASCII names).
    pub fn alpn(&self) -> Option<&'static str> {
        self.alpn.and_then(|alpn| std::str::from_utf8(alpn).ok())
    }
}

/// One request's line, filled in as the request goes, written by [`Entry::write`].
pub struct Entry {
    pub started: Instant,
    pub method: String,
    pub host: String,
    /// Path and query, with a query API key already redacted.
    pub target: String,
    pub status: u16,
    pub upstream: Label,
    /// The upstream's time to its answer's head, when one answered (nginx's
    /// `$upstream_header_time`).
    pub upstream_seconds: Option<f64>,
    /// The backends tried (0: none; written when above 1, a retried request: Envoy's
    /// `%UPSTREAM_REQUEST_ATTEMPT_COUNT%`).
    pub tries: u32,
    /// Where a cache route's answer came from: HIT, MISS, REVALIDATED, UPDATING or STALE (nginx's
    /// `$upstream_cache_status`).
    pub cache: Option<&'static str>,
    pub request_id: String,
    /// Why the proxy answered by itself, when it did (`no route`, `rate limited`, ...).
    pub reason: Option<&'static str>,
    /// The client a trusted proxy forwarded (the listener's `client_address`): logged as the
    /// client, the connection's address as `peer`.
    pub forwarded_client: Option<IpAddr>,
    /// The request's User-Agent and Referer, when it sent them (nginx's `combined` format).
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    /// The user basic auth let in (nginx's `$remote_user`).
    pub user: Option<Arc<str>>,
    /// A gRPC call's status (`grpc-status`: its answer's head, its trailers as the body ends,
    /// or the proxy's refusal), Envoy's `%GRPC_STATUS%`: its HTTP status is 200 either way.
    pub grpc: Option<GrpcStatus>,
    pub format: AccessLogFormat,
    /// Which requests leave a line (None: every one).
    pub filter: Option<LogFilter>,
}

/// Whether `filter` keeps the line of a request answered `status` after `took`, whose ID is
/// `request_id` (sampled by its hash: the same ID is sampled alike on every host).
pub fn kept(
    filter: Option<&LogFilter>,
    status: u16,
    took: Option<std::time::Duration>,
    request_id: &str,
) -> bool {
    let Some(filter) = filter else {
        return true;
    };
    let sampled = |percent: f64| {
        let draw = lb_common::hash::murmur3_32(request_id.as_bytes(), 0x106) as f64 / (u32::MAX as f64 + 1.0);
        draw * 100.0 < percent
    };
    filter.status_at_least.is_some_and(|least| status >= least)
        || filter.slower_than.zip(took).is_some_and(|(limit, took)| took > limit)
        || filter.sample_percent.is_some_and(sampled)
}

/// A gRPC call's status as the log has it.
#[derive(Clone, Debug)]
pub enum GrpcStatus {
    /// Not seen yet (the trailers may bring it), or never: none is logged.
    Unknown,
    Code(u16),
    /// A gRPC-Web call's, whose trailers go into its body: set as they pass.
    Framed(FramedStatus),
}

/// Where a gRPC-Web answer's body puts the status its trailers carried, for the log: the code
/// plus one, 0 until then. Put in the answer's extensions where the body is made.
#[derive(Clone, Debug, Default)]
pub struct FramedStatus(Arc<std::sync::atomic::AtomicU32>);

impl FramedStatus {
    pub fn set(&self, trailers: &hyper::HeaderMap) {
        if let Some(code) = GrpcStatus::of(trailers).code() {
            self.0.store(u32::from(code) + 1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The status, once the trailers have passed.
    pub fn code(&self) -> Option<u16> {
        u16::try_from(self.0.load(std::sync::atomic::Ordering::Relaxed)).ok()?.checked_sub(1)
    }
}

impl GrpcStatus {
    /// The status `fields` (a head or trailers) carry, if any.
    pub fn of(fields: &hyper::HeaderMap) -> GrpcStatus {
        match fields.get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()) {
            Some(code) => GrpcStatus::Code(code),
            None => GrpcStatus::Unknown,
        }
    }

    fn code(&self) -> Option<u16> {
        match self {
            GrpcStatus::Code(code) => Some(*code),
            GrpcStatus::Unknown => None,
            GrpcStatus::Framed(framed) => framed.code(),
        }
    }
}

/// A value as logfmt writes it: bare when it is plain, else quoted with `"` and `\` escaped and
/// every control or non-ASCII byte written as `\xNN`.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    quote_into(&mut out, value);
    out
}

/// `quote(value)`, appended to `out`.
fn quote_into(out: &mut String, value: &str) {
    let plain = !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
    if plain {
        out.push_str(value);
        return;
    }
    out.push('"');
    for b in value.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b' ' => out.push(' '),
            _ if b.is_ascii_graphic() => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
}

/// `target` with the value of query parameter `param` replaced by `REDACTED`.
pub fn redact_query(target: &str, param: &str) -> String {
    let Some((path, query)) = target.split_once('?') else { return target.to_owned() };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k == param => format!("{k}=REDACTED"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

impl Entry {
    /// The line for this request, sent `bytes` body bytes on `conn`.
    pub fn line(&self, conn: &ClientConn, bytes: u64) -> String {
        let mut line = String::new();
        self.line_into(&mut line, conn, bytes);
        line
    }

    /// `line`, appended to `out` (no allocation of its own).
    fn line_into(&self, out: &mut String, conn: &ClientConn, bytes: u64) {
        match self.forwarded_client {
            Some(client) => {
                let _ = write!(out, "client={client} peer={} host=", conn.address);
            }
            None => {
                let _ = write!(out, "client={} host=", conn.address);
            }
        }
        quote_into(out, &self.host);
        out.push_str(" method=");
        quote_into(out, &self.method);
        out.push_str(" path=");
        quote_into(out, &self.target);
        let _ = write!(out, " status={}", self.status);
        if let Some(code) = self.grpc.as_ref().and_then(GrpcStatus::code) {
            let _ = write!(out, " grpc_status={code}");
        }
        out.push_str(" upstream=");
        if self.upstream.is_empty() {
            out.push('-');
        } else {
            quote_into(out, &self.upstream);
        }
        if let Some(seconds) = self.upstream_seconds {
            let _ = write!(out, " upstream_ms={:.3}", seconds * 1000.0);
        }
        if self.tries > 1 {
            let _ = write!(out, " tries={}", self.tries);
        }
        if let Some(cache) = self.cache {
            let _ = write!(out, " cache={cache}");
        }
        let millis = self.started.elapsed().as_secs_f64() * 1000.0;
        let _ = write!(out, " bytes={bytes} duration_ms={millis:.3} request_id=");
        quote_into(out, &self.request_id);
        if let Some(user) = &self.user {
            out.push_str(" user=");
            quote_into(out, user);
        }
        for (key, value) in [(" user_agent=", &self.user_agent), (" referer=", &self.referer)] {
            if let Some(value) = value {
                out.push_str(key);
                quote_into(out, value);
            }
        }
        if let Some(version) = conn.tls_version {
            let _ = write!(out, " tls={version} sni=");
            quote_into(out, conn.sni.as_deref().unwrap_or("-"));
            if let Some(alpn) = conn.alpn() {
                let _ = write!(out, " alpn={alpn}");
            }
        }
        if let Some(reason) = self.reason {
            out.push_str(" reason=");
            quote_into(out, reason);
        }
    }

    /// The JSON object for this request (serde_json escapes every value).
    pub fn json(&self, conn: &ClientConn, bytes: u64) -> String {
        let line = JsonLine {
            client: self.forwarded_client.map_or(Client::Peer(conn.address), Client::Forwarded),
            peer: self.forwarded_client.map(|_| conn.address),
            status: self.status,
            grpc_status: self.grpc.as_ref().and_then(GrpcStatus::code),
            request: Some(JsonRequest {
                host: &self.host,
                method: &self.method,
                path: &self.target,
                upstream: if self.upstream.is_empty() { "-" } else { &self.upstream },
                upstream_ms: self.upstream_seconds.map(|s| (s * 1e6).round() / 1e3),
                tries: (self.tries > 1).then_some(self.tries),
                cache: self.cache,
                bytes,
                duration_ms: (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
                request_id: &self.request_id,
                user: self.user.as_deref(),
                user_agent: self.user_agent.as_deref(),
                referer: self.referer.as_deref(),
            }),
            tls: conn.tls_version,
            sni: conn.tls_version.map(|_| conn.sni.as_deref().unwrap_or("-")),
            alpn: conn.alpn(),
            reason: self.reason,
        };
        serde_json::to_string(&line).unwrap_or_default()
    }

    /// Logs the line (through the worker's buffer: `log_sink`), if the listener's filter keeps it.
    pub fn write(&self, conn: &ClientConn, bytes: u64) {
        if !kept(self.filter.as_ref(), self.status, Some(self.started.elapsed()), &self.request_id) {
            return;
        }
        match self.format {
            AccessLogFormat::Logfmt => log_sink::write(|out| self.line_into(out, conn, bytes)),
            AccessLogFormat::Json => log_sink::write(|out| out.push_str(&self.json(conn, bytes))),
        }
    }
}

/// A JSON access-log line, borrowed from what it tells (no map of owned values per request);
/// serde_json escapes every value.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    client: Client,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<SocketAddr>,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_status: Option<u16>,
    /// None for a request the parser refused.
    #[serde(flatten)]
    request: Option<JsonRequest<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sni: Option<&'a str>,
    /// The protocol the TLS handshake agreed (`h3`, `h2`, `http/1.1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    alpn: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// A line's client: the connection's peer, or the address a trusted proxy forwarded.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Client {
    Peer(SocketAddr),
    Forwarded(IpAddr),
}

#[derive(serde::Serialize)]
struct JsonRequest<'a> {
    host: &'a str,
    method: &'a str,
    path: &'a str,
    upstream: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<&'a str>,
    bytes: u64,
    duration_ms: f64,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    referer: Option<&'a str>,
}

/// The line for a request the HTTP parser refused (it never had a method or a path).
pub fn refused(
    conn: &ClientConn,
    status: u16,
    reason: &str,
    format: AccessLogFormat,
    filter: Option<&LogFilter>,
) {
    // No ID and no time of its own: a filter keeps it by its status alone.
    let by_status = filter.map(|f| LogFilter { slower_than: None, sample_percent: None, ..*f });
    if !kept(by_status.as_ref(), status, None, "") {
        return;
    }
    log_sink::write(|out| refused_into(out, conn, status, reason, format));
}

/// `refused`'s line, appended to `out`.
fn refused_into(out: &mut String, conn: &ClientConn, status: u16, reason: &str, format: AccessLogFormat) {
    match format {
        AccessLogFormat::Logfmt => {
            let _ = write!(out, "client={} status={status} reason=", conn.address);
            quote_into(out, reason);
        }
        AccessLogFormat::Json => {
            let line = JsonLine {
                client: Client::Peer(conn.address),
                peer: None,
                status,
                grpc_status: None,
                request: None,
                tls: None,
                sni: None,
                alpn: None,
                reason: Some(reason),
            };
            out.push_str(&serde_json::to_string(&line).unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_value_cannot_forge_fields() {
        let forged = quote("abc status=500 upstream=10.6.6.6:80");
        assert_eq!(forged, "\"abc status=500 upstream=10.6.6.6:80\"");
        assert_eq!(quote("a\"b\\c\nd\u{7f}é"), "\"a\\\"b\\\\c\\x0ad\\x7f\\xc3\\xa9\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("/plain/path?x=1"), "\"/plain/path?x=1\"");
        assert_eq!(quote("example.test"), "example.test");
    }

    #[test]
    fn a_query_api_key_is_redacted() {
        assert_eq!(redact_query("/a?x=1&key=s3cret&y=2", "key"), "/a?x=1&key=REDACTED&y=2");
        assert_eq!(redact_query("/a?keys=1", "key"), "/a?keys=1");
        assert_eq!(redact_query("/a", "key"), "/a");
    }

    /// A logfmt line's (key, value) pairs, as a log reader splits them.
    fn fields(line: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut rest = line;
        while let Some((key, after)) = rest.trim_start().split_once('=') {
            let (value, next) = match after.strip_prefix('"') {
                Some(quoted) => {
                    let mut end = 0;
                    let bytes = quoted.as_bytes();
                    while end < bytes.len() && bytes[end] != b'"' {
                        end += if bytes[end] == b'\\' { 2 } else { 1 };
                    }
                    (&quoted[..end], &quoted[(end + 1).min(quoted.len())..])
                }
                None => after.split_once(' ').unwrap_or((after, "")),
            };
            out.push((key.to_owned(), value.to_owned()));
            rest = next;
        }
        out
    }

    #[test]
    fn a_filter_keeps_errors_slow_requests_and_a_sample_of_the_rest() {
        use std::time::Duration;
        let filter = LogFilter {
            status_at_least: Some(500),
            slower_than: Some(Duration::from_millis(200)),
            sample_percent: Some(10.0),
        };
        let ids: Vec<String> = (0..10_000).map(|i| format!("{i:024x}")).collect();
        let fast = Some(Duration::from_millis(5));
        let sampled = ids.iter().filter(|id| kept(Some(&filter), 200, fast, id)).count();
        assert!((800..=1200).contains(&sampled), "{sampled} of 10000 sampled at 10%");
        // The same ID is sampled alike every time (on every host it crosses).
        let one = &ids[0];
        assert_eq!(kept(Some(&filter), 200, fast, one), kept(Some(&filter), 404, fast, one));
        assert!(ids.iter().all(|id| kept(Some(&filter), 503, fast, id)), "errors: all");
        assert!(
            ids.iter().all(|id| kept(Some(&filter), 200, Some(Duration::from_millis(250)), id)),
            "slow: all"
        );
        let errors_only = LogFilter { status_at_least: Some(400), slower_than: None, sample_percent: None };
        assert!(!kept(Some(&errors_only), 399, fast, one) && kept(Some(&errors_only), 400, None, one));
        assert!(kept(None, 200, fast, one), "no filter: every line");
    }

    #[test]
    fn the_line_names_every_field_once() {
        let conn = ClientConn {
            alpn: Some(b"h3"),
            ..ClientConn::new("192.0.2.1:5000".parse().unwrap(), Some("TLSv1_3"), Some("example.test".into()))
        };
        let entry = Entry {
            started: Instant::now(),
            method: "GET".into(),
            host: "example.test".into(),
            target: "/".into(),
            status: 200,
            upstream: "10.0.0.1:80".into(),
            upstream_seconds: Some(0.0012341),
            tries: 2,
            cache: None,
            request_id: "abc status=500".into(),
            reason: None,
            forwarded_client: None,
            user_agent: Some("curl/7.88.1 status=500".into()),
            referer: None,
            user: Some("ann status=500".into()),
            grpc: None,
            format: AccessLogFormat::Logfmt,
            filter: None,
        };
        let line = entry.line(&conn, 42);
        let keys = fields(&line);
        let status: Vec<_> = keys.iter().filter(|(k, _)| k == "status").collect();
        assert_eq!(status.len(), 1, "{line}");
        assert_eq!(status[0].1, "200");
        assert!(
            line.contains("bytes=42 ") && line.contains("tls=TLSv1_3 sni=example.test alpn=h3"),
            "{line}"
        );
        assert!(line.contains("request_id=\"abc status=500\" user=\"ann status=500\""), "{line}");
        assert!(line.contains(" upstream=10.0.0.1:80 upstream_ms=1.234 tries=2 bytes=42 "), "{line}");
        let v: serde_json::Value = serde_json::from_str(&entry.json(&conn, 42)).unwrap();
        assert_eq!((v["upstream_ms"].as_f64(), v["tries"].as_u64()), (Some(1.234), Some(2)));
        let once = Entry { tries: 1, upstream_seconds: None, ..entry };
        let line = once.line(&conn, 42);
        assert!(!line.contains("tries=") && !line.contains("upstream_ms="), "one try, none said: {line}");
        let entry = Entry { tries: 2, upstream_seconds: Some(0.0012341), ..once };
        assert!(line.starts_with("client=192.0.2.1:5000 host="), "{line}");
        // What the client sent, quoted; what it did not, left out.
        assert!(
            line.contains(" user_agent=\"curl/7.88.1 status=500\"") && !line.contains("referer="),
            "{line}"
        );
        // Behind a trusted proxy: the client it forwarded, then the connection's peer.
        let behind = Entry { forwarded_client: Some("198.51.100.7".parse().unwrap()), ..entry };
        let line = behind.line(&conn, 42);
        assert!(line.starts_with("client=198.51.100.7 peer=192.0.2.1:5000 host="), "{line}");
        let v: serde_json::Value = serde_json::from_str(&behind.json(&conn, 42)).unwrap();
        assert_eq!(
            (v["client"].as_str(), v["peer"].as_str()),
            (Some("198.51.100.7"), Some("192.0.2.1:5000"))
        );
        assert_eq!(v["alpn"].as_str(), Some("h3"));
        assert!(!line.contains("cache=") && v.get("cache").is_none(), "not a cache route's");
        // A cache route's answer says where it came from, after its upstream.
        let cached = Entry {
            cache: Some("STALE"),
            upstream: "cache".into(),
            upstream_seconds: None,
            tries: 0,
            ..behind
        };
        assert!(cached.line(&conn, 42).contains(" upstream=cache cache=STALE bytes=42 "));
        let v: serde_json::Value = serde_json::from_str(&cached.json(&conn, 42)).unwrap();
        assert_eq!(v["cache"].as_str(), Some("STALE"));
    }

    #[test]
    fn the_json_line_is_one_object_with_the_same_fields() {
        let conn = ClientConn::new("192.0.2.1:5000".parse().unwrap(), None, None);
        let entry = Entry {
            started: Instant::now(),
            method: "GET".into(),
            host: "example.test".into(),
            target: "/a?b=\"c\"\n".into(),
            status: 404,
            upstream: "".into(),
            upstream_seconds: None,
            tries: 0,
            cache: None,
            request_id: "abc\", \"status\": 500".into(),
            reason: Some("no route"),
            forwarded_client: None,
            user_agent: None,
            referer: Some("https://a.test/\", \"status\": 500".into()),
            user: None,
            grpc: None,
            format: AccessLogFormat::Json,
            filter: None,
        };
        let line = entry.json(&conn, 7);
        assert!(!line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!((v["status"].as_u64(), v["bytes"].as_u64()), (Some(404), Some(7)));
        assert_eq!(v["request_id"], "abc\", \"status\": 500", "a value cannot forge a field");
        assert_eq!((v["upstream"].as_str(), v["reason"].as_str()), (Some("-"), Some("no route")));
        assert!(v.get("tls").is_none() && v.get("peer").is_none() && v.get("user_agent").is_none());
        assert!(v.get("user").is_none());
        assert_eq!(v["referer"], "https://a.test/\", \"status\": 500");
        assert!(v.get("grpc_status").is_none(), "not a gRPC call");
        let grpc = Entry { grpc: Some(GrpcStatus::Code(14)), ..entry };
        let v: serde_json::Value = serde_json::from_str(&grpc.json(&conn, 7)).unwrap();
        assert_eq!(v["grpc_status"], 14);
        let logfmt = Entry { format: AccessLogFormat::Logfmt, ..grpc };
        let line = logfmt.line(&conn, 7);
        assert!(line.contains(" status=404 grpc_status=14 upstream=-"), "{line}");
        // A gRPC-Web call's status comes from its body's trailers, once they have passed.
        let framed = FramedStatus::default();
        let web = Entry { grpc: Some(GrpcStatus::Framed(framed.clone())), ..logfmt };
        assert!(!web.line(&conn, 7).contains("grpc_status"), "not yet");
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().unwrap());
        framed.set(&trailers);
        assert!(web.line(&conn, 7).contains(" status=404 grpc_status=5 upstream=-"));
        assert_eq!((v["client"].as_str(), v["duration_ms"].is_f64()), (Some("192.0.2.1:5000"), true));
        // A parser refusal: client, status and reason only.
        let mut refusal = String::new();
        refused_into(&mut refusal, &conn, 400, "bad \"header\"", AccessLogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&refusal).unwrap();
        assert_eq!(
            v,
            serde_json::json!({ "client": "192.0.2.1:5000", "status": 400, "reason": "bad \"header\"" })
        );
        refusal.clear();
        refused_into(&mut refusal, &conn, 431, "too many fields", AccessLogFormat::Logfmt);
        assert_eq!(refusal, "client=192.0.2.1:5000 status=431 reason=\"too many fields\"");
    }
}
