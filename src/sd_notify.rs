//! systemd readiness notification (`sd_notify(3)`), so a `Type=notify` unit
//! (the NixOS module's) is "started" only once the store is open and the
//! listeners are bound, and shows "stopping" while requests drain.
//!
//! The protocol is one datagram of newline-separated `KEY=VALUE` assignments
//! sent to the Unix socket named by `$NOTIFY_SOCKET`: a path, or an abstract
//! socket name when it starts with `@`. Written here rather than pulled in as
//! a crate because it is these few lines over the standard library.
//!
//! Outside systemd (no `$NOTIFY_SOCKET`: a terminal, Kubernetes, the tests)
//! every function is a no-op. A failure to notify is logged and never stops
//! the server: serving without readiness reporting beats not serving, and
//! systemd's start timeout reports the problem anyway.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

/// The environment variable systemd sets for `Type=notify` services.
pub(crate) const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotifyError {
    /// `$NOTIFY_SOCKET` is neither an absolute path nor an `@abstract` name
    /// (systemd also knows `vsock:` addresses, used for VMs; not supported).
    #[error("{NOTIFY_SOCKET_ENV}={0:?} is neither an absolute socket path nor an @abstract name")]
    BadAddress(String),
    /// A state must not be empty or contain NUL bytes.
    #[error("invalid notification {0:?}: empty or contains a NUL byte")]
    BadState(String),
    #[error("sending {state:?} to {socket}: {source}")]
    Send {
        socket: String,
        state: String,
        source: std::io::Error,
    },
}

/// Tells systemd the service is ready (store open, listeners bound), with a
/// human-readable status shown by `systemctl status`.
pub(crate) fn ready() {
    log_failure(notify("READY=1\nSTATUS=serving"));
}

/// Tells systemd the service is shutting down (requests are draining), so
/// `systemctl status` shows "deactivating" instead of a silent delay.
pub(crate) fn stopping() {
    log_failure(notify("STOPPING=1\nSTATUS=draining requests"));
}

/// Updates the one-line status shown by `systemctl status`.
pub(crate) fn status(text: &str) {
    // A newline would start a new assignment; keep the status on one line.
    let line = text.replace('\n', " ");
    log_failure(notify(&format!("STATUS={line}")));
}

fn log_failure(result: Result<bool, NotifyError>) {
    if let Err(e) = result {
        tracing::warn!("systemd notification failed: {e}");
    }
}

/// Sends `state` to `$NOTIFY_SOCKET`. `Ok(false)` when the variable is unset
/// or empty (not running under systemd), `Ok(true)` once sent.
pub(crate) fn notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var(NOTIFY_SOCKET_ENV) {
        Ok(socket) if !socket.is_empty() => notify_to(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the socket `socket`, spelled as in `$NOTIFY_SOCKET`.
pub(crate) fn notify_to(socket: &str, state: &str) -> Result<(), NotifyError> {
    if state.is_empty() || state.contains('\0') {
        return Err(NotifyError::BadState(state.to_owned()));
    }
    let addr = socket_addr(socket)?;
    let send_err = |source| NotifyError::Send {
        socket: socket.to_owned(),
        state: state.to_owned(),
        source,
    };
    let sender = UnixDatagram::unbound().map_err(send_err)?;
    sender
        .send_to_addr(state.as_bytes(), &addr)
        .map_err(send_err)?;
    Ok(())
}

/// `/run/systemd/notify` → a path address; `@name` → the abstract name
/// `name` (Linux only: the `@` stands for the leading NUL byte).
fn socket_addr(socket: &str) -> Result<SocketAddr, NotifyError> {
    let bad = || NotifyError::BadAddress(socket.to_owned());
    if let Some(name) = socket.strip_prefix('@') {
        return abstract_addr(name).ok_or_else(bad);
    }
    if !Path::new(socket).is_absolute() {
        return Err(bad());
    }
    SocketAddr::from_pathname(socket).map_err(|_| bad())
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &str) -> Option<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name.as_bytes()).ok()
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_name: &str) -> Option<SocketAddr> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A listening notify socket bound to a fresh path, as systemd's.
    fn listener() -> (tempfile::TempDir, String, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (dir, path.to_str().unwrap().to_owned(), socket)
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("no datagram received");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_the_state_to_a_socket_path() {
        let (_dir, path, socket) = listener();
        notify_to(&path, "READY=1\nSTATUS=serving").unwrap();
        assert_eq!(receive(&socket), "READY=1\nSTATUS=serving");
        notify_to(&path, "STOPPING=1").unwrap();
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket_named_with_at() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("bazel-cache-sd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        notify_to(&format!("@{name}"), "READY=1").unwrap();
        assert_eq!(receive(&socket), "READY=1");
    }

    #[test]
    fn relative_and_vsock_addresses_are_refused() {
        for socket in ["notify", "run/notify", "vsock:2:1234"] {
            match notify_to(socket, "READY=1") {
                Err(NotifyError::BadAddress(s)) => assert_eq!(s, socket),
                other => panic!("{socket}: expected BadAddress, got {other:?}"),
            }
        }
    }

    #[test]
    fn empty_or_nul_states_are_refused() {
        let (_dir, path, _socket) = listener();
        assert!(matches!(
            notify_to(&path, ""),
            Err(NotifyError::BadState(_))
        ));
        assert!(matches!(
            notify_to(&path, "READY=1\0"),
            Err(NotifyError::BadState(_))
        ));
    }

    #[test]
    fn a_missing_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let err = notify_to(path.to_str().unwrap(), "READY=1").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, NotifyError::Send { .. }), "{err:?}");
        assert!(text.contains("gone") && text.contains("READY=1"), "{text}");
    }

    /// The test process is not started by systemd, so the variable is unset
    /// and the public functions must do nothing (and not fail).
    #[test]
    fn without_notify_socket_nothing_is_sent() {
        if std::env::var_os(NOTIFY_SOCKET_ENV).is_some() {
            eprintln!("NOTIFY_SOCKET is set in the test environment; skipping");
            return;
        }
        assert!(!notify("READY=1").unwrap());
        ready();
        stopping();
        status("two\nlines");
    }
}
