//! The proxy's metrics, registered on an explicit [`Registry`] that the admin server encodes.
//!
//! | metric | labels |
//! | --- | --- |
//! | `plexus_proxy_connections_total` | `direction`, `upstream` |
//! | `plexus_proxy_connections_active` | `direction`, `upstream` |
//! | `plexus_proxy_bytes_sent_total` (to the downstream peer) | `direction`, `upstream` |
//! | `plexus_proxy_bytes_received_total` (from the downstream peer) | `direction`, `upstream` |
//! | `plexus_proxy_connect_errors_total` | `upstream` |
//! | `plexus_proxy_upstream_denied_total` (outbound connections the destination's intentions denied) | `upstream` |
//! | `plexus_proxy_endpoints` | `upstream` |
//!
//! `upstream` is the destination service name, or `local_app` for the inbound direction. Both are
//! bounded by the sidecar's registration.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `upstream` label of the inbound direction.
pub(crate) const LOCAL_APP: &str = "local_app";

/// Which way a connection goes through the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    /// From another sidecar to the local app.
    Inbound,
    /// From the local app to an upstream.
    Outbound,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TrafficLabels {
    direction: Direction,
    upstream: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

/// Every metric family of the proxy. Cheap to clone (shared counters).
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    connections: Family<TrafficLabels, Counter>,
    active: Family<TrafficLabels, Gauge>,
    bytes_sent: Family<TrafficLabels, Counter>,
    bytes_received: Family<TrafficLabels, Counter>,
    connect_errors: Family<UpstreamLabels, Counter>,
    denied: Family<UpstreamLabels, Counter>,
    endpoints: Family<UpstreamLabels, Gauge>,
}

/// The metrics of one listener, resolved once so connections only touch atomics.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListenerMetrics {
    /// Accepted connections.
    pub connections: Counter,
    /// Connections being served.
    pub active: Gauge,
    /// Bytes written to the downstream peer.
    pub bytes_sent: Counter,
    /// Bytes read from the downstream peer.
    pub bytes_received: Counter,
    /// Connections closed because no endpoint accepted them.
    pub connect_errors: Counter,
    /// Outbound connections the destination's intentions denied (its verdict said so).
    pub denied: Counter,
}

impl Metrics {
    /// Creates the families and registers them under the `plexus_proxy` prefix.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let sub = registry.sub_registry_with_prefix("plexus_proxy");
        sub.register(
            "connections",
            "Connections accepted",
            metrics.connections.clone(),
        );
        sub.register(
            "connections_active",
            "Connections being served",
            metrics.active.clone(),
        );
        sub.register(
            "bytes_sent",
            "Bytes sent to the downstream peer",
            metrics.bytes_sent.clone(),
        );
        sub.register(
            "bytes_received",
            "Bytes received from the downstream peer",
            metrics.bytes_received.clone(),
        );
        sub.register(
            "connect_errors",
            "Connections closed because no endpoint accepted a connection",
            metrics.connect_errors.clone(),
        );
        sub.register(
            "upstream_denied",
            "Outbound connections the destination sidecar denied by intention",
            metrics.denied.clone(),
        );
        sub.register(
            "endpoints",
            "Endpoints known for an upstream",
            metrics.endpoints.clone(),
        );
        metrics
    }

    /// The metrics of the listener for `direction` and `upstream`.
    pub(crate) fn listener(&self, direction: Direction, upstream: &str) -> ListenerMetrics {
        let traffic = TrafficLabels {
            direction,
            upstream: upstream.to_owned(),
        };
        let by_upstream = UpstreamLabels {
            upstream: upstream.to_owned(),
        };
        ListenerMetrics {
            connections: self.connections.get_or_create(&traffic).clone(),
            active: self.active.get_or_create(&traffic).clone(),
            bytes_sent: self.bytes_sent.get_or_create(&traffic).clone(),
            bytes_received: self.bytes_received.get_or_create(&traffic).clone(),
            connect_errors: self.connect_errors.get_or_create(&by_upstream).clone(),
            denied: self.denied.get_or_create(&by_upstream).clone(),
        }
    }

    /// The endpoint-count gauge of `upstream`.
    pub(crate) fn endpoints(&self, upstream: &str) -> Gauge {
        self.endpoints
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .clone()
    }

    /// Drops the endpoint-count gauge of a removed upstream (its counters stay).
    pub(crate) fn forget_endpoints(&self, upstream: &str) {
        self.endpoints.remove(&UpstreamLabels {
            upstream: upstream.to_owned(),
        });
    }
}

/// Prometheus text exposition (OpenMetrics) of `registry`.
pub(crate) fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_as_documented() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let inbound = metrics.listener(Direction::Inbound, LOCAL_APP);
        inbound.connections.inc();
        inbound.bytes_received.inc_by(5);
        let outbound = metrics.listener(Direction::Outbound, "echo");
        outbound.connect_errors.inc();
        outbound.denied.inc();
        metrics.endpoints("echo").set(2);
        let text = encode(&registry).unwrap();
        for line in [
            r#"plexus_proxy_connections_total{direction="inbound",upstream="local_app"} 1"#,
            r#"plexus_proxy_bytes_received_total{direction="inbound",upstream="local_app"} 5"#,
            r#"plexus_proxy_connections_active{direction="outbound",upstream="echo"} 0"#,
            r#"plexus_proxy_bytes_sent_total{direction="outbound",upstream="echo"} 0"#,
            r#"plexus_proxy_connect_errors_total{upstream="echo"} 1"#,
            r#"plexus_proxy_upstream_denied_total{upstream="echo"} 1"#,
            r#"plexus_proxy_endpoints{upstream="echo"} 2"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        metrics.forget_endpoints("echo");
        assert!(
            !encode(&registry)
                .unwrap()
                .contains("plexus_proxy_endpoints{")
        );
    }
}
