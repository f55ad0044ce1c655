//! The one accept loop of both ports: accepts TCP or Unix connections, runs
//! the TLS handshake of each in its own task (a slow or silent client never
//! holds up accepting others; [`tls::handshake`] bounds it in time) and
//! yields the connections that are ready for their protocol, in the order
//! they become ready.
//!
//! Every connection is bounded here, the same way on both ports: at most
//! `max_connections` are open at once (one more is accepted and closed at
//! once: cheaper than leaving it in the kernel's backlog, and the client
//! learns at once), and each one's IO is wrapped in [`GuardedIo`] (the
//! request head deadline, the HTTP/2 idle timeout, floods). Recurring
//! events (accept errors, refusals at the cap) are counted in
//! [`ConnectionStats`] and logged at most once per [`LOG_EVERY`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::guard::GuardedIo;
use super::stats::{OpenSlot, Phase};
use super::{Activity, ConnInfo, Io, Listener, Port, tls};

/// How long accepting pauses after a failure (out of file descriptors and
/// the like) before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Connections ready but not yet taken by the front end. Bounded: when the
/// front end stops taking them, accepting plain connections pauses too.
const READY_QUEUE: usize = 64;

/// The most often a recurring event (an accept error, a refusal at the
/// cap) is logged; the metrics count every one.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// One accepted connection, after the TLS handshake when the port has TLS.
pub(crate) struct Connection {
    pub io: GuardedIo,
    pub info: ConnInfo,
}

impl Connection {
    fn new(
        io: Box<dyn Io>,
        peer: Arc<str>,
        client_cert: bool,
        head_deadline: Instant,
        port: &Port,
        slot: OpenSlot,
    ) -> Connection {
        let activity = Activity::new();
        Connection {
            io: GuardedIo::new(
                io,
                head_deadline,
                &port.limits,
                activity.clone(),
                peer.clone(),
                slot,
            ),
            info: ConnInfo {
                peer,
                client_cert,
                activity,
            },
        }
    }
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

/// Starts accepting on `listener`, under `port`'s limits.
///
/// Accepting stops, and the listener is closed at once so the kernel
/// completes no handshakes that nobody would serve, when `stop` is
/// cancelled or the [`Incoming`] is dropped. Handshakes in progress then
/// finish into the void: their connections are closed.
pub(crate) fn accept(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
    port: Port,
) -> Incoming {
    let (tx, ready) = mpsc::channel(READY_QUEUE);
    tokio::spawn(accept_loop(listener, tls, stop, port, tx));
    Incoming { ready }
}

async fn accept_loop(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
    port: Port,
    tx: mpsc::Sender<Connection>,
) {
    let name = port.name();
    let mut accept_errors = Throttle::default();
    let mut refusals = Throttle::default();
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    port.stats.accept_failed();
                    if let Some(count) = accept_errors.due() {
                        tracing::warn!(error = %e, port = name, count, "accept failed ({count} since the last such line)");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
        };
        let head_deadline = Instant::now() + port.limits.request_head_timeout;
        let Some(slot) = port.stats.try_open() else {
            drop(io);
            if let Some(count) = refusals.due() {
                tracing::warn!(
                    port = name,
                    max_connections = port.stats.limit(),
                    count,
                    "connections refused: max_connections are open ({count} since the last such line)"
                );
            }
            continue;
        };
        let peer: Arc<str> = peer.into();
        match &tls {
            None => {
                let conn = Connection::new(io, peer, false, head_deadline, &port, slot);
                tokio::select! {
                    sent = tx.send(conn) => if sent.is_err() { return },
                    _ = stop.cancelled() => return,
                }
            }
            Some(acceptor) => {
                let (acceptor, tx, port) = (acceptor.clone(), tx.clone(), port.clone());
                tokio::spawn(async move {
                    // The handshake counts against the head deadline too.
                    let handshake =
                        tokio::time::timeout_at(head_deadline, tls::handshake(&acceptor, io));
                    match handshake.await {
                        Ok(Ok(accepted)) => {
                            let conn = Connection::new(
                                Box::new(accepted.stream),
                                peer,
                                accepted.client_cert,
                                head_deadline,
                                &port,
                                slot,
                            );
                            let _ = tx.send(conn).await;
                        }
                        Ok(Err(e)) if e.kind() != io::ErrorKind::TimedOut => {
                            tracing::debug!(error = %e, %peer, port = name, "TLS handshake failed")
                        }
                        Ok(Err(_)) | Err(_) => {
                            port.stats.timed_out(Phase::TlsHandshake);
                            tracing::debug!(%peer, port = name, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
}

/// Lets a recurring event be logged at most once per [`LOG_EVERY`]: the
/// first time at once, then with the number of events since.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    since: u64,
}

impl Throttle {
    /// Counts one event; `Some(events since the last line)` when a line is due.
    fn due(&mut self) -> Option<u64> {
        self.since += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < LOG_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
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

    fn test_port() -> Port {
        Port::new("test", super::super::ConnectionLimits::default())
    }

    #[tokio::test]
    async fn plain_connections_come_out_with_their_peer() {
        let (listener, addr) = tcp().await;
        let mut incoming = accept(listener, None, CancellationToken::new(), test_port());
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
        let mut incoming = accept(listener, None, stop.clone(), test_port());
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
        let mut incoming = accept(
            listener,
            Some(acceptor),
            CancellationToken::new(),
            test_port(),
        );
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

    #[tokio::test]
    async fn past_the_cap_connections_are_closed_at_once_and_counted() {
        let (listener, addr) = tcp().await;
        let port = Port::new(
            "test",
            super::super::ConnectionLimits {
                max_connections: 2,
                ..Default::default()
            },
        );
        let stats = port.stats.clone();
        let mut incoming = accept(listener, None, CancellationToken::new(), port);
        let _a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap();
        let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _second = incoming.next().await.unwrap();
        for _ in 0..3 {
            let mut refused = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut buf = [0; 1];
            let read = tokio::time::timeout(Duration::from_secs(10), refused.read(&mut buf))
                .await
                .expect("a connection past the cap was left open");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
        assert_eq!((stats.open(), stats.refused(), stats.accepted()), (2, 3, 2));
        // Once one closes, the next is served.
        drop(first);
        assert_eq!(stats.open(), 1);
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut third = tokio::time::timeout(Duration::from_secs(10), incoming.next())
            .await
            .unwrap()
            .unwrap();
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0; 18];
        third.read_exact(&mut buf).await.unwrap();
        assert_eq!(stats.open(), 2);
    }

    #[tokio::test]
    async fn a_silent_tls_client_is_cut_at_the_head_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let acceptor = tls::tests::test_acceptor(dir.path());
        let (listener, addr) = tcp().await;
        let port = Port::new(
            "test",
            super::super::ConnectionLimits {
                request_head_timeout: Duration::from_millis(200),
                ..Default::default()
            },
        );
        let stats = port.stats.clone();
        let _incoming = accept(listener, Some(acceptor), CancellationToken::new(), port);
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
            .await
            .expect("the silent client was not cut");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // The task counts it and lets go of the slot just after closing.
        for _ in 0..500 {
            if stats.open() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stats.timeouts(Phase::TlsHandshake), 1);
        assert_eq!(stats.open(), 0);
    }

    #[test]
    fn a_recurring_event_is_logged_once_a_minute_with_its_count() {
        let mut throttle = Throttle::default();
        assert_eq!(throttle.due(), Some(1));
        assert_eq!(throttle.due(), None);
        assert_eq!(throttle.due(), None);
        throttle.last = Some(Instant::now() - LOG_EVERY);
        assert_eq!(throttle.due(), Some(3));
        assert_eq!(throttle.due(), None);
    }
}
