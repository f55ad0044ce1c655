//! [`CountingStore`], the store decorator that counts the gRPC services'
//! lookups into `bazel_remote_incoming_requests_total`, and the task-local
//! flag that keeps ActionCache RPCs from counting their inner lookups.

use std::sync::Arc;

use async_trait::async_trait;

use super::lookups::{LookupKind, LookupMethod, Lookups};
use bazel_cache_digest::{BlobKey, Digest};
use bazel_cache_store::{Blob, PutRequest, Store, StoreError, StoreStats};

tokio::task_local! {
    /// Set while an ActionCache RPC runs: its store calls (the AC entry,
    /// the CAS checks behind it, inlined outputs) are not counted one by
    /// one; the RPC counts once, as `get ac` hit or miss by its outcome,
    /// like bazel-remote's GetValidatedActionResult.
    pub(super) static IN_ACTION_CACHE_RPC: ();
}

fn in_action_cache_rpc() -> bool {
    IN_ACTION_CACHE_RPC.try_with(|_| ()).is_ok()
}

/// The store the gRPC services use when endpoint metrics are on: counts
/// lookups (`get`, `contains`, `FindMissingBlobs`) into
/// `bazel_remote_incoming_requests_total`, as bazel-remote's metrics
/// decorator does around its cache. (HTTP counts in its request wrapper.)
pub(crate) struct CountingStore {
    inner: Arc<dyn Store>,
    lookups: Arc<Lookups>,
}

impl CountingStore {
    pub(crate) fn new(inner: Arc<dyn Store>, lookups: Arc<Lookups>) -> Self {
        CountingStore { inner, lookups }
    }
}

#[async_trait]
impl Store for CountingStore {
    async fn get(&self, key: &BlobKey, accept_zstd: bool) -> Result<Option<Blob>, StoreError> {
        let found = self.inner.get(key, accept_zstd).await?;
        if !in_action_cache_rpc() {
            self.lookups
                .record(LookupMethod::Get, key.kind.into(), found.is_some());
        }
        Ok(found)
    }

    async fn contains(&self, key: &BlobKey) -> Result<Option<u64>, StoreError> {
        let found = self.inner.contains(key).await?;
        if !in_action_cache_rpc() {
            self.lookups
                .record(LookupMethod::Contains, key.kind.into(), found.is_some());
        }
        Ok(found)
    }

    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let missing = self.inner.find_missing(digests).await?;
        if !in_action_cache_rpc() {
            let misses = missing.len() as u64;
            let hits = (digests.len() as u64).saturating_sub(misses);
            self.lookups
                .record_many(LookupMethod::Contains, LookupKind::Cas, hits, misses);
        }
        Ok(missing)
    }

    async fn put(&self, req: PutRequest) -> Result<(), StoreError> {
        self.inner.put(req).await
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}
