//! Source-prefix deny lists, checked before anything else.

/// LPM trie over IPv4 source prefixes: key `Key<[u8; 4]>`, value `u32` (unused, 1).
pub const DENY_V4_MAP: &str = "DENY_V4";
/// LPM trie over IPv6 source prefixes: key `Key<[u8; 16]>`, value `u32` (unused, 1).
pub const DENY_V6_MAP: &str = "DENY_V6";
/// Capacity of each deny list.
pub const MAX_DENY_PREFIXES: u32 = 65536;
