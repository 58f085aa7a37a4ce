//! SYN cookies for L7 VIPs that ask for them (`VIP_F_SYN_COOKIES`): a SYN is answered from
//! here with a cookie of the kernel's own secret (the answer: lb_ebpf::synack), so the host
//! keeps nothing for it; an ACK of a flow the host has no socket for goes up only with a valid
//! cookie, to nftables' SYNPROXY (set up by lbd), which checks it again and opens the real
//! connection to lbd's listener. IPv4 without IP options or VLAN tags; other packets go up the
//! stack, where SYNPROXY answers them the same way, only later.
use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple, iphdr, tcphdr, xdp_action},
    helpers::{
        bpf_ktime_get_ns,
        generated::{
            bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_raw_check_syncookie_ipv4,
            bpf_tcp_raw_gen_syncookie_ipv4, bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
        },
    },
    programs::XdpContext,
};
use lb_common::stats::Stat;
use lb_ebpf::{
    parse::{ETH_HLEN, IPV4_HLEN, Packet, TCP_ACK, TCP_SYN},
    synack::{SYNACK_MAX_LEN, TCP_MAX_HLEN, synack},
    wire::{Word, load, opaque, span},
};

use crate::balance::Outcome;

const TCP_RST: u8 = 0x04;
/// `bpf_sock.state` of a listening socket.
const TCP_LISTEN: u32 = 10;
/// Where the TCP header starts in the frames handled here.
const L4_OFF: usize = ETH_HLEN + IPV4_HLEN;

/// SYNs answered, ACKs checked; anything else (and IPv6, IP options, VLAN tags) up the stack.
#[inline(always)]
pub fn handle(ctx: &XdpContext, packet: &Packet) -> Outcome {
    if packet.ipv6 || packet.l3_off != ETH_HLEN || packet.l4_off != L4_OFF {
        return (xdp_action::XDP_PASS, Stat::PassL7);
    }
    match packet.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) {
        TCP_SYN => answer_syn(ctx),
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

/// Turns the SYN into its SYN-ACK in place and sends it back out. Not inlined: its buffers
/// take a stack frame of their own.
#[inline(never)]
fn answer_syn(ctx: &XdpContext) -> Outcome {
    let (data, end) = (ctx.data(), ctx.data_end());
    let mut ip = [0u8; IPV4_HLEN];
    let mut tcp = [0u8; TCP_MAX_HLEN];
    let Some(offset) = load::<u8>(data, end, L4_OFF + 12) else {
        return (xdp_action::XDP_DROP, Stat::DropMalformedL4);
    };
    let tcp_len = (offset >> 4) as usize * 4;
    if tcp_len < 20 || copy_in(ctx, ETH_HLEN, &mut ip, IPV4_HLEN).is_none() {
        return (xdp_action::XDP_DROP, Stat::DropMalformedL4);
    }
    if copy_in(ctx, L4_OFF, &mut tcp, tcp_len).is_none() {
        return (xdp_action::XDP_DROP, Stat::DropMalformedL4);
    }
    // SAFETY: both pointers are to stack copies of at least the sizes the helper reads.
    let value = unsafe {
        bpf_tcp_raw_gen_syncookie_ipv4(
            ip.as_mut_ptr().cast::<iphdr>(),
            tcp.as_mut_ptr().cast::<tcphdr>(),
            tcp_len as u32,
        )
    };
    if value < 0 {
        return (xdp_action::XDP_DROP, Stat::DropMalformedL4);
    }
    // SAFETY: a helper without arguments.
    let now_ms = (unsafe { bpf_ktime_get_ns() } / 1_000_000) as u32;
    let mut out = [0u8; SYNACK_MAX_LEN];
    let len = synack(&ip, &tcp, tcp_len, value as u32, now_ms, &mut out);
    // Back to the sender: swap the MACs in place (no stack copy: this frame is near the
    // verifier's 512-byte stack limit).
    let Some(at) = span(data, end, 0, 12) else {
        return (xdp_action::XDP_DROP, Stat::DropMalformedL2);
    };
    // SAFETY: the 12 bytes at `at` are inside the frame (checked just above).
    unsafe {
        let (dst_high, dst_low, src_high, src_low) =
            (u32::read(at), u16::read(at + 4), u32::read(at + 6), u16::read(at + 10));
        u32::write(at, src_high);
        u16::write(at + 4, src_low);
        u32::write(at + 6, dst_high);
        u16::write(at + 10, dst_low);
    }
    // The frame becomes exactly the answer (a SYN without options is shorter than it); a frame
    // that cannot grow goes up to SYNPROXY instead.
    let delta = (ETH_HLEN + len) as i32 - (end - data) as i32;
    // SAFETY: the helper checks the new size against the frame.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return (xdp_action::XDP_PASS, Stat::PassL7);
    }
    let len = if len > SYNACK_MAX_LEN { SYNACK_MAX_LEN } else { len };
    // SAFETY: the buffers hold the lengths given; the helper checks the frame's side.
    let stored =
        unsafe { bpf_xdp_store_bytes(ctx.ctx, ETH_HLEN as u32, out.as_mut_ptr().cast(), len as u32) };
    if stored != 0 {
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
    let v4 = |a: &[u8; 16]| u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
    tuple.__bindgen_anon_1.ipv4.saddr = v4(&flow.src);
    tuple.__bindgen_anon_1.ipv4.daddr = v4(&flow.dst);
    tuple.__bindgen_anon_1.ipv4.sport = flow.sport;
    tuple.__bindgen_anon_1.ipv4.dport = flow.dport;
    // SAFETY: the tuple's IPv4 part (12 bytes) is initialised; the socket, if any, is released
    // below before anything else.
    let sk = unsafe { bpf_skc_lookup_tcp(ctx.ctx.cast(), &mut tuple, 12, BPF_F_CURRENT_NETNS as u64, 0) };
    if !sk.is_null() {
        // SAFETY: a socket the helper returned, read before its release.
        let state = unsafe { (*sk).state };
        // SAFETY: released once, as the helper's contract asks.
        unsafe { bpf_sk_release(sk.cast()) };
        if state != TCP_LISTEN {
            return (xdp_action::XDP_PASS, Stat::PassL7);
        }
    }
    let mut ip = [0u8; IPV4_HLEN];
    let mut tcp = [0u8; 20];
    if copy_in(ctx, ETH_HLEN, &mut ip, IPV4_HLEN).is_none() || copy_in(ctx, L4_OFF, &mut tcp, 20).is_none() {
        return (xdp_action::XDP_DROP, Stat::DropMalformedL4);
    }
    // SAFETY: stack copies of a full IPv4 header and a TCP header without options.
    let checked = unsafe {
        bpf_tcp_raw_check_syncookie_ipv4(ip.as_mut_ptr().cast::<iphdr>(), tcp.as_mut_ptr().cast::<tcphdr>())
    };
    if checked == 0 {
        (xdp_action::XDP_PASS, Stat::SynCookieValid)
    } else {
        (xdp_action::XDP_DROP, Stat::DropSynCookie)
    }
}
