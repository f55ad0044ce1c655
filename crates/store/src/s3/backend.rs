//! The S3 [`Backend`]: bazel-remote's object layout (`keys.rs`) and, in zstd
//! storage mode, its `cas.v2` container (`casblob.rs`) over our client.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use bazel_cache_digest::{BlobKey, Kind};

use super::casblob;
use super::client::{S3Client, S3Error, S3RequestStats};
use super::keys::object_key;
use crate::Encoding;
use crate::proxy::{Backend, BackendError, Download, Presence, Upload};

impl From<S3Error> for BackendError {
    fn from(e: S3Error) -> Self {
        BackendError {
            retryable: e.is_retryable(),
            code: e.code().map(str::to_owned),
            source: Box::new(e),
        }
    }
}

pub struct S3Backend {
    client: S3Client,
    prefix: String,
    /// zstd storage mode: CAS objects use bazel-remote's `cas.v2` layout.
    casblob: bool,
}

impl S3Backend {
    pub fn new(client: S3Client, prefix: String, casblob: bool) -> Self {
        S3Backend {
            client,
            prefix,
            casblob,
        }
    }

    /// Outcomes and latencies of the S3 requests made so far (metrics).
    pub fn request_stats(&self) -> &S3RequestStats {
        self.client.request_stats()
    }

    fn object(&self, key: &BlobKey) -> String {
        object_key(&self.prefix, key, self.casblob)
    }

    fn is_casblob(&self, key: &BlobKey) -> bool {
        key.kind == Kind::Cas && self.casblob
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn locate(&self, key: &BlobKey) -> String {
        self.object(key)
    }

    /// In `cas.v2` layout the object length is the encoded size, so only
    /// presence can be told.
    async fn head(&self, key: &BlobKey) -> Result<Presence, BackendError> {
        Ok(match self.client.head(&self.object(key)).await? {
            None => Presence::Absent,
            Some(_) if self.is_casblob(key) => Presence::Present { size: None },
            Some(len) => Presence::Present { size: Some(len) },
        })
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Download>, BackendError> {
        let Some(obj) = self.client.get(&self.object(key)).await? else {
            return Ok(None);
        };
        Ok(Some(if self.is_casblob(key) {
            Download {
                size: None,
                stored_len: obj.len,
                body: casblob::decoder(obj.body),
            }
        } else {
            Download {
                size: obj.len,
                stored_len: obj.len,
                body: obj.body,
            }
        }))
    }

    async fn put(&self, key: &BlobKey, blob: Upload) -> Result<(), BackendError> {
        let object = self.object(key);
        let casblob = self.is_casblob(key);
        let Upload {
            file,
            encoding,
            size,
            scratch,
        } = blob;
        if !casblob && encoding == Encoding::Identity {
            let len = file.metadata().map_err(BackendError::local)?.len();
            self.client.put_file(&object, Arc::new(file), len).await?;
            return Ok(());
        }
        // Re-encode into a scratch file: bazel-remote's casblob format, or
        // plain bytes from a zstd-stored blob.
        let spool = scratch.clone();
        let spooled = tokio::task::spawn_blocking(move || -> io::Result<(std::fs::File, u64)> {
            let mut input: Box<dyn io::Read> = match encoding {
                Encoding::Identity => Box::new(file),
                Encoding::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
            };
            let mut out = std::fs::File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&spool)?;
            let len = if casblob {
                casblob::encode(&mut input, size, &mut out)?
            } else {
                io::copy(&mut input, &mut out)?
            };
            Ok((out, len))
        })
        .await
        .map_err(BackendError::local)
        .and_then(|r| r.map_err(BackendError::local));
        let result = match spooled {
            Ok((out, len)) => self
                .client
                .put_file(&object, Arc::new(out), len)
                .await
                .map_err(BackendError::from),
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&scratch).await;
        result
    }

    async fn touch(&self, key: &BlobKey) -> Result<(), BackendError> {
        Ok(self.client.touch(&self.object(key)).await?)
    }
}
