//! Authentication for the gRPC services: a tower layer in front of the
//! router that applies [`Authenticator`] by RPC, before any handler runs
//! (so no write from an unauthenticated client is ever read, let alone
//! stored). Health checks pass without credentials, for probes.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;

use crate::auth::{Access, Authenticator};
use crate::listen::ConnInfo;

/// Which RPCs only read. Anything not listed counts as a write, so an RPC
/// added later is protected until someone decides otherwise.
fn access(path: &str) -> Option<Access> {
    const READS: &[&str] = &[
        "/build.bazel.remote.execution.v2.ActionCache/GetActionResult",
        "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs",
        "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs",
        "/build.bazel.remote.execution.v2.ContentAddressableStorage/GetTree",
        "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
        "/google.bytestream.ByteStream/Read",
    ];
    if path.starts_with("/grpc.health.v1.Health/") {
        None
    } else if READS.contains(&path) {
        Some(Access::Read)
    } else {
        Some(Access::Write)
    }
}

#[derive(Clone)]
pub(super) struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub(super) fn new(auth: Arc<Authenticator>) -> Self {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub(super) struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<S::Future, BoxFuture<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        use futures_util::future::Either;
        if !self.auth.enabled() {
            return Either::Left(self.inner.call(req));
        }
        let Some(access) = access(req.uri().path()) else {
            return Either::Left(self.inner.call(req));
        };
        // The check may wait (a password verify): the call happens in the
        // future, on the service that was made ready; a clone stays here.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Either::Right(Box::pin(async move {
            let client_cert = req
                .extensions()
                .get::<ConnInfo>()
                .is_some_and(|c| c.client_cert);
            let authorization = req.headers().get(http::header::AUTHORIZATION).cloned();
            match auth
                .check(
                    authorization.as_ref().map(|v| v.as_bytes()),
                    client_cert,
                    access,
                )
                .await
            {
                Ok(()) => inner.call(req).await,
                Err(denied) => {
                    let peer = req.extensions().get::<ConnInfo>().map(|c| c.peer.clone());
                    tracing::debug!(?peer, rpc = %req.uri().path(), reason = %denied, "request refused");
                    // A trailers-only response: the status travels in the head.
                    Ok(Status::unauthenticated(denied.to_string()).into_http())
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_are_reads_and_health_is_open() {
        assert_eq!(
            access("/google.bytestream.ByteStream/Write"),
            Some(Access::Write)
        );
        assert_eq!(
            access("/google.bytestream.ByteStream/QueryWriteStatus"),
            Some(Access::Write)
        );
        assert_eq!(
            access("/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult"),
            Some(Access::Write)
        );
        assert_eq!(
            access("/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs"),
            Some(Access::Write)
        );
        assert_eq!(access("/some.Unknown/Method"), Some(Access::Write));
        assert_eq!(access("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            access("/build.bazel.remote.execution.v2.ActionCache/GetActionResult"),
            Some(Access::Read)
        );
    }
}
