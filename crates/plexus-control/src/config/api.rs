//! `/v1/config*` (Consul's config entry API) and `/v1/discovery-chain/:service` (the compiled
//! chain, Plexus-shaped: [`plexus_api::config_entry::chain::DiscoveryChain`]).
//!
//! Reads are blocking queries on the config index: `?index=N` waits until a config write to the
//! entries the answer is made of moves past `N` (or `wait` passes).
//!
//! ACLs (Consul's): writing or deleting a `service-*` entry needs `service:write` on its name;
//! reading one, or a service's discovery chain, `service:read`; a `service-intentions` entry
//! needs `intentions` `write` or `read` on its destination instead, `proxy-defaults` `mesh:write`
//! to write (anyone reads it); lists leave out entries the token may not read
//! (`X-Consul-Results-Filtered-By-ACLs: true`).

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use plexus_api::config_entry::{ConfigEntry, Kind};
use plexus_runtime::acl::{Authz, mark_filtered};
use plexus_runtime::http::{ApiError, BlockingQuery, JsonBody, QueryParams, indexed_json};
use tracing::warn;

use super::{ConfigEntries, ConfigError};
use crate::api::{ErrorChain, path_error};

/// The config entry routes.
pub fn router(config: Arc<ConfigEntries>) -> Router {
    Router::new()
        .route("/v1/config", put(write))
        .route("/v1/config/{kind}", get(list))
        .route("/v1/config/{kind}/{name}", get(read).delete(delete))
        .route("/v1/discovery-chain/{service}", get(chain))
        .with_state(config)
}

fn error(error: ConfigError) -> ApiError {
    match error {
        ConfigError::Invalid(errs) => {
            let field = errs.0.first().map(|e| e.field.clone()).unwrap_or_default();
            let api = ApiError::bad_request(format!("invalid config entry: {errs}"));
            if field.is_empty() {
                api
            } else {
                ApiError::invalid_field(field, format!("invalid config entry: {errs}"))
            }
        }
        ConfigError::NotFound { .. } => ApiError::not_found(error.to_string()),
        ConfigError::Contended => ApiError::conflict(error.to_string()),
        other => {
            warn!(error = %ErrorChain(&other), "config entry operation failed");
            ApiError::internal("the config store is unavailable")
        }
    }
}

fn kind(text: &str) -> Result<Kind, ApiError> {
    Kind::parse(text).ok_or_else(|| {
        ApiError::invalid_field(
            "kind",
            format!(
                "unknown config entry kind {text:?}; expected one of {}",
                Kind::EXPECTED
            ),
        )
    })
}

/// Writing or deleting an entry: `service:write` on its name; a `service-intentions` entry
/// `intentions` `write` on its destination; `proxy-defaults` `mesh:write` (Consul's).
fn require_write(
    authz: &plexus_api::acl::Authorizer,
    kind: Kind,
    name: &str,
) -> Result<(), ApiError> {
    let allowed = match kind {
        Kind::ServiceIntentions => authz.require_intention_write(name),
        Kind::ProxyDefaults => authz.require_mesh_write(),
        _ => authz.require_service_write(name),
    };
    Ok(allowed?)
}

/// Reading an entry: `service:read` on its name; a `service-intentions` entry `intentions`
/// `read` on its destination; `proxy-defaults` anyone (Consul's).
fn can_read(authz: &plexus_api::acl::Authorizer, kind: Kind, name: &str) -> bool {
    match kind {
        Kind::ServiceIntentions => authz.can_read_intention(name),
        Kind::ProxyDefaults => true,
        _ => authz.can_read_service(name),
    }
}

/// Waits until the entries the answer is made of (one entry, one kind, or all for a chain)
/// change past the query's `index` (a config index: every config write moves it to the
/// revision of the write), or its `wait` ends. Other writes never wake it.
///
/// Returns the last revision at which those entries may have changed, which the answer's index
/// must not be below: with no entries yet, or after the store was re-listed, that revision is
/// past the config index, and an answer labelled with the config index alone would wake the
/// next query (`?index=` the answer's) at once, every watcher then asking in a loop.
async fn block(
    config: &ConfigEntries,
    query: &BlockingQuery,
    kind: Option<Kind>,
    name: Option<&str>,
) -> u64 {
    let changes = config.changes(kind, name).await;
    query.block(changes.clone()).await;
    *changes.borrow()
}

async fn write(
    State(config): State<Arc<ConfigEntries>>,
    authz: Authz,
    params: QueryParams,
    body: Result<JsonBody<serde_json::Value>, ApiError>,
) -> Result<Response, ApiError> {
    let cas = match params.get("cas") {
        None | Some("") => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::invalid_field(
                "cas",
                format!("invalid cas {text:?}: expected a non-negative integer"),
            )
        })?),
    };
    let JsonBody(value) = body?;
    let entry = ConfigEntry::from_json(value).map_err(|e| {
        let message = format!("invalid config entry: {e}");
        if e.field.is_empty() {
            ApiError::bad_request(message)
        } else {
            ApiError::invalid_field(e.field, message)
        }
    })?;
    require_write(&authz, entry.kind(), entry.name())?;
    let stored = config.put(entry, cas).await.map_err(error)?;
    Ok((StatusCode::OK, axum::Json(stored)).into_response())
}

async fn list(
    State(config): State<Arc<ConfigEntries>>,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    let Path(kind_text) = path.map_err(path_error)?;
    let kind = kind(&kind_text)?;
    let changed = block(&config, &query, Some(kind), None).await;
    let mut list = config.list(kind).await.map_err(error)?;
    let filtered =
        plexus_runtime::acl::filter(&mut list.value, |e| can_read(&authz, e.kind(), e.name()));
    let mut response = indexed_json(list.index.max(changed), &list.value);
    mark_filtered(&mut response, filtered);
    Ok(response)
}

async fn read(
    State(config): State<Arc<ConfigEntries>>,
    authz: Authz,
    path: Result<Path<(String, String)>, PathRejection>,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    let Path((kind_text, name)) = path.map_err(path_error)?;
    let kind = kind(&kind_text)?;
    if !can_read(&authz, kind, &name) {
        match kind {
            Kind::ServiceIntentions => authz.require_intention_read(&name)?,
            _ => authz.require_service_read(&name)?,
        }
    }
    let changed = block(&config, &query, Some(kind), Some(&name)).await;
    let entry = config.get(kind, &name).await.map_err(error)?;
    Ok(indexed_json(entry.index.max(changed), &entry.value))
}

async fn delete(
    State(config): State<Arc<ConfigEntries>>,
    authz: Authz,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((kind_text, name)) = path.map_err(path_error)?;
    let kind = kind(&kind_text)?;
    require_write(&authz, kind, &name)?;
    config.delete(kind, &name).await.map_err(error)?;
    Ok(axum::Json(true).into_response())
}

async fn chain(
    State(config): State<Arc<ConfigEntries>>,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
) -> Result<Response, ApiError> {
    let Path(service) = path.map_err(path_error)?;
    authz.require_service_read(&service)?;
    let changed = block(&config, &query, None, None).await;
    let chain = config.chain(&service).await.map_err(error)?;
    Ok(indexed_json(chain.index.max(changed), &chain.value))
}
