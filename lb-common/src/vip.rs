//! VIPs: (address, port, protocol) -> index and flags. Written by lbd, read per packet.
//!
//! The VIP table is a set-associative array, as the connection table is (crate::flow): a VIP's
//! [`fold`] hash picks one of [`VIP_BUCKETS`] buckets of [`VIP_WAYS`] slots; a bucket's first
//! cache line holds its slots' tags and meta copies, so a packet to no VIP reads one line. A
//! slot's [`VipMeta`] lives in [`VIP_METAS_MAP`] in two copies per VIP index: lbd writes the
//! spare copy, then points the slot at it with one aligned 4-byte store, so a packet sees the
//! old meta or the new one whole (ring flips stay atomic, as with a hash-map update). lbd
//! publishes a new slot by writing its tag last and retires one by clearing its tag first.
use crate::{addr::Addr, hash::fold};

/// Array of [`VipBucket`], bucket `b` at index `b`.
pub const VIP_TABLE_MAP: &str = "VIP_TABLE";
/// Array of [`VipMeta`]: copy `c` of VIP index `i` at `2 * i + c`.
pub const VIP_METAS_MAP: &str = "VIP_METAS";
/// Buckets in the VIP table (a power of two; 1024 VIPs average half a VIP per bucket).
pub const VIP_BUCKETS: u32 = 2048;
/// Slots per bucket (lbd refuses a ninth VIP in one bucket: ~1e-9 likely per bucket).
pub const VIP_WAYS: usize = 8;

/// One bucket: tags (0: free slot; else the hash's high 32 bits with bit 0 set), the index into
/// [`VIP_METAS_MAP`] of each slot's current meta, and each slot's key words ([`vip_words`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipBucket {
    pub tags: [u32; VIP_WAYS],
    pub metas: [u32; VIP_WAYS],
    pub keys: [[u64; 3]; VIP_WAYS],
}
const _: () = assert!(core::mem::size_of::<VipBucket>() == 256);

/// What a VIP is matched and hashed on: its address as two words (as in a FlowKey), then
/// the port (network order, as stored) and protocol as they sit in a FlowKey's last word.
#[inline(always)]
pub const fn vip_words(addr: [u64; 2], port: u16, proto: u8) -> [u64; 3] {
    [addr[0], addr[1], ((port as u64) << 16) | ((proto as u64) << 32)]
}

/// The bucket and tag of a VIP's words.
#[inline(always)]
pub fn vip_place(words: &[u64; 3]) -> (u32, u32) {
    let h = fold(words);
    ((h as u32) & (VIP_BUCKETS - 1), ((h >> 32) as u32) | 1)
}
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
    /// CLOCK_MONOTONIC ns until which the previous generation is consulted. The program reads
    /// the clock at tick resolution (bpf_ktime_get_coarse_ns: a few loads, where
    /// bpf_ktime_get_ns reads the clock source, ~35 ns per LRU miss on this VM's kvm-clock).
    pub previous_until_ns: u64,
}
const _: () = assert!(core::mem::size_of::<VipMeta>() == 24);

/// The VIP is terminated by lbd's L7 proxy: XDP passes its traffic to the kernel stack.
pub const VIP_F_L7: u32 = 1 << 0;
/// Drop IP fragments addressed to this VIP (default: count and pass them up).
pub const VIP_F_DROP_FRAGMENTS: u32 = 1 << 1;
/// An L7 VIP whose SYNs XDP answers with SYN cookies (lb_common::syn).
pub const VIP_F_SYN_COOKIES: u32 = 1 << 2;

impl VipKey {
    /// The key's [`vip_words`].
    pub fn words(&self) -> [u64; 3] {
        let half = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&self.addr[i..i + 8]);
            u64::from_le_bytes(b)
        };
        vip_words([half(0), half(8)], self.port, self.proto)
    }

    /// The key of [`vip_words`].
    pub fn from_words(words: &[u64; 3]) -> VipKey {
        let mut addr = [0u8; 16];
        addr[..8].copy_from_slice(&words[0].to_le_bytes());
        addr[8..].copy_from_slice(&words[1].to_le_bytes());
        VipKey { addr, port: (words[2] >> 16) as u16, proto: (words[2] >> 32) as u8, _pad: 0 }
    }
}

crate::pod!(VipKey, VipMeta, VipBucket);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{addr::mapped_v4, flow::FlowKey};

    #[test]
    fn vip_words_are_the_flow_key_words_of_its_packets() {
        let vip = VipKey { addr: mapped_v4([198, 19, 0, 1]), port: 443u16.to_be(), proto: 6, _pad: 0 };
        let flow = FlowKey {
            src: mapped_v4([198, 18, 0, 2]),
            dst: vip.addr,
            sport: 40000u16.to_be(),
            dport: vip.port,
            proto: 6,
            _pad: [0; 3],
        };
        let w = flow.words();
        assert_eq!(vip.words(), vip_words([w[2], w[3]], flow.dport, flow.proto));
        assert_eq!(VipKey::from_words(&vip.words()), vip);
        let (bucket, tag) = vip_place(&vip.words());
        assert!(bucket < VIP_BUCKETS && tag & 1 == 1);
    }
}
