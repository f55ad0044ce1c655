//! SplitBlob and SpliceBlob (REAPI v2.12): translation only. Which bytes
//! make a chunk and how a spliced blob is verified and stored is the store
//! crate's `chunking` module.

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use tonic::Status;

use super::cas::to_proto;
use super::{GrpcState, digest_function, parse_digest, parse_digests, store_status};
use bazel_cache_store::chunking::{self, FastCdc, SpliceError};

/// Missing chunks named in a NOT_FOUND message; the rest are counted.
const MISSING_NAMED: usize = 10;

/// The chunker SplitBlob uses: the parameters Capabilities announces.
pub(super) fn chunker() -> Arc<FastCdc> {
    Arc::new(
        FastCdc::from_params(chunking::DEFAULT_AVERAGE, chunking::DEFAULT_SEED)
            .expect("the default FastCDC parameters are within the spec's range"),
    )
}

/// What Capabilities announces: both RPCs, and FastCDC 2020 with the
/// parameters SplitBlob cuts with.
pub(super) fn fast_cdc_params() -> re::FastCdc2020Params {
    re::FastCdc2020Params {
        avg_chunk_size_bytes: chunking::DEFAULT_AVERAGE,
        seed: chunking::DEFAULT_SEED,
    }
}

/// The client's preferred chunking function is only a preference (the spec
/// lets the server choose): any value is accepted and the answer names
/// FastCDC 2020.
pub(super) async fn split_blob(
    state: &GrpcState,
    cdc: &Arc<FastCdc>,
    req: re::SplitBlobRequest,
) -> Result<re::SplitBlobResponse, Status> {
    let function = digest_function(req.digest_function)?;
    let blob = parse_digest(function, req.blob_digest.as_ref(), "blob_digest")?;
    let Some(chunks) = chunking::split(state.store.as_ref(), &state.memory, cdc, &blob)
        .await
        .map_err(store_status)?
    else {
        return Err(Status::not_found(format!(
            "blob_digest: blobs/{}/{} not found",
            blob.hash, blob.size
        )));
    };
    Ok(re::SplitBlobResponse {
        chunk_digests: chunks.iter().map(to_proto).collect(),
        chunking_function: re::chunking_function::Value::FastCdc2020 as i32,
    })
}

/// The chunking function the client names does not matter here: the server
/// only verifies that the chunks concatenate to the blob, whoever cut them.
pub(super) async fn splice_blob(
    state: &GrpcState,
    req: re::SpliceBlobRequest,
) -> Result<re::SpliceBlobResponse, Status> {
    let function = digest_function(req.digest_function)?;
    let blob = parse_digest(function, req.blob_digest.as_ref(), "blob_digest")?;
    let limit = state.options.max_blob_size;
    if blob.size > limit {
        return Err(Status::invalid_argument(format!(
            "blob_digest: blob of {} bytes exceeds max_blob_size ({limit} bytes)",
            blob.size
        )));
    }
    let chunks = parse_digests(function, &req.chunk_digests, "chunk_digests")?;
    match chunking::splice(&state.store, &blob, &chunks).await {
        Ok(()) => Ok(re::SpliceBlobResponse {
            blob_digest: Some(to_proto(&blob)),
        }),
        Err(SpliceError::MissingChunks(missing)) => {
            let named: Vec<String> = missing
                .iter()
                .take(MISSING_NAMED)
                .map(|d| format!("blobs/{}/{}", d.hash, d.size))
                .collect();
            let more = missing.len().saturating_sub(MISSING_NAMED);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            Err(Status::not_found(format!(
                "chunk_digests: not in the CAS: {}{tail}",
                named.join(", ")
            )))
        }
        Err(e @ SpliceError::LengthMismatch { .. }) => {
            Err(Status::invalid_argument(format!("chunk_digests: {e}")))
        }
        Err(SpliceError::Store(e)) => Err(store_status(e)),
    }
}
