//! Hostile input on every endpoint, table-driven, against the real server
//! binary: each malformed request gets its documented status, none takes
//! the server down, none changes the store (`/status` counters and the
//! files under `dir` are compared before and after). `http` and `grpc` hold
//! the tables, `helpers` the comparison and the raw clients. `connections`
//! holds what misbehaves below the request: silent, idle, flooding and
//! surplus connections, and framings that smuggle requests.
//! `slow_bodies` and `batches` hold attacks on write admission (bodies
//! dribbled or abandoned, huge batches of tiny blobs) run next to the
//! well-behaved client of `well_behaved`, which must be served throughout.
//! `zstd_bombs` and `parked_reads` hold attacks on memory (zstd frames with
//! huge windows or outputs; Reads whose client never reads) and bound the
//! server's resident memory during and after them.
//!
//! This extends, and does not repeat, the malformed-request tables of
//! tests/api/http.rs (bad/short/uppercase hashes on PUT, digest mismatch, empty
//! body, max_blob_size, bad ActionResult bytes, gzip, bad
//! X-Digest-SizeBytes, corrupt zstd, POST/DELETE, unknown path, trailing
//! segment, traversal), tests/api/grpc.rs (batch statuses, bad digests in
//! FindMissing/GetActionResult, batch limits, GetTree not found and bad
//! token, invalid UpdateActionResult) and tests/api/grpc_bytestream/
//! (malformed resource names, write-protocol errors, offsets and limits).

mod batches;
mod connections;
mod grpc;
mod helpers;
mod http;
mod impossible_digests;
mod parked_reads;
mod slow_bodies;
mod well_behaved;
mod zstd_bombs;
