//! Upload order: an ActionResult reaches the backend only after the CAS
//! blobs it references, so a replica reading through the bucket never
//! finds an AC entry whose outputs are missing (it would serve a hit the
//! client cannot download, or, checking completeness, a miss while the
//! outputs are still on their way).
//!
//! Before an AC entry is uploaded its blobs (output files, output
//! directory trees and the files inside those trees when the tree is stored
//! here, stdout, stderr) are checked, each by the cheapest answer:
//!
//! 1. still in this replica's upload queue: the entry is parked
//!    (`waits.rs`) and scheduled again when the last of them leaves the
//!    queue; no uploader waits, nothing polls;
//! 2. uploaded by this queue lately: in the backend;
//! 3. otherwise a HEAD asks the backend.
//!
//! A blob the backend lacks but this replica stores (its upload was
//! dropped by a full queue, or abandoned earlier) is queued again and
//! waited for. A blob nobody has may never arrive: the entry is checked
//! again with [`backoff`] and, after `ac_output_checks` such checks,
//! abandoned with an error naming the missing blobs (it stays served
//! locally). A backend that does not answer is not a missing blob: the
//! entry waits with backoff like any upload, however long the outage.
//!
//! Nothing here is persisted beyond the queue itself: after a restart
//! (kill -9 included) the reloaded AC entries are checked again, against
//! the reloaded queue, before any upload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bazel_cache_digest::{BlobKey, Digest, Hash, Kind};
use futures_util::StreamExt;

use super::{HEAD_CONCURRENCY, Presence, ProxyStore, backoff};
use crate::action_result::{self, MAX_ACTION_RESULT_BYTES};
use crate::{Store, StoreError, lock, read_all};

/// Default for [`super::ProxyConfig::ac_output_checks`]: with [`backoff`]
/// between checks, about two minutes for a missing blob to appear.
pub const DEFAULT_AC_OUTPUT_CHECKS: u32 = 7;

/// Checks of one AC entry so far (this process).
#[derive(Default, Clone, Copy)]
struct Checks {
    /// The backend lacked some blob.
    missing: u32,
    /// The backend did not answer.
    failed: u32,
}

/// What became of the check of one AC entry.
#[derive(Default)]
pub(super) struct UploadOrder {
    checks: Mutex<HashMap<BlobKey, Checks>>,
}

/// What the backend said about the blobs not known to be there.
enum Found {
    All,
    Missing(Vec<Digest>),
    /// No answer for some blob (network, 5xx): ask again later.
    Unknown,
}

impl ProxyStore {
    /// AC entries whose upload waits for blobs still queued.
    pub fn ac_uploads_waiting(&self) -> usize {
        self.queue.parked()
    }

    /// Whether `key` may be uploaded now. `false`: the check parked it,
    /// scheduled it again later, or abandoned it.
    pub(super) async fn ready_to_upload(self: &Arc<Self>, key: BlobKey) -> bool {
        if key.kind != Kind::Ac {
            return true;
        }
        let blobs = match self.ac_outputs(&key).await {
            Ok(blobs) => blobs,
            Err(e) => {
                // Not readable here: the upload itself finds out (and
                // abandons an entry no longer stored).
                tracing::debug!(%key, error = %e, "reading an AC entry before its upload failed");
                return true;
            }
        };
        let hashes: Vec<Hash> = blobs.iter().map(|d| d.hash).collect();
        if self.queue.park(key, &hashes) {
            self.queue
                .stats
                .waited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        let missing = match self.find_in_backend(&blobs).await {
            Found::All => {
                lock(&self.order.checks).remove(&key);
                return true;
            }
            Found::Unknown => {
                let failed = self.note_check(key, |c| &mut c.failed);
                self.check_later(key, backoff(failed.saturating_sub(1)));
                return false;
            }
            Found::Missing(missing) => missing,
        };
        // Blobs stored here but not queued (dropped by a full queue,
        // abandoned after errors): queue them again.
        for d in &missing {
            let cas = BlobKey::cas(d.hash);
            if let Ok(Some(size)) = self.local.contains(&cas).await
                && size == d.size
            {
                let _ = self.queue.add(cas).await;
            }
        }
        let checks = self.note_check(key, |c| &mut c.missing);
        if checks > self.cfg.ac_output_checks {
            lock(&self.order.checks).remove(&key);
            let shown: Vec<String> = missing
                .iter()
                .take(5)
                .map(|d| format!("{}/{}", d.hash.to_hex(), d.size))
                .collect();
            let object = self.backend.locate(&key);
            tracing::error!(
                object,
                checks,
                missing = missing.len(),
                blobs = shown.join(", "),
                "AC entry not uploaded: blobs it references are in neither the backend nor this replica's queue; it stays in the local cache only"
            );
            // Counted as abandoned by the queue as it drops the row.
            self.queue.done(key).await;
            return false;
        }
        let hashes: Vec<Hash> = missing.iter().map(|d| d.hash).collect();
        if !self.queue.park(key, &hashes) {
            self.check_later(key, backoff(checks - 1));
        }
        false
    }

    /// Counts one more check of `key` of the kind `field` picks.
    fn note_check(&self, key: BlobKey, field: impl Fn(&mut Checks) -> &mut u32) -> u32 {
        let mut checks = lock(&self.order.checks);
        let n = field(checks.entry(key).or_default());
        *n += 1;
        *n
    }

    /// Schedules `key` again after `delay`, without holding an uploader.
    fn check_later(self: &Arc<Self>, key: BlobKey, delay: Duration) {
        self.queue
            .stats
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let queue = Arc::downgrade(&self.queue);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(queue) = queue.upgrade() {
                queue.retry_later(key);
            }
        });
    }

    /// The non-empty CAS blobs the AC entry `key` references. An entry that
    /// is not an ActionResult (HTTP PUTs with validation disabled) has none.
    async fn ac_outputs(&self, key: &BlobKey) -> Result<Vec<Digest>, StoreError> {
        let local: &dyn Store = self.local.as_ref();
        let Some(bytes) = read_all(local, key, MAX_ACTION_RESULT_BYTES).await? else {
            return Ok(Vec::new());
        };
        let function = key.hash.function();
        let Ok(ar) = action_result::decode(function, &bytes) else {
            return Ok(Vec::new());
        };
        let mut blobs = action_result::referenced_blobs(function, &ar);
        for tree in action_result::tree_digests(function, &ar) {
            if let Ok(Some(tree)) = action_result::read_tree(local, &tree).await {
                blobs.extend(action_result::tree_files(function, &tree));
            }
        }
        // The empty blob is never stored or uploaded (`empty_blob.rs`).
        blobs.retain(|d| d.size > 0);
        blobs.sort_by_key(|d| (d.hash, d.size));
        blobs.dedup();
        Ok(blobs)
    }

    /// Which of `blobs` the backend lacks, asking only about those this
    /// queue did not upload lately.
    async fn find_in_backend(&self, blobs: &[Digest]) -> Found {
        let unknown: Vec<Digest> = blobs
            .iter()
            .filter(|d| !self.queue.recently_uploaded(&d.hash))
            .copied()
            .collect();
        let answers: Vec<(Digest, Option<bool>)> = futures_util::stream::iter(unknown)
            .map(|d| async move {
                let key = BlobKey::cas(d.hash);
                let found = match self.backend.head(&key).await {
                    Ok(Presence::Present { size }) => Some(size.is_none_or(|s| s == d.size)),
                    Ok(Presence::Absent) => Some(false),
                    Err(e) => {
                        self.note_error("HEAD", &key, &e);
                        None
                    }
                };
                (d, found)
            })
            .buffer_unordered(HEAD_CONCURRENCY)
            .collect()
            .await;
        if answers.iter().any(|(_, found)| found.is_none()) {
            return Found::Unknown;
        }
        let missing: Vec<Digest> = answers
            .into_iter()
            .filter(|(_, found)| *found == Some(false))
            .map(|(d, _)| d)
            .collect();
        if missing.is_empty() {
            Found::All
        } else {
            Found::Missing(missing)
        }
    }
}
