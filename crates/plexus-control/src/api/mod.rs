//! The control plane's HTTP API, with Consul's paths, JSON shapes and status codes.
//!
//! - [`catalog`]: `/v1/catalog/services`, `/v1/catalog/service/{name}`, `/v1/catalog/nodes`,
//!   `/v1/catalog/connect/{name}`
//! - [`health`]: `/v1/health/service/{name}`, `/v1/health/connect/{name}`,
//!   `/v1/health/checks/{service}`, `/v1/health/state/{state}`
//! - [`node`]: `/v1/catalog/node/{node}`, `/v1/catalog/node-services/{node}`,
//!   `/v1/health/node/{node}` (`/v1/catalog/datacenters` is the federation's: `crate::wan`)
//! - [`register`]: `PUT /v1/catalog/register`, `PUT /v1/catalog/deregister`
//! - [`members`]: `GET /v1/agent/members` (the catalog's nodes as Consul's Serf members)
//! - [`status`]: `/v1/status/leader`, `/v1/status/peers`
//!
//! Catalog and health reads are blocking queries (`?index=N&wait=D`) answering with
//! `X-Consul-Index`. Every error, including unknown paths, is the shared JSON error shape.
//! `/v1/agent/*` is served by the agent's router, which the binary merges with this one, except
//! `/v1/agent/members`, which needs the whole catalog (a remote agent passes it on to a server).
//! [`meta`] adds Consul's query-meta headers to every read answer, 404s included.

pub mod catalog;
pub mod health;
pub mod members;
pub mod meta;
pub mod node;
pub mod register;
pub mod status;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::routing::{get, put};
use plexus_api::CatalogError;
use plexus_runtime::http::{
    ApiError, BlockingQuery, method_not_allowed_fallback, not_found_fallback,
};

use crate::catalog::{StoreCatalog, Topic};

/// Who this server is, as the status endpoints and responses show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Datacenter name (`dc1` by default in Consul).
    pub datacenter: String,
    /// This server's node name.
    pub node_name: String,
    /// The leader's RPC address as `GET /v1/status/leader` shows it, e.g. `127.0.0.1:8300`.
    pub leader_addr: String,
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The catalog.
    pub catalog: Arc<StoreCatalog>,
    /// This server.
    pub info: Arc<ServerInfo>,
}

/// The control plane's routes (catalog, health, status) with the JSON 404 fallback.
pub fn router(catalog: Arc<StoreCatalog>, info: ServerInfo) -> Router {
    let state = ApiState {
        catalog,
        info: Arc::new(info),
    };
    Router::new()
        .route("/v1/catalog/register", put(register::register))
        .route("/v1/catalog/deregister", put(register::deregister))
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/{name}", get(catalog::service))
        .route("/v1/catalog/nodes", get(catalog::nodes))
        .route("/v1/catalog/node/{node}", get(node::node))
        .route("/v1/catalog/node-services/{node}", get(node::node_services))
        .route("/v1/catalog/connect/{name}", get(catalog::connect))
        .route("/v1/health/node/{node}", get(node::health))
        .route("/v1/health/service/{name}", get(health::service))
        .route("/v1/health/connect/{name}", get(health::connect))
        .route("/v1/health/checks/{service}", get(health::checks))
        .route("/v1/health/state/{state}", get(health::state))
        .route("/v1/agent/members", get(members::members))
        .route("/v1/status/leader", get(status::leader))
        .route("/v1/status/peers", get(status::peers))
        .fallback(not_found_fallback)
        .method_not_allowed_fallback(method_not_allowed_fallback)
        .with_state(state)
}

/// Maps a catalog failure to its response, logging failures of our own.
pub(crate) fn catalog_error(error: CatalogError) -> ApiError {
    match error {
        CatalogError::NotFound { .. } => ApiError::not_found(error.to_string()),
        CatalogError::Conflict { message, field } => {
            let error = ApiError::conflict(message);
            match field {
                Some(field) => error.with_field(field),
                None => error,
            }
        }
        CatalogError::Store(ref source) => {
            tracing::warn!(error = %ErrorChain(&error), "catalog read failed");
            match source.downcast_ref::<crate::StoreError>() {
                Some(store) if store.is_damage() => damaged(&error),
                _ => ApiError::internal("the catalog store is unavailable"),
            }
        }
    }
}

/// Waits until the answer made of `topic` may have changed since the query's index (or the
/// query's wait ends): a blocking catalog query wakes for its own records only.
pub(crate) async fn block_on(
    catalog: &StoreCatalog,
    topic: Topic,
    query: &BlockingQuery,
) -> Result<(), ApiError> {
    if query.index.is_none_or(|index| index == 0) {
        return Ok(());
    }
    let (changes, index_of) = catalog.topic_watch(topic).await.map_err(catalog_error)?;
    query.block_until(changes, |_| index_of()).await;
    Ok(())
}

/// 500 `store_damaged` for a read that failed on damaged stored data, with the reason (the error
/// chain: the file and what failed). Counted in `plexus_store_errors_total{kind="damaged"}`.
pub(crate) fn damaged(error: &(dyn std::error::Error + 'static)) -> ApiError {
    ApiError::new(
        http::StatusCode::INTERNAL_SERVER_ERROR,
        "store_damaged",
        format!(
            "the store cannot read its data: {}; see docs/operations.md \"Recovering the store\"",
            ErrorChain(error)
        ),
    )
}

/// A path segment that did not decode: 400 in the shared shape.
pub(crate) fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::bad_request(rejection.body_text())
}

/// Displays an error with its chain of causes, for logs (the one in `plexus-runtime`).
pub(crate) use plexus_runtime::ErrorChain;

#[cfg(test)]
mod register_tests;
#[cfg(test)]
mod tests;
