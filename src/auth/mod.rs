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

mod failures;
pub(crate) mod htpasswd;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bazel_cache_digest::{read, write};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use failures::{Key, RecentFailures};

use crate::reload::{self, Watcher};
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
/// Failed checks are remembered too, for [`FAILURE_TTL`], so a client that
/// repeats a wrong password costs one verify a minute instead of one per
/// request. Bounded (oldest out first); cleared when the file changes.
const FAILED_CACHE_MAX: usize = 4096;
const FAILURE_TTL: Duration = Duration::from_secs(60);

pub struct Authenticator {
    htpasswd: Option<Arc<HtpasswdSource>>,
    require_client_cert: bool,
    allow_unauthenticated_reads: bool,
}

/// The htpasswd users and what has been learnt about headers checked
/// against them.
///
/// A header neither cache knows is verified on the blocking thread pool,
/// never on an async worker (a bcrypt verify takes a core for up to a few
/// hundred milliseconds), and at most `verify_permits` at a time, so a
/// flood of wrong passwords can take no more than that many cores from
/// serving the clients whose credentials are already cached.
struct HtpasswdSource {
    path: PathBuf,
    /// Kubernetes rotates mounted Secrets in place (a symlink swap).
    file: Watcher,
    state: RwLock<Credentials>,
    verify_permits: Arc<Semaphore>,
    /// Password verifies run so far (what the caches are there to save).
    verifies: AtomicU64,
}

struct Credentials {
    users: Arc<Htpasswd>,
    verified: HashSet<Key>,
    failed: RecentFailures,
}

impl Credentials {
    fn new(users: Htpasswd) -> Credentials {
        Credentials {
            users: Arc::new(users),
            verified: HashSet::new(),
            failed: RecentFailures::new(FAILED_CACHE_MAX, FAILURE_TTL),
        }
    }
}

/// Verifies at once: half the cores (at least one), so the other half keep
/// serving whatever the flood of new credentials.
fn default_verify_permits() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).max(1)
}

impl Authenticator {
    /// Loads the htpasswd file (if any); errors name the file and line.
    pub fn new(
        htpasswd_file: Option<&Path>,
        require_client_cert: bool,
        allow_unauthenticated_reads: bool,
    ) -> Result<Authenticator, HtpasswdError> {
        Authenticator::with_verify_permits(
            htpasswd_file,
            require_client_cert,
            allow_unauthenticated_reads,
            default_verify_permits(),
        )
    }

    fn with_verify_permits(
        htpasswd_file: Option<&Path>,
        require_client_cert: bool,
        allow_unauthenticated_reads: bool,
        verify_permits: usize,
    ) -> Result<Authenticator, HtpasswdError> {
        let htpasswd = match htpasswd_file {
            Some(path) => {
                let file = Watcher::new([path]);
                let users = Htpasswd::load(path)?;
                tracing::info!(file = %path.display(), users = users.len(), "basic authentication enabled");
                Some(Arc::new(HtpasswdSource {
                    path: path.to_path_buf(),
                    file,
                    state: RwLock::new(Credentials::new(users)),
                    verify_permits: Arc::new(Semaphore::new(verify_permits.max(1))),
                    verifies: AtomicU64::new(0),
                }))
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
    ///
    /// Answers at once for headers checked recently (successes until the
    /// file changes, failures for a minute); otherwise waits for a verify
    /// permit and verifies on the blocking pool. Dropping the future while
    /// it waits for a permit cancels the verify; once started, a verify
    /// runs to the end and its answer is remembered.
    pub async fn check(
        &self,
        authorization: Option<&[u8]>,
        client_cert: bool,
        access: Access,
    ) -> Result<(), Denied> {
        let mut missing = None;
        if let Some(source) = &self.htpasswd {
            match authorization {
                Some(value) => source.check(value).await?,
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
        if !source.file.changed() {
            return;
        }
        match Htpasswd::load(&source.path) {
            Ok(users) => {
                tracing::info!(file = %source.path.display(), users = users.len(), "htpasswd file reloaded");
                // New users, and nothing remembered about the old ones:
                // neither a removed user's success nor a failure of a
                // password that may be right now.
                *write(&source.state) = Credentials::new(users);
            }
            Err(e) => {
                tracing::error!(error = %e, "htpasswd file changed but cannot be used; keeping the previous users");
            }
        }
    }

    /// Checks the htpasswd file for changes until the process ends.
    pub fn spawn_reloader(self: &Arc<Self>) {
        if self.htpasswd.is_none() {
            return;
        }
        reload::spawn_checks(
            self,
            reload::CHECK_INTERVAL,
            Authenticator::reload_if_changed,
        );
    }
}

impl HtpasswdSource {
    async fn check(self: &Arc<Self>, header: &[u8]) -> Result<(), Denied> {
        let key: Key = Sha256::digest(header).into();
        if let Some(answer) = self.remembered(&key) {
            return answer;
        }
        // A malformed header is refused without waiting for a permit.
        let (user, password) = parse_basic(header)?;
        let permit = self
            .verify_permits
            .clone()
            .acquire_owned()
            .await
            .expect("the verify semaphore is never closed");
        // The same header may have been verified while this one waited
        // (a build's parallel requests all start with the same header).
        if let Some(answer) = self.remembered(&key) {
            return answer;
        }
        let source = self.clone();
        let verified = tokio::task::spawn_blocking(move || {
            // Held until the verify ends, even if the request is gone.
            let _permit = permit;
            source.verify(key, &user, &password)
        })
        .await;
        match verified {
            Ok(true) => Ok(()),
            Ok(false) => Err(Denied::BadCredentials),
            Err(e) => {
                tracing::error!(error = %e, "password verify failed to run");
                Err(Denied::BadCredentials)
            }
        }
    }

    /// The answer for a header checked recently, if any.
    fn remembered(&self, key: &Key) -> Option<Result<(), Denied>> {
        let state = read(&self.state);
        if state.verified.contains(key) {
            Some(Ok(()))
        } else if state.failed.contains(key, Instant::now()) {
            Some(Err(Denied::BadCredentials))
        } else {
            None
        }
    }

    /// The slow part (bcrypt); runs on the blocking pool.
    fn verify(&self, key: Key, user: &str, password: &[u8]) -> bool {
        let users = read(&self.state).users.clone();
        self.verifies.fetch_add(1, Ordering::Relaxed);
        let ok = users.verify(user, password);
        let mut state = write(&self.state);
        // An answer about users a reload has replaced is not remembered.
        if Arc::ptr_eq(&state.users, &users) {
            if !ok {
                state.failed.insert(key, Instant::now());
            } else {
                if state.verified.len() >= VERIFIED_CACHE_MAX {
                    state.verified.clear();
                }
                state.verified.insert(key);
            }
        }
        ok
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
        auth_with_permits(anonymous_reads, mtls, 2)
    }

    fn auth_with_permits(
        anonymous_reads: bool,
        mtls: bool,
        permits: usize,
    ) -> (tempfile::TempDir, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, FILE).unwrap();
        let a = Authenticator::with_verify_permits(Some(&path), mtls, anonymous_reads, permits)
            .unwrap();
        (dir, a)
    }

    fn source(a: &Authenticator) -> &Arc<HtpasswdSource> {
        a.htpasswd.as_ref().unwrap()
    }

    fn verifies(a: &Authenticator) -> u64 {
        source(a).verifies.load(Ordering::Relaxed)
    }

    async fn check(a: &Authenticator, header: &str) -> Result<(), Denied> {
        a.check(Some(header.as_bytes()), false, Access::Write).await
    }

    #[tokio::test]
    async fn basic_credentials_decide_reads_and_writes() {
        let (_d, a) = auth(false, false);
        let good = basic_header("alice", "password");
        let bad = basic_header("alice", "passw0rd");
        for access in [Access::Read, Access::Write] {
            assert_eq!(a.check(Some(good.as_bytes()), false, access).await, Ok(()));
            // Twice: the second answer comes from the verified cache.
            assert_eq!(a.check(Some(good.as_bytes()), false, access).await, Ok(()));
            assert_eq!(
                a.check(Some(bad.as_bytes()), false, access).await,
                Err(Denied::BadCredentials)
            );
            assert_eq!(
                a.check(None, false, access).await,
                Err(Denied::NoCredentials)
            );
            assert_eq!(
                a.check(Some(b"Bearer x"), false, access).await,
                Err(Denied::Malformed)
            );
            assert_eq!(
                a.check(Some(b"Basic !!!"), false, access).await,
                Err(Denied::Malformed)
            );
        }
        assert_eq!(
            a.check(
                Some(basic_header("mallory", "password").as_bytes()),
                false,
                Access::Read
            )
            .await,
            Err(Denied::BadCredentials)
        );
    }

    #[tokio::test]
    async fn anonymous_reads_never_allow_writes_or_wrong_passwords() {
        let (_d, a) = auth(true, false);
        assert_eq!(a.check(None, false, Access::Read).await, Ok(()));
        assert_eq!(
            a.check(None, false, Access::Write).await,
            Err(Denied::NoCredentials)
        );
        let bad = basic_header("alice", "nope");
        assert_eq!(
            a.check(Some(bad.as_bytes()), false, Access::Read).await,
            Err(Denied::BadCredentials)
        );
        // Also when the answer comes from the failure cache.
        assert_eq!(
            a.check(Some(bad.as_bytes()), false, Access::Read).await,
            Err(Denied::BadCredentials)
        );
        assert_eq!(verifies(&a), 1);
    }

    #[tokio::test]
    async fn client_certificates_and_passwords_are_both_required_when_both_are_set() {
        let (_d, a) = auth(false, true);
        let good = basic_header("alice", "password");
        assert_eq!(
            a.check(Some(good.as_bytes()), true, Access::Write).await,
            Ok(())
        );
        assert_eq!(
            a.check(Some(good.as_bytes()), false, Access::Write).await,
            Err(Denied::NoClientCertificate)
        );
        let certs_only = Authenticator::new(None, true, true).unwrap();
        assert_eq!(certs_only.check(None, true, Access::Write).await, Ok(()));
        assert_eq!(certs_only.check(None, false, Access::Read).await, Ok(()));
        assert_eq!(
            certs_only.check(None, false, Access::Write).await,
            Err(Denied::NoClientCertificate)
        );
    }

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_a_broken_one_ignored() {
        let (dir, a) = auth(false, false);
        let path = dir.path().join("htpasswd");
        let alice = basic_header("alice", "password");
        assert_eq!(check(&a, &alice).await, Ok(()));
        // bob:password, alice removed.
        std::fs::write(&path, "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
        a.reload_if_changed();
        assert_eq!(
            check(&a, &alice).await,
            Err(Denied::BadCredentials),
            "a removed user's cached success must not outlive the reload"
        );
        let bob = basic_header("bob", "password");
        assert_eq!(check(&a, &bob).await, Ok(()));
        std::fs::write(&path, "garbage line without colon, longer than before\n").unwrap();
        a.reload_if_changed();
        assert_eq!(check(&a, &bob).await, Ok(()));
    }

    #[tokio::test]
    async fn successes_are_verified_once() {
        let (_d, a) = auth(false, false);
        let good = basic_header("alice", "password");
        for _ in 0..10 {
            assert_eq!(check(&a, &good).await, Ok(()));
        }
        assert_eq!(verifies(&a), 1);
    }

    #[tokio::test]
    async fn a_recent_failure_is_refused_without_another_verify() {
        let (_d, a) = auth(false, false);
        let bad = basic_header("alice", "typo");
        for _ in 0..10 {
            assert_eq!(check(&a, &bad).await, Err(Denied::BadCredentials));
        }
        assert_eq!(verifies(&a), 1);
        // A different wrong password is a different header: verified.
        let other = basic_header("alice", "typo2");
        assert_eq!(check(&a, &other).await, Err(Denied::BadCredentials));
        assert_eq!(verifies(&a), 2);
        // Malformed headers are refused before any verify.
        assert_eq!(check(&a, "Basic !!!").await, Err(Denied::Malformed));
        assert_eq!(verifies(&a), 2);
        // The right password still gets in.
        let good = basic_header("alice", "password");
        assert_eq!(check(&a, &good).await, Ok(()));
        assert_eq!(verifies(&a), 3);
    }

    #[tokio::test]
    async fn the_failure_cache_is_bounded() {
        let (_d, a) = auth(false, false);
        let bad = |n: usize| basic_header("alice", &format!("wrong-{n}"));
        let n = FAILED_CACHE_MAX + 100;
        for i in 0..n {
            assert_eq!(check(&a, &bad(i)).await, Err(Denied::BadCredentials));
        }
        assert_eq!(verifies(&a), n as u64);
        {
            let state = source(&a).state.read().unwrap();
            assert!(
                state.failed.len() <= FAILED_CACHE_MAX,
                "{}",
                state.failed.len()
            );
        }
        // The newest failures are remembered, the oldest made way.
        assert_eq!(check(&a, &bad(n - 1)).await, Err(Denied::BadCredentials));
        assert_eq!(verifies(&a), n as u64);
        assert_eq!(check(&a, &bad(0)).await, Err(Denied::BadCredentials));
        assert_eq!(verifies(&a), n as u64 + 1);
    }

    #[tokio::test]
    async fn a_reload_forgets_failures() {
        let (dir, a) = auth(false, false);
        let path = dir.path().join("htpasswd");
        // SHA-1("newpass"): alice's password changes to what she just tried.
        let tried = basic_header("alice", "newpass");
        assert_eq!(check(&a, &tried).await, Err(Denied::BadCredentials));
        assert_eq!(check(&a, &tried).await, Err(Denied::BadCredentials));
        assert_eq!(verifies(&a), 1);
        std::fs::write(
            &path,
            "alice:{SHA}bFWAPW8dehd6DbPrSzQ7DVD5wRE=\n# rotated\n",
        )
        .unwrap();
        a.reload_if_changed();
        assert_eq!(check(&a, &tried).await, Ok(()));
        assert_eq!(verifies(&a), 2);
        assert_eq!(source(&a).state.read().unwrap().failed.len(), 0);
    }

    #[tokio::test]
    async fn a_verify_waits_for_a_permit() {
        let (_d, a) = auth_with_permits(false, false, 1);
        let a = Arc::new(a);
        let held = source(&a)
            .verify_permits
            .clone()
            .acquire_owned()
            .await
            .unwrap();
        let task = {
            let a = a.clone();
            tokio::spawn(async move { check(&a, &basic_header("alice", "password")).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!task.is_finished());
        assert_eq!(verifies(&a), 0);
        drop(held);
        assert_eq!(task.await.unwrap(), Ok(()));
        assert_eq!(verifies(&a), 1);
    }

    #[tokio::test]
    async fn checks_that_waited_together_verify_once() {
        let (_d, a) = auth_with_permits(false, false, 1);
        let a = Arc::new(a);
        let held = source(&a)
            .verify_permits
            .clone()
            .acquire_owned()
            .await
            .unwrap();
        let tasks: Vec<_> = (0..8usize)
            .map(|i| {
                let a = a.clone();
                let password = if i.is_multiple_of(2) {
                    "password"
                } else {
                    "typo"
                };
                tokio::spawn(async move { check(&a, &basic_header("alice", password)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(held);
        for (i, task) in tasks.into_iter().enumerate() {
            let want = if i.is_multiple_of(2) {
                Ok(())
            } else {
                Err(Denied::BadCredentials)
            };
            assert_eq!(task.await.unwrap(), want);
        }
        assert_eq!(verifies(&a), 2, "one verify per distinct header");
    }

    #[tokio::test]
    async fn a_check_dropped_while_waiting_verifies_nothing() {
        let (_d, a) = auth_with_permits(false, false, 1);
        let a = Arc::new(a);
        let held = source(&a)
            .verify_permits
            .clone()
            .acquire_owned()
            .await
            .unwrap();
        let task = {
            let a = a.clone();
            tokio::spawn(async move { check(&a, &basic_header("alice", "typo")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        drop(held);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(verifies(&a), 0);
        assert_eq!(source(&a).verify_permits.available_permits(), 1);
    }
}
