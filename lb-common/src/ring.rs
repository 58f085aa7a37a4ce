//! Maglev lookup tables, computed by lbd: the kernel only reads `ring[slot * RING_SIZE + h % RING_SIZE]`.
//!
//! Each VIP owns two slots (2 * index and 2 * index + 1). lbd writes a new generation into the
//! slot not in use, then flips [`crate::vip::VipMeta::ring_current`] with one map update, so a
//! packet never sees a half-written table; the other slot keeps the previous generation.

/// Array `u32` -> backend id ([`crate::backend::NO_BACKEND`] for none).
pub const RINGS_MAP: &str = "RINGS";
/// Entries per table: prime, as Maglev requires. Fixed: the flow -> bucket mapping depends on it.
pub const RING_SIZE: u32 = 65537;
/// Ring slots per VIP (current and previous generation).
pub const SLOTS_PER_VIP: u32 = 2;
/// Entries in [`RINGS_MAP`] for `max_vips` VIPs; lbd sizes the map at load time.
pub const fn ring_entries(max_vips: u32) -> u32 {
    max_vips * SLOTS_PER_VIP * RING_SIZE
}
