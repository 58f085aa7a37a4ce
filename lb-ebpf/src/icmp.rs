//! ICMP to a VIP: echo requests answered here; "fragmentation needed" / "packet too big" sent
//! to the backend that owns the quoted flow, so path MTU discovery works through the balancer;
//! and the same errors sent to clients whose packets are too big to encapsulate.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{config::DataplaneConfig, hash::flow_hash, stats::Stat, vip::VIP_F_L7};
use lb_ebpf::{
    csum,
    parse::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPV4_HLEN, IPV6_HLEN, Packet,
        parse_ipv4, parse_ipv6,
    },
    wire::{self, load},
};

use crate::{
    balance::{Outcome, forward, lookup_vip},
    conn,
    maps::{BACKENDS, DATAPLANE_CONFIG, VIP_ADDRS},
};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// ICMP header bytes before the quoted packet.
const ICMP_HLEN: usize = 8;
/// TTL / hop limit of the ICMP errors the balancer sends.
const REPLY_TTL: u8 = 64;

#[inline(always)]
pub fn handle(ctx: &XdpContext, packet: &mut Packet, config: &DataplaneConfig) -> Result<Outcome, Stat> {
    if VIP_ADDRS.get_ptr(&packet.flow.dst).is_none() {
        return Ok((xdp_action::XDP_PASS, Stat::PassNotVip));
    }
    match (packet.ipv6, packet.icmp_type, packet.icmp_code) {
        (false, ICMP_ECHO_REQUEST, _) => echo_reply(ctx, packet, ICMP_ECHO_REPLY),
        (true, ICMPV6_ECHO_REQUEST, _) => echo_reply(ctx, packet, ICMPV6_ECHO_REPLY),
        (false, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED) | (true, ICMPV6_PACKET_TOO_BIG, _) => {
            too_big(ctx, packet, config)
        }
        _ => Ok((xdp_action::XDP_PASS, Stat::PassNotVip)),
    }
}

/// wire::store, a write past the end counted as a malformed L4 header.
#[inline(always)]
fn store<T>(data: usize, data_end: usize, off: usize, value: T) -> Result<(), Stat> {
    wire::store(data, data_end, off, value).ok_or(Stat::DropMalformedL4)
}

/// Turns the request into its reply in place: swap MACs and addresses, set the type, and
/// update the checksum incrementally (the pseudo-header sum does not change on a swap).
#[inline(always)]
fn echo_reply(ctx: &XdpContext, packet: &Packet, reply_type: u8) -> Result<Outcome, Stat> {
    let (data, end) = (ctx.data(), ctx.data_end());
    wire::swap_macs(data, end).ok_or(Stat::DropMalformedL2)?;
    if packet.ipv6 {
        let addrs: [u8; 32] = load(data, end, packet.l3_off + 8).ok_or(Stat::DropMalformedIpv6)?;
        let mut swapped = [0u8; 32];
        swapped[..16].copy_from_slice(&addrs[16..]);
        swapped[16..].copy_from_slice(&addrs[..16]);
        store(data, end, packet.l3_off + 8, swapped)?;
    } else {
        let addrs: [u8; 8] = load(data, end, packet.l3_off + 12).ok_or(Stat::DropMalformedIpv4)?;
        let swapped = [addrs[4], addrs[5], addrs[6], addrs[7], addrs[0], addrs[1], addrs[2], addrs[3]];
        store(data, end, packet.l3_off + 12, swapped)?;
    }
    let head: [u8; 4] = load(data, end, packet.l4_off).ok_or(Stat::DropMalformedL4)?;
    let old = u16::from_be_bytes([head[0], head[1]]);
    let new = u16::from_be_bytes([reply_type, head[1]]);
    let check = csum::replace16(u16::from_be_bytes([head[2], head[3]]), old, new).to_be_bytes();
    store(data, end, packet.l4_off, [reply_type, head[1], check[0], check[1]])?;
    Ok((xdp_action::XDP_TX, Stat::IcmpEchoReply))
}

/// Forwards the ICMP error to the backend of the flow it quotes (VIP -> client, as the
/// backend sent it), looked up like any packet of that flow. The quoted packet is parsed into
/// `packet` itself (the BPF stack has no room for a second one); what encapsulation needs of
/// the outer packet is put back afterwards.
#[inline(always)]
fn too_big(ctx: &XdpContext, packet: &mut Packet, config: &DataplaneConfig) -> Result<Outcome, Stat> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let (l3_off, ip_len, ipv6) = (packet.l3_off, packet.ip_len, packet.ipv6);
    let inner_off = packet.l4_off + ICMP_HLEN;
    if ipv6 {
        parse_ipv6(data, end, inner_off, false, packet)
    } else {
        parse_ipv4(data, end, inner_off, false, packet)
    }
    .map_err(|_| Stat::DropMalformedL4)?;
    let words = packet.flow.words();
    let Some(vip) = lookup_vip([words[0], words[1]], packet.flow.sport, packet.flow.proto, config.flags)
    else {
        return Ok((xdp_action::XDP_PASS, Stat::PassNotVip));
    };
    if vip.flags & VIP_F_L7 != 0 {
        return Ok((xdp_action::XDP_PASS, Stat::PassL7));
    }
    // The client's direction of the quoted flow.
    let flow = &mut packet.flow;
    core::mem::swap(&mut flow.src, &mut flow.dst);
    core::mem::swap(&mut flow.sport, &mut flow.dport);
    (packet.l3_off, packet.ip_len, packet.ipv6) = (l3_off, ip_len, ipv6);
    let (action, stat) = forward(ctx, packet, &vip, config);
    let stat = if matches!(stat, Stat::Tx | Stat::Redirect) { Stat::IcmpTooBigForwarded } else { stat };
    Ok((action, stat))
}

/// Bytes quoted in a generated "fragmentation needed" (IPv4: room for a 60-byte header with
/// options and 64 bits of payload, RFC 792; routers may quote more, RFC 1812) or "packet too
/// big" (IPv6: headers and the start of the payload). Fixed sizes keep the checksum a single
/// helper call; a packet too big to encapsulate is always longer.
const QUOTE_V4: usize = 68;
const QUOTE_V6: usize = 128;

/// The one's-complement sum, as big-endian 16-bit words, of `N` bytes (a multiple of 4, at
/// most 512) of the packet at `off`.
#[inline(always)]
fn packet_sum<const N: usize>(data: usize, end: usize, off: usize) -> Result<u32, Stat> {
    if data + off + N > end {
        return Err(Stat::DropInternal);
    }
    // SAFETY: N bytes inside the packet, checked just above.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, (data + off) as *mut u32, N as u32, 0) };
    if sum < 0 {
        return Err(Stat::DropInternal);
    }
    // The helper adds words in memory order as this little-endian CPU reads them; the sum of
    // byte-swapped words is the byte-swapped sum (RFC 1071).
    Ok(csum::fold(sum as u32).swap_bytes() as u32)
}

/// Answers a client packet too big to encapsulate with ICMP "fragmentation needed" (IPv4 with
/// DF set) or ICMPv6 "packet too big", from the VIP, quoting the packet's start, back out of
/// the NIC: path MTU discovery then shrinks the client's packets. Not for VLAN-tagged frames,
/// IPv4 without DF, or ICMP itself: those stay dropped (`drop_too_big`). Called after
/// `forward` refused the packet, not from it: the BPF stack has no room for both frames.
#[inline(never)]
pub fn too_big_reply(ctx: &XdpContext, packet: &Packet) -> Outcome {
    match try_too_big_reply(ctx, packet) {
        Ok(outcome) => outcome,
        Err(reason) => (xdp_action::XDP_DROP, reason),
    }
}

/// The largest inner packet that fits once encapsulated toward the flow's backend (outer IPv4
/// or IPv6 header; IPv6 if the backend cannot be found again).
#[inline(always)]
fn inner_mtu(packet: &Packet) -> u32 {
    let max = DATAPLANE_CONFIG.get(0).map_or(0, |c| c.max_encap_ip_len);
    let backend = conn::lookup(&packet.flow, flow_hash(&packet.flow)).and_then(|id| BACKENDS.get(id));
    let outer = match backend {
        Some(b) if !packet.ipv6 && b.is_v4() => IPV4_HLEN,
        _ => IPV6_HLEN,
    };
    max.saturating_sub(outer as u32)
}

#[inline(always)]
fn try_too_big_reply(ctx: &XdpContext, packet: &Packet) -> Result<Outcome, Stat> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let quote = if packet.ipv6 { QUOTE_V6 } else { QUOTE_V4 };
    if packet.l3_off != ETH_HLEN || packet.icmp_type != 0 || packet.ip_len < quote {
        return Err(Stat::DropTooBig);
    }
    if !packet.ipv6 {
        let flags: u8 = load(data, end, ETH_HLEN + 6).ok_or(Stat::DropInternal)?;
        if flags & 0x40 == 0 {
            return Err(Stat::DropTooBig);
        }
    }
    let mtu = inner_mtu(packet);
    // Keep Ethernet + the quote, then make room for the new IP and ICMP headers in front.
    let grow = if packet.ipv6 { IPV6_HLEN + ICMP_HLEN } else { IPV4_HLEN + ICMP_HLEN };
    let cut = (end - data) as i32 - (ETH_HLEN + quote) as i32;
    // SAFETY: ctx is this program's context; both helpers only move the packet's bounds.
    if cut < 0
        || unsafe { bpf_xdp_adjust_tail(ctx.ctx, -cut) } != 0
        || unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0
    {
        return Err(Stat::DropInternal);
    }
    // The old Ethernet header now sits at `grow`, the quoted packet right after it.
    let (data, end) = (ctx.data(), ctx.data_end());
    let our_mac: [u8; 6] = load(data, end, grow).ok_or(Stat::DropInternal)?;
    let their_mac: [u8; 6] = load(data, end, grow + 6).ok_or(Stat::DropInternal)?;
    store(data, end, 0, their_mac)?;
    store(data, end, 6, our_mac)?;
    if packet.ipv6 {
        const QUOTED: usize = ETH_HLEN + IPV6_HLEN + ICMP_HLEN;
        const ICMP_AT: usize = ETH_HLEN + IPV6_HLEN;
        let icmp_len = (ICMP_HLEN + QUOTE_V6) as u16;
        store(data, end, 12, ETH_P_IPV6.to_be_bytes())?;
        store(data, end, ETH_HLEN, [0x60u8, 0, 0, 0])?;
        store(data, end, ETH_HLEN + 4, icmp_len.to_be_bytes())?;
        store(data, end, ETH_HLEN + 6, [IPPROTO_ICMPV6, REPLY_TTL])?;
        // Source: the quoted destination (the VIP); destination: the quoted source (the client).
        let vip: [u8; 16] = load(data, end, QUOTED + 24).ok_or(Stat::DropInternal)?;
        store(data, end, ETH_HLEN + 8, vip)?;
        let client: [u8; 16] = load(data, end, QUOTED + 8).ok_or(Stat::DropInternal)?;
        store(data, end, ETH_HLEN + 24, client)?;
        // Pseudo-header (addresses, upper-layer length, next header), ICMPv6 header, quote.
        let sum = packet_sum::<32>(data, end, ETH_HLEN + 8)?
            + packet_sum::<QUOTE_V6>(data, end, QUOTED)?
            + icmp_len as u32
            + IPPROTO_ICMPV6 as u32
            + ((ICMPV6_PACKET_TOO_BIG as u32) << 8)
            + (mtu >> 16)
            + (mtu & 0xffff);
        store(data, end, ICMP_AT, [ICMPV6_PACKET_TOO_BIG, 0])?;
        store(data, end, ICMP_AT + 2, (!csum::fold(sum)).to_be_bytes())?;
        store(data, end, ICMP_AT + 4, mtu.to_be_bytes())?;
    } else {
        const QUOTED: usize = ETH_HLEN + IPV4_HLEN + ICMP_HLEN;
        const ICMP_AT: usize = ETH_HLEN + IPV4_HLEN;
        let len = (IPV4_HLEN + ICMP_HLEN + QUOTE_V4) as u16;
        store(data, end, 12, ETH_P_IP.to_be_bytes())?;
        store(data, end, ETH_HLEN, [0x45u8, 0])?;
        store(data, end, ETH_HLEN + 2, len.to_be_bytes())?;
        store(data, end, ETH_HLEN + 4, [0u8, 0, 0x40, 0, REPLY_TTL, IPPROTO_ICMP, 0, 0])?;
        let vip: [u8; 4] = load(data, end, QUOTED + 16).ok_or(Stat::DropInternal)?;
        store(data, end, ETH_HLEN + 12, vip)?;
        let client: [u8; 4] = load(data, end, QUOTED + 12).ok_or(Stat::DropInternal)?;
        store(data, end, ETH_HLEN + 16, client)?;
        let header = packet_sum::<IPV4_HLEN>(data, end, ETH_HLEN)?;
        store(data, end, ETH_HLEN + 10, (!csum::fold(header)).to_be_bytes())?;
        let mtu = mtu.min(0xffff);
        let sum = packet_sum::<QUOTE_V4>(data, end, QUOTED)?
            + ((ICMP_DEST_UNREACH as u32) << 8)
            + ICMP_FRAG_NEEDED as u32
            + mtu;
        store(data, end, ICMP_AT, [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED])?;
        store(data, end, ICMP_AT + 2, (!csum::fold(sum)).to_be_bytes())?;
        store(data, end, ICMP_AT + 4, [0u8, 0])?;
        store(data, end, ICMP_AT + 6, (mtu as u16).to_be_bytes())?;
    }
    Ok((xdp_action::XDP_TX, Stat::IcmpTooBigSent))
}
