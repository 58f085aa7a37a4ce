//! Sluice's XDP programs: the edge balancer.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_common::stats::{Counter, STATS_ENTRIES, Stat};

/// Per-CPU packets/bytes per [`Stat`] slot; written here, summed by userspace.
#[map(name = "STATS")]
static STATS: PerCpuArray<Counter> = PerCpuArray::pinned(STATS_ENTRIES, 0);

#[xdp]
pub fn sluice_balancer(ctx: XdpContext) -> u32 {
    count(Stat::Pass, ctx.data_end() - ctx.data());
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count(stat: Stat, bytes: usize) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes as u64;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
