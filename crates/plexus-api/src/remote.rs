//! Wire shapes of the endpoints a remote `plexus agent` uses on the servers (`/v1/internal/node/*`).

use serde::{Deserialize, Serialize};

use crate::catalog::Registration;
use crate::model::{AgentService, CheckStatus, HealthCheck, Node};

/// The check id of a node's lease check: a node-level check the servers keep (Consul's agents
/// have `serfHealth`). `passing` while the node's agent holds its lease, `critical` from the
/// moment the lease lapses until a new one is granted. Node checks count for every instance on
/// the node, so no check write of the agent can make a node without a lease look healthy; the
/// agent cannot write this check itself.
pub const LEASE_CHECK_ID: &str = "plexus-lease";
/// The lease check's name.
pub const LEASE_CHECK_NAME: &str = "Agent lease";

/// `PUT /v1/internal/node/register`: a node with services and checks, written in one revision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct NodeRegistration {
    /// The node.
    pub node: Node,
    /// Service instances.
    #[serde(default)]
    pub services: Vec<AgentService>,
    /// Checks.
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
}

impl From<Registration> for NodeRegistration {
    fn from(r: Registration) -> Self {
        Self {
            node: r.node,
            services: r.services,
            checks: r.checks,
        }
    }
}

impl From<NodeRegistration> for Registration {
    fn from(r: NodeRegistration) -> Self {
        Self {
            node: r.node,
            services: r.services,
            checks: r.checks,
        }
    }
}

/// `PUT /v1/internal/node/{node}/check/{id}`: a check's new status and output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CheckUpdate {
    /// The status.
    pub status: CheckStatus,
    /// The output.
    #[serde(default)]
    pub output: String,
}

/// The answer to a write: the index after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WriteIndex {
    /// The catalog index after the write.
    pub index: u64,
}

/// A node's liveness lease, as granted or renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLease {
    /// The lease id.
    #[serde(rename = "ID")]
    pub id: i64,
    /// Its time to live, in seconds.
    #[serde(rename = "TTL")]
    pub ttl_seconds: u64,
}
