//! The S3 proxy's presence cache and timestamp refresher, read at scrape
//! time from their own counters: how many HEADs reached S3 and how many
//! existence checks the cache answered (the HEAD storm it saves, bazel-remote
//! issue #919), and what `update_timestamps` refreshed or skipped. The
//! names are ours, hence `bazel_cache_`.

use std::fmt;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use super::store_collector::{counter, gauge};
use bazel_cache_store::proxy::{PresenceCache, ProxyStore};

#[derive(Debug)]
pub(super) struct ProxyCacheCollector {
    pub(super) proxy: Option<Weak<ProxyStore>>,
    pub(super) presence: Option<Weak<PresenceCache>>,
}

fn labelled(
    enc: &mut DescriptorEncoder,
    (name, help, label): (&str, &str, &str),
    series: &[(&str, &AtomicU64)],
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in series {
        ConstCounter::new(n.load(Ordering::Relaxed))
            .encode(family.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

impl Collector for ProxyCacheCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        if let Some(cache) = self.presence.as_ref().and_then(Weak::upgrade) {
            let s = &cache.stats;
            counter(
                &mut enc,
                "bazel_cache_presence_cache_heads",
                "HEAD requests the presence cache sent to the proxy backend",
                n(&s.heads),
            )?;
            labelled(
                &mut enc,
                (
                    "bazel_cache_presence_cache_answers",
                    "Existence checks (and downloads of absent objects) answered from the \
                     presence cache without a backend request, by answer",
                    "answer",
                ),
                &[("present", &s.cached_present), ("absent", &s.cached_absent)],
            )?;
            counter(
                &mut enc,
                "bazel_cache_presence_cache_coalesced",
                "Existence checks that waited for another check's HEAD of the same object",
                n(&s.coalesced),
            )?;
            gauge(
                &mut enc,
                "bazel_cache_presence_cache_entries",
                "Existence answers held by the presence cache",
                cache.entries() as u64,
            )?;
        }
        let proxy = self.proxy.as_ref().and_then(Weak::upgrade);
        if let Some(r) = proxy.as_ref().and_then(|p| p.refresh_stats()) {
            labelled(
                &mut enc,
                (
                    "bazel_cache_timestamp_refreshes",
                    "update_timestamps: uses of a blob by outcome: queued (a refresh of its \
                     object was queued), skipped (refreshed within the interval), dropped \
                     (queue full), failed (the backend refused or did not answer)",
                    "outcome",
                ),
                &[
                    ("queued", &r.queued),
                    ("skipped", &r.skipped_recent),
                    ("dropped", &r.dropped),
                    ("failed", &r.failed),
                ],
            )?;
        }
        Ok(())
    }
}
