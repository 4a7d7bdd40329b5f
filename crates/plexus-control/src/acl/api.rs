//! `/v1/acl/*` in Consul's shapes, and `/v1/internal/acl/authorizer` for remote agents.
//!
//! | endpoint | needs |
//! | --- | --- |
//! | `PUT /v1/acl/bootstrap` | nothing (once; then 403 with the reset index) |
//! | `GET /v1/acl/token/self` | a valid token (answers that token, its secret hidden) |
//! | `GET /v1/acl/token/:id`, `/tokens`, `/policy/:id`, `/policy/name/:name`, `/policies`, `/role/:id`, `/role/name/:name`, `/roles` | `acl:read` (token secrets shown only with `acl:write`) |
//! | `PUT`/`DELETE` of tokens, policies, roles | `acl:write` |
//! | `GET /v1/internal/acl/authorizer` | a valid token (answers what it may do) |
//!
//! With ACLs disabled every `/v1/acl/*` endpoint answers 401 `ACL support disabled`.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use plexus_api::acl::model::{PolicyWrite, RoleWrite, Token, TokenWrite};
use plexus_runtime::acl::{Authz, token_of};
use plexus_runtime::http::{ApiError, JsonBody, indexed_json};

use super::{Acl, AclError, write};
use crate::api::{ErrorChain, path_error};

/// The ACL routes.
pub fn router(acl: Arc<Acl>) -> Router {
    Router::new()
        .route("/v1/acl/bootstrap", put(bootstrap))
        .route("/v1/acl/token/self", get(token_self))
        .route("/v1/acl/token", put(create_token))
        .route(
            "/v1/acl/token/{id}",
            get(read_token).put(update_token).delete(delete_token),
        )
        .route("/v1/acl/tokens", get(list_tokens))
        .route("/v1/acl/policy", put(create_policy))
        .route(
            "/v1/acl/policy/{id}",
            get(read_policy).put(update_policy).delete(delete_policy),
        )
        .route("/v1/acl/policy/name/{name}", get(read_policy_by_name))
        .route("/v1/acl/policies", get(list_policies))
        .route("/v1/acl/role", put(create_role))
        .route(
            "/v1/acl/role/{id}",
            get(read_role).put(update_role).delete(delete_role),
        )
        .route("/v1/acl/role/name/{name}", get(read_role_by_name))
        .route("/v1/acl/roles", get(list_roles))
        .route("/v1/internal/acl/authorizer", get(authorizer))
        .with_state(acl)
}

type AclState = State<Arc<Acl>>;

/// Maps an ACL failure to its response.
pub(crate) fn acl_error(error: AclError) -> ApiError {
    match error {
        AclError::Disabled => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "acl_disabled",
            "ACL support disabled",
        ),
        AclError::Invalid { field, message } => ApiError::invalid_field(field, message),
        AclError::NotFound(message) => ApiError::not_found(message),
        AclError::Conflict(message) => ApiError::conflict(message),
        AclError::BootstrapDone(message) => ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!("Permission denied: {message}"),
        ),
        other => {
            tracing::warn!(error = %ErrorChain(&other), "ACL operation failed");
            ApiError::unavailable("the ACL store is unavailable")
        }
    }
}

fn enabled(acl: &Acl) -> Result<(), ApiError> {
    if acl.config().enabled {
        Ok(())
    } else {
        Err(acl_error(AclError::Disabled))
    }
}

/// A token as the caller may see it: its secret only with `acl:write`.
fn shown(token: Token, authz: &Authz) -> Token {
    if authz.require_acl_write().is_ok() {
        token
    } else {
        token.hidden()
    }
}

fn id_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    Ok(path.map_err(path_error)?.0)
}

async fn bootstrap(State(acl): AclState) -> Result<Response, ApiError> {
    let token = write::bootstrap(&acl).await.map_err(acl_error)?;
    Ok(indexed_json(token.modify_index, &token))
}

async fn token_self(
    State(acl): AclState,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    let secret = token_of(&headers, uri.query());
    let token = acl.token_for(secret.as_ref()).await?;
    // The caller holds the secret already; answers carry no secret they need not.
    Ok(indexed_json(token.modify_index, &token.hidden()))
}

async fn create_token(
    State(acl): AclState,
    authz: Authz,
    body: Result<JsonBody<TokenWrite>, ApiError>,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_write()?;
    let JsonBody(body) = body?;
    let token = write::create_token(&acl, body).await.map_err(acl_error)?;
    Ok(indexed_json(token.modify_index, &token))
}

async fn read_token(
    State(acl): AclState,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_read()?;
    let id = id_of(path)?;
    let snapshot = acl.reload().await.map_err(acl_error)?;
    let token = snapshot
        .tokens
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("token {id:?} not found")))?;
    Ok(indexed_json(token.modify_index, &shown(token, &authz)))
}

async fn update_token(
    State(acl): AclState,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<TokenWrite>, ApiError>,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_write()?;
    let id = id_of(path)?;
    let JsonBody(body) = body?;
    let token = write::update_token(&acl, &id, body)
        .await
        .map_err(acl_error)?;
    Ok(indexed_json(token.modify_index, &token))
}

async fn delete_token(
    State(acl): AclState,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_write()?;
    write::delete_token(&acl, &id_of(path)?)
        .await
        .map_err(acl_error)?;
    Ok(axum::Json(true).into_response())
}

async fn list_tokens(State(acl): AclState, authz: Authz) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_read()?;
    let snapshot = acl.reload().await.map_err(acl_error)?;
    let mut tokens: Vec<Token> = snapshot
        .tokens
        .values()
        .cloned()
        .map(|t| shown(t, &authz))
        .collect();
    tokens.sort_by_key(|t| t.create_index);
    Ok(indexed_json(snapshot.revision, &tokens))
}

async fn create_policy(
    State(acl): AclState,
    authz: Authz,
    body: Result<JsonBody<PolicyWrite>, ApiError>,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_write()?;
    let JsonBody(body) = body?;
    let policy = write::write_policy(&acl, None, body)
        .await
        .map_err(acl_error)?;
    Ok(indexed_json(policy.modify_index, &policy))
}

async fn read_policy(
    State(acl): AclState,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_read()?;
    let id = id_of(path)?;
    let snapshot = acl.reload().await.map_err(acl_error)?;
    let policy = snapshot
        .policy(&id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("policy {id:?} not found")))?;
    Ok(indexed_json(policy.modify_index, &policy))
}

async fn read_policy_by_name(
    State(acl): AclState,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_read()?;
    let name = id_of(path)?;
    let snapshot = acl.reload().await.map_err(acl_error)?;
    let policy = snapshot
        .policy_by_name(&name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("policy named {name:?} not found")))?;
    Ok(indexed_json(policy.modify_index, &policy))
}

async fn update_policy(
    State(acl): AclState,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<PolicyWrite>, ApiError>,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_write()?;
    let id = id_of(path)?;
    let JsonBody(body) = body?;
    let policy = write::write_policy(&acl, Some(&id), body)
        .await
        .map_err(acl_error)?;
    Ok(indexed_json(policy.modify_index, &policy))
}

async fn delete_policy(
    State(acl): AclState,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_write()?;
    write::delete_policy(&acl, &id_of(path)?)
        .await
        .map_err(acl_error)?;
    Ok(axum::Json(true).into_response())
}

async fn list_policies(State(acl): AclState, authz: Authz) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_read()?;
    let snapshot = acl.reload().await.map_err(acl_error)?;
    let mut policies: Vec<_> = snapshot.policies.values().cloned().collect();
    policies.sort_by_key(|p| p.create_index);
    Ok(indexed_json(snapshot.revision, &policies))
}

async fn create_role(
    State(acl): AclState,
    authz: Authz,
    body: Result<JsonBody<RoleWrite>, ApiError>,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_write()?;
    let JsonBody(body) = body?;
    let role = write::write_role(&acl, None, body)
        .await
        .map_err(acl_error)?;
    Ok(indexed_json(role.modify_index, &role))
}

async fn read_role(
    State(acl): AclState,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_read()?;
    let id = id_of(path)?;
    let snapshot = acl.reload().await.map_err(acl_error)?;
    let role = snapshot
        .roles
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("role {id:?} not found")))?;
    Ok(indexed_json(role.modify_index, &role))
}

async fn read_role_by_name(
    State(acl): AclState,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_read()?;
    let name = id_of(path)?;
    let snapshot = acl.reload().await.map_err(acl_error)?;
    let role = snapshot
        .role_by_name(&name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("role named {name:?} not found")))?;
    Ok(indexed_json(role.modify_index, &role))
}

async fn update_role(
    State(acl): AclState,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<RoleWrite>, ApiError>,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_write()?;
    let id = id_of(path)?;
    let JsonBody(body) = body?;
    let role = write::write_role(&acl, Some(&id), body)
        .await
        .map_err(acl_error)?;
    Ok(indexed_json(role.modify_index, &role))
}

async fn delete_role(
    State(acl): AclState,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_write()?;
    write::delete_role(&acl, &id_of(path)?)
        .await
        .map_err(acl_error)?;
    Ok(axum::Json(true).into_response())
}

async fn list_roles(State(acl): AclState, authz: Authz) -> Result<Response, ApiError> {
    enabled(&acl)?;
    authz.require_acl_read()?;
    let snapshot = acl.reload().await.map_err(acl_error)?;
    let mut roles: Vec<_> = snapshot.roles.values().cloned().collect();
    roles.sort_by_key(|r| r.create_index);
    Ok(indexed_json(snapshot.revision, &roles))
}

/// What the caller's token may do, for a remote agent's cache.
async fn authorizer(
    State(acl): AclState,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let secret = token_of(&headers, uri.query());
    let resolved = acl.resolved(secret.as_ref()).await?;
    Ok(axum::Json(resolved).into_response())
}
