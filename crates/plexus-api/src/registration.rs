//! Service and check registrations as written: the body of `PUT /v1/agent/service/register` and the
//! `service`/`services` blocks of HCL/JSON definition files, in Consul's shape.
//!
//! Field names follow Consul: the API's `PascalCase` and the files' `snake_case` are both accepted
//! (`Name`/`name`, `DestinationName`/`destination_name`). Unknown fields are rejected. These are the
//! *raw* types; [`crate::validate`] turns them into the catalog's [`crate::AgentService`] and
//! [`crate::HealthCheck`] records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;
use crate::one_or_many::OneOrMany;

/// A service registration as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRegistration {
    /// `""` for a plain service, `connect-proxy` for a sidecar registered by hand.
    #[serde(
        rename = "Kind",
        alias = "kind",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kind: Option<String>,
    /// Instance id; defaults to the name.
    #[serde(
        rename = "ID",
        alias = "id",
        alias = "Id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    /// Service name (required).
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// Tags.
    #[serde(rename = "Tags", alias = "tags", default)]
    pub tags: Vec<String>,
    /// Address the service listens on; empty means the node's address.
    #[serde(
        rename = "Address",
        alias = "address",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub address: Option<String>,
    /// Port, 1–65535 (kept wide here so the validator can name a bad value).
    #[serde(
        rename = "Port",
        alias = "port",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<i64>,
    /// Free-form metadata.
    #[serde(rename = "Meta", alias = "meta", default)]
    pub meta: BTreeMap<String, String>,
    /// Consul's tagged addresses; stored as given.
    #[serde(
        rename = "TaggedAddresses",
        alias = "taggedaddresses",
        alias = "tagged_addresses",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tagged_addresses: Option<serde_json::Value>,
    /// DNS weights.
    #[serde(
        rename = "Weights",
        alias = "weights",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub weights: Option<Weights>,
    /// Consul's anti-entropy tag override flag; stored as given.
    #[serde(
        rename = "EnableTagOverride",
        alias = "enabletagoverride",
        alias = "enable_tag_override",
        default
    )]
    pub enable_tag_override: bool,
    /// A single check.
    #[serde(
        rename = "Check",
        alias = "check",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub check: Option<CheckDefinition>,
    /// Several checks.
    #[serde(
        rename = "Checks",
        alias = "checks",
        default,
        skip_serializing_if = "OneOrMany::is_empty"
    )]
    pub checks: OneOrMany<CheckDefinition>,
    /// Mesh settings: `connect { sidecar_service { ... } }`.
    #[serde(
        rename = "Connect",
        alias = "connect",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub connect: Option<ConnectDefinition>,
    /// Proxy settings, for a `connect-proxy` registered by hand.
    #[serde(
        rename = "Proxy",
        alias = "proxy",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub proxy: Option<ProxyDefinition>,
}

/// DNS SRV weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    /// Weight while passing.
    #[serde(rename = "Passing", alias = "passing", default = "one")]
    pub passing: i64,
    /// Weight while warning.
    #[serde(rename = "Warning", alias = "warning", default = "one")]
    pub warning: i64,
}

fn one() -> i64 {
    1
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            passing: 1,
            warning: 1,
        }
    }
}

/// `connect { ... }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectDefinition {
    /// Expands into a separate `<name>-sidecar-proxy` service.
    #[serde(
        rename = "SidecarService",
        alias = "sidecarservice",
        alias = "sidecar_service",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sidecar_service: Option<SidecarServiceDefinition>,
    /// The app speaks mTLS itself.
    #[serde(rename = "Native", alias = "native", default)]
    pub native: bool,
}

/// `sidecar_service { ... }`: every field optional, defaults derived from the parent service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarServiceDefinition {
    /// Defaults to `<parent id>-sidecar-proxy`.
    #[serde(
        rename = "ID",
        alias = "id",
        alias = "Id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    /// Defaults to `<parent name>-sidecar-proxy`.
    #[serde(
        rename = "Name",
        alias = "name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    /// Tags; default: the parent's.
    #[serde(
        rename = "Tags",
        alias = "tags",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tags: Option<Vec<String>>,
    /// Metadata; default: the parent's.
    #[serde(
        rename = "Meta",
        alias = "meta",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub meta: Option<BTreeMap<String, String>>,
    /// Inbound listener address; default: the parent's address.
    #[serde(
        rename = "Address",
        alias = "address",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub address: Option<String>,
    /// Inbound listener port; default: the next free port in 21000–21255.
    #[serde(
        rename = "Port",
        alias = "port",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<i64>,
    /// A check for the sidecar itself.
    #[serde(
        rename = "Check",
        alias = "check",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub check: Option<CheckDefinition>,
    /// Checks for the sidecar itself.
    #[serde(
        rename = "Checks",
        alias = "checks",
        default,
        skip_serializing_if = "OneOrMany::is_empty"
    )]
    pub checks: OneOrMany<CheckDefinition>,
    /// Proxy settings.
    #[serde(
        rename = "Proxy",
        alias = "proxy",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub proxy: Option<ProxyDefinition>,
}

/// `proxy { ... }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyDefinition {
    /// The service this proxy fronts (set automatically for sidecars).
    #[serde(
        rename = "DestinationServiceName",
        alias = "destinationservicename",
        alias = "destination_service_name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub destination_service_name: Option<String>,
    /// The instance this proxy fronts (set automatically for sidecars).
    #[serde(
        rename = "DestinationServiceID",
        alias = "destinationserviceid",
        alias = "destination_service_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub destination_service_id: Option<String>,
    /// Where the proxy reaches the app; default `127.0.0.1`.
    #[serde(
        rename = "LocalServiceAddress",
        alias = "localserviceaddress",
        alias = "local_service_address",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub local_service_address: Option<String>,
    /// Where the proxy reaches the app; default: the parent's port.
    #[serde(
        rename = "LocalServicePort",
        alias = "localserviceport",
        alias = "local_service_port",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub local_service_port: Option<i64>,
    /// Dependencies the app calls through the proxy.
    #[serde(
        rename = "Upstreams",
        alias = "upstreams",
        default,
        skip_serializing_if = "OneOrMany::is_empty"
    )]
    pub upstreams: OneOrMany<UpstreamDefinition>,
    /// Opaque proxy configuration, stored as given.
    #[serde(
        rename = "Config",
        alias = "config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub config: Option<serde_json::Value>,
}

/// `upstreams { ... }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamDefinition {
    /// Only `service` is supported (Consul also has `prepared_query`).
    #[serde(
        rename = "DestinationType",
        alias = "destinationtype",
        alias = "destination_type",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub destination_type: Option<String>,
    /// The upstream service name (required).
    #[serde(
        rename = "DestinationName",
        alias = "destinationname",
        alias = "destination_name",
        default
    )]
    pub destination_name: String,
    /// Datacenter of the upstream; default: local.
    #[serde(
        rename = "Datacenter",
        alias = "datacenter",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub datacenter: Option<String>,
    /// Local listener address; default `127.0.0.1`.
    #[serde(
        rename = "LocalBindAddress",
        alias = "localbindaddress",
        alias = "local_bind_address",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub local_bind_address: Option<String>,
    /// Local listener port (required, 1–65535).
    #[serde(
        rename = "LocalBindPort",
        alias = "localbindport",
        alias = "local_bind_port",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub local_bind_port: Option<i64>,
    /// Opaque per-upstream configuration, stored as given.
    #[serde(
        rename = "Config",
        alias = "config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub config: Option<serde_json::Value>,
}

/// A check as written (Consul's `CheckType`): exactly one of `http`, `tcp`, `grpc`, `ttl`,
/// `alias_service` says what kind it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckDefinition {
    /// Check id; default `service:<service id>` (`:<n>` appended when a service has several).
    #[serde(
        rename = "CheckID",
        alias = "checkid",
        alias = "check_id",
        alias = "ID",
        alias = "id",
        alias = "Id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub check_id: Option<String>,
    /// Human name; default `Service '<name>' check`.
    #[serde(
        rename = "Name",
        alias = "name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    /// Free text shown with the check.
    #[serde(
        rename = "Notes",
        alias = "notes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub notes: Option<String>,
    /// Initial status: `passing`, `warning` or `critical` (default `critical`).
    #[serde(
        rename = "Status",
        alias = "status",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub status: Option<String>,
    /// For a check registered on its own: the service it belongs to.
    #[serde(
        rename = "ServiceID",
        alias = "serviceid",
        alias = "service_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub service_id: Option<String>,
    /// HTTP check: URL to GET (2xx passing, 429 warning, else critical).
    #[serde(
        rename = "HTTP",
        alias = "http",
        alias = "Http",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub http: Option<String>,
    /// HTTP method; default `GET`.
    #[serde(
        rename = "Method",
        alias = "method",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub method: Option<String>,
    /// HTTP request headers.
    #[serde(
        rename = "Header",
        alias = "header",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub header: BTreeMap<String, Vec<String>>,
    /// HTTP request body.
    #[serde(
        rename = "Body",
        alias = "body",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub body: Option<String>,
    /// Skip TLS verification for HTTPS checks.
    #[serde(
        rename = "TLSSkipVerify",
        alias = "tlsskipverify",
        alias = "tls_skip_verify",
        default
    )]
    pub tls_skip_verify: bool,
    /// TCP check: `host:port` to connect to.
    #[serde(
        rename = "TCP",
        alias = "tcp",
        alias = "Tcp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tcp: Option<String>,
    /// gRPC check: `host:port` or `host:port/service` (standard health protocol).
    #[serde(
        rename = "GRPC",
        alias = "grpc",
        alias = "Grpc",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub grpc: Option<String>,
    /// Use TLS for the gRPC check.
    #[serde(
        rename = "GRPCUseTLS",
        alias = "grpcusetls",
        alias = "grpc_use_tls",
        default
    )]
    pub grpc_use_tls: bool,
    /// TTL check: critical unless updated within this long.
    #[serde(
        rename = "TTL",
        alias = "ttl",
        alias = "Ttl",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<GoDuration>,
    /// Alias check: mirrors the health of this service on the same node.
    #[serde(
        rename = "AliasService",
        alias = "aliasservice",
        alias = "alias_service",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub alias_service: Option<String>,
    /// How often to run the check (required for http, tcp, grpc).
    #[serde(
        rename = "Interval",
        alias = "interval",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<GoDuration>,
    /// How long one run may take; default 10s.
    #[serde(
        rename = "Timeout",
        alias = "timeout",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<GoDuration>,
    /// Deregister the service after it has been critical this long.
    #[serde(
        rename = "DeregisterCriticalServiceAfter",
        alias = "deregistercriticalserviceafter",
        alias = "deregister_critical_service_after",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub deregister_critical_service_after: Option<GoDuration>,
}
