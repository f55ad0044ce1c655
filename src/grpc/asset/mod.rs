//! The Remote Asset API v1 (`build.bazel.remote.asset.v1`), served when
//! `experimental_remote_asset_api` is on: Bazel's
//! `--experimental_remote_downloader` asks the cache for a URL's content
//! by URL and checksum instead of downloading it itself.
//!
//! Like the other front ends this holds no storage logic: downloads go
//! through the store crate's [`Downloader`] into a temporary file and from
//! there into the [`Store`](bazel_cache_store::Store) like any upload (the
//! store verifies the SHA-256); which URL gave which digest is remembered
//! in the AC namespace (`records.rs`).
//!
//! # Layout
//! - `fetch.rs`: the Fetch service (FetchBlob downloads; FetchDirectory
//!   answers from pushed records).
//! - `push.rs`: the Push service (records for blobs and directories that
//!   are in the CAS).
//! - `qualifiers.rs`: `checksum.sri`, `bazel.canonical_id`, header qualifiers.
//! - `records.rs`: the URI + qualifiers → digest map.

mod fetch;
mod push;
mod qualifiers;
mod records;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bazel_remote_apis::build::bazel::remote::asset::v1::fetch_server::FetchServer;
use bazel_remote_apis::build::bazel::remote::asset::v1::push_server::PushServer;
use bazel_remote_apis::google::protobuf;
use tonic::Status;

use super::GrpcState;
use bazel_cache_store::asset_download::Downloader;

pub(super) fn fetch_service(
    state: Arc<GrpcState>,
    downloader: Arc<Downloader>,
) -> FetchServer<fetch::FetchService> {
    FetchServer::new(fetch::FetchService { state, downloader })
}

pub(super) fn push_service(state: Arc<GrpcState>) -> PushServer<push::PushService> {
    PushServer::new(push::PushService { state })
}

/// A URI list must name something; each URI is otherwise checked when
/// fetched (a bad one is one failed location, not a bad request).
fn check_uris(uris: &[String]) -> Result<(), Status> {
    if uris.is_empty() {
        return Err(Status::invalid_argument(
            "uris: at least one URI is required",
        ));
    }
    Ok(())
}

/// `oldest_content_accepted` as a time.
fn oldest(t: Option<&protobuf::Timestamp>) -> Option<SystemTime> {
    t.map(to_time)
}

/// A protobuf timestamp as a time (before 1970 counts as 1970).
fn to_time(t: &protobuf::Timestamp) -> SystemTime {
    UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
}

/// The record ids of a request: `bazel.canonical_id` when given (it names
/// the content whatever the URL), else every URI.
fn record_ids<'a>(canonical_id: Option<&'a str>, uris: &'a [String]) -> Vec<&'a str> {
    match canonical_id {
        Some(id) => vec![id],
        None => uris.iter().map(String::as_str).collect(),
    }
}
