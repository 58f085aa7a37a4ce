//! Headers: the upstream request's head and the client's response head. Hop-by-hop fields
//! (RFC 9110 §7.6.1) and the ones Connection names are dropped, but never Host; forwarding
//! fields are set (X-Forwarded-For/-Proto, Forwarded, Via, X-Request-Id), rendered as head
//! lines beside the request's map (`Forwarding`).
use std::{io::Write as _, net::IpAddr};

use hyper::{
    HeaderMap,
    header::{self, HeaderName, HeaderValue},
    http::request::Parts,
};
use smallvec::SmallVec;

use crate::{
    config::HeaderEdits,
    proxy::{
        access_log::ClientConn,
        byte_set::TCHAR,
        h1::head::value_lists,
        own_fields::{self, VIA, X_REQUEST_ID},
    },
};

/// Hop-by-hop fields besides Connection and Upgrade. A `static`, made once: a `const` array of
/// names (which have drop glue) is built and dropped again at every use, ~240 instructions a
/// request where every header name was looked up in it (`bench l7-instructions`).
static HOP_BY_HOP: [HeaderName; 5] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Drops hop-by-hop fields (keeping Upgrade and Connection for a protocol switch).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most heads carry few of these: one pass over the names finds them, and only those found
    // are removed (a removal hashes its name: measured ~2% of a proxied request when every
    // hop-by-hop name was removed from every head).
    let hop_by_hop = |name: &HeaderName| {
        name == header::CONNECTION || name == header::UPGRADE || HOP_BY_HOP.contains(name)
    };
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    let mut found: SmallVec<[HeaderName; 4]> = SmallVec::new();
    // Options that are not fields, or fields removed below anyway, are skipped; Host is never
    // removed (the request would lose its meaning).
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("keep-alive")
                && !t.eq_ignore_ascii_case("host")
                && !t.eq_ignore_ascii_case("upgrade")
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok());
    found.extend(named.filter(|name| headers.contains_key(name)));
    let switching = |name: &HeaderName| name == header::CONNECTION || name == header::UPGRADE;
    for name in headers.keys() {
        if (HOP_BY_HOP.contains(name) || (!keep_upgrade && switching(name))) && !found.contains(name) {
            found.push(name.clone());
        }
    }
    for name in found {
        headers.remove(name);
    }
}

/// A route's edits of a message's fields (`request_headers`, `response_headers`): its removals,
/// then its fields set, each replacing the message's own of its name. A route without edits
/// costs one branch.
#[inline]
pub fn edit(headers: &mut HeaderMap, edits: &HeaderEdits) {
    if edits.is_empty() {
        return;
    }
    for name in &edits.remove {
        headers.remove(name);
    }
    for (name, value) in &edits.set {
        headers.insert(name.clone(), value.clone());
    }
}

/// Appends an address's text (a fast path for IPv4, which `Display` pads through `fmt`: its
/// digits go to the stack, then into `out` in one copy, not a capacity check a byte).
fn push_ip(out: &mut Lines, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 1;
            }
            out.extend_from_slice(&text[..len]);
        }
        IpAddr::V6(v6) => {
            let mut text = std::io::Cursor::new([0u8; 48]);
            let _ = write!(text, "{v6}");
            let len = text.position() as usize;
            out.extend_from_slice(&text.get_ref()[..len]);
        }
    }
}

/// Head lines: a `Vec` sized for the usual five fields once, then filled with plain copies.
/// (A `SmallVec` on the stack made each append an insert: a reserve, a move of the nothing
/// after it and a copy, two library calls for a few bytes; measured in docs/performance.md.)
type Lines = Vec<u8>;
/// Room for the five fields with an IPv6 client, a long Host and a client's X-Forwarded-For.
const LINES_CAPACITY: usize = 384;

/// The fields the proxy sets on every upstream request; a client's own are replaced. A
/// `static`, as `HOP_BY_HOP`.
pub static SET_BY_PROXY: [HeaderName; 5] =
    [X_FORWARDED_FOR, header::FORWARDED, X_REQUEST_ID, X_FORWARDED_PROTO, VIA];

/// The fields the proxy adds to a request for its backend, rendered once as head lines
/// (`name: value\r\n`). They stay out of the request's header map (building five values and
/// inserting them into it was ~4% of an HTTP/1.1 request): an HTTP/1.1 backend gets the lines
/// in its request head, the client's own fields of these names left out (`SET_BY_PROXY`); an
/// HTTP/2 backend gets them inserted into its copy of the map (`apply`). Beside them, the
/// client connection's two ends, for a pool that sends a PROXY protocol header (`ends`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forwarding {
    lines: Lines,
    /// The client's address and the listener's, as a PROXY header names them.
    pub ends: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
}

impl Forwarding {
    /// The head lines.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// Puts the fields into `headers`, replacing the client's.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for line in self.lines.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii_start());
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                headers.insert(name, value);
            }
        }
    }

    fn field(&mut self, name: &[u8], value: impl FnOnce(&mut Lines)) {
        self.lines.extend_from_slice(name);
        self.lines.extend_from_slice(b": ");
        value(&mut self.lines);
        self.lines.extend_from_slice(b"\r\n");
    }
}

/// Appends Forwarded's `host` parameter (RFC 7239 §5.3): the Host the backend gets, as the
/// client sent it (its port too: an application that builds its own links from it needs the
/// listener's port). A token as it is, anything else quoted, so that a Host such as
/// `a;for=192.0.2.1,for=…` cannot add parameters or elements of its own. A request with no
/// host (HTTP/1.0) has none.
fn push_forwarded_host(out: &mut Lines, host: &[u8]) {
    if host.is_empty() {
        return;
    }
    // One pass of table loads, no early exit (a host with a port is quoted on every request:
    // a scan for the first non-token byte, then one for bytes to escape, cost ~150
    // instructions a request; docs/performance.md, row 27).
    let class = host.iter().fold(TOKEN, |class, &b| class | HOST_BYTE[b as usize]);
    if class == TOKEN {
        out.extend_from_slice(b";host=");
        out.extend_from_slice(host);
        return;
    }
    out.extend_from_slice(b";host=\"");
    if class & ESCAPED == 0 {
        out.extend_from_slice(host);
    } else {
        for &b in host {
            if HOST_BYTE[b as usize] & ESCAPED != 0 {
                out.push(b'\\');
            }
            out.push(b);
        }
    }
    out.push(b'"');
}

/// Classes of a byte in Forwarded's host: part of a token, quoted, or escaped inside quotes
/// (RFC 9110 §5.6.4's quoted-pair). The guard's host check lets no `"` or `\` through; the
/// escape is for the parameter's sake, whatever a host holds.
const TOKEN: u8 = 0;
const QUOTED: u8 = 1;
const ESCAPED: u8 = 2;
static HOST_BYTE: [u8; 256] = {
    let mut table = [QUOTED; 256];
    let mut b = 0;
    while b < 256 {
        if TCHAR[b] {
            table[b] = TOKEN;
        }
        b += 1;
    }
    table[b'"' as usize] = QUOTED | ESCAPED;
    table[b'\\' as usize] = QUOTED | ESCAPED;
    table
};

/// Rewrites the client's request head for the backend; returns the forwarding fields to add.
/// `host`: the client's Host field (`guard::Read`, which found at most one); `forwarded_for`:
/// its first X-Forwarded-For, which the client's address is appended to.
#[allow(
    clippy::too_many_arguments,
    reason = "the request, its client connection's facts, and the backend's kind"
)]
pub fn upstream_request(
    parts: &mut Parts,
    host: Option<&HeaderValue>,
    conn: &ClientConn,
    local: std::net::SocketAddr,
    forwarded_for: Option<&HeaderValue>,
    request_id: &HeaderValue,
    h2_upstream: bool,
    upgrade: bool,
) -> Forwarding {
    // A target with an authority (HTTP/1.1's absolute form, HTTP/2's `:authority`) names the
    // host, and the request was routed by it: the backend's Host says the same, whatever Host
    // the client sent beside it (RFC 9112 §3.2.2, RFC 9113 §8.3.1).
    let host = match parts.uri.authority() {
        Some(authority) => {
            if host.is_none_or(|h| h.as_bytes() != authority.as_str().as_bytes())
                && let Ok(value) = HeaderValue::from_str(authority.as_str())
            {
                parts.headers.insert(header::HOST, value);
            }
            authority.as_str().as_bytes()
        }
        None => host.map_or(&b""[..], HeaderValue::as_bytes),
    };
    // gRPC needs `te: trailers` end to end; every other hop-by-hop header stops here.
    let te_trailers = h2_upstream
        && parts.headers.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if te_trailers {
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let client = conn.address.ip();
    let proto = if conn.tls() { "https" } else { "http" };
    let mut forwarding =
        Forwarding { lines: Lines::with_capacity(LINES_CAPACITY), ends: Some((conn.address, local)) };
    forwarding.field(b"x-forwarded-for", |out| {
        if let Some(previous) = forwarded_for {
            out.extend_from_slice(previous.as_bytes());
            out.extend_from_slice(b", ");
        }
        push_ip(out, client);
    });
    forwarding.field(b"forwarded", |out| {
        out.extend_from_slice(if client.is_ipv6() { b"for=\"[" } else { b"for=" });
        push_ip(out, client);
        if client.is_ipv6() {
            out.extend_from_slice(b"]\"");
        }
        out.extend_from_slice(b";proto=");
        out.extend_from_slice(proto.as_bytes());
        push_forwarded_host(out, host);
    });
    forwarding.field(b"x-request-id", |out| out.extend_from_slice(request_id.as_bytes()));
    forwarding.field(b"x-forwarded-proto", |out| out.extend_from_slice(proto.as_bytes()));
    forwarding.field(b"via", |out| out.extend_from_slice(own_fields::via(parts.version).as_bytes()));
    if let Some(cert) = &conn.client_cert {
        forwarding.field(b"x-forwarded-client-cert", |out| out.extend_from_slice(cert.as_bytes()));
    }
    forwarding
}

/// Rewrites the backend's response head for the client: its hop-by-hop fields go. The
/// proxy's Via is said by the client's connection as it writes the answer (`Handled::via`).
pub fn client_response(headers: &mut HeaderMap, switching: bool) {
    strip_hop_by_hop(headers, switching);
}

/// Adds `name` to an answer's Vary, unless Vary names it already or says `*` (the answer
/// varies by everything): what gzip and CORS each make an answer depend on.
pub fn vary_by(headers: &mut HeaderMap, name: &'static str) {
    let listed = headers
        .get_all(header::VARY)
        .iter()
        .any(|value| value_lists(value.as_bytes(), name) || value_lists(value.as_bytes(), "*"));
    if !listed {
        headers.append(header::VARY, HeaderValue::from_static(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listener the tests' requests reached.
    const LOCAL: std::net::SocketAddr =
        std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 0, 4)), 80);

    #[test]
    fn connection_cannot_remove_host() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "example.test".parse().unwrap());
        headers.insert(header::CONNECTION, "close, Host, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.get(header::HOST).unwrap(), "example.test");
        assert!(!headers.contains_key("x-secret") && !headers.contains_key(header::CONNECTION));
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in ["0.0.0.0", "9.10.99.100", "255.254.1.20", "192.0.2.1", "::1", "2001:db8::5"] {
            let ip: IpAddr = text.parse().unwrap();
            let mut out = Lines::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out.to_vec()).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn forwarding_fields_name_the_client() {
        let (mut parts, ()) = hyper::Request::new(()).into_parts();
        parts.headers.insert(X_FORWARDED_FOR, "203.0.113.7".parse().unwrap());
        parts.headers.insert(header::CONNECTION, "keep-alive, x-hop".parse().unwrap());
        parts.headers.insert("x-hop", "1".parse().unwrap());
        let conn = ClientConn::new("[2001:db8::5]:4000".parse().unwrap(), None, None);
        let id = HeaderValue::from_static("abc");
        parts.headers.insert(VIA, "1.0 client-side".parse().unwrap());
        let previous = parts.headers.get(X_FORWARDED_FOR).cloned();
        let host = HeaderValue::from_static("example.test");
        let forwarding =
            upstream_request(&mut parts, Some(&host), &conn, LOCAL, previous.as_ref(), &id, false, false);
        assert!(!parts.headers.contains_key("x-hop") && !parts.headers.contains_key(header::CONNECTION));
        // As an HTTP/1.1 backend gets them: lines after the request's own fields.
        assert_eq!(
            String::from_utf8_lossy(forwarding.lines()),
            "x-forwarded-for: 203.0.113.7, 2001:db8::5\r\n\
             forwarded: for=\"[2001:db8::5]\";proto=http;host=example.test\r\n\
             x-request-id: abc\r\nx-forwarded-proto: http\r\nvia: 1.1 sluice\r\n"
        );
        // As an HTTP/2 backend gets them: in the map, the client's own replaced.
        forwarding.apply(&mut parts.headers);
        let h = &parts.headers;
        assert_eq!(h[X_FORWARDED_FOR], "203.0.113.7, 2001:db8::5");
        assert_eq!(h[header::FORWARDED], "for=\"[2001:db8::5]\";proto=http;host=example.test");
        assert_eq!(
            (&h[X_REQUEST_ID], &h[X_FORWARDED_PROTO]),
            (&"abc".parse().unwrap(), &"http".parse().unwrap())
        );
        assert_eq!(h.get_all(VIA).iter().collect::<Vec<_>>(), ["1.1 sluice"]);
    }

    fn forwarded_for(uri: &str, host: Option<&str>) -> (Option<String>, String) {
        let mut request = hyper::Request::builder().uri(uri);
        if let Some(host) = host {
            request = request.header(header::HOST, host);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        let conn = ClientConn::new("192.0.2.9:4000".parse().unwrap(), None, None);
        let id = HeaderValue::from_static("abc");
        let received = parts.headers.get(header::HOST).cloned();
        let forwarding =
            upstream_request(&mut parts, received.as_ref(), &conn, LOCAL, None, &id, false, false);
        forwarding.apply(&mut parts.headers);
        let host = parts.headers.get(header::HOST).map(|h| h.to_str().unwrap().to_owned());
        (host, parts.headers[header::FORWARDED].to_str().unwrap().to_owned())
    }

    #[test]
    fn the_backend_gets_the_host_the_request_was_routed_by() {
        // Origin form: the client's Host, as it came, in Host and in Forwarded (with its port:
        // an application building links from Forwarded needs the listener's).
        let (host, fwd) = forwarded_for("/x", Some("Example.test:8080"));
        assert_eq!(host.as_deref(), Some("Example.test:8080"));
        assert_eq!(fwd, "for=192.0.2.9;proto=http;host=\"Example.test:8080\"");
        // Absolute form (and HTTP/2's :authority): the target's authority replaces the Host beside it.
        let (host, fwd) = forwarded_for("http://public.test:8080/x", Some("admin.test"));
        assert_eq!(host.as_deref(), Some("public.test:8080"));
        assert_eq!(fwd, "for=192.0.2.9;proto=http;host=\"public.test:8080\"");
        let (host, fwd) = forwarded_for("https://public.test/x", None);
        assert_eq!(host.as_deref(), Some("public.test"));
        assert_eq!(fwd, "for=192.0.2.9;proto=http;host=public.test");
        // HTTP/1.0 without a host: Forwarded names none (an HTTP/1.1 backend gets its own
        // address as Host, from the upstream phase).
        let (host, fwd) = forwarded_for("/x", None);
        assert_eq!((host, fwd.as_str()), (None, "for=192.0.2.9;proto=http"));
    }

    #[test]
    fn a_host_cannot_forge_forwarded_parameters() {
        let (_, fwd) = forwarded_for("/", Some("a;for=6.6.6.6,for=7.7.7.7"));
        assert_eq!(fwd, "for=192.0.2.9;proto=http;host=\"a;for=6.6.6.6,for=7.7.7.7\"");
        let (_, fwd) = forwarded_for("/", Some("[2001:db8::1]:80"));
        assert_eq!(fwd, "for=192.0.2.9;proto=http;host=\"[2001:db8::1]:80\"");
        let mut out = Lines::new();
        push_forwarded_host(&mut out, b"a\"b\\c");
        assert_eq!(&out[..], b";host=\"a\\\"b\\\\c\"");
    }

    #[test]
    fn an_upgrade_keeps_its_fields() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        strip_hop_by_hop(&mut headers, true);
        assert!(headers.contains_key(header::UPGRADE) && headers.contains_key(header::CONNECTION));
        assert!(!headers.contains_key("keep-alive"));
    }
}
