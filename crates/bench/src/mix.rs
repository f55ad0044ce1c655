//! What the load is made of: the blob-size mix (`--sizes 4KiB:70,1MiB:30`)
//! and the operation mix (`--mix read:90,write:10`), both lists of
//! `item:weight` where each request picks an item with probability
//! weight / total.

use std::fmt;

use crate::error::BenchError;

/// Blobs shorter than this cannot be told apart: the last 16 bytes of every
/// generated blob are its identity (see `blobs.rs`).
pub(crate) const MIN_BLOB_SIZE: u64 = 16;
/// Sizes above this are refused as a likely typo (REAPI sizes are i64; no
/// cache takes a blob this large).
pub(crate) const MAX_BLOB_SIZE: u64 = 64 << 30;

/// One entry of a weighted mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Weighted<T> {
    pub item: T,
    pub weight: u32,
}

/// Picks items with probability proportional to their weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mix<T> {
    entries: Vec<Weighted<T>>,
    total: u64,
}

impl<T: Copy> Mix<T> {
    fn new(entries: Vec<Weighted<T>>) -> Mix<T> {
        let total = entries.iter().map(|e| u64::from(e.weight)).sum();
        Mix { entries, total }
    }

    pub(crate) fn entries(&self) -> &[Weighted<T>] {
        &self.entries
    }

    /// The index of the entry that `random` (uniform over u64) selects.
    /// Entries of weight 0 are never chosen.
    pub(crate) fn pick(&self, random: u64) -> usize {
        let mut r = random % self.total;
        for (i, e) in self.entries.iter().enumerate() {
            let w = u64::from(e.weight);
            if r < w {
                return i;
            }
            r -= w;
        }
        unreachable!("the weights add up to total")
    }
}

/// Blob sizes in bytes.
pub(crate) type SizeMix = Mix<u64>;

/// The kinds of request the load generator makes. A row's size is the
/// blob's; for the action cache it is the size of the output blob the
/// ActionResult names (the ActionResult itself is a few hundred bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Op {
    /// Download blobs written before the measurement and check their hash.
    #[serde(rename = "read")]
    Read,
    /// Upload new blobs (never seen by the server before).
    #[serde(rename = "write")]
    Write,
    /// Ask which blobs are missing (HTTP `HEAD`, gRPC `FindMissingBlobs`),
    /// half of them present and half absent, and check the answer.
    #[serde(rename = "find")]
    Find,
    /// `Read` as zstd (HTTP `Accept-Encoding: zstd`, gRPC
    /// `compressed-blobs/zstd/` or a batch read accepting zstd),
    /// decompressed and hashed.
    #[serde(rename = "read-zstd")]
    ReadZstd,
    /// `Write` as zstd (HTTP `Content-Encoding: zstd`, gRPC
    /// `compressed-blobs/zstd/` or a batch update with the zstd compressor).
    #[serde(rename = "write-zstd")]
    WriteZstd,
    /// Fetch an ActionResult stored before the measurement (HTTP
    /// `GET /ac/`, gRPC `GetActionResult`) and check it is the one stored.
    #[serde(rename = "ac-read")]
    AcRead,
    /// Store a new ActionResult naming a stored blob (HTTP `PUT /ac/`,
    /// gRPC `UpdateActionResult`).
    #[serde(rename = "ac-write")]
    AcWrite,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Read,
        Op::Write,
        Op::Find,
        Op::ReadZstd,
        Op::WriteZstd,
        Op::AcRead,
        Op::AcWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Find => "find",
            Op::ReadZstd => "read-zstd",
            Op::WriteZstd => "write-zstd",
            Op::AcRead => "ac-read",
            Op::AcWrite => "ac-write",
        }
    }

    /// Whether the operation needs the prefilled CAS blobs: reads and finds
    /// use them, ActionResults name them (a server may refuse or hide an
    /// ActionResult whose outputs it lacks).
    pub(crate) fn uses_prefill(self) -> bool {
        !matches!(self, Op::Write | Op::WriteZstd)
    }

    /// Whether the operation stores something new.
    pub(crate) fn writes(self) -> bool {
        matches!(self, Op::Write | Op::WriteZstd | Op::AcWrite)
    }

    /// Whether the operation moves zstd streams.
    pub(crate) fn zstd(self) -> bool {
        matches!(self, Op::ReadZstd | Op::WriteZstd)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) type OpMix = Mix<Op>;

impl OpMix {
    /// Whether `op` has a non-zero weight.
    pub(crate) fn has(&self, op: Op) -> bool {
        self.any(|o| o == op)
    }

    /// Whether an operation of non-zero weight satisfies `test`.
    pub(crate) fn any(&self, test: impl Fn(Op) -> bool) -> bool {
        self.entries.iter().any(|e| e.weight > 0 && test(e.item))
    }
}

/// Parses `--sizes`: `4KiB:70,1MiB:30`; a missing weight is 1.
pub(crate) fn parse_sizes(spec: &str) -> Result<SizeMix, BenchError> {
    let entries = parse_list("--sizes", spec, parse_size)?;
    for (i, e) in entries.iter().enumerate() {
        if entries[..i].iter().any(|o| o.item == e.item) {
            return Err(usage(
                "--sizes",
                format!("{} is listed twice", format_size(e.item)),
            ));
        }
    }
    Ok(Mix::new(entries))
}

/// Parses `--mix`: `read:90,write:10,find:0,ac-read:5`; a missing weight
/// is 1, a missing kind is 0.
pub(crate) fn parse_ops(spec: &str) -> Result<OpMix, BenchError> {
    let entries = parse_list("--mix", spec, |s| match s.to_ascii_lowercase().as_str() {
        "read" | "get" => Ok(Op::Read),
        "write" | "put" => Ok(Op::Write),
        "find" | "head" | "contains" => Ok(Op::Find),
        "read-zstd" | "get-zstd" => Ok(Op::ReadZstd),
        "write-zstd" | "put-zstd" => Ok(Op::WriteZstd),
        "ac-read" | "ac-get" => Ok(Op::AcRead),
        "ac-write" | "ac-put" => Ok(Op::AcWrite),
        _ => Err(format!(
            "unknown operation {s:?} (expected read, write, find, read-zstd, write-zstd, \
             ac-read or ac-write)"
        )),
    })?;
    for (i, e) in entries.iter().enumerate() {
        if entries[..i].iter().any(|o| o.item == e.item) {
            return Err(usage("--mix", format!("{} is listed twice", e.item)));
        }
    }
    Ok(Mix::new(entries))
}

fn parse_list<T: Copy>(
    flag: &'static str,
    spec: &str,
    item: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<Weighted<T>>, BenchError> {
    let mut entries = Vec::new();
    for part in spec.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(usage(flag, format!("empty entry in {spec:?}")));
        }
        let (name, weight) = match part.rsplit_once(':') {
            Some((name, weight)) => {
                let weight = weight.trim().parse::<u32>().map_err(|_| {
                    usage(
                        flag,
                        format!("weight {weight:?} in {part:?} is not a whole number"),
                    )
                })?;
                (name.trim(), weight)
            }
            None => (part, 1),
        };
        let item = item(name).map_err(|m| usage(flag, m))?;
        entries.push(Weighted { item, weight });
    }
    let total: u64 = entries.iter().map(|e| u64::from(e.weight)).sum();
    if total == 0 {
        return Err(usage(flag, format!("all weights in {spec:?} are 0")));
    }
    Ok(entries)
}

/// `4096`, `4KiB`, `1MiB`, `2GiB` (also `4k`, `1M`, `2G`, and a `B`
/// suffix); binary multiples only, because `KB` means 1000 to some and 1024
/// to others.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err(format!(
            "size {s:?} does not start with a number (e.g. 4096, 4KiB, 1MiB)"
        ));
    }
    let multiplier: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "KiB" | "K" | "k" | "kiB" => 1 << 10,
        "MiB" | "M" | "m" => 1 << 20,
        "GiB" | "G" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use B, KiB, MiB or GiB: binary multiples)"
            ));
        }
    };
    let size = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("size {s:?} is too large"))?;
    if size < MIN_BLOB_SIZE {
        return Err(format!(
            "size {s:?} is below {MIN_BLOB_SIZE} bytes, the shortest blob the generator can keep distinct"
        ));
    }
    if size > MAX_BLOB_SIZE {
        return Err(format!(
            "size {s:?} is above {}",
            format_size(MAX_BLOB_SIZE)
        ));
    }
    Ok(size)
}

/// `4 KiB`, `1 MiB`, `1536 B`: exact, in the largest unit that divides.
pub(crate) fn format_size(size: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if size >= 1 << shift && size.is_multiple_of(1 << shift) {
            return format!("{} {unit}", size >> shift);
        }
    }
    format!("{size} B")
}

fn usage(flag: &'static str, message: String) -> BenchError {
    BenchError::Usage { flag, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units_and_weights() {
        let mix = parse_sizes("4KiB:70, 1MiB:30,512").unwrap();
        let got: Vec<(u64, u32)> = mix.entries().iter().map(|e| (e.item, e.weight)).collect();
        assert_eq!(got, [(4096, 70), (1 << 20, 30), (512, 1)]);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("100B").unwrap(), 100);
    }

    #[test]
    fn bad_sizes_are_named() {
        for (spec, fragment) in [
            ("4KB", "unknown unit \"KB\""),
            ("KiB", "does not start with a number"),
            ("8", "below 16 bytes"),
            ("4KiB:x", "weight \"x\""),
            ("4KiB:0", "all weights"),
            ("4KiB,,1MiB", "empty entry"),
            ("4KiB,4096", "listed twice"),
            ("99999999999GiB", "too large"),
            ("128GiB", "above 64 GiB"),
        ] {
            let err = parse_sizes(spec).unwrap_err().to_string();
            assert!(err.contains(fragment), "{spec}: {err}");
            assert!(err.starts_with("--sizes: "), "{spec}: {err}");
        }
    }

    #[test]
    fn ops() {
        let mix = parse_ops("read:90,write:10").unwrap();
        assert!(mix.has(Op::Read) && mix.has(Op::Write) && !mix.has(Op::Find));
        let mix = parse_ops("put:0,get").unwrap();
        assert!(!mix.has(Op::Write) && mix.has(Op::Read));
        assert!(
            parse_ops("delete:1")
                .unwrap_err()
                .to_string()
                .contains("unknown operation")
        );
        assert!(parse_ops("read,read:2").is_err());
        let mix = parse_ops("ac-get:1,AC-PUT:2,get-zstd,write-zstd:0").unwrap();
        assert!(mix.has(Op::AcRead) && mix.has(Op::AcWrite) && mix.has(Op::ReadZstd));
        assert!(!mix.has(Op::WriteZstd) && !mix.has(Op::Read));
        assert!(mix.any(Op::zstd) && mix.any(Op::uses_prefill));
        assert!(parse_ops("ac-read,ac-get").is_err());
        assert_eq!(serde_json::to_string(&Op::AcWrite).unwrap(), "\"ac-write\"");
    }

    #[test]
    fn pick_follows_weights() {
        let mix = parse_ops("read:3,write:0,find:1").unwrap();
        let mut counts = [0; 3];
        for r in 0..4000u64 {
            counts[mix.pick(r)] += 1;
        }
        assert_eq!(counts, [3000, 0, 1000]);
    }

    #[test]
    fn sizes_print_exactly() {
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(1536), "1536 B");
        assert_eq!(format_size(3 << 30), "3 GiB");
    }
}
