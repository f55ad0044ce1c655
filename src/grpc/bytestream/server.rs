//! The ByteStream service's routing, written here rather than generated,
//! so that Read and Write use the [`messages`](super::messages) whose bytes
//! are [`Bytes`](bytes::Bytes): tonic's generated server fixes each
//! method's message types, and the generated ones copy every blob byte
//! once more (messages.rs says where).
//!
//! It does what the generated server did and no more: one arm per method,
//! tonic's `Grpc` with the prost codec doing the framing (except Read's
//! answer, which read_frames.rs frames in place), the same message size
//! limits, no message compression (blobs are compressed with
//! `compressed-blobs/zstd` names, not gRPC message compression), and
//! UNIMPLEMENTED for any other method.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bazel_remote_apis::google::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, WriteResponse,
};
use tonic::body::Body;
use tonic::codec::Codec as _;
use tonic::server::{ClientStreamingService, Grpc, UnaryService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use super::messages::WriteRequest;
use super::read_frames::ReadBody;
use super::{ByteStreamService, MAX_MESSAGE_SIZE};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// `google.bytestream.ByteStream` over [`ByteStreamService`].
#[derive(Clone)]
pub(crate) struct ByteStreamServer {
    service: Arc<ByteStreamService>,
}

impl ByteStreamServer {
    pub(crate) fn new(service: ByteStreamService) -> Self {
        ByteStreamServer {
            service: Arc::new(service),
        }
    }
}

impl tonic::server::NamedService for ByteStreamServer {
    const NAME: &'static str = "google.bytestream.ByteStream";
}

/// A gRPC endpoint of the same size limits as every other service here.
fn grpc<T, U>() -> Grpc<ProstCodec<T, U>>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    Grpc::new(ProstCodec::default())
        .apply_max_message_size_config(Some(MAX_MESSAGE_SIZE), Some(MAX_MESSAGE_SIZE))
}

struct Write(Arc<ByteStreamService>);

impl ClientStreamingService<WriteRequest> for Write {
    type Response = WriteResponse;
    type Future = BoxFuture<Result<Response<WriteResponse>, Status>>;

    fn call(&mut self, request: Request<Streaming<WriteRequest>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.write(request).await })
    }
}

struct QueryWriteStatus(Arc<ByteStreamService>);

impl UnaryService<QueryWriteStatusRequest> for QueryWriteStatus {
    type Response = QueryWriteStatusResponse;
    type Future = BoxFuture<Result<Response<QueryWriteStatusResponse>, Status>>;

    fn call(&mut self, request: Request<QueryWriteStatusRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.query_write_status(request).await })
    }
}

/// Read: the request decoded by tonic's decoder, as `Grpc` would; the
/// answer's messages come framed (read_frames.rs).
async fn read<B>(service: &ByteStreamService, request: http::Request<B>) -> http::Response<Body>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let answer = match read_request(request).await {
        Ok(request) => service.read(request).await,
        Err(status) => Err(status),
    };
    match answer {
        Err(status) => status.into_http(),
        Ok(response) => {
            let (metadata, messages, extensions) = response.into_parts();
            let mut http = http::Response::new(Body::new(ReadBody::new(messages)));
            *http.headers_mut() = metadata.into_headers();
            http.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            *http.extensions_mut() = extensions;
            http
        }
    }
}

/// The one ReadRequest of a Read call, within the size limit; a request
/// compressed with gRPC message compression is refused as tonic refuses it
/// (this server enables none).
async fn read_request<B>(request: http::Request<B>) -> Result<Request<ReadRequest>, Status>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        return Err(Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(encoding.as_bytes())
        )));
    }
    let (parts, body) = request.into_parts();
    let mut messages = Streaming::new_request(
        ProstCodec::<(), ReadRequest>::default().decoder(),
        body,
        None,
        Some(MAX_MESSAGE_SIZE),
    );
    let message = messages
        .message()
        .await?
        .ok_or_else(|| Status::internal("Missing request message."))?;
    Ok(Request::from_http(http::Request::from_parts(
        parts, message,
    )))
}

impl<B> tower::Service<http::Request<B>> for ByteStreamServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.service.clone();
        match request.uri().path() {
            "/google.bytestream.ByteStream/Read" => {
                Box::pin(async move { Ok(read(&service, request).await) })
            }
            "/google.bytestream.ByteStream/Write" => {
                Box::pin(async move { Ok(grpc().client_streaming(Write(service), request).await) })
            }
            "/google.bytestream.ByteStream/QueryWriteStatus" => {
                Box::pin(async move { Ok(grpc().unary(QueryWriteStatus(service), request).await) })
            }
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}
