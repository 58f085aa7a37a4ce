//! VIPs: (address, port, protocol) -> index and flags. Written by lbd, read per packet.
use crate::addr::Addr;

/// Hash map [`VipKey`] -> [`VipMeta`].
pub const VIPS_MAP: &str = "VIPS";
/// Hash map [`crate::addr::Addr`] -> `u32` (flags): every address that has a VIP, for ICMP.
pub const VIP_ADDRS_MAP: &str = "VIP_ADDRS";
/// The most VIPs lbd configures (also the size of the per-VIP counter array).
pub const MAX_VIPS: u32 = 1024;

/// Port 0 in a key means "every port" of that address and protocol; exact ports win.
pub const ANY_PORT: u16 = 0;

/// A VIP: address (IPv4-mapped for IPv4), port and IP protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: Addr,
    /// Network byte order; [`ANY_PORT`] for an any-port VIP.
    pub port: u16,
    /// IPPROTO_TCP (6) or IPPROTO_UDP (17).
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

/// What the data path needs to know about a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into per-VIP counters; unique per VIP.
    pub index: u32,
    /// `VIP_F_*` bits.
    pub flags: u32,
    /// Ring slot of the current Maglev generation (see [`crate::ring`]).
    pub ring_current: u32,
    /// Ring slot of the previous generation, used for non-SYN flows missing the connection
    /// table until `previous_until_ns`.
    pub ring_previous: u32,
    /// CLOCK_MONOTONIC ns (bpf_ktime_get_ns) until which the previous generation is consulted.
    pub previous_until_ns: u64,
}
const _: () = assert!(core::mem::size_of::<VipMeta>() == 24);

/// The VIP is terminated by lbd's L7 proxy: XDP passes its traffic to the kernel stack.
pub const VIP_F_L7: u32 = 1 << 0;
/// Drop IP fragments addressed to this VIP (default: count and pass them up).
pub const VIP_F_DROP_FRAGMENTS: u32 = 1 << 1;

crate::pod!(VipKey, VipMeta);
