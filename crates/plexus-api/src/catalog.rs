//! The catalog as the agent (and any other writer) sees it: one trait, implemented in-process by the
//! control plane and, later, over HTTP by a remote agent.

use async_trait::async_trait;
use tokio::sync::watch;

use crate::model::{AgentService, CheckStatus, HealthCheck, Node};

/// A value together with the catalog index it was read at (Consul's `X-Consul-Index`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Indexed<T> {
    /// The store revision the value reflects.
    pub index: u64,
    /// The value.
    pub value: T,
}

/// Services and checks to write for one node in a single revision.
///
/// Registering a service replaces the instance with the same id and all of its checks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registration {
    /// The node (created or updated).
    pub node: Node,
    /// Service instances on that node.
    pub services: Vec<AgentService>,
    /// Checks on that node; `service_id` ties each to an instance of `services` or one already stored.
    pub checks: Vec<HealthCheck>,
}

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The named thing does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// `service`, `check` or `node`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The request contradicts what is stored.
    #[error("{message}")]
    Conflict {
        /// What clashes.
        message: String,
        /// The field at fault, when one is.
        field: Option<String>,
    },
    /// The store could not be read or written.
    #[error("catalog store unavailable")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Reads and writes of the service catalog.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Writes a node with services and checks, all in one revision. Returns the new index.
    async fn register(&self, registration: Registration) -> Result<u64, CatalogError>;

    /// Removes a service instance and its checks. `NotFound` when it is not registered.
    async fn deregister_service(&self, node: &str, service_id: &str) -> Result<u64, CatalogError>;

    /// Removes one check. `NotFound` when it is not registered.
    async fn deregister_check(&self, node: &str, check_id: &str) -> Result<u64, CatalogError>;

    /// Sets a check's status and output. Writes (and moves the index) only when either changed.
    async fn update_check(
        &self,
        node: &str,
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<u64, CatalogError>;

    /// The service instances registered on a node.
    async fn node_services(&self, node: &str) -> Result<Indexed<Vec<AgentService>>, CatalogError>;

    /// The checks registered on a node.
    async fn node_checks(&self, node: &str) -> Result<Indexed<Vec<HealthCheck>>, CatalogError>;

    /// The latest catalog index; changes whenever anything in the catalog is written.
    fn index_watch(&self) -> watch::Receiver<u64>;
}
