//! The S3/MinIO proxy backend: a [`Store`](crate::store::Store) that keeps
//! the local disk store in front of a bucket shared by every replica.
//!
//! - `client.rs`: a small S3 client on hyper, signed with aws-sigv4
//! - `keys.rs`: bazel-remote's object key layout
//! - `casblob.rs`: bazel-remote's chunked zstd format of `cas.v2` objects
//! - `queue.rs`: the persisted write-behind queue
//! - `proxy.rs`: read-through, write-behind, the `Store` implementation

pub mod casblob;
pub mod client;
mod keys;
mod proxy;
mod queue;

pub use client::{S3Client, S3Error, S3RequestStats};
pub use proxy::{ProxyConfig, S3ProxyStore, S3Stats};
pub use queue::QueueStats;
