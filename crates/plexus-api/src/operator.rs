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

/// A proxy's last acknowledged configuration (`PUT /v1/internal/proxy/{id}/ack`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProxyAck {
    /// The proxy's (sidecar) service id.
    #[serde(rename = "ID")]
    pub id: String,
    /// The configuration revision it applied.
    pub revision: u64,
    /// When it said so (Unix seconds, server clock).
    pub acknowledged_at: u64,
    /// The proxy's admin listener (`host:port`), where the control plane reads its metrics for
    /// the UI's golden metrics and topology; empty when it did not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub admin_addr: String,
}
