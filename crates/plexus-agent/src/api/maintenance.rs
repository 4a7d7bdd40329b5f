//! Consul's maintenance mode: `PUT /v1/agent/service/maintenance/{id}?enable=true|false&reason=`
//! and `PUT /v1/agent/maintenance?enable=true|false&reason=`.

use axum::extract::{Path, State};
use axum::response::Response;
use plexus_runtime::acl::Authz;
use plexus_runtime::http::{ApiError, QueryParams};

use super::ok_empty;
use crate::Agent;

/// `?enable=` as Consul reads it (Go's `strconv.ParseBool`: py-consul sends `True`): required.
fn enable(params: &QueryParams) -> Result<bool, ApiError> {
    match params.get("enable") {
        None | Some("") => Err(ApiError::invalid_field(
            "enable",
            "missing value for enable (expected true or false)",
        )),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(ApiError::invalid_field(
            "enable",
            format!("invalid value for enable {other:?} (expected true or false)"),
        )),
    }
}

/// `PUT /v1/agent/service/maintenance/{id}?enable=&reason=`.
pub(super) async fn service(
    State(agent): State<Agent>,
    authz: Authz,
    Path(id): Path<String>,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let enable = enable(&params)?;
    let reason = params.get("reason").unwrap_or("");
    agent
        .service_maintenance_as(&id, enable, reason, &authz)
        .await?;
    Ok(ok_empty())
}

/// `PUT /v1/agent/maintenance?enable=&reason=`.
pub(super) async fn node(
    State(agent): State<Agent>,
    authz: Authz,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let enable = enable(&params)?;
    let reason = params.get("reason").unwrap_or("");
    agent.node_maintenance_as(enable, reason, &authz).await?;
    Ok(ok_empty())
}
