//! ActionResult and Tree decoding and validation, as a cache serves them:
//! `ac::decode` (what `PUT /ac/` runs on a client's body), then
//! `ac::missing_blobs` (what `GET /ac/` and the ActionCache service run to
//! decide whether a hit is complete), which reads each output directory's
//! Tree from the store and decodes it.
//!
//! Input layout: byte 0 chooses which referenced blobs the store holds
//! (bit i: the i-th referenced digest, cycling), bytes 1..3 the length of
//! the ActionResult bytes (little endian), then the ActionResult, then the
//! bytes stored as every output directory's Tree.
//!
//! Checks: no panic; an accepted ActionResult re-encodes to one that is
//! accepted again; every digest reported missing is one the result or one
//! of its Trees references.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use async_trait::async_trait;
use bazel_cache_digest::{BlobKey, Digest, DigestFunction};
use bazel_cache_store::action_result as ac;
use bazel_cache_store::{Blob, BlobBody, Encoding, PutRequest, Store, StoreError, StoreStats};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// A store holding a fixed set of blobs in memory: each key has the
/// logical size it reports and the bytes a read yields (only Trees need
/// real bytes). Writes are refused: the code under test only reads.
struct MemStore {
    blobs: HashMap<BlobKey, (u64, Vec<u8>)>,
}

#[async_trait]
impl Store for MemStore {
    async fn get(&self, key: &BlobKey, _accept_zstd: bool) -> Result<Option<Blob>, StoreError> {
        Ok(self.blobs.get(key).map(|(size, bytes)| Blob {
            size: *size,
            encoding: Encoding::Identity,
            body_len: Some(bytes.len() as u64),
            body: BlobBody::Bytes(bytes.clone().into()),
        }))
    }

    async fn contains(&self, key: &BlobKey) -> Result<Option<u64>, StoreError> {
        Ok(self.blobs.get(key).map(|(size, _)| *size))
    }

    async fn put(&self, _req: PutRequest) -> Result<(), StoreError> {
        Err(StoreError::Closed)
    }

    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime")
    })
}

/// Every digest a Tree's directories reference (files and subdirectories).
fn tree_digests(function: DigestFunction, tree: &re::Tree) -> HashSet<Digest> {
    let dirs = tree.root.iter().chain(&tree.children);
    let files = dirs
        .clone()
        .flat_map(|d| &d.files)
        .filter_map(|f| f.digest.as_ref());
    let subdirs = dirs
        .flat_map(|d| &d.directories)
        .filter_map(|d| d.digest.as_ref());
    files
        .chain(subdirs)
        .filter_map(|d| Digest::from_reapi(function, d).ok())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let [present_bits, len_lo, len_hi, rest @ ..] = data else {
        return;
    };
    // The top bit of the length picks the digest function the AC key has.
    let function = if len_hi & 0x80 != 0 {
        DigestFunction::Blake3
    } else {
        DigestFunction::Sha256
    };
    let ar_len = usize::from(u16::from_le_bytes([*len_lo, len_hi & 0x7f])).min(rest.len());
    let (ar_bytes, tree_bytes) = rest.split_at(ar_len);

    let Ok(ar) = ac::decode(function, ar_bytes) else {
        return;
    };
    let again = ac::decode(function, &ar.encode_to_vec()).expect("a re-encoded valid ActionResult");
    assert_eq!(again, ar);

    // The store: each output directory's Tree is `tree_bytes`; the other
    // referenced blobs are present or not as `present_bits` says.
    let referenced = ac::referenced_blobs(function, &ar);
    let trees: HashSet<Digest> = ar
        .output_directories
        .iter()
        .filter_map(|d| d.tree_digest.as_ref())
        .filter_map(|d| Digest::from_reapi(function, d).ok())
        .collect();
    let mut blobs = HashMap::new();
    for (i, d) in referenced.iter().enumerate() {
        if trees.contains(d) {
            blobs.insert(BlobKey::cas(d.hash), (d.size, tree_bytes.to_vec()));
        } else if present_bits & (1 << (i % 8)) != 0 {
            blobs.insert(BlobKey::cas(d.hash), (d.size, Vec::new()));
        }
    }
    let store = MemStore { blobs };
    let missing = runtime()
        .block_on(ac::missing_blobs(&store, function, &ar))
        .expect("an in-memory store does not fail");

    let mut allowed: HashSet<Digest> = referenced.iter().copied().collect();
    if let Ok(tree) = re::Tree::decode(tree_bytes) {
        allowed.extend(tree_digests(function, &tree));
    }
    for d in &missing {
        assert!(
            allowed.contains(d),
            "reported missing {d:?}, which nothing references"
        );
    }
});
