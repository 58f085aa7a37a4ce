//! ICMP to a VIP: echo requests answered here; "fragmentation needed" / "packet too big" sent
//! to the backend that owns the quoted flow, so path MTU discovery works through the balancer.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{stats::Stat, vip::VIP_F_L7};
use lb_ebpf::{
    csum,
    parse::{Packet, load, parse_ipv4, parse_ipv6},
};

use crate::{
    balance::{Outcome, forward, lookup_flags, lookup_vip},
    maps::VIP_ADDRS,
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

#[inline(always)]
pub fn handle(ctx: &XdpContext, packet: &mut Packet) -> Result<Outcome, Stat> {
    if VIP_ADDRS.get_ptr(&packet.flow.dst).is_none() {
        return Ok((xdp_action::XDP_PASS, Stat::PassNotVip));
    }
    match (packet.ipv6, packet.icmp_type, packet.icmp_code) {
        (false, ICMP_ECHO_REQUEST, _) => echo_reply(ctx, packet, ICMP_ECHO_REPLY),
        (true, ICMPV6_ECHO_REQUEST, _) => echo_reply(ctx, packet, ICMPV6_ECHO_REPLY),
        (false, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED) | (true, ICMPV6_PACKET_TOO_BIG, _) => {
            too_big(ctx, packet)
        }
        _ => Ok((xdp_action::XDP_PASS, Stat::PassNotVip)),
    }
}

#[inline(always)]
fn store<T>(data: usize, data_end: usize, off: usize, value: T) -> Result<(), Stat> {
    if data + off + core::mem::size_of::<T>() > data_end {
        return Err(Stat::DropMalformedL4);
    }
    // SAFETY: inside the packet, checked just above.
    unsafe { core::ptr::write_unaligned((data + off) as *mut T, value) };
    Ok(())
}

/// Turns the request into its reply in place: swap MACs and addresses, set the type, and
/// update the checksum incrementally (the pseudo-header sum does not change on a swap).
#[inline(always)]
fn echo_reply(ctx: &XdpContext, packet: &Packet, reply_type: u8) -> Result<Outcome, Stat> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let macs: [u8; 12] = load(data, end, 0).ok_or(Stat::DropMalformedL2)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    store(data, end, 0, swapped)?;
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
fn too_big(ctx: &XdpContext, packet: &mut Packet) -> Result<Outcome, Stat> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let (l3_off, ip_len, ipv6) = (packet.l3_off, packet.ip_len, packet.ipv6);
    let inner_off = packet.l4_off + ICMP_HLEN;
    if ipv6 {
        parse_ipv6(data, end, inner_off, false, packet)
    } else {
        parse_ipv4(data, end, inner_off, false, packet)
    }
    .map_err(|_| Stat::DropMalformedL4)?;
    let flags = lookup_flags();
    let Some(vip) = lookup_vip(&packet.flow.src, packet.flow.sport, packet.flow.proto, flags) else {
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
    let (action, stat) = forward(ctx, packet, &vip, false);
    let stat = if matches!(stat, Stat::Tx | Stat::Redirect) { Stat::IcmpTooBigForwarded } else { stat };
    Ok((action, stat))
}
