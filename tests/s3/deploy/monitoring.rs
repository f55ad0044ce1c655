//! The PrometheusRule and the Grafana dashboard against a running server's
//! `/metrics` (with S3 behind it, s3s-fs, so the S3 series exist).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::deploy::{
    config_yaml, dashboard_path, module_dir, read, render_ok, start_from_config,
};
use crate::support::prometheus::{Scrape, TARGET_LABELS, check_promql};
use crate::support::s3::S3Server;
use crate::support::tofu::{Module, at, s};
use crate::support::{self, Server};

/// Every `expr` of the dashboard's panels (rows included), with the title.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {:?} has a target without expr", p["title"]));
                out.push((
                    p["title"].as_str().unwrap_or("").to_string(),
                    expr.to_string(),
                ));
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    out
}

/// Some of everything: HTTP writes, hits, misses and a bad request; gRPC
/// lookups; then waits until the upload reached S3.
fn traffic(server: &Server) {
    use bazel_cache_digest::Hash;
    use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
    use support::{cas_path as cas, digest};
    let blob = support::noise(20_000, 1);
    let url = |path: String| format!("{}{path}", server.http_url);
    assert_eq!(
        support::http_request("PUT", &url(cas(&blob)), Some(blob.clone())).0,
        200
    );
    assert_eq!(support::http_request("GET", &url(cas(&blob)), None).0, 200);
    assert_eq!(support::http_request("HEAD", &url(cas(&blob)), None).0, 200);
    assert_eq!(
        support::http_request("GET", &url(cas(&support::noise(10, 2))), None).0,
        404
    );
    let ac = format!("/ac/{}", Hash::of(b"no such action"));
    assert_eq!(support::http_request("GET", &url(ac), None).0, 404);
    assert_eq!(
        support::http_request("GET", &url("/cas/zz".into()), None).0,
        400
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = server.channel().await;
        re::content_addressable_storage_client::ContentAddressableStorageClient::new(
            channel.clone(),
        )
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![digest(&blob), digest(b"absent")],
            ..Default::default()
        })
        .await
        .unwrap();
        let miss = re::action_cache_client::ActionCacheClient::new(channel)
            .get_action_result(re::GetActionResultRequest {
                action_digest: Some(digest(b"unknown action")),
                ..Default::default()
            })
            .await;
        assert_eq!(miss.unwrap_err().code(), tonic::Code::NotFound);
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = Scrape::new(String::from_utf8(server.get("/metrics").1).unwrap());
        if m.get("bazel_remote_s3_uploads_total", &[]) == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upload never reached S3:\n{}",
            m.text
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn alerts_and_dashboard_query_only_exported_metrics() {
    let module = Module::load(&module_dir());
    let r = render_ok(&module, &[]);
    let rule: serde_yaml_ng::Value = serde_yaml_ng::from_str(s(at(
        r.resource("kubectl_manifest.prometheus_rules"),
        "yaml_body",
    )))
    .unwrap();
    let rules = rule["spec"]["groups"][0]["rules"].as_sequence().unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&read(dashboard_path())).unwrap();
    let queries = dashboard_queries(&dashboard);

    let s3 = S3Server::start();
    let (server, _config) = start_from_config(config_yaml(&r), &s3, &[]);
    traffic(&server);
    let m = Scrape::new(String::from_utf8(server.get("/metrics").1).unwrap());

    // The alerts: the design's four (by name) and ours, each valid PromQL
    // over exported metrics, with a duration and a severity.
    let names: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    for design in [
        "BazelCacheDown",
        "BazelCacheHighLatency",
        "BazelCacheHighErrorRate",
        "BazelCacheS3Errors",
    ] {
        assert!(
            names.contains(&design),
            "alert {design} of the design is missing: {names:?}"
        );
    }
    let duration = regex::Regex::new(r"^[0-9]+[smhd]$").unwrap();
    let mut alerted = BTreeSet::new();
    for rule in rules {
        let expr = rule["expr"].as_str().unwrap();
        assert!(
            expr.contains("job=\"bazel-cache\""),
            "{expr}: scoped to the job (the Service's name)"
        );
        alerted.extend(check_promql(expr, &m));
        assert!(duration.is_match(rule["for"].as_str().unwrap()), "{rule:?}");
        assert!(
            ["critical", "warning"].contains(&rule["labels"]["severity"].as_str().unwrap()),
            "{rule:?}"
        );
    }
    for metric in [
        "bazel_remote_http_request_duration_seconds_bucket",
        "bazel_remote_http_request_total",
        "bazel_remote_s3_requests_total",
        "grpc_server_handled_total",
    ] {
        assert!(alerted.contains(metric), "no alert on {metric}");
    }

    // The dashboard: every query, and the template variables' queries.
    let mut queried = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    let kind_matcher = regex::Regex::new(r#"kind="([a-z]+)""#).unwrap();
    for (title, expr) in &queries {
        eprintln!("[deploy] dashboard {title:?}: {expr}");
        queried.extend(check_promql(expr, &m));
        if expr.contains("bazel_remote_incoming_requests_total") && expr.contains("status=\"hit\"")
        {
            kinds.extend(kind_matcher.captures_iter(expr).map(|c| c[1].to_string()));
        }
    }
    let label_values = regex::Regex::new(r"^label_values\((.+),\s*([a-z_]+)\)$").unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    for var in variables.iter().filter(|v| v["type"] == "query") {
        let q = var["query"]["query"].as_str().unwrap();
        let cap = label_values.captures(q).unwrap_or_else(|| panic!("{q}"));
        queried.extend(check_promql(&cap[1], &m));
        assert!(TARGET_LABELS.contains(&&cap[2]), "{q}");
    }
    // What the issue asks the dashboard to show.
    assert_eq!(
        kinds,
        BTreeSet::from(["ac".to_string(), "cas".to_string()]),
        "hit ratios"
    );
    for metric in [
        "bazel_remote_http_request_total",
        "grpc_server_handled_total",
        "bazel_remote_http_request_duration_seconds_bucket",
        "grpc_server_handling_seconds_bucket",
        "bazel_remote_disk_cache_size_bytes",
        "bazel_remote_disk_cache_size_bytes_limit",
        "bazel_remote_disk_cache_evictions_total",
        "bazel_remote_s3_upload_queue_length",
        "bazel_remote_s3_requests_total",
    ] {
        assert!(
            queried.contains(metric),
            "the dashboard does not show {metric}"
        );
    }

    // The dashboard as Grafana reads it: unique ids, panels on the 24-column
    // grid without overlaps, every query through the datasource variable,
    // every variable it uses defined.
    assert_eq!(dashboard["uid"], "bazel-cache");
    let defined: BTreeSet<&str> = variables
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(i64, i64, i64, i64, String)> = Vec::new();
    let var_use = regex::Regex::new(r"\$\{?([A-Za-z_]+)").unwrap();
    for p in dashboard["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap().to_string();
        assert!(
            ids.insert(p["id"].as_i64().unwrap()),
            "duplicate id in {title}"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_i64().unwrap(),
            g["y"].as_i64().unwrap(),
            g["w"].as_i64().unwrap(),
            g["h"].as_i64().unwrap(),
        );
        assert!(w >= 1 && h >= 1 && x >= 0 && x + w <= 24, "{title}: {g}");
        for (bx, by, bw, bh, other) in &boxes {
            let overlap = x < bx + bw && *bx < x + w && y < by + bh && *by < y + h;
            assert!(!overlap, "{title} overlaps {other}");
        }
        boxes.push((x, y, w, h, title.clone()));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        let refs: BTreeSet<&str> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), targets.len(), "{title}: duplicate refId");
        for t in targets {
            for cap in var_use.captures_iter(t["expr"].as_str().unwrap()) {
                let v = &cap[1];
                assert!(
                    v.starts_with("__") || defined.contains(v),
                    "{title} uses ${v}, which is not a dashboard variable"
                );
            }
        }
    }
    assert!(defined.contains("datasource"));
}
