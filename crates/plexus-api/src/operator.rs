//! What `GET /v1/operator/plexus` answers, and what proxies report to it.

use serde::{Deserialize, Serialize};

/// The control plane as an operator sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OperatorView {
    /// The server that answered.
    pub answered_by: String,
    /// Every live server replica (each announces itself under a lease).
    pub servers: Vec<ServerRecord>,
    /// The store.
    pub store: StoreView,
    /// Proxies with the configuration revision each last acknowledged.
    pub proxies: Vec<ProxyAck>,
}

/// A server replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServerRecord {
    /// Its node name.
    pub node: String,
    /// Its HTTP API address.
    pub http_addr: String,
    /// Its store backend.
    pub store: String,
}

/// The store backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoreView {
    /// `embedded` or `etcd`.
    pub backend: String,
    /// The file, or the endpoints.
    pub location: String,
    /// etcd members.
    pub members: Vec<MemberView>,
}

/// An etcd member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MemberView {
    /// Name.
    pub name: String,
    /// Client URL.
    pub endpoint: String,
    /// Answered a status request.
    pub healthy: bool,
    /// Is the raft leader.
    pub leader: bool,
    /// etcd version.
    pub version: String,
}

/// A proxy's last acknowledged configuration (`PUT /v1/internal/proxy/{id}/ack`, or for Envoys
/// `PUT /v1/internal/proxies/xds` from the xDS server that serves them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProxyAck {
    /// The proxy's (sidecar) service id.
    #[serde(rename = "ID")]
    pub id: String,
    /// The configuration revision it applied. For an Envoy: the revision every resource type
    /// it ACKed has reached (the lowest of them), so one type still behind or rejected (NACK)
    /// holds it back; per-type detail is in `xds`.
    pub revision: u64,
    /// When it said so (Unix seconds, server clock: stamped by the server, so a report may
    /// leave it out).
    #[serde(default)]
    pub acknowledged_at: u64,
    /// `envoy` for a proxy fed over xDS; absent for `plexus proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_plane: Option<String>,
    /// For an Envoy: what it accepted and rejected over xDS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds: Option<XdsStatus>,
    /// The proxy's admin listener (`host:port`), where the control plane reads its metrics for
    /// the UI's golden metrics and topology; empty when it did not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub admin_addr: String,
}

/// What an Envoy accepted (ACK) and last rejected (NACK), per resource type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct XdsStatus {
    /// The xDS server's node (which agent or server feeds it).
    pub served_by: String,
    /// Last accepted version per type (`CDS`, `EDS`, `LDS`, `RDS`, `SDS`).
    pub acked: std::collections::BTreeMap<String, String>,
    /// The last rejection, while it is the latest word on its type (an ACK of that type clears
    /// it). The config accepted before it stays in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack: Option<XdsNack>,
}

/// A rejected xDS response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct XdsNack {
    /// The type (`CDS`, `LDS`, …).
    #[serde(rename = "Type")]
    pub type_url: String,
    /// The version Envoy rejected.
    pub version: String,
    /// Envoy's error detail.
    pub error: String,
    /// When (Unix seconds).
    pub at: u64,
}
