//! `/v1/session/*`: Consul's session endpoints.
//!
//! - `PUT /v1/session/create` (body optional: `Name`, `Node`, `LockDelay`, `Checks`/`NodeChecks`,
//!   `ServiceChecks`, `Behavior`, `TTL`) → `{"ID": …}`
//! - `PUT /v1/session/destroy/{id}` → `true`/`false`; `PUT /v1/session/renew/{id}` →
//!   `[Session]`, 404 when it is gone
//! - `GET /v1/session/info/{id}` → `[Session]` (or `[]`), `/node/{node}`, `/list`: blocking
//!   queries.
//!
//! ACLs: creating, renewing and destroying need `session:write` on the session's node; reads
//! leave out sessions whose node the token may not read (`session:read`).
//!
//! Bad input is 400 naming the field: an unknown node, a check that does not exist on the node
//! or is critical, a `Behavior` other than `release`/`delete`, a `TTL` outside 10s..=24h, a
//! `LockDelay` over 60s.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::{get, put};
use plexus_api::CheckStatus;
use plexus_api::acl::{Access, Resource};
use plexus_runtime::acl::{Authz, filter, mark_filtered};
use plexus_runtime::http::{ApiError, BlockingQuery, decode_json, indexed_json, read_body};
use serde::Deserialize;

use super::{Behavior, SERF_HEALTH, ServiceCheck, Session, SessionError, Sessions};
use crate::api::{ErrorChain, path_error};
use crate::catalog::StoreCatalog;

/// What the session handlers share.
#[derive(Debug, Clone)]
pub struct SessionState {
    /// The sessions.
    pub sessions: Sessions,
    /// The catalog (nodes and checks sessions refer to).
    pub catalog: std::sync::Arc<StoreCatalog>,
    /// This server's node: the default `Node` of a new session.
    pub node_name: String,
}

/// The session routes (no fallback: merged into the control plane's router).
pub fn router(state: SessionState) -> Router {
    Router::new()
        .route("/v1/session/create", put(create))
        .route("/v1/session/destroy/{id}", put(destroy))
        .route("/v1/session/renew/{id}", put(renew))
        .route("/v1/session/info/{id}", get(info))
        .route("/v1/session/node/{node}", get(node))
        .route("/v1/session/list", get(list))
        .with_state(state)
}

fn session_error(error: SessionError) -> ApiError {
    tracing::warn!(error = %ErrorChain(&error), "session store operation failed");
    ApiError::unavailable("the session store is unavailable")
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CreateBody {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Node")]
    node: String,
    #[serde(rename = "LockDelay")]
    lock_delay: serde_json::Value,
    #[serde(rename = "Checks")]
    checks: Option<Vec<String>>,
    #[serde(rename = "NodeChecks")]
    node_checks: Option<Vec<String>>,
    #[serde(rename = "ServiceChecks")]
    service_checks: Option<Vec<ServiceCheck>>,
    #[serde(rename = "Behavior")]
    behavior: String,
    #[serde(rename = "TTL")]
    ttl: String,
    #[serde(rename = "Namespace")]
    _namespace: String,
}

/// The field names of a create body, as Consul spells them.
const CREATE_FIELDS: [&str; 9] = [
    "Name",
    "Node",
    "LockDelay",
    "Checks",
    "NodeChecks",
    "ServiceChecks",
    "Behavior",
    "TTL",
    "Namespace",
];

/// Consul decodes bodies with Go's case-insensitive field matching (py-consul sends `lockdelay`,
/// `ttl`): top-level keys are mapped onto Consul's spelling before decoding.
fn canonical_keys(bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    let value: serde_json::Value = decode_json(bytes)?;
    let serde_json::Value::Object(map) = value else {
        return Err(ApiError::bad_request(
            "invalid request body: expected a JSON object",
        ));
    };
    let map: serde_json::Map<String, serde_json::Value> = map
        .into_iter()
        .map(|(key, value)| {
            let canonical = CREATE_FIELDS
                .iter()
                .find(|f| f.eq_ignore_ascii_case(&key))
                .map_or(key, |f| (*f).to_owned());
            (canonical, value)
        })
        .collect();
    Ok(serde_json::Value::Object(map).to_string().into_bytes())
}

async fn create(
    State(state): State<SessionState>,
    authz: Authz,
    request: Request,
) -> Result<Response, ApiError> {
    let bytes = read_body(request).await?;
    let body: CreateBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        CreateBody::default()
    } else {
        decode_json(&canonical_keys(&bytes)?)?
    };
    let node = if body.node.is_empty() {
        state.node_name.clone()
    } else {
        body.node
    };
    authz.require_session_write(&node)?;
    let behavior = match body.behavior.as_str() {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => {
            return Err(ApiError::invalid_field(
                "Behavior",
                format!("invalid Behavior {other:?}: expected release or delete"),
            ));
        }
    };
    let ttl = super::parse_ttl(&body.ttl).map_err(|e| ApiError::invalid_field("TTL", e))?;
    let lock_delay = super::parse_lock_delay(&body.lock_delay)
        .map_err(|e| ApiError::invalid_field("LockDelay", e))?;
    let mut node_checks: Vec<String> = body
        .checks
        .into_iter()
        .chain(body.node_checks)
        .flatten()
        .collect();
    let service_checks = body.service_checks.unwrap_or_default();
    if node_checks.is_empty() && service_checks.is_empty() {
        node_checks.push(SERF_HEALTH.to_owned());
    }
    check_references(&state, &node, &node_checks, &service_checks).await?;
    let session = Session {
        id: crate::acl::new_uuid(),
        name: body.name,
        node,
        lock_delay: lock_delay.as_nanos() as u64,
        behavior,
        ttl: ttl.map(|t| format!("{}s", t.as_secs())).unwrap_or_default(),
        node_checks,
        service_checks,
        ..Session::default()
    };
    let id = session.id.clone();
    let index = state
        .sessions
        .create(session, ttl)
        .await
        .map_err(session_error)?;
    tracing::info!(session = %id, "session created");
    Ok(indexed_json(index, &serde_json::json!({ "ID": id })))
}

/// The node must be registered (or be this server's own) and every named check must exist on
/// it and not be critical; `serfHealth` stands for the node's liveness and always exists.
async fn check_references(
    state: &SessionState,
    node: &str,
    node_checks: &[String],
    service_checks: &[ServiceCheck],
) -> Result<(), ApiError> {
    let known = node == state.node_name
        || state
            .catalog
            .nodes()
            .await
            .map_err(crate::api::catalog_error)?
            .value
            .iter()
            .any(|n| n.node == node);
    if !known {
        return Err(ApiError::invalid_field(
            "Node",
            format!("Missing node registration: node {node:?} is not in the catalog"),
        ));
    }
    let wanted: Vec<&str> = node_checks
        .iter()
        .map(String::as_str)
        .chain(service_checks.iter().map(|c| c.id.as_str()))
        .filter(|id| *id != SERF_HEALTH)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let checks = state
        .catalog
        .checks_in_state(None)
        .await
        .map_err(crate::api::catalog_error)?
        .value;
    for id in wanted {
        match checks.iter().find(|c| c.node == node && c.check_id == id) {
            None => {
                return Err(ApiError::invalid_field(
                    "Checks",
                    format!("Missing check {id:?} registration on node {node:?}"),
                ));
            }
            Some(check) if check.status == CheckStatus::Critical => {
                return Err(ApiError::invalid_field(
                    "Checks",
                    format!("Check {id:?} is in critical state"),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn id_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path.map_err(path_error)?;
    Ok(id)
}

async fn destroy(
    State(state): State<SessionState>,
    authz: Authz,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = id_of(id)?;
    let (session, _) = state.sessions.get(&id).await.map_err(session_error)?;
    if let Some(session) = &session {
        authz.require_session_write(&session.node)?;
    }
    let (done, index) = state.sessions.destroy(&id).await.map_err(session_error)?;
    if done {
        tracing::info!(session = %id, "session destroyed");
    }
    Ok(indexed_json(index, &true))
}

async fn renew(
    State(state): State<SessionState>,
    authz: Authz,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = id_of(id)?;
    let (session, index) = state.sessions.get(&id).await.map_err(session_error)?;
    let Some(session) = session else {
        return Err(ApiError::not_found(format!("Session id '{id}' not found")));
    };
    authz.require_session_write(&session.node)?;
    match state.sessions.renew(&id).await.map_err(session_error)? {
        Some(session) => Ok(indexed_json(index, &[session])),
        None => Err(ApiError::not_found(format!("Session id '{id}' not found"))),
    }
}

fn readable(authz: &Authz, session: &Session) -> bool {
    authz.allows(Resource::Session, &session.node, Access::Read)
}

async fn read(
    state: &SessionState,
    authz: &Authz,
    query: &BlockingQuery,
    keep: impl Fn(&Session) -> bool,
) -> Result<Response, ApiError> {
    query.block(state.sessions.kv().index_watch()).await;
    let (mut sessions, index) = state.sessions.list().await.map_err(session_error)?;
    sessions.retain(|s| keep(s));
    let filtered = filter(&mut sessions, |s| readable(authz, s));
    let mut response = indexed_json(index, &sessions);
    mark_filtered(&mut response, filtered);
    Ok(response)
}

async fn info(
    State(state): State<SessionState>,
    authz: Authz,
    id: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    let id = id_of(id)?;
    read(&state, &authz, &query, |s| s.id == id).await
}

async fn node(
    State(state): State<SessionState>,
    authz: Authz,
    node: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    let node = id_of(node)?;
    read(&state, &authz, &query, |s| s.node == node).await
}

async fn list(
    State(state): State<SessionState>,
    authz: Authz,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    read(&state, &authz, &query, |_| true).await
}
