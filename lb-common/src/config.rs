//! Data-plane settings lbd writes once per config: next hop, encapsulation sources.

/// Array of one [`DataplaneConfig`] at index 0.
pub const DATAPLANE_CONFIG_MAP: &str = "DATAPLANE_CONFIG";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Destination MAC of encapsulated packets (the router); all zero: not configured, so
    /// L4 VIP traffic is passed up instead of forwarded.
    pub next_hop_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// If non-zero, encapsulated packets are redirected to this ifindex instead of XDP_TX.
    pub redirect_ifindex: u32,
    /// IPv4 outer source: the top 16 bits of this (network order bytes) plus 16 bits of the
    /// flow hash, so backends' RSS spreads flows.
    pub encap_source_v4: [u8; 4],
    /// IPv6 outer source: the top 96 bits of this plus 32 bits of the flow hash.
    pub encap_source_v6: [u8; 16],
    /// Encapsulated packets longer than this (IP bytes, outer header included) are dropped
    /// and counted; 0 means no limit.
    pub max_encap_ip_len: u32,
    /// `CONFIG_F_*`: which lookups can be skipped because they would find nothing.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<DataplaneConfig>() == 40);

/// Some VIP listens on any port (a packet that misses the exact-port VIP looks again).
pub const CONFIG_F_ANY_PORT_VIPS: u32 = 1 << 0;
/// SYNs are limited per source prefix (lb_common::syn): without it, a SYN costs no lookup.
pub const CONFIG_F_SYN_LIMIT: u32 = 1 << 1;

crate::pod!(DataplaneConfig);
