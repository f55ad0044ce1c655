//! Object keys in the bucket, laid out exactly as bazel-remote lays them out
//! so a bucket filled by bazel-remote instances is shared as it is:
//! `<prefix>/ac/<2 hex>/<hash>`, `<prefix>/cas/<2 hex>/<hash>` (uncompressed
//! storage mode) and `<prefix>/cas.v2/<2 hex>/<hash>` (zstd storage mode,
//! bodies in bazel-remote's casblob format; see casblob.rs).
//!
//! BLAKE3 entries, which bazel-remote does not have, take the same layout
//! under `<prefix>/blake3/`: their own namespace, since the same hex names
//! another blob under SHA-256, and SHA-256 keys stay exactly as they were.

use bazel_cache_digest::{BlobKey, DigestFunction, Kind};

/// The object key of a blob. `casblob` selects the zstd-mode `cas.v2` layout.
pub(super) fn object_key(prefix: &str, key: &BlobKey, casblob: bool) -> String {
    let hex = key.hash.to_hex();
    let dir = match key.kind {
        Kind::Ac => "ac",
        Kind::Cas if casblob => "cas.v2",
        Kind::Cas => "cas",
    };
    // Like Go's path.Join: no empty segments, no trailing slash.
    let prefix = prefix.trim_matches('/');
    let base = match key.hash.function() {
        DigestFunction::Sha256 => format!("{dir}/{}/{hex}", &hex[..2]),
        function => format!("{}/{dir}/{}/{hex}", function.as_str(), &hex[..2]),
    };
    if prefix.is_empty() {
        base
    } else {
        let cleaned: Vec<&str> = prefix
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        format!("{}/{base}", cleaned.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazel_cache_digest::Hash;

    #[test]
    fn layouts_match_bazel_remote() {
        let h = Hash::of(b"x");
        let hex = h.to_hex();
        let p = &hex[..2];
        assert_eq!(
            object_key("", &BlobKey::ac(h), true),
            format!("ac/{p}/{hex}")
        );
        assert_eq!(
            object_key("", &BlobKey::cas(h), false),
            format!("cas/{p}/{hex}")
        );
        assert_eq!(
            object_key("", &BlobKey::cas(h), true),
            format!("cas.v2/{p}/{hex}")
        );
        assert_eq!(
            object_key("team/", &BlobKey::cas(h), true),
            format!("team/cas.v2/{p}/{hex}")
        );
        assert_eq!(
            object_key("/a//b/", &BlobKey::ac(h), false),
            format!("a/b/ac/{p}/{hex}")
        );
    }

    #[test]
    fn blake3_keys_have_their_own_namespace() {
        let h = Hash::of_with(DigestFunction::Blake3, b"x");
        let hex = h.to_hex();
        let p = &hex[..2];
        assert_eq!(
            object_key("", &BlobKey::ac(h), true),
            format!("blake3/ac/{p}/{hex}")
        );
        assert_eq!(
            object_key("team", &BlobKey::cas(h), true),
            format!("team/blake3/cas.v2/{p}/{hex}")
        );
        assert_eq!(
            object_key("", &BlobKey::cas(h), false),
            format!("blake3/cas/{p}/{hex}")
        );
    }
}
