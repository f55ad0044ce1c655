//! The one accept loop of both ports: accepts TCP or Unix connections, runs
//! the TLS handshake of each in its own task (a slow or silent client never
//! holds up accepting others; [`tls::handshake`] bounds it in time) and
//! yields the connections that are ready for their protocol, in the order
//! they become ready.

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

use super::{ConnInfo, Io, Listener, tls};

/// How long accepting pauses after a failure (out of file descriptors and
/// the like) before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Connections ready but not yet taken by the front end. Bounded: when the
/// front end stops taking them, accepting plain connections pauses too.
const READY_QUEUE: usize = 64;

/// One accepted connection, after the TLS handshake when the port has TLS.
pub(crate) struct Connection {
    pub io: Box<dyn Io>,
    pub info: ConnInfo,
}

/// The connections of one listener. Dropping it stops the accept loop.
pub(crate) struct Incoming {
    ready: mpsc::Receiver<Connection>,
}

impl Incoming {
    /// The next connection; `None` once accepting stopped.
    pub(crate) async fn next(&mut self) -> Option<Connection> {
        self.ready.recv().await
    }
}

impl Stream for Incoming {
    type Item = Connection;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Connection>> {
        self.ready.poll_recv(cx)
    }
}

/// Starts accepting on `listener` (`port` names it in logs: "HTTP", "gRPC").
///
/// Accepting stops, and the listener is closed at once so the kernel
/// completes no handshakes that nobody would serve, when `stop` is
/// cancelled or the [`Incoming`] is dropped. Handshakes in progress then
/// finish into the void: their connections are closed.
pub(crate) fn accept(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
    port: &'static str,
) -> Incoming {
    let (tx, ready) = mpsc::channel(READY_QUEUE);
    tokio::spawn(accept_loop(listener, tls, stop, port, tx));
    Incoming { ready }
}

async fn accept_loop(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
    port: &'static str,
    tx: mpsc::Sender<Connection>,
) {
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, port, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
        };
        let peer: Arc<str> = peer.into();
        match &tls {
            None => {
                let conn = Connection {
                    io,
                    info: ConnInfo {
                        peer,
                        client_cert: false,
                    },
                };
                tokio::select! {
                    sent = tx.send(conn) => if sent.is_err() { return },
                    _ = stop.cancelled() => return,
                }
            }
            Some(acceptor) => {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tls::handshake(&acceptor, io).await {
                        Ok(accepted) => {
                            let conn = Connection {
                                io: Box::new(accepted.stream),
                                info: ConnInfo {
                                    peer,
                                    client_cert: accepted.client_cert,
                                },
                            };
                            let _ = tx.send(conn).await;
                        }
                        Err(e) => tracing::debug!(error = %e, %peer, port, "TLS handshake failed"),
                    }
                });
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn tcp() -> (Listener, std::net::SocketAddr) {
        let addr = "127.0.0.1:0".parse().unwrap();
        let listener = super::super::bind(&crate::config::ListenAddr::Tcp(addr))
            .await
            .unwrap();
        let addr = listener.local_tcp_addr().unwrap();
        (listener, addr)
    }

    #[tokio::test]
    async fn plain_connections_come_out_with_their_peer() {
        let (listener, addr) = tcp().await;
        let mut incoming = accept(listener, None, CancellationToken::new(), "test");
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await.unwrap();
        assert_eq!(&*conn.info.peer, client.local_addr().unwrap().to_string());
        assert!(!conn.info.client_cert);
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn stopping_closes_the_listener() {
        let (listener, addr) = tcp().await;
        let stop = CancellationToken::new();
        let mut incoming = accept(listener, None, stop.clone(), "test");
        stop.cancel();
        assert!(incoming.next().await.is_none());
        let refused = tokio::net::TcpStream::connect(addr).await;
        assert!(refused.is_err(), "the listener is still open");
    }

    #[tokio::test]
    async fn a_silent_tls_client_does_not_hold_up_others() {
        let dir = tempfile::tempdir().unwrap();
        let acceptor = tls::tests::test_acceptor(dir.path());
        let (listener, addr) = tcp().await;
        let mut incoming = accept(listener, Some(acceptor), CancellationToken::new(), "test");
        // Connects and never says a word: its handshake waits in its own task.
        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (connector, name) = tls::tests::client_for(dir.path());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let client = tokio::spawn(async move {
            let mut s = connector.connect(name, tcp).await.unwrap();
            s.write_all(b"hi").await.unwrap();
            s.flush().await.unwrap();
            s
        });
        let mut conn = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .expect("the second client waited for the silent one")
            .unwrap();
        let mut buf = [0; 2];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        assert!(!conn.info.client_cert);
        drop(client.await.unwrap());
    }
}
