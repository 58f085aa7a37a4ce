//! lbctl's tables: what lbd answered, laid out for a terminal (`-o json` prints the answer as
//! it came instead).
use lb_userspace::admin::views;
use serde_json::Value;

/// What a command changed, one line each.
pub fn changes(value: &Value) {
    let changes = value["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        println!("no change");
    }
    for change in changes {
        println!("{}", change.as_str().unwrap_or_default());
    }
}

/// A pool and its backends.
pub fn pool(pool: &views::Pool) {
    let open = if pool.failing_open { "  (FAILING OPEN: every backend down)" } else { "" };
    println!("pool {}{open}", pool.name);
    println!("  {:<40} {:>7} {:>6} {:>8} {:>10}", "backend", "weight", "drain", "health", "effective");
    for b in &pool.backends {
        let health = match (b.healthy, b.ejected) {
            (_, true) => "EJECTED",
            (true, _) => "up",
            _ => "DOWN",
        };
        let mut notes = b.slow_start_percent.map(|p| format!("  (slow start: {p}%)")).unwrap_or_default();
        if b.backup {
            notes += "  (backup)";
        }
        println!(
            "  {:<40} {:>7} {:>6} {:>8} {:>10}{notes}",
            b.address.to_string(),
            b.weight,
            if b.drain { "yes" } else { "no" },
            health,
            b.effective_weight
        );
    }
    if let Some(dns) = &pool.dns {
        println!("  backends from DNS: {dns}");
    }
    if let Some(proxy) = &pool.proxy {
        let mut line = format!(
            "  l7: port {}, {}, {}, connect {} ms",
            proxy.port, proxy.protocol, proxy.balance, proxy.connect_timeout_ms
        );
        if let Some(limit) = proxy.max_requests_per_backend {
            line += &format!(", {limit} in flight per backend (+{} waiting)", proxy.max_pending_requests);
        }
        if let Some(version) = &proxy.proxy_protocol {
            line += &format!(", PROXY protocol {version}");
        }
        if let Some(ms) = proxy.slow_start_ms {
            line += &format!(", slow start {ms} ms");
        }
        line += &format!(", keep-alive {} ms", proxy.keepalive_timeout_ms);
        if let Some(max) = proxy.max_requests_per_connection {
            line += &format!(" or {max} requests");
        }
        if let Some(streams) = proxy.http2_max_concurrent_streams {
            line += &format!(", {streams} streams a connection");
        }
        if let Some(pings) = &proxy.http2_keepalive {
            line += &format!(", {pings}");
        }
        if let Some(outlier) = &proxy.outlier {
            line += &format!(", outlier ejection after {outlier}");
        }
        if let Some(cookie) = &proxy.sticky_cookie {
            line += &format!(", sticky by cookie {cookie}");
        }
        println!("{line}");
        if let Some(tls) = &proxy.tls {
            println!("  tls: {tls}");
        }
    }
}

fn traffic_row(name: &str, t: &views::Traffic, rate: Option<(&views::Traffic, f64)>) {
    match rate {
        None => println!(
            "{name:<30} {:>12} {:>14} {:>10} {:>10} {:>10}",
            t.packets, t.bytes, t.new_flows, t.lru_hits, t.lru_misses
        ),
        Some((before, secs)) => {
            // Counters restart with the maps: a smaller value is a new start, not a negative rate.
            let per_second = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
            let pps = per_second(t.packets, before.packets);
            let bps = 8.0 * per_second(t.bytes, before.bytes);
            let cps = per_second(t.new_flows, before.new_flows);
            println!("{name:<30} {:>12} {:>14} {pps:>10.0} {bps:>12.0} {cps:>8.0}", t.packets, t.bytes);
        }
    }
}

/// The fast path's counters; with `previous` (a reading and the seconds since), rates.
pub fn stats(stats: &views::Stats, previous: Option<(&views::Stats, f64)>, vip: bool, backend: bool) {
    let all = !vip && !backend;
    if all {
        println!("{:<30} {:>12} {:>14}", "counter", "packets", "bytes");
        for (i, c) in stats.counters.iter().enumerate() {
            if i < 4 || c.packets != 0 {
                println!("{:<30} {:>12} {:>14}", c.name, c.packets, c.bytes);
            }
        }
        println!();
    }
    let header = |what: &str| match previous {
        None => println!(
            "{what:<30} {:>12} {:>14} {:>10} {:>10} {:>10}",
            "packets", "bytes", "new_flows", "lru_hits", "lru_miss"
        ),
        Some(_) => {
            println!("{what:<30} {:>12} {:>14} {:>10} {:>12} {:>8}", "packets", "bytes", "pps", "bps", "cps")
        }
    };
    if all || vip {
        header("vip");
        for v in &stats.vips {
            let port = if v.port == 0 { "*".to_owned() } else { v.port.to_string() };
            let name = format!("{}:{port}/{}", v.address, v.protocol);
            // The same VIP in the previous reading: address, port and protocol.
            let rate = previous.map(|(p, secs)| {
                let before = p
                    .vips
                    .iter()
                    .find(|x| x.address == v.address && x.port == v.port && x.protocol == v.protocol)
                    .map_or(&v.traffic, |x| &x.traffic);
                (before, secs)
            });
            traffic_row(&name, &v.traffic, rate);
        }
        println!();
    }
    if all || backend {
        header("backend");
        for b in &stats.backends {
            let rate = previous.map(|(p, secs)| {
                let before =
                    p.backends.iter().find(|x| x.address == b.address).map_or(&b.traffic, |x| &x.traffic);
                (before, secs)
            });
            traffic_row(&b.address.to_string(), &b.traffic, rate);
        }
    }
}

/// lbd's status, one field a line.
pub fn status(s: &views::Status) {
    let reload = match &s.last_reload {
        None => "none yet".to_owned(),
        Some(r) => {
            format!("{} (unix time {})", if r.applied { "applied" } else { "refused" }, r.unix_seconds)
        }
    };
    let interface = if s.interface.is_empty() { "- (L7 only)" } else { &s.interface };
    println!("{:<16} {interface}", "interface");
    println!("{:<16} {}", "pin_dir", s.pin_dir.display());
    println!("{:<16} {}", "config", s.config.display());
    println!("{:<16} {}", "uptime_seconds", s.uptime_seconds);
    println!("{:<16} {}", "vips", s.vips);
    println!("{:<16} {}", "pools", s.pools);
    println!("{:<16} {}", "failing_open", s.failing_open.join(", "));
    println!("{:<16} {reload}", "last_reload");
    if let Some(c) = &s.cluster {
        let state = match &c.error {
            None => format!("revision {}", c.revision),
            Some(err) => format!("UNREACHABLE, serving revision {} ({err})", c.revision),
        };
        println!("{:<16} {} under {}: {state}", "etcd", c.endpoints.join(", "), c.prefix);
    }
    if let Some(bgp) = &s.bgp {
        let announced: Vec<String> = bgp.announced.iter().map(ToString::to_string).collect();
        let announced = if announced.is_empty() { "nothing".to_owned() } else { announced.join(", ") };
        println!("{:<16} {announced}{}", "bgp_announced", if bgp.drained { " (node drained)" } else { "" });
        if let Some(err) = &bgp.error {
            println!("{:<16} {err}", "bgp_error");
        }
    }
}

/// L7 listeners with their protocol, limits, routes and open connections.
pub fn listeners(listeners: &[views::Listener]) {
    println!(
        "{:<16} {:<46} {:<22} {:>6} {:>12} {:>10}  limits",
        "name", "address", "protocol", "routes", "connections", "max"
    );
    for l in listeners {
        let mut protocol = l.protocol.clone();
        if l.proxy_protocol {
            protocol += " +proxy";
        }
        let mut limits = Vec::new();
        if let Some(per_client) = l.max_connections_per_client {
            limits.push(format!("{per_client} per client (IPv6 /{})", l.client_ipv6_prefix));
        }
        if let Some(header) = &l.client_address {
            limits.push(format!("client from {header}"));
        }
        if !l.error_pages.is_empty() {
            let statuses: Vec<String> = l.error_pages.iter().map(u16::to_string).collect();
            limits.push(format!("error pages {}", statuses.join(" ")));
        }
        let limits = if limits.is_empty() { "-".to_owned() } else { limits.join(", ") };
        println!(
            "{:<16} {:<46} {protocol:<22} {:>6} {:>12} {:>10}  {limits}",
            l.name,
            l.address.to_string(),
            l.routes,
            l.open_connections,
            l.max_connections
        );
    }
}

/// The certificates the TLS listeners serve: each one's least name, how many it has, when it
/// expires, its OCSP staple, and whether lbd ordered it (ACME) or read it from its files.
pub fn certificates(listeners: &[views::Listener], now: u64) {
    if listeners.iter().all(|l| l.certificates.is_empty()) {
        return;
    }
    println!();
    println!("{:<16} {:<32} {:>5} {:<30} {:<28} from", "listener", "certificate", "names", "expires", "ocsp");
    let date = |at: u64| {
        jiff::Timestamp::from_second(at as i64)
            .map_or_else(|_| at.to_string(), |t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
    };
    for l in listeners {
        for c in &l.certificates {
            let expires = match c.not_after {
                None => "-".to_owned(),
                Some(at) if at <= now => format!("{} (EXPIRED)", date(at)),
                Some(at) => format!("{} ({}d)", date(at), (at - now) / 86400),
            };
            let ocsp = match (c.stapled, c.stapled_until) {
                (false, _) => "-".to_owned(),
                (true, None) => "stapled".to_owned(),
                (true, Some(until)) => format!("stapled to {}", date(until)),
            };
            let from = if c.acme { "acme" } else { "files" };
            println!("{:<16} {:<32} {:>5} {expires:<30} {ocsp:<28} {from}", l.name, c.name, c.names);
        }
    }
}

/// L7 routes in the order they are tried, with their pool, edits, gates and split.
pub fn routes(routes: &[views::Route]) {
    println!(
        "{:<20} {:<12} {:<24} {:<16} {:<16} {:<20} {:<24} split",
        "name", "listener", "host", "path", "pool", "edits", "gates"
    );
    for r in routes {
        let mut split: Vec<String> = r.split.iter().map(|(p, share)| format!("{p} {share}%")).collect();
        if r.sticky && !split.is_empty() {
            split.push("(sticky)".into());
        }
        let split = if split.is_empty() { "-".to_owned() } else { split.join(", ") };
        let mut edits = Vec::new();
        if let Some(with) = &r.rewrite_prefix {
            edits.push(format!("path>{with}"));
        }
        if r.header_edits > 0 {
            edits.push(format!("{} fields", r.header_edits));
        }
        if r.compress {
            edits.push("gzip".to_owned());
        }
        if r.intercept_errors {
            edits.push("error pages".to_owned());
        }
        let edits = if edits.is_empty() { "-".to_owned() } else { edits.join(", ") };
        let gates = if r.gates.is_empty() { "-".to_owned() } else { r.gates.join(", ") };
        // A route that answers by itself shows its answer where a pool would be.
        let pool = r.answer.as_deref().unwrap_or(&r.pool);
        println!(
            "{:<20} {:<12} {:<24} {:<16} {pool:<16} {edits:<20} {gates:<24} {split}",
            r.name, r.listener, r.host, r.path
        );
        if let Some(retries) = &r.retries {
            println!("  retries: {retries}");
        }
        if let Some(cache) = &r.cache {
            println!("  cache: {cache}");
        }
        if !r.clients.is_empty() {
            println!("  clients: {}", r.clients.join(", "));
        }
        if let Some(fault) = &r.fault {
            println!("  fault: {fault}");
        }
    }
}

/// VIPs with their port, protocol, mode and pool.
pub fn vips(vips: &[views::Vip]) {
    println!("{:<16} {:<40} {:>6} {:<5} {:<11} pool", "name", "address", "port", "proto", "mode");
    for vip in vips {
        let port = if vip.port == 0 { "*".into() } else { vip.port.to_string() };
        let mode = if vip.syn_cookies { format!("{}+cookies", vip.mode) } else { vip.mode.clone() };
        println!(
            "{:<16} {:<40} {:>6} {:<5} {:<11} {}",
            vip.name,
            vip.address.to_string(),
            port,
            vip.protocol,
            mode,
            vip.pool
        );
    }
}

/// What a change would move, per VIP.
pub fn plan(plans: &[views::VipPlan]) {
    println!("{:<40} {:>14} {:>11} {:>16}", "vip", "buckets moved", "live flows", "live flows moved");
    for p in plans {
        println!(
            "{:<40} {:>13.2}% {:>11} {:>16}",
            p.vip, p.buckets_moved_percent, p.live_flows, p.live_flows_moved
        );
    }
}

/// A decapsulation program's counters (`name`, `packets`, `bytes` rows).
pub fn decap(rows: &[Value]) {
    println!("{:<14} {:>14} {:>16}", "counter", "packets", "bytes");
    for r in rows {
        println!(
            "{:<14} {:>14} {:>16}",
            r["name"].as_str().unwrap_or_default(),
            r["packets"].as_u64().unwrap_or(0),
            r["bytes"].as_u64().unwrap_or(0)
        );
    }
}
