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

/// Threads on which a panic happened since [`record_panics`]: a test whose runtime runs the
/// tasks under test on its own thread finds a panic in any of them by its thread's id.
static PANICKED: std::sync::Mutex<Vec<std::thread::ThreadId>> = std::sync::Mutex::new(Vec::new());

/// Notes every panic's thread from now on (once per process; earlier hooks still run).
pub fn record_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.lock().unwrap_or_else(|e| e.into_inner()).push(std::thread::current().id());
            previous(info);
        }));
    });
}

/// Whether a panic happened on this thread since [`record_panics`].
pub fn panicked_here() -> bool {
    PANICKED.lock().unwrap_or_else(|e| e.into_inner()).contains(&std::thread::current().id())
}
