//! SYN cookies for L7 VIPs that ask for them (`VIP_F_SYN_COOKIES`): a SYN is answered from
//! here with a cookie of the kernel's own secret (the answer: lb_ebpf::synack), so the host
//! keeps nothing for it; an ACK of a flow the host has no socket for goes up only with a valid
//! cookie, to netfilter's SYNPROXY (set up by lbd), which checks it again and opens the real
//! connection to lbd's listener. IPv4 without IP options and IPv6 without extension headers,
//! neither VLAN-tagged; other packets go up the stack, where SYNPROXY answers them the same
//! way, only later.
use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple, iphdr, ipv6hdr, tcphdr, xdp_action},
    helpers::{
        bpf_ktime_get_ns,
        generated::{
            bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_raw_check_syncookie_ipv4,
            bpf_tcp_raw_check_syncookie_ipv6, bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6,
            bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
        },
    },
    programs::XdpContext,
};
use lb_common::stats::Stat;
use lb_ebpf::{
    parse::{ETH_HLEN, IPV4_HLEN, IPV6_HLEN, Packet, TCP_ACK, TCP_RST, TCP_SYN},
    synack::{IP_MAX_HLEN, TCP_MAX_HLEN, synack},
    wire::{load, opaque, swap_macs},
};

use crate::balance::Outcome;

/// `bpf_sock.state` of a listening socket.
const TCP_LISTEN: u32 = 10;

/// SYNs answered, ACKs checked; anything else (and IP options, IPv6 extension headers, VLAN
/// tags) up the stack.
#[inline(always)]
pub fn handle(ctx: &XdpContext, packet: &Packet) -> Outcome {
    let ip_len = if packet.ipv6 { IPV6_HLEN } else { IPV4_HLEN };
    if packet.l3_off != ETH_HLEN || packet.l4_off != ETH_HLEN + ip_len {
        return (xdp_action::XDP_PASS, Stat::PassL7);
    }
    match packet.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) {
        TCP_SYN => answer_syn(ctx, packet.ipv6),
        TCP_ACK => check_ack(ctx, packet),
        _ => (xdp_action::XDP_PASS, Stat::PassL7),
    }
}

/// Copies `len` bytes (at most `N`) of the frame at `off` into `buf`.
#[inline(always)]
fn copy_in<const N: usize>(ctx: &XdpContext, off: usize, buf: &mut [u8; N], len: usize) -> Option<()> {
    let len = opaque(len);
    if len == 0 || len > N {
        return None;
    }
    // SAFETY: `len` bytes fit in `buf` (checked above); the helper checks the frame's side.
    let copied = unsafe { bpf_xdp_load_bytes(ctx.ctx, off as u32, buf.as_mut_ptr().cast(), len as u32) };
    (copied == 0).then_some(())
}

/// Copies `len` bytes (at most `N`) of `buf` into the frame at `off`.
#[inline(always)]
fn copy_out<const N: usize>(ctx: &XdpContext, off: usize, buf: &mut [u8; N], len: usize) -> Option<()> {
    let len = opaque(len);
    if len == 0 || len > N {
        return None;
    }
    // SAFETY: `len` bytes of `buf` (checked above); the helper checks the frame's side.
    let copied = unsafe { bpf_xdp_store_bytes(ctx.ctx, off as u32, buf.as_mut_ptr().cast(), len as u32) };
    (copied == 0).then_some(())
}

/// Turns the SYN into its SYN-ACK in place and sends it back out. Not inlined: its buffers
/// take a stack frame of their own (the verifier's 512 bytes are shared with the parser's).
#[inline(never)]
fn answer_syn(ctx: &XdpContext, ipv6: bool) -> Outcome {
    let (data, end) = (ctx.data(), ctx.data_end());
    let ip_len = if ipv6 { IPV6_HLEN } else { IPV4_HLEN };
    let l4_off = ETH_HLEN + ip_len;
    let mut ip = [0u8; IP_MAX_HLEN];
    let mut tcp = [0u8; TCP_MAX_HLEN];
    let Some(offset) = load::<u8>(data, end, l4_off + 12) else {
        return (xdp_action::XDP_DROP, Stat::DropMalformedL4);
    };
    let tcp_len = (offset >> 4) as usize * 4;
    if tcp_len < 20
        || copy_in(ctx, ETH_HLEN, &mut ip, ip_len).is_none()
        || copy_in(ctx, l4_off, &mut tcp, tcp_len).is_none()
    {
        return (xdp_action::XDP_DROP, Stat::DropMalformedL4);
    }
    let (iph, th) = (ip.as_mut_ptr(), tcp.as_mut_ptr().cast::<tcphdr>());
    // SAFETY: both pointers are to stack copies of at least the sizes the helper reads.
    let value = unsafe {
        match ipv6 {
            true => bpf_tcp_raw_gen_syncookie_ipv6(iph.cast::<ipv6hdr>(), th, tcp_len as u32),
            false => bpf_tcp_raw_gen_syncookie_ipv4(iph.cast::<iphdr>(), th, tcp_len as u32),
        }
    };
    if value < 0 {
        return (xdp_action::XDP_DROP, Stat::DropMalformedL4);
    }
    // SAFETY: a helper without arguments.
    let now_ms = (unsafe { bpf_ktime_get_ns() } / 1_000_000) as u32;
    let tcp_out = synack(&mut ip, ipv6, &mut tcp, tcp_len, value as u32, now_ms);
    // Back to the sender.
    if swap_macs(data, end).is_none() {
        return (xdp_action::XDP_DROP, Stat::DropMalformedL2);
    }
    // The frame becomes exactly the answer (a SYN without options is shorter than it); a frame
    // that cannot grow goes up to SYNPROXY instead.
    let delta = (l4_off + tcp_out) as i32 - (end - data) as i32;
    // SAFETY: the helper checks the new size against the frame.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return (xdp_action::XDP_PASS, Stat::PassL7);
    }
    if copy_out(ctx, ETH_HLEN, &mut ip, ip_len).is_none()
        || copy_out(ctx, l4_off, &mut tcp, tcp_out).is_none()
    {
        return (xdp_action::XDP_DROP, Stat::DropInternal);
    }
    (xdp_action::XDP_TX, Stat::SynCookieSent)
}

/// An ACK passes if the host has a socket for its flow (established, being accepted, in
/// TIME_WAIT), else only with a valid cookie. Not inlined: a stack frame of its own.
#[inline(never)]
fn check_ack(ctx: &XdpContext, packet: &Packet) -> Outcome {
    let flow = &packet.flow;
    // SAFETY: all-zero bytes are a valid tuple.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let words = |a: &[u8; 16]| -> [u32; 4] {
        core::array::from_fn(|i| u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]))
    };
    // (Field by field: a reference into the union would need `unsafe`.)
    let size = if packet.ipv6 {
        tuple.__bindgen_anon_1.ipv6.saddr = words(&flow.src);
        tuple.__bindgen_anon_1.ipv6.daddr = words(&flow.dst);
        tuple.__bindgen_anon_1.ipv6.sport = flow.sport;
        tuple.__bindgen_anon_1.ipv6.dport = flow.dport;
        36
    } else {
        tuple.__bindgen_anon_1.ipv4.saddr = words(&flow.src)[3];
        tuple.__bindgen_anon_1.ipv4.daddr = words(&flow.dst)[3];
        tuple.__bindgen_anon_1.ipv4.sport = flow.sport;
        tuple.__bindgen_anon_1.ipv4.dport = flow.dport;
        12
    };
    // SAFETY: the tuple's part for the family is initialised; the socket, if any, is
    // released below before anything else.
    let sk = unsafe { bpf_skc_lookup_tcp(ctx.ctx.cast(), &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0) };
    if !sk.is_null() {
        // SAFETY: a socket the helper returned, read before its release.
        let state = unsafe { (*sk).state };
        // SAFETY: released once, as the helper's contract asks.
        unsafe { bpf_sk_release(sk.cast()) };
        if state != TCP_LISTEN {
            return (xdp_action::XDP_PASS, Stat::PassL7);
        }
    }
    let ip_len = if packet.ipv6 { IPV6_HLEN } else { IPV4_HLEN };
    let mut ip = [0u8; IP_MAX_HLEN];
    let mut tcp = [0u8; 20];
    if copy_in(ctx, ETH_HLEN, &mut ip, ip_len).is_none()
        || copy_in(ctx, ETH_HLEN + ip_len, &mut tcp, 20).is_none()
    {
        return (xdp_action::XDP_DROP, Stat::DropMalformedL4);
    }
    let (iph, th) = (ip.as_mut_ptr(), tcp.as_mut_ptr().cast::<tcphdr>());
    // SAFETY: stack copies of a full IP header and a TCP header without options.
    let checked = unsafe {
        match packet.ipv6 {
            true => bpf_tcp_raw_check_syncookie_ipv6(iph.cast::<ipv6hdr>(), th),
            false => bpf_tcp_raw_check_syncookie_ipv4(iph.cast::<iphdr>(), th),
        }
    };
    if checked == 0 {
        (xdp_action::XDP_PASS, Stat::SynCookieValid)
    } else {
        (xdp_action::XDP_DROP, Stat::DropSynCookie)
    }
}
