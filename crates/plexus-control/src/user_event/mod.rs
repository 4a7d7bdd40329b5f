//! Consul's user events: `PUT /v1/event/fire/{name}` and `GET /v1/event/list[?name=]`.
//!
//! Consul gossips events to agents and keeps a ring buffer in each; here an event is a store
//! record `user-events/<id>` and the last [`KEEP`] are kept, so every replica lists the same
//! events and `GET /v1/event/list` is a blocking query on the store revision (watchable by
//! index, as `consul watch -type event` does). `LTime` is the store revision that recorded the
//! event (Consul's Lamport time: increasing in fire order).
//!
//! Bad input: an empty name or one over 128 bytes is 400 naming `name`; a payload over 512 bytes
//! is 413; a `tag` filter without a `service` filter is 400 (as Consul). ACLs: firing needs
//! `event:write` on the name; the list leaves out events the token may not read.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::{get, put};
use http::StatusCode;
use plexus_runtime::acl::{Authz, filter, mark_filtered};
use plexus_runtime::http::{ApiError, BlockingQuery, QueryParams, indexed_json, read_body};
use serde::{Deserialize, Serialize};

use crate::api::{ErrorChain, path_error};
use crate::store::{Op, Store, StoreError, Txn};

/// Store prefix of events.
pub const PREFIX: &str = "user-events/";
/// How many events are kept.
pub const KEEP: usize = 256;
/// Largest payload (Consul's limit on a user event).
pub const MAX_PAYLOAD: usize = 512;
/// Longest name.
pub const MAX_NAME: usize = 128;

/// A user event in Consul's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UserEvent {
    /// UUID.
    #[serde(rename = "ID")]
    pub id: String,
    /// The event's name.
    pub name: String,
    /// The payload, base64 (`null` when empty).
    pub payload: Option<String>,
    /// Regular expression on node names (`""`: every node).
    pub node_filter: String,
    /// Regular expression on service names.
    pub service_filter: String,
    /// Regular expression on tags (needs a service filter).
    pub tag_filter: String,
    /// Always 1.
    pub version: u32,
    /// The store revision that recorded it (0 in the answer to fire).
    #[serde(rename = "LTime")]
    pub ltime: u64,
}

/// The event routes (no fallback: merged into the control plane's router).
pub fn router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/v1/event/fire/{name}", put(fire))
        .route("/v1/event/list", get(list))
        .with_state(store)
}

fn store_error(error: StoreError) -> ApiError {
    tracing::warn!(error = %ErrorChain(&error), "user event store operation failed");
    ApiError::unavailable("the event store is unavailable")
}

async fn fire(
    State(store): State<Arc<dyn Store>>,
    authz: Authz,
    name: Result<Path<String>, PathRejection>,
    params: QueryParams,
    request: Request,
) -> Result<Response, ApiError> {
    let Path(name) = name.map_err(path_error)?;
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ApiError::invalid_field(
            "name",
            format!("event name must be 1 to {MAX_NAME} bytes"),
        ));
    }
    authz.require_event_write(&name)?;
    let service_filter = params.get("service").unwrap_or_default().to_owned();
    let tag_filter = params.get("tag").unwrap_or_default().to_owned();
    if !tag_filter.is_empty() && service_filter.is_empty() {
        return Err(ApiError::invalid_field(
            "tag",
            "Cannot provide tag filter without service filter",
        ));
    }
    let body = read_body(request).await?;
    if body.len() > MAX_PAYLOAD {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "event payload is {} bytes; the limit is {MAX_PAYLOAD}",
                body.len()
            ),
        )
        .with_field("payload"));
    }
    use base64::Engine;
    let event = UserEvent {
        id: crate::acl::new_uuid(),
        name,
        payload: (!body.is_empty())
            .then(|| base64::engine::general_purpose::STANDARD.encode(&body)),
        node_filter: params.get("node").unwrap_or_default().to_owned(),
        service_filter,
        tag_filter,
        version: 1,
        ltime: 0,
    };
    let record = serde_json::to_vec(&event).unwrap_or_default();
    let result = store
        .txn(Txn {
            compares: Vec::new(),
            ops: vec![Op::Put {
                key: format!("{PREFIX}{}", event.id),
                value: record,
            }],
        })
        .await
        .map_err(store_error)?;
    tracing::info!(event = %event.id, name = %event.name, "user event fired");
    trim(&store).await;
    Ok(indexed_json(result.revision, &event))
}

/// Deletes the oldest events beyond [`KEEP`] (best effort: the next fire trims again).
async fn trim(store: &Arc<dyn Store>) {
    let Ok((mut records, _)) = store.range(PREFIX).await else {
        return;
    };
    if records.len() <= KEEP {
        return;
    }
    records.sort_by_key(|r| r.create_revision);
    let excess = records.len() - KEEP;
    let ops = records
        .into_iter()
        .take(excess)
        .map(|r| Op::Delete { key: r.key })
        .collect();
    if let Err(error) = store
        .txn(Txn {
            compares: Vec::new(),
            ops,
        })
        .await
    {
        tracing::warn!(error = %ErrorChain(&error), "trimming old user events failed");
    }
}

async fn list(
    State(store): State<Arc<dyn Store>>,
    authz: Authz,
    query: BlockingQuery,
    params: QueryParams,
) -> Result<Response, ApiError> {
    query.block(store.revision_watch()).await;
    let (mut records, revision) = store.range(PREFIX).await.map_err(store_error)?;
    records.sort_by_key(|r| r.create_revision);
    let mut events: Vec<UserEvent> = records
        .iter()
        .filter_map(|r| {
            let mut event: UserEvent = serde_json::from_slice(&r.value).ok()?;
            event.ltime = r.create_revision;
            Some(event)
        })
        .filter(|e| params.get("name").is_none_or(|name| e.name == name))
        .collect();
    let filtered = filter(&mut events, |e| authz.can_read_event(&e.name));
    let mut response = indexed_json(revision, &events);
    mark_filtered(&mut response, filtered);
    Ok(response)
}

#[cfg(test)]
mod tests;
