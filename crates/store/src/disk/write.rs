//! The write path: limits and a reservation first, then the body copied
//! into a temp file one buffer at a time (a write slot held only while a
//! blocking task hashes, encodes and writes a full buffer), checked
//! against its digest, and handed to the index writer, which makes it
//! durable with its batch (group commit) before acknowledging it.

use std::io;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use super::DiskStore;
use super::index::{Insert, Op, Origin};
use super::sink::{FileSink, TempFile};
use crate::budget::{MemoryUse, ZSTD_ENCODER_BYTES};
use crate::proxy::Written;
use crate::zstd_decode;
use crate::{Encoding, PutBody, PutRequest, StoreError};
use bazel_cache_digest::{Hasher, Kind};

/// Largest chunk a write copies at a time. Big enough that a 1 MiB blob costs
/// four file writes, small enough that 64 concurrent uploads stay in 16 MiB.
pub(super) const CHUNK: usize = 256 * 1024;
impl DiskStore {
    /// [`Store::put`], telling whether bytes were written or an identical
    /// CAS blob was already there (a proxy then has nothing new to upload).
    pub async fn put_blob(&self, req: PutRequest) -> Result<Written, StoreError> {
        if let Some(size) = req.size {
            if size > self.cfg.max_blob_size {
                return Err(StoreError::TooLarge {
                    size,
                    limit: self.cfg.max_blob_size,
                });
            }
            if size > self.cfg.max_size_bytes {
                return Err(StoreError::InsufficientStorage {
                    size,
                    capacity: self.cfg.max_size_bytes,
                });
            }
        }
        let key = req.key;
        if key.kind == Kind::Cas && self.reader.get(&key)?.is_some() {
            // Already stored (clients re-upload what others built): verify the
            // bytes, so a bad upload still gets its error, but write nothing.
            self.write_temp(None, req).await?;
            if let Some(entry) = self.reader.get(&key)? {
                self.note_use(&key, &entry);
            }
            return Ok(Written::AlreadyPresent);
        }
        // Unknown sizes (a compressed HTTP body) reserve once written.
        let mut reservation = match req.size {
            Some(size) => Some(self.reserve(size)?),
            None => None,
        };
        let received = self.write_temp(Some(self.layout.tmp_path()), req).await?;
        let Some((tmp, stored, encoding)) = received.file else {
            return Err(StoreError::Io(io::Error::other("write produced no file")));
        };
        if reservation.is_none() {
            reservation = Some(self.reserve(stored)?);
        }
        let (done, wait) = oneshot::channel();
        let insert = Insert {
            key,
            from: tmp.path.clone(),
            size: received.size,
            stored,
            encoding,
            origin: Origin::Write,
            // The writer releases it when it counts the blob as stored.
            reservation,
        };
        if self.tx.send(Op::Insert(insert, done)).await.is_err() {
            return Err(StoreError::Closed);
        }
        tmp.hand_over();
        // The writer answers once the blob is durable (group commit).
        wait.await.map_err(|_| StoreError::Closed)??;
        Ok(Written::Stored)
    }

    /// Copies the body into a temp file at `tmp` (`None`: an identical CAS
    /// blob is stored, only verify): decode, hash, count, check limits,
    /// encode for storage.
    ///
    /// Received bytes collect with no write slot held (chunks as they
    /// came, or read into a buffer); a slot is taken while one blocking
    /// task hashes, encodes and writes each [`CHUNK`] of them (the first
    /// also creates the file, the last also closes it), then given back.
    /// One hand-off per chunk, none per network frame.
    async fn write_temp(
        &self,
        tmp: Option<PathBuf>,
        req: PutRequest,
    ) -> Result<Received, StoreError> {
        let PutRequest {
            key,
            size,
            encoding,
            body,
        } = req;
        let mut input = match (encoding, self.guard_body(body)) {
            (Encoding::Identity, body) => body,
            (Encoding::Zstd, body) => {
                PutBody::reader(zstd_decode::decoder(body.into_reader(), &self.cfg.memory).await?)
            }
        };
        let wanted = match key.kind {
            Kind::Cas => self.cfg.cas_encoding,
            Kind::Ac => Encoding::Identity,
        };

        let limit = size.unwrap_or(u64::MAX).min(self.cfg.max_blob_size);
        let cap = size.map_or(CHUNK, |s| (s as usize).saturating_add(1).clamp(1, CHUNK));
        // The receive buffer (chunks: the small ones copied, and the chunk
        // that crosses the hand-off size) and the storage encoder, from the
        // memory budget.
        let held = match input {
            PutBody::Reader(_) => cap,
            PutBody::Chunks(_) => cap + COPY_BELOW,
        };
        let encoder = if tmp.is_some() && wanted == Encoding::Zstd {
            ZSTD_ENCODER_BYTES
        } else {
            0
        };
        let _buffers = (self.cfg.memory)
            .reserve(MemoryUse::UploadBuffer, held as u64 + encoder)
            .await?;
        let mut work = Work {
            hasher: Hasher::new(key.hash.function()),
            sink: None,
            create: tmp.map(|path| (path, wanted)),
            parts: Vec::new(),
            buf: match input {
                PutBody::Reader(_) => Vec::with_capacity(cap),
                PutBody::Chunks(_) => Vec::new(),
            },
            finished: None,
        };
        let mut seen = 0u64;
        loop {
            // No slot is held here: this is the wait on the client.
            let n = match &mut input {
                // The buffer has room (it is handed off when full), so 0
                // is the end.
                PutBody::Reader(r) => r.read_buf(&mut work.buf).await,
                PutBody::Chunks(s) => match s.next().await {
                    Some(Ok(chunk)) if chunk.is_empty() => continue,
                    Some(Ok(chunk)) => Ok(work.take(chunk)),
                    Some(Err(e)) => Err(e),
                    None => Ok(0),
                },
            }
            .map_err(StoreError::body)?;
            if n == 0 {
                break;
            }
            seen += n as u64;
            if seen > limit {
                return Err(match size {
                    Some(expected) if seen > expected && expected <= self.cfg.max_blob_size => {
                        StoreError::SizeMismatch {
                            expected,
                            actual: seen,
                        }
                    }
                    _ => StoreError::TooLarge {
                        size: seen,
                        limit: self.cfg.max_blob_size,
                    },
                });
            }
            if seen > self.cfg.max_size_bytes {
                return Err(StoreError::InsufficientStorage {
                    size: seen,
                    capacity: self.cfg.max_size_bytes,
                });
            }
            if work.pending() >= cap {
                let _slot = self.write_slot().await?;
                work = work.run(false).await?;
            }
        }
        // The last chunk, closing the file, then the size and digest checks.
        let _slot = self.write_slot().await?;
        let work = work.run(true).await?;
        let logical = work.hasher.len();
        if let Some(expected) = size
            && expected != logical
        {
            return Err(StoreError::SizeMismatch {
                expected,
                actual: logical,
            });
        }
        let actual = work.hasher.finish();
        if key.kind == Kind::Cas && actual != key.hash {
            return Err(StoreError::DigestMismatch {
                expected: key.hash,
                actual,
            });
        }
        Ok(Received {
            size: logical,
            file: work.finished,
        })
    }
}

/// What [`DiskStore::write_temp`] received: the blob's logical size and,
/// unless it only verified, its temp file, stored size and encoding.
struct Received {
    size: u64,
    file: Option<(TempFile, u64, Encoding)>,
}

/// A write's state that its blocking tasks work on: moved into each task
/// and back, so no lock is shared and a dropped put drops it (and its temp
/// file) wherever it is.
pub(super) struct Work {
    hasher: Hasher,
    sink: Option<FileSink>,
    /// The temp file to create in the first task, and the encoding wanted.
    create: Option<(PathBuf, Encoding)>,
    /// Received chunks not yet stored, in order; then `buf`'s bytes.
    pub(super) parts: Vec<Bytes>,
    /// Bytes read from a reader, or small chunks copied (see
    /// [`COPY_BELOW`]); they follow `parts`.
    pub(super) buf: Vec<u8>,
    /// Set by the last task: the closed temp file, its size and encoding.
    finished: Option<(TempFile, u64, Encoding)>,
}

/// Hashing a chunk this small costs less than handing it to a thread, when
/// there is no file to write.
const INLINE_HASH: usize = 64 * 1024;

/// Chunks smaller than this are copied rather than kept: a chunk shares
/// the allocation the transport read it into, so a client sending a byte
/// at a time would otherwise pin a read buffer per byte. Kept chunks are
/// at least half of the transport's largest read (64 KiB for HTTP/1), so
/// what they pin is at most about twice what they hold.
const COPY_BELOW: usize = 32 * 1024;

impl Work {
    /// A write that only verifies, with nothing received yet.
    #[cfg(test)]
    pub(super) fn for_test() -> Work {
        Work {
            hasher: Hasher::new(bazel_cache_digest::DigestFunction::Sha256),
            sink: None,
            create: None,
            parts: Vec::new(),
            buf: Vec::new(),
            finished: None,
        }
    }

    /// Bytes received and not yet stored.
    pub(super) fn pending(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum::<usize>() + self.buf.len()
    }

    /// Queues a received chunk; returns its length.
    pub(super) fn take(&mut self, chunk: Bytes) -> usize {
        let n = chunk.len();
        if n < COPY_BELOW {
            self.buf.extend_from_slice(&chunk);
        } else {
            if !self.buf.is_empty() {
                // Copied bytes come first: they become a part of their own.
                self.parts.push(Bytes::from(std::mem::take(&mut self.buf)));
            }
            self.parts.push(chunk);
        }
        n
    }

    /// Hashes and stores what is pending; `last` also closes the file.
    ///
    /// In groups of at most [`CHUNK`] bytes, each hashed and then written
    /// while it is still in the CPU's cache. Pending data can be one
    /// MiB-sized piece (a ByteStream message); hashing all of it and then
    /// writing all of it read it from memory twice, and cost a 1 MiB
    /// ByteStream Write about 10 % more CPU than the same bytes as an HTTP
    /// body, which arrive in small pieces. Files and zstd frames come out
    /// the same size as an HTTP upload's.
    fn step(&mut self, last: bool) -> io::Result<()> {
        if let Some((path, encoding)) = self.create.take() {
            self.sink = Some(FileSink::create(path, encoding)?);
        }
        let (hasher, sink) = (&mut self.hasher, &mut self.sink);
        let mut store = |group: &[&[u8]]| -> io::Result<()> {
            for p in group {
                hasher.update(p);
            }
            match sink.as_mut() {
                Some(sink) => sink.write_parts(group),
                None => Ok(()),
            }
        };
        let mut group: Vec<&[u8]> = Vec::new();
        let mut group_len = 0;
        let pieces = self.parts.iter().map(|p| &p[..]).chain([&self.buf[..]]);
        for piece in pieces.flat_map(|p| p.chunks(CHUNK)) {
            if group_len + piece.len() > CHUNK {
                store(&group)?;
                group.clear();
                group_len = 0;
            }
            group.push(piece);
            group_len += piece.len();
        }
        store(&group)?;
        self.parts.clear();
        self.buf.clear();
        if last {
            let sink = self.sink.take().unwrap_or_else(FileSink::discard);
            self.finished = sink.finish()?;
        }
        Ok(())
    }

    /// [`Work::step`] on a blocking thread, or inline when it only hashes
    /// a little.
    async fn run(mut self, last: bool) -> Result<Work, StoreError> {
        let writes = self.create.is_some() || self.sink.as_ref().is_some_and(FileSink::writes_file);
        if !writes && self.pending() <= INLINE_HASH {
            self.step(last)?;
            return Ok(self);
        }
        tokio::task::spawn_blocking(move || self.step(last).map(|()| self))
            .await
            .map_err(|e| StoreError::Io(io::Error::other(format!("write task failed: {e}"))))?
            .map_err(StoreError::from)
    }
}
