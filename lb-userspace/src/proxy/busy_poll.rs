//! Busy polling: a worker that runs out of work keeps polling its sockets for a short while
//! (`[proxy] busy_poll_us`) before it sleeps, so a client's next packet finds it awake.
//!
//! Why: a worker asleep in `epoll_wait` is woken by the sender of the next packet, and on a
//! virtual machine that wake-up (an inter-processor interrupt) costs the sender's core more
//! than the packet itself. Measured with the client on the other core (`tls-handshake`, where
//! the client's core is the bottleneck): the client spent 68 µs of kernel time per handshake
//! against Sluice and 45 µs against nginx, whose core is busy anyway. HAProxy's
//! `busy-polling` answers the same; this one stops after the budget, so an idle worker sleeps.
//! The default budget (25 µs) catches a backend's answer or a client's next packet in a busy
//! exchange and costs a lightly loaded worker little.
//!
//! How: tokio calls `before_park` when the worker has no task left to run. While the budget
//! since the worker's last work has not run out, it wakes the worker's `spinner` task, and a
//! worker with a task to run polls its sockets without blocking instead of sleeping; the
//! spinner does nothing and the worker comes back here. Work is what `worked` counts: bytes
//! read from or written to a client (`idle::Watched`).
use std::{
    cell::{Cell, RefCell},
    future::Future,
    task::{Poll, Waker},
    time::{Duration, Instant},
};

/// One worker's spin state.
struct Spin {
    budget: Duration,
    /// `WORK` when the worker last ran out of work.
    seen: u64,
    /// Spin until then (the last work seen plus the budget).
    until: Instant,
    spinner: Option<Waker>,
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

/// The worker's `on_thread_park` hook: keeps it polling while the budget lasts.
pub fn before_park() {
    SPIN.with_borrow_mut(|spin| {
        let Some(spin) = spin else { return };
        let now = Instant::now();
        let work = WORK.with(Cell::get);
        if work != spin.seen {
            spin.seen = work;
            spin.until = now + spin.budget;
        }
        if now < spin.until
            && let Some(spinner) = spin.spinner.take()
        {
            spinner.wake();
        }
    });
}

/// The task `before_park` wakes to keep its worker from sleeping, spinning for `budget` after
/// the worker's last work; never finishes. Spawned once on each worker.
pub fn spinner(budget: Duration) -> impl Future<Output = ()> {
    std::future::poll_fn(move |cx| {
        SPIN.with_borrow_mut(|spin| {
            // A worker that starts has just worked: its first park spins too.
            let spin = spin.get_or_insert_with(|| Spin {
                budget,
                seen: WORK.with(Cell::get),
                until: Instant::now() + budget,
                spinner: None,
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
            builder.on_thread_park(before_park);
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
        // About the budget (a busy VM may take some of that time away), and no more: spinning
        // on, the worker would use the whole 300 ms.
        let about_budget =
            |used: Duration| used >= Duration::from_millis(20) && used <= Duration::from_millis(180);
        assert!(about_budget(started) && about_budget(worked), "spun {started:?} and {worked:?} of 300 ms");
        assert!(idle < Duration::from_millis(15), "no work, yet spun {idle:?}");
    }
}
