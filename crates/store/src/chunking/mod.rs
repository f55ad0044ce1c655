//! Blob chunking for REAPI's SplitBlob and SpliceBlob: large blobs move as
//! content-defined chunks, so a client uploads or downloads only the chunks
//! the other side lacks.
//!
//! This is storage logic, not protocol: which bytes make a chunk
//! (FastCDC), that every chunk and every spliced blob is an ordinary CAS
//! blob hashed as it is written. The gRPC front end only translates.
//!
//! A spliced blob is stored whole, streamed chunk after chunk through the
//! store's normal put path (hashed once as the bytes flow, refused unless
//! it matches the digest the client named). No chunk manifest is kept: a
//! manifest would make one blob depend on many others that LRU eviction
//! removes independently, and every tier (disk, the S3 write-behind, a
//! bazel-remote reading our S3 objects) would have to understand it. The
//! price is storing the chunks and the blob; the chunks can be evicted on
//! their own.
//!
//! # Layout
//! - `fastcdc.rs`: the FastCDC 2020 chunker, checked against the spec's
//!   test vectors.
//! - `gear.rs`: its gear table (a constant; a test recomputes it).
//! - `split.rs`: a stored blob cut into chunks, each stored as a CAS blob.
//! - `splice.rs`: stored chunks concatenated into a verified CAS blob.

mod fastcdc;
mod gear;
mod splice;
mod split;

pub use fastcdc::{Chunk, FastCdc, MAX_AVERAGE, MIN_AVERAGE, ParamsError};
pub use splice::{SpliceError, splice};
pub use split::split;

/// The average chunk size this server announces and splits with: the
/// spec's recommended 512 KiB (chunks of 128 KiB to 2 MiB).
pub const DEFAULT_AVERAGE: u64 = 512 * 1024;

/// The seed announced and used: the spec's recommended 0, so that every
/// client sharing the cache cuts at the same places.
pub const DEFAULT_SEED: u32 = 0;
