//! The empty-blob rule, as a [`Store`] decorator (one rule, one file, as in
//! Buildbarn's bb-storage).
//!
//! Why: REAPI says every CAS holds the empty blob; Bazel never uploads it and
//! expects FindMissingBlobs to call it present, and a read of it to succeed.
//! Answering here, above every store, means no store has to special-case it
//! (the disk store once did in five places), no index entry or file is spent
//! on it, and a proxy never asks its backend for it.
//!
//! A write of the empty blob is still verified: a non-empty body under the
//! empty hash is a client error, exactly as for any other blob.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bazel_cache_digest::{BlobKey, Digest, Hasher, Kind};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::budget::{DEFAULT_MAX_BUFFER_MEMORY, DEFAULT_MEMORY_WAIT, MemoryBudget};
use crate::progress::ProgressGuard;
use crate::zstd_decode;
use crate::{Blob, BlobBody, Encoding, PutRequest, Store, StoreError, StoreStats};

/// Whether `key` names the empty CAS blob (of its digest function).
pub fn is_empty_blob(key: &BlobKey) -> bool {
    key.kind == Kind::Cas && key.hash.is_empty_blob()
}

/// Serves the empty blob without asking `inner`; passes everything else on.
pub struct EmptyBlob<S> {
    inner: S,
    /// Bounds a write body under the empty hash that stops sending, as the
    /// disk store bounds every other body.
    body_stall_timeout: Duration,
    /// What a zstd body's decoder reserves its memory from.
    memory: Arc<MemoryBudget>,
}

impl<S: Store> EmptyBlob<S> {
    pub fn new(inner: S, body_stall_timeout: Duration) -> Self {
        EmptyBlob {
            inner,
            body_stall_timeout,
            memory: MemoryBudget::new(DEFAULT_MAX_BUFFER_MEMORY, DEFAULT_MEMORY_WAIT),
        }
    }

    /// Decodes zstd bodies within `memory` (the server's one budget)
    /// instead of a budget of the default size of its own.
    pub fn with_memory(mut self, memory: Arc<MemoryBudget>) -> Self {
        self.memory = memory;
        self
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Reads a body claimed to be empty: `Ok` only when it is.
    async fn verify_empty(&self, req: PutRequest) -> Result<(), StoreError> {
        if let Some(size) = req.size.filter(|&s| s != 0) {
            return Err(StoreError::SizeMismatch {
                expected: 0,
                actual: size,
            });
        }
        let body = ProgressGuard::new(req.body.into_reader(), self.body_stall_timeout, "upload");
        let mut reader: Box<dyn AsyncRead + Send + Unpin> = match req.encoding {
            Encoding::Identity => Box::new(body),
            Encoding::Zstd => Box::new(zstd_decode::decoder(body, &self.memory).await?),
        };
        let function = req.key.hash.function();
        let mut hasher = Hasher::new(function);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf).await.map_err(StoreError::body)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        if hasher.is_empty() {
            return Ok(());
        }
        Err(StoreError::DigestMismatch {
            expected: function.empty_hash(),
            actual: hasher.finish(),
        })
    }
}

#[async_trait]
impl<S: Store> Store for EmptyBlob<S> {
    async fn get(&self, key: &BlobKey, accept_zstd: bool) -> Result<Option<Blob>, StoreError> {
        if is_empty_blob(key) {
            return Ok(Some(Blob {
                size: 0,
                encoding: Encoding::Identity,
                body_len: Some(0),
                body: BlobBody::Bytes(bytes::Bytes::new()),
            }));
        }
        self.inner.get(key, accept_zstd).await
    }

    async fn contains(&self, key: &BlobKey) -> Result<Option<u64>, StoreError> {
        if is_empty_blob(key) {
            return Ok(Some(0));
        }
        self.inner.contains(key).await
    }

    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let is_empty = |d: &Digest| d.hash.is_empty_blob() && d.size == 0;
        if !digests.iter().any(is_empty) {
            return self.inner.find_missing(digests).await;
        }
        let rest: Vec<Digest> = digests.iter().filter(|d| !is_empty(d)).copied().collect();
        self.inner.find_missing(&rest).await
    }

    async fn put(&self, req: PutRequest) -> Result<(), StoreError> {
        if is_empty_blob(&req.key) {
            return self.verify_empty(req).await;
        }
        self.inner.put(req).await
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}
