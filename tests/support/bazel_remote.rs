//! A `dir` laid out exactly as bazel-remote 2.x leaves it, for the
//! adoption tests: the trees and the 256 shard directories its start
//! creates (`cache/disk/load.go`), file names as `FileLocation` makes them
//! (`cache/disk/disk.go`: `cas.v2/<2>/<hash>-<size>-<random>` casblobs,
//! `cas.v2/<2>/<hash>-<random>.v1` plain blobs, `ac.v2`/`raw.v2`
//! `<2>/<hash>-<random>`, random being nine digits from its LCG), and the
//! casblob container as `cache/disk/casblob/casblob.go` writes it. Written
//! from that source, independently of the server's own casblob code, so
//! a misreading of the format is not shared by both sides of the test.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

use super::{digest, hex};

/// casblob.go `defaultChunkSize`.
const CHUNK_SIZE: usize = 1024 * 1024;
/// casblob.go `skippableFrameMagicNumber`.
const MAGIC: u32 = 0x184D_2A50;
/// casblob.go `chunkTableOffset`: magic, frame size, uncompressed size,
/// compression, chunk size, number of offsets.
const CHUNK_TABLE_OFFSET: usize = 4 + 4 + 8 + 1 + 4 + 8;

/// A bazel-remote cache directory under construction.
pub(crate) struct BazelRemoteDir {
    pub(crate) root: PathBuf,
    /// tempfile.go's `ranqd1` state: the "random" part of each name.
    idum: u32,
}

impl BazelRemoteDir {
    /// The trees with every shard directory, as bazel-remote's `New` makes
    /// them before it loads anything.
    pub(crate) fn create(root: &Path) -> BazelRemoteDir {
        for tree in ["ac.v2", "cas.v2", "raw.v2"] {
            for b in 0..=255u8 {
                std::fs::create_dir_all(root.join(tree).join(format!("{b:02x}"))).unwrap();
            }
        }
        BazelRemoteDir {
            root: root.to_path_buf(),
            idum: 12345,
        }
    }

    /// Nine digits, as tempfile.go's `ranqd1` makes them.
    fn random(&mut self) -> String {
        self.idum = self
            .idum
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        format!("{:09}", self.idum % 1_000_000_000)
    }

    fn write(&self, rel: &str, bytes: &[u8], last_use: SystemTime) -> PathBuf {
        let path = self.root.join(rel);
        std::fs::write(&path, bytes).unwrap();
        let times = std::fs::FileTimes::new()
            .set_accessed(last_use)
            .set_modified(last_use);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_times(times)
            .unwrap();
        path
    }

    /// A CAS blob as bazel-remote stores it in `zstd` storage mode.
    pub(crate) fn casblob(&mut self, data: &[u8], last_use: SystemTime) -> PathBuf {
        let h = hex(data);
        let rel = format!("cas.v2/{}/{h}-{}-{}", &h[..2], data.len(), self.random());
        self.write(&rel, &casblob(data), last_use)
    }

    /// A CAS blob as bazel-remote stores it in `uncompressed` mode.
    pub(crate) fn plain(&mut self, data: &[u8], last_use: SystemTime) -> PathBuf {
        let h = hex(data);
        let rel = format!("cas.v2/{}/{h}-{}.v1", &h[..2], self.random());
        self.write(&rel, data, last_use)
    }

    /// An action-cache entry (`tree` "ac.v2", or "raw.v2" for what HTTP
    /// clients stored with validation off) under `key` (64 hex digits).
    pub(crate) fn ac(
        &mut self,
        tree: &str,
        key: &str,
        body: &[u8],
        last_use: SystemTime,
    ) -> PathBuf {
        let rel = format!("{tree}/{}/{key}-{}", &key[..2], self.random());
        self.write(&rel, body, last_use)
    }

    /// Any file, under a path relative to the root.
    pub(crate) fn other(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        self.write(rel, bytes, SystemTime::now())
    }
}

/// An ActionResult with one output file, `blob`, and exit code 0.
pub(crate) fn action_result(blob: &[u8]) -> Vec<u8> {
    re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "out/blob".into(),
            digest: Some(digest(blob)),
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    }
    .encode_to_vec()
}

/// `t` seconds after a fixed day, for ordering files by last use.
pub(crate) fn day_plus(t: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + t)
}

/// casblob.go's container with zstd chunks: the header (a zstd skippable
/// frame: magic, frame size, uncompressed size, compression 1, chunk
/// size, the number of offsets, then each chunk's offset and the file
/// length, all little-endian), then each 1 MiB chunk as its own zstd frame.
pub(crate) fn casblob(data: &[u8]) -> Vec<u8> {
    let chunks: Vec<Vec<u8>> = data
        .chunks(CHUNK_SIZE)
        .map(|chunk| {
            let mut c = zstd::bulk::Compressor::new(1).unwrap();
            c.include_checksum(true).unwrap();
            c.compress(chunk).unwrap()
        })
        .collect();
    let offsets = chunks.len() + 1;
    let header_len = CHUNK_TABLE_OFFSET + 8 * offsets;
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&((header_len - 8) as u32).to_le_bytes());
    out.extend_from_slice(&(data.len() as i64).to_le_bytes());
    out.push(1);
    out.extend_from_slice(&(CHUNK_SIZE as u32).to_le_bytes());
    out.extend_from_slice(&(offsets as i64).to_le_bytes());
    let mut at = header_len as i64;
    for chunk in &chunks {
        out.extend_from_slice(&at.to_le_bytes());
        at += chunk.len() as i64;
    }
    out.extend_from_slice(&at.to_le_bytes());
    for chunk in &chunks {
        out.extend_from_slice(chunk);
    }
    assert_eq!(out.len() as i64, at);
    out
}
