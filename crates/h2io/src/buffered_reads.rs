//! Read buffering for an h2 client connection: one `recv` takes whatever
//! the socket holds, however little room h2's frame buffer has left.
//!
//! h2 reads into the spare capacity of its frame buffer (tokio-util's
//! codec: 8 KiB to start, split off as frames are taken), so the bench's
//! gRPC client read a 4 KiB BatchReadBlobs answer in two `recvfrom`s, 3,993
//! bytes and then 218. [`BufferedReads`] reads into a buffer of its own,
//! [`BUFFER_BYTES`], whenever the caller offers less room than that, and
//! serves the caller from it until it is empty; a read offering at least
//! that much room goes straight to the socket, so large transfers are not
//! copied twice.
//!
//! The buffer lives as long as the connection, allocated on its first
//! small read: right for a client with a connection per worker, not for a
//! server's thousands of mostly idle connections, which is why the server
//! does not use it (it reads one request per `recv` already).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes one read from the socket takes: four 16 KiB frames and
/// their headers, as [`crate::CoalescedWrites`] holds at most on the
/// other side.
const BUFFER_BYTES: usize = 64 * 1024 + 64;

/// An IO whose small reads are served from one large read (module doc).
/// Writes pass through untouched.
pub struct BufferedReads<T> {
    io: T,
    buf: Box<[u8]>,
    /// `buf[start..end]` is read from the socket and not yet taken.
    start: usize,
    end: usize,
}

impl<T> BufferedReads<T> {
    pub fn new(io: T) -> Self {
        BufferedReads {
            io,
            buf: Box::default(),
            start: 0,
            end: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for BufferedReads<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if out.remaining() == 0 {
            // Nothing asked: reading now would hold bytes for no one, and
            // an empty answer to a read with room means end of stream.
            return Poll::Ready(Ok(()));
        }
        if this.start == this.end {
            if out.remaining() >= BUFFER_BYTES {
                return Pin::new(&mut this.io).poll_read(cx, out);
            }
            if this.buf.is_empty() {
                this.buf = vec![0; BUFFER_BYTES].into_boxed_slice();
            }
            let mut into = ReadBuf::new(&mut this.buf);
            // Pending or an error leaves the buffer empty (start == end).
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut into))?;
            this.start = 0;
            this.end = into.filled().len();
            // 0 bytes: end of stream, passed on as an empty read.
        }
        let n = out.remaining().min(this.end - this.start);
        out.put_slice(&this.buf[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for BufferedReads<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use crate::test_io::{Counted, Counts, pipe};

    fn pair() -> (BufferedReads<Counted>, DuplexStream, Counts) {
        let (io, peer, counts) = pipe();
        (BufferedReads::new(io), peer, counts)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// A 4 KiB answer (frame headers and all: 4,211 bytes) read into the
    /// little room h2 has, 3,993 bytes and then the rest, comes from one
    /// read of the socket, byte for byte.
    #[tokio::test]
    async fn small_reads_are_served_from_one_read_of_the_socket() {
        let (mut r, mut peer, reads) = pair();
        let sent = pattern(4211);
        peer.write_all(&sent).await.unwrap();
        let mut first = vec![0u8; 3993];
        r.read_exact(&mut first).await.unwrap();
        let mut rest = vec![0u8; 218];
        r.read_exact(&mut rest).await.unwrap();
        assert_eq!(reads.reads(), 1);
        first.extend(rest);
        assert!(first == sent);
    }

    /// A read with room for the whole buffer goes straight to the socket;
    /// bytes already buffered are served first, and the end of the stream
    /// comes through as an empty read.
    #[tokio::test]
    async fn large_reads_pass_through_and_end_of_stream_is_seen() {
        let (mut r, mut peer, reads) = pair();
        let sent = pattern(200 * 1024);
        peer.write_all(&sent).await.unwrap();
        drop(peer);
        let mut got = vec![0u8; 100];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(reads.reads(), 1, "one buffered read");
        let mut big = vec![0u8; 128 * 1024];
        // What the buffer holds first, without a read of the socket.
        let n = r.read(&mut big).await.unwrap();
        assert_eq!(n, BUFFER_BYTES - 100);
        assert_eq!(reads.reads(), 1);
        got.extend_from_slice(&big[..n]);
        // Then straight from the socket into the caller's room.
        let n = r.read(&mut big).await.unwrap();
        assert_eq!(n, big.len());
        assert_eq!(reads.reads(), 2);
        got.extend_from_slice(&big[..n]);
        r.read_to_end(&mut got).await.unwrap();
        assert!(got == sent);
        assert_eq!(r.read(&mut big).await.unwrap(), 0);
    }

    /// Writes reach the peer untouched.
    #[tokio::test]
    async fn writes_pass_through() {
        let (mut r, mut peer, _) = pair();
        r.write_all(b"request").await.unwrap();
        r.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
    }
}
