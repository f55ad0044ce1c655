//! Per-request HTTP series: `bazel_remote_http_request_total` for every
//! request, and with endpoint metrics the request duration histogram and the
//! lookup counts of cache `GET`s and `HEAD`s. A request finds its series by
//! index in a table of `OnceLock`s (no lock, no hash); only unusual
//! combinations (an odd method or status code) go through the family's map.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::MetricsOptions;
use super::histogram::{AtomicHistogram, Buckets, HistogramFamily};
use super::lookups::{LookupKind, LookupMethod, Lookups};

/// Which handler answered, bazel-remote's `handler` label: the method for
/// cache requests, `status` or `metrics` for those pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Cache = 0,
    Status = 1,
    Metrics = 2,
    /// The web console's pages (`handler="console"`).
    Console = 3,
}

impl Endpoint {
    pub(crate) fn of(path: &str) -> Endpoint {
        match path {
            "/status" => Endpoint::Status,
            "/metrics" => Endpoint::Metrics,
            _ => Endpoint::Cache,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HttpLabels {
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
const ENDPOINTS: usize = 4;

#[derive(Clone)]
struct HttpSeries {
    total: Counter,
    duration: Option<AtomicHistogram>,
}

/// Per-request HTTP metrics.
pub(crate) struct HttpMetrics {
    pub(super) total: Family<HttpLabels, Counter>,
    pub(super) duration: Option<HistogramFamily<HttpLabels>>,
    /// Series by (endpoint, method, code) for the usual combinations.
    cached: Box<[OnceLock<HttpSeries>]>,
    lookups: Option<Arc<Lookups>>,
}

impl HttpMetrics {
    pub(super) fn new(
        opts: &MetricsOptions,
        buckets: &Buckets,
        lookups: Option<Arc<Lookups>>,
    ) -> Self {
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
                    Endpoint::Console => "console",
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
    pub(crate) fn record(
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
    pub(crate) fn record_lookup(
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
pub(crate) struct RequestTimer {
    histogram: AtomicHistogram,
    started: Instant,
}

impl RequestTimer {
    /// `body`, observing the duration when it has been sent (or dropped).
    pub(crate) fn wrap<B>(self, body: B) -> TimedBody<B> {
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
pub(crate) struct TimedBody<B> {
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

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::metrics::encode_for_test as render;

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
}
