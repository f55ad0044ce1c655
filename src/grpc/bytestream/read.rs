//! ByteStream Read: a blob streamed from the store in chunks, so no blob
//! is ever held in memory whole. A `compressed-blobs/zstd` read from offset
//! 0 of a blob stored compressed sends the stored bytes as they are; any
//! other compressed read compresses on the fly (zstd level [`ZSTD_LEVEL`])
//! after skipping `read_offset` uncompressed bytes.
//!
//! **Memory per Read.** A Read reserves its buffers from the memory budget
//! ([`MemoryBudget::reserve_read`]) once the blob is found, and holds them
//! until its response stream is dropped (the call ends, the client resets
//! the stream or the connection closes): [`READ_CHUNKS_HELD`] chunks of a
//! size picked from how full the budget is (256 KiB while at least half is
//! free, down to 32 KiB; a smaller blob's own size), plus the decoder of a
//! blob stored compressed (reserved by the store from its frame header:
//! about 1 MiB for the store's 512 KiB window) or the encoder of an
//! on-the-fly compressed read ([`ZSTD_ENCODER_BYTES`]).
//!
//! A client that stops reading (HTTP/2 flow window at 0) cannot make a
//! stream hold more. The chunk stream below is polled only when the
//! response body (read_frames.rs) is, and each chunk is one message and one
//! body frame; hyper polls the body for the next frame only once it has
//! handed the one before to h2, which it does only when the stream has send
//! capacity. So a parked
//! stream holds the frame hyper waits to send, at most one more that h2 is
//! still sending (when the window closed mid-way), and the blob reader's
//! buffers (a tokio `File` keeps a buffer of its last read's size): three
//! chunks, and the decoder. All of it is counted in the budget, so parked
//! streams together hold at most `max_buffer_memory`; a Read that finds it
//! full waits up to 2 s, then gets RESOURCE_EXHAUSTED.

use std::io;

use async_compression::Level;
use async_compression::tokio::bufread::ZstdEncoder;
use bazel_remote_apis::google::bytestream::ReadRequest;
use tokio::io::{AsyncReadExt, BufReader};
use tonic::{Request, Response, Status};

use super::super::resource::{self, quote};
use super::super::{GrpcState, store_status};
use super::read_frames::{ROOM, frame};
use super::{ReadStream, named};
use bazel_cache_digest::BlobKey;
use bazel_cache_store::budget::{
    MemoryBudget, MemoryExhausted, MemoryUse, READ_CHUNKS_HELD, ReadBuffers, ZSTD_ENCODER_BYTES,
};
use bazel_cache_store::{BlobBody, BlobFile, BlobReader, Encoding, StoreError, zstd_decode};
use futures_util::StreamExt;

/// zstd level for compressing on the fly: fast enough not to slow a read.
const ZSTD_LEVEL: i32 = 1;

/// Answers a Read: checks the request, opens the blob and returns the
/// stream of its chunks.
pub(super) async fn read(
    state: &GrpcState,
    request: Request<ReadRequest>,
) -> Result<Response<ReadStream>, Status> {
    let req = request.into_inner();
    let name = req.resource_name.as_str();
    let res = resource::parse_read(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
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
    let blob = state
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
    let memory_error =
        |e: MemoryExhausted| named(name, store_status(StoreError::MemoryExhausted(e)));
    // What the client will get: at most the rest of the blob (compressed
    // on the fly: about as much).
    let len = blob.body_len.unwrap_or(u64::MAX).min(size - offset);
    let mut buffers = (state.memory)
        .reserve_read(Some(len))
        .await
        .map_err(memory_error)?;

    // The whole file as stored, which is what the client asked for: sent
    // in chunks read straight into the messages.
    let whole = offset == 0 && (limit == 0 || limit >= size);
    let as_stored = match blob.encoding {
        Encoding::Zstd => stored_zstd_ok,
        Encoding::Identity => res.encoding == Encoding::Identity && whole,
    };
    if as_stored && let BlobBody::File(file) = blob.body {
        return Ok(Response::new(file_chunks(file, name.to_string(), buffers)));
    }
    let mut body = match blob.encoding {
        // Stored compressed and wanted compressed from the start: as stored.
        Encoding::Zstd if stored_zstd_ok => {
            return Ok(Response::new(chunks(
                blob.body.into_reader(),
                blob.body_len,
                name.to_string(),
                buffers,
            )));
        }
        // The store hands out zstd only when asked; decode if it did anyway.
        Encoding::Zstd => Box::pin(
            zstd_decode::decoder(blob.body.into_reader(), &state.memory)
                .await
                .map_err(memory_error)?,
        ),
        Encoding::Identity => blob.body.into_reader(),
    };
    if offset > 0 {
        // The store's bodies don't seek: read past the first `offset` bytes.
        let mut skip = BufReader::with_capacity(buffers.chunk, (&mut body).take(offset));
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
            chunks(
                Box::pin(body.take(want)),
                Some(want),
                name.to_string(),
                buffers,
            )
        }
        Encoding::Zstd => {
            reserve_encoder(&state.memory, &mut buffers)
                .await
                .map_err(memory_error)?;
            let input = BufReader::with_capacity(buffers.chunk, body.take(size - offset));
            let enc = ZstdEncoder::with_quality(input, Level::Precise(ZSTD_LEVEL));
            chunks(Box::pin(enc), None, name.to_string(), buffers)
        }
    };
    Ok(Response::new(stream))
}

fn read_error(name: &str, e: &io::Error) -> Status {
    // A later frame's decoder refused memory: retryable, not a fault.
    if let Some(m) = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<MemoryExhausted>())
    {
        return Status::resource_exhausted(format!("{}: {m}", quote(name)));
    }
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

/// An on-the-fly compressed read also holds a zstd encoder (and the input
/// buffer in front of it, one more chunk).
async fn reserve_encoder(
    memory: &std::sync::Arc<MemoryBudget>,
    buffers: &mut ReadBuffers,
) -> Result<(), MemoryExhausted> {
    let total = (READ_CHUNKS_HELD + 1) * buffers.chunk as u64 + ZSTD_ENCODER_BYTES;
    memory
        .grow(&mut buffers.reservation, MemoryUse::ReadBuffer, total)
        .await
}

/// Streams a stored file as framed ReadResponses (read_frames.rs) of up
/// to `buffers.chunk` bytes, each read into the message's own buffer,
/// holding `buffers` until the stream is dropped.
fn file_chunks(file: BlobFile, name: String, buffers: ReadBuffers) -> ReadStream {
    let ReadBuffers { chunk, reservation } = buffers;
    let stream = file.into_chunks_after(chunk, ROOM).map(move |read| {
        let _held = &reservation;
        read.map(frame).map_err(|e| read_error(&name, &e))
    });
    Box::pin(stream)
}

/// Streams `reader` as framed ReadResponses of up to `buffers.chunk`
/// bytes, holding `buffers` until the stream is dropped. With `expected`,
/// a body ending early is an error, not a short blob.
fn chunks(
    reader: BlobReader,
    expected: Option<u64>,
    name: String,
    buffers: ReadBuffers,
) -> ReadStream {
    let ReadBuffers { chunk, reservation } = buffers;
    let state = Some((reader, expected, name));
    let stream = futures_util::stream::unfold(state, move |state| async move {
        let (mut reader, mut expected, name) = state?;
        let mut data = Vec::with_capacity(ROOM + chunk);
        data.resize(ROOM, 0);
        let mut eof = false;
        while data.len() < ROOM + chunk {
            match reader.read_buf(&mut data).await {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => return Some((Err(read_error(&name, &e)), None)),
            }
        }
        let read = (data.len() - ROOM) as u64;
        if let Some(left) = expected.as_mut() {
            *left = left.saturating_sub(read);
            if eof && *left > 0 {
                return Some((Err(truncated(&name, *left)), None));
            }
        }
        if read == 0 {
            return None;
        }
        let next = (!eof).then_some((reader, expected, name));
        Some((Ok(frame(data)), next))
    });
    Box::pin(futures_util::StreamExt::map(stream, move |item| {
        let _held = &reservation;
        item
    }))
}
