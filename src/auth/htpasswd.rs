//! Apache htpasswd files: `user:hash` lines, as `htpasswd` writes them.
//!
//! Supported hashes are the ones Apache's `htpasswd` produces on Unix that
//! are still worth accepting: bcrypt (`-B`, `$2y$`), MD5-crypt (`-m`, the
//! default, `$apr1$`) and SHA-1 (`-s`, `{SHA}`). DES crypt (`-d`) and plain
//! text (`-p`) entries are refused when the file is loaded, with the line
//! number, rather than silently never matching.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::{Digest as _, Md5};
use sha1::Sha1;

/// A parsed htpasswd file.
#[derive(Debug, Default)]
pub struct Htpasswd {
    users: HashMap<String, PasswordHash>,
}

/// One user's stored hash.
#[derive(Debug, Clone)]
enum PasswordHash {
    Bcrypt(String),
    /// `$apr1$` (Apache) or `$1$` (glibc) MD5-crypt: salt and the 22-char hash.
    Md5Crypt {
        magic: &'static str,
        salt: String,
        hash: String,
    },
    /// `{SHA}`: SHA-1 of the password.
    Sha1([u8; 20]),
}

#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("htpasswd_file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("htpasswd_file {path}, line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("htpasswd_file {path}: no users (an empty file would lock every client out)")]
    Empty { path: String },
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Htpasswd::parse(&text).map_err(|(line, reason)| match line {
            0 => HtpasswdError::Empty {
                path: path.display().to_string(),
            },
            line => HtpasswdError::Line {
                path: path.display().to_string(),
                line,
                reason,
            },
        })
    }

    /// Parses file text; the error names the 1-based line (0: no users).
    pub fn parse(text: &str) -> Result<Htpasswd, (usize, String)> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| (n + 1, "expected user:hash".to_string()))?;
            if user.is_empty() {
                return Err((n + 1, "empty user name".to_string()));
            }
            let hash = PasswordHash::parse(hash.trim())
                .map_err(|reason| (n + 1, format!("user {user:?}: {reason}")))?;
            if users.insert(user.to_string(), hash).is_some() {
                return Err((n + 1, format!("user {user:?} is listed twice")));
            }
        }
        if users.is_empty() {
            return Err((0, String::new()));
        }
        Ok(Htpasswd { users })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// True when `user` exists and `password` matches its hash. Slow for
    /// bcrypt entries by design; callers cache successful checks.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => false,
        }
    }
}

impl PasswordHash {
    fn parse(hash: &str) -> Result<PasswordHash, String> {
        if hash.starts_with("$2y$") || hash.starts_with("$2a$") || hash.starts_with("$2b$") {
            // Checked now so a truncated entry fails at start, not per request.
            hash.parse::<bcrypt::HashParts>()
                .map_err(|e| format!("malformed bcrypt entry: {e}"))?;
            return Ok(PasswordHash::Bcrypt(hash.to_string()));
        }
        for magic in ["$apr1$", "$1$"] {
            if let Some(rest) = hash.strip_prefix(magic) {
                let (salt, digest) = rest
                    .split_once('$')
                    .ok_or("MD5-crypt entry without '$' after the salt")?;
                if salt.len() > 8 || digest.len() != 22 {
                    return Err("malformed MD5-crypt entry".into());
                }
                return Ok(PasswordHash::Md5Crypt {
                    magic,
                    salt: salt.to_string(),
                    hash: digest.to_string(),
                });
            }
        }
        if let Some(b64) = hash.strip_prefix("{SHA}") {
            let bytes = BASE64
                .decode(b64)
                .map_err(|e| format!("bad base64 in {{SHA}} entry: {e}"))?;
            let digest: [u8; 20] = bytes
                .try_into()
                .map_err(|_| "{SHA} entry is not a 20-byte SHA-1".to_string())?;
            return Ok(PasswordHash::Sha1(digest));
        }
        if hash.starts_with("$5$") || hash.starts_with("$6$") {
            return Err(
                "SHA-256/512-crypt entries are not supported; use `htpasswd -B` (bcrypt)".into(),
            );
        }
        Err("unsupported hash (DES crypt or plain text?); use `htpasswd -B` (bcrypt)".into())
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            PasswordHash::Md5Crypt { magic, salt, hash } => constant_time_eq(
                md5_crypt(password, magic, salt.as_bytes()).as_bytes(),
                hash.as_bytes(),
            ),
            PasswordHash::Sha1(expected) => constant_time_eq(&Sha1::digest(password), expected),
        }
    }
}

/// Compares without an early exit, so timing does not reveal how many
/// leading bytes of a guess were right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The MD5-crypt hash (the part after the salt) of `password`, as
/// Poul-Henning Kamp's FreeBSD algorithm defines it; Apache's `$apr1$`
/// differs only in the magic string mixed into the first digest.
fn md5_crypt(password: &[u8], magic: &str, salt: &[u8]) -> String {
    let salt = &salt[..salt.len().min(8)];
    let alternate = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(password)
        .chain_update(magic.as_bytes())
        .chain_update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alternate[..n]);
        left -= n;
    }
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut digest = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(digest);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(digest);
        } else {
            c.update(password);
        }
        digest = c.finalize();
    }
    const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let d = digest;
    let mut out = String::with_capacity(22);
    let mut push = |value: u32, chars: usize| {
        let mut v = value;
        for _ in 0..chars {
            out.push(ALPHABET[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        push(
            (u32::from(d[a]) << 16) | (u32::from(d[b]) << 8) | u32::from(d[c]),
            4,
        );
    }
    push(u32::from(d[11]), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_entries_it_cannot_check_naming_the_line() {
        for (text, want) in [
            ("alice:abcdefghijklm\n", "line 1"),
            ("# comment\n\nbob:$5$rounds=5000$salt$hash\n", "line 3"),
            ("carol\n", "expected user:hash"),
            (":{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", "empty user name"),
            ("dave:{SHA}short\n", "line 1"),
            ("erin:$2y$05$tooshort\n", "bcrypt"),
        ] {
            let err = Htpasswd::parse(text).unwrap_err();
            let msg = format!("line {}: {}", err.0, err.1);
            assert!(msg.contains(want), "{text:?}: {msg}");
        }
        assert_eq!(Htpasswd::parse("# only a comment\n").unwrap_err().0, 0);
    }

    #[test]
    fn duplicate_users_are_an_error() {
        let text = "a:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\na:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n";
        assert!(Htpasswd::parse(text).unwrap_err().1.contains("twice"));
    }
}
