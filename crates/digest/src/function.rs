//! The digest functions this cache names blobs with: SHA-256 (bazel-remote's
//! only one, and Bazel's default) and BLAKE3 (`--digest_function=blake3`,
//! Bazel ≥ 6.4).
//!
//! The function is part of a blob's name, never guessed from the hash: both
//! produce 32 bytes, so a 64-character hex string says nothing about which
//! one made it. Every request says which it means (REAPI `digest_function`
//! fields, `blobs/blake3/…` resource names, the HTTP `/blake3/` path segment
//! or header), and whatever is unset means SHA-256, as for bazel-remote.

use std::fmt;
use std::str::FromStr;

use bazel_remote_apis::build::bazel::remote::execution::v2::digest_function::Value as ReapiFunction;

/// A digest function this server supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum DigestFunction {
    #[default]
    Sha256,
    Blake3,
}

/// A digest function named by a client that this server does not support
/// (SHA-1, MD5, SHA-384, …), or a number that names none at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("digest function {0} is not supported: this server supports SHA256 and BLAKE3")]
pub struct UnsupportedDigestFunction(pub String);

impl DigestFunction {
    pub const ALL: [DigestFunction; 2] = [DigestFunction::Sha256, DigestFunction::Blake3];

    /// The lowercase name, as REAPI resource names (`blobs/blake3/…`), our
    /// HTTP paths, disk directories and bucket prefixes spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
            DigestFunction::Blake3 => "blake3",
        }
    }

    /// The name as REAPI's enum spells it (`SHA256`, `BLAKE3`): error
    /// messages and metrics labels.
    pub fn reapi_name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "SHA256",
            DigestFunction::Blake3 => "BLAKE3",
        }
    }

    /// The segment a ByteStream resource name carries before the hash:
    /// `blake3/` for BLAKE3, nothing for SHA-256 (REAPI: "MUST be omitted"
    /// for the functions whose hash length tells them apart).
    pub fn resource_segment(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "",
            DigestFunction::Blake3 => "blake3/",
        }
    }

    /// The REAPI `DigestFunction.Value` number.
    pub fn to_reapi(self) -> i32 {
        match self {
            DigestFunction::Sha256 => ReapiFunction::Sha256 as i32,
            DigestFunction::Blake3 => ReapiFunction::Blake3 as i32,
        }
    }

    /// A request's `digest_function` field. `UNKNOWN` (0, the field unset) is
    /// SHA-256: clients older than REAPI 2.3 never set it, and the length of
    /// their hashes could not tell SHA-256 from BLAKE3 anyway.
    pub fn from_reapi(value: i32) -> Result<DigestFunction, UnsupportedDigestFunction> {
        match ReapiFunction::try_from(value) {
            Ok(ReapiFunction::Unknown | ReapiFunction::Sha256) => Ok(DigestFunction::Sha256),
            Ok(ReapiFunction::Blake3) => Ok(DigestFunction::Blake3),
            Ok(other) => Err(UnsupportedDigestFunction(other.as_str_name().to_string())),
            Err(_) => Err(UnsupportedDigestFunction(format!("number {value}"))),
        }
    }

    /// The hash of zero bytes under this function: the empty blob, which
    /// every CAS holds without storing it.
    pub fn empty_hash(self) -> crate::Hash {
        match self {
            DigestFunction::Sha256 => crate::hash::EMPTY_SHA256,
            DigestFunction::Blake3 => crate::hash::EMPTY_BLAKE3,
        }
    }
}

impl FromStr for DigestFunction {
    type Err = UnsupportedDigestFunction;

    /// A name as a person or a resource name writes it: `sha256`/`SHA256`,
    /// `blake3`/`BLAKE3`.
    fn from_str(s: &str) -> Result<DigestFunction, UnsupportedDigestFunction> {
        if s.eq_ignore_ascii_case("sha256") {
            Ok(DigestFunction::Sha256)
        } else if s.eq_ignore_ascii_case("blake3") {
            Ok(DigestFunction::Blake3)
        } else {
            Err(UnsupportedDigestFunction(format!("{s:?}")))
        }
    }
}

impl fmt::Display for DigestFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reapi_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reapi_numbers_round_trip_and_unset_means_sha256() {
        for f in DigestFunction::ALL {
            assert_eq!(DigestFunction::from_reapi(f.to_reapi()), Ok(f));
            assert_eq!(f.as_str().parse::<DigestFunction>(), Ok(f));
            assert_eq!(f.reapi_name().parse::<DigestFunction>(), Ok(f));
        }
        assert_eq!(DigestFunction::from_reapi(0), Ok(DigestFunction::Sha256));
        assert_eq!(DigestFunction::Blake3.to_reapi(), 9);
        let sha1 = DigestFunction::from_reapi(ReapiFunction::Sha1 as i32).unwrap_err();
        assert_eq!(
            sha1.to_string(),
            "digest function SHA1 is not supported: this server supports SHA256 and BLAKE3"
        );
        assert!(DigestFunction::from_reapi(1234).is_err());
        assert!("md5".parse::<DigestFunction>().is_err());
    }
}
