//! One turn of the worker's queue: a task puts a write off until the other tasks already
//! queued (woken by the same readiness) have run, so their writes go out back to back.
//!
//! A worker is one thread running its tasks in turn. Without the turn, each task reads, works
//! and writes before the next one reads; with it, the worker reads and works for every ready
//! connection first and then writes for all of them (HAProxy's loop: receive everything, then
//! process and send). A peer (wrk, h2load, a backend) that sleeps between packets is woken
//! once for several answers instead of once for each, and waking a sleeping core is what the
//! sender pays most for on a virtual machine (docs/performance.md).
use std::{
    future::Future,
    task::{Context, Poll},
};

/// One turn to wait, for a future written by hand (`one_turn` is the `async` form): its poll is
/// pending after waking the task, ready the next time, and then starts over.
#[derive(Default)]
pub struct Turn {
    waiting: bool,
}

impl Turn {
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.waiting {
            self.waiting = false;
            return Poll::Ready(());
        }
        self.waiting = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Whether a turn has started and not yet ended.
    pub fn waiting(&self) -> bool {
        self.waiting
    }
}

/// Resolves on its second poll, after waking its task: the task goes to the back of the
/// worker's queue. (tokio's `yield_now` waits instead for the worker's next look at its
/// sockets, letting new readiness in between: better before a request goes to a backend
/// (h1/upstream.rs), worse before an answer goes to a client: 90.4-91.2k against 93.1-94.9k
/// req/s, and for an answer measured no gain at all in an earlier session.)
pub fn one_turn() -> impl Future<Output = ()> {
    let mut turn = Turn::default();
    std::future::poll_fn(move |cx: &mut Context<'_>| turn.poll(cx))
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn tasks_queued_before_run_before_the_turn_ends() {
        let order = Rc::new(RefCell::new(Vec::new()));
        let local = tokio::task::LocalSet::new();
        local
            .run_until({
                let order = order.clone();
                async move {
                    // A task that works, waits its turn, then writes.
                    let task = |name: &'static str| {
                        let order = order.clone();
                        tokio::task::spawn_local(async move {
                            order.borrow_mut().push(format!("{name} works"));
                            one_turn().await;
                            order.borrow_mut().push(format!("{name} writes"));
                        })
                    };
                    let (a, b) = (task("a"), task("b"));
                    a.await.unwrap();
                    b.await.unwrap();
                }
            })
            .await;
        assert_eq!(*order.borrow(), ["a works", "b works", "a writes", "b writes"]);
    }
}
