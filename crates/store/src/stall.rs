//! A bound on how long a blob body may stall: a client that stops sending
//! in the middle of an upload would otherwise hold its connection, temp
//! file, reservation and write slot for ever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::BlobReader;

/// Fails a read with `TimedOut` when the inner reader yields nothing for
/// `limit` while someone is waiting on it. The clock runs only while the
/// reader is polled and has nothing, so a slow consumer (a client reading a
/// download slowly, a disk write) never counts as the producer stalling.
///
/// The one stall guard of the workspace: client upload bodies (the disk
/// store's write path) and backend downloads (S3 GET bodies) both use it.
pub(crate) struct StallGuard<R = BlobReader> {
    inner: R,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
    armed: bool,
    what: &'static str,
}

impl<R> StallGuard<R> {
    /// `what` names the body in the error ("upload", "S3 GET").
    pub(crate) fn new(inner: R, limit: Duration, what: &'static str) -> Self {
        StallGuard {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
            armed: false,
            what,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for StallGuard<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.armed = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                if !this.armed {
                    this.deadline.as_mut().reset(Instant::now() + this.limit);
                    this.armed = true;
                }
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.armed = false;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{}: no data for {:?}; abandoned", this.what, this.limit),
                    )));
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_steady_body_passes_and_a_stalled_one_times_out() {
        let (mut tx, rx) = tokio::io::duplex(16);
        let mut guard = StallGuard::new(rx, Duration::from_millis(400), "upload");
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
        writer.abort();
    }
}
