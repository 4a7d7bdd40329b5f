//! `/v1/agent/checks`, the TTL updates `/v1/agent/check/{pass,warn,fail,update}/{id}`, and
//! `/v1/agent/check/register`, `/v1/agent/check/deregister/{id}`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::response::Response;
use plexus_api::registration::CheckDefinition;
use plexus_api::{CheckStatus, HealthCheck};
use plexus_runtime::acl::{Authz, mark_filtered};
use plexus_runtime::http::{ApiError, JsonBody, QueryParams, indexed_json};
use plexus_runtime::row_filter;
use serde::Deserialize;

use super::ok_empty;
use crate::{Agent, AgentError};

/// `GET /v1/agent/checks`: `{ check_id: HealthCheck }`.
pub(super) async fn list(
    State(agent): State<Agent>,
    authz: Authz,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let wanted = row_filter::from_params(
        &params,
        &plexus_api::filter::fields_of::<HealthCheck>(&["Definition"]),
    )?;
    let checks = agent
        .inner
        .catalog
        .node_checks(agent.node())
        .await
        .map_err(AgentError::from)?;
    let total = checks.value.len();
    let node_readable = authz.can_read_node(agent.node());
    let mut body: BTreeMap<String, HealthCheck> = checks
        .value
        .into_iter()
        .filter(|c| {
            if c.service_name.is_empty() {
                node_readable
            } else {
                authz.can_read_service(&c.service_name)
            }
        })
        .map(|c| (c.check_id.clone(), c))
        .collect();
    let readable = body.len();
    row_filter::keep_values(&mut body, wanted.as_ref());
    let mut response = indexed_json(checks.index, &body);
    mark_filtered(&mut response, readable != total);
    Ok(response)
}

/// `PUT /v1/agent/check/pass/{id}?note=`.
pub(super) async fn pass(
    agent: State<Agent>,
    authz: Authz,
    id: Path<String>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    set(agent, authz, id, query, CheckStatus::Passing).await
}

/// `PUT /v1/agent/check/warn/{id}?note=`.
pub(super) async fn warn(
    agent: State<Agent>,
    authz: Authz,
    id: Path<String>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    set(agent, authz, id, query, CheckStatus::Warning).await
}

/// `PUT /v1/agent/check/fail/{id}?note=`.
pub(super) async fn fail(
    agent: State<Agent>,
    authz: Authz,
    id: Path<String>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    set(agent, authz, id, query, CheckStatus::Critical).await
}

async fn set(
    State(agent): State<Agent>,
    authz: Authz,
    Path(id): Path<String>,
    query: QueryParams,
    status: CheckStatus,
) -> Result<Response, ApiError> {
    let note = query.get("note").unwrap_or("");
    agent.update_ttl_as(&id, status, note, &authz).await?;
    Ok(ok_empty())
}

/// Body of `PUT /v1/agent/check/update/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckUpdate {
    #[serde(rename = "Status", default)]
    status: String,
    #[serde(rename = "Output", default)]
    output: String,
}

/// `PUT /v1/agent/check/update/{id}` with `{"Status": "passing|warning|critical", "Output": ".."}`.
pub(super) async fn update(
    State(agent): State<Agent>,
    authz: Authz,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CheckUpdate>,
) -> Result<Response, ApiError> {
    let status = match body.status.parse::<CheckStatus>() {
        Ok(s @ (CheckStatus::Passing | CheckStatus::Warning | CheckStatus::Critical)) => s,
        _ => {
            return Err(ApiError::invalid_field(
                "Status",
                format!(
                    "invalid check status {:?} (expected passing, warning or critical)",
                    body.status
                ),
            ));
        }
    };
    agent
        .update_ttl_as(&id, status, &body.output, &authz)
        .await?;
    Ok(ok_empty())
}

/// `PUT /v1/agent/check/register` with Consul's check definition (`Name`, `ID`, `ServiceID`,
/// one of `TTL`/`HTTP`/`TCP`/`GRPC`/`AliasService`, `Interval`, `Timeout`, `Notes`, `Status`,
/// `DeregisterCriticalServiceAfter`).
pub(super) async fn register(
    State(agent): State<Agent>,
    authz: Authz,
    JsonBody(def): JsonBody<CheckDefinition>,
) -> Result<Response, ApiError> {
    agent.register_check_as(&def, &authz).await?;
    Ok(ok_empty())
}

/// `PUT /v1/agent/check/deregister/{id}`.
pub(super) async fn deregister(
    State(agent): State<Agent>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    agent.deregister_check_as(&id, &authz).await?;
    Ok(ok_empty())
}
