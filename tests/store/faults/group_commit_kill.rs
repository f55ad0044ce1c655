//! `kill -9` inside a group commit: the index writer has renamed a batch of
//! new blobs into place but not yet acknowledged them. After a restart on
//! the same `dir`, every write acknowledged before the kill is served with
//! its bytes; the blobs of the interrupted batch are either served intact
//! (recovery adopts the files) or absent, never partial; no temp file
//! survives; `/status` counts exactly the files on disk.
//!
//! The server pauses in every group commit (the store's fault-injection
//! variable, `BAZEL_CACHE_FAULT_PAUSE_GROUP_COMMIT_MS`) and logs as it
//! starts to, so the kill lands there every run, not by luck. What this
//! cannot show on a running machine is a power loss: page cache survives
//! `kill -9`. That the flush happens before the rename and before the
//! acknowledgement is the order the writer's code keeps (group_sync.rs).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::helpers::{assert_files_served_and_counted, temp_files, wait_until};
use crate::support::{self, Server, async_client as http_client, hex};

const WRITERS: u64 = 8;
const PAUSE_MS: &str = "1500";

/// Commits the server has paused in so far (lines of its log).
fn paused_commits(s: &Server) -> usize {
    s.output()
        .1
        .lines()
        .filter(|l| l.contains("group commit paused"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_inside_a_group_commit_loses_no_acknowledged_write() {
    let dir = tempfile::Builder::new()
        .prefix("bazel-cache-faults-group-commit.")
        .tempdir()
        .unwrap();
    // Default fsync (true) and zstd storage.
    let args = ["--max_size", "1"];
    let server = Server::start_with_dir_env(
        dir.path(),
        &args,
        &[("BAZEL_CACHE_FAULT_PAUSE_GROUP_COMMIT_MS", PAUSE_MS)],
    );
    let acked: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sent: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (url, acked, sent) = (server.http_url.clone(), acked.clone(), sent.clone());
        writers.push(tokio::spawn(async move {
            let client = http_client();
            for i in 0.. {
                // Sizes from 1 KiB to about 600 KiB, half compressible.
                let len = 1024 + ((w * 7919 + i * 104_729) % (600 * 1024)) as usize;
                let blob = if i % 2 == 0 {
                    support::noise(len, w * 1000 + i)
                } else {
                    support::text(len, w * 1000 + i)
                };
                sent.lock().unwrap().push(blob.clone());
                let put = client
                    .put(format!("{url}/cas/{}", hex(&blob)))
                    .body(blob.clone())
                    .send()
                    .await;
                match put {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().push(blob),
                    // The kill: the connection is gone.
                    _ => return,
                }
            }
        }));
    }

    // Some batches acknowledged, then the kill during the next pause.
    let before = wait_until(
        "two group commits acknowledged writes",
        Duration::from_secs(60),
        || {
            let n = acked.lock().unwrap().len();
            (n >= WRITERS as usize && paused_commits(&server) >= 2, n)
        },
    )
    .await;
    let seen = paused_commits(&server);
    wait_until(
        "the writer pauses in the next group commit",
        Duration::from_secs(60),
        || (paused_commits(&server) > seen, paused_commits(&server)),
    )
    .await;
    let pid = server.pid();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(server);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    println!(
        "killed inside group commit {}: {} writes acknowledged ({before} when the wait began), {} sent",
        seen + 1,
        acked.len(),
        sent.len()
    );

    let server = Server::start_with_dir(dir.path(), &args);
    wait_until(
        "recovery after the kill finishes",
        Duration::from_secs(60),
        || {
            let log = server.output().1;
            (log.contains("recovery finished"), ())
        },
    )
    .await;
    let client = http_client();
    for blob in &acked {
        let r = client
            .get(format!("{}/cas/{}", server.http_url, hex(blob)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged blob lost");
        assert!(
            r.bytes().await.unwrap() == blob[..],
            "acknowledged blob corrupt"
        );
    }
    // Blobs of the interrupted batch: whole or absent.
    let mut adopted = 0;
    for blob in sent.iter().filter(|b| !acked.contains(b)) {
        let r = client
            .get(format!("{}/cas/{}", server.http_url, hex(blob)))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => {
                assert!(
                    r.bytes().await.unwrap() == blob[..],
                    "unacknowledged blob served corrupt"
                );
                adopted += 1;
            }
            404 => {}
            other => panic!("unacknowledged blob: status {other}"),
        }
    }
    println!("{adopted} unacknowledged blobs of the interrupted batch were adopted, intact");
    assert_files_served_and_counted(&server, dir.path()).await;
    assert_eq!(temp_files(dir.path()), 0, "temp files survived the restart");
    server.stop();
}
