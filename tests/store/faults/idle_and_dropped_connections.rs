//! Ten thousand idle connections, and clients that disconnect mid-stream
//! (HTTP and ByteStream, uploads and downloads): others are served
//! meanwhile, nothing is left behind, descriptors and memory come back.

use std::time::Duration;

use super::helpers::{
    KIB, MIB, fd_count, fds_settle, normal_round_trip, partial_put, rss_kib, temp_files,
    upload_name, wait_until,
};
use crate::support::{
    self, Server, async_client as http_client, bytestream_client as bytestream, hex,
};
use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The soft RLIMIT_NOFILE of process `pid`, from `/proc/<pid>/limits`.
fn open_files_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_string())
        .unwrap_or_else(|| "?".into())
}

/// Raises this process's soft RLIMIT_NOFILE to `want` (or the hard limit).
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    #[allow(unsafe_code)]
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    lim.rlim_cur
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_idle_connections_neither_block_others_nor_leak() {
    const IDLE: usize = 10_000;
    // The server starts with the limits of the environment (it inherits
    // ours before we raise them): what a deployment would give it. Room
    // for the idle connections and the round trips beside them, and time
    // to hold them: by default a silent connection is closed after 10 s
    // (tests/api/hostile/connections.rs checks that).
    let server = Server::start(&[
        "--max_connections",
        "10100",
        "--request_head_timeout",
        "300s",
    ]);
    let pid = server.pid();
    let server_limit = open_files_limit(pid);
    let ours = raise_nofile(IDLE as u64 + 1000);
    assert!(
        ours >= IDLE as u64 + 200,
        "this test needs {} file descriptors for its client side; the hard limit allows {ours}",
        IDLE + 200
    );
    normal_round_trip(&server, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds, rss_start) = (fd_count(pid), rss_kib(pid));
    println!("server: soft RLIMIT_NOFILE {server_limit}, {fds} fds, RSS {rss_start} KiB at start");

    let mut rss_after = Vec::new();
    for round in 0..2 {
        let mut conns = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            conns.push(TcpStream::connect(server.http_addr()).await.unwrap());
        }
        // Connected is not accepted: wait until the server holds them all.
        wait_until(
            &format!(
                "the server accepts {IDLE} idle connections (its soft RLIMIT_NOFILE is {server_limit})"
            ),
            Duration::from_secs(60),
            || {
                let n = fd_count(pid);
                (n >= fds + IDLE, n)
            },
        )
        .await;
        let rss_open = rss_kib(pid);
        normal_round_trip(&server, 100 + round).await;
        drop(conns);
        fds_settle(pid, fds + 1, "10,000 idle connections").await;
        // Freed memory returns to the allocator, not always to the kernel:
        // compare rounds, so only growth per round (a leak) counts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = rss_kib(pid);
        println!(
            "round {round}: RSS {rss_open} KiB with {IDLE} idle connections, {rss} KiB after closing them"
        );
        rss_after.push(rss);
    }
    assert!(
        rss_after[1] <= rss_after[0] + 32 * 1024,
        "RSS grew from {} KiB to {} KiB between two identical rounds of {IDLE} connections",
        rss_after[0],
        rss_after[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_disconnect_mid_stream_leave_nothing_behind() {
    const ROUNDS: u64 = 20;
    let server = Server::start(&["--grpc_address", "127.0.0.1:0"]);
    let pid = server.pid();
    let dir = server.dir.clone();
    let big = support::noise(16 * MIB, 5);
    let big_hex = hex(&big);
    let r = http_client()
        .put(format!("{}/cas/{big_hex}", server.http_url))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    normal_round_trip(&server, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds, rss) = (fd_count(pid), rss_kib(pid));
    let files = server.status_async().await["NumFiles"].as_u64().unwrap();

    let channel = server.channel().await;
    for round in 0..ROUNDS {
        // HTTP upload: 1 MiB of a 4 MiB body, then gone.
        let blob = support::noise(4 * MIB, 1000 + round);
        let conn = partial_put(&server, &blob, MIB).await;
        drop(conn);

        // HTTP download: the head and 64 KiB of a 16 MiB body, then gone.
        let mut conn = TcpStream::connect(server.http_addr()).await.unwrap();
        let get = format!("GET /cas/{big_hex} HTTP/1.1\r\nHost: x\r\n\r\n");
        conn.write_all(get.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 64 * KIB];
        conn.read_exact(&mut buf).await.unwrap();
        assert!(buf.starts_with(b"HTTP/1.1 200"), "GET of the big blob");
        drop(conn);

        // ByteStream Read: the first message, then the call is dropped.
        let mut client = bytestream(channel.clone());
        let mut stream = client
            .read(ReadRequest {
                resource_name: format!("blobs/{big_hex}/{}", big.len()),
                read_offset: 0,
                read_limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!stream.message().await.unwrap().unwrap().data.is_empty());
        drop(stream);
    }

    // ByteStream Write cut off mid-stream: resumable by design (the server
    // keeps it for the client to resume), then resumed to completion.
    let blob = support::noise(3 * MIB, 99);
    let name = upload_name(&blob, 99);
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
    let mut writer = bytestream(channel.clone());
    let call =
        tokio::spawn(async move {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|m| (m, rx))
            });
            writer.write(stream).await
        });
    tx.send(WriteRequest {
        resource_name: name.clone(),
        write_offset: 0,
        finish_write: false,
        data: blob[..MIB].to_vec(),
    })
    .await
    .unwrap();
    let mut query = bytestream(channel.clone());
    let mut seen = 0;
    for _ in 0..600 {
        if let Ok(r) = query
            .query_write_status(QueryWriteStatusRequest {
                resource_name: name.clone(),
            })
            .await
        {
            seen = r.into_inner().committed_size;
            if seen == MIB as i64 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen, MIB as i64,
        "QueryWriteStatus of the interrupted upload"
    );
    call.abort();
    drop(tx);
    let _ = call.await;
    let mut resume: Vec<WriteRequest> = blob[MIB..]
        .chunks(64 * KIB)
        .enumerate()
        .map(|(i, c)| WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (MIB + i * 64 * KIB) as i64,
            finish_write: false,
            data: c.to_vec(),
        })
        .collect();
    resume.last_mut().unwrap().finish_write = true;
    // A resuming stream takes over even if the server has not yet noticed
    // that the old one is gone.
    let committed = query
        .write(futures_util::stream::iter(resume))
        .await
        .unwrap_or_else(|e| panic!("resuming the interrupted upload: {e}"))
        .into_inner()
        .committed_size;
    assert_eq!(committed, blob.len() as i64, "resumed upload");

    normal_round_trip(&server, 2).await;
    drop((channel, query));
    wait_until(
        "temp files of abandoned HTTP uploads removed",
        Duration::from_secs(30),
        || (temp_files(&dir) == 0, temp_files(&dir)),
    )
    .await;
    let st = server.status_async().await;
    assert_eq!(st["ReservedSize"].as_u64(), Some(0), "{st}");
    assert_eq!(
        st["NumFiles"].as_u64(),
        Some(files + 2),
        "only the resumed upload and one normal blob were added: {st}"
    );
    fds_settle(pid, fds, "disconnects mid-stream").await;
    println!(
        "disconnects: RSS {rss} KiB before, {} KiB after",
        rss_kib(pid)
    );
}
