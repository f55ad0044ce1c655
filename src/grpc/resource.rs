//! ByteStream resource names (REAPI v2, see bytestream.rs):
//!
//! - read: `{instance}/blobs/{hash}/{size}` and
//!   `{instance}/compressed-blobs/zstd/{hash}/{size}`;
//! - write: `{instance}/uploads/{uuid}/blobs/{hash}/{size}{/metadata}` and
//!   `{instance}/uploads/{uuid}/compressed-blobs/zstd/{hash}/{size}{/metadata}`.
//!
//! The instance name may be empty (then there is no leading slash) or span
//! several segments; the spec forbids its segments to equal the keywords
//! below, which is what makes the names parseable. A `{digest_function}/`
//! segment may precede the hash: `blake3/` names a BLAKE3 blob; clients must
//! omit it for SHA-256 (no segment means SHA-256), but `sha256/` is accepted
//! anyway; any other digest function is refused.
//!
//! Pure functions: every error names the resource and what is wrong with it.

use std::fmt;

use bazel_remote_apis::build::bazel::remote::execution::v2::digest_function;

use bazel_cache_digest::{Digest, DigestError, DigestFunction, Hash, ReapiDigestError};
use bazel_cache_store::Encoding;

/// Path segments the spec reserves; an instance name never contains them.
const KEYWORDS: [&str; 7] = [
    "blobs",
    "uploads",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
    "compressed-blobs",
];

/// Longest part of a resource name quoted in an error message (names come
/// from clients; a megabyte-long one must not become a megabyte-long header).
const MAX_QUOTED: usize = 300;

/// A parsed `ReadRequest.resource_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadResource<'a> {
    pub instance: &'a str,
    /// `Zstd` for `compressed-blobs/zstd/...`: the client wants a zstd stream.
    pub encoding: Encoding,
    /// Hash and size of the uncompressed blob.
    pub digest: Digest,
}

/// A parsed `WriteRequest.resource_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteResource<'a> {
    pub instance: &'a str,
    /// The client's upload id (a UUID by the spec; not checked).
    pub uuid: &'a str,
    /// `Zstd` for `compressed-blobs/zstd/...`: the data is a zstd stream.
    pub encoding: Encoding,
    /// Hash and size of the uncompressed blob.
    pub digest: Digest,
    /// Whatever follows the size, without its leading slash (ignored).
    pub metadata: &'a str,
}

/// What is wrong with a resource name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(
        "expected `{{instance}}/blobs/{{hash}}/{{size}}` or `{{instance}}/compressed-blobs/zstd/{{hash}}/{{size}}`"
    )]
    NotARead,
    #[error(
        "expected `{{instance}}/uploads/{{uuid}}/blobs/{{hash}}/{{size}}` or `{{instance}}/uploads/{{uuid}}/compressed-blobs/zstd/{{hash}}/{{size}}`"
    )]
    NotAnUpload,
    #[error("the instance name contains the reserved segment {0:?}")]
    ReservedInstanceSegment(String),
    #[error("the upload uuid is empty")]
    MissingUuid,
    #[error("missing compressor after `compressed-blobs/`")]
    MissingCompressor,
    #[error("compressor {0:?} is not supported; this server supports zstd")]
    UnsupportedCompressor(String),
    #[error("digest function {0:?} is not supported; this server speaks sha256 and blake3")]
    UnsupportedDigestFunction(String),
    #[error("missing hash")]
    MissingHash,
    #[error(transparent)]
    BadHash(#[from] DigestError),
    #[error(transparent)]
    ImpossibleDigest(ReapiDigestError),
    #[error("missing size")]
    MissingSize,
    #[error("size {0:?} is not a non-negative 64-bit integer")]
    BadSize(String),
    #[error("unexpected {0:?} after the size")]
    Trailing(String),
}

/// A resource name that cannot be parsed, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ResourceError {
    pub name: String,
    pub problem: Problem,
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid resource name {}: {}",
            quote(&self.name),
            self.problem
        )
    }
}

/// Longest part of one segment kept in a [`Problem`]: the whole name is
/// quoted next to it already (shortened), so the segment only needs to be
/// recognisable, and a client's megabyte-long segment must not come back
/// as a megabyte-long `grpc-message`.
const MAX_SEGMENT: usize = 64;

/// `segment`, cut to [`MAX_SEGMENT`] bytes (on a character boundary) with
/// `...` marking the cut.
fn clip(segment: &str) -> String {
    if segment.len() <= MAX_SEGMENT {
        return segment.to_string();
    }
    let mut end = MAX_SEGMENT;
    while !segment.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &segment[..end])
}

/// `name` in double quotes (escaped), shortened to [`MAX_QUOTED`] bytes.
pub fn quote(name: &str) -> String {
    if name.len() <= MAX_QUOTED {
        return format!("{name:?}");
    }
    let mut end = MAX_QUOTED;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &name[..end], name.len())
}

/// Parses a `ReadRequest.resource_name`.
pub fn parse_read(name: &str) -> Result<ReadResource<'_>, ResourceError> {
    let fail = |problem| ResourceError {
        name: name.to_string(),
        problem,
    };
    let segments: Vec<&str> = name.split('/').collect();
    let at = segments
        .iter()
        .position(|s| *s == "blobs" || *s == "compressed-blobs")
        .ok_or_else(|| fail(Problem::NotARead))?;
    let instance = instance(name, &segments[..at]).map_err(fail)?;
    let (encoding, rest) = blob_part(&segments[at..]).map_err(fail)?;
    let (digest, trailing) = digest_part(rest).map_err(fail)?;
    if !trailing.is_empty() {
        return Err(fail(Problem::Trailing(clip(&trailing.join("/")))));
    }
    Ok(ReadResource {
        instance,
        encoding,
        digest,
    })
}

/// Parses a `WriteRequest.resource_name`.
pub fn parse_write(name: &str) -> Result<WriteResource<'_>, ResourceError> {
    let fail = |problem| ResourceError {
        name: name.to_string(),
        problem,
    };
    let segments: Vec<&str> = name.split('/').collect();
    let at = segments
        .iter()
        .position(|s| *s == "uploads")
        .ok_or_else(|| fail(Problem::NotAnUpload))?;
    let instance = instance(name, &segments[..at]).map_err(fail)?;
    let uuid = match segments.get(at + 1) {
        Some(&"") => return Err(fail(Problem::MissingUuid)),
        Some(uuid) if !KEYWORDS.contains(uuid) => *uuid,
        _ => return Err(fail(Problem::NotAnUpload)),
    };
    let blob = &segments[at + 2..];
    if !matches!(blob.first(), Some(&"blobs" | &"compressed-blobs")) {
        return Err(fail(Problem::NotAnUpload));
    }
    let (encoding, rest) = blob_part(blob).map_err(fail)?;
    let (digest, trailing) = digest_part(rest).map_err(fail)?;
    // Everything after the size is metadata: a suffix of `name`.
    let metadata_len = trailing.iter().map(|s| s.len() + 1).sum::<usize>();
    let metadata = match metadata_len {
        0 => "",
        n => &name[name.len() + 1 - n..],
    };
    Ok(WriteResource {
        instance,
        uuid,
        encoding,
        digest,
        metadata,
    })
}

/// The instance name: the segments before the keyword, as a prefix of `name`.
fn instance<'a>(name: &'a str, segments: &[&str]) -> Result<&'a str, Problem> {
    if let Some(reserved) = segments.iter().find(|s| KEYWORDS.contains(s)) {
        return Err(Problem::ReservedInstanceSegment(clip(reserved)));
    }
    let len = segments.iter().map(|s| s.len() + 1).sum::<usize>();
    Ok(&name[..len.saturating_sub(1)])
}

/// `blobs/...` or `compressed-blobs/{compressor}/...`: the encoding and the
/// segments after it.
fn blob_part<'s, 'a>(segments: &'s [&'a str]) -> Result<(Encoding, &'s [&'a str]), Problem> {
    match segments {
        ["blobs", rest @ ..] => Ok((Encoding::Identity, rest)),
        ["compressed-blobs", "zstd", rest @ ..] => Ok((Encoding::Zstd, rest)),
        ["compressed-blobs"] | ["compressed-blobs", ""] => Err(Problem::MissingCompressor),
        ["compressed-blobs", other, ..] => Err(Problem::UnsupportedCompressor(clip(other))),
        _ => Err(Problem::NotARead),
    }
}

/// `{digest_function/}{hash}/{size}`, and the segments after the size.
fn digest_part<'s, 'a>(segments: &'s [&'a str]) -> Result<(Digest, &'s [&'a str]), Problem> {
    let mut rest = segments;
    let mut function = DigestFunction::Sha256;
    if let Some(first) = rest.first()
        && let Some(named) = digest_function_name(first)
    {
        function = match named {
            digest_function::Value::Sha256 => DigestFunction::Sha256,
            digest_function::Value::Blake3 => DigestFunction::Blake3,
            _ => return Err(Problem::UnsupportedDigestFunction(first.to_string())),
        };
        rest = &rest[1..];
    }
    let hash = match rest.first() {
        None | Some(&"") => return Err(Problem::MissingHash),
        Some(hex) => Hash::from_hex(function, hex)?,
    };
    let size = match rest.get(1) {
        None | Some(&"") => return Err(Problem::MissingSize),
        Some(s) => parse_size(s).ok_or_else(|| Problem::BadSize(clip(s)))?,
    };
    let digest = Digest::checked(hash, size).map_err(Problem::ImpossibleDigest)?;
    Ok((digest, &rest[2..]))
}

/// The digest function a segment names (`sha256`, `blake3`, ...), if it names one.
fn digest_function_name(segment: &str) -> Option<digest_function::Value> {
    if segment.is_empty() || segment.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    digest_function::Value::from_str_name(&segment.to_ascii_uppercase())
}

/// A REAPI size: decimal digits only (no sign), at most `i64::MAX`.
fn parse_size(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok().map(|n| n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    /// Not the empty blob's hash: impossible with size 0.
    const OTHER: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    const SHA256: DigestFunction = DigestFunction::Sha256;
    const BLAKE3: DigestFunction = DigestFunction::Blake3;

    fn digest(size: u64) -> Digest {
        Digest {
            hash: Hash::from_hex(SHA256, HEX).unwrap(),
            size,
        }
    }

    fn read_problem(name: &str) -> Problem {
        parse_read(name).expect_err(name).problem
    }

    fn write_problem(name: &str) -> Problem {
        parse_write(name).expect_err(name).problem
    }

    #[test]
    fn read_names() {
        let cases: &[(String, &str, Encoding, u64)] = &[
            (format!("blobs/{HEX}/0"), "", Encoding::Identity, 0),
            (
                format!("main/blobs/{HEX}/42"),
                "main",
                Encoding::Identity,
                42,
            ),
            (
                format!("a/b/c/blobs/{HEX}/7"),
                "a/b/c",
                Encoding::Identity,
                7,
            ),
            (format!("blobs/sha256/{HEX}/7"), "", Encoding::Identity, 7),
            (
                format!("compressed-blobs/zstd/{HEX}/9"),
                "",
                Encoding::Zstd,
                9,
            ),
            (
                format!("x/compressed-blobs/zstd/sha256/{HEX}/9"),
                "x",
                Encoding::Zstd,
                9,
            ),
            (
                format!("blobs/{HEX}/{}", i64::MAX),
                "",
                Encoding::Identity,
                i64::MAX as u64,
            ),
        ];
        for (name, instance, encoding, size) in cases {
            let r = parse_read(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.instance, *instance, "{name}");
            assert_eq!(r.encoding, *encoding, "{name}");
            assert_eq!(r.digest, digest(*size), "{name}");
        }
    }

    #[test]
    fn blake3_names_carry_their_function() {
        let b3 = |size| Digest {
            hash: Hash::from_hex(BLAKE3, HEX).unwrap(),
            size,
        };
        let name0 = format!("main/blobs/blake3/{HEX}/7");
        let r = parse_read(&name0).unwrap();
        assert_eq!(
            (r.instance, r.encoding, r.digest),
            ("main", Encoding::Identity, b3(7))
        );
        assert_ne!(
            r.digest,
            digest(7),
            "the same hex under SHA-256 is another blob"
        );
        let name1 = format!("compressed-blobs/zstd/blake3/{HEX}/9");
        let r = parse_read(&name1).unwrap();
        assert_eq!((r.encoding, r.digest), (Encoding::Zstd, b3(9)));
        let name2 = format!("uploads/u/blobs/blake3/{HEX}/5/m");
        let w = parse_write(&name2).unwrap();
        assert_eq!((w.digest, w.metadata), (b3(5), "m"));
        let name3 = format!("i/uploads/u/compressed-blobs/zstd/blake3/{HEX}/5");
        let w = parse_write(&name3).unwrap();
        assert_eq!(
            (w.instance, w.encoding, w.digest),
            ("i", Encoding::Zstd, b3(5))
        );
        // Size 0 names only BLAKE3's own empty blob.
        let empty = bazel_cache_digest::EMPTY_BLAKE3.to_hex();
        assert!(parse_read(&format!("blobs/blake3/{empty}/0")).is_ok());
        assert!(matches!(
            read_problem(&format!("blobs/blake3/{HEX}/0")),
            Problem::ImpossibleDigest(_)
        ));
        // The name says BLAKE3 only with the segment; spelled in capitals it
        // is not a function name but a (bad) hash.
        assert!(matches!(
            read_problem(&format!("blobs/BLAKE3/{HEX}/5")),
            Problem::BadHash(_)
        ));
    }

    #[test]
    fn bad_read_names() {
        let upper = HEX.to_uppercase();
        let short = &HEX[..63];
        let cases: Vec<(String, Problem)> = vec![
            (String::new(), Problem::NotARead),
            ("garbage".into(), Problem::NotARead),
            (format!("{HEX}/5"), Problem::NotARead),
            (format!("blobs/{HEX}"), Problem::MissingSize),
            (format!("blobs/{HEX}/"), Problem::MissingSize),
            ("blobs".into(), Problem::MissingHash),
            ("blobs//5".into(), Problem::MissingHash),
            (
                format!("blobs/{upper}/5"),
                Problem::BadHash(DigestError::NotHex('E')),
            ),
            (
                format!("blobs/{short}/5"),
                Problem::BadHash(DigestError::WrongLength(63)),
            ),
            (
                format!("blobs/{OTHER}/0"),
                Problem::ImpossibleDigest(ReapiDigestError::EmptyWithOtherHash(
                    Hash::from_hex(SHA256, OTHER).unwrap(),
                )),
            ),
            (format!("blobs/{HEX}/-1"), Problem::BadSize("-1".into())),
            (format!("blobs/{HEX}/+1"), Problem::BadSize("+1".into())),
            (format!("blobs/{HEX}/1x"), Problem::BadSize("1x".into())),
            (
                format!("blobs/{HEX}/9223372036854775808"),
                Problem::BadSize("9223372036854775808".into()),
            ),
            (
                format!("blobs/{HEX}/5/extra"),
                Problem::Trailing("extra".into()),
            ),
            (format!("blobs/{HEX}/5/"), Problem::Trailing("".into())),
            (
                format!("blobs/sha1/{HEX}/5"),
                Problem::UnsupportedDigestFunction("sha1".into()),
            ),
            (
                format!("compressed-blobs/gzip/{HEX}/5"),
                Problem::UnsupportedCompressor("gzip".into()),
            ),
            (
                format!("compressed-blobs/identity/{HEX}/5"),
                Problem::UnsupportedCompressor("identity".into()),
            ),
            ("compressed-blobs".into(), Problem::MissingCompressor),
            (
                format!("uploads/u/blobs/{HEX}/5"),
                Problem::ReservedInstanceSegment("uploads".into()),
            ),
        ];
        for (name, problem) in cases {
            assert_eq!(read_problem(&name), problem, "{name}");
        }
    }

    #[test]
    fn write_names() {
        let name = format!("uploads/1234/blobs/{HEX}/5");
        let w = parse_write(&name).unwrap();
        assert_eq!(
            w,
            WriteResource {
                instance: "",
                uuid: "1234",
                encoding: Encoding::Identity,
                digest: digest(5),
                metadata: "",
            }
        );
        let name = format!("a/b/uploads/u-1/compressed-blobs/zstd/sha256/{HEX}/5/meta/data");
        let w = parse_write(&name).unwrap();
        assert_eq!(
            w,
            WriteResource {
                instance: "a/b",
                uuid: "u-1",
                encoding: Encoding::Zstd,
                digest: digest(5),
                metadata: "meta/data",
            }
        );
        let name = format!("i/uploads/u/blobs/{HEX}/5/m");
        let w = parse_write(&name).unwrap();
        assert_eq!((w.instance, w.metadata), ("i", "m"));
    }

    #[test]
    fn bad_write_names() {
        let cases: Vec<(String, Problem)> = vec![
            (String::new(), Problem::NotAnUpload),
            (format!("blobs/{HEX}/5"), Problem::NotAnUpload),
            ("uploads".into(), Problem::NotAnUpload),
            (format!("uploads//blobs/{HEX}/5"), Problem::MissingUuid),
            (format!("uploads/blobs/{HEX}/5"), Problem::NotAnUpload),
            (format!("uploads/u/{HEX}/5"), Problem::NotAnUpload),
            (format!("uploads/u/blobs/{HEX}"), Problem::MissingSize),
            (
                format!("uploads/u/blobs/{HEX}/x"),
                Problem::BadSize("x".into()),
            ),
            (
                format!("uploads/u/blobs/md5/{HEX}/5"),
                Problem::UnsupportedDigestFunction("md5".into()),
            ),
            (
                format!("uploads/u/compressed-blobs/gzip/{HEX}/5"),
                Problem::UnsupportedCompressor("gzip".into()),
            ),
            (
                format!("uploads/u/compressed-blobs/zstd/{OTHER}/0"),
                Problem::ImpossibleDigest(ReapiDigestError::EmptyWithOtherHash(
                    Hash::from_hex(SHA256, OTHER).unwrap(),
                )),
            ),
            (
                "uploads/u/blobs/abc/5".into(),
                Problem::BadHash(DigestError::WrongLength(3)),
            ),
            (
                format!("blobs/uploads/u/blobs/{HEX}/5"),
                Problem::ReservedInstanceSegment("blobs".into()),
            ),
        ];
        for (name, problem) in cases {
            assert_eq!(write_problem(&name), problem, "{name}");
        }
    }

    #[test]
    fn error_messages_quote_the_name() {
        let e = parse_read("blobs/abc/5").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("\"blobs/abc/5\""), "{msg}");
        assert!(msg.contains("64 lowercase hex"), "{msg}");
        let e = parse_read(&format!("blobs/sha384/{HEX}/1")).unwrap_err();
        assert!(e.to_string().contains("sha384"), "{e}");

        let long = "é".repeat(1000);
        let msg = parse_read(&long).unwrap_err().to_string();
        assert!(msg.len() < 1000, "{msg}");
        assert!(msg.contains("(2000 bytes)"), "{msg}");

        // The offending segment is shortened too (found by fuzz/bytestream_resource).
        let trailing = format!("blobs/{HEX}/1/{}", "x".repeat(1 << 20));
        let msg = parse_read(&trailing).unwrap_err().to_string();
        assert!(msg.len() < 1000, "{} bytes", msg.len());
        assert!(msg.contains("xxx...\""), "{msg}");
    }
}
