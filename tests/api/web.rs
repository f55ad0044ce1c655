//! The web console (`src/web/`) against the real server binary: status
//! codes, the security headers, escaping of what clients stored, the
//! completeness check shown, the read auth, `web_console: false`, the
//! upload bound of `/ui/explain`. The real-browser cases are in
//! `tests/clients/web_browser.rs`.

use bazel_cache::auth::basic_header;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

use crate::support::{self, Server, async_client, digest, hex};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

struct Page {
    code: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn get(s: &Server, path: &str, auth: Option<&str>) -> Page {
    let mut req = async_client().get(format!("{}{path}", s.http_url));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    Page {
        code: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

fn header<'a>(p: &'a Page, name: &str) -> &'a str {
    p.headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

async fn put(s: &Server, path: &str, body: &[u8]) {
    let code = support::request(s, "PUT", path, Some(body)).await;
    assert_eq!(code, 200, "PUT {path}");
}

#[tokio::test]
async fn pages_answer_with_security_headers_and_clear_errors() {
    let s = Server::start_grpc(&["--profile_port", "6060"]);
    let port = s.http_url.rsplit(':').next().unwrap().to_string();
    let home = get(&s, "/", None).await;
    assert_eq!(home.code, 200, "{}", home.body);
    assert_eq!(header(&home, "content-security-policy"), CSP);
    assert_eq!(header(&home, "x-content-type-options"), "nosniff");
    assert!(header(&home, "content-type").starts_with("text/html"));
    // The .bazelrc lines name the address the client used.
    assert!(
        home.body
            .contains(&format!("build --remote_cache=http://127.0.0.1:{port}\n")),
        "{}",
        home.body
    );
    let grpc_port = s
        .grpc_url()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    assert!(
        home.body.contains(&format!(
            "build --remote_cache=grpc://127.0.0.1:{grpc_port}\n"
        )),
        "{}",
        home.body
    );
    // Four charts, and the start-up warning among the recent errors.
    assert_eq!(home.body.matches("<svg class=\"chart\"").count(), 4);
    assert!(
        home.body
            .contains("profile_address/profile_port are ignored"),
        "{}",
        home.body
    );
    assert!(!home.body.contains(" style="), "no inline style (CSP)");
    assert!(!home.body.contains("<script>"), "no inline script (CSP)");

    for (path, kind) in [
        ("/ui/static/console.css", "text/css"),
        ("/ui/static/console.js", "text/javascript"),
        ("/ui/overview/live", "text/html"),
        ("/ui/explain", "text/html"),
    ] {
        let p = get(&s, path, None).await;
        assert_eq!(p.code, 200, "{path}");
        assert!(header(&p, "content-type").starts_with(kind), "{path}");
        assert_eq!(header(&p, "content-security-policy"), CSP, "{path}");
        assert_eq!(header(&p, "x-content-type-options"), "nosniff", "{path}");
    }

    let absent = "0".repeat(64);
    for (path, code, reason) in [
        ("/ui/ac/xyz", 400, "is not a SHA256 hash"),
        ("/ui/cas/ABC", 400, "is not a SHA256 hash"),
        (
            &format!("/ui/ac/{absent}") as &str,
            404,
            "no action-cache entry",
        ),
        (&format!("/ui/cas/{absent}"), 404, "no CAS blob"),
        (
            &format!("/ui/cas/{absent}?digest_function=md5"),
            400,
            "digest function &quot;md5&quot; is not supported",
        ),
        ("/ui/nothing", 404, "no such console page"),
        ("/ui/search?q=nothex", 400, "is not a SHA256 hash"),
    ] {
        let p = get(&s, path, None).await;
        assert_eq!(p.code, code, "{path}: {}", p.body);
        assert!(p.body.contains(reason), "{path}: {}", p.body);
        assert_eq!(header(&p, "content-security-policy"), CSP, "{path}");
    }

    // A stored blob, found by the search box and shown as text.
    let blob = b"plain text <b>bold</b>\n".to_vec();
    put(&s, &support::cas_path(&blob), &blob).await;
    let found = async_client()
        .get(format!("{}/ui/search?q={}", s.http_url, hex(&blob)))
        .send()
        .await
        .unwrap();
    assert_eq!(found.url().path(), format!("/ui/cas/{}", hex(&blob)));
    let page = found.text().await.unwrap();
    assert!(
        page.contains("plain text &lt;b&gt;bold&lt;/b&gt;"),
        "{page}"
    );
    let p = get(
        &s,
        &format!("/ui/cas/{}?digest_function=sha256", hex(&blob)),
        None,
    )
    .await;
    assert_eq!(p.code, 200);

    // A BLAKE3 blob: its own namespace, named by the query.
    let b3 = bazel_cache_digest::Hash::of_with(bazel_cache_digest::DigestFunction::Blake3, &blob)
        .to_hex();
    put(&s, &format!("/blake3/cas/{b3}"), &blob).await;
    let p = get(&s, &format!("/ui/cas/{b3}?digest_function=blake3"), None).await;
    assert_eq!(p.code, 200, "{}", p.body);
    assert!(
        p.body.contains(&format!("href=\"/blake3/cas/{b3}\"")),
        "{}",
        p.body
    );
    assert_eq!(get(&s, &format!("/ui/cas/{b3}"), None).await.code, 404);
    let found = async_client()
        .get(format!(
            "{}/ui/search?q={b3}&digest_function=blake3",
            s.http_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(found.status().as_u16(), 200);
    assert_eq!(found.url().query(), Some("digest_function=blake3"));

    // The protocol paths are unchanged.
    assert_eq!(s.get_async("/status").await.0, 200);
    assert!(s.status_async().await["NumFiles"].as_u64().is_some());
    let (code, metrics) = s.get_async("/metrics").await;
    assert_eq!(code, 200);
    // Console pages are counted as their own handler, not as cache reads.
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("handler=\"console\""), "{metrics}");
    assert_eq!(s.get_async(&support::cas_path(&blob)).await, (200, blob));
}

/// An ActionResult as a client might store it: its stdout holds markup,
/// one output file is in the CAS and one is not, one output directory's
/// Tree lists a file.
#[tokio::test]
async fn action_result_is_escaped_and_lists_missing_blobs() {
    let s = Server::start(&[]);
    let stdout = b"<script>alert(1)</script> & done\n".to_vec();
    let present = b"present output".to_vec();
    let absent = b"never uploaded".to_vec();
    let in_tree = b"a file in a tree".to_vec();
    let tree = re::Tree {
        root: Some(re::Directory {
            files: vec![re::FileNode {
                name: "inner.txt".into(),
                digest: Some(digest(&in_tree)),
                is_executable: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
        children: vec![],
    };
    let tree_bytes = tree.encode_to_vec();
    for blob in [&stdout, &present, &in_tree, &tree_bytes] {
        put(&s, &support::cas_path(blob), blob).await;
    }
    let ar = re::ActionResult {
        exit_code: 3,
        output_files: vec![
            re::OutputFile {
                path: "out/<i>present</i>.txt".into(),
                digest: Some(digest(&present)),
                is_executable: true,
                ..Default::default()
            },
            re::OutputFile {
                path: "out/absent.txt".into(),
                digest: Some(digest(&absent)),
                ..Default::default()
            },
        ],
        output_directories: vec![re::OutputDirectory {
            path: "out/dir".into(),
            tree_digest: Some(digest(&tree_bytes)),
            ..Default::default()
        }],
        stdout_digest: Some(digest(&stdout)),
        execution_metadata: Some(re::ExecutedActionMetadata {
            worker: "worker-<1>".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let key = "a".repeat(64);
    put(&s, &format!("/ac/{key}"), &ar.encode_to_vec()).await;

    let p = get(&s, &format!("/ui/ac/{key}"), None).await;
    assert_eq!(p.code, 200, "{}", p.body);
    assert_eq!(header(&p, "content-security-policy"), CSP);
    let b = &p.body;
    assert!(
        b.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; done"),
        "{b}"
    );
    assert!(!b.contains("<script>alert(1)"), "{b}");
    assert!(b.contains("out/&lt;i&gt;present&lt;/i&gt;.txt"), "{b}");
    assert!(b.contains("worker-&lt;1&gt;"), "{b}");
    assert!(b.contains("<td id=\"exit-code\">3</td>"), "{b}");
    assert!(
        b.contains(&format!("href=\"/cas/{}\"", hex(&present))),
        "{b}"
    );
    assert!(b.contains("out/dir/inner.txt"), "{b}");
    // The completeness check: exactly the absent file is missing, and the
    // protocol agrees (a miss over HTTP).
    let missing = &b[b.find("<ul id=\"missing\">").expect("missing list")..];
    let missing = &missing[..missing.find("</ul>").unwrap()];
    assert!(missing.contains(&hex(&absent)), "{missing}");
    assert_eq!(missing.matches("<li>").count(), 1, "{missing}");
    assert_eq!(s.get_async(&format!("/ac/{key}")).await.0, 404);

    // The Tree as a CAS page: recognised without ?as=, entries link on.
    let t = get(&s, &format!("/ui/cas/{}", hex(&tree_bytes)), None).await;
    assert!(t.body.contains("<h2>Tree</h2>"), "{}", t.body);
    assert!(
        t.body.contains(&format!("/ui/cas/{}", hex(&in_tree))),
        "{}",
        t.body
    );
    let d = get(
        &s,
        &format!("/ui/cas/{}?as=directory", hex(&tree_bytes)),
        None,
    )
    .await;
    assert_eq!(d.code, 200, "{}", d.body);

    // Once the file is uploaded the entry is complete.
    put(&s, &support::cas_path(&absent), &absent).await;
    let p = get(&s, &format!("/ui/ac/{key}"), None).await;
    assert!(p.body.contains("id=\"complete\""), "{}", p.body);
    assert_eq!(s.get_async(&format!("/ac/{key}")).await.0, 200);
}

#[tokio::test]
async fn pages_need_the_read_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = support::sha_htpasswd(dir.path(), "reader", "pw");
    let s = Server::start(&["--htpasswd_file", htpasswd.to_str().unwrap()]);
    let good = basic_header("reader", "pw");
    let bad = basic_header("reader", "wrong");
    for path in [
        "/",
        "/ui/overview/live",
        "/ui/static/console.js",
        "/ui/explain",
        &format!("/ui/ac/{}", "a".repeat(64)),
    ] {
        for auth in [None, Some(bad.as_str())] {
            let p = get(&s, path, auth).await;
            assert_eq!(p.code, 401, "{path} {auth:?}: {}", p.body);
            assert!(
                header(&p, "www-authenticate").starts_with("Basic"),
                "{path}"
            );
            assert!(
                !p.body.contains("<html"),
                "{path}: no page without credentials"
            );
        }
    }
    let p = get(&s, "/", Some(&good)).await;
    assert_eq!(p.code, 200);
    // The hint names no credential, only where they go.
    assert!(
        p.body.contains("--remote_header=Authorization"),
        "{}",
        p.body
    );
    assert!(!p.body.contains("pw@"), "{}", p.body);
    // The upload is refused before its body is read.
    let resp = async_client()
        .post(format!("{}/ui/explain", s.http_url))
        .header("content-type", "multipart/form-data; boundary=x")
        .body("--x--\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn web_console_false_leaves_the_paths_to_the_cache() {
    let blob = b"for instance ui".to_vec();
    let hash = hex(&blob);
    // On (the default), /ui/cas/<hash> is the console's page ...
    let on = Server::start(&[]);
    put(&on, &support::cas_path(&blob), &blob).await;
    let p = get(&on, &format!("/ui/cas/{hash}"), None).await;
    assert!(p.body.contains("<h1>CAS blob"), "{}", p.body);
    // ... off, it is the CAS of instance "ui", as before the console.
    {
        let off = Server::start(&["--web_console=false"]);
        assert_eq!(off.get_async("/").await.0, 404);
        assert_eq!(off.get_async("/ui/static/console.css").await.0, 404);
        assert_eq!(off.get_async("/ui/explain").await.0, 404);
        put(&off, &format!("/ui/cas/{hash}"), &blob).await;
        assert_eq!(
            off.get_async(&format!("/ui/cas/{hash}")).await,
            (200, blob.clone())
        );
        assert_eq!(off.get_async("/status").await.0, 200);
    }
    let dir = tempfile::tempdir().unwrap();
    let off = Server::start_with_dir_env(dir.path(), &[], &[("BAZEL_REMOTE_WEB_CONSOLE", "false")]);
    assert_eq!(off.get_async("/").await.0, 404);
}

#[tokio::test]
async fn explain_uploads_are_bounded() {
    let s = Server::start(&[]);
    let url = format!("{}/ui/explain", s.http_url);
    // Declared too large: refused before reading.
    let resp = async_client()
        .post(&url)
        .header("content-type", "multipart/form-data; boundary=b")
        .header("content-length", (200u64 << 20).to_string())
        .body(vec![0u8; 16])
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status().as_u16(), 413);
    }
    // Streamed (chunked) past the bound: cut with 413, with a reason.
    let chunk = bytes::Bytes::from(vec![b'x'; 1 << 20]);
    let stream =
        futures_util::stream::iter((0..140).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let resp = async_client()
        .post(&url)
        .header("content-type", "multipart/form-data; boundary=b")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    match resp {
        Ok(resp) => {
            assert_eq!(resp.status().as_u16(), 413);
            let text = resp.text().await.unwrap_or_default();
            assert!(text.contains("at most 64.0 MiB"), "{text}");
        }
        // The server may close the connection while the client still sends.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    // Not multipart: 400 with what is expected.
    let resp = async_client().post(&url).body("a=b").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.unwrap().contains("multipart/form-data"));
    // Only GET and POST.
    assert_eq!(
        support::request(&s, "PUT", "/ui/explain", Some(b"x")).await,
        405
    );
    assert_eq!(support::request(&s, "POST", "/", Some(b"x")).await, 405);
    // The server is fine afterwards.
    assert_eq!(s.get_async("/").await.0, 200);
}

fn multipart(boundary: &str, parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, data) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.json\"\r\n\
                 Content-Type: application/json\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

/// Real Bazel 4.2.3 logs (the explain crate's test data: `src/greet.cc`
/// edited between two C++ builds) through the upload: the report names
/// the file; a file that is no log is a 400 with the parser's reason.
#[tokio::test]
async fn explain_reports_on_real_logs_and_refuses_others() {
    let s = Server::start(&[]);
    let data = support::repo().join("crates/explain/testdata");
    let before = std::fs::read(data.join("cc-before.json")).unwrap();
    let after = std::fs::read(data.join("cc-after.json")).unwrap();
    let post = |body: Vec<u8>| {
        async_client()
            .post(format!("{}/ui/explain", s.http_url))
            .header("content-type", "multipart/form-data; boundary=BoUnDaRy")
            .body(body)
            .send()
    };
    let resp = post(multipart(
        "BoUnDaRy",
        &[("before", &before), ("after", &after)],
    ))
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-security-policy"].to_str().unwrap(),
        CSP
    );
    let page = resp.text().await.unwrap();
    assert!(page.contains("id=\"report\""), "{page}");
    assert!(page.contains("src/greet.cc"), "{page}");
    assert!(page.contains("root cause"), "{page}");

    let resp = post(multipart(
        "BoUnDaRy",
        &[("before", b"<not a log>"), ("after", &after)],
    ))
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let page = resp.text().await.unwrap();
    assert!(
        page.contains("the first log is not a Bazel execution log"),
        "{page}"
    );
    assert!(!page.contains("<not a log>"), "escaped: {page}");

    let resp = post(multipart("BoUnDaRy", &[("before", &before)]))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("no &quot;after&quot; file")
    );
}
