//! SplitBlob and SpliceBlob (REAPI v2.12) against the real server binary:
//! a stored blob split into FastCDC chunks that are each readable, chunks
//! spliced into a blob readable over ByteStream and HTTP, splices that
//! store nothing (a missing chunk, a wrong digest, sizes that do not add
//! up, over max_blob_size), and oversize uploads refused as the spec asks.
//! Capabilities' chunking fields are checked in `grpc.rs`.

use crate::grpc_bytestream::helpers::{Client, client, read, read_name, upload_name, write};
use crate::support::{self, Server, digest, hex};
use bazel_cache_store::chunking::FastCdc;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::Code;
use tonic::transport::Channel;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

type Cas = ContentAddressableStorageClient<Channel>;

async fn clients(s: &Server) -> (Cas, Client) {
    (
        ContentAddressableStorageClient::new(s.channel().await),
        client(s).await,
    )
}

async fn upload(bs: &mut Client, data: &[u8]) {
    write(bs, &upload_name(data, false), data, 64 * KIB)
        .await
        .unwrap();
}

async fn split(cas: &mut Cas, d: re::Digest) -> Result<re::SplitBlobResponse, tonic::Status> {
    split_with(cas, d, 0).await
}

/// SplitBlob with a `digest_function` (0: unset, SHA-256).
async fn split_with(
    cas: &mut Cas,
    d: re::Digest,
    function: i32,
) -> Result<re::SplitBlobResponse, tonic::Status> {
    cas.split_blob(re::SplitBlobRequest {
        blob_digest: Some(d),
        chunking_function: re::chunking_function::Value::FastCdc2020 as i32,
        digest_function: function,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn splice(
    cas: &mut Cas,
    blob: re::Digest,
    chunks: Vec<re::Digest>,
) -> Result<re::SpliceBlobResponse, tonic::Status> {
    splice_with(cas, blob, chunks, 0).await
}

/// SpliceBlob with a `digest_function` (0: unset, SHA-256).
async fn splice_with(
    cas: &mut Cas,
    blob: re::Digest,
    chunks: Vec<re::Digest>,
    function: i32,
) -> Result<re::SpliceBlobResponse, tonic::Status> {
    cas.splice_blob(re::SpliceBlobRequest {
        blob_digest: Some(blob),
        chunk_digests: chunks,
        chunking_function: re::chunking_function::Value::FastCdc2020 as i32,
        digest_function: function,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

/// GET /cas/<hash> over HTTP: status and body.
async fn http_get(s: &Server, hash: &str) -> (u16, Vec<u8>) {
    let resp = reqwest::get(format!("{}/cas/{hash}", s.http_url))
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.bytes().await.unwrap().to_vec())
}

async fn is_stored(cas: &mut Cas, d: &re::Digest) -> bool {
    cas.find_missing_blobs(re::FindMissingBlobsRequest {
        blob_digests: vec![d.clone()],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .missing_blob_digests
    .is_empty()
}

#[tokio::test]
async fn split_returns_fastcdc_chunks_each_readable() {
    let s = Server::start_grpc(&[]);
    let (mut cas, mut bs) = clients(&s).await;
    let blob = support::noise(3 * MIB, 15);
    upload(&mut bs, &blob).await;

    let resp = split(&mut cas, digest(&blob)).await.unwrap();
    assert_eq!(
        resp.chunking_function,
        re::chunking_function::Value::FastCdc2020 as i32
    );
    // The boundaries are FastCDC 2020's at the announced parameters
    // (512 KiB average, seed 0), the ones a client computes.
    let cdc = FastCdc::from_params(512 * 1024, 0).unwrap();
    let expected: Vec<re::Digest> = cdc
        .chunks(&blob)
        .map(|c| digest(&blob[c.offset..c.offset + c.len]))
        .collect();
    assert!(expected.len() >= 2, "{} chunks", expected.len());
    assert_eq!(resp.chunk_digests, expected);

    let mut joined = Vec::new();
    for (i, d) in resp.chunk_digests.iter().enumerate() {
        let name = format!("blobs/{}/{}", d.hash, d.size_bytes);
        let chunk = read(&mut bs, &name).await.unwrap();
        assert_eq!(hex(&chunk), d.hash, "chunk {i}");
        let size = chunk.len();
        assert!(size <= 2 * MIB, "chunk {i}: {size} bytes");
        if i + 1 < resp.chunk_digests.len() {
            assert!(size >= 128 * KIB, "chunk {i}: {size} bytes");
        }
        joined.extend_from_slice(&chunk);
    }
    assert!(joined == blob, "the chunks do not concatenate to the blob");

    // Splicing the same chunks again is a no-op on the stored blob.
    let back = splice(&mut cas, digest(&blob), resp.chunk_digests)
        .await
        .unwrap();
    assert_eq!(back.blob_digest, Some(digest(&blob)));
}

#[tokio::test]
async fn split_of_an_absent_blob_is_not_found() {
    let s = Server::start_grpc(&[]);
    let (mut cas, mut bs) = clients(&s).await;
    let blob = support::noise(300 * KIB, 16);
    let e = split(&mut cas, digest(&blob)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");

    upload(&mut bs, &blob).await;
    let mut wrong_size = digest(&blob);
    wrong_size.size_bytes += 1;
    let e = split(&mut cas, wrong_size).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // A blob smaller than the minimum chunk is its own single chunk.
    let small = support::noise(10 * KIB, 17);
    upload(&mut bs, &small).await;
    let resp = split(&mut cas, digest(&small)).await.unwrap();
    assert_eq!(resp.chunk_digests, vec![digest(&small)]);
}

#[tokio::test]
async fn splice_stores_the_blob_whole() {
    let s = Server::start_grpc(&[]);
    let (mut cas, mut bs) = clients(&s).await;
    let parts: Vec<Vec<u8>> = (0..3)
        .map(|i| support::noise(700 * KIB + i * 1000, 20 + i as u64))
        .collect();
    for p in &parts {
        upload(&mut bs, p).await;
    }
    let blob = parts.concat();
    let d = digest(&blob);
    assert!(!is_stored(&mut cas, &d).await);

    let resp = splice(
        &mut cas,
        d.clone(),
        parts.iter().map(|p| digest(p)).collect(),
    )
    .await
    .unwrap();
    assert_eq!(resp.blob_digest, Some(d.clone()));
    assert!(is_stored(&mut cas, &d).await);
    let over_grpc = read(&mut bs, &read_name(&blob)).await.unwrap();
    assert!(over_grpc == blob, "ByteStream read differs");
    let (code, over_http) = http_get(&s, &d.hash).await;
    assert_eq!(code, 200);
    assert!(over_http == blob, "HTTP read differs");
}

#[tokio::test]
async fn splices_that_store_nothing() {
    let s = Server::start_grpc(&["--max_blob_size", "2000000"]);
    let (mut cas, mut bs) = clients(&s).await;
    let a = support::noise(300 * KIB, 30);
    let b = support::noise(200 * KIB, 31);
    let absent = support::noise(100 * KIB, 32);
    upload(&mut bs, &a).await;
    upload(&mut bs, &b).await;

    // A chunk missing: NOT_FOUND naming it.
    let blob = [a.clone(), absent.clone(), b.clone()].concat();
    let chunks = vec![digest(&a), digest(&absent), digest(&b)];
    let e = splice(&mut cas, digest(&blob), chunks).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains(&hex(&absent)), "{}", e.message());
    assert!(!is_stored(&mut cas, &digest(&blob)).await);

    // The chunks concatenate to other bytes than the digest names.
    let claimed = support::noise(a.len() + b.len(), 33);
    let e = splice(&mut cas, digest(&claimed), vec![digest(&a), digest(&b)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(!is_stored(&mut cas, &digest(&claimed)).await);
    assert_eq!(http_get(&s, &hex(&claimed)).await.0, 404);

    // Chunk sizes that cannot add up to the blob's.
    let ab = [a.clone(), b.clone()].concat();
    let e = splice(&mut cas, digest(&ab), vec![digest(&a)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(!is_stored(&mut cas, &digest(&ab)).await);

    // Over max_blob_size: refused before any chunk is read.
    let big: Vec<re::Digest> = vec![digest(&a); 7];
    let mut too_big = digest(&a);
    too_big.size_bytes = 7 * a.len() as i64;
    let e = splice(&mut cas, too_big, big).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("max_blob_size"), "{}", e.message());

    // The good splice still works after the refusals.
    splice(&mut cas, digest(&ab), vec![digest(&a), digest(&b)])
        .await
        .unwrap();
    assert!(is_stored(&mut cas, &digest(&ab)).await);
}

#[tokio::test]
async fn oversize_uploads_are_invalid_argument() {
    let s = Server::start_grpc(&["--max_blob_size", "100000"]);
    let (mut cas, _) = clients(&s).await;
    let big = support::noise(100_001, 40);
    let resp = cas
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: vec![re::batch_update_blobs_request::Request {
                digest: Some(digest(&big)),
                data: big.clone(),
                compressor: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = resp.responses[0].status.clone().unwrap();
    assert_eq!(status.code, Code::InvalidArgument as i32, "{status:?}");
    assert!(status.message.contains("max_blob_size"), "{status:?}");
    assert!(!is_stored(&mut cas, &digest(&big)).await);
}

/// Under BLAKE3 the chunks are named with BLAKE3 too, readable under
/// `blobs/blake3/…`, and splice back into the BLAKE3 blob.
#[tokio::test]
async fn split_and_splice_under_blake3() {
    use bazel_cache_digest::{DigestFunction, Hash};
    let b3 = |data: &[u8]| re::Digest {
        hash: Hash::of_with(DigestFunction::Blake3, data).to_hex(),
        size_bytes: data.len() as i64,
    };
    let blake3 = re::digest_function::Value::Blake3 as i32;
    let s = Server::start_grpc(&[]);
    let (mut cas, mut bs) = clients(&s).await;
    let blob = support::noise(2 * MIB, 21);
    let d = b3(&blob);
    write(
        &mut bs,
        &format!("uploads/x/blobs/blake3/{}/{}", d.hash, d.size_bytes),
        &blob,
        64 * KIB,
    )
    .await
    .unwrap();
    let resp = split_with(&mut cas, d.clone(), blake3).await.unwrap();
    let cdc = FastCdc::from_params(512 * 1024, 0).unwrap();
    let expected: Vec<re::Digest> = cdc
        .chunks(&blob)
        .map(|c| b3(&blob[c.offset..c.offset + c.len]))
        .collect();
    assert!(expected.len() >= 2);
    assert_eq!(resp.chunk_digests, expected);
    for c in &resp.chunk_digests {
        let name = format!("blobs/blake3/{}/{}", c.hash, c.size_bytes);
        let chunk = read(&mut bs, &name).await.unwrap();
        assert_eq!(b3(&chunk), *c);
        // Not stored under the same hex as SHA-256.
        assert!(
            read(&mut bs, &format!("blobs/{}/{}", c.hash, c.size_bytes))
                .await
                .is_err()
        );
    }

    // Two BLAKE3 chunks spliced into a new BLAKE3 blob.
    let other = support::noise(MIB, 22);
    let (first, second) = other.split_at(300 * KIB);
    for part in [first, second] {
        let pd = b3(part);
        write(
            &mut bs,
            &format!("uploads/y/blobs/blake3/{}/{}", pd.hash, pd.size_bytes),
            part,
            64 * KIB,
        )
        .await
        .unwrap();
    }
    let chunks = vec![b3(first), b3(second)];
    let spliced = splice_with(&mut cas, b3(&other), chunks.clone(), blake3)
        .await
        .unwrap();
    assert_eq!(spliced.blob_digest, Some(b3(&other)));
    let name = format!("blobs/blake3/{}/{}", b3(&other).hash, other.len());
    assert!(read(&mut bs, &name).await.unwrap() == other);
    // The SHA-256 name of the same bytes is not there: the splice verified
    // and stored BLAKE3's. Asked as SHA-256, the BLAKE3 chunks are missing.
    assert!(!is_stored(&mut cas, &digest(&other)).await);
    let e = splice_with(&mut cas, digest(&other), chunks, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
}
