//! Sluice's XDP programs: the edge balancer, and the backends' decapsulation.
#![no_std]
#![no_main]

mod balance;
mod conn;
mod decap;
mod encap;
mod icmp;
mod maps;
mod synproxy;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// The balancer: filter, pick a backend for L4 VIP traffic, encapsulate, send back out.
#[xdp]
pub fn sluice_balancer(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let (action, reason) = match balance::try_balance(&ctx) {
        Ok(outcome) => outcome,
        Err(reason) => (xdp_action::XDP_DROP, reason),
    };
    let verdict = balance::verdict_stat(action);
    if reason != verdict {
        balance::count(reason, bytes);
    }
    balance::count(verdict, bytes);
    action
}

/// The backends' half: strip an outer IPv4/IPv6 header addressed to this host and let the
/// inner packet up the stack (for kernels without ipip/ip6_tunnel).
#[xdp]
pub fn sluice_decap(ctx: XdpContext) -> u32 {
    decap::try_decap(&ctx)
}

/// Passes every packet. Attached to the peer of a veth whose other end does native XDP_TX or
/// redirect: veth delivers such frames only to a peer with an XDP program.
#[xdp]
pub fn sluice_pass(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
