//! Encapsulation toward a backend: IPv4-in-IPv4, IPv6-in-IPv6, IPv4-in-IPv6; outer source from
//! the flow hash; Ethernet to the next hop; XDP_TX, or redirect when configured.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::{
    addr::{Addr, is_v4},
    config::DataplaneConfig,
    stats::Stat,
};
use lb_ebpf::{
    csum,
    parse::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_HLEN, IPV6_HLEN, Packet},
};

use crate::balance::Outcome;

/// TTL / hop limit of the outer header.
const OUTER_TTL: u8 = 64;

/// Writes `value` at `data + off` if it fits before `data_end`.
#[inline(always)]
fn store<T>(data: usize, data_end: usize, off: usize, value: T) -> Result<(), Stat> {
    let at = data + off;
    if at + core::mem::size_of::<T>() > data_end {
        return Err(Stat::DropInternal);
    }
    // SAFETY: the write lies inside the packet, checked just above.
    unsafe { core::ptr::write_unaligned(at as *mut T, value) };
    Ok(())
}

/// Replaces the frame's L2 header (with any VLAN tags) by Ethernet + an outer IP header to
/// `backend`, then sends the packet on.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    packet: &Packet,
    backend: &Addr,
    config: &DataplaneConfig,
    hash: u32,
) -> Result<Outcome, Stat> {
    let outer_v4 = is_v4(backend);
    if outer_v4 && packet.ipv6 {
        // IPv6 VIPs need IPv6 backends: lbd's config check refuses the rest.
        return Err(Stat::DropInternal);
    }
    let outer_len = if outer_v4 { IPV4_HLEN } else { IPV6_HLEN };
    let total = outer_len + packet.ip_len;
    if config.max_encap_ip_len != 0 && total > config.max_encap_ip_len as usize {
        return Err(Stat::DropTooBig);
    }
    // The frame's own destination MAC (ours) becomes the source.
    let our_mac: [u8; 6] = lb_ebpf::parse::load(ctx.data(), ctx.data_end(), 0).ok_or(Stat::DropInternal)?;
    let grow = outer_len as i32 - (packet.l3_off - ETH_HLEN) as i32;
    // SAFETY: ctx is this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return Err(Stat::DropInternal);
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let mut eth = [0u8; ETH_HLEN];
    eth[..6].copy_from_slice(&config.next_hop_mac);
    eth[6..12].copy_from_slice(&our_mac);
    let ethertype = if outer_v4 { ETH_P_IP } else { ETH_P_IPV6 };
    eth[12..14].copy_from_slice(&ethertype.to_be_bytes());
    store(data, data_end, 0, eth)?;
    if outer_v4 {
        store(data, data_end, ETH_HLEN, ipv4_header(backend, config, hash, total))?;
    } else {
        store(data, data_end, ETH_HLEN, ipv6_header(packet, backend, config, hash))?;
    }
    if config.redirect_ifindex != 0 {
        // SAFETY: plain helper call.
        let action = unsafe { bpf_redirect(config.redirect_ifindex, 0) } as u32;
        return Ok((action, Stat::Redirect));
    }
    Ok((xdp_action::XDP_TX, Stat::Tx))
}

#[inline(always)]
fn ipv4_header(backend: &Addr, config: &DataplaneConfig, hash: u32, total: usize) -> [u8; 20] {
    let src = config.encap_source_v4;
    let h = (hash as u16).to_be_bytes();
    let len = (total as u16).to_be_bytes();
    let mut header = [
        0x45,
        0,
        len[0],
        len[1],
        0,
        0,
        0,
        0,
        OUTER_TTL,
        IPPROTO_IPIP,
        0,
        0,
        src[0],
        src[1],
        h[0],
        h[1],
        backend[12],
        backend[13],
        backend[14],
        backend[15],
    ];
    let check = csum::ipv4_header(&header).to_be_bytes();
    header[10] = check[0];
    header[11] = check[1];
    header
}

#[inline(always)]
fn ipv6_header(packet: &Packet, backend: &Addr, config: &DataplaneConfig, hash: u32) -> [u8; 40] {
    let mut header = [0u8; 40];
    // Version 6, flow label from the hash so routers' ECMP spreads flows.
    let label = (0x6000_0000u32 | (hash & 0x000f_ffff)).to_be_bytes();
    header[..4].copy_from_slice(&label);
    header[4..6].copy_from_slice(&(packet.ip_len as u16).to_be_bytes());
    header[6] = if packet.ipv6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
    header[7] = OUTER_TTL;
    header[8..20].copy_from_slice(&config.encap_source_v6[..12]);
    header[20..24].copy_from_slice(&hash.to_be_bytes());
    header[24..40].copy_from_slice(backend);
    header
}
