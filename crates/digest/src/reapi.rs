//! REAPI `Digest` messages: hash plus logical size, converted to and from
//! the protobuf form with one set of error messages for every RPC.
//!
//! [`Digest::checked`] is the one rule for which digests can name a blob at
//! all; every gRPC request field and ByteStream resource name goes through
//! it, so FindMissingBlobs refuses what BatchReadBlobs refuses (as
//! bazel-remote's `validateHash` does for every RPC).

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;

use crate::function::DigestFunction;
use crate::hash::{DigestError, Hash};

/// A REAPI digest: hash (which carries its function) plus logical
/// (uncompressed) size in bytes.
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
    /// Only the empty blob has zero bytes: any other hash with size 0 is a
    /// client bug, and answering it (even "missing") would hide that.
    #[error("size 0 with hash {0}: only the empty blob ({empty}) has size 0", empty = .0.function().empty_hash())]
    EmptyWithOtherHash(Hash),
}

impl Digest {
    /// A digest that can name a blob: size 0 only with the empty blob's
    /// hash (under the hash's own function).
    pub fn checked(hash: Hash, size: u64) -> Result<Digest, ReapiDigestError> {
        if size == 0 && !hash.is_empty_blob() {
            return Err(ReapiDigestError::EmptyWithOtherHash(hash));
        }
        Ok(Digest { hash, size })
    }

    /// Parses a REAPI digest message into ours; `function` is the
    /// request's (its `digest_function` field or resource name): the message
    /// itself does not say.
    pub fn from_reapi(
        function: DigestFunction,
        d: &re::Digest,
    ) -> Result<Digest, ReapiDigestError> {
        let hash = Hash::from_hex(function, &d.hash)?;
        let size = u64::try_from(d.size_bytes)
            .map_err(|_| ReapiDigestError::NegativeSize(d.size_bytes))?;
        Digest::checked(hash, size)
    }

    /// `blobs/[blake3/]<hash>/<size>`: the tail of a ByteStream resource
    /// name for this digest.
    pub fn blobs_path(&self) -> String {
        format!(
            "blobs/{}{}/{}",
            self.hash.function().resource_segment(),
            self.hash,
            self.size
        )
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
    use crate::hash::{EMPTY_BLAKE3, EMPTY_SHA256};

    const SHA256: DigestFunction = DigestFunction::Sha256;

    #[test]
    fn reapi_digests_round_trip_and_bad_ones_say_why() {
        let d = Digest {
            hash: Hash::of(b"abc"),
            size: 3,
        };
        assert_eq!(Digest::from_reapi(SHA256, &d.to_reapi()), Ok(d));
        let negative = re::Digest {
            hash: d.hash.to_hex(),
            size_bytes: -1,
        };
        assert_eq!(
            Digest::from_reapi(SHA256, &negative)
                .unwrap_err()
                .to_string(),
            "negative size -1"
        );
        let short = re::Digest {
            hash: "abc".into(),
            size_bytes: 3,
        };
        assert_eq!(
            Digest::from_reapi(SHA256, &short),
            Err(ReapiDigestError::Hash(DigestError::WrongLength(3)))
        );
        let upper = re::Digest {
            hash: d.hash.to_hex().to_uppercase(),
            size_bytes: 3,
        };
        assert!(matches!(
            Digest::from_reapi(SHA256, &upper),
            Err(ReapiDigestError::Hash(DigestError::NotHex(_)))
        ));
    }

    #[test]
    fn size_zero_names_only_the_empty_blob() {
        let empty = re::Digest {
            hash: EMPTY_SHA256.to_hex(),
            size_bytes: 0,
        };
        assert_eq!(
            Digest::from_reapi(SHA256, &empty),
            Ok(Digest {
                hash: EMPTY_SHA256,
                size: 0
            })
        );
        let other = re::Digest {
            hash: Hash::of(b"abc").to_hex(),
            size_bytes: 0,
        };
        assert_eq!(
            Digest::from_reapi(SHA256, &other),
            Err(ReapiDigestError::EmptyWithOtherHash(Hash::of(b"abc")))
        );
        // The empty blob's hash with another size is merely absent, not impossible
        // to ask about: the size is the client's claim, checked on upload.
        assert!(Digest::checked(EMPTY_SHA256, 5).is_ok());
        // Under BLAKE3 the empty blob is BLAKE3's, and SHA-256's empty hash
        // read as BLAKE3 is just another hash.
        let b3 = DigestFunction::Blake3;
        let empty_b3 = re::Digest {
            hash: EMPTY_BLAKE3.to_hex(),
            size_bytes: 0,
        };
        assert_eq!(
            Digest::from_reapi(b3, &empty_b3).map(|d| d.hash),
            Ok(EMPTY_BLAKE3)
        );
        assert!(Digest::from_reapi(b3, &empty).is_err());
        assert!(Digest::from_reapi(SHA256, &empty_b3).is_err());
    }
}
