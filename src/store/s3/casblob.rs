//! bazel-remote's "casblob" format: how a bazel-remote in `zstd` storage mode
//! stores a CAS blob on disk, and (byte for byte, see `s3proxy.go`) in S3
//! under `<prefix>/cas.v2/<2 hex>/<hash>`.
//!
//! ```text
//! offset  size   field (all little-endian)
//! 0       4      magic 0x184D2A50: a zstd skippable frame
//! 4       4      frame size: bytes after these 8, = 21 + 8 * number of offsets
//! 8       8      uncompressed size (i64)
//! 16      1      compression: 0 identity, 1 zstd
//! 17      4      chunk size (u32), 1 MiB as bazel-remote writes it
//! 21      8      number of offsets (i64) = number of chunks + 1
//! 29      8 * n  offsets (i64) of each chunk in the file, then the file size
//! 29+8n   ...    the chunks: each an independent zstd frame of chunk-size
//!                uncompressed bytes (the last one shorter)
//! ```
//! The header is a skippable frame, so with compression 1 the whole file is a
//! standard zstd stream of the blob. bazel-remote never stores empty blobs
//! (the empty digest is answered without storage) and, in every release,
//! writes compression 1 only; identity is decoded for completeness.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};
use zstd::stream::raw::{Decoder as RawDecoder, InBuffer, Operation, OutBuffer};

use crate::store::BlobReader;

/// The zstd skippable-frame magic number bazel-remote writes (exactly this
/// one of the 16 skippable magics; it accepts no other).
pub const MAGIC: u32 = 0x184D_2A50;
/// bazel-remote's chunk size (`defaultChunkSize`).
pub const DEFAULT_CHUNK_SIZE: u32 = 1024 * 1024;
/// Where the offsets start: magic, frame size, uncompressed size,
/// compression, chunk size and number of offsets (`chunkTableOffset`).
pub const CHUNK_TABLE_OFFSET: u64 = 4 + 4 + 8 + 1 + 4 + 8;
/// Bytes of the skippable frame's payload besides the offsets: uncompressed
/// size, compression, chunk size, number of offsets.
const FIXED_METADATA: u64 = 8 + 1 + 4 + 8;
/// bazel-remote's zstd level (both its Go and cgo encoders use the fastest).
const ZSTD_LEVEL: i32 = 1;
/// Most chunks a header may declare: a 128 MiB offset table, 16 TiB in
/// bazel-remote's 1 MiB chunks.
pub const MAX_CHUNKS: u64 = 1 << 24;
/// Read buffer of the decoder.
const INPUT_BUFFER: usize = 64 * 1024;

/// How the chunks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    /// The blob's bytes follow the header as they are (one "chunk").
    Identity = 0,
    /// Independently compressed zstd frames of `chunk_size` bytes each.
    Zstd = 1,
}

/// A validated casblob header, as [`parse_header`] returns it (the methods
/// assume its invariants: at least two offsets, counted as the size implies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub uncompressed_size: u64,
    pub compression: Compression,
    pub chunk_size: u32,
    /// Where each chunk starts in the file, then the file's length; strictly
    /// increasing, the first one being the header length.
    pub chunk_offsets: Vec<u64>,
}

/// Where a read from an uncompressed offset starts in a casblob file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeekPoint {
    /// The chunk holding the offset.
    pub chunk: usize,
    /// Where to start reading the file.
    pub file_offset: u64,
    /// Uncompressed bytes to drop from what decodes from there.
    pub skip: u64,
}

impl Header {
    /// Length of the header itself (the skippable frame).
    pub fn header_len(&self) -> u64 {
        header_len(self.chunk_offsets.len() as u64)
    }

    pub fn num_chunks(&self) -> usize {
        self.chunk_offsets.len() - 1
    }

    /// The length of the whole file, as the header records it.
    pub fn file_len(&self) -> u64 {
        self.chunk_offsets[self.chunk_offsets.len() - 1]
    }

    /// How many uncompressed bytes chunk `i` holds.
    pub fn chunk_len(&self, i: usize) -> u64 {
        match self.compression {
            Compression::Identity => self.uncompressed_size,
            Compression::Zstd => {
                let start = i as u64 * u64::from(self.chunk_size);
                self.uncompressed_size
                    .saturating_sub(start)
                    .min(u64::from(self.chunk_size))
            }
        }
    }

    /// Where bazel-remote starts a read at uncompressed `offset`: for zstd the
    /// chunk `offset / chunk_size`, decoded, less its first
    /// `offset % chunk_size` bytes; for identity the header length plus
    /// `offset`. `None` when `offset` is not below the blob's size.
    pub fn locate(&self, offset: u64) -> Option<SeekPoint> {
        if offset >= self.uncompressed_size {
            return None;
        }
        Some(match self.compression {
            Compression::Identity => SeekPoint {
                chunk: 0,
                file_offset: self.chunk_offsets[0] + offset,
                skip: 0,
            },
            Compression::Zstd => {
                let chunk = (offset / u64::from(self.chunk_size)) as usize;
                SeekPoint {
                    chunk,
                    file_offset: self.chunk_offsets[chunk],
                    skip: offset % u64::from(self.chunk_size),
                }
            }
        })
    }

    /// The header's bytes, as bazel-remote's `header.write` lays them out.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.chunk_offsets.len() as u64;
        let mut b = Vec::with_capacity(header_len(n) as usize);
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&(frame_size(n) as u32).to_le_bytes());
        b.extend_from_slice(&(self.uncompressed_size as i64).to_le_bytes());
        b.push(self.compression as u8);
        b.extend_from_slice(&self.chunk_size.to_le_bytes());
        b.extend_from_slice(&(n as i64).to_le_bytes());
        for &o in &self.chunk_offsets {
            b.extend_from_slice(&(o as i64).to_le_bytes());
        }
        b
    }
}

/// Header length for `n` offsets.
fn header_len(n: u64) -> u64 {
    CHUNK_TABLE_OFFSET + 8 * n
}

/// The skippable frame's declared size for `n` offsets (`frameSize()`).
fn frame_size(n: u64) -> u64 {
    FIXED_METADATA + 8 * n
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("casblob: {}", msg.into()),
    )
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn le_i64(b: &[u8]) -> i64 {
    i64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// The fields before the offsets, validated.
#[derive(Debug, Clone, Copy)]
struct Fixed {
    uncompressed_size: u64,
    compression: Compression,
    chunk_size: u32,
    num_offsets: u64,
}

impl Fixed {
    fn header_len(&self) -> u64 {
        header_len(self.num_offsets)
    }
}

/// Validates the first `CHUNK_TABLE_OFFSET` bytes of a header.
fn parse_fixed(b: &[u8]) -> io::Result<Fixed> {
    if b.len() < CHUNK_TABLE_OFFSET as usize {
        return Err(invalid(format!(
            "truncated header: {} bytes, the fixed part alone is {CHUNK_TABLE_OFFSET}",
            b.len()
        )));
    }
    let magic = le_u32(&b[0..]);
    if magic != MAGIC {
        return Err(invalid(format!(
            "magic number {magic:#010x}, expected {MAGIC:#010x}"
        )));
    }
    let frame = le_u32(&b[4..]);
    let size = le_i64(&b[8..]);
    let uncompressed_size =
        u64::try_from(size).map_err(|_| invalid(format!("negative uncompressed size {size}")))?;
    let compression = match b[16] {
        0 => Compression::Identity,
        1 => Compression::Zstd,
        t => return Err(invalid(format!("unknown compression type {t}"))),
    };
    let chunk_size = le_u32(&b[17..]);
    if chunk_size == 0 {
        return Err(invalid("chunk size 0"));
    }
    // What the size implies; bazel-remote writes exactly this many chunks
    // (one for identity), and its offset reads depend on it.
    let chunks = match compression {
        Compression::Identity => 1,
        Compression::Zstd => uncompressed_size.div_ceil(u64::from(chunk_size)).max(1),
    };
    if chunks > MAX_CHUNKS {
        return Err(invalid(format!(
            "{uncompressed_size} bytes in {chunk_size}-byte chunks makes {chunks} chunks, \
             more than the {MAX_CHUNKS} supported"
        )));
    }
    let num_offsets = le_i64(&b[21..]);
    if u64::try_from(num_offsets) != Ok(chunks + 1) {
        return Err(invalid(format!(
            "{num_offsets} chunk offsets, but {uncompressed_size} bytes in {chunk_size}-byte \
             chunks makes {chunks} chunks ({} offsets)",
            chunks + 1
        )));
    }
    let num_offsets = chunks + 1;
    if u64::from(frame) != frame_size(num_offsets) {
        return Err(invalid(format!(
            "frame size {frame}, but {num_offsets} offsets make {}",
            frame_size(num_offsets)
        )));
    }
    Ok(Fixed {
        uncompressed_size,
        compression,
        chunk_size,
        num_offsets,
    })
}

/// Reads and validates the offsets (`table` holds exactly them).
fn parse_table(fixed: Fixed, table: &[u8]) -> io::Result<Header> {
    debug_assert_eq!(table.len() as u64, 8 * fixed.num_offsets);
    let mut offsets = Vec::with_capacity(fixed.num_offsets as usize);
    for (i, raw) in table.chunks_exact(8).enumerate() {
        let o = le_i64(raw);
        let o = u64::try_from(o).map_err(|_| invalid(format!("offset {i} is negative ({o})")))?;
        if let Some(&prev) = offsets.last()
            && o <= prev
        {
            return Err(invalid(format!(
                "offset {i} ({o}) does not increase on {prev}"
            )));
        }
        offsets.push(o);
    }
    if offsets[0] != fixed.header_len() {
        return Err(invalid(format!(
            "the first chunk starts at {}, the header ends at {}",
            offsets[0],
            fixed.header_len()
        )));
    }
    let last = offsets[offsets.len() - 1];
    if fixed.compression == Compression::Identity
        && Some(last) != fixed.header_len().checked_add(fixed.uncompressed_size)
    {
        return Err(invalid(format!(
            "identity blob of {} bytes, but the file ends at {last}",
            fixed.uncompressed_size
        )));
    }
    Ok(Header {
        uncompressed_size: fixed.uncompressed_size,
        compression: fixed.compression,
        chunk_size: fixed.chunk_size,
        chunk_offsets: offsets,
    })
}

/// The header at the start of `prefix`, which must hold all of it (see
/// [`header_len_of`]); InvalidData when it is not a valid
/// casblob header or is cut short. The end of the file is not checked: that
/// needs the whole file.
pub fn parse_header(prefix: &[u8]) -> io::Result<Header> {
    let fixed = parse_fixed(prefix)?;
    let len = fixed.header_len() as usize;
    if prefix.len() < len {
        return Err(invalid(format!(
            "truncated header: {} bytes of {len}",
            prefix.len()
        )));
    }
    parse_table(fixed, &prefix[CHUNK_TABLE_OFFSET as usize..len])
}

/// The length of the whole header, from its first [`CHUNK_TABLE_OFFSET`]
/// bytes (validated as in [`parse_header`]).
pub fn header_len_of(prefix: &[u8]) -> io::Result<u64> {
    parse_fixed(prefix).map(|f| f.header_len())
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes `size` uncompressed bytes read from `input` as a casblob file
/// (zstd chunks of [`DEFAULT_CHUNK_SIZE`], level 1 with checksums, as
/// bazel-remote writes them) to `out`, starting at its current position, and
/// returns the file's length. Like bazel-remote it writes the header with a
/// zeroed offset table, the chunks, then seeks back to fill the table; `out`
/// is left positioned at the end. InvalidData when `input` holds fewer or
/// more than `size` bytes. An empty blob (which bazel-remote never stores)
/// becomes one chunk holding an empty zstd frame.
pub fn encode(input: &mut dyn Read, size: u64, out: &mut File) -> io::Result<u64> {
    if size > i64::MAX as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("casblob: size {size} does not fit the format"),
        ));
    }
    let chunk_size = DEFAULT_CHUNK_SIZE;
    let chunks = size.div_ceil(u64::from(chunk_size)).max(1);
    if chunks > MAX_CHUNKS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("casblob: size {size} needs more than {MAX_CHUNKS} chunks"),
        ));
    }
    let mut header = Header {
        uncompressed_size: size,
        compression: Compression::Zstd,
        chunk_size,
        chunk_offsets: vec![0; chunks as usize + 1],
    };
    let start = out.stream_position()?;
    out.write_all(&header.to_bytes())?;

    let max_chunk = size.min(u64::from(chunk_size)) as usize;
    let mut raw = vec![0u8; max_chunk];
    let mut compressed = Vec::with_capacity(zstd::zstd_safe::compress_bound(max_chunk));
    let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    compressor.include_checksum(true)?;
    compressor.include_contentsize(true)?;

    let mut file_offset = header.header_len();
    let mut remaining = size;
    for i in 0..chunks as usize {
        let len = remaining.min(u64::from(chunk_size)) as usize;
        let got = read_full(input, &mut raw[..len])?;
        if got < len {
            return Err(invalid(format!(
                "expected {size} bytes, the input ended after {}",
                size - remaining + got as u64
            )));
        }
        compressed.clear();
        compressor.compress_to_buffer(&raw[..len], &mut compressed)?;
        out.write_all(&compressed)?;
        header.chunk_offsets[i] = file_offset;
        file_offset += compressed.len() as u64;
        remaining -= len as u64;
    }
    header.chunk_offsets[chunks as usize] = file_offset;

    let mut probe = [0u8; 1];
    if read_full(input, &mut probe)? != 0 {
        return Err(invalid(format!(
            "expected {size} bytes, the input holds more"
        )));
    }

    let table = &header.to_bytes()[CHUNK_TABLE_OFFSET as usize..];
    out.seek(SeekFrom::Start(start + CHUNK_TABLE_OFFSET))?;
    out.write_all(table)?;
    out.seek(SeekFrom::Start(start + file_offset))?;
    Ok(file_offset)
}

/// Decodes a casblob byte stream (as read from S3) into the blob's bytes,
/// streaming. The header is checked as bazel-remote's `readHeader` does and
/// more: the chunk count must be what the size implies, every chunk must
/// decode to exactly its share of the blob (so bazel-remote's offset reads
/// would work), and the stream must end at the final offset. Anything
/// malformed or truncated fails the read with InvalidData; errors of `input`
/// itself pass through.
pub fn decoder(input: BlobReader) -> BlobReader {
    Box::pin(Decoder {
        input: Input {
            reader: input,
            buf: vec![0; INPUT_BUFFER].into_boxed_slice(),
            pos: 0,
            end: 0,
            eof: false,
        },
        state: State::Header(Vec::new()),
    })
}

struct Input {
    reader: BlobReader,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    eof: bool,
}

impl Input {
    fn available(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// Makes bytes available unless the input has ended.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.end || self.eof {
            return Poll::Ready(Ok(()));
        }
        let mut rb = ReadBuf::new(&mut self.buf);
        ready!(self.reader.as_mut().poll_read(cx, &mut rb))?;
        self.pos = 0;
        self.end = rb.filled().len();
        self.eof = self.end == 0;
        Poll::Ready(Ok(()))
    }
}

enum State {
    /// Collecting the header's bytes.
    Header(Vec<u8>),
    Identity {
        remaining: u64,
    },
    Zstd(Box<Chunks>),
    /// All data decoded; the input must end here.
    Trailer,
    Done,
    Failed,
}

struct Chunks {
    header: Header,
    dec: RawDecoder<'static>,
    chunk: usize,
    /// Compressed bytes of the current chunk not yet fed to `dec`.
    comp_left: u64,
    /// Uncompressed bytes the current chunk must still yield.
    out_left: u64,
    /// `dec` is inside a frame (its last hint was not 0).
    in_frame: bool,
}

struct Decoder {
    input: Input,
    state: State,
}

impl AsyncRead for Decoder {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let result = ready!(this.step(cx, out));
        if result.is_err() {
            this.state = State::Failed;
        }
        Poll::Ready(result)
    }
}

impl Decoder {
    /// Advances until some output is produced, the stream ends, or it fails.
    fn step(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let input = &mut self.input;
        loop {
            match &mut self.state {
                State::Header(bytes) => {
                    let need = if bytes.len() < CHUNK_TABLE_OFFSET as usize {
                        CHUNK_TABLE_OFFSET as usize
                    } else {
                        header_len_of(bytes)? as usize
                    };
                    if bytes.len() == need {
                        let header = parse_header(bytes)?;
                        self.state = match header.compression {
                            Compression::Identity => State::Identity {
                                remaining: header.uncompressed_size,
                            },
                            Compression::Zstd => State::Zstd(Box::new(Chunks {
                                comp_left: header.chunk_offsets[1] - header.chunk_offsets[0],
                                out_left: header.chunk_len(0),
                                dec: RawDecoder::new()?,
                                chunk: 0,
                                in_frame: false,
                                header,
                            })),
                        };
                        continue;
                    }
                    ready!(input.poll_fill(cx))?;
                    let avail = input.available();
                    if avail.is_empty() {
                        return Poll::Ready(Err(invalid(format!(
                            "truncated header: the stream ends after {} bytes",
                            bytes.len()
                        ))));
                    }
                    // Grows with what arrives, never with what a header claims.
                    let take = avail.len().min(need - bytes.len());
                    bytes.extend_from_slice(&avail[..take]);
                    input.pos += take;
                }
                State::Identity { remaining } => {
                    if *remaining == 0 {
                        self.state = State::Trailer;
                        continue;
                    }
                    ready!(input.poll_fill(cx))?;
                    let avail = input.available();
                    if avail.is_empty() {
                        return Poll::Ready(Err(invalid(format!(
                            "truncated: the stream ends {remaining} bytes short of the blob"
                        ))));
                    }
                    let n = (avail.len() as u64)
                        .min(*remaining)
                        .min(out.remaining() as u64) as usize;
                    out.put_slice(&avail[..n]);
                    input.pos += n;
                    *remaining -= n as u64;
                    return Poll::Ready(Ok(()));
                }
                State::Zstd(z) => {
                    if z.comp_left == 0 && !z.in_frame {
                        if z.out_left != 0 {
                            return Poll::Ready(Err(invalid(format!(
                                "chunk {} decodes to {} bytes, {} short",
                                z.chunk,
                                z.header.chunk_len(z.chunk) - z.out_left,
                                z.out_left
                            ))));
                        }
                        z.chunk += 1;
                        if z.chunk == z.header.num_chunks() {
                            self.state = State::Trailer;
                            continue;
                        }
                        let o = &z.header.chunk_offsets;
                        z.comp_left = o[z.chunk + 1] - o[z.chunk];
                        z.out_left = z.header.chunk_len(z.chunk);
                        z.dec.reinit()?;
                        continue;
                    }
                    let feed: &[u8] = if z.comp_left == 0 {
                        // The chunk's bytes are all in: only buffered output
                        // of its last frame may remain.
                        &[]
                    } else {
                        ready!(input.poll_fill(cx))?;
                        let avail = input.available();
                        if avail.is_empty() {
                            return Poll::Ready(Err(invalid(format!(
                                "truncated: the stream ends inside chunk {} ({} bytes missing)",
                                z.chunk, z.comp_left
                            ))));
                        }
                        &avail[..avail
                            .len()
                            .min(usize::try_from(z.comp_left).unwrap_or(usize::MAX))]
                    };
                    let (consumed, produced, hint) = {
                        let mut src = InBuffer::around(feed);
                        let mut scratch = [0u8; 1];
                        let limit = (out.remaining() as u64).min(z.out_left) as usize;
                        // With nothing left to yield, a 1-byte scratch output
                        // catches a chunk that decodes to too much.
                        let dst: &mut [u8] = if limit == 0 {
                            &mut scratch
                        } else {
                            &mut out.initialize_unfilled()[..limit]
                        };
                        let mut dst = OutBuffer::around(dst);
                        let hint = z
                            .dec
                            .run(&mut src, &mut dst)
                            .map_err(|e| invalid(format!("chunk {}: zstd: {e}", z.chunk)))?;
                        (src.pos(), dst.pos(), hint)
                    };
                    if produced > z.out_left as usize {
                        return Poll::Ready(Err(invalid(format!(
                            "chunk {} decodes to more than its {} bytes",
                            z.chunk,
                            z.header.chunk_len(z.chunk)
                        ))));
                    }
                    input.pos += consumed;
                    z.comp_left -= consumed as u64;
                    z.out_left -= produced as u64;
                    z.in_frame = hint != 0;
                    if produced > 0 {
                        out.advance(produced);
                        return Poll::Ready(Ok(()));
                    }
                    if consumed == 0 {
                        // Input in hand or an unfinished frame, yet no progress.
                        return Poll::Ready(Err(invalid(format!(
                            "chunk {} ends inside a zstd frame",
                            z.chunk
                        ))));
                    }
                }
                State::Trailer => {
                    ready!(input.poll_fill(cx))?;
                    if !input.available().is_empty() {
                        return Poll::Ready(Err(invalid(
                            "the stream goes on after the final chunk offset",
                        )));
                    }
                    self.state = State::Done;
                }
                State::Done => return Poll::Ready(Ok(())),
                State::Failed => {
                    return Poll::Ready(Err(invalid("read after a decoding error")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Deterministic incompressible bytes (xorshift64*).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    fn text(len: usize) -> Vec<u8> {
        b"bazel-remote casblob chunk table, "
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    }

    fn encode_vec(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut f = tempfile::tempfile()?;
        let len = encode(&mut &data[..], data.len() as u64, &mut f)?;
        assert_eq!(f.stream_position()?, len, "left at the end");
        assert_eq!(f.metadata()?.len(), len);
        let mut bytes = Vec::new();
        f.seek(SeekFrom::Start(0))?;
        f.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Yields at most `step` bytes per read.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self
                .step
                .min(buf.remaining())
                .min(self.data.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.data[start..start + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    async fn decode_with(bytes: &[u8], step: usize, read_size: usize) -> io::Result<Vec<u8>> {
        let mut dec = decoder(Box::pin(Trickle {
            data: bytes.to_vec(),
            pos: 0,
            step,
        }));
        let mut out = Vec::new();
        let mut buf = vec![0u8; read_size];
        loop {
            let n = dec.read(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    async fn decode(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(Box::pin(std::io::Cursor::new(bytes.to_vec())))
            .read_to_end(&mut out)
            .await?;
        Ok(out)
    }

    async fn assert_invalid(bytes: &[u8], what: &str) {
        match decode(bytes).await {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}"),
            Ok(d) => panic!("{what}: decoded {} bytes", d.len()),
        }
    }

    const CS: usize = DEFAULT_CHUNK_SIZE as usize;

    #[tokio::test]
    async fn round_trips() {
        for size in [0, 1, 2, CS - 1, CS, CS + 1, CS * 7 / 2] {
            for (kind, data) in [("text", text(size)), ("noise", noise(size, size as u64))] {
                let enc = encode_vec(&data).unwrap();
                let h = parse_header(&enc).unwrap();
                let chunks = size.div_ceil(CS).max(1);
                assert_eq!(h.num_chunks(), chunks, "{kind} {size}");
                assert_eq!(h.uncompressed_size, size as u64);
                assert_eq!(h.compression, Compression::Zstd);
                assert_eq!(h.chunk_size, DEFAULT_CHUNK_SIZE);
                assert_eq!(h.file_len(), enc.len() as u64);
                assert_eq!(decode(&enc).await.unwrap(), data, "{kind} {size}");
                // The header is a skippable frame: the file is a zstd stream.
                assert_eq!(
                    zstd::stream::decode_all(&enc[..]).unwrap(),
                    data,
                    "{kind} {size}"
                );
                // Every chunk is an independent frame of exactly its share.
                for i in 0..chunks {
                    let (a, b) = (h.chunk_offsets[i] as usize, h.chunk_offsets[i + 1] as usize);
                    let part = zstd::stream::decode_all(&enc[a..b]).unwrap();
                    let lo = (i * CS).min(size);
                    assert_eq!(
                        part,
                        &data[lo..(lo + CS).min(size)],
                        "{kind} {size} chunk {i}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn decodes_in_small_pieces() {
        // Few input bytes per read, few output bytes per read: every state
        // boundary (header, table, chunk ends, frame ends) gets split.
        let data = noise(CS * 2 + 777, 7);
        let enc = encode_vec(&data).unwrap();
        for (step, read_size) in [(7, 3), (4096, 1), (1 << 20, 5000), (INPUT_BUFFER, 1 << 20)] {
            let got = decode_with(&enc, step, read_size).await.unwrap();
            assert!(got == data, "{step}/{read_size}");
        }
        let data = text(CS + 10);
        let enc = encode_vec(&data).unwrap();
        assert!(decode_with(&enc, 1, 1 << 20).await.unwrap() == data);
        for g in [golden_hello(), golden_small_chunks(), golden_identity()] {
            let whole = decode(&g).await.unwrap();
            assert_eq!(decode_with(&g, 1, 1).await.unwrap(), whole);
            assert_eq!(decode_with(&g, 3, 2).await.unwrap(), whole);
        }
    }

    #[test]
    fn encode_checks_the_size() {
        let data = text(100);
        let mut f = tempfile::tempfile().unwrap();
        let e = encode(&mut &data[..], 101, &mut f).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        let mut f = tempfile::tempfile().unwrap();
        let e = encode(&mut &data[..], 99, &mut f).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        let mut f = tempfile::tempfile().unwrap();
        let e = encode(&mut &data[..], CS as u64 + 1, &mut f).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    // ---- golden files, laid out by hand as bazel-remote writes them ----

    /// A zstd frame holding `data` in one raw block: single segment, 1-byte
    /// content size, no checksum (RFC 8878 §3.1.1). Deterministic, unlike an
    /// encoder's output.
    fn raw_frame(data: &[u8]) -> Vec<u8> {
        assert!(data.len() < 256);
        let mut f = vec![0x28, 0xB5, 0x2F, 0xFD]; // zstd frame magic 0xFD2FB528
        f.push(0x20); // frame header descriptor: Single_Segment_flag, FCS 1 byte
        f.push(data.len() as u8); // Frame_Content_Size
        // Block_Size << 3 | Block_Type Raw_Block (0) << 1 | Last_Block (1)
        let block = ((data.len() as u32) << 3) | 1;
        f.extend_from_slice(&block.to_le_bytes()[..3]);
        f.extend_from_slice(data);
        f
    }

    /// The header fields in `header.write` order (casblob.go:458-492).
    fn golden_header(size: i64, compression: u8, chunk_size: u32, offsets: &[i64]) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&[0x50, 0x2A, 0x4D, 0x18]); // skippableFrameMagicNumber, LE
        let frame = 8 + 1 + 4 + 8 + 8 * offsets.len() as u32; // frameSize(): all but these 8 bytes
        h.extend_from_slice(&frame.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes()); // uncompressedSize int64
        h.push(compression); // CompressionType uint8
        h.extend_from_slice(&chunk_size.to_le_bytes()); // chunkSize uint32
        h.extend_from_slice(&(offsets.len() as i64).to_le_bytes()); // len(chunkOffsets) int64
        for o in offsets {
            h.extend_from_slice(&o.to_le_bytes()); // chunkOffsets []int64
        }
        h
    }

    const HELLO: &[u8] = b"hello, casblob";

    /// One 14-byte chunk in bazel-remote's 1 MiB chunking.
    fn golden_hello() -> Vec<u8> {
        let frame = raw_frame(HELLO);
        let header_len = 29 + 2 * 8; // chunkTableOffset + 2 offsets = 45
        let offsets = [header_len, header_len + frame.len() as i64];
        let mut file = golden_header(HELLO.len() as i64, 1, 1 << 20, &offsets);
        assert_eq!(file.len() as i64, header_len);
        file.extend_from_slice(&frame);
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[0x50, 0x2A, 0x4D, 0x18][..],          // magic
            &[0x25, 0, 0, 0],                        // frame size 37
            &[0x0E, 0, 0, 0, 0, 0, 0, 0],            // uncompressed size 14
            &[0x01],                                 // zstd
            &[0x00, 0x00, 0x10, 0x00],               // chunk size 1 MiB
            &[0x02, 0, 0, 0, 0, 0, 0, 0],            // 2 offsets
            &[0x2D, 0, 0, 0, 0, 0, 0, 0],            // chunk 0 at 45
            &[0x44, 0, 0, 0, 0, 0, 0, 0],            // file ends at 45 + 23 = 68
            &[0x28, 0xB5, 0x2F, 0xFD, 0x20, 0x0E, 0x71, 0x00, 0x00], // frame + block header
            HELLO,
        ]
        .concat();
        assert_eq!(file, expected);
        file
    }

    /// A 10-byte blob in 4-byte chunks, one raw frame per given chunk.
    fn small_chunks(chunks: &[&[u8]]) -> Vec<u8> {
        let frames: Vec<Vec<u8>> = chunks.iter().map(|c| raw_frame(c)).collect();
        let mut offsets = vec![29 + 8 * (frames.len() as i64 + 1)];
        for f in &frames {
            offsets.push(offsets[offsets.len() - 1] + f.len() as i64);
        }
        let mut file = golden_header(10, 1, 4, &offsets);
        for f in &frames {
            file.extend_from_slice(f);
        }
        file
    }

    /// "abcdefghij" in 4-byte chunks: 3 chunks (4, 4, 2 bytes).
    fn golden_small_chunks() -> Vec<u8> {
        small_chunks(&[b"abcd", b"efgh", b"ij"])
    }

    /// Identity: the bytes right after a 2-offset header. (bazel-remote's own
    /// writer leaves the table as [29, 0] here, which its reader rejects; it
    /// never writes identity casblobs, see the module docs.)
    fn golden_identity() -> Vec<u8> {
        let mut file = golden_header(14, 0, 1 << 20, &[45, 45 + 14]);
        file.extend_from_slice(HELLO);
        file
    }

    #[tokio::test]
    async fn golden_files_decode() {
        let g = golden_hello();
        assert_eq!(decode(&g).await.unwrap(), HELLO);
        assert_eq!(zstd::stream::decode_all(&g[..]).unwrap(), HELLO);
        let h = parse_header(&g).unwrap();
        assert_eq!(
            h,
            Header {
                uncompressed_size: 14,
                compression: Compression::Zstd,
                chunk_size: 1 << 20,
                chunk_offsets: vec![45, 68],
            }
        );
        assert_eq!(h.to_bytes(), g[..45]);
        assert_eq!(header_len_of(&g[..29]).unwrap(), 45);

        let g = golden_small_chunks();
        assert_eq!(decode(&g).await.unwrap(), b"abcdefghij");
        assert_eq!(decode_with(&g, 1, 1).await.unwrap(), b"abcdefghij");
        assert_eq!(zstd::stream::decode_all(&g[..]).unwrap(), b"abcdefghij");
        let h = parse_header(&g).unwrap();
        assert_eq!(h.chunk_offsets, vec![61, 74, 87, 98]);
        // A read at offset 5 starts at chunk 1 and drops 1 byte of it.
        let p = h.locate(5).unwrap();
        assert_eq!(
            p,
            SeekPoint {
                chunk: 1,
                file_offset: 74,
                skip: 1
            }
        );
        let chunk = &g[p.file_offset as usize..h.chunk_offsets[2] as usize];
        let rest = zstd::stream::decode_all(chunk).unwrap();
        assert_eq!(&rest[p.skip as usize..], b"fgh");
        assert_eq!(h.locate(10), None);

        let g = golden_identity();
        assert_eq!(decode(&g).await.unwrap(), HELLO);
        let h = parse_header(&g).unwrap();
        assert_eq!(h.compression, Compression::Identity);
        assert_eq!(h.locate(7).unwrap().file_offset, 52);
        // Identity bodies are not zstd: only compression 1 makes a .zst file.
        assert!(zstd::stream::decode_all(&g[..]).is_err());
    }

    #[test]
    fn encode_matches_the_golden_layout() {
        let enc = encode_vec(HELLO).unwrap();
        let golden = golden_hello();
        // Same header but for the end offset, which depends on the encoder.
        assert_eq!(enc[..37], golden[..37]);
        let h = parse_header(&enc).unwrap();
        assert_eq!(h.chunk_offsets[0], 45);
        assert_eq!(h.chunk_offsets[1], enc.len() as u64);
        assert_eq!(
            h.to_bytes(),
            golden_header(14, 1, 1 << 20, &[45, enc.len() as i64])
        );

        // 2.5 MiB: 3 chunks, 4 offsets, 61-byte header.
        let data = text(CS * 5 / 2);
        let enc = encode_vec(&data).unwrap();
        let h = parse_header(&enc).unwrap();
        let offsets: Vec<i64> = h.chunk_offsets.iter().map(|&o| o as i64).collect();
        assert_eq!(offsets.len(), 4);
        assert_eq!(offsets[0], 61);
        assert_eq!(offsets[3], enc.len() as i64);
        assert_eq!(
            enc[..61],
            golden_header(data.len() as i64, 1, 1 << 20, &offsets)
        );

        // Read at an offset, bazel-remote's way.
        let at = CS as u64 * 3 / 2;
        let p = h.locate(at).unwrap();
        assert_eq!((p.chunk, p.skip), (1, CS as u64 / 2));
        let chunk = &enc[p.file_offset as usize..h.chunk_offsets[2] as usize];
        let part = zstd::stream::decode_all(chunk).unwrap();
        assert_eq!(&part[p.skip as usize..], &data[at as usize..CS * 2]);
    }

    #[tokio::test]
    async fn empty_blob() {
        let enc = encode_vec(b"").unwrap();
        let h = parse_header(&enc).unwrap();
        assert_eq!((h.uncompressed_size, h.num_chunks()), (0, 1));
        assert_eq!(decode(&enc).await.unwrap(), b"");
        assert_eq!(zstd::stream::decode_all(&enc[..]).unwrap(), b"");
        assert_eq!(h.locate(0), None);
    }

    // ---- malformed input ----

    fn patch(file: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut f = file.to_vec();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        f
    }

    #[tokio::test]
    async fn rejects_malformed_input() {
        // golden_small_chunks: offsets at 29, 37, 45, 53 = [61, 74, 87, 98];
        // chunk 1's frame: magic 74..78, descriptor 78, content size 79,
        // block header 80..83, data 83..87.
        let g = golden_small_chunks();
        let id = golden_identity();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("bad magic", patch(&g, 0, &[0x51])),
            ("zstd frame magic", patch(&g, 0, &[0x28, 0xB5, 0x2F, 0xFD])),
            ("frame size", patch(&g, 4, &[54])),
            ("negative size", patch(&g, 15, &[0x80])),
            ("compression 2", patch(&g, 16, &[2])),
            ("chunk size 0", patch(&g, 17, &[0, 0, 0, 0])),
            ("chunk size 5: 2 chunks", patch(&g, 17, &[5])),
            ("too few offsets", patch(&g, 21, &[3])),
            ("too many offsets", patch(&g, 21, &[5])),
            ("negative offset count", patch(&g, 28, &[0x80])),
            ("offsets out of order", patch(&g, 37, &88i64.to_le_bytes())),
            ("equal offsets", patch(&g, 45, &74i64.to_le_bytes())),
            (
                "first offset not header end",
                patch(&g, 29, &62i64.to_le_bytes()),
            ),
            ("negative offset", patch(&g, 53, &(-1i64).to_le_bytes())),
            ("size 6: 2 chunks", patch(&g, 8, &[6])),
            ("identity size mismatch", patch(&id, 8, &[13])),
            ("identity end offset", patch(&id, 37, &[58])),
            ("identity first offset", patch(&id, 29, &[29])),
        ];
        for (what, bytes) in &cases {
            let e = parse_header(bytes).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}");
            assert_invalid(bytes, what).await;
        }
        // Headers that are fine on their own; the data disagrees.
        let mut trailing = g.clone();
        trailing.push(0);
        let mut id_trailing = id.clone();
        id_trailing.push(0);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "last offset past the end",
                patch(&g, 53, &99i64.to_le_bytes()),
            ),
            (
                "last offset before the end",
                patch(&g, 53, &97i64.to_le_bytes()),
            ),
            ("trailing byte", trailing),
            ("identity trailing byte", id_trailing),
            ("size 11: last chunk short", patch(&g, 8, &[11])),
            ("size 9: last chunk long", patch(&g, 8, &[9])),
            ("corrupt frame magic", patch(&g, 74, &[0x00])),
            (
                "block longer than its chunk",
                patch(&g, 80, &[(5 << 3) | 1]),
            ),
            ("content size disagrees", patch(&g, 79, &[5])),
            // Total right (10 bytes), chunking wrong: offset reads would break.
            ("chunk 0 long", small_chunks(&[b"abcde", b"fgh", b"ij"])),
            ("chunk 0 short", small_chunks(&[b"abc", b"defgh", b"ij"])),
            ("empty chunk", small_chunks(&[b"abcd", b"", b"efghij"])),
        ];
        for (what, bytes) in &cases {
            assert!(parse_header(bytes).is_ok(), "{what}");
            assert_invalid(bytes, what).await;
        }
        assert_invalid(b"", "empty").await;
    }

    #[tokio::test]
    async fn rejects_every_truncation() {
        for g in [golden_hello(), golden_small_chunks(), golden_identity()] {
            for len in 0..g.len() {
                assert_invalid(&g[..len], &format!("truncated to {len}")).await;
                let header_len = parse_header(&g).unwrap().header_len() as usize;
                if len < header_len {
                    let e = parse_header(&g[..len]).unwrap_err();
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                }
            }
        }
        let enc = encode_vec(&noise(CS + 100, 3)).unwrap();
        for len in [0, 28, 29, 52, 53, 60, 1000, CS, enc.len() - 1] {
            assert_invalid(&enc[..len], &format!("encoded, truncated to {len}")).await;
        }
    }

    #[tokio::test]
    async fn rejects_absurd_chunk_counts() {
        // Sizes and counts a hostile header might claim; none may allocate
        // by the claim (the stream here ends right after the fixed part).
        let cases: [(i64, u32, i64); 6] = [
            (i64::MAX, 1, i64::MAX),     // 2^63 chunks
            (1 << 40, 1, (1 << 40) + 1), // 2^40 chunks, count consistent
            (1 << 24, 1, (1 << 24) + 1), // at the limit, but no table
            (10, 4, i64::MAX),           // count inconsistent with size
            (10, 4, -3),                 // negative count
            (10, 4, 0),                  // no offsets
        ];
        for (size, chunk_size, count) in cases {
            let mut h = golden_header(size, 1, chunk_size, &[]);
            h[21..29].copy_from_slice(&count.to_le_bytes());
            let frame = (21u64.wrapping_add((count as u64).wrapping_mul(8))) as u32;
            h[4..8].copy_from_slice(&frame.to_le_bytes());
            assert_invalid(&h, &format!("{size}/{chunk_size}/{count}")).await;
            let e = parse_header(&h).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
    }

    #[tokio::test]
    async fn mutations_never_panic() {
        let g = golden_small_chunks();
        for i in 0..g.len() {
            for delta in [1u8, 0x80, 0xFF] {
                let mut m = g.clone();
                m[i] = m[i].wrapping_add(delta);
                match decode(&m).await {
                    Ok(d) => assert_eq!(d.len(), 10, "byte {i} +{delta}"),
                    Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "byte {i}: {e}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn input_errors_pass_through() {
        struct Broken;
        impl AsyncRead for Broken {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset")))
            }
        }
        let mut out = Vec::new();
        let e = decoder(Box::pin(Broken))
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }
}
