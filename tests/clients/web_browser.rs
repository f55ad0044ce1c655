//! The web console in a real browser: Debian's headless Chromium driven
//! over WebDriver (`support::webdriver`), against the real server after a
//! real Bazel 4.2.3 build.
//!
//! 1. Bazel builds a one-genrule workspace over HTTP; the genrule prints a
//!    line holding `<script>` (which would set `document.title` and
//!    `window.__pwned` if it ran), so Bazel uploads its stdout.
//! 2. The explorer page of that action (its AC key from the access log)
//!    shows the exit code, the output file and the stdout as text; the
//!    script never ran.
//! 3. With traffic (Bazel's, then hits and misses from a client), the
//!    overview shows the `.bazelrc` line and the charts draw lines, swapped
//!    in by the page's refresh script without a reload.
//! 4. With htpasswd on, the browser without credentials gets the 401 and no
//!    console page.
//!
//! 5. `/ui/explain`: two real builds with one source file changed; their
//!    execution logs uploaded through the form; the report names the file.
//!
//! The screenshots in docs/images come from these tests:
//! `BAZEL_CACHE_SCREENSHOT_DIR=docs/images` (scripts/screenshot.sh) writes
//! `console-overview.png`, `console-action.png` and `console-explain.png`
//! there; otherwise they go to a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::support::webdriver::Driver;
use crate::support::{self, Server, async_client};

const BAZEL_TIMEOUT: Duration = Duration::from_secs(300);
/// The sampler runs every 10 s; a chart line needs two samples after the
/// traffic, and a loaded machine may be slow.
const CHART_WAIT: Duration = Duration::from_secs(60);

const MARKUP: &str = "<script>document.title='pwned';window.__pwned=1</script>";

fn write_workspace(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join("WORKSPACE"), "workspace(name = \"console\")\n").unwrap();
    std::fs::write(
        root.join("BUILD"),
        format!(
            "genrule(\n    name = \"hello\",\n    outs = [\"hello.txt\"],\n    \
             cmd = \"echo \\\"{} hello from bazel\\\"; echo hi > $@\",\n)\n",
            MARKUP.replace('\'', "\\'").replace('"', "\\\\\\\"")
        ),
    )
    .unwrap();
}

fn bazel_build(root: &Path, user_root: &Path, remote_cache: &str, extra: &[String]) {
    let program = std::env::var("BAZEL").unwrap_or_else(|_| "bazel".to_string());
    let mut cmd = Command::new(program);
    cmd.current_dir(root)
        .arg("--nohome_rc")
        .arg(format!("--output_user_root={}", user_root.display()))
        .arg("--batch")
        .arg("build")
        .arg(format!("--remote_cache={remote_cache}"))
        .args([
            "--disk_cache=",
            "--experimental_repository_disable_download",
            "--remote_upload_local_results",
            "--incompatible_strict_action_env",
            "--nosandbox_debug",
            "--color=no",
            "--curses=no",
        ])
        .args(extra)
        .arg("//...")
        .env_remove("USE_BAZEL_VERSION")
        .env_remove("BAZELISK_HOME");
    support::run(&mut cmd, BAZEL_TIMEOUT).assert_success("bazel build //...");
}

/// The AC keys Bazel stored, from the server's access log, once one is
/// there (log lines reach the test a little after the request).
fn ac_puts(server: &Server) -> Vec<String> {
    let keys = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("PUT"))
            .filter_map(|l| {
                let at = l.find("/ac/")? + 4;
                let hash = l.get(at..at + 64)?;
                hash.bytes()
                    .all(|b| b.is_ascii_hexdigit())
                    .then(|| hash.to_string())
            })
            .collect()
    };
    keys(&server.log_once(|log| !keys(log).is_empty()))
}

fn screenshot_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("BAZEL_CACHE_SCREENSHOT_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            std::fs::create_dir_all(&d).unwrap();
            (d, None)
        }
        None => {
            let t = tempfile::tempdir().unwrap();
            (t.path().to_path_buf(), Some(t))
        }
    }
}

/// How long the screenshot run keeps the traffic going after the charts
/// show it, so the picture has a few minutes of lines rather than a dot.
const SCREENSHOT_TRAFFIC: Duration = Duration::from_secs(150);

/// Steady cache traffic for the charts: hits and misses of both kinds, at
/// a rate that changes every few seconds (so the lines are not flat).
async fn traffic(url: String, ac_key: String, channel: Channel, until: tokio::time::Instant) {
    let client = async_client();
    let mut cas = ContentAddressableStorageClient::new(channel);
    let blob = b"console chart traffic".to_vec();
    let _ = client
        .put(format!("{url}{}", support::cas_path(&blob)))
        .body(blob.clone())
        .send()
        .await;
    let mut i = 0u64;
    while tokio::time::Instant::now() < until {
        // Mostly hits, as a warm cache sees: every 3rd AC and 5th CAS
        // lookup misses.
        let mut paths = vec![format!("/ac/{ac_key}"), support::cas_path(&blob)];
        if i.is_multiple_of(3) {
            paths.push(format!("/ac/{:064x}", i + 1));
        }
        if i.is_multiple_of(5) {
            paths.push(format!("/cas/{i:064x}"));
        }
        for p in paths {
            if let Ok(r) = client.get(format!("{url}{p}")).send().await {
                let _ = r.bytes().await;
            }
        }
        let _ = cas
            .find_missing_blobs(re::FindMissingBlobsRequest {
                blob_digests: vec![
                    support::digest(&blob),
                    support::digest(&blob),
                    support::digest(&i.to_le_bytes()),
                ],
                ..Default::default()
            })
            .await;
        i += 1;
        let pause = 20 + (i / 40 % 5) * 30;
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser_after_a_real_bazel_build() {
    support::require_tool("bazel", &["--version"], "apt-get install bazel-bootstrap");
    let server = Server::start_grpc(&["--access_log_level", "all"]);
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let user_root = tmp.path().join("bazel-root");
    std::fs::create_dir_all(&user_root).unwrap();
    write_workspace(&ws);
    {
        let (ws, user_root, url) = (ws.clone(), user_root.clone(), server.http_url.clone());
        tokio::task::spawn_blocking(move || bazel_build(&ws, &user_root, &url, &[]))
            .await
            .unwrap();
    }
    let keys = ac_puts(&server);
    assert_eq!(keys.len(), 1, "one action stored: {keys:?}");
    let ac_key = keys[0].clone();

    let driver = Driver::start().await;
    let browser = driver.session().await;
    let (shots, _keep) = screenshot_dir();

    // The explorer: the ActionResult Bazel wrote, its stdout as text.
    browser
        .goto(&format!("{}/ui/ac/{ac_key}", server.http_url))
        .await;
    let stdout = browser
        .wait_for(
            "the stdout of the action",
            "var e = document.getElementById('stdout'); return e ? e.textContent : null;",
            Duration::from_secs(30),
        )
        .await;
    let stdout = stdout.as_str().unwrap();
    assert!(stdout.contains(MARKUP), "{stdout:?}");
    assert!(stdout.contains("hello from bazel"), "{stdout:?}");
    assert_eq!(
        browser.text_of("#exit-code").await.as_deref(),
        Some("0"),
        "exit code"
    );
    let files = browser.text_of("#output-files").await.unwrap_or_default();
    assert!(files.contains("hello.txt"), "{files}");
    assert!(
        browser.text_of("#complete").await.is_some(),
        "entry is complete"
    );
    let ran = browser
        .execute(
            "return [document.title, typeof window.__pwned, document.querySelectorAll('main script').length];",
            vec![],
        )
        .await;
    assert_eq!(
        ran,
        json!(["Action result · bazel-cache", "undefined", 0]),
        "the stored <script> must not run or become an element"
    );
    browser.fit_height(1280).await;
    std::fs::write(shots.join("console-action.png"), browser.screenshot().await).unwrap();

    // The overview: .bazelrc line, and charts with traffic drawn.
    let until = tokio::time::Instant::now() + CHART_WAIT;
    let load = tokio::spawn(traffic(
        server.http_url.clone(),
        ac_key.clone(),
        server.channel().await,
        until,
    ));
    browser.goto(&format!("{}/", server.http_url)).await;
    let rc = browser
        .text_of("#bazelrc")
        .await
        .expect("the .bazelrc block");
    assert!(
        rc.contains(&format!("build --remote_cache={}", server.http_url)),
        "{rc}"
    );
    browser
        .execute("window.__sameDocument = true; return null;", vec![])
        .await;
    // Lines with a non-zero point, in the requests and hit-ratio charts,
    // swapped in by the refresh script (the marker shows no reload).
    let drawn = browser
        .wait_for(
            "charts with traffic",
            "if (!document.querySelector('#live[data-refreshed]')) return null;
             function nonzero(id) {
               var lines = document.querySelectorAll('#' + id + ' polyline');
               for (var i = 0; i < lines.length; i++) {
                 var pts = lines[i].getAttribute('points').split(' ');
                 for (var j = 0; j < pts.length; j++) {
                   if (parseFloat(pts[j].split(',')[1]) < 97) return true;
                 }
               }
               return false;
             }
             return nonzero('chart-requests') && nonzero('chart-hits') && nonzero('chart-bytes')
               ? window.__sameDocument === true : null;",
            CHART_WAIT + Duration::from_secs(30),
        )
        .await;
    assert_eq!(drawn, json!(true), "charts drawn without a full reload");
    load.abort();
    if std::env::var_os("BAZEL_CACHE_SCREENSHOT_DIR").is_some() {
        let until = tokio::time::Instant::now() + SCREENSHOT_TRAFFIC;
        traffic(
            server.http_url.clone(),
            ac_key.clone(),
            server.channel().await,
            until,
        )
        .await;
        // Let the last samples and a refresh come in.
        let seen = browser
            .execute(
                "return document.getElementById('live').getAttribute('data-refreshed');",
                vec![],
            )
            .await;
        browser
            .wait_for(
                "a refresh after the traffic",
                &format!(
                    "return document.getElementById('live').getAttribute('data-refreshed') !== {seen};"
                ),
                Duration::from_secs(30),
            )
            .await;
    }
    browser.fit_height(1280).await;
    std::fs::write(
        shots.join("console-overview.png"),
        browser.screenshot().await,
    )
    .unwrap();
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_needs_credentials_in_the_browser() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = support::sha_htpasswd(dir.path(), "reader", "pw");
    let server = Server::start(&["--htpasswd_file", htpasswd.to_str().unwrap()]);
    let driver = Driver::start().await;
    let browser = driver.session().await;
    browser.goto(&format!("{}/", server.http_url)).await;
    let state = browser
        .wait_for(
            "the refusal",
            "if (document.readyState !== 'complete') return null;
             var nav = performance.getEntriesByType('navigation')[0];
             return [nav ? nav.responseStatus : null, document.title,
                     !!document.getElementById('bazelrc'), !!document.getElementById('live')];",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        state,
        json!([401, "", false, false]),
        "401 and no console page without credentials"
    );
    // With them (in the URL, as a browser sends them after the prompt).
    let with = server.http_url.replace("http://", "http://reader:pw@");
    browser.goto(&format!("{with}/")).await;
    let rc = browser
        .wait_for(
            "the overview with credentials",
            "var e = document.getElementById('bazelrc'); return e ? e.textContent : null;",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        rc.as_str()
            .unwrap()
            .contains("--remote_header=Authorization"),
        "{rc}"
    );
    browser.close().await;
}

/// `/ui/explain` in the browser: two real Bazel builds, one source file
/// changed between them; their execution logs uploaded through the form;
/// the report names that file (both digests) as the root cause and not
/// the action whose inputs did not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_page_names_the_changed_source() {
    support::require_tool("bazel", &["--version"], "apt-get install bazel-bootstrap");
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let user_root = tmp.path().join("bazel-root");
    std::fs::create_dir_all(&user_root).unwrap();
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("WORKSPACE"), "workspace(name = \"explain\")\n").unwrap();
    std::fs::write(
        ws.join("BUILD"),
        "genrule(\n    name = \"upper\",\n    srcs = [\"changed.txt\"],\n    outs = [\"upper.txt\"],\n    \
         cmd = \"tr a-z A-Z < $< > $@\",\n)\n\
         genrule(\n    name = \"same\",\n    srcs = [\"kept.txt\"],\n    outs = [\"same.txt\"],\n    \
         cmd = \"cp $< $@\",\n)\n",
    )
    .unwrap();
    std::fs::write(ws.join("kept.txt"), "kept\n").unwrap();
    let logs: Vec<PathBuf> = ["one", "two"]
        .iter()
        .map(|v| tmp.path().join(format!("exec-{v}.json")))
        .collect();
    for (content, log) in ["one\n", "two\n"].iter().zip(&logs) {
        std::fs::write(ws.join("changed.txt"), content).unwrap();
        let extra = vec![format!("--execution_log_json_file={}", log.display())];
        let (ws, user_root, url) = (ws.clone(), user_root.clone(), server.http_url.clone());
        tokio::task::spawn_blocking(move || bazel_build(&ws, &user_root, &url, &extra))
            .await
            .unwrap();
    }
    let driver = Driver::start().await;
    let browser = driver.session().await;
    browser
        .goto(&format!("{}/ui/explain", server.http_url))
        .await;
    browser
        .send_keys("input[name=before]", logs[0].to_str().unwrap())
        .await;
    browser
        .send_keys("input[name=after]", logs[1].to_str().unwrap())
        .await;
    browser.click("#explain-form button[type=submit]").await;
    let report = browser
        .wait_for(
            "the report",
            "var e = document.getElementById('report'); return e ? e.innerText : null;",
            Duration::from_secs(60),
        )
        .await;
    let report = report.as_str().unwrap().to_string();
    eprintln!("[web_browser] /ui/explain said:\n{report}");
    let misses = browser.text_of("#misses").await.unwrap_or_default();
    assert!(misses.to_lowercase().contains("root cause"), "{report}");
    assert!(misses.contains("changed.txt"), "{report}");
    assert!(misses.contains("upper.txt"), "{report}");
    assert!(
        !misses.contains("kept.txt"),
        "an unchanged input is named: {report}"
    );
    assert!(
        !misses.contains("same.txt"),
        "an unchanged action is listed: {report}"
    );
    let (shots, _keep) = screenshot_dir();
    browser.fit_height(1280).await;
    std::fs::write(
        shots.join("console-explain.png"),
        browser.screenshot().await,
    )
    .unwrap();
    browser.close().await;
}
