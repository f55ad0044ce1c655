//! The server started the way the NixOS module's systemd unit starts it
//! (a config file, no HOME, credentials only in the environment), for the
//! mirrors of the NixOS VM tests (tests/deploy/nix_module.rs,
//! tests/s3/nix_module.rs), with small HTTP helpers for them.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The server started the way the module's unit starts it: a config file,
/// no HOME, selected environment; local addresses and directory as flags
/// (flags win over the file). Killed when dropped.
pub(crate) struct Unit {
    child: Child,
    pub(crate) http_url: String,
    pub(crate) grpc_url: Option<String>,
}

impl Unit {
    pub(crate) fn start(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Unit {
        let mut cmd = Command::new(super::server_binary());
        cmd.arg(format!("--config_file={}", config.display()))
            .args(["--dir"])
            .arg(dir)
            .args(["--http_address", "127.0.0.1:0"])
            .args(["--grpc_address", "127.0.0.1:0"])
            .env_remove("HOME")
            .env_remove("XDG_CACHE_HOME")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("BAZEL_REMOTE_") && !env.iter().any(|(k, _)| *k == key) {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd.spawn().expect("start bazel-cache");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut grpc_url = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("build --remote_cache=grpc://") {
                        grpc_url = Some(format!("http://{}", url.trim()));
                    }
                    if let Some(url) = line.strip_prefix("build --remote_cache=")
                        && url.starts_with("http://")
                    {
                        return Unit {
                            child,
                            http_url: url.trim().to_owned(),
                            grpc_url,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "bazel-cache --config_file={} printed no HTTP .bazelrc line (exit: {:?})",
                        config.display(),
                        child.wait()
                    );
                }
            }
        }
    }

    /// SIGTERM, as `systemctl stop`/`restart` sends; the drain and the
    /// clean index close must end in a successful exit.
    pub(crate) fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "stopped with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "no exit within 40 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

pub(crate) async fn get(url: &str) -> (u16, Vec<u8>) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

pub(crate) async fn put(url: &str, body: Vec<u8>) -> u16 {
    client()
        .put(url)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

pub(crate) async fn status(unit: &Unit) -> serde_json::Value {
    let (code, body) = get(&format!("{}/status", unit.http_url)).await;
    assert_eq!(code, 200, "/status: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

pub(crate) fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}
