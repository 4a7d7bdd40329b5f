//! The catalog's records, serialised exactly as Consul's HTTP API shows them.
//!
//! These are *validated* values: ports are real ports, ids are set, defaults are applied. Readers are
//! lenient (unknown fields ignored) so the typed client keeps working against newer servers.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;
use crate::registration::Weights;

/// `Kind` of a catalog service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ServiceKind {
    /// An ordinary service (serialised as an absent `Kind`).
    #[default]
    #[serde(rename = "")]
    Typical,
    /// A sidecar proxy.
    #[serde(rename = "connect-proxy")]
    ConnectProxy,
    /// An ingress gateway (`plexus gateway --kind ingress`).
    #[serde(rename = "ingress-gateway")]
    IngressGateway,
    /// A terminating gateway (`plexus gateway --kind terminating`).
    #[serde(rename = "terminating-gateway")]
    TerminatingGateway,
    /// A mesh gateway (`plexus gateway --kind mesh`).
    #[serde(rename = "mesh-gateway")]
    MeshGateway,
}

impl ServiceKind {
    /// The written kind (`""` for an ordinary service).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Typical => "",
            Self::ConnectProxy => "connect-proxy",
            Self::IngressGateway => "ingress-gateway",
            Self::TerminatingGateway => "terminating-gateway",
            Self::MeshGateway => "mesh-gateway",
        }
    }

    /// True for the three gateway kinds.
    pub fn is_gateway(self) -> bool {
        matches!(
            self,
            Self::IngressGateway | Self::TerminatingGateway | Self::MeshGateway
        )
    }

    /// True for [`ServiceKind::Typical`], which Consul omits from JSON.
    pub fn is_typical(&self) -> bool {
        *self == ServiceKind::Typical
    }
}

/// A service instance as `GET /v1/agent/services` and `/v1/health/service/:name` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentService {
    /// `connect-proxy` for sidecars; omitted otherwise.
    #[serde(rename = "Kind", skip_serializing_if = "ServiceKind::is_typical")]
    pub kind: ServiceKind,
    /// Instance id, unique on its node.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    #[serde(rename = "Service")]
    pub service: String,
    /// Tags.
    #[serde(rename = "Tags")]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(rename = "Meta")]
    pub meta: BTreeMap<String, String>,
    /// Port.
    #[serde(rename = "Port")]
    pub port: u16,
    /// Address; empty means the node's address.
    #[serde(rename = "Address")]
    pub address: String,
    /// Tagged addresses, as registered.
    #[serde(rename = "TaggedAddresses", skip_serializing_if = "Option::is_none")]
    pub tagged_addresses: Option<serde_json::Value>,
    /// DNS weights.
    #[serde(rename = "Weights")]
    pub weights: Weights,
    /// Stored as registered.
    #[serde(rename = "EnableTagOverride")]
    pub enable_tag_override: bool,
    /// Proxy settings, for `connect-proxy` services.
    #[serde(rename = "Proxy", skip_serializing_if = "Option::is_none")]
    pub proxy: Option<AgentProxy>,
    /// `{"Native": true}` for mesh-native apps, else empty.
    #[serde(rename = "Connect", skip_serializing_if = "Option::is_none")]
    pub connect: Option<serde_json::Value>,
    /// Datacenter.
    #[serde(rename = "Datacenter")]
    pub datacenter: String,
    /// Index of the write that created this record (catalog views only).
    #[serde(rename = "CreateIndex", skip_serializing_if = "Option::is_none")]
    pub create_index: Option<u64>,
    /// Index of the last write that changed this record (catalog views only).
    #[serde(rename = "ModifyIndex", skip_serializing_if = "Option::is_none")]
    pub modify_index: Option<u64>,
}

impl Default for AgentService {
    fn default() -> Self {
        Self {
            kind: ServiceKind::Typical,
            id: String::new(),
            service: String::new(),
            tags: Vec::new(),
            meta: BTreeMap::new(),
            port: 0,
            address: String::new(),
            tagged_addresses: None,
            weights: Weights::default(),
            enable_tag_override: false,
            proxy: None,
            connect: None,
            datacenter: String::new(),
            create_index: None,
            modify_index: None,
        }
    }
}

/// `Proxy` of a `connect-proxy` service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentProxy {
    /// The service this proxy fronts.
    #[serde(rename = "DestinationServiceName")]
    pub destination_service_name: String,
    /// The instance this proxy fronts.
    #[serde(rename = "DestinationServiceID")]
    pub destination_service_id: String,
    /// Where the proxy reaches the app.
    #[serde(rename = "LocalServiceAddress")]
    pub local_service_address: String,
    /// Where the proxy reaches the app.
    #[serde(rename = "LocalServicePort")]
    pub local_service_port: u16,
    /// Dependencies reached through this proxy.
    #[serde(rename = "Upstreams")]
    pub upstreams: Vec<AgentUpstream>,
    /// Opaque proxy configuration.
    #[serde(rename = "Config", skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
}

/// One upstream of a proxy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentUpstream {
    /// Always `service` for now.
    #[serde(rename = "DestinationType")]
    pub destination_type: String,
    /// The upstream service.
    #[serde(rename = "DestinationName")]
    pub destination_name: String,
    /// Datacenter; empty means local.
    #[serde(rename = "Datacenter", skip_serializing_if = "String::is_empty")]
    pub datacenter: String,
    /// Local listener address.
    #[serde(rename = "LocalBindAddress")]
    pub local_bind_address: String,
    /// Local listener port.
    #[serde(rename = "LocalBindPort")]
    pub local_bind_port: u16,
    /// Opaque per-upstream configuration.
    #[serde(rename = "Config", skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
}

/// A check's state.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Healthy.
    Passing,
    /// Degraded but serving.
    Warning,
    /// Unhealthy (the initial state unless a check says otherwise).
    #[default]
    Critical,
    /// Administratively out of service.
    Maintenance,
}

impl CheckStatus {
    /// The lowercase word Consul uses.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
            CheckStatus::Maintenance => "maintenance",
        }
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown check status word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid check status {0:?} (expected passing, warning or critical)")]
pub struct BadStatus(pub String);

impl FromStr for CheckStatus {
    type Err = BadStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "passing" => Ok(CheckStatus::Passing),
            "warning" => Ok(CheckStatus::Warning),
            "critical" => Ok(CheckStatus::Critical),
            "maintenance" => Ok(CheckStatus::Maintenance),
            other => Err(BadStatus(other.to_owned())),
        }
    }
}

/// What kind of probe a check runs, derived from its definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    /// HTTP GET (or `Method`) against a URL.
    Http,
    /// TCP connect.
    Tcp,
    /// gRPC standard health protocol.
    Grpc,
    /// Set from outside through `/v1/agent/check/pass|warn|fail`.
    Ttl,
    /// Mirrors another service's health on the same node.
    Alias,
}

/// The runnable part of a check (Consul's `HealthCheckDefinition`), validated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthCheckDefinition {
    /// HTTP check URL.
    #[serde(rename = "HTTP", skip_serializing_if = "String::is_empty")]
    pub http: String,
    /// HTTP method.
    #[serde(rename = "Method", skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// HTTP headers.
    #[serde(rename = "Header", skip_serializing_if = "BTreeMap::is_empty")]
    pub header: BTreeMap<String, Vec<String>>,
    /// HTTP body.
    #[serde(rename = "Body", skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Skip TLS verification.
    #[serde(rename = "TLSSkipVerify")]
    pub tls_skip_verify: bool,
    /// TCP check address.
    #[serde(rename = "TCP", skip_serializing_if = "String::is_empty")]
    pub tcp: String,
    /// gRPC check address (`host:port` or `host:port/service`).
    #[serde(rename = "GRPC", skip_serializing_if = "String::is_empty")]
    pub grpc: String,
    /// gRPC over TLS.
    #[serde(rename = "GRPCUseTLS")]
    pub grpc_use_tls: bool,
    /// Aliased service id.
    #[serde(rename = "AliasService", skip_serializing_if = "String::is_empty")]
    pub alias_service: String,
    /// TTL.
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<GoDuration>,
    /// Interval between runs.
    #[serde(rename = "Interval", skip_serializing_if = "Option::is_none")]
    pub interval: Option<GoDuration>,
    /// Timeout of one run.
    #[serde(rename = "Timeout", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// Deregister the service after being critical this long.
    #[serde(
        rename = "DeregisterCriticalServiceAfter",
        skip_serializing_if = "Option::is_none"
    )]
    pub deregister_critical_service_after: Option<GoDuration>,
}

/// A check and its current state, as `/v1/agent/checks` and `/v1/health/*` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthCheck {
    /// Node the check runs on.
    #[serde(rename = "Node")]
    pub node: String,
    /// Check id, unique on its node.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Human name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Current status.
    #[serde(rename = "Status")]
    pub status: CheckStatus,
    /// Free text.
    #[serde(rename = "Notes")]
    pub notes: String,
    /// Output of the last run.
    #[serde(rename = "Output")]
    pub output: String,
    /// The service instance it checks (empty for a node check).
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// The service name it checks.
    #[serde(rename = "ServiceName")]
    pub service_name: String,
    /// The service's tags.
    #[serde(rename = "ServiceTags")]
    pub service_tags: Vec<String>,
    /// `http`, `tcp`, `grpc`, `ttl`, `alias`.
    #[serde(rename = "Type", with = "check_type_text")]
    pub check_type: Option<CheckType>,
    /// Interval, shown as Consul does at top level.
    #[serde(rename = "Interval", skip_serializing_if = "String::is_empty")]
    pub interval: String,
    /// Timeout, shown as Consul does at top level.
    #[serde(rename = "Timeout", skip_serializing_if = "String::is_empty")]
    pub timeout: String,
    /// What the agent runs.
    #[serde(rename = "Definition")]
    pub definition: HealthCheckDefinition,
    /// Index of the write that created this record.
    #[serde(rename = "CreateIndex")]
    pub create_index: u64,
    /// Index of the last write that changed this record.
    #[serde(rename = "ModifyIndex")]
    pub modify_index: u64,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            node: String::new(),
            check_id: String::new(),
            name: String::new(),
            status: CheckStatus::Critical,
            notes: String::new(),
            output: String::new(),
            service_id: String::new(),
            service_name: String::new(),
            service_tags: Vec::new(),
            check_type: None,
            interval: String::new(),
            timeout: String::new(),
            definition: HealthCheckDefinition::default(),
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// A node of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Node {
    /// Node UUID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    #[serde(rename = "Node")]
    pub node: String,
    /// Node address.
    #[serde(rename = "Address")]
    pub address: String,
    /// Datacenter.
    #[serde(rename = "Datacenter")]
    pub datacenter: String,
    /// Tagged addresses.
    #[serde(rename = "TaggedAddresses")]
    pub tagged_addresses: BTreeMap<String, String>,
    /// Metadata.
    #[serde(rename = "Meta")]
    pub meta: BTreeMap<String, String>,
    /// Creation index.
    #[serde(rename = "CreateIndex")]
    pub create_index: u64,
    /// Last modification index.
    #[serde(rename = "ModifyIndex")]
    pub modify_index: u64,
}

/// One row of `GET /v1/catalog/service/:name`: node and service fields flattened, Consul-style.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CatalogService {
    /// Node UUID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    #[serde(rename = "Node")]
    pub node: String,
    /// Node address.
    #[serde(rename = "Address")]
    pub address: String,
    /// Datacenter.
    #[serde(rename = "Datacenter")]
    pub datacenter: String,
    /// Node tagged addresses.
    #[serde(rename = "TaggedAddresses")]
    pub tagged_addresses: BTreeMap<String, String>,
    /// Node metadata.
    #[serde(rename = "NodeMeta")]
    pub node_meta: BTreeMap<String, String>,
    /// Service kind (`""` or `connect-proxy`).
    #[serde(rename = "ServiceKind")]
    pub service_kind: ServiceKind,
    /// Service instance id.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Service name.
    #[serde(rename = "ServiceName")]
    pub service_name: String,
    /// Service tags.
    #[serde(rename = "ServiceTags")]
    pub service_tags: Vec<String>,
    /// Service address.
    #[serde(rename = "ServiceAddress")]
    pub service_address: String,
    /// Service tagged addresses (`{"lan": {"address", "port"}, "wan": …}`).
    #[serde(
        rename = "ServiceTaggedAddresses",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_tagged_addresses: Option<serde_json::Value>,
    /// Service weights.
    #[serde(rename = "ServiceWeights")]
    pub service_weights: Weights,
    /// Service metadata.
    #[serde(rename = "ServiceMeta")]
    pub service_meta: BTreeMap<String, String>,
    /// Service port.
    #[serde(rename = "ServicePort")]
    pub service_port: u16,
    /// Tag override flag.
    #[serde(rename = "ServiceEnableTagOverride")]
    pub service_enable_tag_override: bool,
    /// Proxy settings.
    #[serde(rename = "ServiceProxy", skip_serializing_if = "Option::is_none")]
    pub service_proxy: Option<AgentProxy>,
    /// Creation index.
    #[serde(rename = "CreateIndex")]
    pub create_index: u64,
    /// Last modification index.
    #[serde(rename = "ModifyIndex")]
    pub modify_index: u64,
}

/// One row of `GET /v1/health/service/:name`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceEntry {
    /// The node.
    #[serde(rename = "Node")]
    pub node: Node,
    /// The instance.
    #[serde(rename = "Service")]
    pub service: AgentService,
    /// Node checks and the instance's checks.
    #[serde(rename = "Checks")]
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// The worst status among the checks (passing when there are none).
    pub fn aggregated_status(&self) -> CheckStatus {
        aggregate(self.checks.iter().map(|c| c.status))
    }

    /// Where another datacenter reaches this instance (a mesh gateway): its `wan` tagged
    /// address, else its own address and port; `None` when neither is an IP and a port.
    pub fn wan_address(&self) -> Option<std::net::SocketAddr> {
        use std::net::{IpAddr, SocketAddr};
        let tagged = self
            .service
            .tagged_addresses
            .as_ref()
            .and_then(|tagged| tagged.get("wan"))
            .and_then(|wan| {
                let ip = wan.get("Address")?.as_str()?.parse::<IpAddr>().ok()?;
                let port = u16::try_from(wan.get("Port")?.as_u64()?).ok()?;
                (port != 0).then_some(SocketAddr::new(ip, port))
            });
        tagged.or_else(|| {
            let ip = self.dial_address().parse::<IpAddr>().ok()?;
            (self.service.port != 0).then_some(SocketAddr::new(ip, self.service.port))
        })
    }

    /// The address a client should dial: the service's, else the node's.
    pub fn dial_address(&self) -> &str {
        if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        }
    }
}

/// Worst-of aggregation, Consul's order: maintenance > critical > warning > passing.
pub fn aggregate(statuses: impl IntoIterator<Item = CheckStatus>) -> CheckStatus {
    statuses
        .into_iter()
        .max_by_key(|s| match s {
            CheckStatus::Passing => 0,
            CheckStatus::Warning => 1,
            CheckStatus::Critical => 2,
            CheckStatus::Maintenance => 3,
        })
        .unwrap_or(CheckStatus::Passing)
}

/// `GET /v1/agent/self`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentSelf {
    /// The agent's configuration.
    #[serde(rename = "Config")]
    pub config: AgentSelfConfig,
    /// The agent's node as the catalog sees it.
    #[serde(rename = "Member")]
    pub member: serde_json::Value,
}

/// `Config` of `GET /v1/agent/self`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentSelfConfig {
    /// Datacenter.
    #[serde(rename = "Datacenter")]
    pub datacenter: String,
    /// Node name.
    #[serde(rename = "NodeName")]
    pub node_name: String,
    /// Node UUID.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Whether this agent is a server.
    #[serde(rename = "Server")]
    pub server: bool,
    /// Plexus version.
    #[serde(rename = "Version")]
    pub version: String,
    /// Primary datacenter.
    #[serde(rename = "PrimaryDatacenter")]
    pub primary_datacenter: String,
}

/// `Type` as Consul writes it: the kind's word, or `""` when unknown.
mod check_type_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::CheckType;

    pub fn serialize<S: Serializer>(value: &Option<CheckType>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(kind) => kind.serialize(s),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CheckType>, D::Error> {
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        Ok(match text.as_str() {
            "http" => Some(CheckType::Http),
            "tcp" => Some(CheckType::Tcp),
            "grpc" => Some(CheckType::Grpc),
            "ttl" => Some(CheckType::Ttl),
            "alias" => Some(CheckType::Alias),
            _ => None,
        })
    }
}
