//! `bazel-cache explain-miss BEFORE.json AFTER.json`: the command line.
//! Parsed by hand (two paths and two options do not need clap, and the
//! crate stays serde-only); the server binary hands its arguments here
//! before reading any configuration, as it does for `bench`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::parse::{DEFAULT_MAX_LOG_BYTES, read_log_file};

/// The subcommand's name, as the server binary's argument 1.
pub const SUBCOMMAND: &str = "explain-miss";

const PROGRAM: &str = "bazel-cache explain-miss";

const HELP: &str = "\
Why did my build miss the cache? Compares the execution logs of two Bazel
builds and lists the actions of the second that were not remote cache hits,
each with what differs from the first build: platform properties, the
command line, environment variables, input files (path and both digests).
Root causes (an action's own difference) come first; actions that missed
only because an input produced by another missed action changed follow.

Write each log with Bazel's --execution_log_json_file=PATH (both builds; a
log of an incremental build, which lists only what ran, works too).

Usage: bazel-cache explain-miss [OPTIONS] BEFORE.json AFTER.json

Options:
  --json                 print the report as JSON instead of text
  --max-log-size SIZE    refuse a log larger than SIZE (bytes, or with a
                         KiB/MiB/GiB suffix) [default: 1GiB]
  -h, --help             print this help

Exit status: 0 when both logs were read (whatever they say), 2 when an
argument or a log is bad.
";

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainArgs {
    pub before: PathBuf,
    pub after: PathBuf,
    pub json: bool,
    pub max_log_bytes: u64,
}

/// The outcome of reading the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Run(ExplainArgs),
    Help,
    Usage(String),
}

/// When argument 1 is `explain-miss`: runs it and returns its exit status.
/// Otherwise `None`, and the caller goes on with its own arguments.
pub fn run_if_invoked(args: impl IntoIterator<Item = OsString>) -> Option<ExitCode> {
    let mut args = args.into_iter();
    let _program = args.next();
    if args.next()? != SUBCOMMAND {
        return None;
    }
    Some(match parse_args(args) {
        Parsed::Help => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Parsed::Usage(message) => {
            eprintln!("{PROGRAM}: {message}\nRun `{PROGRAM} --help` for usage.");
            ExitCode::from(2)
        }
        Parsed::Run(args) => run(&args),
    })
}

/// Parses the arguments after `explain-miss`.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Parsed {
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut json = false;
    let mut max_log_bytes = DEFAULT_MAX_LOG_BYTES;
    let mut only_paths = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if only_paths || !text.starts_with('-') || text == "-" {
            paths.push(PathBuf::from(arg));
            continue;
        }
        let (flag, inline) = match text.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (text.to_string(), None),
        };
        match flag.as_str() {
            "--" => only_paths = true,
            "-h" | "--help" => return Parsed::Help,
            "--json" if inline.is_none() => json = true,
            "--max-log-size" => {
                let value = match inline
                    .or_else(|| args.next().map(|a| a.to_string_lossy().into_owned()))
                {
                    Some(v) => v,
                    None => return Parsed::Usage("--max-log-size needs a value".to_owned()),
                };
                match parse_size(&value) {
                    Some(n) => max_log_bytes = n,
                    None => {
                        return Parsed::Usage(format!(
                            "--max-log-size {value:?}: expected bytes, or a number with KiB, MiB or GiB"
                        ));
                    }
                }
            }
            _ => return Parsed::Usage(format!("unknown option {text:?}")),
        }
    }
    let mut paths = paths.into_iter();
    match (paths.next(), paths.next(), paths.next()) {
        (Some(before), Some(after), None) => Parsed::Run(ExplainArgs {
            before,
            after,
            json,
            max_log_bytes,
        }),
        (_, _, Some(extra)) => Parsed::Usage(format!(
            "expected two execution logs (BEFORE AFTER), got another: {}",
            extra.display()
        )),
        _ => Parsed::Usage("expected two execution logs: BEFORE.json AFTER.json".to_owned()),
    }
}

/// Reads both logs, prints the report; a log that cannot be read is one
/// line naming the file, and exit status 2.
pub fn run(args: &ExplainArgs) -> ExitCode {
    let read = |path: &PathBuf| {
        read_log_file(path, args.max_log_bytes).map_err(|e| {
            eprintln!("{PROGRAM}: {}: {e}", path.display());
            ExitCode::from(2)
        })
    };
    let before = match read(&args.before) {
        Ok(log) => log,
        Err(code) => return code,
    };
    let after = match read(&args.after) {
        Ok(log) => log,
        Err(code) => return code,
    };
    let report = crate::explain(&before, &after);
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    ExitCode::SUCCESS
}

/// `123`, `64KiB`, `512MiB`, `2GiB` (also `K`/`M`/`G`, `KB`/`MB`/`GB`, all
/// binary).
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Parsed {
        parse_args(args.iter().map(OsString::from))
    }

    #[test]
    fn two_paths_and_options() {
        assert_eq!(
            parse(&["a.json", "--json", "b.json", "--max-log-size=2MiB"]),
            Parsed::Run(ExplainArgs {
                before: "a.json".into(),
                after: "b.json".into(),
                json: true,
                max_log_bytes: 2 << 20,
            })
        );
        match parse(&["--max-log-size", "100", "--", "-a", "b"]) {
            Parsed::Run(a) => {
                assert_eq!(a.before, PathBuf::from("-a"));
                assert_eq!(a.max_log_bytes, 100);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&["a", "--help"]), Parsed::Help);
    }

    #[test]
    fn bad_command_lines_say_why() {
        let usage = |args: &[&str]| match parse(args) {
            Parsed::Usage(m) => m,
            other => panic!("{other:?}"),
        };
        assert!(usage(&["a"]).contains("expected two execution logs"));
        assert!(usage(&["a", "b", "c"]).contains("got another: c"));
        assert!(usage(&["a", "b", "--verbose"]).contains("unknown option"));
        assert!(usage(&["a", "b", "--max-log-size", "lots"]).contains("--max-log-size"));
        assert!(usage(&["a", "b", "--max-log-size"]).contains("needs a value"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("7"), Some(7));
        assert_eq!(parse_size("1TiB"), None);
        assert_eq!(parse_size("GiB"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
    }

    #[test]
    fn only_the_subcommand_is_taken() {
        let args = ["bazel-cache", "--dir", "x"].map(OsString::from);
        assert!(run_if_invoked(args).is_none());
        assert!(run_if_invoked([OsString::from("bazel-cache")]).is_none());
    }
}
