//! ActionCache: GetActionResult and UpdateActionResult.

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;
use re::action_cache_server::{ActionCache, ActionCacheServer};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, PreconditionViolation, StatusExt};

use super::{
    GrpcState, MAX_BATCH_TOTAL_SIZE, ac_hash, digest_function, parse_digest, store_status,
};
use bazel_cache_digest::{BlobKey, Digest, DigestFunction, Hash};
use bazel_cache_store::action_result::{self as ac, MAX_ACTION_RESULT_BYTES};
use bazel_cache_store::{Encoding, PutBody, PutRequest, StoreError, read_all};

pub(super) fn service(state: Arc<GrpcState>) -> ActionCacheServer<ActionCacheService> {
    ActionCacheServer::new(ActionCacheService { state })
        .max_decoding_message_size(super::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(super::MAX_MESSAGE_SIZE)
}

pub(super) struct ActionCacheService {
    state: Arc<GrpcState>,
}

/// The REAPI way to say which blobs are missing: a PreconditionFailure with
/// one `MISSING` violation per blob, subject `blobs/{hash}/{size}`.
fn missing_status(missing: &[Digest]) -> Status {
    let violations: Vec<_> = missing
        .iter()
        .map(|d| {
            PreconditionViolation::new(
                "MISSING",
                format!("blobs/{}/{}", d.hash, d.size),
                "not in the CAS",
            )
        })
        .collect();
    Status::with_error_details(
        Code::FailedPrecondition,
        format!(
            "{} blob(s) referenced by the ActionResult are missing from the CAS",
            missing.len()
        ),
        ErrorDetails::with_precondition_failure(violations),
    )
}

/// The action digest of a request. Size -1 means "unknown": the action
/// cache is keyed by hash alone, bazel-remote accepts it, and its
/// `grpc_proxy` (and ours) sends -1, knowing an entry by hash only. Every
/// other digest follows the rule of every RPC ([`parse_digest`]).
fn action_digest(function: DigestFunction, d: Option<&re::Digest>) -> Result<Digest, Status> {
    match d {
        Some(d) if d.size_bytes == UNKNOWN_SIZE => {
            let hash = Hash::from_hex(function, &d.hash)
                .map_err(|e| Status::invalid_argument(format!("action_digest: {e}")))?;
            Ok(Digest { hash, size: 0 })
        }
        d => parse_digest(function, d, "action_digest"),
    }
}

/// The size bazel-remote's `grpc_proxy` gives an action digest it knows by hash only.
const UNKNOWN_SIZE: i64 = -1;

impl ActionCacheService {
    /// Reads a small CAS blob for inlining, if present and within `budget`.
    async fn inline(
        &self,
        function: DigestFunction,
        digest: Option<&re::Digest>,
        budget: &mut u64,
    ) -> Result<Option<Vec<u8>>, Status> {
        let Some(d) = digest.and_then(|d| Digest::from_reapi(function, d).ok()) else {
            return Ok(None);
        };
        if d.size == 0 || d.size > *budget {
            return Ok(None);
        }
        match read_all(self.state.store.as_ref(), &BlobKey::cas(d.hash), d.size).await {
            Ok(Some(bytes)) => {
                *budget -= bytes.len() as u64;
                Ok(Some(bytes))
            }
            Ok(None) | Err(StoreError::TooLarge { .. }) => Ok(None),
            Err(e) => Err(store_status(e)),
        }
    }
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<re::GetActionResultRequest>,
    ) -> Result<Response<re::ActionResult>, Status> {
        (self.state.on_request)();
        let req = request.into_inner();
        let function = digest_function(req.digest_function)?;
        let digest = action_digest(function, req.action_digest.as_ref())?;
        let key = BlobKey::ac(ac_hash(&self.state, &req.instance_name, digest.hash));
        let store = self.state.store.as_ref();
        let not_found = || {
            Status::not_found(format!(
                "no action result for {}/{}",
                digest.hash, digest.size
            ))
        };
        let bytes = match read_all(store, &key, MAX_ACTION_RESULT_BYTES).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) | Err(StoreError::TooLarge { .. }) => return Err(not_found()),
            Err(e) => return Err(store_status(e)),
        };
        // An entry stored over HTTP without validation may be anything.
        let Ok(mut ar) = re::ActionResult::decode(bytes.as_slice()) else {
            return Err(not_found());
        };
        if self.state.options.check_ac_deps {
            let missing = ac::missing_blobs(store, function, &ar)
                .await
                .map_err(store_status)?;
            if !missing.is_empty() {
                return Err(Status::not_found(format!(
                    "action result for {}/{} references {} evicted blob(s)",
                    digest.hash,
                    digest.size,
                    missing.len()
                )));
            }
        }

        // Inline what the client asked for, within one batch's worth of bytes
        // so the response stays under the message size limit.
        let mut budget = MAX_BATCH_TOTAL_SIZE.saturating_sub(ar.encoded_len() as u64);
        if req.inline_stdout
            && ar.stdout_raw.is_empty()
            && let Some(raw) = self
                .inline(function, ar.stdout_digest.as_ref(), &mut budget)
                .await?
        {
            ar.stdout_raw = raw;
        }
        if req.inline_stderr
            && ar.stderr_raw.is_empty()
            && let Some(raw) = self
                .inline(function, ar.stderr_digest.as_ref(), &mut budget)
                .await?
        {
            ar.stderr_raw = raw;
        }
        for file in ar.output_files.iter_mut() {
            if file.contents.is_empty()
                && req.inline_output_files.contains(&file.path)
                && let Some(raw) = self
                    .inline(function, file.digest.as_ref(), &mut budget)
                    .await?
            {
                file.contents = raw;
            }
        }
        Ok(Response::new(ar))
    }

    async fn update_action_result(
        &self,
        request: Request<re::UpdateActionResultRequest>,
    ) -> Result<Response<re::ActionResult>, Status> {
        (self.state.on_request)();
        let req = request.into_inner();
        let function = digest_function(req.digest_function)?;
        let digest = action_digest(function, req.action_digest.as_ref())?;
        let ar = req
            .action_result
            .ok_or_else(|| Status::invalid_argument("action_result: missing"))?;
        ac::validate(function, &ar).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let store = self.state.store.as_ref();
        if self.state.options.check_ac_deps {
            let missing = ac::missing_blobs(store, function, &ar)
                .await
                .map_err(store_status)?;
            if !missing.is_empty() {
                return Err(missing_status(&missing));
            }
        }
        let bytes = ar.encode_to_vec();
        let key = BlobKey::ac(ac_hash(&self.state, &req.instance_name, digest.hash));
        let put = PutRequest {
            key,
            size: Some(bytes.len() as u64),
            encoding: Encoding::Identity,
            body: PutBody::bytes(bytes),
        };
        store.put(put).await.map_err(store_status)?;
        Ok(Response::new(ar))
    }
}
