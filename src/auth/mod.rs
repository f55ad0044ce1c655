//! Who may read and write: htpasswd basic auth, client certificates (mTLS)
//! and `allow_unauthenticated_reads`, decided once for both front ends.
//!
//! The rule: when `htpasswd_file` is set a request needs valid Basic
//! credentials; when `tls_ca_file` is set its connection needs a verified
//! client certificate. A request lacking what is required may still read
//! when `allow_unauthenticated_reads` is on, but is never allowed to write.
//! Wrong credentials are refused even for reads, so a client with a typo in
//! its password learns it at once instead of silently missing the cache.
//!
//! `/status`, `/metrics` and gRPC health are outside this check (probes and
//! Prometheus scrape without credentials; none of them reveal blob content).

pub mod htpasswd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest as _, Sha256};

pub use htpasswd::{Htpasswd, HtpasswdError};

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Why a request was refused; the message is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("authentication required: send HTTP Basic credentials")]
    NoCredentials,
    #[error("invalid credentials")]
    BadCredentials,
    #[error("malformed Authorization header: expected Basic credentials")]
    Malformed,
    #[error("a client certificate is required")]
    NoClientCertificate,
}

/// Successful credential checks are remembered (by a hash of the header),
/// because a bcrypt check costs tens of milliseconds and every request of a
/// build carries the same header. Bounded; cleared when the file changes.
const VERIFIED_CACHE_MAX: usize = 4096;
/// How often the htpasswd file is checked for changes (Kubernetes rotates
/// mounted Secrets in place).
const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

pub struct Authenticator {
    htpasswd: Option<HtpasswdSource>,
    require_client_cert: bool,
    allow_unauthenticated_reads: bool,
}

struct HtpasswdSource {
    path: PathBuf,
    users: RwLock<Arc<Htpasswd>>,
    stamp: RwLock<Option<FileStamp>>,
    verified: RwLock<HashMap<[u8; 32], ()>>,
}

/// Enough of a file's metadata to notice it was replaced or rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

impl Authenticator {
    /// Loads the htpasswd file (if any); errors name the file and line.
    pub fn new(
        htpasswd_file: Option<&Path>,
        require_client_cert: bool,
        allow_unauthenticated_reads: bool,
    ) -> Result<Authenticator, HtpasswdError> {
        let htpasswd = match htpasswd_file {
            Some(path) => {
                let before = stamp(path);
                let users = Htpasswd::load(path)?;
                tracing::info!(file = %path.display(), users = users.len(), "basic authentication enabled");
                Some(HtpasswdSource {
                    path: path.to_path_buf(),
                    users: RwLock::new(Arc::new(users)),
                    stamp: RwLock::new(before),
                    verified: RwLock::new(HashMap::new()),
                })
            }
            None => None,
        };
        Ok(Authenticator {
            htpasswd,
            require_client_cert,
            allow_unauthenticated_reads,
        })
    }

    /// True when any check is configured (otherwise every request passes).
    pub fn enabled(&self) -> bool {
        self.htpasswd.is_some() || self.require_client_cert
    }

    pub fn uses_basic_auth(&self) -> bool {
        self.htpasswd.is_some()
    }

    /// Decides one request. `authorization` is the raw `Authorization`
    /// header (HTTP) or metadata value (gRPC); `client_cert` says whether
    /// the connection presented a certificate the CA verified.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        client_cert: bool,
        access: Access,
    ) -> Result<(), Denied> {
        let mut missing = None;
        if let Some(source) = &self.htpasswd {
            match authorization {
                Some(value) => source.check(value)?,
                None => missing = Some(Denied::NoCredentials),
            }
        }
        if self.require_client_cert && !client_cert {
            missing = missing.or(Some(Denied::NoClientCertificate));
        }
        match missing {
            Some(_) if access == Access::Read && self.allow_unauthenticated_reads => Ok(()),
            Some(denied) => Err(denied),
            None => Ok(()),
        }
    }

    /// Re-reads the htpasswd file when it changed; a file that no longer
    /// parses is reported and the previous users are kept.
    pub fn reload_if_changed(&self) {
        let Some(source) = &self.htpasswd else {
            return;
        };
        let now = stamp(&source.path);
        if *source.stamp.read().unwrap_or_else(|e| e.into_inner()) == now {
            return;
        }
        match Htpasswd::load(&source.path) {
            Ok(users) => {
                tracing::info!(file = %source.path.display(), users = users.len(), "htpasswd file reloaded");
                *source.users.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(users);
                source
                    .verified
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
            }
            Err(e) => {
                tracing::error!(error = %e, "htpasswd file changed but cannot be used; keeping the previous users");
            }
        }
        *source.stamp.write().unwrap_or_else(|e| e.into_inner()) = now;
    }

    /// Checks the htpasswd file for changes until the process ends.
    pub fn spawn_reloader(self: &Arc<Self>) {
        if self.htpasswd.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_INTERVAL).await;
                let Some(auth) = weak.upgrade() else { return };
                // Reading a small file; off the async workers all the same.
                let _ = tokio::task::spawn_blocking(move || auth.reload_if_changed()).await;
            }
        });
    }
}

impl HtpasswdSource {
    fn check(&self, header: &[u8]) -> Result<(), Denied> {
        let key: [u8; 32] = Sha256::digest(header).into();
        if self
            .verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key)
        {
            return Ok(());
        }
        let (user, password) = parse_basic(header)?;
        let users = self.users.read().unwrap_or_else(|e| e.into_inner()).clone();
        if !users.verify(&user, &password) {
            return Err(Denied::BadCredentials);
        }
        let mut verified = self.verified.write().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_CACHE_MAX {
            verified.clear();
        }
        verified.insert(key, ());
        Ok(())
    }
}

/// Splits `Basic base64(user:password)`.
fn parse_basic(header: &[u8]) -> Result<(String, Vec<u8>), Denied> {
    let text = std::str::from_utf8(header).map_err(|_| Denied::Malformed)?;
    let (scheme, encoded) = text.trim().split_once(' ').ok_or(Denied::Malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Denied::Malformed);
    }
    let decoded = BASE64
        .decode(encoded.trim())
        .map_err(|_| Denied::Malformed)?;
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or(Denied::Malformed)?;
    let user = String::from_utf8(decoded[..colon].to_vec()).map_err(|_| Denied::Malformed)?;
    Ok((user, decoded[colon + 1..].to_vec()))
}

/// The `Authorization` value for `user:password` (for clients and tests).
pub fn basic_header(user: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // SHA-1("password"), as `htpasswd -s` writes it.
    const FILE: &str = "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n";

    fn auth(anonymous_reads: bool, mtls: bool) -> (tempfile::TempDir, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, FILE).unwrap();
        let a = Authenticator::new(Some(&path), mtls, anonymous_reads).unwrap();
        (dir, a)
    }

    #[test]
    fn basic_credentials_decide_reads_and_writes() {
        let (_d, a) = auth(false, false);
        let good = basic_header("alice", "password");
        let bad = basic_header("alice", "passw0rd");
        for access in [Access::Read, Access::Write] {
            assert_eq!(a.check(Some(good.as_bytes()), false, access), Ok(()));
            // Twice: the second answer comes from the verified cache.
            assert_eq!(a.check(Some(good.as_bytes()), false, access), Ok(()));
            assert_eq!(
                a.check(Some(bad.as_bytes()), false, access),
                Err(Denied::BadCredentials)
            );
            assert_eq!(a.check(None, false, access), Err(Denied::NoCredentials));
            assert_eq!(
                a.check(Some(b"Bearer x"), false, access),
                Err(Denied::Malformed)
            );
            assert_eq!(
                a.check(Some(b"Basic !!!"), false, access),
                Err(Denied::Malformed)
            );
        }
        assert_eq!(
            a.check(
                Some(basic_header("mallory", "password").as_bytes()),
                false,
                Access::Read
            ),
            Err(Denied::BadCredentials)
        );
    }

    #[test]
    fn anonymous_reads_never_allow_writes_or_wrong_passwords() {
        let (_d, a) = auth(true, false);
        assert_eq!(a.check(None, false, Access::Read), Ok(()));
        assert_eq!(
            a.check(None, false, Access::Write),
            Err(Denied::NoCredentials)
        );
        let bad = basic_header("alice", "nope");
        assert_eq!(
            a.check(Some(bad.as_bytes()), false, Access::Read),
            Err(Denied::BadCredentials)
        );
    }

    #[test]
    fn client_certificates_and_passwords_are_both_required_when_both_are_set() {
        let (_d, a) = auth(false, true);
        let good = basic_header("alice", "password");
        assert_eq!(a.check(Some(good.as_bytes()), true, Access::Write), Ok(()));
        assert_eq!(
            a.check(Some(good.as_bytes()), false, Access::Write),
            Err(Denied::NoClientCertificate)
        );
        let certs_only = Authenticator::new(None, true, true).unwrap();
        assert_eq!(certs_only.check(None, true, Access::Write), Ok(()));
        assert_eq!(certs_only.check(None, false, Access::Read), Ok(()));
        assert_eq!(
            certs_only.check(None, false, Access::Write),
            Err(Denied::NoClientCertificate)
        );
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_ignored() {
        let (dir, a) = auth(false, false);
        let path = dir.path().join("htpasswd");
        let alice = basic_header("alice", "password");
        assert_eq!(
            a.check(Some(alice.as_bytes()), false, Access::Write),
            Ok(())
        );
        // bob:password, alice removed.
        std::fs::write(&path, "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
        a.reload_if_changed();
        assert_eq!(
            a.check(Some(alice.as_bytes()), false, Access::Write),
            Err(Denied::BadCredentials),
            "a removed user's cached success must not outlive the reload"
        );
        let bob = basic_header("bob", "password");
        assert_eq!(a.check(Some(bob.as_bytes()), false, Access::Write), Ok(()));
        std::fs::write(&path, "garbage line without colon, longer than before\n").unwrap();
        a.reload_if_changed();
        assert_eq!(a.check(Some(bob.as_bytes()), false, Access::Write), Ok(()));
    }
}
