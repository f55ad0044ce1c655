//! [`GrpcBackend`]: the proxy's [`Backend`] over REAPI v2 clients (tonic).
//!
//! Identity bytes both ways (`blobs/…` resource names): every REAPI cache
//! serves them, and the proxy verifies what comes back through the local
//! store's write path. A blob stored zstd-compressed locally is decoded
//! while it is sent. No instance name, as bazel-remote's `grpc_proxy`.
//!
//! Action digests are sent with size -1, as bazel-remote's `grpc_proxy`
//! does: the proxy knows an action cache key by hash only, and caches that
//! key the action cache by hash (bazel-remote, bazel-cache) ignore the size.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bazel_cache_digest::{BlobKey, Digest, DigestFunction, Hash, Kind};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio_util::io::ReaderStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::BlobReader;
use crate::action_result::{self, MAX_ACTION_RESULT_BYTES};
use crate::backend_url::{PemFiles, UrlBackendConfig};
use crate::progress::ProgressGuard;
use crate::proxy::expiring_map::ExpiringMap;
use crate::proxy::{Backend, BackendError, Download, Presence, Upload};

use bs::byte_stream_client::ByteStreamClient;
use re::action_cache_client::ActionCacheClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;

/// Longest wait for a unary answer, for the first message of a Read, and
/// for the next message of a Read.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A Write may take this long per MiB on top of [`REQUEST_TIMEOUT`].
const WRITE_TIME_PER_MIB: Duration = Duration::from_secs(1);
/// Bytes per ByteStream WriteRequest (well under gRPC's 4 MiB default).
const WRITE_CHUNK: usize = 256 * 1024;
/// Largest ActionCache message accepted from the other cache (an
/// ActionResult can be large).
const MAX_MESSAGE: usize = MAX_ACTION_RESULT_BYTES as usize + 1024;
/// Largest ByteStream Read message: chunks are small (bazel-remote sends
/// 2 MiB at most, gRPC peers expect 4 MiB), so a download holds little
/// memory at a time.
const MAX_READ_MESSAGE: usize = 16 << 20;
/// Blob sizes remembered, in the proxy's bounded ring map (a few tens of
/// bytes each). A size is needed only between the ActionResult (or
/// FindMissingBlobs) that names a blob and the read that follows.
const KNOWN_SIZES: usize = 1 << 18;
/// A blob's size never changes; entries leave by being the oldest of a
/// full map, and this only bounds how long an unused one lingers.
const SIZE_TTL: Duration = Duration::from_secs(24 * 3600);

pub struct GrpcBackend {
    channel: Channel,
    /// `grpc[s]://host:port`, without credentials.
    base: String,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    sizes: ExpiringMap<u64>,
    /// Makes upload resource names unique within this process.
    uploads: AtomicU64,
}

impl GrpcBackend {
    /// A client for `cfg`; reads its TLS files now, so a mistake stops the
    /// start. Connects lazily: the other cache may come up later, and while
    /// it is down every read is a miss.
    pub fn new(cfg: &UrlBackendConfig) -> Result<GrpcBackend, String> {
        let scheme = if cfg.tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", cfg.authority))
            .map_err(|e| format!("grpc_proxy.url: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        if cfg.tls {
            let PemFiles { ca, identity } = cfg.pem_files()?;
            let mut tls = ClientTlsConfig::new().domain_name(cfg.host.clone());
            tls = match ca {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("grpc_proxy TLS: {e}"))?;
        }
        let authorization = cfg
            .basic_auth
            .as_ref()
            .map(|a| {
                let mut v = MetadataValue::try_from(a.header_value())
                    .map_err(|_| "grpc_proxy.url: the user info cannot be sent in a header")?;
                v.set_sensitive(true);
                Ok::<_, String>(v)
            })
            .transpose()?;
        Ok(GrpcBackend {
            channel: endpoint.connect_lazy(),
            base: cfg.display_url(),
            authorization,
            sizes: ExpiringMap::new(KNOWN_SIZES),
            uploads: AtomicU64::new(0),
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        if let Some(auth) = &self.authorization {
            req.metadata_mut().insert("authorization", auth.clone());
        }
        req
    }

    fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel.clone()).max_decoding_message_size(MAX_READ_MESSAGE)
    }

    fn action_cache(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// Remembers the sizes of the blobs an ActionResult references.
    fn learn(&self, function: DigestFunction, ar: &re::ActionResult) {
        for d in action_result::referenced_blobs(function, ar) {
            self.sizes.insert(&BlobKey::cas(d.hash), d.size, SIZE_TTL);
        }
    }

    fn action_digest(hash: &Hash) -> re::Digest {
        re::Digest {
            hash: hash.to_hex(),
            size_bytes: -1,
        }
    }

    /// The ActionResult stored under `hash`, `None` when absent.
    async fn get_action_result(&self, hash: &Hash) -> Result<Option<re::ActionResult>, Status> {
        let req = re::GetActionResultRequest {
            action_digest: Some(Self::action_digest(hash)),
            digest_function: hash.function().to_reapi(),
            ..Default::default()
        };
        let mut client = self.action_cache();
        match within(REQUEST_TIMEOUT, client.get_action_result(self.request(req))).await {
            Ok(ar) => {
                let ar = ar.into_inner();
                self.learn(hash.function(), &ar);
                Ok(Some(ar))
            }
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    async fn find_missing(&self, d: &Digest) -> Result<Presence, Status> {
        let req = re::FindMissingBlobsRequest {
            blob_digests: vec![d.to_reapi()],
            digest_function: d.hash.function().to_reapi(),
            ..Default::default()
        };
        let mut client = self.cas();
        let answer = within(
            REQUEST_TIMEOUT,
            client.find_missing_blobs(self.request(req)),
        )
        .await?
        .into_inner();
        Ok(if answer.missing_blob_digests.is_empty() {
            self.sizes.insert(&BlobKey::cas(d.hash), d.size, SIZE_TTL);
            Presence::Present { size: Some(d.size) }
        } else {
            Presence::Absent
        })
    }

    async fn read(&self, d: Digest) -> Result<Option<Download>, Status> {
        let req = bs::ReadRequest {
            resource_name: d.blobs_path(),
            read_offset: 0,
            read_limit: 0,
        };
        let mut client = self.bytestream();
        let mut stream = match within(REQUEST_TIMEOUT, client.read(self.request(req))).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(s),
        };
        // A missing blob shows in the first message; ask for it before
        // saying "found".
        let first = match tokio::time::timeout(REQUEST_TIMEOUT, stream.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no first ByteStream message")),
            Ok(Err(s)) if s.code() == Code::NotFound => return Ok(None),
            Ok(Err(s)) => return Err(s),
            Ok(Ok(first)) => first,
        };
        let chunks = futures_util::stream::iter(first.map(Ok))
            .chain(stream)
            .map_ok(|r: bs::ReadResponse| Bytes::from(r.data))
            .map_err(io::Error::other);
        let reader = tokio_util::io::StreamReader::new(chunks);
        Ok(Some(Download {
            size: Some(d.size),
            stored_len: Some(d.size),
            body: Box::pin(ProgressGuard::new(
                reader,
                REQUEST_TIMEOUT,
                "grpc_proxy Read",
            )),
        }))
    }

    async fn write(&self, hash: Hash, upload: Upload) -> Result<(), Status> {
        let size = upload.size;
        let digest = Digest { hash, size };
        let resource_name = format!("uploads/{}/{}", self.upload_id(&hash), digest.blobs_path());
        let requests = WriteRequests::new(upload.into_identity_reader(), size, resource_name);
        let mib = u32::try_from(size >> 20).unwrap_or(u32::MAX);
        let timeout = REQUEST_TIMEOUT.saturating_add(WRITE_TIME_PER_MIB.saturating_mul(mib));
        let mut client = self.bytestream();
        let answer = within(timeout, client.write(self.request(requests)))
            .await?
            .into_inner();
        if answer.committed_size != size as i64 && answer.committed_size != -1 {
            return Err(Status::data_loss(format!(
                "the other cache committed {} of {size} bytes",
                answer.committed_size
            )));
        }
        self.sizes.insert(&BlobKey::cas(hash), size, SIZE_TTL);
        Ok(())
    }

    async fn update_action_result(&self, hash: Hash, upload: Upload) -> Result<(), BackendError> {
        let Upload { file, size, .. } = upload;
        if size > MAX_ACTION_RESULT_BYTES {
            return Err(refused(format!(
                "an ActionResult of {size} bytes is too large"
            )));
        }
        let bytes = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(size as usize);
            io::Read::read_to_end(&mut io::Read::take(file, size), &mut out).map(|_| out)
        })
        .await
        .map_err(BackendError::local)?
        .map_err(BackendError::local)?;
        let ar = re::ActionResult::decode(bytes.as_slice()).map_err(|e| {
            // Stored over HTTP with disable_http_ac_validation: REAPI can
            // only carry ActionResults.
            refused(format!("the entry is not an ActionResult ({e})"))
        })?;
        let req = re::UpdateActionResultRequest {
            action_digest: Some(Self::action_digest(&hash)),
            action_result: Some(ar),
            digest_function: hash.function().to_reapi(),
            ..Default::default()
        };
        let mut client = self.action_cache();
        let answer = within(
            REQUEST_TIMEOUT,
            client.update_action_result(self.request(req)),
        )
        .await;
        match answer {
            Ok(_) => Ok(()),
            // A cache that checks an ActionResult's outputs (bazel-cache
            // does) refuses it until they are uploaded too: try again later.
            Err(s) if s.code() == Code::FailedPrecondition => Err(BackendError {
                retryable: true,
                code: None,
                source: format!("{:?}: {}", s.code(), s.message()).into(),
            }),
            Err(s) => Err(status_error(s)),
        }
    }

    /// A uuid-shaped id (REAPI asks for a uuid), unique per upload: the
    /// hash of the blob, the clock and a counter.
    fn upload_id(&self, hash: &Hash) -> String {
        let n = self.uploads.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mut seed = Vec::with_capacity(64);
        seed.extend_from_slice(hash.bytes());
        seed.extend_from_slice(&nanos.to_le_bytes());
        seed.extend_from_slice(&n.to_le_bytes());
        seed.extend_from_slice(&std::process::id().to_le_bytes());
        let h = Hash::of(&seed).to_hex();
        format!(
            "{}-{}-4{}-8{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }
}

/// The WriteRequests of an upload: one per chunk of the local blob; the
/// first names the resource, the one that reaches `size` finishes the
/// write. A local file that ends early (or fails to read) ends the stream
/// unfinished, which the other cache refuses, so the upload is retried.
struct WriteRequests {
    chunks: ReaderStream<BlobReader>,
    size: u64,
    offset: u64,
    resource_name: Option<String>,
    done: bool,
}

impl WriteRequests {
    fn new(reader: BlobReader, size: u64, resource_name: String) -> WriteRequests {
        WriteRequests {
            chunks: ReaderStream::with_capacity(reader, WRITE_CHUNK),
            size,
            offset: 0,
            resource_name: Some(resource_name),
            done: false,
        }
    }
}

impl Stream for WriteRequests {
    type Item = bs::WriteRequest;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<bs::WriteRequest>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        let data = match self.chunks.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(data))) => data,
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "reading a local blob for a grpc_proxy upload");
                self.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(None) if self.size == 0 && self.resource_name.is_some() => Bytes::new(),
            Poll::Ready(None) => {
                self.done = true;
                return Poll::Ready(None);
            }
        };
        let room = usize::try_from(self.size - self.offset).unwrap_or(usize::MAX);
        let data = data.slice(..data.len().min(room));
        let offset = self.offset;
        self.offset += data.len() as u64;
        let finish_write = self.offset >= self.size;
        self.done = finish_write;
        Poll::Ready(Some(bs::WriteRequest {
            resource_name: self.resource_name.take().unwrap_or_default(),
            write_offset: offset as i64,
            finish_write,
            data: Vec::from(data),
        }))
    }
}

/// `call`, failed with DEADLINE_EXCEEDED when it takes longer than `limit`.
async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(Status::deadline_exceeded(format!(
            "no answer within {limit:?}"
        )))
    })
}

/// A request the other cache will refuse however often it is sent.
fn refused(message: String) -> BackendError {
    BackendError {
        retryable: false,
        code: None,
        source: message.into(),
    }
}

fn status_error(s: Status) -> BackendError {
    let retryable = matches!(
        s.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
            | Code::DataLoss
    );
    BackendError {
        retryable,
        code: (!retryable).then(|| format!("grpc {:?}", s.code())),
        source: format!("{:?}: {}", s.code(), s.message()).into(),
    }
}

#[async_trait]
impl Backend for GrpcBackend {
    fn name(&self) -> &'static str {
        "grpc"
    }

    fn locate(&self, key: &BlobKey) -> String {
        match key.kind {
            Kind::Ac => format!("{} actionResult {}", self.base, key.hash),
            Kind::Cas => match self.sizes.get(&BlobKey::cas(key.hash)) {
                Some(size) => format!(
                    "{}/{}",
                    self.base,
                    Digest {
                        hash: key.hash,
                        size
                    }
                    .blobs_path()
                ),
                None => format!(
                    "{}/blobs/{}{}",
                    self.base,
                    key.hash.function().resource_segment(),
                    key.hash
                ),
            },
        }
    }

    /// A CAS blob whose size this backend has not seen is reported absent:
    /// REAPI cannot ask for it by hash alone.
    async fn head(&self, key: &BlobKey) -> Result<Presence, BackendError> {
        match key.kind {
            Kind::Ac => Ok(match self.get_action_result(&key.hash).await {
                Ok(Some(_)) => Presence::Present { size: None },
                Ok(None) => Presence::Absent,
                Err(s) => return Err(status_error(s)),
            }),
            Kind::Cas => match self.sizes.get(&BlobKey::cas(key.hash)) {
                Some(size) => {
                    self.head_digest(&Digest {
                        hash: key.hash,
                        size,
                    })
                    .await
                }
                None => Ok(Presence::Absent),
            },
        }
    }

    async fn head_digest(&self, d: &Digest) -> Result<Presence, BackendError> {
        self.find_missing(d).await.map_err(status_error)
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Download>, BackendError> {
        match key.kind {
            Kind::Ac => {
                let Some(ar) = self
                    .get_action_result(&key.hash)
                    .await
                    .map_err(status_error)?
                else {
                    return Ok(None);
                };
                let bytes = Bytes::from(ar.encode_to_vec());
                let len = bytes.len() as u64;
                Ok(Some(Download {
                    size: Some(len),
                    stored_len: Some(len),
                    body: Box::pin(io::Cursor::new(bytes)),
                }))
            }
            Kind::Cas => {
                let Some(size) = self.sizes.get(&BlobKey::cas(key.hash)) else {
                    tracing::debug!(hash = %key.hash, "grpc_proxy: size unknown, cannot ask for the blob");
                    return Ok(None);
                };
                self.read(Digest {
                    hash: key.hash,
                    size,
                })
                .await
                .map_err(status_error)
            }
        }
    }

    async fn put(&self, key: &BlobKey, blob: Upload) -> Result<(), BackendError> {
        match key.kind {
            Kind::Ac => self.update_action_result(key.hash, blob).await,
            Kind::Cas => self.write(key.hash, blob).await.map_err(status_error),
        }
    }

    async fn touch(&self, _key: &BlobKey) -> Result<(), BackendError> {
        Ok(())
    }
}
