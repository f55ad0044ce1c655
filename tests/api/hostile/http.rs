//! Hostile HTTP requests, sent as raw bytes on fresh connections: each gets
//! its documented status and changes nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::helpers::{MIB, assert_alive, assert_unchanged, snapshot, zstd_bomb};
use crate::support::{self, Server, digest, hex};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

/// Sends raw bytes on a fresh connection and returns the status code of
/// the answer (0 when the server closed the connection without one) and
/// the response head.
fn raw(s: &Server, request: &[u8]) -> (u16, String) {
    let mut conn = TcpStream::connect(s.http_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The server may answer (431, 400) and close before reading it all.
    let _ = conn.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn request(method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    }) {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

#[test]
fn hostile_http_requests_get_their_status_and_change_nothing() {
    let s = Server::start(&["--max_blob_size", "1048576"]);
    // Something stored, so "nothing changed" also means "nothing lost".
    let kept = support::noise(5000, 1);
    let kept_hex = hex(&kept);
    let (code, _) = support::http_request(
        "PUT",
        &format!("{}/cas/{kept_hex}", s.http_url),
        Some(kept.clone()),
    );
    assert_eq!(code, 200);
    let before = snapshot(&s);

    let body = support::noise(3000, 2);
    let h = hex(&body);
    let n = body.len().to_string();
    let ar_abs = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "/etc/passwd".into(),
            digest: Some(digest(&kept)),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let ar_bad_digest = re::ActionResult {
        stdout_digest: Some(re::Digest {
            hash: "../../etc/passwd".into(),
            size_bytes: 1,
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let ar_negative = re::ActionResult {
        output_directories: vec![re::OutputDirectory {
            path: "d".into(),
            tree_digest: Some(re::Digest {
                hash: kept_hex.clone(),
                size_bytes: -5,
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let bomb = zstd_bomb(8 * MIB);
    let long_instance = "a".repeat(8000);
    let many_headers: Vec<(&str, String)> =
        (0..200).map(|_| ("X-Many", "header".to_string())).collect();

    // (what, raw request, expected status; 0 = connection closed unanswered)
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // /status and /metrics: read-only pages.
        ("PUT /status", request("PUT", "/status", &[], b"{}"), 405),
        ("POST /status", request("POST", "/status", &[], b""), 405),
        (
            "DELETE /metrics",
            request("DELETE", "/metrics", &[], b""),
            405,
        ),
        ("PUT /metrics", request("PUT", "/metrics", &[], b"x"), 405),
        (
            "/status/extra",
            request("GET", "/status/extra", &[], b""),
            404,
        ),
        ("/metricsx", request("GET", "/metricsx", &[], b""), 404),
        // Unknown paths and methods.
        // `/` is the web console's overview (on by default).
        ("root", request("GET", "/", &[], b""), 200),
        (
            "console, unknown page",
            request("GET", "/ui/nope", &[], b""),
            404,
        ),
        ("/ac alone", request("GET", "/ac", &[], b""), 400),
        ("/cas/ no hash", request("GET", "/cas/", &[], b""), 400),
        (
            "PATCH /cas",
            request("PATCH", &format!("/cas/{h}"), &[], &body),
            405,
        ),
        (
            "OPTIONS /ac",
            request("OPTIONS", &format!("/ac/{h}"), &[], b""),
            405,
        ),
        (
            "made-up method",
            request("FROB", &format!("/cas/{h}"), &[], b""),
            405,
        ),
        // Bad digests on reads (tests/api/http.rs covers them on PUT).
        (
            "GET bad hex",
            request("GET", &format!("/cas/{}", "g".repeat(64)), &[], b""),
            400,
        ),
        (
            "HEAD short hash",
            request("HEAD", "/ac/abcdef", &[], b""),
            400,
        ),
        (
            "GET 65 chars",
            request("GET", &format!("/ac/{h}0"), &[], b""),
            400,
        ),
        (
            "GET escaped hash",
            request("GET", &format!("/cas/%{}", &h[1..]), &[], b""),
            400,
        ),
        // Instance names.
        (
            "instance with %20",
            request("GET", &format!("/team%20a/cas/{h}"), &[], b""),
            400,
        ),
        (
            "instance with $",
            request("GET", &format!("/te$am/cas/{h}"), &[], b""),
            400,
        ),
        (
            "instance .. deep",
            request("PUT", &format!("/a/b/../../cas/{h}"), &[], &body),
            400,
        ),
        (
            "long instance",
            request("GET", &format!("/{long_instance}/cas/{h}"), &[], b""),
            404,
        ),
        // Sizes that disagree with the body.
        (
            "X-Digest-SizeBytes too small",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[("X-Digest-SizeBytes", "10".into())],
                &body,
            ),
            400,
        ),
        (
            "X-Digest-SizeBytes over max_blob_size",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[("X-Digest-SizeBytes", "99999999999".into())],
                &body,
            ),
            400,
        ),
        (
            "Content-Length over max_blob_size, no body",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[("Content-Length", "2000000".into())],
                b"",
            ),
            400,
        ),
        (
            "negative Content-Length",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[("Content-Length", "-1".into())],
                &body,
            ),
            400,
        ),
        (
            "two Content-Lengths",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[
                    ("Content-Length", n.clone()),
                    ("Content-Length", "7".into()),
                ],
                &body,
            ),
            400,
        ),
        (
            "bad chunked framing",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[("Transfer-Encoding", "chunked".into())],
                b"zz\r\nnot hex\r\n0\r\n\r\n",
            ),
            400,
        ),
        // Bodies that hash wrong, decode wrong or decode too large.
        (
            "empty-blob name, non-empty body",
            request("PUT", &format!("/cas/{}", hex(b"")), &[], &body),
            400,
        ),
        (
            "zstd body of other bytes",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[
                    ("Content-Encoding", "zstd".into()),
                    ("X-Digest-SizeBytes", n.clone()),
                ],
                &zstd::encode_all(&support::noise(3000, 3)[..], 1).unwrap(),
            ),
            400,
        ),
        (
            "zstd bomb to /cas",
            request(
                "PUT",
                &format!("/cas/{}", hex(&vec![0u8; 8 * MIB])),
                &[("Content-Encoding", "zstd".into())],
                &bomb,
            ),
            400,
        ),
        (
            "zstd bomb to /ac",
            request(
                "PUT",
                &format!("/ac/{h}"),
                &[("Content-Encoding", "zstd".into())],
                &bomb,
            ),
            400,
        ),
        (
            "truncated zstd",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[("Content-Encoding", "zstd".into())],
                &zstd::encode_all(&body[..], 1).unwrap()[..100],
            ),
            400,
        ),
        (
            "Content-Encoding twice",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[("Content-Encoding", "zstd, gzip".into())],
                &body,
            ),
            400,
        ),
        // ActionResults that decode but are invalid.
        (
            "AC absolute output path",
            request("PUT", &format!("/ac/{h}"), &[], &ar_abs),
            400,
        ),
        (
            "AC bad digest",
            request("PUT", &format!("/ac/{h}"), &[], &ar_bad_digest),
            400,
        ),
        (
            "AC negative size",
            request("PUT", &format!("/ac/{h}"), &[], &ar_negative),
            400,
        ),
        (
            "AC X-Digest-SizeBytes mismatch",
            request(
                "PUT",
                &format!("/ac/{h}"),
                &[("X-Digest-SizeBytes", "1".into())],
                &ar_abs,
            ),
            400,
        ),
        // Malformed HTTP itself (hyper's answers).
        (
            "huge header",
            request("GET", "/status", &[("X-Big", "b".repeat(512 * 1024))], b""),
            431,
        ),
        (
            "200 headers",
            request("GET", "/status", &many_headers, b""),
            431,
        ),
        (
            "garbage request line",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
        (
            "space in path",
            b"GET /a b/cas/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        ("HTTP/0.9", b"GET /status\r\n\r\n".to_vec(), 400),
    ];
    let mut failures = Vec::new();
    for (what, req, want) in &cases {
        let (got, head) = raw(&s, req);
        if got != *want {
            failures.push(format!("{what}: expected {want}, got {got}: {head:?}"));
        }
        if *want == 405 && !head.to_ascii_lowercase().contains("\r\nallow: ") {
            failures.push(format!("{what}: 405 without Allow: {head:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_alive(&s);
    assert_unchanged(&s, &before, "hostile HTTP requests");
    let (code, got) = support::http_request("GET", &format!("{}/cas/{kept_hex}", s.http_url), None);
    assert_eq!((code, got), (200, kept));
}

/// The HTTP/1 buffer (64 KiB, `H1_MAX_BUF_SIZE`) bounds a request head:
/// heads well beyond any client's are served, larger ones get 431.
#[test]
fn http1_request_heads_up_to_the_connection_buffer_are_served() {
    let s = Server::start(&[]);
    let big = |kib: usize| request("GET", "/status", &[("X-Big", "b".repeat(kib * 1024))], b"");
    assert_eq!(raw(&s, &big(48)).0, 200);
    assert_eq!(raw(&s, &big(80)).0, 431);
    assert_alive(&s);
}
