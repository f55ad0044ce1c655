//! The S3/MinIO backend of the proxy: a bucket shared by every replica, laid
//! out exactly as bazel-remote lays it out.
//!
//! - `config.rs`: its settings (`s3_proxy:`), owned here, filled by the server
//! - `client.rs`: a small S3 client on hyper, signed with aws-sigv4; its
//!   parts, one idea per file:
//!   - `addressing.rs`: endpoint and bucket URLs, key encoding
//!   - `transport.rs`: the hyper connection pool (connector, TLS, pool)
//!   - `exchange.rs`: the one request/response path of every operation
//!   - `multipart.rs`: uploads in parts, for large files
//!   - `signing.rs`, `credentials.rs`: SigV4 and where its keys come from
//!   - `body.rs`: upload bodies and bounded answer reads
//!   - `xml.rs`: S3's XML answers
//!   - `error.rs`: `S3Error`, retryability
//!   - `stats.rs`: `S3RequestStats`, per-request metrics
//! - `keys.rs`: bazel-remote's object key layout
//! - `casblob.rs`: bazel-remote's chunked zstd format of `cas.v2` objects
//! - `backend.rs`: the [`Backend`](crate::proxy::Backend) over all of these

mod addressing;
mod backend;
mod body;
pub(crate) mod casblob;
pub mod client;
mod config;
mod credentials;
mod error;
mod exchange;
mod keys;
mod multipart;
mod signing;
mod stats;
mod transport;
mod xml;

pub use backend::S3Backend;
pub use client::{S3Client, S3Error, S3RequestStats};
pub use config::{BucketLookupType, S3AuthMethod, S3Config, S3SignatureType};
