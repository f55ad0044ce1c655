//! Limits of the running server: `max_size_hard_limit` (507 /
//! RESOURCE_EXHAUSTED), `max_concurrent_writes` (a slot is held for work
//! on received bytes, not while a body stalls), and a full disk (ENOSPC: a
//! clean 507, nothing partial left, reads go on, writes recover once space
//! returns; it mounts a tmpfs, so it needs root and lives in `privileged`).

use crate::support;
use crate::support::{Server, SlowPut};
use bazel_cache_digest::Hash;
use bazel_remote_apis::google::bytestream::{WriteRequest, byte_stream_client::ByteStreamClient};

fn put(server: &Server, data: &[u8]) -> u16 {
    let url = format!("{}/cas/{}", server.http_url, Hash::of(data).to_hex());
    support::http_request("PUT", &url, Some(data.to_vec())).0
}

fn get(server: &Server, data: &[u8]) -> (u16, Vec<u8>) {
    server.get(&format!("/cas/{}", Hash::of(data).to_hex()))
}

/// A ByteStream write of `data`: the gRPC code.
fn bytestream_write(server: &Server, data: &[u8]) -> tonic::Code {
    let endpoint = server.grpc_endpoint();
    let data = data.to_vec();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut bs = ByteStreamClient::connect(endpoint).await.unwrap();
        let name = format!(
            "uploads/5b3c3b2e-0f3a-4f5e-9a41-3c1d2b6e7f80/blobs/{}/{}",
            Hash::of(&data).to_hex(),
            data.len()
        );
        let chunks: Vec<WriteRequest> = data
            .chunks(64 * 1024)
            .enumerate()
            .map(|(i, c)| WriteRequest {
                resource_name: if i == 0 { name.clone() } else { String::new() },
                write_offset: (i * 64 * 1024) as i64,
                finish_write: (i + 1) * 64 * 1024 >= data.len(),
                data: c.to_vec(),
            })
            .collect();
        match bs.write(futures_util::stream::iter(chunks)).await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        }
    })
}

#[test]
fn the_hard_limit_refuses_writes_that_cannot_fit_and_only_those() {
    // max_size 1 MiB, hard limit 1.5 MiB (GiB values, fractions allowed).
    let server = Server::start(&[
        "--max_size",
        "0.0009765625",
        "--max_size_hard_limit",
        "0.00146484375",
        "--grpc_address",
        "127.0.0.1:0",
        "--storage_mode",
        "uncompressed",
    ]);
    let status = server.status();
    assert_eq!(status["MaxSize"], 1 << 20);
    let first = support::noise(800 << 10, 1);
    let stalled = SlowPut::start(server.http_addr(), &first, 1000);
    assert_eq!(server.status()["ReservedSize"], 800 << 10);

    // 800 KiB more in flight would exceed 1.5 MiB: refused over both protocols.
    let second = support::noise(800 << 10, 2);
    assert_eq!(put(&server, &second), 507);
    assert_eq!(
        bytestream_write(&server, &second),
        tonic::Code::ResourceExhausted
    );
    // A small blob still fits.
    let small = support::noise(100 << 10, 3);
    assert_eq!(put(&server, &small), 200);

    assert_eq!(stalled.finish(), 200);
    assert_eq!(
        put(&server, &second),
        200,
        "room again once the first landed"
    );
    assert_eq!(get(&server, &second).1, second);
    let status = server.status();
    assert_eq!(status["ReservedSize"], 0);
    assert!(status["CurrSize"].as_u64().unwrap() <= 1 << 20, "{status}");
}

/// A write slot is held only while a write works on bytes it has, so a
/// write whose body stalls does not keep the only slot from a second
/// write, which completes meanwhile. (When the slot was taken before the
/// body arrived, this test asserted the opposite: the second write waited
/// for the first.)
#[test]
fn a_stalled_write_does_not_hold_the_only_slot() {
    let server = Server::start(&["--max_concurrent_writes", "1"]);
    let first = support::noise(200 << 10, 4);
    let stalled = SlowPut::start(server.http_addr(), &first, 100);
    let second = support::noise(1000, 5);
    assert_eq!(put(&server, &second), 200);
    assert_eq!(server.status()["NumFiles"], 1);
    assert_eq!(stalled.finish(), 200);
    assert_eq!(server.status()["NumFiles"], 2);
    assert_eq!(get(&server, &first).1, first);
}

/// Tests that need root. The sandbox nextest profile (.config/nextest.toml)
/// leaves out every test in a module named `privileged`.
mod privileged {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::{bytestream_write, get, put};
    use crate::support::{self, Server};

    /// A tmpfs of `size` mounted for the test, unmounted on drop.
    struct Tmpfs {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    impl Tmpfs {
        fn mount(size: &str) -> Tmpfs {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("mnt");
            std::fs::create_dir(&path).unwrap();
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&path)
                .output()
                .expect("run mount");
            assert!(
                out.status.success(),
                "mounting a tmpfs for the disk-full test needs root (CI runs as root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Tmpfs { _dir: dir, path }
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    out.extend(files_under(&p));
                } else {
                    out.push(p);
                }
            }
        }
        out
    }

    #[test]
    fn a_full_disk_gives_507_keeps_serving_reads_and_recovers() {
        let fs = Tmpfs::mount("16m");
        // Room to take away and give back later.
        let filler = fs.path.join("filler");
        std::fs::write(&filler, vec![0u8; 6 << 20]).unwrap();
        let dir = fs.path.join("cache");
        // max_size far above the disk: only the disk can run out.
        let server = Server::start_with_dir(
            &dir,
            &[
                "--max_size",
                "1",
                "--grpc_address",
                "127.0.0.1:0",
                "--storage_mode",
                "uncompressed",
            ],
        );
        let mut stored = Vec::new();
        let mut refused = None;
        for seed in 0..20 {
            let data = support::noise(1 << 20, 100 + seed);
            match put(&server, &data) {
                200 => stored.push(data),
                507 => {
                    refused = Some(data);
                    break;
                }
                other => panic!("PUT on a filling disk answered {other}"),
            }
        }
        let refused = refused.expect("the disk never filled up");
        assert!(!stored.is_empty());
        eprintln!("{} blobs of 1 MiB fit before ENOSPC", stored.len());

        // The refused blob left nothing: no temp file, no entry.
        let tmp: Vec<_> = files_under(&dir.join("tmp"));
        assert!(tmp.is_empty(), "partial files left: {tmp:?}");
        assert_eq!(get(&server, &refused).0, 404);
        assert_eq!(
            bytestream_write(&server, &refused),
            tonic::Code::ResourceExhausted
        );
        assert!(files_under(&dir.join("tmp")).is_empty());
        // Everything acknowledged is still served whole.
        for data in &stored {
            let (code, body) = get(&server, data);
            assert_eq!(code, 200);
            assert!(body == *data);
        }
        assert_eq!(server.status()["NumFiles"], stored.len() as u64);

        // Space comes back: writes work again.
        std::fs::remove_file(&filler).unwrap();
        assert_eq!(put(&server, &refused), 200);
        assert_eq!(get(&server, &refused).1, refused);
        let (status, _, stderr) = server.stop_with_output();
        assert!(status.is_some_and(|s| s.success()), "{stderr}");
    }
}
