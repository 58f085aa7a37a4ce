//! From the raw structs to the typed model: every check, every error collected with its
//! file and line (nothing stops at the first), and the helpers the checks share.
use super::raw::*;
use super::*;

/// Collects errors against one source text, turning byte spans into line numbers.
pub(super) struct Errors<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) found: Vec<ConfigError>,
    /// Whether files the config names (certificates, keys, key lists) are checked for
    /// readability; not for a config an admin client sent (lbd opens no path a client names).
    pub(super) open_files: bool,
}

/// `text` with the section (from its `[header]` line to the next header) around byte `at`
/// replaced by empty lines; None when there is no header to cut at (a syntax error, or one in
/// the top-level keys), since nothing more can be read then.
pub(super) fn blank_section(text: &str, at: usize) -> Option<String> {
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
pub(super) fn not_a_host(addr: IpAddr) -> Option<&'static str> {
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
pub(super) fn short(name: &str) -> String {
    match name.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &name[..at]),
        None => name.to_owned(),
    }
}

impl Errors<'_> {
    /// A name must be 1 to `MAX_NAME_BYTES` bytes.
    pub(super) fn name(&mut self, name: &Spanned<String>, what: &str) {
        let n = name.get_ref().len();
        if n == 0 || n > MAX_NAME_BYTES {
            self.at(
                name.span(),
                format!("{what} name must be 1 to {MAX_NAME_BYTES} bytes (this one has {n})"),
            );
        }
    }

    pub(super) fn line_of(&self, span: Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())].matches('\n').count() + 1
    }

    pub(super) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let line = self.line_of(span);
        self.found.push(ConfigError { file: self.file.to_owned(), line, message: message.into() });
    }

    /// Parses a spanned string with `parse`, reporting `what` on failure.
    pub(super) fn parse<T>(
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

pub(super) fn parse_mac(text: &str) -> Option<[u8; 6]> {
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

pub(super) fn validate(raw: RawConfig, errors: &mut Errors) -> Config {
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
        let hash_key = match raw_pool.hash_key.as_deref().map(HashKey::parse) {
            None => HashKey::ClientIp,
            Some(Some(key)) => key,
            Some(None) => {
                errors.at(
                    raw_pool.name.span(),
                    format!("pool `{name}`: hash_key must be header:NAME, cookie:NAME or client_ip"),
                );
                HashKey::ClientIp
            }
        };
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
            // A key file is opened only where files are (never for a config text a client sent).
            if (j.algorithm == JwtAlgorithm::HS256 || errors.open_files)
                && let Err(err) = j.decoding_key()
            {
                errors.at(raw.pool.span(), format!("jwt: {err}"));
            }
            if let Some(name) = &j.subject_header
                && hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            {
                errors.at(raw.pool.span(), format!("jwt: subject_header `{name}` is not a header name"));
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

    let bgp = raw.bgp.map(|b| {
        if !b.routes_file.get_ref().is_absolute() {
            errors.at(b.routes_file.span(), "bgp routes_file must be an absolute path");
        }
        if b.withdraw_wait_ms.is_some_and(|ms| ms > 60_000) {
            errors.at(b.routes_file.span(), "bgp withdraw_wait_ms must be at most 60000");
        }
        Bgp {
            routes_file: b.routes_file.into_inner(),
            control_socket: b.control_socket.unwrap_or_else(|| PathBuf::from(DEFAULT_BIRD_SOCKET)),
            birdc: b.birdc.unwrap_or_else(|| PathBuf::from("birdc")),
            drained: b.drained,
            withdraw_wait: Duration::from_millis(b.withdraw_wait_ms.unwrap_or(2_000)),
        }
    });
    if bgp.is_some() && !has_dataplane {
        errors.at(0..0, "[bgp] announces VIPs, which need [dataplane]");
    }
    let cluster = raw.cluster.map(|c| {
        let span = c.endpoints.span();
        let endpoints: Vec<String> = c
            .endpoints
            .into_inner()
            .iter()
            .filter_map(|e| {
                let host_port = e.strip_prefix("http://").unwrap_or(e).trim_end_matches('/');
                let valid = host_port
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !valid {
                    errors.at(span.clone(), format!("cluster endpoint `{e}`: expected http://HOST:PORT"));
                }
                valid.then(|| host_port.to_owned())
            })
            .collect();
        if endpoints.is_empty() {
            errors.at(span, "cluster needs at least one endpoint");
        }
        let mut prefix = c.prefix.unwrap_or_else(|| "/sluice/".to_owned());
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Cluster { endpoints, prefix }
    });
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
        bgp,
        cluster,
    }
}
