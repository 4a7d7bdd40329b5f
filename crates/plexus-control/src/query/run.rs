//! Running a prepared query: the instances here that pass it, else (its `Failover`) those of the
//! first other datacenter that has any. Shared by `/v1/query/…/execute` and DNS
//! (`NAME.query.DOMAIN`).

use std::sync::Arc;

use plexus_api::acl::{Authorizer, SecretId};
use plexus_api::{CheckStatus, ServiceEntry};
use plexus_runtime::http::ApiError;

use super::{PreparedQuery, QueryService, failover, find};
use crate::api::ErrorChain;
use crate::catalog::{Answer, HealthFilter, StoreCatalog};
use crate::store::Store;

/// The prepared queries of this datacenter, and what running them reads.
#[derive(Clone)]
pub struct Queries {
    pub(super) store: Arc<dyn Store>,
    catalog: Arc<StoreCatalog>,
    datacenter: String,
    federation: Option<crate::wan::Shared>,
}

impl std::fmt::Debug for Queries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queries")
            .field("datacenter", &self.datacenter)
            .finish_non_exhaustive()
    }
}

/// A query's run.
#[derive(Debug)]
pub struct Ran {
    /// The query (a template rendered for the name run).
    pub query: PreparedQuery,
    /// The instances that passed, unordered.
    pub entries: Vec<ServiceEntry>,
    /// Where they are.
    pub datacenter: String,
    /// How many other datacenters were tried.
    pub failovers: u32,
    /// The local health answer's index.
    pub index: u64,
}

impl Queries {
    /// The queries in `store`, run against `catalog` in `datacenter` (`federation`: where
    /// `Failover` finds the others).
    pub fn new(
        store: Arc<dyn Store>,
        catalog: Arc<StoreCatalog>,
        datacenter: String,
        federation: Option<crate::wan::Shared>,
    ) -> Self {
        Self {
            store,
            catalog,
            datacenter,
            federation,
        }
    }

    /// Runs the query `id_or_name` as `authz` (`token`: the caller's, for other datacenters).
    /// 404 when there is no such query.
    pub async fn run(
        &self,
        id_or_name: &str,
        authz: &Authorizer,
        token: Option<&SecretId>,
    ) -> Result<Ran, ApiError> {
        let query = find(&self.store, id_or_name).await?;
        let service = &query.service;
        let answer = if service.connect {
            Answer::Connect
        } else {
            Answer::Health
        };
        let body = self
            .catalog
            .health_json(answer, &service.service, &HealthFilter::default())
            .await
            .map_err(|e| {
                tracing::warn!(error = %ErrorChain(&e), "prepared query execution failed");
                ApiError::unavailable("the catalog is unavailable")
            })?;
        let entries: Vec<ServiceEntry> = serde_json::from_slice(&body.value)
            .map_err(|_| ApiError::internal("the health answer did not decode"))?;
        let readable = authz.can_read_service(&service.service);
        let mut kept: Vec<ServiceEntry> = entries
            .into_iter()
            .filter(|e| readable && authz.can_read_node(&e.node.node))
            .filter(|e| selected(e, service))
            .collect();
        let mut datacenter = self.datacenter.clone();
        let mut failovers = 0;
        if kept.is_empty()
            && let Some(federation) = &self.federation
        {
            let known = federation.datacenters();
            for dc in failover::order(&service.failover, &known, &self.datacenter) {
                failovers += 1;
                let remote = crate::wan::health::instances(
                    federation,
                    &dc,
                    &service.service,
                    service.connect,
                    None,
                    token,
                );
                match remote.await {
                    Ok(entries) => {
                        kept = entries
                            .into_iter()
                            .filter(|e| selected(e, service))
                            .collect();
                        if !kept.is_empty() {
                            datacenter = dc;
                            break;
                        }
                    }
                    Err(why) => {
                        tracing::warn!(query = %query.name, datacenter = %dc, %why, "prepared query failover: a datacenter did not answer");
                    }
                }
            }
        }
        Ok(Ran {
            entries: kept,
            datacenter,
            failovers,
            index: body.index,
            query,
        })
    }
}

/// Whether an instance passes the query's health, tag and meta conditions.
pub(super) fn selected(entry: &ServiceEntry, service: &QueryService) -> bool {
    let mut statuses = entry
        .checks
        .iter()
        .filter(|c| !service.ignore_check_ids.contains(&c.check_id))
        .map(|c| c.status);
    let healthy = if service.only_passing {
        statuses.all(|s| s == CheckStatus::Passing)
    } else {
        statuses.all(|s| s != CheckStatus::Critical)
    };
    let tags = service.tags.iter().all(|tag| match tag.strip_prefix('!') {
        Some(absent) => !entry.service.tags.iter().any(|t| t == absent),
        None => entry.service.tags.iter().any(|t| t == tag),
    });
    let node_meta = service
        .node_meta
        .iter()
        .all(|(k, v)| entry.node.meta.get(k) == Some(v));
    let service_meta = service
        .service_meta
        .iter()
        .all(|(k, v)| entry.service.meta.get(k) == Some(v));
    healthy && tags && node_meta && service_meta
}
