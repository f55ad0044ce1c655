//! The S3 client over https: s3s-fs behind a TLS-terminating proxy whose
//! certificate is signed by a throw-away CA, trusted through `SSL_CERT_FILE`
//! (how operators add a private CA).
//!
//! A test binary of its own, with a single test, and not a module of the
//! `s3` binary (tests/s3/): it sets the process environment variable
//! `SSL_CERT_FILE` (`unsafe`: `std::env::set_var`), which is only sound
//! while no other thread can read or write the environment. Alone in its
//! binary, nothing else runs while it sets it; beside other tests (the
//! harness runs them on parallel threads, which read the environment) it
//! would be a data race.
//! Needs s3s-fs, like tests/s3/, so the `sandbox` nextest profile leaves it
//! out too.

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bazel_cache_store::s3::client::{S3Client, S3Error};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::pki::Ca;
use support::s3::S3Server;
use tokio::io::AsyncReadExt;

/// Terminates TLS on a local port and forwards the bytes to `upstream`.
async fn tls_proxy(dir: &Path, upstream: String) -> SocketAddr {
    let certs = CertificateDer::pem_file_iter(dir.join("test-ca-server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("test-ca-server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

#[test]
fn https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "test-ca");
    ca.server("test-ca-server");
    Ca::new(dir.path(), "other-ca");
    let s3 = S3Server::start();

    // Clients load the CA store when built: build them all before any other
    // thread exists, so setting the variable races with nothing.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let proxy = rt.block_on(tls_proxy(dir.path(), s3.endpoint.clone()));
    let mut cfg = s3.config();
    cfg.endpoint = proxy.to_string();
    cfg.disable_ssl = false;
    // SAFETY: single-threaded at this point (the runtime is current-thread
    // and idle; this binary has one test).
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("SSL_CERT_FILE", dir.path().join("test-ca.pem"))
    };
    let trusting = S3Client::new(&cfg).unwrap();
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("SSL_CERT_FILE", dir.path().join("other-ca.pem"))
    };
    let distrusting = S3Client::new(&cfg).unwrap();
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe {
        std::env::remove_var("SSL_CERT_FILE")
    };
    assert!(trusting.base_url().starts_with("https://127.0.0.1:"));

    rt.block_on(async {
        let data = b"over tls".repeat(10_000);
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, &data).unwrap();
        let file = Arc::new(tmp.reopen().unwrap());
        trusting
            .put_file("p/tls", file, data.len() as u64)
            .await
            .unwrap();
        assert_eq!(
            trusting.head("p/tls").await.unwrap(),
            Some(data.len() as u64)
        );
        let mut out = Vec::new();
        let obj = trusting.get("p/tls").await.unwrap().unwrap();
        let mut body = obj.body;
        body.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
        trusting.touch("p/tls").await.unwrap();

        let err = distrusting.head("p/tls").await.unwrap_err();
        assert!(matches!(err, S3Error::Connection { .. }), "{err:?}");
        assert!(
            err.to_string().contains("certificate"),
            "not a certificate error: {err}"
        );
    });
}
