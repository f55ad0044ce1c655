//! The read path: a lookup, then one blocking call that opens the blob's
//! file and, when it is small, reads (and decompresses) it whole; larger
//! files go to the front end open, to send in chunks read straight into
//! the buffers sent (`BlobFile`), or through a streaming decoder.

use std::io;

use tokio::fs::File;

use super::DiskStore;
use super::index::Entry;
use crate::{Blob, BlobBody, BlobFile, Encoding, StoreError};
use crate::{nowait, zstd_decode};
use bazel_cache_digest::BlobKey;

/// Blobs up to this size (stored and, for a plain read of a zstd-stored
/// blob, logical) are read whole in one blocking call and handed to the
/// front end as bytes it sends as they are; larger ones stream.
const WHOLE_READ: u64 = 256 * 1024;

/// Blobs up to this size (stored and logical) are opened and read on the
/// async worker when the kernel's caches hold them (nowait.rs): at most
/// tens of microseconds of copying and decompressing, well under what
/// handing the read to a blocking thread and back costs.
const INLINE_READ: u64 = 64 * 1024;

/// A blob file opened for a read, on a blocking thread.
enum Opened {
    /// Small enough to read whole in the same hand-off (decompressed when
    /// the reader wants plain bytes of a zstd-stored blob).
    Whole(Vec<u8>),
    /// To stream, with its length on disk.
    File(std::fs::File, u64),
}

/// Opens a blob's file and, when it is small, reads it whole: one hand-off
/// to a blocking thread per read, where `tokio::fs` made three (open,
/// stat, read) and a context switch each, most of a 4 KiB GET's CPU.
/// `None` when the file is gone.
fn open_for_read(
    path: &std::path::Path,
    entry: &Entry,
    decompress: bool,
) -> Result<Option<Opened>, StoreError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    read_opened(file, entry, decompress).map(Some)
}

/// The rest of [`open_for_read`], on an open file.
fn read_opened(file: std::fs::File, entry: &Entry, decompress: bool) -> Result<Opened, StoreError> {
    let on_disk = file.metadata()?.len();
    if too_big_to_read_whole(on_disk, entry, decompress) {
        return Ok(Opened::File(file, on_disk));
    }
    // Exactly the length just stat'ed: a blob file never changes once in
    // place (replacements are renames), and a plain `read_to_end` would
    // stat and seek again and read once more to find the end.
    let mut bytes = crate::file_chunks::read_exactly(&file, on_disk)?;
    if decompress {
        bytes = decompress_whole(&bytes, entry.size)?;
    }
    Ok(Opened::Whole(bytes))
}

fn too_big_to_read_whole(on_disk: u64, entry: &Entry, decompress: bool) -> bool {
    on_disk > WHOLE_READ || (decompress && entry.size > WHOLE_READ)
}

/// What a read on the async worker itself came to (nowait.rs).
enum Quick {
    Done(Option<Opened>),
    /// The caches could not answer: finish on a blocking thread, with the
    /// file when it is already open.
    Blocked(Option<std::fs::File>),
}

/// [`open_for_read`] without blocking, for files up to [`INLINE_READ`]:
/// whatever the page and dentry caches cannot answer is left to a
/// blocking thread. Larger files go there at once: their read (and
/// decompression) would hold the worker too long even from the cache.
fn open_quickly(
    path: &std::path::Path,
    entry: &Entry,
    decompress: bool,
) -> Result<Quick, StoreError> {
    if entry.stored > INLINE_READ || (decompress && entry.size > INLINE_READ) {
        return Ok(Quick::Blocked(None));
    }
    let file = match nowait::open(path) {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(Quick::Blocked(None)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Quick::Done(None)),
        Err(e) => return Err(e.into()),
    };
    let on_disk = file.metadata()?.len();
    if too_big_to_read_whole(on_disk, entry, decompress) {
        // Replaced by a larger AC entry since the lookup: it streams.
        return Ok(Quick::Done(Some(Opened::File(file, on_disk))));
    }
    if on_disk > INLINE_READ {
        return Ok(Quick::Blocked(Some(file)));
    }
    let Some(mut bytes) = nowait::read(&file, on_disk)? else {
        return Ok(Quick::Blocked(Some(file)));
    };
    if decompress {
        bytes = decompress_whole(&bytes, entry.size)?;
    }
    Ok(Quick::Done(Some(Opened::Whole(bytes))))
}

/// Decompresses a small zstd-stored blob in one call with a context
/// reused per thread (building a streaming decoder cost more than the
/// decompression), checking it has the size the index records.
fn decompress_whole(frames: &[u8], size: u64) -> Result<Vec<u8>, StoreError> {
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let data = DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new()?);
        }
        let decompressor = cell.as_mut().expect("just set");
        // One byte more than expected, so a longer blob is detected.
        decompressor.decompress(frames, size as usize + 1)
    })?;
    if data.len() as u64 != size {
        return Err(StoreError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "stored blob decompresses to {} bytes, the index says {size}",
                data.len()
            ),
        )));
    }
    Ok(data)
}

impl DiskStore {
    /// [`Store::get`](crate::Store::get).
    pub(super) async fn read(
        &self,
        key: &BlobKey,
        accept_zstd: bool,
    ) -> Result<Option<Blob>, StoreError> {
        let Some(entry) = self.reader.get(key)? else {
            return Ok(None);
        };
        let path = self.layout.blob_path(key, entry.encoding);
        let decompress = entry.encoding == Encoding::Zstd && !accept_zstd;
        let opened = match open_quickly(&path, &entry, decompress)? {
            Quick::Done(opened) => opened,
            Quick::Blocked(file) => tokio::task::spawn_blocking(move || match file {
                Some(file) => read_opened(file, &entry, decompress).map(Some),
                None => open_for_read(&path, &entry, decompress),
            })
            .await
            .map_err(|e| StoreError::Io(io::Error::other(format!("read task failed: {e}"))))??,
        };
        let Some(opened) = opened else {
            // Evicted or replaced between the lookup and the open, or lost:
            // the writer drops the entry if the file is really gone.
            self.forget(key);
            return Ok(None);
        };
        self.note_use(key, &entry);
        Ok(Some(match opened {
            Opened::Whole(bytes) => Blob {
                size: if decompress || entry.encoding == Encoding::Identity {
                    bytes.len() as u64
                } else {
                    entry.size
                },
                encoding: if decompress {
                    Encoding::Identity
                } else {
                    entry.encoding
                },
                body_len: Some(bytes.len() as u64),
                body: BlobBody::Bytes(bytes.into()),
            },
            // The open file's length, not the index's: an AC entry may have
            // been replaced by a different-sized one since the lookup.
            Opened::File(file, on_disk) if entry.encoding == Encoding::Identity => Blob {
                size: on_disk,
                encoding: Encoding::Identity,
                body_len: Some(on_disk),
                body: BlobBody::File(BlobFile { file, len: on_disk }),
            },
            Opened::File(file, on_disk) if !decompress => Blob {
                size: entry.size,
                encoding: Encoding::Zstd,
                body_len: Some(on_disk),
                body: BlobBody::File(BlobFile { file, len: on_disk }),
            },
            Opened::File(file, _) => {
                let mut dec = zstd_decode::decoder(File::from_std(file), &self.cfg.memory).await?;
                // A full budget is refused here, before the caller answers.
                zstd_decode::reserve_first_frame(&mut dec).await?;
                Blob {
                    size: entry.size,
                    encoding: Encoding::Identity,
                    body_len: Some(entry.size),
                    body: BlobBody::Stream(Box::pin(dec)),
                }
            }
        }))
    }
}
