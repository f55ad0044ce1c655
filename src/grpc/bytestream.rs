//! ByteStream (`google.bytestream.ByteStream`): CAS blobs of any size, in
//! chunks — Read, Write and QueryWriteStatus, with the resource names of
//! REAPI v2 (parsed in `resource.rs`).
//!
//! **Read** opens the blob in the store and streams its body in chunks of
//! [`READ_CHUNK`] bytes, so no blob is ever held in memory whole. A
//! `compressed-blobs/zstd` read from offset 0 of a blob stored compressed
//! sends the stored bytes as they are; any other compressed read compresses
//! on the fly (zstd level 1) after skipping `read_offset` uncompressed bytes.
//!
//! **Write** feeds the client's chunks through a small bounded channel into
//! a `Store::put` running as its own task, which hashes and verifies while
//! it copies: memory per upload is bounded by [`UPLOAD_QUEUE`] messages, not
//! by the blob size. Nothing partial is ever stored: the put's body only
//! ends cleanly on `finish_write`; if the upload is abandoned the body fails
//! (and the put task is aborted), so the store drops its temp file.
//!
//! **Resumable uploads.** Every upload is registered under its full resource
//! name (which contains the client's uuid) in [`Uploads`]. When a Write
//! stream ends without `finish_write` (clean half-close, reset, transport
//! error), the upload — put task, channel and byte count — stays registered,
//! idle, for [`UPLOAD_TTL`]; then it is aborted. A later Write of the same
//! name with `write_offset` equal to the bytes received so far continues it;
//! `write_offset` 0 restarts it (the old put is aborted); any other offset is
//! INVALID_ARGUMENT. A Write that arrives while an older stream still feeds
//! the upload (the client saw its connection die before the server did)
//! takes over: the older stream is cancelled with ABORTED. QueryWriteStatus
//! reports the bytes received and `complete` once the blob is in the store.
//!
//! For `compressed-blobs` uploads, `write_offset` and `committed_size` count
//! *compressed* bytes received, on every request of every stream. (The spec
//! makes the first request's offset an uncompressed offset and the following
//! ones compressed sums, which cannot describe a resumed compressed upload;
//! for a fresh upload, offset 0, both readings agree.)
//!
//! The registry is bounded: at most [`MAX_UPLOADS`] uploads (when full, the
//! upload idle the longest is aborted to make room; if none is idle, the new
//! upload still runs but is not resumable), of which at most
//! [`MAX_IDLE_UPLOADS`] idle (each holds a temp file, a store reservation
//! and the put's buffers while nobody feeds it). The registry's lock (a
//! `std::sync::Mutex`) is taken when a stream starts or ends, never per chunk.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_compression::Level;
use async_compression::tokio::bufread::{ZstdDecoder, ZstdEncoder};
use bazel_remote_apis::google::bytestream::byte_stream_server::{ByteStream, ByteStreamServer};
use bazel_remote_apis::google::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse,
};
use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinError, JoinHandle};
use tokio_util::io::StreamReader;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::resource::{self, quote};
use super::{GrpcState, MAX_MESSAGE_SIZE, store_status};
use crate::digest::BlobKey;
use crate::store::{BlobReader, Encoding, PutRequest, Store, StoreError};

/// Bytes per ReadResponse (the last one may be shorter).
const READ_CHUNK: usize = 256 * 1024;
/// zstd level for compressing on the fly: fast enough not to slow a read.
const ZSTD_LEVEL: i32 = 1;
/// WriteRequest payloads queued between a Write stream and its put.
const UPLOAD_QUEUE: usize = 8;
/// Most uploads registered (in progress or awaiting resumption) at once.
const MAX_UPLOADS: usize = 10_000;
/// Most interrupted uploads awaiting resumption at once.
const MAX_IDLE_UPLOADS: usize = 1_000;
/// How long an interrupted upload waits to be resumed before it is aborted.
const UPLOAD_TTL: Duration = Duration::from_secs(600);

pub(super) fn service(state: Arc<GrpcState>) -> ByteStreamServer<ByteStreamService> {
    let uploads = Uploads::new(MAX_UPLOADS, MAX_IDLE_UPLOADS, UPLOAD_TTL);
    ByteStreamServer::new(ByteStreamService::new(state, uploads))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

pub struct ByteStreamService {
    state: Arc<GrpcState>,
    uploads: Arc<Uploads>,
}

impl ByteStreamService {
    fn new(state: Arc<GrpcState>, uploads: Uploads) -> Self {
        ByteStreamService {
            state,
            uploads: Arc::new(uploads),
        }
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        (self.state.on_request)();
        let req = request.into_inner();
        let name = req.resource_name.as_str();
        let res =
            resource::parse_read(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (Ok(offset), Ok(limit)) = (
            u64::try_from(req.read_offset),
            u64::try_from(req.read_limit),
        ) else {
            return Err(Status::invalid_argument(format!(
                "{}: read_offset ({}) and read_limit ({}) must not be negative",
                quote(name),
                req.read_offset,
                req.read_limit
            )));
        };
        if res.encoding == Encoding::Zstd && limit != 0 {
            return Err(Status::invalid_argument(format!(
                "{}: read_limit must be 0 when reading compressed-blobs (got {limit})",
                quote(name)
            )));
        }
        let size = res.digest.size;
        let key = BlobKey::cas(res.digest.hash);
        let stored_zstd_ok = res.encoding == Encoding::Zstd && offset == 0;
        let blob = self
            .state
            .store
            .get(&key, stored_zstd_ok)
            .await
            .map_err(|e| named(name, store_status(e)))?
            .ok_or_else(|| Status::not_found(format!("{}: blob not found", quote(name))))?;
        if blob.size != size {
            return Err(Status::not_found(format!(
                "{}: blob not found (the stored blob with that hash has {} bytes)",
                quote(name),
                blob.size
            )));
        }
        if offset > size {
            return Err(Status::out_of_range(format!(
                "{}: read_offset {offset} is past the end of the {size}-byte blob",
                quote(name)
            )));
        }

        let mut body = match blob.encoding {
            // Stored compressed and wanted compressed from the start: as stored.
            Encoding::Zstd if stored_zstd_ok => {
                return Ok(Response::new(chunks(
                    blob.body,
                    blob.body_len,
                    name.to_string(),
                )));
            }
            // The store hands out zstd only when asked; decode if it did anyway.
            Encoding::Zstd => {
                let input = BufReader::with_capacity(READ_CHUNK, blob.body);
                let mut dec = ZstdDecoder::new(input);
                dec.multiple_members(true);
                Box::pin(dec)
            }
            Encoding::Identity => blob.body,
        };
        if offset > 0 {
            // The store's bodies don't seek: read past the first `offset` bytes.
            let mut skip = BufReader::with_capacity(READ_CHUNK, (&mut body).take(offset));
            let skipped = tokio::io::copy_buf(&mut skip, &mut tokio::io::sink())
                .await
                .map_err(|e| read_error(name, &e))?;
            if skipped != offset {
                return Err(truncated(name, offset - skipped));
            }
        }
        let stream = match res.encoding {
            Encoding::Identity => {
                let remaining = size - offset;
                let want = if limit == 0 {
                    remaining
                } else {
                    limit.min(remaining)
                };
                chunks(Box::pin(body.take(want)), Some(want), name.to_string())
            }
            Encoding::Zstd => {
                let input = BufReader::with_capacity(READ_CHUNK, body.take(size - offset));
                let enc = ZstdEncoder::with_quality(input, Level::Precise(ZSTD_LEVEL));
                chunks(Box::pin(enc), None, name.to_string())
            }
        };
        Ok(Response::new(stream))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        (self.state.on_request)();
        let mut stream = request.into_inner();
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
        let res =
            resource::parse_write(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let Ok(offset) = u64::try_from(first.write_offset) else {
            return Err(Status::invalid_argument(format!(
                "{}: write_offset {} is negative",
                quote(&name),
                first.write_offset
            )));
        };
        let (size, encoding) = (res.digest.size, res.encoding);
        let limit = self.state.options.max_blob_size;
        if size > limit {
            return Err(named(
                &name,
                store_status(StoreError::TooLarge { size, limit }),
            ));
        }
        let key = BlobKey::cas(res.digest.hash);
        let store = &self.state.store;
        if store
            .contains(&key)
            .await
            .map_err(|e| named(&name, store_status(e)))?
            == Some(size)
        {
            // Already stored: done, without reading the rest (REAPI).
            self.uploads.discard_idle(&name);
            let committed_size = match encoding {
                Encoding::Identity => size as i64,
                Encoding::Zstd => -1,
            };
            return Ok(Response::new(WriteResponse { committed_size }));
        }

        let upload = self.uploads.attach(&name, offset, || {
            Upload::start(store.clone(), key, size, encoding)
        })?;
        let mut attachment = Attachment {
            uploads: self.uploads.clone(),
            name: name.clone(),
            upload: upload.clone(),
            done: false,
        };
        // Take over from an older stream still feeding this upload, if any.
        let token = CancellationToken::new();
        std::mem::replace(&mut *lock(&upload.owner), token.clone()).cancel();
        let mut pipe = tokio::select! {
            pipe = upload.pipe.clone().lock_owned() => pipe,
            _ = token.cancelled() => return Err(superseded(&name)),
        };
        if token.is_cancelled() {
            return Err(superseded(&name));
        }
        let Some(tx) = pipe.tx.clone() else {
            return Err(Status::aborted(format!(
                "{}: this upload was already finished by another Write",
                quote(&name)
            )));
        };
        let mut committed = upload.received.load(Ordering::Acquire);
        if offset != committed {
            return Err(Status::invalid_argument(format!(
                "{}: write_offset {offset} does not match the {committed} bytes received so far \
                 (resume at the committed_size QueryWriteStatus reports, or restart at 0)",
                quote(&name)
            )));
        }

        let mut msg = first;
        loop {
            if !msg.resource_name.is_empty() && msg.resource_name != name {
                return Err(Status::invalid_argument(format!(
                    "{}: a later WriteRequest names a different resource, {}",
                    quote(&name),
                    quote(&msg.resource_name)
                )));
            }
            if msg.write_offset != committed as i64 {
                return Err(Status::invalid_argument(format!(
                    "{}: write_offset {} does not follow the {committed} bytes received so far",
                    quote(&name),
                    msg.write_offset
                )));
            }
            if !msg.data.is_empty() {
                let n = msg.data.len() as u64;
                if encoding == Encoding::Zstd && committed + n > max_compressed(size) {
                    // The store bounds the decoded bytes; this bounds the
                    // input (e.g. endless skippable frames).
                    attachment.done = true;
                    upload.abort();
                    return Err(Status::invalid_argument(format!(
                        "{}: more than {} compressed bytes for a {size}-byte blob",
                        quote(&name),
                        max_compressed(size)
                    )));
                }
                tokio::select! {
                    sent = tx.send(Some(Bytes::from(msg.data))) => {
                        if sent.is_err() {
                            // The put ended before the data did: it failed.
                            attachment.done = true;
                            return Err(put_outcome(&name, &mut pipe).await.err().unwrap_or_else(
                                || Status::internal(format!("{}: upload ended early", quote(&name))),
                            ));
                        }
                    }
                    _ = token.cancelled() => return Err(superseded(&name)),
                }
                committed += n;
                upload.received.store(committed, Ordering::Release);
            }
            if msg.finish_write {
                break;
            }
            msg = tokio::select! {
                next = stream.message() => match next {
                    Ok(Some(next)) => next,
                    // Half-closed without finish_write: resumable.
                    Ok(None) => {
                        return Ok(Response::new(WriteResponse { committed_size: committed as i64 }));
                    }
                    Err(status) => return Err(status),
                },
                _ = token.cancelled() => return Err(superseded(&name)),
            };
        }

        // finish_write: end the body; the put verifies and commits.
        let ended = tokio::select! {
            sent = tx.send(None) => sent.is_ok(),
            _ = token.cancelled() => return Err(superseded(&name)),
        };
        attachment.done = true;
        upload.finishing.store(ended, Ordering::Release);
        drop(tx);
        pipe.tx = None;
        let Some(mut put) = pipe.put.take() else {
            return Err(Status::aborted(format!(
                "{}: upload already finished",
                quote(&name)
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
                            quote(&name)
                        )));
                    }
                    put.await
                }
                result = &mut put => result,
            }
        } else {
            put.await
        };
        put_result(&name, result)?;
        let committed_size = match encoding {
            Encoding::Identity => size as i64,
            Encoding::Zstd => committed as i64,
        };
        Ok(Response::new(WriteResponse { committed_size }))
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        (self.state.on_request)();
        let name = request.into_inner().resource_name;
        let res =
            resource::parse_write(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let key = BlobKey::cas(res.digest.hash);
        let stored = self
            .state
            .store
            .contains(&key)
            .await
            .map_err(|e| named(&name, store_status(e)))?;
        // Complete: the uncompressed size, compressed upload or not (what a
        // client resuming from it would send next is nothing; a Write then
        // completes at once because the blob exists).
        let response = if stored == Some(res.digest.size) {
            QueryWriteStatusResponse {
                committed_size: res.digest.size as i64,
                complete: true,
            }
        } else if let Some(received) = self.uploads.progress(&name) {
            QueryWriteStatusResponse {
                committed_size: received as i64,
                complete: false,
            }
        } else {
            return Err(Status::not_found(format!(
                "{}: no such upload in progress and no such blob stored",
                quote(&name)
            )));
        };
        Ok(Response::new(response))
    }
}

/// Most zstd bytes accepted for a blob of `size` bytes: zstd's worst case
/// (incompressible data, about 0.4% overhead) with room for many frames.
fn max_compressed(size: u64) -> u64 {
    size.saturating_add(size / 64).saturating_add(1 << 20)
}

/// A status with the resource name in front of its message.
fn named(name: &str, status: Status) -> Status {
    Status::new(
        status.code(),
        format!("{}: {}", quote(name), status.message()),
    )
}

fn superseded(name: &str) -> Status {
    Status::aborted(format!(
        "{}: upload taken over by a newer Write of the same resource, or abandoned",
        quote(name)
    ))
}

fn read_error(name: &str, e: &io::Error) -> Status {
    tracing::error!(resource = %name, error = %e, "reading blob failed");
    Status::internal(format!("{}: reading the stored blob: {e}", quote(name)))
}

fn truncated(name: &str, missing: u64) -> Status {
    tracing::error!(resource = %name, missing, "stored blob is shorter than its size");
    Status::data_loss(format!(
        "{}: the stored blob ended {missing} bytes early",
        quote(name)
    ))
}

/// Streams `reader` as ReadResponses of up to [`READ_CHUNK`] bytes. With
/// `expected`, a body ending early is an error, not a short blob.
fn chunks(reader: BlobReader, expected: Option<u64>, name: String) -> ReadStream {
    let state = Some((reader, expected, name));
    Box::pin(futures_util::stream::unfold(state, |state| async move {
        let (mut reader, mut expected, name) = state?;
        let mut data = Vec::with_capacity(READ_CHUNK);
        let mut eof = false;
        while data.len() < READ_CHUNK {
            match reader.read_buf(&mut data).await {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => return Some((Err(read_error(&name, &e)), None)),
            }
        }
        if let Some(left) = expected.as_mut() {
            *left = left.saturating_sub(data.len() as u64);
            if eof && *left > 0 {
                return Some((Err(truncated(&name, *left)), None));
            }
        }
        if data.is_empty() {
            return None;
        }
        let next = (!eof).then_some((reader, expected, name));
        Some((Ok(ReadResponse { data }), next))
    }))
}

/// What the put task returned, as a status. Takes the task out of the pipe.
async fn put_outcome(name: &str, pipe: &mut Pipe) -> Result<(), Status> {
    let Some(put) = pipe.put.take() else {
        return Err(Status::aborted(format!(
            "{}: upload already finished",
            quote(name)
        )));
    };
    put_result(name, put.await)
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One upload: a put running as its own task, fed through a channel by the
/// Write stream currently attached (at most one feeds it at a time).
struct Upload {
    /// Bytes fed to the put so far: of the blob for `blobs/` uploads, of
    /// the zstd stream for `compressed-blobs/` uploads.
    received: AtomicU64,
    /// Cancels the stream currently feeding the upload (so a newer stream
    /// can take over, or the upload can be aborted).
    owner: Mutex<CancellationToken>,
    /// The put's input and the put itself, locked by the feeding stream.
    pipe: Arc<tokio::sync::Mutex<Pipe>>,
    put_task: AbortHandle,
    /// finish_write was sent: the put is committing verified data and is no
    /// longer aborted, even if its stream goes away.
    finishing: AtomicBool,
}

struct Pipe {
    /// `Some(bytes)` is data, `None` is finish_write. If every sender is
    /// dropped without `None`, the put's body fails: nothing is stored.
    tx: Option<mpsc::Sender<Option<Bytes>>>,
    put: Option<JoinHandle<Result<(), StoreError>>>,
}

impl Upload {
    fn start(store: Arc<dyn Store>, key: BlobKey, size: u64, encoding: Encoding) -> Arc<Upload> {
        let (tx, rx) = mpsc::channel(UPLOAD_QUEUE);
        let body = StreamReader::new(body_stream(rx));
        let put = tokio::spawn(async move {
            store
                .put(PutRequest {
                    key,
                    size: Some(size),
                    encoding,
                    body: Box::pin(body),
                })
                .await
        });
        Arc::new(Upload {
            received: AtomicU64::new(0),
            owner: Mutex::new(CancellationToken::new()),
            put_task: put.abort_handle(),
            pipe: Arc::new(tokio::sync::Mutex::new(Pipe {
                tx: Some(tx),
                put: Some(put),
            })),
            finishing: AtomicBool::new(false),
        })
    }

    /// Stops the upload for good: cancels its stream and its put (unless
    /// the put is already committing a finished upload).
    fn abort(&self) {
        lock(&self.owner).cancel();
        if !self.finishing.load(Ordering::Acquire) {
            self.put_task.abort();
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.finishing.load(Ordering::Acquire) {
            self.put_task.abort();
        }
    }
}

/// The put's body: the channel's chunks, ending at finish_write; an error if
/// the channel closes before that.
fn body_stream(rx: mpsc::Receiver<Option<Bytes>>) -> impl Stream<Item = io::Result<Bytes>> + Send {
    futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Some(data)) => Some((Ok(data), Some(rx))),
            Some(None) => None,
            None => Some((
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upload abandoned before finish_write",
                )),
                None,
            )),
        }
    })
}

/// The registry of uploads, by resource name.
struct Uploads {
    registry: Mutex<Registry>,
    /// Most uploads registered, fed or idle.
    max: usize,
    /// Most idle uploads: each holds a temp file, a put buffer and a zstd
    /// context for up to `ttl`, at no cost to the client that left it.
    max_idle: usize,
    ttl: Duration,
}

#[derive(Default)]
struct Registry {
    entries: HashMap<String, Entry>,
    /// Entries with no stream attached.
    idle: usize,
}

struct Entry {
    upload: Arc<Upload>,
    /// Write streams attached (one feeds; a newer one may wait to take over).
    streams: usize,
    /// Bumped on every attach and detach; expiry needs it unchanged.
    epoch: u64,
    idle_since: Instant,
}

impl Registry {
    fn get(&self, name: &str, upload: &Arc<Upload>) -> Option<&Entry> {
        self.entries
            .get(name)
            .filter(|e| Arc::ptr_eq(&e.upload, upload))
    }

    fn take(&mut self, name: &str) -> Option<Entry> {
        let e = self.entries.remove(name)?;
        if e.streams == 0 {
            self.idle -= 1;
        }
        Some(e)
    }

    /// Unregisters the upload idle the longest, if any.
    fn take_idlest(&mut self) -> Option<(String, Entry)> {
        let name = self
            .entries
            .iter()
            .filter(|(_, e)| e.streams == 0)
            .min_by_key(|(_, e)| e.idle_since)
            .map(|(k, _)| k.clone())?;
        self.take(&name).map(|e| (name, e))
    }
}

impl Uploads {
    fn new(max: usize, max_idle: usize, ttl: Duration) -> Self {
        Uploads {
            registry: Mutex::new(Registry::default()),
            max,
            max_idle,
            ttl,
        }
    }

    /// The upload a Write stream starting at `offset` feeds: the registered
    /// one, or (offset 0) a new one from `start`, replacing any registered.
    fn attach(
        &self,
        name: &str,
        offset: u64,
        start: impl FnOnce() -> Arc<Upload>,
    ) -> Result<Arc<Upload>, Status> {
        let mut reg = lock(&self.registry);
        if offset != 0 {
            let Some(e) = reg.entries.get_mut(name) else {
                return Err(Status::invalid_argument(format!(
                    "{}: write_offset {offset} but no upload of this resource is in progress \
                     (it finished, failed or expired); start again at write_offset 0",
                    quote(name)
                )));
            };
            let was_idle = e.streams == 0;
            e.streams += 1;
            e.epoch += 1;
            let upload = e.upload.clone();
            if was_idle {
                reg.idle -= 1;
            }
            return Ok(upload);
        }
        let upload = start();
        if let Some(old) = reg.take(name) {
            old.upload.abort();
        } else if reg.entries.len() >= self.max {
            match reg.take_idlest() {
                Some((evicted, e)) => {
                    tracing::warn!(resource = %evicted, "too many uploads; aborting the one idle the longest");
                    e.upload.abort();
                }
                None => {
                    tracing::warn!(resource = %name, "too many uploads in progress; this one is not resumable");
                    return Ok(upload);
                }
            }
        }
        reg.entries.insert(
            name.to_string(),
            Entry {
                upload: upload.clone(),
                streams: 1,
                epoch: 0,
                idle_since: Instant::now(),
            },
        );
        Ok(upload)
    }

    /// A stream stopped feeding `upload` without finishing it: keep it for
    /// resumption (aborted after `ttl` unless resumed). Unregistered uploads
    /// (replaced, evicted, expired) are aborted at once.
    fn detach(self: &Arc<Self>, name: &str, upload: &Arc<Upload>) {
        let mut reg = lock(&self.registry);
        let Some(e) = reg
            .entries
            .get_mut(name)
            .filter(|e| Arc::ptr_eq(&e.upload, upload))
        else {
            drop(reg);
            upload.abort();
            return;
        };
        e.streams = e.streams.saturating_sub(1);
        e.epoch += 1;
        if e.streams > 0 {
            return;
        }
        e.idle_since = Instant::now();
        let epoch = e.epoch;
        reg.idle += 1;
        let evicted = (reg.idle > self.max_idle)
            .then(|| reg.take_idlest())
            .flatten();
        drop(reg);
        if let Some((evicted, e)) = evicted {
            tracing::warn!(resource = %evicted, "too many interrupted uploads; aborting the one idle the longest");
            e.upload.abort();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Shutting down: no one will resume it.
            self.remove(name, upload);
            upload.abort();
            return;
        };
        let (uploads, weak, name, ttl) = (
            Arc::downgrade(self),
            Arc::downgrade(upload),
            name.to_string(),
            self.ttl,
        );
        runtime.spawn(async move {
            tokio::time::sleep(ttl).await;
            expire(uploads, weak, &name, epoch);
        });
    }

    /// Unregisters `upload` (finished or failed for good); its put is left alone.
    fn remove(&self, name: &str, upload: &Arc<Upload>) {
        let mut reg = lock(&self.registry);
        if reg.get(name, upload).is_some() {
            reg.take(name);
        }
    }

    /// Drops an idle upload of a blob that turned out to be stored already.
    fn discard_idle(&self, name: &str) {
        let mut reg = lock(&self.registry);
        if reg.entries.get(name).is_some_and(|e| e.streams == 0)
            && let Some(e) = reg.take(name)
        {
            drop(reg);
            e.upload.abort();
        }
    }

    /// Bytes received so far by the registered upload of `name`.
    fn progress(&self, name: &str) -> Option<u64> {
        lock(&self.registry)
            .entries
            .get(name)
            .map(|e| e.upload.received.load(Ordering::Acquire))
    }

    /// Registered uploads, after checking the idle count.
    #[cfg(test)]
    fn len(&self) -> usize {
        let reg = lock(&self.registry);
        let idle = reg.entries.values().filter(|e| e.streams == 0).count();
        assert_eq!(reg.idle, idle, "idle count");
        reg.entries.len()
    }
}

/// Aborts the upload if it is still registered and untouched since `epoch`.
fn expire(uploads: Weak<Uploads>, upload: Weak<Upload>, name: &str, epoch: u64) {
    let (Some(uploads), Some(upload)) = (uploads.upgrade(), upload.upgrade()) else {
        return;
    };
    let mut reg = lock(&uploads.registry);
    if reg.get(name, &upload).is_some_and(|e| e.epoch == epoch) {
        reg.take(name);
        drop(reg);
        tracing::info!(resource = %name, "interrupted upload was not resumed in time; aborted");
        upload.abort();
    }
}

/// A Write stream's hold on an upload, released however the stream ends
/// (including the handler being dropped when the client resets the stream).
struct Attachment {
    uploads: Arc<Uploads>,
    name: String,
    upload: Arc<Upload>,
    /// The upload finished or failed for good: unregister instead of detach.
    done: bool,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.done {
            self.uploads.remove(&self.name, &self.upload);
        } else {
            self.uploads.detach(&self.name, &self.upload);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Registry behaviour that needs a short TTL or a small bound; the
    //! protocol itself is tested against the binary in tests/grpc_bytestream.rs.

    use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
    use tonic::Code;
    use tonic::transport::Channel;

    use super::*;
    use crate::digest::Hash;
    use crate::grpc::GrpcOptions;
    use crate::store::disk::{DiskConfig, DiskStore};

    struct Harness {
        client: ByteStreamClient<Channel>,
        uploads: Arc<Uploads>,
        dir: tempfile::TempDir,
    }

    impl Harness {
        async fn start(max_uploads: usize, max_idle: usize, ttl: Duration) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = DiskConfig::new(dir.path(), 1 << 30);
            cfg.fsync = false;
            let store = Arc::new(DiskStore::open(cfg).await.unwrap());
            let state = Arc::new(GrpcState {
                store,
                options: GrpcOptions::default(),
                on_request: Box::new(|| {}),
            });
            let svc = ByteStreamService::new(state, Uploads::new(max_uploads, max_idle, ttl));
            let uploads = svc.uploads.clone();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(ByteStreamServer::new(svc))
                    .serve_with_incoming(incoming),
            );
            let client = ByteStreamClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            Harness {
                client,
                uploads,
                dir,
            }
        }

        fn temp_files(&self) -> usize {
            std::fs::read_dir(self.dir.path().join("tmp"))
                .unwrap()
                .count()
        }

        async fn query(&self, name: &str) -> Result<(i64, bool), Status> {
            self.client
                .clone()
                .query_write_status(QueryWriteStatusRequest {
                    resource_name: name.to_string(),
                })
                .await
                .map(|r| (r.get_ref().committed_size, r.get_ref().complete))
        }

        /// Sends `data` from `offset`, optionally finishing; with `hold`,
        /// the stream stays open afterwards (the returned task is the call).
        fn write(
            &self,
            name: &str,
            data: &[u8],
            offset: usize,
            finish: bool,
            hold: bool,
        ) -> tokio::task::JoinHandle<Result<i64, Status>> {
            let req = WriteRequest {
                resource_name: name.to_string(),
                write_offset: offset as i64,
                finish_write: finish,
                data: data.to_vec(),
            };
            let mut client = self.client.clone();
            tokio::spawn(async move {
                let first = futures_util::stream::iter([req]);
                let result = if hold {
                    use futures_util::StreamExt;
                    client
                        .write(first.chain(futures_util::stream::pending()))
                        .await
                } else {
                    client.write(first).await
                };
                result.map(|r| r.into_inner().committed_size)
            })
        }
    }

    fn blob(seed: u8) -> (Vec<u8>, String) {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 ^ seed).collect();
        let hash = Hash::of(&data);
        (data, hash.to_hex())
    }

    fn upload_name(uuid: &str, hex: &str) -> String {
        format!("uploads/{uuid}/blobs/{hex}/10000")
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..300 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn interrupted_upload_expires() {
        let h = Harness::start(100, 100, Duration::from_millis(300)).await;
        let (data, hex) = blob(1);
        let name = upload_name("a", &hex);
        let sent = h
            .write(&name, &data[..4000], 0, false, false)
            .await
            .unwrap();
        assert_eq!(sent.unwrap(), 4000);
        assert_eq!(h.query(&name).await.unwrap(), (4000, false));
        eventually("the put's temp file", || h.temp_files() == 1).await;
        eventually("expiry", || h.uploads.len() == 0).await;
        assert_eq!(h.query(&name).await.unwrap_err().code(), Code::NotFound);
        eventually("temp file removal", || h.temp_files() == 0).await;
        // Resuming now is refused; restarting works.
        let late = h
            .write(&name, &data[4000..], 4000, true, false)
            .await
            .unwrap();
        assert_eq!(late.unwrap_err().code(), Code::InvalidArgument);
        let again = h.write(&name, &data, 0, true, false).await.unwrap();
        assert_eq!(again.unwrap(), 10_000);
    }

    #[tokio::test]
    async fn attached_upload_does_not_expire() {
        let h = Harness::start(100, 100, Duration::from_millis(200)).await;
        let (data, hex) = blob(2);
        let name = upload_name("b", &hex);
        let first = h
            .write(&name, &data[..3000], 0, false, false)
            .await
            .unwrap();
        assert_eq!(first.unwrap(), 3000);
        // Resumed by a stream that then idles past the TTL: still alive.
        let held = h.write(&name, &data[3000..6000], 3000, false, true);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(h.query(&name).await.unwrap(), (6000, false));
        // A newer stream takes over from the held one and finishes.
        let last = h
            .write(&name, &data[6000..], 6000, true, false)
            .await
            .unwrap();
        assert_eq!(last.unwrap(), 10_000);
        let held = held.await.unwrap().unwrap_err();
        assert_eq!(held.code(), Code::Aborted, "{held:?}");
        assert_eq!(h.query(&name).await.unwrap(), (10_000, true));
        assert_eq!(h.uploads.len(), 0);
    }

    #[tokio::test]
    async fn upload_registry_is_bounded() {
        let h = Harness::start(2, 2, Duration::from_secs(600)).await;
        let blobs: Vec<(Vec<u8>, String)> = (10..16).map(blob).collect();
        let names: Vec<String> = blobs.iter().map(|(_, hex)| upload_name("u", hex)).collect();
        // Two interrupted uploads fill the registry.
        for i in 0..2 {
            let r = h.write(&names[i], &blobs[i].0[..100], 0, false, false);
            assert_eq!(r.await.unwrap().unwrap(), 100);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A third evicts the one idle the longest.
        let r = h.write(&names[2], &blobs[2].0[..100], 0, false, false);
        assert_eq!(r.await.unwrap().unwrap(), 100);
        assert_eq!(h.query(&names[0]).await.unwrap_err().code(), Code::NotFound);
        assert_eq!(h.query(&names[1]).await.unwrap(), (100, false));
        assert_eq!(h.query(&names[2]).await.unwrap(), (100, false));
        eventually("evicted temp file removal", || h.temp_files() == 2).await;

        // Both slots busy with live streams: a new upload still works, unregistered.
        let held: Vec<_> = (1..3)
            .map(|i| h.write(&names[i], &blobs[i].0[100..200], 100, false, true))
            .collect();
        eventually("both resumed", || {
            lock(&h.uploads.registry)
                .entries
                .values()
                .all(|e| e.streams == 1 && e.upload.received.load(Ordering::Acquire) == 200)
        })
        .await;
        let full = h
            .write(&names[3], &blobs[3].0, 0, true, false)
            .await
            .unwrap();
        assert_eq!(full.unwrap(), 10_000);
        assert_eq!(h.query(&names[3]).await.unwrap(), (10_000, true));
        // ... but an unregistered upload is not resumable.
        let cut = h.write(&names[4], &blobs[4].0[..100], 0, false, false);
        assert_eq!(cut.await.unwrap().unwrap(), 100);
        assert_eq!(h.query(&names[4]).await.unwrap_err().code(), Code::NotFound);
        assert_eq!(h.uploads.len(), 2);
        for t in held {
            t.abort();
        }
    }

    #[tokio::test]
    async fn idle_uploads_are_bounded() {
        let h = Harness::start(100, 2, Duration::from_secs(600)).await;
        let blobs: Vec<(Vec<u8>, String)> = (20..23).map(blob).collect();
        let names: Vec<String> = blobs.iter().map(|(_, hex)| upload_name("i", hex)).collect();
        for (name, (data, _)) in names.iter().zip(&blobs) {
            let r = h.write(name, &data[..100], 0, false, false);
            assert_eq!(r.await.unwrap().unwrap(), 100);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The third interrupted upload pushed out the first.
        assert_eq!(h.query(&names[0]).await.unwrap_err().code(), Code::NotFound);
        assert_eq!(h.query(&names[1]).await.unwrap(), (100, false));
        assert_eq!(h.query(&names[2]).await.unwrap(), (100, false));
        assert_eq!(h.uploads.len(), 2);
        eventually("evicted temp file removal", || h.temp_files() == 2).await;
        // The others still resume.
        for i in 1..3 {
            let r = h.write(&names[i], &blobs[i].0[100..], 100, true, false);
            assert_eq!(r.await.unwrap().unwrap(), 10_000);
        }
        assert_eq!(h.uploads.len(), 0);
        assert_eq!(h.temp_files(), 0);
    }
}
