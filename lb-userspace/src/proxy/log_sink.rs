//! Access-log lines leave the workers in batches, written by a thread of their own.
//!
//! A worker appends its lines to a buffer of its own and hands the buffer to the writer thread
//! through a bounded queue once it holds `BATCH` bytes, and every `FLUSH_EVERY`; the writer
//! writes each batch to stderr (lbd's log: the journal under systemd) in one call. When the
//! queue is full (whoever reads the log is slower than the requests), the batch is dropped and
//! its lines counted (`sluice_access_log_dropped_lines_total`), as HAProxy drops what its syslog
//! socket refuses: a worker never waits for the log. Before, each worker wrote each line to
//! stderr itself: 10% of the HTTP/1.1 rate with stderr on /dev/null (docs/performance.md), and a
//! journal that stalled would have stalled every request.
//!
//! Lines keep env_logger's form (`[2026-12-02T01:20:52Z INFO  access] client=…`), and
//! `RUST_LOG=access=off` still turns them off. On a thread that is not a worker, and before
//! `start`, a line goes through the `log` crate at once, as before.
use std::{
    cell::RefCell,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
    time::{Duration, Instant, SystemTime},
};

/// A worker hands its buffer over once it holds this many bytes.
const BATCH: usize = 32 * 1024;
/// Batches queued for the writer at most (8 MiB of lines).
const QUEUED: usize = 256;
/// How often each worker hands over what it has.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How long `finish` waits for the writer to write what was queued.
const FINISH_WAIT: Duration = Duration::from_secs(2);

enum Job {
    /// Lines, each ending in a newline, and how many.
    Lines(Vec<u8>, u64),
    /// Answered once every batch queued before is written.
    Written(SyncSender<()>),
}

/// The writer thread's queue and what it dropped.
pub struct Sink {
    queue: SyncSender<Job>,
    dropped: AtomicU64,
}

static SINK: OnceLock<&'static Sink> = OnceLock::new();

impl Sink {
    /// A sink whose thread writes to `out`, with `queued` batches at most waiting for it.
    fn new(mut out: impl std::io::Write + Send + 'static, queued: usize) -> std::io::Result<&'static Sink> {
        let (queue, jobs) = mpsc::sync_channel(queued);
        // Leaked: the sink lives as long as lbd (one is made, at start).
        let sink: &'static Sink = Box::leak(Box::new(Sink { queue, dropped: AtomicU64::new(0) }));
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            for job in jobs {
                match job {
                    Job::Lines(bytes, lines) => {
                        if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                            sink.dropped.fetch_add(lines, Ordering::Relaxed);
                        }
                    }
                    Job::Written(answer) => {
                        let _ = answer.send(());
                    }
                }
            }
        })?;
        Ok(sink)
    }

    fn hand_over(&self, bytes: Vec<u8>, lines: u64) {
        if self.queue.try_send(Job::Lines(bytes, lines)).is_err() {
            self.dropped.fetch_add(lines, Ordering::Relaxed);
        }
    }

    /// Waits (up to `FINISH_WAIT`) until every batch handed over is written.
    fn written(&self) {
        let deadline = Instant::now() + FINISH_WAIT;
        let (answer, written) = mpsc::sync_channel(1);
        let mut job = Job::Written(answer);
        loop {
            match self.queue.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Full(again)) if Instant::now() < deadline => {
                    job = again;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// A worker's lines not yet handed over.
struct Buffer {
    sink: &'static Sink,
    text: String,
    lines: u64,
    /// The line prefix for the second `second` (Unix time).
    second: u64,
    prefix: String,
}

thread_local! {
    static BUFFER: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

/// Starts the writer thread, on stderr (once; later calls do nothing).
pub fn start() -> std::io::Result<()> {
    if SINK.get().is_none() {
        let _ = SINK.set(Sink::new(std::io::stderr(), QUEUED)?);
    }
    Ok(())
}

/// This thread is a worker: its lines are buffered, if the writer runs and the access log is
/// on (`RUST_LOG` is read once, at start).
pub fn buffer_here() {
    if let Some(&sink) = SINK.get()
        && log::log_enabled!(target: "access", log::Level::Info)
    {
        buffer_into(sink);
    }
}

fn buffer_into(sink: &'static Sink) {
    BUFFER.with_borrow_mut(|b| {
        *b = Some(Buffer {
            sink,
            text: String::with_capacity(BATCH * 2),
            lines: 0,
            second: 0,
            prefix: String::new(),
        })
    });
}

/// Logs one access-log line, which `line` appends to the string it is given.
pub fn write(line: impl FnOnce(&mut String)) {
    let mut line = Some(line);
    let full = BUFFER.with_borrow_mut(|buffer| {
        let b = buffer.as_mut()?;
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if now != b.second || b.prefix.is_empty() {
            let stamp = jiff::Timestamp::from_second(now as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            b.prefix = format!("[{stamp} INFO  access] ");
            b.second = now;
        }
        b.text.push_str(&b.prefix);
        (line.take()?)(&mut b.text);
        b.text.push('\n');
        b.lines += 1;
        Some(b.text.len() >= BATCH)
    });
    if full == Some(true) {
        flush();
    }
    // Not a worker: through the `log` crate at once.
    if let Some(line) = line
        && log::log_enabled!(target: "access", log::Level::Info)
    {
        let mut text = String::new();
        line(&mut text);
        log::info!(target: "access", "{text}");
    }
}

/// Hands this worker's lines to the writer; counts them as dropped if its queue is full.
pub fn flush() {
    let batch = BUFFER.with_borrow_mut(|buffer| {
        let b = buffer.as_mut().filter(|b| b.lines > 0)?;
        let text = std::mem::replace(&mut b.text, String::with_capacity(BATCH * 2));
        Some((b.sink, text.into_bytes(), std::mem::take(&mut b.lines)))
    });
    if let Some((sink, bytes, lines)) = batch {
        sink.hand_over(bytes, lines);
    }
}

/// The task that hands its worker's lines over every `FLUSH_EVERY`; never finishes. Spawned
/// once on each worker.
pub async fn flusher() {
    loop {
        tokio::time::sleep(FLUSH_EVERY).await;
        flush();
    }
}

/// Waits (up to 2 s) until every line handed over is written: lbd is about to exit, and each
/// worker flushed its own as it ended.
pub fn finish() {
    if let Some(sink) = SINK.get() {
        sink.written();
    }
}

/// Lines dropped so far because the writer fell behind.
pub fn dropped() -> u64 {
    SINK.get().map_or(0, |sink| sink.dropped.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;

    /// A writer into memory the test can read.
    #[derive(Clone, Default)]
    struct Memory(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Memory {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Memory {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap().lines().map(str::to_owned).collect()
        }
    }

    #[test]
    fn lines_arrive_whole_in_order_in_env_loggers_form() {
        let memory = Memory::default();
        let sink = Sink::new(memory.clone(), 4).unwrap();
        buffer_into(sink);
        for i in 0..3 {
            write(|out| out.push_str(&format!("client=x n={i}")));
        }
        assert!(memory.lines().is_empty(), "written before the worker handed its lines over");
        flush();
        sink.written();
        let lines = memory.lines();
        assert_eq!(lines.len(), 3);
        for (i, line) in lines.iter().enumerate() {
            let (prefix, rest) = line.split_once("] ").unwrap();
            assert_eq!(rest, format!("client=x n={i}"));
            // `[2026-12-02T01:20:52Z INFO  access`
            let stamp = prefix.strip_prefix('[').and_then(|p| p.strip_suffix(" INFO  access")).unwrap();
            assert!(stamp.len() == 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{stamp}");
        }
        // A full buffer goes by itself, without waiting for the flusher.
        let long = "v".repeat(1000);
        for _ in 0..BATCH / 1000 + 1 {
            write(|out| out.push_str(&long));
        }
        sink.written();
        assert!(memory.lines().len() > 3, "a full buffer was kept");
        BUFFER.with_borrow_mut(|b| *b = None);
    }

    /// A writer that holds its first write until released.
    struct Stalled {
        started: mpsc::SyncSender<()>,
        release: mpsc::Receiver<()>,
    }

    impl std::io::Write for Stalled {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _ = self.started.try_send(());
            let _ = self.release.recv();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_writer_that_falls_behind_costs_lines_never_a_wait() {
        let (started, writing) = mpsc::sync_channel(1);
        let (release, released_rx) = mpsc::sync_channel(8);
        let sink = Sink::new(Stalled { started, release: released_rx }, 1).unwrap();
        // Whatever happens below, the writer is let go within 10 s: a worker that waited on it
        // shows as `released` before its write returned.
        let released = Arc::new(AtomicBool::new(false));
        let letting_go = released.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(10));
            letting_go.store(true, Ordering::SeqCst);
            for _ in 0..8 {
                let _ = release.try_send(());
            }
        });
        buffer_into(sink);
        let batch = |lines: usize| {
            for _ in 0..lines {
                write(|out| out.push_str("client=x"));
            }
            flush();
        };
        batch(1); // taken by the writer, which stalls in it
        writing.recv_timeout(Duration::from_secs(5)).unwrap();
        batch(2); // queued
        batch(3); // no room: dropped and counted
        assert!(!released.load(Ordering::SeqCst), "the worker waited for the stalled writer");
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 3);
        BUFFER.with_borrow_mut(|b| *b = None);
    }
}
