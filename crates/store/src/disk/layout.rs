//! Where blobs live under `dir`, and how a file name maps back to its entry.
//!
//! ```text
//! dir/index.redb            the index (see index.rs)
//! dir/tmp/                  writes in progress; emptied at every start
//! dir/ac/3f/3fa4…           an AC entry (always stored as sent)
//! dir/cas/9c/9c01…          a CAS blob stored uncompressed
//! dir/cas/9c/9c01….zst      a CAS blob stored as a zstd stream
//! ```
//! Two hex characters of sharding keep directories near 1/256 of the entries.
//! A file under its final name is always complete and verified: it got there
//! by rename after its hash was checked.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Encoding;
use bazel_cache_digest::{BlobKey, Hash, Kind};

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

    pub(super) fn kind_dir(&self, kind: Kind) -> PathBuf {
        self.root.join(kind.as_str())
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
        self.kind_dir(key.kind).join(&hex[..2]).join(name)
    }

    /// Every shard directory, created at start so writes never race to make them.
    pub(super) fn shard_dirs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        Kind::ALL.into_iter().flat_map(move |kind| {
            let base = self.kind_dir(kind);
            (0..=255u8).map(move |b| base.join(hex::encode([b])))
        })
    }

    /// Maps a file name found in a shard directory back to its key and
    /// encoding; `None` for anything that is not a blob of ours.
    pub(super) fn parse_file_name(kind: Kind, name: &str) -> Option<(BlobKey, Encoding)> {
        let (hex, encoding) = match name.strip_suffix(ZSTD_SUFFIX) {
            Some(hex) if kind == Kind::Cas => (hex, Encoding::Zstd),
            Some(_) => return None,
            None => (name, Encoding::Identity),
        };
        let hash = Hash::from_hex(hex).ok()?;
        Some((BlobKey::new(kind, hash), encoding))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_through_file_names() {
        let layout = Layout::new(Path::new("/c"));
        let key = BlobKey::cas(Hash::of(b"x"));
        for enc in [Encoding::Identity, Encoding::Zstd] {
            let p = layout.blob_path(&key, enc);
            assert!(p.starts_with("/c/cas/"));
            let name = p.file_name().unwrap().to_str().unwrap();
            assert_eq!(Layout::parse_file_name(Kind::Cas, name), Some((key, enc)));
        }
        let ac = BlobKey::ac(Hash::of(b"y"));
        let name = ac.hash.to_hex();
        assert_eq!(
            Layout::parse_file_name(Kind::Ac, &name),
            Some((ac, Encoding::Identity))
        );
        assert_eq!(
            Layout::parse_file_name(Kind::Ac, &format!("{name}.zst")),
            None
        );
        assert_eq!(Layout::parse_file_name(Kind::Cas, "junk"), None);
        assert_eq!(layout.shard_dirs().count(), 512);
    }
}
