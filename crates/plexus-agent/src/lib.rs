//! The Plexus node agent: Consul's `/v1/agent/*` API and the health checks of one node.
//!
//! The agent registers its node, validates service registrations (from definition files or
//! `PUT /v1/agent/service/register`), writes them through an [`Arc<dyn Catalog>`](Catalog) and runs
//! the checks of every service on its node, reporting each result back to the catalog.
//!
//! ```text
//!  API body / definition file ─► Agent::register ─► validate ─► ports (assign, clash) ─► Catalog
//!                                                                                          │
//!             check::Supervisor ◄── index_watch ◄──────────────────────────────────────────┘
//!               ├─ http / tcp / grpc runners (every interval, bounded by timeout)
//!               ├─ ttl runners (expire unless /v1/agent/check/pass|warn|fail resets them)
//!               └─ alias runners (driven by the index watch)          ─► Catalog::update_check
//! ```
//!
//! Main types: [`Agent`] (cheap to clone), [`AgentConfig`], [`AgentError`];
//! [`remote_catalog::HttpCatalog`], the catalog of an agent on a machine without a server (over
//! the servers' HTTP API, holding the node's liveness lease); [`acl::RemoteResolver`] (a remote
//! agent's token resolution through a server, cached).
//!
//! It does not: store anything itself (the catalog is the only state besides TTL timers), start
//! sidecar processes, or run HTTPS/TLS probes (those report `critical`).

pub mod acl;
mod api;
mod check;
mod error;
mod host_ports;
pub mod job;
mod node_check;
mod ports;
pub mod remote_catalog;
mod service;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use plexus_api::validate::Defaults;
use plexus_api::{Catalog, Node, Registration};
use plexus_runtime::Shutdown;

pub use error::AgentError;
pub use host_ports::{PortTaken, host_ports_dir};

use check::ttl::TtlTimers;

/// What the agent needs to know about itself.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    /// This node: name, address, datacenter and id (registered in the catalog at start).
    pub node: Node,
    /// Whether this agent runs inside a server (shown by `/v1/agent/self`).
    pub server: bool,
    /// How requests' tokens become authorizers at the agent API's edge (default: ACLs
    /// disabled). A server's agent shares the control plane's; a remote agent asks a server.
    pub acl: plexus_runtime::acl::Resolver,
    /// Where the agents of this host reserve the ports they hand out ([`host_ports_dir`] in the
    /// binaries). `None` (the default, for an agent tested alone): ports are checked against
    /// this node's catalog entries only, neither reserved nor bind-tested.
    pub host_ports: Option<std::path::PathBuf>,
}

/// The node agent. Cheap to clone: every clone shares one state.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.inner.config.node.node)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: AgentConfig,
    catalog: Arc<dyn Catalog>,
    defaults: Defaults,
    ttl: Arc<TtlTimers>,
    /// Serialises registrations so port assignment and clash checks see a stable node.
    writes: tokio::sync::Mutex<()>,
    /// Service ids this agent registered (deregistered by [`Agent::deregister_all`]).
    registered: Mutex<BTreeSet<String>>,
    /// The ports this agent handed out, reserved on the host.
    host_ports: host_ports::HostPorts,
}

impl Agent {
    /// Registers the node in the catalog and starts the check supervisor (spawned through
    /// `shutdown`, stopped by its token).
    pub async fn start(
        config: AgentConfig,
        catalog: Arc<dyn Catalog>,
        shutdown: &Shutdown,
    ) -> Result<Agent, AgentError> {
        catalog
            .register(Registration {
                node: config.node.clone(),
                services: Vec::new(),
                checks: Vec::new(),
            })
            .await?;
        let ttl = Arc::new(TtlTimers::default());
        let supervisor = check::Supervisor::new(
            catalog.clone(),
            config.node.node.clone(),
            ttl.clone(),
            shutdown.clone(),
        );
        shutdown.spawn(supervisor.run());
        tracing::info!(node = %config.node.node, "agent started");
        let defaults = Defaults {
            datacenter: config.node.datacenter.clone(),
            node: config.node.node.clone(),
        };
        let host_ports = host_ports::HostPorts::new(config.host_ports.clone());
        Ok(Agent {
            inner: Arc::new(Inner {
                host_ports,
                config,
                catalog,
                defaults,
                ttl,
                writes: tokio::sync::Mutex::new(()),
                registered: Mutex::new(BTreeSet::new()),
            }),
        })
    }

    /// The `/v1/agent/*` routes (no fallback: the binary sets one), behind the ACL edge.
    pub fn router(&self) -> axum::Router {
        plexus_runtime::acl::layer(api::router(self.clone()), self.inner.config.acl.clone())
    }

    /// How this agent turns tokens into authorizers.
    pub fn acl_resolver(&self) -> plexus_runtime::acl::Resolver {
        self.inner.config.acl.clone()
    }

    /// This agent's node name.
    pub fn node(&self) -> &str {
        &self.inner.config.node.node
    }

    /// Reserves `port` on this host for `owner` after a bind test (see [`host_ports_dir`]):
    /// `Ok(true)` newly reserved, `Ok(false)` already `owner`'s.
    pub fn claim_port(&self, port: u16, owner: &str) -> Result<bool, PortTaken> {
        self.inner.host_ports.claim(port, owner, true)
    }

    /// Releases every port `owner` holds.
    pub fn release_ports(&self, owner: &str) {
        self.inner.host_ports.release_owner(owner, None);
    }

    fn registered(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // A poisoned set is still a valid set of ids.
        plexus_runtime::lock::lock(&self.inner.registered)
    }
}

#[cfg(test)]
mod node_check_tests;
#[cfg(test)]
mod test_catalog;
#[cfg(test)]
mod tests;
