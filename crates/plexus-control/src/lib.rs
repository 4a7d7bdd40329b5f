//! The Plexus control plane: the service catalog and its health, over a revisioned store, served
//! through an HTTP API shaped like Consul's.
//!
//! ```text
//!  HTTP (api/) ──► StoreCatalog (catalog/) ──► Store (store/): embedded redb file or etcd
//!        ▲                                          │
//!        └──── blocking queries ◄── revision watch ─┘
//! ```
//!
//! - [`ControlPlane`] wires a store, the catalog and the router together.
//! - [`store::Store`]: revisioned keys, compare-and-set transactions, a revision watch, leases and
//!   resumable prefix watches.
//! - [`catalog::StoreCatalog`]: implements [`plexus_api::Catalog`] (the agent writes through it) and
//!   the read views of the HTTP API.
//! - [`api::router`]: `/v1/catalog/*`, `/v1/health/*`, `/v1/status/*`.
//! - [`presence`]: the event mesh's presence monitor (`/ws/presence/{origin}`, `/v1/events/*`).
//! - [`kv`]: Consul's `/v1/kv/*`, with locks.
//! - [`user_event`]: `/v1/event/fire/{name}`, `/v1/event/list`.
//! - [`txn`]: `/v1/txn`, KV transactions all or nothing.
//! - [`session`]: `/v1/session/*` and the reaper that ends sessions and their locks.
//! - [`remote`]: the endpoints remote agents write their node through, and node liveness by lease.
//! - [`operator`]: servers, store backend and members, proxies' acknowledged revisions.
//! - [`quorum`]: whether this server reaches a quorum of its store; refusing requests while not.
//! - [`snapshot`]: backups of the whole store (`/v1/snapshot`) and the store's metrics.
//! - Store backends: [`store::EmbeddedStore`] (one file) and [`store::EtcdStore`] (etcd cluster).
//!
//! - [`ca`]: the built-in CA (`/v1/connect/ca/*`, `/v1/agent/connect/ca/leaf/*`).
//! - [`intentions`]: `/v1/connect/intentions*`, `/v1/agent/connect/authorize`.
//! - [`acl`]: tokens, policies and roles in the store, token resolution for the ACL edge,
//!   `/v1/acl/*`.
//! - [`dns`]: the DNS interface (Consul's names) over the catalog index.
//! - [`wan`]: datacenters: the federation of servers, `/v1/catalog/datacenters`, `?dc=`
//!   forwarding.
//! - [`ui`]: the web UI at `/ui/`, `/v1/mesh/services` and `/v1/mesh/topology`.
//!
//! Not here (yet): the agent's `/v1/agent/*` endpoints (plexus-agent, except the two connect
//! ones above), config entries, xDS. This crate never binds sockets: the binary merges
//! [`ControlPlane::router`] with the agent's router and serves it with
//! `plexus_runtime::http::serve`.

pub mod acl;
pub mod api;
pub mod ca;
pub mod catalog;
pub mod config;
pub mod dns;
pub mod intentions;
pub mod job;
pub mod kv;
pub mod operator;
pub mod presence;
pub mod query;
pub mod quorum;
pub mod remote;
pub mod session;
pub mod snapshot;
pub mod store;
pub mod txn;
pub mod ui;
pub mod user_event;
pub mod wan;

use std::path::Path;
use std::sync::Arc;

pub use api::ServerInfo;
pub use catalog::StoreCatalog;
pub use presence::{Presence, PresenceConfig};
pub use store::{EmbeddedStore, Store, StoreError};

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The store could not be opened.
    #[error("cannot open the control plane store")]
    Store(#[source] StoreError),
}

/// The control plane: a store, the catalog over it and the HTTP API.
#[derive(Clone)]
pub struct ControlPlane {
    catalog: Arc<StoreCatalog>,
    presence: Presence,
    store: Arc<dyn Store>,
    info: ServerInfo,
    ca: Arc<ca::CertificateAuthority>,
    intentions: Arc<intentions::Intentions>,
    acl: Arc<acl::Acl>,
    resolver: plexus_runtime::acl::Resolver,
    auto_encrypt: ca::auto_encrypt::AutoEncrypt,
    federation: wan::Shared,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// A control plane over the embedded store in `data_dir` (created if missing).
    ///
    /// Blocking (opens and may create the database file): call it at start-up.
    pub fn open_embedded(data_dir: &Path, info: ServerInfo) -> Result<Self, ControlError> {
        Self::open_embedded_with(data_dir, info, store::embedded::EmbeddedLimits::default())
    }

    /// Like [`ControlPlane::open_embedded`], with the store's memory bounds.
    pub fn open_embedded_with(
        data_dir: &Path,
        info: ServerInfo,
        limits: store::embedded::EmbeddedLimits,
    ) -> Result<Self, ControlError> {
        let store = EmbeddedStore::open_with(data_dir, limits).map_err(ControlError::Store)?;
        Ok(Self::with_store(Arc::new(store), info))
    }

    /// A control plane over any store.
    pub fn with_store(store: Arc<dyn Store>, info: ServerInfo) -> Self {
        let presence = Presence::new(Arc::clone(&store), PresenceConfig::default());
        let catalog = Arc::new(StoreCatalog::new(
            Arc::clone(&store),
            info.datacenter.clone(),
        ));
        let ca = Arc::new(ca::CertificateAuthority::new(
            Arc::clone(&store),
            info.datacenter.clone(),
        ));
        // Production default; `plexus dev` sets allow.
        let intentions = Arc::new(intentions::Intentions::new(
            Arc::clone(&store),
            plexus_api::connect::DefaultPolicy::Deny,
        ));
        let acl = Arc::new(acl::Acl::new(Arc::clone(&store), acl::AclConfig::default()));
        let federation = Arc::new(wan::Federation::new(&info.datacenter));
        Self {
            catalog,
            presence,
            store,
            info,
            ca,
            intentions,
            resolver: plexus_runtime::acl::Resolver(acl.clone()),
            acl,
            auto_encrypt: ca::auto_encrypt::AutoEncrypt::default(),
            federation,
        }
    }

    /// Replaces the ACL settings (before serving; default: ACLs disabled). Requests' tokens
    /// are then resolved by this ACL system; call [`acl::Acl::start`] on [`ControlPlane::acl`]
    /// before serving.
    pub fn configure_acl(&mut self, config: acl::AclConfig) {
        self.acl = Arc::new(acl::Acl::new(self.store(), config));
        self.resolver = plexus_runtime::acl::Resolver(self.acl.clone());
    }

    /// The ACL system.
    pub fn acl(&self) -> Arc<acl::Acl> {
        Arc::clone(&self.acl)
    }

    /// Sets how requests' tokens become authorizers (default: ACLs disabled, everything allowed).
    pub fn set_resolver(&mut self, resolver: plexus_runtime::acl::Resolver) {
        self.resolver = resolver;
    }

    /// How requests' tokens become authorizers (the agent of the same process shares it).
    pub fn resolver(&self) -> plexus_runtime::acl::Resolver {
        self.resolver.clone()
    }

    /// Keeps the CA's private keys wrapped under `kek` in the store. Call before anything else
    /// (it replaces the CA, which nothing holds yet).
    pub fn with_ca_key_encryption(mut self, kek: ca::wrap::KeyEncryptionKey) -> Self {
        self.ca = Arc::new(
            ca::CertificateAuthority::new(Arc::clone(&self.store), self.info.datacenter.clone())
                .with_key_encryption(kek),
        );
        self
    }

    /// Sets whether agents may have their TLS certificates signed (`auto_encrypt.allow_tls`)
    /// and the domain of server names.
    pub fn with_auto_encrypt(mut self, settings: ca::auto_encrypt::AutoEncrypt) -> Self {
        self.auto_encrypt = settings;
        self
    }

    /// Replaces the federation (before serving): one that reaches `https://` servers of other
    /// datacenters with its TLS settings.
    pub fn with_federation(mut self, federation: wan::Federation) -> Self {
        self.federation = Arc::new(federation);
        self
    }

    /// The prepared queries, run here (HTTP) and by DNS.
    pub fn queries(&self) -> Arc<query::Queries> {
        Arc::new(query::Queries::new(
            self.store(),
            self.catalog(),
            self.info.datacenter.clone(),
            Some(self.federation()),
        ))
    }

    /// What this server knows of other datacenters (see [`wan`]).
    pub fn federation(&self) -> wan::Shared {
        Arc::clone(&self.federation)
    }

    /// The catalog; also usable as `Arc<dyn plexus_api::Catalog>`.
    pub fn catalog(&self) -> Arc<StoreCatalog> {
        Arc::clone(&self.catalog)
    }

    /// The store under everything.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Runs the agent-liveness reaper until `stop` fires (servers run it; see [`remote`]).
    pub async fn run_liveness(&self, stop: tokio_util::sync::CancellationToken) {
        remote::reaper::run(self.catalog(), stop).await;
    }

    /// The jobs, placed on this catalog's nodes.
    pub fn jobs(&self) -> job::Jobs {
        job::Jobs::new(self.store()).with_catalog(self.catalog())
    }

    /// Runs job placement until `stop` fires (every server runs it; see [`job`]).
    pub async fn run_jobs(&self, stop: tokio_util::sync::CancellationToken) {
        self.jobs().run_reconciler(stop).await;
    }

    /// Runs the session reaper until `stop` fires: ends the locks of sessions that vanished
    /// (destroyed, TTL expired) and the sessions of nodes whose lease was lost.
    pub async fn run_sessions(&self, stop: tokio_util::sync::CancellationToken) {
        session::reaper::run(self.sessions(), stop).await;
    }

    /// The sessions.
    pub fn sessions(&self) -> session::Sessions {
        session::Sessions::new(self.store())
    }

    /// The built-in certificate authority.
    pub fn ca(&self) -> Arc<ca::CertificateAuthority> {
        Arc::clone(&self.ca)
    }

    /// The intentions.
    pub fn intentions(&self) -> Arc<intentions::Intentions> {
        Arc::clone(&self.intentions)
    }

    /// This server's identity.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// The event mesh's presence monitor.
    pub fn presence(&self) -> Presence {
        self.presence.clone()
    }

    /// The HTTP API routes (catalog, health, status, KV, CA, intentions, event-mesh presence,
    /// remote agents, operator) with the JSON 404 fallback, behind the ACL edge: every request's
    /// token is resolved once into the `Authorizer` handlers take (`plexus_runtime::acl::Authz`).
    /// Requests naming another datacenter (`?dc=`) are relayed to it before the ACL edge (the
    /// other datacenter's servers check the token; see [`wan::forward`]).
    pub fn router(&self) -> axum::Router {
        wan::forward::layer(
            api::meta::layer(
                plexus_runtime::acl::layer(self.routes(), self.resolver()),
                self.store.revision_watch(),
            ),
            self.federation(),
        )
    }

    fn routes(&self) -> axum::Router {
        api::router(self.catalog(), self.info.clone())
            .merge(presence::ws::router(self.presence()))
            .merge(presence::actuator::router(self.presence()))
            .merge(kv::api::router(kv::Kv::new(self.store())))
            .merge(txn::api::router(self.store()))
            .merge(user_event::router(self.store()))
            .merge(query::router(self.queries()))
            .merge(session::api::router(session::api::SessionState {
                sessions: self.sessions(),
                catalog: self.catalog(),
                node_name: self.info.node_name.clone(),
            }))
            .merge(remote::api::router(self.catalog()))
            .merge(operator::router(self.store(), self.info.node_name.clone()))
            .merge(snapshot::router(self.store()))
            .merge(ca::api::router(self.ca()))
            .merge(ca::auto_encrypt::router(
                self.ca(),
                self.auto_encrypt.clone(),
            ))
            .merge(intentions::api::router(intentions::api::IntentionState {
                intentions: self.intentions(),
                ca: self.ca(),
            }))
            .merge(config::api::router(std::sync::Arc::new(
                config::ConfigEntries::new(self.store()).with_intentions(self.intentions()),
            )))
            .merge(job::api::router(std::sync::Arc::new(self.jobs())))
            .merge(acl::api::router(self.acl()))
            .merge(ui::router(self.catalog(), self.store()))
            .merge(wan::exchange::router(self.federation()))
            .merge(wan::gateways::router(self.catalog()))
            .merge(ca::federation::router(self.ca()))
    }
}
