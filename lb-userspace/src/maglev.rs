//! Maglev consistent hashing with weights (Eisenbud et al., NSDI 2016, §3.4), computed here; the
//! XDP program only reads the table.
//!
//! Each backend's preference list is a permutation of the table's buckets, from two hashes of
//! its address: `offset = h(addr, OFFSET_SEED) % M`, `skip = h(addr, SKIP_SEED) % (M - 1) + 1`,
//! `bucket(j) = (offset + j * skip) % M` (M prime). Backends take turns claiming their next
//! free preferred bucket; with weights, a backend takes a turn each time its accumulated weight
//! reaches the largest weight, so its share of buckets is proportional to its weight. The
//! hash is MurmurHash3 of the 16-byte (IPv4-mapped) address, so every host computes the same
//! table from the same pool regardless of order, restarts or which host it is.
use lb_common::{addr::Addr, backend::NO_BACKEND, hash::murmur3_32};

const OFFSET_SEED: u32 = 0x6d61_676c; // "magl"
const SKIP_SEED: u32 = 0x6576_3231; // "ev21"

/// A backend as Maglev sees it: an address and a weight (0: no new flows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weighted {
    pub addr: Addr,
    pub weight: u32,
}

/// Builds a table of `size` buckets (prime). Entry = index into `backends`, or
/// [`NO_BACKEND`] everywhere when no backend has a weight.
pub fn table(backends: &[Weighted], size: u32) -> Vec<u32> {
    let m = size as u64;
    let mut entries = vec![NO_BACKEND; size as usize];
    // Sorted by address: the table does not depend on the order backends were listed in.
    let mut order: Vec<usize> = (0..backends.len()).filter(|&i| backends[i].weight > 0).collect();
    order.sort_by_key(|&i| backends[i].addr);
    let Some(max_weight) = order.iter().map(|&i| backends[i].weight as u64).max() else {
        return entries;
    };
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let addr = &backends[i].addr;
            let offset = murmur3_32(addr, OFFSET_SEED) as u64 % m;
            let skip = murmur3_32(addr, SKIP_SEED) as u64 % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut credit = vec![0u64; order.len()];
    let mut filled = 0u64;
    while filled < m {
        for (k, &i) in order.iter().enumerate() {
            credit[k] += backends[i].weight as u64;
            if credit[k] < max_weight {
                continue;
            }
            credit[k] -= max_weight;
            let (offset, skip) = perms[k];
            loop {
                let bucket = ((offset + next[k] * skip) % m) as usize;
                next[k] += 1;
                if entries[bucket] == NO_BACKEND {
                    entries[bucket] = i as u32;
                    break;
                }
            }
            filled += 1;
            if filled == m {
                break;
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use lb_common::{addr::mapped_v4, ring::RING_SIZE};

    use super::*;

    fn pool(n: u8, weight: u32) -> Vec<Weighted> {
        (1..=n).map(|i| Weighted { addr: mapped_v4([198, 18, 10, i]), weight }).collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for &e in table {
            counts[e as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / table.len() as f64).collect()
    }

    #[test]
    fn equal_weights_share_evenly() {
        let t = table(&pool(5, 1), RING_SIZE);
        for share in shares(&t, 5) {
            assert!((share - 0.2).abs() < 0.001, "{share}");
        }
    }

    #[test]
    fn weights_are_honoured() {
        let mut backends = pool(3, 100);
        backends[0].weight = 300;
        let s = shares(&table(&backends, RING_SIZE), 3);
        assert!((s[0] - 0.6).abs() < 0.01 && (s[1] - 0.2).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn zero_weight_gets_nothing_and_empty_pool_is_no_backend() {
        let mut backends = pool(3, 1);
        backends[1].weight = 0;
        assert!(!table(&backends, RING_SIZE).contains(&1));
        assert!(table(&[], RING_SIZE).iter().all(|&e| e == NO_BACKEND));
        assert!(table(&pool(2, 0), RING_SIZE).iter().all(|&e| e == NO_BACKEND));
    }

    #[test]
    fn listing_order_does_not_matter() {
        let a = pool(4, 1);
        let mut b = a.clone();
        b.reverse();
        let ta: Vec<Addr> = table(&a, RING_SIZE).iter().map(|&e| a[e as usize].addr).collect();
        let tb: Vec<Addr> = table(&b, RING_SIZE).iter().map(|&e| b[e as usize].addr).collect();
        assert_eq!(ta, tb);
    }

    #[test]
    fn removing_one_of_n_moves_only_about_its_share() {
        for n in [2u8, 3, 5, 10, 33] {
            let before = pool(n, 1);
            let after: Vec<Weighted> = before[1..].to_vec();
            let tb = table(&before, RING_SIZE);
            let ta = table(&after, RING_SIZE);
            let moved = tb
                .iter()
                .zip(&ta)
                .filter(|&(&b, &a)| before[b as usize].addr != after[a as usize].addr)
                .count();
            let fraction = moved as f64 / RING_SIZE as f64;
            let bound = 1.0 / n as f64 + 0.01;
            assert!(fraction <= bound, "n={n}: {fraction:.4} of buckets moved, bound {bound:.4}");
        }
    }

    #[test]
    fn golden_table() {
        // Pinned: a change here moves flows across restarts and between Sluice hosts.
        let backends = pool(3, 1);
        let t = table(&backends, RING_SIZE);
        let digest = murmur3_32(&t.iter().flat_map(|e| e.to_le_bytes()).collect::<Vec<u8>>(), 0);
        assert_eq!((&t[..8], digest), (&GOLDEN_HEAD[..], GOLDEN_DIGEST));
    }

    const GOLDEN_HEAD: [u32; 8] = [0, 1, 1, 0, 2, 0, 1, 2];
    const GOLDEN_DIGEST: u32 = 16224952;
}
