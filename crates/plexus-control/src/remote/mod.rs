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
//! Liveness: a granted lease writes `liveness/nodes/<node>` bound to it, marks the node as
//! agent-owned (`liveness/owned/<node>`) and sets the node's lease check
//! ([`LEASE_CHECK_ID`], a node-level check) `passing`, all in one transaction. [`reaper`] watches
//! the liveness keys on every server replica: when a node's liveness key vanishes (its agent
//! stopped renewing), the lease check turns `critical` — written only while the liveness key is
//! still absent (compare-and-set), so it can never overwrite a newer grant — and each service with
//! `deregister_critical_service_after` on a check is deregistered (with its sidecar) once that long
//! has passed with the lease still absent. Node checks count for every instance on the node: from
//! the lapse until the next grant every instance is critical, whatever its own checks say, and
//! the agent cannot write the lease check. A returning agent takes a new lease (the check passes
//! again) and re-registers what it owns. Replicas do this independently; the writes are
//! idempotent.

pub mod api;
pub mod reaper;

use std::sync::Arc;
use std::time::Duration;

use plexus_api::remote::{LEASE_CHECK_ID, LEASE_CHECK_NAME};
use plexus_api::{CatalogError, CheckStatus, HealthCheck};

use crate::catalog::StoreCatalog;
use crate::catalog::keys::{self, escape};
use crate::store::{Compare, LeaseId, Op, Store, Txn};

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

/// What the lease check says while the lease is held.
pub const HELD_OUTPUT: &str = "the node's agent holds its lease";
/// What the lease check says once the lease has lapsed.
pub const LAPSED_OUTPUT: &str = "agent lease expired: the node's agent stopped renewing it";

/// The lease check record of `node`.
fn lease_check(node: &str, status: CheckStatus, output: &str) -> Result<Op, CatalogError> {
    let check = HealthCheck {
        node: node.to_owned(),
        check_id: LEASE_CHECK_ID.to_owned(),
        name: LEASE_CHECK_NAME.to_owned(),
        status,
        notes: "Kept by the servers: passing while the node's agent holds its lease".to_owned(),
        output: output.to_owned(),
        ..HealthCheck::default()
    };
    let value = serde_json::to_vec(&check).map_err(|e| CatalogError::Store(e.into()))?;
    Ok(Op::Put {
        key: keys::check(node, LEASE_CHECK_ID),
        value,
    })
}

/// Grants `node` a liveness lease of `ttl`, records it and sets the node's lease check passing,
/// in one write. Returns the lease.
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
                lease_check(node, CheckStatus::Passing, HELD_OUTPUT)?,
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

/// What the lease check says before the node's agent took its first lease.
pub const AWAITED_OUTPUT: &str = "waiting for the node's agent to take its lease";

/// Gives a node registered through `/v1/internal/node/register` a critical lease check when it
/// has none yet, so a new node's instances do not pass before its agent holds a lease.
pub async fn await_lease(catalog: &StoreCatalog, node: &str) -> Result<(), CatalogError> {
    catalog
        .store()
        .txn(Txn {
            compares: vec![Compare::ModRevision {
                key: keys::check(node, LEASE_CHECK_ID),
                revision: 0,
            }],
            ops: vec![lease_check(node, CheckStatus::Critical, AWAITED_OUTPUT)?],
        })
        .await
        .map_err(|e| CatalogError::Store(e.into()))?;
    Ok(())
}

/// Turns `node`'s lease check critical, unless its agent holds a lease again (the write is
/// conditional on the liveness key being absent). True when written.
pub async fn mark_critical(catalog: &StoreCatalog, node: &str) -> Result<bool, CatalogError> {
    let written = catalog
        .store()
        .txn(Txn {
            compares: vec![Compare::ModRevision {
                key: live_key(node),
                revision: 0,
            }],
            ops: vec![lease_check(node, CheckStatus::Critical, LAPSED_OUTPUT)?],
        })
        .await
        .map_err(|e| CatalogError::Store(e.into()))?;
    Ok(written.succeeded)
}

#[cfg(test)]
mod tests;
