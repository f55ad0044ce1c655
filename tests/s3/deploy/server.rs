//! A server started from the rendered ConfigMap, as the Deployment runs it
//! (with S3 behind it, s3s-fs), answers the Deployment's probes on the
//! ports the pod spec, the Service, the probes and the ServiceMonitor agree
//! on. (`check-config` on the rendered ConfigMap: tests/deploy/server.rs.)

use std::collections::BTreeMap;

use hcl::Value;

use crate::support::deploy::{config_yaml, module_dir, render_ok, start_from_config};
use crate::support::s3::S3Server;
use crate::support::sha_htpasswd as htpasswd;
use crate::support::tofu::{Module, Rendered, at, get, list, n, s};

/// The ports the pod spec, the Service, the probes, the ServiceMonitor and
/// the config agree on, checked against each other; returns the readiness
/// path and the liveness gRPC service name.
fn ports_agree(r: &Rendered) -> (String, String) {
    let deployment = r.resource("kubernetes_deployment.main");
    let template = at(deployment, "spec.0.template.0");
    let container = at(template, "spec.0.container.0");
    let ports: BTreeMap<&str, f64> = list(at(container, "port"))
        .iter()
        .map(|p| (s(at(p, "name")), n(at(p, "container_port"))))
        .collect();
    assert_eq!(ports, BTreeMap::from([("grpc", 9092.0), ("http", 8080.0)]));

    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(config_yaml(r)).unwrap();
    let http_address = config["http_address"].as_str().unwrap();
    assert_eq!(http_address, "0.0.0.0:8080", "listens on all interfaces");
    assert_eq!(config["grpc_port"].as_f64(), Some(ports["grpc"]));

    let svc = r.resource("kubernetes_service.main");
    for p in list(at(svc, "spec.0.port")) {
        let name = s(at(p, "name"));
        assert_eq!(n(at(p, "target_port")), ports[name], "Service port {name}");
    }

    let readiness = at(container, "readiness_probe.0.http_get.0");
    assert_eq!(n(at(readiness, "port")), ports["http"]);
    let liveness = at(container, "liveness_probe.0.grpc.0");
    assert_eq!(n(at(liveness, "port")), ports["grpc"]);

    let annotations = at(template, "metadata.0.annotations");
    assert_eq!(s(at(annotations, "prometheus.io/port")), "8080");
    assert_eq!(s(at(annotations, "prometheus.io/path")), "/metrics");
    let monitor: serde_yaml_ng::Value = serde_yaml_ng::from_str(s(at(
        r.resource("kubectl_manifest.service_monitor"),
        "yaml_body",
    )))
    .unwrap();
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert!(
        list(at(svc, "spec.0.port"))
            .iter()
            .any(|p| Some(s(at(p, "name"))) == endpoint["port"].as_str()),
        "the ServiceMonitor's port is a Service port name"
    );
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    (
        s(at(readiness, "path")).to_string(),
        get(liveness, "service")
            .map(|v| s(v).to_string())
            .unwrap_or_default(),
    )
}

async fn grpc_health(endpoint: String, service: &str) -> i32 {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Channel::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("the health check needs no credentials")
        .into_inner()
        .status
}

#[test]
fn probes_and_ports_match_what_the_server_serves() {
    let module = Module::load(&module_dir());
    // Basic auth on: the probes must work without credentials anyway.
    let r = render_ok(
        &module,
        &[("htpasswd_secret", Value::from("bazel-cache-htpasswd"))],
    );
    let (readiness_path, liveness_service) = ports_agree(&r);

    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let htpasswd = htpasswd(tmp.path(), "ci", "s3cret");
    let htpasswd = htpasswd.display().to_string();
    let (server, _config) =
        start_from_config(config_yaml(&r), &s3, &["--htpasswd_file", &htpasswd]);

    let (code, body) = server.get(&readiness_path);
    assert_eq!(
        code,
        200,
        "readiness {readiness_path}: {}",
        String::from_utf8_lossy(&body)
    );
    let (code, _) = server.get("/metrics");
    assert_eq!(code, 200, "the ServiceMonitor's path");
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        rt.block_on(grpc_health(server.grpc_endpoint(), &liveness_service)),
        1,
        "SERVING"
    );
    // Authentication is on: the probes pass because they are exempt.
    let (code, _) = server.get(&format!("/cas/{}", "0".repeat(64)));
    assert_eq!(code, 401, "a cache read without credentials");
}
