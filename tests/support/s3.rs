//! A real S3 server for tests: `s3s-fs` (s3s's file-system backed server,
//! which checks SigV4 signatures) on a free local port, with one bucket.
//!
//! ```ignore
//! use crate::support::s3::S3Server;
//! let s3 = S3Server::start();
//! let client = S3Client::new(&s3.config())?;
//! s3.stop();    // outage: the port refuses connections
//! s3.restart(); // same port, same data
//! ```
//!
//! The binary is `$S3S_FS` if set, else `s3s-fs` on `PATH`, else
//! `$CARGO_HOME/bin/s3s-fs` (`~/.cargo/bin/s3s-fs`). Install it with
//! `cargo install s3s-fs@0.14.1 --locked --features binary` (`scripts/test.sh`
//! does). benches/s3_throughput.rs includes this file too (`#[path]`).
//!
//! s3s-fs facts: `s3s-fs --host H --port P --access-key AK --secret-key SK
//! ROOT`; every directory under ROOT is a bucket (the bucket directory must
//! exist); object `k` of bucket `b` is the file `ROOT/b/k`; multipart parts
//! live in `ROOT/.upload_id-*` until completed or aborted; parts other than
//! the last must be at least 5 MiB (`EntityTooSmall`); CopyObject onto itself
//! sets the file's mtime to now; virtual-hosted style only with `--domain`.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bazel_cache::config::{BucketLookupType, S3AuthMethod, S3Config, S3SignatureType};

const INSTALL_HINT: &str =
    "run scripts/test.sh or cargo install s3s-fs@0.14.1 --locked --features binary";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `s3s-fs`, killed on drop.
pub(crate) struct S3Server {
    /// `127.0.0.1:PORT`
    pub(crate) endpoint: String,
    pub(crate) access_key: String,
    pub(crate) secret_key: String,
    pub(crate) bucket: String,
    /// The server's data directory; the bucket is `root/bucket`.
    pub(crate) root: tempfile::TempDir,
    port: u16,
    /// Holds the server's log (`s3s-fs.log`), outside `root`.
    logdir: tempfile::TempDir,
    child: Option<Child>,
}

/// The s3s-fs binary, or a panic saying how to install it.
pub(crate) fn s3s_fs_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "S3S_FS={} does not exist ({INSTALL_HINT})",
            p.display()
        );
        return p;
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(cargo_home).join("bin/s3s-fs"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("s3s-fs is not installed: {INSTALL_HINT}"))
}

impl S3Server {
    /// Starts s3s-fs on a free port with a fresh root and bucket `bucket`.
    pub(crate) fn start() -> S3Server {
        let root = tempfile::Builder::new()
            .prefix("bazel-cache-s3.")
            .tempdir()
            .expect("create s3s-fs root");
        let logdir = tempfile::Builder::new()
            .prefix("bazel-cache-s3-log.")
            .tempdir()
            .expect("create s3s-fs log dir");
        let bucket = "bazel-cache-test".to_owned();
        std::fs::create_dir(root.path().join(&bucket)).expect("create bucket directory");
        let mut server = S3Server {
            endpoint: String::new(),
            access_key: "AKIATESTBAZELCACHE".to_owned(),
            secret_key: "test/Secret+Key/0123456789abcdefghijklmn".to_owned(),
            bucket,
            root,
            port: 0,
            logdir,
            child: None,
        };
        // Another process may take the port between probing and binding: retry.
        for attempt in 1..=5 {
            server.port = free_port();
            server.endpoint = format!("127.0.0.1:{}", server.port);
            match server.spawn() {
                Ok(()) => return server,
                Err(e) if attempt < 5 => eprintln!("s3s-fs start attempt {attempt}: {e}"),
                Err(e) => panic!("s3s-fs did not start: {e}\n{}", server.log()),
            }
        }
        unreachable!()
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL): connections reset, the port refuses.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and root (stopping it first
    /// if it runs).
    pub(crate) fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("s3s-fs restart on port {}: {e}; retrying", self.port);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("s3s-fs did not restart: {e}\n{}", self.log()),
            }
        }
    }

    /// An `s3_proxy` configuration for this server: path style, plain
    /// http, static keys, region us-east-1, no prefix.
    pub(crate) fn config(&self) -> S3Config {
        let mut cfg = S3Server::config_for_endpoint(&self.endpoint);
        cfg.bucket = self.bucket.clone();
        cfg.access_key_id = self.access_key.clone().into();
        cfg.secret_access_key = self.secret_key.clone().into();
        cfg
    }

    /// The same configuration for any `host:port` (e.g. a fake server),
    /// with made-up keys.
    pub(crate) fn config_for_endpoint(endpoint: &str) -> S3Config {
        S3Config {
            endpoint: endpoint.to_owned(),
            bucket: "bazel-cache-test".to_owned(),
            prefix: String::new(),
            region: String::new(),
            auth_method: S3AuthMethod::AccessKey,
            access_key_id: "AKIATESTBAZELCACHE".into(),
            secret_access_key: "test/Secret+Key/0123456789abcdefghijklmn".into(),
            session_token: Default::default(),
            signature_type: S3SignatureType::V4,
            iam_role_endpoint: String::new(),
            aws_profile: "default".to_owned(),
            aws_shared_credentials_file: None,
            disable_ssl: true,
            bucket_lookup_type: BucketLookupType::Path,
            max_idle_conns: 16,
            update_timestamps: false,
        }
    }

    /// The server flags that put this bucket behind the cache: path-style,
    /// plain-http S3 with static keys, `secret` as the secret key (the right
    /// one is `self.secret_key`), `num_uploaders` upload workers.
    pub(crate) fn server_flags(&self, secret: &str, num_uploaders: u32) -> Vec<String> {
        [
            "--s3.endpoint",
            &self.endpoint,
            "--s3.bucket",
            &self.bucket,
            "--s3.auth_method",
            "access_key",
            "--s3.access_key_id",
            &self.access_key,
            "--s3.secret_access_key",
            secret,
            "--s3.disable_ssl",
            "--s3.bucket_lookup_type",
            "path",
            "--num_uploaders",
            &num_uploaders.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Where s3s-fs keeps object `key` of the bucket.
    pub(crate) fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(&self.bucket).join(key)
    }

    /// Files of multipart uploads neither completed nor aborted.
    pub(crate) fn pending_upload_parts(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .expect("read s3s-fs root")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with(".upload_id-"))
            .collect()
    }

    /// What the server logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.logdir.path().join("s3s-fs.log")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = s3s_fs_binary();
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("dup log: {e}"))?;
        let mut child = Command::new(&bin)
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--access-key")
            .arg(&self.access_key)
            .arg("--secret-key")
            .arg(&self.secret_key)
            .arg(self.root.path())
            .env(
                "RUST_LOG",
                std::env::var("S3S_FS_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("run {}: {e} ({INSTALL_HINT})", bin.display()))?;
        let addr: SocketAddr = self.endpoint.parse().expect("endpoint is an address");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("s3s-fs exited with {status}"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "port {} not accepting after {START_TIMEOUT:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            let log = self.log();
            if !log.trim().is_empty() {
                eprintln!("--- s3s-fs log ---\n{log}--- end of s3s-fs log ---");
            }
        }
        self.stop();
    }
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}
