//! ByteStream (`google.bytestream.ByteStream`): CAS blobs of any size, in
//! chunks — Read, Write and QueryWriteStatus, with the resource names of
//! REAPI v2 (parsed in `resource.rs`).
//!
//! **Read** opens the blob in the store and streams its body in chunks (of
//! 32 to 256 KiB, from the memory budget; read.rs says what a Read holds
//! while its client does not read), so no blob is ever held whole. A
//! `compressed-blobs/zstd` read from offset 0 of a blob stored compressed
//! sends the stored bytes as they are; any other compressed read compresses
//! on the fly (zstd level 1) after skipping `read_offset` uncompressed bytes.
//!
//! **Write** feeds the client's chunks through a small bounded channel into
//! a `Store::put` running as its own task, which hashes, verifies and
//! writes the chunks where they are (each keeps its memory reservation
//! until written): memory per upload is bounded by `UPLOAD_QUEUE`
//! (uploads.rs) messages, not by the blob size. Nothing partial is ever stored: the
//! put's body only ends cleanly on `finish_write`; if the upload is
//! abandoned the body fails (and the put task is aborted), so the store
//! drops its temp file.
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
//! [`MAX_IDLE_UPLOADS`] idle. An idle upload holds no write slot; its temp
//! file, reservation and buffers last until the store's progress guard cuts
//! its silent body (a rate window, 30 s by default), after which it is
//! *dead*: QueryWriteStatus reports `committed_size` 0 and the client starts
//! over (uploads.rs says why). The registry's lock (a `std::sync::Mutex`) is
//! taken when a stream starts or ends, never per chunk.
//!
//! Files: this one holds the service and QueryWriteStatus; `server.rs`
//! routes the three methods to it, with the `Bytes`-carrying WriteRequest
//! of `messages.rs`; `read.rs` the Read path, whose messages
//! `read_frames.rs` frames in place; `write.rs` the Write protocol,
//! in named steps; `uploads.rs` the registry of resumable uploads that
//! Write and QueryWriteStatus share.

mod messages;
mod read;
mod read_frames;
mod server;
mod uploads;
mod write;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::google::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, WriteResponse,
};
use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::resource::{self, quote};
use super::{GrpcState, MAX_MESSAGE_SIZE, store_status};
use bazel_cache_digest::BlobKey;
use messages::WriteRequest;
pub(crate) use server::ByteStreamServer;
use uploads::Uploads;

/// Most uploads registered (in progress or awaiting resumption) at once.
const MAX_UPLOADS: usize = 10_000;
/// Most interrupted uploads awaiting resumption at once.
const MAX_IDLE_UPLOADS: usize = 1_000;
/// How long an interrupted upload waits to be resumed before it is aborted.
const UPLOAD_TTL: Duration = Duration::from_secs(600);

pub(super) fn service(state: Arc<GrpcState>) -> ByteStreamServer {
    let uploads = Uploads::new(MAX_UPLOADS, MAX_IDLE_UPLOADS, UPLOAD_TTL);
    ByteStreamServer::new(ByteStreamService::new(state, uploads))
}

/// The ByteStream service: the gRPC front end's shared state and the
/// registry of uploads its Write and QueryWriteStatus calls share.
pub(crate) struct ByteStreamService {
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

/// A Read's answer: its messages, each framed for the wire (read_frames.rs).
type ReadStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, Status>> + Send>>;

impl ByteStreamService {
    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        (self.state.on_request)();
        read::read(&self.state, request).await
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        (self.state.on_request)();
        self.write_stream(request.into_inner()).await
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
            // An upload this replica has not seen: started on another
            // replica behind the same Service, lost to a restart, or failed
            // for good. Nothing is committed; committed_size 0 makes a
            // client start over (Bazel resumes from the committed_size it
            // gets, and gives up on the blob after NOT_FOUND).
            QueryWriteStatusResponse {
                committed_size: 0,
                complete: false,
            }
        };
        Ok(Response::new(response))
    }
}

/// A status with the resource name in front of its message.
fn named(name: &str, status: Status) -> Status {
    Status::new(
        status.code(),
        format!("{}: {}", quote(name), status.message()),
    )
}
