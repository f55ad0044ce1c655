//! ByteStream Write, as the steps a stream goes through:
//!
//! 1. [`first_request`]: the first WriteRequest names the resource and the
//!    offset this stream starts at;
//! 2. [`ByteStreamService::already_stored`]: a blob already in the store
//!    ends the call at once, without reading the rest (REAPI);
//! 3. [`ByteStreamService::attach_stream`]: resume the registered upload or
//!    start a new one, and take over feeding it from any older stream;
//! 4. [`Feed::receive`]: pass the data on to the put, request by request,
//!    until `finish_write` or a half-close (which leaves it resumable);
//! 5. [`Feed::commit`]: end the put's body and wait for it to verify and
//!    commit the blob.
//!
//! Each step returns the call's error status itself; the upload's fate when
//! the stream stops early (kept for resumption or dropped) is decided by the
//! [`Attachment`] the feed holds.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bazel_remote_apis::google::bytestream::WriteResponse;
use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;
use tonic::{Response, Status, Streaming};

use super::super::resource::{self, quote};
use super::super::store_status;
use super::messages::WriteRequest;
use super::uploads::{Attachment, Chunk, Pipe, Upload, lock};
use super::{ByteStreamService, named};
use bazel_cache_digest::BlobKey;
use bazel_cache_store::budget::{MemoryBudget, MemoryUse};
use bazel_cache_store::{Encoding, StoreError, cut_reason};

/// What a Write stream uploads, from its first request.
struct WriteTarget {
    /// The resource name, as the client sent it: the registry's key.
    name: String,
    key: BlobKey,
    /// The blob's (uncompressed) size.
    size: u64,
    encoding: Encoding,
    /// The first request's `write_offset`: where this stream starts.
    offset: u64,
}

/// How a stream's requests ended.
enum StreamEnd {
    /// A request set `finish_write`: commit.
    FinishWrite,
    /// The client half-closed without `finish_write`: resumable.
    HalfClosed,
}

/// A Write stream that feeds its upload: it holds the put's input and the
/// pipe's lock. The fields drop in declaration order, which is the order
/// the feed lets go: the sender, the pipe's lock, the token, then the
/// attachment (which keeps the upload for resumption or unregisters it).
struct Feed {
    tx: mpsc::Sender<Option<Chunk>>,
    pipe: OwnedMutexGuard<Pipe>,
    /// Cancelled when a newer stream takes over, or the upload is aborted.
    token: CancellationToken,
    attachment: Attachment,
    upload: Arc<Upload>,
    /// Bytes received so far, over every stream of the upload.
    committed: u64,
    /// What data queued for the put is reserved from.
    memory: Arc<MemoryBudget>,
}

impl ByteStreamService {
    /// A Write call, after its request was counted.
    pub(super) async fn write_stream(
        &self,
        mut stream: Streaming<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let (target, first) = first_request(&mut stream, self.state.options.max_blob_size).await?;
        if let Some(committed_size) = self.already_stored(&target).await? {
            return Ok(Response::new(WriteResponse { committed_size }));
        }
        let mut feed = self.attach_stream(&target).await?;
        match feed.receive(&target, first, &mut stream).await? {
            StreamEnd::HalfClosed => Ok(Response::new(WriteResponse {
                committed_size: feed.committed as i64,
            })),
            StreamEnd::FinishWrite => feed.commit(&target, &mut stream).await.map(Response::new),
        }
    }

    /// Step 2: with the blob already stored, the committed size to answer
    /// with at once (any idle upload of it is dropped); `None` to upload.
    async fn already_stored(&self, target: &WriteTarget) -> Result<Option<i64>, Status> {
        let name = &target.name;
        if self
            .state
            .store
            .contains(&target.key)
            .await
            .map_err(|e| named(name, store_status(e)))?
            != Some(target.size)
        {
            return Ok(None);
        }
        // Already stored: done, without reading the rest (REAPI).
        self.uploads.discard_idle(name);
        Ok(Some(match target.encoding {
            Encoding::Identity => target.size as i64,
            Encoding::Zstd => -1,
        }))
    }

    /// Step 3: the registered upload (resumed at `write_offset`) or a new
    /// one (offset 0), with this stream as the one feeding it.
    async fn attach_stream(&self, target: &WriteTarget) -> Result<Feed, Status> {
        let WriteTarget {
            name,
            key,
            size,
            encoding,
            offset,
        } = target;
        let store = &self.state.store;
        let upload = self.uploads.attach(name, *offset, || {
            Upload::start(store.clone(), *key, *size, *encoding)
        })?;
        let attachment = Attachment {
            uploads: self.uploads.clone(),
            name: name.clone(),
            upload: upload.clone(),
            done: false,
        };
        // Take over from an older stream still feeding this upload, if any.
        let token = CancellationToken::new();
        std::mem::replace(&mut *lock(&upload.owner), token.clone()).cancel();
        let pipe = tokio::select! {
            pipe = upload.pipe.clone().lock_owned() => pipe,
            _ = token.cancelled() => return Err(superseded(name)),
        };
        if token.is_cancelled() {
            return Err(superseded(name));
        }
        let Some(tx) = pipe.tx.clone() else {
            return Err(Status::aborted(format!(
                "{}: this upload was already finished by another Write",
                quote(name)
            )));
        };
        let committed = upload.received.load(Ordering::Acquire);
        if *offset != committed {
            return Err(Status::invalid_argument(format!(
                "{}: write_offset {offset} does not match the {committed} bytes received so far \
                 (resume at the committed_size QueryWriteStatus reports, or restart at 0)",
                quote(name)
            )));
        }
        Ok(Feed {
            tx,
            pipe,
            token,
            attachment,
            upload,
            committed,
            memory: self.state.memory.clone(),
        })
    }
}

/// Step 1: the first WriteRequest, checked: it names the resource, and its
/// offset is not negative; the blob is not over `max_blob_size`.
async fn first_request(
    stream: &mut Streaming<WriteRequest>,
    max_blob_size: u64,
) -> Result<(WriteTarget, WriteRequest), Status> {
    let Some(first) = stream.message().await? else {
        return Err(Status::invalid_argument(
            "Write: the stream carried no WriteRequest",
        ));
    };
    let name = first.resource_name.clone();
    if name.is_empty() {
        return Err(Status::invalid_argument(
            "Write: the first WriteRequest must carry resource_name",
        ));
    }
    let res = resource::parse_write(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let Ok(offset) = u64::try_from(first.write_offset) else {
        return Err(Status::invalid_argument(format!(
            "{}: write_offset {} is negative",
            quote(&name),
            first.write_offset
        )));
    };
    let (size, encoding) = (res.digest.size, res.encoding);
    let limit = max_blob_size;
    // INVALID_ARGUMENT, as the spec asks for uploads over
    // max_cas_blob_size_bytes (and bazel-remote answers): not retryable.
    if size > limit {
        return Err(named(
            &name,
            Status::invalid_argument(StoreError::TooLarge { size, limit }.to_string()),
        ));
    }
    let key = BlobKey::cas(res.digest.hash);
    let target = WriteTarget {
        name,
        key,
        size,
        encoding,
        offset,
    };
    Ok((target, first))
}

impl Feed {
    /// Step 4: passes the data of `first` and the requests after it to the
    /// put, checking that each names the same resource and continues at the
    /// bytes received so far, until `finish_write` or the end of the stream.
    async fn receive(
        &mut self,
        target: &WriteTarget,
        first: WriteRequest,
        stream: &mut Streaming<WriteRequest>,
    ) -> Result<StreamEnd, Status> {
        let (name, size, encoding) = (&target.name, target.size, target.encoding);
        let mut msg = first;
        loop {
            if !msg.resource_name.is_empty() && msg.resource_name != *name {
                return Err(Status::invalid_argument(format!(
                    "{}: a later WriteRequest names a different resource, {}",
                    quote(name),
                    quote(&msg.resource_name)
                )));
            }
            let committed = self.committed;
            if msg.write_offset != committed as i64 {
                return Err(Status::invalid_argument(format!(
                    "{}: write_offset {} does not follow the {committed} bytes received so far",
                    quote(name),
                    msg.write_offset
                )));
            }
            if !msg.data.is_empty() {
                let n = msg.data.len() as u64;
                if encoding == Encoding::Zstd && committed + n > max_compressed(size) {
                    // The store bounds the decoded bytes; this bounds the
                    // input (e.g. endless skippable frames).
                    self.attachment.done = true;
                    self.upload.abort();
                    return Err(Status::invalid_argument(format!(
                        "{}: more than {} compressed bytes for a {size}-byte blob",
                        quote(name),
                        max_compressed(size)
                    )));
                }
                // Queued until the put takes it: from the memory budget. A
                // refusal leaves the upload resumable at `committed`.
                let held = (self.memory)
                    .reserve(MemoryUse::UploadBuffer, n)
                    .await
                    .map_err(|e| named(name, store_status(StoreError::MemoryExhausted(e))))?;
                let chunk = Chunk {
                    data: msg.data,
                    held,
                };
                tokio::select! {
                    sent = self.tx.send(Some(chunk)) => {
                        if sent.is_err() {
                            return Err(self.put_ended(name).await);
                        }
                    }
                    _ = self.token.cancelled() => return Err(superseded(name)),
                }
                self.committed += n;
                self.upload
                    .received
                    .store(self.committed, Ordering::Release);
            }
            if msg.finish_write {
                return Ok(StreamEnd::FinishWrite);
            }
            msg = tokio::select! {
                next = stream.message() => match next {
                    Ok(Some(next)) => next,
                    // Half-closed without finish_write: resumable.
                    Ok(None) => return Ok(StreamEnd::HalfClosed),
                    Err(status) => return Err(status),
                },
                _ = self.token.cancelled() => return Err(superseded(name)),
                // The put ended while the client kept us waiting: the
                // progress guard cut it. End the call now rather than hold
                // the stream for a client that may never send again.
                _ = self.tx.closed() => return Err(self.put_ended(name).await),
            };
        }
    }

    /// The put ended before the data did: its error. A put the progress
    /// guard cut stays registered, dead (QueryWriteStatus reports 0, so the
    /// client starts over); any other failure unregisters the upload.
    async fn put_ended(&mut self, name: &str) -> Status {
        let Some(put) = self.pipe.put.take() else {
            self.attachment.done = true;
            return Status::aborted(format!("{}: upload already finished", quote(name)));
        };
        let result = put.await;
        let cut = matches!(&result, Ok(Err(StoreError::Body(e))) if cut_reason(e).is_some());
        self.attachment.done = !cut;
        put_result(name, result)
            .err()
            .unwrap_or_else(|| Status::internal(format!("{}: upload ended early", quote(name))))
    }

    /// Step 5, after `finish_write`: ends the put's body; the put verifies
    /// and commits. A request after `finish_write` fails the call.
    async fn commit(
        mut self,
        target: &WriteTarget,
        stream: &mut Streaming<WriteRequest>,
    ) -> Result<WriteResponse, Status> {
        let name = &target.name;
        let ended = tokio::select! {
            sent = self.tx.send(None) => sent.is_ok(),
            _ = self.token.cancelled() => return Err(superseded(name)),
        };
        self.attachment.done = true;
        self.upload.finishing.store(ended, Ordering::Release);
        drop(self.tx);
        self.pipe.tx = None;
        let Some(mut put) = self.pipe.put.take() else {
            return Err(Status::aborted(format!(
                "{}: upload already finished",
                quote(name)
            )));
        };
        let result = if ended {
            tokio::select! {
                biased;
                next = stream.message() => {
                    if matches!(next, Ok(Some(_))) {
                        // Too late to keep the blob out if the put already
                        // committed, but its content was verified either way.
                        put.abort();
                        return Err(Status::invalid_argument(format!(
                            "{}: WriteRequest after finish_write",
                            quote(name)
                        )));
                    }
                    put.await
                }
                result = &mut put => result,
            }
        } else {
            put.await
        };
        put_result(name, result)?;
        let committed_size = match target.encoding {
            Encoding::Identity => target.size as i64,
            Encoding::Zstd => self.committed as i64,
        };
        Ok(WriteResponse { committed_size })
    }
}

/// Most zstd bytes accepted for a blob of `size` bytes: zstd's worst case
/// (incompressible data, about 0.4% overhead) with room for many frames.
fn max_compressed(size: u64) -> u64 {
    size.saturating_add(size / 64).saturating_add(1 << 20)
}

/// The status of a stream that lost its upload to a newer Write (or to an
/// abort) while it fed it.
fn superseded(name: &str) -> Status {
    Status::aborted(format!(
        "{}: upload taken over by a newer Write of the same resource, or abandoned",
        quote(name)
    ))
}

fn put_result(name: &str, result: Result<Result<(), StoreError>, JoinError>) -> Result<(), Status> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(named(name, store_status(e))),
        Err(e) if e.is_cancelled() => Err(Status::aborted(format!(
            "{}: upload was abandoned (restarted, expired or evicted); start again at write_offset 0",
            quote(name)
        ))),
        Err(e) => {
            tracing::error!(resource = %name, error = %e, "upload task failed");
            Err(Status::internal(format!(
                "{}: upload failed: {e}",
                quote(name)
            )))
        }
    }
}
