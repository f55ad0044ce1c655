//! The blocking half of a write: where its bytes go ([`FileSink`]) and the
//! temp file they go to ([`TempFile`]), which removes itself unless handed
//! to the index writer.
//!
//! A write hands whole chunks here, one blocking task per chunk (a 4 KiB
//! blob: one task for create, hash, compress, write and close). Before,
//! the file was a `tokio::fs::File` behind an async zstd encoder with an
//! 8 KiB buffer: every 8 KiB of output was a hand-off to the blocking pool
//! and back, and those wake-ups cost more CPU than the compression.
//!
//! zstd storage compresses each chunk as its own frame with a context
//! reused per thread (zstd readers, ours and bazel-remote's casblob
//! decoder alike, read concatenated frames), and only when the blob's first
//! chunk shrinks: most large build outputs are already compressed
//! archives, and compressing them again cost CPU on every PUT, stored
//! nothing smaller, and made every plain GET decompress.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use super::ZSTD_LEVEL;
use crate::Encoding;

/// A chunk that does not compress to at most this fraction (in 1/16ths) of
/// its size decides that its blob is stored uncompressed: zstd's frame and
/// block headers alone cost a few bytes, so incompressible data "shrinks"
/// by nothing, and a 7 % saving is not worth decompressing on every read.
const WORTH_COMPRESSING_16THS: usize = 15;

thread_local! {
    /// One compression context per blocking thread, reused by every write
    /// that runs there: creating one costs more than compressing a small
    /// blob. The blocking pool's threads are bounded by the writes working
    /// at once (write slots), and an idle thread exits after 10 s.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
}

/// Compresses `chunk` into `out` (cleared first) as one zstd frame.
fn compress_frame(chunk: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    out.reserve(zstd::zstd_safe::compress_bound(chunk.len()));
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
            c.include_checksum(false)?;
            c.include_contentsize(true)?;
            *cell = Some(c);
        }
        let c = cell.as_mut().expect("just set");
        c.compress_to_buffer(chunk, out).map(|_| ())
    })
}

/// How the blob's bytes are being stored.
enum Mode {
    /// zstd storage was asked for and nothing is written yet: the first
    /// chunk decides.
    Undecided,
    Plain,
    Zstd,
    /// An identical CAS blob is already stored: hash and count only.
    Discard,
}

/// Where a write's bytes go, used from blocking tasks only.
pub(super) struct FileSink {
    /// `None` for [`Mode::Discard`].
    file: Option<(File, TempFile)>,
    mode: Mode,
    /// Bytes written to the file.
    stored: u64,
    /// Compressed output, reused across chunks.
    frame: Vec<u8>,
}

impl FileSink {
    /// Creates the temp file at `tmp` (its guard removes it if the write
    /// goes no further). `encoding` is what the store would like: zstd
    /// storage may still end up plain (see [`WORTH_COMPRESSING_16THS`]).
    pub(super) fn create(tmp: PathBuf, encoding: Encoding) -> io::Result<Self> {
        let guard = TempFile {
            path: tmp,
            armed: true,
        };
        let file = File::create(&guard.path)?;
        Ok(FileSink {
            file: Some((file, guard)),
            mode: match encoding {
                Encoding::Identity => Mode::Plain,
                Encoding::Zstd => Mode::Undecided,
            },
            stored: 0,
            frame: Vec::new(),
        })
    }

    /// A sink that writes nothing (the blob is already stored).
    pub(super) fn discard() -> Self {
        FileSink {
            file: None,
            mode: Mode::Discard,
            stored: 0,
            frame: Vec::new(),
        }
    }

    pub(super) fn writes_file(&self) -> bool {
        self.file.is_some()
    }

    /// Stores one chunk of the blob's logical bytes.
    pub(super) fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let Some((file, _)) = self.file.as_mut() else {
            return Ok(());
        };
        if matches!(self.mode, Mode::Undecided | Mode::Zstd) {
            compress_frame(chunk, &mut self.frame)?;
            if matches!(self.mode, Mode::Undecided) {
                self.mode = if self.frame.len() * 16 <= chunk.len() * WORTH_COMPRESSING_16THS {
                    Mode::Zstd
                } else {
                    Mode::Plain
                };
            }
        }
        let bytes = match self.mode {
            Mode::Zstd => &self.frame[..],
            _ => chunk,
        };
        file.write_all(bytes)?;
        self.stored += bytes.len() as u64;
        Ok(())
    }

    /// Closes the file and returns its guard, the bytes it holds and how
    /// they are encoded. `None` for a discarding sink. (No fsync here: the
    /// index writer makes every blob of a batch durable at once.)
    pub(super) fn finish(mut self) -> io::Result<Option<(TempFile, u64, Encoding)>> {
        let encoding = match self.mode {
            Mode::Zstd => Encoding::Zstd,
            _ => Encoding::Identity,
        };
        let Some((file, guard)) = self.file.take() else {
            return Ok(None);
        };
        drop(file);
        Ok(Some((guard, self.stored, encoding)))
    }
}

/// A write's temp file, removed on drop unless handed to the writer. A put
/// whose future is dropped mid-body (client gone, request timeout) runs no
/// error path; without this its file stayed in tmp/, unaccounted, until the
/// next start. It lives inside the [`FileSink`], so a blocking task that
/// finishes after its put was dropped removes the file as it drops its
/// output.
pub(super) struct TempFile {
    pub(super) path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// The writer owns the file now (it renames it, or removes it on failure).
    pub(super) fn hand_over(mut self) -> PathBuf {
        self.armed = false;
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(chunks: &[&[u8]]) -> (Vec<u8>, Encoding) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let mut sink = FileSink::create(path, Encoding::Zstd).unwrap();
        for c in chunks {
            sink.write(c).unwrap();
        }
        let (guard, len, enc) = sink.finish().unwrap().unwrap();
        let bytes = std::fs::read(&guard.path).unwrap();
        assert_eq!(bytes.len() as u64, len);
        (bytes, enc)
    }

    #[test]
    fn compressible_blobs_are_stored_as_concatenated_frames() {
        let text = b"fn main() { println!(\"hello\"); }\n".repeat(4000);
        let (a, b) = text.split_at(text.len() / 2);
        let (bytes, enc) = stored(&[a, b]);
        assert_eq!(enc, Encoding::Zstd);
        assert!(bytes.len() < text.len() / 4);
        // Any zstd reader reads the frames back as one stream.
        assert_eq!(zstd::stream::decode_all(&bytes[..]).unwrap(), text);
    }

    #[test]
    fn a_first_chunk_that_does_not_shrink_keeps_the_blob_plain() {
        let mut noise = vec![0u8; 64 * 1024];
        let mut x = 0x9e3779b97f4a7c15u64;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let (bytes, enc) = stored(&[&noise, &[b'a'; 4096]]);
        assert_eq!(enc, Encoding::Identity);
        assert_eq!(&bytes[..noise.len()], &noise[..]);
        assert_eq!(bytes.len(), noise.len() + 4096);
    }

    #[test]
    fn a_dropped_sink_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let mut sink = FileSink::create(path.clone(), Encoding::Identity).unwrap();
        sink.write(b"partial").unwrap();
        assert!(path.exists());
        drop(sink);
        assert!(!path.exists());
    }
}
