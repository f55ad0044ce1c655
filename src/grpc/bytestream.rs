//! ByteStream: placeholder until the service lands.
use std::sync::Arc;

use bazel_remote_apis::google::bytestream as bs;
use bazel_remote_apis::google::bytestream::byte_stream_server::{ByteStream, ByteStreamServer};
use tonic::{Request, Response, Status, Streaming};

use super::GrpcState;

pub(super) fn service(state: Arc<GrpcState>) -> ByteStreamServer<ByteStreamService> {
    ByteStreamServer::new(ByteStreamService { _state: state })
}

pub struct ByteStreamService {
    _state: Arc<GrpcState>,
}

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<bs::ReadResponse, Status>> + Send>,
    >;
    async fn read(
        &self,
        _r: Request<bs::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        Err(Status::unimplemented("soon"))
    }
    async fn write(
        &self,
        _r: Request<Streaming<bs::WriteRequest>>,
    ) -> Result<Response<bs::WriteResponse>, Status> {
        Err(Status::unimplemented("soon"))
    }
    async fn query_write_status(
        &self,
        _r: Request<bs::QueryWriteStatusRequest>,
    ) -> Result<Response<bs::QueryWriteStatusResponse>, Status> {
        Err(Status::unimplemented("soon"))
    }
}
