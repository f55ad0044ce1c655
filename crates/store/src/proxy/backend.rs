//! [`Backend`]: the small interface a remote tier satisfies (S3, another
//! HTTP cache, another REAPI cache: each a new module, not a copy of the
//! proxy).
//!
//! Four operations, all in terms of blob keys and identity bytes: the
//! backend owns its object naming and on-the-wire encoding (bazel-remote's
//! `cas.v2` format for S3, for instance), the proxy owns everything else
//! (single-flight, verification through the local store, the durable queue,
//! retries).

use std::path::PathBuf;

use async_trait::async_trait;
use bazel_cache_digest::{BlobKey, Digest};

use crate::{BlobReader, Encoding};

/// Whether the backend holds an object, and its logical size when the
/// backend can tell without reading it (a `cas.v2` object's length is its
/// encoded size, so S3 in that layout cannot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Absent,
    Present { size: Option<u64> },
}

/// An object being downloaded: identity bytes, with their count when known.
pub struct Download {
    pub size: Option<u64>,
    /// The size of the object as stored, for `max_proxy_blob_size`.
    pub stored_len: Option<u64>,
    pub body: BlobReader,
}

/// A blob of the local tier, handed to [`Backend::put`].
pub struct Upload {
    pub file: std::fs::File,
    /// How the file's bytes are encoded (zstd storage mode stores CAS blobs
    /// compressed).
    pub encoding: Encoding,
    /// Logical size.
    pub size: u64,
    /// A path the backend may create for a re-encoded copy and must remove.
    pub scratch: PathBuf,
}

impl Upload {
    /// The blob's identity bytes as a stream: the file, or the file decoded
    /// when stored zstd-compressed (every frame of it: the disk store writes
    /// one per chunk). For backends that send identity bytes.
    pub fn into_identity_reader(self) -> BlobReader {
        let file = tokio::fs::File::from_std(self.file);
        match self.encoding {
            Encoding::Identity => Box::pin(file),
            Encoding::Zstd => {
                let mut decoder = async_compression::tokio::bufread::ZstdDecoder::new(
                    tokio::io::BufReader::new(file),
                );
                decoder.multiple_members(true);
                Box::pin(decoder)
            }
        }
    }
}

/// A backend failure, with what the proxy needs to decide: retry or give
/// up, and a stable code so one bad credential is logged once, not once per
/// upload.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct BackendError {
    pub retryable: bool,
    pub code: Option<String>,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl BackendError {
    /// A local failure preparing a request (reading or re-encoding the local
    /// copy): always worth another attempt.
    pub fn local(e: impl std::fmt::Display) -> Self {
        BackendError {
            retryable: true,
            code: None,
            source: format!("preparing the upload: {e}").into(),
        }
    }
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Its name in `/status` and logs (`"s3"`).
    fn name(&self) -> &'static str;

    /// Where a key lives in the backend, for logs.
    fn locate(&self, key: &BlobKey) -> String;

    async fn head(&self, key: &BlobKey) -> Result<Presence, BackendError>;

    /// Like [`Backend::head`] for a CAS blob whose size the caller knows
    /// (FindMissingBlobs). A backend that names blobs by hash and size
    /// (REAPI) needs it; the others ask by hash.
    async fn head_digest(&self, d: &Digest) -> Result<Presence, BackendError> {
        self.head(&BlobKey::cas(d.hash)).await
    }

    /// Opens an object for download; `None` when absent. The proxy verifies
    /// the bytes (through the local store's write path) before serving them.
    async fn get(&self, key: &BlobKey) -> Result<Option<Download>, BackendError>;

    /// Uploads a local blob.
    async fn put(&self, key: &BlobKey, blob: Upload) -> Result<(), BackendError>;

    /// Refreshes the object's age, so a bucket lifecycle rule expires only
    /// what no build uses.
    async fn touch(&self, key: &BlobKey) -> Result<(), BackendError>;
}
