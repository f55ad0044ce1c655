//! bazel-remote's names for its files under `dir` (`cache/disk/disk.go`,
//! `FileLocation`; `load.go` parses them back the same way):
//!
//! ```text
//! cas.v2/9c/<hash>-<size>-<random>     a CAS blob in the casblob format (zstd mode)
//! cas.v2/9c/<hash>-<random>.v1         a CAS blob as plain bytes (uncompressed mode)
//! ac.v2/3f/<hash>-<random>             an ActionResult as sent
//! raw.v2/3f/<hash>-<random>            an HTTP AC body stored unvalidated
//! ```
//! `<hash>` is 64 lowercase hex digits, `<size>` the blob's logical size
//! (no leading zero), `<random>` digits or ASCII letters that tell apart
//! concurrent writes of one key. load.go's pattern also admits a size on
//! `.v1` names; it is accepted and checked.

use bazel_cache_digest::{DigestFunction, Hash};

/// The three trees of a bazel-remote `dir`, in the order they are read.
pub(super) const TREES: [(&str, Tree); 3] = [
    ("ac.v2", Tree::Ac),
    ("raw.v2", Tree::Raw),
    ("cas.v2", Tree::Cas),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tree {
    Ac,
    Raw,
    Cas,
}

/// What a file name says about its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Form {
    /// casblob container; the logical size from the name.
    CasBlob { size: u64 },
    /// Plain CAS bytes; the size when the name has one.
    PlainCas { size: Option<u64> },
    /// An AC (or raw) entry: the bytes as sent.
    Ac,
}

/// Parses a file name found in a shard directory of `tree`; `None` for a
/// name bazel-remote would not have written there.
pub(super) fn parse(tree: Tree, name: &str) -> Option<(Hash, Form)> {
    let (stem, v1) = match name.strip_suffix(".v1") {
        Some(stem) => (stem, true),
        None => (name, false),
    };
    let (hex, rest) = stem.split_at_checked(64)?;
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    // bazel-remote names blobs with SHA-256 only.
    let hash = Hash::from_hex(DigestFunction::Sha256, hex).ok()?;
    let fields: Vec<&str> = rest.strip_prefix('-')?.split('-').collect();
    let (size, random) = match fields.as_slice() {
        [random] => (None, *random),
        [size, random] => (Some(parse_size(size)?), *random),
        _ => return None,
    };
    if random.is_empty() || !random.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let form = match (tree, v1, size) {
        (Tree::Cas, false, Some(size)) => Form::CasBlob { size },
        (Tree::Cas, true, size) => Form::PlainCas { size },
        (Tree::Ac | Tree::Raw, false, None) => Form::Ac,
        _ => return None,
    };
    Some((hash, form))
}

/// `[1-9][0-9]*`, as load.go's pattern has it.
fn parse_size(s: &str) -> Option<u64> {
    if s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A shard directory's name: two lowercase hex digits.
pub(super) fn is_shard(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_bazel_remote_writes_and_nothing_else() {
        let h = "9c".repeat(32);
        let hash = Hash::from_hex(DigestFunction::Sha256, &h).unwrap();
        let casblob = Form::CasBlob { size: 1234 };
        assert_eq!(
            parse(Tree::Cas, &format!("{h}-1234-012345678")),
            Some((hash, casblob))
        );
        let plain = Form::PlainCas { size: None };
        assert_eq!(
            parse(Tree::Cas, &format!("{h}-556677.v1")),
            Some((hash, plain))
        );
        let sized = Form::PlainCas { size: Some(7) };
        assert_eq!(
            parse(Tree::Cas, &format!("{h}-7-aB3.v1")),
            Some((hash, sized))
        );
        assert_eq!(
            parse(Tree::Ac, &format!("{h}-112233")),
            Some((hash, Form::Ac))
        );
        assert_eq!(parse(Tree::Raw, &format!("{h}-1")), Some((hash, Form::Ac)));
        for bad in [
            h.clone(),
            format!("{h}-"),
            format!("{h}-0123-5"),
            format!("{h}-12-"),
            format!("{h}-1-2-3"),
            format!("{h}-12-x.y"),
            format!("{}-12-3", h.to_uppercase()),
            format!("{}-12-3", &h[..63]),
            "junk".to_string(),
            format!("{h}-12-3.tmp"),
        ] {
            assert_eq!(parse(Tree::Cas, &bad), None, "{bad}");
        }
        // AC entries carry no size and never `.v1`; CAS ones always one of them.
        assert_eq!(parse(Tree::Ac, &format!("{h}-12-3")), None);
        assert_eq!(parse(Tree::Ac, &format!("{h}-3.v1")), None);
        assert_eq!(parse(Tree::Cas, &format!("{h}-3")), None);
        assert!(is_shard("0f") && !is_shard("0F") && !is_shard("abc") && !is_shard("g0"));
    }
}
