//! `[[pool]]`: names, backends, health checks, balancing, L7 settings.
use super::*;

/// The pools by name, each checked in steps (its backends, its health check, its hash key, its
/// outlier ejection) and given its defaults.
pub(in crate::config) fn check(raw_pools: Vec<RawPool>, errors: &mut Errors) -> BTreeMap<String, Pool> {
    let mut pools = BTreeMap::new();
    for raw_pool in raw_pools {
        errors.name(&raw_pool.name, "pool");
        let name = raw_pool.name.get_ref().clone();
        let backends = backends(raw_pool.backends, &name, errors);
        let health = raw_pool.health.map(|h| health(h, &name, errors));
        let hash_key = hash_key(raw_pool.hash_key.as_deref(), &raw_pool.name, errors);
        if let Some(outlier) = &raw_pool.outlier {
            outlier_bounds(outlier, &name, errors);
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
            outlier: raw_pool.outlier.map(Spanned::into_inner),
            connect_timeout: raw_pool.connect_timeout_ms.map(|ms| {
                if *ms.get_ref() == 0 || *ms.get_ref() > 60_000 {
                    errors.at(ms.span(), format!("pool `{name}`: connect_timeout_ms must be 1 to 60000"));
                }
                Duration::from_millis(*ms.get_ref())
            }),
        };
        if pools.insert(name.clone(), pool).is_some() {
            errors.at(raw_pool.name.span(), format!("pool `{name}` is defined twice"));
        }
    }
    pools
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
        backends.push(BackendSpec { addr, weight, drain: b.drain });
    }
    backends
}

/// A pool's health check: a port, a rise and a fall of at least 1, a timeout above 0 and below
/// the interval, a path from the root, a Host (HTTP checks only) that is a host and port. The
/// first broken rule is said.
fn health(raw: Spanned<RawHealth>, name: &str, errors: &mut Errors) -> HealthCheck {
    let span = raw.span();
    let h = raw.into_inner();
    let check = HealthCheck {
        kind: h.kind,
        port: h.port,
        path: h.path,
        expect_status: h.expect_status,
        interval: Duration::from_millis(h.interval_ms),
        timeout: Duration::from_millis(h.timeout_ms),
        rise: h.rise,
        fall: h.fall,
        host: h.host,
    };
    if check.port == 0 || check.rise == 0 || check.fall == 0 {
        errors.at(span, format!("pool `{name}` health: port, rise and fall must be at least 1"));
    } else if check.timeout.is_zero() || check.timeout >= check.interval {
        errors.at(span, format!("pool `{name}` health: timeout_ms must be above 0 and below interval_ms"));
    } else if !check.path.starts_with('/') {
        errors.at(span, format!("pool `{name}` health: path must start with /"));
    } else if let Some(host) = &check.host {
        if check.kind != HealthKind::Http {
            errors.at(span, format!("pool `{name}` health: host is for kind = \"http\""));
        } else if host.parse::<hyper::http::uri::Authority>().is_err() || host.contains('@') {
            errors.at(span, format!("pool `{name}` health: host `{host}` is not a host name (and port)"));
        }
    }
    check
}

/// What a hash-balanced pool hashes: `header:NAME`, `cookie:NAME` or the client's address (the
/// default, and what a wrong key falls back to after its error).
fn hash_key(raw: Option<&str>, pool: &Spanned<String>, errors: &mut Errors) -> HashKey {
    match raw.map(HashKey::parse) {
        None => HashKey::ClientIp,
        Some(Some(key)) => key,
        Some(None) => {
            errors.at(
                pool.span(),
                format!("pool `{}`: hash_key must be header:NAME, cookie:NAME or client_ip", pool.get_ref()),
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
