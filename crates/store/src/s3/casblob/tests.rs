//! Unit tests of the casblob codec: round trips, bazel-remote's golden
//! layouts, and malformed, truncated and mutated input.

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
