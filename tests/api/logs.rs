//! Structured logs: `--log_format json` writes one JSON object per line, and
//! `access_log_level: all` one access line per HTTP request and per gRPC
//! call (FindMissingBlobs: one line for the whole request, not per digest),
//! as in bazel-remote where `all` is the default.

use crate::support::{self, Server, digest};
use bazel_cache_digest::Hash;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::transport::Channel;

/// Drives one HTTP PUT, one HTTP GET miss and a 1,000-digest
/// FindMissingBlobs; returns the server's stderr after a clean stop.
fn traffic(extra: &[&str]) -> String {
    let mut args = vec!["--grpc_address", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let data = b"logged blob".to_vec();
    let hash = Hash::of(&data).to_hex();
    let url = format!("{}/cas/{hash}", server.http_url);
    assert_eq!(
        support::http_request("PUT", &url, Some(data.clone())).0,
        200
    );
    let missing = format!("{}/cas/{}", server.http_url, Hash::of(b"nope").to_hex());
    assert_eq!(support::http_request("GET", &missing, None).0, 404);

    let endpoint = server.grpc_endpoint();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answered = rt.block_on(async move {
        let channel = Channel::from_shared(endpoint)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut cas = ContentAddressableStorageClient::new(channel);
        let mut digests: Vec<re::Digest> = (0..999u32).map(|i| digest(&i.to_le_bytes())).collect();
        digests.push(digest(&data));
        cas.find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: digests,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests
        .len()
    });
    assert_eq!(answered, 999);
    let (status, _, stderr) = server.stop_with_output();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{stderr}");
    stderr
}

#[test]
fn json_access_log_has_one_line_per_request_and_per_rpc() {
    let stderr = traffic(&["--access_log_level", "all", "--log_format", "json"]);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access: Vec<&serde_json::Value> =
        lines.iter().filter(|v| v["target"] == "access").collect();
    let http: Vec<_> = access
        .iter()
        .filter(|v| v["fields"]["method"].is_string())
        .collect();
    assert_eq!(http.len(), 2, "{access:#?}");
    let put = http
        .iter()
        .find(|v| v["fields"]["method"] == "PUT")
        .unwrap();
    assert_eq!(put["fields"]["status"], 200);
    assert_eq!(put["fields"]["bytes_in"], 11);
    assert!(put["fields"]["path"].as_str().unwrap().starts_with("/cas/"));
    assert!(put["fields"]["duration_ms"].as_f64().is_some());
    let get = http
        .iter()
        .find(|v| v["fields"]["method"] == "GET")
        .unwrap();
    assert_eq!(get["fields"]["status"], 404);

    let find_missing: Vec<_> = access
        .iter()
        .filter(|v| {
            v["fields"]["rpc"]
                == "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"
        })
        .collect();
    assert_eq!(
        find_missing.len(),
        1,
        "FindMissingBlobs must log once per request: {access:#?}"
    );
    let line = find_missing[0];
    assert_eq!(line["fields"]["status"], "OK");
    assert!(line["fields"]["bytes_in"].as_u64().unwrap() > 1000 * 64);
    assert!(line["fields"]["bytes"].as_u64().unwrap() > 999 * 64);
    assert!(
        line["fields"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
}

/// bazel-remote's default is `all`, so `none` must be asked for.
#[test]
fn access_log_level_none_is_quiet_and_text_is_the_default_format() {
    let stderr = traffic(&["--access_log_level", "none"]);
    assert!(!stderr.contains("FindMissingBlobs"), "{stderr}");
    assert!(!stderr.contains("/cas/"), "{stderr}");
    assert!(stderr.lines().all(|l| !l.starts_with('{')), "{stderr}");
    // Text format still logs the start-up line.
    assert!(stderr.contains("ready"), "{stderr}");
}
