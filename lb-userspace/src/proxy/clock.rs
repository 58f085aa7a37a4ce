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

    /// The precise monotonic clock in the same unit.
    fn precise_ms() -> u64 {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `now` is a valid timespec for the call to fill; the clock id is a constant.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
    }

    #[test]
    fn the_coarse_clock_follows_the_precise_one() {
        // Each coarse reading is bracketed by precise ones: it is never ahead of the precise clock
        // (it is the precise clock's value at the last tick) and behind it by a tick or so. The
        // bound on the lag is wide, as a loaded machine may preempt the thread between readings
        // (CI once saw 12 ms); a wrong clock or a wrong unit would miss it by far.
        for _ in 0..5 {
            let before = precise_ms();
            let coarse = coarse_ms();
            let after = precise_ms();
            assert!(
                coarse <= after && coarse + 1000 >= before,
                "coarse {coarse} ms outside [{before} - 1 s, {after}]"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
