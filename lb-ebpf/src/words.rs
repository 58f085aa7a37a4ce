//! Comparing keys held as 64-bit words.

/// Whether `a` and `b` are equal. An OR of XORs rather than a chain of comparisons, which the
/// compiler would turn into a call of a byte-wise bcmp subprogram.
#[inline(always)]
pub fn same<const N: usize>(a: &[u64; N], b: &[u64; N]) -> bool {
    let mut diff = 0;
    let mut i = 0;
    while i < N {
        diff |= a[i] ^ b[i];
        i += 1;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_compares_every_word() {
        assert!(same(&[1, 2, 3], &[1, 2, 3]));
        for i in 0..3 {
            let mut b = [1, 2, 3];
            b[i] ^= 1 << 63;
            assert!(!same(&[1, 2, 3], &b), "word {i}");
        }
    }
}
