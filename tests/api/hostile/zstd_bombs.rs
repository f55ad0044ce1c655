//! zstd bombs against the real server: bodies of a few KiB that declare a
//! huge window or decode to gigabytes, sent many at once over HTTP and
//! ByteStream next to a good client. A frame whose window is over the
//! server's limit (8 MiB) is refused at its header with a message that says
//! so; frames within it wait for the memory budget and are refused
//! retryably when it stays full. Nothing of theirs is stored, the good
//! client is served, and the server stays small: its peak resident memory
//! (VmHWM) is read from /proc. (Before the cap, 96 such PUTs took the
//! server to 8.5–12 GB: libzstd allocated each frame's 128 MiB window.)

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tonic::Code;

use super::helpers::{assert_alive, files_under, off_runtime, resident};
use crate::support::{self, Server, bytestream_client, digest, hex};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::{ReadRequest, WriteRequest};

/// Bombs sent at once.
const ATTACKERS: usize = 32;
/// Generous: the server itself needs a few tens of MiB; 32 decoders with
/// the 128 MiB windows the bombs declare took 4 GiB.
const PEAK_BOUND: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A zstd frame declaring a window of 2^`log` bytes and no content size,
/// made of `blocks` RLE blocks of 128 KiB zeros: 4 bytes a block on the
/// wire, 128 KiB decoded (1,024 of them fill a 128 MiB window).
fn bomb(log: u32, blocks: usize) -> Vec<u8> {
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, ((log - 10) << 3) as u8];
    for i in 0..blocks {
        out.extend_from_slice(&rle_block(i + 1 == blocks));
    }
    out
}

fn rle_block(last: bool) -> [u8; 4] {
    let header = u32::from(last) | 1 << 1 | (128 << 10) << 3;
    let h = header.to_le_bytes();
    [h[0], h[1], h[2], 0]
}

/// A compressed-blobs upload name claiming `size` bytes under `hash`.
fn upload_name(n: usize, hash: &str, size: u64) -> String {
    format!("uploads/3f2a1b4c-0000-4000-8000-{n:012x}/compressed-blobs/zstd/{hash}/{size}")
}

fn write_requests(name: &str, body: &[u8], chunk: usize) -> Vec<WriteRequest> {
    let parts: Vec<&[u8]> = body.chunks(chunk).collect();
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| WriteRequest {
            resource_name: if i == 0 {
                name.to_string()
            } else {
                String::new()
            },
            write_offset: (i * chunk) as i64,
            finish_write: i + 1 == parts.len(),
            data: part.to_vec(),
        })
        .collect()
}

/// Nothing but the good client's blobs is stored, and no write is left.
fn assert_only_stored(s: &Server, files: u64) {
    let status = s.status();
    assert_eq!(status["NumFiles"], files, "{status}");
    assert_eq!(status["ReservedSize"], 0, "{status}");
    let mut temp = Default::default();
    files_under(&s.dir, &s.dir.join("tmp"), &mut temp);
    assert!(temp.is_empty(), "temp files left: {temp:?}");
}

fn peak_within_bound(s: &Server, what: &str) {
    let (now, peak) = resident(s);
    eprintln!(
        "{what}: server RSS {} MiB now, {} MiB at peak",
        now / MIB,
        peak / MIB
    );
    assert!(
        peak < PEAK_BOUND,
        "{what}: the server peaked at {} MiB resident",
        peak / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_bombs_with_a_huge_window_are_refused_at_their_header() {
    let s = Server::start(&[]);
    // 8 KiB on the wire, 256 MiB decoded, a 128 MiB window; no size claim.
    let bomb = Bytes::from(bomb(27, 2048));
    let claimed = hex(b"what the bomb claims to be");
    let client = support::async_client();
    let attack = (0..ATTACKERS).map(|_| {
        client
            .put(format!("{}/cas/{claimed}", s.http_url))
            .header("Content-Encoding", "zstd")
            .body(bomb.clone())
            .send()
    });
    let good = support::noise(3 << 20, 5);
    let good_put = client
        .put(format!("{}/cas/{}", s.http_url, hex(&good)))
        .header("Content-Encoding", "zstd")
        .body(zstd::encode_all(&good[..], 3).unwrap())
        .send();
    let (answers, good_answer) = tokio::join!(futures_util::future::join_all(attack), good_put);
    for answer in answers {
        let answer = answer.unwrap();
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap();
        assert_eq!(status, 400, "{text}");
        assert!(
            text.contains(
                "zstd frame needs a 128 MiB window, more than this server's limit of 8 MiB"
            ),
            "{text}"
        );
    }
    assert_eq!(good_answer.unwrap().status(), 200);
    assert_eq!(
        s.get_async(&format!("/cas/{}", hex(&good))).await,
        (200, good)
    );
    assert_eq!(s.get_async(&format!("/cas/{claimed}")).await.0, 404);
    off_runtime(|| {
        assert_only_stored(&s, 1);
        peak_within_bound(&s, "32 HTTP bombs with 128 MiB windows");
        assert_alive(&s);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytestream_and_batch_bombs_with_a_huge_window_are_refused_at_their_header() {
    let s = Server::start_grpc(&[]);
    let channel = s.channel().await;
    // 256 KiB on the wire, 8 GiB decoded, a 128 MiB window, claiming 10 MiB.
    let bomb = bomb(27, 64 * 1024);
    let claimed = hex(b"what the bomb claims to be");
    let attack = (0..ATTACKERS).map(|n| {
        let mut bs = bytestream_client(channel.clone());
        let requests = write_requests(&upload_name(n, &claimed, 10 << 20), &bomb, 64 << 10);
        async move { bs.write(futures_util::stream::iter(requests)).await }
    });
    let good = support::noise(3 << 20, 6);
    let good_write = {
        let mut bs = bytestream_client(channel.clone());
        let name = upload_name(999, &hex(&good), good.len() as u64);
        let requests = write_requests(&name, &zstd::encode_all(&good[..], 3).unwrap(), 16 << 10);
        async move { bs.write(futures_util::stream::iter(requests)).await }
    };
    let (answers, good_answer) = tokio::join!(futures_util::future::join_all(attack), good_write);
    for answer in answers {
        let status = answer.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .contains("zstd frame needs a 128 MiB window"),
            "{status:?}"
        );
    }
    good_answer.unwrap();
    // A batch with one bomb and one good blob: each gets its own status.
    let mut cas = re::content_addressable_storage_client::ContentAddressableStorageClient::new(
        channel.clone(),
    );
    let small = support::noise(1000, 7);
    let batch = cas
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: vec![
                re::batch_update_blobs_request::Request {
                    digest: Some(re::Digest {
                        hash: claimed.clone(),
                        size_bytes: 10 << 20,
                    }),
                    data: bomb[..1 << 16].to_vec(),
                    compressor: re::compressor::Value::Zstd as i32,
                },
                re::batch_update_blobs_request::Request {
                    digest: Some(digest(&small)),
                    data: zstd::encode_all(&small[..], 3).unwrap(),
                    compressor: re::compressor::Value::Zstd as i32,
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<_> = batch
        .responses
        .iter()
        .map(|r| r.status.as_ref().unwrap().clone())
        .collect();
    assert_eq!(codes[0].code, Code::InvalidArgument as i32, "{codes:?}");
    assert!(codes[0].message.contains("128 MiB window"), "{codes:?}");
    assert_eq!(codes[1].code, 0, "{codes:?}");
    // The good blob reads back.
    let mut bs = bytestream_client(channel);
    let mut read = bs
        .read(ReadRequest {
            resource_name: format!("blobs/{}/{}", hex(&good), good.len()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::new();
    while let Some(part) = read.next().await {
        back.extend_from_slice(&part.unwrap().data);
    }
    assert_eq!(back, good);
    off_runtime(|| {
        assert_only_stored(&s, 2);
        peak_within_bound(&s, "32 ByteStream bombs with 128 MiB windows");
        assert_alive(&s);
    });
}

/// A bomb within the window limit (8 MiB) that holds its decoder: its
/// first part is sent, then it waits `pause` before its last block.
fn paused_bomb(pause: Duration) -> (Vec<u8>, Vec<u8>, Duration) {
    let mut first = bomb(23, 64);
    // Not the last block after all: the last comes after the pause.
    let at = first.len() - 4;
    first[at..].copy_from_slice(&rle_block(false));
    (first, rle_block(true).to_vec(), pause)
}

/// With a 32 MiB budget, three bombs holding 8 MiB decoders (and their
/// buffers) fill it: the others wait, then are refused with 503 +
/// Retry-After (HTTP) or RESOURCE_EXHAUSTED (gRPC), and counted. The good
/// client retries through it, as Bazel does, and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bombs_within_the_window_wait_for_the_memory_budget_then_are_refused_retryably() {
    let s = Server::start_grpc(&["--max_buffer_memory", "0.03125"]);
    let channel = s.channel().await;
    let claimed = hex(b"what the bomb claims to be");
    // Longer than the budget's wait (2 s): holders keep their memory while
    // the others give up.
    let pause = Duration::from_secs(6);
    let client = support::async_client();
    let http = (0..ATTACKERS / 2).map(|_| {
        let (first, last, pause) = paused_bomb(pause);
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(first))]).chain(
            futures_util::stream::once(async move {
                tokio::time::sleep(pause).await;
                Ok(Bytes::from(last))
            }),
        );
        let put = client
            .put(format!("{}/cas/{claimed}", s.http_url))
            .header("Content-Encoding", "zstd")
            .body(reqwest::Body::wrap_stream(body))
            .send();
        async move {
            let answer = put.await.unwrap();
            let retry_after = answer.headers().get("retry-after").is_some();
            (
                answer.status().as_u16(),
                retry_after,
                answer.text().await.unwrap(),
            )
        }
    });
    let grpc = (0..ATTACKERS / 2).map(|n| {
        let mut bs = bytestream_client(channel.clone());
        let (first, last, pause) = paused_bomb(pause);
        let name = upload_name(n, &claimed, 10 << 20);
        let requests = futures_util::stream::iter([WriteRequest {
            resource_name: name,
            data: first.clone(),
            ..Default::default()
        }])
        .chain(futures_util::stream::once(async move {
            tokio::time::sleep(pause).await;
            WriteRequest {
                write_offset: first.len() as i64,
                finish_write: true,
                data: last,
                ..Default::default()
            }
        }));
        async move { bs.write(requests).await }
    });
    let good = support::noise(1 << 20, 8);
    let good_client = {
        let client = client.clone();
        let (url, body) = (
            format!("{}/cas/{}", s.http_url, hex(&good)),
            zstd::encode_all(&good[..], 3).unwrap(),
        );
        async move {
            for _ in 0..120 {
                let answer = client
                    .put(&url)
                    .header("Content-Encoding", "zstd")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                match answer.status().as_u16() {
                    200 => return true,
                    503 => tokio::time::sleep(Duration::from_millis(500)).await,
                    other => panic!("good client got {other}: {}", answer.text().await.unwrap()),
                }
            }
            false
        }
    };
    let (http, grpc, served) = tokio::join!(
        futures_util::future::join_all(http),
        futures_util::future::join_all(grpc),
        good_client
    );
    let mut refused = 0;
    for (status, retry_after, text) in http {
        match status {
            503 => {
                assert!(retry_after, "503 without Retry-After: {text}");
                assert!(text.contains("out of buffer memory"), "{text}");
                assert!(text.contains("max_buffer_memory"), "{text}");
                refused += 1;
            }
            // Those that got memory end with a body that does not hash to
            // the name.
            400 => assert!(text.contains("hash mismatch"), "{text}"),
            other => panic!("HTTP bomb got {other}: {text}"),
        }
    }
    for answer in grpc {
        let status = answer.unwrap_err();
        match status.code() {
            Code::ResourceExhausted => {
                assert!(status.message().contains("max_buffer_memory"), "{status:?}");
                refused += 1;
            }
            Code::InvalidArgument => {
                assert!(status.message().contains("size mismatch"), "{status:?}")
            }
            other => panic!("ByteStream bomb got {other:?}: {status:?}"),
        }
    }
    assert!(refused > 0, "no bomb was refused for memory");
    assert!(served, "the good client was never served");
    assert_eq!(
        s.get_async(&format!("/cas/{}", hex(&good))).await,
        (200, good)
    );
    let (_, metrics) = s.get_async("/metrics").await;
    let metrics = String::from_utf8(metrics).unwrap();
    let counted: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("bazel_cache_memory_refused_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(
        counted >= refused,
        "{refused} refused, {counted} counted:\n{metrics}"
    );
    assert!(
        metrics.contains("bazel_cache_memory_limit_bytes 33554432"),
        "{metrics}"
    );
    off_runtime(|| {
        assert_only_stored(&s, 1);
        peak_within_bound(&s, "32 bombs with 8 MiB windows, 32 MiB budget");
        assert_alive(&s);
    });
    // Everything reserved is given back (as the last tasks wind down).
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = String::from_utf8(s.get_async("/metrics").await.1).unwrap();
        if metrics.contains("bazel_cache_memory_in_use_bytes 0\n") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("memory still reserved after the attack:\n{metrics}");
}
