//! `kill -9` in the middle of a 16-way write load (HTTP and ByteStream),
//! then a restart on the same `dir`: no acknowledged write is lost, every
//! blob served hashes to its name, the index agrees with the files.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::helpers::{
    KIB, MIB, assert_files_served_and_counted, blob_files, temp_files, upload_name, wait_until,
};
use crate::support::{
    self, Server, async_client as http_client, bytestream_client as bytestream, hex, text,
};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::WriteRequest;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use prost::Message;
use tonic::transport::Channel;

/// One ByteStream Write of `data` in 64 KiB messages.
async fn bytestream_write(
    c: &mut ByteStreamClient<Channel>,
    name: &str,
    data: &[u8],
) -> Result<i64, tonic::Status> {
    let chunk = 64 * KIB;
    let mut reqs: Vec<WriteRequest> = data
        .chunks(chunk)
        .enumerate()
        .map(|(i, c)| WriteRequest {
            resource_name: if i == 0 { name.into() } else { String::new() },
            write_offset: (i * chunk) as i64,
            finish_write: false,
            data: c.to_vec(),
        })
        .collect();
    reqs.last_mut().unwrap().finish_write = true;
    c.write(futures_util::stream::iter(reqs))
        .await
        .map(|r| r.into_inner().committed_size)
}

/// A write the server acknowledged (HTTP 200, gRPC OK) before the kill.
#[derive(Debug, Clone)]
enum Acked {
    Cas { hex: String, len: usize },
    Ac { key: String, body: Vec<u8> },
}

/// The blob worker `w` writes in its `i`-th iteration: sizes cycle through
/// small, medium, over 1 MiB and over 3 MiB; half compressible.
fn load_blob(w: u64, i: u64) -> Vec<u8> {
    const SIZES: [usize; 6] = [KIB, 37 * KIB, 1536 * KIB + 5, 300 * KIB, 3 * MIB + 17, 0];
    let seed = w * 1_000_000 + i + 1;
    let len = match SIZES[(i as usize + w as usize) % SIZES.len()] {
        0 => 100 + (seed as usize % 4000),
        n => n,
    };
    if (i + w).is_multiple_of(2) {
        support::noise(len, seed)
    } else {
        text(len, seed)
    }
}

/// One HTTP writer: CAS blobs, and every fourth round an ActionResult
/// that references the writer's last acknowledged blob.
async fn http_writer(
    w: u64,
    url: String,
    acked: Arc<Mutex<Vec<Acked>>>,
    killed: Arc<AtomicBool>,
    early_errors: Arc<Mutex<Vec<String>>>,
) {
    let client = http_client();
    let mut last: Option<(String, usize)> = None;
    for i in 0.. {
        if killed.load(Ordering::SeqCst) {
            return;
        }
        let (path, body, record) = match (&last, i % 4) {
            (Some((h, len)), 3) => {
                let ar = re::ActionResult {
                    output_files: vec![re::OutputFile {
                        path: format!("out/{w}/{i}"),
                        digest: Some(re::Digest {
                            hash: h.clone(),
                            size_bytes: *len as i64,
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let key = hex(format!("action {w} {i}").as_bytes());
                let body = ar.encode_to_vec();
                let record = Acked::Ac {
                    key: key.clone(),
                    body: body.clone(),
                };
                (format!("/ac/{key}"), body, record)
            }
            _ => {
                let blob = load_blob(w, i);
                let record = Acked::Cas {
                    hex: hex(&blob),
                    len: blob.len(),
                };
                (format!("/cas/{}", hex(&blob)), blob, record)
            }
        };
        match client.put(format!("{url}{path}")).body(body).send().await {
            Ok(r) if r.status() == 200 => {
                if let Acked::Cas { hex, len } = &record {
                    last = Some((hex.clone(), *len));
                }
                acked.lock().unwrap().push(record);
            }
            other => {
                if !killed.load(Ordering::SeqCst) {
                    early_errors
                        .lock()
                        .unwrap()
                        .push(format!("HTTP writer {w}: {path}: {other:?}"));
                }
                return;
            }
        }
    }
}

/// One ByteStream writer.
async fn grpc_writer(
    w: u64,
    channel: Channel,
    acked: Arc<Mutex<Vec<Acked>>>,
    killed: Arc<AtomicBool>,
    early_errors: Arc<Mutex<Vec<String>>>,
) {
    let mut client = bytestream(channel);
    for i in 0.. {
        if killed.load(Ordering::SeqCst) {
            return;
        }
        let blob = load_blob(w, i);
        let name = upload_name(&blob, w * 1_000_000 + i);
        match bytestream_write(&mut client, &name, &blob).await {
            Ok(n) if n == blob.len() as i64 => acked.lock().unwrap().push(Acked::Cas {
                hex: hex(&blob),
                len: blob.len(),
            }),
            other => {
                if !killed.load(Ordering::SeqCst) {
                    early_errors
                        .lock()
                        .unwrap()
                        .push(format!("ByteStream writer {w}: {name}: {other:?}"));
                }
                return;
            }
        }
    }
}

/// Waits for the background reconciliation that follows an unclean stop
/// (crates/store/src/disk/recovery.rs). `/status` does not report it, so this
/// watches the log line the recovery thread writes when it ends.
async fn wait_for_recovery(s: &Server) -> String {
    wait_until(
        "the server logs `recovery finished` after an unclean stop",
        Duration::from_secs(120),
        || {
            let (_, err) = s.output();
            let line = err
                .lines()
                .find(|l| l.contains("recovery finished") || l.contains("recovery failed"))
                .map(str::to_string);
            (line.is_some(), line)
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_concurrent_writes_loses_no_acknowledged_write() {
    const HTTP_WRITERS: u64 = 13;
    const GRPC_WRITERS: u64 = 3;
    /// Acknowledged writes to wait for before the kill.
    const ACKS_BEFORE_KILL: usize = 150;
    let dir = tempfile::Builder::new()
        .prefix("bazel-cache-faults-kill.")
        .tempdir()
        .unwrap();
    // Default fsync (true) and storage mode (zstd): what users run.
    let args = ["--grpc_address", "127.0.0.1:0", "--max_size", "4"];
    let server = Server::start_with_dir(dir.path(), &args);

    let acked = Arc::new(Mutex::new(Vec::new()));
    let killed = Arc::new(AtomicBool::new(false));
    let early_errors = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..HTTP_WRITERS {
        workers.push(tokio::spawn(http_writer(
            w,
            server.http_url.clone(),
            acked.clone(),
            killed.clone(),
            early_errors.clone(),
        )));
    }
    for w in HTTP_WRITERS..HTTP_WRITERS + GRPC_WRITERS {
        // One connection per writer, as separate Bazel clients would have.
        let channel = server.channel().await;
        workers.push(tokio::spawn(grpc_writer(
            w,
            channel,
            acked.clone(),
            killed.clone(),
            early_errors.clone(),
        )));
    }

    wait_until(
        "writers acknowledged enough writes",
        Duration::from_secs(120),
        || {
            let n = acked.lock().unwrap().len();
            let errors = early_errors.lock().unwrap().clone();
            assert!(
                errors.is_empty(),
                "writes failed before the kill: {errors:#?}"
            );
            (n >= ACKS_BEFORE_KILL, n)
        },
    )
    .await;
    // SIGKILL with all 16 writers mid-request. Acks that arrive from now
    // on were sent before the process died, so they count too.
    let pid = server.pid();
    killed.store(true, Ordering::SeqCst);
    kill_now(pid);
    drop(server);
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let errors = early_errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "writes failed before the kill: {errors:#?}"
    );
    let files_at_kill = blob_files(dir.path()).len();
    println!(
        "killed with {} acknowledged writes, {files_at_kill} blob files and {} temp files on disk",
        acked.len(),
        temp_files(dir.path())
    );

    let started = Instant::now();
    let server = Server::start_with_dir(dir.path(), &args);
    println!(
        "restart after kill -9: serving after {:?} (recovery runs in the background)",
        started.elapsed()
    );
    let recovery = wait_for_recovery(&server).await;
    println!(
        "recovery done {:?} after the restart: {recovery}",
        started.elapsed()
    );
    assert!(
        recovery.contains("ran: true"),
        "the restart after kill -9 must reconcile: {recovery}"
    );

    // No acknowledged write is lost, and each is served intact.
    let client = http_client();
    for a in &acked {
        match a {
            Acked::Cas { hex: h, len } => {
                let r = client
                    .get(format!("{}/cas/{h}", server.http_url))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    r.status(),
                    200,
                    "acknowledged CAS blob {h} ({len} bytes) lost"
                );
                let body = r.bytes().await.unwrap();
                assert_eq!(body.len(), *len, "CAS blob {h}: wrong length");
                assert_eq!(hex(&body), *h, "CAS blob {h}: corrupt");
            }
            Acked::Ac { key, body } => {
                let r = client
                    .get(format!("{}/ac/{key}", server.http_url))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "acknowledged AC entry {key} lost");
                assert_eq!(&r.bytes().await.unwrap()[..], &body[..], "AC entry {key}");
            }
        }
    }

    let files = assert_files_served_and_counted(&server, dir.path()).await;
    assert_eq!(temp_files(dir.path()), 0, "temp files survived the restart");
    let distinct: HashSet<&str> = acked
        .iter()
        .map(|a| match a {
            Acked::Cas { hex, .. } => hex.as_str(),
            Acked::Ac { key, .. } => key.as_str(),
        })
        .collect();
    assert!(
        files.len() >= distinct.len(),
        "fewer files than acknowledged writes"
    );
    server.stop();
}

/// SIGKILL by pid, while the writers run (`Server`'s Drop would SIGKILL
/// too, but it also waits for the process, which is not needed here).
fn kill_now(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid}");
}
