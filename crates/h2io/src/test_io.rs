//! The tests' socket: one end of an in-memory pipe that counts the reads
//! and writes reaching it, which is what the adapters exist to reduce.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

/// How many reads and writes (that completed) reached the pipe.
#[derive(Clone, Default)]
pub(crate) struct Counts {
    reads: Arc<AtomicUsize>,
    writes: Arc<AtomicUsize>,
}

impl Counts {
    pub(crate) fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }

    pub(crate) fn writes(&self) -> usize {
        self.writes.load(Ordering::Relaxed)
    }
}

pub(crate) struct Counted {
    io: DuplexStream,
    counts: Counts,
}

/// A counted end (to wrap), its peer, and the counts.
pub(crate) fn pipe() -> (Counted, DuplexStream, Counts) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let counts = Counts::default();
    let io = Counted {
        io: a,
        counts: counts.clone(),
    };
    (io, b, counts)
}

fn count<T>(counter: &AtomicUsize, p: Poll<T>) -> Poll<T> {
    if p.is_ready() {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    p
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.io).poll_read(cx, buf);
        count(&self.counts.reads, p)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.io).poll_write(cx, buf);
        count(&self.counts.writes, p)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
