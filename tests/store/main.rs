//! The `store` test binary: the disk store as a library (`store`: round
//! trips, rejected puts, LRU eviction, crash recovery, concurrency) and the
//! server under faults (`faults`: kill -9 during concurrent writes,
//! eviction under load, slowloris, stalled and abandoned uploads, ten
//! thousand idle connections).

#[path = "../support/mod.rs"]
mod support;

mod faults;
mod store;
