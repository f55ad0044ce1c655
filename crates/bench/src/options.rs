//! The command line of `bazel-cache bench` (and of the standalone
//! `bazel-cache-bench`, the same arguments) and its validation into
//! [`Options`]; every bad value is reported with the flag it came from.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::blobs::Content;
use crate::error::BenchError;
use crate::mix::{self, OpMix, SizeMix};
use crate::runner::Load;
use crate::server_cpu::CpuSource;
use crate::target::Target;
use crate::tls::TlsFiles;
use bazel_cache_digest::{DigestFunction, UnsupportedDigestFunction};

/// The command line of `bazel-cache bench`, and of `bazel-cache-bench`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "bench",
    rename_all = "snake_case",
    // As the server's flags: the last occurrence wins.
    args_override_self = true,
    // A cache to measure, or only this machine's hashing rate.
    group = clap::ArgGroup::new("what").required(true).args(["url", "hash_rate"]),
    about = "Measure a Bazel remote cache: throughput, latency percentiles and errors under a configurable load",
    after_help = "Reads are verified by hashing what comes back. The exit status is 0 when every \
                  request succeeded, 1 when some failed (the report says which), 2 when the run \
                  could not start (bad option, unreachable cache)."
)]
pub struct BenchArgs {
    /// The cache: http://, https://, grpc:// or grpcs:// host:port. user:password@ sends basic
    /// auth; an HTTP path is a prefix before /cas/.
    #[arg(value_name = "URL")]
    pub url: Option<String>,
    /// Workers, each with one request in flight.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub concurrency: usize,
    /// Blob sizes and their weights (B, KiB, MiB, GiB).
    #[arg(long, value_name = "SIZE:WEIGHT,...", default_value = "4KiB")]
    pub sizes: String,
    /// Operations and their weights: read (GET / BatchReadBlobs / ByteStream.Read), write (PUT /
    /// BatchUpdateBlobs / ByteStream.Write), find (HEAD / FindMissingBlobs); read-zstd and
    /// write-zstd (the same as zstd streams: Accept-Encoding / Content-Encoding: zstd,
    /// compressed-blobs/zstd/); ac-read and ac-write (GET / PUT /ac/, GetActionResult /
    /// UpdateActionResult of an ActionResult naming one stored blob of the size).
    #[arg(long, value_name = "OP:WEIGHT,...", default_value = "read:90,write:10")]
    pub mix: String,
    /// How long to measure (Go syntax: 30s, 2m). Default 10s unless --requests is given.
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Stop after this many measured requests.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Load that is not measured, before the measurement (fills connection pools).
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub warmup: String,
    /// Blobs of each size to read from, uploaded first if missing [default: 1000, at most 256 MiB
    /// per size].
    #[arg(long, value_name = "N")]
    pub prefill: Option<u64>,
    /// gRPC: blobs per BatchUpdateBlobs/BatchReadBlobs/FindMissingBlobs call, within the
    /// server's batch limit; 0: no batch calls, ByteStream for every blob.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub batch: usize,
    /// Blob contents that zstd compresses about 3:1, like object files [default: random,
    /// incompressible].
    #[arg(long)]
    pub compressible: bool,
    /// The hash blobs are named by, as Bazel's --digest_function: sha256 (bazel-remote's
    /// protocol) or blake3 (HTTP: /blake3/cas/ and /blake3/ac/ paths; gRPC: the
    /// digest_function field and blobs/blake3/ resource names). Reads are verified with it.
    #[arg(
        long,
        value_name = "FUNCTION",
        alias = "digest-function",
        default_value = "sha256",
        value_parser = clap::builder::PossibleValuesParser::new(["sha256", "blake3"]),
        ignore_case = true
    )]
    pub digest_function: String,
    /// Measure nothing on the network: print this machine's single-threaded hashing rate of
    /// SHA-256 and BLAKE3 (1 MiB updates, as the server hashes bodies) and exit; --duration is
    /// the time per function [default: 2s]. No URL needed.
    #[arg(long, alias = "hash-rate")]
    pub hash_rate: bool,
    /// The server's Prometheus page, read before and after the measurement for
    /// process_cpu_seconds_total: the report gives the server's CPU per operation [default for
    /// http(s):// targets: /metrics on the same host and port].
    #[arg(long, value_name = "URL", alias = "metrics-url")]
    pub metrics_url: Option<String>,
    /// Measure the server's CPU from /proc instead: this process, its threads and its
    /// descendants (e.g. nginx's workers); the server must run on this machine.
    #[arg(
        long,
        value_name = "PID",
        alias = "server-pid",
        conflicts_with = "metrics_url"
    )]
    pub server_pid: Option<u32>,
    /// gRPC: HTTP/2 connections to spread the workers over [default: one per worker].
    #[arg(long, value_name = "N")]
    pub connections: Option<usize>,
    /// gRPC: bytes per ByteStream message.
    #[arg(long, value_name = "SIZE", default_value = "1MiB")]
    pub chunk_size: String,
    /// REAPI instance name (HTTP: appended to the URL's path).
    #[arg(long, value_name = "NAME", default_value = "")]
    pub instance_name: String,
    /// CA certificates (PEM) to check the server with, instead of the system's.
    #[arg(long, value_name = "PATH")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS; needs --key.
    #[arg(long, value_name = "PATH", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "PATH", requires = "cert")]
    pub key: Option<PathBuf>,
    /// A request not answered within this long counts as an error.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub timeout: String,
    /// Namespace of the blobs written (default: new each run, so writes are never of blobs the
    /// server already has).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not check afterwards that acknowledged writes are stored.
    #[arg(long)]
    pub no_write_check: bool,
}

/// The server binary, whose `bench` subcommand this is.
const SERVER: &str = "bazel-cache";
/// The standalone binary (`src/main.rs`).
const STANDALONE: &str = "bazel-cache-bench";

/// The `bench` subcommand's arguments when the command line (program name
/// first) starts with `bench`. The binary asks this before reading any
/// server configuration: the load generator is a client, and a server
/// setting in the environment (or an unusable one) must not stop it. Its
/// help and errors therefore list only its own options; `bazel-cache
/// --help` lists the subcommand (declared in `config::cli`).
pub fn from_command_line<I, T>(args: I) -> Result<Option<BenchArgs>, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut args = args.into_iter().map(Into::into);
    let program = program_name(args.next(), SERVER);
    let rest: Vec<OsString> = args.collect();
    if rest.first().is_none_or(|a| a != "bench") {
        return Ok(None);
    }
    // `bench` stands where clap expects the program name.
    parse_as(format!("{program} bench"), rest).map(Some)
}

/// The arguments of the standalone `bazel-cache-bench` binary: the command
/// line (program name first) without the word `bench`, otherwise the same
/// as `bazel-cache bench`'s. Help and errors name the program.
pub fn from_standalone_command_line<I, T>(args: I) -> Result<BenchArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut args = args.into_iter().map(Into::into);
    let program = program_name(args.next(), STANDALONE);
    parse_as(program.clone(), std::iter::once(program.into()).chain(args))
}

/// The file name of `arg0`, or `default` without one.
fn program_name(arg0: Option<OsString>, default: &str) -> String {
    arg0.as_deref()
        .map(Path::new)
        .and_then(Path::file_name)
        .map_or_else(|| default.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// Parses `args` (the first is skipped, as a program name) with help and
/// usage naming the program `bin_name`.
fn parse_as(
    bin_name: String,
    args: impl IntoIterator<Item = OsString>,
) -> Result<BenchArgs, clap::Error> {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let matches = BenchArgs::command()
        .bin_name(bin_name)
        .try_get_matches_from(args)?;
    BenchArgs::from_arg_matches(&matches)
}

/// Validated options.
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) target: Target,
    pub(crate) tls: TlsFiles,
    pub(crate) instance_name: String,
    pub(crate) sizes: SizeMix,
    pub(crate) mix: OpMix,
    pub(crate) load: Load,
    pub(crate) prefill: Option<u64>,
    /// 0: ByteStream only.
    pub(crate) batch: usize,
    pub(crate) content: Content,
    /// What blobs are named by and reads are checked with.
    pub(crate) digest_function: DigestFunction,
    pub(crate) cpu: CpuSource,
    pub(crate) connections: usize,
    pub(crate) chunk_size: usize,
    pub(crate) timeout: Duration,
    /// Write namespace; `None` = from the clock.
    pub(crate) seed: Option<u64>,
    pub(crate) check_writes: bool,
}

impl Options {
    /// Parses the words after `bench` (e.g. `["grpc://h:9092",
    /// "--sizes", "1MiB"]`), for programs that drive the load generator.
    pub fn parse<I, T>(args: I) -> Result<Options, BenchError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args = BenchArgs::try_parse_from(
            std::iter::once(OsString::from("bench")).chain(args.into_iter().map(Into::into)),
        )
        .map_err(|e| BenchError::Usage {
            flag: "command line",
            message: e.to_string(),
        })?;
        Options::from_args(&args)
    }

    pub(crate) fn from_args(args: &BenchArgs) -> Result<Options, BenchError> {
        let url = args.url.as_deref().ok_or_else(|| BenchError::Usage {
            flag: "URL",
            message: "the cache to measure is missing".to_owned(),
        })?;
        let target = Target::parse(url)?;
        let duration = |flag: &'static str, s: &str| {
            config_duration(s).map_err(|message| BenchError::Usage { flag, message })
        };
        let positive = |flag: &'static str, n: usize| {
            if n == 0 || n > 100_000 {
                Err(BenchError::Usage {
                    flag,
                    message: format!("{n} is not between 1 and 100000"),
                })
            } else {
                Ok(n)
            }
        };
        let concurrency = positive("--concurrency", args.concurrency)?;
        // 0 is allowed: no batch calls.
        let batch = match args.batch {
            0 => 0,
            n => positive("--batch", n)?,
        };
        let connections = positive("--connections", args.connections.unwrap_or(concurrency))?;
        let chunk_size = mix::parse_size(&args.chunk_size)
            .ok()
            .filter(|c| *c <= 16 << 20)
            .ok_or_else(|| BenchError::Usage {
                flag: "--chunk_size",
                message: format!("{:?} is not a size from 16 B to 16 MiB", args.chunk_size),
            })? as usize;
        let run_for = match &args.duration {
            Some(d) => Some(duration("--duration", d)?),
            None if args.requests.is_some() => None,
            None => Some(Duration::from_secs(10)),
        };
        if run_for == Some(Duration::ZERO) {
            return Err(BenchError::Usage {
                flag: "--duration",
                message: "must be longer than 0".to_owned(),
            });
        }
        if args.requests == Some(0) {
            return Err(BenchError::Usage {
                flag: "--requests",
                message: "must be at least 1".to_owned(),
            });
        }
        if args.prefill.is_some_and(|n| n > 1_000_000) {
            return Err(BenchError::Usage {
                flag: "--prefill",
                message: "at most 1000000 blobs per size".to_owned(),
            });
        }
        let timeout = duration("--timeout", &args.timeout)?;
        if timeout.is_zero() {
            return Err(BenchError::Usage {
                flag: "--timeout",
                message: "must be longer than 0".to_owned(),
            });
        }
        let tls = TlsFiles {
            ca: args.cacert.clone(),
            client: args.cert.clone().zip(args.key.clone()),
        };
        if !target.tls && !tls.is_empty() {
            return Err(BenchError::Usage {
                flag: if tls.ca.is_some() {
                    "--cacert"
                } else {
                    "--cert"
                },
                message: format!(
                    "TLS files need an https:// or grpcs:// URL, not {}://",
                    target.scheme()
                ),
            });
        }
        let instance_name = args.instance_name.trim_matches('/').to_owned();
        if instance_name.split('/').any(|s| s == "." || s == "..") {
            return Err(BenchError::Usage {
                flag: "--instance_name",
                message: "may not contain . or .. segments".to_owned(),
            });
        }
        let digest_function =
            args.digest_function
                .parse()
                .map_err(|e: UnsupportedDigestFunction| BenchError::Usage {
                    flag: "--digest_function",
                    message: e.to_string(),
                })?;
        let cpu = CpuSource::from_args(&target, args.metrics_url.as_deref(), args.server_pid)?;
        Ok(Options {
            target,
            tls,
            instance_name,
            sizes: mix::parse_sizes(&args.sizes)?,
            mix: mix::parse_ops(&args.mix)?,
            load: Load {
                concurrency,
                duration: run_for,
                requests: args.requests,
                warmup: duration("--warmup", &args.warmup)?,
            },
            prefill: args.prefill,
            batch,
            content: if args.compressible {
                Content::Compressible
            } else {
                Content::Random
            },
            digest_function,
            cpu,
            connections,
            chunk_size,
            timeout,
            seed: args.seed,
            check_writes: !args.no_write_check,
        })
    }
}

fn config_duration(s: &str) -> Result<Duration, String> {
    bazel_cache_digest::parse_go_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mix::Op;

    fn parse(args: &[&str]) -> Result<Options, BenchError> {
        Options::parse(args.iter().copied())
    }

    #[test]
    fn defaults() {
        let o = parse(&["grpc://127.0.0.1:9092"]).unwrap();
        assert_eq!(o.load.concurrency, 16);
        assert_eq!(o.connections, 16);
        assert_eq!(o.load.duration, Some(Duration::from_secs(10)));
        assert_eq!(o.load.requests, None);
        assert_eq!(o.load.warmup, Duration::from_secs(1));
        assert_eq!(o.chunk_size, 1 << 20);
        assert!(o.mix.has(Op::Read) && o.mix.has(Op::Write) && !o.mix.has(Op::Find));
        assert_eq!((o.batch, o.content), (1, Content::Random));
        assert_eq!(o.digest_function, DigestFunction::Sha256);
        assert_eq!(o.cpu, CpuSource::None);
        // The digest function, in the spellings of this crate and of Bazel.
        for spelling in ["--digest_function", "--digest-function"] {
            for name in ["blake3", "BLAKE3"] {
                let o = parse(&["http://h", spelling, name]).unwrap();
                assert_eq!(o.digest_function, DigestFunction::Blake3);
            }
        }
        // --batch 0: ByteStream only; the spellings of the CPU flags.
        let o = parse(&[
            "grpc://h:1",
            "--batch",
            "0",
            "--compressible",
            "--server-pid",
            "7",
        ])
        .unwrap();
        assert_eq!((o.batch, o.content), (0, Content::Compressible));
        assert_eq!(o.cpu, CpuSource::Pid(7));
        let o = parse(&["grpc://h:1", "--metrics-url", "http://h:2"]).unwrap();
        assert!(matches!(o.cpu, CpuSource::Metrics { explicit: true, .. }));
        // --requests alone means no time limit.
        let o = parse(&["http://h", "--requests", "5"]).unwrap();
        assert_eq!((o.load.duration, o.load.requests), (None, Some(5)));
    }

    #[test]
    fn server_subcommand_and_standalone_take_the_same_arguments() {
        let args = ["http://h:8080", "--concurrency", "3", "--json"];
        let sub = from_command_line(["/usr/bin/bazel-cache", "bench"].into_iter().chain(args))
            .unwrap()
            .expect("a bench command line");
        let alone =
            from_standalone_command_line(["/usr/bin/bazel-cache-bench"].into_iter().chain(args))
                .unwrap();
        for a in [&sub, &alone] {
            assert_eq!(
                (a.url.as_deref(), a.concurrency, a.json),
                (Some("http://h:8080"), 3, true)
            );
        }
        // Not `bench`: the server's command line.
        assert!(
            from_command_line(["bazel-cache", "--dir", "/x"])
                .unwrap()
                .is_none()
        );
        assert!(from_command_line(["bazel-cache"]).unwrap().is_none());
        // The standalone binary does not take the subcommand word.
        let err =
            from_standalone_command_line(["bazel-cache-bench", "bench", "http://h"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn help_and_usage_name_the_program() {
        let help = |r: Result<BenchArgs, clap::Error>| {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
            e.to_string()
        };
        let sub = help(
            from_command_line(["/opt/bin/bazel-cache", "bench", "--help"]).map(Option::unwrap),
        );
        assert!(
            sub.contains("Usage: bazel-cache bench [OPTIONS] <URL|--hash_rate>"),
            "{sub}"
        );
        let alone = help(from_standalone_command_line([
            "/opt/bin/bazel-cache-bench",
            "--help",
        ]));
        assert!(
            alone.contains("Usage: bazel-cache-bench [OPTIONS] <URL|--hash_rate>"),
            "{alone}"
        );
        // Without a program name, the binaries' own names.
        let empty: [&str; 0] = [];
        let err = from_standalone_command_line(empty).unwrap_err();
        assert!(
            err.to_string()
                .contains("Usage: bazel-cache-bench <URL|--hash_rate>"),
            "{err}"
        );
    }

    #[test]
    fn usage_errors_name_the_flag() {
        for (args, fragment) in [
            (&["http://h", "--concurrency", "0"][..], "--concurrency: 0"),
            (
                &["http://h", "--duration", "0s"],
                "--duration: must be longer",
            ),
            (
                &["http://h", "--duration", "soon"],
                "--duration: invalid duration",
            ),
            (&["http://h", "--requests", "0"], "--requests"),
            (&["http://h", "--chunk_size", "1GiB"], "--chunk_size"),
            (
                &["http://h", "--cacert", "/ca.pem"],
                "--cacert: TLS files need",
            ),
            (&["http://h", "--sizes", "4KB"], "--sizes"),
            (&["http://h", "--prefill", "2000000"], "--prefill"),
            (&["http://h", "--mix", "delete"], "--mix"),
            (
                &["http://h", "--digest_function", "sha1"],
                "invalid value 'sha1' for '--digest_function",
            ),
            (
                &["http://h", "--instance_name", "a/../b"],
                "--instance_name",
            ),
            (&["http://h", "--cert", "c.pem"], "--key"),
            (
                &["http://h", "--server_pid", "1", "--metrics_url", "http://h"],
                "--metrics_url",
            ),
            (&["grpc://h:1", "--metrics_url", "h:80"], "--metrics_url: "),
            (&["ftp://h"], "unknown scheme"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(fragment), "{args:?}: {err}");
        }
    }
}
