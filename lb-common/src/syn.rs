//! SYN floods from one place: a rate limit on SYNs per source prefix (/24 for IPv4, /64 for
//! IPv6), checked by the balancer for every SYN to a VIP (L4 and L7 alike). One 8-byte value
//! per prefix in an LRU hash (a flood of spoofed prefixes evicts the least recent, and a prefix
//! that comes back starts with a full bucket), kept as GCRA's theoretical arrival time: a SYN
//! at `now` passes if `max(tat, now) - now <= burst_ns`, and then moves `tat` on by
//! `interval_ns`. The settings are a map of their own (not a field of `DataplaneConfig`) so the
//! pins of an older lbd are still adopted by a newer one.
//!
//! SYN floods from everywhere, to L7 VIPs with `syn_cookies`: XDP answers each SYN with a SYN
//! cookie of the kernel's own secret and lets only ACKs with a valid cookie (or of a socket
//! the host has) up the stack, to netfilter's SYNPROXY, which lbd sets up with the same MSS and
//! window scale as XDP's answers (below).
use crate::addr::{Addr, is_v4};

/// The MSS XDP's SYN cookie answers advertise over IPv4 (and SYNPROXY's rule names): a
/// 1500-byte MTU less 40 bytes of headers.
pub const SYN_COOKIE_MSS: u16 = 1460;
/// The same over IPv6 (60 bytes of headers).
pub const SYN_COOKIE_MSS6: u16 = 1440;
/// The window scale they advertise: Linux's for its default receive buffers (SYNPROXY passes
/// the listener's real window through scaled by this, so the two must agree).
pub const SYN_COOKIE_WSCALE: u8 = 7;

/// Array of one [`SynLimit`] at index 0.
pub const SYN_LIMIT_MAP: &str = "SYN_LIMIT";
/// LRU hash: source prefix ([`syn_prefix`]) -> theoretical arrival time (ns, coarse clock).
pub const SYN_BUCKETS_MAP: &str = "SYN_BUCKETS";
/// Prefixes tracked at once.
pub const SYN_BUCKETS: u32 = 1 << 16;

/// How many SYNs a source prefix may send.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynLimit {
    /// Nanoseconds between SYNs at the allowed rate (1e9 / rate); 0: no limit.
    pub interval_ns: u64,
    /// How far ahead of now a prefix's arrival time may run: (burst - 1) * interval.
    pub burst_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SynLimit>() == 16);

crate::pod!(SynLimit);

impl SynLimit {
    /// `rate` SYNs per second per prefix, `burst` at once (0 rate: off).
    pub const fn new(rate: u32, burst: u32) -> SynLimit {
        if rate == 0 {
            return SynLimit { interval_ns: 0, burst_ns: 0 };
        }
        let interval_ns = 1_000_000_000 / rate as u64;
        let burst = if burst == 0 { 1 } else { burst as u64 };
        SynLimit { interval_ns, burst_ns: (burst - 1) * interval_ns }
    }
}

/// The prefix a source's SYNs are counted under: its /24 (IPv4) or /64 (IPv6).
#[inline(always)]
pub fn syn_prefix(src: &Addr) -> Addr {
    let mut prefix = *src;
    if is_v4(src) {
        prefix[15] = 0;
    } else {
        let mut i = 8;
        while i < 16 {
            prefix[i] = 0;
            i += 1;
        }
    }
    prefix
}

/// GCRA: whether a SYN at `now` fits (and the arrival time to keep if it does).
#[inline(always)]
pub fn syn_admit(tat: u64, now: u64, limit: &SynLimit) -> Option<u64> {
    let tat = if tat > now { tat } else { now };
    if tat - now > limit.burst_ns { None } else { Some(tat + limit.interval_ns) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::mapped_v4;

    #[test]
    fn prefixes_are_the_source_s_24_and_64() {
        assert_eq!(syn_prefix(&mapped_v4([203, 0, 113, 77])), mapped_v4([203, 0, 113, 0]));
        let v6: Addr = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 2, 9, 9, 9, 9, 9, 9, 9, 9];
        assert_eq!(syn_prefix(&v6), [0x20, 1, 0xd, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_burst_then_the_rate() {
        // 10 per second, 5 at once.
        let limit = SynLimit::new(10, 5);
        let (mut tat, now) = (0, 1_000_000_000);
        let admitted = (0..20).filter(|_| match syn_admit(tat, now, &limit) {
            Some(next) => {
                tat = next;
                true
            }
            None => false,
        });
        assert_eq!(admitted.count(), 5, "the burst, all at one instant");
        // 100 ms later one more fits: the rate.
        assert!(syn_admit(tat, now + 100_000_000, &limit).is_some());
        assert!(syn_admit(tat, now + 50_000_000, &limit).is_none());
        assert_eq!(SynLimit::new(0, 9), SynLimit::default(), "rate 0: off");
    }
}
