//! The command line itself: `--help` documents every option, exit codes of
//! help, version and usage errors, and `--check_config`.

use super::helpers::{Fixture, GIB, help_text, load};
use bazel_cache::config::{self, Mode};

#[test]
fn help_documents_every_option_with_env_and_default() {
    let help = help_text(&[]);
    let command = config::command();
    let mut documented = 0;
    for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        assert!(
            help.contains(&format!("--{long}")),
            "--{long} missing from help"
        );
        let text = arg.get_help().map(ToString::to_string).unwrap_or_default();
        assert!(text.contains("[env: BAZEL_REMOTE_"), "--{long}: {text}");
        assert!(text.contains("[default: "), "--{long}: {text}");
        documented += 1;
    }
    assert!(documented >= 50, "only {documented} options documented");
    for needle in [
        "--s3.endpoint",
        "BAZEL_REMOTE_UNAUTHENTICATED_READS",
        "check-config",
        "--fsync",
    ] {
        assert!(help.contains(needle), "{needle} missing");
    }
}

#[test]
fn help_and_version_exit_zero_usage_errors_exit_two() {
    let help = load(&["--help"], &[]).unwrap_err();
    assert_eq!(help.exit_code(), 0);
    assert_eq!(help.to_string(), "command line: help requested");
    assert_eq!(load(&["--version"], &[]).unwrap_err().exit_code(), 0);
    assert_eq!(
        load(&["check-config", "--help"], &[])
            .unwrap_err()
            .exit_code(),
        0
    );
    let err = load(&["--no_such_flag"], &[]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        "command line: unexpected argument '--no_such_flag' found"
    );
    // Configuration errors exit 1.
    assert_eq!(load(&["--max_size=0"], &[]).unwrap_err().exit_code(), 1);
}

#[test]
fn check_config_mode_with_flags_before_or_after() {
    let fx = Fixture::new();
    let file = fx.file("max_size: 2\n");
    let dir = fx.dir();
    for args in [
        vec!["check-config", "--config_file", &file, "--dir", &dir],
        vec!["--config_file", &file, "check-config", "--dir", &dir],
        vec!["--config_file", &file, "--dir", &dir, "check-config"],
    ] {
        let invocation = load(&args, &[]).unwrap();
        assert_eq!(invocation.mode, Mode::CheckConfig, "{args:?}");
        assert_eq!(invocation.config.max_size_bytes, 2 * GIB, "{args:?}");
    }
    // check-config validates like serve does.
    let err = load(&["check-config", "--dir", &dir, "--max_size", "0"], &[]).unwrap_err();
    assert!(err.to_string().starts_with("max_size: "), "{err}");
}
