//! The ByteStream service's routing, written here rather than generated,
//! so that Read and Write use the [`messages`](super::messages) whose bytes
//! are [`Bytes`](bytes::Bytes): tonic's generated server fixes each
//! method's message types, and the generated ones copy every blob byte
//! once more (messages.rs says where).
//!
//! It does what the generated server did and no more: one arm per method,
//! tonic's `Grpc` with the prost codec doing the framing, the same message
//! size limits, no message compression (blobs are compressed with
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
use tonic::server::{ClientStreamingService, Grpc, ServerStreamingService, UnaryService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use super::messages::WriteRequest;
use super::{ByteStreamService, MAX_MESSAGE_SIZE, ReadStream};

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

struct Read(Arc<ByteStreamService>);

impl ServerStreamingService<ReadRequest> for Read {
    type Response = super::messages::ReadResponse;
    type ResponseStream = ReadStream;
    type Future = BoxFuture<Result<Response<ReadStream>, Status>>;

    fn call(&mut self, request: Request<ReadRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.read(request).await })
    }
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
                Box::pin(async move { Ok(grpc().server_streaming(Read(service), request).await) })
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
