//! A flood of wrong passwords does not stall clients whose credentials are
//! right: the real server binary with a bcrypt htpasswd entry, 16 clients
//! sending wrong passwords as fast as it answers them, and one good client
//! doing PUT+GET round trips meanwhile. Behaviour only; the latencies are
//! in `cargo bench --bench auth_flood`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::Server;
use bazel_cache::auth::basic_header;
use bazel_cache_digest::Hash;

const USER: &str = "builder";
const PASSWORD: &str = "right-password";
const FLOODERS: usize = 16;
const ROUND_TRIPS: usize = 20;
/// The flood stops by itself after this, whatever happens.
const FLOOD_LIMIT: Duration = Duration::from_secs(300);

/// A bcrypt (cost 10) entry by Apache's `htpasswd -B`.
fn htpasswd_file(dir: &Path) -> PathBuf {
    let path = dir.join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-c", "-b", "-B", "-C", "10"])
        .arg(&path)
        .args([USER, PASSWORD])
        .output()
        .unwrap_or_else(|e| panic!("run htpasswd (.ci/run installs apache2-utils): {e}"));
    assert!(
        out.status.success(),
        "htpasswd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(&format!("{USER}:$2y$10$")), "{text}");
    path
}

#[derive(Default)]
struct Flood {
    refused: AtomicU64,
    /// Answers other than 401, and transport errors.
    unexpected: AtomicU64,
}

/// One flooding client until `stop`: even-numbered ones repeat one typo
/// (the failure cache answers), odd-numbered ones send a new wrong password
/// every time (each one needs a verify).
async fn flood(n: usize, url: String, stop: Arc<AtomicBool>, counts: Arc<Flood>) {
    let client = support::async_client();
    let started = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < FLOOD_LIMIT {
        let password = if n.is_multiple_of(2) {
            format!("typo-{n}")
        } else {
            format!("guess-{n}-{i}")
        };
        i += 1;
        let resp = client
            .get(&url)
            .header("Authorization", basic_header(USER, &password))
            .send()
            .await;
        match resp {
            Ok(r) if r.status() == 401 && r.headers().contains_key("www-authenticate") => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => {
                eprintln!("flooder {n}: unexpected {}", r.status());
                counts.unexpected.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("flooder {n}: {e}");
                counts.unexpected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_good_client_is_served_during_a_wrong_password_flood() {
    let dir = tempfile::tempdir().unwrap();
    let file = htpasswd_file(dir.path());
    let server = Server::start(&["--htpasswd_file", file.to_str().unwrap()]);
    let base = server.http_url.clone();

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Flood::default());
    let target = format!("{base}/cas/{}", Hash::of(b"flood target").to_hex());
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|n| tokio::spawn(flood(n, target.clone(), stop.clone(), counts.clone())))
        .collect();
    // The flood is under way before the good client starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while counts.refused.load(Ordering::Relaxed) < FLOODERS as u64 {
        assert!(Instant::now() < deadline, "the flood got no answers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let good = basic_header(USER, PASSWORD);
    let client = support::async_client();
    let refused_before = counts.refused.load(Ordering::Relaxed);
    for round in 0..ROUND_TRIPS {
        let data = support::noise(4096, round as u64);
        let url = format!("{base}/cas/{}", Hash::of(&data).to_hex());
        let put = client
            .put(&url)
            .header("Authorization", &good)
            .body(data.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: PUT: {e}"));
        assert!(
            put.status().is_success(),
            "round {round}: PUT answered {}",
            put.status()
        );
        let get = client
            .get(&url)
            .header("Authorization", &good)
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: GET: {e}"));
        assert_eq!(get.status(), 200, "round {round}: GET");
        let body = get.bytes().await.unwrap();
        assert!(
            body[..] == data[..],
            "round {round}: GET returned other bytes"
        );
    }
    let refused_during = counts.refused.load(Ordering::Relaxed) - refused_before;

    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.await.unwrap();
    }
    assert_eq!(
        counts.unexpected.load(Ordering::Relaxed),
        0,
        "every flood request must be refused with 401 and a Basic challenge"
    );
    assert!(
        refused_during > 0,
        "the flood was not running while the good client was served"
    );
    // Nothing the flood sent was stored; the good client's blobs were.
    let status = server.status_async().await;
    assert_eq!(status["NumFiles"], ROUND_TRIPS as u64, "{status}");
}
