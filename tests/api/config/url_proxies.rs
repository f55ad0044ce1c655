//! `http_proxy:` and `grpc_proxy:` (another cache as the backend): every
//! key from the file, its flag and its variable with bazel-remote's names;
//! bazel-remote's rules between the keys; one proxy backend at most; the
//! backends still refused name what to use instead.

use std::path::PathBuf;

use super::helpers::{Fixture, SECRET};
use bazel_cache::config::UrlProtocol;

#[test]
fn http_proxy_from_the_file_with_basic_auth_and_tls_files() {
    let fx = Fixture::new();
    let file = fx.file(&format!(
        "http_proxy:\n  url: https://ci:{SECRET}@old-cache.internal:8443/base/\n  \
         cert_file: /pki/c.pem\n  key_file: /pki/c.key\n  ca_file: /pki/ca.pem\n"
    ));
    let c = fx.config(&["--config_file", &file], &[]);
    assert!(c.s3_proxy.is_none() && c.grpc_proxy.is_none());
    let h = c
        .http_proxy
        .clone()
        .expect("http_proxy enabled by the file");
    assert_eq!(h.protocol, UrlProtocol::Http);
    assert!(h.tls);
    assert_eq!(h.authority, "old-cache.internal:8443");
    assert_eq!(h.path, "/base");
    assert_eq!(h.display_url(), "https://old-cache.internal:8443/base");
    let auth = h.basic_auth.as_ref().unwrap();
    assert_eq!(auth.username, "ci");
    assert_eq!(auth.password.expose(), SECRET);
    assert_eq!(h.cert_file, Some(PathBuf::from("/pki/c.pem")));
    assert_eq!(h.key_file, Some(PathBuf::from("/pki/c.key")));
    assert_eq!(h.ca_file, Some(PathBuf::from("/pki/ca.pem")));
    assert!(
        !format!("{c:?}").contains(SECRET),
        "the password never prints"
    );
}

#[test]
fn grpc_proxy_from_flags_and_environment_with_bazel_remote_names() {
    let fx = Fixture::new();
    let c = fx.config(
        &[
            "--grpc_proxy.url",
            "grpcs://cache:9092",
            "--grpc_proxy.ca_file=/flag/ca.pem",
        ],
        &[
            ("BAZEL_REMOTE_GRPC_PROXY_CA_FILE", "/env/ca.pem"),
            ("BAZEL_REMOTE_GRPC_PROXY_CERT_FILE", "/env/c.pem"),
            ("BAZEL_REMOTE_GRPC_PROXY_KEY_FILE", "/env/c.key"),
        ],
    );
    let g = c.grpc_proxy.expect("enabled by --grpc_proxy.url");
    assert_eq!(g.protocol, UrlProtocol::Grpc);
    assert_eq!(g.authority, "cache:9092");
    assert_eq!(
        g.ca_file,
        Some(PathBuf::from("/flag/ca.pem")),
        "flag over env"
    );
    assert_eq!(g.cert_file, Some(PathBuf::from("/env/c.pem")));
    assert_eq!(g.key_file, Some(PathBuf::from("/env/c.key")));

    let c = fx.config(&[], &[("BAZEL_REMOTE_HTTP_PROXY_URL", "http://u:p@a:8080")]);
    let h = c.http_proxy.unwrap();
    assert_eq!(h.authority, "a:8080");
    assert_eq!(h.basic_auth.unwrap().password.expose(), "p");

    // The file's block and a variable merge key by key.
    let file = fx.file("grpc_proxy:\n  url: grpc://file:1\n");
    let c = fx.config(
        &["--config_file", &file],
        &[("BAZEL_REMOTE_GRPC_PROXY_URL", "grpc://env:2")],
    );
    assert_eq!(c.grpc_proxy.unwrap().authority, "env:2", "env over file");
}

#[test]
fn tls_files_alone_do_not_enable_a_url_proxy() {
    let fx = Fixture::new();
    let c = fx.config(
        &["--http_proxy.ca_file=/ca.pem"],
        &[("BAZEL_REMOTE_GRPC_PROXY_KEY_FILE", "/k")],
    );
    assert!(c.http_proxy.is_none() && c.grpc_proxy.is_none());
    // An empty block in the file does, and then its URL is required.
    let file = fx.file("http_proxy:\n  ca_file: /ca.pem\n");
    let err = fx.error(&["--config_file", &file], &[]);
    assert!(
        err.starts_with(
            "http_proxy.url: required by the http_proxy backend (set it in the http_proxy block, \
             with --http_proxy.url or with BAZEL_REMOTE_HTTP_PROXY_URL)"
        ),
        "{err}"
    );
}

#[test]
fn bazel_remote_rules_between_url_tls_and_files() {
    let fx = Fixture::new();
    let err = fx.error(&["--http_proxy.url=grpc://h:1"], &[]);
    assert_eq!(
        err,
        "http_proxy.url: the http proxy backend protocol must be either http or https, not \
         \"grpc\" (set by --http_proxy.url)"
    );
    let err = fx.error(&["--grpc_proxy.url=https://h:1"], &[]);
    assert!(err.contains("must be either grpc or grpcs"), "{err}");
    let err = fx.error(
        &["--grpc_proxy.url=grpcs://h:1", "--grpc_proxy.cert_file=/c"],
        &[],
    );
    assert!(
        err.contains("both a key and a certificate must be provided"),
        "{err}"
    );
    let err = fx.error(
        &[
            "--http_proxy.url=http://h:1",
            "--http_proxy.cert_file=/c",
            "--http_proxy.key_file=/k",
        ],
        &[],
    );
    assert!(
        err.contains("when mTLS is enabled, the http proxy backend protocol must be https"),
        "{err}"
    );
    let err = fx.error(
        &["--grpc_proxy.url=grpc://h:1", "--grpc_proxy.ca_file=/ca"],
        &[],
    );
    assert!(err.contains("must be grpcs"), "{err}");
    // A bad URL is reported without echoing it (it may hold a password).
    let err = fx.error(
        &[&format!("--http_proxy.url=http://u:{SECRET}@h:99999")],
        &[],
    );
    assert!(err.starts_with("http_proxy.url: not a URL"), "{err}");
    assert!(!err.contains(SECRET), "{err}");
}

#[test]
fn at_most_one_proxy_backend() {
    let fx = Fixture::new();
    let err = fx.error(
        &["--http_proxy.url=http://a:1", "--grpc_proxy.url=grpc://b:2"],
        &[],
    );
    assert_eq!(
        err,
        "grpc_proxy: at most one proxy backend may be set, and http_proxy is set too (one of \
         s3_proxy, http_proxy, grpc_proxy)"
    );
    let err = fx.error(
        &[
            "--s3.endpoint=minio:9000",
            "--s3.bucket=b",
            "--s3.auth_method=iam_role",
        ],
        &[("BAZEL_REMOTE_GRPC_PROXY_URL", "grpc://b:2")],
    );
    assert!(
        err.starts_with(
            "grpc_proxy: at most one proxy backend may be set, and s3_proxy is set too"
        ),
        "{err}"
    );
    // num_uploaders 0 would never upload: refused with any backend.
    let err = fx.error(&["--grpc_proxy.url=grpc://b:2", "--num_uploaders=0"], &[]);
    assert!(
        err.starts_with("num_uploaders: must be at least 1 when a proxy backend (grpc_proxy)"),
        "{err}"
    );
}

#[test]
fn gcs_and_azblob_are_refused_naming_the_alternative() {
    let fx = Fixture::new();
    let err = fx.error(&["--gcs_proxy.bucket=b"], &[]);
    assert!(err.contains("use s3_proxy"), "{err}");
    assert!(err.contains("storage.googleapis.com"), "{err}");
    assert!(err.contains("HMAC"), "{err}");
    let file = fx.file("azblob_proxy:\n  container_name: c\n");
    let err = fx.error(&["--config_file", &file], &[]);
    assert!(
        err.contains("azblob_proxy: not supported by bazel-cache"),
        "{err}"
    );
    assert!(err.contains("S3 gateway"), "{err}");
    assert!(err.contains("grpc_proxy or http_proxy"), "{err}");
}
