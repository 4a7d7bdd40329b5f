//! Plexus's resource model, at the wire boundary.
//!
//! - [`acl`]: ACL tokens, policies, roles, the rule language and the [`acl::Authorizer`].
//! - [`registration`]: service and check registrations *as written* (API bodies, HCL/JSON files), in
//!   Consul's shape, unknown fields rejected.
//! - [`validate`]: turns a registration into catalog records, applying defaults and expanding
//!   `connect.sidecar_service` into a `<name>-sidecar-proxy` service; every problem is reported with
//!   its field path.
//! - [`definition`]: loads HCL/JSON definition files, with errors naming file, line and field.
//! - [`model`]: the catalog's records, serialised exactly as Consul's HTTP API shows them.
//! - [`catalog`]: the [`Catalog`] trait through which the agent writes and reads the catalog.
//! - [`presence`]: the event mesh's presence protocol (app ↔ control plane frames).
//! - [`actuator`]: the actuator documents of event apps and the presence monitor (Mercury's shapes).
//! - [`connect`]: CA roots, leaf certificates, SPIFFE ids and intentions (with the pure decision
//!   of which intention applies).
//! - [`config_entry`]: L7 config entries (service-defaults/resolver/splitter/router), their
//!   validation, and the compiled discovery chain a sidecar consumes.
//! - [`client`] (feature `client`): a typed HTTP client for the API.
//! - [`auto_encrypt`]: an agent's request for its TLS certificate, and the answer.
//! - [`agent_config`]: the agent/server configuration file in Consul's format.
//!
//! ```text
//!  HCL/JSON file ─┐
//!                 ├─► ServiceRegistration ─► validate ─► AgentService + HealthCheck ─► Catalog
//!  API body ──────┘
//! ```
//!
//! This crate does no I/O except in [`client`] and [`definition`] (reading files).

pub mod acl;
pub mod actuator;
pub mod agent_config;
pub mod auto_encrypt;
pub mod catalog;
#[cfg(feature = "client")]
pub mod client;
pub mod config_entry;
pub mod connect;
pub mod definition;
pub mod duration;
pub mod error;
pub mod filter;
pub mod job;
pub mod kv;
pub mod model;
pub mod one_or_many;
pub mod operator;
pub mod presence;
pub mod registration;
pub mod remote;
pub mod validate;

pub use catalog::{Catalog, CatalogError, Indexed, Registration};
pub use duration::GoDuration;
pub use error::{ErrorBody, ErrorDetail};
pub use kv::{KvExportEntry, KvPair};
pub use model::{
    AgentProxy, AgentSelf, AgentSelfConfig, AgentService, AgentUpstream, CatalogService,
    CheckStatus, CheckType, HealthCheck, HealthCheckDefinition, Node, ServiceEntry, ServiceKind,
};
pub use registration::{
    CheckDefinition, ConnectDefinition, ProxyDefinition, ServiceRegistration,
    SidecarServiceDefinition, UpstreamDefinition,
};

/// Sidecar inbound ports are assigned from this range unless given (Consul's default).
pub const SIDECAR_PORT_RANGE: std::ops::RangeInclusive<u16> = 21000..=21255;
