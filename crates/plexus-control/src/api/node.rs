//! Per-node reads: `GET /v1/catalog/node/{node}`, `/v1/catalog/node-services/{node}`,
//! and `/v1/health/node/{node}`. All are blocking queries.
//!
//! An unknown node answers 200 with `null` (catalog) or `[]` (health), with `X-Consul-Index`,
//! as Consul does. ACLs: the node needs `node:read` (otherwise the answer is as for an unknown
//! node, marked filtered); services and their checks need `service:read` on the service.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use plexus_runtime::acl::{Authz, filter, mark_filtered};
use plexus_runtime::http::{ApiError, BlockingQuery, indexed_json};
use serde_json::{Value, json};

use super::{ApiState, block_on, catalog_error, path_error};
use crate::catalog::Topic;
use crate::catalog::view::NodeRecords;

/// The node's records as this token may see them; the flag says whether anything was left out.
async fn records(
    state: &ApiState,
    authz: &Authz,
    name: Result<Path<String>, PathRejection>,
    query: &BlockingQuery,
) -> Result<(Option<NodeRecords>, u64, bool), ApiError> {
    let Path(name) = name.map_err(path_error)?;
    block_on(&state.catalog, Topic::Node(name.clone()), query).await?;
    let found = state
        .catalog
        .node_view(&name)
        .await
        .map_err(catalog_error)?;
    let Some(mut records) = found.value else {
        return Ok((None, found.index, false));
    };
    if !authz.can_read_node(&name) {
        return Ok((None, found.index, true));
    }
    let mut filtered = filter(&mut records.services, |s| {
        authz.can_read_service(&s.service)
    });
    filtered |= filter(&mut records.checks, |c| {
        c.service_name.is_empty() || authz.can_read_service(&c.service_name)
    });
    Ok((Some(records), found.index, filtered))
}

/// `GET /v1/catalog/node/{node}`: `{"Node": …, "Services": {id: AgentService}}` or `null`.
pub async fn node(
    State(state): State<ApiState>,
    authz: Authz,
    name: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    let (records, index, filtered) = records(&state, &authz, name, &query).await?;
    let body = records.map_or(Value::Null, |r| {
        let services: serde_json::Map<String, Value> = r
            .services
            .iter()
            .map(|s| (s.id.clone(), json!(s)))
            .collect();
        json!({ "Node": r.node, "Services": services })
    });
    let mut response = indexed_json(index, &body);
    mark_filtered(&mut response, filtered);
    Ok(response)
}

/// `GET /v1/catalog/node-services/{node}`: `{"Node": …, "Services": [AgentService]}` or `null`.
pub async fn node_services(
    State(state): State<ApiState>,
    authz: Authz,
    name: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    let (records, index, filtered) = records(&state, &authz, name, &query).await?;
    let body = records.map_or(
        Value::Null,
        |r| json!({ "Node": r.node, "Services": r.services }),
    );
    let mut response = indexed_json(index, &body);
    mark_filtered(&mut response, filtered);
    Ok(response)
}

/// `GET /v1/health/node/{node}`: `[HealthCheck]` of the node (node and service checks).
pub async fn health(
    State(state): State<ApiState>,
    authz: Authz,
    name: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
    params: plexus_runtime::http::QueryParams,
) -> Result<Response, ApiError> {
    let wanted = plexus_runtime::row_filter::from_params(
        &params,
        &plexus_api::filter::fields_of::<plexus_api::HealthCheck>(&["Definition"]),
    )?;
    let (records, index, filtered) = records(&state, &authz, name, &query).await?;
    let mut checks = records.map(|r| r.checks).unwrap_or_default();
    plexus_runtime::row_filter::keep(&mut checks, wanted.as_ref());
    let mut response = indexed_json(index, &checks);
    mark_filtered(&mut response, filtered);
    Ok(response)
}
