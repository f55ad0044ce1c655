//! The rendered ConfigMap and Deployment against the server binary:
//! `check-config`, and a server started from the config answering the
//! probes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hcl::{Number, Value};

use super::common::s3::S3Server;
use super::common::{self, Server};
use super::tofu::{Module, Rendered, at, get, list, n, s, v};
use super::{module_dir, render_ok};

/// The Deployment's environment: names from the Secret, with stand-in
/// values (what the kubelet would inject).
fn deployment_env(r: &Rendered) -> Vec<(String, String)> {
    let container = at(
        r.resource("kubernetes_deployment.main"),
        "spec.0.template.0.spec.0.container.0",
    );
    list(at(container, "env"))
        .iter()
        .map(|e| {
            let name = s(at(e, "name")).to_string();
            let key = s(at(e, "value_from.0.secret_key_ref.0.key"));
            (name, format!("stand-in-{key}"))
        })
        .collect()
}

pub fn config_yaml(r: &Rendered) -> &str {
    s(at(
        r.resource("kubernetes_config_map.config"),
        "data.config.yaml",
    ))
}

fn check_config(yaml: &str, env: &[(String, String)]) -> common::RunOutput {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = Command::new(common::server_binary());
    cmd.arg("check-config").arg("--config_file").arg(&file);
    common::env_remove_prefixed(&mut cmd, "BAZEL_REMOTE_");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    common::run(&mut cmd, Duration::from_secs(30))
}

#[test]
fn the_rendered_config_loads_in_check_config() {
    let module = Module::load(&module_dir());
    for extra in [
        vec![],
        vec![
            ("htpasswd_secret", v("bazel-cache-htpasswd")),
            ("allow_unauthenticated_reads", v(true)),
        ],
        vec![
            (
                "max_cache_size_gb",
                Value::Number(Number::from_f64(7.5).unwrap()),
            ),
            ("local_cache_size_gb", v(9)),
            ("s3_prefix", v("team-a")),
            ("s3_bucket_lookup_type", v("auto")),
            ("access_log_level", v("all")),
            ("enable_metrics", v(false)),
        ],
    ] {
        let r = render_ok(&module, &extra);
        let yaml = config_yaml(&r);
        let env = deployment_env(&r);
        let out = check_config(yaml, &env);
        assert!(
            out.status.success(),
            "check-config refused the ConfigMap rendered for {extra:?}:\n{yaml}\n{}{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout.contains("configuration is valid"),
            "{}",
            out.stdout
        );
        // The Deployment's variables are what supplies the S3 credentials:
        // without them the same file is refused.
        let without = check_config(yaml, &[]);
        assert!(!without.status.success(), "{yaml}");
        assert!(
            without.stderr.contains("access_key_id"),
            "{}",
            without.stderr
        );

        // The file the server is told to read is the ConfigMap's key in the
        // mounted volume.
        let pod = at(
            r.resource("kubernetes_deployment.main"),
            "spec.0.template.0.spec.0",
        );
        let container = at(pod, "container.0");
        let config_mount = list(at(container, "volume_mount"))
            .iter()
            .find(|m| s(at(m, "name")) == "config")
            .unwrap();
        let args: Vec<&str> = list(at(container, "args")).iter().map(s).collect();
        assert_eq!(
            args,
            [format!(
                "--config_file={}/config.yaml",
                s(at(config_mount, "mount_path"))
            )]
        );
        let volume = list(at(pod, "volume"))
            .iter()
            .find(|v| s(at(v, "name")) == "config")
            .unwrap();
        assert_eq!(s(at(volume, "config_map.0.name")), "bazel-cache-config");
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
        if let Some(htpasswd) = parsed["htpasswd_file"].as_str() {
            let mount = list(at(container, "volume_mount"))
                .iter()
                .find(|m| s(at(m, "name")) == "htpasswd")
                .expect("the htpasswd volume is mounted");
            assert_eq!(htpasswd, format!("{}/htpasswd", s(at(mount, "mount_path"))));
        }
    }
}

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

/// An htpasswd file with one `{SHA}` entry.
fn htpasswd(dir: &Path, user: &str, password: &str) -> PathBuf {
    use base64::Engine;
    use sha1::Digest;
    let hash = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(password));
    let path = dir.join("htpasswd");
    std::fs::write(&path, format!("{user}:{{SHA}}{hash}\n")).unwrap();
    path
}

/// Starts the server on the rendered config, as the pod would, except that
/// it listens on 127.0.0.1 with free ports, keeps its data in a temporary
/// `dir`, and finds S3 at s3s-fs with its credentials (flags override the
/// file). Returns the server and the config file's directory.
pub fn start_from_config(yaml: &str, s3: &S3Server, extra: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    let file = file.display().to_string();
    let mut args = vec![
        "--config_file",
        &file,
        "--http_address",
        "127.0.0.1:0",
        "--grpc_address",
        "127.0.0.1:0",
        "--max_size",
        "1",
        "--s3.endpoint",
        &s3.endpoint,
        "--s3.bucket",
        &s3.bucket,
        "--s3.access_key_id",
        &s3.access_key,
        "--s3.secret_access_key",
        &s3.secret_key,
    ];
    args.extend_from_slice(extra);
    (Server::start(&args), dir)
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
