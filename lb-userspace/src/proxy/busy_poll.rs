//! Busy polling: a worker that runs out of work keeps polling its sockets for a short while
//! (`[proxy] busy_poll_us`) before it sleeps, so a client's next packet finds it awake.
//!
//! Why: a worker asleep in `epoll_wait` is woken by the sender of the next packet, and on a
//! virtual machine that wake-up (an inter-processor interrupt) costs the sender's core more
//! than the packet itself. Measured with the client on the other core (`tls-handshake`, where
//! the client's core is the bottleneck): the client spent 68 µs of kernel time per handshake
//! against Sluice and 45 µs against nginx, whose core is busy anyway. HAProxy's
//! `busy-polling` answers the same; this one stops after the budget, so an idle worker sleeps.
//! The default budget (40 µs) catches a backend's answer or a client's next packet in a busy
//! exchange and costs a lightly loaded worker little.
//!
//! How: tokio calls `before_park` when the worker has no task left to run. While the budget
//! since the worker's last work has not run out, it wakes the worker's `spinner` task, and a
//! worker with a task to run polls its sockets without blocking instead of sleeping; the
//! spinner does nothing and the worker comes back here. Work is what `worked` counts: bytes
//! read from or written to a client (`idle::Watched`). A worker busy more than 90% of the last
//! 20 ms (polling counted as idle) polls 8 budgets: a nearly saturated worker has few idle
//! moments, and a core halted in one of them is what its tail latency is made of.
use std::{
    cell::{Cell, RefCell},
    future::Future,
    task::{Poll, Waker},
    time::{Duration, Instant},
};

/// A worker busy more than this share of a window (spinning counts as idle) is saturated.
const SATURATED: f64 = 0.9;
/// How often the busy share is taken.
const WINDOW: Duration = Duration::from_millis(20);
/// A saturated worker polls this many budgets: its idle moments are few, so polling through
/// them costs little, and a halted core is what its tail latency is made of (measured: TLS
/// keep-alive p99 2.8–3.0 ms with 25 µs, 1.1–1.3 ms with 100 µs, at equal throughput).
const SATURATED_FACTOR: u32 = 8;

/// One worker's spin state.
struct Spin {
    budget: Duration,
    /// `WORK` when the worker last ran out of work.
    seen: u64,
    /// Spin until then (the last work seen plus the budget).
    until: Instant,
    spinner: Option<Waker>,
    /// When the worker last came back from a park (a sleep, or one round of polling).
    unparked: Instant,
    /// When the current park began.
    parked: Instant,
    /// This window's start, and its busy and idle time so far.
    window: Instant,
    busy: Duration,
    idle: Duration,
    /// Whether the last window was busy more than `SATURATED`.
    saturated: bool,
}

thread_local! {
    static SPIN: RefCell<Option<Spin>> = const { RefCell::new(None) };
    /// Work done on this thread (client bytes moved), counted by `worked`.
    static WORK: Cell<u64> = const { Cell::new(0) };
}

/// Counts a piece of work on this thread (cheap: a thread-local add).
pub fn worked() {
    WORK.with(|work| work.set(work.get().wrapping_add(1)));
}

/// The work done on this thread so far (a count that only moves).
pub fn work() -> u64 {
    WORK.with(Cell::get)
}

/// The worker's `on_thread_park` hook: keeps it polling while the budget lasts.
pub fn before_park() {
    SPIN.with_borrow_mut(|spin| {
        let Some(spin) = spin else { return };
        let now = Instant::now();
        let work = work();
        let ran = now.saturating_duration_since(spin.unparked);
        let worked = work != spin.seen;
        match worked {
            true => spin.busy += ran,
            false => spin.idle += ran, // a round of polling with nothing to do
        }
        // A window's share; work that ran a whole window without a park is saturation by itself
        // (the window would otherwise reach back over the sleep before it).
        if now.saturating_duration_since(spin.window) >= WINDOW {
            let total = (spin.busy + spin.idle).as_secs_f64();
            spin.saturated =
                (worked && ran >= WINDOW) || (total > 0.0 && spin.busy.as_secs_f64() / total > SATURATED);
            (spin.window, spin.busy, spin.idle) = (now, Duration::ZERO, Duration::ZERO);
        }
        if worked {
            spin.seen = work;
            let budget = if spin.saturated { spin.budget * SATURATED_FACTOR } else { spin.budget };
            spin.until = now + budget;
        }
        spin.parked = now;
        if now < spin.until
            && let Some(spinner) = spin.spinner.take()
        {
            spinner.wake();
        }
    });
}

/// The worker's `on_thread_unpark` hook: the time parked (asleep, or one round of polling)
/// was idle.
pub fn after_unpark() {
    SPIN.with_borrow_mut(|spin| {
        let Some(spin) = spin else { return };
        let now = Instant::now();
        spin.idle += now.saturating_duration_since(spin.parked);
        spin.unparked = now;
    });
}

/// The task `before_park` wakes to keep its worker from sleeping, spinning for `budget` after
/// the worker's last work (`SATURATED_FACTOR` times that while the worker is saturated); never
/// finishes. Spawned once on each worker.
pub fn spinner(budget: Duration) -> impl Future<Output = ()> {
    std::future::poll_fn(move |cx| {
        SPIN.with_borrow_mut(|spin| {
            // A worker that starts has just worked: its first park spins too.
            let spin = spin.get_or_insert_with(|| {
                let now = Instant::now();
                Spin {
                    budget,
                    seen: work(),
                    until: now + budget,
                    spinner: None,
                    unparked: now,
                    parked: now,
                    window: now,
                    busy: Duration::ZERO,
                    idle: Duration::ZERO,
                    saturated: false,
                }
            });
            spin.spinner = Some(cx.waker().clone());
        });
        Poll::Pending
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU time this thread has used.
    fn thread_cpu() -> Duration {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `now` is a valid timespec for the call to fill; the clock id is a constant.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
        Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
    }

    /// CPU time a worker with `budget` uses in three 300 ms waits for a timer: after it
    /// starts, after a piece of work, and after none.
    fn cpu_while_waiting(budget: Duration) -> [Duration; 3] {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all();
        if !budget.is_zero() {
            builder.on_thread_park(before_park).on_thread_unpark(after_unpark);
        }
        let runtime = builder.build().unwrap();
        runtime.block_on(async move {
            if !budget.is_zero() {
                tokio::spawn(spinner(budget));
            }
            let mut used = [Duration::ZERO; 3];
            for (i, used) in used.iter_mut().enumerate() {
                if i == 1 {
                    worked();
                }
                let before = thread_cpu();
                tokio::time::sleep(Duration::from_millis(300)).await;
                *used = thread_cpu() - before;
            }
            used
        })
    }

    #[test]
    fn a_worker_spins_for_its_budget_after_work_then_sleeps() {
        let asleep = cpu_while_waiting(Duration::ZERO);
        assert!(asleep.iter().all(|u| *u < Duration::from_millis(15)), "no budget, yet used {asleep:?}");
        let [started, worked, idle] = cpu_while_waiting(Duration::from_millis(60));
        // About the budget, and no more: spinning on, the worker would use the whole 300 ms. A
        // busy machine (tests run side by side on two cores) may take much of the budget's time
        // away, so the floor only tells spinning (tens of ms) from sleeping (none).
        let about_budget =
            |used: Duration| used >= Duration::from_millis(15) && used <= Duration::from_millis(180);
        assert!(about_budget(started) && about_budget(worked), "spun {started:?} and {worked:?} of 300 ms");
        assert!(idle < Duration::from_millis(15), "no work, yet spun {idle:?}");
    }

    #[test]
    fn a_saturated_worker_spins_longer() {
        let budget = Duration::from_millis(10);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(before_park)
            .on_thread_unpark(after_unpark)
            .build()
            .unwrap();
        let spun = runtime.block_on(async move {
            tokio::spawn(spinner(budget));
            tokio::time::sleep(Duration::from_millis(100)).await; // the start's spin ends
            // 60 ms without a pause: pieces of work back to back.
            for _ in 0..60 {
                let piece = Instant::now();
                while piece.elapsed() < Duration::from_millis(1) {
                    std::hint::spin_loop();
                }
                worked();
                tokio::task::yield_now().await;
            }
            let before = thread_cpu();
            tokio::time::sleep(Duration::from_millis(300)).await;
            thread_cpu() - before
        });
        // SATURATED_FACTOR budgets (80 ms), not one (10 ms at most, however busy the machine)
        // and not the whole wait.
        assert!(spun >= budget * 2 && spun <= Duration::from_millis(200), "saturated, spun {spun:?}");
    }
}
