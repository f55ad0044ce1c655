//! Real Bazel 4.2.3 with `--experimental_remote_downloader` against the
//! server's Remote Asset API: a workspace whose only build input from the
//! network is an `http_file` (with its sha256) served by a local origin.
//!
//! 1. The first Bazel builds: the origin's log shows the file was fetched
//!    by the cache (its User-Agent), never by Bazel itself.
//! 2. The origin goes down; a second Bazel with a fresh output root and an
//!    empty `--repository_cache` builds again and gets the same bytes: they
//!    can only have come from the cache.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::support::origin::{Origin, Reply};
use crate::support::{self, Server};

const BAZEL_TIMEOUT: Duration = Duration::from_secs(300);

/// `bazel build //:copy` with a private output root and repository cache,
/// every remote flag pointing at `grpc`.
fn build(tmp: &Path, ws: &Path, run: &str, grpc: &str) -> support::RunOutput {
    let root = tmp.join(format!("root-{run}"));
    let repo_cache = tmp.join(format!("repo-cache-{run}"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&repo_cache).unwrap();
    let mut cmd = Command::new(std::env::var("BAZEL").unwrap_or_else(|_| "bazel".into()));
    cmd.current_dir(ws)
        .arg("--nohome_rc")
        .arg(format!("--output_user_root={}", root.display()))
        .arg("--batch")
        .arg("build")
        .arg(format!("--experimental_remote_downloader={grpc}"))
        .arg(format!("--remote_cache={grpc}"))
        .arg(format!("--repository_cache={}", repo_cache.display()))
        .args([
            "--disk_cache=",
            "--remote_timeout=60",
            "--nosandbox_debug",
            "--color=no",
            "--curses=no",
            "//:copy",
        ])
        .env_remove("USE_BAZEL_VERSION")
        .env_remove("BAZELISK_HOME");
    let out = support::run(&mut cmd, BAZEL_TIMEOUT);
    eprintln!(
        "[e2e_remote_asset] {} ({})",
        support::describe(&cmd),
        out.status
    );
    out
}

fn copy_output(ws: &Path) -> Vec<u8> {
    support::read(ws.join("bazel-bin/copy.txt"))
}

#[test]
fn bazel_downloads_http_file_through_the_cache() {
    support::require_tool("bazel", &["--version"], "apt-get install bazel-bootstrap");
    let content = support::text(200_000, 7);
    let sha256 = hex::encode(Sha256::digest(&content));
    let mut origin = Origin::start(&[("/dist/asset.txt", Reply::Body(content.clone()))]);
    let server = Server::start_grpc(&[
        "--experimental_remote_asset_api",
        "--remote_asset_allowed_hosts",
        "127.0.0.1",
    ]);
    let grpc = server.grpc_url().unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(
        ws.join("WORKSPACE"),
        format!(
            "workspace(name = \"remote_asset_e2e\")\n\
             load(\"@bazel_tools//tools/build_defs/repo:http.bzl\", \"http_file\")\n\
             http_file(\n    name = \"asset\",\n    urls = [\"{}/dist/asset.txt\"],\n    \
             sha256 = \"{sha256}\",\n    downloaded_file_path = \"asset.txt\",\n)\n",
            origin.url
        ),
    )
    .unwrap();
    std::fs::write(
        ws.join("BUILD"),
        "genrule(\n    name = \"copy\",\n    srcs = [\"@asset//file\"],\n    \
         outs = [\"copy.txt\"],\n    cmd = \"cp $< $@\",\n)\n",
    )
    .unwrap();

    build(tmp.path(), &ws, "1", &grpc).assert_success("bazel build (origin up)");
    assert!(
        copy_output(&ws) == content,
        "the first build's output differs"
    );
    let requests = origin.requests();
    assert!(!requests.is_empty(), "the origin was never asked");
    assert!(
        requests
            .iter()
            .all(|r| r.contains("user-agent: bazel-cache/")),
        "someone other than the cache fetched: {requests:?}"
    );

    origin.stop();
    // A fresh output root, repository cache and bazel-bin: only the cache
    // has the file now.
    let _ = Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(tmp.path().join("root-1"))
        .status();
    std::fs::remove_dir_all(tmp.path().join("root-1")).unwrap();
    build(tmp.path(), &ws, "2", &grpc).assert_success("bazel build (origin down)");
    assert!(
        copy_output(&ws) == content,
        "the second build's output differs"
    );
    let _ = Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(tmp.path())
        .status();
}
