//! SplitBlob's storage half: a stored blob cut into FastCDC chunks, each
//! stored as an ordinary CAS blob so that a client can fetch just the ones
//! it lacks.

use std::io;
use std::sync::Arc;

use bazel_cache_digest::{BlobKey, Digest, Hash};
use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::FastCdc;
use crate::budget::{MemoryBudget, MemoryUse};
use crate::{Encoding, PutBody, PutRequest, Store, StoreError};

/// Bytes asked of the blob's reader at a time.
const READ_SIZE: usize = 256 * 1024;

/// Cuts the CAS blob `blob` into chunks and stores each one; the chunk
/// digests in order. `Ok(None)` when the blob is not stored (or is stored
/// with another size).
///
/// Streams: at most `max_size()` plus one read is held at once, whatever the
/// blob's size, reserved from `memory` first (refused retryably when the
/// budget stays full, like any read buffer). Cutting and hashing a window (up to 2 MiB at the default
/// parameters) is CPU work of a millisecond or more, so it runs on a
/// blocking thread, not on the async worker.
pub async fn split(
    store: &dyn Store,
    memory: &Arc<MemoryBudget>,
    cdc: &Arc<FastCdc>,
    blob: &Digest,
) -> Result<Option<Vec<Digest>>, StoreError> {
    let Some(found) = store.get(&BlobKey::cas(blob.hash), false).await? else {
        return Ok(None);
    };
    if found.size != blob.size || found.encoding != Encoding::Identity {
        return Ok(None);
    }
    // Chunks are named with the blob's own digest function.
    let function = blob.hash.function();
    let window = (cdc.max_size() as u64).min(blob.size) + READ_SIZE as u64;
    let _held = memory.reserve(MemoryUse::ReadBuffer, window).await?;
    let mut reader = found.body.into_reader();
    let mut pending = BytesMut::new();
    let mut eof = false;
    let mut seen = 0u64;
    let mut chunks = Vec::new();
    loop {
        while !eof && pending.len() < cdc.max_size() {
            pending.reserve(READ_SIZE);
            let n = reader.read_buf(&mut pending).await?;
            seen += n as u64;
            eof = n == 0;
        }
        if pending.is_empty() {
            break;
        }
        let cutter = cdc.clone();
        let (mut window, len, hash) = tokio::task::spawn_blocking(move || {
            let (len, _) = cutter.cut(&pending);
            let hash = Hash::of_with(function, &pending[..len]);
            (pending, len, hash)
        })
        .await
        .map_err(|e| StoreError::Io(io::Error::other(e)))?;
        let chunk = window.split_to(len).freeze();
        pending = window;
        let digest = Digest {
            hash,
            size: len as u64,
        };
        // A blob of one chunk is its own chunk, already stored.
        if hash != blob.hash {
            store
                .put(PutRequest {
                    key: BlobKey::cas(hash),
                    size: Some(digest.size),
                    encoding: Encoding::Identity,
                    body: PutBody::bytes(chunk),
                })
                .await?;
        }
        chunks.push(digest);
    }
    if seen != blob.size {
        return Err(StoreError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "blob {}/{} yielded {seen} bytes while being split",
                blob.hash, blob.size
            ),
        )));
    }
    Ok(Some(chunks))
}
