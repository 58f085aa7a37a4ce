//! Per-CPU counters: global slots by [`Stat`], and per-VIP / per-backend [`TrafficCounter`]s.

/// Per-CPU array of [`Counter`] indexed by [`Stat`].
pub const STATS_MAP: &str = "STATS";
/// Per-CPU array of [`TrafficCounter`] indexed by VIP index.
pub const VIP_STATS_MAP: &str = "VIP_STATS";
/// Per-CPU array of [`TrafficCounter`] indexed by backend id.
pub const BACKEND_STATS_MAP: &str = "BACKEND_STATS";

/// One global slot: packets and bytes, summed over CPUs by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

/// Traffic of one VIP or one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounter {
    pub packets: u64,
    pub bytes: u64,
    /// Flows placed by the Maglev table (SYNs, and misses of the connection table).
    pub new_flows: u64,
    /// Packets whose backend came from the connection table.
    pub lru_hits: u64,
    /// Non-SYN packets that missed the connection table.
    pub lru_misses: u64,
}
const _: () = assert!(core::mem::size_of::<TrafficCounter>() == 40);

crate::pod!(Counter, TrafficCounter);

/// Defines a counter-slot enum with `ALL` (index order) and `name()` (CLI and metrics label).
macro_rules! slots {
    ($(#[doc = $edoc:literal])* enum $enum:ident { $($(#[doc = $doc:literal])* $variant:ident = $name:literal,)* }) => {
        $(#[doc = $edoc])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $enum {
            $($(#[doc = $doc])* $variant,)*
        }

        impl $enum {
            /// Every slot, in index order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant,)*];

            /// The name used in CLI output and metrics labels.
            pub const fn name(self) -> &'static str {
                match self {
                    $($enum::$variant => $name,)*
                }
            }
        }
    };
}

slots! {
/// Slots of [`STATS_MAP`]: verdicts, then what happened to packets and why drops happened.
enum Stat {
    /// Verdict: handed to the kernel stack.
    Pass = "pass",
    /// Verdict: dropped (one of the drop_* slots says why).
    Drop = "drop",
    /// Verdict: sent back out of the NIC (encapsulated, or an ICMP reply).
    Tx = "tx",
    /// Verdict: redirected to another interface.
    Redirect = "redirect",
    /// Passed: not IP (ARP, LLDP, ...).
    PassNotIp = "pass_not_ip",
    /// Passed: not addressed to an L4 VIP.
    PassNotVip = "pass_not_vip",
    /// Passed: addressed to an L7 VIP (lbd's proxy takes it).
    PassL7 = "pass_l7",
    /// Passed: an IP fragment to a VIP.
    PassFragment = "pass_fragment",
    /// Passed: a VIP packet while no next hop is configured.
    PassNoNextHop = "pass_no_next_hop",
    /// ICMP/ICMPv6 echo requests to a VIP answered in XDP.
    IcmpEchoReply = "icmp_echo_reply",
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" forwarded to the flow's backend.
    IcmpTooBigForwarded = "icmp_too_big_forwarded",
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" sent to a client whose packet would
    /// exceed the link once encapsulated.
    IcmpTooBigSent = "icmp_too_big_sent",
    /// Dropped: source in a deny list.
    DropDenied = "drop_denied",
    /// Dropped: truncated Ethernet or VLAN header.
    DropMalformedL2 = "drop_malformed_l2",
    /// Dropped: bad IPv4 header (truncated, IHL < 5, total length inconsistent).
    DropMalformedIpv4 = "drop_malformed_ipv4",
    /// Dropped: bad IPv6 header (truncated, payload length inconsistent, extension headers).
    DropMalformedIpv6 = "drop_malformed_ipv6",
    /// Dropped: truncated TCP/UDP/ICMP header.
    DropMalformedL4 = "drop_malformed_l4",
    /// Dropped: fragment to a VIP that drops fragments.
    DropFragment = "drop_fragment",
    /// Dropped: the VIP's pool has no backend.
    DropNoBackend = "drop_no_backend",
    /// Dropped: the encapsulated packet would exceed the link, and no ICMP error could be sent
    /// (VLAN-tagged, IPv4 without DF, or ICMP itself).
    DropTooBig = "drop_too_big",
    /// Dropped: an IPv6 VIP with an IPv4 backend, or a map that should exist did not.
    DropInternal = "drop_internal",
    /// Dropped: a SYN over its source prefix's rate (lb_common::syn). New slots go last, so an
    /// older lbd's pinned STATS (shorter) still serves every other slot.
    DropSynRate = "drop_syn_rate",
    /// Sent back out: a SYN to an L7 VIP with SYN cookies, answered with a cookie.
    SynCookieSent = "syn_cookie_sent",
    /// Passed: an ACK to an L7 VIP with SYN cookies that carries a valid cookie (no socket yet).
    SynCookieValid = "syn_cookie_valid",
    /// Dropped: an ACK to an L7 VIP with SYN cookies, of no socket and no valid cookie.
    DropSynCookie = "drop_syn_cookie",
}
}

/// Capacity of [`STATS_MAP`].
pub const STATS_ENTRIES: u32 = Stat::ALL.len() as u32;

/// Per-CPU array of [`Counter`] indexed by [`DecapStat`] (the backends' decap program).
pub const DECAP_STATS_MAP: &str = "DECAP_STATS";

slots! {
/// Slots of [`DECAP_STATS_MAP`].
enum DecapStat {
    /// Outer header stripped, inner packet passed up.
    Decapsulated = "decapsulated",
    /// Not IPIP/IP6IP6: passed untouched.
    Passed = "passed",
}
}

/// Capacity of [`DECAP_STATS_MAP`].
pub const DECAP_STATS_ENTRIES: u32 = DecapStat::ALL.len() as u32;
