//! The binary as an operator meets it: no-argument start, `check-config`,
//! start-up errors and exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bazel-cache"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn starts_with_no_arguments_on_the_embedded_default() {
    let home = tempfile::tempdir().unwrap();
    let mut child = bin()
        .env("HOME", home.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.starts_with("build --remote_cache=http") => {
                seen.push(line);
                break;
            }
            Ok(line) => seen.push(line),
            Err(_) => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen.last().map(String::as_str),
        Some("build --remote_cache=http://localhost:8080"),
        "{seen:?}"
    );
    assert!(home.path().join(".cache/bazel-cache/index.redb").exists());
}

#[test]
fn check_config_accepts_the_design_configmap_with_credentials_from_env() {
    let out = bin()
        .args([
            "check-config",
            "--config_file",
            &fixture("design-configmap.yaml"),
        ])
        .env("BAZEL_REMOTE_S3_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("BAZEL_REMOTE_S3_SECRET_ACCESS_KEY", "very-secret-value")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration is valid"));
    assert!(!stdout.contains("very-secret-value"));

    let out = bin()
        .args([
            "check-config",
            "--config_file",
            &fixture("design-configmap.yaml"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("s3_proxy.access_key_id"), "{stderr}");
}

#[test]
fn bad_config_files_fail_with_one_line_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "dir: /tmp/x\nmax_size: 1\nmax_sise: 3\n",
            "line 3",
            "max_sise",
        ),
        ("dir: /tmp/x\nmax_size: lots\n", "line 2", "max_size"),
        ("dir: /tmp/x\nmax_size: 0\n", "", "max_size"),
    ];
    for (i, (yaml, line, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let out = bin()
            .args(["--config_file", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{yaml}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(line) && stderr.contains(key),
            "{yaml}: {stderr}"
        );
    }
}

#[test]
fn security_settings_it_cannot_honour_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, "user:{SHA}x\n").unwrap();
    let out = bin()
        .args([
            "--dir",
            dir.path().to_str().unwrap(),
            "--http_address",
            "127.0.0.1:0",
        ])
        .args(["--htpasswd_file", htpasswd.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("htpasswd_file"), "{stderr}");
}

#[test]
fn help_documents_options_with_their_environment_variables() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--dir",
        "BAZEL_REMOTE_DIR",
        "--max_size",
        "--s3.endpoint",
        "BAZEL_REMOTE_S3_SECRET_ACCESS_KEY",
        "check-config",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn restart_keeps_the_index_and_the_data() {
    let mut s = support::Server::start(&[]);
    let body = b"persist me".to_vec();
    let h = bazel_cache_digest::Hash::of(&body).to_hex();
    let (status, _) = support::http_request(
        "PUT",
        &format!("{}/cas/{h}", s.http_url),
        Some(body.clone()),
    );
    assert_eq!(status, 200);
    let dir = s.stop().unwrap();
    s = support::Server::start_with_dir(dir.path(), &[]);
    assert_eq!(
        support::http_request("GET", &format!("{}/cas/{h}", s.http_url), None),
        (200, body)
    );
    assert_eq!(s.num_files(), 1);
}

#[test]
fn idle_timeout_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = bin()
        .args([
            "--dir",
            dir.path().to_str().unwrap(),
            "--http_address",
            "127.0.0.1:0",
        ])
        .args(["--grpc_address", "none", "--idle_timeout", "1s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("idle timeout"), "{stderr}");
    // A clean stop: the next start runs no recovery.
    let s = support::Server::start_with_dir(dir.path(), &[]);
    let (_, _, stderr) = s.stop_with_output();
    assert!(!stderr.contains("did not stop cleanly"), "{stderr}");
}
