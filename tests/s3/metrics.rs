//! `/metrics` of the real server binary with a real S3 server (s3s-fs)
//! behind it: the design document's alert rules find their metrics, and the
//! S3 figures (requests, hits, misses, the upload queue) through an outage.
//! The other metrics tests are in tests/api/metrics.rs.

use std::time::Duration;

use crate::support::prometheus::{design_alert_expressions, scrape, selectors, wait_metrics};
use crate::support::s3::S3Server;
use crate::support::{self, Server, cas_path as cas, request};

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
    args.extend(s3.server_flags(&s3.secret_key, 2));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start(&refs);

    // A few requests: a write, a hit, a miss (which asks S3), a bad request.
    let blob = support::noise(5000, 7);
    assert_eq!(request(&s, "PUT", &cas(&blob), Some(&blob)).await, 200);
    assert_eq!(request(&s, "GET", &cas(&blob), None).await, 200);
    assert_eq!(
        request(&s, "GET", &cas(&support::noise(10, 8)), None).await,
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

#[tokio::test]
async fn s3_requests_hits_misses_and_the_upload_queue() {
    let mut s3 = S3Server::start();
    let flags = s3.server_flags(&s3.secret_key, 2);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = Server::start(&refs);
    let blob = support::noise(20_000, 21);
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
    let absent = support::noise(64, 22);
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
        request(&a, "GET", &cas(&support::noise(64, 23)), None).await,
        404
    );
    let pending: Vec<Vec<u8>> = (0..2).map(|i| support::noise(3000, 30 + i)).collect();
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
