//! What the ByteStream tests share: a client, resource names, Write
//! request streams, reads, QueryWriteStatus, the expected error code, and
//! the temp files in the server's `dir`.

use crate::support::{Server, bytestream_client, hex};
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use tonic::transport::Channel;
use tonic::{Code, Status};

pub(super) const KIB: usize = 1024;
pub(super) const MIB: usize = 1024 * 1024;
pub(super) const EMPTY_HEX: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

pub(crate) type Client = ByteStreamClient<Channel>;

pub(crate) async fn client(s: &Server) -> Client {
    bytestream_client(s.channel().await)
}

/// Compressible bytes.
pub(super) fn text(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b"the quick brown fox "[(i + seed as usize) % 20])
        .collect()
}

pub(crate) fn read_name(data: &[u8]) -> String {
    format!("blobs/{}/{}", hex(data), data.len())
}

/// A fresh upload name per call (the uuid is not validated; unique is enough).
pub(crate) fn upload_name(data: &[u8], compressed: bool) -> String {
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
pub(crate) fn requests(
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

pub(crate) async fn send(c: &mut Client, reqs: Vec<WriteRequest>) -> Result<i64, Status> {
    c.write(futures_util::stream::iter(reqs))
        .await
        .map(|r| r.into_inner().committed_size)
}

/// Uploads `bytes` under `name` in one stream ending with finish_write.
pub(crate) async fn write(
    c: &mut Client,
    name: &str,
    bytes: &[u8],
    chunk: usize,
) -> Result<i64, Status> {
    send(c, requests(name, bytes, 0, chunk, true)).await
}

/// Reads a resource; returns its bytes and the size of each message.
pub(crate) async fn read_at(
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

pub(crate) async fn read(c: &mut Client, name: &str) -> Result<Vec<u8>, Status> {
    read_at(c, name, 0, 0).await.map(|(d, _)| d)
}

pub(super) async fn query(c: &mut Client, name: &str) -> Result<(i64, bool), Status> {
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
pub(super) fn assert_code<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    what: &str,
) -> Status {
    match result {
        Err(s) if s.code() == code => s,
        other => panic!("{what}: expected {code:?}, got {other:?}"),
    }
}

/// Writes in progress in the server's `--dir` (none once uploads end).
pub(super) fn temp_files(s: &Server) -> usize {
    std::fs::read_dir(s.dir.join("tmp")).unwrap().count()
}
