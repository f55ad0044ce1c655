//! Where a write's bytes go ([`Sink`]) and the temp file they go to
//! ([`TempFile`]), which removes itself unless handed to the index writer.
//! Apart from `mod.rs` because they are the write path's plumbing, not its
//! rules (slots, reservations, verification).

use std::io;
use std::path::PathBuf;

use async_compression::Level;
use async_compression::tokio::write::ZstdEncoder;
use tokio::fs::File;
use tokio::io::AsyncWriteExt;

use super::ZSTD_LEVEL;
use crate::Encoding;

/// Where a write's bytes go: the temp file, through a zstd encoder or not,
/// or nowhere when an identical CAS blob is already stored.
pub(super) enum Sink {
    Plain(File, u64),
    Zstd(ZstdEncoder<File>),
    Discard,
}

impl Sink {
    pub(super) fn new(file: File, encoding: Encoding) -> Self {
        match encoding {
            Encoding::Identity => Sink::Plain(file, 0),
            Encoding::Zstd => {
                Sink::Zstd(ZstdEncoder::with_quality(file, Level::Precise(ZSTD_LEVEL)))
            }
        }
    }

    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Plain(f, n) => {
                f.write_all(bytes).await?;
                *n += bytes.len() as u64;
                Ok(())
            }
            Sink::Zstd(z) => z.write_all(bytes).await,
            Sink::Discard => Ok(()),
        }
    }

    /// Flushes everything and returns the file with its length.
    pub(super) async fn finish(self) -> io::Result<(Option<File>, u64)> {
        match self {
            Sink::Discard => Ok((None, 0)),
            Sink::Plain(mut f, n) => {
                f.flush().await?;
                Ok((Some(f), n))
            }
            Sink::Zstd(mut z) => {
                z.shutdown().await?;
                let f = z.into_inner();
                let n = f.metadata().await?.len();
                Ok((Some(f), n))
            }
        }
    }
}

/// A write's temp file, removed on drop unless handed to the writer. A put
/// whose future is dropped mid-body (client gone, request timeout) runs no
/// error path; without this its file stayed in tmp/, unaccounted, until the
/// next start.
pub(super) struct TempFile {
    pub(super) path: PathBuf,
    pub(super) armed: bool,
}

impl TempFile {
    /// The writer owns the file now (it renames it, or removes it on failure).
    pub(super) fn hand_over(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
