//! zstd frame headers (RFC 8878 §3.1), read before a decoder sees them.
//!
//! Why: a frame's header says how large a window its decoder must allocate
//! (up to 2^41 bytes in the format; libzstd accepts 128 MiB by default), and
//! a 256 KiB body can declare the largest window and then fill it. Reading
//! the header first lets the decoder refuse a frame over our window limit
//! with a message that says so, and reserve the memory the frame needs
//! from the budget before any of it is allocated.
//!
//! [`FrameWalker`] follows a zstd stream as it passes by — frame headers,
//! block headers (skipping block contents), checksums, skippable frames —
//! so the header of every frame of a multi-frame body is seen, not just the
//! first. It never decodes.

/// Magic number of a zstd frame (little endian on the wire).
const MAGIC: u32 = 0xFD2F_B528;
/// Skippable frames: magic numbers 0x184D2A50 to 0x184D2A5F.
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
/// Magic numbers of zstd's pre-1.0 formats (v0.1 to v0.7).
const LEGACY_MAGICS: std::ops::RangeInclusive<u32> = 0xFD2F_B51E..=0xFD2F_B527;
/// Magic, descriptor, window descriptor, dictionary id, content size.
const MAX_HEADER: usize = 4 + 1 + 1 + 4 + 8;
/// Block_Maximum_Size: no block decodes to more, whatever the window.
const MAX_BLOCK: u64 = 128 * 1024;
/// The smallest window a decoder uses (`ZSTD_WINDOWLOG_ABSOLUTEMIN`).
const MIN_WINDOW: u64 = 1 << 10;
/// Memory of a decoding context apart from its buffers
/// (`ZSTD_sizeof_DCtx` of a fresh context, zstd 1.5.7: 93 KiB).
const DCTX_BYTES: u64 = 96 * 1024;

/// What a zstd frame header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Window_Size: for a single-segment frame, its content size (libzstd
    /// holds the whole content then, and checks its window limit against it).
    pub window: u64,
    /// Frame_Content_Size, when declared.
    pub content_size: Option<u64>,
    pub checksum: bool,
}

impl FrameHeader {
    /// Memory a streaming decoder allocates for this frame: its context, an
    /// input block buffer and the output buffer (window plus two blocks, or
    /// the content size when smaller); libzstd's
    /// `ZSTD_estimateDStreamSize_fromFrame`, which this matches within a
    /// few KiB (a 512 KiB window: 992 KiB here, 989 KiB measured).
    pub fn decoder_memory(&self) -> u64 {
        let window = self.window.max(MIN_WINDOW);
        let block = window.min(MAX_BLOCK);
        let mut out = window.saturating_add(2 * block);
        if let Some(size) = self.content_size {
            out = out.min(size);
        }
        DCTX_BYTES + block + out
    }
}

/// Why a stream is refused before it is decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "zstd frame needs a {} window, more than this server's limit of {} (window log {}); \
         compress at level 19 or lower, without --ultra or --long",
        bytes(*window),
        bytes(*limit),
        limit.trailing_zeros()
    )]
    WindowTooLarge { window: u64, limit: u64 },
    #[error("not a zstd frame (magic number {magic:#010x}; zstd frames start with 0xfd2fb528)")]
    NotZstd { magic: u32 },
    #[error("zstd frame of a pre-1.0 format (magic number {magic:#010x}), which is not accepted")]
    Legacy { magic: u32 },
    #[error("zstd frame header sets its reserved bit")]
    ReservedBit,
    #[error("zstd block of the reserved type 3")]
    ReservedBlock,
}

/// Sizes as people read them: `8 MiB`, `128 MiB`, `1.5 GiB`, `1000 bytes`.
fn bytes(n: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= size {
            let whole = n / size;
            let tenths = (n % size) * 10 / size;
            return if tenths == 0 {
                format!("{whole} {unit}")
            } else {
                format!("{whole}.{tenths} {unit}")
            };
        }
    }
    format!("{n} bytes")
}

/// Where the walker is in the stream.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Collecting a frame's magic number and header.
    Header { buf: [u8; MAX_HEADER], len: usize },
    /// Collecting a block header (3 bytes).
    Block {
        buf: [u8; 3],
        len: usize,
        checksum: bool,
    },
    /// Passing `left` bytes by (block contents, checksum, skippable frame),
    /// then going on with `then`.
    Skip { left: u64, then: Then },
}

#[derive(Debug, Clone, Copy)]
enum Then {
    Block { checksum: bool },
    Frame,
}

const NEW_FRAME: State = State::Header {
    buf: [0; MAX_HEADER],
    len: 0,
};

/// Follows a zstd stream (one or more frames) and checks every frame
/// header against a window limit.
#[derive(Debug, Clone)]
pub struct FrameWalker {
    state: State,
    window_limit: u64,
    /// Once an error is found, every later scan returns it.
    failed: Option<FrameError>,
}

impl FrameWalker {
    pub fn new(window_limit: u64) -> Self {
        FrameWalker {
            state: NEW_FRAME,
            window_limit,
            failed: None,
        }
    }

    /// Passes `input`, the stream's next bytes, by. Returns the largest
    /// [`FrameHeader::decoder_memory`] of the frames whose headers complete
    /// in it (0 if none), or why the stream must be refused.
    pub fn scan(&mut self, mut input: &[u8]) -> Result<u64, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut memory = 0;
        while !input.is_empty() {
            match self.step(&mut input) {
                Ok(Some(frame)) => memory = memory.max(frame.decoder_memory()),
                Ok(None) => {}
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(memory)
    }

    /// Consumes from `input` what the current state takes; returns a frame
    /// header when one completes.
    fn step(&mut self, input: &mut &[u8]) -> Result<Option<FrameHeader>, FrameError> {
        match &mut self.state {
            State::Skip { left, then } => {
                let n = (*left).min(input.len() as u64);
                *input = &input[n as usize..];
                *left -= n;
                if *left == 0 {
                    self.state = match *then {
                        Then::Block { checksum } => State::Block {
                            buf: [0; 3],
                            len: 0,
                            checksum,
                        },
                        Then::Frame => NEW_FRAME,
                    };
                }
                Ok(None)
            }
            State::Block { buf, len, checksum } => {
                let n = (3 - *len).min(input.len());
                buf[*len..*len + n].copy_from_slice(&input[..n]);
                *len += n;
                *input = &input[n..];
                if *len < 3 {
                    return Ok(None);
                }
                let header = u32::from(buf[0]) | u32::from(buf[1]) << 8 | u32::from(buf[2]) << 16;
                let last = header & 1 == 1;
                let size = u64::from(header >> 3);
                let contents = match (header >> 1) & 3 {
                    0 | 2 => size, // raw, compressed
                    1 => 1,        // RLE: one byte, repeated
                    _ => return Err(FrameError::ReservedBlock),
                };
                let checksum = *checksum;
                let (left, then) = if last {
                    (contents + if checksum { 4 } else { 0 }, Then::Frame)
                } else {
                    (contents, Then::Block { checksum })
                };
                self.state = State::Skip { left, then };
                // An empty raw block still ends its frame.
                self.skip_nothing();
                Ok(None)
            }
            State::Header { buf, len } => {
                // One byte at a time: headers are at most 18 bytes.
                buf[*len] = input[0];
                *len += 1;
                *input = &input[1..];
                match parse(&buf[..*len])? {
                    Parsed::Incomplete => Ok(None),
                    Parsed::Skippable { size } => {
                        self.state = State::Skip {
                            left: size,
                            then: Then::Frame,
                        };
                        self.skip_nothing();
                        Ok(None)
                    }
                    Parsed::Frame(frame) => {
                        if frame.window > self.window_limit {
                            return Err(FrameError::WindowTooLarge {
                                window: frame.window,
                                limit: self.window_limit,
                            });
                        }
                        self.state = State::Block {
                            buf: [0; 3],
                            len: 0,
                            checksum: frame.checksum,
                        };
                        Ok(Some(frame))
                    }
                }
            }
        }
    }

    /// A skip of zero bytes is over before it starts.
    fn skip_nothing(&mut self) {
        if let State::Skip { left: 0, then } = self.state {
            self.state = match then {
                Then::Block { checksum } => State::Block {
                    buf: [0; 3],
                    len: 0,
                    checksum,
                },
                Then::Frame => NEW_FRAME,
            };
        }
    }
}

/// What the bytes at the start of a frame are, so far.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Incomplete,
    /// A skippable frame of `size` bytes after its 8-byte header.
    Skippable {
        size: u64,
    },
    Frame(FrameHeader),
}

/// Parses a frame header from the start of `b` (which may be incomplete).
fn parse(b: &[u8]) -> Result<Parsed, FrameError> {
    if b.len() < 4 {
        return Ok(Parsed::Incomplete);
    }
    let magic = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC {
        if b.len() < 8 {
            return Ok(Parsed::Incomplete);
        }
        let size = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        return Ok(Parsed::Skippable {
            size: u64::from(size),
        });
    }
    if LEGACY_MAGICS.contains(&magic) {
        return Err(FrameError::Legacy { magic });
    }
    if magic != MAGIC {
        return Err(FrameError::NotZstd { magic });
    }
    let Some(&descriptor) = b.get(4) else {
        return Ok(Parsed::Incomplete);
    };
    if descriptor & 0x08 != 0 {
        return Err(FrameError::ReservedBit);
    }
    let single_segment = descriptor & 0x20 != 0;
    let checksum = descriptor & 0x04 != 0;
    let dictionary_len = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let content_size_len = match descriptor >> 6 {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let window_len = usize::from(!single_segment);
    let header_len = 5 + window_len + dictionary_len + content_size_len;
    if b.len() < header_len {
        return Ok(Parsed::Incomplete);
    }
    let field = &b[5 + window_len + dictionary_len..header_len];
    let content_size = match field.len() {
        0 => None,
        2 => Some(u64::from(u16::from_le_bytes([field[0], field[1]])) + 256),
        n => {
            let mut le = [0u8; 8];
            le[..n].copy_from_slice(field);
            Some(u64::from_le_bytes(le))
        }
    };
    let window = if single_segment {
        // Single_Segment_flag implies a content size field.
        content_size.unwrap_or(0)
    } else {
        let descriptor = b[5];
        let log = 10 + u32::from(descriptor >> 3);
        let base = 1u64 << log;
        base + (base / 8) * u64::from(descriptor & 7)
    };
    Ok(Parsed::Frame(FrameHeader {
        window,
        content_size,
        checksum,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    const LIMIT: u64 = 8 << 20;

    /// A frame header: magic, descriptor, then `rest` (window descriptor,
    /// dictionary id, content size) as given.
    pub(crate) fn header(descriptor: u8, rest: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_le_bytes().to_vec();
        out.push(descriptor);
        out.extend_from_slice(rest);
        out
    }

    /// A frame declaring a window of 2^`log` bytes (no content size, no
    /// checksum) made of `blocks` RLE blocks of `block` zero bytes each:
    /// a few bytes on the wire, `blocks * block` decoded.
    pub(crate) fn rle_frame(log: u32, blocks: usize, block: u32) -> Vec<u8> {
        let mut out = header(0x00, &[((log - 10) << 3) as u8]);
        for i in 0..blocks {
            let last = u32::from(i + 1 == blocks);
            let h = last | 1 << 1 | block << 3;
            out.extend_from_slice(&h.to_le_bytes()[..3]);
            out.push(0);
        }
        out
    }

    fn walk(stream: &[u8], piece: usize) -> Result<u64, FrameError> {
        let mut walker = FrameWalker::new(LIMIT);
        let mut most = 0;
        for part in stream.chunks(piece.max(1)) {
            most = most.max(walker.scan(part)?);
        }
        // Ends at a frame boundary.
        assert!(
            matches!(walker.state, State::Header { len: 0, .. }),
            "{:?}",
            walker.state
        );
        Ok(most)
    }

    fn frame_of(stream: &[u8]) -> FrameHeader {
        match parse(stream).unwrap() {
            Parsed::Frame(f) => f,
            other => panic!("{other:?}"),
        }
    }

    fn streaming(level: i32, data: &[u8]) -> Vec<u8> {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), level).unwrap();
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn window_descriptors_follow_the_rfc() {
        // Exponent 0, mantissa 0: 1 KiB; exponent 13 mantissa 0: 8 MiB;
        // exponent 13 mantissa 1: 9 MiB; exponent 17: 128 MiB; largest: 3.75 TiB.
        for (wd, window) in [
            (0x00u8, 1u64 << 10),
            (13 << 3, 8 << 20),
            (13 << 3 | 1, 9 << 20),
            (17 << 3, 128 << 20),
            (0xff, (1 << 41) + 7 * (1 << 38)),
        ] {
            assert_eq!(frame_of(&header(0x00, &[wd])).window, window, "{wd:#x}");
        }
        // Single segment: the window is the content size (1, 2 + 256, 4, 8 bytes).
        assert_eq!(frame_of(&header(0x20, &[200])).window, 200);
        assert_eq!(
            frame_of(&header(0x60, &[0x00, 0x01])).content_size,
            Some(256 + 256)
        );
        assert_eq!(
            frame_of(&header(0xa0, &(9u32 << 20).to_le_bytes())).window,
            9 << 20
        );
        let f = frame_of(&header(0xe4, &(1u64 << 40).to_le_bytes()));
        assert_eq!((f.window, f.checksum), (1 << 40, true));
        // Window descriptor, a 4-byte dictionary id, a 4-byte content size.
        let f = frame_of(&header(0x83, &[3 << 3, 1, 2, 3, 4, 0, 0, 16, 0]));
        assert_eq!((f.window, f.content_size), (8 << 10, Some(1 << 20)));
    }

    #[test]
    fn headers_are_parsed_only_once_complete() {
        let full = header(0x83, &[3 << 3, 1, 2, 3, 4, 0, 0, 16, 0]);
        for len in 0..full.len() {
            assert_eq!(parse(&full[..len]), Ok(Parsed::Incomplete), "{len}");
        }
        let skippable = [0x5f, 0x2a, 0x4d, 0x18, 9, 0, 0, 0];
        assert_eq!(parse(&skippable[..7]), Ok(Parsed::Incomplete));
        assert_eq!(parse(&skippable), Ok(Parsed::Skippable { size: 9 }));
    }

    #[test]
    fn what_is_not_a_zstd_frame_is_refused() {
        assert_eq!(
            parse(b"PK\x03\x04"),
            Err(FrameError::NotZstd { magic: 0x0403_4b50 })
        );
        assert_eq!(
            parse(&0xFD2F_B527u32.to_le_bytes()),
            Err(FrameError::Legacy { magic: 0xFD2F_B527 })
        );
        assert_eq!(parse(&header(0x08, &[0])), Err(FrameError::ReservedBit));
        let mut bad_block = header(0x00, &[0]);
        bad_block.extend_from_slice(&[0b111, 0, 0]);
        assert_eq!(walk(&bad_block, 64), Err(FrameError::ReservedBlock));
    }

    #[test]
    fn decoder_memory_matches_libzstd() {
        // A streaming level-1 frame: window 512 KiB, no content size.
        let frame = frame_of(&streaming(1, b"abc"));
        assert_eq!(frame.window, 512 << 10);
        assert_eq!(frame.decoder_memory(), (96 + 128 + 512 + 256) << 10);
        // A known small content caps the output buffer.
        let small = FrameHeader {
            window: 8 << 20,
            content_size: Some(1000),
            checksum: false,
        };
        assert_eq!(small.decoder_memory(), (96 + 128) * 1024 + 1000);
        // The largest window allowed: about 8.6 MiB.
        let largest = FrameHeader {
            window: LIMIT,
            content_size: None,
            checksum: false,
        };
        assert_eq!(largest.decoder_memory(), (96 + 128 + 256) * 1024 + LIMIT);
    }

    /// Every standard level (1 to 19) fits the limit, streamed (window of
    /// the level's parameters: 512 KiB at 1, 2 MiB at zstd-jni's default 3,
    /// 8 MiB at 17 to 19) or one-shot (single segment up to the window).
    #[test]
    fn every_standard_level_fits_and_is_walked_to_its_end() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for level in 1..=19 {
            for stream in [
                streaming(level, &data),
                zstd::bulk::compress(&data, level).unwrap(),
            ] {
                let memory = walk(&stream, 1000).unwrap_or_else(|e| panic!("level {level}: {e}"));
                assert!(memory > 0 && memory < 9 << 20, "level {level}: {memory}");
                assert!(frame_of(&stream).window <= LIMIT, "level {level}");
            }
        }
        assert_eq!(frame_of(&streaming(3, b"x")).window, 2 << 20);
        assert_eq!(frame_of(&streaming(19, b"x")).window, 8 << 20);
    }

    #[test]
    fn a_window_over_the_limit_is_refused_at_its_header() {
        let mut params = zstd::bulk::Compressor::new(1).unwrap();
        params
            .set_parameter(zstd::stream::raw::CParameter::WindowLog(24))
            .unwrap();
        params
            .set_parameter(zstd::stream::raw::CParameter::ContentSizeFlag(false))
            .unwrap();
        let big = params.compress(&vec![1u8; 20 << 20]).unwrap();
        let err = walk(&big, 3).unwrap_err();
        assert_eq!(
            err,
            FrameError::WindowTooLarge {
                window: 16 << 20,
                limit: LIMIT
            }
        );
        assert_eq!(
            err.to_string(),
            "zstd frame needs a 16 MiB window, more than this server's limit of 8 MiB \
             (window log 23); compress at level 19 or lower, without --ultra or --long"
        );
        // A bomb's header: 128 MiB.
        assert!(matches!(
            walk(&rle_frame(27, 4, 128 << 10), 1000),
            Err(FrameError::WindowTooLarge { window, .. }) if window == 128 << 20
        ));
        // A single-segment frame whose content is over the limit, too
        // (libzstd checks the content size as the window).
        let single = header(0xa0, &(9u32 << 20).to_le_bytes());
        assert!(matches!(
            walk(&single, 64),
            Err(FrameError::WindowTooLarge { window, .. }) if window == 9 << 20
        ));
    }

    #[test]
    fn every_frame_of_a_stream_is_checked() {
        let data = vec![5u8; 100_000];
        let mut stream = zstd::bulk::compress(&data, 1).unwrap();
        // A skippable frame, a checksummed frame, an empty frame.
        stream.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
        enc.include_checksum(true).unwrap();
        enc.write_all(&data).unwrap();
        stream.extend_from_slice(&enc.finish().unwrap());
        stream.extend_from_slice(&zstd::bulk::compress(b"", 3).unwrap());
        assert_eq!(
            zstd::stream::decode_all(&stream[..]).unwrap().len(),
            2 * data.len()
        );
        for piece in [1, 2, 7, 4096, stream.len()] {
            // The level-19 frame's 8 MiB window is the largest.
            assert_eq!(
                walk(&stream, piece).unwrap(),
                FrameHeader {
                    window: 8 << 20,
                    content_size: None,
                    checksum: true
                }
                .decoder_memory(),
                "{piece}"
            );
        }
        // A large-window frame after a good one is refused as well.
        stream.extend_from_slice(&rle_frame(24, 1, 1000));
        assert!(matches!(
            walk(&stream, 100),
            Err(FrameError::WindowTooLarge { .. })
        ));
    }

    #[test]
    fn crafted_rle_frames_are_valid_zstd() {
        let frame = rle_frame(17, 3, 1000);
        assert_eq!(
            zstd::stream::decode_all(&frame[..]).unwrap(),
            vec![0u8; 3000]
        );
        assert_eq!(walk(&frame, 5).unwrap(), frame_of(&frame).decoder_memory());
    }

    #[test]
    fn sizes_read_like_sizes() {
        assert_eq!(bytes(1000), "1000 bytes");
        assert_eq!(bytes(8 << 20), "8 MiB");
        assert_eq!(bytes(9 << 19), "4.5 MiB");
        assert_eq!(bytes(3 << 30), "3 GiB");
    }
}
