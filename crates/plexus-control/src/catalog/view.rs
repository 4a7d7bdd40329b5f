//! Catalog reads for the HTTP API: services by name, instances with their node and checks,
//! checks by service or state, nodes, and connect-capable instances.
//!
//! Reads come from the in-memory [`index`](super::index), once it has applied the store's current
//! revision (so a read after a write sees it); that revision is returned as the index. Results are
//! sorted by node, then service or check id.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use plexus_api::{
    CatalogError, CatalogService, CheckStatus, HealthCheck, Indexed, Node, ServiceEntry,
};
use tokio::sync::watch;

use super::index::{Answer, Reachable, Shared, Topic, has_tag};
use super::{StoreCatalog, store_error};

/// Filters of `GET /v1/health/service/:name` and `/v1/health/connect/:name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct HealthFilter {
    /// Keep only instances carrying this tag.
    pub tag: Option<String>,
    /// Keep only instances whose checks (node and instance) are all passing.
    pub passing: bool,
}

impl StoreCatalog {
    /// The index, started on first use.
    pub(super) async fn index(&self) -> Result<&Arc<Shared>, CatalogError> {
        self.index
            .get_or_try_init(|| {
                Shared::start(
                    Arc::clone(&self.store),
                    self.datacenter.clone(),
                    self.stop.clone(),
                )
            })
            .await
    }

    /// The index once it has applied the store's newest write (`written_revision`: a
    /// linearizable read on etcd; published before a write returns on the embedded store), so a
    /// read after a write, through any replica, always sees it.
    async fn current(&self) -> Result<&Arc<Shared>, CatalogError> {
        let current = self.store.written_revision().await.map_err(store_error)?;
        let index = self.index().await?;
        index.catch_up(&*self.store, current).await?;
        Ok(index)
    }

    /// The revision the catalog index has applied, as a watch, and a function giving the last
    /// revision at which `answer` for service `name` changed: what a blocking query on that
    /// service waits on.
    pub async fn service_watch(
        &self,
        answer: Answer,
        name: &str,
    ) -> Result<(watch::Receiver<u64>, impl Fn() -> u64 + use<>), CatalogError> {
        self.topic_watch(Topic::from((answer, name))).await
    }

    /// Like [`StoreCatalog::service_watch`] for any [`Topic`]: what a blocking catalog query
    /// waits on, so that it wakes only when its own answer may have changed.
    pub async fn topic_watch(
        &self,
        topic: Topic,
    ) -> Result<(watch::Receiver<u64>, impl Fn() -> u64 + use<>), CatalogError> {
        let index = Arc::clone(self.index().await?);
        let applied = index.applied();
        Ok((applied, move || index.read().topic_index(&topic)))
    }

    /// The JSON of `GET /v1/health/service/:name` (`Answer::Health`) or
    /// `/v1/health/connect/:name` (`Answer::Connect`), serialised once per change of the service
    /// and shared by every reader.
    pub async fn health_json(
        &self,
        answer: Answer,
        name: &str,
        filter: &HealthFilter,
    ) -> Result<Indexed<Bytes>, CatalogError> {
        let (index, value) = self.current().await?.answer(answer, name, filter)?;
        Ok(Indexed { index, value })
    }

    /// `GET /v1/catalog/services`: each service name with the sorted union of its tags.
    pub async fn service_names(
        &self,
    ) -> Result<Indexed<BTreeMap<String, Vec<String>>>, CatalogError> {
        let index = self.current().await?;
        let state = index.read();
        let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for service in state.services.values() {
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
            index: state.revision,
            value: names,
        })
    }

    /// `GET /v1/catalog/service/:name`: the instances of a service, flattened with their node.
    pub async fn service_nodes(
        &self,
        name: &str,
        tag: Option<&str>,
    ) -> Result<Indexed<Vec<CatalogService>>, CatalogError> {
        let index = self.current().await?;
        let state = index.read();
        let value = state
            .instances(name)
            .filter(|(_, s)| has_tag(s, tag))
            .map(|((node, _), s)| catalog_row(state.node(node), s))
            .collect();
        Ok(Indexed {
            index: state.revision,
            value,
        })
    }

    /// `GET /v1/catalog/connect/:name`: the mesh entry points of `name` (its proxies and
    /// mesh-native instances) in the catalog's row shape.
    pub async fn connect_nodes(
        &self,
        name: &str,
    ) -> Result<Indexed<Vec<CatalogService>>, CatalogError> {
        let entries = self.connect_health(name, &HealthFilter::default()).await?;
        Ok(Indexed {
            index: entries.index,
            value: entries
                .value
                .into_iter()
                .map(|e| catalog_row(e.node, &e.service))
                .collect(),
        })
    }
}

/// One catalog row: an instance with its node.
fn catalog_row(node: Node, s: &plexus_api::AgentService) -> CatalogService {
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
        service_tagged_addresses: s.tagged_addresses.clone(),
        service_weights: s.weights,
        service_meta: s.meta.clone(),
        service_port: s.port,
        service_enable_tag_override: s.enable_tag_override,
        service_proxy: s.proxy.clone(),
        create_index: s.create_index.unwrap_or_default(),
        modify_index: s.modify_index.unwrap_or_default(),
    }
}

impl StoreCatalog {
    /// `GET /v1/catalog/nodes`: every node, sorted by name.
    pub async fn nodes(&self) -> Result<Indexed<Vec<Node>>, CatalogError> {
        let index = self.current().await?;
        let state = index.read();
        Ok(Indexed {
            index: state.revision,
            value: state.nodes.values().cloned().collect(),
        })
    }

    /// `GET /v1/health/service/:name`: instances of a service with their node and checks.
    pub async fn service_health(
        &self,
        name: &str,
        filter: &HealthFilter,
    ) -> Result<Indexed<Vec<ServiceEntry>>, CatalogError> {
        self.entries(Answer::Health, name, filter).await
    }

    /// The terminating gateway (its service name) whose `terminating-gateway` config entry
    /// links `service`, if any: mesh clients reach a linked service through the gateway's
    /// instances (Consul's health/connect answer for a linked service). The links are read
    /// from the store once per change of those entries (`link_changes`), not per query.
    pub async fn terminating_gateway_for(
        &self,
        service: &str,
    ) -> Result<Option<String>, CatalogError> {
        use plexus_api::config_entry::ConfigEntry;
        let revision = *self.link_changes().await.borrow();
        let cached = plexus_runtime::lock::lock(&self.linked)
            .as_ref()
            .filter(|(at, _)| *at == revision)
            .map(|(_, links)| Arc::clone(links));
        let links = match cached {
            Some(links) => links,
            None => {
                // Read after the revision: a write in between is in the map and only makes the
                // next call read again.
                let (records, _) = self
                    .store
                    .range(&super::links_root())
                    .await
                    .map_err(store_error)?;
                let mut links = BTreeMap::new();
                for kv in &records {
                    let entry = serde_json::from_slice::<serde_json::Value>(&kv.value)
                        .ok()
                        .and_then(|value| ConfigEntry::from_json(value).ok());
                    if let Some(ConfigEntry::TerminatingGateway(entry)) = entry {
                        for linked in entry.services {
                            links
                                .entry(linked.name)
                                .or_insert_with(|| entry.name.clone());
                        }
                    }
                }
                let links = Arc::new(links);
                *plexus_runtime::lock::lock(&self.linked) = Some((revision, Arc::clone(&links)));
                links
            }
        };
        Ok(links.get(service).cloned())
    }

    /// The last revision at which a `terminating-gateway` entry changed, as a watch: a
    /// blocking `/v1/health/connect` query also wakes when a link appears or goes.
    pub async fn link_changes(&self) -> watch::Receiver<u64> {
        self.links
            .watch(crate::store::changes::Interest::Prefix(super::links_root()))
            .await
    }

    /// `GET /v1/health/connect/:name`: the mesh entry points of a service: `connect-proxy`
    /// instances whose destination is `name`, and mesh-native instances of `name`.
    pub async fn connect_health(
        &self,
        name: &str,
        filter: &HealthFilter,
    ) -> Result<Indexed<Vec<ServiceEntry>>, CatalogError> {
        self.entries(Answer::Connect, name, filter).await
    }

    async fn entries(
        &self,
        answer: Answer,
        name: &str,
        filter: &HealthFilter,
    ) -> Result<Indexed<Vec<ServiceEntry>>, CatalogError> {
        let index = self.current().await?;
        let state = index.read();
        Ok(Indexed {
            index: state.revision,
            value: state.entries(answer, name, filter),
        })
    }

    /// For DNS: the instances of `name` (or its mesh entry points, `Answer::Connect`) carrying
    /// `tag`, as the index holds them now. Unlike the HTTP reads this does not first wait for the
    /// store's current revision (on etcd a read of its own per query), so an answer may trail a
    /// write by the watch's latency, as Consul's DNS does by default (`allow_stale`).
    pub async fn instances_stale(
        &self,
        answer: Answer,
        name: &str,
        tag: Option<&str>,
    ) -> Result<Vec<Reachable>, CatalogError> {
        let index = self.index().await?;
        let state = index.read();
        Ok(state.reachable(answer, name, tag))
    }

    /// For DNS: node `name` (ASCII case ignored, as DNS does) as the index holds it now (see
    /// [`Self::instances_stale`]).
    pub async fn node_stale(&self, name: &str) -> Result<Option<Node>, CatalogError> {
        let index = self.index().await?;
        let state = index.read();
        let found = state.nodes.get(name).or_else(|| {
            state
                .nodes
                .values()
                .find(|n| n.node.eq_ignore_ascii_case(name))
        });
        Ok(found.cloned())
    }

    /// `GET /v1/health/checks/:service`: the checks of every instance of a service.
    pub async fn service_checks(
        &self,
        name: &str,
    ) -> Result<Indexed<Vec<HealthCheck>>, CatalogError> {
        let index = self.current().await?;
        let state = index.read();
        let instances: std::collections::HashSet<(&str, &str)> = state
            .instances(name)
            .map(|((node, _), s)| (node.as_str(), s.id.as_str()))
            .collect();
        let value = state
            .checks
            .values()
            .filter(|c| instances.contains(&(c.node.as_str(), c.service_id.as_str())))
            .cloned()
            .collect();
        Ok(Indexed {
            index: state.revision,
            value,
        })
    }

    /// `GET /v1/catalog/node/:node`, `/node-services/:node`, `/v1/health/node/:node`: the node
    /// with its services and checks (`None`: no such node).
    pub async fn node_view(
        &self,
        name: &str,
    ) -> Result<Indexed<Option<NodeRecords>>, CatalogError> {
        let index = self.current().await?;
        let state = index.read();
        let value = state.nodes.get(name).map(|node| NodeRecords {
            node: node.clone(),
            services: state
                .services
                .iter()
                .filter(|((n, _), _)| n == name)
                .map(|(_, s)| s.clone())
                .collect(),
            checks: state
                .checks
                .iter()
                .filter(|((n, _), _)| n == name)
                .map(|(_, c)| c.clone())
                .collect(),
        });
        Ok(Indexed {
            index: state.revision,
            value,
        })
    }

    /// `GET /v1/health/state/:state`: every check in `state` (`None`: any state).
    pub async fn checks_in_state(
        &self,
        state: Option<CheckStatus>,
    ) -> Result<Indexed<Vec<HealthCheck>>, CatalogError> {
        let index = self.current().await?;
        let catalog = index.read();
        let value = catalog
            .checks
            .values()
            .filter(|c| state.is_none_or(|s| c.status == s))
            .cloned()
            .collect();
        Ok(Indexed {
            index: catalog.revision,
            value,
        })
    }
}

/// A node with its service instances and checks.
#[derive(Debug, Clone)]
pub struct NodeRecords {
    /// The node.
    pub node: plexus_api::Node,
    /// Its service instances, by id.
    pub services: Vec<plexus_api::AgentService>,
    /// Its checks (node and service checks).
    pub checks: Vec<plexus_api::HealthCheck>,
}
