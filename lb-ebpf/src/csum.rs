//! Internet checksums (RFC 1071) and incremental updates (RFC 1624).

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum of a 20-byte IPv4 header given as five big-endian words (its checksum field must
/// be zero).
#[inline(always)]
pub fn ipv4_header(header: &[u32; 5]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 5 {
        sum += (header[i] >> 16) + (header[i] & 0xffff);
        i += 1;
    }
    !fold(sum)
}

/// RFC 1624 eqn. 3: the new checksum when one 16-bit word of the data changes `old` -> `new`.
/// All values in host order of the big-endian words.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(header: &[u8; 20]) -> [u32; 5] {
        core::array::from_fn(|i| {
            u32::from_be_bytes([header[4 * i], header[4 * i + 1], header[4 * i + 2], header[4 * i + 3]])
        })
    }

    #[test]
    fn ipv4_header_checksum_matches_a_known_header() {
        // Wikipedia's IPv4 header checksum example: expected 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01,
            0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&words(&header)), 0xb861);
    }

    #[test]
    fn incremental_update_equals_recompute() {
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01,
            0xc0, 0xa8, 0x00, 0xc7,
        ];
        let before = ipv4_header(&words(&header));
        header[8] = 0x3f; // TTL 64 -> 63
        let after = ipv4_header(&words(&header));
        assert_eq!(replace16(before, 0x4011, 0x3f11), after);
    }
}
