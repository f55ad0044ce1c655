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

use crate::BlobReader;

/// The zstd skippable-frame magic number bazel-remote writes (exactly this
/// one of the 16 skippable magics; it accepts no other).
pub(super) const MAGIC: u32 = 0x184D_2A50;
/// bazel-remote's chunk size (`defaultChunkSize`).
pub(super) const DEFAULT_CHUNK_SIZE: u32 = 1024 * 1024;
/// Where the offsets start: magic, frame size, uncompressed size,
/// compression, chunk size and number of offsets (`chunkTableOffset`).
pub(crate) const CHUNK_TABLE_OFFSET: u64 = 4 + 4 + 8 + 1 + 4 + 8;
/// Bytes of the skippable frame's payload besides the offsets: uncompressed
/// size, compression, chunk size, number of offsets.
const FIXED_METADATA: u64 = 8 + 1 + 4 + 8;
/// bazel-remote's zstd level (both its Go and cgo encoders use the fastest).
const ZSTD_LEVEL: i32 = 1;
/// Most chunks a header may declare: a 128 MiB offset table, 16 TiB in
/// bazel-remote's 1 MiB chunks.
pub(super) const MAX_CHUNKS: u64 = 1 << 24;
/// Read buffer of the decoder.
const INPUT_BUFFER: usize = 64 * 1024;

/// How the chunks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Compression {
    /// The blob's bytes follow the header as they are (one "chunk").
    Identity = 0,
    /// Independently compressed zstd frames of `chunk_size` bytes each.
    Zstd = 1,
}

/// A validated casblob header, as [`parse_header`] returns it (the methods
/// assume its invariants: at least two offsets, counted as the size implies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub uncompressed_size: u64,
    pub compression: Compression,
    pub chunk_size: u32,
    /// Where each chunk starts in the file, then the file's length; strictly
    /// increasing, the first one being the header length.
    pub chunk_offsets: Vec<u64>,
}

/// Where a read from an uncompressed offset starts in a casblob file.
// Ranged reads (ByteStream `read_offset`) straight from a `cas.v2` file:
// tested against the format. Adopted bazel-remote directories do not need
// it: their casblobs are served as the zstd streams they are (disk/adopt.rs).
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SeekPoint {
    /// The chunk holding the offset.
    pub chunk: usize,
    /// Where to start reading the file.
    pub file_offset: u64,
    /// Uncompressed bytes to drop from what decodes from there.
    pub skip: u64,
}

impl Header {
    /// Length of the header itself (the skippable frame).
    pub(super) fn header_len(&self) -> u64 {
        header_len(self.chunk_offsets.len() as u64)
    }

    pub(super) fn num_chunks(&self) -> usize {
        self.chunk_offsets.len() - 1
    }

    /// The length of the whole file, as the header records it.
    pub(crate) fn file_len(&self) -> u64 {
        self.chunk_offsets[self.chunk_offsets.len() - 1]
    }

    /// How many uncompressed bytes chunk `i` holds.
    pub(super) fn chunk_len(&self, i: usize) -> u64 {
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
    #[allow(dead_code)] // see SeekPoint
    pub(super) fn locate(&self, offset: u64) -> Option<SeekPoint> {
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
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
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
pub(crate) fn parse_header(prefix: &[u8]) -> io::Result<Header> {
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
pub(crate) fn header_len_of(prefix: &[u8]) -> io::Result<u64> {
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
pub(crate) fn encode(input: &mut dyn Read, size: u64, out: &mut File) -> io::Result<u64> {
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
pub(super) fn decoder(input: BlobReader) -> BlobReader {
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
mod tests;
