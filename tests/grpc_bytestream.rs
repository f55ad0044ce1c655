//! ByteStream (Read, Write, QueryWriteStatus) against the real server binary:
//! chunked round trips, offsets and limits, zstd both ways, verification
//! failures that store nothing, malformed resource names, resumable and
//! already-present uploads, and interoperation with the HTTP front end.

mod common;

use std::time::Duration;

use bazel_cache::digest::Hash;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use common::Server;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Status};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

type Client = ByteStreamClient<Channel>;

fn start(extra: &[&str]) -> Server {
    let mut args = vec!["--grpc_address", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

async fn client(s: &Server) -> Client {
    let channel = Channel::from_shared(s.grpc_endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    ByteStreamClient::new(channel)
        .max_decoding_message_size(64 * MIB)
        .max_encoding_message_size(64 * MIB)
}

/// Compressible bytes.
fn text(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b"the quick brown fox "[(i + seed as usize) % 20])
        .collect()
}

fn hex(data: &[u8]) -> String {
    Hash::of(data).to_hex()
}

fn read_name(data: &[u8]) -> String {
    format!("blobs/{}/{}", hex(data), data.len())
}

fn zstd_read_name(data: &[u8]) -> String {
    format!("compressed-blobs/zstd/{}/{}", hex(data), data.len())
}

/// A fresh upload name per call (the uuid is not validated; unique is enough).
fn upload_name(data: &[u8], compressed: bool) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let uuid = format!(
        "3f2a1b4c-0000-4000-8000-{:012x}",
        n + std::process::id() as u64 * 1000
    );
    let kind = if compressed {
        "compressed-blobs/zstd"
    } else {
        "blobs"
    };
    format!(
        "instance/uploads/{uuid}/{kind}/{}/{}",
        hex(data),
        data.len()
    )
}

/// WriteRequests carrying `bytes` (which starts at `offset` of the upload)
/// in `chunk`-sized messages; the name on the first only; `finish` on the last.
fn requests(
    name: &str,
    bytes: &[u8],
    offset: usize,
    chunk: usize,
    finish: bool,
) -> Vec<WriteRequest> {
    let mut out: Vec<WriteRequest> = bytes
        .chunks(chunk.max(1))
        .enumerate()
        .map(|(i, c)| WriteRequest {
            resource_name: String::new(),
            write_offset: (offset + i * chunk) as i64,
            finish_write: false,
            data: c.to_vec(),
        })
        .collect();
    if out.is_empty() {
        out.push(WriteRequest {
            write_offset: offset as i64,
            ..Default::default()
        });
    }
    out[0].resource_name = name.to_string();
    if finish && let Some(last) = out.last_mut() {
        last.finish_write = true;
    }
    out
}

async fn send(c: &mut Client, reqs: Vec<WriteRequest>) -> Result<i64, Status> {
    c.write(futures_util::stream::iter(reqs))
        .await
        .map(|r| r.into_inner().committed_size)
}

/// Uploads `bytes` under `name` in one stream ending with finish_write.
async fn write(c: &mut Client, name: &str, bytes: &[u8], chunk: usize) -> Result<i64, Status> {
    send(c, requests(name, bytes, 0, chunk, true)).await
}

/// Reads a resource; returns its bytes and the size of each message.
async fn read_at(
    c: &mut Client,
    name: &str,
    offset: i64,
    limit: i64,
) -> Result<(Vec<u8>, Vec<usize>), Status> {
    let mut stream = c
        .read(ReadRequest {
            resource_name: name.to_string(),
            read_offset: offset,
            read_limit: limit,
        })
        .await?
        .into_inner();
    let (mut data, mut sizes) = (Vec::new(), Vec::new());
    while let Some(msg) = stream.message().await? {
        sizes.push(msg.data.len());
        data.extend_from_slice(&msg.data);
    }
    Ok((data, sizes))
}

async fn read(c: &mut Client, name: &str) -> Result<Vec<u8>, Status> {
    read_at(c, name, 0, 0).await.map(|(d, _)| d)
}

async fn query(c: &mut Client, name: &str) -> Result<(i64, bool), Status> {
    c.query_write_status(QueryWriteStatusRequest {
        resource_name: name.to_string(),
    })
    .await
    .map(|r| {
        let r = r.into_inner();
        (r.committed_size, r.complete)
    })
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, what: &str) -> Status {
    match result {
        Err(s) if s.code() == code => s,
        other => panic!("{what}: expected {code:?}, got {other:?}"),
    }
}

async fn num_files(s: &Server) -> u64 {
    let body = reqwest::get(format!("{}/status", s.http_url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    status["NumFiles"].as_u64().unwrap()
}

/// Writes in progress in the server's `--dir` (none once uploads end).
fn temp_files(s: &Server) -> usize {
    std::fs::read_dir(s.dir.join("tmp")).unwrap().count()
}

/// A Write stream the test feeds by hand, running as its own task.
struct OpenWrite {
    tx: Option<mpsc::Sender<WriteRequest>>,
    call: tokio::task::JoinHandle<Result<i64, Status>>,
}

impl OpenWrite {
    fn start(c: &Client) -> OpenWrite {
        let (tx, rx) = mpsc::channel::<WriteRequest>(64);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let mut c = c.clone();
        let call =
            tokio::spawn(
                async move { c.write(stream).await.map(|r| r.into_inner().committed_size) },
            );
        OpenWrite { tx: Some(tx), call }
    }

    async fn send(&self, reqs: Vec<WriteRequest>) {
        for r in reqs {
            self.tx.as_ref().unwrap().send(r).await.unwrap();
        }
    }

    /// Half-closes the stream and returns the server's answer.
    async fn close(mut self) -> Result<i64, Status> {
        self.tx = None;
        tokio::time::timeout(Duration::from_secs(30), self.call)
            .await
            .expect("Write answered")
            .unwrap()
    }
}

/// Polls QueryWriteStatus until it reports `committed` (the server receives
/// asynchronously from the client's sends).
async fn wait_committed(c: &mut Client, name: &str, committed: i64) {
    for _ in 0..500 {
        if let Ok((n, false)) = query(c, name).await
            && n == committed
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{name}: committed_size never reached {committed}: {:?}",
        query(c, name).await
    );
}

#[tokio::test]
async fn multi_chunk_round_trip() {
    let s = start(&[]);
    let mut c = client(&s).await;
    let data = common::noise(5 * MIB, 1);
    let name = upload_name(&data, false);
    assert_eq!(
        write(&mut c, &name, &data, 64 * KIB).await.unwrap(),
        data.len() as i64
    );
    // The finished upload is complete; the blob is readable in chunks.
    assert_eq!(
        query(&mut c, &name).await.unwrap(),
        (data.len() as i64, true)
    );
    let (back, sizes) = read_at(&mut c, &read_name(&data), 0, 0).await.unwrap();
    assert!(back == data, "read back differs");
    assert!(sizes.len() > 1, "{sizes:?}");
    let (last, full) = sizes.split_last().unwrap();
    assert!(
        full.iter().all(|n| (64 * KIB..=MIB).contains(n)),
        "{sizes:?}"
    );
    assert!(*last > 0 && *last <= MIB, "{sizes:?}");
    // Instance names don't matter for the CAS.
    assert!(
        read(&mut c, &format!("some/instance/{}", read_name(&data)))
            .await
            .unwrap()
            == data
    );
}

#[tokio::test]
async fn read_offsets_and_limits() {
    let s = start(&[]);
    let mut c = client(&s).await;
    let data = common::noise(300 * KIB + 7, 2);
    let name = read_name(&data);
    write(&mut c, &upload_name(&data, false), &data, 100 * KIB)
        .await
        .unwrap();
    let len = data.len() as i64;
    for (offset, limit) in [
        (0, 0),
        (1, 0),
        (1000, 10),
        (0, 1),
        (len - 1, 0),
        (len, 0),
        (5, len),
        (300 * KIB as i64, 3),
    ] {
        let (got, _) = read_at(&mut c, &name, offset, limit).await.unwrap();
        let start = offset as usize;
        let end = if limit == 0 {
            data.len()
        } else {
            (start + limit as usize).min(data.len())
        };
        assert!(
            got == data[start..end],
            "offset {offset} limit {limit}: {} bytes",
            got.len()
        );
    }
    assert_code(
        read_at(&mut c, &name, len + 1, 0).await,
        Code::OutOfRange,
        "offset past end",
    );
    assert_code(
        read_at(&mut c, &name, -1, 0).await,
        Code::InvalidArgument,
        "negative offset",
    );
    assert_code(
        read_at(&mut c, &name, 0, -1).await,
        Code::InvalidArgument,
        "negative limit",
    );

    // Missing, and present under another size: NOT_FOUND.
    let other = common::noise(10, 3);
    assert_code(
        read(&mut c, &read_name(&other)).await,
        Code::NotFound,
        "missing",
    );
    let wrong_size = format!("blobs/{}/{}", hex(&data), data.len() + 1);
    assert_code(
        read(&mut c, &wrong_size).await,
        Code::NotFound,
        "wrong size",
    );

    // The empty blob is always there.
    assert!(
        read(&mut c, &format!("blobs/{EMPTY_HEX}/0"))
            .await
            .unwrap()
            .is_empty()
    );
    let z = read(&mut c, &format!("compressed-blobs/zstd/{EMPTY_HEX}/0"))
        .await
        .unwrap();
    assert!(zstd::decode_all(&z[..]).unwrap().is_empty());
    assert_code(
        read_at(&mut c, &format!("blobs/{EMPTY_HEX}/0"), 1, 0).await,
        Code::OutOfRange,
        "offset past the empty blob",
    );
}

/// zstd both ways, in both storage modes (stored compressed: sent as stored;
/// stored plain: compressed on the fly).
#[tokio::test]
async fn zstd_round_trips() {
    for mode in ["zstd", "uncompressed"] {
        let s = start(&["--storage_mode", mode]);
        let mut c = client(&s).await;

        // Written compressed, read plain and compressed.
        let a = text(3 * MIB + 11, 1);
        let za = zstd::encode_all(&a[..], 3).unwrap();
        let name = upload_name(&a, true);
        let committed = write(&mut c, &name, &za, 64 * KIB).await.unwrap();
        assert_eq!(
            committed,
            za.len() as i64,
            "{mode}: compressed bytes committed"
        );
        assert!(read(&mut c, &read_name(&a)).await.unwrap() == a, "{mode}");
        let z = read(&mut c, &zstd_read_name(&a)).await.unwrap();
        assert!(zstd::decode_all(&z[..]).unwrap() == a, "{mode}");

        // Written plain, read compressed (whole and from an offset).
        let b = text(2 * MIB + 5, 7);
        write(&mut c, &upload_name(&b, false), &b, 256 * KIB)
            .await
            .unwrap();
        let (z, _) = read_at(&mut c, &zstd_read_name(&b), 0, 0).await.unwrap();
        assert!(
            z.len() < b.len() / 4,
            "{mode}: {} bytes is not compressed",
            z.len()
        );
        assert!(zstd::decode_all(&z[..]).unwrap() == b, "{mode}");
        let offset = MIB + 3;
        let (z, _) = read_at(&mut c, &zstd_read_name(&b), offset as i64, 0)
            .await
            .unwrap();
        assert!(
            zstd::decode_all(&z[..]).unwrap() == b[offset..],
            "{mode}: offset read"
        );

        assert_code(
            read_at(&mut c, &zstd_read_name(&b), 0, 10).await,
            Code::InvalidArgument,
            "compressed read with read_limit",
        );
        assert_code(
            read_at(&mut c, &zstd_read_name(&b), b.len() as i64 + 1, 0).await,
            Code::OutOfRange,
            "compressed read past the end",
        );
    }
}

#[tokio::test]
async fn failed_verification_stores_nothing() {
    let s = start(&[]);
    let mut c = client(&s).await;
    let data = common::noise(MIB + 17, 4);
    let before = num_files(&s).await;
    let h = hex(&data);
    let n = data.len();
    let cases = [
        // The hash of other bytes.
        (
            format!("uploads/u1/blobs/{}/{n}", hex(b"other")),
            "digest mismatch",
        ),
        // Fewer bytes sent than declared.
        (format!("uploads/u2/blobs/{h}/{}", n + 1), "size too large"),
        // More bytes sent than declared.
        (format!("uploads/u3/blobs/{h}/{}", n - 1), "size too small"),
    ];
    for (name, what) in &cases {
        let e = assert_code(
            write(&mut c, name, &data, 64 * KIB).await,
            Code::InvalidArgument,
            what,
        );
        assert!(e.message().contains("mismatch"), "{what}: {}", e.message());
        // Failed for good: nothing to resume.
        assert_code(query(&mut c, name).await, Code::NotFound, what);
    }
    // Compressed: bad hash, and bytes that are not zstd at all.
    let z = zstd::encode_all(&data[..], 1).unwrap();
    let name = format!("uploads/u4/compressed-blobs/zstd/{}/{n}", hex(b"other"));
    assert_code(
        write(&mut c, &name, &z, 64 * KIB).await,
        Code::InvalidArgument,
        "zstd digest mismatch",
    );
    let name = format!("uploads/u5/compressed-blobs/zstd/{h}/{n}");
    assert_code(
        write(&mut c, &name, &data, 64 * KIB).await,
        Code::InvalidArgument,
        "not zstd",
    );

    assert_code(
        read(&mut c, &read_name(&data)).await,
        Code::NotFound,
        "nothing stored",
    );
    assert_eq!(num_files(&s).await, before);
    assert_eq!(temp_files(&s), 0, "temp files left");
}

#[tokio::test]
async fn write_protocol_errors() {
    let s = start(&["--max_blob_size", "1000"]);
    let mut c = client(&s).await;
    let data = common::noise(900, 5);

    // A wrong write_offset mid-stream.
    let name = upload_name(&data, false);
    let mut reqs = requests(&name, &data, 0, 100, true);
    reqs[3].write_offset += 1;
    assert_code(
        send(&mut c, reqs).await,
        Code::InvalidArgument,
        "wrong write_offset",
    );
    // A different resource name on a later request.
    let mut reqs = requests(&upload_name(&data, false), &data, 0, 100, true);
    reqs[2].resource_name = upload_name(&data, false);
    assert_code(
        send(&mut c, reqs).await,
        Code::InvalidArgument,
        "name changed",
    );
    // A first request without a name; a negative offset; no request at all.
    let mut reqs = requests("", &data, 0, 100, true);
    reqs[0].resource_name.clear();
    assert_code(send(&mut c, reqs).await, Code::InvalidArgument, "no name");
    let mut reqs = requests(&upload_name(&data, false), &data, 0, 100, true);
    reqs[0].write_offset = -1;
    assert_code(
        send(&mut c, reqs).await,
        Code::InvalidArgument,
        "negative offset",
    );
    assert_code(
        send(&mut c, vec![]).await,
        Code::InvalidArgument,
        "empty stream",
    );
    // Data after finish_write.
    let mut reqs = requests(&upload_name(&data, false), &data, 0, 450, true);
    reqs.push(WriteRequest {
        write_offset: data.len() as i64,
        data: vec![1, 2, 3],
        ..Default::default()
    });
    let e = assert_code(
        send(&mut c, reqs).await,
        Code::InvalidArgument,
        "data after finish_write",
    );
    assert!(
        e.message().contains("after finish_write"),
        "{}",
        e.message()
    );
    // Resuming an upload that does not exist.
    let name = upload_name(&data, false);
    assert_code(
        send(&mut c, requests(&name, &data[100..], 100, 100, true)).await,
        Code::InvalidArgument,
        "resume of unknown upload",
    );
    assert_code(query(&mut c, &name).await, Code::NotFound, "unknown upload");

    // Endless compressed input that decodes to nothing (skippable frames).
    let small = b"0123456789";
    let mut z = zstd::encode_all(&small[..], 1).unwrap();
    for _ in 0..3 {
        z.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        z.extend_from_slice(&(MIB as u32).to_le_bytes());
        z.extend(std::iter::repeat_n(0u8, MIB));
    }
    let e = assert_code(
        write(&mut c, &upload_name(small, true), &z, 64 * KIB).await,
        Code::InvalidArgument,
        "compressed bytes without end",
    );
    assert!(e.message().contains("compressed bytes"), "{}", e.message());

    // Over max_blob_size.
    let big = common::noise(1001, 6);
    let e = assert_code(
        write(&mut c, &upload_name(&big, false), &big, 500).await,
        Code::ResourceExhausted,
        "too large",
    );
    assert!(e.message().contains("max_blob_size"), "{}", e.message());
}

#[tokio::test]
async fn malformed_resource_names() {
    let s = start(&[]);
    let mut c = client(&s).await;
    let h = hex(b"x");
    let reads = [
        format!("blobs/{}/1", h.to_uppercase()),
        format!("blobs/{}/1", &h[..60]),
        format!("blobs/blake3/{h}/1"),
        format!("compressed-blobs/gzip/{h}/1"),
        format!("blobs/{h}"),
        format!("blobs/{h}/-1"),
        format!("blobs/{h}/1/extra"),
        "garbage".to_string(),
        String::new(),
        format!("uploads/u/blobs/{h}/1"),
    ];
    for name in &reads {
        let e = assert_code(read(&mut c, name).await, Code::InvalidArgument, name);
        assert!(
            e.message().contains(&format!("{name:?}")),
            "{name}: {}",
            e.message()
        );
    }
    let e = assert_code(
        read(&mut c, &reads[2]).await,
        Code::InvalidArgument,
        "blake3",
    );
    assert!(e.message().contains("blake3"), "{}", e.message());
    let e = assert_code(read(&mut c, &reads[3]).await, Code::InvalidArgument, "gzip");
    assert!(e.message().contains("gzip"), "{}", e.message());
    // `sha256/` may be given, though clients must omit it.
    assert_eq!(
        read(&mut c, &format!("blobs/sha256/{EMPTY_HEX}/0"))
            .await
            .unwrap(),
        b""
    );

    let writes = [
        format!("uploads/u/blobs/{}/1", h.to_uppercase()),
        format!("uploads/u/blobs/blake3/{h}/1"),
        format!("uploads/u/compressed-blobs/gzip/{h}/1"),
        format!("uploads/u/blobs/{h}"),
        format!("uploads//blobs/{h}/1"),
        format!("blobs/{h}/1"),
        "garbage".to_string(),
    ];
    for name in &writes {
        let e = assert_code(
            write(&mut c, name, b"x", 1).await,
            Code::InvalidArgument,
            name,
        );
        assert!(
            e.message().contains(&format!("{name:?}")),
            "{name}: {}",
            e.message()
        );
        assert_code(query(&mut c, name).await, Code::InvalidArgument, name);
    }
    // `sha256/` and trailing metadata are accepted on uploads.
    let name = format!("uploads/u/blobs/sha256/{h}/1/some/metadata");
    assert_eq!(write(&mut c, &name, b"x", 1).await.unwrap(), 1);
}

/// Send half, lose the stream, QueryWriteStatus, resume from there.
#[tokio::test]
async fn resumable_write() {
    let s = start(&[]);
    let mut c = client(&s).await;
    let data = common::noise(4 * MIB + 3, 7);
    let half = data.len() / 2;

    // 1. The client half-closes without finish_write: the answer says how far it got.
    let name = upload_name(&data, false);
    let w = OpenWrite::start(&c);
    w.send(requests(&name, &data[..half], 0, 64 * KIB, false))
        .await;
    assert_eq!(w.close().await.unwrap(), half as i64);
    assert_eq!(query(&mut c, &name).await.unwrap(), (half as i64, false));
    // A wrong offset is refused and leaves the upload as it was.
    let e = send(
        &mut c,
        requests(&name, &data[half + 1..], half + 1, 64 * KIB, true),
    )
    .await;
    assert_code(e, Code::InvalidArgument, "wrong resume offset");
    assert_eq!(query(&mut c, &name).await.unwrap(), (half as i64, false));
    // Resume.
    let rest = requests(&name, &data[half..], half, 64 * KIB, true);
    assert_eq!(send(&mut c, rest).await.unwrap(), data.len() as i64);
    assert_eq!(
        query(&mut c, &name).await.unwrap(),
        (data.len() as i64, true)
    );
    assert!(read(&mut c, &read_name(&data)).await.unwrap() == data);

    // 2. The stream is reset (client task dropped mid-stream).
    let data = common::noise(3 * MIB, 8);
    let half = data.len() / 2;
    let name = upload_name(&data, false);
    let w = OpenWrite::start(&c);
    w.send(requests(&name, &data[..half], 0, 64 * KIB, false))
        .await;
    wait_committed(&mut c, &name, half as i64).await;
    w.call.abort();
    drop(w.tx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(query(&mut c, &name).await.unwrap(), (half as i64, false));
    // Resume on a new connection, in one message.
    let mut c2 = client(&s).await;
    let rest = requests(&name, &data[half..], half, MIB * 2, true);
    assert_eq!(send(&mut c2, rest).await.unwrap(), data.len() as i64);
    assert!(read(&mut c, &read_name(&data)).await.unwrap() == data);

    // 3. Restart at 0 after an interruption.
    let data = common::noise(MIB, 9);
    let name = upload_name(&data, false);
    let w = OpenWrite::start(&c);
    w.send(requests(&name, &data[..1000], 0, 500, false)).await;
    assert_eq!(w.close().await.unwrap(), 1000);
    assert_eq!(
        write(&mut c, &name, &data, 100 * KIB).await.unwrap(),
        data.len() as i64
    );
    assert!(read(&mut c, &read_name(&data)).await.unwrap() == data);

    // 4. Compressed: offsets count compressed bytes.
    let data = text(2 * MIB, 3);
    let z = zstd::encode_all(&data[..], 1).unwrap();
    let cut = z.len() / 2;
    let name = upload_name(&data, true);
    let w = OpenWrite::start(&c);
    w.send(requests(&name, &z[..cut], 0, 1000, false)).await;
    assert_eq!(w.close().await.unwrap(), cut as i64);
    assert_eq!(query(&mut c, &name).await.unwrap(), (cut as i64, false));
    let rest = requests(&name, &z[cut..], cut, 1000, true);
    assert_eq!(send(&mut c, rest).await.unwrap(), z.len() as i64);
    assert!(read(&mut c, &read_name(&data)).await.unwrap() == data);

    // Nothing was left behind.
    assert_eq!(temp_files(&s), 0, "temp files left");
}

/// A client whose connection died (but the server has not noticed) resumes
/// on a new stream: the new stream takes the upload over.
#[tokio::test]
async fn resume_takes_over_a_stalled_stream() {
    let s = start(&[]);
    let mut c = client(&s).await;
    let data = common::noise(2 * MIB, 10);
    let half = data.len() / 2;
    let name = upload_name(&data, false);
    let stalled = OpenWrite::start(&c);
    stalled
        .send(requests(&name, &data[..half], 0, 64 * KIB, false))
        .await;
    wait_committed(&mut c, &name, half as i64).await;

    let mut c2 = client(&s).await;
    let rest = requests(&name, &data[half..], half, 64 * KIB, true);
    assert_eq!(send(&mut c2, rest).await.unwrap(), data.len() as i64);
    assert!(read(&mut c, &read_name(&data)).await.unwrap() == data);
    assert_code(stalled.close().await, Code::Aborted, "stalled stream");
}

/// Uploading a blob the cache has completes at once, without the rest.
#[tokio::test]
async fn write_of_present_blob_completes_at_once() {
    let s = start(&[]);
    let mut c = client(&s).await;
    let data = common::noise(MIB, 11);
    write(&mut c, &upload_name(&data, false), &data, 64 * KIB)
        .await
        .unwrap();

    for (compressed, expected) in [(false, data.len() as i64), (true, -1)] {
        let name = upload_name(&data, compressed);
        let body = if compressed {
            zstd::encode_all(&data[..], 1).unwrap()
        } else {
            data.clone()
        };
        // Only the first chunk, no finish_write, and the stream stays open.
        let first = requests(&name, &body, 0, 64 * KIB, false).remove(0);
        let stream = futures_util::stream::iter([first]).chain(futures_util::stream::pending());
        let resp = tokio::time::timeout(Duration::from_secs(10), c.write(stream))
            .await
            .expect("answer before the rest is sent")
            .unwrap();
        assert_eq!(
            resp.into_inner().committed_size,
            expected,
            "compressed: {compressed}"
        );
        assert_eq!(
            query(&mut c, &name).await.unwrap(),
            (data.len() as i64, true)
        );
    }
    // The empty blob is always present.
    let name = format!("uploads/u/blobs/{EMPTY_HEX}/0");
    assert_eq!(write(&mut c, &name, b"", 1).await.unwrap(), 0);
}

/// HTTP and ByteStream see the same CAS.
#[tokio::test]
async fn http_interop() {
    let s = start(&[]);
    let mut c = client(&s).await;
    let http = reqwest::Client::new();

    let a = common::noise(700 * KIB, 12);
    let resp = http
        .put(format!("{}/cas/{}", s.http_url, hex(&a)))
        .body(a.clone())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    assert!(read(&mut c, &read_name(&a)).await.unwrap() == a);
    let z = read(&mut c, &zstd_read_name(&a)).await.unwrap();
    assert!(zstd::decode_all(&z[..]).unwrap() == a);

    let b = text(900 * KIB, 4);
    write(&mut c, &upload_name(&b, false), &b, 100 * KIB)
        .await
        .unwrap();
    let resp = http
        .get(format!("{}/cas/{}", s.http_url, hex(&b)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == b);
}

/// A 64+ MiB upload streamed in 1 MiB messages, generated on the fly.
#[tokio::test]
async fn large_streamed_upload() {
    const CHUNKS: usize = 65;
    let s = start(&[]);
    let mut c = client(&s).await;
    let chunk = |i: usize| common::noise(MIB, 1000 + i as u64);
    let mut hasher = bazel_cache::digest::Hasher::new();
    for i in 0..CHUNKS {
        hasher.update(&chunk(i));
    }
    let size = CHUNKS * MIB;
    let hash = hasher.finish().to_hex();
    let name = format!("uploads/big/blobs/{hash}/{size}");
    let first_name = name.clone();
    let stream = futures_util::stream::iter(0..CHUNKS).map(move |i| WriteRequest {
        resource_name: if i == 0 {
            first_name.clone()
        } else {
            String::new()
        },
        write_offset: (i * MIB) as i64,
        finish_write: i == CHUNKS - 1,
        data: chunk(i),
    });
    assert_eq!(
        c.write(stream).await.unwrap().into_inner().committed_size,
        size as i64
    );

    let mut stream = c
        .read(ReadRequest {
            resource_name: format!("blobs/{hash}/{size}"),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut back = bazel_cache::digest::Hasher::new();
    while let Some(msg) = stream.message().await.unwrap() {
        assert!(msg.data.len() <= MIB);
        back.update(&msg.data);
    }
    assert_eq!(back.len(), size as u64);
    assert_eq!(back.finish().to_hex(), hash);
}
