//! Test scaffolding: an in-memory [`Catalog`] (a mutexed map and an index watch) and a
//! deadline-bounded wait on it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use plexus_api::{
    AgentService, Catalog, CatalogError, CheckStatus, HealthCheck, Indexed, Node, Registration,
};
use tokio::sync::watch;

#[derive(Default)]
struct State {
    index: u64,
    nodes: BTreeMap<String, Node>,
    services: BTreeMap<(String, String), AgentService>,
    checks: BTreeMap<(String, String), HealthCheck>,
}

/// An in-memory catalog.
pub(crate) struct MemCatalog {
    state: Mutex<State>,
    index: watch::Sender<u64>,
}

impl MemCatalog {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            index: watch::channel(0).0,
        })
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, CatalogError>,
    ) -> Result<u64, CatalogError> {
        let mut state = self.state.lock().unwrap();
        f(&mut state)?;
        state.index += 1;
        let index = state.index;
        drop(state);
        self.index.send_replace(index);
        Ok(index)
    }

    /// One check by id, if registered.
    pub(crate) fn check(&self, node: &str, id: &str) -> Option<HealthCheck> {
        let state = self.state.lock().unwrap();
        state.checks.get(&(node.to_owned(), id.to_owned())).cloned()
    }

    /// Whether a service is registered.
    pub(crate) fn has_service(&self, node: &str, id: &str) -> bool {
        let state = self.state.lock().unwrap();
        state
            .services
            .contains_key(&(node.to_owned(), id.to_owned()))
    }

    /// Waits (up to `deadline`) until `condition` holds, re-checking on every index change.
    pub(crate) async fn eventually(&self, deadline: Duration, condition: impl Fn(&Self) -> bool) {
        let mut rx = self.index.subscribe();
        let wait = async {
            loop {
                if condition(self) {
                    return;
                }
                rx.changed().await.unwrap();
            }
        };
        tokio::time::timeout(deadline, wait)
            .await
            .expect("condition not met before the deadline");
    }
}

#[async_trait]
impl Catalog for MemCatalog {
    async fn register(&self, registration: Registration) -> Result<u64, CatalogError> {
        self.write(|state| {
            let node = registration.node.node.clone();
            state.nodes.insert(node.clone(), registration.node);
            for service in registration.services {
                let id = service.id.clone();
                state
                    .checks
                    .retain(|(n, _), c| !(n == &node && c.service_id == id));
                state.services.insert((node.clone(), id), service);
            }
            for mut check in registration.checks {
                check.node = node.clone();
                state
                    .checks
                    .insert((node.clone(), check.check_id.clone()), check);
            }
            Ok(())
        })
    }

    async fn deregister_service(&self, node: &str, service_id: &str) -> Result<u64, CatalogError> {
        self.write(|state| {
            let key = (node.to_owned(), service_id.to_owned());
            if state.services.remove(&key).is_none() {
                return Err(CatalogError::NotFound {
                    kind: "service",
                    id: service_id.to_owned(),
                });
            }
            state
                .checks
                .retain(|(n, _), c| !(n == node && c.service_id == service_id));
            Ok(())
        })
    }

    async fn deregister_check(&self, node: &str, check_id: &str) -> Result<u64, CatalogError> {
        self.write(|state| {
            let key = (node.to_owned(), check_id.to_owned());
            state
                .checks
                .remove(&key)
                .map(|_| ())
                .ok_or(CatalogError::NotFound {
                    kind: "check",
                    id: check_id.to_owned(),
                })
        })
    }

    async fn update_check(
        &self,
        node: &str,
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<u64, CatalogError> {
        {
            let state = self.state.lock().unwrap();
            let check = state
                .checks
                .get(&(node.to_owned(), check_id.to_owned()))
                .ok_or(CatalogError::NotFound {
                    kind: "check",
                    id: check_id.to_owned(),
                })?;
            if check.status == status && check.output == output {
                return Ok(state.index);
            }
        }
        self.write(|state| {
            if let Some(check) = state
                .checks
                .get_mut(&(node.to_owned(), check_id.to_owned()))
            {
                check.status = status;
                check.output = output.to_owned();
            }
            Ok(())
        })
    }

    async fn node_services(&self, node: &str) -> Result<Indexed<Vec<AgentService>>, CatalogError> {
        let state = self.state.lock().unwrap();
        let value = state
            .services
            .iter()
            .filter(|((n, _), _)| n == node)
            .map(|(_, s)| s.clone())
            .collect();
        Ok(Indexed {
            index: state.index,
            value,
        })
    }

    async fn node_checks(&self, node: &str) -> Result<Indexed<Vec<HealthCheck>>, CatalogError> {
        let state = self.state.lock().unwrap();
        let value = state
            .checks
            .iter()
            .filter(|((n, _), _)| n == node)
            .map(|(_, c)| c.clone())
            .collect();
        Ok(Indexed {
            index: state.index,
            value,
        })
    }

    fn index_watch(&self) -> watch::Receiver<u64> {
        self.index.subscribe()
    }
}
