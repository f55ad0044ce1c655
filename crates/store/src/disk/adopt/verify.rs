//! Checking an adopted file before it is first served: a CAS blob must
//! decode to the bytes its name promises (hash and size), an action-cache
//! entry must be an ActionResult. What fails is never indexed.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

use super::names::{Form, Tree};
use crate::Encoding;
use crate::s3::casblob::{self, CHUNK_TABLE_OFFSET, Compression};
use bazel_cache_digest::{DigestFunction, Hash, Hasher};

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
            // bazel-remote names blobs with SHA-256 only.
            match crate::action_result::decode(DigestFunction::Sha256, &bytes) {
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
    let mut hasher = Hasher::new(hash.function());
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::s3::casblob::Header;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// `bytes` as a file in `dir`.
    fn file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A casblob of `blob` as the S3 side writes it (bazel-remote's layout).
    fn casblob(dir: &tempfile::TempDir, blob: &[u8]) -> Vec<u8> {
        let path = dir.path().join("encoding");
        let mut out = File::create(&path).unwrap();
        casblob::encode(&mut &blob[..], blob.len() as u64, &mut out).unwrap();
        out.flush().unwrap();
        std::fs::read(&path).unwrap()
    }

    fn corrupt(r: Result<Verified, Refused>) -> String {
        match r {
            Err(Refused::Corrupt(why)) => why,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn casblobs_must_decode_to_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let blob = data(2_500_000);
        let hash = Hash::of(&blob);
        let size = blob.len() as u64;
        let good = casblob(&dir, &blob);
        let form = Form::CasBlob { size };
        let path = file(&dir, "good", &good);
        let ok = verify(&path, Tree::Cas, &hash, form).unwrap();
        assert_eq!(
            ok,
            Verified {
                size,
                encoding: Encoding::Zstd
            }
        );

        // Named with another size or hash.
        let other = Form::CasBlob { size: size + 1 };
        assert!(corrupt(verify(&path, Tree::Cas, &hash, other)).contains("header says"));
        let wrong = Hash::of(b"other");
        assert!(corrupt(verify(&path, Tree::Cas, &wrong, form)).contains("hashes to"));
        // Cut short, a chunk damaged, no header at all.
        let cut = file(&dir, "cut", &good[..good.len() - 100]);
        corrupt(verify(&cut, Tree::Cas, &hash, form));
        let mut damaged = good.clone();
        let last = damaged.len() - 50;
        damaged[last] ^= 0xff;
        let damaged = file(&dir, "damaged", &damaged);
        corrupt(verify(&damaged, Tree::Cas, &hash, form));
        let bare = file(&dir, "bare", &zstd::encode_all(&blob[..], 1).unwrap());
        corrupt(verify(&bare, Tree::Cas, &hash, form));
        let tiny = file(&dir, "tiny", b"abc");
        corrupt(verify(&tiny, Tree::Cas, &hash, form));
    }

    #[test]
    fn an_uncompressed_casblob_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let blob = data(1000);
        // Two offsets: the header is the fixed part and 16 bytes.
        let len = CHUNK_TABLE_OFFSET + 16;
        let header = Header {
            uncompressed_size: 1000,
            compression: Compression::Identity,
            chunk_size: 1 << 20,
            chunk_offsets: vec![len, len + 1000],
        };
        let mut bytes = header.to_bytes();
        bytes.extend_from_slice(&blob);
        let path = file(&dir, "identity", &bytes);
        let form = Form::CasBlob { size: 1000 };
        match verify(&path, Tree::Cas, &Hash::of(&blob), form) {
            Err(Refused::Unsupported(_)) => {}
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn plain_blobs_and_action_results() {
        let dir = tempfile::tempdir().unwrap();
        let blob = data(5000);
        let hash = Hash::of(&blob);
        let path = file(&dir, "plain", &blob);
        for size in [None, Some(5000)] {
            let ok = verify(&path, Tree::Cas, &hash, Form::PlainCas { size }).unwrap();
            assert_eq!(
                ok,
                Verified {
                    size: 5000,
                    encoding: Encoding::Identity
                }
            );
        }
        let sized = Form::PlainCas { size: Some(4999) };
        corrupt(verify(&path, Tree::Cas, &hash, sized));
        let unsized_ = Form::PlainCas { size: None };
        corrupt(verify(&path, Tree::Cas, &Hash::of(b"x"), unsized_));

        // An empty ActionResult is a valid one; garbage is not.
        let ar = file(&dir, "ar", b"");
        let key = Hash::of(b"action");
        for tree in [Tree::Ac, Tree::Raw] {
            let ok = verify(&ar, tree, &key, Form::Ac).unwrap();
            assert_eq!(
                ok,
                Verified {
                    size: 0,
                    encoding: Encoding::Identity
                }
            );
        }
        let garbage = file(&dir, "garbage", b"\xff\xff\xff not a proto");
        corrupt(verify(&garbage, Tree::Ac, &key, Form::Ac));
        match verify(&garbage, Tree::Raw, &key, Form::Ac) {
            Err(Refused::Unsupported(_)) => {}
            other => panic!("raw garbage: expected Unsupported, got {other:?}"),
        }
    }
}
