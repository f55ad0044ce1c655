//! Digests that can name no blob (size 0 with a hash other than the empty
//! blob's, a negative size, a hash of the wrong length or not lowercase hex)
//! get INVALID_ARGUMENT from every RPC that takes one, FindMissingBlobs
//! included, as bazel-remote answers; the action digest's size -1 (unknown,
//! as bazel-remote's grpc_proxy sends it) stays accepted. `/cas/` refuses
//! the same hashes with 400.

use super::helpers::off_runtime;
use crate::support::{self, Server, digest, hex};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::{ReadRequest, WriteRequest};
use re::action_cache_client::ActionCacheClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::Code;

const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Each impossible digest, named.
fn impossible() -> Vec<(&'static str, re::Digest)> {
    let h = hex(b"some blob");
    vec![
        (
            "size 0, not the empty hash",
            re::Digest {
                hash: h.clone(),
                size_bytes: 0,
            },
        ),
        (
            "negative size",
            re::Digest {
                hash: h.clone(),
                size_bytes: -5,
            },
        ),
        (
            "short hash",
            re::Digest {
                hash: h[..63].to_string(),
                size_bytes: 9,
            },
        ),
        (
            "long hash",
            re::Digest {
                hash: format!("{h}0"),
                size_bytes: 9,
            },
        ),
        (
            "uppercase hash",
            re::Digest {
                hash: h.to_uppercase(),
                size_bytes: 9,
            },
        ),
        (
            "not hex",
            re::Digest {
                hash: format!("{}g", &h[..63]),
                size_bytes: 9,
            },
        ),
    ]
}

fn assert_invalid<T: std::fmt::Debug>(what: &str, got: Result<T, tonic::Status>) {
    match got {
        Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}"),
        Ok(r) => panic!("{what}: answered OK: {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_digests_are_invalid_in_every_rpc() {
    let s = Server::start_grpc(&[]);
    let ch = s.channel().await;
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let mut ac = ActionCacheClient::new(ch.clone());
    let mut bs = support::bytestream_client(ch);
    let kept = support::noise(1000, 7);

    for (what, d) in impossible() {
        assert_invalid(
            &format!("FindMissingBlobs: {what}"),
            cas.find_missing_blobs(re::FindMissingBlobsRequest {
                blob_digests: vec![digest(&kept), d.clone()],
                ..Default::default()
            })
            .await,
        );
        assert_invalid(
            &format!("BatchReadBlobs: {what}"),
            cas.batch_read_blobs(re::BatchReadBlobsRequest {
                digests: vec![d.clone()],
                ..Default::default()
            })
            .await,
        );
        // BatchUpdateBlobs answers per blob: that blob's status says it.
        let resp = cas
            .batch_update_blobs(re::BatchUpdateBlobsRequest {
                requests: vec![re::batch_update_blobs_request::Request {
                    digest: Some(d.clone()),
                    data: b"some blob".to_vec(),
                    compressor: 0,
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.responses[0].status.as_ref().unwrap().code,
            Code::InvalidArgument as i32,
            "BatchUpdateBlobs: {what}"
        );
        assert_invalid(
            &format!("GetTree: {what}"),
            cas.get_tree(re::GetTreeRequest {
                root_digest: Some(d.clone()),
                ..Default::default()
            })
            .await,
        );
        assert_invalid(
            &format!("UpdateActionResult: {what}"),
            ac.update_action_result(re::UpdateActionResultRequest {
                action_digest: Some(re::Digest {
                    hash: hex(b"an action"),
                    size_bytes: 9,
                }),
                action_result: Some(re::ActionResult {
                    stdout_digest: Some(d.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        );
        if d.size_bytes != -1 {
            assert_invalid(
                &format!("GetActionResult: {what}"),
                ac.get_action_result(re::GetActionResultRequest {
                    action_digest: Some(d.clone()),
                    ..Default::default()
                })
                .await,
            );
            assert_invalid(
                &format!("UpdateActionResult action_digest: {what}"),
                ac.update_action_result(re::UpdateActionResultRequest {
                    action_digest: Some(d.clone()),
                    action_result: Some(re::ActionResult::default()),
                    ..Default::default()
                })
                .await,
            );
        }
        // ByteStream names carry no sign: a negative size is a bad size there.
        let size = d.size_bytes.max(0);
        let read = bs
            .read(ReadRequest {
                resource_name: format!("blobs/{}/{size}", d.hash),
                ..Default::default()
            })
            .await;
        let read = match read {
            Ok(stream) => stream.into_inner().message().await,
            Err(e) => Err(e),
        };
        assert_invalid(&format!("ByteStream.Read: {what}"), read);
        let write = bs
            .write(futures_util::stream::iter(vec![WriteRequest {
                resource_name: format!(
                    "uploads/0b8f1f9e-6a4c-4c1e-9a7e-2f0d6d3b5c11/blobs/{}/{size}",
                    d.hash
                ),
                write_offset: 0,
                finish_write: true,
                data: vec![],
            }]))
            .await;
        assert_invalid(&format!("ByteStream.Write: {what}"), write);
    }

    // What stays accepted: the empty blob at size 0 (present), and the
    // action digest's size -1 (a miss, not a refusal).
    let empty = re::Digest {
        hash: EMPTY_HEX.into(),
        size_bytes: 0,
    };
    let missing = cas
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![empty],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(missing.missing_blob_digests.is_empty());
    let unknown_size = re::Digest {
        hash: hex(b"an action"),
        size_bytes: -1,
    };
    let got = ac
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(unknown_size.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(got.code(), Code::NotFound, "{got:?}");
    ac.update_action_result(re::UpdateActionResultRequest {
        action_digest: Some(unknown_size.clone()),
        action_result: Some(re::ActionResult::default()),
        ..Default::default()
    })
    .await
    .unwrap();
    ac.get_action_result(re::GetActionResultRequest {
        action_digest: Some(unknown_size),
        ..Default::default()
    })
    .await
    .unwrap();
    // Other negative sizes of an action digest are impossible.
    assert_invalid(
        "GetActionResult: size -2",
        ac.get_action_result(re::GetActionResultRequest {
            action_digest: Some(re::Digest {
                hash: hex(b"an action"),
                size_bytes: -2,
            }),
            ..Default::default()
        })
        .await,
    );

    // HTTP /cas/ refuses the same hashes (there is no size in the URL).
    let h = hex(b"some blob");
    for bad in [
        h[..63].to_string(),
        format!("{h}0"),
        h.to_uppercase(),
        format!("{}g", &h[..63]),
    ] {
        for method in ["GET", "HEAD", "PUT"] {
            let url = format!("http://{}/cas/{bad}", s.http_addr());
            let body = (method == "PUT").then(|| b"some blob".to_vec());
            let (status, _) = off_runtime(|| support::http_request(method, &url, body));
            assert_eq!(status, 400, "{method} /cas/{bad}");
        }
    }
}
