//! Per-CPU counters: which slot counts what, and the counter value itself.

/// Name of the per-CPU array of [`Counter`] indexed by [`Stat`].
pub const STATS_MAP: &str = "STATS";

/// One counter slot: packets and bytes, summed over CPUs by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}

/// Slots of [`STATS_MAP`]: one per XDP verdict.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Packets handed to the kernel stack untouched.
    Pass = 0,
    /// Packets dropped (see the drop-reason counters for why).
    Drop = 1,
    /// Packets encapsulated and sent back out of the NIC.
    Tx = 2,
    /// Packets encapsulated and redirected to another interface.
    Redirect = 3,
}

impl Stat {
    /// Every slot, in index order.
    pub const ALL: [Stat; 4] = [Stat::Pass, Stat::Drop, Stat::Tx, Stat::Redirect];

    /// The name used in CLI output and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Pass => "pass",
            Stat::Drop => "drop",
            Stat::Tx => "tx",
            Stat::Redirect => "redirect",
        }
    }
}

/// Capacity of [`STATS_MAP`].
pub const STATS_ENTRIES: u32 = Stat::ALL.len() as u32;
