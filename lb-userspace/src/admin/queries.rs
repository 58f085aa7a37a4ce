//! The admin API's answers that change nothing: the State as `GET` shows it (status, VIPs,
//! listeners, routes, pools, deny list), the fast path's counters, the live view, and the questions asked
//! with a body: which backend a flow goes to (`POST /flow`), what a change would move (`POST
//! /plan`).
use hyper::StatusCode;
use serde_json::{Value, json};

use super::{
    actions::operator_only,
    reply::{Answer, fail, reply},
    views,
};
use crate::{
    daemon::{Core, Shared, lock},
    dataplane::{
        DataplaneError,
        counters::{Counters, protocol_name},
        tables::ip_of,
    },
    inspect::{self, InspectError},
};

/// Why `/flow` or `/plan` was not answered (a 400 with this text).
#[derive(Debug, thiserror::Error)]
enum QueryError {
    #[error("expected {expected}: {error}")]
    Body { expected: &'static str, error: serde_json::Error },
    #[error("no [dataplane] on this host: no XDP program to run")]
    NoDataplane,
    #[error("{0}")]
    NotOperator(String),
    #[error("invalid config:\n{0}")]
    Config(crate::config::ConfigErrors),
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("encoding the answer: {0}")]
    Encode(#[from] serde_json::Error),
}

/// `GET /status`.
pub fn status(core: &Shared) -> Answer {
    let core = lock(core);
    let config = &core.state.config;
    let status = views::Status {
        interface: config.interface.clone(),
        pin_dir: config.pin_dir.clone(),
        config: core.config_path.clone(),
        uptime_seconds: core.started.elapsed().as_secs(),
        vips: config.vips.len(),
        pools: config.pools.len(),
        failing_open: core.state.failing_open(),
        last_reload: core.last_reload.map(|r| views::LastReload {
            unix_seconds: r.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            applied: r.applied,
        }),
        cluster: config.cluster.as_ref().map(|c| views::Following {
            endpoints: c.endpoints.clone(),
            prefix: c.prefix.clone(),
            revision: core.following.revision,
            error: core.following.error.clone(),
        }),
        bgp: config.bgp.as_ref().map(|b| views::Announcing {
            drained: b.drained,
            announced: core.announcing.announced.clone(),
            error: core.announcing.error.clone(),
        }),
    };
    reply(StatusCode::OK, json!(status))
}

/// `GET /vips`.
pub fn vips(core: &Shared) -> Answer {
    let core = lock(core);
    let vips: Vec<views::Vip> = core
        .state
        .config
        .vips
        .iter()
        .map(|v| views::Vip {
            name: v.name.clone(),
            address: v.addr,
            port: v.port,
            protocol: v.protocol.name().to_owned(),
            pool: v.pool.clone(),
            mode: v.mode.name().to_owned(),
            syn_cookies: v.syn_cookies,
        })
        .collect();
    reply(StatusCode::OK, json!(vips))
}

/// `GET /routes`.
pub fn routes(core: &Shared) -> Answer {
    let core = lock(core);
    let routes: Vec<views::Route> = core.state.config.routes.iter().map(route_view).collect();
    reply(StatusCode::OK, json!(routes))
}

/// `GET /listeners`.
pub fn listeners(core: &Shared) -> Answer {
    let core = lock(core);
    let config = &core.state.config;
    let listeners: Vec<views::Listener> = config
        .listeners
        .iter()
        .map(|listener| views::Listener {
            name: listener.name.clone(),
            address: listener.address,
            protocol: match &listener.tls {
                None => "http".to_owned(),
                Some(tls) => {
                    let certs = tls.certificates.len();
                    let acme = if tls.acme.is_some() { "+acme" } else { "" };
                    let mtls = if tls.client_ca.is_some() { "+mtls" } else { "" };
                    let h3 = if tls.http3.is_some() { "+h3" } else { "" };
                    format!("https {certs} cert{}{acme}{mtls}{h3}", if certs == 1 { "" } else { "s" })
                }
            },
            proxy_protocol: listener.proxy_protocol,
            client_address: listener.client_address.as_ref().map(|from| from.header.to_string()),
            max_connections: listener.max_connections,
            max_connections_per_client: listener.max_connections_per_client,
            client_ipv6_prefix: listener.client_ipv6_prefix,
            routes: config.routes.iter().filter(|route| route.listener == listener.name).count(),
            open_connections: core.proxy_metrics.open_connections(&listener.name),
            error_pages: listener.error_pages.iter().map(|page| page.status).collect(),
            certificates: core
                .certificates
                .iter()
                .filter(|(name, _)| *name == listener.name)
                .flat_map(|(_, resolver)| resolver.store.load().served.clone())
                .map(certificate_view)
                .collect(),
        })
        .collect();
    reply(StatusCode::OK, json!(listeners))
}

/// What `GET /listeners` says of a certificate a listener serves.
fn certificate_view(served: crate::proxy::tls::Served) -> views::Certificate {
    let unix =
        |at: std::time::SystemTime| at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    views::Certificate {
        name: served.name,
        names: served.names,
        not_after: served.not_after.map(unix),
        stapled: served.stapled.is_some(),
        stapled_until: served.stapled.flatten().map(unix),
        acme: served.acme,
    }
}

/// `GET /pools`.
pub fn pools(core: &Shared) -> Answer {
    let core = lock(core);
    let pools: Vec<Value> = core.state.config.pools.keys().filter_map(|n| pool_view(&core, n)).collect();
    reply(StatusCode::OK, json!(pools))
}

/// `GET /pools/NAME`.
pub fn pool(core: &Shared, name: &str) -> Answer {
    match pool_view(&lock(core), name) {
        Some(view) => reply(StatusCode::OK, view),
        None => fail(StatusCode::NOT_FOUND, format!("no pool `{name}`")),
    }
}

/// `GET /view`: what `lbctl top` and the live page draw (made off the async workers).
pub async fn live(core: &Shared) -> Answer {
    let core = core.clone();
    match tokio::task::spawn_blocking(move || crate::live_view::snapshot(&core)).await {
        Ok(live) => reply(StatusCode::OK, json!(live)),
        Err(err) => fail(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}

/// `GET /deny`.
pub fn deny(core: &Shared) -> Answer {
    let core = lock(core);
    let deny: Vec<String> = core.state.config.deny.iter().map(ToString::to_string).collect();
    reply(StatusCode::OK, json!(deny))
}

/// `GET /stats`: the fast path's counters (none without a data plane).
pub fn stats(core: &Shared) -> Answer {
    let counters = lock(core).counters.clone();
    let view = match counters {
        Some(counters) => stats_view(&counters.lock().unwrap_or_else(|p| p.into_inner())),
        None => Ok(views::Stats::default()),
    };
    match view {
        Ok(view) => reply(StatusCode::OK, json!(view)),
        Err(err) => fail(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}

/// `POST /flow {"protocol": "tcp", "source": "ADDR:PORT", "vip": "ADDR:PORT"}`.
pub fn flow(core: &Shared, body: &[u8]) -> Answer {
    answered(flow_of(core, body))
}

/// `POST /plan {"commands": [...]}` or `{"config_text": "...", "config_name": "NAME"}`: the
/// client sends a new config's text (lbd opens no path a client names; the name is for
/// messages only).
pub fn plan(core: &Shared, body: &[u8]) -> Answer {
    answered(plan_of(core, body))
}

fn answered(answer: Result<Value, QueryError>) -> Answer {
    match answer {
        Ok(value) => reply(StatusCode::OK, value),
        Err(err) => fail(StatusCode::BAD_REQUEST, err),
    }
}

fn flow_of(core: &Shared, body: &[u8]) -> Result<Value, QueryError> {
    let q: views::FlowQuery = serde_json::from_slice(body)
        .map_err(|error| QueryError::Body { expected: "{protocol, source, vip}", error })?;
    let mut core = lock(core);
    let core = &mut *core;
    let ebpf = core.ebpf.as_mut().ok_or(QueryError::NoDataplane)?;
    Ok(serde_json::to_value(inspect::flow(ebpf, &core.state, q.protocol, q.source, q.vip)?)?)
}

fn plan_of(core: &Shared, body: &[u8]) -> Result<Value, QueryError> {
    let q: views::PlanQuery = serde_json::from_slice(body)
        .map_err(|error| QueryError::Body { expected: "{commands} or {config_text, config_name}", error })?;
    let commands = operator_only(q.commands).map_err(QueryError::NotOperator)?;
    let config = match &q.config_text {
        Some(text) => {
            let name = std::path::PathBuf::from(q.config_name.as_deref().unwrap_or("sent config"));
            Some(crate::config::Config::parse_sent(&name, text).map_err(QueryError::Config)?)
        }
        None => None,
    };
    let core = lock(core);
    Ok(serde_json::to_value(inspect::plan(&core.state, &commands, config.as_ref())?)?)
}

fn pool_view(core: &Core, name: &str) -> Option<Value> {
    let pool = core.state.config.pools.get(name)?;
    let (weighted, fail_open) = core.state.effective_backends(pool);
    let backends: Vec<views::Backend> = pool
        .backends
        .iter()
        .zip(weighted)
        .map(|(b, w)| views::Backend {
            address: b.addr,
            weight: b.weight,
            drain: b.drain,
            backup: b.backup,
            healthy: core.state.healthy(name, b.addr),
            ejected: core.state.ejected.contains(&(name.to_owned(), b.addr)),
            effective_weight: w.weight,
            slow_start_percent: pool.slow_start.and_then(|window| {
                core.runtime
                    .slow_start_share(name, std::net::SocketAddr::new(b.addr, pool.port), window)
                    .map(|t| (t / 10) as u32)
            }),
        })
        .collect();
    Some(json!(views::Pool {
        name: name.to_owned(),
        backends,
        failing_open: fail_open,
        health_check: pool.health.as_ref().and_then(|h| serde_json::to_value(h).ok()),
        proxy: Some(pool_proxy(pool)),
        dns: pool.dns.as_ref().map(|dns| {
            let last = match core.dns_answers.get(name) {
                None => "not asked yet".to_owned(),
                Some(crate::dns_pools::LastAnswer { failure: Some(why), .. }) => format!("no answer: {why}"),
                Some(last) => format!("{} addresses", last.addresses),
            };
            format!(
                "{}, asked every {} ms, emptied after {} ms without an address; last: {last}",
                dns.name,
                dns.interval.as_millis(),
                dns.empty_hold.as_millis()
            )
        }),
    }))
}

/// How the L7 proxy uses `pool`, as `lbctl pool show` prints it.
fn pool_proxy(pool: &crate::config::Pool) -> views::PoolProxy {
    use crate::config::{Balance, HashKey};
    let balance = match (&pool.balance, &pool.hash_key) {
        (Balance::Hash, HashKey::ClientIp) => "hash client_ip".to_owned(),
        (Balance::Hash, HashKey::Header(name)) => format!("hash header:{name}"),
        (Balance::Hash, HashKey::Cookie(name)) => format!("hash cookie:{name}"),
        (Balance::Hash, HashKey::Query(name)) => format!("hash query:{name}"),
        (Balance::Hash, HashKey::Path) => "hash path".to_owned(),
        (Balance::Hash, HashKey::Uri) => "hash uri".to_owned(),
        (other, _) => config_name(other),
    };
    let tls = pool.tls.as_ref().map(|tls| {
        let mut parts = vec![match (&tls.ca, tls.verify) {
            (Some(ca), true) => format!("ca {}", ca.display()),
            _ => "any certificate".to_owned(),
        }];
        parts.push(match (&tls.server_name, tls.sni_from_host) {
            (Some(name), _) => format!("name {name}"),
            (None, true) => "name from host".to_owned(),
            (None, false) => "name the address".to_owned(),
        });
        if tls.client_cert.is_some() {
            parts.push("client cert".to_owned());
        }
        parts.join(", ")
    });
    views::PoolProxy {
        port: pool.port,
        protocol: config_name(pool.protocol),
        balance,
        connect_timeout_ms: pool.connect_timeout.unwrap_or(crate::config::DEFAULT_CONNECT_TIMEOUT).as_millis()
            as u64,
        max_requests_per_backend: pool.max_requests_per_backend,
        max_pending_requests: pool.max_pending_requests,
        outlier: pool.outlier.as_ref().map(|o| {
            format!(
                "{} failures, {} ms (up to {} ms)",
                o.consecutive_failures, o.ejection_ms, o.max_ejection_ms
            )
        }),
        tls,
        proxy_protocol: pool.proxy_protocol.map(config_name),
        slow_start_ms: pool.slow_start.map(|window| window.as_millis() as u64),
        keepalive_timeout_ms: pool.keep_alive.idle_timeout.as_millis() as u64,
        max_requests_per_connection: pool.keep_alive.max_requests,
        http2_max_concurrent_streams: pool.protocol.is_http2().then_some(pool.http2.max_streams),
        http2_keepalive: pool.http2.keepalive.map(|k| {
            format!("PING every {} ms, answered within {} ms", k.interval.as_millis(), k.timeout.as_millis())
        }),
        sticky_cookie: pool.sticky_cookie.as_ref().map(|c| c.name.clone()),
    }
}

/// A config value's name as the config file writes it (`round_robin`, `h2c`, `v2`).
fn config_name(value: impl serde::Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn stats_view(counters: &Counters) -> Result<views::Stats, DataplaneError> {
    let verdicts = counters
        .verdicts()?
        .into_iter()
        .map(|(s, c)| views::Counter { name: s.name().to_owned(), packets: c.packets, bytes: c.bytes })
        .collect();
    let traffic = |c: lb_common::stats::TrafficCounter| views::Traffic {
        packets: c.packets,
        bytes: c.bytes,
        new_flows: c.new_flows,
        lru_hits: c.lru_hits,
        lru_misses: c.lru_misses,
    };
    let vips = counters
        .vips()?
        .into_iter()
        .map(|(k, c)| views::VipTraffic {
            address: ip_of(&k.addr),
            port: u16::from_be(k.port),
            protocol: protocol_name(k.proto),
            traffic: traffic(c),
        })
        .collect();
    let backends = counters
        .backends()?
        .into_iter()
        .map(|(address, c)| views::BackendTraffic { address, traffic: traffic(c) })
        .collect();
    Ok(views::Stats { counters: verdicts, vips, backends })
}

/// A route as `GET /routes` shows it.
fn route_view(route: &crate::config::Route) -> views::Route {
    use crate::config::{OwnAnswer, PathMatch};
    views::Route {
        name: route.name.clone(),
        listener: route.listener.clone(),
        host: route.host.clone().unwrap_or_else(|| "*".to_owned()),
        path: match &route.path {
            PathMatch::Any => "*".to_owned(),
            PathMatch::Exact(p) => format!("={p}"),
            PathMatch::Prefix(p) => p.clone(),
            PathMatch::Regex(r) => format!("~{r}"),
        },
        pool: route.pool.clone().unwrap_or_default(),
        answer: route.answer.as_ref().map(|answer| match answer {
            OwnAnswer::Redirect { status, to, prefix } => {
                format!("redirect {status} {to}{}", if *prefix { "…" } else { "" })
            }
            OwnAnswer::Respond(fixed) => format!("respond {}", fixed.status),
        }),
        split: route.split.clone(),
        sticky: route.sticky,
        rewrite_prefix: route.rewrite_prefix.clone(),
        header_edits: [&route.request_headers, &route.response_headers]
            .iter()
            .map(|edits| edits.set.len() + edits.remove.len())
            .sum(),
        compress: route.compress.is_some(),
        gates: gates(route),
        retries: (route.retries > 0).then(|| retries(route)),
        cache: route.cache.as_ref().map(cache),
        clients: route.clients.iter().map(ToString::to_string).collect(),
        fault: route.fault.map(|fault| {
            let delay =
                fault.delay.map(|(delay, share)| format!("delay {} ms to {share}%", delay.as_millis()));
            let abort = fault.abort.map(|(status, share)| format!("abort {status} to {share}%"));
            [delay, abort].into_iter().flatten().collect::<Vec<_>>().join(", ")
        }),
        intercept_errors: route.intercept_errors,
    }
}

/// A route's cache as `lbctl route list` shows it.
fn cache(cache: &crate::config::CacheConfig) -> String {
    let size = |bytes: usize| match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    };
    let mut text = format!(
        "{} entries, {}, {} each",
        cache.max_entries,
        size(cache.max_bytes),
        size(cache.max_object_bytes)
    );
    let (updating, on_error) = (cache.stale_while_revalidate_s, cache.stale_if_error_s);
    if updating > 0 || on_error > 0 {
        text += &format!("; stale {updating} s updating, {on_error} s on error");
    }
    text
}

/// A route's retries and what they retry: `2 on reset, 502, 503, 504 (budget 20%)`, and
/// `, 250 ms a try` with a `try_timeout_ms`.
fn retries(route: &crate::config::Route) -> String {
    let on = &route.retry_on;
    let mut what: Vec<String> = on.reset.then(|| "reset".to_owned()).into_iter().collect();
    what.extend(on.statuses.iter().map(u16::to_string));
    let mut text =
        format!("{} on {} (budget {}%)", route.retries, what.join(", "), route.retry_budget_percent);
    if let Some(try_timeout) = route.try_timeout {
        text += &format!(", {} ms a try", try_timeout.as_millis());
    }
    text
}

/// A route's gates, in the order a request meets them (`phase::gate`).
fn gates(route: &crate::config::Route) -> Vec<String> {
    let mut gates = Vec::new();
    let named = [
        ("allow", !route.allow.is_empty()),
        ("deny", !route.deny.is_empty()),
        ("api_key", route.api_key.is_some()),
        ("jwt", route.jwt.is_some()),
    ];
    gates.extend(named.iter().filter(|(_, set)| *set).map(|(name, _)| (*name).to_owned()));
    if let Some(limit) = &route.rate_limit {
        let per = match limit.key {
            crate::config::RateKey::ClientIp => String::new(),
            crate::config::RateKey::Header => {
                format!(" per header {}", limit.header.as_ref().map_or("", |h| h.as_str()))
            }
            key => format!(" per {}", config_name(key)),
        };
        gates.push(format!("rate_limit {}/s{per}", limit.requests_per_second));
    }
    if route.basic_auth.is_some() {
        gates.push("basic_auth".to_owned());
    }
    gates
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use http_body_util::BodyExt as _;

    use super::*;
    use crate::config::Config;

    const CONFIG: &str = "[[pool]]\nname = \"web\"\nport = 8443\nprotocol = \"h2\"\nbalance = \"hash\"\n\
         hash_key = \"header:x-user\"\nbackends = [{ address = \"10.0.0.1\" }]\nmax_requests_per_backend = 50\n\
         outlier = { consecutive_failures = 3, ejection_ms = 5000 }\n\
         tls = { verify = false, sni_from_host = true }\n\
         [[pool]]\nname = \"plain\"\nbackends = [{ address = \"10.0.0.2\" }]\nproxy_protocol = \"v1\"\n\
         keepalive_timeout_ms = 4000\nmax_requests_per_connection = 100\nslow_start_ms = 30000\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\nerror_pages = { 502 = \"/nonexistent/502.html\" }\n\
         [[route]]\nname = \"site\"\nlistener = \"l\"\npool = \"web\"\nallow = [\"10.0.0.0/8\"]\n\
         rate_limit = { requests_per_second = 20 }\napi_key = { header = \"x-key\", file = \"/nonexistent\" }\n\
         retries = 2\nretry_on = [\"reset\", \"gateway-error\", \"409\"]\ntry_timeout_ms = 250\n\
         cache = { max_bytes = 1048576, max_object_bytes = 4096, stale_if_error_s = 600 }\n\
         clients = [\"192.0.2.0/24\"]\nfault = { delay_ms = 200, delay_percent = 10, abort_status = 503, abort_percent = 1 }\n";

    async fn json<T: serde::de::DeserializeOwned>(answer: Answer) -> T {
        serde_json::from_slice(&answer.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    #[tokio::test]
    async fn pools_routes_and_listeners_show_what_the_proxy_does_with_them() {
        let path = std::env::temp_dir().join(format!("sluice-queries-{}.toml", std::process::id()));
        let config = Config::parse_sent(Path::new("sluice.toml"), CONFIG).unwrap();
        let core: Shared = Arc::new(std::sync::Mutex::new(Core::start(config, path, None).unwrap()));
        let web: views::Pool = json(pool(&core, "web")).await;
        let proxy = web.proxy.unwrap();
        assert_eq!(
            (proxy.port, proxy.protocol.as_str(), proxy.balance.as_str()),
            (8443, "h2", "hash header:x-user")
        );
        assert_eq!((proxy.connect_timeout_ms, proxy.max_requests_per_backend), (3000, Some(50)));
        assert_eq!(proxy.outlier.as_deref(), Some("3 failures, 5000 ms (up to 300000 ms)"));
        assert_eq!(proxy.tls.as_deref(), Some("any certificate, name from host"));
        assert_eq!(proxy.http2_max_concurrent_streams, Some(100));
        let plain: views::Pool = json(pool(&core, "plain")).await;
        let proxy = plain.proxy.unwrap();
        assert_eq!(
            (proxy.protocol.as_str(), proxy.balance.as_str(), proxy.tls),
            ("http1", "round_robin", None)
        );
        assert_eq!((proxy.proxy_protocol.as_deref(), proxy.http2_max_concurrent_streams), (Some("v1"), None));
        assert_eq!(
            (proxy.keepalive_timeout_ms, proxy.max_requests_per_connection, proxy.slow_start_ms),
            (4000, Some(100), Some(30000))
        );
        let listed: Vec<views::Route> = json(routes(&core)).await;
        assert_eq!(listed[0].gates, ["allow", "api_key", "rate_limit 20/s"]);
        assert_eq!(
            listed[0].retries.as_deref(),
            Some("2 on reset, 409, 502, 503, 504 (budget 20%), 250 ms a try")
        );
        let cache = listed[0].cache.as_deref();
        assert_eq!(cache, Some("10000 entries, 1 MiB, 4 KiB each; stale 0 s updating, 600 s on error"));
        assert_eq!(listed[0].clients, ["192.0.2.0/24"]);
        assert_eq!(listed[0].fault.as_deref(), Some("delay 200 ms to 10%, abort 503 to 1%"));
        core.lock().unwrap().proxy_metrics.connection_opened("l");
        let listed: Vec<views::Listener> = json(listeners(&core)).await;
        assert_eq!((listed[0].name.as_str(), listed[0].protocol.as_str()), ("l", "http"));
        assert_eq!((listed[0].routes, listed[0].open_connections, listed[0].client_ipv6_prefix), (1, 1, 64));
        assert_eq!(listed[0].error_pages, [502]);
    }
}
