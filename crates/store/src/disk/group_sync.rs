//! Group commit of blob files: one flush makes every new blob of an index
//! batch durable, instead of one fsync per blob.
//!
//! The rule it keeps is the store's durability rule: a blob's bytes are on
//! stable storage before the rename that publishes it, and the rename is
//! before the write is acknowledged. One fsync per blob kept it too, but
//! cost a journal commit per blob: 4 KiB PUTs ran at the disk's flush rate,
//! and 1 MiB PUTs waited behind each other's flushes (p99 several times
//! p50). The index writer already gathers every write that finished while
//! it was busy into one batch; flushing the batch at once costs the same
//! two flushes for one blob or a thousand, so the flush rate bounds
//! batches per second, not blobs.
//!
//! On Linux a flush is `syncfs(2)` on the store's file system: it writes
//! back everything dirty there, the batch's files and directories with it.
//! On a volume shared with other heavy writers it also waits for their
//! data, so the cache's `dir` belongs on its own volume (as the Kubernetes
//! and NixOS deployments put it). Elsewhere each file and directory is
//! fsync'd in turn.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub(super) struct GroupSync {
    /// A directory on the store's file system, for `syncfs`.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fs: File,
}

impl GroupSync {
    pub(super) fn new(dir_on_store: &Path) -> io::Result<Self> {
        Ok(GroupSync {
            fs: File::open(dir_on_store)?,
        })
    }

    /// Makes the contents of `files` durable.
    pub(super) fn sync_files(&self, files: &[&Path]) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let _ = files;
            self.syncfs()
        }
        #[cfg(not(target_os = "linux"))]
        {
            files
                .iter()
                .try_for_each(|f| File::open(f).and_then(|f| f.sync_all()))
        }
    }

    /// Makes the entries of `dirs` (renames into them) durable.
    pub(super) fn sync_dirs(&self, dirs: &BTreeSet<PathBuf>) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let _ = dirs;
            self.syncfs()
        }
        #[cfg(not(target_os = "linux"))]
        {
            dirs.iter()
                .try_for_each(|d| File::open(d).and_then(|d| d.sync_all()))
        }
    }

    #[cfg(target_os = "linux")]
    fn syncfs(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs only reads the descriptor, which `self.fs` keeps
        // open for the duration of the call.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::syncfs(self.fs.as_raw_fd()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}
