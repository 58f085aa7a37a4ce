//! The proxy's metrics, kept across scrapes: requests by route, backend and status class,
//! upstream latency, connections, TLS handshakes. Registered into each scrape's registry; read
//! back from their own text by the live view, and carried over to a new lbd on upgrade.
use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{config::Config, proxy::log_sink};

type Labels = Vec<(&'static str, String)>;

/// A label value (route, pool or backend name) made once per config and shared by every request
/// that carries it, so counting a request allocates nothing.
pub type Label = Arc<str>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Label,
    pool: Label,
    backend: Label,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    pool: Label,
    backend: Label,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

#[derive(Clone)]
pub struct ProxyMetrics {
    /// Which metrics these are, for the per-thread series (clones share it, as they share the
    /// families).
    id: u64,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    connections: Family<Labels, Gauge>,
    handshakes: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    closed_idle: Family<Labels, Counter>,
    cut: Family<Labels, Counter>,
    parser_refused: Family<Labels, Counter>,
    proxy_header_refused: Family<Labels, Counter>,
    client_limited: Family<Labels, Counter>,
    /// QUIC handshakes asked to prove their address first (a Retry).
    quic_retries: Family<Labels, Counter>,
    /// Connections to backends that could not be made, by pool, backend and reason.
    connect_failed: Family<Labels, Counter>,
    /// The (pool, backend) pairs `connect_failed` holds series of, for `retain`.
    connect_failed_seen: Arc<Mutex<HashSet<(String, String)>>>,
    /// Every (route, pool, backend) the request families hold, so that those of backends,
    /// pools and routes gone from the config can be removed (`retain`): the families cannot
    /// list their own.
    counted: Arc<Mutex<HashSet<Triple>>>,
}

/// The route, pool and backend labels of a request series.
type Triple = (Label, Label, Label);

/// Every status class a request series can have.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

impl Default for ProxyMetrics {
    fn default() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        ProxyMetrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            connections: Family::default(),
            handshakes: Family::default(),
            refused: Family::default(),
            closed_idle: Family::default(),
            cut: Family::default(),
            parser_refused: Family::default(),
            proxy_header_refused: Family::default(),
            client_limited: Family::default(),
            quic_retries: Family::default(),
            connect_failed: Family::default(),
            connect_failed_seen: Arc::default(),
            counted: Arc::default(),
        }
    }
}

/// A request's series (its counter, and its backend's latency histogram once one is
/// observed), found per worker thread by its labels' identity: the families would hash the
/// labels' text under a lock, for each of the two series, on every request.
struct Series {
    requests: Counter,
    latency: Option<Histogram>,
    /// Held, so that the addresses in the key stay these labels'.
    labels: RequestLabels,
}

/// Which metrics, the route, pool and backend labels' addresses, the status class.
type SeriesKey = (u64, usize, usize, usize, &'static str);

/// Series kept per thread; past this the map starts again (labels of replaced configs).
const SERIES_KEPT: usize = 4096;

thread_local! {
    static SERIES: RefCell<HashMap<SeriesKey, Series, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

fn address(label: &Label) -> usize {
    Arc::as_ptr(label).cast::<u8>() as usize
}

/// One sample line of the text exposition, `name{a="x",b="y"} value`, as (name, labels, value).
pub fn parse_sample(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let labels = labels
        .split("\",")
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once("=\"")?;
            Some((k, v.trim_end_matches('"')))
        })
        .collect();
    Some((name, labels, value.parse().ok()?))
}

/// The status class label of a request counter, as the static string the counters use.
fn class_label(text: &str) -> &'static str {
    ["1xx", "2xx", "3xx", "4xx", "5xx"].into_iter().find(|c| *c == text).unwrap_or("other")
}

impl ProxyMetrics {
    /// These metrics in the text exposition (no prefix).
    pub fn text(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    /// Adds the counters of another lbd's [`ProxyMetrics::text`] to these (an upgrade: the old
    /// lbd's totals, sent once it has drained). Histograms and gauges are not carried over.
    pub fn absorb(&self, text: &str) {
        let owned = |labels: &BTreeMap<&str, &str>, key: &'static str| {
            labels.get(key).map(|v| (key, (*v).to_owned()))
        };
        for (name, labels, value) in text.lines().filter(|l| !l.starts_with('#')).filter_map(parse_sample) {
            let n = value as u64;
            let listener = || owned(&labels, "listener").into_iter();
            match name {
                "http_requests_total" => {
                    let (Some(route), Some(pool), Some(backend), Some(class)) =
                        (labels.get("route"), labels.get("pool"), labels.get("backend"), labels.get("class"))
                    else {
                        continue;
                    };
                    let labels = RequestLabels {
                        route: Label::from(*route),
                        pool: Label::from(*pool),
                        backend: Label::from(*backend),
                        class: class_label(class),
                    };
                    self.created(&labels).inc_by(n);
                }
                "tls_handshakes_total" => {
                    let l: Labels = listener().chain(owned(&labels, "result")).collect();
                    self.handshakes.get_or_create(&l).inc_by(n);
                }
                "http_refused_connections_total" => {
                    self.refused.get_or_create(&listener().collect()).inc_by(n);
                }
                "http_idle_closed_connections_total" => {
                    let l: Labels = listener().chain(owned(&labels, "reason")).collect();
                    self.closed_idle.get_or_create(&l).inc_by(n);
                }
                "http_cut_connections_total" => {
                    let l: Labels = listener().chain(owned(&labels, "reason")).collect();
                    self.cut.get_or_create(&l).inc_by(n);
                }
                "http_parser_refused_total" => {
                    let l: Labels = listener().chain(owned(&labels, "status")).collect();
                    self.parser_refused.get_or_create(&l).inc_by(n);
                }
                "http_client_limited_connections_total" => {
                    self.client_limited.get_or_create(&listener().collect()).inc_by(n);
                }
                "quic_retries_total" => {
                    self.quic_retries.get_or_create(&listener().collect()).inc_by(n);
                }
                "http_proxy_protocol_refused_total" => {
                    let l: Labels = listener().chain(owned(&labels, "reason")).collect();
                    self.proxy_header_refused.get_or_create(&l).inc_by(n);
                }
                "http_upstream_connect_failures_total" => {
                    let (Some(pool), Some(backend), Some(reason)) =
                        (labels.get("pool"), labels.get("backend"), labels.get("reason"))
                    else {
                        continue;
                    };
                    self.connect_failed_series(pool, backend, reason).inc_by(n);
                }
                _ => {}
            }
        }
    }

    /// One answered request; `backend` is empty when the proxy answered itself. The labels are
    /// taken, not borrowed: they become the lookup keys (a clone is an atomic count each way).
    pub fn request(
        &self,
        route: Label,
        pool: Label,
        backend: Label,
        status: u16,
        upstream_seconds: Option<f64>,
    ) {
        let class = CLASSES[..5].get(usize::from(status / 100).wrapping_sub(1)).copied().unwrap_or("other");
        let key = (self.id, address(&route), address(&pool), address(&backend), class);
        let mut labels = Some(RequestLabels { route, pool, backend, class });
        let counted = SERIES.try_with(|series| {
            let mut series = series.borrow_mut();
            if series.len() >= SERIES_KEPT && !series.contains_key(&key) {
                series.clear(); // labels of configs since replaced, most of them
            }
            let one = series.entry(key).or_insert_with(|| {
                let labels = labels.take().expect("labels not used yet");
                Series { requests: self.created(&labels), latency: None, labels }
            });
            one.requests.inc();
            if let Some(seconds) = upstream_seconds {
                let labels = &one.labels;
                one.latency
                    .get_or_insert_with(|| {
                        let labels =
                            LatencyLabels { pool: labels.pool.clone(), backend: labels.backend.clone() };
                        self.latency.get_or_create(&labels).clone()
                    })
                    .observe(seconds);
            }
        });
        // A thread being torn down has no series left: straight to the families.
        if counted.is_err()
            && let Some(labels) = labels
        {
            self.created(&labels).inc();
            if let Some(seconds) = upstream_seconds {
                let labels = LatencyLabels { pool: labels.pool, backend: labels.backend };
                self.latency.get_or_create(&labels).observe(seconds);
            }
        }
    }

    /// The request series of `labels`, made if it is new and noted for `retain`. Called once
    /// per series and thread (the threads keep what it returns), not per request.
    fn created(&self, labels: &RequestLabels) -> Counter {
        let triple = (labels.route.clone(), labels.pool.clone(), labels.backend.clone());
        self.counted.lock().unwrap_or_else(|p| p.into_inner()).insert(triple);
        self.requests.get_or_create(labels).clone()
    }

    /// Removes the request and latency series of routes, pools and backends `config` no longer
    /// has (Envoy drops a removed host's stats too): without it a pool whose backends come and
    /// go (new addresses on each deploy) would grow the exposition and lbd's memory for good.
    /// A request of a replaced snapshot that ends after this counts where no scrape sees it: in
    /// the removed series (a worker still holds it), or in one made again and removed the next
    /// time.
    pub fn retain(&self, config: &Config) {
        let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
        let mut gone = Vec::new();
        counted.retain(|triple| {
            let live = is_live(config, triple);
            if !live {
                gone.push(triple.clone());
            }
            live
        });
        let latency_kept: HashSet<(&Label, &Label)> = counted.iter().map(|(_, pool, b)| (pool, b)).collect();
        for (route, pool, backend) in &gone {
            for class in CLASSES {
                let labels = RequestLabels {
                    route: route.clone(),
                    pool: pool.clone(),
                    backend: backend.clone(),
                    class,
                };
                self.requests.remove(&labels);
            }
            if !latency_kept.contains(&(pool, backend)) {
                self.latency.remove(&LatencyLabels { pool: pool.clone(), backend: backend.clone() });
            }
        }
        self.connect_failed_seen.lock().unwrap_or_else(|p| p.into_inner()).retain(|(pool, backend)| {
            let live = is_live(
                config,
                &(Label::from(""), Label::from(pool.as_str()), Label::from(backend.as_str())),
            );
            if !live {
                for reason in ["refused", "timeout", "tls"] {
                    let labels = vec![
                        ("pool", pool.clone()),
                        ("backend", backend.clone()),
                        ("reason", reason.to_owned()),
                    ];
                    self.connect_failed.remove(&labels);
                }
            }
            live
        });
    }

    pub fn connection_opened(&self, listener: &str) {
        self.connections.get_or_create(&vec![("listener", listener.to_owned())]).inc();
    }

    pub fn connection_closed(&self, listener: &str) {
        self.connections.get_or_create(&vec![("listener", listener.to_owned())]).dec();
    }

    /// The listener's open client connections (`sluice_http_connections`).
    pub fn open_connections(&self, listener: &str) -> i64 {
        self.connections.get(&vec![("listener", listener.to_owned())]).map_or(0, |gauge| gauge.get())
    }

    /// A TLS handshake's end: `ok`, `failed` or `timeout`.
    pub fn handshake(&self, listener: &str, result: &str) {
        self.handshakes
            .get_or_create(&vec![("listener", listener.to_owned()), ("result", result.to_owned())])
            .inc();
    }

    /// A connection closed at once because the listener was at max_connections.
    pub fn refused(&self, listener: &str) {
        self.refused.get_or_create(&vec![("listener", listener.to_owned())]).inc();
    }

    /// A connection closed by the idle watchdog (`reason`: first_byte_timeout, idle_timeout,
    /// evicted_idle).
    pub fn closed_idle(&self, listener: &str, reason: &'static str) {
        self.closed_idle
            .get_or_create(&vec![("listener", listener.to_owned()), ("reason", reason.to_owned())])
            .inc();
    }

    /// A connection cut for how its client behaved (`reason`: rapid_reset).
    pub fn cut(&self, listener: &str, reason: &'static str) {
        self.cut.get_or_create(&vec![("listener", listener.to_owned()), ("reason", reason.to_owned())]).inc();
    }

    /// A request the HTTP parser refused before it reached a route (400, 408, 431).
    pub fn parser_refused(&self, listener: &str, status: u16) {
        self.parser_refused
            .get_or_create(&vec![("listener", listener.to_owned()), ("status", status.to_string())])
            .inc();
    }

    /// A connection closed because its PROXY protocol header was not there, was malformed, or
    /// did not come in time (`reason`: missing, malformed, closed, timeout).
    pub fn proxy_header_refused(&self, listener: &str, reason: &'static str) {
        self.proxy_header_refused
            .get_or_create(&vec![("listener", listener.to_owned()), ("reason", reason.to_owned())])
            .inc();
    }

    /// A QUIC handshake answered with a Retry, so that its client proves its address.
    pub fn quic_retry(&self, listener: &str) {
        self.quic_retries.get_or_create(&vec![("listener", listener.to_owned())]).inc();
    }

    /// A connection closed at once because its client had `max_connections_per_client` open.
    pub fn client_limited(&self, listener: &str) {
        self.client_limited.get_or_create(&vec![("listener", listener.to_owned())]).inc();
    }

    /// A connection to a backend that could not be made (`reason`: `refused` — refused,
    /// unreachable or reset —, `timeout`, or `tls`: the handshake failed).
    pub fn connect_failed(&self, pool: &str, backend: &str, reason: &'static str) {
        self.connect_failed_series(pool, backend, reason).inc();
    }

    fn connect_failed_series(&self, pool: &str, backend: &str, reason: &str) -> Counter {
        self.connect_failed_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((pool.to_owned(), backend.to_owned()));
        let labels =
            vec![("pool", pool.to_owned()), ("backend", backend.to_owned()), ("reason", reason.to_owned())];
        self.connect_failed.get_or_create(&labels).clone()
    }

    /// Adds these metrics to a scrape's registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "Requests answered, by route, pool, backend and status class",
            self.requests.clone(),
        );
        registry.register(
            "http_upstream_seconds",
            "Upstream response time (until headers)",
            self.latency.clone(),
        );
        registry.register("http_connections", "Open client connections", self.connections.clone());
        registry.register("tls_handshakes", "TLS handshakes by result", self.handshakes.clone());
        registry.register(
            "http_refused_connections",
            "Connections closed at max_connections",
            self.refused.clone(),
        );
        registry.register(
            "http_idle_closed_connections",
            "Connections closed while idle, by reason",
            self.closed_idle.clone(),
        );
        registry.register(
            "http_cut_connections",
            "Connections cut for how their clients behaved, by reason",
            self.cut.clone(),
        );
        registry.register(
            "http_parser_refused",
            "Requests refused by the HTTP parser, by status",
            self.parser_refused.clone(),
        );
        registry.register(
            "quic_retries",
            "QUIC handshakes answered with a Retry, for their clients to prove their addresses",
            self.quic_retries.clone(),
        );
        registry.register(
            "http_client_limited_connections",
            "Connections closed because their client had max_connections_per_client open",
            self.client_limited.clone(),
        );
        registry.register(
            "http_proxy_protocol_refused",
            "Connections closed for their PROXY protocol header (missing, malformed, late), by reason",
            self.proxy_header_refused.clone(),
        );
        registry.register(
            "http_upstream_connect_failures",
            "Connections to backends that could not be made, by pool, backend and reason (refused, timeout, tls)",
            self.connect_failed.clone(),
        );
        let dropped = Counter::<u64>::default();
        dropped.inc_by(log_sink::dropped());
        registry.register(
            "access_log_dropped_lines",
            "Access-log lines dropped because their writer fell behind",
            dropped,
        );
    }
}

/// Whether `config` still has a request series' route, pool and backend. An empty label
/// (the proxy answered itself) and `cache` (a cache hit) name no backend; a cache fill's and a
/// shadow copy's routes are their route's name with `:fill` or `:shadow`.
fn is_live(config: &Config, (route, pool, backend): &Triple) -> bool {
    let route = route.strip_suffix(":fill").or_else(|| route.strip_suffix(":shadow")).unwrap_or(route);
    let route_live = route.is_empty() || config.routes.iter().any(|r| r.name == route);
    let pool = if pool.is_empty() { None } else { Some(config.pools.get(&**pool)) };
    let backend_live = match (pool, &**backend) {
        (Some(None), _) => return false,
        (_, "" | "cache") => true,
        (None, _) => false,
        (Some(Some(pool)), backend) => backend.parse::<SocketAddr>().is_ok_and(|address| {
            pool.port == address.port() && pool.backends.iter().any(|b| b.addr == address.ip())
        }),
    };
    route_live && backend_live
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_carried_over_add_up() {
        let old = ProxyMetrics::default();
        let (route, pool, backend) = (Label::from("site"), Label::from("web"), Label::from("10.0.0.1:80"));
        for _ in 0..3 {
            old.request(route.clone(), pool.clone(), backend.clone(), 200, Some(0.001));
        }
        old.request(route.clone(), pool.clone(), backend.clone(), 503, None);
        old.handshake("https", "ok");
        old.quic_retry("https");
        old.connect_failed("web", "10.0.0.1:80", "tls");
        let new = ProxyMetrics::default();
        new.connect_failed("web", "10.0.0.1:80", "tls");
        new.request(route.clone(), pool.clone(), backend.clone(), 200, None);
        new.absorb(&old.text());
        let text = new.text();
        let requests: Vec<_> = text.lines().filter(|l| l.starts_with("http_requests_total")).collect();
        assert!(requests.iter().any(|l| l.contains("class=\"2xx\"") && l.ends_with(" 4")), "{text}");
        assert!(requests.iter().any(|l| l.contains("class=\"5xx\"") && l.ends_with(" 1")), "{text}");
        assert!(text.lines().any(|l| l.starts_with("tls_handshakes_total") && l.ends_with(" 1")), "{text}");
        assert!(text.contains("quic_retries_total{listener=\"https\"} 1"), "{text}");
        let failed =
            "http_upstream_connect_failures_total{pool=\"web\",backend=\"10.0.0.1:80\",reason=\"tls\"} 2";
        assert!(text.contains(failed), "{text}");
    }

    /// The per-thread series: labels of the same text made apart (a rebuilt config) count into
    /// the same series, and so does every request after the thread's map starts again.
    #[test]
    fn requests_count_into_one_series_whatever_the_labels_allocation() {
        let metrics = ProxyMetrics::default();
        let labels = || (Label::from("site"), Label::from("web"), Label::from("10.0.0.1:80"));
        for round in 0..SERIES_KEPT + 10 {
            // Fresh labels each time: past SERIES_KEPT series the map is cleared.
            let (route, pool, backend) = labels();
            metrics.request(route, pool, backend, 200, Some(0.002));
            if round == 0 {
                let (route, pool, backend) = labels();
                metrics.request(route, pool, backend, 404, None);
            }
        }
        let text = metrics.text();
        let total = SERIES_KEPT + 10;
        let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).unwrap_or("").to_owned();
        assert!(
            line("http_requests_total{route=\"site\",pool=\"web\",backend=\"10.0.0.1:80\",class=\"2xx\"}")
                .ends_with(&format!(" {total}")),
            "{text}"
        );
        assert!(
            line("http_requests_total{route=\"site\",pool=\"web\",backend=\"10.0.0.1:80\",class=\"4xx\"}")
                .ends_with(" 1"),
            "{text}"
        );
        assert!(
            line("http_upstream_seconds_count{pool=\"web\",backend=\"10.0.0.1:80\"}")
                .ends_with(&format!(" {total}")),
            "{text}"
        );
    }

    /// Series of a backend, a pool or a route gone from the config leave the exposition; the
    /// rest stay, counts and all.
    #[test]
    fn series_of_what_the_config_dropped_are_removed() {
        let config = |backends: &str, routes: &str| {
            let text = format!(
                "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"web\"\nport = 8080\nbackends = [{backends}]\n\
                 [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n{routes}"
            );
            Config::parse(std::path::Path::new("t.toml"), &text).unwrap()
        };
        let route = |name: &str| {
            format!(
                "[[route]]\nname = \"{name}\"\nlistener = \"l\"\npool = \"web\"\nhost = \"{name}.test\"\n"
            )
        };
        let metrics = ProxyMetrics::default();
        let count = |route: &str, pool: &str, backend: &str, seconds: Option<f64>| {
            metrics.request(Label::from(route), Label::from(pool), Label::from(backend), 200, seconds);
        };
        for backend in ["10.0.0.1:8080", "10.0.0.2:8080"] {
            count("site", "web", backend, Some(0.001));
            count("site:shadow", "web", backend, None);
            count("gone", "web", backend, None);
        }
        count("site", "web", "cache", None);
        count("site", "", "", None);
        count("site", "old-pool", "10.0.0.1:8080", Some(0.001));
        for backend in ["10.0.0.1:8080", "10.0.0.2:8080"] {
            metrics.connect_failed("web", backend, "refused");
        }
        let both = "{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\" }";
        // Only the pool no config has goes: 9 series, 8 left.
        metrics.retain(&config(both, &(route("site") + &route("gone"))));
        assert_eq!(metrics.text().lines().filter(|l| l.starts_with("http_requests_total")).count(), 8);
        // 10.0.0.2 and route `gone` dropped.
        metrics.retain(&config("{ address = \"10.0.0.1\" }", &route("site")));
        let text = metrics.text();
        let mut left: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("http_requests_total"))
            .map(|l| l.trim_start_matches("http_requests_total").to_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "{route=\"site\",pool=\"\",backend=\"\",class=\"2xx\"} 1",
                "{route=\"site\",pool=\"web\",backend=\"10.0.0.1:8080\",class=\"2xx\"} 1",
                "{route=\"site\",pool=\"web\",backend=\"cache\",class=\"2xx\"} 1",
                "{route=\"site:shadow\",pool=\"web\",backend=\"10.0.0.1:8080\",class=\"2xx\"} 1",
            ],
            "{text}"
        );
        let latency: Vec<_> = text.lines().filter(|l| l.starts_with("http_upstream_seconds_count")).collect();
        assert_eq!(
            latency,
            ["http_upstream_seconds_count{pool=\"web\",backend=\"10.0.0.1:8080\"} 1"],
            "{text}"
        );
        let failed: Vec<_> =
            text.lines().filter(|l| l.starts_with("http_upstream_connect_failures_total")).collect();
        assert_eq!(
            failed,
            [
                "http_upstream_connect_failures_total{pool=\"web\",backend=\"10.0.0.1:8080\",reason=\"refused\"} 1"
            ],
            "{text}"
        );
        // A request of the old snapshot that ends now is counted, and removed the next time.
        count("gone", "web", "10.0.0.2:8080", None);
        assert!(metrics.text().contains("route=\"gone\""));
        metrics.retain(&config("{ address = \"10.0.0.1\" }", &route("site")));
        assert!(!metrics.text().contains("route=\"gone\""));
    }
}
