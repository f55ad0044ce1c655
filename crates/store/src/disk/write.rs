//! The write path: limits and a reservation first, then the body copied
//! into a temp file one buffer at a time (a write slot held only while a
//! blocking task hashes, encodes and writes a full buffer), checked
//! against its digest, and handed to the index writer, which makes it
//! durable with its batch (group commit) before acknowledging it.

use std::io;
use std::path::PathBuf;

use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use super::DiskStore;
use super::index::{Insert, Op};
use super::sink::{FileSink, TempFile};
use crate::budget::{MemoryUse, ZSTD_ENCODER_BYTES};
use crate::proxy::Written;
use crate::zstd_decode;
use crate::{BlobReader, Encoding, PutRequest, StoreError};
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
            adopt: false,
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
    /// Received bytes collect in a buffer with no write slot held; a slot
    /// is taken while one blocking task hashes, encodes and writes each full
    /// buffer (the first also creates the file, the last also closes it),
    /// then given back. One hand-off per buffer, none per network frame.
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
        let body = self.guard_upload(body);
        let mut input: BlobReader = match encoding {
            Encoding::Identity => body,
            Encoding::Zstd => Box::pin(zstd_decode::decoder(body, &self.cfg.memory).await?),
        };
        let wanted = match key.kind {
            Kind::Cas => self.cfg.cas_encoding,
            Kind::Ac => Encoding::Identity,
        };

        let limit = size.unwrap_or(u64::MAX).min(self.cfg.max_blob_size);
        let cap = size.map_or(CHUNK, |s| (s as usize).saturating_add(1).clamp(1, CHUNK));
        // The receive buffer and the storage encoder, from the memory budget.
        let encoder = if tmp.is_some() && wanted == Encoding::Zstd {
            ZSTD_ENCODER_BYTES
        } else {
            0
        };
        let _buffers = (self.cfg.memory)
            .reserve(MemoryUse::UploadBuffer, cap as u64 + encoder)
            .await?;
        let mut work = Work {
            hasher: Hasher::new(),
            sink: None,
            create: tmp.map(|path| (path, wanted)),
            buf: vec![0u8; cap],
            finished: None,
        };
        let mut filled = 0;
        let mut seen = 0u64;
        loop {
            // No slot is held here: this is the wait on the client.
            let n = input
                .read(&mut work.buf[filled..])
                .await
                .map_err(StoreError::body)?;
            if n == 0 {
                break;
            }
            filled += n;
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
            if filled == work.buf.len() {
                let _slot = self.write_slot().await?;
                work = work.run(filled, false).await?;
                filled = 0;
            }
        }
        // The last chunk, closing the file, then the size and digest checks.
        let _slot = self.write_slot().await?;
        let work = work.run(filled, true).await?;
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
struct Work {
    hasher: Hasher,
    sink: Option<FileSink>,
    /// The temp file to create in the first task, and the encoding wanted.
    create: Option<(PathBuf, Encoding)>,
    buf: Vec<u8>,
    /// Set by the last task: the closed temp file, its size and encoding.
    finished: Option<(TempFile, u64, Encoding)>,
}

/// Hashing a chunk this small costs less than handing it to a thread, when
/// there is no file to write.
const INLINE_HASH: usize = 64 * 1024;

impl Work {
    /// Hashes and stores `buf[..len]`; `last` also closes the file.
    fn step(&mut self, len: usize, last: bool) -> io::Result<()> {
        if let Some((path, encoding)) = self.create.take() {
            self.sink = Some(FileSink::create(path, encoding)?);
        }
        let chunk = &self.buf[..len];
        self.hasher.update(chunk);
        if let Some(sink) = self.sink.as_mut() {
            sink.write(chunk)?;
        }
        if last {
            let sink = self.sink.take().unwrap_or_else(FileSink::discard);
            self.finished = sink.finish()?;
        }
        Ok(())
    }

    /// [`Work::step`] on a blocking thread, or inline when it only hashes
    /// a small chunk.
    async fn run(mut self, len: usize, last: bool) -> Result<Work, StoreError> {
        let writes = self.create.is_some() || self.sink.as_ref().is_some_and(FileSink::writes_file);
        if !writes && len <= INLINE_HASH {
            self.step(len, last)?;
            return Ok(self);
        }
        tokio::task::spawn_blocking(move || self.step(len, last).map(|()| self))
            .await
            .map_err(|e| StoreError::Io(io::Error::other(format!("write task failed: {e}"))))?
            .map_err(StoreError::from)
    }
}
