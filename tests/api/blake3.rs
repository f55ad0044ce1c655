//! BLAKE3 (`--digest_function=blake3`) against the real server: every gRPC
//! API takes the function from the request (`digest_function` fields,
//! `blobs/blake3/…` resource names), HTTP from the `/blake3/` path segment
//! or the `X-Digest-Function` header. BLAKE3 blobs are a namespace of their
//! own: the same 64 hex characters under SHA-256 name another blob, on disk
//! (`dir/blake3/…`) and across restarts.

use bazel_cache_digest::{DigestFunction, EMPTY_BLAKE3, Hash};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use prost::Message;
use re::action_cache_client::ActionCacheClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{self, Server, bytestream_client};

const BLAKE3: i32 = re::digest_function::Value::Blake3 as i32;

fn b3(data: &[u8]) -> Hash {
    Hash::of_with(DigestFunction::Blake3, data)
}

fn b3_digest(data: &[u8]) -> re::Digest {
    re::Digest {
        hash: b3(data).to_hex(),
        size_bytes: data.len() as i64,
    }
}

async fn batch_update(
    cas: &mut ContentAddressableStorageClient<Channel>,
    function: i32,
    blobs: &[(re::Digest, &[u8])],
) -> Vec<i32> {
    let requests = blobs
        .iter()
        .map(|(d, data)| re::batch_update_blobs_request::Request {
            digest: Some(d.clone()),
            data: data.to_vec(),
            compressor: 0,
        })
        .collect();
    cas.batch_update_blobs(re::BatchUpdateBlobsRequest {
        requests,
        digest_function: function,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .responses
    .into_iter()
    .map(|r| r.status.unwrap().code)
    .collect()
}

async fn missing(
    cas: &mut ContentAddressableStorageClient<Channel>,
    function: i32,
    digests: Vec<re::Digest>,
) -> Vec<re::Digest> {
    cas.find_missing_blobs(re::FindMissingBlobsRequest {
        blob_digests: digests,
        digest_function: function,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .missing_blob_digests
}

async fn read(
    c: &mut bs::byte_stream_client::ByteStreamClient<Channel>,
    name: &str,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = c
        .read(bs::ReadRequest {
            resource_name: name.to_string(),
            read_offset: 0,
            read_limit: 0,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.extend_from_slice(&m.data);
    }
    Ok(out)
}

async fn write(
    c: &mut bs::byte_stream_client::ByteStreamClient<Channel>,
    name: &str,
    data: &[u8],
) -> Result<i64, tonic::Status> {
    let chunks: Vec<bs::WriteRequest> = data
        .chunks(64 << 10)
        .enumerate()
        .map(|(i, chunk)| bs::WriteRequest {
            resource_name: if i == 0 {
                name.to_string()
            } else {
                String::new()
            },
            write_offset: (i * (64 << 10)) as i64,
            finish_write: (i + 1) * (64 << 10) >= data.len(),
            data: chunk.to_vec(),
        })
        .collect();
    Ok(c.write(futures_util::stream::iter(chunks))
        .await?
        .into_inner()
        .committed_size)
}

#[tokio::test]
async fn blake3_blobs_live_in_their_own_namespace_over_grpc() {
    let s = Server::start_grpc(&[]);
    let channel = s.channel().await;
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    let mut ac = ActionCacheClient::new(channel.clone());
    let mut bytestream = bytestream_client(channel);

    let small = support::noise(3000, 1);
    let big = support::noise(700_000, 2);
    // BatchUpdate with BLAKE3 digests: stored. With the SHA-256 digest
    // under BLAKE3: refused per blob, nothing stored.
    assert_eq!(
        batch_update(&mut cas, BLAKE3, &[(b3_digest(&small), &small)]).await,
        vec![0]
    );
    assert_eq!(
        batch_update(&mut cas, BLAKE3, &[(support::digest(&big), &big)]).await,
        vec![Code::InvalidArgument as i32]
    );
    assert_eq!(
        missing(
            &mut cas,
            BLAKE3,
            vec![b3_digest(&small), support::digest(&big)]
        )
        .await,
        vec![support::digest(&big)]
    );
    // The same hex asked for under SHA-256 (unset = SHA-256) is another blob.
    let small_b3_as_sha256 = b3_digest(&small);
    assert_eq!(
        missing(&mut cas, 0, vec![small_b3_as_sha256.clone()]).await,
        vec![small_b3_as_sha256]
    );
    // BLAKE3's empty blob is always there; SHA-256's empty hash is not
    // BLAKE3's.
    let empty = re::Digest {
        hash: EMPTY_BLAKE3.to_hex(),
        size_bytes: 0,
    };
    assert!(missing(&mut cas, BLAKE3, vec![empty]).await.is_empty());
    let wrong_empty = re::Digest {
        hash: Hash::of(b"").to_hex(),
        size_bytes: 0,
    };
    let e = cas
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![wrong_empty],
            digest_function: BLAKE3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());

    // ByteStream: `blobs/blake3/…` writes and reads, plain and zstd; the
    // name without the segment is SHA-256 and finds nothing.
    let big_hex = b3(&big).to_hex();
    let n = big.len();
    assert_eq!(
        write(
            &mut bytestream,
            &format!("uploads/1/blobs/blake3/{big_hex}/{n}"),
            &big
        )
        .await
        .unwrap(),
        n as i64
    );
    assert_eq!(
        read(&mut bytestream, &format!("blobs/blake3/{big_hex}/{n}"))
            .await
            .unwrap(),
        big
    );
    let zstd = read(
        &mut bytestream,
        &format!("compressed-blobs/zstd/blake3/{big_hex}/{n}"),
    )
    .await
    .unwrap();
    assert_eq!(zstd::decode_all(zstd.as_slice()).unwrap(), big);
    let e = read(&mut bytestream, &format!("blobs/{big_hex}/{n}"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // A body that is not what its BLAKE3 name says is refused.
    let other = support::noise(5000, 3);
    let e = write(
        &mut bytestream,
        &format!("uploads/2/blobs/blake3/{}/5000", b3(&small).to_hex()),
        &other,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());

    // ActionCache: a BLAKE3 ActionResult references BLAKE3 blobs, and is
    // found only under BLAKE3.
    let action = re::Digest {
        hash: b3(b"action").to_hex(),
        size_bytes: 6,
    };
    let ar = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "out/big".into(),
            digest: Some(b3_digest(&big)),
            ..Default::default()
        }],
        stdout_digest: Some(b3_digest(&small)),
        ..Default::default()
    };
    ac.update_action_result(re::UpdateActionResultRequest {
        action_digest: Some(action.clone()),
        action_result: Some(ar.clone()),
        digest_function: BLAKE3,
        ..Default::default()
    })
    .await
    .unwrap();
    let got = ac
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(action.clone()),
            digest_function: BLAKE3,
            inline_stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.output_files, ar.output_files);
    assert_eq!(got.stdout_raw, small, "stdout inlined from the BLAKE3 CAS");
    let e = ac
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(action.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // An ActionResult whose outputs are stored only under SHA-256 is
    // incomplete under BLAKE3: its digests are read as BLAKE3 digests.
    let sha_only = support::noise(4000, 4);
    crate::grpc::upload(&mut cas, &[&sha_only]).await;
    let e = ac
        .update_action_result(re::UpdateActionResultRequest {
            action_digest: Some(re::Digest {
                hash: b3(b"action 2").to_hex(),
                size_bytes: 8,
            }),
            action_result: Some(re::ActionResult {
                output_files: vec![re::OutputFile {
                    path: "out/x".into(),
                    digest: Some(support::digest(&sha_only)),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            digest_function: BLAKE3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());

    // GetTree walks children with the root's function.
    let leaf = re::Directory {
        files: vec![re::FileNode {
            name: "f".into(),
            digest: Some(b3_digest(&small)),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let root = re::Directory {
        directories: vec![re::DirectoryNode {
            name: "d".into(),
            digest: Some(b3_digest(&leaf)),
        }],
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(
        batch_update(
            &mut cas,
            BLAKE3,
            &[(b3_digest(&leaf), &leaf), (b3_digest(&root), &root)]
        )
        .await,
        vec![0, 0]
    );
    let mut tree = cas
        .get_tree(re::GetTreeRequest {
            root_digest: Some(b3_digest(&root)),
            digest_function: BLAKE3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut dirs = 0;
    while let Some(page) = tree.message().await.unwrap() {
        dirs += page.directories.len();
    }
    assert_eq!(dirs, 2, "root and its BLAKE3-named child");

    // BatchRead under BLAKE3.
    let got = cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![b3_digest(&small)],
            digest_function: BLAKE3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.responses[0].data, small);
}

#[tokio::test]
async fn blake3_over_http_by_path_or_header() {
    let s = Server::start(&[]);
    let client = support::async_client();
    let url = |path: &str| format!("http://{}{path}", s.http_addr());
    let data = support::noise(100_000, 7);
    let hex = b3(&data).to_hex();

    // A PUT named with the SHA-256 under /blake3/ fails its hash.
    let r = client
        .put(url(&format!("/blake3/cas/{}", support::hex(&data))))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "{}", r.text().await.unwrap());
    let r = client
        .put(url(&format!("/blake3/cas/{hex}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        s.get_async(&format!("/blake3/cas/{hex}")).await,
        (200, data.clone())
    );
    // The same hex without the segment: SHA-256, nothing there.
    assert_eq!(s.get_async(&format!("/cas/{hex}")).await.0, 404);
    // The header says BLAKE3 for clients that cannot change paths (in any case).
    let r = client
        .get(url(&format!("/cas/{hex}")))
        .header("X-Digest-Function", "blake3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    // Path and header disagreeing, or an unknown function: 400 with why.
    for (path, header) in [
        (format!("/blake3/cas/{hex}"), "SHA256"),
        (format!("/cas/{hex}"), "sha1"),
    ] {
        let r = client
            .get(url(&path))
            .header("X-Digest-Function", header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{path} {header}");
        let text = r.text().await.unwrap();
        assert!(text.to_lowercase().contains("digest function"), "{text}");
    }
    // An instance name before the segment.
    let r = client
        .put(url(&format!("/team/blake3/cas/{hex}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    // AC over HTTP: a BLAKE3 ActionResult is checked against the BLAKE3 CAS.
    let ar = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "out".into(),
            digest: Some(b3_digest(&data)),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let action = b3(b"http action").to_hex();
    assert_eq!(
        support::request(&s, "PUT", &format!("/blake3/ac/{action}"), Some(&ar)).await,
        200
    );
    assert_eq!(
        s.get_async(&format!("/blake3/ac/{action}")).await,
        (200, ar)
    );
    assert_eq!(s.get_async(&format!("/ac/{action}")).await.0, 404);
}

#[tokio::test]
async fn blake3_entries_survive_restarts() {
    let s = Server::start(&[]);
    let data = support::noise(50_000, 9);
    let hex = b3(&data).to_hex();
    assert_eq!(
        support::request(&s, "PUT", &format!("/blake3/cas/{hex}"), Some(&data)).await,
        200
    );
    let dir = s.stop().expect("temp dir");
    // Stored in its own tree under `dir`, beside the SHA-256 ones.
    let file = dir.path().join("blake3/cas").join(&hex[..2]);
    let names: Vec<String> = std::fs::read_dir(&file)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().any(|n| n.starts_with(&hex)), "{names:?}");
    assert!(!dir.path().join("cas").join(&hex[..2]).join(&hex).exists());

    let s = Server::start_with_dir(dir.path(), &[]);
    assert_eq!(
        s.get_async(&format!("/blake3/cas/{hex}")).await,
        (200, data.clone())
    );
    assert_eq!(s.get_async(&format!("/cas/{hex}")).await.0, 404);
    assert_eq!(s.status_async().await["NumFiles"], 1);
    // (A lost index is rebuilt from BLAKE3's tree too: tests/store
    // `recovery::lost_index_is_rebuilt_from_files`.)
}
