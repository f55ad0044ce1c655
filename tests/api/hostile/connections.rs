//! Connections that never become requests, or stop being used, are closed
//! by the server on both ports, and never keep well-behaved clients from
//! being served: silent connections and half an HTTP/2 preface
//! (`request_head_timeout`), HTTP/1 keep-alive and HTTP/2 connections left
//! idle (`http_read_timeout`, `connection_idle_timeout`), connections past
//! `max_connections`, PING and SETTINGS floods; and request framings that
//! smuggle (`Transfer-Encoding`). Every wait is bounded; no test measures a
//! latency.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::helpers::{assert_alive, off_runtime};
use crate::support::prometheus::Scrape;
use crate::support::{self, Server, async_client, hex};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use re::capabilities_client::CapabilitiesClient;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest any test waits for the server to close a connection.
const CLOSE_WAIT: Duration = Duration::from_secs(60);

/// Waits until the server closes `conn` (a read returns EOF or an error),
/// reading and discarding what it sends meanwhile; false if it is still
/// open after `limit`.
async fn closed_by_server(conn: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_to_end).await.is_ok()
}

async fn scrape(s: &Server) -> Scrape {
    let (code, body) = s.get_async("/metrics").await;
    assert_eq!(code, 200);
    Scrape::new(String::from_utf8(body).unwrap())
}

/// A PUT, a GET and a gRPC call, each of which must succeed.
async fn well_behaved_client(s: &Server, seed: u64) {
    let blob = support::noise(4096, seed);
    let url = format!("{}/cas/{}", s.http_url, hex(&blob));
    let put = async_client().put(&url).body(blob.clone()).send().await;
    assert_eq!(put.unwrap().status(), 200);
    let (code, body) = s.get_async(&format!("/cas/{}", hex(&blob))).await;
    assert_eq!((code, body == blob), (200, true));
    if s.grpc_url().is_some() {
        let mut caps = CapabilitiesClient::new(s.channel().await);
        caps.get_capabilities(re::GetCapabilitiesRequest::default())
            .await
            .unwrap();
    }
}

fn grpc_addr(s: &Server) -> String {
    let url = s.grpc_url().unwrap();
    url.rsplit('/').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_and_half_preface_connections_are_closed_on_both_ports() {
    const EACH: usize = 50;
    let s = Server::start_grpc(&["--request_head_timeout", "2s"]);
    let ports = [("http", s.http_addr().to_owned()), ("grpc", grpc_addr(&s))];
    let mut hostile = Vec::new();
    for (_, addr) in &ports {
        for i in 0..2 * EACH {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                conn.write_all(&PREFACE[..12]).await.unwrap();
            }
            hostile.push(conn);
        }
    }
    // Served while they hang on, before and after their deadline.
    for round in 0..3 {
        well_behaved_client(&s, round).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let mut still_open = 0;
    for conn in &mut hostile {
        if !closed_by_server(conn, CLOSE_WAIT).await {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "connections left open past request_head_timeout"
    );
    well_behaved_client(&s, 10).await;

    let m = scrape(&s).await;
    for (port, _) in ports {
        let timeouts = m.value(
            "bazel_cache_connections_timeouts_total",
            &[("port", port), ("phase", "request_head")],
        );
        assert!(timeouts >= (2 * EACH) as f64, "{port}: {timeouts} timeouts");
        assert_eq!(
            m.value(
                "bazel_cache_connections_timeouts_total",
                &[("port", port), ("phase", "idle")]
            ),
            0.0
        );
    }
    off_runtime(|| assert_alive(&s));
}

/// hyper's `header_read_timeout` (`http_read_timeout`) also bounds the
/// wait for the next request on a kept-alive HTTP/1 connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keep_alive_connection_is_closed() {
    let s = Server::start(&["--http_read_timeout", "2s"]);
    let mut conn = TcpStream::connect(s.http_addr()).await.unwrap();
    conn.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    assert!(
        closed_by_server(&mut conn, CLOSE_WAIT).await,
        "a kept-alive connection idle past the header timeout stayed open"
    );
}

/// An HTTP/2 connection whose requests are done is closed after
/// `connection_idle_timeout`, on both ports, although the client keeps
/// pinging it (bytes flow both ways; no request is in progress).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_http2_connections_are_closed_on_both_ports() {
    let s = Server::start_grpc(&["--connection_idle_timeout", "2s"]);
    for (port, addr, path) in [
        ("http", s.http_addr().to_owned(), "/status"),
        // An unknown method: tonic answers UNIMPLEMENTED, a whole call.
        ("grpc", grpc_addr(&s), "/no.Such/Method"),
    ] {
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Duration::from_millis(300))
                .keep_alive_while_idle(true)
                .handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let req = http::Request::builder()
            .method(if port == "grpc" { "POST" } else { "GET" })
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{port}");
        resp.into_body().collect().await.unwrap();
        let ended = tokio::time::timeout(CLOSE_WAIT, conn).await;
        assert!(
            ended.is_ok(),
            "{port}: an idle HTTP/2 connection stayed open"
        );
    }
    let m = scrape(&s).await;
    for port in ["http", "grpc"] {
        let idle = m.value(
            "bazel_cache_connections_timeouts_total",
            &[("port", port), ("phase", "idle")],
        );
        assert!(idle >= 1.0, "{port}: {idle}");
        assert_eq!(
            m.value("bazel_cache_connections_floods_total", &[("port", port)]),
            0.0,
            "{port}: keepalive pings are no flood"
        );
    }
    off_runtime(|| assert_alive(&s));
}

/// A call in progress keeps its connection open however long it lasts: a
/// health Watch stream, which sends nothing after its first message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_in_progress_keeps_its_connection_past_the_idle_timeout() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let s = Server::start_grpc(&["--connection_idle_timeout", "1s"]);
    let mut health = HealthClient::new(s.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let next = tokio::time::timeout(Duration::from_millis(300), watch.message()).await;
    assert!(next.is_err(), "the watch ended: {next:?}");
    let m = scrape(&s).await;
    assert_eq!(
        m.value(
            "bazel_cache_connections_timeouts_total",
            &[("port", "grpc"), ("phase", "idle")]
        ),
        0.0
    );
    drop(watch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_max_connections_new_connections_are_closed_and_counted() {
    const CAP: usize = 5;
    let s = Server::start(&[
        "--max_connections",
        &CAP.to_string(),
        "--request_head_timeout",
        "120s",
    ]);
    let mut holders = Vec::new();
    for _ in 0..CAP {
        holders.push(TcpStream::connect(s.http_addr()).await.unwrap());
    }
    // The server takes them in turn: wait until the cap is reached, i.e.
    // a new connection is closed at once.
    let mut refused = 0;
    for _ in 0..200 {
        let mut extra = TcpStream::connect(s.http_addr()).await.unwrap();
        if closed_by_server(&mut extra, Duration::from_millis(500)).await {
            refused += 1;
            if refused == 3 {
                break;
            }
        } else {
            holders.push(extra);
        }
    }
    assert_eq!(
        refused,
        3,
        "no connection was refused with {} open",
        holders.len()
    );
    // Once the holders go, a well-behaved client is served again.
    drop(holders);
    let mut served = false;
    for _ in 0..100 {
        let status = async_client()
            .get(format!("{}/status", s.http_url))
            .send()
            .await;
        if status.is_ok_and(|r| r.status() == 200) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "not served after the connections at the cap closed");
    well_behaved_client(&s, 1).await;
    let m = scrape(&s).await;
    let counted = m.value("bazel_cache_connections_refused_total", &[("port", "http")]);
    assert!(counted >= 3.0, "{counted}");
    assert_eq!(
        m.value("bazel_cache_connections_limit", &[("port", "http")]),
        CAP as f64
    );
    let refusals = |log: &str| {
        log.lines()
            .filter(|l| l.contains("max_connections are open"))
            .count()
    };
    let log = s.log_once(|log| refusals(log) >= 1);
    let lines = refusals(&log);
    assert_eq!(lines, 1, "refusals are logged once a minute:\n{log}");
    off_runtime(|| assert_alive(&s));
}

/// Sends `frame` after the preface and a SETTINGS frame until the server
/// closes the connection; false if it never does.
async fn flood(addr: &str, frame: &[u8]) -> bool {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut burst = PREFACE.to_vec();
    burst.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for _ in 0..10_000 {
        burst.extend_from_slice(frame);
    }
    let (mut rd, mut wr) = conn.split();
    let write = async {
        // The server may close before taking it all.
        let _ = wr.write_all(&burst).await;
        std::future::pending::<()>().await
    };
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(CLOSE_WAIT, async {
        tokio::select! {
            _ = write => {}
            _ = read => {}
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ping_and_settings_floods_close_the_connection() {
    let s = Server::start_grpc(&[]);
    let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    // SETTINGS_INITIAL_WINDOW_SIZE = 65535, again and again.
    let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0xff, 0xff];
    for (port, addr) in [("http", s.http_addr().to_owned()), ("grpc", grpc_addr(&s))] {
        assert!(flood(&addr, &ping).await, "{port}: PING flood not stopped");
        assert!(
            flood(&addr, &settings).await,
            "{port}: SETTINGS flood not stopped"
        );
    }
    well_behaved_client(&s, 1).await;
    let m = scrape(&s).await;
    for port in ["http", "grpc"] {
        assert_eq!(
            m.value("bazel_cache_connections_floods_total", &[("port", port)]),
            2.0,
            "{port}"
        );
    }
    off_runtime(|| assert_alive(&s));
}

/// Everything the server answers on one connection, until it closes it.
async fn exchange(s: &Server, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(s.http_addr()).await.unwrap();
    let _ = conn.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(CLOSE_WAIT, conn.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the connection was not closed after the answer"
    );
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encodings_other_than_chunked_are_refused() {
    let s = Server::start(&[]);
    let body = b"hello";
    let path = format!("/cas/{}", hex(body));
    let chunked = b"5\r\nhello\r\n0\r\n\r\n";
    let put = |headers: &str| {
        let mut req = format!("PUT {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").into_bytes();
        req.extend_from_slice(chunked);
        req
    };
    for (what, headers, status, reason) in [
        (
            "gzip, chunked",
            "Transfer-Encoding: gzip, chunked\r\n",
            400,
            true,
        ),
        (
            "chunked twice",
            "Transfer-Encoding: chunked, chunked\r\n",
            400,
            true,
        ),
        (
            "two header lines",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            400,
            true,
        ),
        // hyper's own refusal: the last coding is not chunked.
        ("gzip alone", "Transfer-Encoding: gzip\r\n", 400, false),
        (
            "chunked, gzip",
            "Transfer-Encoding: chunked, gzip\r\n",
            400,
            false,
        ),
    ] {
        let answer = exchange(&s, &put(&format!("{headers}Connection: keep-alive\r\n"))).await;
        assert_eq!(status_of(&answer), status, "{what}: {answer}");
        if reason {
            assert!(
                answer.contains("Transfer-Encoding must be exactly \"chunked\""),
                "{what}: {answer}"
            );
        }
    }
    assert_eq!(s.status_async().await["NumFiles"], 0, "nothing was stored");

    // Exactly "chunked" is fine (any case).
    let answer = exchange(
        &s,
        &put("Transfer-Encoding: Chunked\r\nConnection: close\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");

    // Transfer-Encoding and Content-Length: hyper drops Content-Length
    // before the request reaches us, reads the chunked body and closes the
    // connection after answering (RFC 9112 §6.3), so what a proxy that
    // counts Content-Length would take for more body is never read as a
    // request of its own.
    let smuggled = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut req = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n",
        chunked.len() + smuggled.len()
    )
    .into_bytes();
    req.extend_from_slice(chunked);
    req.extend_from_slice(smuggled);
    let answer = exchange(&s, &req).await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(
        !answer.contains("CurrSize"),
        "the smuggled request was served: {answer}"
    );
    off_runtime(|| assert_alive(&s));
}
