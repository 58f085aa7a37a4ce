//! The flow hash: MurmurHash3 (x86, 32-bit) of the 40-byte [`FlowKey`] with a fixed seed.
//!
//! It picks the Maglev bucket and the outer source address. It is part of the on-wire
//! contract between Sluice hosts behind one ECMP group: never change it without a new
//! version, and the golden tests pin it.
use crate::flow::FlowKey;

/// Seed of [`flow_hash`] (version 1).
pub const FLOW_HASH_SEED: u32 = 0x5151_1ce5;

#[inline(always)]
fn mix(h: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3 x86_32 of `data` (any length).
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let (words, tail) = data.as_chunks::<4>();
    for word in words {
        h = mix(h, u32::from_le_bytes(*word));
    }
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= (*b as u32) << (8 * i);
        }
        h ^= k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    }
    finish(h, data.len() as u32)
}

/// The flow hash: MurmurHash3 x86_32 of the key's 40 bytes with [`FLOW_HASH_SEED`].
/// Written word by word so the BPF verifier sees straight-line code.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = FLOW_HASH_SEED;
    let mut i = 0;
    while i < 16 {
        h = mix(h, u32::from_le_bytes([key.src[i], key.src[i + 1], key.src[i + 2], key.src[i + 3]]));
        i += 4;
    }
    i = 0;
    while i < 16 {
        h = mix(h, u32::from_le_bytes([key.dst[i], key.dst[i + 1], key.dst[i + 2], key.dst[i + 3]]));
        i += 4;
    }
    let sport = key.sport.to_ne_bytes();
    let dport = key.dport.to_ne_bytes();
    h = mix(h, u32::from_le_bytes([sport[0], sport[1], dport[0], dport[1]]));
    h = mix(h, u32::from_le_bytes([key.proto, key._pad[0], key._pad[1], key._pad[2]]));
    finish(h, 40)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::mapped_v4;

    #[test]
    fn murmur3_matches_reference_vectors() {
        // Published MurmurHash3_x86_32 test vectors.
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"hello", 0), 0x248b_fa47);
        assert_eq!(murmur3_32(b"The quick brown fox jumps over the lazy dog", 0), 0x2e4f_f723);
    }

    fn key() -> FlowKey {
        FlowKey {
            src: mapped_v4([198, 18, 0, 2]),
            dst: mapped_v4([198, 19, 0, 1]),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        }
    }

    fn key_bytes(k: &FlowKey) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..16].copy_from_slice(&k.src);
        out[16..32].copy_from_slice(&k.dst);
        out[32..34].copy_from_slice(&k.sport.to_ne_bytes());
        out[34..36].copy_from_slice(&k.dport.to_ne_bytes());
        out[36] = k.proto;
        out
    }

    #[test]
    fn flow_hash_is_murmur3_of_the_key_bytes() {
        let k = key();
        assert_eq!(flow_hash(&k), murmur3_32(&key_bytes(&k), FLOW_HASH_SEED));
    }

    #[test]
    fn flow_hash_golden_values() {
        // Pinned: changing these breaks flow placement across restarts and hosts.
        assert_eq!(flow_hash(&key()), GOLDEN_V4);
        let mut v6 = key();
        v6.src = [0xfd, 0, 0, 0x5e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        v6.dst = [0xfd, 0, 0, 0x5e, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        v6.proto = 17;
        assert_eq!(flow_hash(&v6), GOLDEN_V6);
    }

    const GOLDEN_V4: u32 = 1596333037;
    const GOLDEN_V6: u32 = 159052561;
}
