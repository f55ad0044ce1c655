//! Parsing of cache URLs: `[/<instance>...]/ac/<sha256>` and `/cas/<sha256>`,
//! as bazel-remote accepts them.

use bazel_cache_digest::{DigestError, Hash, Kind};

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
pub fn parse(path: &str) -> Result<CachePath, PathError> {
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
    let hash = Hash::from_hex(segments[kind_pos + 1])?;
    let instance_parts = &segments[..kind_pos];
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
        let p = parse(&format!("/cas/{H}")).unwrap();
        assert_eq!((p.kind, p.instance.as_str()), (Kind::Cas, ""));
        let p = parse(&format!("/team-a/linux_x86/ac/{H}")).unwrap();
        assert_eq!(
            (p.kind, p.instance.as_str()),
            (Kind::Ac, "team-a/linux_x86")
        );
        // An instance may itself be called "ac": the last ac/cas segment wins.
        let p = parse(&format!("/ac/cas/{H}")).unwrap();
        assert_eq!((p.kind, p.instance.as_str()), (Kind::Cas, "ac"));
    }

    #[test]
    fn rejects_malformed_paths() {
        assert_eq!(parse("/"), Err(PathError::NotCachePath));
        assert_eq!(parse("/favicon.ico"), Err(PathError::NotCachePath));
        assert!(matches!(parse("/cas/abc"), Err(PathError::BadHash(_))));
        assert!(matches!(
            parse(&format!("/cas/{}", H.to_uppercase())),
            Err(PathError::BadHash(_))
        ));
        assert_eq!(parse(&format!("/cas/{H}/x")), Err(PathError::Malformed));
        assert_eq!(parse(&format!("/cas/{H}/")), Err(PathError::Malformed));
        assert_eq!(parse("/cas"), Err(PathError::Malformed));
        assert_eq!(
            parse(&format!("/../cas/{H}")),
            Err(PathError::BadInstance("..".into()))
        );
        assert_eq!(
            parse(&format!("/a/%2e%2e/cas/{H}")),
            Err(PathError::BadInstance("%2e%2e".into()))
        );
        assert_eq!(
            parse(&format!("//cas/{H}")),
            Err(PathError::BadInstance("".into()))
        );
    }
}
