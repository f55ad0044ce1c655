//! Deterministic blobs that cost the client almost nothing.
//!
//! A PUT must name the blob's hash (SHA-256 or BLAKE3, `--digest_function`)
//! before sending it, and every read is checked by hashing what comes back. Hashing and generating whole blobs
//! per request would put the client's CPU on the scale (client and server
//! often share a machine), so a blob of a size class is:
//!
//! ```text
//! content[..size-16] = the class's base, repeated           (shared by all blobs of the class)
//! content[size-16..] = namespace (u64 LE) ++ index (u64 LE) (the blob's identity)
//! ```
//!
//! The hash state after the whole 64-byte blocks of the shared part is
//! computed once per class and cloned for each blob, so naming a blob
//! hashes at most two SHA-256 blocks (BLAKE3: the rest of its last 1 KiB
//! chunk, which it keeps open until it knows the input goes on), and
//! bodies are handed out as zero-copy slices of the base.
//!
//! The base is random by default, and repeats every 16 MiB at most, beyond
//! the match window of the fast zstd levels caches use, so blobs stay
//! incompressible; a cache that deduplicates below the blob level would see
//! the repetition. With `--compressible` the base is instead made of words
//! from a small vocabulary between random bytes, which zstd compresses about
//! 3:1, as it does object files and other build outputs.
//!
//! zstd transfers send a blob as a zstd stream of several frames: the shared
//! part compressed once per class (level 3, zstd's default; one frame per
//! 16 MiB period), then the identity bytes in a raw frame of their own. A
//! decoder reads any sequence of frames as their concatenation, and the
//! client spends no CPU compressing during the load.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::rng::Rng;
use bazel_cache_digest::{DigestFunction, Hash, Hasher};

/// Bytes at the end of each blob that make it unique.
pub(crate) const ID_LEN: u64 = 16;
/// The longest stretch of base content before it repeats.
const PERIOD: u64 = 16 << 20;
/// The zstd level the shared part is compressed with.
const ZSTD_LEVEL: i32 = 3;

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
    pub(crate) fn bytes(self) -> [u8; ID_LEN as usize] {
        let mut b = [0; ID_LEN as usize];
        b[..8].copy_from_slice(&self.namespace.to_le_bytes());
        b[8..].copy_from_slice(&self.index.to_le_bytes());
        b
    }
}

/// What the shared part of the blobs is made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Content {
    /// Random bytes: zstd cannot shrink them.
    #[default]
    Random,
    /// Compresses about 3:1 (`--compressible`).
    Compressible,
}

/// Every blob of one size.
pub struct SizeClass {
    size: u64,
    /// `min(size - ID_LEN, PERIOD)` bytes.
    base: Bytes,
    /// The hash state (of the class's function) after `content[..prefix_len]`.
    prefix: Hasher,
    /// The shared part rounded down to whole 64-byte blocks.
    prefix_len: u64,
    /// The shared part as zstd frames, made on first use.
    zstd: OnceLock<Vec<Bytes>>,
    /// Hex hashes of the first prefilled blobs, made on first use: a
    /// FindMissingBlobs load names a thousand of them per call, and
    /// hashing each again made the load generator, not the server, the
    /// bound of that figure.
    hex_cache: Vec<OnceLock<String>>,
}

/// Prefilled blobs whose hex hash a [`SizeClass`] keeps.
const HEX_CACHE: usize = 1024;

impl SizeClass {
    /// The class of incompressible blobs of `size` bytes (at least
    /// `ID_LEN`, 16), named by SHA-256. Costs one pass of SHA-256 over
    /// `size` bytes.
    pub fn new(size: u64) -> Arc<SizeClass> {
        SizeClass::with_content(size, Content::Random)
    }

    /// The class of blobs of `size` bytes made of `content`, named by
    /// SHA-256.
    pub fn with_content(size: u64, content: Content) -> Arc<SizeClass> {
        SizeClass::named_by(size, content, DigestFunction::Sha256)
    }

    /// The class of blobs of `size` bytes made of `content` whose names
    /// (and reads' checks) are hashes of `function`. The content does not
    /// depend on the function: the same blob under both names.
    pub fn named_by(size: u64, content: Content, function: DigestFunction) -> Arc<SizeClass> {
        assert!(size >= ID_LEN, "blob size {size} below {ID_LEN}");
        let shared = size - ID_LEN;
        let mut base = vec![0; shared.min(PERIOD) as usize];
        let seed = 0xb10b_5eed ^ size.rotate_left(17);
        match content {
            Content::Random => Rng::new(seed).fill(&mut base),
            Content::Compressible => fill_compressible(&mut Rng::new(!seed), &mut base),
        }
        let mut class = SizeClass {
            size,
            base: Bytes::from(base),
            prefix: Hasher::new(function),
            prefix_len: shared / 64 * 64,
            zstd: OnceLock::new(),
            hex_cache: (0..HEX_CACHE).map(|_| OnceLock::new()).collect(),
        };
        let mut prefix = Hasher::new(function);
        for piece in class.shared_pieces(0..class.prefix_len, PERIOD as usize) {
            prefix.update(&piece);
        }
        class.prefix = prefix;
        Arc::new(class)
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The digest function the class's blobs are named by.
    pub(crate) fn function(&self) -> DigestFunction {
        self.prefix.function()
    }

    /// The hash of blob `id` (of the class's function).
    pub(crate) fn hash(&self, id: BlobId) -> Hash {
        let mut h = self.prefix.clone();
        for piece in self.shared_pieces(self.prefix_len..self.size - ID_LEN, 64) {
            h.update(&piece);
        }
        h.update(&id.bytes());
        h.finish()
    }

    /// The hex form of [`SizeClass::hash`], cached for prefilled blobs.
    pub(crate) fn hex(&self, id: BlobId) -> String {
        match self.hex_cache.get(id.index as usize) {
            Some(cell) if id.namespace == PREFILL => {
                cell.get_or_init(|| self.hash(id).to_hex()).clone()
            }
            _ => self.hash(id).to_hex(),
        }
    }

    /// Bytes `range` of blob `id` as slices of at most `max_piece` bytes
    /// (the shared part is not copied).
    pub(crate) fn pieces(&self, id: BlobId, range: Range<u64>, max_piece: usize) -> Pieces {
        let mut segments: Vec<Bytes> = self
            .shared_pieces(0..self.size - ID_LEN, PERIOD as usize)
            .collect();
        segments.push(Bytes::copy_from_slice(&id.bytes()));
        Pieces::new(segments, range, max_piece)
    }

    /// Bytes `range` of blob `id`, copied into one buffer (for protocols
    /// whose messages own their bytes).
    pub(crate) fn copy(&self, id: BlobId, range: Range<u64>) -> Vec<u8> {
        self.pieces(id, range, PERIOD as usize).into_vec()
    }

    /// The length of blob `id` as a zstd stream (the same for every blob of
    /// the class).
    pub(crate) fn zstd_len(&self) -> u64 {
        self.zstd_frames()
            .iter()
            .map(|f| f.len() as u64)
            .sum::<u64>()
            + ID_FRAME_LEN
    }

    /// Bytes `range` of blob `id`'s zstd stream, like [`SizeClass::pieces`].
    pub(crate) fn zstd_pieces(&self, id: BlobId, range: Range<u64>, max_piece: usize) -> Pieces {
        let mut segments = self.zstd_frames().clone();
        segments.push(id_frame(id));
        Pieces::new(segments, range, max_piece)
    }

    /// Bytes `range` of blob `id`'s zstd stream in one buffer.
    pub(crate) fn zstd_copy(&self, id: BlobId, range: Range<u64>) -> Vec<u8> {
        self.zstd_pieces(id, range, PERIOD as usize).into_vec()
    }

    /// The shared part as zstd frames: one per period, frames of equal
    /// content shared.
    fn zstd_frames(&self) -> &Vec<Bytes> {
        self.zstd.get_or_init(|| {
            let compress = |data: &[u8]| {
                Bytes::from(zstd::bulk::compress(data, ZSTD_LEVEL).expect("zstd compresses memory"))
            };
            let shared = self.size - ID_LEN;
            let period = self.base.len() as u64;
            let mut frames = Vec::new();
            if period == 0 {
                return frames;
            }
            let whole = compress(&self.base);
            frames.extend(std::iter::repeat_n(whole, (shared / period) as usize));
            let rest = (shared % period) as usize;
            if rest > 0 {
                frames.push(compress(&self.base[..rest]));
            }
            frames
        })
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

/// Length of the raw zstd frame that carries a blob's identity bytes.
const ID_FRAME_LEN: u64 = 4 + 1 + 1 + 3 + ID_LEN;

/// The identity bytes as one zstd frame (RFC 8878) holding one raw block:
/// magic number; a single-segment header with a one-byte content size; a
/// block header saying "last block, raw, 16 bytes"; the bytes.
fn id_frame(id: BlobId) -> Bytes {
    const MAGIC: u32 = 0xfd2f_b528;
    /// Single_Segment_flag set, 1-byte Frame_Content_Size, no checksum or dictionary.
    const SINGLE_SEGMENT: u8 = 0x20;
    let block_header = (ID_LEN as u32) << 3 | 1;
    let mut frame = Vec::with_capacity(ID_FRAME_LEN as usize);
    frame.extend_from_slice(&MAGIC.to_le_bytes());
    frame.extend_from_slice(&[SINGLE_SEGMENT, ID_LEN as u8]);
    frame.extend_from_slice(&block_header.to_le_bytes()[..3]);
    frame.extend_from_slice(&id.bytes());
    Bytes::from(frame)
}

/// Fills `buf` with bytes that zstd compresses about 3:1: words of a small
/// vocabulary (the repeated instruction sequences, symbol names and
/// padding of object files), chosen with a skew, between runs of random
/// bytes (addresses, constants).
fn fill_compressible(rng: &mut Rng, buf: &mut [u8]) {
    let vocabulary: Vec<Vec<u8>> = (0..WORDS)
        .map(|_| {
            let mut w = vec![0; 3 + rng.below(14) as usize];
            rng.fill(&mut w);
            w
        })
        .collect();
    let mut pos = 0;
    while pos < buf.len() {
        let r = rng.next_u64();
        let left = buf.len() - pos;
        let n = if r % 100 < LITERAL_PERCENT {
            let n = (1 + (r >> 8) as usize % 4).min(left);
            rng.fill(&mut buf[pos..pos + n]);
            n
        } else {
            // Two draws, the smaller kept: common words are common.
            let w = rng.below(WORDS as u64).min(rng.below(WORDS as u64));
            let word = &vocabulary[w as usize];
            let n = word.len().min(left);
            buf[pos..pos + n].copy_from_slice(&word[..n]);
            n
        };
        pos += n;
    }
}

/// Vocabulary size and share of tokens that are 1 to 4 random bytes, tuned
/// for 3:1 at 64 KiB to 3.5:1 at 1 MiB and more (zstd level 3).
const WORDS: usize = 256;
const LITERAL_PERCENT: u64 = 20;

/// The bytes of one blob, in pieces of at most `max_piece` bytes: a range
/// of the concatenation of shared buffers (slices, not copies).
pub(crate) struct Pieces {
    segments: std::vec::IntoIter<Bytes>,
    current: Bytes,
    /// Bytes still to skip before the range starts.
    skip: u64,
    left: u64,
    max_piece: usize,
}

impl Pieces {
    fn new(segments: Vec<Bytes>, range: Range<u64>, max_piece: usize) -> Pieces {
        let total: u64 = segments.iter().map(|s| s.len() as u64).sum();
        assert!(range.end <= total && max_piece > 0);
        Pieces {
            segments: segments.into_iter(),
            current: Bytes::new(),
            skip: range.start,
            left: range.end.saturating_sub(range.start),
            max_piece,
        }
    }

    /// The pieces copied into one buffer.
    fn into_vec(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.left as usize);
        for piece in self {
            v.extend_from_slice(&piece);
        }
        v
    }
}

impl Iterator for Pieces {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        while self.left > 0 {
            if self.current.is_empty() {
                self.current = self.segments.next()?;
                let skip = self.skip.min(self.current.len() as u64);
                self.skip -= skip;
                self.current = self.current.slice(skip as usize..);
                continue;
            }
            let n = (self.current.len() as u64)
                .min(self.left)
                .min(self.max_piece as u64) as usize;
            self.left -= n as u64;
            return Some(self.current.split_to(n));
        }
        None
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
    fn blake3_hash_matches_the_content_for_every_layout() {
        // As above, and around BLAKE3's 1 KiB chunks.
        let blake3 = DigestFunction::Blake3;
        for size in [
            16,
            17,
            80,
            1024,
            1040,
            1041,
            4096,
            100_000,
            1 << 20,
            PERIOD + ID_LEN + 100,
        ] {
            for content in [Content::Random, Content::Compressible] {
                let class = SizeClass::named_by(size, content, blake3);
                assert_eq!(class.function(), blake3);
                let id = BlobId {
                    namespace: 42,
                    index: size,
                };
                let data = whole(&class, id);
                assert_eq!(class.hash(id), Hash::of_with(blake3, &data), "size {size}");
                // The same bytes as the SHA-256 class's blob, another name.
                let sha = SizeClass::with_content(size, content);
                assert!(data == whole(&sha, id), "size {size}");
                assert_ne!(class.hash(id), sha.hash(id));
                assert_eq!(class.hex(id), class.hash(id).to_hex());
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

    fn ratio(data: &[u8]) -> f64 {
        data.len() as f64 / zstd::encode_all(data, ZSTD_LEVEL).unwrap().len() as f64
    }

    #[test]
    fn compressible_blobs_compress_about_three_to_one() {
        for size in [64 << 10, 1 << 20] {
            let class = SizeClass::with_content(size, Content::Compressible);
            let data = whole(
                &class,
                BlobId {
                    namespace: 3,
                    index: 4,
                },
            );
            let r = ratio(&data);
            assert!((2.5..3.6).contains(&r), "{size}: ratio {r}");
            assert_eq!(
                class.hash(BlobId {
                    namespace: 3,
                    index: 4
                }),
                Hash::of(&data)
            );
            assert_ne!(
                data,
                whole(
                    &SizeClass::new(size),
                    BlobId {
                        namespace: 3,
                        index: 4
                    }
                )
            );
        }
    }

    #[test]
    fn zstd_streams_decode_to_the_blob() {
        for (size, content) in [
            (16, Content::Random),
            (4096, Content::Compressible),
            (100_000, Content::Random),
            (PERIOD * 2 + ID_LEN + 1000, Content::Compressible),
        ] {
            let class = SizeClass::with_content(size, content);
            let id = BlobId {
                namespace: 9,
                index: size,
            };
            let stream = class.zstd_copy(id, 0..class.zstd_len());
            assert_eq!(stream.len() as u64, class.zstd_len());
            let decoded = zstd::decode_all(&stream[..]).unwrap();
            assert!(decoded == whole(&class, id), "size {size}");
            let pieces: Vec<Bytes> = class
                .zstd_pieces(id, 7..class.zstd_len() - 3, 1000)
                .collect();
            assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= 1000));
            assert_eq!(pieces.concat(), stream[7..stream.len() - 3]);
        }
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
