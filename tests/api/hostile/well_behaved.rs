//! The well-behaved client that runs next to an attack: a PUT of a fresh
//! blob and a GET of it, every 50 ms, over HTTP. Every round trip must
//! succeed; the attack tests count how many it made and when.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::{self, Server, async_client, hex};

pub(super) struct GoodClient {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl GoodClient {
    /// Starts round trips against `server`; `seed` keeps its blobs apart
    /// from other clients' and tests'.
    pub(super) fn start(server: &Server, seed: u64) -> GoodClient {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let url = server.http_url.clone();
        let task = tokio::spawn({
            let (stop, done) = (stop.clone(), done.clone());
            async move {
                let client = async_client();
                let mut failures = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let blob = support::noise(4096, seed * 1_000_000 + i);
                    let url = format!("{url}/cas/{}", hex(&blob));
                    match round_trip(&client, &url, &blob).await {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(format!("round trip {i}: {e}")),
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                failures
            }
        });
        GoodClient { stop, done, task }
    }

    /// Round trips completed so far.
    pub(super) fn round_trips(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops it; panics if any round trip failed. Returns how many it made.
    pub(super) async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        assert!(
            failures.is_empty(),
            "the well-behaved client was not served: {failures:#?}"
        );
        self.done.load(Ordering::Relaxed)
    }
}

async fn round_trip(client: &reqwest::Client, url: &str, blob: &[u8]) -> Result<(), String> {
    let put = client
        .put(url)
        .body(blob.to_vec())
        .send()
        .await
        .map_err(|e| format!("PUT: {e}"))?;
    if put.status() != 200 {
        return Err(format!("PUT answered {}", put.status()));
    }
    let get = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET: {e}"))?;
    if get.status() != 200 {
        return Err(format!("GET answered {}", get.status()));
    }
    let body = get.bytes().await.map_err(|e| format!("GET body: {e}"))?;
    if body.as_ref() != blob {
        return Err("GET returned other bytes".into());
    }
    Ok(())
}
