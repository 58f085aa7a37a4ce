//! `[[vip]]` and `[deny]`: what XDP balances and what it drops first.
use super::*;

/// The VIPs, each checked in steps (its address and key, its pool, its SYN cookies), within
/// `max_vips`.
pub(in crate::config) fn check(
    raw_vips: Vec<RawVip>,
    pools: &BTreeMap<String, Pool>,
    max_vips: u32,
    errors: &mut Errors,
) -> Vec<Vip> {
    let mut vips = Vec::new();
    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    for raw_vip in raw_vips {
        let name = raw_vip.name.get_ref().clone();
        if !names.insert(name.clone()) {
            errors.at(raw_vip.name.span(), format!("VIP `{name}` is defined twice"));
        }
        errors.name(&raw_vip.name, "VIP");
        let Some(addr) = address(&raw_vip, &name, errors) else {
            continue;
        };
        let port = raw_vip.port.unwrap_or(0);
        if !keys.insert((addr, port, raw_vip.protocol)) {
            errors.at(raw_vip.address.span(), format!("VIP `{name}`: {addr} port {port} is already a VIP"));
        }
        pool(&raw_vip, addr, &name, pools, errors);
        let syn_cookies = syn_cookies(&raw_vip, &name, errors);
        vips.push(Vip {
            name,
            addr,
            port,
            protocol: raw_vip.protocol,
            pool: raw_vip.pool.into_inner(),
            mode: raw_vip.mode,
            drop_fragments: raw_vip.drop_fragments,
            syn_cookies,
        });
    }
    if vips.len() > max_vips as usize {
        errors.at(0..0, format!("{} VIPs configured but max_vips is {max_vips}", vips.len()));
    }
    vips
}

/// A VIP's address: a host's (not a network's, broadcast or unspecified). None if it does not
/// parse (the VIP is then left out).
fn address(raw_vip: &RawVip, name: &str, errors: &mut Errors) -> Option<IpAddr> {
    let addr = errors.parse(&raw_vip.address, "an IP address", |s| s.parse::<IpAddr>().ok())?;
    if let Some(why) = not_a_host(addr) {
        errors.at(raw_vip.address.span(), format!("VIP `{}`: {addr}: {why}", short(name)));
    }
    Some(addr)
}

/// A VIP's pool: defined, and for an IPv6 L4 VIP all IPv6 (XDP encapsulates in the VIP's
/// family).
fn pool(raw_vip: &RawVip, addr: IpAddr, name: &str, pools: &BTreeMap<String, Pool>, errors: &mut Errors) {
    let pool_name = raw_vip.pool.get_ref();
    match pools.get(pool_name) {
        None => errors
            .at(raw_vip.pool.span(), format!("VIP `{name}` uses pool `{pool_name}`, which is not defined")),
        Some(pool) if addr.is_ipv6() && raw_vip.mode == VipMode::L4 => {
            if let Some(b) = pool.backends.iter().find(|b| b.addr.is_ipv4()) {
                errors.at(
                    raw_vip.pool.span(),
                    format!("IPv6 VIP `{name}` cannot reach IPv4 backend {} of pool `{pool_name}`", b.addr),
                );
            }
        }
        Some(_) => {}
    }
}

/// Whether XDP answers the VIP's SYNs with cookies: only for an L7 TCP VIP, where lbd itself
/// completes the handshake.
fn syn_cookies(raw_vip: &RawVip, name: &str, errors: &mut Errors) -> bool {
    let Some(on) = &raw_vip.syn_cookies else { return false };
    if *on.get_ref() && (raw_vip.mode != VipMode::L7 || raw_vip.protocol != Protocol::Tcp) {
        errors.at(
            on.span(),
            format!(
                "VIP `{name}`: syn_cookies is for L7 TCP VIPs (an L4 VIP's backends answer its SYNs: \
                 limit them with [dataplane] syn_rate_per_prefix)"
            ),
        );
    }
    *on.get_ref()
}

pub(in crate::config) fn deny(raw: RawDeny, errors: &mut Errors) -> Vec<IpNet> {
    let mut deny = Vec::new();
    for prefix in raw.prefixes {
        let parsed = errors.parse(&prefix, "a prefix like 203.0.113.0/24", |s| {
            s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        });
        if let Some(net) = parsed {
            if net.trunc() != net {
                errors.at(prefix.span(), format!("`{net}` has host bits set; did you mean {}?", net.trunc()));
            }
            deny.push(net);
        }
    }

    deny
}
