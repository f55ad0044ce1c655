//! Verifying a zstd read: the stream is decompressed as it arrives and what
//! it decodes to is hashed, so a compressed read is checked exactly as an
//! uncompressed one is (length and hash of the blob, with the digest
//! function the blob is named by), with memory bounded by the decoder's
//! window rather than the blob.

use zstd::stream::raw::{Decoder, InBuffer, Operation as _, OutBuffer};

use bazel_cache_digest::{DigestFunction, Hasher};

/// Decoded bytes are hashed from a buffer of this size.
const OUT: usize = 128 << 10;

pub(crate) struct ZstdHasher {
    decoder: Decoder<'static>,
    out: Vec<u8>,
    hasher: Hasher,
    /// Whether the last frame fed so far is complete.
    frame_done: bool,
}

impl ZstdHasher {
    /// Hashes what the stream decodes to with `function`.
    pub(crate) fn new(function: DigestFunction) -> Result<ZstdHasher, String> {
        Ok(ZstdHasher {
            decoder: Decoder::new().map_err(|e| format!("zstd decoder: {e}"))?,
            out: vec![0; OUT],
            hasher: Hasher::new(function),
            frame_done: true,
        })
    }

    /// Decodes `data`, the next bytes of the stream (any number of frames).
    pub(crate) fn update(&mut self, data: &[u8]) -> Result<(), String> {
        let mut input = InBuffer::around(data);
        loop {
            let mut output = OutBuffer::around(&mut self.out[..]);
            let hint = self
                .decoder
                .run(&mut input, &mut output)
                .map_err(|e| format!("not a valid zstd stream: {e}"))?;
            let produced = output.pos();
            self.hasher.update(&self.out[..produced]);
            self.frame_done = hint == 0;
            // Done with this input once it is consumed and the decoder has
            // nothing buffered: it filled less than the whole output, or
            // ended a frame (called again, it would start the next one).
            if input.pos() == data.len() && (produced < self.out.len() || hint == 0) {
                return Ok(());
            }
        }
    }

    /// What the stream decoded to, if it ended on a frame boundary.
    pub(crate) fn finish(self) -> Result<Hasher, String> {
        if !self.frame_done {
            return Err("the zstd stream ends inside a frame".to_owned());
        }
        Ok(self.hasher)
    }
}

/// What a read is checked with: the bytes as they come, or decoded from
/// zstd first.
pub(crate) enum Verifier {
    Identity(Hasher),
    Zstd(Box<ZstdHasher>),
}

impl Verifier {
    /// Checks with `function`, the one the blob read is named by.
    pub(crate) fn new(zstd: bool, function: DigestFunction) -> Result<Verifier, String> {
        Ok(if zstd {
            Verifier::Zstd(Box::new(ZstdHasher::new(function)?))
        } else {
            Verifier::Identity(Hasher::new(function))
        })
    }

    pub(crate) fn update(&mut self, data: &[u8]) -> Result<(), String> {
        match self {
            Verifier::Identity(h) => {
                h.update(data);
                Ok(())
            }
            Verifier::Zstd(z) => z.update(data),
        }
    }

    /// The hash state of the (decoded) bytes.
    pub(crate) fn finish(self) -> Result<Hasher, String> {
        match self {
            Verifier::Identity(h) => Ok(h),
            Verifier::Zstd(z) => z.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazel_cache_digest::Hash;

    #[test]
    fn decodes_concatenated_frames_fed_in_any_pieces() {
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let b = b"and a second frame".to_vec();
        let mut stream = zstd::encode_all(&a[..], 3).unwrap();
        stream.extend(zstd::encode_all(&b[..], 1).unwrap());
        let whole = [a, b].concat();
        for function in DigestFunction::ALL {
            for piece in [1, 7, 4096, stream.len()] {
                let mut h = ZstdHasher::new(function).unwrap();
                for chunk in stream.chunks(piece) {
                    h.update(chunk).unwrap();
                }
                let hasher = h.finish().unwrap();
                assert_eq!(hasher.len(), whole.len() as u64);
                assert_eq!(hasher.finish(), Hash::of_with(function, &whole));
            }
        }
        // A frame that ends exactly as the output buffer fills, fed whole.
        let exact: Vec<u8> = (0..2 * OUT).map(|i| (i % 13) as u8).collect();
        let mut h = ZstdHasher::new(DigestFunction::Sha256).unwrap();
        h.update(&zstd::encode_all(&exact[..], 3).unwrap()).unwrap();
        assert_eq!(h.finish().unwrap().len(), exact.len() as u64);
        let mut cut = ZstdHasher::new(DigestFunction::Sha256).unwrap();
        cut.update(&stream[..stream.len() / 2]).unwrap();
        assert!(cut.finish().is_err());
        let mut bad = ZstdHasher::new(DigestFunction::Sha256).unwrap();
        assert!(bad.update(b"not zstd at all").is_err());
    }

    #[test]
    fn a_read_checked_with_the_other_function_does_not_match() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 241) as u8).collect();
        let stream = zstd::encode_all(&data[..], 3).unwrap();
        for zstd in [false, true] {
            let body = if zstd { &stream } else { &data };
            let hash = |function| {
                let mut v = Verifier::new(zstd, function).unwrap();
                v.update(body).unwrap();
                v.finish().unwrap().finish()
            };
            let (sha, blake3) = (DigestFunction::Sha256, DigestFunction::Blake3);
            assert_eq!(hash(blake3), Hash::of_with(blake3, &data));
            assert_eq!(hash(sha), Hash::of(&data));
            // Same bytes, but a BLAKE3 name is never met by a SHA-256 read
            // (nor the other way round): the hash carries its function.
            assert_ne!(hash(sha), Hash::of_with(blake3, &data));
            assert_ne!(hash(blake3), Hash::of(&data));
        }
    }
}
