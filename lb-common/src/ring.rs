//! Maglev lookup tables, computed by lbd: the kernel only reads bucket `h % RING_SIZE` of a slot.
//!
//! Each VIP owns two slots (2 * index and 2 * index + 1). lbd writes a new generation into the
//! slot not in use, then flips [`crate::vip::VipMeta::ring_current`] with one map update, so a
//! packet never sees a half-written table; the other slot keeps the previous generation.

/// Array of [`RingChunk`]: bucket `b` of slot `s` is lane `b % RING_LANES` of chunk
/// `s * RING_CHUNKS + b / RING_LANES`. Backend ids are 16 bits (4 to an 8-byte array element,
/// the kernel's element size), a quarter of the memory one id per element would take: 268 MB
/// instead of 1 GB for 1024 VIPs.
pub const RINGS_MAP: &str = "RINGS";
/// Buckets per table: prime, as Maglev requires. Fixed: the flow -> bucket mapping depends on it.
pub const RING_SIZE: u32 = 65537;
/// Buckets per array element.
pub const RING_LANES: u32 = 4;
/// Array elements per table (the last one partly used).
pub const RING_CHUNKS: u32 = RING_SIZE.div_ceil(RING_LANES);
/// One array element: four buckets' backend ids, [`RING_NONE`] for none.
pub type RingChunk = [u16; RING_LANES as usize];
/// A bucket with no backend (an empty pool).
pub const RING_NONE: u16 = u16::MAX;
const _: () = assert!(crate::backend::MAX_BACKENDS < RING_NONE as u32);
/// Ring slots per VIP (current and previous generation).
pub const SLOTS_PER_VIP: u32 = 2;
/// Where bucket `bucket` of ring `slot` lives: the array element and the lane in it (the
/// kernel's lookup and lbd's writer both place buckets with this).
#[inline(always)]
pub const fn ring_place(slot: u32, bucket: u32) -> (u32, u32) {
    (slot.wrapping_mul(RING_CHUNKS).wrapping_add(bucket / RING_LANES), bucket % RING_LANES)
}
/// Elements in [`RINGS_MAP`] for `max_vips` VIPs; lbd sizes the map at load time.
pub const fn ring_entries(max_vips: u32) -> u32 {
    max_vips * SLOTS_PER_VIP * RING_CHUNKS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_placed_in_order_and_inside_the_map() {
        assert_eq!(ring_place(0, 0), (0, 0));
        assert_eq!(ring_place(0, 5), (1, 1));
        assert_eq!(ring_place(1, 0), (RING_CHUNKS, 0));
        // The last bucket of the last slot is the map's last element.
        let max_vips = 1024;
        let last = ring_place(max_vips * SLOTS_PER_VIP - 1, RING_SIZE - 1);
        assert_eq!(last, (ring_entries(max_vips) - 1, (RING_SIZE - 1) % RING_LANES));
    }
}
