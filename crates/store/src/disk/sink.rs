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
//! zstd storage compresses each chunk as its own frame with a pooled
//! context (zstd readers, ours and bazel-remote's casblob decoder alike,
//! read concatenated frames), and only when the start of the blob's
//! first chunk shrinks: most large build outputs are already compressed
//! archives, and compressing them again cost CPU on every PUT, stored
//! nothing smaller, and made every plain GET decompress.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use super::ZSTD_LEVEL;
use crate::Encoding;
use bazel_cache_digest::lock;

/// A chunk that does not compress to at most this fraction (in 1/16ths) of
/// its size decides that its blob is stored uncompressed: zstd's frame and
/// block headers alone cost a few bytes, so incompressible data "shrinks"
/// by nothing, and a 7 % saving is not worth decompressing on every read.
const WORTH_COMPRESSING_16THS: usize = 15;

/// How much of a blob's first chunk is compressed to decide whether the
/// blob is stored compressed.
const SAMPLE: usize = 32 * 1024;

/// Compression contexts not in use: a write takes one for the length of
/// one `compress` call and puts it back. Creating a context costs more
/// than compressing a small blob, so they are reused; they were kept per
/// blocking thread before, but tokio runs far more blocking threads than
/// compress at once (16 concurrent 1 MiB PUTs: 35 threads), and each
/// context that had compressed a 256 KiB chunk held 570 KiB until its
/// thread exited: 20 MiB of a 95 MiB peak. Contexts in use are bounded by
/// the threads compressing at that moment, which the cores bound.
static COMPRESSORS: Mutex<Vec<zstd::bulk::Compressor<'static>>> = Mutex::new(Vec::new());

/// Idle contexts kept for reuse: twice the cores. Beyond that a context is
/// freed when put back: more threads compressing at once would only
/// time-share the cores.
fn idle_compressors() -> usize {
    static IDLE: OnceLock<usize> = OnceLock::new();
    *IDLE.get_or_init(|| std::thread::available_parallelism().map_or(4, |n| 2 * n.get()))
}

/// Compresses `chunk` into `out` (cleared first) as one zstd frame.
fn compress_frame(chunk: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    out.reserve(zstd::zstd_safe::compress_bound(chunk.len()));
    let taken = lock(&COMPRESSORS).pop();
    let mut c = match taken {
        Some(c) => c,
        None => {
            let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
            c.include_checksum(false)?;
            c.include_contentsize(true)?;
            c
        }
    };
    let result = c.compress_to_buffer(chunk, out).map(|_| ());
    let mut idle = lock(&COMPRESSORS);
    if idle.len() < idle_compressors() {
        idle.push(c);
    }
    result
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
    /// Parts of a chunk joined for the compressor, reused across chunks.
    joined: Vec<u8>,
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
            joined: Vec::new(),
        })
    }

    /// A sink that writes nothing (the blob is already stored).
    pub(super) fn discard() -> Self {
        FileSink {
            file: None,
            mode: Mode::Discard,
            stored: 0,
            frame: Vec::new(),
            joined: Vec::new(),
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
        if matches!(self.mode, Mode::Undecided) {
            // Judged on a sample: compressing all of a first chunk that
            // does not shrink cost 3 % of a 1 MiB PUT's CPU for nothing.
            let sample = &chunk[..chunk.len().min(SAMPLE)];
            compress_frame(sample, &mut self.frame)?;
            self.mode = if self.frame.len() * 16 <= sample.len() * WORTH_COMPRESSING_16THS {
                Mode::Zstd
            } else {
                Mode::Plain
            };
        }
        if matches!(self.mode, Mode::Zstd) {
            compress_frame(chunk, &mut self.frame)?;
        }
        if matches!(self.mode, Mode::Plain) && self.frame.capacity() > 0 {
            // Stored as received from now on: the rest of a large upload
            // need not hold a chunk-sized buffer it no longer uses.
            self.frame = Vec::new();
            self.joined = Vec::new();
        }
        let bytes = match self.mode {
            Mode::Zstd => &self.frame[..],
            _ => chunk,
        };
        file.write_all(bytes)?;
        self.stored += bytes.len() as u64;
        Ok(())
    }

    /// Stores `parts`, in order, as if they were one chunk: plain storage
    /// writes them with one `pwritev` where they are; compressed storage
    /// joins them first (one frame per chunk, as [`FileSink::write`]).
    pub(super) fn write_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        match parts {
            [] => return Ok(()),
            [one] => return self.write(one),
            _ => {}
        }
        if matches!(self.mode, Mode::Undecided | Mode::Zstd) {
            let mut joined = std::mem::take(&mut self.joined);
            joined.clear();
            for p in parts {
                joined.extend_from_slice(p);
            }
            let result = self.write(&joined);
            if !matches!(self.mode, Mode::Plain) {
                self.joined = joined;
            }
            return result;
        }
        let Some((file, _)) = self.file.as_mut() else {
            return Ok(());
        };
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            match file.write_vectored(slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.stored += n as u64;
                    IoSlice::advance_slices(&mut slices, n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
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
pub(super) mod tests {
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

    /// Bytes zstd cannot shrink.
    pub(in crate::disk) fn noise(len: usize) -> Vec<u8> {
        let mut noise = vec![0u8; len];
        let mut x = 0x9e3779b97f4a7c15u64;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        noise
    }

    #[test]
    fn a_first_chunk_that_does_not_shrink_keeps_the_blob_plain() {
        let noise = noise(64 * 1024);
        let (bytes, enc) = stored(&[&noise, &[b'a'; 4096]]);
        assert_eq!(enc, Encoding::Identity);
        assert_eq!(&bytes[..noise.len()], &noise[..]);
        assert_eq!(bytes.len(), noise.len() + 4096);
    }

    #[test]
    fn contexts_are_shared_and_at_most_a_few_are_kept_idle() {
        let text = b"fn main() { println!(\"hello\"); }\n".repeat(2000);
        // Many more threads compressing at once than contexts kept.
        let threads = 4 * idle_compressors();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let mut out = Vec::new();
                    for _ in 0..5 {
                        compress_frame(&text, &mut out).unwrap();
                        assert_eq!(zstd::bulk::decompress(&out, text.len()).unwrap(), text);
                    }
                });
            }
        });
        let idle = lock(&COMPRESSORS).len();
        assert!((1..=idle_compressors()).contains(&idle), "{idle} idle");
    }

    #[test]
    fn a_sink_that_stores_plain_keeps_no_frame_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::create(dir.path().join("t"), Encoding::Zstd).unwrap();
        sink.write(&noise(64 * 1024)).unwrap();
        assert!(matches!(sink.mode, Mode::Plain));
        assert_eq!(sink.frame.capacity(), 0);
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
