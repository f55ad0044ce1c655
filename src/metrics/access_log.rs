//! The access log (`access_log_level: all`): one `info` line per HTTP
//! request and one per gRPC call, with target `access`. Both writers live
//! here, side by side, so the two front ends' lines keep the same shape
//! (status, bytes out, bytes in, peer, duration in milliseconds) and a
//! change to one is made next to the other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{Method, Response, header};

/// Writes the access-log line of an answered HTTP request. `bytes_in` is the
/// request's `Content-Length` (absent when it had none); the bytes sent are
/// the response's `Content-Length`, `-` when the body is streamed without one.
pub(crate) fn http_request<B>(
    method: &Method,
    path: &str,
    resp: &Response<B>,
    bytes_in: Option<u64>,
    peer: &str,
    started: Instant,
) {
    let bytes = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info!(
        target: "access",
        %method, %path, status = resp.status().as_u16(), bytes, bytes_in, peer,
        duration_ms = started.elapsed().as_secs_f64() * 1e3,
    );
}

/// What the access-log line of one RPC says (`access_log_level: all`):
/// one line per call, so FindMissingBlobs logs once, not per digest. The
/// gRPC metrics layer keeps it with the call and writes it when the call's
/// status is known.
pub(super) struct AccessRecord {
    rpc: Box<str>,
    peer: Option<Arc<str>>,
    started: Instant,
    /// Request body bytes, counted by the layer's request body wrapper.
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
}

impl AccessRecord {
    /// The record of a call starting now; `bytes_in` is the counter the
    /// request body adds to.
    pub(super) fn new<B>(req: &http::Request<B>, bytes_in: Arc<AtomicU64>) -> Self {
        AccessRecord {
            rpc: req.uri().path().into(),
            peer: req
                .extensions()
                .get::<crate::listen::ConnInfo>()
                .map(|c| c.peer.clone()),
            started: Instant::now(),
            bytes_in,
            bytes_out: 0,
        }
    }

    /// Counts response bytes sent.
    pub(super) fn sent(&mut self, bytes: u64) {
        self.bytes_out += bytes;
    }

    /// Writes the line; `status` is the call's gRPC code, named as grpc-go
    /// names it.
    pub(super) fn write(self, status: &str) {
        tracing::info!(
            target: "access",
            rpc = &*self.rpc,
            status,
            bytes = self.bytes_out,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            peer = self.peer.as_deref().unwrap_or("-"),
            duration_ms = self.started.elapsed().as_secs_f64() * 1e3,
        );
    }
}
