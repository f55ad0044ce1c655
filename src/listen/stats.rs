//! What one port's connections are doing, as atomics that the accept loop
//! and the connections update and `/metrics` reads at scrape time
//! (`metrics/connections.rs`), and the cap on open connections: each
//! accepted connection holds an [`OpenSlot`] until its socket is closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Where in its life a connection was cut for taking too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The TLS handshake did not complete in time.
    TlsHandshake,
    /// No complete request head (HTTP/1 headers, the HTTP/2 preface) by the
    /// deadline counted from accept.
    RequestHead,
    /// An HTTP/2 connection with no request in progress for the idle timeout.
    Idle,
}

impl Phase {
    pub(crate) const ALL: [Phase; 3] = [Phase::TlsHandshake, Phase::RequestHead, Phase::Idle];

    /// The `phase` label of `bazel_cache_connections_timeouts_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Phase::TlsHandshake => "tls_handshake",
            Phase::RequestHead => "request_head",
            Phase::Idle => "idle",
        }
    }
}

/// The counters of one port (`http` or `grpc`). `pub` only because the
/// front ends' public serving options hold it.
#[derive(Debug)]
pub struct ConnectionStats {
    port: &'static str,
    /// Connections open at once, at most (the effective `max_connections`).
    limit: usize,
    open: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    accept_errors: AtomicU64,
    timeouts: [AtomicU64; Phase::ALL.len()],
    floods: AtomicU64,
}

impl ConnectionStats {
    /// `port` is the metric label and the log field: `http`, `grpc`.
    pub(crate) fn new(port: &'static str, limit: usize) -> Arc<ConnectionStats> {
        Arc::new(ConnectionStats {
            port,
            limit: limit.max(1),
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            timeouts: Default::default(),
            floods: AtomicU64::new(0),
        })
    }

    pub(crate) fn port(&self) -> &'static str {
        self.port
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Takes a slot for a connection just accepted, or counts it refused
    /// when `limit` connections are open already.
    pub(crate) fn try_open(self: &Arc<Self>) -> Option<OpenSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.limit).then_some(open + 1)
            });
        match taken {
            Ok(_) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                Some(OpenSlot(self.clone()))
            }
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub(crate) fn accept_failed(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn timed_out(&self, phase: Phase) {
        self.timeouts[phase as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn flooded(&self) {
        self.floods.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub(crate) fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }

    pub(crate) fn timeouts(&self, phase: Phase) -> u64 {
        self.timeouts[phase as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn floods(&self) -> u64 {
        self.floods.load(Ordering::Relaxed)
    }
}

/// One open connection of a port, counted until dropped (with the socket).
#[derive(Debug)]
pub(crate) struct OpenSlot(Arc<ConnectionStats>);

impl OpenSlot {
    pub(crate) fn stats(&self) -> &Arc<ConnectionStats> {
        &self.0
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The most connections each of `ports` listeners may hold open so that
/// together they use at most three quarters of the open-file limit; the
/// rest is for blob files being read and written, the index, the S3 client
/// and the process's own descriptors. Past the limit `accept` fails with
/// EMFILE and nobody is served, so the cap must stay below it.
pub(crate) fn fd_ceiling(open_file_limit: u64, ports: usize) -> usize {
    let for_connections = open_file_limit - open_file_limit / 4;
    let per_port = for_connections / ports.max(1) as u64;
    usize::try_from(per_port).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_refuses_past_the_limit_and_frees_slots_on_drop() {
        let stats = ConnectionStats::new("http", 2);
        let a = stats.try_open().unwrap();
        let b = stats.try_open().unwrap();
        assert!(stats.try_open().is_none());
        assert!(stats.try_open().is_none());
        assert_eq!((stats.open(), stats.accepted(), stats.refused()), (2, 2, 2));
        drop(a);
        assert_eq!(stats.open(), 1);
        let c = stats.try_open().unwrap();
        assert_eq!((stats.open(), stats.accepted()), (2, 3));
        drop((b, c));
        assert_eq!(stats.open(), 0);
    }

    #[test]
    fn timeouts_are_counted_by_phase() {
        let stats = ConnectionStats::new("grpc", 1);
        stats.timed_out(Phase::Idle);
        stats.timed_out(Phase::Idle);
        stats.timed_out(Phase::RequestHead);
        assert_eq!(stats.timeouts(Phase::Idle), 2);
        assert_eq!(stats.timeouts(Phase::RequestHead), 1);
        assert_eq!(stats.timeouts(Phase::TlsHandshake), 0);
    }

    #[test]
    fn the_fd_ceiling_leaves_a_quarter_of_the_limit_and_shares_the_rest() {
        assert_eq!(fd_ceiling(1024, 2), 384);
        assert_eq!(fd_ceiling(1 << 20, 2), 393_216);
        assert_eq!(fd_ceiling(1024, 1), 768);
        assert_eq!(fd_ceiling(1, 2), 1, "never zero");
    }
}
