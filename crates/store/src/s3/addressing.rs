//! Where a request goes: the URL, `Host` header and signed path of an object
//! key, from `s3_proxy.endpoint`, `bucket`, `bucket_lookup_type` and
//! `disable_ssl`. Kept apart because every S3 implementation we talk to
//! (AWS, MinIO, Ceph, test servers) disagrees a little about addressing,
//! and the rules below are what makes one configuration work for all.
//!
//! `s3_proxy.endpoint` is `host[:port]` without a scheme (bazel-remote's
//! form); `s3_proxy.disable_ssl` chooses `http://` instead of `https://`.
//! `s3_proxy.bucket_lookup_type`:
//!
//! - `path`: `SCHEME://endpoint/bucket/key`
//! - `dns`: `SCHEME://bucket.endpoint/key` (virtual-hosted style)
//! - `auto` (default): virtual-hosted style only when the endpoint is an AWS
//!   host name (`amazonaws.com`, `*.amazonaws.com`, `*.amazonaws.com.cn`)
//!   without an explicit port, and the bucket name is a valid DNS label
//!   sequence (no dots over TLS, where the `*.s3...` certificate would not
//!   match). Everything else — IP addresses, `host:port`, MinIO, Ceph, local
//!   test servers — gets path style, which every S3 implementation serves.
//!
//! Object keys are percent-encoded the S3 way: every byte except
//! `A-Z a-z 0-9 - . _ ~` and `/` becomes `%XX`, and the same string is what
//! gets signed (single encoding, no path normalization).

use std::fmt::Write as _;

use super::config::BucketLookupType;
use super::error::S3Error;

/// Where requests go: scheme, host and how the bucket is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Addressing {
    pub(super) scheme: &'static str,
    /// `host[:port]` as configured.
    pub(super) endpoint: String,
    pub(super) bucket: String,
    /// Virtual-hosted style (`bucket.endpoint`) rather than path style.
    pub(super) virtual_host: bool,
}

impl Addressing {
    pub(super) fn new(
        endpoint: &str,
        bucket: &str,
        lookup: BucketLookupType,
        disable_ssl: bool,
    ) -> Result<Addressing, S3Error> {
        let endpoint = endpoint.trim();
        if endpoint.contains("://") {
            return Err(S3Error::Config(format!(
                "s3_proxy.endpoint {endpoint:?} must be host[:port] without a scheme \
                 (set s3_proxy.disable_ssl: true for http)"
            )));
        }
        if endpoint.is_empty() || endpoint.contains(['/', '@', '?', '#']) {
            return Err(S3Error::Config(format!(
                "s3_proxy.endpoint {endpoint:?} must be host[:port]"
            )));
        }
        let authority: http::uri::Authority = endpoint.parse().map_err(|_| {
            S3Error::Config(format!(
                "s3_proxy.endpoint {endpoint:?} is not a valid host[:port]"
            ))
        })?;
        if bucket.is_empty() || bucket.contains(['/', '?', '#']) {
            return Err(S3Error::Config(format!(
                "s3_proxy.bucket {bucket:?} is not a valid bucket name"
            )));
        }
        let tls = !disable_ssl;
        let virtual_host = match lookup {
            BucketLookupType::Path => false,
            BucketLookupType::Dns => true,
            BucketLookupType::Auto => {
                authority.port().is_none()
                    && is_aws_host(authority.host())
                    && bucket_is_dns_compatible(bucket, tls)
            }
        };
        if virtual_host && !bucket_is_dns_compatible(bucket, false) {
            return Err(S3Error::Config(format!(
                "s3_proxy.bucket {bucket:?} can't be used as a host name; \
                 set s3_proxy.bucket_lookup_type: path"
            )));
        }
        Ok(Addressing {
            scheme: if tls { "https" } else { "http" },
            endpoint: endpoint.to_owned(),
            bucket: bucket.to_owned(),
            virtual_host,
        })
    }

    /// The `Host` header (and URL authority).
    pub(super) fn host(&self) -> String {
        if self.virtual_host {
            format!("{}.{}", self.bucket, self.endpoint)
        } else {
            self.endpoint.clone()
        }
    }

    /// The request path for `key`, percent-encoded.
    pub(super) fn path(&self, key: &str) -> String {
        let mut path = String::with_capacity(key.len() + self.bucket.len() + 8);
        path.push('/');
        if !self.virtual_host {
            uri_encode(&self.bucket, false, &mut path);
            path.push('/');
        }
        uri_encode(key, true, &mut path);
        path
    }

    /// The full URL of `key`, plus `?query` when `query` isn't empty
    /// (already encoded).
    pub(super) fn url(&self, key: &str, query: &str) -> String {
        let mut url = format!("{}://{}{}", self.scheme, self.host(), self.path(key));
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// `x-amz-copy-source` for `key`: `/bucket/key`, URL-encoded.
    pub(super) fn copy_source(&self, key: &str) -> String {
        let mut s = String::from("/");
        uri_encode(&self.bucket, false, &mut s);
        s.push('/');
        uri_encode(key, true, &mut s);
        s
    }
}

fn is_aws_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "amazonaws.com"
        || host.ends_with(".amazonaws.com")
        || host.ends_with(".amazonaws.com.cn")
}

/// Whether `bucket` can be a DNS label sequence in front of the endpoint:
/// 3–63 of `a-z 0-9 - .`, labels starting and ending alphanumeric, not an
/// IPv4 address; over TLS no dots (the wildcard certificate covers one label).
fn bucket_is_dns_compatible(bucket: &str, tls: bool) -> bool {
    if !(3..=63).contains(&bucket.len()) || (tls && bucket.contains('.')) {
        return false;
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return false;
    }
    bucket.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    })
}

/// S3's URI encoding: everything but unreserved characters (and `/` when
/// `keep_slash`) as `%XX` with upper-case hex.
fn uri_encode(s: &str, keep_slash: bool, out: &mut String) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The query of CompleteMultipartUpload and AbortMultipartUpload.
pub(super) fn upload_query(upload_id: &str) -> String {
    let mut q = String::from("uploadId=");
    uri_encode(upload_id, false, &mut q);
    q
}

/// The query of UploadPart.
pub(super) fn part_query(number: u32, upload_id: &str) -> String {
    let mut q = format!("partNumber={number}&uploadId=");
    uri_encode(upload_id, false, &mut q);
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(endpoint: &str, bucket: &str, lookup: BucketLookupType, tls: bool) -> Addressing {
        Addressing::new(endpoint, bucket, lookup, !tls).unwrap()
    }

    #[test]
    fn path_style_urls() {
        let a = addr("127.0.0.1:9000", "cache", BucketLookupType::Path, false);
        assert_eq!(a.url("ac/ab/x", ""), "http://127.0.0.1:9000/cache/ac/ab/x");
        assert_eq!(a.host(), "127.0.0.1:9000");
        let a = addr("s3.amazonaws.com", "cache", BucketLookupType::Path, true);
        assert_eq!(
            a.url("k", "uploads"),
            "https://s3.amazonaws.com/cache/k?uploads"
        );
    }

    #[test]
    fn dns_style_urls() {
        let a = addr("minio.local:9000", "cache", BucketLookupType::Dns, true);
        assert_eq!(
            a.url("p/cas/ab/x", ""),
            "https://cache.minio.local:9000/p/cas/ab/x"
        );
        assert_eq!(a.host(), "cache.minio.local:9000");
        assert_eq!(a.copy_source("a b"), "/cache/a%20b");
        // A bucket that can't be a host name is refused up front.
        let err =
            Addressing::new("minio.local", "My_Bucket", BucketLookupType::Dns, false).unwrap_err();
        assert!(err.to_string().contains("bucket_lookup_type"), "{err}");
    }

    #[test]
    fn auto_style_rule() {
        let auto = |endpoint: &str, bucket: &str, tls: bool| {
            addr(endpoint, bucket, BucketLookupType::Auto, tls).virtual_host
        };
        assert!(auto("s3.amazonaws.com", "cache", true));
        assert!(auto("s3.eu-west-1.amazonaws.com", "my-cache", true));
        assert!(auto("s3.cn-north-1.amazonaws.com.cn", "cache", true));
        // Dotted buckets don't match the wildcard certificate over TLS.
        assert!(!auto("s3.amazonaws.com", "my.cache", true));
        assert!(auto("s3.amazonaws.com", "my.cache", false));
        // Explicit port, IP address, other hosts: path style.
        assert!(!auto("s3.amazonaws.com:443", "cache", true));
        assert!(!auto("127.0.0.1", "cache", false));
        assert!(!auto("[::1]:9000", "cache", false));
        assert!(!auto("minio.example.com", "cache", true));
        assert!(!auto("notamazonaws.com", "cache", true));
        assert!(!auto("s3.amazonaws.com", "Upper", true));
    }

    #[test]
    fn keys_are_encoded_the_s3_way() {
        let a = addr("h:1", "b", BucketLookupType::Path, false);
        assert_eq!(
            a.path("dir/a b+c%d=e&f?g#h~i.j_k-l"),
            "/b/dir/a%20b%2Bc%25d%3De%26f%3Fg%23h~i.j_k-l"
        );
        assert_eq!(a.path("ü/€"), "/b/%C3%BC/%E2%82%AC");
        assert_eq!(a.path("a//b"), "/b/a//b");
        assert_eq!(part_query(3, "a/b+c"), "partNumber=3&uploadId=a%2Fb%2Bc");
        assert_eq!(upload_query("a/b+c"), "uploadId=a%2Fb%2Bc");
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for endpoint in [
            "http://minio:9000",
            "minio:9000/path",
            "",
            "user@host",
            "a b",
        ] {
            let err = Addressing::new(endpoint, "b", BucketLookupType::Auto, true).unwrap_err();
            assert!(
                err.to_string().contains("s3_proxy.endpoint"),
                "{endpoint}: {err}"
            );
            assert!(!err.is_retryable());
        }
    }
}
