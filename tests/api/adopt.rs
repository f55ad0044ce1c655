//! Adopting a bazel-remote `dir` in place (disk/adopt.rs): the real server
//! binary started on a directory laid out as bazel-remote 2.x writes it
//! (support/bazel_remote.rs) serves at once, takes the files over in the
//! background without copying them, verifies CAS content before serving
//! it, serves every good blob over HTTP and gRPC, drops corrupt files,
//! leaves files it cannot parse alone, accounts and evicts adopted files,
//! and does not verify them again at the next start.
//!
//! No bazel-remote binary can be installed here (not on crates.io, PyPI,
//! Debian or npm), so the fixture is written from its source instead.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;
use re::action_cache_client::ActionCacheClient;
use tonic::Code;

use crate::support::bazel_remote::{BazelRemoteDir, action_result, day_plus};
use crate::support::{Server, async_client, bytestream_client, hex, noise, text};
use bazel_remote_apis::google::bytestream::ReadRequest;

const HOLD_ENV: &str = "BAZEL_CACHE_FAULT_ADOPT_HOLD_FILE";
/// The fixture blob a client writes before the adoption reaches it.
const WRITTEN_FIRST: &str = "small plain";

/// Polls `/status` until the adoption has finished; its `Adoption` object.
async fn adoption_done(s: &Server) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = s.status_async().await;
        let a = &status["Adoption"];
        if a["Running"] == false {
            return a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "adoption still running: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn n(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric {field} in {v}"))
}

/// Every regular file under `dir` whose name starts with `hash`.
fn files_named(dir: &Path, hash: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().starts_with(hash) {
                found.push(p);
            }
        }
    }
    found
}

async fn get_zstd(s: &Server, path: &str) -> (u16, Option<String>, Vec<u8>) {
    let r = async_client()
        .get(format!("{}{path}", s.http_url))
        .header("Accept-Encoding", "zstd")
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    let enc = r
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    (code, enc, r.bytes().await.unwrap().to_vec())
}

async fn bytestream_read(s: &Server, name: &str) -> Result<Vec<u8>, tonic::Status> {
    bytestream_read_from(s, name, 0).await
}

async fn bytestream_read_from(
    s: &Server,
    name: &str,
    offset: usize,
) -> Result<Vec<u8>, tonic::Status> {
    let mut c = bytestream_client(s.channel().await);
    let mut stream = c
        .read(ReadRequest {
            resource_name: name.to_string(),
            read_offset: offset as i64,
            read_limit: 0,
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(msg) = stream.message().await? {
        data.extend_from_slice(&msg.data);
    }
    Ok(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_a_bazel_remote_dir_while_serving() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("cache");
    let mut br = BazelRemoteDir::create(&dir);

    // Good blobs: casblobs small, multi-chunk and streamed; plain ones.
    let good: Vec<(&str, Vec<u8>)> = vec![
        ("small casblob", text(5000, 1)),
        ("3-chunk casblob", noise(2_500_000, 2)),
        ("streamed casblob", text(300 * 1024, 3)),
        ("small plain", noise(3000, 4)),
        ("streamed plain", text(400 * 1024, 5)),
    ];
    let mut sources = HashMap::new();
    let mut adopted_bytes = 0;
    for (i, (what, data)) in good.iter().enumerate() {
        let t = day_plus(100 + i as u64);
        let path = if what.ends_with("casblob") {
            br.casblob(data, t)
        } else {
            br.plain(data, t)
        };
        let meta = std::fs::metadata(&path).unwrap();
        if *what != WRITTEN_FIRST {
            adopted_bytes += meta.len();
        }
        sources.insert(*what, (path, meta.ino()));
    }
    // Action-cache entries: validated ones, a raw one that is an
    // ActionResult, a raw one that is not.
    let k1 = hex(b"action one");
    let k2 = hex(b"action two");
    let k3 = hex(b"action three");
    let ar1 = action_result(&good[0].1);
    let ar2 = action_result(&good[3].1);
    for (tree, key, body, t) in [
        ("ac.v2", &k1, ar1.clone(), 200),
        ("raw.v2", &k2, ar2.clone(), 201),
    ] {
        let path = br.ac(tree, key, &body, day_plus(t));
        if *key != k1 {
            adopted_bytes += std::fs::metadata(path).unwrap().len();
        }
    }
    let raw_garbage = br.ac(
        "raw.v2",
        &k3,
        b"not an ActionResult \xff\xff",
        day_plus(202),
    );
    // Corrupt: a casblob with a byte of a chunk flipped, a plain file
    // whose bytes are not the ones its name hashes.
    let bad_blob = text(200_000, 6);
    let bad_casblob = br.casblob(&bad_blob, day_plus(1));
    let mut bytes = std::fs::read(&bad_casblob).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x55;
    std::fs::write(&bad_casblob, &bytes).unwrap();
    let bad_plain_blob = noise(5000, 7);
    let bad_plain = br.plain(&bad_plain_blob, day_plus(2));
    let mut bytes = bad_plain_blob.clone();
    bytes[100] ^= 1;
    std::fs::write(&bad_plain, &bytes).unwrap();
    // Names bazel-remote does not write.
    let strange = [
        br.other("cas.v2/ab/notablob", b"x"),
        br.other(
            &format!("cas.v2/12/{}-12-345678901.tmp", hex(b"tmp")),
            b"partial",
        ),
    ];

    let hold = work.path().join("hold");
    std::fs::write(&hold, b"").unwrap();
    let hold_env = hold.display().to_string();
    let s = Server::start_with_dir_env(
        &dir,
        &["--grpc_address", "127.0.0.1:0"],
        &[(HOLD_ENV, &hold_env)],
    );

    // Held before its first file: the server answers and serves anyway.
    let status = s.status_async().await;
    assert_eq!(status["Adoption"]["Running"], true, "{status}");
    assert_eq!(n(&status["Adoption"], "Adopted"), 0, "{status}");
    let h0 = hex(&good[0].1);
    assert_eq!(
        s.get_async(&format!("/cas/{h0}")).await.0,
        404,
        "not adopted yet: a miss"
    );
    let fresh = text(10_000, 99);
    let hf = hex(&fresh);
    let code = crate::support::request(&s, "PUT", &format!("/cas/{hf}"), Some(&fresh)).await;
    assert_eq!(code, 200);
    assert_eq!(
        s.get_async(&format!("/cas/{hf}")).await,
        (200, fresh.clone())
    );
    // Collisions: keys written before their adoption. The writes stand.
    let written = &good.iter().find(|(w, _)| *w == WRITTEN_FIRST).unwrap().1;
    let path = format!("/cas/{}", hex(written));
    assert_eq!(
        crate::support::request(&s, "PUT", &path, Some(written)).await,
        200
    );
    let ar_new = action_result(&fresh);
    let path = format!("/ac/{k1}");
    assert_eq!(
        crate::support::request(&s, "PUT", &path, Some(&ar_new)).await,
        200
    );

    std::fs::remove_file(&hold).unwrap();
    let a = adoption_done(&s).await;
    assert_eq!(n(&a, "Found"), 10, "{a}");
    assert_eq!(n(&a, "Adopted"), 5, "{a}");
    assert_eq!(n(&a, "AdoptedBytes"), adopted_bytes, "{a}");
    assert_eq!(n(&a, "Corrupt"), 2, "{a}");
    assert_eq!(n(&a, "LeftAlone"), 3, "{a}");
    assert_eq!(n(&a, "Duplicates"), 2, "{a}");
    assert_eq!(n(&a, "TooOld"), 0, "{a}");
    let status = s.status_async().await;
    assert_eq!(n(&status, "NumFiles"), 8, "{status}");
    assert!(n(&status, "CurrSize") > adopted_bytes, "{status}");

    for (what, data) in &good {
        let h = hex(data);
        assert_eq!(
            s.get_async(&format!("/cas/{h}")).await,
            (200, data.clone()),
            "{what}"
        );
        let (code, enc, body) = get_zstd(&s, &format!("/cas/{h}")).await;
        assert_eq!(code, 200, "{what}");
        let plain = match enc.as_deref() {
            Some("zstd") => zstd::decode_all(&body[..]).unwrap(),
            None => body,
            other => panic!("{what}: content-encoding {other:?}"),
        };
        assert_eq!(plain, *data, "{what} with Accept-Encoding: zstd");
        let blobs = format!("blobs/{h}/{}", data.len());
        assert_eq!(bytestream_read(&s, &blobs).await.unwrap(), *data, "{what}");
        let from = data.len() * 3 / 5;
        let tail = bytestream_read_from(&s, &blobs, from).await.unwrap();
        assert_eq!(tail, data[from..], "{what} from {from}");
        let z = format!("compressed-blobs/zstd/{h}/{}", data.len());
        let frames = bytestream_read(&s, &z).await.unwrap();
        assert_eq!(
            zstd::decode_all(&frames[..]).unwrap(),
            *data,
            "{what} as zstd"
        );
        // Moved, not copied: the same inode, now in our layout (the
        // one written first is ours; its bazel-remote copy is deleted).
        let (source, ino) = &sources[what];
        assert!(!source.exists(), "{what}: {} still there", source.display());
        let now_at = files_named(&dir.join("cas"), &h);
        assert_eq!(now_at.len(), 1, "{what}: {now_at:?}");
        let now_ino = std::fs::metadata(&now_at[0]).unwrap().ino();
        assert_eq!(now_ino == *ino, *what != WRITTEN_FIRST, "{what}");
    }

    // The action cache, validated against the adopted CAS, both ways.
    assert_eq!(
        s.get_async(&format!("/ac/{k1}")).await,
        (200, ar_new.clone())
    );
    assert_eq!(s.get_async(&format!("/ac/{k2}")).await, (200, ar2.clone()));
    assert_eq!(s.get_async(&format!("/ac/{k3}")).await.0, 404);
    let mut ac = ActionCacheClient::new(s.channel().await);
    let got = ac
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(re::Digest {
                hash: k1.clone(),
                size_bytes: 10,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.encode_to_vec(), ar_new);

    // Corrupt files: never served, gone from disk.
    for (what, data, path) in [
        ("corrupt casblob", &bad_blob, &bad_casblob),
        ("corrupt plain", &bad_plain_blob, &bad_plain),
    ] {
        let h = hex(data);
        assert_eq!(s.get_async(&format!("/cas/{h}")).await.0, 404, "{what}");
        let err = bytestream_read(&s, &format!("blobs/{h}/{}", data.len()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{what}: {err:?}");
        assert!(!path.exists(), "{what} not removed");
        assert!(files_named(&dir, &h).is_empty(), "{what} somewhere");
    }
    // Left alone.
    for path in strange.iter().chain([&raw_garbage]) {
        assert!(path.exists(), "{} was touched", path.display());
    }
    let metrics = String::from_utf8(s.get_async("/metrics").await.1).unwrap();
    assert!(
        metrics.contains("bazel_cache_adopt_files_total{outcome=\"adopted\"} 5"),
        "{metrics}"
    );

    // A restart finds them indexed: nothing verified again but the file
    // it left alone and can still parse.
    tokio::task::spawn_blocking(move || s.stop()).await.unwrap();
    let s = Server::start_with_dir(&dir, &["--grpc_address", "127.0.0.1:0"]);
    let a = adoption_done(&s).await;
    assert_eq!(n(&a, "Found"), 1, "only the raw entry left alone: {a}");
    assert_eq!(n(&a, "Adopted"), 0, "{a}");
    assert_eq!(n(&a, "Corrupt"), 0, "{a}");
    assert_eq!(n(&a, "LeftAlone"), 3, "{a}");
    assert_eq!(n(&s.status_async().await, "NumFiles"), 8);
    for (what, data) in &good {
        assert_eq!(
            s.get_async(&format!("/cas/{}", hex(data))).await,
            (200, data.clone()),
            "{what} after restart"
        );
    }
    assert_eq!(s.get_async(&format!("/ac/{k1}")).await, (200, ar_new));
}

/// With a small `max_size`, only the newest adopted files that fit are
/// kept (the older ones are deleted unread, as eviction would), and the
/// adopted files are then evicted like any others, in the LRU order their
/// last use (atime) gave them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_covers_adopted_files_in_their_lru_order() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("cache");
    let mut br = BazelRemoteDir::create(&dir);
    const SIZE: usize = 40 * 1024;
    // Written newest first, so that neither creation nor listing (hash)
    // order is LRU order.
    let blobs: Vec<Vec<u8>> = (0..10).map(|i| noise(SIZE, 100 + i)).collect();
    for (i, data) in blobs.iter().enumerate().rev() {
        br.plain(data, day_plus(i as u64 * 60));
    }
    // 0.0002 GiB = 214748 bytes: five of the ten fit.
    let s = Server::start_with_dir(&dir, &["--max_size", "0.0002"]);
    let a = adoption_done(&s).await;
    assert_eq!(n(&a, "Found"), 10, "{a}");
    assert_eq!(n(&a, "Adopted"), 5, "{a}");
    assert_eq!(n(&a, "TooOld"), 5, "{a}");
    let status = s.status_async().await;
    assert_eq!(n(&status, "NumFiles"), 5, "{status}");
    assert_eq!(n(&status, "CurrSize"), 5 * SIZE as u64, "{status}");
    for (i, data) in blobs.iter().enumerate().take(5) {
        let h = hex(data);
        assert!(files_named(&dir, &h).is_empty(), "blob {i} left on disk");
    }

    // A new write takes the room of the least recently used adopted
    // file, blob 5, and nothing else. (Nothing was read: a read would
    // make its blob the most recent.)
    let fresh = noise(SIZE, 999);
    let put = format!("/cas/{}", hex(&fresh));
    let code = crate::support::request(&s, "PUT", &put, Some(&fresh)).await;
    assert_eq!(code, 200);
    let status = s.status_async().await;
    assert_eq!(n(&status, "NumFiles"), 5, "{status}");
    assert!(files_named(&dir, &hex(&blobs[5])).is_empty(), "blob 5 kept");
    for (i, data) in blobs.iter().enumerate() {
        let (code, body) = s.get_async(&format!("/cas/{}", hex(data))).await;
        if i <= 5 {
            assert_eq!(code, 404, "blob {i}");
        } else {
            assert_eq!((code, body), (200, data.clone()), "blob {i}");
        }
    }
    assert_eq!(s.get_async(&put).await, (200, fresh));
}
