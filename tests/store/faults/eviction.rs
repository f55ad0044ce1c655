//! Eviction under concurrent writers and readers: disk usage stays within
//! `max_size` plus one in-flight blob, and a blob evicted while it is read
//! is served whole or not at all.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::helpers::{KIB, MIB, blob_files, temp_files};
use crate::support::{self, Server, async_client as http_client, hex};
use futures_util::StreamExt;

/// Bytes of all blob files under `dir/ac` and `dir/cas`.
fn disk_usage(dir: &Path) -> u64 {
    blob_files(dir).iter().map(|f| f.len).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_under_concurrent_load_stays_within_max_size_and_serves_whole_blobs() {
    // 4 writers of at most 2 MiB each keep the bytes in flight (reserved)
    // under max_size (10.7 MB), so no write is refused for lack of room.
    const WRITERS: u64 = 4;
    const READERS: u64 = 6;
    const BLOBS_PER_WRITER: u64 = 40;
    const LARGEST: usize = 2 * MIB;
    let server = Server::start(&["--max_size", "0.01"]);
    let max_size = server.status_async().await["MaxSize"].as_u64().unwrap();
    let dir = server.dir.clone();

    // Disk usage sampled from another thread for as long as the load runs.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, dir) = (stop.clone(), dir.clone());
        std::thread::spawn(move || {
            let (mut peak, mut samples) = (0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(disk_usage(&dir));
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (peak, samples)
        })
    };

    let written: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let written_bytes = Arc::new(AtomicU64::new(0));
    let writers_done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (url, written, bytes) = (
            server.http_url.clone(),
            written.clone(),
            written_bytes.clone(),
        );
        writers.push(tokio::spawn(async move {
            let client = http_client();
            for i in 0..BLOBS_PER_WRITER {
                let seed = w * 1000 + i + 1;
                let len = [64 * KIB, 700 * KIB, LARGEST, 300 * KIB, 1100 * KIB][(i % 5) as usize];
                let blob = support::noise(len - (seed as usize % 1000), seed);
                let h = hex(&blob);
                let r = client
                    .put(format!("{url}/cas/{h}"))
                    .body(blob.clone())
                    .send()
                    .await
                    .unwrap();
                let code = r.status();
                assert_eq!(code, 200, "PUT {h}: {}", r.text().await.unwrap());
                bytes.fetch_add(blob.len() as u64, Ordering::Relaxed);
                written.lock().unwrap().push((h, blob.len()));
            }
        }));
    }
    // Readers fetch random blobs written so far, most of them evicted or
    // about to be; half read slowly so eviction overtakes them mid-body.
    let mut readers = Vec::new();
    for r in 0..READERS {
        let (url, written, done) = (
            server.http_url.clone(),
            written.clone(),
            writers_done.clone(),
        );
        readers.push(tokio::spawn(async move {
            let client = http_client();
            let (mut whole, mut missing) = (0u64, 0u64);
            let mut x = r * 7919 + 1;
            while !done.load(Ordering::SeqCst) {
                let pick = {
                    let w = written.lock().unwrap();
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Mostly recent blobs (likely present), some old ones.
                    let n = w.len();
                    if n == 0 {
                        None
                    } else if x % 3 == 0 {
                        Some(w[x as usize % n].clone())
                    } else {
                        Some(w[n - 1 - (x as usize % n.min(8))].clone())
                    }
                };
                let Some((h, len)) = pick else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let resp = client.get(format!("{url}/cas/{h}")).send().await.unwrap();
                match resp.status().as_u16() {
                    404 => missing += 1,
                    200 => {
                        let mut body = Vec::with_capacity(len);
                        let mut stream = resp.bytes_stream();
                        while let Some(chunk) = stream.next().await {
                            let chunk = chunk.unwrap_or_else(|e| {
                                panic!("GET {h}: body broken after {} bytes: {e}", body.len())
                            });
                            body.extend_from_slice(&chunk);
                            if r % 2 == 0 {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                        }
                        assert_eq!(body.len(), len, "GET {h}: truncated");
                        assert_eq!(hex(&body), h, "GET {h}: corrupt");
                        whole += 1;
                    }
                    other => panic!("GET {h}: unexpected {other}"),
                }
            }
            (whole, missing)
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    writers_done.store(true, Ordering::SeqCst);
    let (mut whole, mut missing) = (0, 0);
    for r in readers {
        let (w, m) = r.await.unwrap();
        whole += w;
        missing += m;
    }
    stop.store(true, Ordering::SeqCst);
    let (peak, samples) = sampler.join().unwrap();
    let written_bytes = written_bytes.load(Ordering::Relaxed);
    println!(
        "eviction: wrote {written_bytes} bytes into max_size {max_size}; disk usage peak {peak} over {samples} samples (limit + one blob = {}); reads: {whole} whole, {missing} not found",
        max_size + LARGEST as u64
    );
    assert!(written_bytes > 5 * max_size, "the load must force eviction");
    assert!(whole > 0, "no read was served: the readers tested nothing");
    // zstd storage (the default) of incompressible data adds a few bytes
    // of framing per blob.
    assert!(
        peak <= max_size + LARGEST as u64 + 4 * KIB as u64,
        "disk usage peaked at {peak} bytes: over max_size {max_size} by more than one blob ({LARGEST} bytes)"
    );

    let st = server.status_async().await;
    let files = blob_files(&dir);
    let on_disk: u64 = files.iter().map(|f| f.len).sum();
    assert!(st["CurrSize"].as_u64().unwrap() <= max_size, "{st}");
    assert_eq!(st["CurrSize"].as_u64(), Some(on_disk), "{st}");
    assert_eq!(st["NumFiles"].as_u64(), Some(files.len() as u64), "{st}");
    assert_eq!(st["ReservedSize"].as_u64(), Some(0), "{st}");
    assert_eq!(temp_files(&dir), 0);
}
