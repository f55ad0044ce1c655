//! Resumable uploads: QueryWriteStatus and resuming from what was
//! committed, a new stream taking over a stalled one, and an upload of a
//! blob the cache already has completing at once.

use std::time::Duration;

use super::helpers::{
    Client, EMPTY_HEX, KIB, MIB, assert_code, client, query, read, read_name, requests, send,
    temp_files, text, upload_name, write,
};
use crate::support::{self, Server};
use bazel_remote_apis::google::bytestream::WriteRequest;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tonic::{Code, Status};

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

/// Send half, lose the stream, QueryWriteStatus, resume from there.
#[tokio::test]
async fn resumable_write() {
    let s = Server::start_grpc(&[]);
    let mut c = client(&s).await;
    let data = support::noise(4 * MIB + 3, 7);
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
    let data = support::noise(3 * MIB, 8);
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
    let data = support::noise(MIB, 9);
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
    let s = Server::start_grpc(&[]);
    let mut c = client(&s).await;
    let data = support::noise(2 * MIB, 10);
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
    let s = Server::start_grpc(&[]);
    let mut c = client(&s).await;
    let data = support::noise(MIB, 11);
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
