//! What a store entry is called: its [`Kind`] (action cache or CAS) and
//! hash, one byte encoding of that pair for every table and queue that
//! persists keys, and bazel-remote's AC key mangling.

use std::fmt;

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
    /// The persisted form (redb index keys, the upload queue): kind byte
    /// (0 = AC, 1 = CAS), then the 32 hash bytes. Changing it orphans every
    /// existing index, so it is written once, here.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        out[0] = match self.kind {
            Kind::Ac => 0,
            Kind::Cas => 1,
        };
        out[1..].copy_from_slice(&self.hash.0);
        out
    }

    /// The inverse of [`BlobKey::to_bytes`]; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<BlobKey> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        let kind = match bytes[0] {
            0 => Kind::Ac,
            1 => Kind::Cas,
            _ => return None,
        };
        let hash: [u8; HASH_LEN] = bytes[1..].try_into().ok()?;
        Some(BlobKey::new(kind, Hash(hash)))
    }
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.hash)
    }
}

/// bazel-remote's `enable_ac_key_instance_mangling`: the AC key for a
/// non-empty instance name is SHA-256(hex key ++ instance), so instances do
/// not share action results. Same formula as bazel-remote, so keys agree.
pub fn mangle_ac_key(hash: Hash, instance: &str) -> Hash {
    if instance.is_empty() {
        return hash;
    }
    let mut h = Hasher::new();
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
            let key = BlobKey::new(kind, Hash::of(b"x"));
            assert_eq!(BlobKey::from_bytes(&key.to_bytes()), Some(key));
        }
        assert_eq!(BlobKey::cas(Hash([7; HASH_LEN])).to_bytes()[0], 1);
        assert_eq!(BlobKey::ac(Hash([7; HASH_LEN])).to_bytes()[0], 0);
        let mut bad = BlobKey::cas(Hash([1; HASH_LEN])).to_bytes();
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
    }
}
