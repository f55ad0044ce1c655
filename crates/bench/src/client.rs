//! One connected client of either protocol, with the operations the load
//! is made of; HTTP requests carry one blob, gRPC calls as many as the
//! server's batch limit allows (or one, through ByteStream, with
//! `--batch 0`).

use std::sync::Arc;

use prost::Message as _;

use crate::action;
use crate::blobs::{ABSENT, BlobId, Content, SizeClass};
use crate::error::{BenchError, OpError};
use crate::grpc::GrpcClient;
use crate::http::HttpClient;
use crate::mix;
use crate::options::Options;
use crate::target::Protocol;
use crate::with_timeout;

/// A connected client of either protocol.
pub(crate) enum Client {
    Http(Box<HttpClient>),
    Grpc(GrpcClient),
}

impl Client {
    /// Connects as `options` say (gRPC also asks for Capabilities).
    pub(crate) async fn connect(options: &Options) -> Result<Client, BenchError> {
        let loaded = if options.target.tls {
            Some(options.tls.load()?)
        } else {
            None
        };
        match options.target.protocol {
            Protocol::Http => {
                let client = HttpClient::new(
                    &options.target,
                    loaded.as_ref(),
                    &options.instance_name,
                    options.connections,
                )?;
                // One request first, so an unreachable server, a TLS or an
                // auth problem stops the run with one clear line.
                // Of the function chosen: a server that does not know its
                // paths says so here.
                let probe = SizeClass::named_by(
                    mix::MIN_BLOB_SIZE,
                    Content::Random,
                    options.digest_function,
                );
                let absent = BlobId {
                    namespace: ABSENT,
                    index: 0,
                };
                with_timeout(options.timeout, client.head(&probe, absent))
                    .await
                    .map_err(|e| BenchError::Connect {
                        target: options.target.redacted(),
                        message: e.to_string(),
                    })?;
                Ok(Client::Http(Box::new(client)))
            }
            Protocol::Grpc => Ok(Client::Grpc(
                GrpcClient::connect(options, loaded.as_ref()).await?,
            )),
        }
    }

    /// Blobs of `size` one request carries when `batch` are asked for:
    /// HTTP always 1; gRPC as many as fit the batch limit, 1 for
    /// ByteStream (and for `--batch 0`).
    pub(crate) fn per_request(&self, size: u64, batch: usize) -> usize {
        match self {
            Client::Http(_) => 1,
            Client::Grpc(g) => g.per_batch(size, batch).max(1),
        }
    }

    /// Uploads `ids`, as zstd streams if `zstd`.
    pub(crate) async fn write(
        &self,
        worker: usize,
        class: &Arc<SizeClass>,
        ids: &[BlobId],
        zstd: bool,
    ) -> Result<u64, OpError> {
        match self {
            Client::Http(h) => one_by_one(ids, |id| h.put_as(class, id, zstd)).await,
            Client::Grpc(g) => g.write(worker, class, ids, zstd).await,
        }
    }

    /// Downloads and verifies `ids`, accepting zstd if `zstd`.
    pub(crate) async fn read(
        &self,
        worker: usize,
        class: &Arc<SizeClass>,
        ids: &[BlobId],
        zstd: bool,
    ) -> Result<u64, OpError> {
        match self {
            Client::Http(h) => one_by_one(ids, |id| h.get_as(class, id, zstd)).await,
            Client::Grpc(g) => g.read(worker, class, ids, zstd).await,
        }
    }

    /// Stores ActionResult `id` of `class` (see `action.rs`), naming one of
    /// the `prefilled` blobs; returns its encoded length.
    pub(crate) async fn ac_write(
        &self,
        worker: usize,
        class: &SizeClass,
        id: BlobId,
        prefilled: u64,
    ) -> Result<u64, OpError> {
        let digest = action::action_digest(class, id);
        let result = action::action_result(class, id, prefilled);
        let function = class.function();
        match self {
            Client::Http(h) => {
                let (encoded, _) = action::encoded(&result, function);
                h.ac_put(function, &digest.hash, encoded).await
            }
            Client::Grpc(g) => {
                let len = result.encoded_len() as u64;
                g.ac_write(worker, function, digest, result, len).await
            }
        }
    }

    /// Fetches ActionResult `id` of `class` and checks it is the one
    /// [`Client::ac_write`] stores; returns its length.
    pub(crate) async fn ac_read(
        &self,
        worker: usize,
        class: &SizeClass,
        id: BlobId,
        prefilled: u64,
    ) -> Result<u64, OpError> {
        let digest = action::action_digest(class, id);
        let (encoded, hash) = action::encoded(
            &action::action_result(class, id, prefilled),
            class.function(),
        );
        let len = encoded.len() as u64;
        match self {
            Client::Http(h) => h.ac_get(&digest.hash, len, hash).await,
            Client::Grpc(g) => g.ac_read(worker, digest, len, hash).await,
        }
    }

    /// Which of `ids` the server lacks (HTTP: one HEAD each).
    pub(crate) async fn missing(
        &self,
        worker: usize,
        class: &Arc<SizeClass>,
        ids: &[BlobId],
    ) -> Result<Vec<BlobId>, OpError> {
        match self {
            Client::Http(h) => {
                let mut missing = Vec::new();
                for &id in ids {
                    if !h.head(class, id).await? {
                        missing.push(id);
                    }
                }
                Ok(missing)
            }
            Client::Grpc(g) => g.find_missing(worker, class, ids).await,
        }
    }

    pub(crate) fn batch_limit(&self) -> Option<u64> {
        match self {
            Client::Http(_) => None,
            Client::Grpc(g) => Some(g.batch_limit()),
        }
    }
}

/// Runs `op` on each of `ids` in turn, adding up the bytes moved; stops at
/// the first error (for protocols or sizes that move one blob per call).
pub(crate) async fn one_by_one<F, Fut>(ids: &[BlobId], op: F) -> Result<u64, OpError>
where
    F: Fn(BlobId) -> Fut,
    Fut: std::future::Future<Output = Result<u64, OpError>>,
{
    let mut total = 0;
    for &id in ids {
        total += op(id).await?;
    }
    Ok(total)
}
