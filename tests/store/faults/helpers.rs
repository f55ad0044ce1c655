//! What the fault tests share: ByteStream upload names, bounded waits, the
//! blob and temp files under the server's `dir`, the server
//! process's descriptors and memory from `/proc`, a normal client's round
//! trip (proof that others are still served) and a PUT cut short.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{self, Server, async_client as http_client, hex};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub(super) const KIB: usize = 1024;
pub(super) const MIB: usize = 1024 * KIB;

/// A fresh ByteStream upload name for `data`.
pub(super) fn upload_name(data: &[u8], n: u64) -> String {
    format!(
        "uploads/5a3e0c1d-0000-4000-8000-{n:012x}/blobs/{}/{}",
        hex(data),
        data.len()
    )
}

/// Polls `cond` every 50 ms until it holds; panics with `what` (and the
/// last value `cond` reported) after `limit`. A bound on a wait, not a
/// performance assertion.
pub(super) async fn wait_until<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> (bool, T),
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let (ok, value) = cond();
        if ok {
            return value;
        }
        if Instant::now() > deadline {
            panic!("{what}: still not true after {limit:?} (last seen: {value:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A blob file under `dir/ac` or `dir/cas`.
#[derive(Debug)]
pub(super) struct BlobFile {
    pub(super) kind: &'static str,
    pub(super) hex: String,
    pub(super) path: PathBuf,
    pub(super) len: u64,
}

/// Every blob file under `dir/ac/xx/` and `dir/cas/xx/` (see
/// crates/store/src/disk/layout.rs). Files vanishing during the walk (eviction)
/// are skipped.
pub(super) fn blob_files(dir: &Path) -> Vec<BlobFile> {
    let mut out = Vec::new();
    for kind in ["ac", "cas"] {
        let Ok(shards) = std::fs::read_dir(dir.join(kind)) else {
            continue;
        };
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                let Ok(meta) = file.metadata() else { continue };
                let name = file.file_name().to_string_lossy().into_owned();
                let hex = name.strip_suffix(".zst").unwrap_or(&name).to_string();
                out.push(BlobFile {
                    kind,
                    hex,
                    path: file.path(),
                    len: meta.len(),
                });
            }
        }
    }
    out
}

pub(super) fn temp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Open file descriptors of process `pid`.
pub(super) fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// Resident memory of process `pid`, in KiB.
pub(super) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// A normal client's PUT and GET of a fresh blob, on a new connection:
/// proof that the server still serves others while abuse goes on.
pub(super) async fn normal_round_trip(s: &Server, seed: u64) {
    let blob = support::noise(64 * KIB + seed as usize, seed);
    let url = format!("{}/cas/{}", s.http_url, hex(&blob));
    let client = http_client();
    let r = client.put(&url).body(blob.clone()).send().await;
    let r = r.unwrap_or_else(|e| panic!("a normal PUT failed while under abuse: {e}"));
    assert_eq!(r.status(), 200, "normal PUT under abuse");
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "normal GET under abuse");
    assert_eq!(r.bytes().await.unwrap().to_vec(), blob);
}

/// Waits until the server's descriptor count is back to `baseline` (it may
/// dip below: idle keep-alive connections of earlier clients closing).
pub(super) async fn fds_settle(pid: u32, baseline: usize, what: &str) {
    let n = wait_until(
        &format!("{what}: server file descriptors back to the {baseline} before"),
        Duration::from_secs(60),
        || {
            let n = fd_count(pid);
            (n <= baseline, n)
        },
    )
    .await;
    println!("{what}: server fds {baseline} before, {n} after");
}

/// Sends a PUT head announcing `len` bytes and then `send` bytes of body.
pub(super) async fn partial_put(s: &Server, blob: &[u8], send: usize) -> TcpStream {
    let mut conn = TcpStream::connect(s.http_addr()).await.unwrap();
    let head = format!(
        "PUT /cas/{} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        hex(blob),
        blob.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&blob[..send]).await.unwrap();
    conn
}

/// After a restart on `dir`: the index agrees with the files. Every blob
/// file is served and intact (CAS bytes hash to their name, AC bytes are
/// the file's), including writes that were in flight at a crash, and
/// `/status` counts exactly the files on disk. Returns the files.
pub(super) async fn assert_files_served_and_counted(server: &Server, dir: &Path) -> Vec<BlobFile> {
    let client = crate::support::async_client();
    let files = blob_files(dir);
    let mut served = 0;
    for f in &files {
        let r = client
            .get(format!("{}/{}/{}", server.http_url, f.kind, f.hex))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "{} is on disk but not served",
            f.path.display()
        );
        let body = r.bytes().await.unwrap();
        if f.kind == "cas" {
            assert_eq!(hex(&body), f.hex, "{} served corrupt", f.path.display());
        } else {
            assert_eq!(
                &body[..],
                &std::fs::read(&f.path).unwrap()[..],
                "{}",
                f.path.display()
            );
        }
        served += 1;
    }
    let st = server.status_async().await;
    let on_disk: u64 = files.iter().map(|f| f.len).sum();
    println!(
        "after recovery: {served} blob files served intact; /status NumFiles {} CurrSize {}; on disk {} files, {on_disk} bytes",
        st["NumFiles"],
        st["CurrSize"],
        files.len()
    );
    assert_eq!(
        st["NumFiles"].as_u64(),
        Some(files.len() as u64),
        "NumFiles vs files on disk: {st}"
    );
    assert_eq!(
        st["CurrSize"].as_u64(),
        Some(on_disk),
        "CurrSize vs bytes on disk: {st}"
    );
    files
}
