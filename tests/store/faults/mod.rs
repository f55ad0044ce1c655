//! Fault tests against the real server binary, on 127.0.0.1 only, each
//! bounded in time:
//!
//! - `kill -9` in the middle of a 16-way write load (HTTP and ByteStream),
//!   restart on the same `dir`: no acknowledged write is lost, every blob
//!   served hashes to its name, the index agrees with the files (`kill_9`),
//!   and the same with the kill inside a group commit, between the rename
//!   of a batch and its acknowledgement (`group_commit_kill`);
//! - eviction under concurrent writers and readers: disk usage stays within
//!   `max_size` plus one in-flight blob, a blob evicted while it is read is
//!   served whole or not at all (`eviction`);
//! - slow and abusive clients (slowloris, a stalled upload, 10,000 idle
//!   connections, disconnects mid-stream): other clients are served
//!   meanwhile, and file descriptors and memory come back afterwards
//!   (`slow_clients`, `idle_and_dropped_connections`).
//!
//! Waits are bounded polls ("until X, at most N seconds"), never timing
//! assertions; figures (start-up time, RSS) are printed, not asserted. What
//! the modules share is in `helpers`.

mod eviction;
mod group_commit_kill;
mod helpers;
mod idle_and_dropped_connections;
mod kill_9;
mod slow_clients;
