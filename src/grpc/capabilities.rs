//! Capabilities.GetCapabilities: what a client may expect of this cache.

use std::sync::Arc;

use bazel_cache_digest::DigestFunction;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::build::bazel::semver::SemVer;
use re::capabilities_server::{Capabilities, CapabilitiesServer};
use tonic::{Request, Response, Status};

use super::{GrpcState, MAX_BATCH_TOTAL_SIZE};

pub(super) fn service(state: Arc<GrpcState>) -> CapabilitiesServer<CapabilitiesService> {
    CapabilitiesServer::new(CapabilitiesService { state })
}

pub(super) struct CapabilitiesService {
    state: Arc<GrpcState>,
}

fn version(major: i32, minor: i32) -> Option<SemVer> {
    Some(SemVer {
        major,
        minor,
        patch: 0,
        prerelease: String::new(),
    })
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        _request: Request<re::GetCapabilitiesRequest>,
    ) -> Result<Response<re::ServerCapabilities>, Status> {
        (self.state.on_request)();
        let max_blob = self.state.options.max_blob_size;
        let zstd = re::compressor::Value::Zstd as i32;
        let caps = re::ServerCapabilities {
            cache_capabilities: Some(re::CacheCapabilities {
                // Each request names its function (`digest_function`,
                // `blobs/blake3/…`); SHA-256 when it does not.
                digest_functions: DigestFunction::ALL.iter().map(|f| f.to_reapi()).collect(),
                action_cache_update_capabilities: Some(re::ActionCacheUpdateCapabilities {
                    update_enabled: true,
                }),
                max_batch_total_size_bytes: MAX_BATCH_TOTAL_SIZE as i64,
                symlink_absolute_path_strategy: re::symlink_absolute_path_strategy::Value::Allowed
                    as i32,
                supported_compressors: vec![zstd],
                supported_batch_update_compressors: vec![zstd],
                // 0 means no limit in the spec.
                max_cas_blob_size_bytes: i64::try_from(max_blob).unwrap_or(0),
                // SplitBlob and SpliceBlob (v2.12), with the one chunking
                // function SplitBlob cuts with.
                split_blob_support: true,
                splice_blob_support: true,
                fast_cdc_2020_params: Some(super::chunking::fast_cdc_params()),
                ..Default::default()
            }),
            execution_capabilities: None,
            low_api_version: version(2, 0),
            // SplitBlob/SpliceBlob are v2.12 RPCs, but clients (Bazel)
            // gate them on the capability fields above, and claiming 2.12
            // would promise every change from 2.4 to 2.12, not audited here.
            high_api_version: version(2, 3),
            ..Default::default()
        };
        Ok(Response::new(caps))
    }
}
