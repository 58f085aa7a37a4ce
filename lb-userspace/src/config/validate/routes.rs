//! `[[route]]`: matches, splits, gateway steps (allow/deny, rate limit, API key, JWT), retries,
//! fallback, shadow, cache, compression, header edits (CORS in `cors`).
use std::ops::Range;

use super::*;
use crate::jwk_set::KeySet;

/// The routes, each checked in steps (what it matches, where it sends, its gateway steps) and
/// given its defaults. Errors about the route as a whole are put at its `pool` line (its
/// `listener` line when it answers by itself).
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
        let at = raw.pool.as_ref().map_or_else(|| raw.listener.span(), |p| p.span());
        if !listeners.iter().any(|l| l.name == *raw.listener.get_ref()) {
            errors.at(
                raw.listener.span(),
                format!("route uses listener `{}`, which is not defined", raw.listener.get_ref()),
            );
        }
        if raw.redirect.is_some() || raw.respond.is_some() {
            forwarding_only(&raw, at.clone(), errors);
        }
        let (pool, answer) = target(raw.pool, raw.redirect, raw.respond, pools, at.clone(), errors);
        let path = path_match(raw.path, raw.path_prefix, raw.path_regex, at.clone(), errors);
        let rewrite_prefix = raw.rewrite_prefix.map(|r| rewrite_prefix(r, &path, errors));
        let method = raw.method.map(|m| method(m, errors));
        let split = split(raw.split, pools, at.clone(), errors);
        let (allow, deny) = (nets(raw.allow, errors), nets(raw.deny, errors));
        let ipv6_prefix = listeners
            .iter()
            .find(|l| l.name == *raw.listener.get_ref())
            .map_or(128, |l| l.client_ipv6_prefix);
        let rate_limit = raw.rate_limit.map(|r| {
            rate_limit(r, (raw.api_key.is_some(), raw.jwt.is_some()), ipv6_prefix, at.clone(), errors)
        });
        if raw.fallback.as_ref().is_some_and(|f| !(200..=599).contains(&f.status)) {
            errors.at(at.clone(), "fallback status must be 200 to 599");
        }
        let api_key = raw.api_key.map(|k| api_key(k, resolve, errors));
        let jwt = raw.jwt.map(|j| jwt(j, base, at.clone(), errors));
        if jwt.is_some() && raw.basic_auth.is_some() {
            errors.at(at.clone(), "jwt and basic_auth both read Authorization: a route takes one of them");
        }
        let basic_auth = raw.basic_auth.map(|b| basic_auth(b, resolve, errors));
        let shadow = raw.shadow.map(|sh| shadow(sh, pools, errors));
        let retry_on = retry_on(raw.retry_on, raw.retries, errors);
        let compress = raw.compress.map(|c| compress(c, errors));
        let request_headers = raw.request_headers.map(|e| header_edits(e, "request_headers", errors));
        let response_headers = raw.response_headers.map(|e| header_edits(e, "response_headers", errors));
        let cors = raw.cors.map(|c| super::cors::check(c, errors));
        if raw.grpc_web {
            grpc_web_pools(pool.as_deref(), &split, pools, at.clone(), errors);
        }
        let listener = listeners.iter().find(|l| l.name == *raw.listener.get_ref());
        if raw.intercept_errors && listener.is_some_and(|l| l.error_pages.is_empty()) {
            errors.at(
                at.clone(),
                format!("intercept_errors: listener `{}` has no error_pages to send", raw.listener.get_ref()),
            );
        }
        let place = routes.iter().filter(|r: &&Route| r.listener == *raw.listener.get_ref()).count();
        let timeout_ms = raw.timeout_ms.unwrap_or(30_000);
        routes.push(Route {
            name: raw.name.unwrap_or_else(|| format!("{}#{place}", raw.listener.get_ref())),
            listener: raw.listener.into_inner(),
            host: raw.host.map(|h| h.to_ascii_lowercase()),
            path,
            rewrite_prefix,
            method,
            headers: raw.headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect(),
            cookies: raw.cookies,
            query: raw.query.map(|q| query(q, errors)).unwrap_or_default(),
            clients: nets(raw.clients, errors),
            sticky: raw.sticky,
            pool,
            answer,
            timeout: Duration::from_millis(timeout_ms),
            try_timeout: raw.try_timeout_ms.map(|t| try_timeout(t, timeout_ms, errors)),
            max_body_bytes: raw.max_body_bytes,
            split,
            allow,
            deny,
            rate_limit,
            retries: raw.retries,
            retry_on,
            retry_budget_percent: raw.retry_budget_percent.unwrap_or(20.0),
            retry_buffer_bytes: retry_buffer_bytes(raw.retry_buffer_bytes, at.clone(), errors),
            fallback: raw.fallback,
            api_key,
            jwt,
            basic_auth,
            shadow,
            cache: raw.cache.map(|c| cache(c, at.clone(), errors)),
            compress,
            request_headers: request_headers.unwrap_or_default(),
            response_headers: response_headers.unwrap_or_default(),
            grpc_web: raw.grpc_web,
            cors,
            access_log: raw.access_log,
            intercept_errors: raw.intercept_errors,
            fault: raw.fault.and_then(|f| fault(f, errors)),
        });
    }
    routes
}

/// The longest a stored answer may be served stale: a year.
const MAX_STALE_S: u32 = 365 * 24 * 3600;

/// A route's `cache`: its stale windows at most a year.
fn cache(raw: CacheConfig, at: Range<usize>, errors: &mut Errors) -> CacheConfig {
    for (name, seconds) in [
        ("stale_while_revalidate_s", raw.stale_while_revalidate_s),
        ("stale_if_error_s", raw.stale_if_error_s),
    ] {
        if seconds > MAX_STALE_S {
            errors.at(at.clone(), format!("cache: {name} is at most {MAX_STALE_S} (a year)"));
        }
    }
    raw
}

/// A route's `query` match: parameter names and values as a query carries them (no `&` or
/// `#`, no `=` in a name, visible ASCII), each compared with the first value sent.
fn query(raw: Spanned<BTreeMap<String, String>>, errors: &mut Errors) -> BTreeMap<String, String> {
    let at = raw.span();
    let raw = raw.into_inner();
    let plain = |text: &str, name: bool| {
        text.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '&' | '#') && !(name && c == '='))
    };
    for (name, value) in &raw {
        if name.is_empty() || !plain(name, true) || !plain(value, false) {
            errors.at(
                at.clone(),
                format!("query: `{name}` = `{value}` is not a parameter as a query carries it (no space, `&`, `#` or `=` in the name)"),
            );
        }
    }
    raw
}

/// A route's `try_timeout_ms`: at least 1 ms and at most the route's whole `timeout_ms`
/// (a try past it could not end before the request does).
fn try_timeout(raw: Spanned<u64>, timeout_ms: u64, errors: &mut Errors) -> Duration {
    let at = raw.span();
    let ms = raw.into_inner();
    if ms == 0 || ms > timeout_ms {
        errors.at(at, format!("try_timeout_ms must be 1 to the route's timeout_ms ({timeout_ms}), not {ms}"));
    }
    Duration::from_millis(ms)
}

/// What a route's retries retry: `reset`, `gateway-error` (502, 503, 504), `5xx`, or a status
/// from 400 to 599; only with `retries`.
fn retry_on(raw: Option<Spanned<Vec<String>>>, retries: u32, errors: &mut Errors) -> RetryOn {
    let Some(raw) = raw else { return RetryOn::default() };
    let at = raw.span();
    if retries == 0 {
        errors.at(at.clone(), "retry_on needs retries");
    }
    let mut on = RetryOn { reset: false, statuses: Vec::new() };
    for word in raw.into_inner() {
        match word.as_str() {
            "reset" => on.reset = true,
            "gateway-error" => on.statuses.extend([502, 503, 504]),
            "5xx" => on.statuses.extend(500..=599),
            status => match status.parse::<u16>() {
                Ok(status) if (400..=599).contains(&status) => on.statuses.push(status),
                _ => errors.at(
                    at.clone(),
                    format!(
                        "retry_on: `{word}` is not reset, gateway-error, 5xx or a status from 400 to 599"
                    ),
                ),
            },
        }
    }
    on.statuses.sort_unstable();
    on.statuses.dedup();
    on
}

/// A `grpc_web` route's pools (its own and its split's) must speak HTTP/2 (h2 or h2c): gRPC
/// has trailers, which HTTP/1.1 backends do not send.
fn grpc_web_pools(
    pool: Option<&str>,
    split: &[(String, f64)],
    pools: &BTreeMap<String, Pool>,
    at: Range<usize>,
    errors: &mut Errors,
) {
    let names = pool.into_iter().chain(split.iter().map(|(name, _)| name.as_str()));
    for name in names {
        if pools.get(name).is_some_and(|p| !p.protocol.is_http2()) {
            errors.at(at.clone(), format!("grpc_web needs h2 or h2c pools: pool `{name}` speaks HTTP/1.1"));
        }
    }
}

/// The longest request body a route keeps for another try: 64 KiB by default, at most 16 MiB
/// (each request in flight may hold that much).
fn retry_buffer_bytes(raw: Option<u64>, at: Range<usize>, errors: &mut Errors) -> usize {
    const MAX: u64 = 16 << 20;
    match raw {
        None => 64 << 10,
        Some(bytes) if bytes > MAX => {
            errors.at(at, format!("retry_buffer_bytes must be at most {MAX} (16 MiB)"));
            0
        }
        Some(bytes) => bytes as usize,
    }
}

/// Where a route's requests go: to its pool, or to an answer of its own (`redirect` or
/// `respond`); exactly one of the three.
fn target(
    pool: Option<Spanned<String>>,
    redirect: Option<Spanned<RawRedirect>>,
    respond: Option<Spanned<Fallback>>,
    pools: &BTreeMap<String, Pool>,
    at: Range<usize>,
    errors: &mut Errors,
) -> (Option<String>, Option<OwnAnswer>) {
    match (pool, redirect, respond) {
        (Some(pool), None, None) => {
            defined(&pool, "route", pools, errors);
            (Some(pool.into_inner()), None)
        }
        (None, Some(raw), None) => (None, Some(self::redirect(raw, errors))),
        (None, None, Some(raw)) => (None, Some(self::respond(raw, errors))),
        (None, None, None) => {
            errors.at(at, "a route needs a pool, or a redirect or respond of its own");
            (None, None)
        }
        _ => {
            errors.at(at, "a route takes one of pool, redirect and respond");
            (None, None)
        }
    }
}

/// The settings only a route that sends to a pool uses, refused on one that answers by itself
/// (`rewrite_prefix` shapes a redirect's prefix, so it stays there).
fn forwarding_only(raw: &RawRoute, at: Range<usize>, errors: &mut Errors) {
    let by_prefix = raw.redirect.as_ref().is_some_and(|r| r.get_ref().prefix.is_some());
    let set = [
        ("split", !raw.split.is_empty()),
        ("sticky", raw.sticky),
        ("timeout_ms", raw.timeout_ms.is_some()),
        ("try_timeout_ms", raw.try_timeout_ms.is_some()),
        ("max_body_bytes", raw.max_body_bytes.is_some()),
        ("retries", raw.retries > 0),
        ("retry_on", raw.retry_on.is_some()),
        ("retry_budget_percent", raw.retry_budget_percent.is_some()),
        ("retry_buffer_bytes", raw.retry_buffer_bytes.is_some()),
        ("fallback", raw.fallback.is_some()),
        ("shadow", raw.shadow.is_some()),
        ("cache", raw.cache.is_some()),
        ("compress", raw.compress.is_some()),
        ("request_headers", raw.request_headers.is_some()),
        ("rewrite_prefix", raw.rewrite_prefix.is_some() && !by_prefix),
        ("grpc_web", raw.grpc_web),
        ("intercept_errors", raw.intercept_errors),
        ("fault", raw.fault.is_some()),
    ];
    for (name, _) in set.iter().filter(|(_, set)| *set) {
        errors.at(at.clone(), format!("{name} needs a pool: this route answers by itself"));
    }
}

/// A route's `redirect`: one of `location` (the whole Location) and `prefix` (the path and
/// query follow it, so it does not end in `/`; empty, they are the whole Location), visible
/// ASCII with no space; status 301
/// (the default), 302, 303, 307 or 308.
fn redirect(raw: Spanned<RawRedirect>, errors: &mut Errors) -> OwnAnswer {
    let at = raw.span();
    let raw = raw.into_inner();
    let status = raw.status.unwrap_or(301);
    if ![301, 302, 303, 307, 308].contains(&status) {
        errors
            .at(at.clone(), format!("redirect: status {status} is not a redirect (301, 302, 303, 307, 308)"));
    }
    let (to, prefix) = match (raw.location, raw.prefix) {
        (Some(to), None) => (to, false),
        (None, Some(to)) => (to, true),
        _ => {
            errors.at(at, "redirect takes one of location and prefix");
            return OwnAnswer::Redirect { status, to: String::new(), prefix: false };
        }
    };
    // An empty prefix leaves the path alone (path-absolute: the request's own scheme and host).
    if (to.is_empty() && !prefix) || !to.bytes().all(|b| b.is_ascii_graphic()) {
        errors.at(at.clone(), format!("redirect: `{to}` must be visible ASCII with no space"));
    } else if prefix && to.ends_with('/') {
        errors.at(
            at,
            format!("redirect: prefix `{to}` ends in `/`, and the path that follows it begins with one"),
        );
    }
    OwnAnswer::Redirect { status, to, prefix }
}

/// A route's `respond`: a final status (200 to 599), no body on a 204 or 304, a content type
/// that is a field value.
fn respond(raw: Spanned<Fallback>, errors: &mut Errors) -> OwnAnswer {
    let at = raw.span();
    let answer = raw.into_inner();
    if !(200..=599).contains(&answer.status) {
        errors.at(at.clone(), "respond: status must be 200 to 599");
    } else if matches!(answer.status, 204 | 304) && !answer.body.is_empty() {
        errors.at(at.clone(), format!("respond: a {} has no body", answer.status));
    }
    if let Some(content_type) = &answer.content_type
        && !content_type.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    {
        errors.at(at, format!("respond: content_type `{content_type}` is not a field value"));
    }
    OwnAnswer::Respond(answer)
}

/// A pool a route (or its split or shadow, `what`) names must be defined.
fn defined(pool: &Spanned<String>, what: &str, pools: &BTreeMap<String, Pool>, errors: &mut Errors) {
    if !pools.contains_key(pool.get_ref()) {
        errors.at(pool.span(), format!("{what} uses pool `{}`, which is not defined", pool.get_ref()));
    }
}

/// What a route matches of the path: one of path, path_prefix and path_regex (which must
/// compile), or any path.
fn path_match(
    path: Option<String>,
    prefix: Option<String>,
    regex: Option<Spanned<String>>,
    at: Range<usize>,
    errors: &mut Errors,
) -> PathMatch {
    match (path, prefix, regex) {
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
            errors.at(at, "a route takes one of path, path_prefix and path_regex");
            PathMatch::Any
        }
    }
}

/// What replaces a route's `path_prefix` in the path its backend gets, for a route with a
/// prefix: a canonical path, as the rest of the path is (`/` first; RFC 3986's pchar and `/`,
/// so no query; each `%` an escape; no empty, `.` or `..` segment but a last empty one).
fn rewrite_prefix(raw: Spanned<String>, path: &PathMatch, errors: &mut Errors) -> String {
    let text = raw.get_ref();
    let pchar = |b: u8| b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@%".contains(&b);
    let escapes = text
        .split('%')
        .skip(1)
        .all(|after| after.len() >= 2 && after.bytes().take(2).all(|b| b.is_ascii_hexdigit()));
    let segments: Vec<&str> = text.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let plain_segments =
        segments.iter().enumerate().all(|(i, s)| !matches!(*s, "." | "..") && (i == last || !s.is_empty()));
    if !matches!(path, PathMatch::Prefix(_)) {
        errors.at(raw.span(), "rewrite_prefix needs the route's path_prefix");
    } else if !(text.starts_with('/') && text.bytes().all(pchar) && escapes && plain_segments) {
        errors.at(
            raw.span(),
            format!("rewrite_prefix `{text}` is not a canonical path (`/` first; no query, space, `//`, `.` or `..`)"),
        );
    }
    raw.into_inner()
}

/// The method a route matches, upper-cased: an HTTP method's token.
fn method(method: Spanned<String>, errors: &mut Errors) -> String {
    if hyper::Method::from_bytes(method.get_ref().as_bytes()).is_err() {
        errors.at(method.span(), format!("`{}` is not an HTTP method", method.get_ref()));
    }
    method.into_inner().to_ascii_uppercase()
}

/// A route's split: defined pools, each share 0 to 100, all of them at most 100.
fn split(
    raw: Vec<RawSplit>,
    pools: &BTreeMap<String, Pool>,
    at: Range<usize>,
    errors: &mut Errors,
) -> Vec<(String, f64)> {
    let mut split = Vec::new();
    for s in raw {
        defined(&s.pool, "split", pools, errors);
        split.push((s.pool.into_inner(), s.percent));
    }
    let total: f64 = split.iter().map(|(_, p)| p).sum();
    if split.iter().any(|(_, p)| !is_split_share(*p)) || total > MAX_SPLIT_PERCENT {
        errors.at(at, "split percents must be 0 to 100 and add up to at most 100");
    }
    split
}

/// A route's rate limit: a rate above 0, a burst of at least 1 (the rate by default), the
/// route's API key or JWT when it is the key, and its listener's IPv6 client prefix.
fn rate_limit(
    raw: RawRateLimit,
    (has_api_key, has_jwt): (bool, bool),
    ipv6_prefix: u8,
    at: Range<usize>,
    errors: &mut Errors,
) -> RateLimit {
    let header = raw.header.as_ref().and_then(|name| {
        let parsed = hyper::header::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes());
        if parsed.is_err() {
            errors.at(at.clone(), format!("rate_limit header `{name}` is not a header name"));
        }
        parsed.ok()
    });
    match (raw.key == RateKey::Header, raw.header.is_some()) {
        (true, false) => errors.at(at.clone(), "rate_limit key = \"header\" needs header = \"NAME\""),
        (false, true) => errors.at(at.clone(), "rate_limit header goes with key = \"header\""),
        _ => {}
    }
    let limit = RateLimit {
        requests_per_second: raw.requests_per_second,
        burst: raw.burst.unwrap_or(raw.requests_per_second.max(1.0)),
        key: raw.key,
        header,
        ipv6_prefix,
        headers: raw.headers,
    };
    if limit.key == RateKey::ApiKey && !has_api_key {
        errors.at(at.clone(), "rate_limit key = \"api_key\" needs the route's api_key");
    }
    if limit.key == RateKey::JwtSubject && !has_jwt {
        errors.at(at.clone(), "rate_limit key = \"jwt_subject\" needs the route's jwt");
    }
    if limit.requests_per_second <= 0.0 || limit.burst < 1.0 {
        errors.at(at, "rate_limit needs requests_per_second above 0 and burst of at least 1");
    }
    limit
}

/// A route's API key: one of header and query, its key file readable (when files are checked).
fn api_key(
    raw: RawApiKey,
    resolve: &impl Fn(Spanned<PathBuf>) -> Spanned<PathBuf>,
    errors: &mut Errors,
) -> ApiKeyConfig {
    if raw.header.is_some() == raw.query.is_some() {
        errors.at(raw.file.span(), "api_key takes one of header and query");
    }
    let file = resolve(raw.file);
    if let Err(err) = if errors.open_files { open_regular(file.get_ref()).map(drop) } else { Ok(()) } {
        errors.at(file.span(), format!("cannot read {}: {err}", file.get_ref().display()));
    }
    ApiKeyConfig {
        header: raw.header.map(|h| h.to_ascii_lowercase()),
        query: raw.query,
        file: file.into_inner(),
    }
}

/// A route's JWT check: its key file beside the config, a key that decodes, a subject header
/// that is a header name.
fn jwt(mut jwt: JwtConfig, base: &Path, at: Range<usize>, errors: &mut Errors) -> JwtConfig {
    let resolve = |f: PathBuf| if f.is_relative() { base.join(f) } else { f };
    jwt.key_file = jwt.key_file.map(resolve);
    jwt.jwks_file = jwt.jwks_file.map(resolve);
    jwt.jwks_ca = jwt.jwks_ca.map(resolve);
    let sources: Vec<&str> = [
        ("secret", jwt.secret.is_some()),
        ("key_file", jwt.key_file.is_some()),
        ("jwks_file", jwt.jwks_file.is_some()),
        ("jwks_url", jwt.jwks_url.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if let [first, second, ..] = sources[..] {
        errors.at(
            at.clone(),
            format!("jwt: one of secret, key_file, jwks_file and jwks_url, not {first} and {second}"),
        );
    }
    if jwt.audience.iter().any(String::is_empty) {
        errors.at(at.clone(), "jwt: an audience is empty");
    }
    if jwt.jwks_url.is_none() && (jwt.jwks_ca.is_some() || jwt.jwks_refresh_s.is_some()) {
        errors.at(at.clone(), "jwt: jwks_ca and jwks_refresh_s go with jwks_url");
    }
    let algorithm = jwt.algorithm.library();
    match (&jwt.jwks_file, &jwt.jwks_url) {
        // A key file is opened only where files are (never for a config text a client sent).
        (Some(file), _) if errors.open_files => {
            let read = files::read_file(file).map_err(|e| e.to_string()).and_then(|t| KeySet::parse(&t));
            match read {
                Err(err) => errors.at(at.clone(), format!("jwt: jwks_file {}: {err}", file.display())),
                Ok(set) if set.count(algorithm) == 0 => errors
                    .at(at.clone(), format!("jwt: jwks_file {} has no {algorithm:?} key", file.display())),
                Ok(_) => {}
            }
        }
        (Some(_), _) => {}
        (None, Some(url)) => jwks_url(url, &jwt, at.clone(), errors),
        (None, None) => {
            if (jwt.algorithm.is_hmac() || errors.open_files)
                && let Err(err) = jwt.decoding_key()
            {
                errors.at(at.clone(), format!("jwt: {err}"));
            }
        }
    }
    if let Some(name) = &jwt.subject_header
        && let Some(why) = unfit_identity_header(name)
    {
        errors.at(at.clone(), format!("jwt: subject_header `{name}` {why}"));
    }
    let mut headers: Vec<String> = jwt.subject_header.iter().map(|h| h.to_ascii_lowercase()).collect();
    for (claim, name) in &jwt.claim_headers {
        if claim.is_empty() {
            errors.at(at.clone(), "jwt: claim_headers: a claim's name is empty");
        }
        if let Some(why) = unfit_identity_header(name) {
            errors.at(at.clone(), format!("jwt: claim_headers: `{name}` {why}"));
        }
        if headers.contains(&name.to_ascii_lowercase()) {
            errors.at(at.clone(), format!("jwt: claim_headers: `{name}` carries another claim already"));
        }
        headers.push(name.to_ascii_lowercase());
    }
    jwt
}

/// A JWK Set URL: https with a host; its CA a readable PEM file with certificates; its refresh
/// within bounds.
fn jwks_url(url: &str, jwt: &JwtConfig, at: Range<usize>, errors: &mut Errors) {
    let parsed = url.parse::<hyper::Uri>().ok();
    if parsed.as_ref().is_none_or(|u| u.scheme_str() != Some("https") || u.host().is_none_or(str::is_empty)) {
        errors.at(at.clone(), format!("jwt: jwks_url `{url}` is not an https URL"));
    }
    if let Some(refresh) = jwt.jwks_refresh_s
        && !JWKS_REFRESH_S.contains(&refresh)
    {
        let (low, high) = (JWKS_REFRESH_S.start(), JWKS_REFRESH_S.end());
        errors.at(at.clone(), format!("jwt: jwks_refresh_s must be {low} to {high}"));
    }
    if let Some(ca) = jwt.jwks_ca.as_ref().filter(|_| errors.open_files) {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        let certs = CertificateDer::pem_file_iter(ca).map(|certs| certs.filter(Result::is_ok).count());
        if !certs.is_ok_and(|n| n > 0) {
            errors.at(at, format!("jwt: jwks_ca {}: no PEM certificate to read", ca.display()));
        }
    }
}

/// Why `name` cannot carry a verified identity to the backends (a JWT's subject, a basic-auth
/// user), if it cannot: not a field name, or a field lbd reads or sets itself (the framing
/// fields, Host, the forwarding fields, Authorization).
fn unfit_identity_header(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if hyper::header::HeaderName::from_bytes(lower.as_bytes()).is_err() {
        Some("is not a header name")
    } else if FRAMING.contains(&lower.as_str())
        || SET_BY_LBD.contains(&lower.as_str())
        || lower == "authorization"
    {
        Some("is a field lbd reads or sets")
    } else {
        None
    }
}

/// A route's basic auth: its htpasswd file readable with every line accepted (when files are
/// checked), a realm that can be quoted, a user header that is a header name.
fn basic_auth(
    raw: RawBasicAuth,
    resolve: &impl Fn(Spanned<PathBuf>) -> Spanned<PathBuf>,
    errors: &mut Errors,
) -> BasicAuthConfig {
    let file = resolve(raw.file);
    if errors.open_files {
        let path = file.get_ref();
        match files::read_file(path) {
            Ok(text) => {
                if let Err(err) = crate::htpasswd::Users::parse(&text) {
                    errors.at(file.span(), format!("basic_auth: {}: {err}", path.display()));
                }
            }
            Err(err) => errors.at(file.span(), format!("cannot read {}: {err}", path.display())),
        }
    }
    let realm = raw.realm.map_or_else(
        || "sluice".to_owned(),
        |realm| {
            let text = realm.get_ref();
            let quotable = text.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
            if text.is_empty() || text.len() > 128 || !quotable {
                errors.at(
                    realm.span(),
                    "basic_auth: realm must be 1 to 128 visible ASCII characters or spaces, no `\"` or `\\`",
                );
            }
            realm.into_inner()
        },
    );
    let user_header = raw.user_header.map(|name| {
        let lower = name.get_ref().to_ascii_lowercase();
        if let Some(why) = unfit_identity_header(name.get_ref()) {
            errors.at(name.span(), format!("basic_auth: user_header `{}` {why}", name.get_ref()));
        }
        lower
    });
    BasicAuthConfig { file: file.into_inner(), realm, user_header }
}

/// A route's shadow: a defined pool, a share 0 to 100, and the longest body copied (64 KiB by
/// default, at most 16 MiB: each copy in flight holds its body).
fn shadow(raw: RawShadow, pools: &BTreeMap<String, Pool>, errors: &mut Errors) -> Shadow {
    const MAX: u64 = 16 << 20;
    defined(&raw.pool, "shadow", pools, errors);
    if !(0.0..=100.0).contains(&raw.percent) {
        errors.at(raw.pool.span(), "shadow percent must be 0 to 100");
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(64 << 10);
    if max_body_bytes > MAX {
        errors.at(raw.pool.span(), format!("shadow max_body_bytes must be at most {MAX} (16 MiB)"));
    }
    Shadow {
        pool: raw.pool.into_inner(),
        percent: raw.percent,
        max_body_bytes: max_body_bytes.min(MAX) as usize,
    }
}

/// A route's `fault`, checked as `lbctl route fault`'s is (`FaultSpec::check`).
fn fault(raw: Spanned<FaultSpec>, errors: &mut Errors) -> Option<Fault> {
    raw.get_ref().check().map_err(|why| errors.at(raw.span(), format!("fault: {why}"))).ok()
}

/// The media types a route compresses when its `compress` names none: text and the text-like
/// types of the web (nginx compresses only text/html by default; Envoy these and a few more).
const COMPRESSED_TYPES: [&str; 9] = [
    "application/javascript",
    "application/json",
    "application/xml",
    "image/svg+xml",
    "text/css",
    "text/html",
    "text/javascript",
    "text/plain",
    "text/xml",
];

/// A route's `compress`: media types (`type/subtype`, lowercase), a level 1 to 9 (1 by
/// default), and a least length (256 bytes by default: below it gzip's 18 bytes of frame and
/// its block header rarely pay for themselves).
fn compress(raw: Spanned<RawCompress>, errors: &mut Errors) -> CompressConfig {
    let at = raw.span();
    let raw = raw.into_inner();
    let token =
        |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    let types = match raw.types {
        Some(types) => types.into_iter().map(|t| t.to_ascii_lowercase()).collect(),
        None => COMPRESSED_TYPES.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
    };
    for media in &types {
        if !media.split_once('/').is_some_and(|(kind, sub)| token(kind) && token(sub)) {
            errors.at(at.clone(), format!("compress: `{media}` is not a media type (`type/subtype`)"));
        }
    }
    let level = raw.level.unwrap_or(1);
    if !(1..=9).contains(&level) {
        errors.at(at, "compress: level must be 1 to 9");
    }
    CompressConfig { types, min_bytes: raw.min_bytes.unwrap_or(256), level }
}

/// Fields a route may not edit: those that frame a message or carry its connection's options
/// (RFC 9110 §7.6.1, RFC 9112 §6), and Host, which chose the route and names the request's
/// target.
const FRAMING: [&str; 9] = [
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
/// Fields lbd sets itself on a request (a client's own are replaced or dropped) or on an answer.
const SET_BY_LBD: [&str; 6] =
    ["forwarded", "via", "x-forwarded-client-cert", "x-forwarded-for", "x-forwarded-proto", "x-request-id"];

/// A route's `request_headers` or `response_headers` (`what`): field names that are tokens,
/// none that lbd frames or sets itself, each named once; values of visible ASCII, spaces and
/// tabs, with no whitespace around them (as an HTTP/2 field's, RFC 9113 §8.2.1).
fn header_edits(raw: Spanned<RawHeaderEdits>, what: &str, errors: &mut Errors) -> HeaderEdits {
    use hyper::header::{HeaderName, HeaderValue};
    let at = raw.span();
    let raw = raw.into_inner();
    let mut edits = HeaderEdits::default();
    let mut named = HashSet::new();
    let mut name = |text: &str, errors: &mut Errors| -> Option<HeaderName> {
        let lower = text.to_ascii_lowercase();
        let Ok(name) = HeaderName::from_bytes(lower.as_bytes()) else {
            errors.at(at.clone(), format!("{what}: `{text}` is not a field name"));
            return None;
        };
        if FRAMING.contains(&lower.as_str()) {
            errors.at(
                at.clone(),
                format!("{what}: `{text}` frames the message or names its target; lbd keeps it"),
            );
        } else if SET_BY_LBD.contains(&lower.as_str()) {
            errors.at(at.clone(), format!("{what}: `{text}` is set by lbd itself"));
        } else if !named.insert(lower) {
            errors.at(at.clone(), format!("{what}: `{text}` is named more than once"));
        }
        Some(name)
    };
    for text in &raw.remove {
        edits.remove.extend(name(text, errors));
    }
    for (text, value) in &raw.set {
        let name = name(text, errors);
        let plain = value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
            && value.trim_matches([' ', '\t']).len() == value.len();
        match HeaderValue::from_str(value) {
            Ok(value) if plain => edits.set.extend(name.map(|name| (name, value))),
            _ => errors.at(
                at.clone(),
                format!(
                    "{what}: the value of `{text}` must be visible ASCII, spaces and tabs, none around it"
                ),
            ),
        }
    }
    edits
}
