//! `/v1/agent/*`: Consul's agent endpoints, same paths, JSON field names and status codes.
//!
//! Writes answer 200 with an empty body, as Consul does; errors use the shared JSON shape.
//!
//! ACLs (the request's authorizer, from the edge): `/v1/agent/self` needs `agent:read` (or
//! `node:read`) on this node; registering needs `service:write` on each service made (service,
//! sidecar, a proxy's destination), deregistering `service:write` on the service; a TTL update,
//! registering or deregistering a check, and maintenance mode need `service:write` on the
//! check's service (`node:write` on this node for a node check or node maintenance); lists leave
//! out what the token may not read (`X-Consul-Results-Filtered-By-ACLs: true`), a single service
//! needs `service:read`.

mod check;
mod maintenance;
mod service;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use plexus_api::{AgentSelf, AgentSelfConfig};

use crate::Agent;

/// The agent's routes, with the agent as state.
pub(crate) fn router(agent: Agent) -> Router {
    Router::new()
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/agent/services", get(service::list))
        .route("/v1/agent/service/{id}", get(service::get))
        .route("/v1/agent/service/register", put(service::register))
        .route(
            "/v1/agent/service/deregister/{id}",
            put(service::deregister),
        )
        .route(
            "/v1/agent/service/maintenance/{id}",
            put(maintenance::service),
        )
        .route("/v1/agent/maintenance", put(maintenance::node))
        .route("/v1/agent/checks", get(check::list))
        .route("/v1/agent/check/register", put(check::register))
        .route("/v1/agent/check/deregister/{id}", put(check::deregister))
        .route("/v1/agent/check/pass/{id}", put(check::pass))
        .route("/v1/agent/check/warn/{id}", put(check::warn))
        .route("/v1/agent/check/fail/{id}", put(check::fail))
        .route("/v1/agent/check/update/{id}", put(check::update))
        .with_state(agent)
}

/// `GET /v1/agent/self`.
async fn agent_self(
    State(agent): State<Agent>,
    authz: plexus_runtime::acl::Authz,
) -> Result<Response, plexus_runtime::http::ApiError> {
    // Consul asks agent:read; node:read is accepted too, so a sidecar's service identity (which
    // reads every node) can learn its datacenter here.
    if !authz.can_read_node(agent.node()) {
        authz.require_agent_read(agent.node())?;
    }
    let config = &agent.inner.config;
    let node = &config.node;
    let body = AgentSelf {
        config: AgentSelfConfig {
            datacenter: node.datacenter.clone(),
            node_name: node.node.clone(),
            node_id: node.id.clone(),
            server: config.server,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            primary_datacenter: node.datacenter.clone(),
        },
        member: serde_json::json!({
            "Name": node.node,
            "Addr": node.address,
            "Status": 1,
        }),
    };
    Ok(axum::Json(body).into_response())
}

/// The empty 200 Consul answers writes with.
fn ok_empty() -> Response {
    http::StatusCode::OK.into_response()
}
