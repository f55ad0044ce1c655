//! Pieces every benchmark uses: environment knobs, deterministic
//! incompressible test data, latency percentiles.
#![allow(dead_code)] // each bench uses a different subset

use std::time::Duration;

use bazel_cache::digest::Hash;

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn env_num(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// `size` bytes of xorshift output: incompressible, and the same for a seed.
pub fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; size];
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    v
}

/// Distinct incompressible blobs with their SHA-256 in hex, made before
/// timing so the client's own hashing is not measured.
pub fn blobs(count: usize, size: usize, seed: u64) -> Vec<(String, bytes::Bytes)> {
    (0..count)
        .map(|i| {
            let v = random_bytes(size, seed ^ (i as u64 + 1).wrapping_mul(0x2545f4914f6cdd1d));
            (Hash::of(&v).to_hex(), bytes::Bytes::from(v))
        })
        .collect()
}

/// The `p` quantile (0..=1) of latencies sorted ascending.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or_default()
}
