//! `/v1/connect/intentions*` and `POST /v1/agent/connect/authorize`, in Consul's shapes.
//!
//! List and match are blocking queries. Both also carry `X-Plexus-Default-Intention-Policy`
//! (`allow`/`deny`), so a sidecar caching the intentions decides exactly as the server would.
//!
//! ACLs (Consul's): reading an intention needs `intentions = "read"` on its destination (lists
//! leave out the others, `X-Consul-Results-Filtered-By-ACLs: true`); creating, changing or
//! deleting one needs `intentions = "write"` on its destination (on the old and the new one for
//! an update); `/v1/agent/connect/authorize` needs `service:write` on the target.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plexus_api::connect::{
    AuthorizeRequest, AuthorizeResponse, Intention, IntentionAction, IntentionPermission,
};
use plexus_runtime::acl::{Authz, mark_filtered};
use plexus_runtime::http::{ApiError, BlockingQuery, JsonBody, QueryParams, indexed_json};
use tracing::warn;

use super::{IntentionError, Intentions};
use crate::api::{ErrorChain, path_error};
use crate::ca::CertificateAuthority;

/// The header carrying the server's default intention policy.
pub const DEFAULT_POLICY_HEADER: &str = "x-plexus-default-intention-policy";

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct IntentionState {
    /// The intentions.
    pub intentions: Arc<Intentions>,
    /// The CA (for the trust domain in authorize).
    pub ca: Arc<CertificateAuthority>,
}

/// The intention routes.
pub fn router(state: IntentionState) -> Router {
    Router::new()
        .route("/v1/connect/intentions", get(list).post(create))
        .route(
            "/v1/connect/intentions/exact",
            get(exact).put(put_exact).delete(delete_exact),
        )
        .route("/v1/connect/intentions/check", get(check))
        .route("/v1/connect/intentions/match", get(matching))
        .route(
            "/v1/connect/intentions/{id}",
            get(by_id).put(update).delete(delete),
        )
        .route("/v1/agent/connect/authorize", post(authorize))
        .with_state(state)
}

fn error(error: IntentionError) -> ApiError {
    match error {
        IntentionError::Invalid { field, message } => ApiError::invalid_field(field, message),
        IntentionError::NotFound(message) => ApiError::not_found(message),
        IntentionError::Duplicate { .. } | IntentionError::Contended => {
            ApiError::conflict(error.to_string())
        }
        other => {
            warn!(error = %ErrorChain(&other), "intention operation failed");
            ApiError::internal("the intention store is unavailable")
        }
    }
}

fn with_default(mut response: Response, intentions: &Intentions) -> Response {
    if let Ok(value) = HeaderValue::from_str(&intentions.default_policy().to_string()) {
        response.headers_mut().insert(DEFAULT_POLICY_HEADER, value);
    }
    response
}

fn required<'a>(params: &'a QueryParams, name: &'static str) -> Result<&'a str, ApiError> {
    params.get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
        ApiError::invalid_field(name, format!("query parameter {name:?} is required"))
    })
}

async fn list(
    State(s): State<IntentionState>,
    authz: Authz,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    if query.index.is_some_and(|index| index > 0) {
        query.block(s.intentions.changes().await).await;
    }
    let mut list = s.intentions.list().await.map_err(error)?;
    let filtered = plexus_runtime::acl::filter(&mut list.value, |i| {
        authz.can_read_intention(&i.destination_name)
    });
    let mut response = indexed_json(list.index, &list.value);
    mark_filtered(&mut response, filtered);
    Ok(with_default(response, &s.intentions))
}

async fn create(
    State(s): State<IntentionState>,
    authz: Authz,
    body: Result<JsonBody<Intention>, ApiError>,
) -> Result<Response, ApiError> {
    let JsonBody(intention) = body?;
    authz.require_intention_write(&intention.destination_name)?;
    let created = s.intentions.create(intention).await.map_err(error)?;
    let mut body = BTreeMap::new();
    body.insert("ID", created.id);
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

async fn by_id(
    State(s): State<IntentionState>,
    authz: Authz,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    let intention = s.intentions.get(&id).await.map_err(error)?;
    authz.require_intention_read(&intention.destination_name)?;
    Ok(indexed_json(intention.modify_index, &intention))
}

async fn update(
    State(s): State<IntentionState>,
    authz: Authz,
    id: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<Intention>, ApiError>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    let JsonBody(intention) = body?;
    let existing = s.intentions.get(&id).await.map_err(error)?;
    authz.require_intention_write(&existing.destination_name)?;
    authz.require_intention_write(&intention.destination_name)?;
    s.intentions.update(&id, intention).await.map_err(error)?;
    Ok(axum::Json(true).into_response())
}

async fn delete(
    State(s): State<IntentionState>,
    authz: Authz,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    let existing = s.intentions.get(&id).await.map_err(error)?;
    authz.require_intention_write(&existing.destination_name)?;
    s.intentions.delete(&id).await.map_err(error)?;
    Ok(axum::Json(true).into_response())
}

async fn exact(
    State(s): State<IntentionState>,
    authz: Authz,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let source = required(&params, "source")?;
    let destination = required(&params, "destination")?;
    authz.require_intention_read(destination)?;
    let intention = s
        .intentions
        .exact(source, destination)
        .await
        .map_err(error)?;
    Ok(indexed_json(intention.modify_index, &intention))
}

/// The body of `PUT /v1/connect/intentions/exact`: the names come from the query.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExactBody {
    /// Absent or `""` with `Permissions`.
    #[serde(rename = "Action", default)]
    action: Option<String>,
    #[serde(rename = "Description", default)]
    description: String,
    #[serde(rename = "Meta", default)]
    meta: BTreeMap<String, String>,
    /// Only `consul` (what Consul clients send).
    #[serde(rename = "SourceType", default)]
    source_type: String,
    /// L7 permissions (instead of `Action`).
    #[serde(rename = "Permissions", default)]
    permissions: Vec<IntentionPermission>,
}

async fn put_exact(
    State(s): State<IntentionState>,
    authz: Authz,
    params: QueryParams,
    body: Result<JsonBody<ExactBody>, ApiError>,
) -> Result<Response, ApiError> {
    let source = required(&params, "source")?.to_owned();
    let destination = required(&params, "destination")?.to_owned();
    authz.require_intention_write(&destination)?;
    let JsonBody(body) = body?;
    let action = match body.action.as_deref() {
        None | Some("") => None,
        Some("allow") => Some(IntentionAction::Allow),
        Some("deny") => Some(IntentionAction::Deny),
        Some(other) => {
            return Err(ApiError::invalid_field(
                "Action",
                format!("Action must be \"allow\" or \"deny\", not {other:?}"),
            ));
        }
    };
    let intention = Intention {
        id: String::new(),
        source_name: source.clone(),
        destination_name: destination.clone(),
        source_ns: String::new(),
        destination_ns: String::new(),
        source_type: body.source_type,
        action,
        permissions: body.permissions,
        description: body.description,
        meta: body.meta,
        precedence: 0,
        create_index: 0,
        modify_index: 0,
    };
    match s.intentions.exact(&source, &destination).await {
        Ok(existing) => {
            s.intentions
                .update(&existing.id, intention)
                .await
                .map_err(error)?;
        }
        Err(IntentionError::NotFound(_)) => {
            s.intentions.create(intention).await.map_err(error)?;
        }
        Err(other) => return Err(error(other)),
    }
    Ok(axum::Json(true).into_response())
}

async fn delete_exact(
    State(s): State<IntentionState>,
    authz: Authz,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let source = required(&params, "source")?;
    let destination = required(&params, "destination")?;
    authz.require_intention_write(destination)?;
    s.intentions
        .delete_exact(source, destination)
        .await
        .map_err(error)?;
    Ok(axum::Json(true).into_response())
}

async fn check(
    State(s): State<IntentionState>,
    authz: Authz,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let source = required(&params, "source")?;
    let destination = required(&params, "destination")?;
    authz.require_intention_read(destination)?;
    let decision = s
        .intentions
        .check(source, destination)
        .await
        .map_err(error)?;
    let mut body = BTreeMap::new();
    body.insert("Allowed", decision.allowed);
    Ok(axum::Json(body).into_response())
}

async fn matching(
    State(s): State<IntentionState>,
    authz: Authz,
    params: QueryParams,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    let by = required(&params, "by")?;
    let name = required(&params, "name")?.to_owned();
    if by != "source" && by != "destination" {
        return Err(ApiError::invalid_field(
            "by",
            format!("by must be \"source\" or \"destination\", not {by:?}"),
        ));
    }
    if by == "destination" {
        authz.require_intention_read(&name)?;
    }
    if query.index.is_some_and(|index| index > 0) {
        query.block(s.intentions.changes().await).await;
    }
    let mut found = if by == "source" {
        s.intentions.matching_source(&name).await
    } else {
        s.intentions.matching_destination(&name).await
    }
    .map_err(error)?;
    let filtered = plexus_runtime::acl::filter(&mut found.value, |i| {
        authz.can_read_intention(&i.destination_name)
    });
    let mut body = BTreeMap::new();
    body.insert(name, found.value);
    let mut response = indexed_json(found.index, &body);
    mark_filtered(&mut response, filtered);
    Ok(with_default(response, &s.intentions))
}

async fn authorize(
    State(s): State<IntentionState>,
    authz: Authz,
    body: Result<JsonBody<AuthorizeRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let JsonBody(request) = body?;
    if request.target.is_empty() {
        return Err(ApiError::invalid_field("Target", "Target is required"));
    }
    authz.require_service_write(&request.target)?;
    let trust_domain = s.ca.trust_domain().await.map_err(|e| {
        warn!(error = %ErrorChain(&e), "authorize: CA unavailable");
        ApiError::internal("the CA is unavailable")
    })?;
    let decision = s
        .intentions
        .authorize(&request.target, &request.client_cert_uri, &trust_domain)
        .await
        .map_err(error)?;
    Ok(axum::Json(AuthorizeResponse {
        authorized: decision.allowed,
        reason: decision.reason,
    })
    .into_response())
}
