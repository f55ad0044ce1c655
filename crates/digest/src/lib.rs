//! The shared vocabulary of bazel-cache: what a blob is called.
//!
//! # Layout
//! - `function.rs`: [`DigestFunction`] (SHA-256, BLAKE3): part of every
//!   blob's name, taken from the request, never guessed from the hash.
//! - `hash.rs`: the [`Hash`] (bytes and function; hex parsing that refuses
//!   what bazel-remote refuses) and the streaming [`Hasher`] that sees every
//!   byte once while it flows.
//! - `key.rs`: [`Kind`] (AC or CAS), [`BlobKey`] and its one byte encoding
//!   for persisted tables (SHA-256 keys as they always were, BLAKE3 keys
//!   beside them), bazel-remote's AC key mangling.
//! - `reapi.rs`: [`Digest`] (hash + size) and its REAPI message form.
//! - `duration.rs`: Go-style durations (`30s`, `1h30m`), since bazel-remote
//!   configurations and our command lines are written in them.
//! - `error_chain.rs`: [`error_chain`] / [`ErrorChain`], an error and its
//!   `source()` causes on one line, for logs and messages of every crate.
//! - `sync.rs`: [`lock`], the one mutex poison policy.
//!
//! Every other crate depends on this one; it depends on none of ours.

mod duration;
mod error_chain;
mod function;
mod hash;
mod key;
mod reapi;
mod sync;

pub use duration::{GoDuration, parse_go_duration};
pub use error_chain::{ErrorChain, error_chain};
pub use function::{DigestFunction, UnsupportedDigestFunction};
pub use hash::{DigestError, EMPTY_BLAKE3, EMPTY_SHA256, HASH_LEN, Hash, Hasher};
pub use key::{BlobKey, KEY_LEN, Kind, mangle_ac_key};
pub use reapi::{Digest, ReapiDigestError};
pub use sync::{lock, read, write};
