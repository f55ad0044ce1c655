//! Listening sockets shared by the HTTP and gRPC front ends: TCP, or a Unix
//! socket for bazel-remote's `unix:///path.sock` addresses.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::config::ListenAddr;

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
pub async fn bind(addr: &ListenAddr) -> io::Result<Listener> {
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
