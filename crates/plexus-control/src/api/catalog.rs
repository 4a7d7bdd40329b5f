//! `GET /v1/catalog/*`: services, instances of a service, nodes. All are blocking queries that
//! wake when their own answer may have changed ([`Topic`]).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use plexus_runtime::http::{ApiError, BlockingQuery, QueryParams, indexed_json};

use super::{ApiState, block_on, catalog_error, path_error};
use crate::catalog::Topic;

/// `GET /v1/catalog/services`: `{"name": ["tag", ...]}`.
pub async fn services(
    State(state): State<ApiState>,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    block_on(&state.catalog, Topic::Services, &query).await?;
    let names = state.catalog.service_names().await.map_err(catalog_error)?;
    Ok(indexed_json(names.index, &names.value))
}

/// `GET /v1/catalog/service/{name}[?tag=]`: `[CatalogService]`.
pub async fn service(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let Path(name) = name.map_err(path_error)?;
    block_on(&state.catalog, Topic::Service(name.clone()), &query).await?;
    let rows = state
        .catalog
        .service_nodes(&name, params.get("tag"))
        .await
        .map_err(catalog_error)?;
    Ok(indexed_json(rows.index, &rows.value))
}

/// `GET /v1/catalog/nodes`: `[Node]`.
pub async fn nodes(
    State(state): State<ApiState>,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    block_on(&state.catalog, Topic::Nodes, &query).await?;
    let nodes = state.catalog.nodes().await.map_err(catalog_error)?;
    Ok(indexed_json(nodes.index, &nodes.value))
}
