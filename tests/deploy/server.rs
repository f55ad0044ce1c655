//! The rendered ConfigMap and Deployment against the server binary:
//! `check-config`. (A server started from the config answering the probes
//! needs s3s-fs: tests/s3/deploy/server.rs.)

use std::process::Command;
use std::time::Duration;

use hcl::{Number, Value};

use crate::support;
use crate::support::deploy::{config_yaml, module_dir, render_ok};
use crate::support::tofu::{Module, Rendered, at, list, s, v};

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

fn check_config(yaml: &str, env: &[(String, String)]) -> support::RunOutput {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = Command::new(support::server_binary());
    cmd.arg("check-config").arg("--config_file").arg(&file);
    support::env_remove_prefixed(&mut cmd, "BAZEL_REMOTE_");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    support::run(&mut cmd, Duration::from_secs(30))
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
