//! `GET /v1/health/*`: instances with their checks, checks by service and by state. All are
//! blocking queries, filtered by the request's authorizer (`service:read` on the service,
//! `node:read` on each instance's node; `X-Consul-Results-Filtered-By-ACLs: true` when anything
//! was left out). A token that reads every node (`node_prefix ""`, as service identities do)
//! gets the shared pre-serialised answer without any per-request work.

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use plexus_api::CheckStatus;
use plexus_api::HealthCheck;
use plexus_api::acl::Resource;
use plexus_api::filter::{Filter, fields_of};
use plexus_runtime::acl::{Authz, filter as keep, mark_filtered};
use plexus_runtime::http::{ApiError, BlockingQuery, QueryParams, indexed_json};
use plexus_runtime::row_filter;

use super::{ApiState, block_on, catalog_error, path_error};
use crate::catalog::{Answer, HealthFilter, Topic};

fn filter(params: &QueryParams) -> HealthFilter {
    HealthFilter {
        tag: params.get("tag").map(str::to_owned),
        passing: params.flag("passing"),
    }
}

/// `GET /v1/health/service/{name}[?passing][&tag=]`: `[ServiceEntry]`.
pub async fn service(
    State(state): State<ApiState>,
    authz: Authz,
    name: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let Path(name) = name.map_err(path_error)?;
    answer(&state, &authz, Answer::Health, &name, &query, &params, 0).await
}

/// `GET /v1/health/connect/{name}[?passing][&tag=]`: `[ServiceEntry]` of the proxies (and
/// mesh-native instances) serving `name`.
pub async fn connect(
    State(state): State<ApiState>,
    authz: Authz,
    name: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let Path(name) = name.map_err(path_error)?;
    // A service linked to a terminating gateway is reached through the gateway's instances;
    // a link written or removed while the query waits wakes it too.
    let links = state.catalog.link_changes().await;
    let (kind, target) = connect_target(&state, &name).await?;
    let (changes, index_of) = state
        .catalog
        .service_watch(kind, &target)
        .await
        .map_err(catalog_error)?;
    tokio::select! {
        () = query.block_until(changes, |_| index_of()) => {}
        () = query.block_until(links.clone(), |revision| *revision) => {}
    }
    // Answer with what is linked now; the index covers the last link change, so the next
    // query waits past it.
    let (kind, target) = connect_target(&state, &name).await?;
    if kind == Answer::Health && !authz.can_read_service(&name) {
        let mut response = indexed_json(0, &Vec::<()>::new());
        mark_filtered(&mut response, true);
        return Ok(response);
    }
    let now = BlockingQuery {
        index: None,
        ..query
    };
    let floor = *links.borrow();
    answer(&state, &authz, kind, &target, &now, &params, floor).await
}

/// What `/v1/health/connect/<name>` answers with: the gateway's instances when a
/// terminating gateway links `name`, else `name`'s mesh entry points.
async fn connect_target(state: &ApiState, name: &str) -> Result<(Answer, String), ApiError> {
    Ok(
        match state
            .catalog
            .terminating_gateway_for(name)
            .await
            .map_err(catalog_error)?
        {
            Some(gateway) => (Answer::Health, gateway),
            None => (Answer::Connect, name.to_owned()),
        },
    )
}

/// A blocking query on one service: wakes only when that service's answer changed (its own
/// modify index), answers with the store revision as `X-Consul-Index` (as before, so the index a
/// client holds only moves forward) and a body serialised once per change of the service and
/// shared by every waiting query.
async fn answer(
    state: &ApiState,
    authz: &Authz,
    answer: Answer,
    name: &str,
    query: &BlockingQuery,
    params: &QueryParams,
    floor: u64,
) -> Result<Response, ApiError> {
    let entry_fields = ["Node", "Service", "Checks"].map(str::to_owned);
    let wanted = row_filter::from_params(params, &entry_fields)?;
    let meta = row_filter::node_meta(params)?;
    let (changes, index_of) = state
        .catalog
        .service_watch(answer, name)
        .await
        .map_err(catalog_error)?;
    query.block_until(changes, |_| index_of()).await;
    let mut body = state
        .catalog
        .health_json(answer, name, &filter(params))
        .await
        .map_err(catalog_error)?;
    body.index = body.index.max(floor);
    if !authz.can_read_service(name) {
        let mut response = indexed_json(body.index, &Vec::<()>::new());
        mark_filtered(&mut response, true);
        return Ok(response);
    }
    let near = params.get("near").is_some();
    if authz.can_read_all(Resource::Node) && wanted.is_none() && meta.is_none() && !near {
        return Ok(indexed_body(body.index, body.value));
    }
    // Some nodes are hidden from this token, or a filter asked for some rows: filter a copy of
    // the shared answer.
    let mut entries: Vec<serde_json::Value> = serde_json::from_slice(&body.value)
        .map_err(|_| ApiError::internal("the health answer did not decode"))?;
    let filtered = keep(&mut entries, |entry| {
        entry["Node"]["Node"]
            .as_str()
            .is_some_and(|node| authz.can_read_node(node))
    });
    row_filter::keep(&mut entries, wanted.as_ref());
    row_filter::keep_node_meta(&mut entries, &["Node", "Meta"], meta.as_ref());
    row_filter::sort_near(&mut entries, params, &["Node", "Node"]);
    let mut response = indexed_json(body.index, &entries);
    mark_filtered(&mut response, filtered);
    Ok(response)
}

/// A JSON body already serialised, with the headers of [`indexed_json`].
fn indexed_body(index: u64, body: Bytes) -> Response {
    let mut response = indexed_json(index, &());
    *response.body_mut() = Body::from(body);
    response
}

/// `GET /v1/health/checks/{service}`: `[HealthCheck]`.
pub async fn checks(
    State(state): State<ApiState>,
    authz: Authz,
    service: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let Path(service) = service.map_err(path_error)?;
    let wanted = check_filter(&params)?;
    block_on(&state.catalog, Topic::Health(service.clone()), &query).await?;
    let mut checks = state
        .catalog
        .service_checks(&service)
        .await
        .map_err(catalog_error)?;
    let readable = authz.can_read_service(&service);
    let filtered = keep(&mut checks.value, |c| {
        readable && authz.can_read_node(&c.node)
    });
    row_filter::keep(&mut checks.value, wanted.as_ref());
    let mut response = indexed_json(checks.index, &checks.value);
    mark_filtered(&mut response, filtered);
    Ok(response)
}

/// Parses the `{state}` segment: `any` or a status other than `maintenance`.
fn parse_state(text: &str) -> Result<Option<CheckStatus>, ApiError> {
    match text {
        "any" => Ok(None),
        "passing" => Ok(Some(CheckStatus::Passing)),
        "warning" => Ok(Some(CheckStatus::Warning)),
        "critical" => Ok(Some(CheckStatus::Critical)),
        other => Err(ApiError::invalid_field(
            "state",
            format!("invalid state {other:?}: expected any, passing, warning or critical"),
        )),
    }
}

/// `GET /v1/health/state/{state}`: `[HealthCheck]` in that state (`any`: all).
pub async fn state(
    State(api): State<ApiState>,
    authz: Authz,
    state: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let Path(state) = state.map_err(path_error)?;
    let wanted = parse_state(&state)?;
    let rows = check_filter(&params)?;
    block_on(&api.catalog, Topic::Checks, &query).await?;
    let mut checks = api
        .catalog
        .checks_in_state(wanted)
        .await
        .map_err(catalog_error)?;
    let filtered = keep(&mut checks.value, |c| {
        authz.can_read_node(&c.node)
            && (c.service_name.is_empty() || authz.can_read_service(&c.service_name))
    });
    row_filter::keep(&mut checks.value, rows.as_ref());
    let mut response = indexed_json(checks.index, &checks.value);
    mark_filtered(&mut response, filtered);
    Ok(response)
}

/// `?filter=` over `[HealthCheck]` rows.
fn check_filter(params: &QueryParams) -> Result<Option<Filter>, ApiError> {
    row_filter::from_params(params, &fields_of::<HealthCheck>(&["Definition"]))
}
