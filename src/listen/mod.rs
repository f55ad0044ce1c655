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
//!
//! The front ends only hand connections to their protocol: hyper-util's
//! auto builder (`crate::http`) or tonic (`crate::grpc::incoming`).

pub(crate) mod accept;
pub(crate) mod tls;

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::config::ListenAddr;

pub(crate) use accept::{Connection, accept};

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
}
