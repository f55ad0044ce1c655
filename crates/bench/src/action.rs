//! The action cache entries the load reads and writes: for blob `id` of a
//! size class, an action digest derived from the id, and an ActionResult
//! naming one output file, a prefilled CAS blob of that class. Servers check
//! ActionResults (a well-formed message; on read, and some on write, that
//! the outputs it names are stored), so the entry is what a build would
//! store, small and valid. Both are computed from the id alone, so a read
//! is verified by hashing what came back against the expected encoding.

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message as _;

use crate::blobs::{BlobId, PREFILL, SizeClass};
use bazel_cache_digest::{DigestFunction, Hash, Hasher};

/// The action digest of entry `id` of `class`, a hash of the class's
/// function (an action is named as the blobs are): distinct from every CAS
/// blob the load makes (a different domain in the hashed bytes).
pub(crate) fn action_digest(class: &SizeClass, id: BlobId) -> re::Digest {
    let mut h = Hasher::new(class.function());
    h.update(b"bazel-cache-bench action\0");
    h.update(&class.size().to_le_bytes());
    h.update(&id.bytes());
    let hash = h.finish();
    re::Digest {
        hash: hash.to_hex(),
        // The size of the Action message the digest would name: any
        // plausible value; caches key by hash.
        size_bytes: 142,
    }
}

/// The ActionResult of entry `id`: exit code 0, one output file, prefilled
/// blob `id.index % prefilled` of `class`.
pub(crate) fn action_result(class: &SizeClass, id: BlobId, prefilled: u64) -> re::ActionResult {
    let output = BlobId {
        namespace: PREFILL,
        index: id.index % prefilled.max(1),
    };
    re::ActionResult {
        output_files: vec![re::OutputFile {
            path: format!(
                "bazel-out/k8-opt/bin/bench/{:x}/{}.o",
                id.namespace, id.index
            ),
            digest: Some(re::Digest {
                hash: class.hash(output).to_hex(),
                size_bytes: class.size() as i64,
            }),
            is_executable: false,
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    }
}

/// The serialized ActionResult and its hash under `function` (that of the
/// class whose blob it names), which reads are checked against.
pub(crate) fn encoded(ar: &re::ActionResult, function: DigestFunction) -> (Vec<u8>, Hash) {
    let bytes = ar.encode_to_vec();
    let hash = Hash::of_with(function, &bytes);
    (bytes, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_distinct_and_name_prefilled_blobs() {
        // Under either function, named by it: a BLAKE3 run's entries name
        // BLAKE3 blobs.
        for function in DigestFunction::ALL {
            let class = SizeClass::named_by(4096, crate::blobs::Content::Random, function);
            let a = BlobId {
                namespace: 5,
                index: 11,
            };
            let b = BlobId { index: 12, ..a };
            assert_ne!(action_digest(&class, a), action_digest(&class, b));
            assert_ne!(
                action_digest(&class, a).hash,
                class.hash(a).to_hex(),
                "an action digest is not a blob's"
            );
            let mut h = Hasher::new(function);
            h.update(b"bazel-cache-bench action\0");
            h.update(&4096u64.to_le_bytes());
            h.update(&a.bytes());
            assert_eq!(action_digest(&class, a).hash, h.finish().to_hex());
            let ar = action_result(&class, a, 4);
            let named = ar.output_files[0].digest.clone().unwrap();
            let prefilled = BlobId {
                namespace: PREFILL,
                index: 3,
            };
            assert_eq!(named.hash, class.hash(prefilled).to_hex());
            let (bytes, hash) = encoded(&ar, function);
            assert_eq!(re::ActionResult::decode(&bytes[..]).unwrap(), ar);
            assert_eq!(Hash::of_with(function, &bytes), hash);
        }
        let (sha, blake3) = (
            SizeClass::new(4096),
            SizeClass::named_by(4096, crate::blobs::Content::Random, DigestFunction::Blake3),
        );
        let id = BlobId {
            namespace: 5,
            index: 11,
        };
        assert_ne!(action_digest(&sha, id), action_digest(&blake3, id));
    }
}
