//! [`PutBody`]: an upload's bytes, as a reader or as the chunks the
//! transport already holds.
//!
//! HTTP bodies and gRPC `WriteRequest`s arrive as `Bytes` chunks. Read
//! through an `AsyncRead`, every byte of a 1 MiB PUT was copied once more,
//! from those chunks into the write path's buffer, before being hashed and
//! written: 8 % of the server's CPU per 1 MiB PUT. Handed over as chunks,
//! the write path hashes them and writes them to the file (`pwritev`)
//! where they are.

use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::AsyncRead;
use tokio_util::io::StreamReader;

use crate::BlobReader;

/// A body of `Bytes` chunks. An error ends the body: nothing is stored.
pub type BlobChunks = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// An upload's body.
pub enum PutBody {
    /// Bytes to copy out of a reader: a decoder, a file, a test's cursor.
    Reader(BlobReader),
    /// Chunks already in memory (an HTTP body, gRPC messages), written
    /// without another copy.
    Chunks(BlobChunks),
}

impl PutBody {
    pub fn reader(r: impl AsyncRead + Send + 'static) -> Self {
        PutBody::Reader(Box::pin(r))
    }

    pub fn chunks(s: impl Stream<Item = io::Result<Bytes>> + Send + 'static) -> Self {
        PutBody::Chunks(Box::pin(s))
    }

    /// A body already whole in memory (a batch entry, an ActionResult).
    pub fn bytes(b: impl Into<Bytes>) -> Self {
        let b: Bytes = b.into();
        PutBody::chunks(futures_util::stream::iter([Ok(b)]))
    }

    /// The body as a reader, for consumers that want one (a zstd decoder).
    pub fn into_reader(self) -> BlobReader {
        match self {
            PutBody::Reader(r) => r,
            PutBody::Chunks(s) => Box::pin(StreamReader::new(s)),
        }
    }
}

impl From<BlobReader> for PutBody {
    fn from(r: BlobReader) -> Self {
        PutBody::Reader(r)
    }
}

impl<R: AsyncRead + Send + 'static> From<Pin<Box<R>>> for PutBody {
    fn from(r: Pin<Box<R>>) -> Self {
        PutBody::Reader(r)
    }
}
