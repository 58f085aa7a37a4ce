//! `[dataplane]`: interface, pin directory, next hop, encapsulation sources, VIP capacity, the
//! per-prefix SYN limit.
use super::*;

/// The `[dataplane]` section checked (defaults when there is none: an L7-only host).
pub(in crate::config) struct Dataplane {
    pub(in crate::config) present: bool,
    pub(in crate::config) interface: String,
    pub(in crate::config) interface_line: usize,
    pub(in crate::config) xdp_mode: XdpModeSetting,
    pub(in crate::config) pin_dir: PathBuf,
    pub(in crate::config) next_hop_mac: NextHop,
    pub(in crate::config) encap_source_v4: Ipv4Addr,
    pub(in crate::config) encap_source_v6: Ipv6Addr,
    pub(in crate::config) max_vips: u32,
    pub(in crate::config) flow_grace: Duration,
    pub(in crate::config) redirect_interface: Option<String>,
    pub(in crate::config) syn_limit: Option<SynLimit>,
}

/// `[dataplane]` checked in steps (what needs it, the pin directory, the next hop, the VIP
/// capacity, the flow grace, the SYN limit), each value given its default.
pub(in crate::config) fn check(raw: &mut RawConfig, errors: &mut Errors) -> Dataplane {
    let has_dataplane = raw.dataplane.is_some();
    if !has_dataplane {
        needed(raw, errors);
    }
    let dp = raw.dataplane.take().unwrap_or(RawDataplane {
        interface: Spanned::new(0..0, String::new()),
        xdp_mode: XdpModeSetting::default(),
        pin_dir: None,
        next_hop_mac: None,
        encap_source_v4: None,
        encap_source_v6: None,
        max_vips: None,
        flow_grace_seconds: None,
        redirect_interface: None,
        syn_rate_per_prefix: None,
        syn_burst: None,
    });
    let interface = dp.interface;
    if has_dataplane && (interface.get_ref().is_empty() || interface.get_ref().len() >= libc::IFNAMSIZ) {
        errors.at(interface.span(), format!("interface name must be 1 to {} bytes", libc::IFNAMSIZ - 1));
    }
    // In the file's order, so the errors are reported in it.
    let pin_dir = pin_dir(dp.pin_dir, errors);
    let next_hop_mac = next_hop(dp.next_hop_mac, errors);
    let encap_source_v4 = dp
        .encap_source_v4
        .and_then(|a| errors.parse(&a, "an IPv4 address", |s| s.parse().ok()))
        .unwrap_or(Ipv4Addr::new(172, 16, 0, 0));
    let encap_source_v6 = dp
        .encap_source_v6
        .and_then(|a| errors.parse(&a, "an IPv6 address", |s| s.parse().ok()))
        .unwrap_or(Ipv6Addr::new(0xfd00, 0x5e, 0xffff, 0, 0, 0, 0, 0));
    Dataplane {
        present: has_dataplane,
        interface_line: errors.line_of(interface.span()),
        interface: interface.into_inner(),
        xdp_mode: dp.xdp_mode,
        pin_dir,
        next_hop_mac,
        encap_source_v4,
        encap_source_v6,
        max_vips: max_vips(dp.max_vips, errors),
        flow_grace: flow_grace(dp.flow_grace_seconds, errors),
        redirect_interface: dp.redirect_interface.map(Spanned::into_inner),
        syn_limit: syn_limit(dp.syn_rate_per_prefix, dp.syn_burst, errors),
    }
}

/// With no `[dataplane]`: VIPs and `[deny]` are XDP's, so they are errors (an L7-only host has
/// listeners and routes only).
fn needed(raw: &RawConfig, errors: &mut Errors) {
    if let Some(vip) = raw.vip.first() {
        errors.at(vip.name.span(), "VIPs are balanced in XDP: they need a [dataplane] section");
    }
    if !raw.deny.prefixes.is_empty() {
        errors.at(0..0, "[deny] drops sources in XDP: it needs a [dataplane] section");
    }
}

/// Where the maps are pinned: under bpffs (lb_common::PIN_DIR unless said).
fn pin_dir(raw: Option<Spanned<PathBuf>>, errors: &mut Errors) -> PathBuf {
    match raw {
        Some(dir) if !dir.get_ref().starts_with("/sys/fs/bpf") => {
            errors.at(dir.span(), "pin_dir must be under /sys/fs/bpf (bpffs)");
            PathBuf::new()
        }
        Some(dir) => dir.into_inner(),
        None => PathBuf::from(lb_common::PIN_DIR),
    }
}

/// Where encapsulated packets go at L2: a MAC, "auto" (the default gateway's, resolved at
/// start and reload), or unset (L4 VIP traffic is passed up to the stack).
fn next_hop(raw: Option<Spanned<String>>, errors: &mut Errors) -> NextHop {
    match raw {
        None => NextHop::Unset,
        Some(m) if m.get_ref() == "auto" => NextHop::Auto,
        Some(m) => errors
            .parse(&m, "\"auto\" or a MAC address like 02:00:00:00:00:01", parse_mac)
            .map_or(NextHop::Unset, NextHop::Mac),
    }
}

/// How many VIPs the maps are sized for: 1 to lb_common::vip::MAX_VIPS, 16 unless said.
fn max_vips(raw: Option<Spanned<u32>>, errors: &mut Errors) -> u32 {
    match raw {
        Some(n) if *n.get_ref() == 0 || *n.get_ref() > lb_common::vip::MAX_VIPS => {
            errors.at(n.span(), format!("max_vips must be 1 to {}", lb_common::vip::MAX_VIPS));
            lb_common::vip::MAX_VIPS // already reported: no second error about the VIP count
        }
        Some(n) => n.into_inner(),
        None => 16,
    }
}

/// After a pool change, how long established flows missing the connection table keep their
/// previous backend: up to a day, 60 s unless said.
fn flow_grace(raw: Option<u64>, errors: &mut Errors) -> Duration {
    let seconds = match raw {
        Some(n) if n > MAX_FLOW_GRACE_SECONDS => {
            errors.at(0..0, format!("flow_grace_seconds must be at most {MAX_FLOW_GRACE_SECONDS} (one day)"));
            60
        }
        n => n.unwrap_or(60),
    };
    Duration::from_secs(seconds)
}

/// SYNs per second per source /24 or /64, and how many at once (default: one second's); a
/// burst alone is an error.
fn syn_limit(
    rate: Option<Spanned<u32>>,
    burst: Option<Spanned<u32>>,
    errors: &mut Errors,
) -> Option<SynLimit> {
    let Some(rate) = rate else {
        if let Some(b) = &burst {
            errors.at(b.span(), "syn_burst needs syn_rate_per_prefix");
        }
        return None;
    };
    if *rate.get_ref() == 0 || *rate.get_ref() > MAX_SYN_RATE {
        errors.at(
            rate.span(),
            format!("syn_rate_per_prefix must be 1 to {MAX_SYN_RATE} (leave it out for no limit)"),
        );
    }
    let burst = match &burst {
        Some(b) if *b.get_ref() == 0 || *b.get_ref() > MAX_SYN_RATE => {
            errors.at(b.span(), format!("syn_burst must be 1 to {MAX_SYN_RATE}"));
            1
        }
        Some(b) => *b.get_ref(),
        None => *rate.get_ref(),
    };
    Some(SynLimit { rate: (*rate.get_ref()).clamp(1, MAX_SYN_RATE), burst })
}
