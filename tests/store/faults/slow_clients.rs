//! Slow clients: slowloris connections dribbling headers, an upload that
//! stalls midway, as many stalled uploads as there are write slots (which
//! they do not hold while they wait) until `http_read_timeout` cuts them.
//! Others are served meanwhile; descriptors, temp files and reservations
//! come back.

use std::time::Duration;

use super::helpers::{
    KIB, MIB, fd_count, fds_settle, normal_round_trip, partial_put, rss_kib, temp_files, wait_until,
};
use crate::support::{self, Server, async_client as http_client, hex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a connection and sends a request head one byte every `every`,
/// forever; returns when the server closes the connection (or after
/// `give_up`), telling whether it was the server that closed it.
async fn slowloris(addr: String, head: Vec<u8>, every: Duration, give_up: Duration) -> bool {
    let Ok(conn) = TcpStream::connect(&addr).await else {
        return false;
    };
    let (mut rd, mut wr) = conn.into_split();
    let deadline = tokio::time::Instant::now() + give_up;
    let mut buf = [0u8; 1024];
    let mut sent = 0;
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                // A response (408) may come before the close; keep reading.
                Ok(n) if n > 0 => continue,
                _ => return true,
            },
            _ = tokio::time::sleep(every) => {
                let byte = head.get(sent % head.len()).copied().unwrap_or(b'a');
                if wr.write_all(&[byte]).await.is_err() {
                    return true;
                }
                sent += 1;
            }
            _ = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_connections_are_dropped_and_do_not_block_others() {
    const CONNECTIONS: usize = 200;
    // The header timeout, shortened from its 30 s default to keep the test short.
    let server = Server::start(&["--http_read_timeout", "2s"]);
    let pid = server.pid();
    normal_round_trip(&server, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds, rss) = (fd_count(pid), rss_kib(pid));

    // A request line and headers that never end: "X-Pad: aaaa...".
    let head = format!(
        "PUT /cas/{} HTTP/1.1\r\nHost: x\r\nX-Pad: ",
        hex(b"never sent")
    )
    .into_bytes();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        tasks.push(tokio::spawn(slowloris(
            server.http_addr().to_string(),
            head.clone(),
            Duration::from_millis(100),
            Duration::from_secs(60),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    normal_round_trip(&server, 2).await;
    let peak_fds = fd_count(pid);
    let mut closed_by_server = 0;
    for t in tasks {
        closed_by_server += usize::from(t.await.unwrap());
    }
    println!(
        "slowloris: {closed_by_server}/{CONNECTIONS} connections closed by the server; fds {fds} -> {peak_fds}; RSS {rss} KiB -> {} KiB",
        rss_kib(pid)
    );
    assert_eq!(
        closed_by_server, CONNECTIONS,
        "connections still dribbling headers after 60 s were not closed (http_read_timeout 2s)"
    );
    normal_round_trip(&server, 3).await;
    fds_settle(pid, fds, "slowloris").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_upload_does_not_block_others_and_leaves_nothing_when_dropped() {
    let server = Server::start(&[]);
    let pid = server.pid();
    normal_round_trip(&server, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds, files) = (
        fd_count(pid),
        server.status_async().await["NumFiles"].clone(),
    );

    let blob = support::noise(4 * MIB, 77);
    let stalled = partial_put(&server, &blob, 256 * KIB).await;
    // The write has started: its bytes are reserved and a temp file exists.
    let dir = server.dir.clone();
    wait_until(
        "the stalled upload has a temp file",
        Duration::from_secs(30),
        || (temp_files(&dir) == 1, temp_files(&dir)),
    )
    .await;
    let reserved = server.status_async().await["ReservedSize"]
        .as_u64()
        .unwrap();
    assert_eq!(
        reserved,
        blob.len() as u64,
        "the stalled upload's reservation"
    );
    // Others are served while it stalls (here for 3 s).
    for i in 0..3 {
        normal_round_trip(&server, 10 + i).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(stalled);
    wait_until(
        "the dropped upload's temp file is removed",
        Duration::from_secs(30),
        || (temp_files(&dir) == 0, temp_files(&dir)),
    )
    .await;
    let st = server.status_async().await;
    assert_eq!(
        st["ReservedSize"].as_u64(),
        Some(0),
        "reservation kept: {st}"
    );
    assert_eq!(
        st["NumFiles"].as_u64().unwrap(),
        files.as_u64().unwrap() + 3,
        "only the three normal blobs were added: {st}"
    );
    let r = http_client()
        .head(format!("{}/cas/{}", server.http_url, hex(&blob)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a partial upload became visible");
    fds_settle(pid, fds, "stalled upload").await;
}

/// `http_read_timeout` is documented as the time allowed to read a client
/// request (bazel-remote: Go's `ReadTimeout`, which covers the body). A
/// client that stops sending mid-body should lose its connection, temp
/// file and reservation once it passes. (It holds no write slot while it
/// waits: as many stalled uploads as `max_concurrent_writes` do not stop
/// another writer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]

async fn http_read_timeout_cuts_stalled_uploads_and_frees_their_write_slots() {
    const SLOTS: usize = 2;
    let server = Server::start(&[
        "--http_read_timeout",
        "2s",
        "--max_concurrent_writes",
        &SLOTS.to_string(),
    ]);
    let dir = server.dir.clone();
    let mut stalled = Vec::new();
    for i in 0..SLOTS {
        stalled
            .push(partial_put(&server, &support::noise(2 * MIB, 78 + i as u64), 512 * KIB).await);
    }
    // More than one receive buffer each: a write creates its temp file
    // when its first full buffer goes to disk.
    wait_until(
        "every stalled upload holds a temp file",
        Duration::from_secs(30),
        || (temp_files(&dir) == SLOTS, temp_files(&dir)),
    )
    .await;
    // Another writer gets a slot while they stall.
    normal_round_trip(&server, 1).await;
    for (i, conn) in stalled.iter_mut().enumerate() {
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(60), async {
            let mut answer = Vec::new();
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
            String::from_utf8_lossy(&answer).into_owned()
        })
        .await;
        let answer = closed.unwrap_or_else(|_| {
            panic!("stalled upload {i} is still open 60 s later with http_read_timeout 2s")
        });
        println!("stalled upload {i} answered: {answer:?}");
    }
    wait_until(
        "temp files of the cut uploads removed",
        Duration::from_secs(30),
        || (temp_files(&dir) == 0, temp_files(&dir)),
    )
    .await;
    assert_eq!(
        server.status_async().await["ReservedSize"].as_u64(),
        Some(0),
        "reservations of the cut uploads kept"
    );
}
