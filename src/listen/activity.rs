//! Whether an HTTP/2 connection is in use: the requests (gRPC calls) in
//! progress on it, counted by the front ends, and since when none has been.
//!
//! Bytes alone cannot tell: the server pings every connection (keepalive,
//! to find dead peers) and the client answers, so a connection nobody uses
//! still carries traffic. The connection's IO wrapper (`guard.rs`) reads
//! this to close a connection with no request for the idle timeout; the
//! HTTP front end counts its HTTP/2 requests, the gRPC port counts calls in
//! [`ActivityLayer`], which finds the connection in the request's
//! [`ConnInfo`]. A request counts until its response body is done.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use futures_util::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use super::ConnInfo;

/// The requests in progress on one connection.
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// When `in_flight` last fell to zero, in milliseconds after `started`.
    idle_since_ms: AtomicU64,
    /// The connection's task, woken when the last request ends so that it
    /// starts its idle timer.
    connection: AtomicWaker,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            connection: AtomicWaker::new(),
        })
    }

    /// Counts a request until the returned guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> ActiveRequest {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        ActiveRequest(self.clone())
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// When the connection last had no request in progress (its start, if
    /// it never had one). Meaningful while [`Self::in_flight`] is zero.
    pub(crate) fn idle_since(&self) -> Instant {
        let ms = self.idle_since_ms.load(Ordering::Acquire);
        self.started + std::time::Duration::from_millis(ms)
    }

    /// The task to wake when the last request in progress ends.
    pub(crate) fn wake_when_idle(&self, waker: &Waker) {
        self.connection.register(waker);
    }
}

/// One request in progress; dropping it ends the request.
#[derive(Debug)]
pub(crate) struct ActiveRequest(Arc<Activity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = u64::try_from(activity.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Before the decrement: whoever sees zero requests sees this time.
        activity.idle_since_ms.fetch_max(now, Ordering::AcqRel);
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.connection.wake();
        }
    }
}

/// A response body that keeps its request counted until the body is done.
pub(crate) struct ActivityBody<B> {
    inner: B,
    active: Option<ActiveRequest>,
}

impl<B> ActivityBody<B> {
    pub(crate) fn new(inner: B, active: Option<ActiveRequest>) -> Self {
        ActivityBody { inner, active }
    }
}

impl<B: HttpBody + Unpin> HttpBody for ActivityBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.active = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The tower layer of the gRPC port that counts calls on their connection.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ActivityLayer;

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = ActivityService<S>;

    fn layer(&self, inner: S) -> ActivityService<S> {
        ActivityService { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ActivityService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for ActivityService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ActivityBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let active = req
            .extensions()
            .get::<ConnInfo>()
            .map(|conn| conn.activity.begin());
        let call = self.inner.call(req);
        Box::pin(async move {
            let resp = call.await?;
            Ok(resp.map(|body| ActivityBody::new(body, active)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[test]
    fn requests_count_until_their_guard_drops() {
        let activity = Activity::new();
        assert_eq!(activity.in_flight(), 0);
        let a = activity.begin();
        let b = activity.begin();
        assert_eq!(activity.in_flight(), 2);
        drop(a);
        assert_eq!(activity.in_flight(), 1);
        let before = activity.idle_since();
        std::thread::sleep(std::time::Duration::from_millis(5));
        drop(b);
        assert_eq!(activity.in_flight(), 0);
        assert!(activity.idle_since() > before);
    }

    #[test]
    fn the_connection_is_woken_when_the_last_request_ends() {
        let activity = Activity::new();
        let (waker, woken) = counting_waker();
        let a = activity.begin();
        let b = activity.begin();
        activity.wake_when_idle(&waker);
        drop(a);
        assert_eq!(woken.load(Ordering::SeqCst), 0, "one request still runs");
        drop(b);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_response_body_holds_its_request_until_it_ends() {
        let activity = Activity::new();
        let body = ActivityBody::new(
            Full::new(bytes::Bytes::from_static(b"abc")),
            Some(activity.begin()),
        );
        assert_eq!(activity.in_flight(), 1);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"abc");
        assert_eq!(activity.in_flight(), 0);
    }

    fn counting_waker() -> (Waker, Arc<AtomicUsize>) {
        struct Count(Arc<AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let woken = Arc::new(AtomicUsize::new(0));
        (Waker::from(Arc::new(Count(woken.clone()))), woken)
    }
}
