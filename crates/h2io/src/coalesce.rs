//! Write coalescing for HTTP/2 connections: the frames h2 writes between
//! two points where it has nothing more to send go out in one `writev`.
//!
//! h2 flushes its transport after every DATA frame larger than a few
//! hundred bytes (it chains the payload rather than copying it, and must
//! flush before it can take the next frame). A 4 KiB gRPC response
//! (HEADERS, DATA, then trailers) thus cost two `writev`s, and a 1 MiB
//! ByteStream Read 64, one per 16 KiB frame (the frame size clients
//! announce). Each write to a socket is a system call plus a wake-up of the
//! peer, which on a loaded machine cost more than the bytes: gRPC reads
//! were at 0.4–0.6 of the same blobs over HTTP/1.1, where hyper writes a
//! response's head and small body in one call.
//!
//! h2's client side does the same: hyper sends a unary call's HEADERS as
//! soon as the call starts and its DATA once the body is polled, so every
//! call left in two `writev`s and reached the server as two TCP segments
//! (measured: 4.2 segments per 4 KiB BatchReadBlobs on loopback, against 2
//! per HTTP/1.1 GET). Bazel's gRPC client (grpc-java on Netty) flushes a
//! unary call's headers and message together; the bench's client now
//! does too, through this wrapper.
//!
//! [`CoalescedWrites`] copies writes into a buffer of at most
//! [`BUFFER_BYTES`] and, when asked to flush, defers while h2 is still
//! producing: a flush that follows new writes only schedules another poll
//! of the connection (`wake_by_ref`) and reports success. h2 calls flush
//! at least once on every poll of the connection, so the next flush comes
//! for sure; when it finds no new writes since the last one (h2 ran out of
//! frames), or when the buffer is full, the buffer is written out. The
//! extra poll lets the other streams of the connection add their frames
//! first. Writes at least as large as the buffer pass straight through.
//!
//! Copying costs about a microsecond per 16 KiB frame; the `writev` and
//! the peer's wake-up it saves cost several times that.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The most bytes held before they are written out: four 16 KiB frames
/// and their headers. Held only while h2 is writing; an idle connection
/// keeps no buffer.
const BUFFER_BYTES: usize = 64 * 1024 + 64;

/// An IO whose writes are gathered and written out together (module doc).
pub struct CoalescedWrites<T> {
    io: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already written out.
    written: usize,
    /// Writes came since the last flush call.
    fresh: bool,
}

impl<T> CoalescedWrites<T> {
    pub fn new(io: T) -> Self {
        CoalescedWrites {
            io,
            buf: Vec::new(),
            written: 0,
            fresh: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> CoalescedWrites<T> {
    /// Writes the buffer out; Ready once it is empty (and released).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        // Released rather than kept: most connections are idle most of
        // the time, and a buffer per idle connection adds up.
        self.buf = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `bufs` (total `len` bytes) into the buffer, or through to the
    /// IO when they would not fit even in an empty one.
    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
        len: usize,
    ) -> Poll<io::Result<usize>> {
        if self.buf.len() + len > BUFFER_BYTES {
            ready!(self.poll_drain(cx))?;
        }
        if len >= BUFFER_BYTES {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        self.fresh = true;
        Poll::Ready(Ok(len))
    }
}

/// tonic's server asks its connections for their connect info: the
/// wrapped connection's.
impl<T: Connected> Connected for CoalescedWrites<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let len = buf.len();
        self.poll_take(cx, &[io::IoSlice::new(buf)], len)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.poll_take(cx, bufs, len)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.is_empty() {
            return Pin::new(&mut self.io).poll_flush(cx);
        }
        if std::mem::take(&mut self.fresh) && self.buf.len() < BUFFER_BYTES {
            // h2 may have more to write: ask for another poll, whose
            // flush writes the buffer out unless more came by then.
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use crate::test_io::{Counted, Counts, pipe};

    struct Woken(AtomicUsize);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn pair() -> (CoalescedWrites<Counted>, DuplexStream, Counts) {
        let (io, peer, counts) = pipe();
        (CoalescedWrites::new(io), peer, counts)
    }

    fn ready<T>(p: Poll<io::Result<T>>) -> T {
        match p {
            Poll::Ready(r) => r.unwrap(),
            Poll::Pending => panic!("pending"),
        }
    }

    /// Frames written between two flush calls, as h2 writes a response
    /// (HEADERS and DATA, flush, trailers, flush), leave in one write, at
    /// the first flush that finds nothing new, which the wake-up promises.
    #[tokio::test]
    async fn a_burst_of_frames_leaves_in_one_write() {
        let (mut w, mut peer, writes) = pair();
        let woken = Arc::new(Woken(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let head = [1u8; 9];
        let data = vec![2u8; 4096];
        let slices = [io::IoSlice::new(&head), io::IoSlice::new(&data)];
        assert_eq!(
            ready(Pin::new(&mut w).poll_write_vectored(&mut cx, &slices)),
            4105
        );
        ready(Pin::new(&mut w).poll_flush(&mut cx));
        assert_eq!(writes.writes(), 0, "deferred");
        assert_eq!(woken.0.load(Ordering::Relaxed), 1, "another poll asked for");
        assert_eq!(ready(Pin::new(&mut w).poll_write(&mut cx, &[3u8; 20])), 20);
        ready(Pin::new(&mut w).poll_flush(&mut cx));
        assert_eq!(writes.writes(), 0, "more came: deferred again");
        ready(Pin::new(&mut w).poll_flush(&mut cx));
        assert_eq!(writes.writes(), 1, "nothing new: written out");
        let mut got = vec![0u8; 4125];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..9], &head);
        assert_eq!(&got[9..4105], &data[..]);
        assert_eq!(&got[4105..], &[3u8; 20]);
        // Nothing buffered: a flush is the IO's own.
        ready(Pin::new(&mut w).poll_flush(&mut cx));
        assert_eq!(writes.writes(), 1);
        assert_eq!(woken.0.load(Ordering::Relaxed), 2);
    }

    /// The buffer is written out when the next write would not fit, and a
    /// write as large as the buffer goes straight through; shutdown writes
    /// out what is held. Every byte arrives, in order.
    #[tokio::test]
    async fn a_full_buffer_and_large_writes_go_out_at_once() {
        let (mut w, mut peer, writes) = pair();
        let frame = |n: u8| vec![n; 16 * 1024 + 9];
        let mut sent = Vec::new();
        for n in 0..5u8 {
            w.write_all(&frame(n)).await.unwrap();
            sent.extend(frame(n));
        }
        // Four frames fit; the fifth made room by writing them out.
        assert_eq!(writes.writes(), 1);
        let big = vec![9u8; BUFFER_BYTES];
        w.write_all(&big).await.unwrap();
        sent.extend(&big);
        // The fifth frame, then the large write on its own.
        assert_eq!(writes.writes(), 3);
        w.write_all(b"tail").await.unwrap();
        sent.extend(b"tail");
        w.shutdown().await.unwrap();
        assert_eq!(writes.writes(), 4);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert!(got == sent);
    }
}
