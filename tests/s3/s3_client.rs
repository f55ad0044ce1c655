//! The S3 client against a real S3 server (s3s-fs, which checks SigV4
//! signatures), and against fake servers that refuse, hang or stall.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::support;
use crate::support::s3::S3Server;
use bazel_cache::config::S3AuthMethod;
use bazel_cache_store::s3::client::{S3Client, S3ClientOptions, S3Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;

/// Deterministic, incompressible-looking bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A temporary file holding `data`, opened for reading.
fn file_with(data: &[u8]) -> (tempfile::NamedTempFile, Arc<std::fs::File>) {
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.write_all(data).unwrap();
    tmp.flush().unwrap();
    let file = Arc::new(tmp.reopen().unwrap());
    (tmp, file)
}

async fn get_bytes(client: &S3Client, key: &str) -> Option<Vec<u8>> {
    let obj = client.get(key).await.unwrap()?;
    let mut out = Vec::new();
    let mut body = obj.body;
    body.read_to_end(&mut out).await.unwrap();
    if let Some(len) = obj.len {
        assert_eq!(len, out.len() as u64, "Content-Length of {key}");
    }
    Some(out)
}

async fn put_bytes(client: &S3Client, key: &str, data: &[u8]) {
    let (_tmp, file) = file_with(data);
    client
        .put_file(key, file, data.len() as u64)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

fn short_timeouts() -> S3ClientOptions {
    S3ClientOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(1),
        stall_timeout: Duration::from_secs(1),
        ..S3ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_head_round_trip() {
    let s3 = S3Server::start();
    let client = S3Client::new(&s3.config()).unwrap();
    let key = "prefix/cas/ab/ab0123456789";
    let data = pattern(300_000, 1);

    assert_eq!(client.head(key).await.unwrap(), None);
    assert!(client.get(key).await.unwrap().is_none());

    put_bytes(&client, key, &data).await;
    assert_eq!(client.head(key).await.unwrap(), Some(data.len() as u64));
    assert_eq!(get_bytes(&client, key).await.unwrap(), data);
    assert_eq!(std::fs::read(s3.object_path(key)).unwrap(), data);

    // Overwrite with other content; an empty object.
    let data2 = pattern(1000, 2);
    put_bytes(&client, key, &data2).await;
    assert_eq!(get_bytes(&client, key).await.unwrap(), data2);
    put_bytes(&client, "prefix/empty", b"").await;
    assert_eq!(client.head("prefix/empty").await.unwrap(), Some(0));
    assert_eq!(get_bytes(&client, "prefix/empty").await.unwrap(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_share_the_pool() {
    let s3 = S3Server::start();
    let client = S3Client::new(&s3.config()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("p/cas/{i:02x}/{i}");
            let data = pattern(10_000 + i as usize, i);
            put_bytes(&client, &key, &data).await;
            assert_eq!(get_bytes(&client, &key).await.unwrap(), data);
            assert_eq!(client.head(&key).await.unwrap(), Some(data.len() as u64));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_round_trip() {
    let s3 = S3Server::start();
    let opts = S3ClientOptions {
        multipart_threshold: MIB,
        multipart_part_size: 5 * MIB, // S3's (and s3s-fs's) minimum
        multipart_concurrency: 2,
        ..S3ClientOptions::default()
    };
    let client = S3Client::with_options(&s3.config(), opts).unwrap();
    let key = "p/cas/cd/multipart";
    let data = pattern((11 * MIB + 1234) as usize, 3);
    put_bytes(&client, key, &data).await;
    assert_eq!(client.head(key).await.unwrap(), Some(data.len() as u64));
    assert_eq!(get_bytes(&client, key).await.unwrap(), data);
    // It really went up in three parts: s3s-fs gives multipart objects an
    // ETag ending in "-<parts>" and keeps it in its internal info file.
    let internal: Vec<String> = std::fs::read_dir(s3.root.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".internal.json"))
        .map(|n| std::fs::read_to_string(s3.root.path().join(n)).unwrap())
        .collect();
    assert!(
        internal.iter().any(|t| t.contains("-3\"")),
        "no 3-part ETag in {internal:?}"
    );
    assert!(s3.pending_upload_parts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_multipart_upload_is_aborted() {
    let s3 = S3Server::start();
    // Parts below 5 MiB: s3s-fs refuses to complete (EntityTooSmall).
    let opts = S3ClientOptions {
        multipart_threshold: 100_000,
        multipart_part_size: 100_000,
        ..S3ClientOptions::default()
    };
    let client = S3Client::with_options(&s3.config(), opts).unwrap();
    let (_tmp, file) = file_with(&pattern(250_000, 4));
    let err = client
        .put_file("p/small-parts", file, 250_000)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("EntityTooSmall"), "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("CompleteMultipartUpload"), "{err}");
    assert_eq!(client.head("p/small-parts").await.unwrap(), None);
    // (s3s-fs forgets the upload id when completing fails, so the abort that
    // follows can't clean up its parts there; real S3 keeps it until aborted.)
    let leftovers = s3.pending_upload_parts();

    // A file shorter than the length given fails reading part 3 after parts
    // 1 and 2 went up (one part at a time): a local error, not retryable,
    // and the upload is aborted, which removes the parts.
    let opts = S3ClientOptions {
        multipart_threshold: MIB,
        multipart_part_size: 5 * MIB,
        multipart_concurrency: 1,
        ..S3ClientOptions::default()
    };
    let client = S3Client::with_options(&s3.config(), opts).unwrap();
    let (_tmp, file) = file_with(&pattern((10 * MIB + 10) as usize, 5));
    let err = client
        .put_file("p/short-file", file, 12 * MIB)
        .await
        .unwrap_err();
    assert!(matches!(err, S3Error::File { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(
        s3.pending_upload_parts(),
        leftovers,
        "parts of the aborted upload remain"
    );
    assert_eq!(client.head("p/short-file").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_read_the_open_file_even_after_unlink_and_can_be_retried() {
    let s3 = S3Server::start();
    let client = S3Client::new(&s3.config()).unwrap();
    let data = pattern(70_000, 6);
    let (tmp, file) = file_with(&data);
    // Move the cursor: positional reads must not care.
    (&*file).seek(SeekFrom::Start(1234)).unwrap();
    tmp.close().unwrap(); // unlinks the path
    client
        .put_file("p/unlinked", file.clone(), 70_000)
        .await
        .unwrap();
    client
        .put_file("p/unlinked", file.clone(), 70_000)
        .await
        .unwrap();
    assert_eq!(get_bytes(&client, "p/unlinked").await.unwrap(), data);

    // Shorter than declared: a local file error, nothing stored.
    let err = client.put_file("p/short", file, 80_000).await.unwrap_err();
    assert!(matches!(err, S3Error::File { .. }), "{err:?}");
    assert!(err.to_string().contains("p/short"), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(client.head("p/short").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_special_characters() {
    let s3 = S3Server::start();
    let client = S3Client::new(&s3.config()).unwrap();
    let keys = [
        "p/a b+c%d=e&f?g#h~i.j_k-l",
        "p/,;:@!$'()*[]{}^`|\"<>\\",
        "p/ünïcödé/€/日本語",
        "p/x=1&y=2",
        "p/trailing space ",
        "p/%2F-not-a-slash",
    ];
    for (i, key) in keys.iter().enumerate() {
        let data = pattern(100 + i, i as u64);
        put_bytes(&client, key, &data).await;
        assert_eq!(
            client.head(key).await.unwrap(),
            Some(data.len() as u64),
            "{key}"
        );
        assert_eq!(get_bytes(&client, key).await.unwrap(), data, "{key}");
        assert_eq!(std::fs::read(s3.object_path(key)).unwrap(), data, "{key}");
        client
            .touch(key)
            .await
            .unwrap_or_else(|e| panic!("touch {key}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_refreshes_last_modified() {
    let s3 = S3Server::start();
    let client = S3Client::new(&s3.config()).unwrap();
    let key = "p/ac/ef/touched";
    let data = pattern(5000, 7);
    put_bytes(&client, key, &data).await;

    let path = s3.object_path(key);
    let old = SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    client.touch(key).await.unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let age = SystemTime::now().duration_since(mtime).unwrap_or_default();
    assert!(
        age < Duration::from_secs(60),
        "mtime is {age:?} old after touch"
    );
    assert_eq!(get_bytes(&client, key).await.unwrap(), data);

    let err = client.touch("p/ac/ef/missing").await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert_eq!(err.code(), Some("NoSuchKey"), "{err}");
    assert!(!err.is_retryable());
}

/// A server answering every request with `answer(request line)` (then
/// closing the connection).
async fn canned_server(answer: fn(&str) -> String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 8192];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req);
                let line = text.lines().next().unwrap_or_default().to_owned();
                let _ = conn.write_all(answer(&line).as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    endpoint
}

fn xml_answer(status: &str, xml: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{xml}",
        xml.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_are_classified() {
    // (s3s-fs answers NoSuchKey for objects of missing buckets and creates
    // buckets on PUT, so these answers are canned.)
    let endpoint = canned_server(|line| {
        let error = |status, code: &str, msg: &str| {
            xml_answer(
                status,
                &format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                     <Message>{msg}</Message><RequestId>1</RequestId></Error>"
                ),
            )
        };
        if line.starts_with("GET /bazel-cache-test/nobucket ") {
            error("404 Not Found", "NoSuchBucket", "The specified bucket does not exist")
        } else if line.starts_with("GET /bazel-cache-test/nokey ") {
            error("404 Not Found", "NoSuchKey", "The specified key does not exist.")
        } else if line.starts_with("GET /bazel-cache-test/plain404 ") {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
        } else if line.starts_with("GET /bazel-cache-test/slowdown ") {
            error("503 Slow Down", "SlowDown", "Please reduce your request rate.")
        } else if line.starts_with("PUT /bazel-cache-test/copyfails ") {
            // CopyObject may fail after S3 sent 200 OK.
            error("200 OK", "InternalError", "We encountered an internal error. Please try again.")
        } else if line.starts_with("PUT /bazel-cache-test/copyok ") {
            xml_answer(
                "200 OK",
                "<CopyObjectResult><ETag>\"x\"</ETag><LastModified>2024-01-01T00:00:00Z</LastModified></CopyObjectResult>",
            )
        } else if line.starts_with("HEAD ") {
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
        } else {
            error("400 Bad Request", "InvalidRequest", "unexpected")
        }
    })
    .await;
    let cfg = S3Server::config_for_endpoint(&endpoint);
    let client = S3Client::with_options(&cfg, short_timeouts()).unwrap();

    let err = client.get("nobucket").await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert_eq!(err.code(), Some("NoSuchBucket"), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(
        err.to_string(),
        "S3 GET nobucket: HTTP 404 Not Found: NoSuchBucket: The specified bucket does not exist"
    );
    assert!(client.get("nokey").await.unwrap().is_none());
    assert!(client.get("plain404").await.unwrap().is_none());

    let err = client.get("slowdown").await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(503), Some("SlowDown")),
        "{err}"
    );
    assert!(err.is_retryable());

    let err = client.touch("copyfails").await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(200), Some("InternalError")),
        "{err}"
    );
    assert!(err.is_retryable());
    assert!(err.to_string().contains("CopyObject"), "{err}");
    client.touch("copyok").await.unwrap();

    let err = client.head("anything").await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(403), None), "{err}");
    assert_eq!(err.to_string(), "S3 HEAD anything: HTTP 403 Forbidden");
    assert!(!err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_a_clear_permanent_error() {
    let s3 = S3Server::start();
    let client = S3Client::new(&s3.config()).unwrap();
    put_bytes(&client, "p/k", b"hello").await;

    let mut cfg = s3.config();
    cfg.secret_access_key = "WRONG/secret+key/abcdefghijklmnopqrstuvw".into();
    let bad = S3Client::new(&cfg).unwrap();
    let check = |err: &S3Error| {
        let text = err.to_string();
        assert!(!err.is_retryable(), "{text}");
        assert_eq!(err.status(), Some(403), "{text}");
        for secret in [cfg.secret_access_key.expose(), s3.secret_key.as_str()] {
            assert!(!text.contains(secret), "{text}");
            assert!(!format!("{err:?}").contains(secret), "{err:?}");
        }
        assert!(!text.contains("Signature="), "{text}");
        text
    };
    let err = bad.get("p/k").await.unwrap_err();
    let text = check(&err);
    assert_eq!(err.code(), Some("SignatureDoesNotMatch"), "{text}");
    assert!(
        text.contains("GET p/k") && text.contains("SignatureDoesNotMatch"),
        "{text}"
    );
    // HEAD: status only.
    check(&bad.head("p/k").await.unwrap_err());
    let (_tmp, file) = file_with(b"other");
    let err = bad.put_file("p/k", file, 5).await.unwrap_err();
    check(&err);
    assert_eq!(err.code(), Some("SignatureDoesNotMatch"), "{err}");
    check(&bad.touch("p/k").await.unwrap_err());
    assert_eq!(get_bytes(&client, "p/k").await.unwrap(), b"hello");
    assert!(!format!("{bad:?}").contains(cfg.secret_access_key.expose()));

    // An unknown access key.
    let mut cfg = s3.config();
    cfg.access_key_id = "AKIAUNKNOWN".into();
    let err = S3Client::new(&cfg).unwrap().get("p/k").await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.status(), Some(403), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_token_and_credentials_file() {
    let s3 = S3Server::start();
    // s3s-fs doesn't validate tokens, but the signed x-amz-security-token
    // header must keep the signature valid.
    let mut cfg = s3.config();
    cfg.session_token = "FwoGZXIvYXdzEJr//////////token+with/odd=chars".into();
    let client = S3Client::new(&cfg).unwrap();
    put_bytes(&client, "p/token", b"t").await;
    assert_eq!(get_bytes(&client, "p/token").await.unwrap(), b"t");

    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = nope\naws_secret_access_key = nope\n\n[ci]\n\
             aws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key, s3.secret_key
        ),
    )
    .unwrap();
    let mut cfg = s3.config();
    cfg.auth_method = S3AuthMethod::AwsCredentialsFile;
    cfg.access_key_id = Default::default();
    cfg.secret_access_key = Default::default();
    cfg.aws_shared_credentials_file = Some(creds);
    cfg.aws_profile = "ci".into();
    let client = S3Client::new(&cfg).unwrap();
    assert_eq!(get_bytes(&client, "p/token").await.unwrap(), b"t");
    cfg.aws_profile = "default".into();
    let err = S3Client::new(&cfg)
        .unwrap()
        .head("p/token")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_and_recovery() {
    let mut s3 = S3Server::start();
    let client = S3Client::with_options(&s3.config(), short_timeouts()).unwrap();
    put_bytes(&client, "p/k", b"before").await;

    s3.stop();
    let started = Instant::now();
    let err = client.head("p/k").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(err, S3Error::Connection { .. }), "{err:?}");
    assert!(err.to_string().contains(&s3.endpoint), "{err}");
    let (_tmp, file) = file_with(b"during");
    assert!(
        client
            .put_file("p/k2", file, 6)
            .await
            .unwrap_err()
            .is_retryable()
    );
    assert!(client.get("p/k").await.unwrap_err().is_retryable());
    assert!(started.elapsed() < Duration::from_secs(5));

    s3.restart();
    assert_eq!(client.head("p/k").await.unwrap(), Some(6));
    assert_eq!(get_bytes(&client, "p/k").await.unwrap(), b"before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_fails_fast_and_retryably() {
    let port = support::s3::free_port();
    let mut cfg = S3Server::config_for_endpoint(&format!("127.0.0.1:{port}"));
    cfg.max_idle_conns = 0;
    let client = S3Client::with_options(&cfg, short_timeouts()).unwrap();
    let started = Instant::now();
    let err = client.get("k").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(err, S3Error::Connection { .. }), "{err:?}");
    assert!(err.to_string().contains("GET k"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A server that accepts connections and never answers.
async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            // Read (so uploads aren't stuck on a full window) but never reply.
            tokio::spawn(async move {
                let mut buf = vec![0; 64 * 1024];
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                std::future::pending::<()>().await;
            });
        }
    });
    (endpoint, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresponsive_server_times_out() {
    let (endpoint, server) = silent_server().await;
    let cfg = S3Server::config_for_endpoint(&endpoint);
    let client = S3Client::with_options(&cfg, short_timeouts()).unwrap();

    let started = Instant::now();
    let err = client.head("k").await.unwrap_err();
    assert!(matches!(err, S3Error::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("HEAD k"), "{err}");
    let err = client.get("k").await.unwrap_err();
    assert!(matches!(err, S3Error::Timeout { .. }), "{err:?}");
    let err = client.touch("k").await.unwrap_err();
    assert!(matches!(err, S3Error::Timeout { .. }), "{err:?}");
    let (_tmp, file) = file_with(&pattern(2_000_000, 8));
    let err = client.put_file("k", file, 2_000_000).await.unwrap_err();
    assert!(matches!(err, S3Error::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    // Four one-second timeouts.
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_download_fails_but_slow_download_does_not() {
    // Answers a GET with 100 bytes of a 1000-byte body, then goes silent;
    // or (path /slow) trickles 10 bytes every 30 ms: 3 s in all, under a 1 s
    // stall timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 8192];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let slow = String::from_utf8_lossy(&req).contains("/slow ");
                conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                    .await
                    .unwrap();
                if slow {
                    for _ in 0..100 {
                        conn.write_all(&[b'x'; 10]).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(30)).await;
                    }
                } else {
                    conn.write_all(&[b'x'; 100]).await.unwrap();
                    std::future::pending::<()>().await;
                }
            });
        }
    });
    let cfg = S3Server::config_for_endpoint(&endpoint);
    let client = S3Client::with_options(&cfg, short_timeouts()).unwrap();

    let obj = client.get("stall").await.unwrap().unwrap();
    assert_eq!(obj.len, Some(1000));
    let mut body = obj.body;
    let mut out = Vec::new();
    let started = Instant::now();
    let err = body.read_to_end(&mut out).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert_eq!(out.len(), 100);
    assert!(started.elapsed() < Duration::from_secs(3));

    // Longer than the stall timeout in total, but never stalled.
    let obj = client.get("slow").await.unwrap().unwrap();
    let mut body = obj.body;
    let mut out = Vec::new();
    body.read_to_end(&mut out).await.unwrap();
    assert_eq!(out.len(), 1000);
    server.abort();
}
