//! The backends' decapsulation: IPIP / IPv6-in-IPv6 / IPv4-in-IPv6 in, the inner packet up.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::stats::DecapStat;
use lb_ebpf::{
    parse::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPV6_HLEN},
    wire::load,
};

use crate::maps::{DECAP_STATS, bump};

#[inline(always)]
fn count(stat: DecapStat, bytes: u64) {
    bump(&DECAP_STATS, stat as u32, bytes);
}

/// Which outer header this is and how long: (outer length, inner ethertype).
#[inline(always)]
fn outer(data: usize, end: usize) -> Option<(usize, u16)> {
    let eth: [u8; ETH_HLEN] = load(data, end, 0)?;
    let inner_type = |proto: u8| match proto {
        IPPROTO_IPIP => Some(ETH_P_IP),
        IPPROTO_IPV6 => Some(ETH_P_IPV6),
        _ => None,
    };
    match u16::from_be_bytes([eth[12], eth[13]]) {
        ETH_P_IP => {
            let ip: [u8; 20] = load(data, end, ETH_HLEN)?;
            // Fragmented outer packets are left to the stack.
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            Some((((ip[0] & 0x0f) as usize) * 4, inner_type(ip[9])?))
        }
        ETH_P_IPV6 => {
            let ip: [u8; 8] = load(data, end, ETH_HLEN)?;
            Some((IPV6_HLEN, inner_type(ip[6])?))
        }
        _ => None,
    }
}

#[inline(always)]
pub fn try_decap(ctx: &XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let bytes = (end - data) as u64;
    let Some((outer_len, ethertype)) = outer(data, end) else {
        count(DecapStat::Passed, bytes);
        return xdp_action::XDP_PASS;
    };
    let Some(eth) = load::<[u8; 12]>(data, end, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: ctx is this program's context.
    if outer_len < 20 || unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        count(DecapStat::Passed, bytes);
        return xdp_action::XDP_PASS;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN > end {
        return xdp_action::XDP_DROP;
    }
    let mut header = [0u8; ETH_HLEN];
    header[..12].copy_from_slice(&eth);
    header[12..].copy_from_slice(&ethertype.to_be_bytes());
    // SAFETY: inside the packet, checked just above.
    unsafe { core::ptr::write_unaligned(data as *mut [u8; ETH_HLEN], header) };
    count(DecapStat::Decapsulated, bytes);
    xdp_action::XDP_PASS
}
