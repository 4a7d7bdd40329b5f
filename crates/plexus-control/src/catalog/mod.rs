//! The service catalog over a [`Store`]: nodes, service instances and health checks.
//!
//! Key layout (ids escaped so that `/` and `%` never split a key):
//!
//! ```text
//! catalog/nodes/<node>                    JSON Node
//! catalog/services/<node>/<service id>    JSON AgentService
//! catalog/checks/<node>/<check id>        JSON HealthCheck
//! ```
//!
//! Records are stored without indexes; `CreateIndex`/`ModifyIndex` are filled on read from the
//! store's create and mod revisions. Writes that depend on what they read are guarded by
//! compare-and-set on the node record (every registration rewrites it) and retried on conflict.
//! Reads for the HTTP API live in [`view`], served from an in-memory [`index`] that the store's
//! watch keeps current.

mod index;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use plexus_api::{
    AgentService, Catalog, CatalogError, CheckStatus, HealthCheck, Indexed, Registration,
    ServiceKind,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::store::{Compare, KeyValue, Op, Store, Txn};

pub use index::{Answer, Reachable, Topic};
pub use view::HealthFilter;

/// How many times a write re-reads and retries when a concurrent write got in first.
const MAX_ATTEMPTS: usize = 16;

/// A catalog record that could not be encoded or decoded; carried in [`CatalogError::Store`].
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A stored record is not the JSON of its kind.
    #[error("catalog record {key:?} is not valid")]
    Decode {
        /// The record's key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A record could not be serialised.
    #[error("catalog record {key:?} could not be encoded")]
    Encode {
        /// The record's key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// The catalog, implemented over any [`Store`].
pub struct StoreCatalog {
    store: Arc<dyn Store>,
    /// Changes of the `terminating-gateway` config entries (links of services to gateways).
    links: crate::store::changes::Changes,
    /// Linked service → its gateway, as read at a link revision (read again when it moves).
    linked: std::sync::Mutex<Option<(u64, Links)>>,
    datacenter: String,
    /// The in-memory catalog, started on first read.
    index: tokio::sync::OnceCell<Arc<index::Shared>>,
    /// Stops the index's watch task.
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl std::fmt::Debug for StoreCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCatalog")
            .field("datacenter", &self.datacenter)
            .finish_non_exhaustive()
    }
}

/// Store keys of catalog records.
pub(crate) mod keys {
    /// Everything the catalog stores.
    pub const ROOT: &str = "catalog/";
    /// Node records.
    pub const NODES: &str = "catalog/nodes/";
    /// Service records.
    pub const SERVICES: &str = "catalog/services/";
    /// Check records.
    pub const CHECKS: &str = "catalog/checks/";

    /// Escapes `%` and `/` so an id is exactly one key segment.
    pub fn escape(segment: &str) -> String {
        segment.replace('%', "%25").replace('/', "%2F")
    }

    /// Reverses [`escape`].
    pub fn unescape(segment: &str) -> String {
        segment.replace("%2F", "/").replace("%25", "%")
    }

    pub fn node(node: &str) -> String {
        format!("{NODES}{}", escape(node))
    }
    pub fn services_of(node: &str) -> String {
        format!("{SERVICES}{}/", escape(node))
    }
    pub fn service(node: &str, id: &str) -> String {
        format!("{}{}", services_of(node), escape(id))
    }
    pub fn checks_of(node: &str) -> String {
        format!("{CHECKS}{}/", escape(node))
    }
    pub fn check(node: &str, id: &str) -> String {
        format!("{}{}", checks_of(node), escape(id))
    }

    /// The (unescaped) node segment of a service or check key under `prefix`.
    pub fn node_of(prefix: &str, key: &str) -> Option<String> {
        let rest = key.strip_prefix(prefix)?;
        let (node, _) = rest.split_once('/')?;
        Some(unescape(node))
    }
}

/// Linked service → the terminating gateway that links it.
type Links = Arc<BTreeMap<String, String>>;

/// Where the `terminating-gateway` config entries live.
fn links_root() -> String {
    format!(
        "{}{}/",
        crate::config::ENTRIES,
        plexus_api::config_entry::Kind::TerminatingGateway.as_str()
    )
}

fn store_error(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> CatalogError {
    CatalogError::Store(error.into())
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, CatalogError> {
    serde_json::to_vec(value).map_err(|source| {
        store_error(RecordError::Encode {
            key: key.to_owned(),
            source,
        })
    })
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, CatalogError> {
    serde_json::from_slice(&kv.value).map_err(|source| {
        store_error(RecordError::Decode {
            key: kv.key.clone(),
            source,
        })
    })
}

fn gave_up(what: &str, id: &str) -> CatalogError {
    CatalogError::Conflict {
        message: format!("{what} {id:?} kept changing during the write; try again"),
        field: None,
    }
}

/// A node as a registration sees it before writing.
struct NodeView {
    /// The node record's mod revision (0: absent): the registration's compare.
    revision: u64,
    /// The node's checks with their keys.
    checks: Vec<(String, HealthCheck)>,
}

/// Puts and deletes of one transaction, one operation per key (etcd rejects duplicates).
#[derive(Default)]
struct Writes {
    puts: BTreeMap<String, Vec<u8>>,
    deletes: BTreeSet<String>,
}

impl Writes {
    fn put<T: Serialize>(&mut self, key: String, value: &T) -> Result<(), CatalogError> {
        let bytes = encode(&key, value)?;
        self.deletes.remove(&key);
        self.puts.insert(key, bytes);
        Ok(())
    }

    fn delete(&mut self, key: String) {
        if !self.puts.contains_key(&key) {
            self.deletes.insert(key);
        }
    }

    fn into_txn(self, compares: Vec<Compare>) -> Txn {
        let deletes = self.deletes.into_iter().map(|key| Op::Delete { key });
        let puts = self
            .puts
            .into_iter()
            .map(|(key, value)| Op::Put { key, value });
        Txn {
            compares,
            ops: deletes.chain(puts).collect(),
        }
    }
}

/// True when `service` is a connect-proxy in front of the instance `id` (its sidecar).
fn fronts(service: &AgentService, id: &str) -> bool {
    service.kind == ServiceKind::ConnectProxy
        && service
            .proxy
            .as_ref()
            .is_some_and(|p| p.destination_service_id == id)
}

fn mod_revision(key: &str, kv: Option<&KeyValue>) -> Compare {
    Compare::ModRevision {
        key: key.to_owned(),
        revision: kv.map_or(0, |kv| kv.mod_revision),
    }
}

impl StoreCatalog {
    /// A catalog over `store`; records without a datacenter are shown in `datacenter`.
    pub fn new(store: Arc<dyn Store>, datacenter: impl Into<String>) -> Self {
        let stop = CancellationToken::new();
        Self {
            links: crate::store::changes::Changes::new(Arc::clone(&store), links_root()),
            linked: std::sync::Mutex::new(None),
            store,
            datacenter: datacenter.into(),
            index: tokio::sync::OnceCell::new(),
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn current_index(&self) -> u64 {
        *self.store.revision_watch().borrow()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, CatalogError> {
        self.store.get(key).await.map_err(store_error)
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), CatalogError> {
        self.store.range(prefix).await.map_err(store_error)
    }

    /// Runs a guarded write; `None` when a compare failed.
    async fn commit(
        &self,
        writes: Writes,
        compares: Vec<Compare>,
    ) -> Result<Option<u64>, CatalogError> {
        let result = self
            .store
            .txn(writes.into_txn(compares))
            .await
            .map_err(store_error)?;
        Ok(result.succeeded.then_some(result.revision))
    }

    /// What [`StoreCatalog::try_register`] needs about a node, read from the store: the node
    /// record's mod revision (first: any registration after this read moves it) and its checks.
    async fn stored_node_view(&self, node: &str) -> Result<NodeView, CatalogError> {
        let node_kv = self.get(&keys::node(node)).await?;
        let (stored, _) = self.range(&keys::checks_of(node)).await?;
        let mut checks = Vec::with_capacity(stored.len());
        for kv in &stored {
            checks.push((kv.key.clone(), decode::<HealthCheck>(kv)?));
        }
        Ok(NodeView {
            revision: node_kv.map_or(0, |kv| kv.mod_revision),
            checks,
        })
    }

    /// The same from the in-memory index, without a store round trip. It may lag the store; the
    /// registration's compare on the node's mod revision then fails and the next attempt reads
    /// the store. Checks can change without the node record (status updates, deregistrations),
    /// but a registration only uses their ids, to delete replaced ones: deleting a key that is
    /// already gone is harmless.
    async fn indexed_node_view(&self, node: &str) -> Result<NodeView, CatalogError> {
        let index = self.index().await?;
        let (revision, checks) = index.read().node_view(node);
        Ok(NodeView { revision, checks })
    }

    /// One attempt of [`Catalog::register`] against `view`.
    async fn try_register(
        &self,
        reg: &Registration,
        view: NodeView,
    ) -> Result<Option<u64>, CatalogError> {
        let node_name = reg.node.node.as_str();
        let node_key = keys::node(node_name);
        let mut compares = vec![Compare::ModRevision {
            key: node_key.clone(),
            revision: view.revision,
        }];
        let mut writes = Writes::default();

        let mut node = reg.node.clone();
        (node.create_index, node.modify_index) = (0, 0);
        writes.put(node_key, &node)?;

        let services: HashMap<&str, &AgentService> =
            reg.services.iter().map(|s| (s.id.as_str(), s)).collect();
        for service in &reg.services {
            let mut service = service.clone();
            (service.create_index, service.modify_index) = (None, None);
            writes.put(keys::service(node_name, &service.id), &service)?;
        }

        // Re-registering a service replaces its checks.
        let new_checks: HashSet<&str> = reg.checks.iter().map(|c| c.check_id.as_str()).collect();
        for (key, check) in view.checks {
            if services.contains_key(check.service_id.as_str())
                && !new_checks.contains(check.check_id.as_str())
            {
                writes.delete(key);
            }
        }

        for check in &reg.checks {
            let mut check = check.clone();
            check.node = node_name.to_owned();
            (check.create_index, check.modify_index) = (0, 0);
            if !check.service_id.is_empty() {
                let service = match services.get(check.service_id.as_str()) {
                    Some(service) => (*service).clone(),
                    None => {
                        let key = keys::service(node_name, &check.service_id);
                        let kv = self.get(&key).await?;
                        let Some(kv) = kv else {
                            return Err(CatalogError::NotFound {
                                kind: "service",
                                id: check.service_id,
                            });
                        };
                        compares.push(mod_revision(&key, Some(&kv)));
                        decode::<AgentService>(&kv)?
                    }
                };
                check.service_name = service.service;
                check.service_tags = service.tags;
            }
            writes.put(keys::check(node_name, &check.check_id), &check)?;
        }
        self.commit(writes, compares).await
    }

    /// One attempt of [`Catalog::deregister_service`]: the instance, its checks, and every
    /// connect-proxy on the same node fronting it (`Proxy.DestinationServiceID`) with their
    /// checks, in one transaction, so no path (the agent API, `deregister_critical_service_after`,
    /// an expired agent lease) leaves an orphaned `*-sidecar-proxy` behind.
    async fn try_deregister_service(
        &self,
        node: &str,
        id: &str,
    ) -> Result<Option<u64>, CatalogError> {
        let node_key = keys::node(node);
        let node_kv = self.get(&node_key).await?;
        let service_key = keys::service(node, id);
        let (services, _) = self.range(&keys::services_of(node)).await?;
        let Some(service_kv) = services.iter().find(|kv| kv.key == service_key) else {
            return Err(CatalogError::NotFound {
                kind: "service",
                id: id.to_owned(),
            });
        };
        let mut removed: HashSet<String> = HashSet::from([id.to_owned()]);
        let mut compares = vec![
            mod_revision(&node_key, node_kv.as_ref()),
            mod_revision(&service_key, Some(service_kv)),
        ];
        let mut writes = Writes::default();
        writes.delete(service_key.clone());
        for kv in &services {
            let service: AgentService = decode(kv)?;
            if fronts(&service, id) {
                compares.push(mod_revision(&kv.key, Some(kv)));
                writes.delete(kv.key.clone());
                removed.insert(service.id);
            }
        }
        let (checks, _) = self.range(&keys::checks_of(node)).await?;
        for kv in &checks {
            if removed.contains(&decode::<HealthCheck>(kv)?.service_id) {
                writes.delete(kv.key.clone());
            }
        }
        let written = self.commit(writes, compares).await?;
        if written.is_some() && removed.len() > 1 {
            tracing::debug!(
                node,
                service_id = id,
                removed = removed.len(),
                "deregistered with its sidecar"
            );
        }
        Ok(written)
    }

    /// Removes a node with all of its service instances and checks, in one transaction
    /// (`PUT /v1/catalog/deregister` without a service or check). `Ok(None)` when the node is not
    /// registered.
    pub async fn deregister_node(&self, node: &str) -> Result<Option<u64>, CatalogError> {
        let node_key = keys::node(node);
        for _ in 0..MAX_ATTEMPTS {
            let Some(node_kv) = self.get(&node_key).await? else {
                return Ok(None);
            };
            let mut compares = vec![mod_revision(&node_key, Some(&node_kv))];
            let mut writes = Writes::default();
            writes.delete(node_key.clone());
            for prefix in [keys::services_of(node), keys::checks_of(node)] {
                let (records, _) = self.range(&prefix).await?;
                for kv in records {
                    compares.push(mod_revision(&kv.key, Some(&kv)));
                    writes.delete(kv.key);
                }
            }
            if let Some(index) = self.commit(writes, compares).await? {
                tracing::debug!(node, index, "node deregistered");
                return Ok(Some(index));
            }
        }
        Err(gave_up("node", node))
    }

    /// Reads a node's records under `prefix`, sorted by `sort_key`, with indexes filled in.
    async fn node_records<T: DeserializeOwned>(
        &self,
        prefix: &str,
        fill: impl Fn(&mut T, &KeyValue),
        sort_key: impl Fn(&T) -> String,
    ) -> Result<Indexed<Vec<T>>, CatalogError> {
        let (kvs, index) = self.range(prefix).await?;
        let mut value = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            let mut record: T = decode(kv)?;
            fill(&mut record, kv);
            value.push(record);
        }
        value.sort_by_cached_key(sort_key);
        Ok(Indexed { index, value })
    }
}

#[async_trait]
impl Catalog for StoreCatalog {
    async fn register(&self, registration: Registration) -> Result<u64, CatalogError> {
        let node = registration.node.node.as_str();
        // One store round trip when the index is current (the usual case); reads first after a
        // conflict.
        let view = self.indexed_node_view(node).await?;
        if let Some(index) = self.try_register(&registration, view).await? {
            return Ok(index);
        }
        for _ in 1..MAX_ATTEMPTS {
            let view = self.stored_node_view(node).await?;
            if let Some(index) = self.try_register(&registration, view).await? {
                return Ok(index);
            }
        }
        Err(gave_up("node", &registration.node.node))
    }

    async fn deregister_service(&self, node: &str, service_id: &str) -> Result<u64, CatalogError> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(index) = self.try_deregister_service(node, service_id).await? {
                return Ok(index);
            }
        }
        Err(gave_up("service", service_id))
    }

    async fn deregister_check(&self, node: &str, check_id: &str) -> Result<u64, CatalogError> {
        let key = keys::check(node, check_id);
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = self.get(&key).await? else {
                return Err(CatalogError::NotFound {
                    kind: "check",
                    id: check_id.to_owned(),
                });
            };
            let mut writes = Writes::default();
            writes.delete(key.clone());
            if let Some(index) = self
                .commit(writes, vec![mod_revision(&key, Some(&kv))])
                .await?
            {
                return Ok(index);
            }
        }
        Err(gave_up("check", check_id))
    }

    async fn update_check(
        &self,
        node: &str,
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<u64, CatalogError> {
        let key = keys::check(node, check_id);
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = self.get(&key).await? else {
                return Err(CatalogError::NotFound {
                    kind: "check",
                    id: check_id.to_owned(),
                });
            };
            let mut check: HealthCheck = decode(&kv)?;
            if check.status == status && check.output == output {
                return Ok(self.current_index());
            }
            check.status = status;
            check.output = output.to_owned();
            let mut writes = Writes::default();
            writes.put(key.clone(), &check)?;
            if let Some(index) = self
                .commit(writes, vec![mod_revision(&key, Some(&kv))])
                .await?
            {
                tracing::debug!(node, check_id, %status, index, "check updated");
                return Ok(index);
            }
        }
        Err(gave_up("check", check_id))
    }

    async fn node_services(&self, node: &str) -> Result<Indexed<Vec<AgentService>>, CatalogError> {
        self.node_records(
            &keys::services_of(node),
            |s: &mut AgentService, kv| self.fill_service(s, kv),
            |s| s.id.clone(),
        )
        .await
    }

    async fn node_checks(&self, node: &str) -> Result<Indexed<Vec<HealthCheck>>, CatalogError> {
        self.node_records(
            &keys::checks_of(node),
            |c: &mut HealthCheck, kv| fill_check(c, kv),
            |c| c.check_id.clone(),
        )
        .await
    }

    fn index_watch(&self) -> watch::Receiver<u64> {
        self.store.revision_watch()
    }
}

impl StoreCatalog {
    fn fill_service(&self, service: &mut AgentService, kv: &KeyValue) {
        index::fill_service(service, kv, &self.datacenter);
    }
}

fn fill_check(check: &mut HealthCheck, kv: &KeyValue) {
    index::fill_check(check, kv);
}

#[cfg(test)]
pub(crate) mod tests;
