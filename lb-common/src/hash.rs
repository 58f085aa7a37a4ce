//! Hashes: the flow hash of a [`FlowKey`], and MurmurHash3 (x86, 32-bit) for everything else
//! (Maglev's preference lists, the L7 proxy's choices).
//!
//! The flow hash picks the Maglev bucket, the connection-table set and the outer source
//! address. It is part of the on-wire contract between Sluice hosts behind one ECMP group:
//! never change it without a new version, and the golden tests pin it.
use crate::flow::FlowKey;

/// Seed of [`flow_hash`] (version 2).
pub const FLOW_HASH_SEED: u64 = 0x5151_1ce5;
/// Multiplier of [`flow_hash`]'s fold (2^64 / golden ratio, odd).
const FOLD: u64 = 0x9e37_79b9_7f4a_7c15;

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

/// The flow hash, version 2: [`fold`] of the key's five words, low 32 bits. It runs on every
/// packet: five multiplies in a chain where MurmurHash3 x86_32 (version 1) had ten rounds of
/// four steps, ~25 ns less per packet here.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    fold(key.words()) as u32
}

/// Little-endian 64-bit words folded into `h = (h ^ word) * FOLD` from [`FLOW_HASH_SEED`],
/// then MurmurHash3's 64-bit finalizer (fmix64). Also hashes VIPs (crate::vip).
#[inline(always)]
pub fn fold<const N: usize>(words: &[u64; N]) -> u64 {
    let mut h = FLOW_HASH_SEED;
    let mut i = 0;
    while i < N {
        h = (h ^ u64::from_le(words[i])).wrapping_mul(FOLD);
        i += 1;
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
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

    /// Version 2 spelled out over the key's bytes, as another implementation would read it.
    fn reference(bytes: &[u8; 40]) -> u32 {
        let mut h = FLOW_HASH_SEED;
        for word in bytes.chunks(8) {
            h = (h ^ u64::from_le_bytes(word.try_into().unwrap())).wrapping_mul(FOLD);
        }
        for m in [0xff51_afd7_ed55_8ccd_u64, 0xc4ce_b9fe_1a85_ec53] {
            h ^= h >> 33;
            h = h.wrapping_mul(m);
        }
        (h ^ (h >> 33)) as u32
    }

    #[test]
    fn flow_hash_is_the_spelled_out_version_of_the_key_bytes() {
        let mut k = key();
        assert_eq!(flow_hash(&k), reference(&key_bytes(&k)));
        k.dport = 443u16.to_be();
        k.proto = 17;
        assert_eq!(flow_hash(&k), reference(&key_bytes(&k)));
    }

    /// Flows that differ in one client port or address spread evenly over Maglev buckets and
    /// connection-table sets (each bit of the key reaches the low bits).
    #[test]
    fn flow_hash_spreads_neighbouring_flows() {
        const FLOWS: u32 = 655_370;
        let mut buckets = [0u32; 65537];
        let mut sets = [0u32; 1 << 10];
        for i in 0..FLOWS {
            let mut k = key();
            k.src = mapped_v4([198, 18, (i >> 16) as u8, (i >> 8) as u8]);
            k.sport = (i as u16 & 0xff).to_be();
            let h = flow_hash(&k);
            buckets[(h % 65537) as usize] += 1;
            sets[(h & 1023) as usize] += 1;
        }
        // Mean 10 per bucket: a uniform hash puts none above 35 (p < 1e-6 overall); sets
        // within 5 standard deviations (sqrt(640) = 25) of their mean.
        assert!(buckets.iter().all(|&n| n <= 35), "max {}", buckets.iter().max().unwrap());
        let mean = FLOWS / 1024;
        assert!(
            sets.iter().all(|&n| n.abs_diff(mean) < mean / 5),
            "min {} max {}",
            sets.iter().min().unwrap(),
            sets.iter().max().unwrap()
        );
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

    const GOLDEN_V4: u32 = 1804055440;
    const GOLDEN_V6: u32 = 649033972;
}
