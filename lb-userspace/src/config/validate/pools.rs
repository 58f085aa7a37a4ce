//! `[[pool]]`: names, backends, health checks, balancing, L7 settings.
use super::*;

/// The pools by name, each checked in steps (its backends, its health check, its hash key, its
/// outlier ejection) and given its defaults.
pub(in crate::config) fn check(
    raw_pools: Vec<RawPool>,
    resolve: &impl Fn(Spanned<PathBuf>) -> Spanned<PathBuf>,
    errors: &mut Errors,
) -> BTreeMap<String, Pool> {
    let mut pools = BTreeMap::new();
    for raw_pool in raw_pools {
        errors.name(&raw_pool.name, "pool");
        let name = raw_pool.name.get_ref().clone();
        let backends = backends(raw_pool.backends, &name, errors);
        let health = raw_pool.health.map(|h| health(h, raw_pool.protocol, &name, errors));
        let hash_key = hash_key(raw_pool.hash_key.as_deref(), &raw_pool.name, errors);
        if let Some(outlier) = &raw_pool.outlier {
            outlier_bounds(outlier, &name, errors);
        }
        let tls = backend_tls(raw_pool.tls, raw_pool.protocol, &raw_pool.name, resolve, errors);
        if let Some(version) = &raw_pool.proxy_protocol
            && raw_pool.protocol.is_http2()
        {
            errors.at(
                version.span(),
                format!("pool `{name}`: proxy_protocol is for HTTP/1.1 pools (an HTTP/2 connection carries many clients' requests)"),
            );
        }
        let http2 = http2(
            raw_pool.http2_max_concurrent_streams,
            raw_pool.http2_keepalive,
            raw_pool.protocol,
            &name,
            errors,
        );
        let pool = Pool {
            name: name.clone(),
            backends: backends.clone(),
            health,
            port: raw_pool.port.unwrap_or(80),
            balance: raw_pool.balance,
            hash_key,
            protocol: raw_pool.protocol,
            max_requests_per_backend: raw_pool.max_requests_per_backend,
            max_pending_requests: raw_pool.max_pending_requests,
            outlier: raw_pool.outlier.map(Spanned::into_inner),
            connect_timeout: raw_pool.connect_timeout_ms.map(|ms| {
                if *ms.get_ref() == 0 || *ms.get_ref() > 60_000 {
                    errors.at(ms.span(), format!("pool `{name}`: connect_timeout_ms must be 1 to 60000"));
                }
                Duration::from_millis(*ms.get_ref())
            }),
            tls,
            proxy_protocol: raw_pool.proxy_protocol.map(Spanned::into_inner),
            slow_start: raw_pool.slow_start_ms.map(|ms| slow_start(ms, raw_pool.balance, &name, errors)),
            keep_alive: keep_alive(
                raw_pool.keepalive_timeout_ms,
                raw_pool.max_requests_per_connection,
                &name,
                errors,
            ),
            http2,
            sticky_cookie: raw_pool.sticky_cookie.map(|c| sticky_cookie(c, &name, errors)),
            dns: raw_pool.dns.map(|dns| pool_dns(dns, &backends, &name, errors)),
        };
        if pools.insert(name.clone(), pool).is_some() {
            errors.at(raw_pool.name.span(), format!("pool `{name}` is defined twice"));
        }
    }
    pools
}

/// A pool's DNS name: a host name (labels of 1 to 63 letters, digits, `-` and `_`, 253
/// characters at most), asked every 1 s to an hour (5 s by default, Envoy's), an empty answer
/// held 0 to a day (30 s by default, HAProxy's `hold nx`); no backup among the backends the
/// file lists (they come and go with the records).
fn pool_dns(raw: Spanned<RawPoolDns>, backends: &[BackendSpec], pool: &str, errors: &mut Errors) -> PoolDns {
    let at = raw.span();
    let raw = raw.into_inner();
    let name = raw.name.strip_suffix('.').unwrap_or(&raw.name).to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) || name.parse::<IpAddr>().is_ok() {
        errors.at(at.clone(), format!("pool `{pool}`: dns: `{}` is not a host name", raw.name));
    }
    let interval_ms = raw.interval_ms.unwrap_or(5_000);
    if !(1_000..=3_600_000).contains(&interval_ms) {
        errors.at(at.clone(), format!("pool `{pool}`: dns: interval_ms must be 1000 to 3600000"));
    }
    let empty_hold_ms = raw.empty_hold_ms.unwrap_or(30_000);
    if empty_hold_ms > 86_400_000 {
        errors.at(at.clone(), format!("pool `{pool}`: dns: empty_hold_ms must be at most 86400000 (a day)"));
    }
    if backends.iter().any(|b| b.backup) {
        errors.at(
            at,
            format!(
                "pool `{pool}`: dns: its backends come and go with the name's records, so none is a backup"
            ),
        );
    }
    PoolDns {
        name,
        interval: Duration::from_millis(interval_ms),
        empty_hold: Duration::from_millis(empty_hold_ms),
    }
}

/// How a pool keeps its connections: an idle timeout up to `MAX_KEEPALIVE_TIMEOUT_MS`; at
/// least one request (an HTTP/2 stream) a connection.
fn keep_alive(
    timeout_ms: Option<Spanned<u64>>,
    max_requests: Option<Spanned<u32>>,
    name: &str,
    errors: &mut Errors,
) -> KeepAlive {
    let mut keep_alive = KeepAlive::default();
    if let Some(ms) = timeout_ms {
        if *ms.get_ref() == 0 || *ms.get_ref() > MAX_KEEPALIVE_TIMEOUT_MS {
            let bounds = format!("1 to {MAX_KEEPALIVE_TIMEOUT_MS}");
            errors.at(ms.span(), format!("pool `{name}`: keepalive_timeout_ms must be {bounds}"));
        }
        keep_alive.idle_timeout = Duration::from_millis(*ms.get_ref());
    }
    if let Some(n) = max_requests {
        if *n.get_ref() == 0 {
            errors.at(n.span(), format!("pool `{name}`: max_requests_per_connection must be at least 1"));
        }
        keep_alive.max_requests = Some(*n.get_ref());
    }
    keep_alive
}

/// How a pool uses HTTP/2 connections (h2 and h2c pools only): 1 to 10000 streams at once on
/// one; PINGs every 100 ms to an hour, answered within 1 ms to 10 minutes (20 s by default,
/// hyper's).
fn http2(
    streams: Option<Spanned<u32>>,
    keepalive: Option<Spanned<RawHttp2Keepalive>>,
    protocol: UpstreamProtocol,
    name: &str,
    errors: &mut Errors,
) -> Http2Upstream {
    let mut http2 = Http2Upstream::default();
    if let Some(streams) = streams {
        if !protocol.is_http2() {
            errors.at(
                streams.span(),
                format!("pool `{name}`: http2_max_concurrent_streams is for h2 and h2c pools"),
            );
        } else if !(1..=10_000).contains(streams.get_ref()) {
            errors.at(
                streams.span(),
                format!("pool `{name}`: http2_max_concurrent_streams must be 1 to 10000"),
            );
        }
        http2.max_streams = *streams.get_ref();
    }
    if let Some(keepalive) = keepalive {
        let at = keepalive.span();
        let raw = keepalive.into_inner();
        let timeout_ms = raw.timeout_ms.unwrap_or(20_000);
        if !protocol.is_http2() {
            errors.at(at, format!("pool `{name}`: http2_keepalive is for h2 and h2c pools"));
        } else if !(100..=3_600_000).contains(&raw.interval_ms) || !(1..=600_000).contains(&timeout_ms) {
            errors.at(
                at,
                format!(
                    "pool `{name}`: http2_keepalive needs interval_ms 100 to 3600000, timeout_ms 1 to 600000"
                ),
            );
        }
        let (interval, timeout) = (Duration::from_millis(raw.interval_ms), Duration::from_millis(timeout_ms));
        http2.keepalive = Some(Http2Keepalive { interval, timeout });
    }
    http2
}

/// A pool's slow start: up to `MAX_SLOW_START_MS`, and not on a hashed pool, whose keys would
/// move from backend to backend as the weights grew.
fn slow_start(ms: Spanned<u64>, balance: Balance, name: &str, errors: &mut Errors) -> Duration {
    if *ms.get_ref() == 0 || *ms.get_ref() > MAX_SLOW_START_MS {
        errors.at(ms.span(), format!("pool `{name}`: slow_start_ms must be 1 to {MAX_SLOW_START_MS}"));
    } else if balance == Balance::Hash {
        errors.at(
            ms.span(),
            format!("pool `{name}`: slow_start_ms is for round_robin and least_requests (a hash pool's keys would move as a weight grew)"),
        );
    }
    Duration::from_millis(*ms.get_ref())
}

/// A pool's backends: host addresses, each once, with a weight up to MAX_WEIGHT
/// (DEFAULT_WEIGHT when unsaid). One that does not parse is left out.
fn backends(raw: Vec<RawBackend>, name: &str, errors: &mut Errors) -> Vec<BackendSpec> {
    let mut backends: Vec<BackendSpec> = Vec::new();
    for b in raw {
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
        backends.push(BackendSpec { addr, weight, drain: b.drain, backup: b.backup });
    }
    backends
}

/// A pool's health check: a port, a rise and a fall of at least 1, a timeout above 0 and below
/// the interval, a path from the root, gRPC checks on h2 and h2c pools only (and a service on
/// them only), a body's text on HTTP checks only and within what is read of it, a Host (HTTP
/// and gRPC checks) that is a host and port. The first broken rule is said.
fn health(
    raw: Spanned<RawHealth>,
    protocol: UpstreamProtocol,
    name: &str,
    errors: &mut Errors,
) -> HealthCheck {
    let span = raw.span();
    let h = raw.into_inner();
    let check = HealthCheck {
        kind: h.kind,
        port: h.port,
        path: h.path,
        expect_status: h.expect_status,
        expect_body: h.expect_body,
        interval: Duration::from_millis(h.interval_ms),
        timeout: Duration::from_millis(h.timeout_ms),
        rise: h.rise,
        fall: h.fall,
        host: h.host,
        service: h.service,
    };
    if check.port == 0 || check.rise == 0 || check.fall == 0 {
        errors.at(span, format!("pool `{name}` health: port, rise and fall must be at least 1"));
    } else if check.timeout.is_zero() || check.timeout >= check.interval {
        errors.at(span, format!("pool `{name}` health: timeout_ms must be above 0 and below interval_ms"));
    } else if !check.path.starts_with('/') {
        errors.at(span, format!("pool `{name}` health: path must start with /"));
    } else if check.kind == HealthKind::Grpc && !protocol.is_http2() {
        errors.at(span, format!("pool `{name}` health: kind = \"grpc\" is for h2 and h2c pools"));
    } else if check.service.is_some() && check.kind != HealthKind::Grpc {
        errors.at(span, format!("pool `{name}` health: service is for kind = \"grpc\""));
    } else if check.expect_body.is_some() && check.kind != HealthKind::Http {
        errors.at(span, format!("pool `{name}` health: expect_body is for kind = \"http\""));
    } else if check.expect_body.as_ref().is_some_and(|text| text.is_empty() || text.len() > HEALTH_BODY_BYTES)
    {
        errors.at(span, format!("pool `{name}` health: expect_body must be 1 to {HEALTH_BODY_BYTES} bytes"));
    } else if let Some(host) = &check.host {
        if check.kind == HealthKind::Tcp {
            errors.at(span, format!("pool `{name}` health: host is for kind = \"http\" or \"grpc\""));
        } else if host.parse::<hyper::http::uri::Authority>().is_err() || host.contains('@') {
            errors.at(span, format!("pool `{name}` health: host `{host}` is not a host name (and port)"));
        }
    }
    check
}

/// A pool's TLS to its backends: a CA file unless `verify = false` (HAProxy's rule: no silent
/// trust), a server name that is a DNS name or an address (or the request's host, not both), a
/// client certificate with its key,
/// files resolved and (when files are checked) holding what they should. `h2` needs TLS and
/// `h2c` refuses it.
fn backend_tls(
    raw: Option<Spanned<RawBackendTls>>,
    protocol: UpstreamProtocol,
    pool: &Spanned<String>,
    resolve: &impl Fn(Spanned<PathBuf>) -> Spanned<PathBuf>,
    errors: &mut Errors,
) -> Option<BackendTls> {
    let name = pool.get_ref();
    let Some(raw) = raw else {
        if protocol == UpstreamProtocol::H2 {
            errors.at(
                pool.span(),
                format!("pool `{name}`: protocol = \"h2\" is HTTP/2 over TLS and needs `tls` (cleartext HTTP/2 is \"h2c\")"),
            );
        }
        return None;
    };
    let span = raw.span();
    let raw = raw.into_inner();
    if protocol == UpstreamProtocol::H2c {
        errors.at(
            span.clone(),
            format!("pool `{name}`: protocol = \"h2c\" is cleartext; HTTP/2 over TLS is protocol = \"h2\""),
        );
    }
    let verify = raw.verify.as_ref().is_none_or(|v| *v.get_ref());
    let ca = raw.ca.map(resolve);
    match (&ca, verify) {
        (None, true) => errors.at(
            span.clone(),
            format!("pool `{name}` tls: `ca` (the CA that signed the backends' certificates) is needed unless verify = false"),
        ),
        (Some(ca), false) => errors.at(ca.span(), format!("pool `{name}` tls: `ca` is unused with verify = false")),
        _ => {}
    }
    if let Some(server_name) = &raw.server_name
        && rustls_pki_types::ServerName::try_from(server_name.get_ref().as_str()).is_err()
    {
        errors.at(
            server_name.span(),
            format!(
                "pool `{name}` tls: server_name `{}` is not a host name or an address",
                server_name.get_ref()
            ),
        );
    }
    let sni_from_host = raw.sni_from_host.as_ref().is_some_and(|s| *s.get_ref());
    if let (Some(server_name), true) = (&raw.server_name, sni_from_host) {
        errors.at(
            server_name.span(),
            format!("pool `{name}` tls: server_name and sni_from_host = true both name the server; keep one"),
        );
    }
    let client_cert = match (raw.cert.map(resolve), raw.key.map(resolve)) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            errors.at(span.clone(), format!("pool `{name}` tls: `cert` and `key` go together"));
            None
        }
    };
    if errors.open_files {
        use rustls_pki_types::pem::PemObject as _;
        if let Some(ca) = &ca {
            certificates_in(ca, errors);
        }
        if let Some((cert, key)) = &client_cert {
            certificates_in(cert, errors);
            if let Err(err) = open_regular(key.get_ref()).map_err(|e| e.to_string()).and_then(|file| {
                let mut reader = std::io::BufReader::new(file);
                rustls_pki_types::PrivateKeyDer::from_pem_reader(&mut reader).map_err(|e| e.to_string())
            }) {
                errors.at(
                    key.span(),
                    format!("cannot read a private key from {}: {err}", key.get_ref().display()),
                );
            }
        }
    }
    Some(BackendTls {
        ca: ca.map(Spanned::into_inner),
        verify,
        server_name: raw.server_name.map(Spanned::into_inner),
        sni_from_host,
        client_cert: client_cert.map(|(cert, key)| (cert.into_inner(), key.into_inner())),
    })
}

/// Whether `file` holds at least one PEM certificate (said as an error if not).
fn certificates_in(file: &Spanned<PathBuf>, errors: &mut Errors) {
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    let path = file.get_ref();
    let found = open_regular(path).map_err(|e| e.to_string()).and_then(|f| {
        CertificateDer::pem_reader_iter(std::io::BufReader::new(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    });
    match found {
        Ok(certs) if certs.is_empty() => {
            errors.at(file.span(), format!("{} holds no PEM certificate", path.display()))
        }
        Ok(_) => {}
        Err(err) => {
            errors.at(file.span(), format!("cannot read certificates from {}: {err}", path.display()))
        }
    }
}

/// A pool's backend cookie: a cookie name (an HTTP token) that is not the routes' own
/// (`sluice_pool`), kept by browsers for at most 400 days (what browsers keep at most).
fn sticky_cookie(raw: Spanned<StickyCookie>, pool: &str, errors: &mut Errors) -> StickyCookie {
    let at = raw.span();
    let cookie = raw.into_inner();
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if cookie.name.is_empty() || !cookie.name.chars().all(token) {
        errors.at(
            at.clone(),
            format!("pool `{pool}`: sticky_cookie name `{}` is not a cookie name", cookie.name),
        );
    } else if cookie.name == STICKY_COOKIE {
        errors.at(
            at.clone(),
            format!("pool `{pool}`: sticky_cookie `{}` is the routes' own cookie", cookie.name),
        );
    }
    if cookie.max_age_s.is_some_and(|s| s == 0 || s > 400 * 86_400) {
        errors.at(at, format!("pool `{pool}`: sticky_cookie max_age_s must be 1 to 34560000 (400 days)"));
    }
    cookie
}

/// What a hash-balanced pool hashes: `header:NAME`, `cookie:NAME`, `path`, `uri`, `query:NAME`
/// or the client's address (the default, and what a wrong key falls back to after its error).
fn hash_key(raw: Option<&str>, pool: &Spanned<String>, errors: &mut Errors) -> HashKey {
    match raw.map(HashKey::parse) {
        None => HashKey::ClientIp,
        Some(Some(key)) => key,
        Some(None) => {
            errors.at(
                pool.span(),
                format!(
                    "pool `{}`: hash_key must be header:NAME, cookie:NAME, query:NAME, path, uri or client_ip",
                    pool.get_ref()
                ),
            );
            HashKey::ClientIp
        }
    }
}

/// Outlier ejection needs a streak and a time of at least 1, and a cap no shorter than the time.
fn outlier_bounds(outlier: &Spanned<Outlier>, name: &str, errors: &mut Errors) {
    let o = outlier.get_ref();
    if o.consecutive_failures == 0 || o.ejection_ms == 0 || o.max_ejection_ms < o.ejection_ms {
        errors.at(
            outlier.span(),
            format!(
                "pool `{name}` outlier: consecutive_failures and ejection_ms must be at least 1, \
                 max_ejection_ms at least ejection_ms"
            ),
        );
    }
}
