//! Action cache semantics shared by the HTTP and gRPC front ends: what a valid
//! `ActionResult` is, and whether a cached one is still usable (every blob it
//! references is present), so a client never gets a hit it cannot download.

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

use crate::{Store, StoreError, read_all};
use bazel_cache_digest::{BlobKey, Digest, DigestFunction};

pub use re::ActionResult;

/// Largest ActionResult body we decode in memory. ActionResults are small
/// (inlined outputs excepted); this bounds what a hostile PUT can allocate.
pub const MAX_ACTION_RESULT_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AcError {
    #[error("body is not a valid ActionResult protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("ActionResult {field}: invalid digest: {reason}")]
    BadDigest { field: String, reason: String },
    #[error("ActionResult {field}: path must be relative and non-empty, got {path:?}")]
    BadPath { field: String, path: String },
}

/// Decodes and validates an ActionResult body. `function` is the AC key's:
/// an ActionResult's digests use the function of the action that made it.
pub fn decode(function: DigestFunction, bytes: &[u8]) -> Result<ActionResult, AcError> {
    let ar = ActionResult::decode(bytes)?;
    validate(function, &ar)?;
    Ok(ar)
}

fn check_digest(
    function: DigestFunction,
    field: impl FnOnce() -> String,
    d: &Option<re::Digest>,
) -> Result<(), AcError> {
    match d {
        None => Ok(()),
        Some(d) => Digest::from_reapi(function, d)
            .map(|_| ())
            .map_err(|e| AcError::BadDigest {
                field: field(),
                reason: e.to_string(),
            }),
    }
}

fn check_path(field: impl FnOnce() -> String, path: &str) -> Result<(), AcError> {
    if path.is_empty() || path.starts_with('/') {
        return Err(AcError::BadPath {
            field: field(),
            path: path.to_string(),
        });
    }
    Ok(())
}

/// The checks bazel-remote makes: every digest is well formed and every
/// output path is relative. (Empty digests for stdout/stderr are allowed.)
pub fn validate(function: DigestFunction, ar: &ActionResult) -> Result<(), AcError> {
    for (i, f) in ar.output_files.iter().enumerate() {
        check_path(|| format!("output_files[{i}].path"), &f.path)?;
        check_digest(function, || format!("output_files[{i}].digest"), &f.digest)?;
    }
    for (i, d) in ar.output_directories.iter().enumerate() {
        check_path(|| format!("output_directories[{i}].path"), &d.path)?;
        check_digest(
            function,
            || format!("output_directories[{i}].tree_digest"),
            &d.tree_digest,
        )?;
    }
    #[allow(deprecated)] // older clients still fill the split symlink fields
    let symlinks = ar
        .output_symlinks
        .iter()
        .chain(&ar.output_file_symlinks)
        .chain(&ar.output_directory_symlinks);
    for (i, l) in symlinks.enumerate() {
        check_path(|| format!("output symlink [{i}].path"), &l.path)?;
    }
    check_digest(function, || "stdout_digest".into(), &ar.stdout_digest)?;
    check_digest(function, || "stderr_digest".into(), &ar.stderr_digest)?;
    Ok(())
}

/// The CAS blobs an ActionResult points at directly: output files, output
/// directory trees, stdout and stderr.
pub fn referenced_blobs(function: DigestFunction, ar: &ActionResult) -> Vec<Digest> {
    let digests = ar
        .output_files
        .iter()
        .filter_map(|f| f.digest.as_ref())
        .chain(
            ar.output_directories
                .iter()
                .filter_map(|d| d.tree_digest.as_ref()),
        )
        .chain(ar.stdout_digest.as_ref())
        .chain(ar.stderr_digest.as_ref());
    digests
        .filter_map(|d| Digest::from_reapi(function, d).ok())
        .collect()
}

/// The Trees of an ActionResult's output directories (those whose digest
/// is well formed).
pub fn tree_digests(
    function: DigestFunction,
    ar: &ActionResult,
) -> impl Iterator<Item = Digest> + '_ {
    ar.output_directories
        .iter()
        .filter_map(|d| d.tree_digest.as_ref())
        .filter_map(move |d| Digest::from_reapi(function, d).ok())
}

/// A stored Tree, decoded; `None` when it is absent, too large to be one,
/// or does not decode.
pub async fn read_tree(store: &dyn Store, tree: &Digest) -> Result<Option<re::Tree>, StoreError> {
    match read_all(store, &BlobKey::cas(tree.hash), MAX_ACTION_RESULT_BYTES).await {
        Ok(Some(bytes)) => Ok(re::Tree::decode(bytes.as_slice()).ok()),
        Ok(None) | Err(StoreError::TooLarge { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every file of a Tree (its root and its children), well-formed digests
/// under the Tree's own function.
pub fn tree_files(function: DigestFunction, tree: &re::Tree) -> impl Iterator<Item = Digest> + '_ {
    tree.root
        .iter()
        .chain(&tree.children)
        .flat_map(|d| &d.files)
        .filter_map(|f| f.digest.as_ref())
        .filter_map(move |d| Digest::from_reapi(function, d).ok())
}

/// Every blob the ActionResult needs that the CAS lacks: its direct
/// references and, for output directories, every file inside their Trees.
/// A Tree that is present but does not decode counts as missing. Presence is
/// asked in batches (`find_missing`), so a proxy backend can answer with
/// metadata requests instead of downloads: a blob missing locally is looked
/// for in the backend (through its presence cache), so an entry whose blobs
/// are gone from both tiers is a miss, and with `update_timestamps` the
/// blobs found are refreshed there.
pub async fn missing_blobs(
    store: &dyn Store,
    function: DigestFunction,
    ar: &ActionResult,
) -> Result<Vec<Digest>, StoreError> {
    let mut missing = store.find_missing(&referenced_blobs(function, ar)).await?;
    let mut files = Vec::new();
    for tree_digest in tree_digests(function, ar) {
        if missing.contains(&tree_digest) {
            continue;
        }
        let Some(tree) = read_tree(store, &tree_digest).await? else {
            missing.push(tree_digest);
            continue;
        };
        files.extend(tree_files(function, &tree));
    }
    files.sort_by_key(|d| (d.hash, d.size));
    files.dedup();
    for d in store.find_missing(&files).await? {
        if !missing.contains(&d) {
            missing.push(d);
        }
    }
    Ok(missing)
}

/// True when every blob the ActionResult needs is in the store.
pub async fn is_complete(
    store: &dyn Store,
    function: DigestFunction,
    ar: &ActionResult,
) -> Result<bool, StoreError> {
    Ok(missing_blobs(store, function, ar).await?.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazel_cache_digest::Hash;

    const SHA256: DigestFunction = DigestFunction::Sha256;

    fn digest_of(data: &[u8]) -> re::Digest {
        re::Digest {
            hash: Hash::of(data).to_hex(),
            size_bytes: data.len() as i64,
        }
    }

    #[test]
    fn valid_result_round_trips_and_lists_blobs() {
        let ar = ActionResult {
            output_files: vec![re::OutputFile {
                path: "out/a.txt".into(),
                digest: Some(digest_of(b"a")),
                ..Default::default()
            }],
            stdout_digest: Some(digest_of(b"log")),
            exit_code: 0,
            ..Default::default()
        };
        let decoded = decode(SHA256, &ar.encode_to_vec()).unwrap();
        assert_eq!(decoded, ar);
        let refs = referenced_blobs(SHA256, &ar);
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].hash, Hash::of(b"a"));
    }

    #[test]
    fn invalid_results_are_rejected() {
        assert!(matches!(
            decode(SHA256, b"\xff\xff\xff"),
            Err(AcError::Decode(_))
        ));
        let bad_hash = ActionResult {
            output_files: vec![re::OutputFile {
                path: "a".into(),
                digest: Some(re::Digest {
                    hash: "nothex".into(),
                    size_bytes: 1,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(matches!(
            decode(SHA256, &bad_hash.encode_to_vec()),
            Err(AcError::BadDigest { .. })
        ));
        let abs = ActionResult {
            output_files: vec![re::OutputFile {
                path: "/etc/passwd".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(matches!(
            decode(SHA256, &abs.encode_to_vec()),
            Err(AcError::BadPath { .. })
        ));
        let negative = ActionResult {
            stderr_digest: Some(re::Digest {
                hash: Hash::of(b"").to_hex(),
                size_bytes: -1,
            }),
            ..Default::default()
        };
        assert!(matches!(
            decode(SHA256, &negative.encode_to_vec()),
            Err(AcError::BadDigest { .. })
        ));
    }
}
