//! Basic auth (htpasswd), TLS and mTLS on both ports, against the real
//! server binary with real clients: entries written by Apache's `htpasswd`
//! and by `openssl passwd`, HTTPS requests by `curl`, certificates by
//! `openssl`, gRPC over rustls with tonic.
//!
//! Every refusal is checked twice: the status the client sees (401 with a
//! Basic challenge, 403, UNAUTHENTICATED, a failed handshake) and that the
//! store did not change.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::support::pki::{Ca, Leaf};
use crate::support::{self, Server, digest};
use bazel_cache::auth::basic_header;
use bazel_cache_digest::Hash;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::{
    ReadRequest, WriteRequest, byte_stream_client::ByteStreamClient,
};
use re::capabilities_client::CapabilitiesClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// Users, each with the hash format Apache or openssl writes for it.
const USERS: &[(&str, &str)] = &[
    ("bcrypt-user", "b-secret"),
    ("apr1-user", "m-secret"),
    ("sha-user", "s-secret"),
    ("openssl-apr1", "o-secret"),
    ("openssl-md5", "g-secret"),
];

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} (scripts/test.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An htpasswd file for [`USERS`]: bcrypt (`-B`), MD5-crypt (`-m`) and SHA
/// (`-s`) entries by Apache's tool, `$apr1$` and `$1$` by openssl.
fn htpasswd_file(dir: &Path) -> PathBuf {
    let path = dir.join("htpasswd");
    let p = path.to_str().unwrap();
    tool("htpasswd", &["-c", "-b", "-B", p, USERS[0].0, USERS[0].1]);
    tool("htpasswd", &["-b", "-m", p, USERS[1].0, USERS[1].1]);
    tool("htpasswd", &["-b", "-s", p, USERS[2].0, USERS[2].1]);
    let apr1 = tool("openssl", &["passwd", "-apr1", USERS[3].1]);
    let md5 = tool("openssl", &["passwd", "-1", USERS[4].1]);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text += &format!("{}:{}", USERS[3].0, apr1);
    text += &format!("{}:{}", USERS[4].0, md5);
    std::fs::write(&path, &text).unwrap();
    for (prefix, n) in [
        ("$2y$", 0),
        ("$apr1$", 1),
        ("{SHA}", 2),
        ("$apr1$", 3),
        ("$1$", 4),
    ] {
        let line = text.lines().nth(n).unwrap();
        assert!(
            line.starts_with(&format!("{}:{prefix}", USERS[n].0)),
            "{line}"
        );
    }
    path
}

/// One curl request: status code, body, response headers. `extra` carries
/// credentials and TLS options; curl failing to connect gives code 0.
struct Curl {
    code: u16,
    body: Vec<u8>,
    headers: String,
    exit: i32,
}

fn curl(method: &str, url: &str, body: Option<&[u8]>, extra: &[&str]) -> Curl {
    let dir = tempfile::tempdir().unwrap();
    let (out, hdr, inp) = (
        dir.path().join("out"),
        dir.path().join("hdr"),
        dir.path().join("in"),
    );
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-X", method, "-o"])
        .arg(&out)
        .arg("-D")
        .arg(&hdr)
        .args(["-w", "%{http_code}", "--max-time", "20"]);
    if method == "HEAD" {
        cmd.arg("-I");
    }
    if let Some(body) = body {
        std::fs::write(&inp, body).unwrap();
        cmd.arg("--data-binary").arg(format!("@{}", inp.display()));
    }
    cmd.args(extra).arg(url);
    let o = cmd
        .output()
        .expect("run curl (scripts/test.sh installs it)");
    Curl {
        code: String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        body: std::fs::read(&out).unwrap_or_default(),
        headers: std::fs::read_to_string(&hdr).unwrap_or_default(),
        exit: o.status.code().unwrap_or(-1),
    }
}

fn blob(n: u8) -> (Vec<u8>, String) {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i as u8) ^ n).collect();
    let hash = Hash::of(&data).to_hex();
    (data, hash)
}

#[test]
fn htpasswd_users_of_every_format_can_write_and_nobody_else_can() {
    let dir = tempfile::tempdir().unwrap();
    let file = htpasswd_file(dir.path());
    let server = Server::start(&["--htpasswd_file", file.to_str().unwrap()]);
    let base = &server.http_url;

    // Probes and scrapes need no credentials.
    assert_eq!(curl("GET", &format!("{base}/status"), None, &[]).code, 200);
    assert_eq!(curl("GET", &format!("{base}/metrics"), None, &[]).code, 200);

    let (data, hash) = blob(1);
    let url = format!("{base}/cas/{hash}");
    let wrong = [
        (vec![], "no credentials"),
        (vec!["-u", "bcrypt-user:wrong"], "wrong password"),
        (vec!["-u", "nobody:b-secret"], "unknown user"),
        (vec!["-u", "sha-user:b-secret"], "another user's password"),
        (vec!["-H", "Authorization: Bearer abc"], "not Basic"),
        (vec!["-H", "Authorization: Basic %%%"], "bad base64"),
    ];
    for (args, what) in &wrong {
        for method in ["PUT", "GET", "HEAD"] {
            let body = (method == "PUT").then_some(&data[..]);
            let r = curl(method, &url, body, args);
            assert_eq!(
                r.code,
                401,
                "{method} with {what}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert!(
                r.headers
                    .to_ascii_lowercase()
                    .contains("www-authenticate: basic realm="),
                "{method} with {what}: no Basic challenge in\n{}",
                r.headers
            );
        }
        // The action cache too.
        let r = curl("PUT", &format!("{base}/ac/{hash}"), Some(b"x"), args);
        assert_eq!(r.code, 401, "PUT /ac/ with {what}");
    }
    assert_eq!(server.num_files(), 0, "a refused write was stored");

    for (n, (user, password)) in USERS.iter().enumerate() {
        let (data, hash) = blob(10 + n as u8);
        let creds = format!("{user}:{password}");
        let url = format!("{base}/cas/{hash}");
        let put = curl("PUT", &url, Some(&data), &["-u", &creds]);
        assert_eq!(
            put.code,
            200,
            "{user}: {}",
            String::from_utf8_lossy(&put.body)
        );
        let get = curl("GET", &url, None, &["-u", &creds]);
        assert_eq!(get.code, 200, "{user}");
        assert!(get.body == data, "{user}: wrong bytes back");
        // Again (the verified-credentials cache answers this time).
        assert_eq!(curl("GET", &url, None, &["-u", &creds]).code, 200, "{user}");
    }
    assert_eq!(server.num_files(), USERS.len() as u64);

    // Bazel's form: credentials in the URL.
    let (data, hash) = blob(99);
    let in_url = base.replacen("http://", "http://apr1-user:m-secret@", 1);
    assert_eq!(
        curl("PUT", &format!("{in_url}/cas/{hash}"), Some(&data), &[]).code,
        200
    );
}

#[test]
fn anonymous_reads_are_allowed_but_never_anonymous_writes() {
    let dir = tempfile::tempdir().unwrap();
    let file = htpasswd_file(dir.path());
    let server = Server::start(&[
        "--htpasswd_file",
        file.to_str().unwrap(),
        "--allow_unauthenticated_reads",
    ]);
    let base = &server.http_url;
    let (data, hash) = blob(2);
    let url = format!("{base}/cas/{hash}");
    assert_eq!(curl("GET", &url, None, &[]).code, 404);
    assert_eq!(curl("PUT", &url, Some(&data), &[]).code, 401);
    assert_eq!(server.num_files(), 0);
    assert_eq!(
        curl("PUT", &url, Some(&data), &["-u", "sha-user:s-secret"]).code,
        200
    );
    let anonymous = curl("GET", &url, None, &[]);
    assert_eq!(anonymous.code, 200);
    assert!(anonymous.body == data);
    assert_eq!(curl("HEAD", &url, None, &[]).code, 200);
    // A wrong password is refused even for a read: the client learns of it.
    assert_eq!(curl("GET", &url, None, &["-u", "sha-user:typo"]).code, 401);
}

#[test]
fn a_bad_htpasswd_file_stops_the_start_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = htpasswd_file(dir.path());
    let mut text = std::fs::read_to_string(&file).unwrap();
    text += &tool("htpasswd", &["-n", "-b", "-d", "des-user", "pw"]);
    std::fs::write(&file, text.trim_end()).unwrap();
    for (path, want) in [
        (
            file.clone(),
            format!("{}, line 6: user \"des-user\"", file.display()),
        ),
        (dir.path().join("missing"), "missing".to_string()),
    ] {
        let mut cmd = Command::new(support::server_binary());
        cmd.args(["--dir"])
            .arg(dir.path().join("cache"))
            .args(["--http_address", "127.0.0.1:0", "--htpasswd_file"])
            .arg(&path);
        let out = support::run(&mut cmd, std::time::Duration::from_secs(30));
        assert!(!out.status.success(), "started with {}", path.display());
        assert!(
            out.stderr.contains(&want),
            "{want:?} not in:\n{}",
            out.stderr
        );
    }
}

// ---------------------------------------------------------------- gRPC --

fn with_auth<T>(msg: T, header: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(h) = header {
        req.metadata_mut()
            .insert("authorization", h.parse().unwrap());
    }
    req
}

/// Every kind of RPC, with `header` as credentials: what the server says.
async fn rpc_codes(channel: Channel, header: Option<&str>, seed: u8) -> Vec<(&'static str, Code)> {
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    let mut caps = CapabilitiesClient::new(channel.clone());
    let mut bs = ByteStreamClient::new(channel.clone());
    let (data, _) = blob(seed);
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let mut out = Vec::new();
    out.push((
        "GetCapabilities",
        code(
            caps.get_capabilities(with_auth(re::GetCapabilitiesRequest::default(), header))
                .await
                .map(drop),
        ),
    ));
    out.push((
        "FindMissingBlobs",
        code(
            cas.find_missing_blobs(with_auth(
                re::FindMissingBlobsRequest {
                    blob_digests: vec![digest(&data)],
                    ..Default::default()
                },
                header,
            ))
            .await
            .map(drop),
        ),
    ));
    out.push((
        "BatchUpdateBlobs",
        code(
            cas.batch_update_blobs(with_auth(
                re::BatchUpdateBlobsRequest {
                    requests: vec![re::batch_update_blobs_request::Request {
                        digest: Some(digest(&data)),
                        data: data.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                header,
            ))
            .await
            .map(drop),
        ),
    ));
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 ^ seed).collect();
    let d = digest(&big);
    let name = format!(
        "uploads/00000000-0000-0000-0000-0000000000{seed:02}/blobs/{}/{}",
        d.hash, d.size_bytes
    );
    let write = WriteRequest {
        resource_name: name,
        write_offset: 0,
        finish_write: true,
        data: big,
    };
    out.push((
        "ByteStream.Write",
        code(
            bs.write(with_auth(futures_util::stream::iter(vec![write]), header))
                .await
                .map(drop),
        ),
    ));
    let read = bs
        .read(with_auth(
            ReadRequest {
                resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
                ..Default::default()
            },
            header,
        ))
        .await;
    let read = match read {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            let mut r = Ok(());
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        r = Err(e);
                        break;
                    }
                }
            }
            r
        }
        Err(e) => Err(e),
    };
    out.push(("ByteStream.Read", code(read)));
    out
}

async fn health(channel: Channel) -> i32 {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .expect("health needs no credentials")
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_need_credentials_and_health_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let file = htpasswd_file(dir.path());
    let server = Server::start(&[
        "--grpc_address",
        "127.0.0.1:0",
        "--htpasswd_file",
        file.to_str().unwrap(),
    ]);
    let channel = Channel::from_shared(server.grpc_endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(health(channel.clone()).await, 1, "SERVING");

    let good = basic_header("bcrypt-user", "b-secret");
    let bad = basic_header("bcrypt-user", "nope");
    for header in [None, Some(bad.as_str()), Some("Bearer token")] {
        for (rpc, code) in rpc_codes(channel.clone(), header, 3).await {
            assert_eq!(code, Code::Unauthenticated, "{rpc} with {header:?}");
        }
    }
    let status = tokio::task::spawn_blocking({
        let url = server.http_url.clone();
        move || support::http_request("GET", &format!("{url}/status"), None)
    })
    .await
    .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.1).unwrap();
    assert_eq!(
        status["NumFiles"], 0,
        "a refused write was stored: {status}"
    );

    for (rpc, code) in rpc_codes(channel.clone(), Some(&good), 3).await {
        assert_eq!(code, Code::Ok, "{rpc} with good credentials");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_anonymous_reads_only_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = htpasswd_file(dir.path());
    let server = Server::start(&[
        "--grpc_address",
        "127.0.0.1:0",
        "--htpasswd_file",
        file.to_str().unwrap(),
        "--allow_unauthenticated_reads",
    ]);
    let channel = Channel::from_shared(server.grpc_endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let codes = rpc_codes(channel, None, 4).await;
    let expect = |rpc: &str| match rpc {
        "BatchUpdateBlobs" | "ByteStream.Write" => Code::Unauthenticated,
        // The blob was never written, so the read finds nothing.
        "ByteStream.Read" => Code::NotFound,
        _ => Code::Ok,
    };
    for (rpc, code) in codes {
        assert_eq!(code, expect(rpc), "{rpc} without credentials");
    }
}

// ----------------------------------------------------------------- TLS --

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server: Leaf,
    client: Leaf,
    /// A client certificate from a CA the server does not trust.
    rogue: Leaf,
    rogue_ca: PathBuf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let rogue_ca = Ca::new(dir.path(), "rogue-ca");
    Pki {
        ca: ca.pem(),
        server: ca.server("server"),
        client: ca.client("client"),
        rogue: rogue_ca.client("rogue"),
        rogue_ca: rogue_ca.pem(),
        _dir: dir,
    }
}

fn tls_args(p: &Pki, mtls: bool) -> Vec<String> {
    let mut args = vec![
        "--grpc_address".to_string(),
        "127.0.0.1:0".to_string(),
        "--tls_cert_file".to_string(),
        p.server.cert.display().to_string(),
        "--tls_key_file".to_string(),
        p.server.key.display().to_string(),
    ];
    if mtls {
        args.push("--tls_ca_file".to_string());
        args.push(p.ca.display().to_string());
    }
    args
}

fn start(args: &[String]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

fn cert_args(ca: &Path, client: Option<&Leaf>) -> Vec<String> {
    let mut v = vec!["--cacert".to_string(), ca.display().to_string()];
    if let Some(c) = client {
        v.extend([
            "--cert".to_string(),
            c.cert.display().to_string(),
            "--key".to_string(),
            c.key.display().to_string(),
        ]);
    }
    v
}

fn curl_tls(method: &str, url: &str, body: Option<&[u8]>, args: &[String]) -> Curl {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(method, url, body, &args)
}

#[test]
fn https_serves_the_cache_and_plain_http_does_not() {
    let p = pki();
    let server = start(&tls_args(&p, false));
    assert!(
        server.http_url.starts_with("https://127.0.0.1:"),
        "{}",
        server.http_url
    );
    assert!(server.grpc_url().unwrap().starts_with("grpcs://"));
    let base = &server.http_url;
    let trust = cert_args(&p.ca, None);
    assert_eq!(
        curl_tls("GET", &format!("{base}/status"), None, &trust).code,
        200
    );
    let (data, hash) = blob(5);
    let url = format!("{base}/cas/{hash}");
    assert_eq!(curl_tls("PUT", &url, Some(&data), &trust).code, 200);
    let get = curl_tls("GET", &url, None, &trust);
    assert_eq!(get.code, 200);
    assert!(get.body == data);
    // HTTP/2 over TLS (ALPN h2), as Bazel's gRPC and curl --http2 use it.
    let mut h2 = trust.clone();
    h2.push("--http2".into());
    let r = curl_tls("GET", &url, None, &h2);
    assert_eq!(r.code, 200);
    assert!(r.headers.starts_with("HTTP/2"), "{}", r.headers);

    // A client that does not trust the CA refuses the server.
    let distrust = cert_args(&p.rogue_ca, None);
    assert_eq!(curl_tls("GET", &url, None, &distrust).code, 0);
    // Plain HTTP on the TLS port gets no answer it could take for a cache.
    let plain = curl("GET", &url.replacen("https://", "http://", 1), None, &[]);
    assert_ne!(plain.code, 200);
    assert_ne!(plain.exit, 0);
}

#[test]
fn mtls_requires_a_client_certificate_from_the_ca() {
    let p = pki();
    let server = start(&tls_args(&p, true));
    let base = &server.http_url;
    let (data, hash) = blob(6);
    let url = format!("{base}/cas/{hash}");
    for (client, what) in [
        (None, "no client certificate"),
        (Some(&p.rogue), "a certificate of another CA"),
    ] {
        for method in ["PUT", "GET"] {
            let r = curl_tls(
                method,
                &url,
                Some(&data).filter(|_| method == "PUT").map(|d| &d[..]),
                &cert_args(&p.ca, client),
            );
            assert_eq!(r.code, 0, "{method} with {what} got an HTTP answer");
            assert_ne!(r.exit, 0);
        }
    }
    assert_eq!(num_files_tls(&server, &p), 0);
    let ok = cert_args(&p.ca, Some(&p.client));
    assert_eq!(curl_tls("PUT", &url, Some(&data), &ok).code, 200);
    let get = curl_tls("GET", &url, None, &ok);
    assert_eq!(get.code, 200);
    assert!(get.body == data);
}

#[test]
fn mtls_with_anonymous_reads_lets_certificate_less_clients_read_only() {
    let p = pki();
    let mut args = tls_args(&p, true);
    args.push("--allow_unauthenticated_reads".into());
    let server = start(&args);
    let base = &server.http_url;
    let (data, hash) = blob(7);
    let url = format!("{base}/cas/{hash}");
    let anonymous = cert_args(&p.ca, None);
    let put = curl_tls("PUT", &url, Some(&data), &anonymous);
    assert_eq!(put.code, 403, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(num_files_tls(&server, &p), 0);
    assert_eq!(
        curl_tls("PUT", &url, Some(&data), &cert_args(&p.ca, Some(&p.client))).code,
        200
    );
    let get = curl_tls("GET", &url, None, &anonymous);
    assert_eq!(get.code, 200);
    assert!(get.body == data);
    // A certificate from an untrusted CA is still refused at the handshake.
    assert_eq!(
        curl_tls("GET", &url, None, &cert_args(&p.ca, Some(&p.rogue))).code,
        0
    );
}

fn num_files_tls(server: &Server, p: &Pki) -> u64 {
    let r = curl_tls(
        "GET",
        &format!("{}/status", server.http_url),
        None,
        &cert_args(&p.ca, Some(&p.client)),
    );
    assert_eq!(r.code, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["NumFiles"].as_u64().unwrap()
}

/// A tonic channel over rustls to `grpcs://host:port`.
async fn tls_channel(
    url: &str,
    ca: &Path,
    client: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let addr = url.trim_start_matches("grpcs://").to_string();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(&leaf.cert).unwrap()],
                PrivateKeyDer::from_pem_file(&leaf.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            let addr = addr.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcs_with_client_certificates() {
    let p = pki();
    let server = tokio::task::spawn_blocking({
        let args = tls_args(&p, true);
        move || start(&args)
    })
    .await
    .unwrap();
    let url = server.grpc_url().unwrap();

    let good = tls_channel(&url, &p.ca, Some(&p.client)).await.unwrap();
    assert_eq!(health(good.clone()).await, 1);
    for (rpc, code) in rpc_codes(good, None, 8).await {
        assert_eq!(code, Code::Ok, "{rpc} with a client certificate");
    }

    // Without a certificate, or with an untrusted one, no call gets through
    // (with TLS 1.3 the refusal arrives after the client's handshake, so it
    // shows on the first call).
    for client in [None, Some(&p.rogue)] {
        let refused = match tls_channel(&url, &p.ca, client).await {
            Err(_) => true,
            Ok(channel) => rpc_codes(channel, None, 9)
                .await
                .iter()
                .all(|(_, code)| *code != Code::Ok),
        };
        assert!(
            refused,
            "a call succeeded without a trusted client certificate"
        );
    }
    let n = tokio::task::spawn_blocking(move || {
        let n = num_files_tls(&server, &p);
        drop(server);
        n
    })
    .await
    .unwrap();
    assert_eq!(
        n, 2,
        "only the two blobs of the certified client are stored"
    );
}

/// cert-manager renews a mounted certificate in place: the server picks the
/// new pair up within its check interval, without a restart.
#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&p.server.cert, &cert).unwrap();
    std::fs::copy(&p.server.key, &key).unwrap();
    let server = start(&[
        "--tls_cert_file".to_string(),
        cert.display().to_string(),
        "--tls_key_file".to_string(),
        key.display().to_string(),
    ]);
    let status = format!("{}/status", server.http_url);
    assert_eq!(
        curl_tls("GET", &status, None, &cert_args(&p.ca, None)).code,
        200
    );

    let renewed = Ca::new(dir.path(), "renewing-ca").server("renewed");
    std::fs::copy(&renewed.cert, &cert).unwrap();
    std::fs::copy(&renewed.key, &key).unwrap();
    let new_ca = dir.path().join("renewing-ca.pem");
    // Files are checked every 10 s; a check between the two copies sees a
    // mismatched pair, keeps the old one and picks the pair up 10 s later.
    // The rest is slack for a loaded CI machine (one run took over 40 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while curl_tls("GET", &status, None, &cert_args(&new_ca, None)).code != 200 {
        if std::time::Instant::now() >= deadline {
            let (_, stderr) = server.output();
            panic!("the renewed certificate was not picked up in 90 s; server log:\n{stderr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(
        curl_tls("GET", &status, None, &cert_args(&p.ca, None)).code,
        0,
        "the old certificate is still served"
    );
    // The server writes log lines in batches from a thread of its own:
    // read them once it has stopped and flushed, not while they may still
    // be on their way (a CI run read them just after the reload line was
    // written, and it was not there yet).
    let (_, _, stderr) = server.stop_with_output();
    assert!(stderr.contains("TLS certificate reloaded"), "{stderr}");
}

/// The web console over mTLS: the `.bazelrc` lines say `grpcs://` and
/// `https://`, and without a client certificate there is no page.
#[test]
fn console_over_mtls_names_tls_schemes_and_needs_the_certificate() {
    let p = pki();
    let server = start(&tls_args(&p, true));
    let url = format!("{}/", server.http_url);
    let ok = curl_tls("GET", &url, None, &cert_args(&p.ca, Some(&p.client)));
    assert_eq!(ok.code, 200, "{}", String::from_utf8_lossy(&ok.body));
    let page = String::from_utf8_lossy(&ok.body);
    let port = server.http_url.rsplit(':').next().unwrap();
    assert!(
        page.contains(&format!("build --remote_cache=https://127.0.0.1:{port}\n")),
        "{page}"
    );
    assert!(
        page.contains("build --remote_cache=grpcs://127.0.0.1:"),
        "{page}"
    );
    let refused = curl_tls("GET", &url, None, &cert_args(&p.ca, None));
    assert!(
        refused.code == 0 || refused.code == 403 || refused.code == 401,
        "no certificate: {} {}",
        refused.code,
        String::from_utf8_lossy(&refused.body)
    );
    assert!(!String::from_utf8_lossy(&refused.body).contains("bazelrc"));
}
