//! The one error type of configuration loading. Every variant renders as a
//! single line that names the offending key (and, for the YAML file, the file
//! and position), because that line is all an operator sees in a crash-looping
//! pod's log.

use std::fmt;
use std::path::PathBuf;

/// Why the configuration could not be loaded.
///
/// No variant ever contains the value of a secret (`s3_proxy.secret_access_key`,
/// `s3_proxy.session_token`): messages quote values only for keys whose values
/// are validated, and secrets are free-form strings that never fail to parse.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line could not be parsed, or it asked for `--help` or
    /// `--version`. clap has already formatted the full text; the binary
    /// should let clap print it and pick the exit code (0 for help/version,
    /// 2 for usage errors): call [`ConfigError::exit`] or
    /// `clap::Error::exit()` on the inner error.
    #[error("command line: {}", clap_summary(.0))]
    Cli(#[from] clap::Error),

    /// The YAML file could not be read or does not match the schema.
    #[error("config file {}: {}{}{}", .path.display(), OptLocation(.location), OptKey(.key), .message)]
    File {
        path: PathBuf,
        /// 1-based position of the problem, when the YAML parser knows it.
        location: Option<Location>,
        /// The YAML path of the offending key (`s3_proxy.max_idle_conns`).
        key: Option<String>,
        message: String,
    },

    /// A key has an unusable value once all sources are merged, or keys
    /// contradict each other.
    #[error("{key}: {message}{}", OptOrigin(.origin))]
    Invalid {
        /// The YAML spelling of the key (`max_size`, `s3_proxy.bucket`).
        key: String,
        message: String,
        /// Which source set the value (`--max_size`, `BAZEL_REMOTE_MAX_SIZE`,
        /// `config file /etc/x.yaml`), when a single source is to blame.
        origin: Option<String>,
    },
}

/// A 1-based line and column in the YAML file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl ConfigError {
    /// The YAML spelling of the key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Cli(_) => None,
            ConfigError::File { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }

    /// The process exit code for this error: clap's (0 for `--help` and
    /// `--version`, 2 for usage errors), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Cli(err) => err.exit_code(),
            _ => 1,
        }
    }

    /// Reports the error the way a command-line program should and exits:
    /// clap prints help, version or usage errors itself; other errors are
    /// printed as one line on stderr, prefixed with the program name.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Cli(err) => err.exit(),
            other => {
                eprintln!("bazel-cache: {other}");
                std::process::exit(other.exit_code())
            }
        }
    }
}

/// clap's rendered errors span several lines (usage, hints); a one-line
/// summary is its first non-empty line without the `error: ` prefix.
fn clap_summary(err: &clap::Error) -> String {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            return "help requested".to_owned();
        }
        ErrorKind::DisplayVersion => return "version requested".to_owned(),
        _ => {}
    }
    let rendered = err.render().to_string();
    let first = rendered
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("invalid command line");
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

struct OptLocation<'a>(&'a Option<Location>);

impl fmt::Display for OptLocation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(loc) => write!(f, "line {} column {}: ", loc.line, loc.column),
            None => Ok(()),
        }
    }
}

struct OptKey<'a>(&'a Option<String>);

impl fmt::Display for OptKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => write!(f, "{key}: "),
            None => Ok(()),
        }
    }
}

struct OptOrigin<'a>(&'a Option<String>);

impl fmt::Display for OptOrigin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(origin) => write!(f, " (set by {origin})"),
            None => Ok(()),
        }
    }
}
