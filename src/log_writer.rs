//! Where log lines go: appended to one shared buffer by whoever logs, and
//! written out in batches by a thread of its own.
//!
//! With the access log on (the default, as bazel-remote's
//! `access_log_level: all`), every request makes a line. Written from the
//! async worker that served the request, that was a blocking `write(2)` per
//! request. Through a channel to a writer thread (tracing-appender), it was
//! a wake-up of that thread per line, and the thread spun (`sched_yield`)
//! waiting for the next: a quarter of the server's CPU on 4 KiB GETs
//! (perf). Here a line costs an append under an uncontended lock; the
//! thread is woken once per batch, lets lines gather for [`LINGER`] (or
//! until [`BATCH`] bytes wait) and writes them with one `write(2)`.
//!
//! Nothing is dropped: when [`MAX_QUEUED`] bytes wait (the output cannot
//! keep up), a logger waits for the thread to take them. Lines keep their
//! order, and dropping the [`Guard`] writes out what is queued.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the first line of a batch may wait for others to join it.
const LINGER: Duration = Duration::from_millis(20);
/// Bytes that make the thread write at once rather than linger.
const BATCH: usize = 64 * 1024;
/// Bytes queued beyond which loggers wait for the thread.
const MAX_QUEUED: usize = 1 << 20;

struct State {
    queued: Vec<u8>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The thread waits here for lines, or for a full batch.
    lines: Condvar,
    /// Loggers wait here for room (output slower than logging).
    room: Condvar,
    max_queued: usize,
    /// [`BATCH`], or less when the queue is smaller: loggers waiting for
    /// room must not wait out [`LINGER`] too.
    batch: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while appending leaves a buffer that is still valid bytes.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Clonable handle that the log formatter writes through
/// (`tracing_subscriber`'s `MakeWriter`).
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Stops the thread when dropped, after it has written every queued line.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread over `out` (stderr in the server).
pub fn start<W: Write + Send + 'static>(out: W) -> io::Result<(LogWriter, Guard)> {
    start_with(out, MAX_QUEUED)
}

fn start_with<W: Write + Send + 'static>(
    mut out: W,
    max_queued: usize,
) -> io::Result<(LogWriter, Guard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queued: Vec::with_capacity(BATCH),
            closed: false,
        }),
        lines: Condvar::new(),
        room: Condvar::new(),
        max_queued,
        batch: BATCH.min(max_queued),
    });
    let thread_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || run(&thread_shared, &mut out))?;
    Ok((
        LogWriter {
            shared: shared.clone(),
        },
        Guard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn run(shared: &Shared, out: &mut dyn Write) {
    // Swapped with the queue each batch, so its capacity is reused.
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let mut state = shared.lock();
        while state.queued.is_empty() && !state.closed {
            state = shared.lines.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if !state.closed && state.queued.len() < shared.batch {
            // Let the lines of the next few milliseconds join this one.
            state = shared
                .lines
                .wait_timeout_while(state, LINGER, |s| {
                    !s.closed && s.queued.len() < shared.batch
                })
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        std::mem::swap(&mut state.queued, &mut batch);
        let closed = state.closed;
        drop(state);
        shared.room.notify_all();
        // A log that cannot be written (stderr closed) is not worth
        // stopping the server for.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if batch.capacity() > 4 * BATCH {
            batch.shrink_to(BATCH);
        }
        if closed && shared.lock().queued.is_empty() {
            return;
        }
    }
}

impl Write for LogWriter {
    /// Appends `buf` (the formatter hands over a whole line at once).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let shared = &*self.shared;
        let mut state = shared.lock();
        while state.queued.len() >= shared.max_queued && !state.closed {
            state = shared.room.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let was_empty = state.queued.is_empty();
        state.queued.extend_from_slice(buf);
        let full =
            state.queued.len() >= shared.batch && state.queued.len() - buf.len() < shared.batch;
        drop(state);
        // One wake-up to start a batch, one to cut it short when it is
        // full; the lines in between cost none.
        if was_empty || full {
            shared.lines.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.lines.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that keeps what it is given, slowly when asked to, so that
    /// loggers outrun it.
    #[derive(Clone, Default)]
    struct Sink {
        got: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
        delay: Option<Duration>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(d) = self.delay {
                std::thread::sleep(d);
            }
            *self.writes.lock().unwrap() += 1;
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Logs `per_thread` lines from each of `threads` threads, drops the
    /// guard, and checks that every line arrived whole and each thread's
    /// lines in order.
    fn every_line_arrives_in_order(sink: Sink, max_queued: usize) -> usize {
        let (writer, guard) = start_with(sink.clone(), max_queued).unwrap();
        let (threads, per_thread) = (4, 2000);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        w.write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        drop(guard);
        let got = String::from_utf8(sink.got.lock().unwrap().clone()).unwrap();
        let mut next = vec![0; threads];
        for line in got.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            let (t, i): (usize, usize) = (words[1].parse().unwrap(), words[3].parse().unwrap());
            assert_eq!(i, next[t], "thread {t}'s lines out of order or lost");
            next[t] += 1;
        }
        assert_eq!(next, vec![per_thread; threads], "every line arrives");
        *sink.writes.lock().unwrap()
    }

    #[test]
    fn lines_arrive_whole_in_order_and_in_batches() {
        let writes = every_line_arrives_in_order(Sink::default(), MAX_QUEUED);
        // 8,000 lines; one write(2) each would be 8,000.
        assert!(writes < 1000, "{writes} writes for 8,000 lines");
    }

    #[test]
    fn a_slow_output_makes_loggers_wait_and_loses_nothing() {
        let sink = Sink {
            delay: Some(Duration::from_millis(1)),
            ..Sink::default()
        };
        // A queue of 256 bytes: loggers outrun the sink and must wait.
        every_line_arrives_in_order(sink, 256);
    }

    #[test]
    fn dropping_the_guard_writes_out_a_lingering_line() {
        let sink = Sink::default();
        let (mut writer, guard) = start(sink.clone()).unwrap();
        writer.write_all(b"last words\n").unwrap();
        drop(guard);
        assert_eq!(&*sink.got.lock().unwrap(), b"last words\n");
    }
}
