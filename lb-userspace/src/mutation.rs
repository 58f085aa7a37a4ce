//! Seeded mutation, for the tests (unit and root) of what parses hostile input: a valid input
//! changed a few bytes at a time, the same cases on every run and machine.

/// xorshift64*: small, seeded, and the same sequence everywhere.
pub struct Rng(pub u64);

impl Rng {
    pub fn draw(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A draw in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.draw() % n as u64) as usize
    }
}

/// `seed` with one to four changes: a bit flipped, one of `spice` inserted, a range cut out,
/// the end cut off, or a range repeated.
pub fn mutate(rng: &mut Rng, seed: &[u8], spice: &[&[u8]]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(m.len() + 1);
        match rng.below(5) {
            0 if at < m.len() => m[at] ^= 1 << rng.below(8),
            1 => {
                let spice = spice[rng.below(spice.len())];
                m.splice(at..at, spice.iter().copied());
            }
            2 => {
                let end = (at + 1 + rng.below(8)).min(m.len());
                m.drain(at.min(end)..end);
            }
            3 => m.truncate(at),
            _ => {
                let end = (at + 1 + rng.below(24)).min(m.len());
                let piece = m[at.min(end)..end].to_vec();
                m.splice(at..at, piece);
            }
        }
    }
    m
}
