//! The HTTP front end: bazel-remote's HTTP cache protocol (`/ac/`, `/cas/`),
//! `/status` and `/metrics`, on hyper with HTTP/1.1 keep-alive and HTTP/2 (h2c).
//!
//! Handlers translate requests into [`Store`] calls and store errors into
//! status codes; no storage logic lives here.

mod cache;
pub mod path;

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;

use crate::auth::{Access, Authenticator, Denied};
use crate::config::defaults;
use crate::listen::activity::ActivityBody;
use crate::listen::{self, ConnInfo, Listener, Port};
use crate::metrics::{self, Endpoint, Metrics, access_log};
use bazel_cache_store::BlobReader;
use bazel_cache_store::Store;
use bazel_cache_store::budget::MemoryBudget;
use bazel_cache_store::disk::AdoptionStatus;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// What the HTTP front end needs to know, taken from the validated config.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Validate `PUT /ac/` bodies as ActionResults and check, on `GET /ac/`,
    /// that the blobs they reference are present (bazel-remote's default).
    pub validate_ac: bool,
    pub mangle_ac_keys: bool,
    pub max_blob_size: u64,
    pub access_log: bool,
    /// Bound on reading request headers: a client that trickles them
    /// (slowloris) is dropped instead of holding a connection forever.
    pub header_read_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            validate_ac: true,
            mangle_ac_keys: false,
            max_blob_size: u64::MAX,
            access_log: false,
            header_read_timeout: crate::config::defaults::HEADER_READ_TIMEOUT,
        }
    }
}

/// Shared state of every connection.
pub struct HttpState {
    pub store: Arc<dyn Store>,
    pub options: HttpOptions,
    /// Called at the start of every request (idle-timeout bookkeeping).
    pub on_request: Box<dyn Fn() + Send + Sync>,
    /// How adopting a bazel-remote `dir` goes (the disk store's), for `/status`.
    pub adoption: Box<dyn Fn() -> AdoptionStatus + Send + Sync>,
    /// Extra `/status` fields from a proxy backend (upload queue, S3 counters).
    pub backend_status: Option<Box<dyn Fn() -> serde_json::Value + Send + Sync>>,
    /// Every request is counted here; `/metrics` renders it.
    pub metrics: Arc<Metrics>,
    /// Who may read and write `/ac/` and `/cas/`.
    pub auth: Arc<Authenticator>,
    /// The port's connection limits and counters.
    pub connections: Port,
    /// The memory budget download buffers and action-cache bodies read
    /// whole are reserved from (the store's).
    pub memory: Arc<MemoryBudget>,
    /// The disk store's progress guard (`DiskStore::guard_upload`), for a
    /// body the front end reads itself before it puts it: an action-cache
    /// entry it validates. Bodies handed to the store are guarded there.
    pub guard_upload: Box<dyn Fn(BlobReader) -> BlobReader + Send + Sync>,
    /// The web console on `/` and `/ui/`, unless `web_console: false`.
    pub web: Option<Arc<crate::web::WebState>>,
}

/// What a request knows of its connection.
type Conn = ConnInfo;

/// Serves until `shutdown` resolves, then stops accepting and gives requests
/// in flight up to `drain` to finish.
pub async fn serve(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    state: Arc<HttpState>,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(state.options.header_read_timeout)
        .max_buf_size(defaults::H1_MAX_BUF_SIZE)
        .keep_alive(true);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(defaults::H2_KEEPALIVE_INTERVAL)
        .max_concurrent_streams(defaults::H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(defaults::H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(defaults::H2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_header_list_size(defaults::H2_MAX_HEADER_LIST_SIZE);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    let stop = CancellationToken::new();
    let mut incoming = listen::accept(listener, tls, stop.clone(), state.connections.clone());
    loop {
        let accepted = tokio::select! {
            accepted = incoming.next() => accepted,
            _ = &mut shutdown => None,
        };
        let Some(accepted) = accepted else { break };
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let conn = Arc::new(accepted.info);
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                let conn = conn.clone();
                // An HTTP/2 request counts on its connection until its
                // response is sent (the idle timeout); HTTP/1 idleness is
                // hyper's header timeout.
                let active =
                    (req.version() == http::Version::HTTP_2).then(|| conn.activity.begin());
                async move {
                    let resp = handle(&state, req, &conn).await;
                    Ok::<_, Infallible>(match active {
                        Some(active) => {
                            resp.map(|body| ActivityBody::new(body, Some(active)).boxed_unsync())
                        }
                        None => resp,
                    })
                }
            });
            let conn = builder
                .serve_connection(TokioIo::new(accepted.io), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    // Stop accepting at once: a listener kept open would let the kernel
    // complete handshakes that nobody serves.
    stop.cancel();
    drop(incoming);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => tracing::warn!("connections still open after the drain period; closing them"),
    }
}

async fn handle(state: &HttpState, req: Request<Incoming>, conn: &Conn) -> Response<Body> {
    (state.on_request)();
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let console = state.web.is_some() && crate::web::is_console_path(&path);
    let endpoint = if console {
        Endpoint::Console
    } else {
        Endpoint::of(&path)
    };
    let bytes_in = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let version = req.version();
    let resp = match ambiguous_framing(&req) {
        Some(refused) => refused,
        None => route(state, req, conn).await,
    };
    let resp = close_after_refused_body(&method, version, resp);
    let http_metrics = state.metrics.http();
    if !console {
        http_metrics.record_lookup(&method, &path, state.options.validate_ac, resp.status());
    }
    if let Some(traffic) = state.metrics.traffic()
        && endpoint == Endpoint::Cache
    {
        let bytes_out = if method == Method::HEAD {
            0
        } else {
            http_body::Body::size_hint(resp.body()).exact().unwrap_or(0)
        };
        traffic
            .http
            .record(bytes_in.unwrap_or(0), bytes_out, started.elapsed());
    }
    let timer = http_metrics.record(endpoint, &method, resp.status(), started);
    if state.options.access_log {
        access_log::http_request(&method, &path, &resp, bytes_in, &conn.peer, started);
    }
    match timer {
        Some(timer) => resp.map(|body| timer.wrap(body).boxed_unsync()),
        None => resp,
    }
}

async fn route(state: &HttpState, req: Request<Incoming>, conn: &Conn) -> Response<Body> {
    match req.uri().path() {
        "/status" => match *req.method() {
            Method::GET | Method::HEAD => status(state),
            _ => method_not_allowed("GET, HEAD"),
        },
        "/metrics" => match *req.method() {
            Method::GET | Method::HEAD => metrics_page(state).await,
            _ => method_not_allowed("GET, HEAD"),
        },
        path if state.web.is_some() && crate::web::is_console_path(path) => {
            // The console shows what reads show: it asks for read access,
            // whatever the method (its one POST, /ui/explain, stores nothing).
            match authorize_as(state, &req, conn, Access::Read).await {
                Ok(()) => {
                    let web = state.web.clone().expect("checked above");
                    crate::web::handle(state, &web, req).await
                }
                Err(denied) => {
                    discard_small_body(req.into_body()).await;
                    unauthorized(state, denied)
                }
            }
        }
        _ => match authorize(state, &req, conn).await {
            Ok(()) => cache::handle(state, req).await,
            Err(denied) => {
                discard_small_body(req.into_body()).await;
                unauthorized(state, denied)
            }
        },
    }
}

/// Refuses, with 400 and `Connection: close`, a request whose body a proxy
/// in front and this server could delimit differently (request smuggling):
/// a `Transfer-Encoding` other than exactly `chunked` (`gzip, chunked`,
/// `chunked, chunked`, two header lines), or one next to `Content-Length`.
///
/// hyper refuses some of these itself (400 before we see the request): a
/// `Transfer-Encoding` whose last coding is not `chunked`, any on HTTP/1.0,
/// two different `Content-Length`s; h2 refuses `transfer-encoding` on
/// HTTP/2. With both `Transfer-Encoding` and `Content-Length` on HTTP/1.1,
/// hyper drops `Content-Length` before we see it, reads the body as
/// chunked and closes the connection after the answer (RFC 9112 §6.3), so
/// what a proxy took for the rest of the body is never read as a request;
/// the check below only guards against a hyper that would let both through.
fn ambiguous_framing(req: &Request<Incoming>) -> Option<Response<Body>> {
    let mut codings = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    let first = codings.next()?;
    let only_chunked = codings.next().is_none()
        && first
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked");
    let reason = if !only_chunked {
        "Transfer-Encoding must be exactly \"chunked\" (other transfer codings are refused)"
    } else if req.headers().contains_key(header::CONTENT_LENGTH) {
        "a request may not have both Transfer-Encoding and Content-Length"
    } else {
        return None;
    };
    tracing::debug!(path = %req.uri().path(), reason, "request refused");
    let mut resp = error(StatusCode::BAD_REQUEST, reason);
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    Some(resp)
}

/// Reads and drops up to 1 MiB of a refused request's body (for at most
/// 5 s). Closing a socket with unread bytes makes the kernel send a reset,
/// which can reach the client before it has read our answer; a small
/// upload, as most refused ones are, is cheaper to swallow. Bodies that
/// are larger are left: the connection closes after the answer.
async fn discard_small_body(mut body: Incoming) {
    const LIMIT: usize = 1 << 20;
    let drain = async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len();
                if seen > LIMIT {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}

/// A write refused before its body was read (auth, size, full disk) leaves
/// that body unread on the connection, so hyper closes it after answering.
/// `Connection: close` tells an HTTP/1.1 client so, instead of letting it
/// send its next request into a closing socket.
fn close_after_refused_body(
    method: &Method,
    version: http::Version,
    mut resp: Response<Body>,
) -> Response<Body> {
    let has_body = !matches!(*method, Method::GET | Method::HEAD);
    if has_body && resp.status().as_u16() >= 400 && version <= http::Version::HTTP_11 {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// Applies [`Authenticator`] to a cache request: GET and HEAD read,
/// everything else (PUT, and methods the cache will refuse) writes.
async fn authorize(state: &HttpState, req: &Request<Incoming>, conn: &Conn) -> Result<(), Denied> {
    let access = match *req.method() {
        Method::GET | Method::HEAD => Access::Read,
        _ => Access::Write,
    };
    authorize_as(state, req, conn, access).await
}

/// [`authorize`] for a given access.
async fn authorize_as(
    state: &HttpState,
    req: &Request<Incoming>,
    conn: &Conn,
    access: Access,
) -> Result<(), Denied> {
    if !state.auth.enabled() {
        return Ok(());
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let result = state
        .auth
        .check(authorization, conn.client_cert, access)
        .await;
    if let Err(denied) = &result {
        tracing::debug!(peer = %conn.peer, path = %req.uri().path(), reason = %denied, "request refused");
    }
    result
}

/// 401 with a Basic challenge (so curl and browsers know what to send),
/// or 403 when only a client certificate would do.
fn unauthorized(state: &HttpState, denied: Denied) -> Response<Body> {
    if denied == Denied::NoClientCertificate && !state.auth.uses_basic_auth() {
        return error(StatusCode::FORBIDDEN, denied);
    }
    let mut resp = error(StatusCode::UNAUTHORIZED, denied);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"bazel-cache\", charset=\"UTF-8\""),
    );
    resp
}

/// bazel-remote's `/status` JSON (same field names, so probes and scripts
/// that read it keep working), plus our version.
fn status(state: &HttpState) -> Response<Body> {
    let s = state.store.stats();
    let body = serde_json::json!({
        "CurrSize": s.stored_bytes,
        "UncompressedSize": s.logical_bytes,
        "ReservedSize": s.reserved_bytes,
        "MaxSize": s.max_bytes,
        "NumFiles": s.entries,
        "ServerTime": bazel_cache_store::unix_now(),
        "GitCommit": option_env!("BAZEL_CACHE_GIT_COMMIT").unwrap_or(""),
        "GitTags": "",
        "NumGoroutines": tokio::runtime::Handle::current().metrics().num_alive_tasks(),
        "Version": env!("CARGO_PKG_VERSION"),
    });
    let mut body = body;
    let adoption = (state.adoption)();
    if adoption != AdoptionStatus::default() {
        // Ours, only while or after a bazel-remote `dir` is adopted.
        body["Adoption"] = serde_json::json!({
            "Running": adoption.running,
            "Found": adoption.found,
            "Adopted": adoption.adopted,
            "AdoptedBytes": adoption.adopted_bytes,
            "Duplicates": adoption.duplicates,
            "Corrupt": adoption.corrupt,
            "LeftAlone": adoption.left_alone,
            "TooOld": adoption.too_old,
        });
    }
    if let Some(extra) = &state.backend_status {
        body["Backend"] = extra();
    }
    let mut text = serde_json::to_vec_pretty(&body).expect("status JSON");
    text.push(b'\n');
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, text.len())
        .body(full(text))
        .expect("static response")
}

/// Prometheus metrics (text format 0.0.4). Counters only, plus one bounded
/// index read: it answers while the store is busy. Names no secret.
async fn metrics_page(state: &HttpState) -> Response<Body> {
    let text = state.metrics.render().await;
    Response::builder()
        .header(header::CONTENT_TYPE, metrics::CONTENT_TYPE)
        .header(header::CONTENT_LENGTH, text.len())
        .body(full(text))
        .expect("static response")
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

/// A plain-text error response whose body says what was wrong.
pub(crate) fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response<Body> {
    let text = format!("{msg}\n");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_LENGTH, text.len())
        .body(full(text))
        .expect("static response")
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    resp
}
