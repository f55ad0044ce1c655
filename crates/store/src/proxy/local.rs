//! [`LocalTier`]: what the proxy needs of the store in front of the
//! backend, beyond [`Store`]. The disk store implements it; the proxy never
//! names the concrete type.

use std::path::PathBuf;

use async_trait::async_trait;
use bazel_cache_digest::BlobKey;

use crate::{Encoding, PutRequest, Store, StoreError};

/// What a successful write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The blob is new: the proxy queues it for upload.
    Stored,
    /// An equal blob was already there (nothing to upload again).
    AlreadyPresent,
}

#[async_trait]
pub trait LocalTier: Store {
    /// Like [`Store::put`], telling whether the blob is new.
    async fn put_new(&self, req: PutRequest) -> Result<Written, StoreError>;

    /// The stored file of a blob, its encoding and logical size, for an
    /// upload; `None` when no longer stored.
    fn open_blob(
        &self,
        key: &BlobKey,
    ) -> Result<Option<(std::fs::File, Encoding, u64)>, StoreError>;

    /// A fresh path on the same file system, for re-encoded uploads.
    fn scratch_path(&self) -> PathBuf;

    /// Waits until crash recovery has adopted the blobs it found, so that an
    /// upload queued before a crash does not find its blob "gone".
    async fn recovered(&self);
}
