//! Migrating from bazel-remote with a real Bazel 4.2.3: the old cache A
//! (here a plain instance of our server, filled by a cold build) keeps
//! serving while the new cache B, empty, runs in front of it with
//! `grpc_proxy` or `http_proxy` pointing at A. A clean build against B
//! (`clean --expunge`: no local state) must be served entirely from the
//! remote cache: every process the cold build ran is a remote cache hit,
//! read through B from A, and the outputs are intact.

use super::e2e_bazel::{Workspace, assert_all_remote_hits, check_outputs, require_bazel};
use crate::support::Server;

#[test]
fn an_empty_cache_in_front_of_the_old_one_serves_every_action() {
    require_bazel();
    let a = Server::start(&["--grpc_address", "127.0.0.1:0"]);
    let a_grpc = a.grpc_url().expect("A prints its grpc:// line");
    let ws = Workspace::new();

    // A fills: a cold build runs everything and uploads it.
    let cold = ws.build_and_test(&a_grpc, "migrate-0-cold-into-a", &[]);
    let (executed, hits, line) = cold.counts();
    eprintln!("[e2e_migration] cold build into A: {line}");
    assert!(executed > 0 && hits == 0, "cold build: {line}");
    check_outputs(&ws);
    let a_files = a.num_files();

    // B over gRPC, its backend A over gRPC.
    let b = Server::start(&["--grpc_address", "127.0.0.1:0", "--grpc_proxy.url", &a_grpc]);
    assert_eq!(b.num_files(), 0, "B starts empty");
    let b_grpc = b.grpc_url().unwrap();
    ws.expunge();
    let warm = ws.build_and_test(&b_grpc, "migrate-1-grpc-proxy", &[]);
    assert_all_remote_hits("grpc_proxy: clean build against B", &warm, &cold);
    check_outputs(&ws);
    assert!(b.num_files() > 0, "B kept what it read through");
    drop(b);

    // B over HTTP, its backend A over HTTP.
    let b = Server::start(&["--http_proxy.url", &a.http_url]);
    assert_eq!(b.num_files(), 0, "B starts empty");
    ws.expunge();
    let warm = ws.build_and_test(&b.http_url, "migrate-2-http-proxy", &[]);
    assert_all_remote_hits("http_proxy: clean build against B", &warm, &cold);
    check_outputs(&ws);

    // Reads through B wrote nothing back to A.
    assert_eq!(a.num_files(), a_files, "A's contents changed");
    ws.expunge();
}
