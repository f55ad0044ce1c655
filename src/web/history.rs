//! The last hour of traffic for the charts: a ring of [`CAPACITY`]
//! 10-second samples, filled by one sampler task from the cumulative
//! counters (`metrics::Traffic`, the lookup counts). Memory is fixed (360
//! small samples); the page reads a copy under a mutex the sampler takes
//! once per 10 s, so no request path ever waits on it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::metrics::traffic::ProtocolCounts;
use crate::metrics::{LookupTotals, Metrics};
use bazel_cache_digest::lock;

/// One hour of 10-second samples.
pub(crate) const CAPACITY: usize = 360;
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// One protocol's rates over one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Rates {
    pub(crate) requests_per_s: f64,
    pub(crate) bytes_in_per_s: f64,
    pub(crate) bytes_out_per_s: f64,
    /// Upper bound of the p99 latency bucket, in milliseconds.
    pub(crate) p99_ms: Option<f64>,
}

/// One interval of traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Sample {
    /// Unix seconds at the end of the interval.
    pub(crate) at: u64,
    pub(crate) http: Rates,
    pub(crate) grpc: Rates,
    /// Hits / lookups in percent; `None` without lookups.
    pub(crate) ac_hit_pct: Option<f64>,
    pub(crate) cas_hit_pct: Option<f64>,
}

fn rates(window: &ProtocolCounts, secs: f64) -> Rates {
    Rates {
        requests_per_s: window.requests as f64 / secs,
        bytes_in_per_s: window.bytes_in as f64 / secs,
        bytes_out_per_s: window.bytes_out as f64 / secs,
        p99_ms: window.p99().map(|d| d.as_secs_f64() * 1000.0),
    }
}

fn ratio(hits: u64, misses: u64) -> Option<f64> {
    let total = hits + misses;
    (total > 0).then(|| hits as f64 * 100.0 / total as f64)
}

/// What one reading of the counters holds.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    http: ProtocolCounts,
    grpc: ProtocolCounts,
    lookups: LookupTotals,
}

fn read(metrics: &Metrics) -> Reading {
    let (http, grpc) = metrics
        .traffic()
        .map(|t| (t.http.counts(), t.grpc.counts()))
        .unwrap_or_default();
    Reading {
        http,
        grpc,
        lookups: metrics.lookups().map(|l| l.totals()).unwrap_or_default(),
    }
}

fn sample(at: u64, now: &Reading, before: &Reading, secs: f64) -> Sample {
    let (l, b) = (&now.lookups, &before.lookups);
    Sample {
        at,
        http: rates(&now.http.since(&before.http), secs),
        grpc: rates(&now.grpc.since(&before.grpc), secs),
        ac_hit_pct: ratio(
            l.ac_hits.saturating_sub(b.ac_hits),
            l.ac_misses.saturating_sub(b.ac_misses),
        ),
        cas_hit_pct: ratio(
            l.cas_hits.saturating_sub(b.cas_hits),
            l.cas_misses.saturating_sub(b.cas_misses),
        ),
    }
}

/// The ring of samples.
pub(crate) struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl Default for History {
    fn default() -> Self {
        History {
            samples: Mutex::new(VecDeque::with_capacity(CAPACITY)),
        }
    }
}

impl History {
    pub(crate) fn push(&self, s: Sample) {
        let mut samples = lock(&self.samples);
        if samples.len() == CAPACITY {
            samples.pop_front();
        }
        samples.push_back(s);
    }

    /// The samples, oldest first.
    pub(crate) fn samples(&self) -> Vec<Sample> {
        lock(&self.samples).iter().copied().collect()
    }

    /// Starts the sampler; it stops when the metrics or the history go.
    pub(crate) fn spawn_sampler(self: &Arc<Self>, metrics: &Arc<Metrics>) {
        let history = Arc::downgrade(self);
        let metrics: Weak<Metrics> = Arc::downgrade(metrics);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut before = match metrics.upgrade() {
                Some(m) => read(&m),
                None => return,
            };
            let mut last = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let (Some(m), Some(h)) = (metrics.upgrade(), history.upgrade()) else {
                    return;
                };
                let now = read(&m);
                let secs = last.elapsed().as_secs_f64().max(1.0);
                last = tokio::time::Instant::now();
                h.push(sample(bazel_cache_store::unix_now(), &now, &before, secs));
                before = now;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_ordered() {
        let h = History::default();
        for i in 0..(CAPACITY as u64 + 5) {
            h.push(Sample {
                at: i,
                ..Sample::default()
            });
        }
        let s = h.samples();
        assert_eq!(s.len(), CAPACITY);
        assert_eq!((s[0].at, s[CAPACITY - 1].at), (5, CAPACITY as u64 + 4));
    }

    #[test]
    fn rates_and_ratios_of_a_window() {
        let mut now = Reading::default();
        now.http.requests = 50;
        now.http.bytes_out = 1000;
        now.lookups.ac_hits = 3;
        now.lookups.ac_misses = 1;
        let s = sample(7, &now, &Reading::default(), 10.0);
        assert_eq!(s.http.requests_per_s, 5.0);
        assert_eq!(s.http.bytes_out_per_s, 100.0);
        assert_eq!(s.ac_hit_pct, Some(75.0));
        assert_eq!(s.cas_hit_pct, None);
        assert_eq!(s.grpc.requests_per_s, 0.0);
    }
}
