//! The REAPI v2 cache services over gRPC against the real server binary:
//! Capabilities, ActionCache, ContentAddressableStorage, health, and the
//! same store seen over HTTP.

use crate::support::{self, Server, digest};
use bazel_cache_digest::Hash;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;
use re::action_cache_client::ActionCacheClient;
use re::capabilities_client::CapabilitiesClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i / 5) as u8 ^ seed.wrapping_mul(31))
        .collect()
}

/// Stores `blobs` with one BatchUpdateBlobs call; each must succeed.
pub(crate) async fn upload(cas: &mut ContentAddressableStorageClient<Channel>, blobs: &[&[u8]]) {
    let requests = blobs
        .iter()
        .map(|b| re::batch_update_blobs_request::Request {
            digest: Some(digest(b)),
            data: b.to_vec(),
            compressor: 0,
        })
        .collect();
    let resp = cas
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests,
            ..Default::default()
        })
        .await
        .unwrap();
    for r in resp.into_inner().responses {
        assert_eq!(r.status.unwrap().code, 0);
    }
}

async fn find_missing(
    cas: &mut ContentAddressableStorageClient<Channel>,
    digests: Vec<re::Digest>,
) -> Vec<re::Digest> {
    cas.find_missing_blobs(re::FindMissingBlobsRequest {
        blob_digests: digests,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .missing_blob_digests
}

#[tokio::test]
async fn capabilities_announce_the_cache() {
    let s = Server::start_grpc(&["--max_blob_size", "1000000"]);
    let caps = CapabilitiesClient::new(s.channel().await)
        .get_capabilities(re::GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let cache = caps.cache_capabilities.unwrap();
    assert_eq!(
        cache.digest_functions,
        vec![
            re::digest_function::Value::Sha256 as i32,
            re::digest_function::Value::Blake3 as i32
        ]
    );
    assert!(
        cache
            .action_cache_update_capabilities
            .unwrap()
            .update_enabled
    );
    assert_eq!(
        cache.max_batch_total_size_bytes as u64,
        bazel_cache::grpc::MAX_BATCH_TOTAL_SIZE
    );
    assert_eq!(cache.max_cas_blob_size_bytes, 1_000_000);
    // SplitBlob and SpliceBlob, with FastCDC 2020 at the spec's recommended
    // parameters (tests in chunking.rs).
    assert!(cache.split_blob_support);
    assert!(cache.splice_blob_support);
    assert_eq!(
        cache.fast_cdc_2020_params,
        Some(re::FastCdc2020Params {
            avg_chunk_size_bytes: 512 * 1024,
            seed: 0,
        })
    );
    assert_eq!(cache.rep_max_cdc_params, None);
    let zstd = re::compressor::Value::Zstd as i32;
    assert_eq!(cache.supported_compressors, vec![zstd]);
    assert_eq!(cache.supported_batch_update_compressors, vec![zstd]);
    assert_eq!(
        cache.symlink_absolute_path_strategy,
        re::symlink_absolute_path_strategy::Value::Allowed as i32
    );
    // Nothing about priorities or execution is promised.
    assert!(cache.cache_priority_capabilities.is_none());
    assert!(caps.execution_capabilities.is_none());
    #[allow(deprecated)]
    let deprecated = caps.deprecated_api_version.clone();
    assert_eq!(deprecated, None);
    let (low, high) = (
        caps.low_api_version.unwrap(),
        caps.high_api_version.unwrap(),
    );
    assert_eq!((low.major, low.minor, high.major, high.minor), (2, 0, 2, 3));
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let s = Server::start_grpc(&[]);
    let mut health = HealthClient::new(s.channel().await);
    for service in [
        "",
        "build.bazel.remote.execution.v2.ActionCache",
        "google.bytestream.ByteStream",
    ] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
}

#[tokio::test]
async fn cas_batches_and_find_missing() {
    let s = Server::start_grpc(&[]);
    let mut cas = ContentAddressableStorageClient::new(s.channel().await);
    let (a, b, c) = (data(3000, 1), data(5000, 2), data(100, 3));

    // BatchUpdate: one good, one compressed, one with a wrong digest, one
    // with a compressor we don't know. Each gets its own status.
    let mut bad = digest(&c);
    bad.hash = Hash::of(b"something else").to_hex();
    let requests = vec![
        re::batch_update_blobs_request::Request {
            digest: Some(digest(&a)),
            data: a.clone(),
            compressor: 0,
        },
        re::batch_update_blobs_request::Request {
            digest: Some(digest(&b)),
            data: zstd::encode_all(&b[..], 3).unwrap(),
            compressor: re::compressor::Value::Zstd as i32,
        },
        re::batch_update_blobs_request::Request {
            digest: Some(bad.clone()),
            data: c.clone(),
            compressor: 0,
        },
        re::batch_update_blobs_request::Request {
            digest: Some(digest(&c)),
            data: c.clone(),
            compressor: 99,
        },
    ];
    let resp = cas
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = resp
        .responses
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    let invalid = Code::InvalidArgument as i32;
    assert_eq!(codes, vec![0, 0, invalid, invalid]);

    // FindMissing: the stored two are present, c (never stored) and a digest
    // with the right hash but wrong size are missing; empty blob is present.
    let mut wrong_size = digest(&a);
    wrong_size.size_bytes += 1;
    let missing = find_missing(
        &mut cas,
        vec![
            digest(&a),
            digest(&b),
            digest(&c),
            wrong_size.clone(),
            digest(b""),
        ],
    )
    .await;
    assert_eq!(missing, vec![digest(&c), wrong_size.clone()]);
    // Each missing digest as often as asked, in the order asked.
    let missing = find_missing(
        &mut cas,
        vec![
            wrong_size.clone(),
            digest(&c),
            digest(&a),
            digest(&c),
            wrong_size.clone(),
        ],
    )
    .await;
    assert_eq!(
        missing,
        vec![wrong_size.clone(), digest(&c), digest(&c), wrong_size]
    );

    // BatchRead: plain, compressed on request, and NOT_FOUND per blob.
    let resp = cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![digest(&a), digest(&c)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.responses[0].data, a);
    assert_eq!(resp.responses[0].status.as_ref().unwrap().code, 0);
    assert_eq!(
        resp.responses[1].status.as_ref().unwrap().code,
        Code::NotFound as i32
    );
    let resp = cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![digest(&b)],
            acceptable_compressors: vec![re::compressor::Value::Zstd as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.responses[0].compressor,
        re::compressor::Value::Zstd as i32
    );
    assert_eq!(zstd::decode_all(&resp.responses[0].data[..]).unwrap(), b);

    // Malformed digests fail the whole request with INVALID_ARGUMENT.
    let bad_hex = re::Digest {
        hash: "xyz".into(),
        size_bytes: 1,
    };
    let err = cas
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![digest(&a), bad_hex],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("blob_digests[1]: "),
        "{}",
        err.message()
    );
    let err = cas
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![digest(&a)],
            digest_function: re::digest_function::Value::Md5 as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn batches_over_the_limit_are_refused_before_anything_is_stored() {
    let s = Server::start_grpc(&[]);
    let mut cas = ContentAddressableStorageClient::new(s.channel().await);
    let blobs: Vec<Vec<u8>> = (0..5).map(|i| support::noise(1 << 20, i)).collect();
    let requests = blobs
        .iter()
        .map(|b| re::batch_update_blobs_request::Request {
            digest: Some(digest(b)),
            data: b.clone(),
            compressor: 0,
        })
        .collect();
    let err = cas
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert_eq!(
        find_missing(&mut cas, blobs.iter().map(|b| digest(b)).collect())
            .await
            .len(),
        5
    );
    let err = cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: blobs.iter().map(|b| digest(b)).collect(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A batch of exactly max_batch_total_size_bytes fits the message limits
    // of a client with gRPC's default 4 MiB limit, both ways.
    let limit = bazel_cache::grpc::MAX_BATCH_TOTAL_SIZE as usize;
    let mut at_limit: Vec<Vec<u8>> = (0..3).map(|i| support::noise(1 << 20, 10 + i)).collect();
    at_limit.push(support::noise(limit - (3 << 20), 13));
    let refs: Vec<&[u8]> = at_limit.iter().map(|b| b.as_slice()).collect();
    upload(&mut cas, &refs).await;
    let resp = cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: at_limit.iter().map(|b| digest(b)).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.responses.len(), 4);
    assert!(
        resp.responses
            .iter()
            .zip(&at_limit)
            .all(|(r, b)| &r.data == b)
    );
    // A message far over the size limit is refused by the transport, not buffered.
    let huge = support::noise(20 << 20, 9);
    let err = cas
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: vec![re::batch_update_blobs_request::Request {
                digest: Some(digest(&huge)),
                data: huge,
                compressor: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument
        ),
        "{err}"
    );
}

#[tokio::test]
async fn action_cache_checks_dependencies_and_inlines() {
    let s = Server::start_grpc(&[]);
    let ch = s.channel().await;
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let mut ac = ActionCacheClient::new(ch);
    let (out, log) = (data(2000, 4), b"compiler said hello".to_vec());
    let ar = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "bin/out".into(),
            digest: Some(digest(&out)),
            ..Default::default()
        }],
        stdout_digest: Some(digest(&log)),
        ..Default::default()
    };
    let action = digest(b"the action");
    let update = re::UpdateActionResultRequest {
        action_digest: Some(action.clone()),
        action_result: Some(ar.clone()),
        ..Default::default()
    };

    // Outputs not uploaded yet: FAILED_PRECONDITION naming each missing blob.
    let err = ac.update_action_result(update.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let details = err.get_error_details();
    let subjects: Vec<String> = details
        .precondition_failure()
        .unwrap()
        .violations
        .iter()
        .map(|v| v.subject.clone())
        .collect();
    assert_eq!(
        subjects,
        vec![
            format!("blobs/{}/{}", Hash::of(&out), out.len()),
            format!("blobs/{}/{}", Hash::of(&log), log.len())
        ]
    );
    let get = re::GetActionResultRequest {
        action_digest: Some(action.clone()),
        ..Default::default()
    };
    assert_eq!(
        ac.get_action_result(get.clone()).await.unwrap_err().code(),
        Code::NotFound
    );

    upload(&mut cas, &[&out, &log]).await;
    assert_eq!(
        ac.update_action_result(update).await.unwrap().into_inner(),
        ar
    );
    assert_eq!(
        ac.get_action_result(get.clone())
            .await
            .unwrap()
            .into_inner(),
        ar
    );

    // Inlining on request.
    let inlined = ac
        .get_action_result(re::GetActionResultRequest {
            inline_stdout: true,
            inline_output_files: vec!["bin/out".into()],
            ..get.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inlined.stdout_raw, log);
    assert_eq!(inlined.output_files[0].contents, out);

    // The same entry over HTTP (same store, same key).
    let url = format!("{}/ac/{}", s.http_url, action.hash);
    let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(re::ActionResult::decode(body).unwrap(), ar);

    // Invalid requests.
    let mut no_result = re::UpdateActionResultRequest {
        action_digest: Some(action.clone()),
        ..Default::default()
    };
    assert_eq!(
        ac.update_action_result(no_result.clone())
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    no_result.action_result = Some(re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "/abs".into(),
            digest: Some(digest(&out)),
            ..Default::default()
        }],
        ..Default::default()
    });
    assert_eq!(
        ac.update_action_result(no_result).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let bad = re::GetActionResultRequest {
        action_digest: Some(re::Digest {
            hash: "zz".into(),
            size_bytes: 1,
        }),
        ..Default::default()
    };
    assert_eq!(
        ac.get_action_result(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn output_directories_need_their_whole_tree() {
    let s = Server::start_grpc(&[]);
    let ch = s.channel().await;
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let mut ac = ActionCacheClient::new(ch);
    let file = data(700, 5);
    let tree = re::Tree {
        root: Some(re::Directory {
            files: vec![re::FileNode {
                name: "f".into(),
                digest: Some(digest(&file)),
                ..Default::default()
            }],
            ..Default::default()
        }),
        children: vec![],
    }
    .encode_to_vec();
    let ar = re::ActionResult {
        output_directories: vec![re::OutputDirectory {
            path: "out".into(),
            tree_digest: Some(digest(&tree)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let update = re::UpdateActionResultRequest {
        action_digest: Some(digest(b"dir action")),
        action_result: Some(ar),
        ..Default::default()
    };
    upload(&mut cas, &[&tree]).await;
    // The Tree is there but the file inside it is not.
    let err = ac.update_action_result(update.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let details = err.get_error_details();
    let subject = &details.precondition_failure().unwrap().violations[0].subject;
    assert_eq!(
        subject,
        &format!("blobs/{}/{}", Hash::of(&file), file.len())
    );
    upload(&mut cas, &[&file]).await;
    ac.update_action_result(update).await.unwrap();
}

#[tokio::test]
async fn evicted_outputs_turn_a_hit_into_not_found() {
    // 1 MiB cache: an output of 600 KiB is evicted by the next 600 KiB blob,
    // while the (newer) action result stays.
    let s = Server::start_grpc(&[
        "--max_size",
        "0.0009765625",
        "--storage_mode",
        "uncompressed",
    ]);
    let ch = s.channel().await;
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let mut ac = ActionCacheClient::new(ch);
    let out = support::noise(600 << 10, 1);
    upload(&mut cas, &[&out]).await;
    let ar = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "o".into(),
            digest: Some(digest(&out)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let action = digest(b"evicted action");
    ac.update_action_result(re::UpdateActionResultRequest {
        action_digest: Some(action.clone()),
        action_result: Some(ar),
        ..Default::default()
    })
    .await
    .unwrap();
    let get = re::GetActionResultRequest {
        action_digest: Some(action.clone()),
        ..Default::default()
    };
    ac.get_action_result(get.clone()).await.unwrap();

    let filler = support::noise(600 << 10, 2);
    upload(&mut cas, &[&filler]).await;
    assert_eq!(
        find_missing(&mut cas, vec![digest(&out)]).await.len(),
        1,
        "output should be evicted"
    );
    assert_eq!(
        ac.get_action_result(get).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn get_tree_pages_through_a_directory_tree() {
    let s = Server::start_grpc(&[]);
    let mut cas = ContentAddressableStorageClient::new(s.channel().await);
    // root -> 5 children, each with one leaf file.
    let children: Vec<Vec<u8>> = (0..5u8)
        .map(|i| {
            re::Directory {
                files: vec![re::FileNode {
                    name: format!("f{i}"),
                    digest: Some(digest(&[i])),
                    ..Default::default()
                }],
                ..Default::default()
            }
            .encode_to_vec()
        })
        .collect();
    let root = re::Directory {
        directories: children
            .iter()
            .enumerate()
            .map(|(i, c)| re::DirectoryNode {
                name: format!("d{i}"),
                digest: Some(digest(c)),
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut all: Vec<&[u8]> = children.iter().map(|c| c.as_slice()).collect();
    all.push(&root);
    upload(&mut cas, &all).await;

    let mut token = String::new();
    let mut got = Vec::new();
    let mut calls = 0;
    loop {
        calls += 1;
        let mut stream = cas
            .get_tree(re::GetTreeRequest {
                root_digest: Some(digest(&root)),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        // Take only the first page of each call, then resume with its token.
        let page = stream.message().await.unwrap().unwrap();
        assert!(page.directories.len() <= 2);
        got.extend(page.directories.into_iter().map(|d| d.encode_to_vec()));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(calls, 3);
    assert_eq!(got.len(), 6);
    assert_eq!(got[0], root);
    let mut expected = children.clone();
    expected.sort();
    let mut rest = got[1..].to_vec();
    rest.sort();
    assert_eq!(rest, expected);

    // One call streams every page.
    let mut stream = cas
        .get_tree(re::GetTreeRequest {
            root_digest: Some(digest(&root)),
            page_size: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(page) = stream.message().await.unwrap() {
        n += page.directories.len();
    }
    assert_eq!(n, 6);

    let missing = re::GetTreeRequest {
        root_digest: Some(digest(b"no such dir")),
        ..Default::default()
    };
    assert_eq!(
        cas.get_tree(missing).await.unwrap_err().code(),
        Code::NotFound
    );
    let bad_token = re::GetTreeRequest {
        root_digest: Some(digest(&root)),
        page_token: "x".into(),
        ..Default::default()
    };
    assert_eq!(
        cas.get_tree(bad_token).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn http_and_grpc_share_one_store() {
    let s = Server::start_grpc(&[]);
    let mut cas = ContentAddressableStorageClient::new(s.channel().await);
    let over_http = data(4000, 6);
    let r = reqwest::Client::new()
        .put(format!("{}/cas/{}", s.http_url, Hash::of(&over_http)))
        .body(over_http.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        find_missing(&mut cas, vec![digest(&over_http)])
            .await
            .is_empty()
    );

    let over_grpc = data(4000, 7);
    upload(&mut cas, &[&over_grpc]).await;
    let body = reqwest::get(format!("{}/cas/{}", s.http_url, Hash::of(&over_grpc)))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.to_vec(), over_grpc);
}

#[tokio::test]
async fn instance_names_and_ac_key_mangling() {
    let s = Server::start_grpc(&["--enable_ac_key_instance_mangling"]);
    let mut ac = ActionCacheClient::new(s.channel().await);
    let action = digest(b"shared action");
    for (instance, exit_code) in [("team-a", 1), ("team-b", 2)] {
        ac.update_action_result(re::UpdateActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(action.clone()),
            action_result: Some(re::ActionResult {
                exit_code,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    for (instance, exit_code) in [("team-a", 1), ("team-b", 2)] {
        let ar = ac
            .get_action_result(re::GetActionResultRequest {
                instance_name: instance.into(),
                action_digest: Some(action.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ar.exit_code, exit_code, "{instance}");
    }
    let other = re::GetActionResultRequest {
        instance_name: "team-c".into(),
        action_digest: Some(action),
        ..Default::default()
    };
    assert_eq!(
        ac.get_action_result(other).await.unwrap_err().code(),
        Code::NotFound
    );
}
