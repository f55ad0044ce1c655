//! The IO of every accepted connection, on both ports: what bounds a
//! connection's life below the protocol, so that hyper and tonic need not
//! (neither bounds the wait for a first request: hyper-util's protocol
//! detection and h2's preface read have no timeout).
//!
//! - **Request head deadline.** From accept (TLS handshake included) the
//!   client has until the deadline to send a complete request head: for
//!   HTTP/1 its bytes up to the first empty line, for HTTP/2 the 24-byte
//!   client preface. The first bytes read are scanned for it; if the
//!   deadline passes first, the read fails with `TimedOut` and the protocol
//!   closes the connection. After that first head, HTTP/1 is hyper's:
//!   `header_read_timeout` bounds each later head and the wait for it on a
//!   kept-alive connection.
//! - **HTTP/2 idle timeout.** A connection on which no request has been in
//!   progress ([`Activity`]) for the idle timeout is closed: its next read
//!   fails with `TimedOut`. The connection's task is woken when its last
//!   request ends, and an idle connection's reads are never more than a
//!   timer away.
//! - **HTTP/2 PING/SETTINGS floods** ([`super::h2_flood`]): the read fails
//!   with `InvalidData`.
//!
//! Each cut is counted by phase in the port's [`ConnectionStats`]. The
//! wrapper also holds the port's [`OpenSlot`] until the socket is dropped.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::activity::Activity;
use super::h2_flood::{ControlFrames, FrameScanner};
use super::stats::{ConnectionStats, OpenSlot, Phase};
use super::{ConnectionLimits, Io};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's IO, with the bounds of the module doc applied.
pub(crate) struct GuardedIo {
    io: Box<dyn Io>,
    stage: Stage,
    /// The request head deadline, then (HTTP/2) the idle deadline.
    timer: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    peer: Arc<str>,
    slot: OpenSlot,
    /// Set once the connection was cut: every later read fails alike.
    cut: Option<io::ErrorKind>,
}

enum Stage {
    /// Before the first complete request head.
    Head(HeadScan),
    /// HTTP/1 after its first head: hyper's timeouts apply.
    Http1,
    Http2(Box<Http2Watch>),
}

#[derive(Default)]
struct Http2Watch {
    from_client: FrameScanner,
    from_server: FrameScanner,
    control: ControlFrames,
}

impl GuardedIo {
    /// `head_deadline` is counted from accept.
    pub(crate) fn new(
        io: Box<dyn Io>,
        head_deadline: Instant,
        limits: &ConnectionLimits,
        activity: Arc<Activity>,
        peer: Arc<str>,
        slot: OpenSlot,
    ) -> GuardedIo {
        GuardedIo {
            io,
            stage: Stage::Head(HeadScan::Preface(0)),
            timer: Box::pin(tokio::time::sleep_until(head_deadline)),
            activity,
            idle_timeout: limits.idle_timeout,
            peer,
            slot,
            cut: None,
        }
    }

    fn stats(&self) -> &ConnectionStats {
        self.slot.stats()
    }

    fn cut(&mut self, kind: io::ErrorKind, why: &'static str) -> io::Error {
        tracing::debug!(peer = %self.peer, port = self.stats().port(), why, "closing the connection");
        self.cut = Some(kind);
        io::Error::new(kind, why)
    }

    fn time_out(&mut self, phase: Phase) -> io::Error {
        self.stats().timed_out(phase);
        let why = match phase {
            Phase::RequestHead => "no complete request head before the deadline",
            Phase::Idle => "HTTP/2 connection idle (no request in progress) for too long",
            Phase::TlsHandshake => "TLS handshake timed out",
        };
        self.cut(io::ErrorKind::TimedOut, why)
    }

    /// Fails when the deadline of the current stage has passed; otherwise
    /// arranges to be woken when it does.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.stage {
            Stage::Head(_) => {
                if self.timer.as_mut().poll(cx).is_ready() {
                    return Err(self.time_out(Phase::RequestHead));
                }
            }
            Stage::Http2(_) => {
                self.activity.wake_when_idle(cx.waker());
                if self.activity.in_flight() == 0 {
                    let deadline = self.activity.idle_since() + self.idle_timeout;
                    if self.timer.deadline() != deadline {
                        self.timer.as_mut().reset(deadline);
                    }
                    if self.timer.as_mut().poll(cx).is_ready() {
                        return Err(self.time_out(Phase::Idle));
                    }
                }
            }
            Stage::Http1 => {}
        }
        Ok(())
    }

    fn inspect_read(&mut self, bytes: &[u8]) -> io::Result<()> {
        let flooded = match &mut self.stage {
            Stage::Head(scan) => match scan.feed(bytes) {
                Seen::More => return Ok(()),
                Seen::Http1 => {
                    self.stage = Stage::Http1;
                    return Ok(());
                }
                Seen::Http2 { consumed } => {
                    let mut watch = Box::<Http2Watch>::default();
                    let flooded = watch.read(&bytes[consumed..]);
                    self.stage = Stage::Http2(watch);
                    flooded
                }
            },
            Stage::Http1 => return Ok(()),
            Stage::Http2(watch) => watch.read(bytes),
        };
        if flooded {
            self.stats().flooded();
            return Err(self.cut(io::ErrorKind::InvalidData, "HTTP/2 PING/SETTINGS flood"));
        }
        Ok(())
    }

    fn inspect_write(&mut self, bytes: &[u8]) {
        if let Stage::Http2(watch) = &mut self.stage {
            let Http2Watch {
                from_server,
                control,
                ..
            } = &mut **watch;
            let _ = from_server.feed::<()>(bytes, |kind, _| {
                control.sent(kind);
                Ok(())
            });
        }
    }
}

impl Http2Watch {
    /// Whether the client's frames in `bytes` make a flood.
    fn read(&mut self, bytes: &[u8]) -> bool {
        let Http2Watch {
            from_client,
            control,
            ..
        } = self;
        from_client
            .feed(bytes, |kind, flags| control.received(kind, flags))
            .is_err()
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(kind) = this.cut {
            return Poll::Ready(Err(io::Error::new(kind, "connection closed by the server")));
        }
        this.poll_deadline(cx)?;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.inspect_read(&buf.filled()[before..])?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.inspect_write(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for buf in bufs {
            if left == 0 {
                break;
            }
            let written = left.min(buf.len());
            this.inspect_write(&buf[..written]);
            left -= written;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What the first bytes of a connection showed so far.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    More,
    /// An HTTP/1 request head is complete.
    Http1,
    /// The HTTP/2 preface is complete, ending `consumed` bytes into the
    /// bytes just fed; frames follow.
    Http2 {
        consumed: usize,
    },
}

/// Finds the end of the first request head.
#[derive(Debug)]
enum HeadScan {
    /// The bytes so far are this many of the HTTP/2 preface.
    Preface(usize),
    Http1(Http1Head),
}

impl HeadScan {
    fn feed(&mut self, bytes: &[u8]) -> Seen {
        if let HeadScan::Preface(matched) = self {
            let want = &PREFACE[*matched..];
            let n = want.len().min(bytes.len());
            if bytes[..n] == want[..n] {
                *matched += n;
                return if *matched == PREFACE.len() {
                    Seen::Http2 { consumed: n }
                } else {
                    Seen::More
                };
            }
            // Not HTTP/2: what matched the preface so far began an HTTP/1 head.
            let mut head = Http1Head::default();
            if head.feed(&PREFACE[..*matched]) {
                return Seen::Http1;
            }
            *self = HeadScan::Http1(head);
        }
        match self {
            HeadScan::Http1(head) => {
                if head.feed(bytes) {
                    Seen::Http1
                } else {
                    Seen::More
                }
            }
            HeadScan::Preface(_) => Seen::More,
        }
    }
}

/// An HTTP/1 head ends with an empty line after at least one that is not
/// (blank lines before a request line are skipped, as parsers do); lines
/// end with CRLF or a bare LF.
#[derive(Debug, Default)]
struct Http1Head {
    /// Bytes other than CR on the current line.
    line: usize,
    /// Non-empty lines seen.
    lines: usize,
}

impl Http1Head {
    /// Whether the head is complete.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            match b {
                b'\n' if self.line == 0 && self.lines > 0 => return true,
                b'\n' => {
                    if self.line > 0 {
                        self.lines += 1;
                    }
                    self.line = 0;
                }
                b'\r' => {}
                _ => self.line += 1,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::h2_flood::tests::{frame, ping};
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn scan(chunks: &[&[u8]]) -> Vec<Seen> {
        let mut scan = HeadScan::Preface(0);
        chunks.iter().map(|c| scan.feed(c)).collect()
    }

    #[test]
    fn an_http1_head_ends_at_its_empty_line() {
        use Seen::*;
        assert_eq!(scan(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]), [Http1]);
        assert_eq!(
            scan(&[b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"]),
            [More, More, Http1]
        );
        assert_eq!(scan(&[b"GET / HTTP/1.0\n\n"]), [Http1], "bare LF");
        assert_eq!(
            scan(&[b"\r\n\r\n", b"GET / HTTP/1.1\r\n\r"]),
            [More, More],
            "leading blank lines"
        );
        assert_eq!(scan(&[b"GET / HTTP/1.1\r\nX-Pad: aaaa"]), [More]);
        assert_eq!(scan(&[b""]), [More]);
        let bytes: Vec<&[u8]> = b"PUT /cas/x HTTP/1.1\r\nA: b\r\n\r\n".chunks(1).collect();
        assert_eq!(scan(&bytes).last(), Some(&Http1));
    }

    #[test]
    fn the_http2_preface_is_recognised_however_it_is_split() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(ping());
        assert_eq!(scan(&[&bytes]), [Seen::Http2 { consumed: 24 }]);
        assert_eq!(
            scan(&[&bytes[..10], &bytes[10..30]]),
            [Seen::More, Seen::Http2 { consumed: 14 }]
        );
        // Half a preface is not a head.
        assert_eq!(scan(&[&PREFACE[..12]]), [Seen::More]);
        // Something that starts like the preface and is not HTTP/2 is HTTP/1.
        assert_eq!(scan(&[b"PRI * HTTP/1.1\r\nHost: x\r\n\r\n"]), [Seen::Http1]);
        assert_eq!(scan(&[b"PRI * HTTP/2.0\r\n\r\nXX"]), [Seen::Http1]);
        assert_eq!(
            scan(&[b"PRI", b" / HTTP/1.1\r\n"]),
            [Seen::More, Seen::More]
        );
    }

    struct Harness {
        io: GuardedIo,
        client: DuplexStream,
        stats: Arc<ConnectionStats>,
        activity: Arc<Activity>,
    }

    fn harness(head: Duration, idle: Duration) -> Harness {
        let (client, server) = tokio::io::duplex(1 << 16);
        let stats = ConnectionStats::new("test", 10);
        let activity = Activity::new();
        let limits = ConnectionLimits {
            max_connections: 10,
            request_head_timeout: head,
            idle_timeout: idle,
        };
        let io = GuardedIo::new(
            Box::new(server),
            Instant::now() + head,
            &limits,
            activity.clone(),
            "peer".into(),
            stats.try_open().unwrap(),
        );
        Harness {
            io,
            client,
            stats,
            activity,
        }
    }

    const LONG: Duration = Duration::from_secs(3600);
    const SHORT: Duration = Duration::from_millis(200);

    async fn read_some(io: &mut GuardedIo) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf))
            .await
            .expect("the read neither completed nor timed out")?;
        buf.truncate(n);
        Ok(buf)
    }

    #[tokio::test]
    async fn a_silent_connection_times_out_before_its_head() {
        let mut h = harness(SHORT, LONG);
        let err = read_some(&mut h.io).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(h.stats.timeouts(Phase::RequestHead), 1);
        // Once cut, always cut.
        h.client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(read_some(&mut h.io).await.is_err());
        assert_eq!(h.stats.timeouts(Phase::RequestHead), 1, "counted once");
    }

    #[tokio::test]
    async fn half_a_preface_or_a_trickled_head_times_out() {
        for partial in [&PREFACE[..12], b"GET / HTTP/1.1\r\nHost: x\r\n".as_slice()] {
            let mut h = harness(SHORT, LONG);
            h.client.write_all(partial).await.unwrap();
            assert_eq!(read_some(&mut h.io).await.unwrap(), partial);
            // More bytes keep coming, the head never ends.
            let err = loop {
                h.client.write_all(b"a").await.unwrap();
                match read_some(&mut h.io).await {
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(e) => break e,
                }
            };
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert_eq!(h.stats.timeouts(Phase::RequestHead), 1);
        }
    }

    #[tokio::test]
    async fn after_an_http1_head_the_deadline_no_longer_applies() {
        let mut h = harness(SHORT, SHORT);
        h.client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_some(&mut h.io).await.unwrap();
        tokio::time::sleep(SHORT * 3).await;
        h.client.write_all(b"more").await.unwrap();
        assert_eq!(read_some(&mut h.io).await.unwrap(), b"more");
        assert_eq!(h.stats.timeouts(Phase::RequestHead), 0);
        assert_eq!(
            h.stats.timeouts(Phase::Idle),
            0,
            "HTTP/1 idleness is hyper's"
        );
    }

    #[tokio::test]
    async fn an_http2_connection_is_closed_only_after_idling() {
        let Harness {
            mut io,
            mut client,
            stats,
            activity,
        } = harness(SHORT, Duration::from_millis(300));
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(0x4, 0, &[]));
        client.write_all(&hello).await.unwrap();
        assert_eq!(read_some(&mut io).await.unwrap(), hello);
        // A request in progress keeps it open past the idle timeout, while
        // bytes (a keepalive ping and its answer) flow.
        let request = activity.begin();
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            let err = loop {
                match read_some(&mut io).await {
                    Ok(bytes) => seen.extend(bytes),
                    Err(e) => break e,
                }
            };
            (err, seen)
        });
        tokio::time::sleep(Duration::from_millis(600)).await;
        client.write_all(&frame(0x6, 0x1, &[0; 8])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !reader.is_finished(),
            "closed while a request was in progress"
        );
        assert_eq!(stats.timeouts(Phase::Idle), 0);
        drop(request);
        let (err, seen) = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("not closed after the last request ended")
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(seen.len(), 17, "the PING ACK was read");
        assert_eq!(stats.timeouts(Phase::Idle), 1);
        assert_eq!(stats.timeouts(Phase::RequestHead), 0);
    }

    #[tokio::test]
    async fn a_ping_flood_closes_the_connection() {
        let mut h = harness(LONG, LONG);
        let mut flood = PREFACE.to_vec();
        for _ in 0..2 * super::super::h2_flood::CONTROL_FRAMES_PER_SECOND {
            flood.extend(ping());
        }
        h.client.write_all(&flood).await.unwrap();
        let err = loop {
            match read_some(&mut h.io).await {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(h.stats.floods(), 1);
    }

    #[tokio::test]
    async fn pings_answered_with_data_are_no_flood() {
        let mut h = harness(LONG, LONG);
        h.client.write_all(PREFACE).await.unwrap();
        read_some(&mut h.io).await.unwrap();
        for _ in 0..3 * super::super::h2_flood::CONTROL_FRAMES_PER_SECOND {
            h.io.write_all(&frame(0x0, 0, &[7; 100])).await.unwrap();
            h.client.write_all(&ping()).await.unwrap();
            read_some(&mut h.io).await.unwrap();
        }
        assert_eq!(h.stats.floods(), 0);
    }

    #[tokio::test]
    async fn the_slot_is_given_back_with_the_connection() {
        let h = harness(LONG, LONG);
        assert_eq!(h.stats.open(), 1);
        drop(h.io);
        assert_eq!(h.stats.open(), 0);
    }
}
