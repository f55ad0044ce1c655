//! Hostile input on every endpoint, table-driven, against the real server
//! binary: each malformed request gets its documented status, none takes
//! the server down, none changes the store (`/status` counters and the
//! files under `dir` are compared before and after). `http` and `grpc` hold
//! the tables, `helpers` the comparison and the raw clients.
//!
//! This extends, and does not repeat, the malformed-request tables of
//! tests/api/http.rs (bad/short/uppercase hashes on PUT, digest mismatch, empty
//! body, max_blob_size, bad ActionResult bytes, gzip, bad
//! X-Digest-SizeBytes, corrupt zstd, POST/DELETE, unknown path, trailing
//! segment, traversal), tests/api/grpc.rs (batch statuses, bad digests in
//! FindMissing/GetActionResult, batch limits, GetTree not found and bad
//! token, invalid UpdateActionResult) and tests/api/grpc_bytestream/
//! (malformed resource names, write-protocol errors, offsets and limits).

mod grpc;
mod helpers;
mod http;
