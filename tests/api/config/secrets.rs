//! Secrets stay out of `Debug` output, `--help` and error messages.

use super::helpers::{Fixture, SECRET, help_text};

const TOKEN: &str = "session-token-very-secret";

#[test]
fn secrets_stay_out_of_debug_help_and_errors() {
    let fx = Fixture::new();
    let env = [
        ("BAZEL_REMOTE_S3_ENDPOINT", "e:9000"),
        ("BAZEL_REMOTE_S3_BUCKET", "b"),
        ("BAZEL_REMOTE_S3_AUTH_METHOD", "access_key"),
        ("BAZEL_REMOTE_S3_ACCESS_KEY_ID", "id"),
        ("BAZEL_REMOTE_S3_SECRET_ACCESS_KEY", SECRET),
        ("BAZEL_REMOTE_S3_SESSION_TOKEN", TOKEN),
    ];
    let invocation = fx.load(&[], &env).unwrap();
    let s3 = invocation.config.s3_proxy.as_ref().unwrap();
    assert_eq!(
        (s3.secret_access_key.expose(), s3.session_token.expose()),
        (SECRET, TOKEN)
    );
    let debug = format!("{invocation:?} {:#?}", invocation.config);
    assert!(!debug.contains(SECRET) && !debug.contains(TOKEN), "{debug}");

    // An unrelated error while the secrets are set, from env and from flags.
    let mut bad = env.to_vec();
    bad.push(("BAZEL_REMOTE_S3_BUCKET_LOOKUP_TYPE", "bogus"));
    let err = fx.error(&[], &bad);
    assert!(!err.contains(SECRET) && !err.contains(TOKEN), "{err}");
    let secret_flag = format!("--s3.secret_access_key={SECRET}");
    let err = fx.error(&[&secret_flag, "--s3.bucket=b", "--max_size=0"], &[]);
    assert!(!err.contains(SECRET), "{err}");
    // A secret of the wrong type in the file is not echoed either.
    let file = fx.file(&format!("s3_proxy:\n  secret_access_key: [{SECRET}]\n"));
    let err = fx.error(&["--config_file", &file], &[]);
    assert!(err.contains("s3_proxy.secret_access_key"), "{err}");
    assert!(!err.contains(SECRET), "{err}");

    // --help names the variables but shows no values, even when they are set.
    let help = help_text(&env);
    assert!(help.contains("BAZEL_REMOTE_S3_SECRET_ACCESS_KEY"), "{help}");
    assert!(!help.contains(SECRET) && !help.contains(TOKEN));
}
