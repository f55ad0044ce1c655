//! Wrong passwords, for the benches that flood the server with them
//! (`auth_flood`, `hostile`): an htpasswd file written by Apache's own
//! tool, and the flooding client.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bazel_cache::auth::basic_header;

/// Writes `path` with one bcrypt entry at `cost`, as `htpasswd -B` does.
pub(crate) fn write_htpasswd(path: &Path, user: &str, password: &str, cost: usize) {
    let out = Command::new("htpasswd")
        .args(["-c", "-b", "-B", "-C", &cost.to_string()])
        .arg(path)
        .args([user, password])
        .output()
        .expect("run htpasswd (apache2-utils)");
    assert!(
        out.status.success(),
        "htpasswd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Flood {
    None,
    /// Every flooder repeats one wrong password.
    SameTypo,
    /// Every flood request carries a new wrong password.
    NewGuesses,
}

impl Flood {
    pub(crate) fn label(self, flooders: usize) -> String {
        match self {
            Flood::None => "no flood".into(),
            Flood::SameTypo => format!("{flooders} clients repeating a typo"),
            Flood::NewGuesses => format!("{flooders} clients, new password each"),
        }
    }
}

/// What the flooders got back.
#[derive(Default)]
pub(crate) struct FloodCounts {
    /// 401 answers.
    pub refused: AtomicU64,
    /// Other refusals (503, 429: the server shedding load) and transport
    /// errors (the server may close the connection of a refused request).
    pub other: AtomicU64,
}

/// One flooding client: GETs `url` as `user` with a wrong password (flooder
/// `n`, `kind` says which) until `stop`. A wrong password that is let in
/// is a bug: it panics.
pub(crate) async fn flooder(
    n: usize,
    url: String,
    user: &'static str,
    kind: Flood,
    stop: Arc<AtomicBool>,
    counts: Arc<FloodCounts>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let password = match kind {
            Flood::NewGuesses => format!("guess-{n}-{i}"),
            _ => "typo".to_string(),
        };
        i += 1;
        match client
            .get(&url)
            .header("Authorization", basic_header(user, &password))
            .send()
            .await
        {
            Ok(r) if r.status() == 401 => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) if r.status().is_success() => {
                panic!("a wrong password got {}", r.status())
            }
            Ok(_) | Err(_) => {
                counts.other.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The `p` quantile (0..=1) of sorted latencies, in milliseconds.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}
