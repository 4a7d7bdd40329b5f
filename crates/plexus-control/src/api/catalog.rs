//! `GET /v1/catalog/*`: services, instances of a service, nodes. All are blocking queries.
//!
//! Reads are filtered by the request's authorizer as Consul does: a service the token may not
//! read (`service:read`), or an instance on a node it may not read (`node:read`), is left out
//! and the answer carries `X-Consul-Results-Filtered-By-ACLs: true`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use plexus_api::Catalog;
use plexus_runtime::acl::{Authz, filter, mark_filtered};
use plexus_runtime::http::{ApiError, BlockingQuery, QueryParams, indexed_json};

use super::{ApiState, catalog_error, path_error};

/// `GET /v1/catalog/services`: `{"name": ["tag", ...]}`.
pub async fn services(
    State(state): State<ApiState>,
    authz: Authz,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    query.block(state.catalog.index_watch()).await;
    let mut names = state.catalog.service_names().await.map_err(catalog_error)?;
    let before = names.value.len();
    names.value.retain(|name, _| authz.can_read_service(name));
    let mut response = indexed_json(names.index, &names.value);
    mark_filtered(&mut response, names.value.len() != before);
    Ok(response)
}

/// `GET /v1/catalog/service/{name}[?tag=]`: `[CatalogService]`.
pub async fn service(
    State(state): State<ApiState>,
    authz: Authz,
    name: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let Path(name) = name.map_err(path_error)?;
    query.block(state.catalog.index_watch()).await;
    let mut rows = state
        .catalog
        .service_nodes(&name, params.get("tag"))
        .await
        .map_err(catalog_error)?;
    let readable = authz.can_read_service(&name);
    let filtered = filter(&mut rows.value, |row| {
        readable && authz.can_read_node(&row.node)
    });
    let mut response = indexed_json(rows.index, &rows.value);
    mark_filtered(&mut response, filtered);
    Ok(response)
}

/// `GET /v1/catalog/nodes`: `[Node]`.
pub async fn nodes(
    State(state): State<ApiState>,
    authz: Authz,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    query.block(state.catalog.index_watch()).await;
    let mut nodes = state.catalog.nodes().await.map_err(catalog_error)?;
    let filtered = filter(&mut nodes.value, |node| authz.can_read_node(&node.node));
    let mut response = indexed_json(nodes.index, &nodes.value);
    mark_filtered(&mut response, filtered);
    Ok(response)
}
