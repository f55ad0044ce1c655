//! The persistent map URI + qualifiers → digest: entries in the action
//! cache namespace, keyed by the SHA-256 of the canonical request (as
//! bazel-remote keys its asset records in the AC). An entry is an
//! `ActionResult` naming the blob (an output file) or the directory (an
//! output directory) and when it was recorded (`worker_completed_timestamp`,
//! compared with `oldest_content_accepted`), so it lives, is evicted and is
//! proxied like any AC entry, and the store's own format needs nothing new.

use std::time::{SystemTime, UNIX_EPOCH};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::protobuf::Timestamp;
use prost::Message;
use sha2::Digest as _;

use bazel_cache_digest::{BlobKey, Digest, DigestFunction, Hash};
use bazel_cache_store::{Encoding, PutBody, PutRequest, Store, StoreError, read_all};

/// What a record points at: FetchBlob/PushBlob record blobs,
/// PushDirectory/FetchDirectory directories; the two never answer each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asset {
    Blob,
    Directory,
}

/// The AC key of a record: the request's instance, its kind, the URI (or
/// `bazel.canonical_id`, which names the content whatever the URL) and the
/// identity qualifiers, each length-prefixed so no two requests collide.
///
/// A record of a BLAKE3 request lives in the BLAKE3 namespace under the
/// same bytes (and names a BLAKE3 digest): a client asking for one
/// function never gets a digest of the other. SHA-256 record keys are
/// what they were before BLAKE3.
pub(super) fn record_key(
    function: DigestFunction,
    asset: Asset,
    instance: &str,
    id: &str,
    identity: &[(String, String)],
) -> BlobKey {
    let mut h = sha2::Sha256::new();
    let mut field = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    field("bazel-cache remote asset v1");
    field(match asset {
        Asset::Blob => "blob",
        Asset::Directory => "directory",
    });
    field(instance);
    field(id);
    for (name, value) in identity {
        field(name);
        field(value);
    }
    BlobKey::ac(Hash::new(function, h.finalize().into()))
}

/// Writes a record (replacing an older one).
pub(super) async fn write(
    store: &dyn Store,
    key: BlobKey,
    asset: Asset,
    digest: Digest,
) -> Result<(), StoreError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut ar = re::ActionResult {
        execution_metadata: Some(re::ExecutedActionMetadata {
            worker_completed_timestamp: Some(Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    match asset {
        Asset::Blob => ar.output_files.push(re::OutputFile {
            path: "blob".into(),
            digest: Some(digest.to_reapi()),
            ..Default::default()
        }),
        Asset::Directory => ar.output_directories.push(re::OutputDirectory {
            path: "directory".into(),
            tree_digest: Some(digest.to_reapi()),
            ..Default::default()
        }),
    }
    let bytes = ar.encode_to_vec();
    store
        .put(PutRequest {
            key,
            size: Some(bytes.len() as u64),
            encoding: Encoding::Identity,
            body: PutBody::bytes(bytes),
        })
        .await
}

/// The digest a record names, if there is one recorded no earlier than
/// `oldest` and what it names is still in the CAS.
pub(super) async fn lookup(
    store: &dyn Store,
    key: &BlobKey,
    asset: Asset,
    oldest: Option<SystemTime>,
) -> Result<Option<Digest>, StoreError> {
    let Some(bytes) = read_all(store, key, 64 * 1024).await.or_else(|e| match e {
        StoreError::TooLarge { .. } => Ok(None),
        e => Err(e),
    })?
    else {
        return Ok(None);
    };
    let Ok(ar) = re::ActionResult::decode(bytes.as_slice()) else {
        return Ok(None);
    };
    let recorded = ar
        .execution_metadata
        .and_then(|m| m.worker_completed_timestamp)
        .map(|t| super::to_time(&t));
    if let Some(oldest) = oldest
        && recorded.is_none_or(|r| r < oldest)
    {
        return Ok(None);
    }
    let digest = match asset {
        Asset::Blob => ar.output_files.first().and_then(|f| f.digest.clone()),
        Asset::Directory => ar
            .output_directories
            .first()
            .and_then(|d| d.tree_digest.clone()),
    };
    let Some(digest) = digest.and_then(|d| Digest::from_reapi(key.hash.function(), &d).ok()) else {
        return Ok(None);
    };
    Ok(present(store, digest).await?.then_some(digest))
}

/// Whether the CAS holds `digest` (with its size).
pub(super) async fn present(store: &dyn Store, digest: Digest) -> Result<bool, StoreError> {
    Ok(store.contains(&BlobKey::cas(digest.hash)).await? == Some(digest.size))
}
