//! What the configuration tests share: a scratch directory for the cache
//! dir and config files, loading with only the given arguments and
//! environment, a secret to look for in output, and `--help`'s text.

use std::collections::HashMap;
use std::net::SocketAddr;

use bazel_cache::config::{self, Config, ConfigError, Invocation, ListenAddr};

pub(super) const GIB: u64 = 1 << 30;
pub(super) const SECRET: &str = "wJalrXUtnFEMI-very-secret";

/// A scratch directory holding the cache dir and config files of one test.
pub(super) struct Fixture {
    pub(super) tmp: tempfile::TempDir,
}

impl Fixture {
    pub(super) fn new() -> Self {
        Fixture {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// A writable cache directory (created by the config loader).
    pub(super) fn dir(&self) -> String {
        self.tmp.path().join("cache").display().to_string()
    }

    /// Writes a config file and returns its path.
    pub(super) fn file(&self, yaml: &str) -> String {
        let path = self.tmp.path().join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        path.display().to_string()
    }

    /// Loads with `--dir <scratch>` added, so the writability check passes.
    pub(super) fn load(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Invocation, ConfigError> {
        let dir = self.dir();
        let mut all = vec!["--dir", &dir];
        all.extend_from_slice(args);
        load(&all, env)
    }

    pub(super) fn config(&self, args: &[&str], env: &[(&str, &str)]) -> Config {
        match self.load(args, env) {
            Ok(invocation) => invocation.config,
            Err(err) => panic!("{args:?} {env:?}: {err}"),
        }
    }

    pub(super) fn error(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        match self.load(args, env) {
            Ok(invocation) => panic!("accepted: {:?}", invocation.config),
            Err(err) => err.to_string(),
        }
    }
}

/// Loads exactly `args` (after the program name) with only `env` set.
pub(super) fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let argv = std::iter::once("bazel-cache").chain(args.iter().copied());
    config::from_args_and_env(argv, &|name| env.get(name).cloned())
}

pub(super) fn tcp(addr: &str) -> ListenAddr {
    ListenAddr::Tcp(addr.parse::<SocketAddr>().unwrap())
}

pub(super) fn help_text(env: &[(&str, &str)]) -> String {
    match load(&["--help"], env) {
        Err(ConfigError::Cli(err)) => {
            assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
            err.to_string()
        }
        other => panic!("--help gave {:?}", other.map(|i| i.config)),
    }
}
