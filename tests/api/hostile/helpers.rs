//! What the hostile-input tables share: a snapshot of the store (`/status`
//! counters and files) to compare before and after, the check that the
//! server is alive and has not panicked, and a gRPC codec that sends
//! protobuf bytes as they are.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::support::Server;
use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

pub(super) const MIB: usize = 1024 * 1024;

/// What must not change: the `/status` counters and every file under the
/// blob directories (name and size), and no temp file may linger.
#[derive(Debug, PartialEq)]
pub(super) struct Snapshot {
    pub(super) counters: BTreeMap<&'static str, serde_json::Value>,
    pub(super) files: BTreeMap<String, u64>,
}

pub(super) fn files_under(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if e.file_type().unwrap().is_dir() {
            files_under(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            out.insert(rel, e.metadata().unwrap().len());
        }
    }
}

pub(super) fn snapshot(s: &Server) -> Snapshot {
    let status = s.status();
    let counters = ["NumFiles", "CurrSize", "UncompressedSize", "ReservedSize"]
        .into_iter()
        .map(|k| (k, status[k].clone()))
        .collect();
    let mut files = BTreeMap::new();
    for sub in ["ac", "cas", "tmp"] {
        files_under(&s.dir, &s.dir.join(sub), &mut files);
    }
    Snapshot { counters, files }
}

/// Waits until a write refused mid-body has released its temp file and
/// reservation (it does so as its task ends, just after the response),
/// then compares with `before`.
pub(super) fn assert_unchanged(s: &Server, before: &Snapshot, what: &str) {
    let mut now = snapshot(s);
    for _ in 0..100 {
        if now == *before {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        now = snapshot(s);
    }
    assert_eq!(now, *before, "{what}: the store changed");
}

/// The server process is still there and answering.
/// The server process is still there and answering, and nothing in it
/// panicked (a panicking request task does not take the process down, so
/// its log is where a panic shows).
pub(super) fn assert_alive(s: &Server) {
    assert!(
        Path::new(&format!("/proc/{}", s.pid())).exists(),
        "server process is gone"
    );
    let _ = s.status();
    let (_, log) = s.output();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

/// A zstd stream of `len` zero bytes: tiny on the wire, large decoded.
pub(super) fn zstd_bomb(len: usize) -> Vec<u8> {
    zstd::encode_all(&vec![0u8; len][..], 19).unwrap()
}

/// Runs `f` on a thread of its own: the blocking helpers of tests/support
/// start their own runtime, which cannot nest in the test's.
pub(super) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(f).join().unwrap())
}

/// Sends protobuf bytes as they are, so a test can send what no typed
/// client would (truncated fields, wrong wire types).
#[derive(Clone, Copy, Default)]
pub(super) struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// A unary call with a raw body to `path`.
pub(super) async fn raw_unary(
    ch: &Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

/// The server's resident memory now and at its peak since it started
/// (`VmRSS` and `VmHWM` of /proc/<pid>/status), in bytes.
pub(super) fn resident(s: &Server) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let field = |name: &str| -> u64 {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/status"));
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}
