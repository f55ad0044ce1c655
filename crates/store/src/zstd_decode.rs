//! The one way to decode zstd: [`decoder`], with the window capped at
//! [`MAX_WINDOW`] and the decoder's memory reserved from the budget before
//! it is allocated. Every zstd body a client sends (HTTP PUT, ByteStream
//! and batch writes, the empty blob's check) and every stored blob decoded
//! for a reader goes through it. (Files the store wrote itself and reads
//! back in bulk, in crash recovery and S3 uploads, use zstd's own decoder:
//! their windows are the store's 512 KiB.)
//!
//! Why 8 MiB (window log 23): it is the largest window any standard zstd
//! level uses — level 1: 512 KiB, 3 (zstd-jni's default, so Bazel's
//! `ZstdCompressingInputStream`, which streams without a size): 2 MiB, 9 to
//! 16: 4 MiB, 17 to 19: 8 MiB; a one-shot frame's window is at most its
//! level's. Only `--ultra` levels (20 to 22: 32 to 128 MiB) and `--long`
//! (128 MiB) go beyond, and libzstd's own default limit (128 MiB) let a
//! 256 KiB bomb take 128 MiB per request. A frame over the limit is refused
//! with [`FrameError::WindowTooLarge`] before anything is allocated or
//! stored (HTTP 400, gRPC INVALID_ARGUMENT).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use async_compression::tokio::bufread::ZstdDecoder;
use async_compression::zstd::DParameter;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader, ReadBuf};

use crate::StoreError;
use crate::budget::{MemoryBudget, MemoryExhausted, MemoryUse, Reservation};
use crate::zstd_frame::{FrameError, FrameWalker};

/// Window log of [`MAX_WINDOW`].
pub const MAX_WINDOW_LOG: u32 = 23;
/// The largest window a zstd frame may declare: 8 MiB.
pub const MAX_WINDOW: u64 = 1 << MAX_WINDOW_LOG;
/// The decoder's input buffer.
const INPUT_BUFFER: usize = 64 * 1024;
/// Reserved before the first frame header is seen: the input buffer and a
/// decoding context with a small window (a frame header then grows it).
const INITIAL_RESERVATION: u64 = INPUT_BUFFER as u64 + 128 * 1024;

/// A zstd body being decoded: read it like any [`AsyncRead`].
pub type ZstdBody<R> = ZstdDecoder<FrameGuard<BufReader<R>>>;

/// A decoder of `input` (one or more zstd frames), its memory reserved
/// from `memory`: the input buffer and a small context now, each frame's
/// [`decoder_memory`](crate::zstd_frame::FrameHeader::decoder_memory) as
/// its header arrives (waiting for the budget as a reservation does). Its
/// reads fail with an error [`StoreError::body`](crate::StoreError::body)
/// turns into a client error for a refused frame, and into
/// `MemoryExhausted` when the budget stays full.
pub async fn decoder<R: AsyncRead + Unpin>(
    input: R,
    memory: &Arc<MemoryBudget>,
) -> Result<ZstdBody<R>, MemoryExhausted> {
    let held = memory
        .reserve(MemoryUse::ZstdDecoder, INITIAL_RESERVATION)
        .await?;
    let guard = FrameGuard {
        inner: BufReader::with_capacity(INPUT_BUFFER, input),
        walker: FrameWalker::new(MAX_WINDOW),
        scanned: 0,
        memory: memory.clone(),
        held,
        growing: None,
    };
    let mut dec = ZstdDecoder::with_params(guard, &[DParameter::window_log_max(MAX_WINDOW_LOG)]);
    dec.multiple_members(true);
    Ok(dec)
}

/// Reads ahead to the first frame header of a stored blob's `body` and
/// reserves that frame's memory, so that a reader learns now, before it
/// answers its client, that the budget is full, rather than mid-stream.
pub async fn reserve_first_frame<R: AsyncRead + Unpin>(
    body: &mut ZstdBody<R>,
) -> Result<(), StoreError> {
    match body.get_mut().fill_buf().await {
        Ok(_) => Ok(()),
        Err(e) => Err(match StoreError::body(e) {
            StoreError::MemoryExhausted(m) => StoreError::MemoryExhausted(m),
            StoreError::Body(e) => StoreError::Io(e),
            other => StoreError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                other.to_string(),
            )),
        }),
    }
}

type Growing = Pin<Box<dyn Future<Output = Result<Reservation, MemoryExhausted>> + Send>>;

/// Sits between a zstd body and its decoder: every byte passes the
/// [`FrameWalker`] before the decoder may consume it, so a frame header is
/// checked, and its memory reserved, before the decoder reads the end of
/// it (it allocates only then).
pub struct FrameGuard<R> {
    inner: R,
    walker: FrameWalker,
    /// Bytes at the front of `inner`'s buffer the walker has seen.
    scanned: usize,
    memory: Arc<MemoryBudget>,
    /// The decoder's memory, held until it is dropped; it only grows, as
    /// libzstd keeps its largest buffers.
    held: Reservation,
    /// A growth of `held` waiting for the budget.
    growing: Option<Growing>,
}

fn refused(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<R: AsyncBufRead + Unpin> FrameGuard<R> {
    /// Scans what `inner` has buffered beyond `scanned`; returns whether
    /// the reservation must grow first (and starts growing it).
    fn poll_scan(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(growing) = self.growing.as_mut() {
                let more = ready!(growing.as_mut().poll(cx)).map_err(io::Error::other)?;
                self.growing = None;
                self.held.merge(more);
            }
            let buf = ready!(Pin::new(&mut self.inner).poll_fill_buf(cx))?;
            if self.scanned >= buf.len() {
                return Poll::Ready(Ok(()));
            }
            let need = self
                .walker
                .scan(&buf[self.scanned..])
                .map_err(refused)?
                .saturating_add(INPUT_BUFFER as u64);
            self.scanned = buf.len();
            let more = need.saturating_sub(self.held.bytes());
            if more == 0 {
                return Poll::Ready(Ok(()));
            }
            let memory = self.memory.clone();
            self.growing = Some(Box::pin(async move {
                memory.reserve(MemoryUse::ZstdDecoder, more).await
            }));
        }
    }
}

impl<R: AsyncBufRead + Unpin> AsyncRead for FrameGuard<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let buf = ready!(Pin::new(&mut *this).poll_fill_buf(cx))?;
        let n = buf.len().min(out.remaining());
        out.put_slice(&buf[..n]);
        Pin::new(this).consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncBufRead + Unpin> AsyncBufRead for FrameGuard<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        ready!(this.poll_scan(cx))?;
        // Buffered, and scanned: returned at once.
        Pin::new(&mut this.inner).poll_fill_buf(cx)
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.scanned = this.scanned.saturating_sub(amt);
        Pin::new(&mut this.inner).consume(amt);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::zstd_frame::tests::rle_frame;

    async fn decode(stream: Vec<u8>, memory: &Arc<MemoryBudget>) -> Result<Vec<u8>, StoreError> {
        let mut dec = decoder(io::Cursor::new(stream), memory).await?;
        let mut out = Vec::new();
        dec.read_to_end(&mut out).await.map_err(StoreError::body)?;
        Ok(out)
    }

    fn budget(limit: u64) -> Arc<MemoryBudget> {
        MemoryBudget::new(limit, Duration::from_millis(100))
    }

    #[tokio::test]
    async fn bazel_typical_streams_decode_and_release_their_memory() {
        let memory = budget(64 << 20);
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        for level in [1, 3, 19] {
            // zstd-jni's streaming output: no content size.
            let mut enc = zstd::stream::Encoder::new(Vec::new(), level).unwrap();
            enc.write_all(&data).unwrap();
            let stream = enc.finish().unwrap();
            assert_eq!(decode(stream, &memory).await.unwrap(), data, "{level}");
            assert_eq!(memory.in_use(), 0);
        }
    }

    #[tokio::test]
    async fn the_reservation_follows_the_frame_header() {
        let memory = budget(64 << 20);
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
        enc.write_all(&[7u8; 10_000]).unwrap();
        let stream = enc.finish().unwrap();
        let mut dec = decoder(io::Cursor::new(stream), &memory).await.unwrap();
        assert_eq!(memory.in_use(), INITIAL_RESERVATION);
        reserve_first_frame(&mut dec).await.unwrap();
        // The input buffer and the 8 MiB window's decoder.
        assert_eq!(
            memory.in_use(),
            INPUT_BUFFER as u64 + (96 + 128 + 8192 + 256) * 1024
        );
        let mut out = Vec::new();
        dec.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, [7u8; 10_000]);
        drop(dec);
        assert_eq!(memory.in_use(), 0);
    }

    #[tokio::test]
    async fn a_large_window_is_refused_as_the_clients_error() {
        let memory = budget(1 << 30);
        // A bomb: 128 MiB window, 1 GiB of zeros in 32 KiB.
        let bomb = rle_frame(27, 8192, 128 << 10);
        let err = decode(bomb, &memory).await.unwrap_err();
        assert!(err.is_client_error(), "{err:?}");
        assert!(
            err.to_string().contains(
                "zstd frame needs a 128 MiB window, more than this server's limit of 8 MiB"
            ),
            "{err}"
        );
        assert_eq!(memory.in_use(), 0);
        // One byte over the limit's descriptor (9 MiB) after a good frame.
        let mut stream = zstd::bulk::compress(b"fine", 3).unwrap();
        stream.extend_from_slice(&rle_frame(23, 1, 100));
        decode(stream.clone(), &memory).await.unwrap();
        let last = stream.len() - 5;
        stream[last] |= 1;
        let err = decode(stream, &memory).await.unwrap_err();
        assert!(err.to_string().contains("9 MiB window"), "{err}");
    }

    #[tokio::test]
    async fn a_decoder_waits_for_memory_and_is_refused_when_none_frees() {
        let memory = budget(4 << 20);
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(b"two MiB window").unwrap();
        let stream = enc.finish().unwrap();
        let held = memory
            .reserve(MemoryUse::ReadBuffer, 3 << 20)
            .await
            .unwrap();
        let err = decode(stream.clone(), &memory).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::MemoryExhausted(MemoryExhausted {
                    what: MemoryUse::ZstdDecoder,
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(memory.refused(MemoryUse::ZstdDecoder), 1);
        assert_eq!(memory.in_use(), 3 << 20);
        drop(held);
        assert_eq!(decode(stream, &memory).await.unwrap(), b"two MiB window");
    }

    #[tokio::test]
    async fn garbage_is_refused_before_the_decoder_sees_it() {
        let memory = budget(64 << 20);
        let err = decode(b"not zstd at all".to_vec(), &memory)
            .await
            .unwrap_err();
        assert!(err.is_client_error(), "{err:?}");
        assert!(err.to_string().contains("not a zstd frame"), "{err}");
    }
}
