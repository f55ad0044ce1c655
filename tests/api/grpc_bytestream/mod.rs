//! ByteStream (Read, Write, QueryWriteStatus) against the real server binary:
//! chunked round trips, offsets and limits, zstd both ways, verification
//! failures that store nothing, malformed resource names, resumable and
//! already-present uploads, and interoperation with the HTTP front end.
//! One module per concern; the client helpers are in `helpers`.

pub(crate) mod helpers;
mod refusals;
mod resumable;
mod round_trips;
mod wire;
