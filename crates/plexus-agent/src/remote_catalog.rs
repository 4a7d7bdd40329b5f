//! The catalog over HTTP, for a `plexus agent` on a machine without a server: [`HttpCatalog`]
//! implements [`Catalog`] against the servers' `/v1/internal/node/*` endpoints (with the typed
//! client's failover), keeps a copy of what this node owns, and holds the node's liveness lease.
//!
//! Static stability: while no server answers, writes fail (the agent's check runners keep running
//! and log it) but the copy of owned state keeps the latest statuses; when a server answers again,
//! or the lease had to be taken anew (it expired meanwhile and the servers may have deregistered
//! the node's services), the whole owned state is written back in one registration.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use plexus_api::catalog::{Catalog, CatalogError, Indexed, Registration};
use plexus_api::client::{Client, ClientError, QueryOptions, encode};
use plexus_api::model::{AgentService, CheckStatus, HealthCheck, Node};
use plexus_api::remote::{CheckUpdate, NodeLease, NodeRegistration, WriteIndex};
use plexus_runtime::Backoff;
use plexus_runtime::backoff::spread;

/// What this node has registered, as last written.
#[derive(Debug, Default, Clone)]
struct Owned {
    node: Option<Node>,
    services: BTreeMap<String, AgentService>,
    checks: BTreeMap<String, HealthCheck>,
}

/// [`Catalog`] over the servers' HTTP API.
pub struct HttpCatalog {
    client: Client,
    node: String,
    owned: Mutex<Owned>,
    index: Arc<watch::Sender<u64>>,
    follower: tokio::task::AbortHandle,
}

impl std::fmt::Debug for HttpCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCatalog")
            .field("node", &self.node)
            .field("servers", &self.client.servers())
            .finish_non_exhaustive()
    }
}

impl Drop for HttpCatalog {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

fn catalog_error(kind: &'static str, id: &str, error: ClientError) -> CatalogError {
    match error {
        ClientError::Status { status: 404, .. } => CatalogError::NotFound {
            kind,
            id: id.to_owned(),
        },
        ClientError::Status {
            status: 409,
            message,
            field,
            ..
        } => CatalogError::Conflict { message, field },
        other => CatalogError::Store(Box::new(other)),
    }
}

impl HttpCatalog {
    /// A catalog for `node` through `client`; starts following the node's index (needs a tokio
    /// runtime).
    pub fn new(client: Client, node: &str) -> Self {
        let index = Arc::new(watch::channel(0).0);
        let follower = tokio::spawn(follow(client.clone(), node.to_owned(), Arc::clone(&index)));
        Self {
            client,
            node: node.to_owned(),
            owned: Mutex::new(Owned::default()),
            index,
            follower: follower.abort_handle(),
        }
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, Owned> {
        plexus_runtime::lock::lock(&self.owned)
    }

    fn advance(&self, index: u64) {
        advance(&self.index, index);
    }

    fn node_path(&self, rest: &str) -> String {
        format!("/v1/internal/node/{}{rest}", encode(&self.node))
    }

    /// Writes everything this node owns back in one registration (after the servers were away
    /// or the lease expired). Nothing happens before the first registration.
    pub async fn resync(&self) -> Result<(), CatalogError> {
        let owned = self.owned().clone();
        let Some(node) = owned.node else {
            return Ok(());
        };
        let body = NodeRegistration {
            node,
            services: owned.services.into_values().collect(),
            checks: owned.checks.into_values().collect(),
        };
        let written: WriteIndex = self
            .client
            .put_json("/v1/internal/node/register", Some(&body))
            .await
            .map_err(|e| catalog_error("node", &self.node, e))?;
        self.advance(written.index);
        tracing::info!(node = %self.node, services = body.services.len(), checks = body.checks.len(), "re-registered what this agent owns");
        Ok(())
    }

    /// Holds this node's liveness lease of `ttl` for as long as the future runs: renews it every
    /// third of `ttl`; takes a new one when it expired; re-registers the owned state after every
    /// new lease and after every spell without servers. Never returns.
    ///
    /// Grants and renewals go over a new connection each (never a pooled one that may have died
    /// silently, e.g. in a partition), with a connect timeout and a request timeout of a third
    /// of `ttl` (between 500 ms and 10 s): a renewal that cannot get through fails in time for
    /// the next attempt before the lease runs out.
    pub async fn hold_lease(&self, ttl: Duration) {
        let ttl_text = format!("{}ms", ttl.as_millis());
        let grant_path = format!("{}?ttl={ttl_text}", self.node_path("/lease"));
        let timeout = (ttl / 3).clamp(
            Duration::from_millis(500),
            plexus_api::client::REQUEST_TIMEOUT,
        );
        let lease_client = match self
            .client
            .with_fresh_connections(timeout.min(plexus_api::client::CONNECT_TIMEOUT))
        {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%error, "no client for lease renewals; using the shared one");
                self.client.clone()
            }
        };
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut away_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        loop {
            // What this node owns is written back *before* the lease (which makes the node pass
            // again): instances come back with the statuses of now, never with those from before
            // a spell away.
            let mut unsynced = self.resync().await.is_err();
            let granted: Result<NodeLease, ClientError> = lease_client
                .put_json_within::<(), NodeLease>(&grant_path, None, timeout)
                .await;
            let lease = match granted {
                Ok(lease) => lease,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %error, retry_in = ?delay, "cannot take the node's lease; retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            backoff.reset();
            tracing::info!(node = %self.node, lease = lease.id, "holding the node's lease");
            if unsynced {
                if let Err(error) = self.resync().await {
                    tracing::warn!(%error, "re-registration failed; trying again after the next renewal");
                } else {
                    unsynced = false;
                }
            }
            let renew_path = self.node_path(&format!("/lease/{}", lease.id));
            // While set, the next successful renewal is followed by a re-registration.
            let mut away = unsynced;
            loop {
                let pause = if away {
                    away_backoff.next_delay()
                } else {
                    spread(ttl / 3, 0.25)
                };
                tokio::time::sleep(pause).await;
                match lease_client
                    .put_json_within::<(), NodeLease>(&renew_path, None, timeout)
                    .await
                {
                    Ok(_) => {
                        away_backoff.reset();
                        if away {
                            away = false;
                            tracing::info!(node = %self.node, "servers reachable again; reporting");
                            if let Err(error) = self.resync().await {
                                tracing::warn!(%error, "re-registration failed");
                                away = true;
                            }
                        }
                    }
                    Err(ClientError::Status { status: 404, .. }) => {
                        tracing::warn!(node = %self.node, lease = lease.id, "the node's lease expired; taking a new one");
                        break;
                    }
                    Err(error) => {
                        if !away {
                            tracing::warn!(error = %error, "cannot renew the node's lease; retrying");
                        }
                        away = true;
                    }
                }
            }
        }
    }
}

fn advance(sender: &watch::Sender<u64>, index: u64) {
    sender.send_if_modified(|current| {
        let newer = index > *current;
        if newer {
            *current = index;
        }
        newer
    });
}

/// Follows the node's checks with blocking queries and publishes the index.
async fn follow(client: Client, node: String, index: Arc<watch::Sender<u64>>) {
    let path = format!("/v1/internal/node/{}/checks", encode(&node));
    let mut at = 0u64;
    let mut backoff = Backoff::default();
    loop {
        let query = if at == 0 {
            QueryOptions::default()
        } else {
            QueryOptions::blocking(at, Duration::from_secs(300))
        };
        match client.get::<Vec<HealthCheck>>(&path, query, &[]).await {
            Ok(answer) => {
                backoff.reset();
                // An index that went backwards (a restored store): start over.
                at = if answer.index < at { 0 } else { answer.index };
                advance(&index, answer.index);
            }
            Err(_) => {
                at = 0;
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[async_trait]
impl Catalog for HttpCatalog {
    async fn register(&self, registration: Registration) -> Result<u64, CatalogError> {
        let body = NodeRegistration::from(registration);
        let written: WriteIndex = self
            .client
            .put_json("/v1/internal/node/register", Some(&body))
            .await
            .map_err(|e| catalog_error("node", &body.node.node, e))?;
        {
            let mut owned = self.owned();
            owned.node = Some(body.node.clone());
            for service in &body.services {
                owned.checks.retain(|_, c| c.service_id != service.id);
                owned.services.insert(service.id.clone(), service.clone());
            }
            for check in &body.checks {
                owned.checks.insert(check.check_id.clone(), check.clone());
            }
        }
        self.advance(written.index);
        Ok(written.index)
    }

    async fn deregister_service(&self, node: &str, service_id: &str) -> Result<u64, CatalogError> {
        {
            let mut owned = self.owned();
            owned.services.remove(service_id);
            owned.checks.retain(|_, c| c.service_id != service_id);
        }
        let path = format!(
            "/v1/internal/node/{}/service/{}/deregister",
            encode(node),
            encode(service_id)
        );
        let written: WriteIndex = self
            .client
            .put_json::<(), _>(&path, None)
            .await
            .map_err(|e| catalog_error("service", service_id, e))?;
        self.advance(written.index);
        Ok(written.index)
    }

    async fn deregister_check(&self, node: &str, check_id: &str) -> Result<u64, CatalogError> {
        self.owned().checks.remove(check_id);
        let path = format!(
            "/v1/internal/node/{}/check/{}/deregister",
            encode(node),
            encode(check_id)
        );
        let written: WriteIndex = self
            .client
            .put_json::<(), _>(&path, None)
            .await
            .map_err(|e| catalog_error("check", check_id, e))?;
        self.advance(written.index);
        Ok(written.index)
    }

    async fn update_check(
        &self,
        node: &str,
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<u64, CatalogError> {
        // Kept first, so the latest result is what a re-registration reports.
        if let Some(check) = self.owned().checks.get_mut(check_id) {
            check.status = status;
            check.output = output.to_owned();
        }
        let path = format!(
            "/v1/internal/node/{}/check/{}",
            encode(node),
            encode(check_id)
        );
        let body = CheckUpdate {
            status,
            output: output.to_owned(),
        };
        let written: WriteIndex = self
            .client
            .put_json(&path, Some(&body))
            .await
            .map_err(|e| catalog_error("check", check_id, e))?;
        self.advance(written.index);
        Ok(written.index)
    }

    async fn node_services(&self, node: &str) -> Result<Indexed<Vec<AgentService>>, CatalogError> {
        let path = format!("/v1/internal/node/{}/services", encode(node));
        let found = self
            .client
            .get(&path, QueryOptions::default(), &[])
            .await
            .map_err(|e| catalog_error("node", node, e))?;
        self.advance(found.index);
        Ok(found)
    }

    async fn node_checks(&self, node: &str) -> Result<Indexed<Vec<HealthCheck>>, CatalogError> {
        let path = format!("/v1/internal/node/{}/checks", encode(node));
        let found = self
            .client
            .get(&path, QueryOptions::default(), &[])
            .await
            .map_err(|e| catalog_error("node", node, e))?;
        self.advance(found.index);
        Ok(found)
    }

    fn index_watch(&self) -> watch::Receiver<u64> {
        self.index.subscribe()
    }
}
