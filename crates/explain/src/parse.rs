//! Reading an execution log: the JSON form Bazel writes with
//! `--execution_log_json_file` is a stream of pretty-printed `SpawnExec`
//! objects one after another (not an array), so it is read with serde_json's
//! stream deserializer. An array of them is accepted too (what a user gets
//! after piping the stream through `jq -s`). The binary forms are refused
//! with a message that says which flag to use instead.
//!
//! Logs are bounded ([`DEFAULT_MAX_LOG_BYTES`] unless the caller passes its
//! own limit): the parsed spawns take memory of the order of the file.

use std::path::Path;

use crate::log::{ExecLog, Spawn};

/// The largest log [`parse_log`] and the CLI accept unless told otherwise:
/// 1 GiB, a JSON log of some tens of thousands of actions with their
/// inputs. The web page passes its own (upload) limit.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 1 << 30;

/// The magic number that starts a zstd frame: Bazel 7's
/// `--execution_log_compact_file`.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Why a log could not be read. Every variant says where, when there is a
/// where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The log is larger than the limit.
    TooLarge { size: u64, limit: u64 },
    /// A zstd stream: Bazel 7's compact execution log.
    Compact,
    /// Not JSON at all (e.g. `--execution_log_binary_file`'s
    /// varint-delimited protobuf).
    NotJson { offset: usize, byte: u8 },
    /// Invalid JSON, or JSON that is not a `SpawnExec`: which object of the
    /// stream (0-based), where in the file (1-based line and column), what.
    Json {
        spawn: usize,
        line: usize,
        column: usize,
        message: String,
    },
    /// The file could not be read.
    Io { message: String },
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::TooLarge { size, limit } => write!(
                f,
                "the execution log is {size} bytes, more than the limit of {limit} bytes"
            ),
            ParseError::Compact => f.write_str(
                "compact execution logs are not supported; use --execution_log_json_file",
            ),
            ParseError::NotJson { offset, byte } => write!(
                f,
                "not a JSON execution log (byte {offset} is 0x{byte:02x}, not `{{`); \
                 write the log with --execution_log_json_file \
                 (--execution_log_binary_file is not supported)"
            ),
            ParseError::Json {
                spawn,
                line,
                column,
                message,
            } => write!(
                f,
                "spawn {} of the execution log, line {line} column {column}: {message}",
                spawn + 1
            ),
            ParseError::Io { message } => f.write_str(message),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses a JSON execution log of at most [`DEFAULT_MAX_LOG_BYTES`]. An
/// empty log (a build that ran nothing) has no spawns.
pub fn parse_log(bytes: &[u8]) -> Result<ExecLog, ParseError> {
    parse_log_limited(bytes, DEFAULT_MAX_LOG_BYTES)
}

/// [`parse_log`] with the caller's size limit.
pub fn parse_log_limited(bytes: &[u8], max_bytes: u64) -> Result<ExecLog, ParseError> {
    let size = bytes.len() as u64;
    if size > max_bytes {
        return Err(ParseError::TooLarge {
            size,
            limit: max_bytes,
        });
    }
    if bytes.starts_with(&ZSTD_MAGIC) {
        return Err(ParseError::Compact);
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match bytes.iter().position(|b| !b.is_ascii_whitespace()) {
        None => return Ok(ExecLog::default()),
        Some(at) if bytes[at] == b'{' => {}
        Some(at) if bytes[at] == b'[' => {
            let spawns: Vec<Spawn> =
                serde_json::from_slice(bytes).map_err(|e| json_error(&e, bytes, None))?;
            return Ok(ExecLog { spawns });
        }
        Some(offset) => {
            return Err(ParseError::NotJson {
                offset,
                byte: bytes[offset],
            });
        }
    }
    let mut spawns = Vec::new();
    for spawn in serde_json::Deserializer::from_slice(bytes).into_iter::<Spawn>() {
        match spawn {
            Ok(s) => spawns.push(s),
            Err(e) => return Err(json_error(&e, bytes, Some(spawns.len()))),
        }
    }
    Ok(ExecLog { spawns })
}

/// Reads and parses the log at `path`, refusing one over `max_bytes`
/// before reading it.
pub fn read_log_file(path: &Path, max_bytes: u64) -> Result<ExecLog, ParseError> {
    use std::io::Read;
    let io = |e: std::io::Error| ParseError::Io {
        message: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > max_bytes {
        return Err(ParseError::TooLarge {
            size,
            limit: max_bytes,
        });
    }
    // Not trusting the size (a pipe, a growing file): never read past the limit.
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    parse_log_limited(&bytes, max_bytes)
}

/// A serde_json error as a [`ParseError::Json`]: its message without the
/// position it appends (kept in fields of their own). `spawn` is the index
/// of the object being read, or for an array, found from the position.
fn json_error(e: &serde_json::Error, bytes: &[u8], spawn: Option<usize>) -> ParseError {
    let (line, column) = (e.line(), e.column());
    let full = e.to_string();
    let suffix = format!(" at line {line} column {column}");
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    let spawn = spawn.unwrap_or_else(|| objects_before(bytes, line, column));
    ParseError::Json {
        spawn,
        line,
        column,
        message,
    }
}

/// How many top-level array elements start before `line`:`column` (for an
/// error inside an array log): counts `{` at depth 1, skipping strings.
fn objects_before(bytes: &[u8], line: usize, column: usize) -> usize {
    let (mut cur_line, mut cur_col) = (1, 0);
    let (mut depth, mut in_string, mut escaped, mut count) = (0usize, false, false, 0usize);
    for &b in bytes {
        if b == b'\n' {
            cur_line += 1;
            cur_col = 0;
        } else {
            cur_col += 1;
        }
        if cur_line > line || (cur_line == line && cur_col >= column) {
            break;
        }
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                if depth == 1 && b == b'{' {
                    count += 1;
                }
                depth += 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    count.saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two spawns as Bazel 4.2.3 writes them (trimmed), back to back.
    const STREAM: &str = r#"{
  "commandArgs": ["/bin/bash", "-c", "tr a-z A-Z \u003c src/a.txt \u003e bazel-out/k8-fastbuild/bin/upper.txt"],
  "environmentVariables": [{
    "name": "PATH",
    "value": "/bin:/usr/bin:/usr/local/bin"
  }],
  "platform": {
    "properties": []
  },
  "inputs": [{
    "path": "src/a.txt",
    "digest": {
      "hash": "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
      "sizeBytes": "6",
      "hashFunctionName": "SHA-256"
    }
  }],
  "listedOutputs": ["bazel-out/k8-fastbuild/bin/upper.txt"],
  "remotable": true,
  "cacheable": true,
  "timeoutMillis": "0",
  "progressMessage": "Executing genrule //:upper",
  "mnemonic": "Genrule",
  "actualOutputs": [],
  "runner": "linux-sandbox",
  "remoteCacheHit": false,
  "status": "",
  "exitCode": 0,
  "remoteCacheable": true
}{
  "listedOutputs": ["bazel-out/k8-fastbuild/bin/count.txt"],
  "mnemonic": "Genrule",
  "runner": "remote cache hit",
  "remoteCacheHit": true,
  "inputs": [{"path": "x", "digest": {"hash": "ab", "sizeBytes": 7}}]
}
"#;

    #[test]
    fn a_stream_of_objects_parses_with_unknown_fields_ignored() {
        let log = parse_log(STREAM.as_bytes()).unwrap();
        assert_eq!(log.spawns.len(), 2);
        let s = &log.spawns[0];
        assert_eq!(
            s.command_args[2],
            "tr a-z A-Z < src/a.txt > bazel-out/k8-fastbuild/bin/upper.txt"
        );
        assert_eq!(s.environment_variables[0].name, "PATH");
        assert_eq!(s.inputs[0].digest.as_ref().unwrap().size_bytes, 6);
        assert_eq!(
            s.inputs[0].digest.as_ref().unwrap().hash_function_name,
            "SHA-256"
        );
        assert!(s.cacheable && s.remotable && !s.remote_cache_hit);
        assert_eq!(s.runner, "linux-sandbox");
        let hit = &log.spawns[1];
        assert!(hit.remote_cache_hit && !hit.cacheable && hit.command_args.is_empty());
        assert_eq!(hit.inputs[0].digest.as_ref().unwrap().size_bytes, 7);
    }

    #[test]
    fn an_array_of_spawns_and_an_empty_log_parse() {
        let array = format!("[{}]", STREAM.replace("}{", "},{"));
        assert_eq!(parse_log(array.as_bytes()).unwrap().spawns.len(), 2);
        assert_eq!(parse_log(b"").unwrap().spawns.len(), 0);
        assert_eq!(parse_log(b" \n ").unwrap().spawns.len(), 0);
    }

    #[test]
    fn errors_say_which_spawn_and_where() {
        let bad = STREAM.replace(r#""sizeBytes": 7"#, r#""sizeBytes": "seven""#);
        let err = parse_log(bad.as_bytes()).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                ParseError::Json {
                    spawn: 1,
                    line: 35,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            text.starts_with("spawn 2 of the execution log, line 35 column"),
            "{text}"
        );
        assert!(
            text.contains("sizeBytes \"seven\" is not an integer"),
            "{text}"
        );

        let bad_array = format!("[{}]", bad.replace("}{", "},{"));
        let err = parse_log(bad_array.as_bytes()).unwrap_err();
        assert!(matches!(err, ParseError::Json { spawn: 1, .. }), "{err:?}");

        let err = parse_log(br#"{"commandArgs": 3}"#).unwrap_err();
        assert!(err.to_string().contains("line 1 column"), "{err}");
        assert!(err.to_string().contains("invalid type: integer"), "{err}");
    }

    #[test]
    fn binary_logs_and_oversize_logs_are_refused_with_a_reason() {
        let compact = [0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0];
        assert_eq!(parse_log(&compact).unwrap_err(), ParseError::Compact);
        assert_eq!(
            ParseError::Compact.to_string(),
            "compact execution logs are not supported; use --execution_log_json_file"
        );
        // --execution_log_binary_file: varint-delimited protobuf.
        let err = parse_log(b"\x0a\x85\x03\x0a\x09/bin/bash").unwrap_err();
        assert_eq!(
            err,
            ParseError::NotJson {
                offset: 1,
                byte: 0x85
            }
        );
        assert!(err.to_string().contains("--execution_log_json_file"));
        let err = parse_log_limited(STREAM.as_bytes(), 100).unwrap_err();
        assert_eq!(
            err,
            ParseError::TooLarge {
                size: STREAM.len() as u64,
                limit: 100
            }
        );
    }

    #[test]
    fn read_log_file_checks_the_size_before_reading() {
        let dir = std::env::temp_dir().join(format!("explain-parse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.json");
        std::fs::write(&path, STREAM).unwrap();
        assert_eq!(read_log_file(&path, 1 << 20).unwrap().spawns.len(), 2);
        assert!(matches!(
            read_log_file(&path, 10),
            Err(ParseError::TooLarge { limit: 10, .. })
        ));
        let missing = read_log_file(&dir.join("absent.json"), 10).unwrap_err();
        assert!(matches!(missing, ParseError::Io { .. }), "{missing:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every truncation and many single-byte corruptions of a real log give
    /// a log or an error, never a panic.
    #[test]
    fn garbage_never_panics() {
        let bytes = STREAM.as_bytes();
        for end in 0..bytes.len() {
            let _ = parse_log(&bytes[..end]);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..4000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut copy = bytes.to_vec();
            let at = (state % copy.len() as u64) as usize;
            copy[at] = (state >> 32) as u8;
            if let Err(e) = parse_log(&copy) {
                assert!(!e.to_string().is_empty());
            }
        }
    }
}
