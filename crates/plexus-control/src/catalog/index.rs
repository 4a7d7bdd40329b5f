//! The catalog in memory, kept up to date from the store's watch, with a modify index per
//! service.
//!
//! One endpoint change used to cost the server a decode of the whole catalog (100,000 instances:
//! most of a second) and a scan of every instance for each of the thousand blocking queries it
//! woke, whatever service they watched. Here a change costs the records it touches: the index
//! applies the store's watch events to decoded records, remembers for each service name the last
//! revision that changed its answer ([`State::health_index`]), and lets a blocking query wake only
//! when that moves (Consul's behaviour). The serialised answer of a service is built once per
//! change and shared by every query that asks for it ([`Shared::answer`]).
//!
//! The watch covers every key (not only `catalog/`) so that the applied revision follows the
//! store's: a read waits until the index has applied the store's current revision, so a read after
//! a write sees it. A revision that carried no change (rare: a delete of absent keys) or a broken
//! watch is covered by re-listing. After a re-list every service counts as changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use axum::body::Bytes;
use plexus_api::model::aggregate;
use plexus_api::registration::Weights;
use plexus_api::{
    AgentService, CatalogError, CheckStatus, HealthCheck, Node, ServiceEntry, ServiceKind,
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{HealthFilter, keys, store_error};
use crate::store::{Change, KeyValue, Store, WatchEvent};

/// How long a read waits for the watch to deliver the store's current revision before it
/// re-lists instead (the watch normally takes microseconds).
const CATCH_UP: Duration = Duration::from_secs(1);
/// Pause before re-watching after the watch broke, so a failing store is not hammered.
const REWATCH_PAUSE: Duration = Duration::from_millis(500);
/// Bound on cached answers (one per service, filter and kind asked for).
const MAX_ANSWERS: usize = 16_384;

/// `(node, id)` of a service instance or a check.
pub(super) type RecordId = (String, String);

/// Which answer: the instances of a service, or its mesh entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// `GET /v1/health/service/:name`.
    Health,
    /// `GET /v1/health/connect/:name`.
    Connect,
}

/// What a blocking query's answer is made of: it wakes only when that may have changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `GET /v1/health/service/:name` and `/v1/health/checks/:name`: the service's instances,
    /// their checks and their nodes.
    Health(String),
    /// `GET /v1/health/connect/:name`: also the proxies for it.
    Connect(String),
    /// `GET /v1/catalog/service/:name`: the service's instances and their nodes (not checks).
    Service(String),
    /// `GET /v1/internal/node/:node/*`: the node and every record on it.
    Node(String),
    /// `GET /v1/catalog/services`: any service record.
    Services,
    /// `GET /v1/catalog/nodes`: any node record.
    Nodes,
    /// `GET /v1/health/state/:state`: any check.
    Checks,
}

impl From<(Answer, &str)> for Topic {
    fn from((answer, name): (Answer, &str)) -> Self {
        match answer {
            Answer::Health => Topic::Health(name.to_owned()),
            Answer::Connect => Topic::Connect(name.to_owned()),
        }
    }
}

/// An instance as DNS sees it ([`State::reachable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachable {
    /// Its node's name.
    pub node: String,
    /// Its node's address (empty when the node record is missing).
    pub node_address: String,
    /// Its own address; empty: its node's.
    pub address: String,
    /// Its port.
    pub port: u16,
    /// Its checks and its node's, aggregated (worst first).
    pub status: CheckStatus,
    /// Its DNS weights.
    pub weights: Weights,
}

impl Reachable {
    /// Where it is reached: its own address, else its node's.
    pub fn dial_address(&self) -> &str {
        if self.address.is_empty() {
            &self.node_address
        } else {
            &self.address
        }
    }
}

/// Every catalog record, decoded, at one store revision, with lookups by service name.
#[derive(Default)]
pub(super) struct State {
    /// The store revision applied.
    pub revision: u64,
    /// The revision of the last re-list: every service counts as changed there.
    relisted_at: u64,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<RecordId, AgentService>,
    pub checks: BTreeMap<RecordId, HealthCheck>,
    by_name: HashMap<String, BTreeSet<RecordId>>,
    by_destination: HashMap<String, BTreeSet<RecordId>>,
    health_changed: HashMap<String, u64>,
    connect_changed: HashMap<String, u64>,
    service_changed: HashMap<String, u64>,
    node_changed: HashMap<String, u64>,
    services_changed: u64,
    nodes_changed: u64,
    checks_changed: u64,
}

impl State {
    /// The last revision at which the answer of `answer` for `name` may have changed.
    pub fn index_of(&self, answer: Answer, name: &str) -> u64 {
        let changed = match answer {
            Answer::Health => &self.health_changed,
            Answer::Connect => &self.connect_changed,
        };
        changed
            .get(name)
            .copied()
            .unwrap_or(0)
            .max(self.relisted_at)
    }

    /// The last revision at which an answer made of `topic` may have changed.
    pub fn topic_index(&self, topic: &Topic) -> u64 {
        let of = |map: &HashMap<String, u64>, name: &str| map.get(name).copied().unwrap_or(0);
        let changed = match topic {
            Topic::Health(name) => of(&self.health_changed, name),
            Topic::Connect(name) => of(&self.connect_changed, name),
            Topic::Service(name) => of(&self.service_changed, name),
            Topic::Node(name) => of(&self.node_changed, name),
            Topic::Services => self.services_changed,
            Topic::Nodes => self.nodes_changed,
            Topic::Checks => self.checks_changed,
        };
        changed.max(self.relisted_at)
    }

    /// The instances an answer lists, before filters, sorted by node then id.
    fn members(&self, answer: Answer, name: &str) -> Vec<&RecordId> {
        let by_name = self.by_name.get(name).into_iter().flatten();
        match answer {
            Answer::Health => by_name.collect(),
            Answer::Connect => {
                let natives = by_name.filter(|id| self.services.get(*id).is_some_and(is_native));
                let proxies = self.by_destination.get(name).into_iter().flatten();
                let all: BTreeSet<&RecordId> = natives.chain(proxies).collect();
                all.into_iter().collect()
            }
        }
    }

    /// `ServiceEntry`s of an answer, filtered.
    pub fn entries(&self, answer: Answer, name: &str, filter: &HealthFilter) -> Vec<ServiceEntry> {
        self.members(answer, name)
            .into_iter()
            .filter_map(|id| Some((id, self.services.get(id)?)))
            .filter(|(_, s)| has_tag(s, filter.tag.as_deref()))
            .map(|((node, id), service)| ServiceEntry {
                node: self.node(node),
                service: service.clone(),
                checks: self.checks_of(node, id),
            })
            .filter(|e| {
                !filter.passing
                    || aggregate(e.checks.iter().map(|c| c.status)) == CheckStatus::Passing
            })
            .collect()
    }

    /// What DNS answers of an answer's instances carrying `tag`: addresses, port, health and
    /// weights, without cloning the instances' definitions, nodes and checks as
    /// [`Self::entries`] does (DNS answers are the catalog's most frequent read).
    pub fn reachable(&self, answer: Answer, name: &str, tag: Option<&str>) -> Vec<Reachable> {
        self.members(answer, name)
            .into_iter()
            .filter_map(|id| Some((id, self.services.get(id)?)))
            .filter(|(_, s)| has_tag(s, tag))
            .map(|((node, id), service)| Reachable {
                node: node.clone(),
                node_address: self
                    .nodes
                    .get(node)
                    .map(|n| n.address.clone())
                    .unwrap_or_default(),
                address: service.address.clone(),
                port: service.port,
                status: aggregate(
                    Self::on_node(&self.checks, node)
                        .filter(|(_, c)| c.service_id.is_empty() || c.service_id == *id)
                        .map(|(_, c)| c.status),
                ),
                weights: service.weights,
            })
            .collect()
    }

    /// The instances of service `name`, sorted by node then id.
    pub fn instances(&self, name: &str) -> impl Iterator<Item = (&RecordId, &AgentService)> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|id| Some((id, self.services.get(id)?)))
    }

    /// What a registration of `node` needs to know, as this index last saw it: the node
    /// record's mod revision (0: absent) and its checks with their store keys.
    pub fn node_view(&self, node: &str) -> (u64, Vec<(String, HealthCheck)>) {
        let revision = self.nodes.get(node).map_or(0, |n| n.modify_index);
        let checks = Self::on_node(&self.checks, node)
            .map(|((node, id), check)| (keys::check(node, id), check.clone()))
            .collect();
        (revision, checks)
    }

    /// Node `name`, or a bare record naming it when the node record is missing.
    pub fn node(&self, name: &str) -> Node {
        self.nodes.get(name).cloned().unwrap_or_else(|| Node {
            node: name.to_owned(),
            ..Node::default()
        })
    }

    fn on_node<'a, T>(
        map: &'a BTreeMap<RecordId, T>,
        node: &'a str,
    ) -> impl Iterator<Item = (&'a RecordId, &'a T)> {
        map.range((node.to_owned(), String::new())..)
            .take_while(move |((n, _), _)| n == node)
    }

    /// Node checks of `node` and the checks of instance `service_id` there, node checks first.
    fn checks_of(&self, node: &str, service_id: &str) -> Vec<HealthCheck> {
        let mut checks: Vec<HealthCheck> = Self::on_node(&self.checks, node)
            .map(|(_, c)| c)
            .filter(|c| c.service_id.is_empty() || c.service_id == service_id)
            .cloned()
            .collect();
        checks.sort_by(|a, b| {
            (!a.service_id.is_empty(), &a.check_id).cmp(&(!b.service_id.is_empty(), &b.check_id))
        });
        checks
    }

    fn touch(&mut self, service: &AgentService, revision: u64) {
        self.health_changed
            .insert(service.service.clone(), revision);
        self.connect_changed
            .insert(service.service.clone(), revision);
        if let Some(destination) = destination(service) {
            self.connect_changed
                .insert(destination.to_owned(), revision);
        }
    }

    /// A service record of `service` on `node` changed (put or delete).
    fn touch_record(&mut self, node: &str, service: &AgentService, revision: u64) {
        self.touch(service, revision);
        self.service_changed
            .insert(service.service.clone(), revision);
        self.node_changed.insert(node.to_owned(), revision);
        self.services_changed = revision;
    }

    fn touch_node(&mut self, node: &str, revision: u64) {
        let on_node: Vec<AgentService> = Self::on_node(&self.services, node)
            .map(|(_, s)| s.clone())
            .collect();
        for service in &on_node {
            self.touch(service, revision);
        }
    }

    /// The node record of `node` changed: everything listing it.
    fn touch_node_record(&mut self, node: &str, revision: u64) {
        self.touch_node(node, revision);
        let names: BTreeSet<String> = Self::on_node(&self.services, node)
            .map(|(_, s)| s.service.clone())
            .collect();
        for name in names {
            self.service_changed.insert(name, revision);
        }
        self.node_changed.insert(node.to_owned(), revision);
        self.nodes_changed = revision;
    }

    fn touch_instance(&mut self, node: &str, service_id: &str, revision: u64) {
        if service_id.is_empty() {
            self.touch_node(node, revision);
        } else if let Some(service) = self
            .services
            .get(&(node.to_owned(), service_id.to_owned()))
            .cloned()
        {
            self.touch(&service, revision);
        }
    }

    fn insert_service(&mut self, id: RecordId, service: AgentService) {
        self.by_name
            .entry(service.service.clone())
            .or_default()
            .insert(id.clone());
        if let Some(destination) = destination(&service) {
            self.by_destination
                .entry(destination.to_owned())
                .or_default()
                .insert(id.clone());
        }
        self.services.insert(id, service);
    }

    fn remove_service(&mut self, id: &RecordId) -> Option<AgentService> {
        let old = self.services.remove(id)?;
        unlink(&mut self.by_name, &old.service, id);
        if let Some(destination) = destination(&old) {
            unlink(&mut self.by_destination, destination, id);
        }
        Some(old)
    }

    /// Applies one change of a `catalog/` key at `revision`, noting what it changed.
    fn apply(&mut self, change: &Change, datacenter: &str) {
        let revision = change.revision();
        let key = change.key();
        if let Some(name) = key.strip_prefix(keys::NODES) {
            let name = keys::unescape(name);
            match change {
                Change::Put(kv) => match decode::<Node>(kv) {
                    Some(mut node) => {
                        fill_node(&mut node, kv, datacenter);
                        self.nodes.insert(name.clone(), node);
                    }
                    None => {
                        self.nodes.remove(&name);
                    }
                },
                Change::Delete { .. } => {
                    self.nodes.remove(&name);
                }
            }
            self.touch_node_record(&name, revision);
        } else if let Some(id) = record_id(keys::SERVICES, key) {
            if let Some(old) = self.remove_service(&id) {
                self.touch_record(&id.0, &old, revision);
            }
            if let Change::Put(kv) = change
                && let Some(mut service) = decode::<AgentService>(kv)
            {
                fill_service(&mut service, kv, datacenter);
                self.touch_record(&id.0, &service, revision);
                self.insert_service(id, service);
            }
        } else if let Some(id) = record_id(keys::CHECKS, key) {
            if let Some(old) = self.checks.remove(&id) {
                self.touch_instance(&id.0, &old.service_id, revision);
            }
            if let Change::Put(kv) = change
                && let Some(mut check) = decode::<HealthCheck>(kv)
            {
                fill_check(&mut check, kv);
                self.touch_instance(&id.0, &check.service_id, revision);
                self.checks.insert(id.clone(), check);
            }
            self.node_changed.insert(id.0, revision);
            self.checks_changed = revision;
        }
    }

    /// A state holding `kvs` (a listing of `catalog/` at `revision`).
    fn listed(kvs: &[KeyValue], revision: u64, datacenter: &str) -> Self {
        let mut state = State::default();
        for kv in kvs {
            state.apply(&Change::Put(kv.clone()), datacenter);
        }
        state.health_changed.clear();
        state.connect_changed.clear();
        state.service_changed.clear();
        state.node_changed.clear();
        state.revision = revision;
        state.relisted_at = revision;
        state
    }
}

fn unlink(map: &mut HashMap<String, BTreeSet<RecordId>>, name: &str, id: &RecordId) {
    if let Some(ids) = map.get_mut(name) {
        ids.remove(id);
        if ids.is_empty() {
            map.remove(name);
        }
    }
}

/// `(node, id)` of a key under `prefix` (`catalog/services/` or `catalog/checks/`).
fn record_id(prefix: &str, key: &str) -> Option<RecordId> {
    let node = keys::node_of(prefix, key)?;
    let (_, id) = key.strip_prefix(prefix)?.split_once('/')?;
    Some((node, keys::unescape(id)))
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(record) => Some(record),
        Err(error) => {
            tracing::warn!(key = %kv.key, %error, "catalog record is not valid; left out");
            None
        }
    }
}

pub(super) fn fill_node(node: &mut Node, kv: &KeyValue, datacenter: &str) {
    node.create_index = kv.create_revision;
    node.modify_index = kv.mod_revision;
    if node.datacenter.is_empty() {
        datacenter.clone_into(&mut node.datacenter);
    }
}

pub(super) fn fill_service(service: &mut AgentService, kv: &KeyValue, datacenter: &str) {
    service.create_index = Some(kv.create_revision);
    service.modify_index = Some(kv.mod_revision);
    if service.datacenter.is_empty() {
        datacenter.clone_into(&mut service.datacenter);
    }
}

pub(super) fn fill_check(check: &mut HealthCheck, kv: &KeyValue) {
    check.create_index = kv.create_revision;
    check.modify_index = kv.mod_revision;
}

pub(super) fn has_tag(service: &AgentService, tag: Option<&str>) -> bool {
    tag.is_none_or(|tag| service.tags.iter().any(|t| t == tag))
}

fn is_native(service: &AgentService) -> bool {
    service
        .connect
        .as_ref()
        .and_then(|c| c.get("Native"))
        .and_then(serde_json::Value::as_bool)
        == Some(true)
}

/// The destination of a `connect-proxy` instance.
fn destination(service: &AgentService) -> Option<&str> {
    if service.kind != ServiceKind::ConnectProxy {
        return None;
    }
    service
        .proxy
        .as_ref()
        .map(|p| p.destination_service_name.as_str())
        .filter(|d| !d.is_empty())
}

/// Key of a cached answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AnswerKey {
    answer: Answer,
    name: String,
    filter: HealthFilter,
}

/// What the catalog's readers and its watch task share.
pub(super) struct Shared {
    state: RwLock<State>,
    /// The revision `state` is at.
    applied: watch::Sender<u64>,
    /// Serialised answers with the service index they were built at.
    answers: Mutex<HashMap<AnswerKey, (u64, Bytes)>>,
    /// Makes concurrent re-lists wait for one.
    relisting: tokio::sync::Mutex<()>,
    datacenter: String,
}

impl Shared {
    /// Lists the catalog and starts the watch that keeps it current until `stop`.
    pub async fn start(
        store: Arc<dyn Store>,
        datacenter: String,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, CatalogError> {
        let shared = Arc::new(Self {
            state: RwLock::new(State::default()),
            applied: watch::channel(0).0,
            answers: Mutex::new(HashMap::new()),
            relisting: tokio::sync::Mutex::new(()),
            datacenter,
        });
        let listed = shared.relist(&*store).await?;
        tokio::spawn(follow(
            Arc::downgrade(&shared),
            Arc::downgrade(&store),
            listed,
            stop,
        ));
        Ok(shared)
    }

    /// The state, for reading (never held across an await).
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        // Every mutation leaves the state usable, so a panicked writer does not poison it.
        plexus_runtime::lock::read(&self.state)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        plexus_runtime::lock::write(&self.state)
    }

    /// The applied revision, as a watch: it moves on every applied change.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn publish(&self, revision: u64) {
        self.applied.send_if_modified(|current| {
            let newer = revision > *current;
            if newer {
                *current = revision;
            }
            newer
        });
    }

    /// Replaces the state with a fresh listing (unless the state is already past it).
    async fn relist(&self, store: &dyn Store) -> Result<u64, CatalogError> {
        let (kvs, revision) = store.range(keys::ROOT).await.map_err(store_error)?;
        let fresh = State::listed(&kvs, revision, &self.datacenter);
        {
            let mut state = self.write();
            if revision >= state.revision {
                *state = fresh;
            }
        }
        self.publish(revision);
        Ok(revision)
    }

    fn apply(&self, changes: &[Change]) {
        let revision = {
            let mut state = self.write();
            for change in changes {
                if change.revision() <= state.revision {
                    continue;
                }
                if change.key().starts_with(keys::ROOT) {
                    state.apply(change, &self.datacenter);
                }
            }
            let newest = changes.iter().map(Change::revision).max().unwrap_or(0);
            state.revision = state.revision.max(newest);
            state.revision
        };
        self.publish(revision);
    }

    /// Waits until the state has applied `written` (the store's newest write to its keys, see
    /// [`Store::written_revision`]): every write acknowledged before the read is in, and
    /// revisions other users of a shared etcd wrote outside the namespace are never waited for.
    /// Re-lists when the watch does not get there in time.
    pub async fn catch_up(&self, store: &dyn Store, written: u64) -> Result<(), CatalogError> {
        let revision = written;
        let mut applied = self.applied();
        let caught_up = tokio::time::timeout(CATCH_UP, applied.wait_for(|r| *r >= revision));
        if matches!(caught_up.await, Ok(Ok(_))) {
            return Ok(());
        }
        let _one = self.relisting.lock().await;
        if *self.applied.borrow() >= revision {
            return Ok(());
        }
        tracing::debug!(revision, "catalog index behind the store; re-listing");
        self.relist(store).await.map(drop)
    }

    /// The serialised answer for `name`, built once per change of the service.
    pub fn answer(
        &self,
        answer: Answer,
        name: &str,
        filter: &HealthFilter,
    ) -> Result<(u64, Bytes), CatalogError> {
        let state = self.read();
        let index = state.index_of(answer, name);
        let key = AnswerKey {
            answer,
            name: name.to_owned(),
            filter: filter.clone(),
        };
        let mut answers = plexus_runtime::lock::lock(&self.answers);
        if let Some((at, body)) = answers.get(&key)
            && *at == index
        {
            return Ok((state.revision, body.clone()));
        }
        let entries = state.entries(answer, name, filter);
        let body = Bytes::from(serde_json::to_vec(&entries).map_err(store_error)?);
        if answers.len() >= MAX_ANSWERS {
            answers.clear();
        }
        answers.insert(key, (index, body.clone()));
        Ok((state.revision, body))
    }
}

/// Applies the store's watch to the state until `stop` or until the catalog is gone; re-lists
/// after a compaction or a broken watch. Holds the store weakly: dropping the catalog closes it.
async fn follow(
    shared: std::sync::Weak<Shared>,
    store: std::sync::Weak<dyn Store>,
    mut after: u64,
    stop: CancellationToken,
) {
    loop {
        let Some(strong) = store.upgrade() else {
            return;
        };
        let watch = strong.watch("", after).await;
        drop(strong);
        match watch {
            Ok(mut events) => loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    event = events.recv() => event,
                };
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                match event {
                    Some(WatchEvent::Changes(changes)) => {
                        shared.apply(&changes);
                        after = *shared.applied.borrow();
                    }
                    Some(WatchEvent::Compacted { compact_revision }) => {
                        tracing::debug!(compact_revision, "catalog watch compacted; re-listing");
                        break;
                    }
                    None if store.strong_count() == 0 => return,
                    None => {
                        tracing::warn!("catalog watch ended; re-listing");
                        break;
                    }
                }
            },
            Err(error) => {
                tracing::warn!(error = %crate::api::ErrorChain(&error), "cannot watch the catalog");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REWATCH_PAUSE) => {}
        }
        let (Some(shared), Some(store)) = (shared.upgrade(), store.upgrade()) else {
            return;
        };
        match shared.relist(&*store).await {
            Ok(revision) => after = revision,
            Err(error) => {
                tracing::warn!(error = %crate::api::ErrorChain(&error), "cannot re-list the catalog");
            }
        }
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
