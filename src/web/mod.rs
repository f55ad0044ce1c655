//! The web console: the cache seen by a person, on the HTTP port(s).
//!
//! # Layout
//! - this file: [`WebState`], which paths are the console's, routing.
//! - `html.rs`: the one escaping function, the page shell, the CSP and
//!   `nosniff` headers every response carries, formatters.
//! - `overview.rs`: `/` (version, uptime, `.bazelrc` lines, disk, proxy
//!   tier, charts, recent errors) and its live fragment.
//! - `history.rs`: the ring of 10-second samples behind the charts and
//!   the task that fills it; `charts.rs`: the inline SVG drawn from it.
//! - `recent_errors.rs`: the `tracing` layer keeping the last warnings
//!   and errors (installed by `main.rs`'s `init_logging`).
//! - `explorer/`: `/ui/ac/<hash>` and `/ui/cas/<hash>`.
//! - `explain.rs`, `multipart.rs`: `/ui/explain`, the bounded upload of
//!   two execution logs and the report.
//! - `static/`: the stylesheet and the refresh script, compiled in.
//!
//! Like `http/` and `grpc/`, the console is a front end: it reads through
//! the same `Store` and holds no storage logic. It is served by the HTTP
//! front end, behind the same authentication as reads.
//!
//! Rendering is hand-written `format!` with one escaping function
//! ([`html::esc`]) rather than a template crate: the pages are few and
//! small, a template crate would add a proc-macro dependency tree to every
//! build of a server that otherwise has none, and one function that every
//! foreign string passes through is easy to audit.
//!
//! Paths: `/` and everything under `/ui/` belong to the console when it is
//! on (`web_console`, the default), so an instance literally named `ui`
//! is not reachable over HTTP then (`/ui/ac/<hash>` is the console's
//! page); with `web_console: false` those paths are the cache's again.

mod charts;
mod explain;
mod explorer;
pub(crate) mod history;
mod html;
pub mod multipart;
mod overview;
pub mod recent_errors;

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::sync::Semaphore;

use crate::http::{Body, HttpState, full};
use bazel_cache_digest::{BlobKey, DigestFunction, Kind};
use bazel_cache_store::proxy::PresenceCache;
use history::History;
use html::{error_page, secure};

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");

/// What the console knows beyond the HTTP front end's state.
pub struct WebState {
    pub(crate) started: Instant,
    pub(crate) history: Arc<History>,
    /// TLS on the ports (`https://`, `grpcs://` in the `.bazelrc` lines).
    pub(crate) tls: bool,
    /// The gRPC port, when gRPC listens on TCP.
    pub(crate) grpc_port: Option<u16>,
    /// htpasswd is on: the `.bazelrc` lines get a credentials hint.
    pub(crate) basic_auth: bool,
    /// Entries evicted since start (the disk store's counter).
    pub(crate) evictions: Box<dyn Fn() -> u64 + Send + Sync>,
    pub(crate) presence: Option<Arc<PresenceCache>>,
    pub(crate) explain_slots: Semaphore,
}

impl WebState {
    pub(crate) fn new(
        tls: bool,
        grpc_port: Option<u16>,
        basic_auth: bool,
        evictions: Box<dyn Fn() -> u64 + Send + Sync>,
        presence: Option<Arc<PresenceCache>>,
    ) -> WebState {
        WebState {
            started: Instant::now(),
            history: Arc::new(History::default()),
            tls,
            grpc_port,
            basic_auth,
            evictions,
            presence,
            explain_slots: Semaphore::new(explain::MAX_CONCURRENT),
        }
    }
}

/// Whether `path` is the console's (when it is on).
pub(crate) fn is_console_path(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

fn asset(content_type: &'static str, text: &'static str) -> Response<Body> {
    secure(
        Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, text.len())
            .body(full(text))
            .expect("static response"),
    )
}

fn redirect(to: &str) -> Response<Body> {
    secure(
        Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, to)
            .header(header::CONTENT_LENGTH, 0)
            .body(full(""))
            .expect("static response"),
    )
}

/// The search box: a hash goes to its AC entry if there is one, else to
/// the CAS page (which says 404 when it is not there either), under the
/// digest function chosen next to it.
async fn search(state: &HttpState, query: Option<&str>) -> Response<Body> {
    let function = match explorer::parse_query(query) {
        Ok(q) => q.function,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let q = query
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("q="))
        .unwrap_or("")
        .trim_matches(|c: char| c == '+' || c.is_whitespace());
    let hash = match explorer::parse_hash(function, q) {
        Ok(h) => h,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let found = state.store.contains(&BlobKey::new(Kind::Ac, hash)).await;
    let mut to = match found {
        Ok(Some(_)) => format!("/ui/ac/{hash}"),
        _ => format!("/ui/cas/{hash}"),
    };
    if function != DigestFunction::Sha256 {
        to.push_str(&format!("?digest_function={}", function.as_str()));
    }
    redirect(&to)
}

/// Answers a console path (authorised by the caller).
pub(crate) async fn handle(
    state: &HttpState,
    web: &WebState,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let query = query.as_deref();
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if path == "/ui/explain" {
        return match *req.method() {
            Method::GET | Method::HEAD => explain::form(),
            Method::POST => explain::upload(state, web, req).await,
            _ => method_not_allowed("GET, HEAD, POST"),
        };
    }
    if !read {
        return method_not_allowed("GET, HEAD");
    }
    match path.as_str() {
        "/" => overview::page(state, web, req.uri(), req.headers()),
        "/ui" | "/ui/" => redirect("/"),
        "/ui/overview/live" => overview::fragment(state, web),
        "/ui/static/console.css" => asset("text/css; charset=utf-8", CSS),
        "/ui/static/console.js" => asset("text/javascript; charset=utf-8", JS),
        "/ui/search" => search(state, query).await,
        _ => {
            if let Some(hash) = path.strip_prefix("/ui/ac/") {
                explorer::action(state, hash, query).await
            } else if let Some(hash) = path.strip_prefix("/ui/cas/") {
                explorer::blob(state, hash, query).await
            } else {
                error_page(StatusCode::NOT_FOUND, "no such console page")
            }
        }
    }
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = error_page(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed; use {allow}"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    resp
}
