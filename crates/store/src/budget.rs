//! The memory budget: one bound (`max_buffer_memory`) on the memory that
//! requests hold in buffers and decoders, whatever the protocol.
//!
//! Why: what a request costs in memory does not follow from its size on the
//! wire. A 256 KiB zstd bomb made a decoder allocate its frame's 128 MiB
//! window (96 of them: 12 GB resident); 3,000 ByteStream Reads parked
//! behind a zero flow-control window held 3.7 GB of chunks. Counting
//! requests (write slots, stream caps) bounds none of that, so every
//! holder of a large buffer reserves its bytes here first:
//!
//! - [`MemoryUse::ZstdDecoder`]: a zstd decoder of a request body or of a
//!   stored blob, sized from its frame header before it decodes
//!   (`zstd_decode.rs`);
//! - [`MemoryUse::UploadBuffer`]: a write's receive buffer and zstd encoder
//!   (the disk store), ByteStream Write chunks queued for the store, HTTP
//!   action-cache bodies read whole;
//! - [`MemoryUse::ReadBuffer`]: the chunks a download holds while its
//!   client reads (ByteStream Read, HTTP GET; see [`ReadBuffers`]).
//!
//! A reservation that does not fit waits up to [`DEFAULT_MEMORY_WAIT`] for
//! others to be released, then is refused with [`MemoryExhausted`]: the
//! front ends answer HTTP 503 (with `Retry-After`) or gRPC
//! RESOURCE_EXHAUSTED, which clients retry. Refusals are counted by use
//! (metrics). Waiters are served in arrival order (tokio's semaphore is
//! fair), so a large reservation is not starved by a stream of small ones.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `max_buffer_memory` unless configured: 1 GiB. It holds 256 concurrent
/// writes (`max_concurrent_writes`) into zstd storage at their largest
/// (a 256 KiB buffer and a 1.3 MiB encoder each: 416 MiB) with room left
/// for ~60 decoders at the largest window allowed, or ~500 large reads
/// decoding stored blobs; and it bounds what a flood can make the server
/// hold to a size any host running a cache has.
pub const DEFAULT_MAX_BUFFER_MEMORY: u64 = 1 << 30;
/// The least `max_buffer_memory` accepted: a few decoders at the largest
/// window allowed ([`crate::zstd_decode::MAX_WINDOW`], 8 MiB) must fit,
/// or every large compressed upload would be refused.
pub const MIN_MAX_BUFFER_MEMORY: u64 = 32 << 20;
/// How long a reservation waits for memory before it is refused: long
/// enough to ride out a burst of honest requests finishing, short enough
/// that a client under a flood hears "retry" instead of hanging.
pub const DEFAULT_MEMORY_WAIT: Duration = Duration::from_secs(2);

/// Memory of a streaming zstd compressor at level 1 (what the store and
/// on-the-fly compressed reads use): `ZSTD_sizeof_CCtx` after the first
/// block of a stream of unknown size, measured with zstd 1.5.7: 1,337 KiB.
pub const ZSTD_ENCODER_BYTES: u64 = 1400 * 1024;

/// The largest chunk a download sends at a time, when memory is plentiful.
pub const READ_CHUNK_MAX: usize = 256 * 1024;
/// The smallest: tonic's encoder yields a frame once it holds 32 KiB
/// (`DEFAULT_YIELD_THRESHOLD`), so smaller messages would only be coalesced
/// into frames of that size again.
pub const READ_CHUNK_MIN: usize = 32 * 1024;
/// Chunks a download may hold at once, which [`ReadBuffers`] reserves: the
/// one being read from the blob (a tokio `File` keeps a buffer of the last
/// read's size as well), and on an HTTP/2 stream the one hyper holds while
/// it waits for flow-control capacity plus the one h2 is still sending.
/// A stream parked behind a zero window from the start holds one.
pub const READ_CHUNKS_HELD: u64 = 3;

/// What a reservation is for (the `what` label of the refusal counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryUse {
    ZstdDecoder,
    UploadBuffer,
    ReadBuffer,
}

impl MemoryUse {
    pub const ALL: [MemoryUse; 3] = [
        MemoryUse::ZstdDecoder,
        MemoryUse::UploadBuffer,
        MemoryUse::ReadBuffer,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            MemoryUse::ZstdDecoder => "zstd_decoder",
            MemoryUse::UploadBuffer => "upload_buffer",
            MemoryUse::ReadBuffer => "read_buffer",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for MemoryUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemoryUse::ZstdDecoder => "a zstd decoder",
            MemoryUse::UploadBuffer => "upload buffers",
            MemoryUse::ReadBuffer => "read buffers",
        })
    }
}

/// A reservation refused: the budget stayed full for the whole wait. The
/// client should retry (HTTP 503, gRPC RESOURCE_EXHAUSTED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "server out of buffer memory: {what} needs {bytes} bytes, but {in_use} of the {limit} bytes \
     of max_buffer_memory stayed in use for {wait_ms} ms; retry later"
)]
pub struct MemoryExhausted {
    pub what: MemoryUse,
    pub bytes: u64,
    pub in_use: u64,
    pub limit: u64,
    pub wait_ms: u64,
}

/// The budget: bytes as semaphore permits, one per byte.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    wait: Duration,
    permits: Arc<Semaphore>,
    refused: [AtomicU64; 3],
}

impl MemoryBudget {
    /// A budget of `limit` bytes whose reservations wait up to `wait`.
    pub fn new(limit: u64, wait: Duration) -> Arc<MemoryBudget> {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS as u64);
        Arc::new(MemoryBudget {
            limit,
            wait,
            permits: Arc::new(Semaphore::new(limit as usize)),
            refused: Default::default(),
        })
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes reserved now (metrics).
    pub fn in_use(&self) -> u64 {
        self.limit - self.permits.available_permits() as u64
    }

    /// Reservations of `what` refused since start (metrics).
    pub fn refused(&self, what: MemoryUse) -> u64 {
        self.refused[what.index()].load(Ordering::Relaxed)
    }

    /// Reserves `bytes` for `what`, waiting up to the budget's wait for
    /// them to be free.
    pub async fn reserve(
        self: &Arc<Self>,
        what: MemoryUse,
        bytes: u64,
    ) -> Result<Reservation, MemoryExhausted> {
        let permits = u32::try_from(bytes).ok().filter(|_| bytes <= self.limit);
        let acquired = match permits {
            Some(n) => tokio::time::timeout(self.wait, self.permits.clone().acquire_many_owned(n))
                .await
                .ok()
                .and_then(Result::ok),
            // Larger than the whole budget: waiting cannot help.
            None => None,
        };
        match acquired {
            Some(permit) => Ok(Reservation {
                permit: Some(permit),
            }),
            None => Err(self.refuse(what, bytes)),
        }
    }

    /// Reserves `bytes` for `what` only if they are free now.
    pub fn try_reserve(
        self: &Arc<Self>,
        what: MemoryUse,
        bytes: u64,
    ) -> Result<Reservation, MemoryExhausted> {
        u32::try_from(bytes)
            .ok()
            .and_then(|n| self.permits.clone().try_acquire_many_owned(n).ok())
            .map(|permit| Reservation {
                permit: Some(permit),
            })
            .ok_or_else(|| self.refuse(what, bytes))
    }

    /// Grows `held` to `bytes` in all (never shrinks it).
    pub async fn grow(
        self: &Arc<Self>,
        held: &mut Reservation,
        what: MemoryUse,
        bytes: u64,
    ) -> Result<(), MemoryExhausted> {
        let more = bytes.saturating_sub(held.bytes());
        if more > 0 {
            let added = self.reserve(what, more).await?;
            held.merge(added);
        }
        Ok(())
    }

    /// The buffers of one download of `len` bytes (when known): a chunk size
    /// chosen from how much of the budget is free (the full
    /// [`READ_CHUNK_MAX`] while at least half is free, then smaller down to
    /// [`READ_CHUNK_MIN`]: many slow readers then hold less each), no larger
    /// than the download (at least 4 KiB), reserved [`READ_CHUNKS_HELD`]
    /// times.
    pub async fn reserve_read(
        self: &Arc<Self>,
        len: Option<u64>,
    ) -> Result<ReadBuffers, MemoryExhausted> {
        let free = self.permits.available_permits() as u64;
        let by_budget = if free >= self.limit / 2 {
            READ_CHUNK_MAX
        } else if free >= self.limit / 4 {
            READ_CHUNK_MAX / 4
        } else {
            READ_CHUNK_MIN
        };
        let chunk = len.map_or(by_budget, |len| {
            by_budget.min(usize::try_from(len.max(4096)).unwrap_or(usize::MAX))
        });
        let reservation = self
            .reserve(MemoryUse::ReadBuffer, chunk as u64 * READ_CHUNKS_HELD)
            .await?;
        Ok(ReadBuffers { chunk, reservation })
    }

    fn refuse(&self, what: MemoryUse, bytes: u64) -> MemoryExhausted {
        self.refused[what.index()].fetch_add(1, Ordering::Relaxed);
        MemoryExhausted {
            what,
            bytes,
            in_use: self.in_use(),
            limit: self.limit,
            wait_ms: self.wait.as_millis() as u64,
        }
    }
}

/// Bytes held against the budget until dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// A reservation of nothing.
    pub fn none() -> Reservation {
        Reservation::default()
    }

    pub fn bytes(&self) -> u64 {
        self.permit.as_ref().map_or(0, |p| p.num_permits() as u64)
    }

    /// Takes over `other`'s bytes.
    pub fn merge(&mut self, other: Reservation) {
        match (&mut self.permit, other.permit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

/// What a download holds: the chunk size it reads and sends, and the
/// reservation covering [`READ_CHUNKS_HELD`] chunks of it. Keep it alive as
/// long as the response body (a stream that is dropped lets it go).
#[derive(Debug)]
pub struct ReadBuffers {
    pub chunk: usize,
    pub reservation: Reservation,
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn reservations_are_released_on_drop() {
        let budget = MemoryBudget::new(1000, WAIT);
        let a = budget.reserve(MemoryUse::UploadBuffer, 600).await.unwrap();
        assert_eq!(budget.in_use(), 600);
        let b = budget.reserve(MemoryUse::ReadBuffer, 400).await.unwrap();
        assert_eq!((a.bytes(), b.bytes(), budget.in_use()), (600, 400, 1000));
        drop(a);
        assert_eq!(budget.in_use(), 400);
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_reservation_waits_for_memory_to_be_released() {
        let budget = MemoryBudget::new(1000, Duration::from_secs(30));
        let held = budget.reserve(MemoryUse::ZstdDecoder, 900).await.unwrap();
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(MemoryUse::ZstdDecoder, 500).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(held);
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got.bytes(), 500);
        assert_eq!(budget.refused(MemoryUse::ZstdDecoder), 0);
    }

    #[tokio::test]
    async fn a_reservation_that_does_not_fit_in_time_is_refused_and_counted() {
        let budget = MemoryBudget::new(1000, WAIT);
        let _held = budget.reserve(MemoryUse::ReadBuffer, 900).await.unwrap();
        let err = budget
            .reserve(MemoryUse::ZstdDecoder, 500)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            MemoryExhausted {
                what: MemoryUse::ZstdDecoder,
                bytes: 500,
                in_use: 900,
                limit: 1000,
                wait_ms: 200,
            }
        );
        assert!(err.to_string().contains("max_buffer_memory"), "{err}");
        assert!(err.to_string().contains("retry"), "{err}");
        assert_eq!(budget.refused(MemoryUse::ZstdDecoder), 1);
        assert_eq!(budget.refused(MemoryUse::ReadBuffer), 0);
        // Nothing leaked by the refusal.
        assert_eq!(budget.in_use(), 900);
        assert!(budget.try_reserve(MemoryUse::UploadBuffer, 101).is_err());
        assert_eq!(budget.refused(MemoryUse::UploadBuffer), 1);
        budget.try_reserve(MemoryUse::UploadBuffer, 100).unwrap();
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_at_once() {
        let budget = MemoryBudget::new(1000, Duration::from_secs(3600));
        let err = budget
            .reserve(MemoryUse::UploadBuffer, 1001)
            .await
            .unwrap_err();
        assert_eq!(err.bytes, 1001);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_reservation_grows_and_is_released_whole() {
        let budget = MemoryBudget::new(1000, WAIT);
        let mut held = Reservation::none();
        budget
            .grow(&mut held, MemoryUse::ZstdDecoder, 300)
            .await
            .unwrap();
        budget
            .grow(&mut held, MemoryUse::ZstdDecoder, 200)
            .await
            .unwrap();
        assert_eq!(held.bytes(), 300, "never shrinks");
        budget
            .grow(&mut held, MemoryUse::ZstdDecoder, 800)
            .await
            .unwrap();
        assert_eq!((held.bytes(), budget.in_use()), (800, 800));
        let err = budget
            .grow(&mut held, MemoryUse::ZstdDecoder, 1001)
            .await
            .unwrap_err();
        assert_eq!(err.bytes, 201);
        assert_eq!(held.bytes(), 800, "a refused growth keeps what was held");
        drop(held);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn downloads_get_smaller_chunks_when_memory_is_tight() {
        let limit = 64 * READ_CHUNK_MAX as u64;
        let budget = MemoryBudget::new(limit, WAIT);
        let first = budget.reserve_read(None).await.unwrap();
        assert_eq!(first.chunk, READ_CHUNK_MAX);
        assert_eq!(
            first.reservation.bytes(),
            READ_CHUNK_MAX as u64 * READ_CHUNKS_HELD
        );
        let _most = budget
            .reserve(MemoryUse::UploadBuffer, limit / 2)
            .await
            .unwrap();
        assert_eq!(
            budget.reserve_read(Some(1 << 30)).await.unwrap().chunk,
            READ_CHUNK_MAX / 4
        );
        let _more = budget
            .reserve(MemoryUse::UploadBuffer, limit / 4)
            .await
            .unwrap();
        let tight = budget.reserve_read(None).await.unwrap();
        assert_eq!(tight.chunk, READ_CHUNK_MIN);
        // A small download holds buffers of its size, at least 4 KiB.
        let small = budget.reserve_read(Some(10_000)).await.unwrap();
        assert_eq!((small.chunk, small.reservation.bytes()), (10_000, 30_000));
        assert_eq!(budget.reserve_read(Some(0)).await.unwrap().chunk, 4096);
        drop(small);
        drop((first, tight));
        assert_eq!(budget.in_use(), limit / 2 + limit / 4);
    }
}
