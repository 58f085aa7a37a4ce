//! Prometheus text exposition on a TCP address: `GET /metrics`. Counters are read from the
//! per-CPU maps and summed at scrape time; health and weights come from the State. The same
//! listener serves the live view (`/`, `/view`: crate::live_view).
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{
    daemon::{Core, Shared, lock},
    dataplane::{
        DataplaneError,
        counters::{Counters, protocol_name},
        tables::ip_of,
    },
    proxy::runtime::BACKEND_COUNTERS,
};

/// Why a scrape failed (a 500 with this text).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("reading the counters: {0}")]
    Counters(#[from] DataplaneError),
    #[error("encoding metrics")]
    Encode(#[from] std::fmt::Error),
}

type Result<T, E = MetricsError> = std::result::Result<T, E>;

type Labels = Vec<(String, String)>;

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

/// lbd's resident memory in bytes, from /proc.
pub(crate) fn process_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The fast path's counters and connection table, read from the pinned maps.
fn xdp(registry: &mut Registry, counters: &Counters) -> Result<()> {
    let packets = counter_family(registry, "xdp_packets", "Packets per XDP verdict and reason");
    let bytes = counter_family(registry, "xdp_bytes", "Bytes per XDP verdict and reason");
    for (stat, c) in counters.verdicts()? {
        let labels = vec![("counter".to_owned(), stat.name().to_owned())];
        packets.get_or_create(&labels).inc_by(c.packets);
        bytes.get_or_create(&labels).inc_by(c.bytes);
    }
    let names = ["packets", "bytes", "new_flows", "lru_hits", "lru_misses"];
    let vip: Vec<_> = names
        .iter()
        .map(|n| counter_family(registry, &format!("vip_{n}"), &format!("Forwarded {n} per VIP")))
        .collect();
    for (key, c) in counters.vips()? {
        let labels = vec![
            ("vip".to_owned(), ip_of(&key.addr).to_string()),
            ("port".to_owned(), u16::from_be(key.port).to_string()),
            ("protocol".to_owned(), protocol_name(key.proto)),
        ];
        for (family, value) in vip.iter().zip([c.packets, c.bytes, c.new_flows, c.lru_hits, c.lru_misses]) {
            family.get_or_create(&labels).inc_by(value);
        }
    }
    let backend: Vec<_> = names
        .iter()
        .map(|n| counter_family(registry, &format!("backend_{n}"), &format!("Forwarded {n} per backend")))
        .collect();
    for (addr, c) in counters.backends()? {
        let labels = vec![("backend".to_owned(), addr.to_string())];
        for (family, value) in backend.iter().zip([c.packets, c.bytes, c.new_flows, c.lru_hits, c.lru_misses])
        {
            family.get_or_create(&labels).inc_by(value);
        }
    }
    let (used, slots) = counters.flows();
    gauges(
        registry,
        [
            ("conn_table_flows", "Flows in the XDP connection table", used as i64),
            ("conn_table_slots", "Slots of the XDP connection table", slots as i64),
        ],
    );
    Ok(())
}

/// The whole exposition, read now: the State's pools, the proxy's series, lbd itself, then the
/// data plane's counters (read after the core's lock is let go).
pub fn render(core: &Shared) -> Result<String> {
    let mut registry = Registry::with_prefix("sluice");
    let counters = {
        let core = lock(core);
        pools(&mut registry, &core);
        // A request of a replaced snapshot may have counted into a series publishing removed.
        core.proxy_metrics.retain(&core.state.config);
        core.proxy_metrics.register(&mut registry);
        upstream_counters(&mut registry, &core);
        build_info(&mut registry);
        if core.state.config.cluster.is_some() {
            gauges(
                &mut registry,
                [
                    (
                        "cluster_revision",
                        "The etcd revision whose pools are applied",
                        core.following.revision,
                    ),
                    (
                        "cluster_reachable",
                        "1 if etcd answered the last read",
                        core.following.error.is_none() as i64,
                    ),
                ],
            );
        }
        if core.state.config.bgp.is_some() {
            bgp(&mut registry, &core);
        }
        dns_pools(&mut registry, &core);
        gauges(&mut registry, process(&core));
        certificates(&mut registry, &core);
        caches(&mut registry, &core);
        core.counters.clone()
    };
    if let Some(counters) = counters {
        xdp(&mut registry, &counters.lock().unwrap_or_else(|p| p.into_inner()))?;
    }
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

/// Each DNS pool's last answer: whether its servers answered, and how many addresses.
fn dns_pools(registry: &mut Registry, core: &Core) {
    if core.dns_answers.is_empty() {
        return;
    }
    let answering = gauge_family(
        registry,
        "dns_pool_answering",
        "1 if a DNS pool's name was answered at the last ask (addresses or none), 0 if not",
    );
    let addresses =
        gauge_family(registry, "dns_pool_addresses", "The addresses a DNS pool's name had at the last ask");
    for (pool, last) in &core.dns_answers {
        let labels = vec![("pool".to_owned(), pool.clone())];
        answering.get_or_create(&labels).set(last.failure.is_none() as i64);
        addresses.get_or_create(&labels).set(last.addresses as i64);
    }
}

/// When each TLS listener's certificates expire, so an alert can fire before one does (one
/// that renewal, by hand or ACME, failed to replace).
fn certificates(registry: &mut Registry, core: &Core) {
    let expiry = gauge_family(
        registry,
        "tls_certificate_expiry_timestamp_seconds",
        "When a listener's certificate expires (its not-after, Unix time), by the least of its names",
    );
    for (listener, resolver) in &core.certificates {
        for served in &resolver.store.load().served {
            let Some(not_after) = served.not_after else { continue };
            let at = not_after.duration_since(std::time::SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let labels = vec![
                ("listener".to_owned(), listener.clone()),
                ("certificate".to_owned(), served.name.clone()),
            ];
            expiry.get_or_create(&labels).set(at as i64);
        }
    }
}

/// What each cache route holds: answers (stale ones kept to revalidate included) and their
/// bodies' bytes, within its `max_entries` and `max_bytes`.
fn caches(registry: &mut Registry, core: &Core) {
    let entries = gauge_family(registry, "http_cache_entries", "Answers a route's cache holds");
    let bytes =
        gauge_family(registry, "http_cache_bytes", "Bytes of the answers' bodies a route's cache holds");
    for (route, held, size) in core.cache.sizes() {
        let labels = vec![("route".to_owned(), route)];
        entries.get_or_create(&labels).set(held as i64);
        bytes.get_or_create(&labels).set(size as i64);
    }
}

/// Gauges without labels, each set once.
fn gauges<const N: usize>(registry: &mut Registry, gauges: [(&'static str, &'static str, i64); N]) {
    for (name, help, value) in gauges {
        let gauge = Gauge::<i64>::default();
        gauge.set(value);
        registry.register(name, help, gauge);
    }
}

/// Each pool's size, and each backend's health and weights.
fn pools(registry: &mut Registry, core: &Core) {
    let up = gauge_family(registry, "backend_up", "1 if the backend passes its health check");
    let weight = gauge_family(registry, "backend_weight", "Configured weight");
    let effective =
        gauge_family(registry, "backend_effective_weight", "Weight Maglev uses (0: drained or down)");
    let size = gauge_family(registry, "pool_backends", "Backends in the pool");
    for pool in core.state.config.pools.values() {
        size.get_or_create(&vec![("pool".to_owned(), pool.name.clone())]).set(pool.backends.len() as i64);
        let (weighted, _) = core.state.effective_backends(pool);
        for (b, w) in pool.backends.iter().zip(weighted) {
            let labels =
                vec![("pool".to_owned(), pool.name.clone()), ("backend".to_owned(), b.addr.to_string())];
            up.get_or_create(&labels).set(core.state.healthy(&pool.name, b.addr) as i64);
            weight.get_or_create(&labels).set(b.weight as i64);
            effective.get_or_create(&labels).set(w.weight as i64);
        }
    }
}

/// The backends' counters: the connections the proxy made to each, the requests each did not
/// process (from the runtime registry, so they survive rebuilds; a backend shows once it has
/// a count).
fn upstream_counters(registry: &mut Registry, core: &Core) {
    for (name, help, which) in BACKEND_COUNTERS {
        let family = Family::<Vec<(String, String)>, Counter>::default();
        for (pool, address, n) in core.runtime.backend_counts(which) {
            family
                .get_or_create(&vec![("pool".to_owned(), pool), ("backend".to_owned(), address.to_string())])
                .inc_by(n);
        }
        // The registry adds `_total` to a counter's name.
        registry.register(name.trim_end_matches("_total"), help, family);
    }
}

/// lbd's version and the host's name, as labels.
fn build_info(registry: &mut Registry) {
    let build = gauge_family(registry, "build_info", "1, labelled with lbd's version and the host's name");
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
    build
        .get_or_create(&vec![
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ("node".to_owned(), node),
        ])
        .set(1);
}

/// What BIRD is told to announce, per VIP address, and how often telling it failed.
fn bgp(registry: &mut Registry, core: &Core) {
    let announced =
        gauge_family(registry, "bgp_announced", "1 while BIRD is told to announce the VIP address");
    let addresses: std::collections::BTreeSet<_> = core.state.config.vips.iter().map(|v| v.addr).collect();
    for address in addresses {
        let on = core.announcing.announced.contains(&address);
        announced.get_or_create(&vec![("address".to_owned(), address.to_string())]).set(on as i64);
    }
    let failures = Counter::<u64>::default();
    failures.inc_by(core.announcing.failures);
    registry.register("bgp_update_failures", "Times BIRD could not be told what to announce", failures);
}

/// lbd's own gauges: attachment, reloads, the process, the NIC's XDP errors.
fn process(core: &Core) -> [(&'static str, &'static str, i64); 7] {
    let unix =
        |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let reload = core.last_reload;
    [
        (
            "xdp_attached",
            "1 while the balancer's XDP link is pinned (0: detached from outside lbd)",
            core.state.config.pin_dir.join("link").exists() as i64,
        ),
        (
            "reload_last_success",
            "1 if the last reload was applied, 0 if refused (1 before any)",
            reload.is_none_or(|r| r.applied) as i64,
        ),
        (
            "reload_last_timestamp_seconds",
            "Unix time of the last reload (0 before any)",
            reload.map_or(0, |r| unix(r.at)),
        ),
        (
            "process_start_time_seconds",
            "Unix time lbd started",
            unix(std::time::SystemTime::now() - core.started.elapsed()),
        ),
        ("process_resident_memory_bytes", "lbd's resident memory", process_rss() as i64),
        (
            "process_open_fds",
            "lbd's open descriptors",
            std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as i64,
        ),
        (
            "nic_xdp_tx_errors",
            "The edge NIC's own XDP transmit error counters, summed (ethtool -S; -1: it has none)",
            core.nic_xdp_tx_errors.map_or(-1, |n| n as i64),
        ),
    ]
}

/// The text format of Prometheus 0.0.4 from OpenMetrics text: a counter's HELP and TYPE name
/// its `_total` samples, and the `# EOF` and `# UNIT` lines go. Served to scrapers that do
/// not ask for OpenMetrics (and read by `promtool check metrics`).
pub fn text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

async fn handle(
    core: Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    // Prometheus asks for OpenMetrics in Accept; anything else gets the 0.0.4 text format.
    let openmetrics = request
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
    let (status, body, content_type) = match request.uri().path() {
        "/metrics" => match render(&core) {
            Ok(text) if openmetrics => {
                (StatusCode::OK, text, "application/openmetrics-text; version=1.0.0; charset=utf-8")
            }
            Ok(text) => (StatusCode::OK, text_format(&text), "text/plain; version=0.0.4; charset=utf-8"),
            Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n"), "text/plain; charset=utf-8"),
        },
        // The live view: the status page and its JSON (crate::live_view).
        "/" => (StatusCode::OK, crate::live_view::PAGE.to_owned(), "text/html; charset=utf-8"),
        "/view" => match serde_json::to_string(&crate::live_view::snapshot(&core)) {
            Ok(json) => (StatusCode::OK, json, "application/json"),
            Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n"), "text/plain; charset=utf-8"),
        },
        _ => (StatusCode::NOT_FOUND, "try /metrics, /view or /\n".to_owned(), "text/plain; charset=utf-8"),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    Ok(response)
}

/// Binds the metrics address.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, core: Shared) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(crate::admin::MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        crate::admin::spawn_connection(stream, "metrics", &slots, core.clone(), handle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_samples_in_the_text_format() {
        let openmetrics = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 2\n\
                           # HELP a_up Up.\n# TYPE a_up gauge\n# UNIT a_up seconds\na_up 1\n# EOF\n";
        assert_eq!(
            text_format(openmetrics),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 2\n\
             # HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n"
        );
    }
}
