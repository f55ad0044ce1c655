//! Request and response bodies: the file-backed upload body (positional
//! reads on the blocking pool, one chunk ahead, reporting [`Progress`] so a
//! large upload is timed by its stalls rather than its size), the empty
//! body, and the bounded read of small answers (XML) with a stall timeout.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use tokio::task::JoinHandle;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request the client sends.
pub(super) type ReqBody = BoxBody<Bytes, BoxError>;

/// File bodies are read and sent in chunks of this size.
const FILE_CHUNK: u64 = 256 * 1024;

pub(super) fn empty_body() -> ReqBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|e| match e {})
        .boxed()
}

/// When an upload body last made progress, and how far it got.
pub(super) struct Progress {
    base: Instant,
    last_ms: AtomicU64,
    sent: AtomicU64,
}

impl Progress {
    pub(super) fn new() -> Progress {
        Progress {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    fn advance(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::Relaxed);
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    pub(super) fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    pub(super) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// A failure reading the local file of an upload body; recognised in the
/// transport error's source chain.
#[derive(Debug)]
pub(super) struct FileReadError(pub(super) io::Error);

impl fmt::Display for FileReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reading the file to upload: {}", self.0)
    }
}

impl std::error::Error for FileReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// `len` bytes of a file from `start`, read with positional reads on the
/// blocking pool, one chunk ahead of what hyper has taken.
pub(super) struct FileBody {
    file: Arc<File>,
    /// Offset of the next chunk to read.
    next: u64,
    end: u64,
    /// Bytes not yet handed to hyper.
    remaining: u64,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    progress: Arc<Progress>,
}

impl FileBody {
    pub(super) fn new(file: Arc<File>, start: u64, len: u64, progress: Arc<Progress>) -> FileBody {
        FileBody {
            file,
            next: start,
            end: start + len,
            remaining: len,
            pending: None,
            progress,
        }
    }

    fn start_read(&mut self) {
        if self.pending.is_some() || self.next >= self.end {
            return;
        }
        let n = FILE_CHUNK.min(self.end - self.next) as usize;
        let offset = self.next;
        let file = self.file.clone();
        self.next += n as u64;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; n];
            file.read_exact_at(&mut buf, offset).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the file ends before offset {}", offset + n as u64),
                    )
                } else {
                    e
                }
            })?;
            Ok(Bytes::from(buf))
        }));
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        this.start_read();
        let Some(pending) = this.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let result = ready!(Pin::new(pending).poll(cx));
        this.pending = None;
        let chunk = match result {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => return Poll::Ready(Some(Err(Box::new(FileReadError(e))))),
            Err(join) => {
                return Poll::Ready(Some(Err(Box::new(FileReadError(io::Error::other(
                    join.to_string(),
                ))))));
            }
        };
        this.remaining -= chunk.len() as u64;
        this.progress.advance(chunk.len() as u64);
        this.start_read(); // read ahead while hyper sends this chunk
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

pub(super) enum BodyError {
    Stalled(Duration),
    Hyper(hyper::Error),
}

/// Up to `limit` bytes of `body` (the rest is dropped), each frame within `stall`.
pub(super) async fn read_bounded(
    mut body: Incoming,
    limit: usize,
    stall: Duration,
) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    loop {
        let frame = match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => return Err(BodyError::Stalled(stall)),
            Ok(None) => return Ok(out),
            Ok(Some(frame)) => frame.map_err(BodyError::Hyper)?,
        };
        if let Ok(data) = frame.into_data() {
            let take = data.len().min(limit - out.len());
            out.extend_from_slice(&data[..take]);
            if out.len() >= limit {
                return Ok(out);
            }
        }
    }
}
