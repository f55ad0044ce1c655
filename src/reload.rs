//! Noticing that files read at start-up have changed, so they can be re-read
//! without a restart: the TLS certificate and key, the htpasswd file.
//!
//! Kubernetes renews a mounted Secret by writing a new directory and swapping
//! a symlink to it; cert-manager and editors often write a new file and
//! rename it over the old one. Either can leave the size and the modification
//! time unchanged (same-length content, timestamps copied or within one
//! clock tick), so a file is identified by its inode and device as well, and
//! paths are followed through symlinks ([`std::fs::metadata`]).
//!
//! [`Watcher`] answers "changed since I last asked?" for a set of paths;
//! [`spawn_checks`] runs a check periodically on a blocking thread for as
//! long as its owner lives. What to do on a change (re-read, keep the old
//! version when the new one does not load) stays with the caller.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How often watched files are checked, unless a caller has a reason to
/// pick another interval.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Which file a path leads to, and which version of it: inode, device,
/// modification time and length. `None` when it cannot be read (missing,
/// a dangling symlink, no permission).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    dev: u64,
    ino: u64,
    modified: Option<SystemTime>,
    len: u64,
}

/// The versions of a set of files, in the order of their paths. Two stamps
/// differ when any file was rewritten, replaced (rename, symlink swap),
/// removed or created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileStamp(Vec<Option<Version>>);

impl FileStamp {
    /// Stamps `paths` now, following symlinks.
    pub(crate) fn of<P: AsRef<Path>>(paths: &[P]) -> FileStamp {
        FileStamp(
            paths
                .iter()
                .map(|path| {
                    let m = std::fs::metadata(path).ok()?;
                    Some(Version {
                        dev: m.dev(),
                        ino: m.ino(),
                        modified: m.modified().ok(),
                        len: m.len(),
                    })
                })
                .collect(),
        )
    }
}

/// Says "changed" once per change of a set of files.
#[derive(Debug)]
pub(crate) struct Watcher {
    paths: Vec<PathBuf>,
    last: Mutex<FileStamp>,
}

impl Watcher {
    /// Watches `paths`, taking their current state as the baseline. Create
    /// it *before* reading the files: a change made while they are read is
    /// then reported by the next [`Watcher::changed`] instead of being lost.
    pub(crate) fn new(paths: impl IntoIterator<Item = impl Into<PathBuf>>) -> Watcher {
        let paths: Vec<PathBuf> = paths.into_iter().map(Into::into).collect();
        let last = Mutex::new(FileStamp::of(&paths));
        Watcher { paths, last }
    }

    #[cfg(test)]
    pub(crate) fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// True when any file differs from the last call (or from
    /// [`Watcher::new`]); the new state becomes the baseline, so a change is
    /// reported once, whether or not the caller manages to use it. Reads
    /// file metadata: call it off the async workers.
    pub(crate) fn changed(&self) -> bool {
        let now = FileStamp::of(&self.paths);
        let mut last = bazel_cache_digest::lock(&self.last);
        if *last == now {
            return false;
        }
        *last = now;
        true
    }
}

/// Calls `check(&owner)` every `interval` on a blocking thread, until the
/// last `Arc` of `owner` is dropped (the task holds only a weak reference).
/// `check` typically is `|x| if x.watcher.changed() { x.reload() }`.
pub(crate) fn spawn_checks<T: Send + Sync + 'static>(
    owner: &Arc<T>,
    interval: Duration,
    check: fn(&T),
) {
    let weak = Arc::downgrade(owner);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(owner) = weak.upgrade() else { return };
            let _ = tokio::task::spawn_blocking(move || check(&owner)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File};

    fn mtime(path: &Path) -> SystemTime {
        fs::metadata(path).unwrap().modified().unwrap()
    }

    fn set_mtime(path: &Path, time: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(time)
            .unwrap();
    }

    #[test]
    fn unchanged_files_are_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, "one").unwrap();
        fs::write(&b, "two").unwrap();
        let w = Watcher::new([&a, &b]);
        assert!(!w.changed());
        let _ = fs::read(&a).unwrap();
        assert!(!w.changed());
        assert_eq!(w.paths(), [a, b]);
    }

    #[test]
    fn a_rename_over_with_same_size_and_mtime_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.crt");
        fs::write(&path, "old-cert").unwrap();
        let w = Watcher::new([&path]);

        let new = dir.path().join(".tls.crt.tmp");
        fs::write(&new, "new-cert").unwrap();
        set_mtime(&new, mtime(&path));
        let before = fs::metadata(&path).unwrap();
        fs::rename(&new, &path).unwrap();
        let after = fs::metadata(&path).unwrap();
        assert_eq!(
            (before.len(), before.modified().unwrap()),
            (after.len(), after.modified().unwrap()),
            "the test must replace the file with an identical size and mtime"
        );

        assert!(w.changed(), "a file replaced by rename was missed");
        assert!(!w.changed(), "one change is reported once");
    }

    #[test]
    fn a_kubernetes_style_symlink_swap_is_reported() {
        // tls.crt -> ..data/tls.crt, ..data -> ..v1; renewal points ..data at ..v2.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for version in ["..v1", "..v2"] {
            fs::create_dir(root.join(version)).unwrap();
            fs::write(root.join(version).join("tls.crt"), "same-size").unwrap();
        }
        set_mtime(
            &root.join("..v2/tls.crt"),
            mtime(&root.join("..v1/tls.crt")),
        );
        std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/tls.crt", root.join("tls.crt")).unwrap();
        let w = Watcher::new([root.join("tls.crt")]);
        assert!(!w.changed());

        std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
        fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        assert!(w.changed(), "the symlink swap was missed");
        assert!(!w.changed());
    }

    #[test]
    fn rewrites_removals_and_creations_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        fs::write(&path, "alice:x\n").unwrap();
        let w = Watcher::new([&path]);

        fs::write(&path, "alice:x\nbob:y\n").unwrap();
        assert!(w.changed(), "an in-place rewrite was missed");
        fs::remove_file(&path).unwrap();
        assert!(w.changed(), "a removal was missed");
        assert!(!w.changed(), "a file that stays missing is no change");
        fs::write(&path, "bob:y\n").unwrap();
        assert!(w.changed(), "a re-created file was missed");
    }

    #[test]
    fn stamps_compare_per_path() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, "x").unwrap();
        assert_eq!(FileStamp::of(&[&a, &b]), FileStamp::of(&[&a, &b]));
        assert_ne!(FileStamp::of(&[&a, &b]), FileStamp::of(&[&b, &a]));
    }
}
