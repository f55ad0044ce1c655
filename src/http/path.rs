//! Parsing of cache URLs: `[/<instance>...]/ac/<sha256>` and `/cas/<sha256>`,
//! as bazel-remote accepts them, and `[/<instance>...]/blake3/ac/<blake3>`,
//! `/blake3/cas/<blake3>` for BLAKE3 names (Bazel's HTTP client sends no
//! digest function, and the hex cannot tell: the path or the
//! `X-Digest-Function` header must). The segment is taken from the end of
//! the path, so an instance name may not end in a segment `blake3`.

use bazel_cache_digest::{DigestError, DigestFunction, Hash, Kind};

/// A request path that names a cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePath {
    /// Instance name: the path segments before `ac`/`cas`, joined by `/`.
    pub instance: String,
    pub kind: Kind,
    pub hash: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not a cache path at all (the caller answers 404).
    #[error("no such resource; cache entries are /ac/<sha256> and /cas/<sha256>")]
    NotCachePath,
    #[error("invalid cache path: {0}")]
    BadHash(#[from] DigestError),
    #[error("invalid cache path: expected /[instance/]ac/<sha256> or /[instance/]cas/<sha256>")]
    Malformed,
    #[error(
        "invalid instance name segment {0:?}: only letters, digits, '.', '_' and '-' are allowed, and not '.' or '..'"
    )]
    BadInstance(String),
    #[error("the path names the digest function {path} and the X-Digest-Function header {header}")]
    ConflictingDigestFunction {
        path: DigestFunction,
        header: DigestFunction,
    },
}

fn instance_segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a request path (without query string). Refuses traversal segments
/// and percent-escapes in instance names: an instance name is a label, never
/// a file path, and one spelling per name keeps AC key mangling unambiguous.
/// `header` is the function the `X-Digest-Function` header named, if any.
pub fn parse(path: &str, header: Option<DigestFunction>) -> Result<CachePath, PathError> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = trimmed.split('/').collect();
    let Some(kind_pos) = segments.iter().rposition(|s| *s == "ac" || *s == "cas") else {
        return Err(PathError::NotCachePath);
    };
    if kind_pos + 2 != segments.len() {
        return Err(PathError::Malformed);
    }
    let kind = if segments[kind_pos] == "ac" {
        Kind::Ac
    } else {
        Kind::Cas
    };
    let (function, instance_end) = match kind_pos.checked_sub(1).map(|i| segments[i]) {
        Some("blake3") => (Some(DigestFunction::Blake3), kind_pos - 1),
        _ => (None, kind_pos),
    };
    let function = match (function, header) {
        (Some(path), Some(header)) if path != header => {
            return Err(PathError::ConflictingDigestFunction { path, header });
        }
        (named, header) => named.or(header).unwrap_or_default(),
    };
    let hash = Hash::from_hex(function, segments[kind_pos + 1])?;
    let instance_parts = &segments[..instance_end];
    if let Some(bad) = instance_parts.iter().find(|s| !instance_segment_ok(s)) {
        return Err(PathError::BadInstance(bad.to_string()));
    }
    Ok(CachePath {
        instance: instance_parts.join("/"),
        kind,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn accepts_plain_and_instance_paths() {
        let p = parse(&format!("/cas/{H}"), None).unwrap();
        assert_eq!((p.kind, p.instance.as_str()), (Kind::Cas, ""));
        let p = parse(&format!("/team-a/linux_x86/ac/{H}"), None).unwrap();
        assert_eq!(
            (p.kind, p.instance.as_str()),
            (Kind::Ac, "team-a/linux_x86")
        );
        // An instance may itself be called "ac": the last ac/cas segment wins.
        let p = parse(&format!("/ac/cas/{H}"), None).unwrap();
        assert_eq!((p.kind, p.instance.as_str()), (Kind::Cas, "ac"));
    }

    #[test]
    fn blake3_from_the_path_or_the_header() {
        let b3 = DigestFunction::Blake3;
        let p = parse(&format!("/blake3/cas/{H}"), None).unwrap();
        assert_eq!((p.kind, p.instance.as_str()), (Kind::Cas, ""));
        assert_eq!(p.hash, Hash::from_hex(b3, H).unwrap());
        let p = parse(&format!("/team/blake3/ac/{H}"), None).unwrap();
        assert_eq!((p.kind, p.instance.as_str()), (Kind::Ac, "team"));
        assert_eq!(p.hash.function(), b3);
        let p = parse(&format!("/team/cas/{H}"), Some(b3)).unwrap();
        assert_eq!((p.instance.as_str(), p.hash.function()), ("team", b3));
        let p = parse(&format!("/blake3/cas/{H}"), Some(b3)).unwrap();
        assert_eq!(p.hash.function(), b3);
        // Without either, SHA-256, as bazel-remote.
        let p = parse(&format!("/cas/{H}"), None).unwrap();
        assert_eq!(p.hash.function(), DigestFunction::Sha256);
        assert_eq!(
            parse(&format!("/blake3/cas/{H}"), Some(DigestFunction::Sha256)),
            Err(PathError::ConflictingDigestFunction {
                path: b3,
                header: DigestFunction::Sha256
            })
        );
        // "blake3" elsewhere in an instance name is just a name.
        let p = parse(&format!("/blake3/x/cas/{H}"), None).unwrap();
        assert_eq!(
            (p.instance.as_str(), p.hash.function()),
            ("blake3/x", DigestFunction::Sha256)
        );
    }

    #[test]
    fn rejects_malformed_paths() {
        assert_eq!(parse("/", None), Err(PathError::NotCachePath));
        assert_eq!(parse("/favicon.ico", None), Err(PathError::NotCachePath));
        assert!(matches!(
            parse("/cas/abc", None),
            Err(PathError::BadHash(_))
        ));
        assert!(matches!(
            parse(&format!("/cas/{}", H.to_uppercase()), None),
            Err(PathError::BadHash(_))
        ));
        assert_eq!(
            parse(&format!("/cas/{H}/x"), None),
            Err(PathError::Malformed)
        );
        assert_eq!(
            parse(&format!("/cas/{H}/"), None),
            Err(PathError::Malformed)
        );
        assert_eq!(parse("/cas", None), Err(PathError::Malformed));
        assert_eq!(
            parse(&format!("/../cas/{H}"), None),
            Err(PathError::BadInstance("..".into()))
        );
        assert_eq!(
            parse(&format!("/a/%2e%2e/cas/{H}"), None),
            Err(PathError::BadInstance("%2e%2e".into()))
        );
        assert_eq!(
            parse(&format!("//cas/{H}"), None),
            Err(PathError::BadInstance("".into()))
        );
    }
}
