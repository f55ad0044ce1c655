//! The zstd frame walker (`bazel_cache_store::zstd_frame`), which reads
//! every frame header of a client's zstd body before the decoder does, fed
//! arbitrary bytes. Beyond "never panics", it checks what the decoder's
//! guard relies on: the verdict and the memory asked for do not depend on
//! how the stream is cut into reads, no frame over the window limit gets
//! through, and the memory asked for stays within what that limit allows.
#![no_main]

use bazel_cache_store::zstd_decode::MAX_WINDOW;
use bazel_cache_store::zstd_frame::{FrameError, FrameWalker};
use libfuzzer_sys::fuzz_target;

/// The most one frame within the limit may ask for: a context, a block
/// buffer, the window and two blocks.
const MOST: u64 = 96 * 1024 + 128 * 1024 + MAX_WINDOW + 256 * 1024;

fn walk(data: &[u8], piece: usize) -> Result<u64, FrameError> {
    let mut walker = FrameWalker::new(MAX_WINDOW);
    let mut most = 0;
    for part in data.chunks(piece) {
        most = most.max(walker.scan(part)?);
    }
    Ok(most)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let whole = walk(data, data.len().max(1));
    let pieces = walk(data, usize::from(cut).max(1));
    assert_eq!(whole, pieces, "the verdict depends on the reads' sizes");
    match whole {
        Ok(memory) => assert!(memory <= MOST, "asked for {memory} bytes"),
        Err(FrameError::WindowTooLarge { window, limit }) => {
            assert!(window > limit && limit == MAX_WINDOW)
        }
        Err(e) => assert!(e.to_string().len() < 300, "{e}"),
    }
});
