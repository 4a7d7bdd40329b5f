//! `/v1/internal/node/*`: what a remote agent writes and reads through (see the module above).
//!
//! ACLs: the agent's own token must have `node:write` on the node for every write (registration,
//! deregistration, check updates, lease) and `service:write` on each service it registers;
//! reads need `node:read`. The agent checked the caller's token at its own API first.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use plexus_api::remote::{CheckUpdate, NodeLease, NodeRegistration, WriteIndex};
use plexus_api::{Catalog, GoDuration};
use plexus_runtime::acl::Authz;
use plexus_runtime::http::{ApiError, BlockingQuery, JsonBody, QueryParams, indexed_json};

use crate::api::{catalog_error, path_error};
use crate::catalog::StoreCatalog;

/// Shortest and longest lease TTL an agent may ask for.
pub const LEASE_TTL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(300));

/// The remote-agent routes (no fallback: merged into the control plane's router).
pub fn router(catalog: Arc<StoreCatalog>) -> Router {
    Router::new()
        .route("/v1/internal/node/register", put(register))
        .route(
            "/v1/internal/node/{node}/service/{id}/deregister",
            put(deregister_service),
        )
        .route(
            "/v1/internal/node/{node}/check/{id}/deregister",
            put(deregister_check),
        )
        .route("/v1/internal/node/{node}/check/{id}", put(update_check))
        .route("/v1/internal/node/{node}/services", get(services))
        .route("/v1/internal/node/{node}/checks", get(checks))
        .route("/v1/internal/node/{node}/lease", put(grant))
        .route("/v1/internal/node/{node}/lease/{id}", put(renew))
        .with_state(catalog)
}

type Catalogue = State<Arc<StoreCatalog>>;

async fn register(
    State(catalog): Catalogue,
    authz: Authz,
    JsonBody(body): JsonBody<NodeRegistration>,
) -> Result<Response, ApiError> {
    if body.node.node.is_empty() {
        return Err(ApiError::invalid_field(
            "Node.Node",
            "the node name is empty",
        ));
    }
    authz.require_node_write(&body.node.node)?;
    for service in &body.services {
        authz.require_service_write(&service.service)?;
    }
    let index = catalog.register(body.into()).await.map_err(catalog_error)?;
    Ok(axum::Json(WriteIndex { index }).into_response())
}

async fn deregister_service(
    State(catalog): Catalogue,
    authz: Authz,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((node, id)) = path.map_err(path_error)?;
    authz.require_node_write(&node)?;
    let index = catalog
        .deregister_service(&node, &id)
        .await
        .map_err(catalog_error)?;
    Ok(axum::Json(WriteIndex { index }).into_response())
}

async fn deregister_check(
    State(catalog): Catalogue,
    authz: Authz,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((node, id)) = path.map_err(path_error)?;
    authz.require_node_write(&node)?;
    let index = catalog
        .deregister_check(&node, &id)
        .await
        .map_err(catalog_error)?;
    Ok(axum::Json(WriteIndex { index }).into_response())
}

async fn update_check(
    State(catalog): Catalogue,
    authz: Authz,
    path: Result<Path<(String, String)>, PathRejection>,
    JsonBody(body): JsonBody<CheckUpdate>,
) -> Result<Response, ApiError> {
    let Path((node, id)) = path.map_err(path_error)?;
    authz.require_node_write(&node)?;
    let index = catalog
        .update_check(&node, &id, body.status, &body.output)
        .await
        .map_err(catalog_error)?;
    Ok(axum::Json(WriteIndex { index }).into_response())
}

async fn services(
    State(catalog): Catalogue,
    authz: Authz,
    node: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    let Path(node) = node.map_err(path_error)?;
    authz.require_node_read(&node)?;
    query.block(catalog.index_watch()).await;
    let found = catalog.node_services(&node).await.map_err(catalog_error)?;
    Ok(indexed_json(found.index, &found.value))
}

async fn checks(
    State(catalog): Catalogue,
    authz: Authz,
    node: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    let Path(node) = node.map_err(path_error)?;
    authz.require_node_read(&node)?;
    query.block(catalog.index_watch()).await;
    let found = catalog.node_checks(&node).await.map_err(catalog_error)?;
    Ok(indexed_json(found.index, &found.value))
}

async fn grant(
    State(catalog): Catalogue,
    authz: Authz,
    node: Result<Path<String>, PathRejection>,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let Path(node) = node.map_err(path_error)?;
    authz.require_node_write(&node)?;
    let ttl = match params.get("ttl") {
        None => Duration::from_secs(10),
        Some(text) => GoDuration::parse(text)
            .map_err(|e| ApiError::invalid_field("ttl", e.to_string()))?
            .get(),
    };
    let (min, max) = LEASE_TTL_RANGE;
    if ttl < min || ttl > max {
        return Err(ApiError::invalid_field(
            "ttl",
            format!("ttl must be between {min:?} and {max:?}"),
        ));
    }
    let id = super::grant(&catalog, &node, ttl)
        .await
        .map_err(catalog_error)?;
    Ok(axum::Json(NodeLease {
        id,
        ttl_seconds: ttl.as_secs(),
    })
    .into_response())
}

async fn renew(
    State(catalog): Catalogue,
    authz: Authz,
    path: Result<Path<(String, i64)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((node, id)) = path.map_err(path_error)?;
    authz.require_node_write(&node)?;
    match super::renew(&catalog, id).await.map_err(catalog_error)? {
        Some(ttl) => Ok(axum::Json(NodeLease {
            id,
            ttl_seconds: ttl.as_secs(),
        })
        .into_response()),
        None => Err(ApiError::not_found(format!(
            "lease {id} of node {node:?} has expired"
        ))),
    }
}
