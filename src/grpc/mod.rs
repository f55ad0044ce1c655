//! The gRPC front end: REAPI v2 cache services (Capabilities, ActionCache,
//! ContentAddressableStorage), ByteStream and grpc.health.v1, on tonic.
//!
//! Like the HTTP front end, handlers translate messages into [`Store`] calls
//! and store errors into status codes; action-cache rules live in `ac.rs`.

mod action_cache;
mod asset;
mod auth;
mod bytestream;
mod capabilities;
mod cas;
mod chunking;
pub(crate) mod incoming;
pub mod resource;

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use tonic::{Code, Status};

use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::defaults;
use crate::listen::activity::ActivityLayer;
use crate::listen::{Listener, Port};
use crate::metrics::{GrpcMetrics, GrpcMetricsLayer};
use bazel_cache_digest::{Digest, DigestFunction, Hash, mangle_ac_key};
use bazel_cache_store::asset_download::Downloader;
use bazel_cache_store::budget::MemoryBudget;
use bazel_cache_store::{Store, StoreError};

/// `max_batch_total_size_bytes` announced in Capabilities: the most blob
/// bytes one BatchUpdateBlobs / BatchReadBlobs may carry. Larger blobs go
/// through ByteStream. gRPC clients refuse messages over 4 MiB by default,
/// so a full batch plus its per-blob framing (digests, statuses: ~80 bytes
/// a blob) must stay under that: 256 KiB are left for the framing.
pub const MAX_BATCH_TOTAL_SIZE: u64 = 4 * 1024 * 1024 - 256 * 1024;
/// Blobs smaller than this are sent IDENTITY in BatchReadBlobs even when the
/// client accepts zstd (the spec lets the server choose per blob). A zstd
/// frame costs 9 to 18 bytes of header and checksum, and the tiny blobs that
/// fill batches (hashes, short outputs, ActionResult fragments) seldom shrink
/// by more than that; Bazel 8 and later skip compressing under 100 bytes
/// for the same reason. 256 leaves a margin above both.
pub const BATCH_COMPRESS_MIN_SIZE: u64 = 256;

/// Largest gRPC message accepted or sent: a full batch plus the per-blob
/// framing (digests, statuses) of up to tens of thousands of small blobs.
pub const MAX_MESSAGE_SIZE: usize = 2 * MAX_BATCH_TOTAL_SIZE as usize + 1024 * 1024;

/// What the gRPC front end needs to know, taken from the validated config.
#[derive(Debug, Clone)]
pub struct GrpcOptions {
    pub mangle_ac_keys: bool,
    /// Check that the blobs an ActionResult references are in the CAS, on
    /// UpdateActionResult (refuse) and GetActionResult (answer NOT_FOUND).
    /// bazel-remote's `disable_grpc_ac_deps_check` turns it off.
    pub check_ac_deps: bool,
    pub max_blob_size: u64,
}

impl Default for GrpcOptions {
    fn default() -> Self {
        GrpcOptions {
            mangle_ac_keys: false,
            check_ac_deps: true,
            max_blob_size: u64::MAX,
        }
    }
}

/// Shared state of every gRPC service.
pub struct GrpcState {
    pub store: Arc<dyn Store>,
    pub options: GrpcOptions,
    /// Called at the start of every request (idle-timeout bookkeeping).
    pub on_request: Box<dyn Fn() + Send + Sync>,
    /// The memory budget ByteStream Read chunks and Write chunks queued for
    /// the store are reserved from (the store's).
    pub memory: Arc<MemoryBudget>,
    /// The Remote Asset API's downloader, when `experimental_remote_asset_api`
    /// is on; otherwise its services are not registered (UNIMPLEMENTED).
    pub asset: Option<Arc<Downloader>>,
}

/// How the gRPC port is served, besides the services' shared state.
pub struct GrpcServing {
    pub tls: Option<TlsAcceptor>,
    pub auth: Arc<Authenticator>,
    /// `grpc_server_*` metrics (with endpoint metrics).
    pub metrics: Option<Arc<GrpcMetrics>>,
    /// One log line per RPC (`access_log_level: all`).
    pub access_log: bool,
    /// The port's connection limits and counters.
    pub connections: Port,
}

/// Serves the gRPC services until `stop` is cancelled. Health reports
/// SERVING while the services answer and NOT_SERVING once shutdown begins,
/// so a load balancer moves away while requests in flight finish.
pub async fn serve(
    listener: Listener,
    state: Arc<GrpcState>,
    serving: GrpcServing,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    const SERVICES: [&str; 5] = [
        "",
        "build.bazel.remote.execution.v2.Capabilities",
        "build.bazel.remote.execution.v2.ActionCache",
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
        "google.bytestream.ByteStream",
    ];
    const ASSET_SERVICES: [&str; 2] = [
        "build.bazel.remote.asset.v1.Fetch",
        "build.bazel.remote.asset.v1.Push",
    ];
    let services: Vec<&str> = SERVICES
        .into_iter()
        .chain(ASSET_SERVICES.into_iter().filter(|_| state.asset.is_some()))
        .collect();
    let (health_reporter, health) = tonic_health::server::health_reporter();
    for &name in &services {
        health_reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(defaults::H2_KEEPALIVE_INTERVAL))
        // Large blobs stream over one HTTP/2 stream: let flow-control windows
        // grow with the bandwidth-delay product instead of 64 KiB defaults.
        .http2_adaptive_window(Some(true))
        // Tonic leaves streams unlimited and error resets unbounded unless
        // told (see defaults.rs).
        .max_concurrent_streams(defaults::H2_MAX_CONCURRENT_STREAMS)
        .http2_max_pending_accept_reset_streams(Some(defaults::H2_MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(defaults::H2_MAX_LOCAL_ERROR_RESET_STREAMS))
        .http2_max_header_list_size(defaults::H2_MAX_HEADER_LIST_SIZE)
        .max_frame_size(defaults::H2_MAX_FRAME_SIZE)
        // Outermost: a call counts on its connection (the idle timeout)
        // from its first to its last byte, whatever the layers below do.
        .layer(ActivityLayer)
        .layer(GrpcMetricsLayer::new(serving.metrics, serving.access_log))
        .layer(auth::AuthLayer::new(serving.auth))
        .add_service(health)
        .add_service(capabilities::service(state.clone()))
        .add_service(action_cache::service(state.clone()))
        .add_service(cas::service(state.clone()))
        .add_optional_service(
            state
                .asset
                .clone()
                .map(|d| asset::fetch_service(state.clone(), d)),
        )
        .add_optional_service(
            state
                .asset
                .is_some()
                .then(|| asset::push_service(state.clone())),
        )
        .add_service(bytestream::service(state));
    let shutdown = {
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            for name in services {
                health_reporter
                    .set_service_status(name, tonic_health::ServingStatus::NotServing)
                    .await;
            }
        }
    };
    let incoming = incoming::incoming(listener, serving.tls, stop, serving.connections);
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Maps a store failure to the status the REAPI spec names for it.
pub(crate) fn store_status(e: StoreError) -> Status {
    match &e {
        StoreError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        _ if e.is_out_of_space() => Status::resource_exhausted(e.to_string()),
        _ if e.is_client_error() => Status::invalid_argument(e.to_string()),
        StoreError::Closed | StoreError::Busy { .. } => Status::unavailable(e.to_string()),
        // Retryable: Bazel retries RESOURCE_EXHAUSTED with back-off.
        StoreError::MemoryExhausted(_) => Status::resource_exhausted(e.to_string()),
        _ => {
            tracing::error!(error = %e, "store failure");
            Status::internal(e.to_string())
        }
    }
}

/// Parses a required digest field, naming the field in the error.
pub(crate) fn parse_digest(
    function: DigestFunction,
    d: Option<&re::Digest>,
    field: &str,
) -> Result<Digest, Status> {
    let d = d.ok_or_else(|| Status::invalid_argument(format!("{field}: missing digest")))?;
    Digest::from_reapi(function, d).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// Parses a repeated digest field, naming the bad entry (`field[i]`). The
/// name is made only for an error: a FindMissingBlobs call carries
/// thousands of digests, and formatting each one's name cost 5 % of the
/// server's CPU on such calls.
pub(crate) fn parse_digests(
    function: DigestFunction,
    ds: &[re::Digest],
    field: &str,
) -> Result<Vec<Digest>, Status> {
    ds.iter()
        .enumerate()
        .map(|(i, d)| {
            Digest::from_reapi(function, d)
                .map_err(|e| Status::invalid_argument(format!("{field}[{i}]: {e}")))
        })
        .collect()
}

/// A request's `digest_function` field: SHA-256 when unset (0), BLAKE3,
/// INVALID_ARGUMENT for any other. Never guessed from a hash's length:
/// SHA-256 and BLAKE3 hashes are both 64 hex characters.
pub(crate) fn digest_function(value: i32) -> Result<DigestFunction, Status> {
    DigestFunction::from_reapi(value).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The store key of an action-cache entry, mangled with the instance name
/// when `enable_ac_key_instance_mangling` is on (as bazel-remote does).
pub(crate) fn ac_hash(state: &GrpcState, instance: &str, hash: Hash) -> Hash {
    if state.options.mangle_ac_keys {
        mangle_ac_key(hash, instance)
    } else {
        hash
    }
}

/// The code a status maps to, for per-blob responses (`google.rpc.Status`).
pub(crate) fn rpc_status(
    code: Code,
    message: impl Into<String>,
) -> bazel_remote_apis::google::rpc::Status {
    bazel_remote_apis::google::rpc::Status {
        code: code as i32,
        message: message.into(),
        details: vec![],
    }
}
