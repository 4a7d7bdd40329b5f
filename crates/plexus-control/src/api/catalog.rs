//! `GET /v1/catalog/*`: services, instances of a service, nodes. All are blocking queries that
//! wake when their own answer may have changed ([`Topic`]).
//!
//! Reads are filtered by the request's authorizer as Consul does: a service the token may not
//! read (`service:read`), or an instance on a node it may not read (`node:read`), is left out
//! and the answer carries `X-Consul-Results-Filtered-By-ACLs: true`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use plexus_api::filter::fields_of;
use plexus_api::{CatalogService, Node};
use plexus_runtime::acl::{Authz, filter, mark_filtered};
use plexus_runtime::http::{ApiError, BlockingQuery, QueryParams, indexed_json};
use plexus_runtime::row_filter;

use super::{ApiState, block_on, catalog_error, path_error};
use crate::catalog::Topic;

/// `GET /v1/catalog/services`: `{"name": ["tag", ...]}`.
pub async fn services(
    State(state): State<ApiState>,
    authz: Authz,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    block_on(&state.catalog, Topic::Services, &query).await?;
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
    let wanted = row_filter::from_params(&params, &catalog_service_fields())?;
    let meta = row_filter::node_meta(&params)?;
    block_on(&state.catalog, Topic::Service(name.clone()), &query).await?;
    let mut rows = state
        .catalog
        .service_nodes(&name, params.get("tag"))
        .await
        .map_err(catalog_error)?;
    let readable = authz.can_read_service(&name);
    let filtered = filter(&mut rows.value, |row| {
        readable && authz.can_read_node(&row.node)
    });
    row_filter::keep(&mut rows.value, wanted.as_ref());
    row_filter::keep_node_meta(&mut rows.value, &["NodeMeta"], meta.as_ref());
    row_filter::sort_near(&mut rows.value, &params, &["Node"]);
    let mut response = indexed_json(rows.index, &rows.value);
    mark_filtered(&mut response, filtered);
    Ok(response)
}

/// `GET /v1/catalog/nodes`: `[Node]`.
pub async fn nodes(
    State(state): State<ApiState>,
    authz: Authz,
    query: BlockingQuery,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let wanted = row_filter::from_params(&params, &fields_of::<Node>(&[]))?;
    let meta = row_filter::node_meta(&params)?;
    block_on(&state.catalog, Topic::Nodes, &query).await?;
    let mut nodes = state.catalog.nodes().await.map_err(catalog_error)?;
    let filtered = filter(&mut nodes.value, |node| authz.can_read_node(&node.node));
    row_filter::keep(&mut nodes.value, wanted.as_ref());
    row_filter::keep_node_meta(&mut nodes.value, &["Meta"], meta.as_ref());
    row_filter::sort_near(&mut nodes.value, &params, &["Node"]);
    let mut response = indexed_json(nodes.index, &nodes.value);
    mark_filtered(&mut response, filtered);
    Ok(response)
}

/// `GET /v1/catalog/connect/{name}`: `[CatalogService]` of the proxies (and mesh-native
/// instances) serving `name`, filtered as `/v1/catalog/service/{name}`.
pub async fn connect(
    State(state): State<ApiState>,
    authz: Authz,
    name: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let Path(name) = name.map_err(path_error)?;
    let wanted = row_filter::from_params(&params, &catalog_service_fields())?;
    let meta = row_filter::node_meta(&params)?;
    block_on(&state.catalog, Topic::Connect(name.clone()), &query).await?;
    let mut rows = state
        .catalog
        .connect_nodes(&name)
        .await
        .map_err(catalog_error)?;
    let readable = authz.can_read_service(&name);
    let filtered = filter(&mut rows.value, |row| {
        readable && authz.can_read_node(&row.node)
    });
    row_filter::keep(&mut rows.value, wanted.as_ref());
    row_filter::keep_node_meta(&mut rows.value, &["NodeMeta"], meta.as_ref());
    row_filter::sort_near(&mut rows.value, &params, &["Node"]);
    let mut response = indexed_json(rows.index, &rows.value);
    mark_filtered(&mut response, filtered);
    Ok(response)
}

/// The fields `?filter=` may name on `[CatalogService]` rows (those left out when empty too).
fn catalog_service_fields() -> Vec<String> {
    fields_of::<CatalogService>(&["ServiceTaggedAddresses", "ServiceProxy", "ServiceConnect"])
}
