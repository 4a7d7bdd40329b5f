//! `/v1/agent/services`, `/v1/agent/service/{id}`, `/v1/agent/service/register` and
//! `/v1/agent/service/deregister/{id}`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::response::Response;
use plexus_api::{AgentService, ServiceRegistration};
use plexus_runtime::acl::{Authz, mark_filtered};
use plexus_runtime::http::{ApiError, BlockingQuery, JsonBody, QueryParams, indexed_json};
use plexus_runtime::row_filter;

use super::ok_empty;
use crate::{Agent, AgentError};

/// This node's services, read once the blocking query (if any) has returned.
async fn node_services_after(
    agent: &Agent,
    query: &BlockingQuery,
) -> Result<plexus_api::Indexed<Vec<AgentService>>, AgentError> {
    let catalog = &agent.inner.catalog;
    query.block(catalog.index_watch()).await;
    Ok(catalog.node_services(agent.node()).await?)
}

/// `GET /v1/agent/services` (blocking with `?index=&wait=`): `{ id: AgentService }`.
pub(super) async fn list(
    State(agent): State<Agent>,
    authz: Authz,
    query: BlockingQuery,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let wanted = row_filter::from_params(
        &params,
        &plexus_api::filter::fields_of::<AgentService>(&["Proxy", "Connect", "TaggedAddresses"]),
    )?;
    let services = node_services_after(&agent, &query).await?;
    let total = services.value.len();
    let mut body: BTreeMap<String, AgentService> = services
        .value
        .into_iter()
        .filter(|s| authz.can_read_service(&s.service))
        .map(|s| (s.id.clone(), agent_view(s)))
        .collect();
    let readable = body.len();
    row_filter::keep_values(&mut body, wanted.as_ref());
    let mut response = indexed_json(services.index, &body);
    mark_filtered(&mut response, readable != total);
    Ok(response)
}

/// `GET /v1/agent/service/{id}` (blocking with `?index=&wait=`).
pub(super) async fn get(
    State(agent): State<Agent>,
    authz: Authz,
    Path(id): Path<String>,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    let services = node_services_after(&agent, &query).await?;
    let service = services
        .value
        .into_iter()
        .find(|s| s.id == id)
        .ok_or(AgentError::NotFound {
            kind: "service",
            id,
        })?;
    authz.require_service_read(&service.service)?;
    Ok(indexed_json(services.index, &agent_view(service)))
}

/// `PUT /v1/agent/service/register` (`?replace-existing-checks` is accepted: replacing is what
/// registration always does).
pub(super) async fn register(
    State(agent): State<Agent>,
    authz: Authz,
    _query: QueryParams,
    JsonBody(reg): JsonBody<ServiceRegistration>,
) -> Result<Response, ApiError> {
    agent.register_as(&reg, &authz).await?;
    Ok(ok_empty())
}

/// `PUT /v1/agent/service/deregister/{id}`: the service and its sidecar.
pub(super) async fn deregister(
    State(agent): State<Agent>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    agent.deregister_as(&id, &authz).await?;
    Ok(ok_empty())
}

/// The agent endpoints show services without catalog indexes, as Consul does.
fn agent_view(mut service: AgentService) -> AgentService {
    service.create_index = None;
    service.modify_index = None;
    service
}
