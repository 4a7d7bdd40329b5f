//! Agents on other machines: the endpoints a remote `plexus agent` writes its node through, and
//! node liveness by lease.
//!
//! Endpoints ([`api::router`], under `/v1/internal/`, Plexus's own):
//!
//! | route | does |
//! | --- | --- |
//! | `PUT /v1/internal/node/register` | [`Catalog::register`] of `{"Node","Services","Checks"}` |
//! | `PUT /v1/internal/node/{node}/service/{id}/deregister` | [`Catalog::deregister_service`] |
//! | `PUT /v1/internal/node/{node}/check/{id}/deregister` | [`Catalog::deregister_check`] |
//! | `PUT /v1/internal/node/{node}/check/{id}` | [`Catalog::update_check`] with `{"Status","Output"}` |
//! | `GET /v1/internal/node/{node}/services`, `/checks` | the node's records (blocking queries) |
//! | `PUT /v1/internal/node/{node}/lease?ttl=10s` | grants the node's liveness lease: `{"ID","TTL"}` |
//! | `PUT /v1/internal/node/{node}/lease/{id}` | renews it; 404 once it has expired |
//!
//! Liveness: a granted lease writes `liveness/nodes/<node>` bound to it and marks the node as
//! agent-owned (`liveness/owned/<node>`). [`reaper`] watches those keys on every server replica:
//! when a node's liveness key vanishes (its agent stopped renewing), every check of that node turns
//! `critical` ("agent lease expired") and each service whose checks carry
//! `deregister_critical_service_after` is deregistered once that long has passed with the lease
//! still absent. A returning agent takes a new lease and re-registers what it owns. Replicas do this
//! independently; the writes are idempotent (a check is written only when it changes, a second
//! deregistration finds nothing).

pub mod api;
pub mod reaper;

use std::sync::Arc;
use std::time::Duration;

use plexus_api::{Catalog, CatalogError};

use crate::catalog::StoreCatalog;
use crate::catalog::keys::escape;
use crate::store::{LeaseId, Op, Store, Txn};

/// Store prefix of liveness keys (one per node with a live agent lease).
pub const LIVE_PREFIX: &str = "liveness/nodes/";
/// Store prefix of nodes whose agent holds (or held) a lease.
pub const OWNED_PREFIX: &str = "liveness/owned/";

/// The liveness key of `node`.
pub fn live_key(node: &str) -> String {
    format!("{LIVE_PREFIX}{}", escape(node))
}

/// The owned marker of `node`.
pub fn owned_key(node: &str) -> String {
    format!("{OWNED_PREFIX}{}", escape(node))
}

/// Grants `node` a liveness lease of `ttl` and records it. Returns the lease.
pub async fn grant(
    catalog: &Arc<StoreCatalog>,
    node: &str,
    ttl: Duration,
) -> Result<LeaseId, CatalogError> {
    let store: &Arc<dyn Store> = catalog.store();
    let lease = store
        .lease_grant(ttl)
        .await
        .map_err(|e| CatalogError::Store(e.into()))?;
    store
        .txn(Txn {
            compares: Vec::new(),
            ops: vec![
                Op::PutLeased {
                    key: live_key(node),
                    value: lease.to_string().into_bytes(),
                    lease,
                },
                Op::Put {
                    key: owned_key(node),
                    value: Vec::new(),
                },
            ],
        })
        .await
        .map_err(|e| CatalogError::Store(e.into()))?;
    tracing::info!(node, lease, ?ttl, "agent lease granted");
    Ok(lease)
}

/// Renews a node's lease: `Some(ttl)` while alive, `None` once it expired.
pub async fn renew(
    catalog: &Arc<StoreCatalog>,
    lease: LeaseId,
) -> Result<Option<Duration>, CatalogError> {
    catalog
        .store()
        .lease_keep_alive(lease)
        .await
        .map_err(|e| CatalogError::Store(e.into()))
}

/// Marks every check of `node` critical (its agent's lease expired).
pub async fn mark_critical(catalog: &StoreCatalog, node: &str) -> Result<(), CatalogError> {
    let checks = catalog.node_checks(node).await?.value;
    for check in checks {
        match catalog
            .update_check(
                node,
                &check.check_id,
                plexus_api::CheckStatus::Critical,
                "agent lease expired: the node's agent stopped renewing it",
            )
            .await
        {
            Ok(_) | Err(CatalogError::NotFound { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
