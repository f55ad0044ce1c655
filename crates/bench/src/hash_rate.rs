//! `--hash_rate`: how fast this machine hashes, single-threaded, with each
//! digest function, through the same [`Hasher`] the server feeds request
//! bodies to (1 MiB updates: the server hashes chunks of 32 KiB and up as
//! they arrive). A reference printed beside throughput figures, as nginx's
//! are: it says what share of a PUT's or a verified GET's CPU is hashing,
//! and how much BLAKE3 can save on this CPU.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::rng::Rng;
use bazel_cache_digest::{DigestFunction, Hasher};

/// Bytes per update.
const BUFFER: usize = 1 << 20;
/// The time per function is spent in this many alternating slices, and the
/// best slice counts: on a shared machine the least disturbed one is the
/// closest to what the CPU can do.
const ROUNDS: u32 = 4;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct HashRate {
    /// Time spent on each function.
    pub(crate) seconds_each: f64,
    pub(crate) buffer_bytes: usize,
    pub(crate) rates: Vec<FunctionRate>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct FunctionRate {
    /// `sha256` or `blake3`.
    pub(crate) function: &'static str,
    pub(crate) mib_per_second: f64,
}

/// Hashes for about `each` per function.
pub(crate) fn measure(each: Duration) -> HashRate {
    let mut buffer = vec![0; BUFFER];
    Rng::new(0x4a5b).fill(&mut buffer);
    let slice = each / ROUNDS;
    let mut best = [0f64; DigestFunction::ALL.len()];
    for _ in 0..ROUNDS {
        for (f, function) in DigestFunction::ALL.into_iter().enumerate() {
            best[f] = best[f].max(rate(function, &buffer, slice));
        }
    }
    HashRate {
        seconds_each: each.as_secs_f64(),
        buffer_bytes: BUFFER,
        rates: DigestFunction::ALL
            .into_iter()
            .zip(best)
            .map(|(function, mib_per_second)| FunctionRate {
                function: function.as_str(),
                mib_per_second,
            })
            .collect(),
    }
}

/// MiB/s of hashing `buffer` again and again for at least `slice` (and at
/// least once).
fn rate(function: DigestFunction, buffer: &[u8], slice: Duration) -> f64 {
    let mut hasher = Hasher::new(function);
    let start = Instant::now();
    loop {
        hasher.update(buffer);
        if start.elapsed() >= slice {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let bytes = hasher.len() as f64;
    // Finishing keeps the work from being optimised away.
    std::hint::black_box(hasher.finish());
    bytes / elapsed.max(f64::MIN_POSITIVE) / (1024.0 * 1024.0)
}

impl HashRate {
    pub(crate) fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a hash rate serializes")
    }

    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        for r in &self.rates {
            let _ = writeln!(out, "{:<8} {:>9.1} MiB/s", r.function, r.mib_per_second);
        }
        let _ = writeln!(
            out,
            "(one thread, {} MiB updates, best of {ROUNDS} slices over {:.1} s per function)",
            self.buffer_bytes >> 20,
            self.seconds_each
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_functions_are_measured() {
        let r = measure(Duration::from_millis(40));
        let names: Vec<&str> = r.rates.iter().map(|r| r.function).collect();
        assert_eq!(names, ["sha256", "blake3"]);
        assert!(r.rates.iter().all(|r| r.mib_per_second > 0.0), "{r:?}");
        let text = r.text();
        assert!(
            text.starts_with("sha256 ") && text.contains("\nblake3 "),
            "{text}"
        );
    }
}
