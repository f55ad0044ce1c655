//! Integration tests of the disk store through its public API: round trips in
//! both CAS storage encodings, rejected writes, size accounting, LRU
//! eviction, restart, crash recovery, concurrency, large streamed blobs and
//! reads that outlive their blob's eviction.
//!
//! Most stores run with `fsync: false` (speed) and `touch_interval: 0` (every
//! read moves its entry to the LRU tail). Touches reach the index through the
//! store's writer thread asynchronously: tests call `flush()` before looking
//! at LRU order.
//!
//! One module per concern; what they share (store set-up, blob generators,
//! assertions against the files on disk, test bodies) is in `helpers`.

mod adopt;
mod concurrency;
mod eviction;
mod find_missing;
mod helpers;
mod limits;
mod outliving_reads;
mod recovery;
mod rejected_writes;
mod restart;
mod round_trips;
mod size_accounting;
