//! The coarse monotonic clock, for what needs milliseconds rather than nanoseconds.
//!
//! `CLOCK_MONOTONIC_COARSE` is the time of the last tick (a few ms of resolution), read from the
//! vDSO without a TSC read: several of these are taken per request (a connection's activity,
//! pooled connections' idle age, the retry budget's window), where the precise clock would cost
//! more than the work it times.

/// Milliseconds since an arbitrary start (the system's boot), a few ms behind the precise clock.
pub fn coarse_ms() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_follows_the_precise_one() {
        let (start, precise) = (coarse_ms(), std::time::Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (coarse, precise) = (coarse_ms() - start, precise.elapsed().as_millis() as u64);
        // A tick (up to 10 ms at HZ=100) either way.
        assert!(coarse + 10 >= precise && coarse <= precise + 10, "coarse {coarse} ms, precise {precise} ms");
    }
}
