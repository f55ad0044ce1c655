//! ContentAddressableStorage: FindMissingBlobs, BatchUpdateBlobs,
//! BatchReadBlobs, GetTree; SplitBlob and SpliceBlob (in `chunking.rs`).

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use futures_util::{Stream, StreamExt};
use prost::Message;
use re::content_addressable_storage_server::{
    ContentAddressableStorage, ContentAddressableStorageServer,
};
use tokio::io::AsyncReadExt;
use tonic::{Code, Request, Response, Status};

use super::{
    BATCH_COMPRESS_MIN_SIZE, GrpcState, MAX_BATCH_TOTAL_SIZE, digest_function, parse_digest,
    parse_digests, rpc_status, store_status,
};
use bazel_cache_digest::{BlobKey, Digest};
use bazel_cache_store::chunking::FastCdc;
use bazel_cache_store::{BlobBody, Encoding, PutBody, PutRequest, Store, StoreError, read_all};

/// Directories per GetTree response when the client does not say.
const DEFAULT_TREE_PAGE: usize = 1000;

/// Blobs of one BatchUpdateBlobs or BatchReadBlobs call worked on at once,
/// in request order. Writing every blob of a call at once put all of them
/// (50,000 tiny blobs, each with its fsync) in the write slots' queue, and
/// other clients' single writes waited behind the whole batch; now a call
/// has at most this many writes queued or working, and since slot waiters
/// are served in arrival order, others' writes interleave with its blobs.
/// Far below the default 256 write slots, so one call cannot take them all;
/// calls at once are bounded by the connection and HTTP/2 stream caps.
/// Reads are bounded the same way, so a batch read opens at most this many
/// files at a time.
const BATCH_IN_FLIGHT: usize = 16;

pub(super) fn service(state: Arc<GrpcState>) -> ContentAddressableStorageServer<CasService> {
    ContentAddressableStorageServer::new(CasService {
        state,
        chunker: super::chunking::chunker(),
    })
    .max_decoding_message_size(super::MAX_MESSAGE_SIZE)
    .max_encoding_message_size(super::MAX_MESSAGE_SIZE)
}

pub(super) struct CasService {
    state: Arc<GrpcState>,
    /// SplitBlob's FastCDC chunker (tables built once).
    chunker: Arc<FastCdc>,
}

/// The requested digests (`asked`, parsed as `parsed`) that the store
/// found `missing`, in the request's order, as the client sent them: the
/// answer reuses the request's strings instead of making a hex string per
/// missing digest (with the frees and allocations that go with it, about
/// 10 % of the server's CPU on a 1,000-digest call).
fn requested_missing(
    asked: Vec<re::Digest>,
    parsed: &[Digest],
    missing: &[Digest],
) -> Vec<re::Digest> {
    if missing.is_empty() {
        return Vec::new();
    }
    let missing: std::collections::HashSet<&Digest> = missing.iter().collect();
    asked
        .into_iter()
        .zip(parsed)
        .filter(|(_, d)| missing.contains(d))
        .map(|(asked, _)| asked)
        .collect()
}

pub(super) fn to_proto(d: &Digest) -> re::Digest {
    re::Digest {
        hash: d.hash.to_hex(),
        size_bytes: d.size as i64,
    }
}

fn compressor(value: i32) -> Result<Encoding, String> {
    match re::compressor::Value::try_from(value) {
        Ok(re::compressor::Value::Identity) => Ok(Encoding::Identity),
        Ok(re::compressor::Value::Zstd) => Ok(Encoding::Zstd),
        _ => Err(format!(
            "compressor {value} is not supported; use IDENTITY or ZSTD"
        )),
    }
}

/// Refuses a batch whose blobs add up to more than the announced limit,
/// before any of it is stored or read.
fn check_batch_size(total: u64) -> Result<(), Status> {
    if total > MAX_BATCH_TOTAL_SIZE {
        return Err(Status::invalid_argument(format!(
            "batch of {total} bytes exceeds max_batch_total_size_bytes ({MAX_BATCH_TOTAL_SIZE}); use ByteStream for large blobs"
        )));
    }
    Ok(())
}

/// Reads one blob for BatchReadBlobs, compressed when the client accepts it,
/// the blob is at least [`BATCH_COMPRESS_MIN_SIZE`] and compressing shrinks it.
async fn read_for_batch(
    store: &dyn Store,
    d: &Digest,
    zstd: bool,
) -> Result<Option<(Vec<u8>, Encoding)>, StoreError> {
    let zstd = zstd && d.size >= BATCH_COMPRESS_MIN_SIZE;
    let Some(blob) = store.get(&BlobKey::cas(d.hash), zstd).await? else {
        return Ok(None);
    };
    if blob.size != d.size {
        return Ok(None);
    }
    let limit = blob.body_len.unwrap_or(blob.size).max(d.size) + 1;
    let mut bytes = Vec::with_capacity(blob.body_len.unwrap_or(blob.size) as usize);
    match blob.body {
        BlobBody::Bytes(b) if b.len() as u64 <= limit => bytes.extend_from_slice(&b),
        body => {
            body.into_reader()
                .take(limit)
                .read_to_end(&mut bytes)
                .await?;
        }
    }
    if zstd && blob.encoding == Encoding::Identity {
        let compressed = zstd::bulk::compress(&bytes, 1)?;
        // Incompressible data (already compressed outputs) goes as it is.
        if compressed.len() < bytes.len() {
            return Ok(Some((compressed, Encoding::Zstd)));
        }
    }
    Ok(Some((bytes, blob.encoding)))
}

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<re::FindMissingBlobsRequest>,
    ) -> Result<Response<re::FindMissingBlobsResponse>, Status> {
        (self.state.on_request)();
        let req = request.into_inner();
        let function = digest_function(req.digest_function)?;
        let digests = parse_digests(function, &req.blob_digests, "blob_digests")?;
        let missing = self
            .state
            .store
            .find_missing(&digests)
            .await
            .map_err(store_status)?;
        Ok(Response::new(re::FindMissingBlobsResponse {
            missing_blob_digests: requested_missing(req.blob_digests, &digests, &missing),
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<re::BatchUpdateBlobsRequest>,
    ) -> Result<Response<re::BatchUpdateBlobsResponse>, Status> {
        (self.state.on_request)();
        let req = request.into_inner();
        let function = digest_function(req.digest_function)?;
        check_batch_size(req.requests.iter().map(|r| r.data.len() as u64).sum())?;
        let store = self.state.store.as_ref();
        let max_blob_size = self.state.options.max_blob_size;
        let puts = req.requests.into_iter().map(|r| async move {
            let digest = r.digest.clone();
            let status = async {
                let d = parse_digest(function, r.digest.as_ref(), "digest")
                    .map_err(|s| rpc_status(s.code(), s.message()))?;
                // Refused as the spec asks for blobs over
                // max_cas_blob_size_bytes, before the data is looked at.
                if d.size > max_blob_size {
                    let e = StoreError::TooLarge {
                        size: d.size,
                        limit: max_blob_size,
                    };
                    return Err(rpc_status(Code::InvalidArgument, e.to_string()));
                }
                let encoding =
                    compressor(r.compressor).map_err(|m| rpc_status(Code::InvalidArgument, m))?;
                let put = PutRequest {
                    key: BlobKey::cas(d.hash),
                    size: Some(d.size),
                    encoding,
                    body: PutBody::bytes(r.data),
                };
                store.put(put).await.map_err(|e| {
                    let s = store_status(e);
                    rpc_status(s.code(), s.message())
                })
            }
            .await;
            re::batch_update_blobs_response::Response {
                digest,
                status: Some(status.err().unwrap_or_else(|| rpc_status(Code::Ok, ""))),
            }
        });
        Ok(Response::new(re::BatchUpdateBlobsResponse {
            responses: futures_util::stream::iter(puts)
                .buffered(BATCH_IN_FLIGHT)
                .collect()
                .await,
        }))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<re::BatchReadBlobsRequest>,
    ) -> Result<Response<re::BatchReadBlobsResponse>, Status> {
        (self.state.on_request)();
        let req = request.into_inner();
        let function = digest_function(req.digest_function)?;
        let digests = parse_digests(function, &req.digests, "digests")?;
        // Sizes are the client's claims: add them without overflow.
        check_batch_size(
            digests
                .iter()
                .fold(0u64, |total, d| total.saturating_add(d.size)),
        )?;
        let zstd = req
            .acceptable_compressors
            .contains(&(re::compressor::Value::Zstd as i32));
        let store = self.state.store.as_ref();
        let reads = digests.into_iter().map(|d| async move {
            let (data, compressor, status) = match read_for_batch(store, &d, zstd).await {
                Ok(Some((data, enc))) => {
                    let c = match enc {
                        Encoding::Identity => re::compressor::Value::Identity,
                        Encoding::Zstd => re::compressor::Value::Zstd,
                    };
                    (data, c as i32, rpc_status(Code::Ok, ""))
                }
                Ok(None) => (
                    vec![],
                    0,
                    rpc_status(
                        Code::NotFound,
                        format!("blobs/{}/{} not found", d.hash, d.size),
                    ),
                ),
                Err(e) => {
                    let s = store_status(e);
                    (vec![], 0, rpc_status(s.code(), s.message()))
                }
            };
            re::batch_read_blobs_response::Response {
                digest: Some(to_proto(&d)),
                data,
                compressor,
                status: Some(status),
            }
        });
        Ok(Response::new(re::BatchReadBlobsResponse {
            responses: futures_util::stream::iter(reads)
                .buffered(BATCH_IN_FLIGHT)
                .collect()
                .await,
        }))
    }

    type GetTreeStream = Pin<Box<dyn Stream<Item = Result<re::GetTreeResponse, Status>> + Send>>;

    async fn get_tree(
        &self,
        request: Request<re::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        (self.state.on_request)();
        let req = request.into_inner();
        let function = digest_function(req.digest_function)?;
        let root = parse_digest(function, req.root_digest.as_ref(), "root_digest")?;
        let skip: usize = if req.page_token.is_empty() {
            0
        } else {
            req.page_token.parse().map_err(|_| {
                Status::invalid_argument(format!(
                    "page_token {:?} is not one of ours",
                    req.page_token
                ))
            })?
        };
        let page_size = match req.page_size {
            n if n < 0 => return Err(Status::invalid_argument("page_size must not be negative")),
            0 => DEFAULT_TREE_PAGE,
            n => n as usize,
        };
        if self
            .state
            .store
            .contains(&BlobKey::cas(root.hash))
            .await
            .map_err(store_status)?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "root directory blobs/{}/{} not found",
                root.hash, root.size
            )));
        }
        let walk = TreeWalk {
            store: self.state.store.clone(),
            queue: VecDeque::from([root]),
            seen: HashSet::from([root]),
            position: 0,
            skip,
            page_size,
            done: false,
        };
        let stream = futures_util::stream::unfold(walk, |mut walk| async move {
            if walk.done {
                return None;
            }
            let page = walk.next_page().await;
            if page.is_err() || page.as_ref().is_ok_and(|p| p.next_page_token.is_empty()) {
                walk.done = true;
            }
            Some((page, walk))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn split_blob(
        &self,
        request: Request<re::SplitBlobRequest>,
    ) -> Result<Response<re::SplitBlobResponse>, Status> {
        (self.state.on_request)();
        super::chunking::split_blob(&self.state, &self.chunker, request.into_inner())
            .await
            .map(Response::new)
    }

    type GetChunkMappingStream =
        Pin<Box<dyn Stream<Item = Result<re::GetChunkMappingResponse, Status>> + Send>>;

    async fn get_chunk_mapping(
        &self,
        _request: Request<re::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        Err(Status::unimplemented("chunk mappings are not supported"))
    }

    async fn register_chunk_mapping(
        &self,
        _request: Request<tonic::Streaming<re::RegisterChunkMappingRequest>>,
    ) -> Result<Response<re::RegisterChunkMappingResponse>, Status> {
        Err(Status::unimplemented("chunk mappings are not supported"))
    }

    async fn splice_blob(
        &self,
        request: Request<re::SpliceBlobRequest>,
    ) -> Result<Response<re::SpliceBlobResponse>, Status> {
        (self.state.on_request)();
        super::chunking::splice_blob(&self.state, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// Breadth-first walk of a Directory tree for GetTree. The page token is the
/// position in this (deterministic) order, so a later call can resume.
/// Directories missing from the CAS are left out with their subtrees, as
/// the spec allows.
struct TreeWalk {
    store: Arc<dyn Store>,
    queue: VecDeque<Digest>,
    seen: HashSet<Digest>,
    position: usize,
    skip: usize,
    page_size: usize,
    done: bool,
}

impl TreeWalk {
    async fn next_page(&mut self) -> Result<re::GetTreeResponse, Status> {
        let mut directories = Vec::new();
        let mut bytes = 0u64;
        while directories.len() < self.page_size && bytes < MAX_BATCH_TOTAL_SIZE {
            let Some(d) = self.queue.pop_front() else {
                break;
            };
            let dir = match read_all(
                self.store.as_ref(),
                &BlobKey::cas(d.hash),
                MAX_BATCH_TOTAL_SIZE,
            )
            .await
            {
                Ok(Some(raw)) => re::Directory::decode(raw.as_slice()).ok(),
                Ok(None) | Err(StoreError::TooLarge { .. }) => None,
                Err(e) => return Err(store_status(e)),
            };
            let Some(dir) = dir else {
                continue;
            };
            for child in dir.directories.iter().filter_map(|n| n.digest.as_ref()) {
                if let Ok(c) = Digest::from_reapi(d.hash.function(), child)
                    && self.seen.insert(c)
                {
                    self.queue.push_back(c);
                }
            }
            if self.position >= self.skip {
                bytes += d.size;
                directories.push(dir);
            }
            self.position += 1;
        }
        let next_page_token = if self.queue.is_empty() {
            String::new()
        } else {
            self.position.to_string()
        };
        Ok(re::GetTreeResponse {
            directories,
            next_page_token,
        })
    }
}
