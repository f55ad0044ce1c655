//! Reconciling the index with the blob files after an unclean stop.
//!
//! Files are the truth: a file under its final name was complete and verified
//! when it was renamed there. After a crash the index may lag the files (its
//! last commits were not durable) or name files that eviction had already
//! removed. Recovery walks the tree once:
//! - a file without a matching entry is adopted, CAS blobs only after their
//!   content hashes to their name again (power loss without fsync can leave a
//!   short file) — a file that fails is deleted;
//! - an entry whose file is gone is dropped.
//!
//! It runs on its own thread while the store serves: a miss for a not yet
//! adopted blob is just a cache miss.

use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::index::{Insert, Op, Origin, Reader};
use super::layout::Layout;
use crate::{Encoding, StoreError};
use bazel_cache_digest::{BlobKey, Hasher, Kind};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Whether a reconciliation ran at all (false after a clean stop).
    pub ran: bool,
    pub files_checked: u64,
    pub adopted: u64,
    pub corrupt_removed: u64,
    pub entries_dropped: u64,
}

pub(super) fn reconcile(
    layout: &Layout,
    index: &Reader,
    tx: &mpsc::Sender<Op>,
    cancel: &AtomicBool,
) -> Result<RecoveryReport, StoreError> {
    let mut report = RecoveryReport {
        ran: true,
        ..Default::default()
    };
    for (function, kind) in Layout::namespaces() {
        for shard in std::fs::read_dir(layout.kind_dir(function, kind))? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(shard.path())? {
                if cancel.load(Ordering::Relaxed) {
                    return Ok(report);
                }
                let file = file?;
                let name = file.file_name();
                let Some((key, encoding)) = name
                    .to_str()
                    .and_then(|n| Layout::parse_file_name(function, kind, n))
                else {
                    tracing::warn!(path = %file.path().display(), "ignoring a file that is not a blob");
                    continue;
                };
                report.files_checked += 1;
                let stored = file.metadata()?.len();
                let indexed = index.get(&key)?;
                if indexed.is_some_and(|e| e.encoding == encoding && e.stored == stored) {
                    continue;
                }
                match verify(&file.path(), &key, encoding) {
                    Ok(size) => {
                        let (done, _) = oneshot::channel();
                        let adopt = Insert {
                            key,
                            from: file.path(),
                            size,
                            stored,
                            encoding,
                            origin: Origin::Recovered,
                            reservation: None,
                        };
                        tx.blocking_send(Op::Insert(adopt, done))
                            .map_err(|_| StoreError::Closed)?;
                        report.adopted += 1;
                    }
                    Err(e) => {
                        tracing::warn!(path = %file.path().display(), error = %e, "removing a blob that fails verification");
                        std::fs::remove_file(file.path())?;
                        report.corrupt_removed += 1;
                    }
                }
            }
        }
    }

    let mut missing = Vec::new();
    index.for_each(|key, entry| {
        if !layout.blob_path(&key, entry.encoding).exists() {
            missing.push(key);
        }
        !cancel.load(Ordering::Relaxed)
    })?;
    report.entries_dropped = missing.len() as u64;
    for key in missing {
        tx.blocking_send(Op::Forget(key))
            .map_err(|_| StoreError::Closed)?;
    }
    // Make the reconciled index durable before reporting success.
    let (done, wait) = oneshot::channel();
    tx.blocking_send(Op::Flush(done))
        .map_err(|_| StoreError::Closed)?;
    let _ = wait.blocking_recv();
    Ok(report)
}

/// Returns the logical size of a blob file if its content is sound: CAS blobs
/// must hash to their name; AC entries carry no content digest to check.
fn verify(path: &Path, key: &BlobKey, encoding: Encoding) -> io::Result<u64> {
    let file = std::fs::File::open(path)?;
    let mut reader: Box<dyn Read> = match encoding {
        Encoding::Identity => Box::new(file),
        Encoding::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
    };
    let mut hasher = Hasher::new(key.hash.function());
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let size = hasher.len();
    if key.kind == Kind::Cas && hasher.finish() != key.hash {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "content does not match its hash",
        ));
    }
    Ok(size)
}
