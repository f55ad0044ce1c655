//! Prometheus metrics: `GET /metrics` on the HTTP port, in the Prometheus
//! text format (0.0.4, what bazel-remote serves), with bazel-remote's metric
//! names and labels so its dashboards keep working, plus the names the
//! design document's alerts query. README.md → Metrics lists them all.
//!
//! Cost on the request path:
//!
//! - Store, S3 and queue figures are not metrics that requests update: a
//!   `Collector` reads the counters the store already keeps (atomics) at
//!   scrape time.
//! - Per-request series (HTTP, gRPC, lookups) are cached handles: a request
//!   finds its series by index in a table of `OnceLock`s (no lock, no hash),
//!   and only unusual combinations (an odd method or status code) go through
//!   the family's map. Histograms are `AtomicHistogram`s: two atomic
//!   operations per observation, no lock (prometheus-client's own histogram
//!   takes a mutex per observation, which every GET would share).
//! - Without `enable_endpoint_metrics`, an HTTP request costs one atomic
//!   increment (`bazel_remote_http_request_total`, ~10 ns) and a gRPC call
//!   a pass-through layer. With it, an HTTP request costs ~100 ns (series
//!   lookup, counter, histogram, the timed body's allocation).
//!
//! One concern per file:
//!
//! - this file: the [`Metrics`] registry of one server, [`MetricsOptions`]
//!   and the `/metrics` page;
//! - `histogram.rs`: the Prometheus encoding of the store's lock-free
//!   histogram, and the constructor of histogram families;
//! - `store_collector.rs`: disk, S3 and upload-queue figures, read at scrape
//!   time;
//! - `proxy_caches.rs`: the S3 proxy's presence cache and timestamp
//!   refresher, read at scrape time;
//! - `connections.rs`: each port's connections (`bazel_cache_connections_*`),
//!   read at scrape time;
//! - `lookups.rs`: `bazel_remote_incoming_requests_total`;
//! - `process.rs`: the standard `process_*` metrics (CPU, memory, fds);
//! - `counting_store.rs`: the store decorator that counts gRPC lookups;
//! - `http.rs`: the per-request HTTP series;
//! - `grpc.rs`: the tower layer behind the `grpc_server_*` series;
//! - `access_log.rs`: the access-log lines of both front ends;
//! - `traffic.rs`: requests, bytes and latency per protocol for the web
//!   console's charts (with `web_console`, which also keeps the lookup and
//!   gRPC counters running, unexported, without endpoint metrics).

pub(crate) mod access_log;
mod connections;
mod counting_store;
mod grpc;
mod histogram;
mod http;
mod lookups;
mod process;
mod proxy_caches;
mod store_collector;
pub(crate) mod traffic;

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::registry::Registry;

use crate::config::Config;
use bazel_cache_store::disk::DiskStore;
use bazel_cache_store::histogram::DEFAULT_BUCKETS;
use bazel_cache_store::proxy::{PresenceCache, ProxyStore};
use bazel_cache_store::s3::S3Backend;

pub(crate) use counting_store::CountingStore;
pub(crate) use grpc::{GrpcMetrics, GrpcMetricsLayer};
pub(crate) use http::{Endpoint, HttpMetrics};
pub(crate) use lookups::{LookupTotals, Lookups};
pub(crate) use traffic::Traffic;

use histogram::Buckets;
use store_collector::{S3Refs, StoreCollector};

/// The `Content-Type` of `/metrics`.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How long a scrape waits for the index to report the least recently used
/// entry before it answers with the last value it knew.
const IDLE_TIME_READ_LIMIT: Duration = Duration::from_millis(500);

/// What to export, from the validated config.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MetricsOptions {
    /// `enable_endpoint_metrics`: the HTTP request duration histogram,
    /// `bazel_remote_incoming_requests_total` and the `grpc_server_*` family.
    pub(crate) endpoint_metrics: bool,
    /// `endpoint_metrics_duration_buckets`, ascending.
    pub(crate) duration_buckets: Vec<f64>,
    /// `http_metrics_prefix`: bazel-remote names its HTTP histogram
    /// `http_request_duration_seconds` unless this is set. We always export
    /// `bazel_remote_http_request_duration_seconds` (the design's alert
    /// queries it); without the prefix option the same histogram is also
    /// exported under bazel-remote's unprefixed name.
    pub(crate) http_metrics_prefix: bool,
    /// `web_console`: count traffic for its charts ([`Traffic`], lookups).
    pub(crate) console: bool,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions {
            endpoint_metrics: false,
            duration_buckets: DEFAULT_BUCKETS.to_vec(),
            http_metrics_prefix: false,
            console: false,
        }
    }
}

impl MetricsOptions {
    pub(crate) fn from_config(config: &Config) -> Self {
        MetricsOptions {
            endpoint_metrics: config.enable_endpoint_metrics,
            duration_buckets: config.endpoint_metrics_duration_buckets.clone(),
            http_metrics_prefix: config.http_metrics_prefix,
            console: config.web_console,
        }
    }
}

/// All metrics of one server, and what `/metrics` renders. `pub` (not
/// `pub(crate)`) only because the HTTP front end's public state holds it.
pub struct Metrics {
    registry: Registry,
    http: HttpMetrics,
    grpc: Option<Arc<GrpcMetrics>>,
    lookups: Option<Arc<Lookups>>,
    disk: Weak<DiskStore>,
    s3: Option<S3Refs>,
    /// The proxy over `http_proxy` or `grpc_proxy`, with the backend's name.
    url_proxy: Option<(Weak<ProxyStore>, &'static str)>,
    /// Last use of the least recently used entry (Unix seconds; 0 = empty),
    /// refreshed by each scrape before encoding.
    oldest_access: Arc<AtomicU64>,
    /// Per-protocol traffic for the web console, with `console`.
    traffic: Option<Arc<Traffic>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("endpoint_metrics", &self.grpc.is_some())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of a server over `disk` (and the S3 proxy, when there is
    /// one). The stores are held weakly: metrics never keep them open.
    pub(crate) fn new(
        opts: &MetricsOptions,
        disk: &Arc<DiskStore>,
        s3: Option<(&Arc<ProxyStore>, &Arc<S3Backend>)>,
    ) -> Metrics {
        let s3 = s3.map(|(proxy, backend)| S3Refs {
            proxy: Arc::downgrade(proxy),
            backend: Arc::downgrade(backend),
        });
        let mut registry = Registry::default();
        let buckets = Buckets(opts.duration_buckets.clone().into());

        // The console's hit ratios read the lookup counts, so with it they
        // are kept (but only exported with endpoint metrics).
        let traffic = opts.console.then(|| Arc::new(Traffic::default()));
        let counted = opts.endpoint_metrics || opts.console;
        let lookups = counted.then(|| {
            let lookups = Arc::new(Lookups::new());
            if opts.endpoint_metrics {
                registry.register(
                    "bazel_remote_incoming_requests",
                    "The number of incoming cache requests",
                    lookups.family.clone(),
                );
            }
            lookups
        });

        let http = HttpMetrics::new(opts, &buckets, lookups.clone());
        registry.register(
            "bazel_remote_http_request",
            "HTTP requests answered, by handler, method and status code",
            http.total.clone(),
        );
        if let Some(duration) = &http.duration {
            let help = "The latency of the HTTP requests, until the response body was sent";
            registry.register(
                "bazel_remote_http_request_duration_seconds",
                help,
                duration.clone(),
            );
            if !opts.http_metrics_prefix {
                registry.register("http_request_duration_seconds", help, duration.clone());
            }
        }

        let grpc = counted.then(|| {
            let grpc = Arc::new(
                GrpcMetrics::new(
                    &buckets,
                    lookups.clone().expect("lookups exist with endpoint metrics"),
                )
                .with_traffic(traffic.clone()),
            );
            if !opts.endpoint_metrics {
                return grpc;
            }
            registry.register(
                "grpc_server_started",
                "Total number of RPCs started on the server",
                grpc.started.clone(),
            );
            registry.register(
                "grpc_server_handled",
                "Total number of RPCs completed on the server, regardless of success or failure",
                grpc.handled.clone(),
            );
            registry.register(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
                grpc.handling.clone(),
            );
            grpc
        });

        let oldest_access = Arc::new(AtomicU64::new(0));
        registry.register_collector(Box::new(StoreCollector {
            disk: Arc::downgrade(disk),
            s3: s3.clone(),
            oldest_access: oldest_access.clone(),
        }));
        registry.register_collector(Box::new(process::ProcessCollector));
        Metrics {
            registry,
            http,
            grpc,
            lookups,
            disk: Arc::downgrade(disk),
            s3,
            url_proxy: None,
            oldest_access,
            traffic,
        }
    }

    /// Adds the `bazel_cache_connections_*` series of these ports.
    pub(crate) fn with_connections(
        mut self,
        ports: Vec<Arc<crate::listen::ConnectionStats>>,
    ) -> Metrics {
        self.registry
            .register_collector(Box::new(connections::ConnectionCollector { ports }));
        self
    }

    /// Adds the S3 proxy's presence cache and timestamp refresher figures
    /// (held weakly, like the stores).
    pub(crate) fn with_proxy_caches(
        mut self,
        proxy: Option<&Arc<ProxyStore>>,
        presence: Option<&Arc<PresenceCache>>,
    ) -> Metrics {
        if proxy.is_some() || presence.is_some() {
            self.registry
                .register_collector(Box::new(proxy_caches::ProxyCacheCollector {
                    proxy: proxy.map(Arc::downgrade),
                    presence: presence.map(Arc::downgrade),
                }));
        }
        self
    }

    /// The proxy over another cache (`backend`: `http` or `grpc`): its
    /// hits, misses and upload queue on `/metrics`.
    pub(crate) fn with_url_proxy(
        mut self,
        proxy: &Arc<ProxyStore>,
        backend: &'static str,
    ) -> Metrics {
        self.url_proxy = Some((Arc::downgrade(proxy), backend));
        self
    }

    pub(crate) fn http(&self) -> &HttpMetrics {
        &self.http
    }

    /// The `grpc_server_*` metrics, with endpoint metrics.
    pub(crate) fn grpc(&self) -> Option<Arc<GrpcMetrics>> {
        self.grpc.clone()
    }

    /// Per-protocol traffic, with the web console.
    pub(crate) fn traffic(&self) -> Option<&Arc<Traffic>> {
        self.traffic.as_ref()
    }

    /// `bazel_remote_incoming_requests_total`, with endpoint metrics (or
    /// the web console: counted, not exported).
    pub(crate) fn lookups(&self) -> Option<Arc<Lookups>> {
        self.lookups.clone()
    }

    /// The `/metrics` page. Reads counters only, plus one index snapshot
    /// bounded by [`IDLE_TIME_READ_LIMIT`]: it answers while the store is busy.
    pub(crate) async fn render(&self) -> String {
        self.refresh_oldest_access().await;
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        if let Some((proxy, _)) = self.s3.as_ref().and_then(S3Refs::upgrade) {
            // bazel-remote's two S3 counters have no `_total` suffix, which
            // prometheus-client always adds to counters; written by hand so
            // their names stay bazel-remote's exactly.
            let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
            legacy_counter(
                &mut out,
                "bazel_remote_s3_cache_hits",
                "The total number of s3 backend cache hits",
                n(&proxy.stats.hits),
            );
            legacy_counter(
                &mut out,
                "bazel_remote_s3_cache_misses",
                "The total number of s3 backend cache misses",
                n(&proxy.stats.misses),
            );
        }
        if let Some((proxy, backend)) = &self.url_proxy
            && let Some(proxy) = proxy.upgrade()
        {
            // bazel-remote's names for its http_proxy (`bazel_remote_http_cache_hits`),
            // the same scheme for grpc_proxy.
            let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
            legacy_counter(
                &mut out,
                &format!("bazel_remote_{backend}_cache_hits"),
                &format!("The total number of {backend} backend cache hits"),
                n(&proxy.stats.hits),
            );
            legacy_counter(
                &mut out,
                &format!("bazel_remote_{backend}_cache_misses"),
                &format!("The total number of {backend} backend cache misses"),
                n(&proxy.stats.misses),
            );
            legacy_counter(
                &mut out,
                &format!("bazel_cache_{backend}_proxy_corrupt_objects"),
                "Objects downloaded from the backend whose bytes did not match their digest (never served)",
                n(&proxy.stats.corrupt),
            );
            let _ = write!(
                out,
                "# HELP bazel_cache_{backend}_proxy_upload_queue_length Uploads queued for the backend and not yet done\n\
                 # TYPE bazel_cache_{backend}_proxy_upload_queue_length gauge\n\
                 bazel_cache_{backend}_proxy_upload_queue_length {}\n\
                 # HELP bazel_cache_{backend}_proxy_upload_queue_oldest_age_seconds How long the oldest upload still queued for the backend has waited (0 when none waits)\n\
                 # TYPE bazel_cache_{backend}_proxy_upload_queue_oldest_age_seconds gauge\n\
                 bazel_cache_{backend}_proxy_upload_queue_oldest_age_seconds {}\n",
                n(&proxy.queue_stats().pending),
                proxy.queue_stats().oldest_age().as_secs()
            );
        }
        out
    }

    async fn refresh_oldest_access(&self) {
        let Some(disk) = self.disk.upgrade() else {
            return;
        };
        let read = tokio::task::spawn_blocking(move || disk.oldest_access());
        match tokio::time::timeout(IDLE_TIME_READ_LIMIT, read).await {
            Ok(Ok(Ok(atime))) => self
                .oldest_access
                .store(atime.unwrap_or(0), Ordering::Relaxed),
            Ok(Ok(Err(e))) => {
                tracing::debug!(error = %e, "reading the LRU head for metrics failed")
            }
            Ok(Err(_)) => {}
            Err(_) => tracing::debug!("index busy; reporting the last known LRU idle time"),
        }
    }
}

fn legacy_counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
    );
}

/// A registry as Prometheus text, for the unit tests of the metric files.
#[cfg(test)]
fn encode_for_test(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry).unwrap();
    out
}
