//! Every built-in default, once. `resolve.rs` applies these constants and
//! the option table (`options.rs`) renders `--help`'s `[default: ...]` from
//! the same ones, so the two cannot disagree. Options whose default is
//! "unset" (no limit, feature off, a path found at start-up) have no
//! constant here; the table says in words what unset means.
//!
//! Choices (`storage_mode`, `log_format`, ...) are defaulted by their
//! spelling, which `resolve.rs` looks up in the same table of spellings as a
//! value the user wrote.
//!
//! Also here: the connection timeouts of both front ends, configurable or
//! not, so each has one name.

use std::time::Duration;

// Storage
pub(crate) const MAX_SIZE_GIB: f64 = 5.0;
pub(crate) const STORAGE_MODE: &str = "zstd";
pub(crate) const ZSTD_IMPLEMENTATION: &str = "go";
/// The disk store's own default, so library users of the store get the same.
pub(crate) const MAX_CONCURRENT_WRITES: usize =
    bazel_cache_store::disk::DEFAULT_MAX_CONCURRENT_WRITES;
pub(crate) const FSYNC: bool = true;
/// `max_buffer_memory`, in GiB: the store's budget default (which says why).
pub(crate) const MAX_BUFFER_MEMORY_GIB: f64 =
    bazel_cache_store::budget::DEFAULT_MAX_BUFFER_MEMORY as f64 / GIB_BYTES;
/// The least `max_buffer_memory` accepted, in GiB (the store's minimum).
pub(crate) const MIN_BUFFER_MEMORY_GIB: f64 =
    bazel_cache_store::budget::MIN_MAX_BUFFER_MEMORY as f64 / GIB_BYTES;
const GIB_BYTES: f64 = (1u64 << 30) as f64;

// Listeners
pub(crate) const HTTP_PORT: u16 = 8080;
pub(crate) const GRPC_PORT: u16 = 9092;

// Connection timeouts
/// How long a client may take to send an HTTP request's headers
/// (slowloris); `http_read_timeout` overrides it.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest an upload body (HTTP or gRPC) may stall without a byte
/// before the write is abandoned; `http_read_timeout` overrides it.
pub(crate) const BODY_STALL_TIMEOUT: Duration = bazel_cache_store::disk::DEFAULT_BODY_STALL_TIMEOUT;
/// The least an upload body must bring, bytes/s over `BODY_RATE_WINDOW` of
/// waiting on it (`body_min_rate`); the disk store's default, which says why.
pub(crate) const BODY_MIN_RATE: u64 = bazel_cache_store::disk::DEFAULT_BODY_MIN_RATE;
/// `body_rate_window`: the disk store's default, which says why.
pub(crate) const BODY_RATE_WINDOW: Duration = bazel_cache_store::disk::DEFAULT_BODY_RATE_WINDOW;
/// How long a client may take to complete the TLS handshake, on either
/// port; a client that connects and says nothing must not hold a task and
/// a socket forever. Not configurable.
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// From accept to the first complete request head (HTTP/1 headers, the
/// HTTP/2 preface), TLS handshake included; `request_head_timeout`. A
/// real client sends its first request head in the round trip after
/// connecting (Bazel connects when it has something to ask); 10 s is
/// many round trips even over a bad link, the same as the TLS handshake's
/// bound, and short enough that silent connections cannot pile up to the
/// cap (at 10,000 a minute, 1,700 are held at once).
pub(crate) const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/2 connection (gRPC, or HTTP/2 on the HTTP port) with no
/// request in progress for this long is closed; `connection_idle_timeout`.
/// Bazel keeps its channel between builds of one server session; 10
/// minutes lets it reuse it between builds a developer runs minutes apart,
/// and still frees the connections of clients that went away.
pub(crate) const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

// Connection limits
/// Connections open at once on each port; `max_connections`. Sized for a
/// fleet: a CI farm of hundreds of machines holds one or a few per
/// machine and port. Lowered at start to fit the open-file limit.
pub(crate) const MAX_CONNECTIONS: usize = 10_000;
/// Concurrent HTTP/2 streams per connection, on both ports (tonic sets no
/// limit unless told). Bazel's default `--remote_max_connections=100`
/// spreads its requests over connections well below this.
pub(crate) const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams a client may open and reset before the server accepts them
/// (rapid reset: CVE-2023-44487, h2's CVE-2023-26964): h2's own default,
/// set explicitly. h2 also caps the reset streams it remembers (50 a
/// second), CONTINUATION frames and tiny DATA frames on its own.
pub(crate) const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server may reset because of the client's errors before it
/// closes the connection (h2 0.4.2; the "MadeYouReset" pattern,
/// CVE-2025-8671). hyper's default, which tonic turns off unless set.
pub(crate) const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// The largest request header block, on both ports: hyper's default for
/// HTTP/2. gRPC metadata (Bazel's RequestMetadata, credentials) is well
/// under 1 KiB; grpc-java refuses more than 8 KiB by default.
pub(crate) const H2_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Largest HTTP/2 frame a gRPC client may send us (SETTINGS_MAX_FRAME_SIZE;
/// the protocol's default is 16 KiB). A 1 MiB ByteStream Write arrives in
/// 16 frames instead of 64: fewer writes for the client, fewer reads and
/// frame headers for us, about 20 % more 1 MiB writes per second on this
/// machine with hyper's client. Netty, Bazel's HTTP/2 stack, sizes its
/// frames by the peer's setting too (not measured here); grpc-go keeps
/// 16 KiB. Not larger: h2 reserves a whole frame's buffer as soon as it
/// reads the frame's header, so this is what one connection can make the
/// server hold before any byte of the frame arrives, times
/// `max_connections` (10,000 × 64 KiB = 640 MiB at most). 1 MiB frames
/// measured only 8 % faster again.
pub(crate) const H2_MAX_FRAME_SIZE: u32 = 64 * 1024;
/// The most an HTTP/1 connection buffers (hyper's `max_buf_size`): what
/// one read from the socket may take, and the response bytes queued ahead
/// of the socket. hyper's default is about 400 KiB, and its reads grow to
/// it during a large upload: a body chunk still being copied pins its
/// buffer, so the next read allocates another. 16 clients putting 1 MiB
/// blobs kept about 1 MiB per connection, 16 of a 46 MiB peak; with 64 KiB
/// the peak was 29 MiB at the same throughput and CPU per blob (reads of
/// 64 KiB cost a few more syscalls per MiB than the copying does). It is
/// also the largest request head hyper accepts (431 beyond it): four
/// times the HTTP/2 limit below.
pub(crate) const H1_MAX_BUF_SIZE: usize = 64 * 1024;
/// How often both ports ping an HTTP/2 client to find dead peers.
pub(crate) const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

// Authentication and TLS
pub(crate) const ALLOW_UNAUTHENTICATED_READS: bool = false;
pub(crate) const MIN_TLS_VERSION: &str = "1.0";

// Cache behaviour
pub(crate) const DISABLE_HTTP_AC_VALIDATION: bool = false;
pub(crate) const DISABLE_GRPC_AC_DEPS_CHECK: bool = false;
pub(crate) const ENABLE_AC_KEY_INSTANCE_MANGLING: bool = false;
pub(crate) const EXPERIMENTAL_REMOTE_ASSET_API: bool = false;
/// Remote Asset downloads: connecting to an origin, and the whole download
/// of one URL (a request's own `timeout` may only shorten it).
pub(crate) const REMOTE_ASSET_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const REMOTE_ASSET_TIMEOUT: Duration = Duration::from_secs(600);

// Logging and metrics
pub(crate) const ACCESS_LOG_LEVEL: &str = "all";
pub(crate) const LOG_TIMEZONE: &str = "UTC";
pub(crate) const LOG_FORMAT: &str = "text";
pub(crate) const ENABLE_ENDPOINT_METRICS: bool = false;
pub(crate) const WEB_CONSOLE: bool = true;
/// bazel-remote's default histogram buckets, in seconds; defined by the
/// store's histogram, which the metrics use without a config too.
pub(crate) const DURATION_BUCKETS: [f64; 10] = bazel_cache_store::histogram::DEFAULT_BUCKETS;
pub(crate) const HTTP_METRICS_PREFIX: bool = false;

// S3 proxy
pub(crate) const S3_BUCKET_LOOKUP_TYPE: &str = "auto";
pub(crate) const S3_SIGNATURE_TYPE: &str = "v4";
pub(crate) const S3_AWS_PROFILE: &str = "default";
pub(crate) const S3_DISABLE_SSL: bool = false;
pub(crate) const S3_UPDATE_TIMESTAMPS: bool = false;
/// An hour: a lifecycle expiry is whole days, so an object in use is
/// refreshed many times before it could expire, at one request per object
/// per replica per hour.
pub(crate) const S3_UPDATE_TIMESTAMPS_INTERVAL: Duration = Duration::from_secs(3600);
/// Ten minutes: repeated FindMissingBlobs of one build reach S3 once, far
/// below any lifecycle expiry (whole days).
pub(crate) const S3_PRESENCE_CACHE_TTL: Duration = Duration::from_secs(600);
/// Ten seconds: another replica's upload is seen that late at most.
pub(crate) const S3_PRESENCE_CACHE_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// A quarter of a million answers, about 20 MB when full: the digests of
/// a few large builds' FindMissingBlobs. (A million would be 80 MB, most of
/// the server's budget at a million stored entries.)
pub(crate) const S3_PRESENCE_CACHE_MAX_ENTRIES: usize = 250_000;
/// The shortest expiry an S3 lifecycle rule can have: the presence cache's
/// TTLs must stay below it.
pub(crate) const S3_LIFECYCLE_MIN_EXPIRY: Duration = Duration::from_secs(86_400);
/// The only object key layout; bazel-remote's deprecated `key_version`.
pub(crate) const S3_KEY_VERSION: i64 = 2;
pub(crate) const S3_MAX_IDLE_CONNS: usize = 1024;
pub(crate) const NUM_UPLOADERS: usize = 100;
pub(crate) const MAX_QUEUED_UPLOADS: usize = 1_000_000;

/// A duration as `--help` writes it (`30s`); whole seconds only.
pub(super) fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// Numbers as bazel-remote's `--help` writes them: `5`, `2.5`, `.5`.
pub(super) fn numbers(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| {
            let text = v.to_string();
            match text.strip_prefix("0.") {
                Some(fraction) => format!(".{fraction}"),
                None => text,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::super::options::{DefaultHelp, OPTIONS};
    use super::*;

    #[test]
    fn help_spells_numbers_and_durations_like_bazel_remote() {
        assert_eq!(numbers(&DURATION_BUCKETS), ".5,1,2.5,5,10,20,40,80,160,320");
        assert_eq!(numbers(&[MAX_SIZE_GIB]), "5");
        assert_eq!(seconds(HEADER_READ_TIMEOUT), "30s");
    }

    /// Setting an option to the default `--help` shows changes nothing:
    /// the text and the applied value come from the same constant.
    #[test]
    fn every_default_shown_in_help_is_the_one_applied() {
        let env =
            |name: &str| (name == "BAZEL_REMOTE_DIR").then(|| "/nonexistent/cache".to_owned());
        let config = |extra: &[String]| {
            let args = ["bazel-cache", "check-config"]
                .into_iter()
                .map(str::to_owned)
                .chain(extra.iter().cloned());
            crate::config::from_args_and_env(args, &env)
                .unwrap_or_else(|e| panic!("{extra:?}: {e}"))
                .config
        };
        // The S3 options only apply with the proxy on.
        let s3 = [
            "--s3.endpoint=minio:9000",
            "--s3.bucket=b",
            "--s3.auth_method=iam_role",
        ]
        .map(str::to_owned);
        let mut checked = 0;
        for opt in OPTIONS {
            let DefaultHelp::Value(text) = opt.default else {
                continue;
            };
            let base: &[String] = if opt.key.starts_with("s3.") { &s3 } else { &[] };
            let mut explicit = base.to_vec();
            explicit.push(format!("--{}={}", opt.key, text()));
            assert_eq!(config(&explicit), config(base), "--{}", opt.key);
            checked += 1;
        }
        assert!(checked >= 30, "only {checked} defaults checked");
    }
}
