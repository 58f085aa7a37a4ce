//! Idle client connections: each connection's activity (last byte, requests in flight) and the
//! nudge that wakes its idle wait (an eviction or the listener's stop), the watchdog that
//! closes an HTTP/2 connection idle too long, and the listener's registry of open connections,
//! from which the longest-idle one is closed first when the listener is full.
use std::{
    collections::HashMap,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::clock::coarse_ms;

/// How long an idle connection may still start one request once its listener stops (a
/// graceful stop or an upgrade): closed at once, it would race a request the client is
/// sending. An HTTP/1.1 connection's next answer then says `Connection: close`.
pub const STOP_GRACE: Duration = Duration::from_secs(1);
/// A stopping HTTP/2 connection gets its GOAWAY at the first moment it has been this quiet (no
/// stream in flight, no byte moving), or at the latest `GOAWAY_BEFORE_DEADLINE` before the
/// drain deadline. A GOAWAY that meets a request the client has just queued refuses it (h2load
/// counts it as failed; a browser retries it elsewhere): busy connections are left serving.
pub const GOAWAY_QUIET: Duration = Duration::from_millis(250);
pub const GOAWAY_BEFORE_DEADLINE: Duration = Duration::from_secs(2);

/// How often a stopping HTTP/2 connection checks for a quiet moment to send its GOAWAY.
const QUIET_POLL: Duration = Duration::from_millis(50);

/// What one client connection has been doing.
pub struct Activity {
    /// Coarse-clock milliseconds of the last byte read or written.
    last_ms: AtomicU64,
    /// Requests started on this connection; 0 until the first one.
    requests: AtomicU64,
    /// Coarse-clock milliseconds after which the connection is retired (its listener's
    /// `max_connection_age_ms`); `u64::MAX`: never.
    retire_ms: AtomicU64,
    /// Requests whose response is not finished.
    in_flight: AtomicUsize,
    /// Set when the listener needs this connection's slot.
    evicting: AtomicBool,
    /// Set to wake the connection's idle wait: to make room (`evicting` is set) or because its
    /// listener stops; taken by the wait it wakes. One wake-up for both keeps an idle
    /// connection's wait small (it is what an idle connection's memory is made of).
    nudged: AtomicBool,
    /// The waker of the connection's one idle wait (its HTTP/1.1 wait between requests, or its
    /// HTTP/2 watchdog). A latch and a waker, not a `Notify`: every HTTP/1.1 request waits
    /// once, and a `Notified` locked a mutex to be made, polled and dropped (~290 instructions
    /// a request, `bench l7-instructions`).
    waker: AtomicWaker,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            last_ms: AtomicU64::new(coarse_ms()),
            requests: AtomicU64::new(0),
            retire_ms: AtomicU64::new(u64::MAX),
            in_flight: AtomicUsize::new(0),
            evicting: AtomicBool::new(false),
            nudged: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }
}

impl Activity {
    /// A byte moved either way (the I/O of a `Watched` stream, or an HTTP/3 stream's frame).
    pub fn touch(&self) {
        crate::proxy::busy_poll::worked();
        self.last_ms.store(coarse_ms(), Ordering::Relaxed);
    }

    /// Time since the last byte either way.
    pub fn quiet_for(&self) -> Duration {
        Duration::from_millis(coarse_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// Resolves once no request is in flight and no byte has moved for `quiet`, or at `latest`.
    pub async fn quiet(&self, quiet: Duration, latest: tokio::time::Instant) {
        while tokio::time::Instant::now() < latest {
            if self.idle() && self.quiet_for() >= quiet {
                return;
            }
            tokio::time::sleep(QUIET_POLL.min(latest - tokio::time::Instant::now())).await;
        }
    }

    /// Ready once the listener has asked this connection to make room (it is the longest idle)
    /// or stops, since the last time it was; registers the task's waker otherwise. A nudge
    /// that comes while no wait is registered is kept for the next one, so a wait that reads
    /// the stop flag before its first poll misses no stop.
    pub fn poll_nudged(&self, task: &mut Context<'_>) -> Poll<()> {
        if self.nudged.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(task.waker());
        // Looked at again after registering: a nudge between the two is not lost.
        match self.nudged.swap(false, Ordering::Acquire) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }

    /// Resolves at the next nudge (`poll_nudged`).
    pub fn nudged(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|task| self.poll_nudged(task))
    }

    fn nudge(&self) {
        self.nudged.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// The connection is to be retired once `age` has passed from now.
    pub fn retire_after(&self, age: Duration) {
        let at = coarse_ms().saturating_add(age.as_millis().min(u64::MAX as u128) as u64);
        self.retire_ms.store(at, Ordering::Relaxed);
    }

    /// How long until the connection is to be retired (zero once it is due); None: never.
    pub fn retires_in(&self) -> Option<Duration> {
        let at = self.retire_ms.load(Ordering::Relaxed);
        (at != u64::MAX).then(|| Duration::from_millis(at.saturating_sub(coarse_ms())))
    }

    /// Whether the connection is due to be retired.
    pub fn retired(&self) -> bool {
        coarse_ms() >= self.retire_ms.load(Ordering::Relaxed)
    }

    /// Whether the listener asked this connection to make room; the ask is forgotten.
    pub fn take_eviction(&self) -> bool {
        self.evicting.swap(false, Ordering::Relaxed)
    }

    /// A request starts; it stays in flight until the returned guard is dropped (with the
    /// response body).
    pub fn start(self: &Arc<Self>) -> Busy {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }
}

/// `work` (a TLS handshake, a PROXY protocol header) until it ends, or None as soon as the
/// listener evicts the connection to make room. Such a connection has no request in flight, so
/// the registry counts it idle, and the longest quiet one is what it evicts: a connection
/// stalled before its first request that ignored the nudge would keep its slot, and the new
/// connection would be refused, though an idle keep-alive one could have made room. A stop's
/// nudge is let pass: the connection's next wait reads the stop flag itself.
pub async fn unless_evicted<F: Future>(activity: Arc<Activity>, work: F) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|task| {
        if let Poll::Ready(done) = work.as_mut().poll(task) {
            return Poll::Ready(Some(done));
        }
        while activity.poll_nudged(task).is_ready() {
            if activity.take_eviction() {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    })
    .await
}

/// A request in flight on a connection.
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why the watchdog closed a connection (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No request began within the first-byte timeout.
    FirstByte,
    /// Idle between requests for the keep-alive timeout.
    KeepAlive,
    /// Closed while idle to make room for a new connection.
    Evicted,
    /// A request in flight (or a tunnel after `101`) with no byte either way for its timeout.
    StreamIdle,
}

impl Closed {
    pub fn label(self) -> &'static str {
        match self {
            Closed::FirstByte => "first_byte_timeout",
            Closed::KeepAlive => "idle_timeout",
            Closed::Evicted => "evicted_idle",
            Closed::StreamIdle => "stream_idle_timeout",
        }
    }
}

/// How long a connection may stay quiet: before its first request, between requests, and with
/// requests in flight.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub first_byte: Duration,
    pub keep_alive: Duration,
    pub stream: Duration,
}

/// Resolves when the connection should be closed: quiet (no byte either way) for
/// `first_byte` before its first request, `keep_alive` between requests or `stream` with some
/// in flight; or evicted while idle.
pub async fn watchdog(activity: &Activity, limits: Limits) -> Closed {
    loop {
        let (limit, reason) = if !activity.idle() {
            (limits.stream, Closed::StreamIdle)
        } else if activity.requests.load(Ordering::Relaxed) == 0 {
            (limits.first_byte, Closed::FirstByte)
        } else {
            (limits.keep_alive, Closed::KeepAlive)
        };
        let quiet = activity.quiet_for();
        if quiet >= limit {
            return reason;
        }
        // Requests that start and end meanwhile leave the connection idle between requests:
        // looked at again by the time it could be idle too long (before its first request
        // too, when the keep-alive limit is the shorter one).
        let wait = (limit - quiet).min(limits.keep_alive);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = activity.nudged() => {
                if activity.take_eviction() && activity.idle() {
                    return Closed::Evicted;
                }
            }
        }
    }
}

/// A client stream whose reads and writes mark its connection active.
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        activity.touch();
        Watched { inner, activity }
    }

    /// The stream watched.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A listener's open connections.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

/// A connection's place in its listener's registry; leaves it when dropped.
pub struct Registered {
    registry: Arc<Registry>,
    id: u64,
    pub activity: Arc<Activity>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

impl Registry {
    /// Adds a new connection.
    pub fn register(self: &Arc<Self>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::default());
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(id, activity.clone());
        Registered { registry: self.clone(), id, activity }
    }

    /// Asks the connection idle the longest to close. False: every connection is busy.
    pub fn evict_idle(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let victim = open.values().filter(|a| a.idle()).max_by_key(|a| a.quiet_for());
        match victim {
            Some(activity) => {
                activity.evicting.store(true, Ordering::Relaxed);
                activity.nudge();
                true
            }
            None => false,
        }
    }

    /// Wakes every connection's idle wait: the listener is stopping.
    pub fn stopping(&self) {
        for activity in self.open.lock().unwrap_or_else(|p| p.into_inner()).values() {
            activity.nudge();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first-byte and keep-alive limits, and a stream limit far off.
    fn limits(first_byte: Duration, keep_alive: Duration) -> Limits {
        Limits { first_byte, keep_alive, stream: Duration::from_secs(3600) }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_closes_at_the_first_byte_timeout() {
        let activity = Activity::default();
        let started = tokio::time::Instant::now();
        let reason = watchdog(&activity, limits(Duration::from_secs(2), Duration::from_secs(60))).await;
        assert_eq!(reason, Closed::FirstByte);
        assert!(started.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_connection_with_a_request_in_flight_closes_once_no_byte_moves_for_the_stream_limit() {
        let activity = Arc::new(Activity::default());
        let _busy = activity.start();
        let started = std::time::Instant::now();
        let bytes = activity.clone();
        tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                bytes.touch();
            }
        });
        let far = Duration::from_secs(3600);
        let limits = Limits { first_byte: far, keep_alive: far, stream: Duration::from_millis(150) };
        assert_eq!(watchdog(&activity, limits).await, Closed::StreamIdle);
        // The last byte at 200 ms, quiet enough from 350 ms (the coarse clock's tick aside).
        assert!(started.elapsed() >= Duration::from_millis(300), "closed after {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_busy_connection_is_not_closed_and_not_evicted() {
        let registry = Arc::new(Registry::default());
        let conn = registry.register();
        let busy = conn.activity.start();
        assert!(!registry.evict_idle(), "the only connection is busy");
        let closed = tokio::time::timeout(
            Duration::from_millis(100),
            watchdog(&conn.activity, limits(Duration::from_millis(10), Duration::from_millis(10))),
        )
        .await;
        assert!(closed.is_err(), "closed with a request in flight");
        drop(busy);
        let reason =
            watchdog(&conn.activity, limits(Duration::from_millis(10), Duration::from_millis(20))).await;
        assert_eq!(reason, Closed::KeepAlive);
    }

    #[tokio::test]
    async fn a_stop_wakes_idle_waits_and_evicts_nothing() {
        let registry = Arc::new(Registry::default());
        let conn = registry.register();
        let mut nudged = std::pin::pin!(conn.activity.nudged());
        let mut noop = Context::from_waker(std::task::Waker::noop());
        assert!(nudged.as_mut().poll(&mut noop).is_pending(), "nudged before the stop");
        registry.stopping();
        tokio::time::timeout(Duration::from_secs(1), nudged).await.expect("the stop woke the wait");
        assert!(!conn.activity.take_eviction(), "a stop is not an eviction");
        let far = Duration::from_secs(60);
        let stop = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            registry.stopping();
        };
        let watched =
            tokio::time::timeout(Duration::from_millis(200), watchdog(&conn.activity, limits(far, far)));
        let (closed, ()) = tokio::join!(watched, stop);
        assert!(closed.is_err(), "the watchdog closed an idle connection at the stop: {closed:?}");
    }

    #[tokio::test]
    async fn a_nudge_wakes_the_wait_or_is_kept_for_the_next() {
        let registry = Arc::new(Registry::default());
        let conn = registry.register();
        let activity = conn.activity.clone();
        let waiting = tokio::spawn(async move { activity.nudged().await });
        tokio::task::yield_now().await; // the wait registers
        registry.stopping();
        tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("the wait was woken").unwrap();
        // No wait registered: the nudge is kept, and taken once.
        registry.stopping();
        let next = tokio::time::timeout(Duration::from_millis(100), conn.activity.nudged()).await;
        assert!(next.is_ok(), "the nudge was lost");
        let again = tokio::time::timeout(Duration::from_millis(50), conn.activity.nudged()).await;
        assert!(again.is_err(), "one nudge woke two waits");
    }

    #[tokio::test]
    async fn eviction_picks_the_longest_idle_connection() {
        let registry = Arc::new(Registry::default());
        let old = registry.register();
        std::thread::sleep(Duration::from_millis(20));
        let new = registry.register();
        let _busy = registry.register();
        let _busy_guard = _busy.activity.start();
        assert!(registry.evict_idle());
        let far = Duration::from_secs(60);
        let reason =
            tokio::time::timeout(Duration::from_secs(1), watchdog(&old.activity, limits(far, far))).await;
        assert_eq!(reason.ok(), Some(Closed::Evicted));
        let untouched =
            tokio::time::timeout(Duration::from_millis(50), watchdog(&new.activity, limits(far, far))).await;
        assert!(untouched.is_err(), "the newer connection was evicted");
        drop(old);
        assert_eq!(registry.open.lock().unwrap().len(), 2);
    }
}
