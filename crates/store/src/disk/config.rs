//! The disk store's settings and their defaults, the one place each
//! default is written (the server's `--help` shows them).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::Encoding;
use crate::budget::{DEFAULT_MAX_BUFFER_MEMORY, DEFAULT_MEMORY_WAIT, MemoryBudget};

/// zstd level for CAS blobs in zstd storage mode: level 1 compresses at
/// several hundred MB/s per core, so compression does not dominate a PUT.
pub(super) const ZSTD_LEVEL: i32 = 1;

/// Write slots unless `max_concurrent_writes` says otherwise: the one place
/// this default is written (the server's `--help` shows it).
pub const DEFAULT_MAX_CONCURRENT_WRITES: usize = 256;

/// The least an upload body must bring, in bytes per second averaged over
/// [`DEFAULT_BODY_RATE_WINDOW`] of waiting on it (`body_min_rate`). 256 B/s
/// is 1/500 of a 1 Mbit/s link: a laptop on such a VPN uploading 100 blobs
/// at once (Bazel's `--remote_max_connections` default) gives each about
/// 1.25 kB/s, five times this; and a window asks for 7.5 KiB, less than one
/// of Bazel's 16 KiB ByteStream chunks, which gRPC delivers only whole.
pub const DEFAULT_BODY_MIN_RATE: u64 = 256;
/// The longest an upload body may go without a byte before the write is
/// abandoned (the server's `http_read_timeout` overrides it).
pub const DEFAULT_BODY_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The window over which [`DEFAULT_BODY_MIN_RATE`] is averaged
/// (`body_rate_window`). Long enough to ride out gRPC flow-control pauses,
/// TCP retransmission back-off and a chunk arriving whole on a slow link;
/// short enough that a body sending a byte a second is cut after 30 s of
/// waiting on it (the stall limit alone let it run for ever, and before
/// that cut only a body silent for 60 s).
pub const DEFAULT_BODY_RATE_WINDOW: Duration = Duration::from_secs(30);

/// Settings of the disk store; the server fills them from its validated config.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub dir: PathBuf,
    pub max_size_bytes: u64,
    /// How CAS blobs are kept on disk (AC entries are always kept as sent).
    pub cas_encoding: Encoding,
    pub max_blob_size: u64,
    pub fsync: bool,
    /// A read moves an entry to the LRU tail at most once per this interval,
    /// so hot blobs don't turn every read into an index write.
    pub touch_interval: Duration,
    /// `max_size_hard_limit`: writes are refused when the bytes in flight
    /// (being received) would exceed it. `None`: max_size is the bound.
    pub hard_limit_bytes: Option<u64>,
    /// Write slots (`max_concurrent_writes`): writes working on bytes
    /// they have at once; more wait, first come first served (see
    /// [`DiskStore`]'s `write_slots`).
    pub max_concurrent_writes: usize,
    /// How long a write waits for a slot before it is refused as busy.
    pub write_slot_wait: Duration,
    /// A body that sends nothing for this long is abandoned, freeing its
    /// reservation and temp file (`http_read_timeout`, default 60 s).
    pub body_stall_timeout: Duration,
    /// A body must also bring this many bytes per second averaged over
    /// every `body_rate_window` of waiting on it, or it is abandoned the
    /// same way (`body_min_rate`; 0: no rate check).
    pub body_min_rate: u64,
    pub body_rate_window: Duration,
    /// The memory budget (`max_buffer_memory`) a write's buffers and zstd
    /// contexts, and a read's decoder, are reserved from; shared with the
    /// front ends.
    pub memory: Arc<MemoryBudget>,
}

impl DiskConfig {
    pub fn new(dir: impl Into<PathBuf>, max_size_bytes: u64) -> Self {
        DiskConfig {
            dir: dir.into(),
            max_size_bytes,
            cas_encoding: Encoding::Zstd,
            max_blob_size: u64::MAX,
            fsync: true,
            touch_interval: Duration::from_secs(60),
            hard_limit_bytes: None,
            max_concurrent_writes: DEFAULT_MAX_CONCURRENT_WRITES,
            write_slot_wait: Duration::from_secs(60),
            body_stall_timeout: DEFAULT_BODY_STALL_TIMEOUT,
            body_min_rate: DEFAULT_BODY_MIN_RATE,
            body_rate_window: DEFAULT_BODY_RATE_WINDOW,
            memory: MemoryBudget::new(DEFAULT_MAX_BUFFER_MEMORY, DEFAULT_MEMORY_WAIT),
        }
    }
}
