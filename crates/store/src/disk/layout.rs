//! Where blobs live under `dir`, and how a file name maps back to its entry.
//!
//! ```text
//! dir/index.redb            the index (see index.rs)
//! dir/tmp/                  writes in progress; emptied at every start
//! dir/ac/3f/3fa4…           an AC entry (always stored as sent)
//! dir/cas/9c/9c01…          a CAS blob stored uncompressed
//! dir/cas/9c/9c01….zst      a CAS blob stored as a zstd stream
//! dir/blake3/ac/…, dir/blake3/cas/…   the same for BLAKE3 names
//! ```
//! SHA-256 entries keep the paths they always had (and bazel-remote's
//! naming); BLAKE3 entries live in a tree of their own, since the same 64
//! hex characters name another blob under the other function.
//! Two hex characters of sharding keep directories near 1/256 of the entries.
//! A file under its final name is always complete and verified: it got there
//! by rename after its hash was checked.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Encoding;
use bazel_cache_digest::{BlobKey, DigestFunction, Hash, Kind};

const ZSTD_SUFFIX: &str = ".zst";

#[derive(Debug, Clone)]
pub(super) struct Layout {
    root: PathBuf,
    tmp: PathBuf,
    /// Distinguishes temp files of concurrent writes within this process.
    next_tmp: std::sync::Arc<AtomicU64>,
}

impl Layout {
    pub(super) fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
            tmp: root.join("tmp"),
            next_tmp: Default::default(),
        }
    }

    pub(super) fn index_path(&self) -> PathBuf {
        self.root.join("index.redb")
    }

    pub(super) fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Every (function, kind) pair: one directory tree each.
    pub(super) fn namespaces() -> impl Iterator<Item = (DigestFunction, Kind)> {
        DigestFunction::ALL
            .into_iter()
            .flat_map(|f| Kind::ALL.into_iter().map(move |k| (f, k)))
    }

    pub(super) fn kind_dir(&self, function: DigestFunction, kind: Kind) -> PathBuf {
        match function {
            DigestFunction::Sha256 => self.root.join(kind.as_str()),
            _ => self.root.join(function.as_str()).join(kind.as_str()),
        }
    }

    /// A fresh temp file path; temp files share the blob file system so the
    /// final rename is atomic.
    pub(super) fn tmp_path(&self) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{}-{n}", std::process::id()))
    }

    pub(super) fn blob_path(&self, key: &BlobKey, encoding: Encoding) -> PathBuf {
        let hex = key.hash.to_hex();
        let mut name = hex.clone();
        if encoding == Encoding::Zstd {
            name.push_str(ZSTD_SUFFIX);
        }
        self.kind_dir(key.hash.function(), key.kind)
            .join(&hex[..2])
            .join(name)
    }

    /// Every shard directory, created at start so writes never race to make them.
    pub(super) fn shard_dirs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        Self::namespaces().flat_map(move |(function, kind)| {
            let base = self.kind_dir(function, kind);
            (0..=255u8).map(move |b| base.join(hex::encode([b])))
        })
    }

    /// Maps a file name found in a shard directory back to its key and
    /// encoding; `None` for anything that is not a blob of ours.
    pub(super) fn parse_file_name(
        function: DigestFunction,
        kind: Kind,
        name: &str,
    ) -> Option<(BlobKey, Encoding)> {
        let (hex, encoding) = match name.strip_suffix(ZSTD_SUFFIX) {
            Some(hex) if kind == Kind::Cas => (hex, Encoding::Zstd),
            Some(_) => return None,
            None => (name, Encoding::Identity),
        };
        let hash = Hash::from_hex(function, hex).ok()?;
        Some((BlobKey::new(kind, hash), encoding))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256: DigestFunction = DigestFunction::Sha256;
    const BLAKE3: DigestFunction = DigestFunction::Blake3;

    #[test]
    fn paths_round_trip_through_file_names() {
        let layout = Layout::new(Path::new("/c"));
        for (function, dir) in [(SHA256, "/c/cas/"), (BLAKE3, "/c/blake3/cas/")] {
            let key = BlobKey::cas(Hash::of_with(function, b"x"));
            for enc in [Encoding::Identity, Encoding::Zstd] {
                let p = layout.blob_path(&key, enc);
                assert!(p.starts_with(dir), "{}", p.display());
                let name = p.file_name().unwrap().to_str().unwrap();
                assert_eq!(
                    Layout::parse_file_name(function, Kind::Cas, name),
                    Some((key, enc))
                );
            }
        }
        let ac = BlobKey::ac(Hash::of(b"y"));
        let name = ac.hash.to_hex();
        assert_eq!(
            layout.blob_path(&ac, Encoding::Identity),
            Path::new("/c/ac").join(&name[..2]).join(&name)
        );
        assert_eq!(
            Layout::parse_file_name(SHA256, Kind::Ac, &name),
            Some((ac, Encoding::Identity))
        );
        assert_eq!(
            Layout::parse_file_name(SHA256, Kind::Ac, &format!("{name}.zst")),
            None
        );
        assert_eq!(Layout::parse_file_name(SHA256, Kind::Cas, "junk"), None);
        assert_eq!(layout.shard_dirs().count(), 1024);
    }
}
