//! Where the SigV4 credentials come from, per `s3_proxy.auth_method`:
//!
//! - `access_key`: static keys from the configuration (optional session
//!   token);
//! - `aws_credentials_file`: one profile (`s3_proxy.aws_profile`) of an AWS
//!   shared credentials file, read once at start-up — from
//!   `s3_proxy.aws_shared_credentials_file`, else `$AWS_SHARED_CREDENTIALS_FILE`,
//!   else `~/.aws/credentials`;
//! - `iam_role` is refused, naming the alternatives.
//!
//! Kept apart from the signing itself so that reading secrets (and keeping
//! them out of error messages and `Debug` output) is in one small file.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_credential_types::Credentials;

use super::config::{S3AuthMethod, S3Config};
use super::error::S3Error;

/// The credentials `cfg` asks for (its `auth_method`), for SigV4 signing.
pub(super) fn credentials(cfg: &S3Config) -> Result<Credentials, S3Error> {
    let credentials = match cfg.auth_method {
        S3AuthMethod::AccessKey => {
            if cfg.access_key_id.is_empty() || cfg.secret_access_key.is_empty() {
                return Err(S3Error::Config(
                    "s3_proxy.auth_method access_key needs s3_proxy.access_key_id and \
                     s3_proxy.secret_access_key"
                        .to_owned(),
                ));
            }
            let token = Some(cfg.session_token.expose().to_owned()).filter(|t| !t.is_empty());
            Credentials::new(
                cfg.access_key_id.expose().to_owned(),
                cfg.secret_access_key.expose().to_owned(),
                token,
                None,
                "s3_proxy.access_key",
            )
        }
        S3AuthMethod::AwsCredentialsFile => {
            let path = credentials_file_path(cfg.aws_shared_credentials_file.as_deref())?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                S3Error::Config(format!(
                    "s3_proxy.auth_method aws_credentials_file: reading {}: {e}",
                    path.display()
                ))
            })?;
            let creds = parse_credentials_file(&text, &cfg.aws_profile).map_err(|e| {
                S3Error::Config(format!(
                    "s3_proxy.auth_method aws_credentials_file: {}: {e}",
                    path.display()
                ))
            })?;
            Credentials::new(
                creds.access_key_id,
                creds.secret_access_key,
                creds.session_token,
                None,
                "s3_proxy.aws_credentials_file",
            )
        }
        S3AuthMethod::IamRole => {
            return Err(S3Error::Config(
                "s3_proxy.auth_method iam_role is not supported by bazel-cache; use access_key \
                 (e.g. BAZEL_REMOTE_S3_ACCESS_KEY_ID / BAZEL_REMOTE_S3_SECRET_ACCESS_KEY) or \
                 aws_credentials_file"
                    .to_owned(),
            ));
        }
    };
    Ok(credentials)
}

fn credentials_file_path(configured: Option<&Path>) -> Result<PathBuf, S3Error> {
    if let Some(p) = configured {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".aws").join("credentials")),
        None => Err(S3Error::Config(
            "s3_proxy.auth_method aws_credentials_file: set s3_proxy.aws_shared_credentials_file \
             (HOME is not set)"
                .to_owned(),
        )),
    }
}

#[derive(PartialEq, Eq)]
struct FileCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl fmt::Debug for FileCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileCredentials(<redacted>)")
    }
}

/// Reads one profile of an AWS shared credentials file (INI: `[profile]`
/// sections of `key = value`, `#`/`;` comments). Errors never quote values.
fn parse_credentials_file(text: &str, profile: &str) -> Result<FileCredentials, String> {
    let mut in_profile = false;
    let mut found = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = section.trim() == profile;
            found |= in_profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => id = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" | "aws_security_token" => token = Some(v),
            _ => {}
        }
    }
    if !found {
        return Err(format!("no [{profile}] profile (s3_proxy.aws_profile)"));
    }
    match (
        id.filter(|s| !s.is_empty()),
        secret.filter(|s| !s.is_empty()),
    ) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(FileCredentials {
            access_key_id,
            secret_access_key,
            session_token: token.filter(|t| !t.is_empty()),
        }),
        _ => Err(format!(
            "profile [{profile}] needs aws_access_key_id and aws_secret_access_key"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_profiles() {
        let text = "# comment\n[default]\naws_access_key_id = AKDEF\naws_secret_access_key=SKDEF\n\n\
                    [ci]\n; c\naws_access_key_id=AKCI\naws_secret_access_key = SKCI\naws_session_token = TOK\n\
                    [broken]\naws_access_key_id=X\n";
        let d = parse_credentials_file(text, "default").unwrap();
        assert_eq!(
            (d.access_key_id.as_str(), d.secret_access_key.as_str()),
            ("AKDEF", "SKDEF")
        );
        assert_eq!(d.session_token, None);
        let ci = parse_credentials_file(text, "ci").unwrap();
        assert_eq!(ci.session_token.as_deref(), Some("TOK"));
        let err = parse_credentials_file(text, "broken").unwrap_err();
        assert!(
            err.contains("aws_secret_access_key") && !err.contains('X'),
            "{err}"
        );
        assert!(
            parse_credentials_file(text, "nope")
                .unwrap_err()
                .contains("[nope]")
        );
        assert_eq!(format!("{d:?}"), "FileCredentials(<redacted>)");
    }
}
