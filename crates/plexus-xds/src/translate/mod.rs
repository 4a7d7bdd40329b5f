//! Translation: a proxy's [`Inputs`] → Envoy resources. Pure (no I/O, no clock), so every
//! mapping is tested by building resources and reading them back.
//!
//! ```text
//!  registration ─► public_listener (mTLS, SPIFFE check) ─┬─ ALPN plexus-h2 ─► HCM ─► RDS public_listener
//!                                                        │                    (RBAC per route) ─► local_app
//!                                                        └─ otherwise ─► RBAC (L4) ─► tcp_proxy ─► local_app
//!  upstream ─► upstream:<name> listener ─┬─ tcp ─► tcp_proxy ─► cluster(s) of the chain's default route
//!                                        └─ http ─► HCM (fault, rate limit) ─► RDS <name>: chain routes
//!  chain target ─► cluster <target id> (EDS, mTLS to the target's SPIFFE id, LB, limits, outlier)
//!                ─► EDS: the target's passing endpoints, failover targets at lower priorities
//!  leaf, roots ─► SDS secrets "leaf" and "roots"
//! ```
//!
//! Between sidecars, TCP uses ALPN `plexus-tcp/1` and HTTP uses HTTP/2 with ALPN `plexus-h2`,
//! as the built-in proxy does, so Envoy and `plexus proxy` talk to each other in both directions.

mod clusters;
mod listeners;
mod rbac;
mod routes;
mod tls;

#[cfg(test)]
pub(crate) mod tests;

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address, config_source,
    socket_address,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use plexus_api::config_entry::chain::Protocol;

use crate::model::Inputs;
use crate::resources::{Resource, Resources, TypeUrl};

/// The inbound listener's name (Consul's).
pub const PUBLIC_LISTENER: &str = "public_listener";
/// The inbound HTTP route configuration's name.
pub const PUBLIC_ROUTE: &str = "public_listener";
/// The cluster of the local app (HTTP/1.1 for HTTP, raw bytes for TCP).
pub const LOCAL_APP: &str = "plexus:local_app";
/// The cluster of the local app spoken to over h2c (services of protocol `http2` or `grpc`).
pub const LOCAL_APP_H2: &str = "plexus:local_app_h2";
/// The SDS secret holding the proxy's leaf and key.
pub const LEAF_SECRET: &str = "leaf";
/// The SDS secret holding every trusted root.
pub const ROOTS_SECRET: &str = "roots";
/// ALPN for TCP between sidecars (the built-in proxy's).
pub const ALPN_TCP: &str = "plexus-tcp/1";
/// ALPN for HTTP/2 between sidecars (the built-in proxy's).
pub const ALPN_H2: &str = "plexus-h2";

/// The outbound listener of an upstream.
pub fn upstream_listener_name(destination: &str) -> String {
    format!("upstream:{destination}")
}

/// Computes every resource of one proxy.
pub fn translate(inputs: &Inputs) -> Resources {
    let mut resources = Resources::default();
    for (cluster, assignment) in clusters::outbound(inputs) {
        if let Some(assignment) = assignment {
            resources.insert(
                TypeUrl::Endpoint,
                Resource::new(assignment.cluster_name.clone(), &assignment),
            );
        }
        resources.insert(
            TypeUrl::Cluster,
            Resource::new(cluster.name.clone(), &cluster),
        );
    }
    for cluster in clusters::local_app(inputs) {
        resources.insert(
            TypeUrl::Cluster,
            Resource::new(cluster.name.clone(), &cluster),
        );
    }
    for listener in listeners::all(inputs) {
        resources.insert(
            TypeUrl::Listener,
            Resource::new(listener.name.clone(), &listener),
        );
    }
    for route in routes::all(inputs) {
        resources.insert(TypeUrl::Route, Resource::new(route.name.clone(), &route));
    }
    for secret in tls::secrets(inputs) {
        resources.insert(TypeUrl::Secret, Resource::new(secret.name.clone(), &secret));
    }
    resources
}

/// Whether a protocol is served by Envoy's HTTP connection manager.
fn is_http(protocol: Protocol) -> bool {
    protocol.is_l7()
}

/// A protobuf duration.
fn duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf `UInt32Value`.
fn u32v(value: u32) -> UInt32Value {
    UInt32Value { value }
}

/// "Over this ADS stream", for EDS, RDS and SDS references.
fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// An Envoy socket address.
fn address(addr: SocketAddr) -> envoy_types::pb::envoy::config::core::v3::Address {
    envoy_types::pb::envoy::config::core::v3::Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// A regex matching exactly `text`.
fn regex_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !(c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
