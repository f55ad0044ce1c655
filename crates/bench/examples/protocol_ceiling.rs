//! The most a server can do per call on this machine, by protocol: an
//! in-memory blob map behind HTTP/1.1 (hyper) and behind gRPC (tonic on
//! hyper's HTTP/2, the stack the real server uses), with nothing else: no
//! disk, no hashing, no logging, no metrics, no auth. The map sits behind one
//! `RwLock`, which reads share.
//!
//! Kept whole, the blobs of a write load would grow the process by
//! gigabytes, and every new page would cost a fault: the figure would
//! measure memory, not the protocol. The bench's blobs of one size share
//! their body and differ in their last 16 bytes, so a blob that matches the
//! first one of its size but for those is kept as its last 16 bytes: one
//! comparison per write, in place of a page fault per 4 KiB. Every read
//! copies the blob out, whole or not, on both protocols.
//!
//! Two more ports answer the same gRPC calls on the `h2` crate alone,
//! without hyper and tonic, the gRPC framing done by hand: one spawns a task
//! per call, as hyper does; the other runs every call of a connection inside
//! the connection's own task. They tell what part of a call's cost is
//! HTTP/2 itself, and whether tokio's task per call is worth avoiding.
//!
//! `scripts/protocol-ceiling.sh` drives them with `bazel-cache-bench`, next to
//! the real server, so the gRPC-to-HTTP ratio of the real server can be read
//! against the ratio of servers that do nothing: if an empty gRPC server
//! cannot answer as many 4 KiB reads as the real HTTP one, no change below
//! the protocol will make the real server's gRPC match its HTTP.
//!
//! Usage: `protocol_ceiling ADDR` (e.g. `127.0.0.1:0`): binds four ports on
//! its host and prints `http=ADDR grpc=ADDR h2=ADDR h2_inline=ADDR` once all
//! listen. Ports 0 are chosen by the kernel.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use bazel_remote_apis::google::rpc::Status as RpcStatus;
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request as HttpRequest, Response as HttpResponse, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// Bytes at the end of a bench blob that differ between blobs of a size.
const TAIL: usize = 16;

#[derive(Clone, Default)]
struct Blobs(Arc<Shelves>);

#[derive(Default)]
struct Shelves {
    by_hash: RwLock<HashMap<String, Kept>>,
    /// The first blob stored of each size.
    bodies: RwLock<HashMap<usize, Bytes>>,
}

enum Kept {
    Whole(Bytes),
    /// The body of its size, then these bytes.
    Tail(usize, [u8; TAIL]),
}

impl Blobs {
    fn contains(&self, hash: &str) -> bool {
        self.0.by_hash.read().unwrap().contains_key(hash)
    }

    fn get(&self, hash: &str) -> Option<Vec<u8>> {
        match self.0.by_hash.read().unwrap().get(hash)? {
            Kept::Whole(b) => Some(b.to_vec()),
            Kept::Tail(len, tail) => {
                let bodies = self.0.bodies.read().unwrap();
                let mut blob = bodies[len][..len - TAIL].to_vec();
                blob.extend_from_slice(tail);
                Some(blob)
            }
        }
    }

    fn insert(&self, hash: String, data: &[u8]) {
        let len = data.len();
        let mut kept = Kept::Whole(Bytes::copy_from_slice(data));
        if len > TAIL {
            let mut bodies = self.0.bodies.write().unwrap();
            let body = bodies
                .entry(len)
                .or_insert_with(|| Bytes::copy_from_slice(data));
            if body[..len - TAIL] == data[..len - TAIL] {
                kept = Kept::Tail(len, data[len - TAIL..].try_into().unwrap());
            }
        }
        self.0.by_hash.write().unwrap().insert(hash, kept);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr] = args.as_slice() else {
        return Err("usage: protocol_ceiling ADDR (e.g. 127.0.0.1:0)".into());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let blobs = Blobs::default();
        let http = TcpListener::bind(addr).await?;
        let grpc = TcpListener::bind(addr).await?;
        let h2 = TcpListener::bind(addr).await?;
        let h2_inline = TcpListener::bind(addr).await?;
        println!(
            "http={} grpc={} h2={} h2_inline={}",
            http.local_addr()?,
            grpc.local_addr()?,
            h2.local_addr()?,
            h2_inline.local_addr()?
        );
        let serve_grpc = tonic::transport::Server::builder()
            // As the real server: windows that grow for large blobs.
            .http2_adaptive_window(Some(true))
            .add_service(re::capabilities_server::CapabilitiesServer::new(Caps))
            .add_service(
                re::content_addressable_storage_server::ContentAddressableStorageServer::new(Cas(
                    blobs.clone(),
                )),
            )
            .add_service(bs::byte_stream_server::ByteStreamServer::new(ByteStream(
                blobs.clone(),
            )))
            .serve_with_incoming(accepted(grpc));
        tokio::spawn(serve_h2(h2, blobs.clone(), false));
        tokio::spawn(serve_h2(h2_inline, blobs.clone(), true));
        tokio::spawn(serve_http(http, blobs));
        serve_grpc.await?;
        Ok(())
    })
}

/// The listener as the stream of accepted connections tonic serves,
/// without Nagle's delay (as the real server's ports).
fn accepted(listener: TcpListener) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(tcp, _)| {
            let _ = tcp.set_nodelay(true);
            tcp
        });
        Some((accepted, listener))
    })
}

async fn serve_http(listener: TcpListener, blobs: Blobs) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let blobs = blobs.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| http_call(blobs.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// bazel-remote's protocol, reduced to what the bench sends: `GET`, `HEAD`
/// and `PUT` of `/cas/<hash>`.
async fn http_call(
    blobs: Blobs,
    req: HttpRequest<Incoming>,
) -> Result<HttpResponse<Full<Bytes>>, Infallible> {
    let status = |code: StatusCode| {
        let mut r = HttpResponse::new(Full::new(Bytes::new()));
        *r.status_mut() = code;
        Ok(r)
    };
    let Some(hash) = req.uri().path().strip_prefix("/cas/").map(str::to_owned) else {
        return status(StatusCode::NOT_FOUND);
    };
    match *req.method() {
        Method::GET | Method::HEAD => {
            if req.method() == Method::HEAD {
                return status(if blobs.contains(&hash) {
                    StatusCode::OK
                } else {
                    StatusCode::NOT_FOUND
                });
            }
            match blobs.get(&hash) {
                Some(b) => Ok(HttpResponse::new(Full::new(b.into()))),
                None => status(StatusCode::NOT_FOUND),
            }
        }
        Method::PUT => match req.into_body().collect().await {
            Ok(body) => {
                blobs.insert(hash, &body.to_bytes());
                status(StatusCode::OK)
            }
            Err(_) => status(StatusCode::BAD_REQUEST),
        },
        _ => status(StatusCode::METHOD_NOT_ALLOWED),
    }
}

/// What both gRPC servers answer: SHA-256 only, batches up to the real
/// server's limit.
fn capabilities() -> re::ServerCapabilities {
    re::ServerCapabilities {
        cache_capabilities: Some(re::CacheCapabilities {
            digest_functions: vec![re::digest_function::Value::Sha256 as i32],
            max_batch_total_size_bytes: 4 * 1024 * 1024 - 256 * 1024,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn find_missing(
    blobs: &Blobs,
    request: re::FindMissingBlobsRequest,
) -> re::FindMissingBlobsResponse {
    let missing_blob_digests = request
        .blob_digests
        .into_iter()
        .filter(|d| !blobs.contains(&d.hash))
        .collect();
    re::FindMissingBlobsResponse {
        missing_blob_digests,
    }
}

fn batch_update(
    blobs: &Blobs,
    request: re::BatchUpdateBlobsRequest,
) -> re::BatchUpdateBlobsResponse {
    let responses = request
        .requests
        .into_iter()
        .map(|r| {
            let digest = r.digest.unwrap_or_default();
            blobs.insert(digest.hash.clone(), &r.data);
            re::batch_update_blobs_response::Response {
                digest: Some(digest),
                status: Some(RpcStatus::default()),
            }
        })
        .collect();
    re::BatchUpdateBlobsResponse { responses }
}

fn batch_read(blobs: &Blobs, request: re::BatchReadBlobsRequest) -> re::BatchReadBlobsResponse {
    let responses = request
        .digests
        .into_iter()
        .map(|digest| {
            let (data, code) = match blobs.get(&digest.hash) {
                Some(b) => (b, 0),
                None => (Vec::new(), tonic::Code::NotFound as i32),
            };
            re::batch_read_blobs_response::Response {
                digest: Some(digest),
                data,
                status: Some(RpcStatus {
                    code,
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    re::BatchReadBlobsResponse { responses }
}

/// ByteStream Read of `[instance/]blobs/<hash>/<size>`: the whole blob in
/// one message.
fn bytestream_read(blobs: &Blobs, request: bs::ReadRequest) -> Result<bs::ReadResponse, Status> {
    let name = request.resource_name;
    let hash = name
        .split('/')
        .skip_while(|part| *part != "blobs")
        .nth(1)
        .unwrap_or_default();
    let data = blobs.get(hash);
    data.map(|data| bs::ReadResponse { data })
        .ok_or_else(|| Status::not_found(name))
}

struct Caps;

#[tonic::async_trait]
impl re::capabilities_server::Capabilities for Caps {
    async fn get_capabilities(
        &self,
        _request: Request<re::GetCapabilitiesRequest>,
    ) -> Result<Response<re::ServerCapabilities>, Status> {
        Ok(Response::new(capabilities()))
    }
}

struct Cas(Blobs);

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented("not in the ceiling server"))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl re::content_addressable_storage_server::ContentAddressableStorage for Cas {
    async fn find_missing_blobs(
        &self,
        request: Request<re::FindMissingBlobsRequest>,
    ) -> Result<Response<re::FindMissingBlobsResponse>, Status> {
        Ok(Response::new(find_missing(&self.0, request.into_inner())))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<re::BatchUpdateBlobsRequest>,
    ) -> Result<Response<re::BatchUpdateBlobsResponse>, Status> {
        Ok(Response::new(batch_update(&self.0, request.into_inner())))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<re::BatchReadBlobsRequest>,
    ) -> Result<Response<re::BatchReadBlobsResponse>, Status> {
        Ok(Response::new(batch_read(&self.0, request.into_inner())))
    }

    type GetTreeStream = BoxStream<re::GetTreeResponse>;

    async fn get_tree(
        &self,
        _request: Request<re::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        unimplemented()
    }

    async fn split_blob(
        &self,
        _request: Request<re::SplitBlobRequest>,
    ) -> Result<Response<re::SplitBlobResponse>, Status> {
        unimplemented()
    }

    type GetChunkMappingStream = BoxStream<re::GetChunkMappingResponse>;

    async fn get_chunk_mapping(
        &self,
        _request: Request<re::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        unimplemented()
    }

    async fn register_chunk_mapping(
        &self,
        _request: Request<tonic::Streaming<re::RegisterChunkMappingRequest>>,
    ) -> Result<Response<re::RegisterChunkMappingResponse>, Status> {
        unimplemented()
    }

    async fn splice_blob(
        &self,
        _request: Request<re::SpliceBlobRequest>,
    ) -> Result<Response<re::SpliceBlobResponse>, Status> {
        unimplemented()
    }
}

struct ByteStream(Blobs);

#[tonic::async_trait]
impl bs::byte_stream_server::ByteStream for ByteStream {
    type ReadStream = BoxStream<bs::ReadResponse>;

    async fn read(
        &self,
        request: Request<bs::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let answer = bytestream_read(&self.0, request.into_inner())?;
        let once = futures_util::stream::once(async move { Ok(answer) });
        Ok(Response::new(Box::pin(once)))
    }

    /// `[instance/]uploads/<uuid>/blobs/<hash>/<size>`: kept once whole.
    async fn write(
        &self,
        request: Request<tonic::Streaming<bs::WriteRequest>>,
    ) -> Result<Response<bs::WriteResponse>, Status> {
        let mut messages = request.into_inner();
        let mut hash = String::new();
        let mut data = Vec::new();
        while let Some(message) = messages.message().await? {
            if hash.is_empty() {
                hash = message
                    .resource_name
                    .split('/')
                    .skip_while(|part| *part != "blobs")
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
            }
            data.extend_from_slice(&message.data);
            if message.finish_write {
                break;
            }
        }
        let committed_size = data.len() as i64;
        self.0.insert(hash, &data);
        Ok(Response::new(bs::WriteResponse { committed_size }))
    }

    async fn query_write_status(
        &self,
        _request: Request<bs::QueryWriteStatusRequest>,
    ) -> Result<Response<bs::QueryWriteStatusResponse>, Status> {
        unimplemented()
    }
}

/// gRPC on bare h2. `inline`: a connection's calls are futures polled by
/// the connection's task, beside the connection itself, instead of tasks.
async fn serve_h2(listener: TcpListener, blobs: Blobs, inline: bool) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let blobs = blobs.clone();
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(tcp).await else {
                return;
            };
            if !inline {
                while let Some(Ok((request, respond))) = conn.accept().await {
                    tokio::spawn(h2_call(blobs.clone(), request, respond));
                }
                return;
            }
            let mut calls = FuturesUnordered::new();
            loop {
                tokio::select! {
                    next = conn.accept() => match next {
                        Some(Ok((request, respond))) => {
                            calls.push(h2_call(blobs.clone(), request, respond));
                        }
                        _ => return,
                    },
                    Some(_) = calls.next(), if !calls.is_empty() => {}
                }
            }
        });
    }
}

/// One unary (or single-answer server-streaming) gRPC call on bare h2.
async fn h2_call(
    blobs: Blobs,
    request: HttpRequest<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Result<(), h2::Error> {
    let (parts, mut body) = request.into_parts();
    let mut message = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
        message.extend_from_slice(&chunk);
    }
    let answer = match message.get(5..) {
        None => Err(Status::invalid_argument("no message")),
        Some(m) => h2_answer(&blobs, parts.uri.path(), m),
    };
    let head = HttpResponse::builder()
        .header("content-type", "application/grpc")
        .body(())
        .expect("a valid response head");
    let mut send = respond.send_response(head, false)?;
    let mut trailers = http::HeaderMap::new();
    match answer {
        Ok(encoded) => {
            let mut frame = Vec::with_capacity(5 + encoded.len());
            frame.push(0);
            frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
            frame.extend_from_slice(&encoded);
            send.send_data(frame.into(), false)?;
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        }
        Err(status) => {
            trailers.insert("grpc-status", (status.code() as i32).into());
        }
    }
    send.send_trailers(trailers)
}

fn h2_answer(blobs: &Blobs, path: &str, message: &[u8]) -> Result<Vec<u8>, Status> {
    use prost::Message;
    fn decode<M: Message + Default>(m: &[u8]) -> Result<M, Status> {
        M::decode(m).map_err(|e| Status::invalid_argument(e.to_string()))
    }
    const CAS: &str = "/build.bazel.remote.execution.v2.ContentAddressableStorage/";
    Ok(match path {
        "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities" => {
            capabilities().encode_to_vec()
        }
        "/google.bytestream.ByteStream/Read" => {
            bytestream_read(blobs, decode(message)?)?.encode_to_vec()
        }
        p => match p.strip_prefix(CAS) {
            Some("FindMissingBlobs") => find_missing(blobs, decode(message)?).encode_to_vec(),
            Some("BatchUpdateBlobs") => batch_update(blobs, decode(message)?).encode_to_vec(),
            Some("BatchReadBlobs") => batch_read(blobs, decode(message)?).encode_to_vec(),
            _ => return unimplemented(),
        },
    })
}
