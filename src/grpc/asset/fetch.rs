//! Fetch: FetchBlob answers from a record whose blob is still in the CAS,
//! else downloads the URIs in order, keeps the first body that passes
//! `checksum.sri`, stores it in the CAS and records it. FetchDirectory
//! answers from records PushDirectory wrote (this server does not download
//! and unpack archives). Failures to find the asset are a non-OK `status`
//! in the response, as the API says; only a malformed request is an RPC
//! error.

use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::asset::v1::fetch_server::Fetch;
use bazel_remote_apis::build::bazel::remote::asset::v1::{
    FetchBlobRequest, FetchBlobResponse, FetchDirectoryRequest, FetchDirectoryResponse,
};
use tonic::{Code, Request, Response, Status};

use super::qualifiers::Qualifiers;
use super::records::{self, Asset};
use super::{check_uris, oldest, record_ids};
use crate::grpc::{GrpcState, digest_function, rpc_status, store_status};
use bazel_cache_digest::{BlobKey, Digest, DigestFunction, Hash};
use bazel_cache_store::asset_download::{Downloaded, Downloader};
use bazel_cache_store::{Encoding, PutBody, PutRequest, StoreError};

pub(crate) struct FetchService {
    pub(super) state: Arc<GrpcState>,
    pub(super) downloader: Arc<Downloader>,
}

/// A response status from a store failure (in the response, not the RPC).
fn store_failure(e: StoreError) -> bazel_remote_apis::google::rpc::Status {
    let s = store_status(e);
    rpc_status(s.code(), s.message())
}

impl FetchService {
    /// Stores a verified download in the CAS under the hash of the
    /// requested function; the store checks it again as it writes.
    async fn store(&self, d: &Downloaded) -> Result<Digest, StoreError> {
        let digest = Digest {
            hash: d.hash,
            size: d.size,
        };
        let file = tokio::fs::File::open(d.file.path()).await?;
        self.state
            .store
            .put(PutRequest {
                key: BlobKey::cas(digest.hash),
                size: Some(d.size),
                encoding: Encoding::Identity,
                body: PutBody::reader(file),
            })
            .await?;
        Ok(digest)
    }

    async fn record_all(
        &self,
        req: &FetchBlobRequest,
        q: &Qualifiers,
        digest: Digest,
    ) -> Result<(), StoreError> {
        for id in record_ids(q.canonical_id.as_deref(), &req.uris) {
            let key = records::record_key(
                digest.hash.function(),
                Asset::Blob,
                &req.instance_name,
                id,
                &q.identity,
            );
            records::write(self.state.store.as_ref(), key, Asset::Blob, digest).await?;
        }
        Ok(())
    }

    /// A digest from the records or, when the SRI names a SHA-256, from the
    /// CAS itself: no download needed.
    async fn cached(
        &self,
        function: DigestFunction,
        req: &FetchBlobRequest,
        q: &Qualifiers,
    ) -> Result<Option<(String, Digest)>, StoreError> {
        let store = self.state.store.as_ref();
        let oldest = oldest(req.oldest_content_accepted.as_ref());
        for (i, id) in record_ids(q.canonical_id.as_deref(), &req.uris)
            .into_iter()
            .enumerate()
        {
            let key =
                records::record_key(function, Asset::Blob, &req.instance_name, id, &q.identity);
            if let Some(digest) = records::lookup(store, &key, Asset::Blob, oldest).await? {
                let uri = req.uris.get(i).unwrap_or(&req.uris[0]).clone();
                return Ok(Some((uri, digest)));
            }
        }
        // Content named by its SHA-256 is the same whoever stored it, but
        // only when the client accepts content of any age (and names its
        // blobs with SHA-256: a BLAKE3 name needs the bytes).
        if oldest.is_none()
            && function == DigestFunction::Sha256
            && let Some(sha256) = q.sha256()
            && let Some(size) = store.contains(&BlobKey::cas(Hash::sha256(sha256))).await?
        {
            let digest = Digest {
                hash: Hash::sha256(sha256),
                size,
            };
            self.record_all(req, q, digest).await?;
            return Ok(Some((req.uris[0].clone(), digest)));
        }
        Ok(None)
    }
}

#[tonic::async_trait]
impl Fetch for FetchService {
    async fn fetch_blob(
        &self,
        request: Request<FetchBlobRequest>,
    ) -> Result<Response<FetchBlobResponse>, Status> {
        (self.state.on_request)();
        let req = request.into_inner();
        let function = digest_function(req.digest_function)?;
        check_uris(&req.uris)?;
        let q = Qualifiers::parse(&req.qualifiers)?;
        let respond = |status: bazel_remote_apis::google::rpc::Status,
                       uri: String,
                       digest: Option<Digest>|
         -> Result<Response<FetchBlobResponse>, Status> {
            Ok(Response::new(FetchBlobResponse {
                status: Some(status),
                uri,
                qualifiers: req.qualifiers.clone(),
                blob_digest: digest.map(|d| d.to_reapi()),
                ..Default::default()
            }))
        };
        match self.cached(function, &req, &q).await {
            Ok(Some((uri, digest))) => return respond(rpc_status(Code::Ok, ""), uri, Some(digest)),
            Ok(None) => {}
            Err(e) => return respond(store_failure(e), String::new(), None),
        }
        let timeout = req
            .timeout
            .as_ref()
            .filter(|t| t.seconds > 0 || t.nanos > 0)
            .map(|t| Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32));
        let permit = match self.downloader.permit() {
            Ok(p) => p,
            Err(busy) => {
                return respond(
                    rpc_status(Code::ResourceExhausted, busy.to_string()),
                    String::new(),
                    None,
                );
            }
        };
        let mut failures = Vec::new();
        for (i, uri) in req.uris.iter().enumerate() {
            let downloaded = match self
                .downloader
                .download(&permit, uri, &q.headers_for(i), timeout, function)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    failures.push(format!("{uri}: {e}"));
                    continue;
                }
            };
            if !q.accepts(&downloaded) {
                failures.push(format!(
                    "{uri}: checksum.sri does not match the content (sha256 {})",
                    Hash::sha256(downloaded.sha256)
                ));
                continue;
            }
            let stored = match self.store(&downloaded).await {
                Ok(digest) => self.record_all(&req, &q, digest).await.map(|()| digest),
                Err(e) => Err(e),
            };
            return match stored {
                Ok(digest) => respond(rpc_status(Code::Ok, ""), uri.clone(), Some(digest)),
                Err(e) => respond(store_failure(e), uri.clone(), None),
            };
        }
        tracing::debug!(failures = ?failures, "remote asset fetch found nothing");
        respond(
            rpc_status(
                Code::NotFound,
                format!("no URI gave the asset: {}", failures.join("; ")),
            ),
            String::new(),
            None,
        )
    }

    async fn fetch_directory(
        &self,
        request: Request<FetchDirectoryRequest>,
    ) -> Result<Response<FetchDirectoryResponse>, Status> {
        (self.state.on_request)();
        let req = request.into_inner();
        let function = digest_function(req.digest_function)?;
        check_uris(&req.uris)?;
        let q = Qualifiers::parse(&req.qualifiers)?;
        let oldest = oldest(req.oldest_content_accepted.as_ref());
        let store = self.state.store.as_ref();
        for (i, id) in record_ids(q.canonical_id.as_deref(), &req.uris)
            .into_iter()
            .enumerate()
        {
            let key = records::record_key(
                function,
                Asset::Directory,
                &req.instance_name,
                id,
                &q.identity,
            );
            let found = records::lookup(store, &key, Asset::Directory, oldest)
                .await
                .map_err(store_status)?;
            if let Some(digest) = found {
                return Ok(Response::new(FetchDirectoryResponse {
                    status: Some(rpc_status(Code::Ok, "")),
                    uri: req.uris.get(i).unwrap_or(&req.uris[0]).clone(),
                    qualifiers: req.qualifiers.clone(),
                    root_directory_digest: Some(digest.to_reapi()),
                    ..Default::default()
                }));
            }
        }
        Ok(Response::new(FetchDirectoryResponse {
            status: Some(rpc_status(
                Code::NotFound,
                "no directory was pushed for these URIs and qualifiers; this server \
                 does not download directories",
            )),
            ..Default::default()
        }))
    }
}
