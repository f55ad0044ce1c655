//! ByteStream Reads parked behind a zero flow-control window: clients open
//! Reads of a large blob (stored compressed, so each Read decodes it) on a
//! few HTTP/2 connections and never read them. Each parked Read holds what
//! it reserved from the memory budget and no more, Reads past the budget
//! are refused with RESOURCE_EXHAUSTED, the server's resident memory stays
//! bounded while they are parked and comes back near its baseline once the
//! connections close. (Before the budget, 3,000 parked Reads on one
//! connection held 3.7 GB, and 3.5 GB after it closed.)

use std::time::Duration;

use futures_util::StreamExt;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::helpers::{assert_alive, off_runtime, resident};
use crate::support::{self, Server, bytestream_client, hex};
use bazel_remote_apis::google::bytestream::ReadRequest;

/// Connections, and Reads parked on each: together many more than the
/// budget admits. 64 a connection: h2 closes a connection on which more
/// than about 100 small DATA frames (here: the requests) wait unread at
/// once, which a burst of Reads against a busy server can reach.
const CONNECTIONS: usize = 20;
const PARKED_PER_CONNECTION: usize = 64;
/// The budget the server runs with: 128 MiB.
const BUDGET_GIB: &str = "0.125";
const MIB: u64 = 1 << 20;
/// Generous: the budget (128 MiB) plus what the streams' own state and the
/// allocator add. Unbudgeted, these Reads held over 1.5 GiB.
const PARKED_BOUND: u64 = 512 * MIB;
/// "Near baseline" once the connections are gone.
const AFTER_BOUND: u64 = 24 * MIB;

fn rss(s: &Server) -> u64 {
    resident(s).0
}

async fn read_all(channel: Channel, name: &str) -> Vec<u8> {
    let mut stream = bytestream_client(channel)
        .read(ReadRequest {
            resource_name: name.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(part) = stream.next().await {
        out.extend_from_slice(&part.unwrap().data);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parked_reads_hold_bounded_memory_and_give_it_back() {
    let s = Server::start_grpc(&["--max_buffer_memory", BUDGET_GIB]);
    let blob = support::noise(16 << 20, 11);
    assert_eq!(
        support::request(&s, "PUT", &support::cas_path(&blob), Some(&blob)).await,
        200
    );
    let name = format!("blobs/{}/{}", hex(&blob), blob.len());
    // A full read first, so the baseline includes what any first use
    // allocates.
    assert!(read_all(s.channel().await, &name).await == blob);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = off_runtime(|| rss(&s));

    // Stream windows of 0: the server may send headers, never data.
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = Endpoint::from_shared(s.grpc_endpoint())
            .unwrap()
            .initial_stream_window_size(0)
            .connect()
            .await
            .unwrap();
        channels.push(channel);
    }
    let reads = channels.iter().flat_map(|channel| {
        (0..PARKED_PER_CONNECTION).map(|_| {
            let mut bs = bytestream_client(channel.clone());
            let name = name.clone();
            async move {
                bs.read(ReadRequest {
                    resource_name: name,
                    ..Default::default()
                })
                .await
            }
        })
    });
    let mut parked = Vec::new();
    let mut refused = 0;
    for answer in futures_util::future::join_all(reads).await {
        match answer {
            Ok(response) => parked.push(response.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("max_buffer_memory"), "{status:?}");
                refused += 1;
            }
        }
    }
    // Let every parked stream fill what it can (its first chunk).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = off_runtime(|| rss(&s));
    eprintln!(
        "{} Reads parked, {refused} refused; server RSS {} MiB before, {} MiB while parked",
        parked.len(),
        baseline / MIB,
        during / MIB
    );
    assert!(!parked.is_empty(), "no Read was admitted");
    assert!(refused > 0, "the budget admitted every Read");
    assert!(
        during < baseline + PARKED_BOUND,
        "{} parked Reads took the server from {} MiB to {} MiB",
        parked.len(),
        baseline / MIB,
        during / MIB
    );
    let (_, metrics) = s.get_async("/metrics").await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("bazel_cache_memory_refused_total{what=\"read_buffer\"}")
            || metrics.contains("bazel_cache_memory_refused_total{what=\"zstd_decoder\"}"),
        "{metrics}"
    );

    // The clients go away: everything is released, and given back to the
    // OS (the allocator keeps freed memory until trimmed).
    drop(parked);
    drop(channels);
    let mut after = u64::MAX;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = off_runtime(|| rss(&s));
        if after < baseline + AFTER_BOUND {
            break;
        }
    }
    eprintln!(
        "server RSS {} MiB after the connections closed",
        after / MIB
    );
    assert!(
        after < baseline + AFTER_BOUND,
        "the server kept {} MiB after the parked Reads were gone (baseline {} MiB)",
        after / MIB,
        baseline / MIB
    );
    // The server still serves.
    assert!(read_all(s.channel().await, &name).await == blob);
    off_runtime(|| assert_alive(&s));
}
