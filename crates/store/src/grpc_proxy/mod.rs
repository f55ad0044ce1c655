//! The `grpc_proxy` backend: another REAPI v2 cache (an old bazel-remote,
//! another bazel-cache, any Remote Execution API cache) as the proxy's
//! backend.
//!
//! - head: `FindMissingBlobs` (CAS), `GetActionResult` (AC)
//! - get: ByteStream `Read` (CAS), `GetActionResult` (AC)
//! - put: ByteStream `Write` (CAS), `UpdateActionResult` (AC)
//! - touch: nothing (REAPI has no such call; the other cache keeps its own
//!   LRU order)
//!
//! REAPI names a blob by hash **and size**, and the proxy asks for blobs by
//! hash alone (an HTTP `GET /cas/{hash}` carries no size). The sizes come
//! from what this backend has seen (kept in the proxy's `ExpiringMap`): the blobs an ActionResult
//! fetched or uploaded through it references, the digests of
//! FindMissingBlobs, uploads. That is every blob a build reads after an
//! action cache hit; a blob whose size was never seen is a miss, never an
//! error. (bazel-remote asks the Remote Asset API's FetchBlob instead,
//! which needs the other cache to serve that API.)
//!
//! The backend lives in the store crate like S3: it is a store concern, and
//! the generated REAPI client stubs are in `bazel-remote-apis`, which the
//! store already depends on for ActionResult validation.
//!
//! # Layout
//! - `backend.rs`: [`GrpcBackend`], the [`Backend`](crate::proxy::Backend)
//!   over tonic clients
//!
//! The sizes of blobs seen (REAPI names a blob by hash and size; the proxy
//! asks by hash) are kept in the proxy's bounded
//! [`ExpiringMap`](crate::proxy::expiring_map::ExpiringMap).

mod backend;

pub use backend::GrpcBackend;
