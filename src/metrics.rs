//! Prometheus metrics: `GET /metrics` on the HTTP port, in the Prometheus
//! text format (0.0.4, what bazel-remote serves), with bazel-remote's metric
//! names and labels so its dashboards keep working, plus the names the
//! design document's alerts query. README.md → Metrics lists them all.
//!
//! Cost on the request path:
//!
//! - Store, S3 and queue figures are not metrics that requests update: a
//!   [`Collector`] reads the counters the store already keeps (atomics) at
//!   scrape time.
//! - Per-request series (HTTP, gRPC, lookups) are cached handles: a request
//!   finds its series by index in a table of `OnceLock`s (no lock, no hash),
//!   and only unusual combinations (an odd method or status code) go through
//!   the family's map. Histograms are [`AtomicHistogram`]s: two atomic
//!   operations per observation, no lock (prometheus-client's own histogram
//!   takes a mutex per observation, which every GET would share).
//! - Without `enable_endpoint_metrics`, an HTTP request costs one atomic
//!   increment (`bazel_remote_http_request_total`, ~10 ns) and a gRPC call
//!   a pass-through layer. With it, an HTTP request costs ~100 ns (series
//!   lookup, counter, histogram, the timed body's allocation).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::digest::{BlobKey, Digest, Kind};
use crate::store::disk::DiskStore;
use crate::store::s3::S3ProxyStore;
use crate::store::{Blob, PutRequest, Store, StoreError, StoreStats, unix_now};

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// bazel-remote's default `endpoint_metrics_duration_buckets`.
pub const DEFAULT_DURATION_BUCKETS: [f64; 10] =
    [0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0];

/// How long a scrape waits for the index to report the least recently used
/// entry before it answers with the last value it knew.
const IDLE_TIME_READ_LIMIT: Duration = Duration::from_millis(500);

/// What to export, from the validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsOptions {
    /// `enable_endpoint_metrics`: the HTTP request duration histogram,
    /// `bazel_remote_incoming_requests_total` and the `grpc_server_*` family.
    pub endpoint_metrics: bool,
    /// `endpoint_metrics_duration_buckets`, ascending.
    pub duration_buckets: Vec<f64>,
    /// `http_metrics_prefix`: bazel-remote names its HTTP histogram
    /// `http_request_duration_seconds` unless this is set. We always export
    /// `bazel_remote_http_request_duration_seconds` (the design's alert
    /// queries it); without the prefix option the same histogram is also
    /// exported under bazel-remote's unprefixed name.
    pub http_metrics_prefix: bool,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions {
            endpoint_metrics: false,
            duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            http_metrics_prefix: false,
        }
    }
}

impl MetricsOptions {
    pub fn from_config(config: &Config) -> Self {
        MetricsOptions {
            endpoint_metrics: config.enable_endpoint_metrics,
            duration_buckets: config.endpoint_metrics_duration_buckets.clone(),
            http_metrics_prefix: config.http_metrics_prefix,
        }
    }
}

// ---------------------------------------------------------------------------
// A lock-free histogram
// ---------------------------------------------------------------------------

/// A classic Prometheus histogram updated with atomics only: an observation
/// is one `fetch_add` on its bucket and a compare-and-swap on the sum.
/// `_count` is the sum of the bucket counts read at scrape time, so it always
/// equals the `+Inf` bucket.
#[derive(Clone, Debug)]
pub struct AtomicHistogram(Arc<HistogramCells>);

#[derive(Debug)]
struct HistogramCells {
    /// Finite upper bounds, ascending.
    bounds: Box<[f64]>,
    /// One count per bound and one for `+Inf`; not cumulative.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram with these upper bounds (non-finite ones are dropped:
    /// `+Inf` is always there).
    pub fn new(bounds: &[f64]) -> Self {
        let mut bounds: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram(Arc::new(HistogramCells {
            bounds: bounds.into(),
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    pub fn observe(&self, value: f64) {
        let cells = &*self.0;
        // First bucket whose upper bound is >= value (`le` is inclusive).
        let index = cells.bounds.partition_point(|b| *b < value);
        cells.counts[index].fetch_add(1, Ordering::Relaxed);
        let mut current = cells.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match cells.sum.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// `(sum, count, [(upper bound, count in that bucket)])`, `+Inf` last.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let cells = &*self.0;
        let buckets: Vec<(f64, u64)> = cells
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(cells.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = f64::from_bits(cells.sum.load(Ordering::Relaxed));
        (sum, count, buckets)
    }
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(
            sum,
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

/// Makes the histograms of a family, all with the same buckets.
#[derive(Clone, Debug)]
struct Buckets(Arc<[f64]>);

impl MetricConstructor<AtomicHistogram> for Buckets {
    fn new_metric(&self) -> AtomicHistogram {
        AtomicHistogram::new(&self.0)
    }
}

type HistogramFamily<L> = Family<L, AtomicHistogram, Buckets>;

// ---------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------

/// All metrics of one server, and what `/metrics` renders.
pub struct Metrics {
    registry: Registry,
    http: HttpMetrics,
    grpc: Option<Arc<GrpcMetrics>>,
    lookups: Option<Arc<Lookups>>,
    disk: Weak<DiskStore>,
    s3: Option<Weak<S3ProxyStore>>,
    /// Last use of the least recently used entry (Unix seconds; 0 = empty),
    /// refreshed by each scrape before encoding.
    oldest_access: Arc<AtomicU64>,
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
    pub fn new(
        opts: &MetricsOptions,
        disk: &Arc<DiskStore>,
        s3: Option<&Arc<S3ProxyStore>>,
    ) -> Metrics {
        let mut registry = Registry::default();
        let buckets = Buckets(opts.duration_buckets.clone().into());

        let lookups = opts.endpoint_metrics.then(|| {
            let lookups = Arc::new(Lookups::new());
            registry.register(
                "bazel_remote_incoming_requests",
                "The number of incoming cache requests",
                lookups.family.clone(),
            );
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

        let grpc = opts.endpoint_metrics.then(|| {
            let grpc = Arc::new(GrpcMetrics::new(
                &buckets,
                lookups.clone().expect("lookups exist with endpoint metrics"),
            ));
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
            s3: s3.map(Arc::downgrade),
            oldest_access: oldest_access.clone(),
        }));
        Metrics {
            registry,
            http,
            grpc,
            lookups,
            disk: Arc::downgrade(disk),
            s3: s3.map(Arc::downgrade),
            oldest_access,
        }
    }

    pub fn http(&self) -> &HttpMetrics {
        &self.http
    }

    /// The `grpc_server_*` metrics, with endpoint metrics.
    pub fn grpc(&self) -> Option<Arc<GrpcMetrics>> {
        self.grpc.clone()
    }

    /// `bazel_remote_incoming_requests_total`, with endpoint metrics.
    pub fn lookups(&self) -> Option<Arc<Lookups>> {
        self.lookups.clone()
    }

    /// The `/metrics` page. Reads counters only, plus one index snapshot
    /// bounded by [`IDLE_TIME_READ_LIMIT`]: it answers while the store is busy.
    pub async fn render(&self) -> String {
        self.refresh_oldest_access().await;
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        if let Some(proxy) = self.s3.as_ref().and_then(Weak::upgrade) {
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

/// Store, S3 and upload-queue figures, read from the stores' own counters
/// at scrape time.
#[derive(Debug)]
struct StoreCollector {
    disk: Weak<DiskStore>,
    s3: Option<Weak<S3ProxyStore>>,
    oldest_access: Arc<AtomicU64>,
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
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
        }
        let Some(proxy) = self.s3.as_ref().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let requests = proxy.request_stats();
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
                histogram.encode(family.encode_family(&[("operation", operation)])?)?;
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
            "Uploads given up: evicted locally first, or refused by S3 (4xx) after three attempts",
            n(&q.abandoned),
        )?;
        counter(
            &mut enc,
            "bazel_remote_s3_upload_retries",
            "Upload attempts that failed and were scheduled again",
            n(&q.retries),
        )?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// bazel_remote_incoming_requests_total
// ---------------------------------------------------------------------------

/// bazel-remote's `method` label: `get` or `contains` (puts are not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupMethod {
    Get = 0,
    Contains = 1,
}

/// bazel-remote's `kind` label. `raw` is an HTTP `/ac/` entry with
/// `disable_http_ac_validation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    Ac = 0,
    Cas = 1,
    Raw = 2,
}

impl From<Kind> for LookupKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Ac => LookupKind::Ac,
            Kind::Cas => LookupKind::Cas,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    method: &'static str,
    kind: &'static str,
    status: &'static str,
}

/// `bazel_remote_incoming_requests_total{method,kind,status}`: cache
/// lookups by outcome (`hit` or `miss`), as bazel-remote counts them.
pub struct Lookups {
    family: Family<LookupLabels, Counter>,
    cells: [OnceLock<Counter>; 12],
}

impl Lookups {
    fn new() -> Self {
        let lookups = Lookups {
            family: Family::default(),
            cells: Default::default(),
        };
        // The series bazel-remote creates at zero at start.
        for (method, kind) in [
            (LookupMethod::Get, LookupKind::Cas),
            (LookupMethod::Contains, LookupKind::Cas),
            (LookupMethod::Get, LookupKind::Ac),
        ] {
            for hit in [true, false] {
                lookups.counter(method, kind, hit);
            }
        }
        lookups
    }

    fn counter(&self, method: LookupMethod, kind: LookupKind, hit: bool) -> &Counter {
        let index = (method as usize * 3 + kind as usize) * 2 + usize::from(hit);
        self.cells[index].get_or_init(|| {
            self.family.get_or_create_owned(&LookupLabels {
                method: match method {
                    LookupMethod::Get => "get",
                    LookupMethod::Contains => "contains",
                },
                kind: match kind {
                    LookupKind::Ac => "ac",
                    LookupKind::Cas => "cas",
                    LookupKind::Raw => "raw",
                },
                status: if hit { "hit" } else { "miss" },
            })
        })
    }

    pub fn record(&self, method: LookupMethod, kind: LookupKind, hit: bool) {
        self.counter(method, kind, hit).inc();
    }

    fn record_many(&self, method: LookupMethod, kind: LookupKind, hits: u64, misses: u64) {
        if hits > 0 {
            self.counter(method, kind, true).inc_by(hits);
        }
        if misses > 0 {
            self.counter(method, kind, false).inc_by(misses);
        }
    }
}

tokio::task_local! {
    /// Set while an ActionCache RPC runs: its store calls (the AC entry,
    /// the CAS checks behind it, inlined outputs) are not counted one by
    /// one; the RPC counts once, as `get ac` hit or miss by its outcome,
    /// like bazel-remote's GetValidatedActionResult.
    static IN_ACTION_CACHE_RPC: ();
}

fn in_action_cache_rpc() -> bool {
    IN_ACTION_CACHE_RPC.try_with(|_| ()).is_ok()
}

/// The store the gRPC services use when endpoint metrics are on: counts
/// lookups (`get`, `contains`, `FindMissingBlobs`) into
/// `bazel_remote_incoming_requests_total`, as bazel-remote's metrics
/// decorator does around its cache. (HTTP counts in its request wrapper.)
pub struct CountingStore {
    inner: Arc<dyn Store>,
    lookups: Arc<Lookups>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn Store>, lookups: Arc<Lookups>) -> Self {
        CountingStore { inner, lookups }
    }
}

#[async_trait]
impl Store for CountingStore {
    async fn get(&self, key: &BlobKey, accept_zstd: bool) -> Result<Option<Blob>, StoreError> {
        let found = self.inner.get(key, accept_zstd).await?;
        if !in_action_cache_rpc() {
            self.lookups
                .record(LookupMethod::Get, key.kind.into(), found.is_some());
        }
        Ok(found)
    }

    async fn contains(&self, key: &BlobKey) -> Result<Option<u64>, StoreError> {
        let found = self.inner.contains(key).await?;
        if !in_action_cache_rpc() {
            self.lookups
                .record(LookupMethod::Contains, key.kind.into(), found.is_some());
        }
        Ok(found)
    }

    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let missing = self.inner.find_missing(digests).await?;
        if !in_action_cache_rpc() {
            let misses = missing.len() as u64;
            let hits = (digests.len() as u64).saturating_sub(misses);
            self.lookups
                .record_many(LookupMethod::Contains, LookupKind::Cas, hits, misses);
        }
        Ok(missing)
    }

    async fn put(&self, req: PutRequest) -> Result<(), StoreError> {
        self.inner.put(req).await
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// Which handler answered, bazel-remote's `handler` label: the method for
/// cache requests, `status` or `metrics` for those pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Cache = 0,
    Status = 1,
    Metrics = 2,
}

impl Endpoint {
    pub fn of(path: &str) -> Endpoint {
        match path {
            "/status" => Endpoint::Status,
            "/metrics" => Endpoint::Metrics,
            _ => Endpoint::Cache,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    code: u16,
    handler: &'static str,
    method: &'static str,
}

/// The method as a label value; extension methods are all `other`, so a
/// client cannot create series at will.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Status codes this server answers with, whose series are cached.
const CACHED_CODES: [u16; 6] = [200, 400, 404, 405, 500, 507];
const CACHED_METHODS: usize = 3; // GET, HEAD, PUT
const ENDPOINTS: usize = 3;

#[derive(Clone)]
struct HttpSeries {
    total: Counter,
    duration: Option<AtomicHistogram>,
}

/// Per-request HTTP metrics.
pub struct HttpMetrics {
    total: Family<HttpLabels, Counter>,
    duration: Option<HistogramFamily<HttpLabels>>,
    /// Series by (endpoint, method, code) for the usual combinations.
    cached: Box<[OnceLock<HttpSeries>]>,
    lookups: Option<Arc<Lookups>>,
}

impl HttpMetrics {
    fn new(opts: &MetricsOptions, buckets: &Buckets, lookups: Option<Arc<Lookups>>) -> Self {
        HttpMetrics {
            total: Family::default(),
            duration: opts
                .endpoint_metrics
                .then(|| Family::new_with_constructor(buckets.clone())),
            cached: (0..ENDPOINTS * CACHED_METHODS * CACHED_CODES.len())
                .map(|_| OnceLock::new())
                .collect(),
            lookups,
        }
    }

    fn series(&self, endpoint: Endpoint, method: &Method, code: u16) -> Cow<'_, HttpSeries> {
        let make = || {
            let method = method_label(method);
            let labels = HttpLabels {
                code,
                handler: match endpoint {
                    Endpoint::Cache => method,
                    Endpoint::Status => "status",
                    Endpoint::Metrics => "metrics",
                },
                method,
            };
            HttpSeries {
                total: self.total.get_or_create_owned(&labels),
                duration: self
                    .duration
                    .as_ref()
                    .map(|family| family.get_or_create_owned(&labels)),
            }
        };
        let method_index = match *method {
            Method::GET => Some(0),
            Method::HEAD => Some(1),
            Method::PUT => Some(2),
            _ => None,
        };
        let code_index = CACHED_CODES.iter().position(|c| *c == code);
        match (method_index, code_index) {
            (Some(m), Some(c)) => {
                let index = (endpoint as usize * CACHED_METHODS + m) * CACHED_CODES.len() + c;
                Cow::Borrowed(self.cached[index].get_or_init(make))
            }
            _ => Cow::Owned(make()),
        }
    }

    /// Counts an answered request; with endpoint metrics, returns the timer
    /// that observes its duration once the response body has been sent
    /// (bazel-remote's handlers return after writing the body, so its
    /// durations include sending it).
    pub fn record(
        &self,
        endpoint: Endpoint,
        method: &Method,
        status: StatusCode,
        started: Instant,
    ) -> Option<RequestTimer> {
        let series = self.series(endpoint, method, status.as_u16());
        series.total.inc();
        series.duration.as_ref().map(|histogram| RequestTimer {
            histogram: histogram.clone(),
            started,
        })
    }

    /// Counts a `GET` (get) or `HEAD` (contains) of a cache entry as hit
    /// (200) or miss (404), with endpoint metrics. `path` is the request
    /// path; `validate_ac` false makes `/ac/` entries bazel-remote's `raw`.
    pub fn record_lookup(
        &self,
        method: &Method,
        path: &str,
        validate_ac: bool,
        status: StatusCode,
    ) {
        let Some(lookups) = &self.lookups else {
            return;
        };
        let method = match *method {
            Method::GET => LookupMethod::Get,
            Method::HEAD => LookupMethod::Contains,
            _ => return,
        };
        let hit = match status {
            StatusCode::OK => true,
            StatusCode::NOT_FOUND => false,
            _ => return,
        };
        // A 200 or 404 for `.../ac/<hash>` or `.../cas/<hash>` means the
        // path parsed (a malformed one is a 400).
        let mut segments = path.rsplit('/');
        let _hash = segments.next();
        let kind = match segments.next() {
            Some("ac") if validate_ac => LookupKind::Ac,
            Some("ac") => LookupKind::Raw,
            Some("cas") => LookupKind::Cas,
            _ => return,
        };
        lookups.record(method, kind, hit);
    }
}

/// Observes a request's duration when dropped.
pub struct RequestTimer {
    histogram: AtomicHistogram,
    started: Instant,
}

impl RequestTimer {
    /// `body`, observing the duration when it has been sent (or dropped).
    pub fn wrap<B>(self, body: B) -> TimedBody<B> {
        TimedBody {
            inner: body,
            _timer: self,
        }
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

/// A response body that observes the request duration when hyper drops it:
/// after the last byte went out, or when the client went away.
pub struct TimedBody<B> {
    inner: B,
    _timer: RequestTimer,
}

impl<B: HttpBody + Unpin> HttpBody for TimedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------
// gRPC: go-grpc-prometheus's server metrics
// ---------------------------------------------------------------------------

/// Every RPC this server serves: (service, method, go-grpc-prometheus's
/// `grpc_type`). Calls of other paths are not counted (as in grpc-go, whose
/// interceptors never see unknown methods), so clients cannot create series.
const GRPC_METHODS: [(&str, &str, &str); 16] = [
    (CAPABILITIES, "GetCapabilities", "unary"),
    (ACTION_CACHE, "GetActionResult", "unary"),
    (ACTION_CACHE, "UpdateActionResult", "unary"),
    (CAS, "FindMissingBlobs", "unary"),
    (CAS, "BatchUpdateBlobs", "unary"),
    (CAS, "BatchReadBlobs", "unary"),
    (CAS, "GetTree", "server_stream"),
    (CAS, "SplitBlob", "unary"),
    (CAS, "SpliceBlob", "unary"),
    (CAS, "GetChunkMapping", "unary"),
    (CAS, "RegisterChunkMapping", "unary"),
    (BYTESTREAM, "Read", "server_stream"),
    (BYTESTREAM, "Write", "client_stream"),
    (BYTESTREAM, "QueryWriteStatus", "unary"),
    (HEALTH, "Check", "unary"),
    (HEALTH, "Watch", "server_stream"),
];
const CAPABILITIES: &str = "build.bazel.remote.execution.v2.Capabilities";
const ACTION_CACHE: &str = "build.bazel.remote.execution.v2.ActionCache";
const CAS: &str = "build.bazel.remote.execution.v2.ContentAddressableStorage";
const BYTESTREAM: &str = "google.bytestream.ByteStream";
const HEALTH: &str = "grpc.health.v1.Health";
/// Index of GetActionResult in [`GRPC_METHODS`].
const GET_ACTION_RESULT: usize = 1;

/// gRPC status codes by number, named as grpc-go's `codes.Code.String()`.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CODE_CANCELED: i32 = 1;
const CODE_UNKNOWN: i32 = 2;
const CODE_NOT_FOUND: i32 = 5;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    grpc_method: &'static str,
    grpc_service: &'static str,
    grpc_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcHandledLabels {
    grpc_code: &'static str,
    grpc_method: &'static str,
    grpc_service: &'static str,
    grpc_type: &'static str,
}

#[derive(Default)]
struct MethodSeries {
    started: OnceLock<Counter>,
    handling: OnceLock<AtomicHistogram>,
    handled: [OnceLock<Counter>; 17],
}

/// `grpc_server_started_total`, `grpc_server_handled_total` and
/// `grpc_server_handling_seconds`, with go-grpc-prometheus's labels.
pub struct GrpcMetrics {
    started: Family<GrpcLabels, Counter>,
    handled: Family<GrpcHandledLabels, Counter>,
    handling: HistogramFamily<GrpcLabels>,
    series: Box<[MethodSeries]>,
    lookups: Arc<Lookups>,
}

impl GrpcMetrics {
    fn new(buckets: &Buckets, lookups: Arc<Lookups>) -> Self {
        GrpcMetrics {
            started: Family::default(),
            handled: Family::default(),
            handling: Family::new_with_constructor(buckets.clone()),
            series: GRPC_METHODS
                .iter()
                .map(|_| MethodSeries::default())
                .collect(),
            lookups,
        }
    }

    fn labels(index: usize) -> GrpcLabels {
        let (service, method, kind) = GRPC_METHODS[index];
        GrpcLabels {
            grpc_method: method,
            grpc_service: service,
            grpc_type: kind,
        }
    }

    /// Counts the start of a call of `path` (`/service/method`); `None` for
    /// paths that are not one of our RPCs.
    fn start(self: &Arc<Self>, path: &str) -> Option<(Arc<GrpcMetrics>, usize, Instant)> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let index = GRPC_METHODS
            .iter()
            .position(|(s, m, _)| *m == method && *s == service)?;
        self.series[index]
            .started
            .get_or_init(|| self.started.get_or_create_owned(&Self::labels(index)))
            .inc();
        Some((self.clone(), index, Instant::now()))
    }

    fn finish(&self, index: usize, code: i32, elapsed: Duration) {
        let code_index = usize::try_from(code)
            .ok()
            .filter(|c| *c < GRPC_CODES.len())
            .unwrap_or(CODE_UNKNOWN as usize);
        let series = &self.series[index];
        series.handled[code_index]
            .get_or_init(|| {
                let l = Self::labels(index);
                self.handled.get_or_create_owned(&GrpcHandledLabels {
                    grpc_code: GRPC_CODES[code_index],
                    grpc_method: l.grpc_method,
                    grpc_service: l.grpc_service,
                    grpc_type: l.grpc_type,
                })
            })
            .inc();
        series
            .handling
            .get_or_init(|| self.handling.get_or_create_owned(&Self::labels(index)))
            .observe(elapsed.as_secs_f64());
        if index == GET_ACTION_RESULT && (code == 0 || code == CODE_NOT_FOUND) {
            self.lookups
                .record(LookupMethod::Get, LookupKind::Ac, code == 0);
        }
    }
}

/// One RPC in progress. Finishing records its code and duration and writes
/// its access-log line; dropped unfinished (the client went away), it
/// counts as `Canceled`.
struct GrpcCall {
    metered: Option<(Arc<GrpcMetrics>, usize, Instant)>,
    log: Option<AccessRecord>,
}

/// What the access-log line of one RPC says (`access_log_level: all`):
/// one line per call, so FindMissingBlobs logs once, not per digest.
struct AccessRecord {
    rpc: Box<str>,
    peer: Option<Arc<str>>,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
}

impl GrpcCall {
    fn is_action_cache(&self) -> bool {
        self.metered
            .as_ref()
            .is_some_and(|(_, index, _)| GRPC_METHODS[*index].0 == ACTION_CACHE)
    }

    fn finish(&mut self, code: i32) {
        if let Some((metrics, index, started)) = self.metered.take() {
            metrics.finish(index, code, started.elapsed());
        }
        if let Some(log) = self.log.take() {
            let status = usize::try_from(code)
                .ok()
                .and_then(|c| GRPC_CODES.get(c))
                .copied()
                .unwrap_or("Unknown");
            tracing::info!(
                target: "access",
                rpc = &*log.rpc,
                status,
                bytes = log.bytes_out,
                bytes_in = log.bytes_in.load(Ordering::Relaxed),
                peer = log.peer.as_deref().unwrap_or("-"),
                duration_ms = log.started.elapsed().as_secs_f64() * 1e3,
            );
        }
    }
}

impl Drop for GrpcCall {
    fn drop(&mut self) {
        self.finish(CODE_CANCELED);
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The tower layer that records the `grpc_server_*` metrics and writes the
/// access log around the tonic router. With neither, it passes calls through.
#[derive(Clone, Default)]
pub struct GrpcMetricsLayer {
    metrics: Option<Arc<GrpcMetrics>>,
    access_log: bool,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Option<Arc<GrpcMetrics>>, access_log: bool) -> Self {
        GrpcMetricsLayer {
            metrics,
            access_log,
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
            access_log: self.access_log,
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Option<Arc<GrpcMetrics>>,
    access_log: bool,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<CountedBody<ReqBody>>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let metered = self
            .metrics
            .as_ref()
            .and_then(|m| m.start(req.uri().path()));
        let bytes_in = Arc::new(AtomicU64::new(0));
        let log = self.access_log.then(|| AccessRecord {
            rpc: req.uri().path().into(),
            peer: req
                .extensions()
                .get::<crate::grpc::incoming::ConnInfo>()
                .map(|c| c.peer.clone()),
            started: Instant::now(),
            bytes_in: bytes_in.clone(),
            bytes_out: 0,
        });
        let counting = log.is_some();
        let req = req.map(|inner| CountedBody {
            inner,
            bytes: counting.then_some(bytes_in),
        });
        let future = self.inner.call(req);
        Box::pin(async move {
            if metered.is_none() && log.is_none() {
                return future.await.map(|resp| resp.map(MeteredBody::plain));
            }
            let mut call = GrpcCall { metered, log };
            let result = if call.is_action_cache() {
                IN_ACTION_CACHE_RPC.scope((), future).await
            } else {
                future.await
            };
            let resp = match result {
                Ok(resp) => resp,
                Err(e) => {
                    call.finish(CODE_UNKNOWN);
                    return Err(e);
                }
            };
            // An error is a trailers-only answer: the status is in the head.
            Ok(match grpc_status(resp.headers()) {
                Some(code) => {
                    call.finish(code);
                    resp.map(MeteredBody::plain)
                }
                None => resp.map(|inner| MeteredBody {
                    inner,
                    call: Some(call),
                }),
            })
        })
    }
}

/// A gRPC request body that counts the bytes it delivers (for the access
/// log); without a counter it only passes frames on.
pub struct CountedBody<B> {
    inner: B,
    bytes: Option<Arc<AtomicU64>>,
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let (Some(Ok(frame)), Some(bytes)) = (&polled, &self.bytes)
            && let Some(data) = frame.data_ref()
        {
            bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A gRPC response body that records the call when its trailers (with
/// `grpc-status`) go out: for streams, the handler's end.
pub struct MeteredBody<B> {
    inner: B,
    call: Option<GrpcCall>,
}

impl<B> MeteredBody<B> {
    fn plain(inner: B) -> Self {
        MeteredBody { inner, call: None }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let (Some(data), Some(log)) = (
                    frame.data_ref(),
                    self.call.as_mut().and_then(|c| c.log.as_mut()),
                ) {
                    log.bytes_out += data.len() as u64;
                }
                if let Some(code) = frame.trailers_ref().and_then(grpc_status)
                    && let Some(mut call) = self.call.take()
                {
                    call.finish(code);
                }
            }
            Some(Err(_)) | None => {
                if let Some(mut call) = self.call.take() {
                    call.finish(CODE_UNKNOWN);
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn atomic_histogram_encodes_cumulative_buckets() {
        let h = AtomicHistogram::new(&[1.0, 0.5, f64::INFINITY, 2.5]);
        for v in [0.1, 0.5, 0.7, 3.0, 100.0] {
            h.observe(v);
        }
        assert_eq!(h.count(), 5);
        let mut registry = Registry::default();
        registry.register("t_seconds", "test", h);
        let text = render(&registry);
        for line in [
            "t_seconds_bucket{le=\"0.5\"} 2\n",
            "t_seconds_bucket{le=\"1\"} 3\n",
            "t_seconds_bucket{le=\"2.5\"} 3\n",
            "t_seconds_bucket{le=\"+Inf\"} 5\n",
            "t_seconds_sum 104.3\n",
            "t_seconds_count 5\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
        assert_eq!(text.matches("le=\"+Inf\"").count(), 1, "{text}");
    }

    #[test]
    fn http_series_are_cached_and_labelled_like_bazel_remote() {
        let opts = MetricsOptions {
            endpoint_metrics: true,
            ..MetricsOptions::default()
        };
        let buckets = Buckets(opts.duration_buckets.clone().into());
        let http = HttpMetrics::new(&opts, &buckets, Some(Arc::new(Lookups::new())));
        let start = Instant::now();
        for _ in 0..3 {
            drop(http.record(Endpoint::Cache, &Method::GET, StatusCode::OK, start));
        }
        drop(http.record(Endpoint::Status, &Method::GET, StatusCode::OK, start));
        let odd = Method::from_bytes(b"BREW").unwrap();
        drop(http.record(Endpoint::Cache, &odd, StatusCode::IM_A_TEAPOT, start));
        let mut registry = Registry::default();
        registry.register("req", "h", http.total.clone());
        registry.register("dur_seconds", "h", http.duration.clone().unwrap());
        let text = render(&registry);
        for line in [
            "req_total{code=\"200\",handler=\"GET\",method=\"GET\"} 3\n",
            "req_total{code=\"200\",handler=\"status\",method=\"GET\"} 1\n",
            "req_total{code=\"418\",handler=\"other\",method=\"other\"} 1\n",
            "dur_seconds_count{code=\"200\",handler=\"GET\",method=\"GET\"} 3\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
    }

    #[test]
    fn lookups_classify_http_paths() {
        let lookups = Arc::new(Lookups::new());
        let opts = MetricsOptions {
            endpoint_metrics: true,
            ..MetricsOptions::default()
        };
        let buckets = Buckets(opts.duration_buckets.clone().into());
        let http = HttpMetrics::new(&opts, &buckets, Some(lookups.clone()));
        let h = "a".repeat(64);
        http.record_lookup(&Method::GET, &format!("/cas/{h}"), true, StatusCode::OK);
        http.record_lookup(
            &Method::GET,
            &format!("/i/ac/{h}"),
            true,
            StatusCode::NOT_FOUND,
        );
        http.record_lookup(&Method::HEAD, &format!("/ac/{h}"), false, StatusCode::OK);
        http.record_lookup(&Method::GET, "/nothing", true, StatusCode::NOT_FOUND);
        http.record_lookup(&Method::PUT, &format!("/cas/{h}"), true, StatusCode::OK);
        let get = |m, k, hit| lookups.counter(m, k, hit).get();
        assert_eq!(get(LookupMethod::Get, LookupKind::Cas, true), 1);
        assert_eq!(get(LookupMethod::Get, LookupKind::Ac, false), 1);
        assert_eq!(get(LookupMethod::Contains, LookupKind::Raw, true), 1);
        assert_eq!(get(LookupMethod::Get, LookupKind::Cas, false), 0);
    }

    #[test]
    fn grpc_paths_map_to_known_methods_only() {
        let buckets = Buckets(DEFAULT_DURATION_BUCKETS.to_vec().into());
        let m = Arc::new(GrpcMetrics::new(&buckets, Arc::new(Lookups::new())));
        assert!(m.start("/google.bytestream.ByteStream/Read").is_some());
        assert!(m.start("/google.bytestream.ByteStream/Nope").is_none());
        assert!(m.start("/x.Y/Read").is_none());
        let mut call = GrpcCall {
            metered: m.start("/build.bazel.remote.execution.v2.ActionCache/GetActionResult"),
            log: None,
        };
        assert!(call.is_action_cache());
        call.finish(CODE_NOT_FOUND);
        assert_eq!(
            m.lookups
                .counter(LookupMethod::Get, LookupKind::Ac, false)
                .get(),
            1
        );
        // Dropped unfinished: Canceled.
        drop(GrpcCall {
            metered: m.start("/grpc.health.v1.Health/Watch"),
            log: None,
        });
        let mut registry = Registry::default();
        registry.register("grpc_server_handled", "h", m.handled.clone());
        let text = render(&registry);
        assert!(
            text.contains("grpc_server_handled_total{grpc_code=\"Canceled\",grpc_method=\"Watch\",grpc_service=\"grpc.health.v1.Health\",grpc_type=\"server_stream\"} 1"),
            "{text}"
        );
    }
}
