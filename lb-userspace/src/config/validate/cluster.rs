//! `[bgp]`, `[cluster]` and `[resolver]`: how a host announces its VIPs and where its pools'
//! backends come from (etcd, DNS).
use super::*;

pub(in crate::config) fn check(
    raw_bgp: Option<RawBgp>,
    raw_cluster: Option<RawCluster>,
    has_dataplane: bool,
    errors: &mut Errors,
) -> (Option<Bgp>, Option<Cluster>) {
    let bgp = raw_bgp.map(|b| {
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
    let cluster = raw_cluster.map(|c| {
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
        Cluster { endpoints, prefix, vips: c.vips }
    });
    (bgp, cluster)
}

/// `[resolver]`: 1 to 8 DNS servers, each `IP` or `IP:PORT` (port 53 when not given).
pub(in crate::config) fn resolver(raw: RawResolver, errors: &mut Errors) -> Resolver {
    let at = raw.nameservers.span();
    let nameservers: Vec<std::net::SocketAddr> = raw
        .nameservers
        .into_inner()
        .iter()
        .filter_map(|server| {
            let parsed = server
                .parse::<std::net::SocketAddr>()
                .ok()
                .or_else(|| server.parse::<IpAddr>().ok().map(|ip| std::net::SocketAddr::new(ip, 53)));
            if parsed.is_none() {
                errors.at(at.clone(), format!("resolver: `{server}` is not IP or IP:PORT"));
            }
            parsed
        })
        .collect();
    if !(1..=8).contains(&nameservers.len()) {
        errors.at(at, "resolver: nameservers must name 1 to 8 servers");
    }
    Resolver { nameservers }
}
