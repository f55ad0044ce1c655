//! REAPI `Digest` messages: hash plus logical size, converted to and from
//! the protobuf form with one set of error messages for every RPC.

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;

use crate::hash::{DigestError, Hash};

/// A REAPI digest: hash plus logical (uncompressed) size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    pub hash: Hash,
    pub size: u64,
}

/// Why a REAPI `Digest` message names no blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReapiDigestError {
    #[error(transparent)]
    Hash(#[from] DigestError),
    #[error("negative size {0}")]
    NegativeSize(i64),
}

impl Digest {
    /// Parses a REAPI digest message into ours.
    pub fn from_reapi(d: &re::Digest) -> Result<Digest, ReapiDigestError> {
        let hash = Hash::from_hex(&d.hash)?;
        let size = u64::try_from(d.size_bytes)
            .map_err(|_| ReapiDigestError::NegativeSize(d.size_bytes))?;
        Ok(Digest { hash, size })
    }

    /// The REAPI message for this digest.
    pub fn to_reapi(&self) -> re::Digest {
        re::Digest {
            hash: self.hash.to_hex(),
            size_bytes: i64::try_from(self.size).unwrap_or(i64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reapi_digests_round_trip_and_bad_ones_say_why() {
        let d = Digest {
            hash: Hash::of(b"abc"),
            size: 3,
        };
        assert_eq!(Digest::from_reapi(&d.to_reapi()), Ok(d));
        let negative = re::Digest {
            hash: d.hash.to_hex(),
            size_bytes: -1,
        };
        assert_eq!(
            Digest::from_reapi(&negative).unwrap_err().to_string(),
            "negative size -1"
        );
        let short = re::Digest {
            hash: "abc".into(),
            size_bytes: 3,
        };
        assert_eq!(
            Digest::from_reapi(&short),
            Err(ReapiDigestError::Hash(DigestError::WrongLength(3)))
        );
    }
}
