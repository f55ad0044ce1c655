//! `/metrics` of the real server binary: bazel-remote's metric names and
//! labels after HTTP and gRPC traffic, the figures `/status` reports, LRU
//! eviction, the S3 upload queue (against a port nothing listens on) and
//! the design document's PrometheusRule expressions. The tests that need a
//! real S3 server (s3s-fs) are in tests/s3/metrics.rs.

use std::time::Duration;

use bazel_cache_digest::Hash;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::ReadRequest;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use re::action_cache_client::ActionCacheClient;
use re::capabilities_client::CapabilitiesClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::Code;

use crate::support::prometheus::{design_alert_expressions, scrape, selectors, wait_metrics};
use crate::support::s3::free_port;
use crate::support::{self, Server, cas_path as cas, digest, request};

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
    let blob = support::noise(10_000, 1);
    let absent = support::noise(100, 2);
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
    let ch = s.channel().await;
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
async fn the_hard_limit_is_exported_as_the_reject_limit_when_set() {
    let s = Server::start(&["--max_size", "1", "--max_size_hard_limit", "2"]);
    let m = scrape(&s).await;
    assert_eq!(
        m.value(
            "bazel_remote_disk_cache_size_bytes_limit",
            &[("type", "reject")]
        ),
        (2u64 << 30) as f64
    );
    let without = Server::start(&["--max_size", "1"]);
    let m = scrape(&without).await;
    assert!(!m.text.contains("type=\"reject\""), "{}", m.text);
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
    let blobs: Vec<Vec<u8>> = (0..4).map(|i| support::noise(300 * 1024, 10 + i)).collect();
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
async fn group_commit_flushes_are_exported() {
    use crate::support::prometheus::MetricType;
    let s = Server::start(&[]);
    let m = scrape(&s).await;
    for family in [
        "bazel_cache_disk_flush_seconds",
        "bazel_cache_disk_flush_blobs",
    ] {
        assert_eq!(
            m.types.get(family),
            Some(&MetricType::Histogram),
            "{family}"
        );
        assert_eq!(m.value(&format!("{family}_count"), &[]), 0.0, "{family}");
    }
    // Five writes one after another: each is acknowledged only after its
    // own commit, so they cannot share one. Then 16 at once, which may.
    for seed in 0..5 {
        let b = support::noise(64 * 1024, 300 + seed);
        assert_eq!(request(&s, "PUT", &cas(&b), Some(&b)).await, 200);
    }
    let together = (0..16).map(|i| {
        let b = support::noise(64 * 1024, 400 + i);
        let s = &s;
        async move { request(s, "PUT", &cas(&b), Some(&b)).await }
    });
    for status in futures_util::future::join_all(together).await {
        assert_eq!(status, 200);
    }
    let m = scrape(&s).await;
    let commits = m.value("bazel_cache_disk_flush_seconds_count", &[]);
    assert_eq!(m.value("bazel_cache_disk_flush_blobs_count", &[]), commits);
    assert!((6.0..=21.0).contains(&commits), "{commits} commits");
    assert_eq!(m.value("bazel_cache_disk_flush_blobs_sum", &[]), 21.0);
    assert!(m.value("bazel_cache_disk_flush_seconds_sum", &[]) > 0.0);
    assert_eq!(
        m.value("bazel_cache_disk_flush_blobs_bucket", &[("le", "+Inf")]),
        commits
    );

    // Without fsync nothing is flushed, so nothing is recorded.
    let s = Server::start(&["--fsync=false"]);
    for seed in 0..3 {
        let b = support::noise(64 * 1024, 500 + seed);
        assert_eq!(request(&s, "PUT", &cas(&b), Some(&b)).await, 200);
    }
    let m = scrape(&s).await;
    assert_eq!(m.value("bazel_cache_disk_flush_seconds_count", &[]), 0.0);
    assert_eq!(m.value("bazel_cache_disk_flush_blobs_sum", &[]), 0.0);
}

#[tokio::test]
async fn grpc_metrics_need_endpoint_metrics() {
    let s = Server::start(&["--grpc_address", "127.0.0.1:0"]);
    let mut caps = CapabilitiesClient::new(s.channel().await);
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

#[tokio::test]
async fn standard_process_metrics_are_exported() {
    use crate::support::prometheus::MetricType;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let s = Server::start(&[]);
    let before = scrape(&s).await;
    for (name, family, ty) in [
        (
            "process_cpu_seconds_total",
            "process_cpu_seconds_total",
            MetricType::Counter,
        ),
        (
            "process_resident_memory_bytes",
            "process_resident_memory_bytes",
            MetricType::Gauge,
        ),
        (
            "process_virtual_memory_bytes",
            "process_virtual_memory_bytes",
            MetricType::Gauge,
        ),
        ("process_open_fds", "process_open_fds", MetricType::Gauge),
        ("process_max_fds", "process_max_fds", MetricType::Gauge),
        (
            "process_start_time_seconds",
            "process_start_time_seconds",
            MetricType::Gauge,
        ),
    ] {
        assert!(before.has(name), "{name} missing:\n{}", before.text);
        assert_eq!(before.types.get(family), Some(&ty), "{family}");
    }
    let rss = before.value("process_resident_memory_bytes", &[]);
    assert!(rss > 0.0, "{rss}");
    assert!(before.value("process_virtual_memory_bytes", &[]) >= rss);
    let fds = before.value("process_open_fds", &[]);
    assert!(fds > 0.0, "{fds}");
    assert!(before.value("process_max_fds", &[]) >= fds);
    // btime is whole seconds: allow a little either side.
    let start = before.value("process_start_time_seconds", &[]);
    assert!(
        start >= started - 5.0 && start <= started + 120.0,
        "start {start}, test started {started}"
    );

    // Work the server until its CPU counter (10 ms ticks) moves.
    let cpu = before.value("process_cpu_seconds_total", &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seed = 100;
    loop {
        for _ in 0..20 {
            let blob = support::noise(256 * 1024, seed);
            seed += 1;
            assert_eq!(request(&s, "PUT", &cas(&blob), Some(&blob)).await, 200);
            assert_eq!(request(&s, "GET", &cas(&blob), None).await, 200);
        }
        let now = scrape(&s).await.value("process_cpu_seconds_total", &[]);
        if now > cpu {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process_cpu_seconds_total stayed at {cpu} after {} uploads",
            seed - 100
        );
    }
}

// ---------------------------------------------------------------------------
// The design document's alerts
// ---------------------------------------------------------------------------

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
        let b = support::noise(1000, 40 + i);
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
