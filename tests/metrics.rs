//! `/metrics` of the real server binary: bazel-remote's metric names and
//! labels after HTTP and gRPC traffic, the figures `/status` reports, LRU
//! eviction, the S3 backend (against s3s-fs) and the design document's
//! PrometheusRule expressions.

mod common;

use std::time::{Duration, Instant};

use bazel_cache::digest::Hash;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::ReadRequest;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use common::Server;
use common::async_client as client;
use common::prometheus::Scrape;
use common::s3::{S3Server, free_port};
use re::action_cache_client::ActionCacheClient;
use re::capabilities_client::CapabilitiesClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::Code;
use tonic::transport::Channel;

// ---------------------------------------------------------------------------
// Scraping and reading the text format
// ---------------------------------------------------------------------------

async fn scrape(s: &Server) -> Scrape {
    let resp = client()
        .get(format!("{}/metrics", s.http_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Scrape::new(resp.text().await.unwrap())
}

async fn request(s: &Server, method: &str, path: &str, body: Option<&[u8]>) -> u16 {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client().request(method, format!("{}{path}", s.http_url));
    if let Some(b) = body {
        req = req.body(b.to_vec());
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    resp.bytes().await.unwrap();
    code
}

fn cas(data: &[u8]) -> String {
    format!("/cas/{}", Hash::of(data))
}

fn digest(data: &[u8]) -> re::Digest {
    re::Digest {
        hash: Hash::of(data).to_hex(),
        size_bytes: data.len() as i64,
    }
}

async fn channel(s: &Server) -> Channel {
    Channel::from_shared(s.grpc_endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Polls `/metrics` until `done` holds.
async fn wait_metrics(
    s: &Server,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + timeout;
    loop {
        let m = scrape(s).await;
        if done(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; /metrics:\n{}",
            m.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// HTTP, gRPC, lookups, disk figures
// ---------------------------------------------------------------------------

const REAPI: &str = "build.bazel.remote.execution.v2.";

#[tokio::test]
async fn requests_lookups_and_store_figures_are_exported() {
    let s = Server::start(&[
        "--grpc_address",
        "127.0.0.1:0",
        "--enable_endpoint_metrics",
        "--endpoint_metrics_duration_buckets",
        "0.001,0.05,2",
    ]);
    let blob = common::noise(10_000, 1);
    let absent = common::noise(100, 2);
    assert_eq!(request(&s, "PUT", &cas(&blob), Some(&blob)).await, 200);
    assert_eq!(request(&s, "GET", &cas(&blob), None).await, 200);
    assert_eq!(request(&s, "GET", &cas(&blob), None).await, 200);
    assert_eq!(request(&s, "GET", &cas(&absent), None).await, 404);
    assert_eq!(request(&s, "HEAD", &cas(&blob), None).await, 200);
    assert_eq!(request(&s, "HEAD", &cas(&absent), None).await, 404);
    let ac_path = format!("/ac/{}", Hash::of(b"no such action"));
    assert_eq!(request(&s, "GET", &ac_path, None).await, 404);
    // Neither is a lookup: not a cache path; a malformed hash.
    assert_eq!(request(&s, "GET", "/nothing/here", None).await, 404);
    assert_eq!(request(&s, "GET", "/cas/abc", None).await, 400);
    assert_eq!(request(&s, "DELETE", &cas(&blob), None).await, 405);

    // gRPC: FindMissingBlobs (one hit, one miss), an ActionResult stored and
    // read back (its CAS checks are not counted one by one), a miss,
    // Capabilities, a ByteStream read.
    let ch = channel(&s).await;
    let mut cas_client = ContentAddressableStorageClient::new(ch.clone());
    let missing = cas_client
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![digest(&blob), digest(&absent)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing, vec![digest(&absent)]);
    let mut ac = ActionCacheClient::new(ch.clone());
    let action = digest(b"an action");
    let ar = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "out".into(),
            digest: Some(digest(&blob)),
            ..Default::default()
        }],
        ..Default::default()
    };
    ac.update_action_result(re::UpdateActionResultRequest {
        action_digest: Some(action.clone()),
        action_result: Some(ar.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let got = ac
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(action),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, ar);
    let err = ac
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(digest(b"unknown action")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    CapabilitiesClient::new(ch.clone())
        .get_capabilities(re::GetCapabilitiesRequest::default())
        .await
        .unwrap();
    let mut bs = ByteStreamClient::new(ch.clone());
    let mut stream = bs
        .read(ReadRequest {
            resource_name: format!("blobs/{}/{}", Hash::of(&blob), blob.len()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut read = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        read.extend(chunk.data);
    }
    assert_eq!(read, blob);
    // The streaming call is recorded when its trailers go out.
    let m = wait_metrics(
        &s,
        "the ByteStream Read to be recorded",
        Duration::from_secs(10),
        |m| {
            m.get(
                "grpc_server_handled_total",
                &[
                    ("grpc_code", "OK"),
                    ("grpc_method", "Read"),
                    ("grpc_service", "google.bytestream.ByteStream"),
                    ("grpc_type", "server_stream"),
                ],
            ) == Some(1.0)
        },
    )
    .await;

    // bazel_remote_incoming_requests_total: HTTP by status, gRPC through the store.
    let lookups = |method: &str, kind: &str, status: &str| {
        m.value(
            "bazel_remote_incoming_requests_total",
            &[("method", method), ("kind", kind), ("status", status)],
        )
    };
    assert_eq!(
        lookups("get", "cas", "hit"),
        3.0,
        "2 HTTP GETs + ByteStream Read"
    );
    assert_eq!(lookups("get", "cas", "miss"), 1.0);
    assert_eq!(
        lookups("contains", "cas", "hit"),
        2.0,
        "HEAD + FindMissingBlobs"
    );
    assert_eq!(
        lookups("contains", "cas", "miss"),
        2.0,
        "HEAD + FindMissingBlobs"
    );
    assert_eq!(lookups("get", "ac", "hit"), 1.0, "GetActionResult OK");
    assert_eq!(
        lookups("get", "ac", "miss"),
        2.0,
        "HTTP 404 + GetActionResult NotFound"
    );

    // bazel_remote_http_request_total{code,handler,method}
    let http_total = |code: &str, method: &str| {
        m.value(
            "bazel_remote_http_request_total",
            &[("code", code), ("handler", method), ("method", method)],
        )
    };
    assert_eq!(http_total("200", "PUT"), 1.0);
    assert_eq!(http_total("200", "GET"), 2.0);
    assert_eq!(http_total("404", "GET"), 3.0);
    assert_eq!(http_total("400", "GET"), 1.0);
    assert_eq!(http_total("200", "HEAD"), 1.0);
    assert_eq!(http_total("404", "HEAD"), 1.0);
    assert_eq!(http_total("405", "DELETE"), 1.0);

    // The duration histogram: the configured buckets, cumulative counts.
    for name in [
        "bazel_remote_http_request_duration_seconds",
        // bazel-remote's own name without http_metrics_prefix.
        "http_request_duration_seconds",
    ] {
        let labels = [("code", "200"), ("handler", "GET"), ("method", "GET")];
        let buckets = m.matching(&format!("{name}_bucket"), &labels);
        let les: Vec<&str> = buckets.iter().map(|b| b.labels["le"].as_str()).collect();
        assert_eq!(les, ["0.001", "0.05", "2", "+Inf"], "{name}");
        assert!(
            buckets.windows(2).all(|w| w[0].value <= w[1].value),
            "{buckets:?}"
        );
        assert_eq!(buckets.last().unwrap().value, 2.0);
        assert_eq!(m.value(&format!("{name}_count"), &labels), 2.0);
        let sum = m.value(&format!("{name}_sum"), &labels);
        assert!(sum > 0.0 && sum < 10.0, "{name}_sum = {sum}");
    }

    // go-grpc-prometheus's family.
    let grpc = |service: &str, method: &str| {
        vec![
            ("grpc_method", method.to_string()),
            ("grpc_service", service.to_string()),
            ("grpc_type", "unary".to_string()),
        ]
    };
    let with = |mut l: Vec<(&'static str, String)>, extra: Option<(&'static str, &str)>| {
        if let Some((k, v)) = extra {
            l.insert(0, (k, v.to_string()));
        }
        l
    };
    let val = |name: &str, labels: Vec<(&'static str, String)>| {
        let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        m.value(name, &refs)
    };
    let cas_svc = format!("{REAPI}ContentAddressableStorage");
    let ac_svc = format!("{REAPI}ActionCache");
    let caps_svc = format!("{REAPI}Capabilities");
    assert_eq!(
        val(
            "grpc_server_started_total",
            grpc(&cas_svc, "FindMissingBlobs")
        ),
        1.0
    );
    assert_eq!(
        val(
            "grpc_server_handled_total",
            with(
                grpc(&cas_svc, "FindMissingBlobs"),
                Some(("grpc_code", "OK"))
            )
        ),
        1.0
    );
    assert_eq!(
        val(
            "grpc_server_started_total",
            grpc(&ac_svc, "GetActionResult")
        ),
        2.0
    );
    for code in ["OK", "NotFound"] {
        assert_eq!(
            val(
                "grpc_server_handled_total",
                with(grpc(&ac_svc, "GetActionResult"), Some(("grpc_code", code)))
            ),
            1.0,
            "GetActionResult {code}"
        );
    }
    assert_eq!(
        val(
            "grpc_server_handled_total",
            with(
                grpc(&caps_svc, "GetCapabilities"),
                Some(("grpc_code", "OK"))
            )
        ),
        1.0
    );
    assert_eq!(
        val(
            "grpc_server_handling_seconds_count",
            grpc(&ac_svc, "GetActionResult")
        ),
        2.0
    );
    let les: Vec<&str> = m
        .matching(
            "grpc_server_handling_seconds_bucket",
            &[("grpc_method", "GetActionResult")],
        )
        .iter()
        .map(|b| b.labels["le"].as_str())
        .collect();
    assert_eq!(les, ["0.001", "0.05", "2", "+Inf"]);

    // Store figures: what /status says.
    let st = s.status_async().await;
    let m = scrape(&s).await;
    assert_eq!(
        m.value("bazel_remote_disk_cache_size_bytes", &[]),
        st["CurrSize"].as_f64().unwrap()
    );
    assert_eq!(
        m.value("bazel_remote_disk_cache_logical_bytes", &[]),
        st["UncompressedSize"].as_f64().unwrap()
    );
    assert_eq!(
        m.value("bazel_remote_disk_cache_entries", &[]),
        st["NumFiles"].as_f64().unwrap()
    );
    assert_eq!(
        m.value(
            "bazel_remote_disk_cache_size_bytes_limit",
            &[("type", "evict")]
        ),
        st["MaxSize"].as_f64().unwrap()
    );
    assert_eq!(st["MaxSize"].as_u64(), Some(1 << 30));
    assert_eq!(
        m.value("bazel_remote_disk_cache_evicted_bytes_total", &[]),
        0.0
    );
    // The scrape itself is counted (after it is answered).
    assert!(
        m.value(
            "bazel_remote_http_request_total",
            &[("code", "200"), ("handler", "metrics"), ("method", "GET")]
        ) >= 1.0
    );
    // No S3: no S3 metrics.
    assert!(!m.text.contains("bazel_remote_s3_"), "{}", m.text);
}

#[tokio::test]
async fn eviction_and_idle_time_are_exported() {
    // 1 MiB cache; 300 KiB blobs: the fourth evicts the first.
    let s = Server::start(&[
        "--max_size",
        "0.0009765625",
        "--storage_mode",
        "uncompressed",
    ]);
    let blobs: Vec<Vec<u8>> = (0..4).map(|i| common::noise(300 * 1024, 10 + i)).collect();
    for b in &blobs {
        assert_eq!(request(&s, "PUT", &cas(b), Some(b)).await, 200);
    }
    let m = scrape(&s).await;
    let st = s.status_async().await;
    assert_eq!(
        m.value(
            "bazel_remote_disk_cache_size_bytes_limit",
            &[("type", "evict")]
        ),
        1048576.0
    );
    assert_eq!(st["MaxSize"].as_f64().unwrap(), 1048576.0);
    assert_eq!(
        m.value("bazel_remote_disk_cache_size_bytes", &[]),
        st["CurrSize"].as_f64().unwrap()
    );
    assert_eq!(
        m.value("bazel_remote_disk_cache_entries", &[]),
        st["NumFiles"].as_f64().unwrap()
    );
    let evictions = m.value("bazel_remote_disk_cache_evictions_total", &[]);
    assert!(evictions >= 1.0, "{}", m.text);
    assert_eq!(
        m.value("bazel_remote_disk_cache_evicted_bytes_total", &[]),
        evictions * 300.0 * 1024.0,
        "uncompressed blobs of 300 KiB"
    );
    assert_eq!(st["NumFiles"].as_f64().unwrap() + evictions, 4.0);
    assert_eq!(request(&s, "GET", &cas(&blobs[0]), None).await, 404);

    // The least recently used entry ages.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let idle = scrape(&s).await.value(
        "bazel_remote_disk_cache_longest_item_idle_time_seconds",
        &[],
    );
    assert!((2.0..60.0).contains(&idle), "idle time {idle}");
    // Without endpoint metrics: no endpoint series, but the request counter.
    let m = scrape(&s).await;
    assert!(m.has("bazel_remote_http_request_total"));
    for name in [
        "bazel_remote_http_request_duration_seconds_bucket",
        "http_request_duration_seconds_bucket",
        "bazel_remote_incoming_requests_total",
    ] {
        assert!(!m.has(name), "{name} without enable_endpoint_metrics");
    }
}

#[tokio::test]
async fn grpc_metrics_need_endpoint_metrics() {
    let s = Server::start(&["--grpc_address", "127.0.0.1:0"]);
    let mut caps = CapabilitiesClient::new(channel(&s).await);
    caps.get_capabilities(re::GetCapabilitiesRequest::default())
        .await
        .unwrap();
    let m = scrape(&s).await;
    assert!(!m.text.contains("grpc_server_"), "{}", m.text);
    assert!(m.has("bazel_remote_disk_cache_size_bytes"));
    // HEAD /metrics answers with headers only; other methods are refused.
    assert_eq!(request(&s, "HEAD", "/metrics", None).await, 200);
    assert_eq!(request(&s, "PUT", "/metrics", Some(b"x")).await, 405);
}

// ---------------------------------------------------------------------------
// The design document's alerts
// ---------------------------------------------------------------------------

/// The design document's PrometheusRule expressions (section 2.5,
/// monitoring.tf: the `expr = "..."` lines), unescaped. Read from the design
/// document beside the repository (`../shared/design/`, as CI lays it out);
/// `tests/fixtures/design-monitoring-tf.txt` is a copy of that section for
/// checkouts without it, and must not drift from the original.
fn design_alert_expressions() -> Vec<String> {
    let design = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/design/remote-cache-design.txt"
    );
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/design-monitoring-tf.txt"
    );
    let copy = alert_expressions_in(&std::fs::read_to_string(fixture).expect("fixture"));
    match std::fs::read_to_string(design) {
        Ok(text) => {
            let exprs = alert_expressions_in(&text);
            assert_eq!(exprs, copy, "{fixture} differs from the design document");
            exprs
        }
        Err(_) => copy,
    }
}

fn alert_expressions_in(text: &str) -> Vec<String> {
    let section = text
        .split_once("2.5 Monitoring (monitoring.tf)")
        .expect("section 2.5 of the design document")
        .1;
    let section = section.split("\n2.6 ").next().unwrap();
    let exprs: Vec<String> = section
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr = \""))
        .map(|l| {
            l.strip_suffix('"')
                .expect("expression ends with a quote")
                .replace("\\\"", "\"")
        })
        .collect();
    assert_eq!(exprs.len(), 4, "the four alerts: {exprs:?}");
    exprs
}

/// One vector selector of an expression: metric name and label matchers
/// `(label, operator, value)`.
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

/// The vector selectors of a PromQL expression (metric names followed by
/// `{...}`; function names are followed by `(`).
fn selectors(expr: &str) -> Vec<Selector> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let ident = &expr[start..i];
            if i < bytes.len() && bytes[i] == b'{' {
                // The closing brace outside quoted values (which may hold
                // `${var.name}`).
                let mut end = i + 1;
                let mut quoted = false;
                while quoted || bytes[end] != b'}' {
                    if bytes[end] == b'"' {
                        quoted = !quoted;
                    }
                    end += 1;
                }
                let mut matchers = Vec::new();
                let mut rest = &expr[i + 1..end];
                while !rest.trim().is_empty() {
                    let rest_trim = rest.trim_start_matches([',', ' ']);
                    let op_at = rest_trim.find(['=', '!']).expect("matcher operator");
                    let label = rest_trim[..op_at].trim().to_string();
                    let after = &rest_trim[op_at..];
                    let op_len = if after.starts_with("=~")
                        || after.starts_with("!=")
                        || after.starts_with("!~")
                    {
                        2
                    } else {
                        1
                    };
                    let op = after[..op_len].to_string();
                    let value_part = after[op_len..].trim_start();
                    let value_part = value_part.strip_prefix('"').expect("quoted value");
                    let close = value_part.find('"').expect("closing quote");
                    matchers.push((label, op, value_part[..close].to_string()));
                    rest = &value_part[close + 1..];
                }
                out.push(Selector {
                    metric: ident.to_string(),
                    matchers,
                });
                i = end + 1;
            }
        } else if c == '"' {
            // Skip string literals.
            i += 1 + expr[i + 1..].find('"').unwrap_or(0) + 1;
        } else {
            i += 1;
        }
    }
    out
}

fn s3_flags(s3: &S3Server) -> Vec<String> {
    [
        "--s3.endpoint",
        &s3.endpoint,
        "--s3.bucket",
        &s3.bucket,
        "--s3.auth_method",
        "access_key",
        "--s3.access_key_id",
        &s3.access_key,
        "--s3.secret_access_key",
        &s3.secret_key,
        "--s3.disable_ssl",
        "--s3.bucket_lookup_type",
        "path",
        "--num_uploaders",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Every metric the design's four alerts query is exported by a server
/// started with the design's ConfigMap (which sets enable_endpoint_metrics),
/// with the labels the expressions match on.
#[tokio::test]
async fn the_design_alert_rules_find_their_metrics() {
    let exprs = design_alert_expressions();
    let s3 = S3Server::start();
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/design-configmap.yaml"
    );
    let mut args = vec![
        "--config_file".to_string(),
        config.to_string(),
        "--grpc_address".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(s3_flags(&s3));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start(&refs);

    // A few requests: a write, a hit, a miss (which asks S3), a bad request.
    let blob = common::noise(5000, 7);
    assert_eq!(request(&s, "PUT", &cas(&blob), Some(&blob)).await, 200);
    assert_eq!(request(&s, "GET", &cas(&blob), None).await, 200);
    assert_eq!(
        request(&s, "GET", &cas(&common::noise(10, 8)), None).await,
        404
    );
    assert_eq!(request(&s, "GET", "/cas/zz", None).await, 400);
    let m = scrape(&s).await;

    let mut checked = 0;
    for expr in &exprs {
        for sel in selectors(expr) {
            if sel.metric == "up" {
                continue; // Prometheus's own.
            }
            let samples = m.matching(&sel.metric, &[]);
            assert!(
                !samples.is_empty(),
                "alert expression {expr:?} queries {}, which /metrics does not export:\n{}",
                sel.metric,
                m.text
            );
            for (label, op, value) in &sel.matchers {
                if label == "job" {
                    continue; // Added by Prometheus at scrape time.
                }
                assert!(
                    samples.iter().any(|s| s.labels.contains_key(label)),
                    "{} has no label {label} (used by {expr:?})",
                    sel.metric
                );
                if op == "=" {
                    assert!(
                        samples.iter().any(|s| s.labels.get(label) == Some(value)),
                        "{} has no series with {label}=\"{value}\" (used by {expr:?})",
                        sel.metric
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2, "the code and status matchers");
    // The latency alert's histogram has buckets, and the error-rate alert's
    // counter counts requests.
    assert!(
        m.matching(
            "bazel_remote_http_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        )
        .iter()
        .any(|s| s.value >= 1.0)
    );
    assert!(
        m.value(
            "bazel_remote_http_request_total",
            &[("code", "400"), ("handler", "GET"), ("method", "GET")]
        ) == 1.0
    );
}

#[test]
fn the_alert_selectors_are_read_from_the_design() {
    let found: Vec<(String, Vec<String>)> = design_alert_expressions()
        .iter()
        .flat_map(|e| selectors(e))
        .map(|s| {
            (
                s.metric,
                s.matchers
                    .into_iter()
                    .map(|(l, op, v)| format!("{l}{op}{v}"))
                    .collect(),
            )
        })
        .collect();
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "up",
            "bazel_remote_http_request_duration_seconds_bucket",
            "bazel_remote_http_request_total",
            "bazel_remote_http_request_total",
            "bazel_remote_s3_requests_total",
        ]
    );
    assert!(found[2].1.contains(&"code=~5..".to_string()), "{found:?}");
    assert!(
        found[4].1.contains(&"status=error".to_string()),
        "{found:?}"
    );
}

// ---------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------

#[tokio::test]
async fn s3_requests_hits_misses_and_the_upload_queue() {
    let mut s3 = S3Server::start();
    let flags = s3_flags(&s3);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = Server::start(&refs);
    let blob = common::noise(20_000, 21);
    assert_eq!(request(&a, "PUT", &cas(&blob), Some(&blob)).await, 200);
    let m = wait_metrics(&a, "the upload", Duration::from_secs(30), |m| {
        m.get("bazel_remote_s3_uploads_total", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(m.value("bazel_remote_s3_upload_queue_length", &[]), 0.0);
    assert_eq!(
        m.value("bazel_remote_s3_upload_queue_limit", &[]),
        1_000_000.0,
        "max_queued_uploads default"
    );
    assert!(m.value("bazel_remote_s3_requests_total", &[("status", "ok")]) >= 1.0);
    assert_eq!(
        m.value("bazel_remote_s3_requests_total", &[("status", "error")]),
        0.0
    );
    assert!(
        m.value(
            "bazel_remote_s3_request_duration_seconds_count",
            &[("operation", "put")]
        ) >= 1.0
    );

    // A local miss asks S3: a miss there.
    let absent = common::noise(64, 22);
    assert_eq!(request(&a, "GET", &cas(&absent), None).await, 404);
    let m = scrape(&a).await;
    assert_eq!(m.value("bazel_remote_s3_cache_misses", &[]), 1.0);
    assert_eq!(m.value("bazel_remote_s3_cache_hits", &[]), 0.0);
    assert_eq!(
        m.value("bazel_remote_s3_requests_total", &[("status", "not_found")]),
        1.0
    );
    assert!(
        m.text
            .contains("# TYPE bazel_remote_s3_cache_hits counter\n")
    );

    // A second replica finds the blob in the bucket: a hit.
    let b = Server::start(&refs);
    assert_eq!(request(&b, "GET", &cas(&blob), None).await, 200);
    let mb = scrape(&b).await;
    assert_eq!(mb.value("bazel_remote_s3_cache_hits", &[]), 1.0);
    assert_eq!(
        mb.value(
            "bazel_remote_s3_request_duration_seconds_count",
            &[("operation", "get")]
        ),
        1.0
    );
    drop(b);

    // S3 down: failed requests count as errors, uploads wait in the queue.
    s3.stop();
    let before = scrape(&a)
        .await
        .value("bazel_remote_s3_requests_total", &[("status", "error")]);
    assert_eq!(
        request(&a, "GET", &cas(&common::noise(64, 23)), None).await,
        404
    );
    let pending: Vec<Vec<u8>> = (0..2).map(|i| common::noise(3000, 30 + i)).collect();
    for p in &pending {
        assert_eq!(request(&a, "PUT", &cas(p), Some(p)).await, 200);
    }
    let m = wait_metrics(&a, "S3 errors", Duration::from_secs(20), |m| {
        m.value("bazel_remote_s3_requests_total", &[("status", "error")]) >= before + 2.0
    })
    .await;
    assert_eq!(m.value("bazel_remote_s3_upload_queue_length", &[]), 2.0);
    assert!(m.value("bazel_remote_s3_upload_retries_total", &[]) >= 1.0);
    // Never a credential.
    assert!(!m.text.contains(&s3.secret_key) && !m.text.contains(&s3.access_key));

    // S3 back: the queue drains.
    s3.restart();
    let m = wait_metrics(&a, "the queue to drain", Duration::from_secs(90), |m| {
        m.get("bazel_remote_s3_upload_queue_length", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(m.value("bazel_remote_s3_uploads_total", &[]), 3.0);
}

#[tokio::test]
async fn uploads_dropped_when_the_queue_is_full() {
    // Nothing listens on this port: every S3 request fails.
    let endpoint = format!("127.0.0.1:{}", free_port());
    let s = Server::start(&[
        "--s3.endpoint",
        &endpoint,
        "--s3.bucket",
        "b",
        "--s3.access_key_id",
        "AKIAEXAMPLEKEYID",
        "--s3.secret_access_key",
        "very/secret+key",
        "--s3.auth_method",
        "access_key",
        "--s3.disable_ssl",
        "--max_queued_uploads",
        "1",
        "--num_uploaders",
        "1",
    ]);
    for i in 0..3 {
        let b = common::noise(1000, 40 + i);
        assert_eq!(request(&s, "PUT", &cas(&b), Some(&b)).await, 200);
    }
    let m = wait_metrics(&s, "a failed upload", Duration::from_secs(20), |m| {
        m.value("bazel_remote_s3_requests_total", &[("status", "error")]) >= 1.0
    })
    .await;
    assert_eq!(m.value("bazel_remote_s3_uploads_dropped_total", &[]), 2.0);
    assert_eq!(m.value("bazel_remote_s3_upload_queue_length", &[]), 1.0);
    assert_eq!(m.value("bazel_remote_s3_upload_queue_limit", &[]), 1.0);
    assert!(!m.text.contains("very/secret+key") && !m.text.contains("AKIAEXAMPLEKEYID"));
}
