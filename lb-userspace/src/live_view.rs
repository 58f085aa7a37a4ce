//! The live view: one JSON snapshot of everything an operator watches (`GET /view` on the
//! metrics listener and the admin socket): each VIP and backend with its health, weight, drain,
//! effective share and cumulative counters (L4 from the XDP maps, L7 requests, errors and
//! latency buckets from the proxy's metrics), drops by reason, the connection table's fill and
//! the last reload. Clients (the status page, `lbctl top`) turn two snapshots into rates; the
//! page itself is `live_view.html`, served at `/` beside `/metrics`.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    daemon::{Core, Shared, lock},
    dataplane::{
        counters::{Counters, protocol_name},
        tables::ip_of,
    },
};

/// The status page (no framework, no external assets).
pub const PAGE: &str = include_str!("live_view.html");

/// `GET /view`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LiveView {
    /// When the snapshot was taken, in Unix milliseconds.
    pub at_ms: u64,
    pub uptime_seconds: u64,
    pub vips: Vec<LiveVip>,
    pub backends: Vec<LiveBackend>,
    /// XDP verdict counters by name (`pass`, `tx`, `drop_denied`, …): cumulative packets.
    pub verdicts: BTreeMap<String, u64>,
    /// Connection-table slots holding a flow, and the table's size (0 and 0 without XDP).
    pub conn_used: u64,
    pub conn_capacity: u64,
    /// The last reload: Unix seconds and whether it was applied.
    pub last_reload: Option<(u64, bool)>,
}

/// One VIP and its L4 counters (zero for L7 VIPs: the proxy counts those per backend).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveVip {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub mode: String,
    pub pool: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// One backend of a pool: its state, its L4 counters (by address, over every pool it is in)
/// and the proxy's requests to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveBackend {
    pub pool: String,
    pub address: IpAddr,
    pub healthy: bool,
    pub ejected: bool,
    pub weight: u32,
    pub drain: bool,
    /// Share of the pool's new flows and requests, in percent (effective weights).
    pub share: f64,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub requests: u64,
    /// Of those, answered 5xx.
    pub errors: u64,
    /// Upstream latency histogram: (upper bound in seconds, cumulative count), finite bounds.
    pub latency: Vec<(f64, u64)>,
    /// Requests timed in all (the histogram's +Inf bucket).
    pub latency_count: u64,
}

/// The proxy's per-backend numbers, read from its metrics (the same numbers Prometheus sees;
/// nothing more is counted per request for the live view).
#[derive(Debug, Default)]
struct Proxied {
    requests: u64,
    errors: u64,
    latency: BTreeMap<u64, (f64, u64)>,
}

/// Per (pool, backend address) from the proxy's metrics text.
fn proxied(text: &str) -> BTreeMap<(String, IpAddr), Proxied> {
    let mut out: BTreeMap<(String, IpAddr), Proxied> = BTreeMap::new();
    for (name, labels, value) in
        text.lines().filter(|l| !l.starts_with('#')).filter_map(crate::proxy::metrics::parse_sample)
    {
        let (Some(pool), Some(backend)) = (labels.get("pool"), labels.get("backend")) else { continue };
        let Some(address) = backend_address(backend) else { continue };
        let entry = out.entry(((*pool).to_owned(), address)).or_default();
        match name {
            "http_requests_total" => {
                entry.requests += value as u64;
                if labels.get("class") == Some(&"5xx") {
                    entry.errors += value as u64;
                }
            }
            "http_upstream_seconds_bucket" => {
                let le = labels.get("le").and_then(|l| l.parse::<f64>().ok()).unwrap_or(f64::INFINITY);
                // Keyed by the bound's bits: sorted as the bounds are (positive floats).
                entry.latency.insert(le.to_bits(), (le, value as u64));
            }
            _ => {}
        }
    }
    out
}

/// A backend label (`10.0.0.1:80`, `[fd00::1]:80`) as its address.
fn backend_address(label: &str) -> Option<IpAddr> {
    label.parse::<std::net::SocketAddr>().map(|s| s.ip()).or_else(|_| label.parse()).ok()
}

/// The snapshot: what the State says, then the data plane's and the proxy's counters (read
/// without the core's lock held).
pub fn snapshot(core: &Shared) -> LiveView {
    let (mut live, counters, proxy_metrics) = {
        let core = lock(core);
        (of_state(&core), core.counters.clone(), core.proxy_metrics.clone())
    };
    if let Some(counters) = counters {
        add_xdp(&mut live, &counters.lock().unwrap_or_else(|p| p.into_inner()));
    }
    add_proxied(&mut live, &proxy_metrics.text());
    live
}

/// The VIPs and backends as the State has them (health, ejection, weights, shares), no counts.
fn of_state(core: &Core) -> LiveView {
    let state = &core.state;
    let vips = state
        .config
        .vips
        .iter()
        .map(|v| LiveVip {
            name: v.name.clone(),
            address: v.addr,
            port: v.port,
            protocol: v.protocol.name().to_owned(),
            mode: v.mode.name().to_owned(),
            pool: v.pool.clone(),
            packets: 0,
            bytes: 0,
            new_flows: 0,
        })
        .collect();
    let mut backends = Vec::new();
    for (name, pool) in &state.config.pools {
        let (weighted, _) = state.effective_backends(pool);
        let total: u64 = weighted.iter().map(|w| u64::from(w.weight)).sum();
        for (b, w) in pool.backends.iter().zip(&weighted) {
            backends.push(LiveBackend {
                pool: name.clone(),
                address: b.addr,
                healthy: state.healthy(name, b.addr),
                ejected: state.ejected.contains(&(name.clone(), b.addr)),
                weight: b.weight,
                drain: b.drain,
                share: if total == 0 { 0.0 } else { 100.0 * f64::from(w.weight) / total as f64 },
                packets: 0,
                bytes: 0,
                new_flows: 0,
                requests: 0,
                errors: 0,
                latency: Vec::new(),
                latency_count: 0,
            });
        }
    }
    LiveView {
        at_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        uptime_seconds: core.started.elapsed().as_secs(),
        vips,
        backends,
        last_reload: core
            .last_reload
            .map(|r| (r.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()), r.applied)),
        ..LiveView::default()
    }
}

/// The XDP counters: verdicts, each VIP's and backend's packets, bytes and new flows, and the
/// connection table's fill. A map that cannot be read leaves its numbers at zero.
fn add_xdp(live: &mut LiveView, counters: &Counters) {
    if let Ok(verdicts) = counters.verdicts() {
        live.verdicts = verdicts.into_iter().map(|(s, c)| (s.name().to_owned(), c.packets)).collect();
    }
    if let Ok(vips) = counters.vips() {
        for (key, c) in vips {
            let (address, port, protocol) =
                (ip_of(&key.addr), u16::from_be(key.port), protocol_name(key.proto));
            if let Some(v) = live
                .vips
                .iter_mut()
                .find(|v| v.address == address && v.port == port && v.protocol == protocol)
            {
                (v.packets, v.bytes, v.new_flows) = (c.packets, c.bytes, c.new_flows);
            }
        }
    }
    let (used, capacity) = counters.flows();
    (live.conn_used, live.conn_capacity) = (used as u64, capacity as u64);
    if let Ok(backends) = counters.backends() {
        for (address, c) in backends {
            for b in live.backends.iter_mut().filter(|b| b.address == address) {
                (b.packets, b.bytes, b.new_flows) = (c.packets, c.bytes, c.new_flows);
            }
        }
    }
}

/// The proxy's requests, errors and latency buckets per backend, from its metrics' text.
fn add_proxied(live: &mut LiveView, metrics_text: &str) {
    let proxied = proxied(metrics_text);
    for b in &mut live.backends {
        if let Some(p) = proxied.get(&(b.pool.clone(), b.address)) {
            (b.requests, b.errors) = (p.requests, p.errors);
            b.latency = p.latency.values().copied().filter(|(le, _)| le.is_finite()).collect();
            b.latency_count = p.latency.values().find(|(le, _)| le.is_infinite()).map_or(0, |(_, n)| *n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_metrics_text_becomes_per_backend_numbers() {
        let text = "# TYPE http_requests counter\n\
            http_requests_total{route=\"site\",pool=\"web\",backend=\"10.0.0.1:80\",class=\"2xx\"} 7\n\
            http_requests_total{route=\"site\",pool=\"web\",backend=\"10.0.0.1:80\",class=\"5xx\"} 2\n\
            http_requests_total{route=\"site\",pool=\"web\",backend=\"[fd00::1]:80\",class=\"2xx\"} 1\n\
            http_upstream_seconds_bucket{le=\"0.005\",pool=\"web\",backend=\"10.0.0.1:80\"} 5\n\
            http_upstream_seconds_bucket{le=\"+Inf\",pool=\"web\",backend=\"10.0.0.1:80\"} 9\n\
            http_upstream_seconds_bucket{le=\"0.001\",pool=\"web\",backend=\"10.0.0.1:80\"} 1\n";
        let got = proxied(text);
        let one = &got[&("web".to_owned(), "10.0.0.1".parse().unwrap())];
        assert_eq!((one.requests, one.errors), (9, 2));
        let bounds: Vec<(f64, u64)> = one.latency.values().copied().collect();
        assert_eq!(bounds, [(0.001, 1), (0.005, 5), (f64::INFINITY, 9)]);
        assert_eq!(got[&("web".to_owned(), "fd00::1".parse().unwrap())].requests, 1);
    }
}
