//! The cache to load, as the URL Bazel would be given:
//! `http://host:8080`, `https://user:pass@host/prefix`, `grpc://host:9092`,
//! `grpcs://host:443`. Userinfo becomes HTTP basic auth (as Bazel sends it);
//! an HTTP path is a prefix before `/cas/` (an instance name for
//! bazel-remote-compatible servers).

use base64::Engine as _;

use crate::error::BenchError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// bazel-remote's HTTP protocol: `GET`/`PUT`/`HEAD /cas/<sha256>`.
    Http,
    /// REAPI v2 over gRPC.
    Grpc,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub protocol: Protocol,
    pub tls: bool,
    /// As written in the URL (IPv6 addresses keep their brackets).
    pub host: String,
    pub port: u16,
    /// `""` or `/a/b` (no trailing slash); HTTP only.
    pub path: String,
    /// Percent-decoded user and password.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, BenchError> {
        let bad = |message: &str| BenchError::Url {
            url: redact(url),
            message: message.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://host:port, e.g. grpc://localhost:9092"))?;
        let (protocol, tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "http" => (Protocol::Http, false, Some(80)),
            "https" => (Protocol::Http, true, Some(443)),
            "grpc" => (Protocol::Grpc, false, None),
            "grpcs" => (Protocol::Grpc, true, Some(443)),
            _ => {
                return Err(bad(&format!(
                    "unknown scheme {scheme:?} (expected http, https, grpc or grpcs)"
                )));
            }
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err(bad("a query or fragment means nothing to a cache"));
        }
        let path = path.trim_end_matches('/').to_owned();
        if protocol == Protocol::Grpc && !path.is_empty() {
            return Err(bad(
                "a gRPC URL has no path; give the instance name with --instance_name",
            ));
        }
        if path.split('/').any(|s| s == "." || s == "..") {
            return Err(bad("the path may not contain . or .. segments"));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let credentials = match userinfo {
            None => None,
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                let user = percent_decode(user).ok_or_else(|| bad("bad %-escape in the user"))?;
                let pass =
                    percent_decode(pass).ok_or_else(|| bad("bad %-escape in the password"))?;
                Some((user, pass))
            }
        };
        let (host, port) = split_host_port(hostport).map_err(|m| bad(&m))?;
        let port = match (port, default_port) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => return Err(bad("grpc:// needs a port, e.g. grpc://localhost:9092")),
        };
        Ok(Target {
            protocol,
            tls,
            host: host.to_owned(),
            port,
            path,
            credentials,
        })
    }

    pub(crate) fn scheme(&self) -> &'static str {
        match (self.protocol, self.tls) {
            (Protocol::Http, false) => "http",
            (Protocol::Http, true) => "https",
            (Protocol::Grpc, false) => "grpc",
            (Protocol::Grpc, true) => "grpcs",
        }
    }

    /// `host:port`.
    pub(crate) fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The host name for TLS (no IPv6 brackets).
    pub(crate) fn server_name(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The URL with the password replaced by `***`, for reports and errors.
    pub(crate) fn redacted(&self) -> String {
        let user = match &self.credentials {
            Some((user, _)) => format!("{user}:***@"),
            None => String::new(),
        };
        format!(
            "{}://{user}{}{}",
            self.scheme(),
            self.authority(),
            self.path
        )
    }

    /// The `Authorization` header value for the URL's userinfo.
    pub(crate) fn basic_auth(&self) -> Option<String> {
        self.credentials.as_ref().map(|(user, pass)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            )
        })
    }
}

fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']').ok_or("unclosed [ in the host")? + 1;
        match &s[end..] {
            "" => (&s[..end], None),
            rest => match rest.strip_prefix(':') {
                Some(p) => (&s[..end], Some(p)),
                None => return Err(format!("unexpected {rest:?} after the host")),
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err("no host".to_owned());
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port {p:?} is not a number from 1 to 65535"))?,
        ),
    };
    Ok((host, port))
}

/// `%XX` escapes decoded; `None` if one is malformed or the result is not
/// UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The URL with anything between `://` and the last `@` of the authority
/// replaced, so an unparsable URL can be quoted without its password.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_with_credentials_and_prefix() {
        let t = Target::parse("https://ci%40corp:p%3Ass@cache.example:8443/team-a/").unwrap();
        assert_eq!(t.protocol, Protocol::Http);
        assert!(t.tls);
        assert_eq!(t.authority(), "cache.example:8443");
        assert_eq!(t.path, "/team-a");
        assert_eq!(
            t.credentials,
            Some(("ci@corp".to_owned(), "p:ss".to_owned()))
        );
        // base64("ci@corp:p:ss")
        assert_eq!(t.basic_auth().unwrap(), "Basic Y2lAY29ycDpwOnNz");
        assert_eq!(
            t.redacted(),
            "https://ci@corp:***@cache.example:8443/team-a"
        );
        assert!(!format!("{t:?}").contains("p:ss"));
    }

    #[test]
    fn defaults_and_ipv6() {
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!((t.port, t.path.as_str(), t.tls), (80, "", false));
        let t = Target::parse("grpcs://[::1]").unwrap();
        assert_eq!((t.protocol, t.port), (Protocol::Grpc, 443));
        assert_eq!(t.server_name(), "::1");
        assert_eq!(t.authority(), "[::1]:443");
        let t = Target::parse("grpc://127.0.0.1:9092").unwrap();
        assert_eq!(t.redacted(), "grpc://127.0.0.1:9092");
        assert_eq!(t.basic_auth(), None);
    }

    #[test]
    fn bad_urls_are_explained_without_the_password() {
        for (url, fragment) in [
            ("localhost:8080", "expected scheme://"),
            ("ftp://h:1", "unknown scheme"),
            ("grpc://h", "needs a port"),
            ("grpc://h:1/inst", "--instance_name"),
            ("http://h:0", "port \"0\""),
            ("http://h:http", "port \"http\""),
            ("http://:80", "no host"),
            ("http://h/a?x=1", "query"),
            ("http://h/../x", ".."),
            ("http://u:sec%zzret@h", "%-escape"),
            ("http://u:secret@[::1", "unclosed"),
        ] {
            let err = Target::parse(url).unwrap_err().to_string();
            assert!(err.contains(fragment), "{url}: {err}");
            assert!(
                !err.contains("secret") && !err.contains("sec%zz"),
                "{url}: {err}"
            );
        }
    }
}
