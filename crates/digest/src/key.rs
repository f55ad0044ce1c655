//! What a store entry is called: its [`Kind`] (action cache or CAS) and
//! hash, one byte encoding of that pair for every table and queue that
//! persists keys, and bazel-remote's AC key mangling.

use std::fmt;

use crate::function::DigestFunction;
use crate::hash::{HASH_LEN, Hash, Hasher};

/// The two namespaces of a remote cache. AC entries are addressed by the
/// digest of an action and hold an `ActionResult`; CAS entries are addressed
/// by the digest of their own content, which is verified on write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Ac,
    Cas,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Ac, Kind::Cas];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ac => "ac",
            Kind::Cas => "cas",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a store entry is called: its namespace and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey {
    pub kind: Kind,
    pub hash: Hash,
}

impl BlobKey {
    pub fn new(kind: Kind, hash: Hash) -> Self {
        BlobKey { kind, hash }
    }

    pub fn cas(hash: Hash) -> Self {
        BlobKey::new(Kind::Cas, hash)
    }

    pub fn ac(hash: Hash) -> Self {
        BlobKey::new(Kind::Ac, hash)
    }
}

/// Length of [`BlobKey::to_bytes`]: one byte of kind, then the hash.
pub const KEY_LEN: usize = 1 + HASH_LEN;

impl BlobKey {
    /// The persisted form (redb index keys, the upload queue): one byte
    /// for kind and digest function (0 = AC, 1 = CAS for SHA-256, as
    /// before BLAKE3 existed, so existing indexes and queues stay valid;
    /// 2 = AC, 3 = CAS for BLAKE3), then the 32 hash bytes. Changing it
    /// orphans every existing index, so it is written once, here.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        let kind = match self.kind {
            Kind::Ac => 0,
            Kind::Cas => 1,
        };
        let function = match self.hash.function() {
            DigestFunction::Sha256 => 0,
            DigestFunction::Blake3 => 2,
        };
        out[0] = kind + function;
        out[1..].copy_from_slice(self.hash.bytes());
        out
    }

    /// The inverse of [`BlobKey::to_bytes`]; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<BlobKey> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        let (kind, function) = match bytes[0] {
            0 => (Kind::Ac, DigestFunction::Sha256),
            1 => (Kind::Cas, DigestFunction::Sha256),
            2 => (Kind::Ac, DigestFunction::Blake3),
            3 => (Kind::Cas, DigestFunction::Blake3),
            _ => return None,
        };
        let hash: [u8; HASH_LEN] = bytes[1..].try_into().ok()?;
        Some(BlobKey::new(kind, Hash::new(function, hash)))
    }
}

impl fmt::Display for BlobKey {
    /// `cas/<hex>` for SHA-256 (as logs always said), `blake3/cas/<hex>`
    /// for BLAKE3: the same words as the HTTP path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.hash.function() {
            DigestFunction::Sha256 => write!(f, "{}/{}", self.kind, self.hash),
            function => write!(f, "{}/{}/{}", function.as_str(), self.kind, self.hash),
        }
    }
}

/// bazel-remote's `enable_ac_key_instance_mangling`: the AC key for a
/// non-empty instance name is SHA-256(hex key ++ instance), so instances do
/// not share action results. Same formula as bazel-remote, so keys agree.
/// A BLAKE3 key is mangled with BLAKE3, so it stays in its namespace.
pub fn mangle_ac_key(hash: Hash, instance: &str) -> Hash {
    if instance.is_empty() {
        return hash;
    }
    let mut h = Hasher::new(hash.function());
    h.update(hash.to_hex().as_bytes());
    h.update(instance.as_bytes());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bytes_round_trip_and_refuse_garbage() {
        for kind in Kind::ALL {
            for function in DigestFunction::ALL {
                let key = BlobKey::new(kind, Hash::of_with(function, b"x"));
                assert_eq!(BlobKey::from_bytes(&key.to_bytes()), Some(key));
            }
        }
        // SHA-256 keys are encoded exactly as before BLAKE3 existed.
        assert_eq!(BlobKey::cas(Hash::sha256([7; HASH_LEN])).to_bytes()[0], 1);
        assert_eq!(BlobKey::ac(Hash::sha256([7; HASH_LEN])).to_bytes()[0], 0);
        let b3 = Hash::new(DigestFunction::Blake3, [7; HASH_LEN]);
        assert_eq!(BlobKey::ac(b3).to_bytes()[0], 2);
        assert_eq!(BlobKey::cas(b3).to_bytes()[0], 3);
        assert_ne!(
            BlobKey::cas(b3).to_bytes(),
            BlobKey::cas(Hash::sha256([7; HASH_LEN])).to_bytes()
        );
        assert_eq!(BlobKey::cas(b3).to_string(), format!("blake3/cas/{b3}"));
        let mut bad = BlobKey::cas(Hash::sha256([1; HASH_LEN])).to_bytes();
        bad[0] = 9;
        assert_eq!(BlobKey::from_bytes(&bad), None);
        assert_eq!(BlobKey::from_bytes(&bad[..10]), None);
        assert_eq!(BlobKey::from_bytes(&[]), None);
    }

    #[test]
    fn mangling_matches_bazel_remote_formula() {
        let key = Hash::of(b"action");
        assert_eq!(mangle_ac_key(key, ""), key);
        let mut expected = key.to_hex().into_bytes();
        expected.extend_from_slice(b"main");
        assert_eq!(mangle_ac_key(key, "main"), Hash::of(&expected));
        assert_ne!(mangle_ac_key(key, "main"), mangle_ac_key(key, "other"));
        let b3 = Hash::of_with(DigestFunction::Blake3, b"action");
        let mut expected = b3.to_hex().into_bytes();
        expected.extend_from_slice(b"main");
        assert_eq!(
            mangle_ac_key(b3, "main"),
            Hash::of_with(DigestFunction::Blake3, &expected)
        );
    }
}
