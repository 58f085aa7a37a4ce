//! Source-prefix deny lists, checked before anything else, and the filter in front of them.
//!
//! An LPM trie lookup is a helper call that walks the trie (~8 ns here). Most sources match no
//! prefix, so the program first tests one bit of [`DENY_FILTER_MAP`]: the bit of the source's
//! block, set when some deny prefix overlaps that block. A clear bit means no prefix can match;
//! a set bit sends the packet on to the trie. The blocks are IPv4 /16s (the top 16 bits) and
//! IPv6 address bits 16..32 (the top 16 bits are the same for most of the Internet: 2001::/16,
//! 2a00::/12), 65,536 of each.

use crate::addr::{Addr, is_v4};

/// LPM trie over IPv4 source prefixes: key `Key<[u8; 4]>`, value `u32` (unused, 1).
pub const DENY_V4_MAP: &str = "DENY_V4";
/// LPM trie over IPv6 source prefixes: key `Key<[u8; 16]>`, value `u32` (unused, 1).
pub const DENY_V6_MAP: &str = "DENY_V6";
/// Capacity of each deny list.
pub const MAX_DENY_PREFIXES: u32 = 65536;

/// Array of `u64`: bit `b % 64` of element `b / 64` is set if a deny prefix overlaps block `b`.
pub const DENY_FILTER_MAP: &str = "DENY_FILTER";
/// Blocks per address family.
const FAMILY_BLOCKS: u32 = 1 << 16;
/// Elements of [`DENY_FILTER_MAP`] (16 KB: IPv4 blocks, then IPv6 blocks).
pub const DENY_FILTER_WORDS: u32 = 2 * FAMILY_BLOCKS / 64;

/// The block of a source address (IPv4-mapped for IPv4).
#[inline(always)]
pub fn filter_block(src: &Addr) -> u32 {
    if is_v4(src) {
        u16::from_be_bytes([src[12], src[13]]) as u32
    } else {
        FAMILY_BLOCKS + u16::from_be_bytes([src[2], src[3]]) as u32
    }
}

/// The blocks prefix `network`/`len` overlaps: `len` counts bits of the family's own address
/// (at most 32 for IPv4, 128 for IPv6); `network` is IPv4-mapped for IPv4.
pub fn filter_blocks(network: &Addr, len: u32) -> core::ops::Range<u32> {
    // Bits of the block number the prefix fixes: IPv4 blocks start at bit 0, IPv6 at bit 16.
    let fixed = if is_v4(network) { len.min(16) } else { len.saturating_sub(16).min(16) };
    let first = filter_block(network) & !((1u32 << (16 - fixed)) - 1);
    first..first + (1 << (16 - fixed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::mapped_v4;

    fn v6(text: [u16; 8]) -> Addr {
        let mut a = [0; 16];
        for (i, part) in text.iter().enumerate() {
            a[2 * i..2 * i + 2].copy_from_slice(&part.to_be_bytes());
        }
        a
    }

    #[test]
    fn ipv4_blocks_are_slash_16s() {
        assert_eq!(filter_block(&mapped_v4([203, 0, 113, 9])), 203 << 8);
        assert_eq!(filter_blocks(&mapped_v4([203, 0, 113, 0]), 24), (203 << 8)..(203 << 8) + 1);
        assert_eq!(filter_blocks(&mapped_v4([203, 0, 0, 0]), 16), (203 << 8)..(203 << 8) + 1);
        assert_eq!(filter_blocks(&mapped_v4([10, 0, 0, 0]), 8), (10 << 8)..(11 << 8));
        assert_eq!(filter_blocks(&mapped_v4([0, 0, 0, 0]), 0), 0..FAMILY_BLOCKS);
    }

    #[test]
    fn ipv6_blocks_are_bits_16_to_32() {
        let b = FAMILY_BLOCKS;
        assert_eq!(filter_block(&v6([0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 1])), b + 0xdb8);
        assert_eq!(filter_blocks(&v6([0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 0]), 48), b + 0xdb8..b + 0xdb9);
        assert_eq!(filter_blocks(&v6([0x2001, 0xd00, 0, 0, 0, 0, 0, 0]), 24), b + 0xd00..b + 0xe00);
        assert_eq!(filter_blocks(&v6([0x2000, 0, 0, 0, 0, 0, 0, 0]), 3), b..2 * b);
    }

    #[test]
    fn every_source_of_a_prefix_is_in_its_blocks() {
        let prefixes = [
            (mapped_v4([198, 18, 0, 0]), 15),
            (mapped_v4([100, 64, 0, 0]), 10),
            (mapped_v4([192, 0, 2, 128]), 25),
            (v6([0xfd00, 0x5e, 0, 0, 0, 0, 0, 0]), 64),
            (v6([0x2a00, 0x1450, 0, 0, 0, 0, 0, 0]), 20),
        ];
        for (network, len) in prefixes {
            let blocks = filter_blocks(&network, len);
            let (bits, offset) = if is_v4(&network) { (32, 96) } else { (128, 0) };
            // Sources at the prefix's two ends and in between.
            for fill in [0u8, 0x5a, 0xff] {
                let mut src = network;
                for bit in (offset + len as usize)..(offset + bits) {
                    let (byte, shift) = (bit / 8, 7 - bit % 8);
                    src[byte] = (src[byte] & !(1 << shift)) | (fill & (1 << shift));
                }
                assert!(blocks.contains(&filter_block(&src)), "{src:?} in {network:?}/{len}");
            }
        }
    }
}
