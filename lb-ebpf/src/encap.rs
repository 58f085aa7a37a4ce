//! Encapsulation toward a backend: IPv4-in-IPv4, IPv6-in-IPv6, IPv4-in-IPv6; outer source from
//! the flow hash; Ethernet to the next hop; XDP_TX, or redirect when configured.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::{addr::Addr, backend::Backend, config::DataplaneConfig, stats::Stat};
use lb_ebpf::{
    csum,
    parse::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_HLEN, IPV6_HLEN, Packet},
    wire::{Word, span},
};

use crate::balance::Outcome;

/// TTL / hop limit of the outer header.
const OUTER_TTL: u8 = 64;

// Ethernet addresses are handled as the little-endian image of their 6 bytes in a u64.
const _: () = assert!(cfg!(target_endian = "little"));

/// The image of a MAC address held in a map value: the bytes as they lie, in the low 48 bits.
#[inline(always)]
fn mac_image(mac: &[u8; 6]) -> u64 {
    u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]) as u64
        | (u16::from_le_bytes([mac[4], mac[5]]) as u64) << 32
}

/// Replaces the frame's L2 header (with any VLAN tags) by Ethernet + an outer IP header to
/// `backend`, then sends the packet on.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    packet: &Packet,
    backend: &Backend,
    config: &DataplaneConfig,
    hash: u32,
) -> Result<Outcome, Stat> {
    let outer_v4 = backend.is_v4();
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
    let at = span(ctx.data(), ctx.data_end(), 0, 6).ok_or(Stat::DropInternal)?;
    // SAFETY: the 6 bytes at `at` are inside the packet, checked just above.
    let our_mac = unsafe { u32::read(at) as u64 | (u16::read(at + 4) as u64) << 32 };
    let grow = outer_len as i32 - (packet.l3_off - ETH_HLEN) as i32;
    // SAFETY: ctx is this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return Err(Stat::DropInternal);
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let at = span(data, data_end, 0, ETH_HLEN).ok_or(Stat::DropInternal)?;
    let ethertype = if outer_v4 { ETH_P_IP } else { ETH_P_IPV6 };
    // SAFETY: the 14 bytes at `at` are inside the packet, checked just above.
    unsafe {
        u64::write(at, mac_image(&config.next_hop_mac) | our_mac << 48);
        u32::write(at + 8, (our_mac >> 16) as u32);
        u16::write(at + 12, ethertype.to_be());
    }
    if outer_v4 {
        let at = span(data, data_end, ETH_HLEN, IPV4_HLEN).ok_or(Stat::DropInternal)?;
        let header = ipv4_header(backend, config, hash, total);
        for (i, word) in header.iter().enumerate() {
            // SAFETY: the 20 bytes at `at` are inside the packet, checked just above.
            unsafe { u32::write(at + 4 * i, word.to_be()) };
        }
    } else {
        let at = span(data, data_end, ETH_HLEN, IPV6_HLEN).ok_or(Stat::DropInternal)?;
        write_ipv6_header(at, packet, &backend.addr, config, hash);
    }
    if config.redirect_ifindex != 0 {
        // SAFETY: plain helper call.
        let action = unsafe { bpf_redirect(config.redirect_ifindex, 0) } as u32;
        return Ok((action, Stat::Redirect));
    }
    Ok((xdp_action::XDP_TX, Stat::Tx))
}

/// The outer IPv4 header as five big-endian words (numbers; stored with `to_be`).
#[inline(always)]
fn ipv4_header(backend: &Backend, config: &DataplaneConfig, hash: u32, total: usize) -> [u32; 5] {
    let src = config.encap_source_v4;
    let mut header = [
        0x4500_0000 | total as u32,
        0,
        (OUTER_TTL as u32) << 24 | (IPPROTO_IPIP as u32) << 16,
        (u16::from_be_bytes([src[0], src[1]]) as u32) << 16 | (hash & 0xffff),
        u32::from_be(backend.addr_words()[3]),
    ];
    header[2] |= csum::ipv4_header(&header) as u32;
    header
}

/// Writes the outer IPv6 header at `at` (40 bytes inside the packet).
#[inline(always)]
fn write_ipv6_header(at: usize, packet: &Packet, backend: &Addr, config: &DataplaneConfig, hash: u32) {
    // Version 6, flow label from the hash so routers' ECMP spreads flows.
    let label = 0x6000_0000u32 | (hash & 0x000f_ffff);
    let next = if packet.ipv6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
    let lengths = (packet.ip_len as u32) << 16 | (next as u32) << 8 | OUTER_TTL as u32;
    let src = &config.encap_source_v6;
    let raw64 = |b: &[u8]| u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    // SAFETY: the caller checked the 40 bytes at `at`.
    unsafe {
        u32::write(at, label.to_be());
        u32::write(at + 4, lengths.to_be());
        // Source: the top 96 bits of encap_source_v6, then the flow hash.
        u64::write(at + 8, raw64(&src[..8]));
        u32::write(at + 16, u32::from_ne_bytes([src[8], src[9], src[10], src[11]]));
        u32::write(at + 20, hash.to_be());
        u64::write(at + 24, raw64(&backend[..8]));
        u64::write(at + 32, raw64(&backend[8..]));
    }
}
