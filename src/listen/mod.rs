//! The listening side of both front ends (HTTP and gRPC), in one place:
//! binding TCP or Unix sockets, the accept loop with its per-connection TLS
//! handshake, and what each request learns of its connection.
//!
//! # Layout
//! - `mod.rs`: [`Listener`] (TCP, or a Unix socket for bazel-remote's
//!   `unix:///path.sock` addresses), [`bind`], [`Io`], [`ConnInfo`].
//! - `accept.rs`: [`accept()`], the accept loop: yields handshaken
//!   [`Connection`]s, handshakes running concurrently under a time limit.
//! - `tls.rs`: rustls acceptors, mTLS, the server certificate re-read when
//!   its files change.
//! - `guard.rs`: the IO wrapper of every connection: the deadline for the
//!   first request head, the HTTP/2 idle timeout, PING/SETTINGS floods
//!   (`h2_flood.rs`).
//! - `activity.rs`: the requests in progress on a connection, as the front
//!   ends count them (what "idle" means for HTTP/2).
//! - `stats.rs`: [`ConnectionStats`], each port's counters for `/metrics`,
//!   and the cap on open connections.
//!
//! The front ends only hand connections to their protocol: hyper-util's
//! auto builder (`crate::http`) or tonic (`crate::grpc::incoming`).

pub(crate) mod accept;
pub(crate) mod activity;
mod guard;
mod h2_flood;
pub(crate) mod stats;
pub(crate) mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::config::ListenAddr;

pub(crate) use accept::{Connection, accept};
pub(crate) use activity::Activity;
pub(crate) use stats::ConnectionStats;

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A connection accepted from either kind of listener.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

impl Listener {
    pub fn local_tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        }
    }

    /// Accepts one connection; the string names the peer for logs.
    pub async fn accept(&self) -> io::Result<(Box<dyn Io>, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Box::new(s), peer.to_string()))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok((Box::new(s), "unix".to_string()))
            }
        }
    }
}

/// Binds `addr`. A stale Unix socket file left by a previous run is removed
/// first, as it would make the bind fail.
pub(crate) async fn bind(addr: &ListenAddr) -> io::Result<Listener> {
    match addr {
        ListenAddr::Tcp(sa) => Ok(Listener::Tcp(TcpListener::bind(sa).await?)),
        ListenAddr::Unix(path) => {
            use std::os::unix::fs::FileTypeExt;
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(path);
            }
            Ok(Listener::Unix(UnixListener::bind(path)?))
        }
    }
}

/// Who is on the other end of a connection, attached to every request of
/// it (`req.extensions()`): the front ends, auth and the access log read it.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub peer: std::sync::Arc<str>,
    /// The client presented a certificate the CA verified (mTLS).
    pub client_cert: bool,
    /// Requests in progress on the connection; the front ends count theirs
    /// here (the HTTP/2 idle timeout reads it).
    pub activity: Arc<Activity>,
}

/// How long and how many connections a port keeps, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// From accept (TLS handshake included) to the first complete request
    /// head: HTTP/1 headers or the HTTP/2 preface.
    pub request_head_timeout: Duration,
    /// An HTTP/2 connection with no request in progress for this long is
    /// closed. (HTTP/1 between requests: hyper's `header_read_timeout`.)
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        use crate::config::defaults;
        ConnectionLimits {
            max_connections: defaults::MAX_CONNECTIONS,
            request_head_timeout: defaults::REQUEST_HEAD_TIMEOUT,
            idle_timeout: defaults::CONNECTION_IDLE_TIMEOUT,
        }
    }
}

/// One listening port's connection policy and counters. `pub` only
/// because the front ends' public serving options hold it.
#[derive(Debug, Clone)]
pub struct Port {
    pub limits: ConnectionLimits,
    pub stats: Arc<ConnectionStats>,
}

impl Port {
    /// `name` is the metric label and log field (`http`, `grpc`); the cap
    /// is `limits.max_connections`.
    pub(crate) fn new(name: &'static str, limits: ConnectionLimits) -> Port {
        Port {
            limits,
            stats: ConnectionStats::new(name, limits.max_connections),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.stats.port()
    }
}
