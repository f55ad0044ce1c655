//! Multipart upload, for files over the single-PUT threshold: create the
//! upload, send the parts (a few at a time, each retried on retryable
//! errors), complete it — and abort it when anything fails or the upload is
//! cancelled, so no parts are left behind. Each step is one request through
//! [`S3Client::exchange`].

use std::fmt::Write as _;
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderValue, StatusCode, header};

use super::addressing::{part_query, upload_query};
use super::client::{CONTENT_TYPE_BLOB, MIB, S3Client};
use super::error::S3Error;
use super::exchange::{Call, Op, protocol};
use super::xml::{xml_element, xml_escape};

/// S3 limits: at most 10,000 parts, parts of at least 5 MiB (except the
/// last).
const MAX_PARTS: u64 = 10_000;

impl S3Client {
    /// Uploads `len` bytes of `file` as `key` in parts.
    pub(super) async fn put_multipart(
        &self,
        key: &str,
        file: Arc<File>,
        len: u64,
    ) -> Result<(), S3Error> {
        let part_size = part_size_for(len, self.inner.opts.multipart_part_size);
        let upload_id = self.create_multipart(key).await?;
        // Aborts in the background if this future is dropped half-way.
        let mut guard = AbortGuard {
            client: Some(self.clone()),
            key: key.to_owned(),
            upload_id: upload_id.clone(),
        };
        let result = self
            .upload_parts_and_complete(key, &upload_id, file, len, part_size)
            .await;
        guard.client = None;
        if let Err(e) = &result
            && let Err(abort) = self.abort_multipart(key, &upload_id).await
        {
            tracing::warn!(
                error = %abort,
                upload_error = %e,
                "aborting a failed S3 multipart upload failed; its parts stay until a lifecycle rule removes them"
            );
        }
        result
    }

    async fn upload_parts_and_complete(
        &self,
        key: &str,
        upload_id: &str,
        file: Arc<File>,
        len: u64,
        part_size: u64,
    ) -> Result<(), S3Error> {
        let count = len.div_ceil(part_size).max(1);
        let parts = (0..count).map(|i| {
            let offset = i * part_size;
            let size = part_size.min(len - offset);
            (i as u32 + 1, offset, size)
        });
        let mut etags: Vec<(u32, String)> = futures_util::stream::iter(parts)
            .map(|(number, offset, size)| {
                let file = file.clone();
                async move {
                    let etag = self
                        .upload_part_with_retries(key, upload_id, number, file, offset, size)
                        .await?;
                    Ok::<_, S3Error>((number, etag))
                }
            })
            .buffer_unordered(self.inner.opts.multipart_concurrency)
            .try_collect()
            .await?;
        etags.sort_unstable_by_key(|(n, _)| *n);
        self.complete_multipart(key, upload_id, &etags).await
    }

    async fn upload_part_with_retries(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        file: Arc<File>,
        offset: u64,
        size: u64,
    ) -> Result<String, S3Error> {
        let mut attempt = 1;
        loop {
            match self
                .upload_part(key, upload_id, number, file.clone(), offset, size)
                .await
            {
                Ok(etag) => return Ok(etag),
                Err(e) if e.is_retryable() && attempt < self.inner.opts.part_attempts => {
                    let delay = Duration::from_millis(200) * 2u32.pow(attempt - 1);
                    tracing::debug!(error = %e, part = number, attempt, "retrying S3 UploadPart");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// CreateMultipartUpload: the new upload's id.
    async fn create_multipart(&self, key: &str) -> Result<String, S3Error> {
        let call = Call::new(Op::CreateMultipart, key)
            .query("uploads")
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_BLOB),
            )
            .header(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        self.exchange(call, |answer| async move {
            let body = answer.checked_xml().await?;
            match xml_element(&String::from_utf8_lossy(&body), "UploadId") {
                Some(id) if !id.is_empty() => Ok(id),
                _ => Err(protocol(
                    Op::CreateMultipart,
                    key,
                    "no UploadId in the answer",
                )),
            }
        })
        .await
    }

    /// UploadPart: sends `size` bytes of `file` from `offset` as part
    /// `number`; the part's ETag.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        file: Arc<File>,
        offset: u64,
        size: u64,
    ) -> Result<String, S3Error> {
        let call = Call::new(Op::UploadPart, key)
            .query(part_query(number, upload_id))
            .file_body(file, offset, size);
        self.exchange(call, |answer| async move {
            let etag = answer
                .headers()
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            answer.xml().await?;
            etag.filter(|e| !e.is_empty())
                .ok_or_else(|| protocol(Op::UploadPart, key, format!("no ETag for part {number}")))
        })
        .await
    }

    /// CompleteMultipartUpload of `parts` (number and ETag, in order).
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<(), S3Error> {
        let mut xml = String::from(
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        for (number, etag) in parts {
            let _ = write!(
                xml,
                "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
                xml_escape(etag)
            );
        }
        xml.push_str("</CompleteMultipartUpload>");
        let xml = Bytes::from(xml);
        let call = Call::new(Op::CompleteMultipart, key)
            .query(upload_query(upload_id))
            .bytes_body(&xml)
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml"),
            );
        self.exchange(call, |answer| async move {
            answer.checked_xml().await.map(drop)
        })
        .await
    }

    /// AbortMultipartUpload; an upload that is already gone is fine.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let call = Call::new(Op::AbortMultipart, key)
            .query(upload_query(upload_id))
            // 404 NoSuchUpload: already gone.
            .accept(&[
                StatusCode::NO_CONTENT,
                StatusCode::OK,
                StatusCode::NOT_FOUND,
            ]);
        self.exchange(call, |answer| async move { answer.xml().await.map(drop) })
            .await
    }
}

/// Aborts a multipart upload in the background when dropped armed (the
/// upload future was cancelled).
struct AbortGuard {
    client: Option<S3Client>,
    key: String,
    upload_id: String,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        let upload_id = std::mem::take(&mut self.upload_id);
        handle.spawn(async move {
            if let Err(e) = client.abort_multipart(&key, &upload_id).await {
                tracing::warn!(error = %e, "aborting a cancelled S3 multipart upload failed");
            }
        });
    }
}

/// The part size for a `len`-byte upload: the configured size, scaled up
/// (to whole MiB) when the file would otherwise need more than 10,000 parts.
fn part_size_for(len: u64, configured: u64) -> u64 {
    let needed = len.div_ceil(MAX_PARTS);
    if needed > configured {
        needed.div_ceil(MIB) * MIB
    } else {
        configured.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_respect_the_part_count_limit() {
        assert_eq!(part_size_for(100 * MIB, 16 * MIB), 16 * MIB);
        // 1 TiB in 16 MiB parts would be 65,536 parts.
        let size = part_size_for(1024 * 1024 * MIB, 16 * MIB);
        assert!((1024 * 1024 * MIB).div_ceil(size) <= MAX_PARTS);
        assert_eq!(size % MIB, 0);
        assert_eq!(part_size_for(10, 4), 4);
    }
}
