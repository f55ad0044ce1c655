//! The [`Hash`] that names every blob (SHA-256 or BLAKE3, and which of the
//! two), and a [`Hasher`] that digests bytes once while they stream.
//!
//! Parsing lives here so that the HTTP and gRPC front ends reject malformed
//! names with the same words.

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::function::DigestFunction;

/// Length of a hash in bytes: 32 for both SHA-256 and BLAKE3.
pub const HASH_LEN: usize = 32;

/// A hash and the function that made it. The bytes alone do not name a
/// blob: a SHA-256 and a BLAKE3 hash of the same length live in separate
/// namespaces of the store, the index and the bucket. Stored as bytes (not
/// hex) so index keys stay small.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash {
    bytes: [u8; HASH_LEN],
    function: DigestFunction,
}

/// The SHA-256 of zero bytes: the empty blob, which every CAS always holds.
pub const EMPTY_SHA256: Hash = Hash::sha256([
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
]);

/// The BLAKE3 of zero bytes.
pub const EMPTY_BLAKE3: Hash = Hash::new(
    DigestFunction::Blake3,
    [
        0xaf, 0x13, 0x49, 0xb9, 0xf5, 0xf9, 0xa1, 0xa6, 0xa0, 0x40, 0x4d, 0xea, 0x36, 0xdc, 0xc9,
        0x49, 0x9b, 0xcb, 0x25, 0xc9, 0xad, 0xc1, 0x12, 0xb7, 0xcc, 0x9a, 0x93, 0xca, 0xe4, 0x1f,
        0x32, 0x62,
    ],
);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("hash must be 64 lowercase hex characters, got {0} characters")]
    WrongLength(usize),
    #[error("hash must be lowercase hex, found {0:?}")]
    NotHex(char),
}

/// Marks a byte that is not a lowercase hex digit in [`HEX_VALUE`].
const INVALID: u8 = 0x80;
/// The value of each lowercase hex digit, [`INVALID`] for every other byte
/// (uppercase too: one blob has one name).
const HEX_VALUE: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

impl Hash {
    pub const fn new(function: DigestFunction, bytes: [u8; HASH_LEN]) -> Hash {
        Hash { bytes, function }
    }

    /// A SHA-256 hash from its bytes.
    pub const fn sha256(bytes: [u8; HASH_LEN]) -> Hash {
        Hash::new(DigestFunction::Sha256, bytes)
    }

    pub const fn bytes(&self) -> &[u8; HASH_LEN] {
        &self.bytes
    }

    pub const fn function(&self) -> DigestFunction {
        self.function
    }

    /// 64 bits of the hash for in-memory sets that trade exactness for
    /// size (the disk store's presence map, the upload queue's waits): its
    /// first 8 bytes, little-endian, with BLAKE3's flipped by a constant so
    /// that equal bytes under the two functions (two different blobs) do
    /// not share a fingerprint.
    pub fn fingerprint(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[..8]);
        let salt = match self.function {
            DigestFunction::Sha256 => 0,
            DigestFunction::Blake3 => 0x9e37_79b9_7f4a_7c15,
        };
        u64::from_le_bytes(b) ^ salt
    }

    /// Whether this is the hash of zero bytes under its own function.
    pub fn is_empty_blob(&self) -> bool {
        *self == self.function.empty_hash()
    }

    /// Parses the 64-character lowercase hex form used in URLs and resource
    /// names, as a hash of `function` (which the request names: the hex
    /// cannot tell). Uppercase is refused, as bazel-remote does, so one
    /// blob has one name.
    pub fn from_hex(function: DigestFunction, s: &str) -> Result<Hash, DigestError> {
        let bytes = s.as_bytes();
        if bytes.len() != 2 * HASH_LEN {
            return Err(DigestError::WrongLength(s.chars().count()));
        }
        // A table lookup per character: FindMissingBlobs parses a thousand
        // of these per call, and the general-purpose decoder (a check pass,
        // then a decode pass with per-character branches) was a third of
        // the server's CPU on that call.
        let mut out = [0u8; HASH_LEN];
        let mut bad = 0u8;
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let (hi, lo) = (HEX_VALUE[pair[0] as usize], HEX_VALUE[pair[1] as usize]);
            bad |= hi | lo;
            *o = (hi << 4) | (lo & 0x0f);
        }
        if bad & INVALID != 0 {
            let c = s
                .chars()
                .find(|c| !matches!(c, '0'..='9' | 'a'..='f'))
                .unwrap_or('?');
            return Err(DigestError::NotHex(c));
        }
        Ok(Hash::new(function, out))
    }

    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(2 * HASH_LEN);
        for b in self.bytes {
            out.push(HEX_DIGITS[(b >> 4) as usize] as char);
            out.push(HEX_DIGITS[(b & 0x0f) as usize] as char);
        }
        out
    }

    /// The SHA-256 of a byte slice held in memory (tests, fixed SHA-256
    /// names); [`Hash::of_with`] when the function comes from a request.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash::of_with(DigestFunction::Sha256, bytes)
    }

    /// The hash of a byte slice held in memory (small bodies such as
    /// ActionResults, chunks being split) under `function`.
    pub fn of_with(function: DigestFunction, bytes: &[u8]) -> Hash {
        let mut h = Hasher::new(function);
        h.update(bytes);
        h.finish()
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 2 * HASH_LEN];
        // Cannot fail: the buffer is exactly twice the input length.
        hex::encode_to_slice(self.bytes, &mut buf).expect("hex buffer length");
        f.write_str(std::str::from_utf8(&buf).expect("hex is ascii"))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({}:{self})", self.function.as_str())
    }
}

/// An incremental hash, fed chunk by chunk as bytes flow through a request,
/// so every byte is hashed exactly once. (`sha2` uses SHA-NI when the CPU
/// has it; `blake3` hashes several 1 KiB chunks at once with SIMD when an
/// update is large, which the 32 KiB-and-up chunks of the write path are.)
#[derive(Clone)]
pub struct Hasher {
    inner: Inner,
    len: u64,
}

#[derive(Clone)]
enum Inner {
    Sha256(Sha256),
    /// Boxed: BLAKE3's state (a chunk stack for the tree) is ~2 KiB, and
    /// hashers live inside futures that are moved.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn new(function: DigestFunction) -> Self {
        let inner = match function {
            DigestFunction::Sha256 => Inner::Sha256(Sha256::new()),
            DigestFunction::Blake3 => Inner::Blake3(Box::new(blake3::Hasher::new())),
        };
        Hasher { inner, len: 0 }
    }

    pub fn function(&self) -> DigestFunction {
        match self.inner {
            Inner::Sha256(_) => DigestFunction::Sha256,
            Inner::Blake3(_) => DigestFunction::Blake3,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.inner {
            Inner::Sha256(h) => h.update(bytes),
            Inner::Blake3(h) => {
                h.update(bytes);
            }
        }
        self.len += bytes.len() as u64;
    }

    /// Number of bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Hash {
        match self.inner {
            Inner::Sha256(h) => Hash::sha256(h.finalize().into()),
            Inner::Blake3(h) => Hash::new(DigestFunction::Blake3, *h.finalize().as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_hash_constant_matches_sha256_of_nothing() {
        assert_eq!(Hash::of(b""), EMPTY_SHA256);
        assert_eq!(
            EMPTY_SHA256.to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    const SHA256: DigestFunction = DigestFunction::Sha256;
    const BLAKE3: DigestFunction = DigestFunction::Blake3;

    #[test]
    fn empty_blake3_constant_matches_the_reference_vector() {
        // BLAKE3's published test vector for the empty input.
        assert_eq!(
            Hash::of_with(BLAKE3, b"").to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(Hash::of_with(BLAKE3, b""), EMPTY_BLAKE3);
        assert!(EMPTY_BLAKE3.is_empty_blob() && EMPTY_SHA256.is_empty_blob());
        // Same bytes, other function: another blob.
        let other = Hash::new(SHA256, *EMPTY_BLAKE3.bytes());
        assert_ne!(other, EMPTY_BLAKE3);
        assert!(!other.is_empty_blob());
        // "abc" under BLAKE3 (the reference implementation's output).
        assert_eq!(
            Hash::of_with(BLAKE3, b"abc").to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn parse_round_trips_and_rejects_bad_input() {
        for function in DigestFunction::ALL {
            let h = Hash::of_with(function, b"hello");
            assert_eq!(Hash::from_hex(function, &h.to_hex()).unwrap(), h);
            assert_eq!(format!("{h}"), h.to_hex());
        }
        let h = Hash::of(b"hello");
        assert_eq!(
            Hash::from_hex(SHA256, "abc"),
            Err(DigestError::WrongLength(3))
        );
        let upper = h.to_hex().to_uppercase();
        assert!(matches!(
            Hash::from_hex(SHA256, &upper),
            Err(DigestError::NotHex(_))
        ));
        let mut bad = h.to_hex();
        bad.replace_range(10..11, "g");
        assert_eq!(Hash::from_hex(SHA256, &bad), Err(DigestError::NotHex('g')));
        // Multi-byte characters must not be mistaken for the right length.
        let s = format!("{}é", &h.to_hex()[..62]);
        assert!(Hash::from_hex(SHA256, &s).is_err());
    }

    #[test]
    fn incremental_hashing_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for function in DigestFunction::ALL {
            let mut h = Hasher::new(function);
            for chunk in data.chunks(777) {
                h.update(chunk);
            }
            assert_eq!(h.len(), data.len() as u64);
            assert_eq!(h.function(), function);
            assert_eq!(h.finish(), Hash::of_with(function, &data));
        }
        assert_ne!(Hash::of_with(BLAKE3, &data), Hash::of(&data));
    }
}
