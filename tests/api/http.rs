//! The HTTP cache protocol against the real server binary: what Bazel,
//! ccache and bazel-remote clients send, and what malformed requests get.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::support::async_client as client;
use crate::support::{Server, hex};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

/// Deterministic, compressible test data.
fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i / 7) as u8 ^ seed).collect()
}

async fn put(s: &Server, path: &str, body: Vec<u8>) -> reqwest::Response {
    client()
        .put(format!("{}{path}", s.http_url))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Sends a raw HTTP/1.1 request, bypassing any URL normalisation a client
/// library would apply (`..` segments), and returns the status code.
fn raw_request(s: &Server, request: &str) -> u16 {
    let addr = s.http_url.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn action_result(outputs: &[&[u8]]) -> re::ActionResult {
    re::ActionResult {
        output_files: outputs
            .iter()
            .enumerate()
            .map(|(i, d)| re::OutputFile {
                path: format!("out/{i}"),
                digest: Some(re::Digest {
                    hash: hex(d),
                    size_bytes: d.len() as i64,
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn cas_round_trip_head_and_instance_prefix() {
    let s = Server::start(&[]);
    let blob = data(100_000, 1);
    let h = hex(&blob);
    assert_eq!(s.get_async(&format!("/cas/{h}")).await.0, 404);
    let r = client()
        .head(format!("{}/cas/{h}", s.http_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    assert_eq!(
        put(&s, &format!("/cas/{h}"), blob.clone()).await.status(),
        200
    );
    let r = client()
        .get(format!("{}/cas/{h}", s.http_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        blob.len().to_string().as_str()
    );
    assert_eq!(r.bytes().await.unwrap().to_vec(), blob);

    let r = client()
        .head(format!("{}/cas/{h}", s.http_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        blob.len().to_string().as_str()
    );

    // CAS is shared across instance-name prefixes.
    assert_eq!(
        s.get_async(&format!("/some/instance/cas/{h}")).await,
        (200, blob.clone())
    );
    // The empty blob always exists.
    assert_eq!(
        s.get_async(&format!("/cas/{}", hex(b""))).await,
        (200, vec![])
    );

    let st = s.status_async().await;
    assert_eq!(st["NumFiles"], 1);
    for field in [
        "CurrSize",
        "UncompressedSize",
        "ReservedSize",
        "MaxSize",
        "ServerTime",
        "GitCommit",
        "NumGoroutines",
    ] {
        assert!(st.get(field).is_some(), "/status lacks {field}: {st}");
    }
    assert_eq!(st["UncompressedSize"], blob.len() as u64);
    assert_eq!(st["MaxSize"], 1u64 << 30);
}

#[tokio::test]
async fn action_cache_validates_and_checks_completeness() {
    let s = Server::start(&[]);
    let out = data(5000, 2);
    let ar = action_result(&[&out]).encode_to_vec();
    let key = hex(b"some action");

    // Referenced blob missing: stored, but a GET is a miss, not a hit the
    // client could not download.
    assert_eq!(
        put(&s, &format!("/ac/{key}"), ar.clone()).await.status(),
        200
    );
    assert_eq!(s.get_async(&format!("/ac/{key}")).await.0, 404);
    let r = client()
        .head(format!("{}/ac/{key}", s.http_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    assert_eq!(
        put(&s, &format!("/cas/{}", hex(&out)), out.clone())
            .await
            .status(),
        200
    );
    assert_eq!(s.get_async(&format!("/ac/{key}")).await, (200, ar.clone()));

    // Garbage is refused with a reason, and the old entry stays.
    let r = put(
        &s,
        &format!("/ac/{key}"),
        b"\xff\xff\xff not a protobuf".to_vec(),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("ActionResult"));
    assert_eq!(s.get_async(&format!("/ac/{key}")).await, (200, ar));
}

#[tokio::test]
async fn ac_validation_can_be_disabled_for_ccache() {
    let s = Server::start(&["--disable_http_ac_validation"]);
    let key = hex(b"ccache manifest");
    let body = b"arbitrary ccache result bytes".to_vec();
    assert_eq!(
        put(&s, &format!("/ac/{key}"), body.clone()).await.status(),
        200
    );
    assert_eq!(s.get_async(&format!("/ac/{key}")).await, (200, body));
}

#[tokio::test]
async fn instance_mangling_separates_action_caches() {
    let s = Server::start(&[
        "--enable_ac_key_instance_mangling",
        "--disable_http_ac_validation",
    ]);
    let key = hex(b"action");
    assert_eq!(
        put(&s, &format!("/team-a/ac/{key}"), b"a".to_vec())
            .await
            .status(),
        200
    );
    assert_eq!(
        put(&s, &format!("/team-b/ac/{key}"), b"b".to_vec())
            .await
            .status(),
        200
    );
    assert_eq!(
        s.get_async(&format!("/team-a/ac/{key}")).await,
        (200, b"a".to_vec())
    );
    assert_eq!(
        s.get_async(&format!("/team-b/ac/{key}")).await,
        (200, b"b".to_vec())
    );
    assert_eq!(s.get_async(&format!("/ac/{key}")).await.0, 404);
}

#[tokio::test]
async fn zstd_both_ways() {
    for mode in ["zstd", "uncompressed"] {
        let s = Server::start(&["--storage_mode", mode]);
        let blob = data(300_000, 3);
        let h = hex(&blob);
        // Upload compressed, with the logical size in X-Digest-SizeBytes.
        let compressed = zstd::encode_all(&blob[..], 3).unwrap();
        let r = client()
            .put(format!("{}/cas/{h}", s.http_url))
            .header("Content-Encoding", "zstd")
            .header("X-Digest-SizeBytes", blob.len().to_string())
            .body(compressed)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{mode}: {}", r.text().await.unwrap());
        assert_eq!(
            s.get_async(&format!("/cas/{h}")).await,
            (200, blob.clone()),
            "{mode}"
        );

        let r = client()
            .get(format!("{}/cas/{h}", s.http_url))
            .header("Accept-Encoding", "zstd")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let zstd = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_string());
        let body = r.bytes().await.unwrap().to_vec();
        match zstd.as_deref() {
            Some("zstd") => assert_eq!(zstd::decode_all(&body[..]).unwrap(), blob, "{mode}"),
            None => assert_eq!(body, blob, "{mode}"),
            other => panic!("unexpected content-encoding {other:?}"),
        }
        if mode == "zstd" {
            assert_eq!(
                zstd.as_deref(),
                Some("zstd"),
                "zstd storage serves its bytes compressed"
            );
            assert!(s.status_async().await["CurrSize"].as_u64().unwrap() < blob.len() as u64 / 2);
        }
    }
}

#[tokio::test]
async fn large_chunked_upload_streams() {
    let s = Server::start(&[]);
    let blob = data(5 * 1024 * 1024 + 123, 4);
    let h = hex(&blob);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        blob.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = client()
        .put(format!("{}/cas/{h}", s.http_url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(s.get_async(&format!("/cas/{h}")).await, (200, blob));
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let s = Server::start(&[]);
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let blob = data(10_000, 5);
    let h = hex(&blob);
    let r = c
        .put(format!("{}/cas/{h}", s.http_url))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{}/cas/{h}", s.http_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().to_vec(), blob);
}

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_change_nothing() {
    let s = Server::start(&["--max_blob_size", "65536"]);
    // Something already stored, to check it survives the abuse.
    let kept = data(1000, 6);
    assert_eq!(
        put(&s, &format!("/cas/{}", hex(&kept)), kept.clone())
            .await
            .status(),
        200
    );
    let before = s.status_async().await;

    let good = data(2000, 7);
    let h = hex(&good);
    let big = data(70_000, 8);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "bad hex",
            client()
                .put(format!("{}/cas/{}", s.http_url, "zz".repeat(32)))
                .body(good.clone()),
            400,
        ),
        (
            "short hash",
            client()
                .put(format!("{}/cas/abc123", s.http_url))
                .body(good.clone()),
            400,
        ),
        (
            "uppercase hash",
            client()
                .put(format!("{}/cas/{}", s.http_url, h.to_uppercase()))
                .body(good.clone()),
            400,
        ),
        (
            "digest mismatch",
            client()
                .put(format!("{}/cas/{}", s.http_url, hex(b"other")))
                .body(good.clone()),
            400,
        ),
        (
            "empty body, non-empty hash",
            client()
                .put(format!("{}/cas/{h}", s.http_url))
                .body(Vec::new()),
            400,
        ),
        (
            "over max_blob_size",
            client()
                .put(format!("{}/cas/{}", s.http_url, hex(&big)))
                .body(big.clone()),
            400,
        ),
        (
            "chunked over max_blob_size",
            client()
                .put(format!("{}/cas/{}", s.http_url, hex(&big)))
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    big.chunks(8192)
                        .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                        .collect::<Vec<_>>(),
                ))),
            400,
        ),
        (
            "bad ActionResult",
            client()
                .put(format!("{}/ac/{h}", s.http_url))
                .body(b"\xff\xff\xff".to_vec()),
            400,
        ),
        (
            "unsupported encoding",
            client()
                .put(format!("{}/cas/{h}", s.http_url))
                .header("Content-Encoding", "gzip")
                .body(good.clone()),
            400,
        ),
        (
            "bad X-Digest-SizeBytes",
            client()
                .put(format!("{}/cas/{h}", s.http_url))
                .header("X-Digest-SizeBytes", "lots")
                .body(good.clone()),
            400,
        ),
        (
            "corrupt zstd body",
            client()
                .put(format!("{}/cas/{h}", s.http_url))
                .header("Content-Encoding", "zstd")
                .header("X-Digest-SizeBytes", good.len().to_string())
                .body(b"definitely not zstd".to_vec()),
            400,
        ),
        (
            "method",
            client()
                .post(format!("{}/cas/{h}", s.http_url))
                .body(good.clone()),
            405,
        ),
        (
            "delete",
            client().delete(format!("{}/cas/{}", s.http_url, hex(&kept))),
            405,
        ),
        (
            "unknown path",
            client().get(format!("{}/nothing/here", s.http_url)),
            404,
        ),
        (
            "trailing segment",
            client().get(format!("{}/cas/{h}/x", s.http_url)),
            400,
        ),
    ];
    for (what, req, want) in cases {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let allow = r.headers().get("allow").cloned();
        let text = r.text().await.unwrap();
        assert_eq!(status, want, "{what}: {text}");
        assert!(!text.trim().is_empty(), "{what}: error without a reason");
        if want == 405 {
            assert_eq!(allow.unwrap(), "GET, HEAD, PUT", "{what}");
        }
    }
    // Traversal, sent raw so no client library normalises it away.
    for path in [
        format!("/../cas/{h}"),
        format!("/a/%2e%2e/cas/{h}"),
        format!("/./ac/{h}"),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_request(&s, &req), 400, "{path}");
    }

    let after = s.status_async().await;
    for field in ["NumFiles", "CurrSize", "UncompressedSize"] {
        assert_eq!(before[field], after[field], "{field} changed");
    }
    assert_eq!(s.get_async(&format!("/cas/{h}")).await.0, 404);
    assert_eq!(
        s.get_async(&format!("/cas/{}", hex(&kept))).await,
        (200, kept)
    );
    let tmp: Vec<_> = std::fs::read_dir(s.dir.join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "temp files left behind: {tmp:?}");
}
