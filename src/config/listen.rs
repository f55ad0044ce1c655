//! Listener addresses in bazel-remote's (Go `net.Listen`'s) notation:
//! `[host]:port`, where an empty host means every interface, or
//! `unix:///path.sock`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use super::ListenAddr;

const UNIX_PREFIX: &str = "unix://";

/// Parses `[host]:port` or `unix://path`. A host name is resolved once, here,
/// as Go would when it opens the listener.
pub(super) fn parse_listen_addr(input: &str) -> Result<ListenAddr, String> {
    if let Some(path) = input.strip_prefix(UNIX_PREFIX) {
        if path.is_empty() {
            return Err(format!("{input:?} is missing the socket path"));
        }
        return Ok(ListenAddr::Unix(PathBuf::from(path)));
    }

    let malformed = || format!("{input:?} must be [host]:port or unix:///path.sock");
    let (host, port) = input.rsplit_once(':').ok_or_else(malformed)?;
    let host = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.strip_suffix(']').ok_or_else(malformed)?,
        // An unbracketed IPv6 address is ambiguous, as in Go.
        None if host.contains(':') => return Err(malformed()),
        None => host,
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{input:?} has an invalid port {port:?}"))?;

    if host.is_empty() {
        return Ok(ListenAddr::Tcp(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port,
        )));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ListenAddr::Tcp(SocketAddr::new(ip, port)));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve host {host:?}: {err}"))?
        .next()
        .map(ListenAddr::Tcp)
        .ok_or_else(|| format!("host {host:?} has no address"))
}

/// Go's `net.JoinHostPort`, for the deprecated `host` + `port` keys.
pub(super) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The TCP port of an address, for the HTTP/gRPC conflict check. Port 0
/// asks the kernel for a free port, so it never conflicts.
pub(super) fn tcp_port(addr: &ListenAddr) -> Option<u16> {
    match addr {
        ListenAddr::Tcp(sock) if sock.port() != 0 => Some(sock.port()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(s: &str) -> SocketAddr {
        match parse_listen_addr(s) {
            Ok(ListenAddr::Tcp(addr)) => addr,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn tcp_forms() {
        assert_eq!(tcp(":8080"), "0.0.0.0:8080".parse().unwrap());
        assert_eq!(tcp("0.0.0.0:8080"), "0.0.0.0:8080".parse().unwrap());
        assert_eq!(tcp("127.0.0.1:0"), "127.0.0.1:0".parse().unwrap());
        assert_eq!(tcp("[::1]:9092"), "[::1]:9092".parse().unwrap());
        assert!(tcp("localhost:8080").ip().is_loopback());
    }

    #[test]
    fn unix_form() {
        assert_eq!(
            parse_listen_addr("unix:///run/cache.sock"),
            Ok(ListenAddr::Unix("/run/cache.sock".into()))
        );
        assert!(parse_listen_addr("unix://").is_err());
    }

    #[test]
    fn malformed() {
        for bad in [
            "8080",
            "localhost",
            "::1:8080",
            "[::1:8080",
            "host:http",
            "host:70000",
            "",
        ] {
            assert!(parse_listen_addr(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn join() {
        assert_eq!(join_host_port("", 9092), ":9092");
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
        assert_eq!(tcp(&join_host_port("::1", 80)), "[::1]:80".parse().unwrap());
    }
}
