//! Finding the files of a bazel-remote `dir` (one `stat` each, with their
//! last use), and removing the directories the adoption emptied.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::names::{self, Form, TREES, Tree};
use super::progress::AdoptProgress;
use crate::StoreError;
use bazel_cache_digest::{BlobKey, Hash};

/// A bazel-remote file to adopt.
pub(super) struct Candidate {
    pub path: PathBuf,
    pub tree: Tree,
    pub hash: Hash,
    pub form: Form,
    /// Last use, seconds since the Unix epoch.
    pub used: u64,
    /// Bytes on disk.
    pub len: u64,
}

impl Candidate {
    pub(super) fn key(&self) -> BlobKey {
        match self.tree {
            Tree::Cas => BlobKey::cas(self.hash),
            Tree::Ac | Tree::Raw => BlobKey::ac(self.hash),
        }
    }
}

/// Every file of bazel-remote's trees with a name it writes; the others
/// are logged and counted, and stay.
pub(super) fn list(dir: &Path, progress: &AdoptProgress) -> Result<Vec<Candidate>, StoreError> {
    let mut found = Vec::new();
    let strange = |path: &Path| {
        tracing::warn!(path = %path.display(), "leaving alone a file bazel-remote would not have written");
        AdoptProgress::count(&progress.left_alone);
    };
    for (tree_name, tree) in TREES {
        let root = dir.join(tree_name);
        let shards = match std::fs::read_dir(&root) {
            Ok(shards) => shards,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        for shard in shards {
            let shard = shard?;
            let name = shard.file_name();
            if !shard.file_type()?.is_dir() || !name.to_str().is_some_and(names::is_shard) {
                if name != "lost+found" {
                    strange(&shard.path());
                }
                continue;
            }
            for file in std::fs::read_dir(shard.path())? {
                let file = file?;
                let path = file.path();
                let parsed = file
                    .file_name()
                    .to_str()
                    .and_then(|n| names::parse(tree, n));
                let meta = file.metadata()?;
                let Some((hash, form)) = parsed.filter(|_| meta.is_file()) else {
                    strange(&path);
                    continue;
                };
                found.push(Candidate {
                    path,
                    tree,
                    hash,
                    form,
                    used: last_use(&meta),
                    len: meta.len(),
                });
            }
        }
    }
    Ok(found)
}

/// The later of atime and mtime, in seconds since the Unix epoch.
fn last_use(meta: &std::fs::Metadata) -> u64 {
    let secs = |t: std::io::Result<SystemTime>| {
        t.ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    };
    secs(meta.accessed()).max(secs(meta.modified()))
}

/// Removes shard directories the adoption emptied, and trees left empty;
/// directories still holding files left alone stay.
pub(super) fn remove_empty_trees(dir: &Path) {
    for (tree_name, _) in TREES {
        let root = dir.join(tree_name);
        let Ok(shards) = std::fs::read_dir(&root) else {
            continue;
        };
        for shard in shards.flatten() {
            let _ = std::fs::remove_dir(shard.path());
        }
        let _ = std::fs::remove_dir(&root);
    }
}
