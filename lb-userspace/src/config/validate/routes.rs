//! `[[route]]`: matches, splits, gateway steps (allow/deny, rate limit, API key, JWT), retries,
//! fallback, shadow, cache.
use super::*;

pub(in crate::config) fn check(
    raw_routes: Vec<RawRoute>,
    pools: &BTreeMap<String, Pool>,
    listeners: &[Listener],
    base: &Path,
    resolve: &impl Fn(Spanned<PathBuf>) -> Spanned<PathBuf>,
    errors: &mut Errors,
) -> Vec<Route> {
    let mut routes = Vec::new();
    for raw in raw_routes {
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
        if split.iter().any(|(_, p)| !is_split_share(*p)) || total > MAX_SPLIT_PERCENT {
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
    routes
}
