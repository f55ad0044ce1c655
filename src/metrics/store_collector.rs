//! Store, S3 and upload-queue figures. These are not metrics that requests
//! update: the stores already keep them as atomics, and this collector reads
//! them when `/metrics` is scraped, so they cost nothing on the request path.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::histogram::AtomicHistogram;
use bazel_cache_store::budget::MemoryUse;
use bazel_cache_store::disk::{AdoptionStatus, DiskStore};
use bazel_cache_store::proxy::ProxyStore;
use bazel_cache_store::s3::S3Backend;
use bazel_cache_store::{CutReason, Store, StoreStats, unix_now};

/// The S3 tier, held weakly: metrics never keep the stores open.
#[derive(Debug, Clone)]
pub(super) struct S3Refs {
    pub(super) proxy: Weak<ProxyStore>,
    pub(super) backend: Weak<S3Backend>,
}

impl S3Refs {
    pub(super) fn upgrade(&self) -> Option<(Arc<ProxyStore>, Arc<S3Backend>)> {
        Some((self.proxy.upgrade()?, self.backend.upgrade()?))
    }
}

/// Store, S3 and upload-queue figures, read from the stores' own counters
/// at scrape time.
#[derive(Debug)]
pub(super) struct StoreCollector {
    pub(super) disk: Weak<DiskStore>,
    pub(super) s3: Option<S3Refs>,
    /// Last use of the least recently used entry (Unix seconds; 0 = empty),
    /// kept up to date by [`super::Metrics::render`].
    pub(super) oldest_access: Arc<AtomicU64>,
}

/// Ours: adopting a bazel-remote `dir` (disk/adopt.rs), once there was one.
fn adoption(enc: &mut DescriptorEncoder, a: &AdoptionStatus) -> fmt::Result {
    if *a == AdoptionStatus::default() {
        return Ok(());
    }
    gauge(
        enc,
        "bazel_cache_adopt_running",
        "1 while a bazel-remote directory is being adopted in the background",
        u64::from(a.running),
    )?;
    gauge(
        enc,
        "bazel_cache_adopt_found_files",
        "bazel-remote files found to adopt at this start",
        a.found,
    )?;
    let mut family = enc.encode_descriptor(
        "bazel_cache_adopt_files",
        "bazel-remote files taken care of, by outcome: adopted (verified, indexed), \
         duplicate (key stored already: deleted), corrupt (failed verification: deleted), \
         left_alone (unknown name, unsupported, unreadable), too_old (older than the \
         newest files that fill max_size: deleted unread)",
        None,
        MetricType::Counter,
    )?;
    for (outcome, value) in [
        ("adopted", a.adopted),
        ("duplicate", a.duplicates),
        ("corrupt", a.corrupt),
        ("left_alone", a.left_alone),
        ("too_old", a.too_old),
    ] {
        ConstCounter::new(value).encode(family.encode_family(&[("outcome", outcome)])?)?;
    }
    counter(
        enc,
        "bazel_cache_adopt_bytes",
        "Bytes on disk of the adopted bazel-remote files",
        a.adopted_bytes,
    )
}

pub(super) fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> fmt::Result {
    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

pub(super) fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for StoreCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        if let Some(disk) = self.disk.upgrade() {
            let s: StoreStats = disk.stats();
            gauge(
                &mut enc,
                "bazel_remote_disk_cache_size_bytes",
                "The current number of bytes in the disk backend (as stored: compressed where stored compressed)",
                s.stored_bytes,
            )?;
            let limit = ConstGauge::new(i64::try_from(s.max_bytes).unwrap_or(i64::MAX));
            let mut family = enc.encode_descriptor(
                "bazel_remote_disk_cache_size_bytes_limit",
                "The currently configured limits of different types, e.g. for when disk cache evicts data or rejects requests.",
                None,
                MetricType::Gauge,
            )?;
            limit.encode(family.encode_family(&[("type", "evict")])?)?;
            // bazel-remote's second series: writes are refused past
            // `max_size_hard_limit` (bytes stored plus bytes in flight).
            if let Some(hard) = disk.config().hard_limit_bytes {
                let reject = ConstGauge::new(i64::try_from(hard).unwrap_or(i64::MAX));
                reject.encode(family.encode_family(&[("type", "reject")])?)?;
            }
            gauge(
                &mut enc,
                "bazel_remote_disk_cache_logical_bytes",
                "The current number of bytes in the disk backend if they were uncompressed",
                s.logical_bytes,
            )?;
            gauge(
                &mut enc,
                "bazel_remote_disk_cache_reserved_bytes",
                "Bytes reserved by uploads in flight (eviction makes room for them)",
                s.reserved_bytes,
            )?;
            gauge(
                &mut enc,
                "bazel_remote_disk_cache_entries",
                "The number of entries in the disk cache index",
                s.entries,
            )?;
            counter(
                &mut enc,
                "bazel_remote_disk_cache_evicted_bytes",
                "The total number of bytes evicted from disk backend, due to full cache",
                s.evicted_bytes,
            )?;
            counter(
                &mut enc,
                "bazel_remote_disk_cache_evictions",
                "The total number of entries evicted from disk backend, due to full cache",
                disk.evictions(),
            )?;
            counter(
                &mut enc,
                "bazel_remote_disk_cache_overwritten_bytes",
                "The total number of bytes removed from disk backend, due to put of already existing key",
                s.overwritten_bytes,
            )?;
            // Ours: bodies the progress guard cut (HTTP PUT, BatchUpdateBlobs,
            // ByteStream Write), exported as bazel_cache_uploads_cut_total.
            let mut family = enc.encode_descriptor(
                "bazel_cache_uploads_cut",
                "Upload bodies abandoned because they sent nothing for http_read_timeout \
                 (stalled) or less than body_min_rate over body_rate_window (too_slow)",
                None,
                MetricType::Counter,
            )?;
            for reason in [CutReason::Stalled, CutReason::TooSlow] {
                ConstCounter::new(disk.uploads_cut().get(reason))
                    .encode(family.encode_family(&[("reason", reason.label())])?)?;
            }
            // Ours: group commit (fsync on). Every write of a batch waits
            // for its flushes, so this is where a slow disk shows first.
            let commits = disk.commits();
            AtomicHistogram(commits.flush_seconds().clone()).encode(enc.encode_descriptor(
                "bazel_cache_disk_flush_seconds",
                "Time each group commit spent flushing its batch of new blobs to stable \
                 storage (both flushes); every write in the batch waits for it",
                None,
                MetricType::Histogram,
            )?)?;
            AtomicHistogram(commits.blobs().clone()).encode(enc.encode_descriptor(
                "bazel_cache_disk_flush_blobs",
                "New blobs each group commit made durable (written, or adopted from bazel-remote)",
                None,
                MetricType::Histogram,
            )?)?;
            let atime = self.oldest_access.load(Ordering::Relaxed);
            let idle = if atime == 0 {
                0
            } else {
                unix_now().saturating_sub(atime)
            };
            gauge(
                &mut enc,
                "bazel_remote_disk_cache_longest_item_idle_time_seconds",
                "The idle time (now - atime) of the least recently used item in the cache; reads refresh an item's atime at most once a minute",
                idle,
            )?;
            // Ours: the memory budget (max_buffer_memory) every front end
            // and the store reserve buffers and zstd decoders from.
            let memory = &disk.config().memory;
            gauge(
                &mut enc,
                "bazel_cache_memory_in_use_bytes",
                "Bytes of zstd decoders, upload buffers and download buffers reserved now",
                memory.in_use(),
            )?;
            gauge(
                &mut enc,
                "bazel_cache_memory_limit_bytes",
                "max_buffer_memory: the most bytes of buffers and decoders reserved at once",
                memory.limit(),
            )?;
            let mut family = enc.encode_descriptor(
                "bazel_cache_memory_refused",
                "Requests refused (503 / RESOURCE_EXHAUSTED) because max_buffer_memory stayed \
                 full while they waited, by what they needed memory for",
                None,
                MetricType::Counter,
            )?;
            for what in MemoryUse::ALL {
                ConstCounter::new(memory.refused(what))
                    .encode(family.encode_family(&[("what", what.label())])?)?;
            }
            adoption(&mut enc, &disk.adoption())?;
        }
        let Some((proxy, backend)) = self.s3.as_ref().and_then(S3Refs::upgrade) else {
            return Ok(());
        };
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let requests = backend.request_stats();
        let mut family = enc.encode_descriptor(
            "bazel_remote_s3_requests",
            "S3 requests by outcome: ok, not_found (a miss) or error (connection, timeout, error answer)",
            None,
            MetricType::Counter,
        )?;
        for (status, value) in [
            ("ok", &requests.ok),
            ("not_found", &requests.not_found),
            ("error", &requests.errors),
        ] {
            ConstCounter::new(n(value)).encode(family.encode_family(&[("status", status)])?)?;
        }
        let used: Vec<_> = requests
            .latencies()
            .filter(|(_, h)| h.count() > 0)
            .collect();
        if !used.is_empty() {
            let mut family = enc.encode_descriptor(
                "bazel_remote_s3_request_duration_seconds",
                "Latency of S3 requests until their answer, by operation",
                None,
                MetricType::Histogram,
            )?;
            for (operation, histogram) in used {
                AtomicHistogram(histogram.clone())
                    .encode(family.encode_family(&[("operation", operation)])?)?;
            }
        }
        counter(
            &mut enc,
            "bazel_remote_s3_corrupt_objects",
            "Objects downloaded from S3 whose bytes did not match their digest (never served)",
            n(&proxy.stats.corrupt),
        )?;
        let q = proxy.queue_stats();
        gauge(
            &mut enc,
            "bazel_remote_s3_upload_queue_length",
            "Uploads queued for S3 and not yet done",
            n(&q.pending),
        )?;
        gauge(
            &mut enc,
            "bazel_remote_s3_upload_queue_limit",
            "max_queued_uploads: the queue length at which new uploads are dropped",
            proxy.max_queued_uploads() as u64,
        )?;
        counter(
            &mut enc,
            "bazel_remote_s3_uploads",
            "Uploads to S3 completed",
            n(&q.uploaded),
        )?;
        counter(
            &mut enc,
            "bazel_remote_s3_uploads_dropped",
            "Uploads not queued because the queue was full (the blob stays in the local cache)",
            n(&q.dropped_full),
        )?;
        counter(
            &mut enc,
            "bazel_remote_s3_uploads_abandoned",
            "Uploads given up: evicted locally first, refused by S3 (4xx) after three attempts, or AC entries whose referenced blobs never reached S3",
            n(&q.abandoned),
        )?;
        counter(
            &mut enc,
            "bazel_remote_s3_upload_retries",
            "Upload attempts that failed and were scheduled again (and AC entries checked again for blobs S3 lacks)",
            n(&q.retries),
        )?;
        gauge(
            &mut enc,
            "bazel_cache_s3_upload_queue_oldest_age_seconds",
            "How long the oldest upload still queued for S3 has waited (0 when none waits): how far behind S3 is",
            q.oldest_age().as_secs(),
        )?;
        gauge(
            &mut enc,
            "bazel_cache_s3_ac_uploads_waiting",
            "AC entries whose upload waits for the upload of CAS blobs they reference",
            proxy.ac_uploads_waiting() as u64,
        )?;
        counter(
            &mut enc,
            "bazel_cache_s3_ac_upload_waits",
            "Times an AC entry's upload was set aside until CAS blobs it references were uploaded",
            n(&q.waited),
        )?;
        Ok(())
    }
}
