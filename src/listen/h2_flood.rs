//! A bound on PING and SETTINGS floods over HTTP/2, on both ports.
//!
//! h2 (0.4) answers every PING with a PONG and every SETTINGS with an ACK.
//! It bounds the memory this takes (one answer pending at a time; it stops
//! reading until that is written) but not the rate: a client that reads
//! the answers keeps the server answering as fast as it can send. A
//! SETTINGS frame also makes the server walk every open stream when the
//! window size changes. Rapid reset, CONTINUATION and small-DATA floods h2
//! bounds itself (see `defaults.rs`).
//!
//! The rule follows grpc-go's "ping strikes": a PING or SETTINGS (not an
//! ACK) from the client is free when the server has sent DATA or HEADERS
//! since the previous one, so flow-control (BDP) pings, which a client
//! sends as it receives data, never count, nor do keepalive pings that
//! come seconds apart. More than [`CONTROL_FRAMES_PER_SECOND`] others
//! within a second close the connection. The frames are seen by scanning
//! the plaintext both ways (9-byte frame headers; payloads are skipped), so
//! it costs a few instructions per frame and nothing per byte.

use std::time::{Duration, Instant};

/// Unearned PING and SETTINGS frames (see the module doc) allowed within
/// one second. A well-behaved client sends a handful per minute (its
/// initial SETTINGS, keepalive pings); a flood sends thousands.
pub(crate) const CONTROL_FRAMES_PER_SECOND: u32 = 100;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;
const FRAME_HEADER_LEN: usize = 9;

/// Follows the frame boundaries of one direction of an HTTP/2 connection.
#[derive(Debug, Default)]
pub(crate) struct FrameScanner {
    header: [u8; FRAME_HEADER_LEN],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
}

impl FrameScanner {
    /// Feeds the next bytes of the stream; calls `frame(type, flags)` for
    /// each frame whose header completes in them. Stops early, returning
    /// the error, when `frame` fails.
    pub(crate) fn feed<E>(
        &mut self,
        mut bytes: &[u8],
        mut frame: impl FnMut(u8, u8) -> Result<(), E>,
    ) -> Result<(), E> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == FRAME_HEADER_LEN {
                let h = self.header;
                self.have = 0;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                frame(h[3], h[4])?;
            }
        }
        Ok(())
    }
}

/// The client sent more unearned PING/SETTINGS frames than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flood;

/// The PING/SETTINGS budget of one connection.
#[derive(Debug, Default)]
pub(crate) struct ControlFrames {
    /// The server sent DATA or HEADERS since the last counted frame.
    earned: bool,
    window_start: Option<Instant>,
    in_window: u32,
}

impl ControlFrames {
    /// A frame from the client.
    pub(crate) fn received(&mut self, kind: u8, flags: u8) -> Result<(), Flood> {
        if !matches!(kind, PING | SETTINGS) || flags & ACK != 0 {
            return Ok(());
        }
        if std::mem::take(&mut self.earned) {
            return Ok(());
        }
        let now = Instant::now();
        match self.window_start {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window_start = Some(now);
                self.in_window = 0;
            }
        }
        self.in_window += 1;
        if self.in_window > CONTROL_FRAMES_PER_SECOND {
            return Err(Flood);
        }
        Ok(())
    }

    /// A frame from the server.
    pub(crate) fn sent(&mut self, kind: u8) {
        if matches!(kind, DATA | HEADERS) {
            self.earned = true;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A frame as bytes: header and payload.
    pub(crate) fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub(crate) fn ping() -> Vec<u8> {
        frame(PING, 0, &[0; 8])
    }

    fn frames_in(chunks: &[&[u8]]) -> Vec<(u8, u8)> {
        let mut scanner = FrameScanner::default();
        let mut seen = Vec::new();
        for chunk in chunks {
            scanner
                .feed::<()>(chunk, |kind, flags| {
                    seen.push((kind, flags));
                    Ok(())
                })
                .unwrap();
        }
        seen
    }

    #[test]
    fn the_scanner_finds_frames_across_any_split() {
        let mut stream = frame(SETTINGS, 0, &[0; 12]);
        stream.extend(frame(HEADERS, 4, &[1; 300]));
        stream.extend(ping());
        stream.extend(frame(PING, ACK, &[0; 8]));
        stream.extend(frame(DATA, 1, &[]));
        let expected = vec![
            (SETTINGS, 0),
            (HEADERS, 4),
            (PING, 0),
            (PING, ACK),
            (DATA, 1),
        ];
        assert_eq!(frames_in(&[&stream]), expected);
        for split in [1, 5, 9, 10, 100, 321] {
            let (a, b) = stream.split_at(split);
            assert_eq!(frames_in(&[a, b]), expected, "split at {split}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frames_in(&bytes), expected, "byte by byte");
    }

    #[test]
    fn a_ping_flood_is_stopped() {
        let mut budget = ControlFrames::default();
        let results: Vec<_> = (0..=CONTROL_FRAMES_PER_SECOND)
            .map(|_| budget.received(PING, 0))
            .collect();
        assert!(
            results[..CONTROL_FRAMES_PER_SECOND as usize]
                .iter()
                .all(Result::is_ok)
        );
        assert_eq!(results.last(), Some(&Err(Flood)));
    }

    #[test]
    fn settings_count_too_but_acks_do_not() {
        let mut budget = ControlFrames::default();
        for _ in 0..10 * CONTROL_FRAMES_PER_SECOND {
            budget.received(PING, ACK).unwrap();
            budget.received(SETTINGS, ACK).unwrap();
            budget.received(DATA, 0).unwrap();
            budget.received(HEADERS, 0).unwrap();
        }
        let flooded =
            (0..=CONTROL_FRAMES_PER_SECOND).any(|_| budget.received(SETTINGS, 0).is_err());
        assert!(flooded);
    }

    /// Flow-control pings come one per batch of DATA the server sends:
    /// however many, they never count.
    #[test]
    fn pings_that_follow_data_are_free() {
        let mut budget = ControlFrames::default();
        for _ in 0..100 * CONTROL_FRAMES_PER_SECOND {
            budget.sent(DATA);
            budget.received(PING, 0).unwrap();
            budget.sent(PING);
        }
        for _ in 0..100 * CONTROL_FRAMES_PER_SECOND {
            budget.sent(HEADERS);
            budget.received(PING, 0).unwrap();
        }
        // A PONG or a SETTINGS ACK earns nothing.
        budget.sent(PING);
        budget.sent(SETTINGS);
        let flooded = (0..=CONTROL_FRAMES_PER_SECOND).any(|_| budget.received(PING, 0).is_err());
        assert!(flooded);
    }
}
