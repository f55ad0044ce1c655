//! The qualifiers of a Remote Asset request, parsed once: `checksum.sri`
//! (Subresource Integrity: `sha256-`, `sha384-`, `sha512-` + base64, several
//! separated by spaces; any one that matches accepts the blob),
//! `bazel.canonical_id`, and the headers to send (`http_header:<name>` to
//! every URL, `http_header_url:<index>:<name>` to one). Other qualifiers
//! are kept: they are part of what a record is keyed by.

use base64::Engine as _;
use bazel_remote_apis::build::bazel::remote::asset::v1::Qualifier;
use tonic::Status;

use bazel_cache_store::asset_download::Downloaded;

/// One Subresource Integrity expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Sri {
    Sha256([u8; 32]),
    Sha384([u8; 48]),
    Sha512(Vec<u8>),
}

impl Sri {
    fn matches(&self, d: &Downloaded) -> bool {
        match self {
            Sri::Sha256(h) => *h == d.sha256,
            Sri::Sha384(h) => *h == d.sha384,
            Sri::Sha512(h) => h.as_slice() == d.sha512.as_slice(),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Qualifiers {
    pub sri: Vec<Sri>,
    pub canonical_id: Option<String>,
    /// `(url index or None for all, name, value)`.
    headers: Vec<(Option<usize>, String, String)>,
    /// Every qualifier except headers, sorted: what a record is keyed by.
    pub identity: Vec<(String, String)>,
}

impl Qualifiers {
    pub(super) fn parse(qualifiers: &[Qualifier]) -> Result<Qualifiers, Status> {
        let mut q = Qualifiers::default();
        for Qualifier { name, value } in qualifiers {
            if let Some(header) = name.strip_prefix("http_header:") {
                check_header(name, header, value)?;
                q.headers.push((None, header.to_owned(), value.clone()));
                continue;
            }
            if let Some(rest) = name.strip_prefix("http_header_url:") {
                let (index, header) = rest
                    .split_once(':')
                    .and_then(|(i, h)| Some((i.parse::<usize>().ok()?, h)))
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "qualifier {name:?}: expected http_header_url:<index>:<name>"
                        ))
                    })?;
                check_header(name, header, value)?;
                q.headers
                    .push((Some(index), header.to_owned(), value.clone()));
                continue;
            }
            match name.as_str() {
                "checksum.sri" => q.sri.extend(parse_sri(value)?),
                "bazel.canonical_id" => q.canonical_id = Some(value.clone()),
                _ => {}
            }
            q.identity.push((name.clone(), value.clone()));
        }
        q.identity.sort();
        Ok(q)
    }

    /// The headers for the URL at `index`.
    pub(super) fn headers_for(&self, index: usize) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(i, _, _)| i.is_none_or(|i| i == index))
            .map(|(_, n, v)| (n.clone(), v.clone()))
            .collect()
    }

    /// Whether a download is the blob asked for: with no checksum any body
    /// is; otherwise one SRI must match.
    pub(super) fn accepts(&self, d: &Downloaded) -> bool {
        self.sri.is_empty() || self.sri.iter().any(|s| s.matches(d))
    }

    /// The SHA-256 the SRI names, if it names one: the blob may already be
    /// in the CAS.
    pub(super) fn sha256(&self) -> Option<[u8; 32]> {
        self.sri.iter().find_map(|s| match s {
            Sri::Sha256(h) => Some(*h),
            _ => None,
        })
    }
}

fn check_header(qualifier: &str, name: &str, value: &str) -> Result<(), Status> {
    let bad = |what: &str| Status::invalid_argument(format!("qualifier {qualifier:?}: {what}"));
    http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("invalid header name"))?;
    http::HeaderValue::from_str(value).map_err(|_| bad("invalid header value"))?;
    Ok(())
}

/// Parses an SRI value: whitespace-separated `<alg>-<base64>[?options]`.
fn parse_sri(value: &str) -> Result<Vec<Sri>, Status> {
    let bad = |why: String| Status::invalid_argument(format!("checksum.sri {value:?}: {why}"));
    let mut out = Vec::new();
    for item in value.split_ascii_whitespace() {
        let item = item.split_once('?').map_or(item, |(h, _)| h);
        let (alg, b64) = item
            .split_once('-')
            .ok_or_else(|| bad(format!("{item:?} is not <algorithm>-<base64>")))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(format!("{item:?}: {e}")))?;
        let len_err = || bad(format!("{item:?}: wrong digest length for {alg}"));
        out.push(match alg {
            "sha256" => Sri::Sha256(bytes.try_into().map_err(|_| len_err())?),
            "sha384" => Sri::Sha384(bytes.try_into().map_err(|_| len_err())?),
            "sha512" if bytes.len() == 64 => Sri::Sha512(bytes),
            "sha512" => return Err(len_err()),
            _ => return Err(bad(format!("unsupported algorithm {alg:?}"))),
        });
    }
    if out.is_empty() {
        return Err(bad("empty".to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str, value: &str) -> Qualifier {
        Qualifier {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn sri_lists_and_headers_parse() {
        let sha256_empty = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let p = Qualifiers::parse(&[
            q(
                "checksum.sri",
                &format!("{sha256_empty} sha512-{}", "A".repeat(86) + "=="),
            ),
            q("http_header:Authorization", "Bearer x"),
            q("http_header_url:1:X-One", "1"),
            q("bazel.canonical_id", "id"),
        ])
        .unwrap();
        assert_eq!(p.sri.len(), 2);
        assert_eq!(p.canonical_id.as_deref(), Some("id"));
        assert_eq!(p.headers_for(0).len(), 1);
        assert_eq!(p.headers_for(1).len(), 2);
        assert_eq!(p.identity.len(), 2, "headers are not identity");
        assert!(Qualifiers::parse(&[q("checksum.sri", "md5-AAAA")]).is_err());
        assert!(Qualifiers::parse(&[q("checksum.sri", "sha256-AAAA")]).is_err());
        assert!(Qualifiers::parse(&[q("http_header_url:x:A", "v")]).is_err());
        assert!(Qualifiers::parse(&[q("http_header:bad name", "v")]).is_err());
    }
}
