//! Verifying a zstd read: the stream is decompressed as it arrives and what
//! it decodes to is hashed, so a compressed read is checked exactly as an
//! uncompressed one is (length and SHA-256 of the blob), with memory bounded
//! by the decoder's window rather than the blob.

use zstd::stream::raw::{Decoder, InBuffer, Operation as _, OutBuffer};

use bazel_cache_digest::Hasher;

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
    pub(crate) fn new() -> Result<ZstdHasher, String> {
        Ok(ZstdHasher {
            decoder: Decoder::new().map_err(|e| format!("zstd decoder: {e}"))?,
            out: vec![0; OUT],
            hasher: Hasher::new(bazel_cache_digest::DigestFunction::Sha256),
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
    pub(crate) fn new(zstd: bool) -> Result<Verifier, String> {
        Ok(if zstd {
            Verifier::Zstd(Box::new(ZstdHasher::new()?))
        } else {
            Verifier::Identity(Hasher::new(bazel_cache_digest::DigestFunction::Sha256))
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

    #[test]
    fn decodes_concatenated_frames_fed_in_any_pieces() {
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let b = b"and a second frame".to_vec();
        let mut stream = zstd::encode_all(&a[..], 3).unwrap();
        stream.extend(zstd::encode_all(&b[..], 1).unwrap());
        let whole = [a, b].concat();
        for piece in [1, 7, 4096, stream.len()] {
            let mut h = ZstdHasher::new().unwrap();
            for chunk in stream.chunks(piece) {
                h.update(chunk).unwrap();
            }
            let hasher = h.finish().unwrap();
            assert_eq!(hasher.len(), whole.len() as u64);
            assert_eq!(hasher.finish(), bazel_cache_digest::Hash::of(&whole));
        }
        // A frame that ends exactly as the output buffer fills, fed whole.
        let exact: Vec<u8> = (0..2 * OUT).map(|i| (i % 13) as u8).collect();
        let mut h = ZstdHasher::new().unwrap();
        h.update(&zstd::encode_all(&exact[..], 3).unwrap()).unwrap();
        assert_eq!(h.finish().unwrap().len(), exact.len() as u64);
        let mut cut = ZstdHasher::new().unwrap();
        cut.update(&stream[..stream.len() / 2]).unwrap();
        assert!(cut.finish().is_err());
        let mut bad = ZstdHasher::new().unwrap();
        assert!(bad.update(b"not zstd at all").is_err());
    }
}
