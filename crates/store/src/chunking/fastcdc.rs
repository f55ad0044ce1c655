//! FastCDC 2020 (Xia et al., "The Design of Fast Content-Defined Chunking
//! for Data Deduplication Based Storage Systems", 2020), as REAPI's
//! `FAST_CDC_2020` chunking function defines it: gear hash, sub-minimum
//! cut-point skipping, normalised chunking at level 2, rolling two bytes per
//! step. Clients (Bazel's `--experimental_remote_cache_chunking`) cut their
//! uploads with the same function, so the boundaries must be bit-exact with
//! the spec's reference implementations: the unit tests check the spec's
//! published test vectors, offsets, lengths and boundary fingerprints.

use super::gear::GEAR;

/// The normalisation level the spec requires: the small mask has this many
/// more bits than the average calls for, the large mask this many fewer.
const NORMALIZATION: u32 = 2;

/// Boundary masks by number of bits (index = bits). The values for 64 B to
/// 128 KiB come from the paper's C reference implementation, the larger ones
/// from restic's FastCDC; both spread the bits over the word, which the paper
/// found to deduplicate slightly better than contiguous bits. Indexes below 5
/// are never selected.
const MASKS: [u64; 26] = [
    0,
    0,
    0,
    0,
    0,
    0x0000_0000_0180_4110,
    0x0000_0000_0180_3110, // 64 B
    0x0000_0000_1803_5100,
    0x0000_0018_0003_5300,
    0x0000_0190_0035_3000,
    0x0000_5900_0353_0000, // 1 KiB
    0x0000_d900_0353_0000,
    0x0000_d901_0353_0000,
    0x0000_d903_0353_0000,
    0x0000_d903_1353_0000,
    0x0000_d90f_0353_0000,
    0x0000_d903_0353_7000, // 64 KiB
    0x0000_d907_0353_7000,
    0x0000_d907_0753_7000,
    0x0000_d917_0753_7000, // 512 KiB
    0x0000_d917_4753_7000, // 1 MiB
    0x0000_d917_6753_7000,
    0x0000_d937_6753_7000,
    0x0000_d937_7753_7000, // 8 MiB
    0x0000_d937_7757_7000,
    0x0000_db37_7757_7000,
];

/// Smallest and largest average chunk size the spec allows.
pub const MIN_AVERAGE: u64 = 1024;
pub const MAX_AVERAGE: u64 = 8 * 1024 * 1024;

/// Why a set of FastCDC parameters cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    #[error(
        "FastCDC average chunk size {0} must be a power of two from {MIN_AVERAGE} to {MAX_AVERAGE}"
    )]
    Average(u64),
    #[error("FastCDC chunk sizes must satisfy 0 < min ({min}) <= average ({avg}) <= max ({max})")]
    Order { min: usize, avg: usize, max: usize },
}

/// A configured FastCDC 2020 chunker: sizes, masks and the (seeded) gear
/// tables. Cheap to share; cutting needs no state besides the input.
#[derive(Clone)]
pub struct FastCdc {
    min: usize,
    avg: usize,
    max: usize,
    mask_small: u64,
    mask_large: u64,
    /// `GEAR` XOR the seed.
    gear: [u64; 256],
    /// `gear` shifted left one bit: the first byte of each two-byte step is
    /// added to the hash shifted by two, so its masks are shifted by one.
    gear_shifted: [u64; 256],
}

/// One chunk of an input: where it starts, how long it is, and the gear
/// hash at its end (the spec's test vectors list it as the fingerprint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub offset: usize,
    pub len: usize,
    pub fingerprint: u64,
}

impl FastCdc {
    /// The chunker REAPI's `FastCdc2020Params` describe: min = avg / 4,
    /// max = avg × 4, the seed XORed into the gear table.
    pub fn from_params(avg: u64, seed: u32) -> Result<Self, ParamsError> {
        if !avg.is_power_of_two() || !(MIN_AVERAGE..=MAX_AVERAGE).contains(&avg) {
            return Err(ParamsError::Average(avg));
        }
        let avg = avg as usize;
        Self::with_sizes(avg / 4, avg, avg * 4, seed)
    }

    /// A chunker with explicit sizes (the test vectors use max = 65,535
    /// rather than avg × 4). The masks are chosen by the average's base-2
    /// logarithm, rounded to the nearest integer.
    pub fn with_sizes(min: usize, avg: usize, max: usize, seed: u32) -> Result<Self, ParamsError> {
        if min == 0
            || min > avg
            || avg > max
            || !(MIN_AVERAGE as usize..=MAX_AVERAGE as usize).contains(&avg)
        {
            return Err(ParamsError::Order { min, avg, max });
        }
        let bits = (avg as f64).log2().round() as u32;
        let seed = u64::from(seed);
        let mut gear = GEAR;
        let mut gear_shifted = [0u64; 256];
        for (g, s) in gear.iter_mut().zip(gear_shifted.iter_mut()) {
            *g ^= seed;
            *s = *g << 1;
        }
        Ok(FastCdc {
            min,
            avg,
            max,
            mask_small: MASKS[(bits + NORMALIZATION) as usize],
            mask_large: MASKS[(bits - NORMALIZATION) as usize],
            gear,
            gear_shifted,
        })
    }

    pub fn min_size(&self) -> usize {
        self.min
    }

    pub fn max_size(&self) -> usize {
        self.max
    }

    /// The first chunk of `data`: its length and fingerprint. `data` must
    /// hold at least `max_size()` bytes unless it is the rest of the input,
    /// since a boundary may lie anywhere up to `max_size()`.
    ///
    /// Up to `min` bytes are skipped unhashed; until the average the harder
    /// mask (more bits) applies, after it the easier one, which pulls chunk
    /// sizes towards the average; at `max` the chunk is cut regardless.
    /// Bytes go in pairs: the first adds its pre-shifted gear value to the
    /// hash shifted by two and is tested against the shifted mask, the
    /// second adds its plain gear value. A match on the first byte of a pair
    /// cuts before it, on the second after it, as the reference does.
    pub fn cut(&self, data: &[u8]) -> (usize, u64) {
        if data.len() <= self.min {
            return (data.len(), 0);
        }
        let end = data.len().min(self.max);
        let center = self.avg.min(end);
        let mut hash: u64 = 0;
        let mut pair = self.min / 2;
        for (limit, mask) in [(center / 2, self.mask_small), (end / 2, self.mask_large)] {
            let mask_shifted = mask << 1;
            while pair < limit {
                let i = pair * 2;
                hash = (hash << 2).wrapping_add(self.gear_shifted[data[i] as usize]);
                if hash & mask_shifted == 0 {
                    return (i, hash);
                }
                hash = hash.wrapping_add(self.gear[data[i + 1] as usize]);
                if hash & mask == 0 {
                    return (i + 1, hash);
                }
                pair += 1;
            }
        }
        (end, hash)
    }

    /// Every chunk of an input held in memory.
    pub fn chunks<'a>(&'a self, data: &'a [u8]) -> impl Iterator<Item = Chunk> + 'a {
        let mut offset = 0;
        std::iter::from_fn(move || {
            if offset == data.len() {
                return None;
            }
            let (len, fingerprint) = self.cut(&data[offset..]);
            let chunk = Chunk {
                offset,
                len,
                fingerprint,
            };
            offset += len;
            Some(chunk)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    /// The spec's input: the image the reference implementations test with.
    const SEKIEN: &[u8] = include_bytes!("testdata/SekienAkashita.jpg");
    /// The spec's vectors, as published next to remote_execution.proto
    /// (bazelbuild/remote-apis, build/bazel/remote/execution/v2/).
    const VECTORS: &str = include_str!("testdata/fastcdc2020_test_vectors.txt");

    /// One expected chunk: offset, length, SHA-256 (hex), fingerprint.
    type Expected = (usize, usize, String, u64);

    /// Each seed with its expected chunks.
    fn vectors() -> Vec<(u32, Vec<Expected>)> {
        let mut sets: Vec<(u32, Vec<_>)> = Vec::new();
        for line in VECTORS.lines() {
            if let Some(seed) = line.strip_prefix("# Seed: ") {
                sets.push((seed.trim().parse().unwrap(), Vec::new()));
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let f: Vec<&str> = line.split('\t').collect();
                assert_eq!(f.len(), 4, "vector line {line:?}");
                sets.last_mut().expect("a seed before its chunks").1.push((
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].to_string(),
                    f[3].parse().unwrap(),
                ));
            }
        }
        sets
    }

    #[test]
    fn gear_table_is_md5_of_repeated_bytes() {
        for (i, &g) in GEAR.iter().enumerate() {
            let digest = md5::Md5::digest([i as u8; 64]);
            let high = u64::from_be_bytes(digest[..8].try_into().unwrap());
            assert_eq!(g, high, "GEAR[{i}]");
        }
    }

    #[test]
    fn spec_test_vectors() {
        assert_eq!(
            hex::encode(Sha256::digest(SEKIEN)),
            "d9e749d9367fc908876749d6502eb212fee88c9a94892fb07da5ef3ba8bc39ed"
        );
        let sets = vectors();
        assert_eq!(sets.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 666]);
        for (seed, expected) in sets {
            let cdc = FastCdc::with_sizes(4096, 16384, 65535, seed).unwrap();
            let got: Vec<_> = cdc
                .chunks(SEKIEN)
                .map(|c| {
                    let bytes = &SEKIEN[c.offset..c.offset + c.len];
                    (
                        c.offset,
                        c.len,
                        hex::encode(Sha256::digest(bytes)),
                        c.fingerprint,
                    )
                })
                .collect();
            assert_eq!(got, expected, "seed {seed}");
        }
    }

    /// Deterministic pseudo-random bytes (xorshift), so the invariants are
    /// checked on content with boundaries, not on zeros.
    fn noise(len: usize, mut state: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn chunks_tile_the_input_within_bounds() {
        let cdc = FastCdc::from_params(1024, 0).unwrap();
        let data = noise(300_000, 7);
        let chunks: Vec<_> = cdc.chunks(&data).collect();
        let mut next = 0;
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.offset, next, "chunk {i} starts where the last ended");
            assert!(c.len <= 4096, "chunk {i} over max: {}", c.len);
            if i + 1 < chunks.len() {
                assert!(c.len >= 256, "chunk {i} under min: {}", c.len);
            }
            next += c.len;
        }
        assert_eq!(next, data.len());
        assert!(chunks.len() > 100, "{} chunks", chunks.len());
    }

    #[test]
    fn boundaries_survive_a_prefix_insertion() {
        let cdc = FastCdc::from_params(1024, 0).unwrap();
        let data = noise(200_000, 11);
        let mut shifted = b"an inserted prefix".to_vec();
        shifted.extend_from_slice(&data);
        let ends = |d: &[u8], skip: usize| -> std::collections::HashSet<usize> {
            cdc.chunks(d).map(|c| c.offset + c.len - skip).collect()
        };
        let original = ends(&data, 0);
        let after = ends(&shifted, 18);
        let shared = original.intersection(&after).count();
        // Content-defined: after a few chunks the cuts fall on the same bytes.
        assert!(
            shared * 10 >= original.len() * 9,
            "{shared} of {} boundaries kept",
            original.len()
        );
    }

    #[test]
    fn all_zeros_cut_at_max() {
        let cdc = FastCdc::from_params(1024, 0).unwrap();
        let lens: Vec<_> = cdc.chunks(&[0u8; 10_000]).map(|c| c.len).collect();
        assert_eq!(lens, [4096, 4096, 1808]);
    }

    #[test]
    fn params_outside_the_spec_are_refused() {
        assert!(FastCdc::from_params(512 * 1024, 0).is_ok());
        for avg in [0, 512, 1000, 3 * 1024, 16 * 1024 * 1024] {
            assert_eq!(
                FastCdc::from_params(avg, 0).err(),
                Some(ParamsError::Average(avg))
            );
        }
    }
}
