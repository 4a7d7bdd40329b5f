//! Catalog reads for the HTTP API: services by name, instances with their node and checks,
//! checks by service or state, nodes, and connect-capable instances.
//!
//! Each read loads the whole `catalog/` prefix at one store revision and filters in memory; the
//! revision is returned as the index. Results are sorted by node, then service or check id.
//! The last load is kept and shared by every read at the same revision ([`SnapshotCache`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use plexus_api::model::aggregate;
use plexus_api::{
    AgentService, CatalogError, CatalogService, CheckStatus, HealthCheck, Indexed, Node,
    ServiceEntry, ServiceKind,
};

use super::{StoreCatalog, decode, fill_check, keys, store_error};

/// The last catalog snapshot, shared by every read at the same store revision. One change wakes
/// every blocking query at once (a thousand proxies watching one service); without this each of
/// them decoded the whole catalog again (100,000 instances: a second of CPU per change per
/// watcher, see docs/benchmarks.md). The lock also makes concurrent readers at a new revision
/// wait for one load instead of each doing its own.
#[derive(Default)]
pub(crate) struct SnapshotCache(tokio::sync::Mutex<Option<Arc<Snapshot>>>);

/// Filters of `GET /v1/health/service/:name` and `/v1/health/connect/:name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthFilter {
    /// Keep only instances carrying this tag.
    pub tag: Option<String>,
    /// Keep only instances whose checks (node and instance) are all passing.
    pub passing: bool,
}

/// Every catalog record at one revision.
struct Snapshot {
    index: u64,
    nodes: BTreeMap<String, Node>,
    /// `(node, service)`, sorted by node then service id.
    services: Vec<(String, AgentService)>,
    /// Sorted by node then check id.
    checks: Vec<HealthCheck>,
}

impl Snapshot {
    fn node(&self, name: &str) -> Node {
        self.nodes.get(name).cloned().unwrap_or_else(|| Node {
            node: name.to_owned(),
            ..Node::default()
        })
    }

    /// Node checks of `node` and the checks of instance `service_id` there.
    fn checks_of(&self, node: &str, service_id: &str) -> Vec<HealthCheck> {
        let mut checks: Vec<HealthCheck> = self
            .checks
            .iter()
            .filter(|c| c.node == node && (c.service_id.is_empty() || c.service_id == service_id))
            .cloned()
            .collect();
        // Node checks first, as Consul lists them.
        checks.sort_by(|a, b| {
            (!a.service_id.is_empty(), &a.check_id).cmp(&(!b.service_id.is_empty(), &b.check_id))
        });
        checks
    }

    fn entries(
        &self,
        filter: &HealthFilter,
        include: impl Fn(&AgentService) -> bool,
    ) -> Vec<ServiceEntry> {
        self.services
            .iter()
            .filter(|(_, s)| include(s))
            .filter(|(_, s)| has_tag(s, filter.tag.as_deref()))
            .map(|(node, service)| ServiceEntry {
                node: self.node(node),
                service: service.clone(),
                checks: self.checks_of(node, &service.id),
            })
            .filter(|e| {
                !filter.passing
                    || aggregate(e.checks.iter().map(|c| c.status)) == CheckStatus::Passing
            })
            .collect()
    }
}

fn has_tag(service: &AgentService, tag: Option<&str>) -> bool {
    tag.is_none_or(|tag| service.tags.iter().any(|t| t == tag))
}

fn is_native(service: &AgentService, name: &str) -> bool {
    service.service == name
        && service
            .connect
            .as_ref()
            .and_then(|c| c.get("Native"))
            .and_then(serde_json::Value::as_bool)
            == Some(true)
}

fn is_proxy_for(service: &AgentService, name: &str) -> bool {
    service.kind == ServiceKind::ConnectProxy
        && service
            .proxy
            .as_ref()
            .is_some_and(|p| p.destination_service_name == name)
}

impl StoreCatalog {
    /// The catalog at the store's current revision: the cached snapshot when it is at that
    /// revision, else a fresh load. The current revision comes from `get_at` (a linearizable read
    /// on etcd; the committed revision, published before a write returns, on the embedded store),
    /// so a read after a write always sees it.
    async fn snapshot(&self) -> Result<Arc<Snapshot>, CatalogError> {
        let (_, current) = self.store.get_at(keys::ROOT).await.map_err(store_error)?;
        let mut cached = self.snapshots.0.lock().await;
        if let Some(snapshot) = cached.as_ref().filter(|s| s.index == current) {
            return Ok(Arc::clone(snapshot));
        }
        let fresh = Arc::new(self.load_snapshot().await?);
        *cached = Some(Arc::clone(&fresh));
        Ok(fresh)
    }

    async fn load_snapshot(&self) -> Result<Snapshot, CatalogError> {
        let (kvs, index) = self.range(keys::ROOT).await?;
        let mut snapshot = Snapshot {
            index,
            nodes: BTreeMap::new(),
            services: Vec::new(),
            checks: Vec::new(),
        };
        for kv in &kvs {
            if kv.key.starts_with(keys::NODES) {
                let mut node: Node = decode(kv)?;
                self.fill_node(&mut node, kv);
                snapshot.nodes.insert(node.node.clone(), node);
            } else if let Some(node) = keys::node_of(keys::SERVICES, &kv.key) {
                let mut service: AgentService = decode(kv)?;
                self.fill_service(&mut service, kv);
                snapshot.services.push((node, service));
            } else if kv.key.starts_with(keys::CHECKS) {
                let mut check: HealthCheck = decode(kv)?;
                fill_check(&mut check, kv);
                snapshot.checks.push(check);
            }
        }
        snapshot
            .services
            .sort_by(|(an, a), (bn, b)| (an, &a.id).cmp(&(bn, &b.id)));
        snapshot
            .checks
            .sort_by(|a, b| (&a.node, &a.check_id).cmp(&(&b.node, &b.check_id)));
        Ok(snapshot)
    }

    /// `GET /v1/catalog/services`: each service name with the sorted union of its tags.
    pub async fn service_names(
        &self,
    ) -> Result<Indexed<BTreeMap<String, Vec<String>>>, CatalogError> {
        let snapshot = self.snapshot().await?;
        let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (_, service) in &snapshot.services {
            names
                .entry(service.service.clone())
                .or_default()
                .extend(service.tags.iter().cloned());
        }
        for tags in names.values_mut() {
            tags.sort();
            tags.dedup();
        }
        Ok(Indexed {
            index: snapshot.index,
            value: names,
        })
    }

    /// `GET /v1/catalog/service/:name`: the instances of a service, flattened with their node.
    pub async fn service_nodes(
        &self,
        name: &str,
        tag: Option<&str>,
    ) -> Result<Indexed<Vec<CatalogService>>, CatalogError> {
        let snapshot = self.snapshot().await?;
        let value = snapshot
            .services
            .iter()
            .filter(|(_, s)| s.service == name && has_tag(s, tag))
            .map(|(node, s)| {
                let node = snapshot.node(node);
                CatalogService {
                    id: node.id,
                    node: node.node,
                    address: node.address,
                    datacenter: node.datacenter,
                    tagged_addresses: node.tagged_addresses,
                    node_meta: node.meta,
                    service_kind: s.kind,
                    service_id: s.id.clone(),
                    service_name: s.service.clone(),
                    service_tags: s.tags.clone(),
                    service_address: s.address.clone(),
                    service_weights: s.weights,
                    service_meta: s.meta.clone(),
                    service_port: s.port,
                    service_enable_tag_override: s.enable_tag_override,
                    service_proxy: s.proxy.clone(),
                    create_index: s.create_index.unwrap_or_default(),
                    modify_index: s.modify_index.unwrap_or_default(),
                }
            })
            .collect();
        Ok(Indexed {
            index: snapshot.index,
            value,
        })
    }

    /// `GET /v1/catalog/nodes`: every node, sorted by name.
    pub async fn nodes(&self) -> Result<Indexed<Vec<Node>>, CatalogError> {
        let snapshot = self.snapshot().await?;
        Ok(Indexed {
            index: snapshot.index,
            value: snapshot.nodes.values().cloned().collect(),
        })
    }

    /// `GET /v1/health/service/:name`: instances of a service with their node and checks.
    pub async fn service_health(
        &self,
        name: &str,
        filter: &HealthFilter,
    ) -> Result<Indexed<Vec<ServiceEntry>>, CatalogError> {
        let snapshot = self.snapshot().await?;
        let value = snapshot.entries(filter, |s| s.service == name);
        Ok(Indexed {
            index: snapshot.index,
            value,
        })
    }

    /// `GET /v1/health/connect/:name`: the mesh entry points of a service: `connect-proxy`
    /// instances whose destination is `name`, and mesh-native instances of `name`.
    pub async fn connect_health(
        &self,
        name: &str,
        filter: &HealthFilter,
    ) -> Result<Indexed<Vec<ServiceEntry>>, CatalogError> {
        let snapshot = self.snapshot().await?;
        let value = snapshot.entries(filter, |s| is_proxy_for(s, name) || is_native(s, name));
        Ok(Indexed {
            index: snapshot.index,
            value,
        })
    }

    /// `GET /v1/health/checks/:service`: the checks of every instance of a service.
    pub async fn service_checks(
        &self,
        name: &str,
    ) -> Result<Indexed<Vec<HealthCheck>>, CatalogError> {
        let snapshot = self.snapshot().await?;
        let instances: std::collections::HashSet<(&str, &str)> = snapshot
            .services
            .iter()
            .filter(|(_, s)| s.service == name)
            .map(|(node, s)| (node.as_str(), s.id.as_str()))
            .collect();
        let value = snapshot
            .checks
            .iter()
            .filter(|c| instances.contains(&(c.node.as_str(), c.service_id.as_str())))
            .cloned()
            .collect();
        Ok(Indexed {
            index: snapshot.index,
            value,
        })
    }

    /// `GET /v1/health/state/:state`: every check in `state` (`None`: any state).
    pub async fn checks_in_state(
        &self,
        state: Option<CheckStatus>,
    ) -> Result<Indexed<Vec<HealthCheck>>, CatalogError> {
        let snapshot = self.snapshot().await?;
        let value = snapshot
            .checks
            .iter()
            .filter(|c| state.is_none_or(|s| c.status == s))
            .cloned()
            .collect();
        Ok(Indexed {
            index: snapshot.index,
            value,
        })
    }
}
