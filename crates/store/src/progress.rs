//! The one guard on a body's progress: a client that stops sending in the
//! middle of an upload, or sends a byte now and then, would otherwise hold
//! its connection, temp file and reservation for as long as it likes.

use std::error::Error;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::BlobReader;

/// Why a body was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// No byte for the stall limit.
    Stalled,
    /// Fewer bytes than the minimum rate asks for over a rate window.
    TooSlow,
}

impl CutReason {
    /// Its label in metrics (`reason="stalled"`, `reason="too_slow"`).
    pub fn label(self) -> &'static str {
        match self {
            CutReason::Stalled => "stalled",
            CutReason::TooSlow => "too_slow",
        }
    }
}

/// The error a cut body's read fails with (kind `TimedOut`); find it with
/// [`cut_reason`].
#[derive(Debug)]
struct BodyCut {
    reason: CutReason,
    message: String,
}

impl fmt::Display for BodyCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for BodyCut {}

/// Why `e` cut a body, if a [`ProgressGuard`] made it.
pub fn cut_reason(e: &io::Error) -> Option<CutReason> {
    e.get_ref()?.downcast_ref::<BodyCut>().map(|c| c.reason)
}

/// Bodies cut since start, by reason (metrics).
#[derive(Debug, Default)]
pub struct CutCounts {
    pub stalled: AtomicU64,
    pub too_slow: AtomicU64,
}

impl CutCounts {
    fn record(&self, reason: CutReason) {
        let counter = match reason {
            CutReason::Stalled => &self.stalled,
            CutReason::TooSlow => &self.too_slow,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, reason: CutReason) -> u64 {
        match reason {
            CutReason::Stalled => self.stalled.load(Ordering::Relaxed),
            CutReason::TooSlow => self.too_slow.load(Ordering::Relaxed),
        }
    }
}

/// Fails a read with `TimedOut` when the inner reader makes too little
/// progress while someone is waiting on it:
///
/// - **stall**: nothing at all for `stall`;
/// - **rate** (when set with [`ProgressGuard::min_rate`]): fewer than
///   `min_rate × window` bytes over a window of `window` of waiting
///   (tumbling windows). A client must keep up an average, not just send a
///   byte before each stall limit.
///
/// The clock runs only while the reader is polled and has nothing, so a
/// slow consumer (a client reading a download slowly, a disk write, a wait
/// for a write slot) never counts as the producer stalling or being slow.
/// A read that returns data or the end is never failed, so a body that
/// completes is never cut: only a wait on the producer is.
///
/// The one progress guard of the workspace: client upload bodies (the disk
/// store's write path, with the rate) and backend downloads (S3 GET bodies,
/// stall only) both use it.
pub(crate) struct ProgressGuard<R = BlobReader> {
    inner: R,
    stall: Duration,
    /// 0: no rate check.
    min_rate: u64,
    window: Duration,
    deadline: Pin<Box<Sleep>>,
    /// A wait on the producer is in progress (since `pending_since`).
    armed: bool,
    pending_since: Instant,
    /// Where the current wait starts counting towards the window (the
    /// wait's start, or the last window's end).
    counted_from: Instant,
    /// Waiting time of the current window before `counted_from`.
    waited: Duration,
    /// Bytes of the current window.
    window_bytes: u64,
    what: &'static str,
    /// Where a cut is counted, if anywhere.
    counts: Option<Arc<CutCounts>>,
}

impl<R> ProgressGuard<R> {
    /// A guard with only the stall limit; `what` names the body in the
    /// error ("upload", "S3 GET").
    pub(crate) fn new(inner: R, stall: Duration, what: &'static str) -> Self {
        let now = Instant::now();
        ProgressGuard {
            inner,
            stall,
            min_rate: 0,
            window: Duration::ZERO,
            deadline: Box::pin(tokio::time::sleep(stall)),
            armed: false,
            pending_since: now,
            counted_from: now,
            waited: Duration::ZERO,
            window_bytes: 0,
            what,
            counts: None,
        }
    }

    /// Counts its cut, if it cuts, in `counts`.
    pub(crate) fn counting(mut self, counts: Arc<CutCounts>) -> Self {
        self.counts = Some(counts);
        self
    }

    /// Also requires `min_rate` bytes/s over every `window` of waiting
    /// (`min_rate` 0 or a zero window: no rate check).
    pub(crate) fn min_rate(mut self, min_rate: u64, window: Duration) -> Self {
        if !window.is_zero() {
            self.min_rate = min_rate;
            self.window = window;
        }
        self
    }

    fn rate_checked(&self) -> bool {
        self.min_rate > 0
    }

    /// Bytes a window must bring.
    fn window_quota(&self) -> u64 {
        (self.min_rate as f64 * self.window.as_secs_f64()) as u64
    }

    /// Starts a new window at `now`.
    fn next_window(&mut self, now: Instant) {
        self.waited = Duration::ZERO;
        self.window_bytes = 0;
        self.counted_from = now;
    }

    /// When the current wait fails or its window must be judged.
    fn next_deadline(&self) -> Instant {
        let stall = self.pending_since + self.stall;
        if !self.rate_checked() {
            return stall;
        }
        let window_end = self.counted_from + self.window.saturating_sub(self.waited);
        stall.min(window_end)
    }

    fn cut(&mut self, reason: CutReason) -> io::Error {
        self.armed = false;
        if let Some(counts) = &self.counts {
            counts.record(reason);
        }
        let message = match reason {
            CutReason::Stalled => format!("{}: no data for {:?}; abandoned", self.what, self.stall),
            CutReason::TooSlow => format!(
                "{}: {} bytes in {:?} of waiting, below the minimum of {} bytes/s; abandoned",
                self.what, self.window_bytes, self.window, self.min_rate
            ),
        };
        io::Error::new(io::ErrorKind::TimedOut, BodyCut { reason, message })
    }
}

impl<R> ProgressGuard<R> {
    /// The producer delivered `n` bytes (or ended, or failed).
    fn on_ready(&mut self, n: usize) {
        if self.armed {
            self.armed = false;
            self.waited += Instant::now().saturating_duration_since(self.counted_from);
        }
        self.window_bytes += n as u64;
        // A window is judged when a wait reaches its end; one that ended
        // during data is closed here if it brought enough (if not, the next
        // wait is judged at once).
        if self.rate_checked()
            && self.waited >= self.window
            && self.window_bytes >= self.window_quota()
        {
            self.next_window(Instant::now());
        }
    }

    /// The producer has nothing yet: starts timing the wait, or judges it.
    /// `Ready` is the error that cuts the body.
    fn on_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let now = Instant::now();
        if !self.armed {
            self.armed = true;
            self.pending_since = now;
            self.counted_from = now;
            let deadline = self.next_deadline();
            self.deadline.as_mut().reset(deadline);
        }
        while self.deadline.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if now >= self.pending_since + self.stall {
                return Poll::Ready(self.cut(CutReason::Stalled));
            }
            if self.rate_checked() {
                let waited = self.waited + now.saturating_duration_since(self.counted_from);
                if waited >= self.window {
                    if self.window_bytes < self.window_quota() {
                        return Poll::Ready(self.cut(CutReason::TooSlow));
                    }
                    self.next_window(now);
                }
            }
            let deadline = self.next_deadline();
            self.deadline.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ProgressGuard<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.on_ready(buf.filled().len() - before);
                Poll::Ready(result)
            }
            Poll::Pending => this.on_pending(cx).map(Err),
        }
    }
}

/// The same guard on a body of chunks ([`crate::PutBody::Chunks`]).
impl<S: Stream<Item = io::Result<Bytes>> + Unpin> Stream for ProgressGuard<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            return match Pin::new(&mut this.inner).poll_next(cx) {
                // An empty chunk is no progress: it must not restart the
                // stall clock (a gRPC client could send empty messages).
                Poll::Ready(Some(Ok(b))) if b.is_empty() => continue,
                Poll::Ready(item) => {
                    this.on_ready(match &item {
                        Some(Ok(b)) => b.len(),
                        _ => 0,
                    });
                    Poll::Ready(item)
                }
                Poll::Pending => this.on_pending(cx).map(|e| Some(Err(e))),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_steady_body_passes_and_a_stalled_one_times_out() {
        let (mut tx, rx) = tokio::io::duplex(16);
        let mut guard = ProgressGuard::new(rx, Duration::from_millis(400), "upload");
        let writer = tokio::spawn(async move {
            for _ in 0..4 {
                tx.write_all(b"abcd").await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Then stall with the connection open.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(tx);
        });
        let mut got = [0u8; 16];
        guard.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcdabcdabcdabcd");
        let err = guard.read_u8().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(cut_reason(&err), Some(CutReason::Stalled));
        writer.abort();
    }

    /// Sends `chunk` bytes every `every`, `times` times, then ends the body.
    fn dribble(
        chunk: usize,
        every: Duration,
        times: usize,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(async move {
            for _ in 0..times {
                tokio::time::sleep(every).await;
                if tx.write_all(&vec![7u8; chunk]).await.is_err() {
                    return;
                }
            }
        });
        (rx, task)
    }

    /// A rate guard on a short scale: stall limit 5 s, 1000 bytes/s over
    /// windows of 200 ms of waiting (200 bytes a window).
    fn rate_guard(rx: tokio::io::DuplexStream) -> ProgressGuard<tokio::io::DuplexStream> {
        ProgressGuard::new(rx, Duration::from_secs(5), "upload")
            .min_rate(1000, Duration::from_millis(200))
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_slow_body_above_the_rate_passes() {
        // 100 bytes every 20 ms: 5000 bytes/s for a second, five times the
        // minimum, in many windows.
        let (rx, writer) = dribble(100, Duration::from_millis(20), 50);
        let mut body = Vec::new();
        rate_guard(rx).read_to_end(&mut body).await.unwrap();
        assert_eq!(body.len(), 100 * 50);
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_dribbling_body_is_cut_within_the_window() {
        // A byte every 20 ms (50 bytes/s): a byte a second, scaled down.
        let (rx, writer) = dribble(1, Duration::from_millis(20), 10_000);
        let started = Instant::now();
        let mut body = Vec::new();
        let err = rate_guard(rx).read_to_end(&mut body).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(cut_reason(&err), Some(CutReason::TooSlow), "{err}");
        // Judged at the end of the first window, long before the stall
        // limit (a bounded wait, not a latency).
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_is_carried_by_the_bytes_of_its_window() {
        // 1000 bytes, then nothing for longer than a window (and far less
        // than the stall limit), then 1000 more: the first window of
        // waiting brought five times its quota, the second ends with data.
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            tx.write_all(&[1u8; 1000]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(260)).await;
            tx.write_all(&[2u8; 1000]).await.unwrap();
        });
        let mut body = Vec::new();
        rate_guard(rx).read_to_end(&mut body).await.unwrap();
        assert_eq!(body.len(), 2000);
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn silence_for_two_windows_is_cut_before_the_stall_limit() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        tx.write_all(&[1u8; 1000]).await.unwrap();
        let mut guard = rate_guard(rx);
        let mut first = [0u8; 1000];
        guard.read_exact(&mut first).await.unwrap();
        let started = Instant::now();
        let err = guard.read_u8().await.unwrap_err();
        assert_eq!(cut_reason(&err), Some(CutReason::TooSlow), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_completed_body_is_never_cut() {
        // Far below the rate, but it ends before a window of waiting.
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            tx.write_all(b"x").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.write_all(b"y").await.unwrap();
        });
        let mut body = Vec::new();
        rate_guard(rx).read_to_end(&mut body).await.unwrap();
        assert_eq!(body, b"xy");
        writer.await.unwrap();
        // A body that is all there is read to its end however long its
        // reader takes between reads: only waits on the producer count.
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        tx.write_all(&[3u8; 5]).await.unwrap();
        drop(tx);
        let mut guard = rate_guard(rx);
        let mut n = 0;
        let mut byte = [0u8; 1];
        while guard.read(&mut byte).await.unwrap() == 1 {
            n += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(n, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_are_counted_by_reason() {
        let counts = Arc::new(CutCounts::default());
        let (_tx, rx) = tokio::io::duplex(16);
        let err = ProgressGuard::new(rx, Duration::from_millis(100), "upload")
            .counting(counts.clone())
            .read_u8()
            .await
            .unwrap_err();
        assert_eq!(cut_reason(&err), Some(CutReason::Stalled));
        assert_eq!(cut_reason(&io::Error::other("not a cut")), None);
        assert_eq!(counts.get(CutReason::Stalled), 1);
        assert_eq!(counts.get(CutReason::TooSlow), 0);
    }
}
