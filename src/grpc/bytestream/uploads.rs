//! The registry of resumable uploads. Every upload is registered under its
//! full resource name (which contains the client's uuid). When a Write
//! stream ends without `finish_write` (clean half-close, reset, transport
//! error), the upload — put task, channel and byte count — stays registered,
//! idle, for the registry's TTL; then it is aborted. A later Write of the
//! same name with `write_offset` equal to the bytes received so far
//! continues it; `write_offset` 0 restarts it (the old put is aborted); any
//! other offset is INVALID_ARGUMENT.
//!
//! The registry is bounded: at most `max` uploads (when full, the upload
//! idle the longest is aborted to make room; if none is idle, the new
//! upload still runs but is not resumable), of which at most `max_idle`
//! idle. The registry's lock (a `std::sync::Mutex`) is taken when a stream
//! starts or ends, never per chunk.
//!
//! What an idle upload holds, and for how long: its put waits on the
//! channel, which to the store is a body that sends nothing, so it holds no
//! write slot (slots are only held for work on received bytes), and the
//! store's progress guard cuts it once it has been silent for the stall
//! limit or below the minimum rate over a rate window (30 s by default).
//! Until then it holds its temp file, a reservation of its declared size
//! and its put's buffers (at most 256 KiB plus zstd contexts); after, only
//! its registry entry (name and byte count), until the TTL. So idle uploads
//! hold at most `max_idle` temp files and reservations, each for at most a
//! rate window. A client that resumes within that time (Bazel retries
//! within seconds) continues its upload; one that comes back later finds
//! the upload *dead*: QueryWriteStatus reports `committed_size` 0 and a
//! Write at a later offset is INVALID_ARGUMENT, so the client restarts it
//! cleanly at offset 0.
//!
//! It is apart from the service because it is a data structure with its own
//! invariants (the idle count, epochs guarding expiry) that the Write
//! protocol only drives through [`Uploads::attach`] and [`Attachment`].

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::super::resource::quote;
use bazel_cache_digest::BlobKey;
use bazel_cache_store::budget::Reservation;
use bazel_cache_store::{Encoding, PutBody, PutRequest, Store, StoreError};

/// WriteRequest payloads queued between a Write stream and its put.
const UPLOAD_QUEUE: usize = 8;

pub(super) use bazel_cache_digest::lock;

/// One upload: a put running as its own task, fed through a channel by the
/// Write stream currently attached (at most one feeds it at a time).
pub(super) struct Upload {
    /// Bytes fed to the put so far: of the blob for `blobs/` uploads, of
    /// the zstd stream for `compressed-blobs/` uploads.
    pub(super) received: AtomicU64,
    /// Cancels the stream currently feeding the upload (so a newer stream
    /// can take over, or the upload can be aborted).
    pub(super) owner: Mutex<CancellationToken>,
    /// The put's input and the put itself, locked by the feeding stream.
    pub(super) pipe: Arc<tokio::sync::Mutex<Pipe>>,
    put_task: AbortHandle,
    /// finish_write was sent: the put is committing verified data and is no
    /// longer aborted, even if its stream goes away.
    pub(super) finishing: AtomicBool,
}

/// A WriteRequest's data queued for the put, with its memory held against
/// the budget until the put takes it (up to [`UPLOAD_QUEUE`] messages of up
/// to ~8.5 MiB each may wait for a put that is slow to read them).
pub(super) struct Chunk {
    pub(super) data: Bytes,
    pub(super) held: Reservation,
}

/// What the feeding stream holds while it feeds: the put's input and the
/// put task.
pub(super) struct Pipe {
    /// `Some(chunk)` is data, `None` is finish_write. If every sender is
    /// dropped without `None`, the put's body fails: nothing is stored.
    pub(super) tx: Option<mpsc::Sender<Option<Chunk>>>,
    pub(super) put: Option<JoinHandle<Result<(), StoreError>>>,
}

impl Upload {
    pub(super) fn start(
        store: Arc<dyn Store>,
        key: BlobKey,
        size: u64,
        encoding: Encoding,
    ) -> Arc<Upload> {
        let (tx, rx) = mpsc::channel(UPLOAD_QUEUE);
        let body = PutBody::chunks(body_stream(rx));
        let put = tokio::spawn(async move {
            store
                .put(PutRequest {
                    key,
                    size: Some(size),
                    encoding,
                    body,
                })
                .await
        });
        Arc::new(Upload {
            received: AtomicU64::new(0),
            owner: Mutex::new(CancellationToken::new()),
            put_task: put.abort_handle(),
            pipe: Arc::new(tokio::sync::Mutex::new(Pipe {
                tx: Some(tx),
                put: Some(put),
            })),
            finishing: AtomicBool::new(false),
        })
    }

    /// The put has ended without finish_write (cut by the store's progress
    /// guard, or failed): nothing received so far is kept.
    pub(super) fn is_dead(&self) -> bool {
        self.put_task.is_finished() && !self.finishing.load(Ordering::Acquire)
    }

    /// Stops the upload for good: cancels its stream and its put (unless
    /// the put is already committing a finished upload).
    pub(super) fn abort(&self) {
        lock(&self.owner).cancel();
        if !self.finishing.load(Ordering::Acquire) {
            self.put_task.abort();
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.finishing.load(Ordering::Acquire) {
            self.put_task.abort();
        }
    }
}

/// The put's body: the channel's chunks, ending at finish_write; an error if
/// the channel closes before that.
fn body_stream(rx: mpsc::Receiver<Option<Chunk>>) -> impl Stream<Item = io::Result<Bytes>> + Send {
    futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Some(Chunk { data, held })) => {
                // The put keeps the chunk until it has written it, and the
                // chunk keeps its reservation until then.
                Some((Ok(Bytes::from_owner(Held { data, _held: held })), Some(rx)))
            }
            Some(None) => None,
            None => Some((
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upload abandoned before finish_write",
                )),
                None,
            )),
        }
    })
}

/// A chunk's bytes with their reservation, released when the put drops them.
struct Held {
    data: Bytes,
    _held: Reservation,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// The registry of uploads, by resource name.
pub(super) struct Uploads {
    registry: Mutex<Registry>,
    /// Most uploads registered, fed or idle.
    max: usize,
    /// Most idle uploads: each holds a temp file, a put buffer and a zstd
    /// context for up to `ttl`, at no cost to the client that left it.
    max_idle: usize,
    ttl: Duration,
}

#[derive(Default)]
struct Registry {
    entries: HashMap<String, Entry>,
    /// Entries with no stream attached.
    idle: usize,
}

struct Entry {
    upload: Arc<Upload>,
    /// Write streams attached (one feeds; a newer one may wait to take over).
    streams: usize,
    /// Bumped on every attach and detach; expiry needs it unchanged.
    epoch: u64,
    idle_since: Instant,
}

impl Registry {
    fn get(&self, name: &str, upload: &Arc<Upload>) -> Option<&Entry> {
        self.entries
            .get(name)
            .filter(|e| Arc::ptr_eq(&e.upload, upload))
    }

    fn take(&mut self, name: &str) -> Option<Entry> {
        let e = self.entries.remove(name)?;
        if e.streams == 0 {
            self.idle -= 1;
        }
        Some(e)
    }

    /// Unregisters the upload idle the longest, if any.
    fn take_idlest(&mut self) -> Option<(String, Entry)> {
        let name = self
            .entries
            .iter()
            .filter(|(_, e)| e.streams == 0)
            .min_by_key(|(_, e)| e.idle_since)
            .map(|(k, _)| k.clone())?;
        self.take(&name).map(|e| (name, e))
    }
}

impl Uploads {
    pub(super) fn new(max: usize, max_idle: usize, ttl: Duration) -> Self {
        Uploads {
            registry: Mutex::new(Registry::default()),
            max,
            max_idle,
            ttl,
        }
    }

    /// The upload a Write stream starting at `offset` feeds: the registered
    /// one, or (offset 0) a new one from `start`, replacing any registered.
    pub(super) fn attach(
        &self,
        name: &str,
        offset: u64,
        start: impl FnOnce() -> Arc<Upload>,
    ) -> Result<Arc<Upload>, Status> {
        let mut reg = lock(&self.registry);
        if offset != 0 {
            if reg.entries.get(name).is_some_and(|e| e.upload.is_dead()) {
                reg.take(name);
                return Err(Status::invalid_argument(format!(
                    "{}: write_offset {offset} but this upload was abandoned (its client sent \
                     nothing, or too little, for too long); start again at write_offset 0",
                    quote(name)
                )));
            }
            let Some(e) = reg.entries.get_mut(name) else {
                return Err(Status::invalid_argument(format!(
                    "{}: write_offset {offset} but no upload of this resource is in progress \
                     (it finished, failed or expired); start again at write_offset 0",
                    quote(name)
                )));
            };
            let was_idle = e.streams == 0;
            e.streams += 1;
            e.epoch += 1;
            let upload = e.upload.clone();
            if was_idle {
                reg.idle -= 1;
            }
            return Ok(upload);
        }
        let upload = start();
        if let Some(old) = reg.take(name) {
            old.upload.abort();
        } else if reg.entries.len() >= self.max {
            match reg.take_idlest() {
                Some((evicted, e)) => {
                    tracing::warn!(resource = %evicted, "too many uploads; aborting the one idle the longest");
                    e.upload.abort();
                }
                None => {
                    tracing::warn!(resource = %name, "too many uploads in progress; this one is not resumable");
                    return Ok(upload);
                }
            }
        }
        reg.entries.insert(
            name.to_string(),
            Entry {
                upload: upload.clone(),
                streams: 1,
                epoch: 0,
                idle_since: Instant::now(),
            },
        );
        Ok(upload)
    }

    /// A stream stopped feeding `upload` without finishing it: keep it for
    /// resumption (aborted after `ttl` unless resumed). Unregistered uploads
    /// (replaced, evicted, expired) are aborted at once.
    fn detach(self: &Arc<Self>, name: &str, upload: &Arc<Upload>) {
        let mut reg = lock(&self.registry);
        let Some(e) = reg
            .entries
            .get_mut(name)
            .filter(|e| Arc::ptr_eq(&e.upload, upload))
        else {
            drop(reg);
            upload.abort();
            return;
        };
        e.streams = e.streams.saturating_sub(1);
        e.epoch += 1;
        if e.streams > 0 {
            return;
        }
        e.idle_since = Instant::now();
        let epoch = e.epoch;
        reg.idle += 1;
        let evicted = (reg.idle > self.max_idle)
            .then(|| reg.take_idlest())
            .flatten();
        drop(reg);
        if let Some((evicted, e)) = evicted {
            tracing::warn!(resource = %evicted, "too many interrupted uploads; aborting the one idle the longest");
            e.upload.abort();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Shutting down: no one will resume it.
            self.remove(name, upload);
            upload.abort();
            return;
        };
        let (uploads, weak, name, ttl) = (
            Arc::downgrade(self),
            Arc::downgrade(upload),
            name.to_string(),
            self.ttl,
        );
        runtime.spawn(async move {
            tokio::time::sleep(ttl).await;
            expire(uploads, weak, &name, epoch);
        });
    }

    /// Unregisters `upload` (finished or failed for good); its put is left alone.
    fn remove(&self, name: &str, upload: &Arc<Upload>) {
        let mut reg = lock(&self.registry);
        if reg.get(name, upload).is_some() {
            reg.take(name);
        }
    }

    /// Drops an idle upload of a blob that turned out to be stored already.
    pub(super) fn discard_idle(&self, name: &str) {
        let mut reg = lock(&self.registry);
        if reg.entries.get(name).is_some_and(|e| e.streams == 0)
            && let Some(e) = reg.take(name)
        {
            drop(reg);
            e.upload.abort();
        }
    }

    /// Bytes received so far by the registered upload of `name`: 0 for a
    /// dead one, whose bytes are gone (the client must start over).
    pub(super) fn progress(&self, name: &str) -> Option<u64> {
        lock(&self.registry).entries.get(name).map(|e| {
            if e.upload.is_dead() {
                0
            } else {
                e.upload.received.load(Ordering::Acquire)
            }
        })
    }

    /// Registered uploads, after checking the idle count.
    #[cfg(test)]
    fn len(&self) -> usize {
        let reg = lock(&self.registry);
        let idle = reg.entries.values().filter(|e| e.streams == 0).count();
        assert_eq!(reg.idle, idle, "idle count");
        reg.entries.len()
    }
}

/// Aborts the upload if it is still registered and untouched since `epoch`.
fn expire(uploads: Weak<Uploads>, upload: Weak<Upload>, name: &str, epoch: u64) {
    let (Some(uploads), Some(upload)) = (uploads.upgrade(), upload.upgrade()) else {
        return;
    };
    let mut reg = lock(&uploads.registry);
    if reg.get(name, &upload).is_some_and(|e| e.epoch == epoch) {
        reg.take(name);
        drop(reg);
        tracing::info!(resource = %name, "interrupted upload was not resumed in time; aborted");
        upload.abort();
    }
}

/// A Write stream's hold on an upload, released however the stream ends
/// (including the handler being dropped when the client resets the stream).
pub(super) struct Attachment {
    pub(super) uploads: Arc<Uploads>,
    pub(super) name: String,
    pub(super) upload: Arc<Upload>,
    /// The upload finished or failed for good: unregister instead of detach.
    pub(super) done: bool,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.done {
            self.uploads.remove(&self.name, &self.upload);
        } else {
            self.uploads.detach(&self.name, &self.upload);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Registry behaviour that needs a short TTL or a small bound; the
    //! protocol itself is tested against the binary in tests/api/grpc_bytestream/.
    //! They drive the registry through the real service, over a socket.

    use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
    use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, WriteRequest};
    use tonic::Code;
    use tonic::transport::Channel;

    use super::super::{ByteStreamServer, ByteStreamService};
    use super::*;
    use crate::grpc::{GrpcOptions, GrpcState};
    use bazel_cache_digest::Hash;
    use bazel_cache_store::CutReason;
    use bazel_cache_store::disk::{DiskConfig, DiskStore};

    struct Harness {
        client: ByteStreamClient<Channel>,
        uploads: Arc<Uploads>,
        store: Arc<DiskStore>,
        dir: tempfile::TempDir,
    }

    impl Harness {
        async fn start(max_uploads: usize, max_idle: usize, ttl: Duration) -> Harness {
            Harness::start_with(max_uploads, max_idle, ttl, |_| {}).await
        }

        /// With the disk store's config tuned (its progress guard).
        async fn start_with(
            max_uploads: usize,
            max_idle: usize,
            ttl: Duration,
            tune: impl FnOnce(&mut DiskConfig),
        ) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = DiskConfig::new(dir.path(), 1 << 30);
            cfg.fsync = false;
            tune(&mut cfg);
            let store = Arc::new(DiskStore::open(cfg).await.unwrap());
            let state = Arc::new(GrpcState {
                memory: store.config().memory.clone(),
                store: store.clone(),
                options: GrpcOptions::default(),
                on_request: Box::new(|| {}),
                asset: None,
            });
            let svc = ByteStreamService::new(state, Uploads::new(max_uploads, max_idle, ttl));
            let uploads = svc.uploads.clone();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(ByteStreamServer::new(svc))
                    .serve_with_incoming(incoming),
            );
            let client = ByteStreamClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            Harness {
                client,
                uploads,
                store,
                dir,
            }
        }

        /// Puts holding their reservation (each of [`blob`]'s 10,000
        /// bytes): what an idle upload keeps. (A temp file exists only
        /// once a put has a full 256 KiB buffer to write, so these small
        /// uploads hold none.)
        fn held_puts(&self) -> u64 {
            self.store.stats().reserved_bytes / 10_000
        }

        fn temp_files(&self) -> usize {
            std::fs::read_dir(self.dir.path().join("tmp"))
                .unwrap()
                .count()
        }

        async fn query(&self, name: &str) -> Result<(i64, bool), Status> {
            self.client
                .clone()
                .query_write_status(QueryWriteStatusRequest {
                    resource_name: name.to_string(),
                })
                .await
                .map(|r| (r.get_ref().committed_size, r.get_ref().complete))
        }

        /// Sends `data` from `offset`, optionally finishing; with `hold`,
        /// the stream stays open afterwards (the returned task is the call).
        fn write(
            &self,
            name: &str,
            data: &[u8],
            offset: usize,
            finish: bool,
            hold: bool,
        ) -> tokio::task::JoinHandle<Result<i64, Status>> {
            let req = WriteRequest {
                resource_name: name.to_string(),
                write_offset: offset as i64,
                finish_write: finish,
                data: data.to_vec(),
            };
            let mut client = self.client.clone();
            tokio::spawn(async move {
                let first = futures_util::stream::iter([req]);
                let result = if hold {
                    use futures_util::StreamExt;
                    client
                        .write(first.chain(futures_util::stream::pending()))
                        .await
                } else {
                    client.write(first).await
                };
                result.map(|r| r.into_inner().committed_size)
            })
        }
    }

    fn blob(seed: u8) -> (Vec<u8>, String) {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 ^ seed).collect();
        let hash = Hash::of(&data);
        (data, hash.to_hex())
    }

    fn upload_name(uuid: &str, hex: &str) -> String {
        format!("uploads/{uuid}/blobs/{hex}/10000")
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..300 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn interrupted_upload_expires() {
        let h = Harness::start(100, 100, Duration::from_millis(300)).await;
        let (data, hex) = blob(1);
        let name = upload_name("a", &hex);
        let sent = h
            .write(&name, &data[..4000], 0, false, false)
            .await
            .unwrap();
        assert_eq!(sent.unwrap(), 4000);
        assert_eq!(h.query(&name).await.unwrap(), (4000, false));
        eventually("the put's reservation", || h.held_puts() == 1).await;
        eventually("expiry", || h.uploads.len() == 0).await;
        assert_eq!(h.query(&name).await.unwrap(), (0, false));
        eventually("the reservation's release", || h.held_puts() == 0).await;
        assert_eq!(h.temp_files(), 0);
        // Resuming now is refused; restarting works.
        let late = h
            .write(&name, &data[4000..], 4000, true, false)
            .await
            .unwrap();
        assert_eq!(late.unwrap_err().code(), Code::InvalidArgument);
        let again = h.write(&name, &data, 0, true, false).await.unwrap();
        assert_eq!(again.unwrap(), 10_000);
    }

    #[tokio::test]
    async fn attached_upload_does_not_expire() {
        let h = Harness::start(100, 100, Duration::from_millis(200)).await;
        let (data, hex) = blob(2);
        let name = upload_name("b", &hex);
        let first = h
            .write(&name, &data[..3000], 0, false, false)
            .await
            .unwrap();
        assert_eq!(first.unwrap(), 3000);
        // Resumed by a stream that then idles past the TTL: still alive.
        let held = h.write(&name, &data[3000..6000], 3000, false, true);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(h.query(&name).await.unwrap(), (6000, false));
        // A newer stream takes over from the held one and finishes.
        let last = h
            .write(&name, &data[6000..], 6000, true, false)
            .await
            .unwrap();
        assert_eq!(last.unwrap(), 10_000);
        let held = held.await.unwrap().unwrap_err();
        assert_eq!(held.code(), Code::Aborted, "{held:?}");
        assert_eq!(h.query(&name).await.unwrap(), (10_000, true));
        assert_eq!(h.uploads.len(), 0);
    }

    #[tokio::test]
    async fn upload_registry_is_bounded() {
        let h = Harness::start(2, 2, Duration::from_secs(600)).await;
        let blobs: Vec<(Vec<u8>, String)> = (10..16).map(blob).collect();
        let names: Vec<String> = blobs.iter().map(|(_, hex)| upload_name("u", hex)).collect();
        // Two interrupted uploads fill the registry.
        for i in 0..2 {
            let r = h.write(&names[i], &blobs[i].0[..100], 0, false, false);
            assert_eq!(r.await.unwrap().unwrap(), 100);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A third evicts the one idle the longest.
        let r = h.write(&names[2], &blobs[2].0[..100], 0, false, false);
        assert_eq!(r.await.unwrap().unwrap(), 100);
        assert_eq!(h.query(&names[0]).await.unwrap(), (0, false));
        assert_eq!(h.query(&names[1]).await.unwrap(), (100, false));
        assert_eq!(h.query(&names[2]).await.unwrap(), (100, false));
        eventually("the evicted upload's release", || h.held_puts() == 2).await;

        // Both slots busy with live streams: a new upload still works, unregistered.
        let held: Vec<_> = (1..3)
            .map(|i| h.write(&names[i], &blobs[i].0[100..200], 100, false, true))
            .collect();
        eventually("both resumed", || {
            lock(&h.uploads.registry)
                .entries
                .values()
                .all(|e| e.streams == 1 && e.upload.received.load(Ordering::Acquire) == 200)
        })
        .await;
        let full = h
            .write(&names[3], &blobs[3].0, 0, true, false)
            .await
            .unwrap();
        assert_eq!(full.unwrap(), 10_000);
        assert_eq!(h.query(&names[3]).await.unwrap(), (10_000, true));
        // ... but an unregistered upload is not resumable.
        let cut = h.write(&names[4], &blobs[4].0[..100], 0, false, false);
        assert_eq!(cut.await.unwrap().unwrap(), 100);
        assert_eq!(h.query(&names[4]).await.unwrap(), (0, false));
        assert_eq!(h.uploads.len(), 2);
        for t in held {
            t.abort();
        }
    }

    #[tokio::test]
    async fn idle_uploads_are_bounded() {
        let h = Harness::start(100, 2, Duration::from_secs(600)).await;
        let blobs: Vec<(Vec<u8>, String)> = (20..23).map(blob).collect();
        let names: Vec<String> = blobs.iter().map(|(_, hex)| upload_name("i", hex)).collect();
        for (name, (data, _)) in names.iter().zip(&blobs) {
            let r = h.write(name, &data[..100], 0, false, false);
            assert_eq!(r.await.unwrap().unwrap(), 100);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The third interrupted upload pushed out the first.
        assert_eq!(h.query(&names[0]).await.unwrap(), (0, false));
        assert_eq!(h.query(&names[1]).await.unwrap(), (100, false));
        assert_eq!(h.query(&names[2]).await.unwrap(), (100, false));
        assert_eq!(h.uploads.len(), 2);
        eventually("the evicted upload's release", || h.held_puts() == 2).await;
        // The others still resume.
        for i in 1..3 {
            let r = h.write(&names[i], &blobs[i].0[100..], 100, true, false);
            assert_eq!(r.await.unwrap().unwrap(), 10_000);
        }
        assert_eq!(h.uploads.len(), 0);
        assert_eq!(h.temp_files(), 0);
    }

    /// A guard of 1000 bytes/s over 1 s windows (a stall limit far away).
    fn fast_guard(cfg: &mut DiskConfig) {
        cfg.body_stall_timeout = Duration::from_secs(600);
        cfg.body_min_rate = 1000;
        cfg.body_rate_window = Duration::from_secs(1);
    }

    #[tokio::test]
    async fn an_idle_upload_is_resumable_until_cut_then_reports_zero_and_restarts() {
        let h = Harness::start_with(100, 100, Duration::from_secs(600), fast_guard).await;
        let (data, hex) = blob(3);
        let name = upload_name("c", &hex);
        // Interrupted, and resumed at once: the upload goes on.
        let first = h.write(&name, &data[..4000], 0, false, false);
        assert_eq!(first.await.unwrap().unwrap(), 4000);
        let second = h.write(&name, &data[4000..7000], 4000, false, false);
        assert_eq!(second.await.unwrap().unwrap(), 7000);
        assert_eq!(h.query(&name).await.unwrap(), (7000, false));
        // Left idle: the store cuts its silent body and lets go of its temp
        // file and reservation; the upload is dead, not gone.
        eventually("the cut", || h.temp_files() == 0).await;
        eventually("the reservation's release", || {
            h.store.stats().reserved_bytes == 0
        })
        .await;
        assert_eq!(h.query(&name).await.unwrap(), (0, false));
        assert_eq!(h.store.uploads_cut().get(CutReason::TooSlow), 1);
        // Resuming where it was is refused; starting over works.
        let late = h.write(&name, &data[7000..], 7000, true, false);
        assert_eq!(
            late.await.unwrap().unwrap_err().code(),
            Code::InvalidArgument
        );
        let again = h.write(&name, &data, 0, true, false);
        assert_eq!(again.await.unwrap().unwrap(), 10_000);
        assert_eq!(h.query(&name).await.unwrap(), (10_000, true));
        assert_eq!(h.uploads.len(), 0);
    }

    #[tokio::test]
    async fn a_stream_that_goes_silent_is_ended_when_its_upload_is_cut() {
        let h = Harness::start_with(100, 100, Duration::from_secs(600), fast_guard).await;
        let (data, hex) = blob(4);
        let name = upload_name("d", &hex);
        // One message, then the stream stays open and silent.
        let held = h.write(&name, &data[..100], 0, false, true);
        let status = tokio::time::timeout(Duration::from_secs(30), held)
            .await
            .expect("the call is ended once its upload is cut")
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("bytes/s"), "{status:?}");
        assert_eq!(h.query(&name).await.unwrap(), (0, false));
        assert_eq!(h.temp_files(), 0);
        let again = h.write(&name, &data, 0, true, false);
        assert_eq!(again.await.unwrap().unwrap(), 10_000);
    }
}
