//! The command line, built from the option table with clap's builder API.
//!
//! Flags are bazel-remote's (urfave/cli) long flags: `--dir /x`, `--dir=/x`,
//! `--s3.endpoint host:9000`, bare booleans `--fsync` and `--fsync=false`.
//! Every flag is global so it may come before or after a subcommand.
//!
//! clap does not read environment variables here: the environment is an
//! injected source (tests must not touch the process environment) and is
//! read in `sources.rs`. `--help` still names each variable, but never shows
//! a value, so secrets cannot leak through it.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

use super::Mode;
use super::error::ConfigError;
use super::options::{CONFIG_FILE_ENV, Kind, OPTIONS, Opt, UNSUPPORTED};

const CONFIG_FILE: &str = "config_file";
const CHECK_CONFIG: &str = "check-config";
/// The load generator; its options live in the `bazel-cache-bench` crate.
const BENCH: &str = "bench";
/// Why a build missed the cache; its options live in the `bazel-cache-explain` crate.
const EXPLAIN_MISS: &str = bazel_cache_explain::cli::SUBCOMMAND;

/// What the command line asked for.
pub(super) struct CommandLine {
    pub mode: Mode,
    pub config_file: Option<PathBuf>,
    /// The options given as flags, with their raw values.
    pub values: Vec<(&'static Opt, String)>,
}

/// The clap command: every option of the table plus `--config_file`, and the
/// subcommands. A later `bench` subcommand only needs another `.subcommand`.
pub(super) fn command() -> Command {
    let mut command = Command::new("bazel-cache")
        .version(env!("CARGO_PKG_VERSION"))
        .about("A Bazel remote cache server, drop-in compatible with bazel-remote")
        .after_help(
            "Every option can be set in the YAML file (--config_file), by its environment \
             variable or by its flag. Flags override environment variables, which override \
             the file; built-in defaults fill the rest. An empty environment variable counts \
             as unset.",
        )
        .args_override_self(true)
        .disable_help_subcommand(true)
        .max_term_width(110)
        .arg(
            Arg::new(CONFIG_FILE)
                .long(CONFIG_FILE)
                .global(true)
                .value_name("PATH")
                .help(format!(
                    "YAML configuration file (bazel-remote's format). [env: {CONFIG_FILE_ENV}] \
                     [default: none]"
                )),
        )
        .subcommand(
            Command::new(CHECK_CONFIG)
                .about("Load and validate the configuration, then exit (status 0 when valid)"),
        )
        .subcommand(<bazel_cache_bench::BenchArgs as clap::Args>::augment_args(
            Command::new(BENCH),
        ))
        // Listed for --help; the binary hands it to the explain crate first.
        .subcommand(
            Command::new(EXPLAIN_MISS)
                .about(
                    "Why did a build miss the cache? Compare two Bazel execution logs \
                     (--execution_log_json_file): `bazel-cache explain-miss BEFORE.json \
                     AFTER.json` (see `explain-miss --help`)",
                )
                .arg(
                    Arg::new("args")
                        .num_args(0..)
                        .trailing_var_arg(true)
                        .allow_hyphen_values(true),
                ),
        );

    for opt in OPTIONS {
        command = command.arg(option_arg(opt));
    }
    for unsupported in UNSUPPORTED {
        // Accepted only to fail with a clearer message than "unexpected argument".
        command = command.arg(
            Arg::new(unsupported.flag)
                .long(unsupported.flag)
                .global(true)
                .hide(true),
        );
    }
    command
}

fn option_arg(opt: &'static Opt) -> Arg {
    let arg = Arg::new(opt.key)
        .long(opt.key)
        .global(true)
        .action(ArgAction::Set)
        .help_heading(opt.heading)
        .help(format!(
            "{} [env: {}] [default: {}]",
            opt.help,
            opt.env.join(", "),
            opt.default.text()
        ));
    match opt.kind {
        // `--fsync` alone means true; a value must be attached with `=` so
        // that `--fsync check-config` still reads as flag + subcommand.
        Kind::Bool => arg
            .value_name("BOOL")
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true"),
        Kind::Str => arg.value_name(string_value_name(opt.key)),
        Kind::Int => arg.value_name("INT"),
        Kind::Number => arg.value_name("GIB"),
        Kind::Duration => arg.value_name("DURATION"),
        Kind::NumberList => arg.value_name("LIST"),
    }
}

/// A placeholder that says what kind of string a flag takes.
fn string_value_name(key: &str) -> &'static str {
    if key == "dir" || key.ends_with("_file") {
        "PATH"
    } else if key.ends_with("_address") || key.ends_with("endpoint") {
        "ADDRESS"
    } else {
        "STRING"
    }
}

/// Parses the command line (the first item is the program name).
pub(super) fn parse<I, T>(args: I) -> Result<CommandLine, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    // Global flags given on either side of the subcommand end up in the
    // subcommand's matches.
    let (mode, matches) = match matches.subcommand() {
        Some((CHECK_CONFIG, sub)) => (Mode::CheckConfig, sub),
        // A client with no server configuration: the binary hands
        // `bazel-cache bench ...` to `bazel_cache_bench::from_command_line` before
        // reading any, so only server flags before `bench` get here.
        Some((BENCH, _)) => {
            return Err(ConfigError::Invalid {
                key: BENCH.to_owned(),
                message:
                    "the load generator takes no server options: run `bazel-cache bench URL ...`"
                        .to_owned(),
                origin: None,
            });
        }
        Some((EXPLAIN_MISS, _)) => {
            return Err(ConfigError::Invalid {
                key: EXPLAIN_MISS.to_owned(),
                message: "explain-miss takes no server options: run \
                          `bazel-cache explain-miss BEFORE.json AFTER.json`"
                    .to_owned(),
                origin: None,
            });
        }
        Some((other, _)) => unreachable!("subcommand {other} is not declared"),
        None => (Mode::Serve, &matches),
    };

    for unsupported in UNSUPPORTED {
        if given(matches, unsupported.flag).is_some() {
            let block = unsupported.block;
            return Err(ConfigError::Invalid {
                key: block.to_owned(),
                message: unsupported.message.to_owned(),
                origin: Some(format!("--{}", unsupported.flag)),
            });
        }
    }

    let values = OPTIONS
        .iter()
        .filter_map(|opt| given(matches, opt.key).map(|value| (opt, value)))
        .collect();
    Ok(CommandLine {
        mode,
        config_file: given(matches, CONFIG_FILE).map(PathBuf::from),
        values,
    })
}

/// The value of a flag that was actually typed on the command line.
fn given(matches: &ArgMatches, id: &str) -> Option<String> {
    (matches.value_source(id) == Some(ValueSource::CommandLine))
        .then(|| matches.get_one::<String>(id).cloned())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: &[&str]) -> CommandLine {
        match parse(std::iter::once("bazel-cache").chain(args.iter().copied())) {
            Ok(cli) => cli,
            Err(err) => panic!("{args:?}: {err}"),
        }
    }

    fn value(cli: &CommandLine, key: &str) -> Option<String> {
        cli.values
            .iter()
            .find(|(opt, _)| opt.key == key)
            .map(|(_, v)| v.clone())
    }

    #[test]
    fn command_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn long_flag_forms() {
        let cli = parse_ok(&[
            "--dir",
            "/x",
            "--max_size=10",
            "--s3.endpoint",
            "host:9000",
            "--fsync=false",
            "--enable_endpoint_metrics",
        ]);
        assert_eq!(cli.mode, Mode::Serve);
        assert_eq!(value(&cli, "dir").as_deref(), Some("/x"));
        assert_eq!(value(&cli, "max_size").as_deref(), Some("10"));
        assert_eq!(value(&cli, "s3.endpoint").as_deref(), Some("host:9000"));
        assert_eq!(value(&cli, "fsync").as_deref(), Some("false"));
        assert_eq!(
            value(&cli, "enable_endpoint_metrics").as_deref(),
            Some("true")
        );
        assert_eq!(value(&cli, "port"), None);
    }

    #[test]
    fn last_occurrence_wins() {
        let cli = parse_ok(&["--dir", "/a", "--dir", "/b"]);
        assert_eq!(value(&cli, "dir").as_deref(), Some("/b"));
    }

    #[test]
    fn check_config_takes_flags_on_either_side() {
        for args in [
            &["check-config", "--config_file", "c.yaml", "--fsync"][..],
            &["--config_file", "c.yaml", "--fsync", "check-config"][..],
            &["--config_file=c.yaml", "check-config", "--fsync=true"][..],
        ] {
            let cli = parse_ok(args);
            assert_eq!(cli.mode, Mode::CheckConfig, "{args:?}");
            assert_eq!(cli.config_file, Some(PathBuf::from("c.yaml")), "{args:?}");
            assert_eq!(value(&cli, "fsync").as_deref(), Some("true"), "{args:?}");
        }
    }

    #[test]
    fn usage_errors_come_from_clap() {
        for args in [
            &["--no_such_flag"][..],
            &["stray"],
            &["--dir"],
            &["--fsync", "false"],
        ] {
            let argv = std::iter::once("bazel-cache").chain(args.iter().copied());
            match parse(argv) {
                Err(ConfigError::Cli(err)) => assert_eq!(err.exit_code(), 2, "{args:?}"),
                Err(other) => panic!("{args:?}: {other}"),
                Ok(_) => panic!("{args:?} accepted"),
            }
        }
    }

    #[test]
    fn bench_is_listed_but_takes_no_server_flags() {
        assert!(command().find_subcommand("bench").is_some());
        let err = parse(["bazel-cache", "--dir", "/x", "bench", "http://h:1"])
            .err()
            .unwrap();
        assert_eq!(err.key(), Some("bench"));
    }

    #[test]
    fn explain_miss_is_listed_but_takes_no_server_flags() {
        assert!(command().find_subcommand("explain-miss").is_some());
        let err = parse(["bazel-cache", "--dir", "/x", "explain-miss", "a", "b"])
            .err()
            .unwrap();
        assert_eq!(err.key(), Some("explain-miss"));
    }

    #[test]
    fn unsupported_flags_fail_by_name() {
        let err = parse(["bazel-cache", "--gcs_proxy.bucket", "b"])
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.starts_with("gcs_proxy: not supported by bazel-cache; use s3_proxy"),
            "{text}"
        );
        assert!(text.contains("storage.googleapis.com"), "{text}");
        assert!(text.ends_with("(set by --gcs_proxy.bucket)"), "{text}");
        let err = parse(["bazel-cache", "--azblob.tenant_id", "t"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("S3 gateway"), "{err}");
    }
}
