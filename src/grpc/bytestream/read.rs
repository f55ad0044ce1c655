//! ByteStream Read: a blob streamed from the store in chunks of
//! [`READ_CHUNK`] bytes, so no blob is ever held in memory whole. A
//! `compressed-blobs/zstd` read from offset 0 of a blob stored compressed
//! sends the stored bytes as they are; any other compressed read compresses
//! on the fly (zstd level [`ZSTD_LEVEL`]) after skipping `read_offset`
//! uncompressed bytes.

use std::io;

use async_compression::Level;
use async_compression::tokio::bufread::{ZstdDecoder, ZstdEncoder};
use bazel_remote_apis::google::bytestream::{ReadRequest, ReadResponse};
use tokio::io::{AsyncReadExt, BufReader};
use tonic::{Request, Response, Status};

use super::super::resource::{self, quote};
use super::super::{GrpcState, store_status};
use super::{ReadStream, named};
use bazel_cache_digest::BlobKey;
use bazel_cache_store::{BlobReader, Encoding};

/// Bytes per ReadResponse (the last one may be shorter).
const READ_CHUNK: usize = 256 * 1024;
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
