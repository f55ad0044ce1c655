//! The tower layer around the tonic router that produces go-grpc-prometheus's
//! server metrics (`grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_handling_seconds`) and, with `access_log_level: all`, hands
//! each finished call to the access log. Without either it passes calls
//! through untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::access_log::AccessRecord;
use super::counting_store::IN_ACTION_CACHE_RPC;
use super::histogram::{AtomicHistogram, Buckets, HistogramFamily};
use super::lookups::{LookupKind, LookupMethod, Lookups};
use super::traffic::Traffic;

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
pub(super) struct GrpcLabels {
    grpc_method: &'static str,
    grpc_service: &'static str,
    grpc_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct GrpcHandledLabels {
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
/// `grpc_server_handling_seconds`, with go-grpc-prometheus's labels. `pub`
/// (not `pub(crate)`) only because the gRPC front end's public serving
/// options hold it.
pub struct GrpcMetrics {
    pub(super) started: Family<GrpcLabels, Counter>,
    pub(super) handled: Family<GrpcHandledLabels, Counter>,
    pub(super) handling: HistogramFamily<GrpcLabels>,
    series: Box<[MethodSeries]>,
    lookups: Arc<Lookups>,
    /// The web console's per-protocol counters, when it is on.
    traffic: Option<Arc<Traffic>>,
}

impl GrpcMetrics {
    pub(super) fn new(buckets: &Buckets, lookups: Arc<Lookups>) -> Self {
        GrpcMetrics {
            started: Family::default(),
            handled: Family::default(),
            handling: Family::new_with_constructor(buckets.clone()),
            series: GRPC_METHODS
                .iter()
                .map(|_| MethodSeries::default())
                .collect(),
            lookups,
            traffic: None,
        }
    }

    pub(super) fn with_traffic(mut self, traffic: Option<Arc<Traffic>>) -> Self {
        self.traffic = traffic;
        self
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

    fn finish(&self, index: usize, code: i32, elapsed: Duration, bytes: (u64, u64)) {
        if let Some(traffic) = &self.traffic {
            traffic.grpc.record(bytes.0, bytes.1, elapsed);
        }
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
    /// Request bytes received, when counted (access log, console).
    bytes_in: Option<Arc<AtomicU64>>,
    /// Response bytes sent so far.
    sent: u64,
}

impl GrpcCall {
    fn is_action_cache(&self) -> bool {
        self.metered
            .as_ref()
            .is_some_and(|(_, index, _)| GRPC_METHODS[*index].0 == ACTION_CACHE)
    }

    fn finish(&mut self, code: i32) {
        if let Some((metrics, index, started)) = self.metered.take() {
            let bytes_in = self
                .bytes_in
                .as_ref()
                .map_or(0, |b| b.load(Ordering::Relaxed));
            metrics.finish(index, code, started.elapsed(), (bytes_in, self.sent));
        }
        if let Some(log) = self.log.take() {
            let status = usize::try_from(code)
                .ok()
                .and_then(|c| GRPC_CODES.get(c))
                .copied()
                .unwrap_or("Unknown");
            log.write(status);
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
pub(crate) struct GrpcMetricsLayer {
    metrics: Option<Arc<GrpcMetrics>>,
    access_log: bool,
}

impl GrpcMetricsLayer {
    pub(crate) fn new(metrics: Option<Arc<GrpcMetrics>>, access_log: bool) -> Self {
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
pub(crate) struct GrpcMetricsService<S> {
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
        let log = self
            .access_log
            .then(|| AccessRecord::new(&req, bytes_in.clone()));
        let counting = log.is_some() || self.metrics.as_ref().is_some_and(|m| m.traffic.is_some());
        let bytes_in = counting.then_some(bytes_in);
        let req = req.map(|inner| CountedBody {
            inner,
            bytes: bytes_in.clone(),
        });
        let future = self.inner.call(req);
        Box::pin(async move {
            if metered.is_none() && log.is_none() {
                return future.await.map(|resp| resp.map(MeteredBody::plain));
            }
            let mut call = GrpcCall {
                metered,
                log,
                bytes_in,
                sent: 0,
            };
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
pub(crate) struct CountedBody<B> {
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
pub(crate) struct MeteredBody<B> {
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
                if let (Some(data), Some(call)) = (frame.data_ref(), self.call.as_mut()) {
                    call.sent += data.len() as u64;
                    if let Some(log) = call.log.as_mut() {
                        log.sent(data.len() as u64);
                    }
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
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::metrics::encode_for_test as render;
    use bazel_cache_store::histogram::DEFAULT_BUCKETS;

    #[test]
    fn grpc_paths_map_to_known_methods_only() {
        let buckets = Buckets(DEFAULT_BUCKETS.to_vec().into());
        let m = Arc::new(GrpcMetrics::new(&buckets, Arc::new(Lookups::new())));
        assert!(m.start("/google.bytestream.ByteStream/Read").is_some());
        assert!(m.start("/google.bytestream.ByteStream/Nope").is_none());
        assert!(m.start("/x.Y/Read").is_none());
        let mut call = GrpcCall {
            metered: m.start("/build.bazel.remote.execution.v2.ActionCache/GetActionResult"),
            log: None,
            bytes_in: None,
            sent: 0,
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
            bytes_in: None,
            sent: 0,
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
