//! Push: PushBlob and PushDirectory record that URIs (with qualifiers)
//! name content already in the CAS; FetchBlob and FetchDirectory then
//! answer from those records. Content not in the CAS is refused
//! (FAILED_PRECONDITION): a record must never point at nothing.

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::asset::v1::push_server::Push;
use bazel_remote_apis::build::bazel::remote::asset::v1::{
    PushBlobRequest, PushBlobResponse, PushDirectoryRequest, PushDirectoryResponse,
};
use tonic::{Request, Response, Status};

use super::qualifiers::Qualifiers;
use super::records::{self, Asset};
use super::{check_uris, record_ids};
use crate::grpc::{GrpcState, digest_function, parse_digest, store_status};
use bazel_cache_digest::Digest;

pub(crate) struct PushService {
    pub(super) state: Arc<GrpcState>,
}

impl PushService {
    async fn record(
        &self,
        asset: Asset,
        instance: &str,
        uris: &[String],
        qualifiers: &[bazel_remote_apis::build::bazel::remote::asset::v1::Qualifier],
        digest: Digest,
    ) -> Result<(), Status> {
        check_uris(uris)?;
        let q = Qualifiers::parse(qualifiers)?;
        let store = self.state.store.as_ref();
        if !records::present(store, digest)
            .await
            .map_err(store_status)?
        {
            return Err(Status::failed_precondition(format!(
                "{}/{} is not in the CAS; upload it first",
                digest.hash, digest.size
            )));
        }
        for id in record_ids(q.canonical_id.as_deref(), uris) {
            let key = records::record_key(digest.hash.function(), asset, instance, id, &q.identity);
            records::write(store, key, asset, digest)
                .await
                .map_err(store_status)?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Push for PushService {
    async fn push_blob(
        &self,
        request: Request<PushBlobRequest>,
    ) -> Result<Response<PushBlobResponse>, Status> {
        (self.state.on_request)();
        let req = request.into_inner();
        let function = digest_function(req.digest_function)?;
        let digest = parse_digest(function, req.blob_digest.as_ref(), "blob_digest")?;
        self.record(
            Asset::Blob,
            &req.instance_name,
            &req.uris,
            &req.qualifiers,
            digest,
        )
        .await?;
        Ok(Response::new(PushBlobResponse {}))
    }

    async fn push_directory(
        &self,
        request: Request<PushDirectoryRequest>,
    ) -> Result<Response<PushDirectoryResponse>, Status> {
        (self.state.on_request)();
        let req = request.into_inner();
        let function = digest_function(req.digest_function)?;
        let digest = parse_digest(
            function,
            req.root_directory_digest.as_ref(),
            "root_directory_digest",
        )?;
        self.record(
            Asset::Directory,
            &req.instance_name,
            &req.uris,
            &req.qualifiers,
            digest,
        )
        .await?;
        Ok(Response::new(PushDirectoryResponse {}))
    }
}
