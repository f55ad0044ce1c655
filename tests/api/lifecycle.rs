//! Start-up and shutdown as Kubernetes and systemd drive them: SIGTERM
//! stops accepting, lets requests in flight finish, closes the store
//! cleanly and exits 0; a second instance started on the same `dir` (a
//! restart that overlaps the old process) waits for the index instead of
//! failing, and does not listen (is not ready) until the store is open.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::support;
use crate::support::{Server, SlowPut};
use bazel_cache_digest::Hash;

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8 ^ seed).collect()
}

#[test]
fn sigterm_lets_requests_in_flight_finish_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_dir(dir.path(), &[]);
    let addr = server.http_addr().to_string();
    let data = blob(2 << 20, 1);
    let upload = SlowPut::start(&addr, &data, 4096);

    Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // No longer accepting...
    assert!(
        TcpStream::connect(&addr).is_err(),
        "still accepting connections after SIGTERM"
    );
    // ...but the upload that had started completes.
    assert_eq!(upload.finish(), 200);

    let (status, _, stderr) = server.stop_with_output();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");

    // The store was closed cleanly and kept the upload.
    let again = Server::start_with_dir(dir.path(), &[]);
    let (code, body) = again.get(&format!("/cas/{}", Hash::of(&data).to_hex()));
    assert_eq!(code, 200);
    assert!(body == data);
    let (_, _, stderr) = again.stop_with_output();
    assert!(!stderr.contains("did not stop cleanly"), "{stderr}");
}

#[test]
fn a_second_instance_waits_for_the_index_and_is_not_ready_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start_with_dir(dir.path(), &[]);
    let data = blob(10_000, 2);
    let url = format!("{}/cas/{}", first.http_url, Hash::of(&data).to_hex());
    assert_eq!(
        support::http_request("PUT", &url, Some(data.clone())).0,
        200
    );

    let path = dir.path().to_path_buf();
    let second = std::thread::spawn(move || Server::start_with_dir(&path, &[]));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !second.is_finished(),
        "the second instance announced itself while the first held the index"
    );
    first.stop();
    let second = second.join().unwrap();
    assert_eq!(second.status()["NumFiles"], 1);
    let (code, body) = second.get(&format!("/cas/{}", Hash::of(&data).to_hex()));
    assert_eq!(code, 200);
    assert!(body == data);
    let (_, _, stderr) = second.stop_with_output();
    assert!(stderr.contains("held by another process"), "{stderr}");
}

/// systemd's `Type=notify` protocol (the NixOS module's unit): READY=1 once
/// the store is open and the ports listen, STOPPING=1 at SIGTERM.
#[test]
fn systemd_hears_ready_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = Command::new(support::server_binary())
        .arg("--dir")
        .arg(dir.path().join("cache"))
        .args(["--http_address", "127.0.0.1:0", "--grpc_address", "none"])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("no READY=1 from the server");
    let ready = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let n = socket
        .recv(&mut buf)
        .expect("no STOPPING=1 from the server");
    let stopping = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(child.wait().unwrap().success());
}
