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

/// Fails a read with `TimedOut` when no byte has arrived for `limit`.
pub struct StallGuard {
    inner: BlobReader,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl StallGuard {
    pub fn new(inner: BlobReader, limit: Duration) -> Self {
        StallGuard {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match self.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.limit;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no data for {:?}; upload abandoned", self.limit),
                ))),
                Poll::Pending => Poll::Pending,
            },
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
        let mut guard = StallGuard::new(Box::pin(rx), Duration::from_millis(400));
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
