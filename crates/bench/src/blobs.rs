//! Deterministic, incompressible blobs that cost the client almost nothing.
//!
//! A PUT must name the blob's SHA-256 before sending it, and every read is
//! checked by hashing what comes back. Hashing and generating whole blobs
//! per request would put the client's CPU on the scale (client and server
//! often share a machine), so a blob of a size class is:
//!
//! ```text
//! content[..size-16] = the class's random base, repeated   (shared by all blobs of the class)
//! content[size-16..] = namespace (u64 LE) ++ index (u64 LE) (the blob's identity)
//! ```
//!
//! The SHA-256 state after the whole 64-byte blocks of the shared part is
//! computed once per class, so naming a blob hashes at most two blocks, and
//! bodies are handed out as zero-copy slices of the base.
//!
//! The base repeats every 16 MiB at most, beyond the match window of the
//! fast zstd levels caches use, so blobs stay incompressible; a cache that
//! deduplicates below the blob level would see the repetition.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::rng::Rng;
use bazel_cache_digest::Hash;

/// Bytes at the end of each blob that make it unique.
pub(crate) const ID_LEN: u64 = 16;
/// The longest stretch of base content before it repeats.
const PERIOD: u64 = 16 << 20;

/// A blob's identity within its size class. Namespace `PREFILL` holds the
/// blobs reads are made of (the same in every run, so a rerun finds them
/// already stored); each run writes under its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobId {
    pub namespace: u64,
    pub index: u64,
}

/// The namespace of the blobs reads are made of.
pub(crate) const PREFILL: u64 = 0;
/// A namespace never written, for the absent half of `find` requests.
pub(crate) const ABSENT: u64 = u64::MAX;

impl BlobId {
    fn bytes(self) -> [u8; ID_LEN as usize] {
        let mut b = [0; ID_LEN as usize];
        b[..8].copy_from_slice(&self.namespace.to_le_bytes());
        b[8..].copy_from_slice(&self.index.to_le_bytes());
        b
    }
}

/// Every blob of one size.
pub struct SizeClass {
    size: u64,
    /// `min(size - ID_LEN, PERIOD)` random bytes.
    base: Bytes,
    /// SHA-256 state after `content[..prefix_len]`.
    prefix: Sha256,
    /// The shared part rounded down to whole 64-byte blocks.
    prefix_len: u64,
}

impl SizeClass {
    /// The class of blobs of `size` bytes (at least `ID_LEN`, 16). Costs one
    /// pass of SHA-256 over `size` bytes.
    pub fn new(size: u64) -> Arc<SizeClass> {
        assert!(size >= ID_LEN, "blob size {size} below {ID_LEN}");
        let shared = size - ID_LEN;
        let mut base = vec![0; shared.min(PERIOD) as usize];
        Rng::new(0xb10b_5eed ^ size.rotate_left(17)).fill(&mut base);
        let mut class = SizeClass {
            size,
            base: Bytes::from(base),
            prefix: Sha256::new(),
            prefix_len: shared / 64 * 64,
        };
        let mut prefix = Sha256::new();
        for piece in class.shared_pieces(0..class.prefix_len, PERIOD as usize) {
            prefix.update(&piece);
        }
        class.prefix = prefix;
        Arc::new(class)
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The SHA-256 of blob `id`.
    pub(crate) fn hash(&self, id: BlobId) -> Hash {
        let mut h = self.prefix.clone();
        for piece in self.shared_pieces(self.prefix_len..self.size - ID_LEN, 64) {
            h.update(&piece);
        }
        h.update(id.bytes());
        Hash(h.finalize().into())
    }

    /// Bytes `range` of blob `id` as slices of at most `max_piece` bytes
    /// (the shared part is not copied).
    pub(crate) fn pieces(
        self: &Arc<Self>,
        id: BlobId,
        range: Range<u64>,
        max_piece: usize,
    ) -> Pieces {
        assert!(range.end <= self.size && max_piece > 0);
        Pieces {
            class: self.clone(),
            id: id.bytes(),
            pos: range.start,
            end: range.end,
            max_piece: max_piece as u64,
        }
    }

    /// Bytes `range` of blob `id`, copied into one buffer (for protocols
    /// whose messages own their bytes).
    pub(crate) fn copy(self: &Arc<Self>, id: BlobId, range: Range<u64>) -> Vec<u8> {
        let mut v = Vec::with_capacity((range.end - range.start) as usize);
        for piece in self.pieces(id, range, PERIOD as usize) {
            v.extend_from_slice(&piece);
        }
        v
    }

    /// Pieces of the shared part (no identity bytes) within `range`.
    fn shared_pieces(&self, range: Range<u64>, max_piece: usize) -> impl Iterator<Item = Bytes> {
        let period = self.base.len() as u64;
        let mut pos = range.start;
        std::iter::from_fn(move || {
            if pos >= range.end {
                return None;
            }
            let off = pos % period;
            let len = (period - off).min(range.end - pos).min(max_piece as u64);
            pos += len;
            Some(self.base.slice(off as usize..(off + len) as usize))
        })
    }
}

/// The bytes of one blob, in pieces; see [`SizeClass::pieces`].
pub(crate) struct Pieces {
    class: Arc<SizeClass>,
    id: [u8; ID_LEN as usize],
    pos: u64,
    end: u64,
    max_piece: u64,
}

impl Iterator for Pieces {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.pos >= self.end {
            return None;
        }
        let shared = self.class.size - ID_LEN;
        let piece = if self.pos < shared {
            let period = self.class.base.len() as u64;
            let off = self.pos % period;
            let len = (period - off)
                .min(shared - self.pos)
                .min(self.end - self.pos)
                .min(self.max_piece);
            self.class.base.slice(off as usize..(off + len) as usize)
        } else {
            let start = (self.pos - shared) as usize;
            let len = (self.end - self.pos).min(self.max_piece) as usize;
            Bytes::copy_from_slice(&self.id[start..start + len])
        };
        self.pos += piece.len() as u64;
        Some(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(class: &Arc<SizeClass>, id: BlobId) -> Vec<u8> {
        class.copy(id, 0..class.size())
    }

    #[test]
    fn hash_matches_the_content_for_every_layout() {
        // Around block and period boundaries, and with a repeating base.
        for size in [16, 17, 63, 64, 80, 81, 4096, 100_000, PERIOD + ID_LEN + 100] {
            let class = SizeClass::new(size);
            for id in [
                BlobId {
                    namespace: PREFILL,
                    index: 0,
                },
                BlobId {
                    namespace: 42,
                    index: 7,
                },
            ] {
                let data = whole(&class, id);
                assert_eq!(data.len() as u64, size);
                assert_eq!(class.hash(id), Hash::of(&data), "size {size}");
            }
        }
    }

    #[test]
    fn pieces_respect_the_limit_and_the_range() {
        let class = SizeClass::new(1000);
        let id = BlobId {
            namespace: 1,
            index: 2,
        };
        let data = whole(&class, id);
        let pieces: Vec<Bytes> = class.pieces(id, 100..995, 64).collect();
        assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= 64));
        assert_eq!(pieces.concat(), data[100..995]);
    }

    #[test]
    fn blobs_differ_and_are_incompressible() {
        let class = SizeClass::new(64 << 10);
        let a = whole(
            &class,
            BlobId {
                namespace: 0,
                index: 1,
            },
        );
        let b = whole(
            &class,
            BlobId {
                namespace: 0,
                index: 2,
            },
        );
        assert_ne!(Hash::of(&a), Hash::of(&b));
        let packed = zstd::encode_all(&a[..], 1).unwrap();
        assert!(
            packed.len() as f64 > a.len() as f64 * 0.99,
            "{}",
            packed.len()
        );
    }
}
