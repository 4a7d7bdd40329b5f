//! The operator view: which servers run (each announces itself in the store under a lease), the
//! store backend with its members' health, and each proxy with the configuration revision it last
//! acknowledged.
//!
//! - `GET /v1/operator/plexus`: [`OperatorView`].
//! - `PUT /v1/internal/proxy/{id}/ack?revision=N[&admin=ADDR]`: a proxy says it applied revision
//!   `N` (and where its admin listener, with its metrics, is).
//!
//! ACLs: the view needs `operator:read`; an acknowledgement `service:write` on the proxy
//! service (a sidecar's own token has it).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use plexus_api::operator::{MemberView, OperatorView, ProxyAck, ServerRecord, StoreView};
use plexus_runtime::acl::Authz;
use plexus_runtime::http::{ApiError, QueryParams};
use tokio_util::sync::CancellationToken;

use crate::api::{ErrorChain, path_error};
use crate::catalog::keys::escape;
use crate::store::{Op, Store, Txn};

/// Store prefix of server announcements (leased).
pub const SERVERS_PREFIX: &str = "operator/servers/";
/// Store prefix of proxy acknowledgements.
pub const PROXIES_PREFIX: &str = "operator/proxies/";
/// TTL of a server's announcement.
pub const ANNOUNCE_TTL: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct OperatorState {
    store: Arc<dyn Store>,
    node: String,
}

/// The operator routes (no fallback).
pub fn router(store: Arc<dyn Store>, node: String) -> Router {
    Router::new()
        .route("/v1/operator/plexus", get(view))
        .route("/v1/internal/proxy/{id}/ack", put(ack))
        .with_state(OperatorState { store, node })
}

fn unavailable(error: crate::StoreError) -> ApiError {
    tracing::warn!(error = %ErrorChain(&error), "operator store read failed");
    ApiError::unavailable("the store is unavailable")
}

async fn view(State(state): State<OperatorState>, authz: Authz) -> Result<Response, ApiError> {
    authz.require_operator_read()?;
    let (servers, _) = state
        .store
        .range(SERVERS_PREFIX)
        .await
        .map_err(unavailable)?;
    let (proxies, _) = state
        .store
        .range(PROXIES_PREFIX)
        .await
        .map_err(unavailable)?;
    let status = state.store.status().await;
    let view = OperatorView {
        answered_by: state.node.clone(),
        servers: servers
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect(),
        store: StoreView {
            backend: status.backend,
            location: status.location,
            members: status
                .members
                .into_iter()
                .map(|m| MemberView {
                    name: m.name,
                    endpoint: m.endpoint,
                    healthy: m.healthy,
                    leader: m.leader,
                    version: m.version,
                })
                .collect(),
        },
        proxies: proxies
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect(),
    };
    Ok(axum::Json(view).into_response())
}

/// The service name of the registered service instance `id` (any node).
async fn service_name_of(store: &dyn Store, id: &str) -> Result<Option<String>, ApiError> {
    let (records, _) = store
        .range(crate::catalog::keys::SERVICES)
        .await
        .map_err(unavailable)?;
    Ok(records.iter().find_map(|kv| {
        serde_json::from_slice::<plexus_api::AgentService>(&kv.value)
            .ok()
            .filter(|s| s.id == id)
            .map(|s| s.service)
    }))
}

async fn ack(
    State(state): State<OperatorState>,
    authz: Authz,
    id: Result<Path<String>, PathRejection>,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    let revision = params
        .get("revision")
        .and_then(|r| r.parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::invalid_field("revision", "revision must be a non-negative integer")
        })?;
    let name = service_name_of(state.store.as_ref(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no service {id:?} is registered")))?;
    authz.require_service_write(&name)?;
    let admin_addr = match params.get("admin") {
        None | Some("") => String::new(),
        Some(admin) => admin
            .parse::<std::net::SocketAddr>()
            .map_err(|_| {
                ApiError::invalid_field("admin", format!("admin {admin:?} is not ip:port"))
            })?
            .to_string(),
    };
    let record = ProxyAck {
        admin_addr,
        id: id.clone(),
        revision,
        acknowledged_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let value = serde_json::to_vec(&record)
        .map_err(|_| ApiError::internal("cannot encode the acknowledgement"))?;
    state
        .store
        .txn(Txn {
            compares: Vec::new(),
            ops: vec![Op::Put {
                key: format!("{PROXIES_PREFIX}{}", escape(&id)),
                value,
            }],
        })
        .await
        .map_err(unavailable)?;
    Ok(axum::Json(true).into_response())
}

/// Announces this server under a lease until `stop` fires (renewed every third of the TTL, taken
/// anew when it expired).
pub async fn announce(store: Arc<dyn Store>, record: ServerRecord, stop: CancellationToken) {
    let key = format!("{SERVERS_PREFIX}{}", escape(&record.node));
    let Ok(value) = serde_json::to_vec(&record) else {
        return;
    };
    let pause = |d: Duration| {
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = stop.cancelled() => false,
                _ = tokio::time::sleep(d) => true,
            }
        }
    };
    loop {
        let granted = async {
            let lease = store.lease_grant(ANNOUNCE_TTL).await?;
            store
                .txn(Txn {
                    compares: Vec::new(),
                    ops: vec![Op::PutLeased {
                        key: key.clone(),
                        value: value.clone(),
                        lease,
                    }],
                })
                .await?;
            Ok::<_, crate::StoreError>(lease)
        }
        .await;
        let lease = match granted {
            Ok(lease) => lease,
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "cannot announce this server; retrying");
                if !pause(Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        loop {
            if !pause(ANNOUNCE_TTL / 3).await {
                let _ = store.lease_revoke(lease).await;
                return;
            }
            match store.lease_keep_alive(lease).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(error = %ErrorChain(&error), "announcement renewal failed");
                }
            }
        }
    }
}
