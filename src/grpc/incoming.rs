//! The gRPC port's connections: accepted from TCP or a Unix socket, TLS
//! handshakes run per connection (never in the accept loop), and what each
//! request needs to know of its connection attached as tonic connect info.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::listen::{Io, Listener};
use crate::tls;

/// Attached to every request of a connection (`req.extensions()`).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: Arc<str>,
    /// The client presented a certificate the CA verified (mTLS).
    pub client_cert: bool,
}

/// One accepted, handshaken connection.
pub struct Conn {
    io: Box<dyn Io>,
    info: ConnInfo,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts until `stop` is cancelled; yields connections ready for HTTP/2.
pub fn incoming(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    // Bounded: if tonic stops taking connections, accepting pauses too.
    let (tx, rx) = mpsc::channel::<Conn>(64);
    tokio::spawn(async move {
        loop {
            let (io, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
            };
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let conn = match &tls {
                    Some(acceptor) => match tls::handshake(acceptor, io).await {
                        Ok(a) => Conn {
                            io: Box::new(a.stream),
                            info: ConnInfo {
                                peer: peer.into(),
                                client_cert: a.client_cert,
                            },
                        },
                        Err(e) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            return;
                        }
                    },
                    None => Conn {
                        io,
                        info: ConnInfo {
                            peer: peer.into(),
                            client_cert: false,
                        },
                    },
                };
                let _ = tx.send(conn).await;
            });
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        let conn = rx.recv().await?;
        Some((Ok(conn), rx))
    })
}
