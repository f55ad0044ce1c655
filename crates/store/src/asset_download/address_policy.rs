//! Which hosts the Remote Asset downloader may reach. A cache that fetches
//! any URL a client names is a server-side request forgery tool: without
//! this, a client could read cloud metadata (169.254.169.254) or services
//! only reachable from the cache's network. So loopback, link-local,
//! private and other non-global addresses are refused, for names too (every
//! address a name resolves to is checked, in the resolver the connector
//! uses, so nothing connects to an address that was not checked), unless
//! the host is on the allow-list.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// The allow-list: when empty, every host with only global addresses; when
/// set, only the hosts listed (names or IP literals, compared without
/// case), whatever their addresses.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed_hosts: Arc<Vec<String>>,
}

impl AddressPolicy {
    pub fn new(allowed_hosts: Vec<String>) -> Self {
        let allowed_hosts = allowed_hosts
            .into_iter()
            .map(|h| normalize(&h))
            .filter(|h| !h.is_empty())
            .collect();
        AddressPolicy {
            allowed_hosts: Arc::new(allowed_hosts),
        }
    }

    fn listed(&self, host: &str) -> bool {
        self.allowed_hosts.contains(&normalize(host))
    }

    /// Whether a URL's host may be contacted at all, before resolving it;
    /// an IP literal is checked here (the connector does not resolve it).
    pub fn check_host(&self, host: &str) -> Result<(), String> {
        if self.listed(host) {
            return Ok(());
        }
        if !self.allowed_hosts.is_empty() {
            return Err(format!("host {host} is not in remote_asset_allowed_hosts"));
        }
        match normalize(host).parse::<IpAddr>() {
            Ok(ip) if !is_global(ip) => Err(format!(
                "address {ip} is loopback, link-local or private; list it in \
                 remote_asset_allowed_hosts to allow it"
            )),
            _ => Ok(()),
        }
    }

    /// Every address of a resolved name, refused as a whole when one of
    /// them is not global (a name resolving to both is not trusted).
    fn check_addrs(&self, host: &str, addrs: &[SocketAddr]) -> Result<(), String> {
        if self.listed(host) {
            return Ok(());
        }
        match addrs.iter().find(|a| !is_global(a.ip())) {
            Some(a) => Err(format!(
                "{host} resolves to {}, which is loopback, link-local or private; \
                 list the host in remote_asset_allowed_hosts to allow it",
                a.ip()
            )),
            None => Ok(()),
        }
    }
}

/// Host names compare without case and without IPv6 brackets.
fn normalize(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Whether an address is reachable on the public internet: not loopback,
/// unspecified, private (RFC 1918, fc00::/7), link-local (169.254.0.0/16,
/// fe80::/10), shared (100.64.0.0/10), multicast, broadcast or documentation.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_global_v4(v4),
            None => is_global_v6(v6),
        },
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || a >= 240)
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || first == 0x2001 && ip.segments()[1] == 0x0db8)
}

/// The connector's resolver: resolves with the system resolver (on a
/// blocking thread, as tokio does) and applies the policy to the answer.
#[derive(Clone)]
pub(super) struct CheckedResolver {
    pub(super) policy: AddressPolicy,
}

impl tower::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            policy
                .check_addrs(&host, &addrs)
                .map_err(io::Error::other)?;
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_loopback_and_private_are_refused_unless_listed() {
        let open = AddressPolicy::new(vec![]);
        for host in [
            "169.254.169.254",
            "127.0.0.1",
            "10.1.2.3",
            "[::1]",
            "[fe80::1]",
            "192.168.0.1",
        ] {
            assert!(open.check_host(host).is_err(), "{host}");
        }
        assert!(open.check_host("8.8.8.8").is_ok());
        assert!(open.check_host("example.com").is_ok());
        let listed = AddressPolicy::new(vec!["127.0.0.1".into()]);
        assert!(listed.check_host("127.0.0.1").is_ok());
        assert!(listed.check_host("8.8.8.8").is_err());
        let addrs = ["127.0.0.1:0".parse().unwrap()];
        assert!(open.check_addrs("localhost", &addrs).is_err());
        assert!(
            AddressPolicy::new(vec!["LocalHost".into()])
                .check_addrs("localhost", &addrs)
                .is_ok()
        );
    }

    #[test]
    fn mapped_ipv4_is_judged_as_ipv4() {
        assert!(!is_global("::ffff:169.254.169.254".parse().unwrap()));
        assert!(is_global("::ffff:8.8.8.8".parse().unwrap()));
    }
}
