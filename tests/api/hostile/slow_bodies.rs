//! Bodies that dribble or stop: more slow HTTP PUT bodies than there are
//! write slots, and ByteStream uploads abandoned (or left open and silent)
//! after one message. A write slot is held only for work on received
//! bytes, so a well-behaved client next to them is served throughout;
//! the progress guard cuts them (`body_min_rate` over `body_rate_window`),
//! nothing of theirs is stored, their temp files and reservations go, and
//! `bazel_cache_uploads_cut_total` counts them.

use std::time::Duration;

use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, WriteRequest};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

use super::well_behaved::GoodClient;
use crate::support::prometheus::{scrape, wait_metrics};
use crate::support::{self, Server, bytestream_client, hex};

/// Fewer than the attackers: each would have held one for the whole attack.
const SLOTS: &str = "8";
/// A short scale for the guard: 100 bytes/s over windows of 2 s (200 bytes
/// a window), so a byte a second is cut after 2 s of waiting.
const GUARD: [&str; 4] = ["--body_min_rate", "100", "--body_rate_window", "2s"];

fn server(grpc: bool) -> Server {
    let mut args = vec!["--max_concurrent_writes", SLOTS];
    args.extend(GUARD);
    if grpc {
        Server::start_grpc(&args)
    } else {
        Server::start(&args)
    }
}

/// A PUT of `blob` whose body is sent a byte a second. Returns what the
/// server answered once it ended the request (its response, possibly
/// empty if it only closed), or `None` if it was still open after `give_up`.
async fn byte_a_second_put(addr: String, blob: Vec<u8>, give_up: Duration) -> Option<String> {
    let conn = TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let head = format!(
        "PUT /cas/{} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        hex(&blob),
        blob.len()
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let deadline = tokio::time::Instant::now() + give_up;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let mut sent = 0;
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(n) if n > 0 => answer.extend_from_slice(&buf[..n]),
                _ => return Some(String::from_utf8_lossy(&answer).into_owned()),
            },
            _ = tokio::time::sleep(Duration::from_secs(1)), if sent < blob.len() => {
                if wr.write_all(&blob[sent..sent + 1]).await.is_err() {
                    // Closed on us; read what it said.
                    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut answer)).await;
                    return Some(String::from_utf8_lossy(&answer).into_owned());
                }
                sent += 1;
            }
            _ = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

/// Waits until the store holds no temp file and no reservation.
async fn wait_released(s: &Server) {
    let tmp = s.dir.join("tmp");
    for _ in 0..600 {
        let files = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
        if files == 0 && s.status_async().await["ReservedSize"] == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "temp files or reservations of cut uploads were kept: {}",
        s.status_async().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_bodies_at_a_byte_a_second_hold_no_slot_and_are_cut() {
    const ATTACKERS: usize = 20;
    let s = server(false);
    let good = GoodClient::start(&s, 1);
    let blobs: Vec<Vec<u8>> = (0..ATTACKERS)
        .map(|i| support::noise(1000, 500 + i as u64))
        .collect();
    let attacks: Vec<_> = blobs
        .iter()
        .map(|b| {
            tokio::spawn(byte_a_second_put(
                s.http_addr().to_string(),
                b.clone(),
                Duration::from_secs(60),
            ))
        })
        .collect();
    for (i, attack) in attacks.into_iter().enumerate() {
        let answer = attack
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("slow PUT {i} still open after 60 s"));
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "slow PUT {i} answered {answer:?}"
        );
    }
    let round_trips = good.finish().await;
    assert!(round_trips > 0);
    for b in &blobs {
        assert_eq!(
            support::request(&s, "HEAD", &support::cas_path(b), None).await,
            404,
            "a slow body was stored"
        );
    }
    wait_released(&s).await;
    let m = scrape(&s).await;
    assert_eq!(
        m.value("bazel_cache_uploads_cut_total", &[("reason", "too_slow")]),
        ATTACKERS as f64,
        "{}",
        m.text
    );
    assert_eq!(
        m.value("bazel_cache_uploads_cut_total", &[("reason", "stalled")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandoned_bytestream_uploads_hold_nothing_and_restart_from_zero() {
    const ABANDONED: usize = 10;
    const SILENT: usize = 10;
    const SIZE: usize = 100 * 1024;
    let s = server(true);
    let channel = s.channel().await;
    let good = GoodClient::start(&s, 2);
    let blobs: Vec<Vec<u8>> = (0..ABANDONED + SILENT)
        .map(|i| support::noise(SIZE, 700 + i as u64))
        .collect();
    let names: Vec<String> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| format!("uploads/abandoned-{i}/blobs/{}/{SIZE}", hex(b)))
        .collect();
    // One message each, then a stream that stays open and says nothing.
    let calls: Vec<_> = names
        .iter()
        .zip(&blobs)
        .map(|(name, blob)| {
            let first = WriteRequest {
                resource_name: name.clone(),
                write_offset: 0,
                finish_write: false,
                data: blob[..100].to_vec(),
            };
            let mut client = bytestream_client(channel.clone());
            tokio::spawn(async move {
                let requests =
                    futures_util::stream::iter([first]).chain(futures_util::stream::pending());
                client.write(requests).await
            })
        })
        .collect();
    let mut query = bytestream_client(channel.clone());
    let committed = |name: String| {
        let mut query = query.clone();
        async move {
            query
                .query_write_status(QueryWriteStatusRequest {
                    resource_name: name,
                })
                .await
                .map(|r| r.into_inner().committed_size)
        }
    };
    for name in &names {
        for _ in 0..100 {
            if committed(name.clone()).await.ok() == Some(100) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(committed(name.clone()).await.unwrap(), 100, "{name}");
    }
    // The first ones are abandoned: their client goes away mid-upload.
    let mut calls = calls.into_iter();
    for call in calls.by_ref().take(ABANDONED) {
        call.abort();
    }
    // The silent ones are ended by the server once their upload is cut.
    for (i, call) in calls.enumerate() {
        let status = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .unwrap_or_else(|_| panic!("silent Write {i} still open after 60 s"))
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    // Every upload is dead: QueryWriteStatus says start over.
    for name in &names {
        let mut zero = false;
        for _ in 0..600 {
            if committed(name.clone()).await.ok() == Some(0) {
                zero = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(zero, "{name}: {:?}", committed(name.clone()).await);
    }
    wait_released(&s).await;
    let round_trips = good.finish().await;
    assert!(round_trips > 0);
    let m = wait_metrics(&s, "every cut counted", Duration::from_secs(10), |m| {
        m.get("bazel_cache_uploads_cut_total", &[("reason", "too_slow")])
            == Some((ABANDONED + SILENT) as f64)
    })
    .await;
    assert_eq!(
        m.value("bazel_cache_uploads_cut_total", &[("reason", "stalled")]),
        0.0
    );
    // Restarting at 0 stores the blob; nothing partial was stored before.
    assert_eq!(
        support::request(&s, "HEAD", &support::cas_path(&blobs[0]), None).await,
        404
    );
    let whole = WriteRequest {
        resource_name: names[0].clone(),
        write_offset: 0,
        finish_write: true,
        data: blobs[0].clone(),
    };
    let written = query
        .write(futures_util::stream::iter([whole]))
        .await
        .unwrap();
    assert_eq!(written.into_inner().committed_size, SIZE as i64);
    assert_eq!(
        support::request(&s, "HEAD", &support::cas_path(&blobs[0]), None).await,
        200
    );
}
