//! The `bazel_cache_connections_*` series: each port's connections (open,
//! accepted, refused at `max_connections`, cut by a timeout or a flood,
//! accept errors), read from the ports' [`ConnectionStats`] at scrape time.
//! The names are ours (bazel-remote has no such metrics), hence
//! `bazel_cache_` rather than `bazel_remote_`.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::listen::ConnectionStats;
use crate::listen::stats::Phase;

#[derive(Debug)]
pub(super) struct ConnectionCollector {
    pub(super) ports: Vec<Arc<ConnectionStats>>,
}

fn gauge(value: usize) -> ConstGauge {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

/// One series per port of a family whose only label is `port`.
fn per_port<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    ports: &[Arc<ConnectionStats>],
    (name, help, kind): (&str, &str, MetricType),
    value: impl Fn(&ConnectionStats) -> M,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, kind)?;
    for port in ports {
        value(port).encode(family.encode_family(&[("port", port.port())])?)?;
    }
    Ok(())
}

impl Collector for ConnectionCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let ports = &self.ports[..];
        if ports.is_empty() {
            return Ok(());
        }
        per_port(
            &mut enc,
            ports,
            (
                "bazel_cache_connections_open",
                "Connections open now, by port (TLS handshakes included)",
                MetricType::Gauge,
            ),
            |p| gauge(p.open()),
        )?;
        per_port(
            &mut enc,
            ports,
            (
                "bazel_cache_connections_limit",
                "max_connections in effect: the most connections a port keeps open (lowered to fit the open-file limit)",
                MetricType::Gauge,
            ),
            |p| gauge(p.limit()),
        )?;
        per_port(
            &mut enc,
            ports,
            (
                "bazel_cache_connections_accepted",
                "Connections accepted and served, by port",
                MetricType::Counter,
            ),
            |p| ConstCounter::new(p.accepted()),
        )?;
        per_port(
            &mut enc,
            ports,
            (
                "bazel_cache_connections_refused",
                "Connections closed as soon as accepted because max_connections were open",
                MetricType::Counter,
            ),
            |p| ConstCounter::new(p.refused()),
        )?;
        per_port(
            &mut enc,
            ports,
            (
                "bazel_cache_connections_accept_errors",
                "Failed accepts (out of file descriptors and the like), by port",
                MetricType::Counter,
            ),
            |p| ConstCounter::new(p.accept_errors()),
        )?;
        per_port(
            &mut enc,
            ports,
            (
                "bazel_cache_connections_floods",
                "HTTP/2 connections closed for sending PING or SETTINGS frames faster than allowed",
                MetricType::Counter,
            ),
            |p| ConstCounter::new(p.floods()),
        )?;
        let mut family = enc.encode_descriptor(
            "bazel_cache_connections_timeouts",
            "Connections closed by a timeout, by port and phase: tls_handshake, request_head (nothing complete since accept), idle (HTTP/2 without a request)",
            None,
            MetricType::Counter,
        )?;
        for port in ports {
            for phase in Phase::ALL {
                ConstCounter::new(port.timeouts(phase)).encode(
                    family.encode_family(&[("port", port.port()), ("phase", phase.label())])?,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn every_port_gets_its_series() {
        let http = ConnectionStats::new("http", 3);
        let grpc = ConnectionStats::new("grpc", 5);
        let _open = http.try_open().unwrap();
        let _full: Vec<_> = (0..5).filter_map(|_| grpc.try_open()).collect();
        assert!(grpc.try_open().is_none());
        grpc.timed_out(Phase::Idle);
        http.accept_failed();
        http.flooded();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ConnectionCollector {
            ports: vec![http, grpc],
        }));
        let text = super::super::encode_for_test(&registry);
        for line in [
            "bazel_cache_connections_open{port=\"http\"} 1",
            "bazel_cache_connections_open{port=\"grpc\"} 5",
            "bazel_cache_connections_limit{port=\"grpc\"} 5",
            "bazel_cache_connections_accepted_total{port=\"grpc\"} 5",
            "bazel_cache_connections_refused_total{port=\"grpc\"} 1",
            "bazel_cache_connections_refused_total{port=\"http\"} 0",
            "bazel_cache_connections_accept_errors_total{port=\"http\"} 1",
            "bazel_cache_connections_floods_total{port=\"http\"} 1",
            "bazel_cache_connections_timeouts_total{port=\"grpc\",phase=\"idle\"} 1",
            "bazel_cache_connections_timeouts_total{port=\"http\",phase=\"request_head\"} 0",
            "bazel_cache_connections_timeouts_total{port=\"http\",phase=\"tls_handshake\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
