//! Checking an adopted file before it is first served: a CAS blob must
//! decode to the bytes its name promises (hash and size), an action-cache
//! entry must be an ActionResult. What fails is never indexed.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

use super::names::{Form, Tree};
use crate::Encoding;
use crate::s3::casblob::{self, CHUNK_TABLE_OFFSET, Compression};
use bazel_cache_digest::{Hash, Hasher};

/// Largest zstd window an adopted blob may use: the one our read path
/// allows (zstd_decode.rs), so what verifies here can be served.
/// (bazel-remote's chunks are 1 MiB, whose frames need at most that.)
const WINDOW_LOG_MAX: u32 = 23;
/// AC entries are read whole; larger ones are not ActionResults bazel-remote wrote.
const MAX_AC_ENTRY: u64 = 64 << 20;

/// A file that passed: what the index records for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verified {
    /// Logical size.
    pub size: u64,
    pub encoding: Encoding,
}

/// Why a file is not adopted.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    /// Its content is not what its name says: it is deleted.
    #[error("{0}")]
    Corrupt(String),
    /// Sound, or not ours to judge, but not something we can serve (a raw
    /// entry that is no ActionResult, an uncompressed casblob): left alone.
    #[error("{0}")]
    Unsupported(String),
    /// Could not be read (permissions, I/O): left alone for the next start.
    #[error("reading it failed: {0}")]
    Io(#[from] io::Error),
}

/// Checks the file at `path`, named `hash` with `form` in `tree`.
pub(super) fn verify(
    path: &Path,
    tree: Tree,
    hash: &Hash,
    form: Form,
) -> Result<Verified, Refused> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    match form {
        Form::CasBlob { size } => casblob(file, len, hash, size),
        Form::PlainCas { size } => {
            if size.is_some_and(|s| s != len) {
                return Err(Refused::Corrupt(format!(
                    "{len} bytes, the name says {}",
                    size.unwrap_or_default()
                )));
            }
            hashes_to(BufReader::with_capacity(256 << 10, file), hash, len, false)?;
            Ok(Verified {
                size: len,
                encoding: Encoding::Identity,
            })
        }
        Form::Ac => {
            if len > MAX_AC_ENTRY {
                return Err(Refused::Unsupported(format!("an AC entry of {len} bytes")));
            }
            let bytes = std::fs::read(path)?;
            match crate::action_result::decode(&bytes) {
                Ok(_) => Ok(Verified {
                    size: bytes.len() as u64,
                    encoding: Encoding::Identity,
                }),
                // bazel-remote validated ac.v2 entries before it wrote
                // them: one that does not decode is damaged. raw.v2 holds
                // what clients sent with validation off: not damaged,
                // just not an ActionResult this server would serve.
                Err(e) if tree == Tree::Ac => Err(Refused::Corrupt(e.to_string())),
                Err(e) => Err(Refused::Unsupported(format!("not an ActionResult: {e}"))),
            }
        }
    }
}

/// A casblob: its header must describe this file and a zstd blob of
/// `size` bytes, and the whole file must decode (the header is a zstd
/// skippable frame, so with zstd chunks the file is one zstd stream, which
/// is how it is then stored and served) to bytes hashing to `hash`.
fn casblob(mut file: File, len: u64, hash: &Hash, size: u64) -> Result<Verified, Refused> {
    let mut fixed = [0u8; CHUNK_TABLE_OFFSET as usize];
    let corrupt = |e: io::Error| Refused::Corrupt(format!("casblob header: {e}"));
    file.read_exact(&mut fixed).map_err(corrupt)?;
    let header_len = casblob::header_len_of(&fixed).map_err(corrupt)?;
    if header_len > len {
        return Err(Refused::Corrupt(format!(
            "casblob header of {header_len} bytes in a {len}-byte file"
        )));
    }
    let mut prefix = fixed.to_vec();
    prefix.resize(header_len as usize, 0);
    file.read_exact(&mut prefix[fixed.len()..])
        .map_err(corrupt)?;
    let header = casblob::parse_header(&prefix).map_err(corrupt)?;
    if header.uncompressed_size != size {
        return Err(Refused::Corrupt(format!(
            "casblob header says {} bytes, the name {size}",
            header.uncompressed_size
        )));
    }
    if header.file_len() != len {
        return Err(Refused::Corrupt(format!(
            "casblob header says the file has {} bytes, it has {len}",
            header.file_len()
        )));
    }
    if header.compression != Compression::Zstd {
        // bazel-remote never writes these (see s3/casblob.rs); served as
        // zstd they would be wrong, and converting them means copying.
        return Err(Refused::Unsupported("an uncompressed casblob".into()));
    }
    drop(prefix);
    file.rewind()?;
    let mut decoder = zstd::stream::read::Decoder::new(file)?;
    decoder.window_log_max(WINDOW_LOG_MAX)?;
    hashes_to(decoder, hash, size, true)?;
    Ok(Verified {
        size,
        encoding: Encoding::Zstd,
    })
}

/// Reads `input` to its end: its bytes must hash to `hash` and be `size`
/// long. A read error of a `decoding` input is about the content.
fn hashes_to(mut input: impl Read, hash: &Hash, size: u64, decoding: bool) -> Result<(), Refused> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if decoding => return Err(Refused::Corrupt(format!("decoding: {e}"))),
            Err(e) => return Err(Refused::Io(e)),
        };
        hasher.update(&buf[..n]);
        if hasher.len() > size {
            return Err(Refused::Corrupt(format!("longer than its {size} bytes")));
        }
    }
    if hasher.len() != size {
        return Err(Refused::Corrupt(format!(
            "{} bytes, the name says {size}",
            hasher.len()
        )));
    }
    let actual = hasher.finish();
    if actual != *hash {
        return Err(Refused::Corrupt(format!("content hashes to {actual}")));
    }
    Ok(())
}
