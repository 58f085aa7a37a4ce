//! Deadlines, on timers that stay in tokio's timer wheel. A timer made per wait and dropped
//! after it is put into the wheel and taken out again, under the driver's lock, for every request
//! (3% of an HTTP/1.1 request's instructions for the route timeout alone). An `Alarm` kept and
//! set later than it was costs one compare-and-swap: the wheel moves the entry only when the old
//! deadline comes round. A connection keeps one for its life; a request's tries take a spare
//! one from their worker thread and give it back.
//!
//! A spare keeps its place in the wheel until its old deadline passes, and then wakes the task
//! that last waited on it once, for nothing. A thread keeps at most `KEPT`.
use std::{
    cell::RefCell,
    future::{Future, poll_fn},
    pin::Pin,
    task::{Context, Poll, Waker},
};

use tokio::{
    runtime::{self, Handle},
    time::{Instant, Sleep},
};

/// Spare alarms a thread keeps at most: a worker's requests in flight at once, in most hours.
const KEPT: usize = 256;

/// A timer polled only when it needs to be: the first time, once it has fired, and when the
/// task's waker is not the one it holds. A poll registers the waker anew (~120 instructions),
/// and a request's waits are each polled several times (its send, its yield, its read).
pub struct Alarm {
    sleep: Pin<Box<Sleep>>,
    waker: Option<Waker>,
}

impl Alarm {
    pub fn new(deadline: Instant) -> Alarm {
        Alarm { sleep: Box::pin(tokio::time::sleep_until(deadline)), waker: None }
    }

    /// Sets the alarm for `deadline`: cheap when that is later than it was set for.
    pub fn set(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline);
    }

    pub fn poll(&mut self, task: &mut Context<'_>) -> Poll<()> {
        if !self.sleep.is_elapsed() && self.waker.as_ref().is_some_and(|w| w.will_wake(task.waker())) {
            return Poll::Pending;
        }
        let polled = self.sleep.as_mut().poll(task);
        self.waker = polled.is_pending().then(|| task.waker().clone());
        polled
    }
}

/// A thread's spare alarms, with the runtime they belong to (a timer polled in another runtime
/// than its own would panic; a thread may run one runtime after another in tests).
struct Spares {
    runtime: Option<runtime::Id>,
    alarms: Vec<Alarm>,
}

thread_local! {
    static SPARE: RefCell<Spares> = const { RefCell::new(Spares { runtime: None, alarms: Vec::new() }) };
}

/// The deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// A spare alarm set for a deadline, given back to its thread's spares when dropped.
struct Spare {
    alarm: Option<Alarm>,
    runtime: runtime::Id,
}

impl Spare {
    fn take(deadline: Instant) -> Spare {
        let runtime = Handle::current().id();
        let spare = SPARE
            .try_with(|spare| {
                let mut spare = spare.borrow_mut();
                if spare.runtime != Some(runtime) {
                    spare.alarms.clear();
                    spare.runtime = Some(runtime);
                }
                spare.alarms.pop()
            })
            .ok()
            .flatten();
        let alarm = match spare {
            Some(mut alarm) => {
                alarm.set(deadline);
                alarm
            }
            None => Alarm::new(deadline),
        };
        Spare { alarm: Some(alarm), runtime }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        let Some(mut alarm) = self.alarm.take() else { return };
        alarm.waker = None;
        // A thread that is exiting has no spares left to keep it in.
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.runtime == Some(self.runtime) && spare.alarms.len() < KEPT {
                spare.alarms.push(alarm);
            }
        });
    }
}

/// `future`'s output, or `Elapsed` if `deadline` comes first (`tokio::time::timeout_at` on a
/// spare alarm). The future is polled first: an answer that is ready is taken even at the
/// deadline. It comes pinned where the caller made it: moved in here, a large future would be
/// copied.
pub async fn within<F: Future>(deadline: Instant, mut future: Pin<&mut F>) -> Result<F::Output, Elapsed> {
    let mut spare = Spare::take(deadline);
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match spare.alarm.as_mut() {
            Some(alarm) => alarm.poll(cx).map(|()| Err(Elapsed)),
            None => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::pin::pin;

    use super::*;

    fn spares() -> usize {
        SPARE.with_borrow(|s| s.alarms.len())
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_holds_when_its_timer_is_a_spare_set_earlier_or_later() {
        let start = Instant::now();
        // A fresh timer: the answer first, then the deadline first.
        assert_eq!(within(start + Duration::from_secs(5), pin!(async { 7 })).await, Ok(7));
        assert_eq!(spares(), 1, "the timer went back");
        let never = pin!(std::future::pending::<()>());
        assert_eq!(within(start + Duration::from_secs(2), never).await, Err(Elapsed));
        assert_eq!(
            Instant::now(),
            start + Duration::from_secs(2),
            "fired at its deadline, not the spare's old one"
        );
        // The spare is now set later than it was (the cheap way), then earlier.
        let at = Instant::now();
        let slow = pin!(tokio::time::sleep(Duration::from_secs(3)));
        assert_eq!(within(at + Duration::from_secs(10), slow).await, Ok(()));
        assert_eq!(Instant::now(), at + Duration::from_secs(3));
        let at = Instant::now();
        assert_eq!(
            within(at + Duration::from_secs(1), pin!(std::future::pending::<()>())).await,
            Err(Elapsed)
        );
        assert_eq!(Instant::now(), at + Duration::from_secs(1), "set earlier than its old deadline");
        assert_eq!(spares(), 1, "one timer served every wait");
    }

    #[tokio::test(start_paused = true)]
    async fn many_waits_at_once_keep_at_most_kept_spares() {
        let at = Instant::now() + Duration::from_secs(1);
        let waits = (0..KEPT + 10).map(|i| async move {
            within(at, pin!(tokio::time::sleep(Duration::from_millis(i as u64)))).await
        });
        let done = futures_util::future::join_all(waits).await;
        assert!(done.iter().all(Result::is_ok));
        assert_eq!(spares(), KEPT);
    }

    /// An alarm polled under one waker and then waited on under another wakes the second.
    #[tokio::test(start_paused = true)]
    async fn a_timer_is_polled_again_when_the_waker_changes() {
        let start = Instant::now();
        let mut alarm = Alarm::new(start + Duration::from_millis(50));
        let mut elsewhere = Context::from_waker(Waker::noop());
        assert!(alarm.poll(&mut elsewhere).is_pending());
        let fired = std::future::poll_fn(|task| alarm.poll(task));
        tokio::time::timeout(Duration::from_secs(1), fired).await.expect("the second waker was not woken");
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "woken at {:?}, not by the timer",
            start.elapsed()
        );
    }

    #[test]
    fn a_spare_of_an_ended_runtime_is_not_used_by_the_next() {
        for _ in 0..2 {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            runtime.block_on(async {
                let at = Instant::now() + Duration::from_millis(1);
                assert_eq!(within(at, pin!(std::future::pending::<()>())).await, Err(Elapsed));
            });
        }
    }
}
