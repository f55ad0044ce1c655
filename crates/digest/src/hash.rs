//! The SHA-256 [`Hash`] that names every blob, and a [`Hasher`] that digests
//! bytes once while they stream.
//!
//! Parsing lives here so that the HTTP and gRPC front ends reject malformed
//! names with the same words.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// Length of a SHA-256 hash in bytes.
pub const HASH_LEN: usize = 32;

/// A SHA-256 hash. Stored as bytes (not hex) so index keys stay small.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; HASH_LEN]);

/// The SHA-256 of zero bytes: the empty blob, which every CAS always holds.
pub const EMPTY_SHA256: Hash = Hash([
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("hash must be 64 lowercase hex characters (SHA-256), got {0} characters")]
    WrongLength(usize),
    #[error("hash must be lowercase hex (SHA-256), found {0:?}")]
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
    /// Parses the 64-character lowercase hex form used in URLs and resource
    /// names. Uppercase is refused, as bazel-remote does, so one blob has one name.
    pub fn from_hex(s: &str) -> Result<Hash, DigestError> {
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
        Ok(Hash(out))
    }

    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(2 * HASH_LEN);
        for b in self.0 {
            out.push(HEX_DIGITS[(b >> 4) as usize] as char);
            out.push(HEX_DIGITS[(b & 0x0f) as usize] as char);
        }
        out
    }

    /// SHA-256 of a byte slice held in memory (small bodies such as ActionResults).
    pub fn of(bytes: &[u8]) -> Hash {
        let mut h = Hasher::new();
        h.update(bytes);
        h.finish()
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 2 * HASH_LEN];
        // Cannot fail: the buffer is exactly twice the input length.
        hex::encode_to_slice(self.0, &mut buf).expect("hex buffer length");
        f.write_str(std::str::from_utf8(&buf).expect("hex is ascii"))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

/// Incremental SHA-256, fed chunk by chunk as bytes flow through a request,
/// so every byte is hashed exactly once. (`sha2` uses SHA-NI when the CPU has it.)
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
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
        Hash(self.inner.finalize().into())
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

    #[test]
    fn parse_round_trips_and_rejects_bad_input() {
        let h = Hash::of(b"hello");
        assert_eq!(Hash::from_hex(&h.to_hex()).unwrap(), h);
        assert_eq!(format!("{h}"), h.to_hex());
        assert_eq!(Hash::from_hex("abc"), Err(DigestError::WrongLength(3)));
        let upper = h.to_hex().to_uppercase();
        assert!(matches!(
            Hash::from_hex(&upper),
            Err(DigestError::NotHex(_))
        ));
        let mut bad = h.to_hex();
        bad.replace_range(10..11, "g");
        assert_eq!(Hash::from_hex(&bad), Err(DigestError::NotHex('g')));
        // Multi-byte characters must not be mistaken for the right length.
        let s = format!("{}é", &h.to_hex()[..62]);
        assert!(Hash::from_hex(&s).is_err());
    }

    #[test]
    fn incremental_hashing_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut h = Hasher::new();
        for chunk in data.chunks(777) {
            h.update(chunk);
        }
        assert_eq!(h.len(), data.len() as u64);
        assert_eq!(h.finish(), Hash::of(&data));
    }
}
