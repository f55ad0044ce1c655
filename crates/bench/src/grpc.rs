//! The REAPI v2 client, as Bazel uses a `grpc://` cache: Capabilities once
//! (for the batch limit and support for the digest function chosen),
//! `BatchUpdateBlobs` /
//! `BatchReadBlobs` for blobs that fit the announced
//! `max_batch_total_size_bytes`, ByteStream `Write` / `Read` for the rest,
//! `FindMissingBlobs` for presence. Instance names and basic auth
//! (`authorization` metadata, as Bazel sends URL credentials) apply to every
//! call. Every call names the digest function of the blobs it is about, as
//! Bazel does with `--digest_function`: the `digest_function` field, and
//! `blake3/` before the hash in ByteStream resource names.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use bs::byte_stream_client::ByteStreamClient;
use prost::Message as _;
use re::capabilities_client::CapabilitiesClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use re::action_cache_client::ActionCacheClient;

use crate::blobs::{BlobId, SizeClass};
use crate::client::one_by_one;
use crate::error::{BenchError, OpError, chain};
use crate::http::{check, short};
use crate::mix::Op;
use crate::options::Options;
use crate::tls::Loaded;
use crate::zstd_read::Verifier;
use bazel_cache_digest::{DigestFunction, Hash};
use bazel_cache_h2io::{BufferedReads, CoalescedWrites};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The most blob bytes put in one batch call whatever the server announces:
/// a default gRPC server refuses messages over 4 MiB, and the request needs
/// room for digests and framing.
pub(crate) const BATCH_CEILING: u64 = 4 * 1024 * 1024 - 64 * 1024;
/// Largest message this client accepts (a batch read answer, a ByteStream
/// chunk from a server with big chunks).
const MAX_MESSAGE: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens one connection of the client: TCP without Nagle's delay, writes
/// gathered per burst of frames and reads taken in large gulps
/// (`bazel_cache_h2io`), so that a unary call leaves in one write and its
/// answer comes in one read, as from Bazel's own client (grpc-java flushes
/// a unary call's headers and message together). Without it every call
/// cost the client two writes and the server two TCP segments to take in,
/// which measured the load generator's HTTP/2 stack more than the server.
///
/// With TLS, tonic puts rustls above this connector, so writes are not
/// gathered there: a gathering layer defers a flush until the next one,
/// which h2 always makes but rustls's handshake does not (it flushes its
/// hello, then waits for the answer). Reads are buffered either way. tonic
/// puts its connect timeout around all of it.
async fn open(endpoint: &Endpoint, tls: bool) -> Result<Channel, tonic::transport::Error> {
    if tls {
        open_through(endpoint, BufferedReads::new).await
    } else {
        open_through(endpoint, |tcp| {
            BufferedReads::new(CoalescedWrites::new(tcp))
        })
        .await
    }
}

/// One channel over TCP connections wrapped by `wrap`.
async fn open_through<T>(
    endpoint: &Endpoint,
    wrap: fn(TcpStream) -> T,
) -> Result<Channel, tonic::transport::Error>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let connector =
        move |uri| async move { Ok::<_, io::Error>(TokioIo::new(wrap(tcp(uri).await?))) };
    endpoint
        .connect_with_connector(tower::service_fn(connector))
        .await
}

/// The TCP connection to `uri`'s host and port, without Nagle's delay.
async fn tcp(uri: http::Uri) -> io::Result<TcpStream> {
    let host = uri.host().unwrap_or_default();
    // IPv6 literals come bracketed in URIs, not in socket addresses.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let tcp = TcpStream::connect((host, uri.port_u16().unwrap_or(default_port))).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Adds the basic-auth header to every call.
#[derive(Clone)]
pub(crate) struct Auth(Option<AsciiMetadataValue>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, Auth>;

pub(crate) struct GrpcClient {
    channels: Vec<Channel>,
    auth: Auth,
    instance: String,
    /// Blob bytes per batch call; larger blobs go through ByteStream.
    batch_limit: u64,
    /// False with `--batch 0`: every blob goes through ByteStream.
    batches: bool,
    /// Whether BatchUpdateBlobs takes zstd (else zstd writes use ByteStream).
    zstd_batches: bool,
    /// Bytes per ByteStream `WriteRequest`.
    chunk: usize,
    /// Makes upload resource names unique within this process.
    uploads: AtomicU64,
    nonce: u64,
}

impl GrpcClient {
    /// Opens `connections` HTTP/2 connections (requests are spread over
    /// them by worker) and asks the server for its capabilities.
    pub(crate) async fn connect(
        options: &Options,
        tls: Option<&Loaded>,
    ) -> Result<GrpcClient, BenchError> {
        let (target, instance) = (&options.target, options.instance_name.as_str());
        let connect_error = |message: String| BenchError::Connect {
            target: target.redacted(),
            message,
        };
        let scheme = if target.tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", target.authority()))
            .map_err(|e| connect_error(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_adaptive_window(true);
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls.tonic(target.server_name()))
                .map_err(|e| connect_error(chain(&e)))?;
        }
        let mut channels = Vec::with_capacity(options.connections);
        for _ in 0..options.connections.max(1) {
            channels.push(
                open(&endpoint, target.tls)
                    .await
                    .map_err(|e| connect_error(chain(&e)))?,
            );
        }
        let auth = Auth(match target.basic_auth() {
            None => None,
            Some(v) => Some(MetadataValue::try_from(v).map_err(|_| BenchError::Url {
                url: target.redacted(),
                message: "the user or password cannot be sent as gRPC metadata".to_owned(),
            })?),
        });
        let mut client = GrpcClient {
            channels,
            auth,
            instance: instance.to_owned(),
            batch_limit: BATCH_CEILING,
            batches: options.batch > 0,
            zstd_batches: false,
            chunk: options.chunk_size.max(1),
            uploads: AtomicU64::new(0),
            nonce: u64::from(std::process::id()) << 32 ^ crate::time_seed(),
        };
        let caps =
            CapabilitiesClient::with_interceptor(client.channels[0].clone(), client.auth.clone())
                .get_capabilities(re::GetCapabilitiesRequest {
                    instance_name: instance.to_owned(),
                })
                .await
                .map_err(|s| {
                    connect_error(format!("GetCapabilities: {:?}: {}", s.code(), s.message()))
                })?
                .into_inner();
        let cache = caps.cache_capabilities.ok_or_else(|| {
            connect_error("the server announces no cache capabilities".to_owned())
        })?;
        let function = options.digest_function;
        if !cache.digest_functions.contains(&function.to_reapi()) {
            return Err(connect_error(format!(
                "the server does not announce {function} among its digest_functions \
                 (--digest_function {})",
                function.as_str()
            )));
        }
        if cache.max_batch_total_size_bytes > 0 {
            client.batch_limit = BATCH_CEILING.min(cache.max_batch_total_size_bytes as u64);
        }
        let zstd = re::compressor::Value::Zstd as i32;
        if options.mix.any(Op::zstd) && !cache.supported_compressors.contains(&zstd) {
            return Err(connect_error(
                "the server does not announce zstd among its supported_compressors, which \
                 read-zstd and write-zstd use"
                    .to_owned(),
            ));
        }
        client.zstd_batches = cache.supported_batch_update_compressors.contains(&zstd);
        Ok(client)
    }

    /// How many blobs of `size` bytes go in one batch call, at most `want`;
    /// 0 means the blob needs ByteStream.
    pub(crate) fn per_batch(&self, size: u64, want: usize) -> usize {
        (self.batch_limit / size).min(want as u64) as usize
    }

    pub(crate) fn batch_limit(&self) -> u64 {
        self.batch_limit
    }

    fn channel(&self, worker: usize) -> Channel {
        self.channels[worker % self.channels.len()].clone()
    }

    fn cas(&self, worker: usize) -> ContentAddressableStorageClient<Svc> {
        ContentAddressableStorageClient::with_interceptor(self.channel(worker), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn action_cache(&self, worker: usize) -> ActionCacheClient<Svc> {
        ActionCacheClient::with_interceptor(self.channel(worker), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn bytestream(&self, worker: usize) -> ByteStreamClient<Svc> {
        ByteStreamClient::with_interceptor(self.channel(worker), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn prefix(&self) -> String {
        match self.instance.as_str() {
            "" => String::new(),
            i => format!("{i}/"),
        }
    }

    /// Uploads `ids` (all of `class`), as zstd streams if `zstd`: one batch
    /// call when they fit it, else one ByteStream write each. Returns the
    /// blob bytes sent.
    pub(crate) async fn write(
        &self,
        worker: usize,
        class: &Arc<SizeClass>,
        ids: &[BlobId],
        zstd: bool,
    ) -> Result<u64, OpError> {
        if self.fits_batch(class, ids) && (!zstd || self.zstd_batches) {
            self.batch_update(worker, class, ids, zstd).await
        } else {
            one_by_one(ids, |id| self.stream_write(worker, class, id, zstd)).await
        }
    }

    /// Downloads and checks `ids`, accepting zstd if `zstd`, like
    /// [`GrpcClient::write`].
    pub(crate) async fn read(
        &self,
        worker: usize,
        class: &Arc<SizeClass>,
        ids: &[BlobId],
        zstd: bool,
    ) -> Result<u64, OpError> {
        if self.fits_batch(class, ids) {
            self.batch_read(worker, class, ids, zstd).await
        } else {
            one_by_one(ids, |id| self.stream_read(worker, class, id, zstd)).await
        }
    }

    fn fits_batch(&self, class: &SizeClass, ids: &[BlobId]) -> bool {
        self.batches && ids.len() <= self.per_batch(class.size(), ids.len())
    }

    /// `UpdateActionResult` of `action`, a digest of `function`; returns
    /// the ActionResult's encoded length.
    pub(crate) async fn ac_write(
        &self,
        worker: usize,
        function: DigestFunction,
        action: re::Digest,
        result: re::ActionResult,
        len: u64,
    ) -> Result<u64, OpError> {
        let what = format!("UpdateActionResult {}", &action.hash[..16]);
        self.action_cache(worker)
            .update_action_result(re::UpdateActionResultRequest {
                instance_name: self.instance.clone(),
                action_digest: Some(action),
                action_result: Some(result),
                results_cache_policy: None,
                digest_function: function.to_reapi(),
            })
            .await
            .map_err(|s| OpError::grpc(what, &s))?;
        Ok(len)
    }

    /// `GetActionResult`, checked against the encoding of the ActionResult
    /// stored (`len` bytes hashing to `expected`, whose function the action
    /// digest is of too); returns its length.
    pub(crate) async fn ac_read(
        &self,
        worker: usize,
        action: re::Digest,
        len: u64,
        expected: Hash,
    ) -> Result<u64, OpError> {
        let what = format!("GetActionResult {}", &action.hash[..16]);
        let result = self
            .action_cache(worker)
            .get_action_result(re::GetActionResultRequest {
                instance_name: self.instance.clone(),
                action_digest: Some(action),
                inline_stdout: false,
                inline_stderr: false,
                inline_output_files: Vec::new(),
                digest_function: expected.function().to_reapi(),
            })
            .await
            .map_err(|s| OpError::grpc(what.clone(), &s))?
            .into_inner();
        let mut hasher = bazel_cache_digest::Hasher::new(expected.function());
        hasher.update(&result.encode_to_vec());
        check(&what, len, expected, hasher)
    }

    /// `FindMissingBlobs`: which of `ids` the server lacks.
    pub(crate) async fn find_missing(
        &self,
        worker: usize,
        class: &Arc<SizeClass>,
        ids: &[BlobId],
    ) -> Result<Vec<BlobId>, OpError> {
        // Each blob's name is hashed once: the answer is matched against
        // the names sent.
        let digests: Vec<re::Digest> = ids.iter().map(|&id| digest(class, id)).collect();
        let asked: std::collections::HashMap<String, BlobId> = digests
            .iter()
            .zip(ids)
            .map(|(d, &id)| (d.hash.clone(), id))
            .collect();
        let missing = self
            .cas(worker)
            .find_missing_blobs(re::FindMissingBlobsRequest {
                instance_name: self.instance.clone(),
                blob_digests: digests,
                digest_function: class.function().to_reapi(),
            })
            .await
            .map_err(|s| OpError::grpc("FindMissingBlobs", &s))?
            .into_inner()
            .missing_blob_digests;
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(missing.len());
        for m in missing {
            match asked.get(&m.hash) {
                Some(&id) if m.size_bytes == class.size() as i64 => out.push(id),
                _ => {
                    return Err(OpError::WrongAnswer(format!(
                        "FindMissingBlobs named {}/{}, which was not asked about",
                        m.hash, m.size_bytes
                    )));
                }
            }
        }
        Ok(out)
    }

    async fn batch_update(
        &self,
        worker: usize,
        class: &Arc<SizeClass>,
        ids: &[BlobId],
        zstd: bool,
    ) -> Result<u64, OpError> {
        let requests = ids
            .iter()
            .map(|&id| re::batch_update_blobs_request::Request {
                digest: Some(digest(class, id)),
                data: if zstd {
                    class.zstd_copy(id, 0..class.zstd_len())
                } else {
                    class.copy(id, 0..class.size())
                },
                compressor: compressor(zstd) as i32,
            })
            .collect();
        let responses = self
            .cas(worker)
            .batch_update_blobs(re::BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests,
                digest_function: class.function().to_reapi(),
            })
            .await
            .map_err(|s| OpError::grpc("BatchUpdateBlobs", &s))?
            .into_inner()
            .responses;
        if responses.len() != ids.len() {
            return Err(OpError::WrongAnswer(format!(
                "BatchUpdateBlobs answered for {} of {} blobs",
                responses.len(),
                ids.len()
            )));
        }
        for r in responses {
            blob_status("BatchUpdateBlobs", r.digest.as_ref(), r.status)?;
        }
        Ok(class.size() * ids.len() as u64)
    }

    async fn batch_read(
        &self,
        worker: usize,
        class: &Arc<SizeClass>,
        ids: &[BlobId],
        zstd: bool,
    ) -> Result<u64, OpError> {
        let digests: Vec<re::Digest> = ids.iter().map(|&id| digest(class, id)).collect();
        let responses = self
            .cas(worker)
            .batch_read_blobs(re::BatchReadBlobsRequest {
                instance_name: self.instance.clone(),
                digests: digests.clone(),
                acceptable_compressors: if zstd {
                    vec![compressor(true) as i32]
                } else {
                    Vec::new()
                },
                digest_function: class.function().to_reapi(),
            })
            .await
            .map_err(|s| OpError::grpc("BatchReadBlobs", &s))?
            .into_inner()
            .responses;
        let mut answered = vec![false; ids.len()];
        let mut bytes = 0;
        for r in responses {
            blob_status("BatchReadBlobs", r.digest.as_ref(), r.status)?;
            let i = r
                .digest
                .as_ref()
                .and_then(|d| digests.iter().position(|x| x == d))
                .ok_or_else(|| {
                    OpError::WrongAnswer("BatchReadBlobs answered for a blob not asked for".into())
                })?;
            let hash = class.hash(ids[i]);
            let what = format!("BatchReadBlobs {}", short(&hash));
            let zstd_answer = r.compressor == compressor(true) as i32;
            if zstd_answer && !zstd {
                return Err(OpError::WrongAnswer(format!(
                    "{what}: answered with zstd, which was not accepted"
                )));
            }
            let hasher = verify(&what, zstd_answer, hash.function(), [&r.data[..]])?;
            bytes += check(&what, class.size(), hash, hasher)?;
            answered[i] = true;
        }
        if answered.iter().any(|a| !a) {
            return Err(OpError::WrongAnswer(format!(
                "BatchReadBlobs answered for {} of {} blobs",
                answered.iter().filter(|a| **a).count(),
                ids.len()
            )));
        }
        Ok(bytes)
    }

    async fn stream_write(
        &self,
        worker: usize,
        class: &Arc<SizeClass>,
        id: BlobId,
        zstd: bool,
    ) -> Result<u64, OpError> {
        let size = class.size();
        let hash = class.hash(id);
        let n = self.uploads.fetch_add(1, Ordering::Relaxed);
        let resource = format!(
            "{}uploads/{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}/{}",
            self.prefix(),
            (self.nonce >> 32) as u32,
            (self.nonce >> 16) as u16,
            self.nonce & 0xfff,
            (n >> 48) & 0xfff,
            n & 0xffff_ffff_ffff,
            blob_resource(&hash, size, zstd),
        );
        // Offsets count the bytes sent: compressed ones for zstd.
        let sent = if zstd { class.zstd_len() } else { size };
        let chunk = self.chunk as u64;
        let class = class.clone();
        let messages = sent.div_ceil(chunk);
        let requests = futures_util::stream::iter((0..messages).map(move |k| {
            let range = k * chunk..((k + 1) * chunk).min(sent);
            bs::WriteRequest {
                resource_name: if k == 0 {
                    resource.clone()
                } else {
                    String::new()
                },
                write_offset: range.start as i64,
                finish_write: range.end == sent,
                data: if zstd {
                    class.zstd_copy(id, range)
                } else {
                    class.copy(id, range)
                },
            }
        }));
        let what = format!("ByteStream.Write{} {}", zstd_tag(zstd), short(&hash));
        let committed = self
            .bytestream(worker)
            .write(requests)
            .await
            .map_err(|s| OpError::grpc(what.clone(), &s))?
            .into_inner()
            .committed_size;
        // A compressed upload of a blob the server already has may end
        // early with -1 (REAPI); otherwise the bytes sent are committed.
        let expected =
            committed == sent as i64 || (zstd && (committed == -1 || committed == size as i64));
        if !expected {
            return Err(OpError::WrongAnswer(format!(
                "{what}: committed_size {committed} after sending {sent} bytes of a {size}-byte blob"
            )));
        }
        Ok(size)
    }

    async fn stream_read(
        &self,
        worker: usize,
        class: &Arc<SizeClass>,
        id: BlobId,
        zstd: bool,
    ) -> Result<u64, OpError> {
        let hash = class.hash(id);
        let what = format!("ByteStream.Read{} {}", zstd_tag(zstd), short(&hash));
        let request = bs::ReadRequest {
            resource_name: format!(
                "{}{}",
                self.prefix(),
                blob_resource(&hash, class.size(), zstd)
            ),
            read_offset: 0,
            read_limit: 0,
        };
        // Called as the generated client does, but decoding the data as
        // `Bytes` (see ReadResponse).
        let mut grpc = tonic::client::Grpc::new(InterceptedService::new(
            self.channel(worker),
            self.auth.clone(),
        ))
        .max_decoding_message_size(MAX_MESSAGE);
        grpc.ready()
            .await
            .map_err(|e| OpError::grpc(what.clone(), &tonic::Status::unavailable(e.to_string())))?;
        let mut stream = grpc
            .server_streaming(
                tonic::Request::new(request),
                http::uri::PathAndQuery::from_static("/google.bytestream.ByteStream/Read"),
                tonic_prost::ProstCodec::<bs::ReadRequest, ReadResponse>::default(),
            )
            .await
            .map_err(|s| OpError::grpc(what.clone(), &s))?
            .into_inner();
        let mut verifier =
            Verifier::new(zstd, hash.function()).map_err(|e| OpError::undecodable(&what, e))?;
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| OpError::grpc(what.clone(), &s))?
        {
            verifier
                .update(&msg.data)
                .map_err(|e| OpError::undecodable(&what, e))?;
        }
        let hasher = verifier
            .finish()
            .map_err(|e| OpError::undecodable(&what, e))?;
        check(&what, class.size(), hash, hasher)
    }
}

/// `google.bytestream.ReadResponse` with its data as `Bytes`: decoded as a
/// slice of tonic's receive buffer, where the generated `Vec<u8>` copies
/// every byte read once more into a fresh allocation. The load generator
/// shares the machine with the server it measures, so its waste is the
/// server's loss.
#[derive(Clone, PartialEq, prost::Message)]
struct ReadResponse {
    #[prost(bytes = "bytes", tag = "10")]
    data: bytes::Bytes,
}

/// `blobs/[blake3/]{hash}/{size}` or
/// `compressed-blobs/zstd/[blake3/]{hash}/{size}` (REAPI: the function is
/// named for BLAKE3, omitted for SHA-256).
fn blob_resource(hash: &Hash, size: u64, zstd: bool) -> String {
    let kind = if zstd {
        "compressed-blobs/zstd"
    } else {
        "blobs"
    };
    format!(
        "{kind}/{}{}/{size}",
        hash.function().resource_segment(),
        hash.to_hex()
    )
}

fn zstd_tag(zstd: bool) -> &'static str {
    if zstd { " zstd" } else { "" }
}

fn compressor(zstd: bool) -> re::compressor::Value {
    if zstd {
        re::compressor::Value::Zstd
    } else {
        re::compressor::Value::Identity
    }
}

/// Hashes `pieces` with `function` (decoded from zstd first if `zstd`).
fn verify<'a>(
    what: &str,
    zstd: bool,
    function: DigestFunction,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<bazel_cache_digest::Hasher, OpError> {
    let mut verifier = Verifier::new(zstd, function).map_err(|e| OpError::undecodable(what, e))?;
    for p in pieces {
        verifier
            .update(p)
            .map_err(|e| OpError::undecodable(what, e))?;
    }
    verifier.finish().map_err(|e| OpError::undecodable(what, e))
}

fn digest(class: &SizeClass, id: BlobId) -> re::Digest {
    re::Digest {
        hash: class.hex(id),
        size_bytes: class.size() as i64,
    }
}

/// A batch entry's status as an error when it is not OK.
fn blob_status(
    call: &str,
    digest: Option<&re::Digest>,
    status: Option<bazel_remote_apis::google::rpc::Status>,
) -> Result<(), OpError> {
    let Some(status) = status.filter(|s| s.code != 0) else {
        return Ok(());
    };
    let blob = digest.map_or_else(|| "?".to_owned(), |d| d.hash.chars().take(16).collect());
    Err(OpError::Grpc {
        code: tonic::Code::from_i32(status.code),
        context: format!("{call} {blob}: {}", status.message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connector reaches the host and port the URL names, an IPv6
    /// literal (bracketed in URLs) included, with Nagle's delay off.
    #[tokio::test]
    async fn the_connector_reaches_ipv4_and_bracketed_ipv6_hosts() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let uri: http::Uri = format!("http://{addr}").parse().unwrap();
            let (client, accepted) = tokio::join!(tcp(uri), listener.accept());
            let client = client.unwrap();
            let (_, peer) = accepted.unwrap();
            assert_eq!(client.peer_addr().unwrap(), addr);
            assert_eq!(client.local_addr().unwrap(), peer);
            assert!(client.nodelay().unwrap());
        }
    }

    #[test]
    fn resource_names_say_blake3_and_omit_sha256() {
        let sha = Hash::of(b"x");
        let blake3 = Hash::of_with(DigestFunction::Blake3, b"x");
        assert_eq!(
            blob_resource(&sha, 1, false),
            format!("blobs/{}/1", sha.to_hex())
        );
        assert_eq!(
            blob_resource(&blake3, 1, false),
            format!("blobs/blake3/{}/1", blake3.to_hex())
        );
        assert_eq!(
            blob_resource(&blake3, 1, true),
            format!("compressed-blobs/zstd/blake3/{}/1", blake3.to_hex())
        );
    }
}
