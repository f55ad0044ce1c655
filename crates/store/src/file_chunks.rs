//! A stored file sent in chunks read by blocking tasks straight into the
//! buffers the front end sends ([`BlobFile::into_chunks`]).
//!
//! Through `tokio::fs::File`, each chunk was read into tokio's own buffer
//! on a blocking thread and then copied into the caller's: one copy more
//! per byte than needed, and for gRPC another into the message. Here each
//! chunk is one `read(2)` into a fresh buffer that becomes the HTTP frame
//! (`Bytes`) or, read behind room for the message prefix, the gRPC message
//! as it is.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};

use crate::nowait::ended_early;

/// A blob's file, open, with its length.
pub struct BlobFile {
    pub file: File,
    pub len: u64,
}

impl BlobFile {
    /// The file's bytes in chunks of at most `chunk` bytes, each read on
    /// the async worker when the page cache holds it (nowait.rs), by a
    /// blocking task otherwise: a hand-off per chunk, and the wake-ups it
    /// takes, were a sixth of a 1 MiB GET's CPU. A file shorter than `len`
    /// ends with an `UnexpectedEof` error, never a short blob.
    pub fn into_chunks(self, chunk: usize) -> impl Stream<Item = io::Result<Bytes>> + Send {
        self.into_chunks_after(chunk, 0).map_ok(Bytes::from)
    }

    /// As [`BlobFile::into_chunks`], but each chunk's buffer starts with
    /// `room` zero bytes for the caller's framing (a gRPC message prefix),
    /// so a protocol can frame a chunk in place rather than copy it into
    /// a message buffer. The file's bytes follow: at most `chunk` of them.
    pub fn into_chunks_after(
        self,
        chunk: usize,
        room: usize,
    ) -> impl Stream<Item = io::Result<Vec<u8>>> + Send {
        let chunk = chunk.max(1) as u64;
        let mut file = self.file;
        // Chunks are read at offsets from where the file stands now.
        let state = match file.stream_position() {
            Ok(at) => Ok((Arc::new(file), at, self.len)),
            Err(e) => Err(e),
        };
        futures_util::stream::unfold(Some(state), move |state| async move {
            let (file, at, left) = match state? {
                Ok(state) => state,
                Err(e) => return Some((Err(e), None)),
            };
            if left == 0 {
                return None;
            }
            let n = left.min(chunk) as usize;
            let mut buf = Vec::with_capacity(room + n);
            buf.resize(room, 0);
            let read = match crate::nowait::read_into(&file, at, &mut buf, room, room + n) {
                Ok(true) => Ok(buf),
                Ok(false) => {
                    let reader = file.clone();
                    tokio::task::spawn_blocking(move || read_rest_at(&reader, at, buf, room, n))
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(format!("read task failed: {e}"))))
                }
                Err(e) => Err(e),
            };
            match read {
                Ok(buf) => Some((Ok(buf), Some(Ok((file, at + n as u64, left - n as u64))))),
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    /// The file as a stream of bytes, for readers that want one.
    pub fn into_reader(self) -> crate::BlobReader {
        Box::pin(tokio::fs::File::from_std(self.file))
    }
}

/// Fills `buf` to `room + n` bytes with `n` bytes of `file` from `at`
/// (`buf[room + k]` is the byte at `at + k`; what `buf` holds already is
/// kept), blocking.
fn read_rest_at(
    file: &File,
    at: u64,
    mut buf: Vec<u8>,
    room: usize,
    n: usize,
) -> io::Result<Vec<u8>> {
    let mut filled = buf.len() - room;
    buf.resize(room + n, 0);
    while filled < n {
        match file.read_at(&mut buf[room + filled..], at + filled as u64) {
            Ok(0) => {
                return Err(ended_early((n - filled) as u64));
            }
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

/// Reads the next `n` bytes of `file` into a new buffer without zeroing
/// it first (`vec![0; n]` costs a memset as large as the read), with one
/// `read(2)` when the kernel gives them all at once. Fewer bytes than `n`
/// before the end of the file is `UnexpectedEof`.
pub(crate) fn read_exactly(file: &File, n: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n as usize);
    file.take(n).read_to_end(&mut buf)?;
    if (buf.len() as u64) < n {
        return Err(ended_early(n - buf.len() as u64));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// A 1,000-byte file of a pattern that depends on `step`: its
    /// directory (kept for the test's length), path and bytes.
    fn pattern_file(step: u32) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..1000u32).map(|i| (i * step) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        (dir, path, data)
    }

    #[tokio::test]
    async fn chunks_cover_the_file_and_a_short_file_is_an_error() {
        let (_dir, path, data) = pattern_file(7);
        let whole = BlobFile {
            file: File::open(&path).unwrap(),
            len: 1000,
        };
        let chunks: Vec<Bytes> = whole.into_chunks(300).map(|c| c.unwrap()).collect().await;
        assert_eq!(
            chunks.iter().map(Bytes::len).collect::<Vec<_>>(),
            [300, 300, 300, 100]
        );
        assert_eq!(chunks.concat(), data);

        let claimed_longer = BlobFile {
            file: File::open(&path).unwrap(),
            len: 1200,
        };
        let results: Vec<_> = claimed_longer.into_chunks(600).collect().await;
        assert!(results[0].is_ok());
        assert_eq!(
            results[1].as_ref().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(results.len(), 2);

        // From where an open file stands, not from its start.
        let mut seeked = File::open(&path).unwrap();
        seeked.seek(io::SeekFrom::Start(400)).unwrap();
        let rest = BlobFile {
            file: seeked,
            len: 600,
        };
        let chunks: Vec<Bytes> = rest.into_chunks(250).map(|c| c.unwrap()).collect().await;
        assert_eq!(chunks.concat(), &data[400..]);
    }

    /// The blocking path, taken when the page cache lacks a chunk (the
    /// file above is cached, so the chunks came from nowait.rs).
    #[test]
    fn a_blocking_read_finishes_what_the_cache_began() {
        let (_dir, path, data) = pattern_file(13);
        let file = File::open(&path).unwrap();
        let begun = data[100..150].to_vec();
        assert_eq!(
            read_rest_at(&file, 100, begun, 0, 300).unwrap(),
            &data[100..400]
        );
        let short = read_rest_at(&file, 900, Vec::new(), 0, 200).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);

        // With room in front: the caller's bytes stay, the file's follow.
        let mut begun = b"head".to_vec();
        begun.extend_from_slice(&data[100..150]);
        let read = read_rest_at(&file, 100, begun, 4, 300).unwrap();
        assert_eq!(&read[..4], b"head");
        assert_eq!(&read[4..], &data[100..400]);
    }

    /// Chunks with room in front for a caller's framing: the room is
    /// zeroed, and the bytes after it are the file's, chunk by chunk.
    #[tokio::test]
    async fn chunks_after_room_hold_the_file_behind_it() {
        let (_dir, path, data) = pattern_file(11);
        let file = BlobFile {
            file: File::open(&path).unwrap(),
            len: 1000,
        };
        let chunks: Vec<Vec<u8>> = file
            .into_chunks_after(400, 11)
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [411, 411, 211]
        );
        assert!(chunks.iter().all(|c| c[..11] == [0; 11]));
        let body: Vec<u8> = chunks.iter().flat_map(|c| c[11..].to_vec()).collect();
        assert_eq!(body, data);
    }
}
