//! SpliceBlob's storage half: stored chunks concatenated into one CAS blob,
//! streamed through the store's normal put path, which hashes every byte
//! once as it flows and stores nothing unless the result matches.

use std::io;
use std::sync::Arc;

use bazel_cache_digest::{BlobKey, Digest};
use futures_util::{StreamExt, TryStreamExt};
use tokio_util::io::ReaderStream;

use crate::{Encoding, PutBody, PutRequest, Store, StoreError};

/// Why a splice stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// Chunks not in the CAS (or stored with another size), in request order.
    #[error("{} chunk(s) missing from the CAS, first {}/{}", .0.len(), .0[0].hash, .0[0].size)]
    MissingChunks(Vec<Digest>),
    /// The chunk sizes do not add up to the blob's: refused before reading.
    #[error("chunks add up to {chunks} bytes, the blob is {blob} bytes")]
    LengthMismatch { chunks: u64, blob: u64 },
    /// From the put: a digest mismatch, no space, a failing disk.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Stores the concatenation of `chunks` as the CAS blob `blob`.
///
/// Cheap refusals first: sizes that cannot add up, a blob already stored
/// (accepted as a no-op, as the spec allows), chunks that are missing.
/// Then one streaming put whose body is the chunks read one after another;
/// the store verifies the hash. A chunk evicted between the check and its
/// read ends the body, so nothing is stored, and is reported as missing.
pub async fn splice(
    store: &Arc<dyn Store>,
    blob: &Digest,
    chunks: &[Digest],
) -> Result<(), SpliceError> {
    let total = chunks
        .iter()
        .try_fold(0u64, |sum, c| sum.checked_add(c.size))
        .unwrap_or(u64::MAX);
    if total != blob.size {
        return Err(SpliceError::LengthMismatch {
            chunks: total,
            blob: blob.size,
        });
    }
    if store.contains(&BlobKey::cas(blob.hash)).await? == Some(blob.size) {
        return Ok(());
    }
    check_present(store.as_ref(), chunks).await?;
    let reads = store.clone();
    let body = futures_util::stream::iter(chunks.to_vec())
        .then(move |chunk| {
            let store = reads.clone();
            async move {
                match store.get(&BlobKey::cas(chunk.hash), false).await {
                    Ok(Some(b)) if b.size == chunk.size && b.encoding == Encoding::Identity => {
                        Ok(ReaderStream::new(b.body.into_reader()))
                    }
                    Ok(_) => Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("chunk {}/{} vanished", chunk.hash, chunk.size),
                    )),
                    Err(e) => Err(io::Error::other(e)),
                }
            }
        })
        .try_flatten();
    let put = store
        .put(PutRequest {
            key: BlobKey::cas(blob.hash),
            size: Some(blob.size),
            encoding: Encoding::Identity,
            body: PutBody::chunks(body),
        })
        .await;
    if let Err(e) = put {
        check_present(store.as_ref(), chunks).await?;
        return Err(e.into());
    }
    Ok(())
}

async fn check_present(store: &dyn Store, chunks: &[Digest]) -> Result<(), SpliceError> {
    let missing = store.find_missing(chunks).await?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SpliceError::MissingChunks(missing))
    }
}
