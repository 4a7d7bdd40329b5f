//! `/v1/kv/<key>`: Consul's KV endpoints.
//!
//! - `GET` one key (`[KvPair]`, 404 when absent), `?recurse` (every key under the prefix), `?keys`
//!   (key names, `&separator=` collapses below it), `?raw` (the value as the body). Blocking queries
//!   (`?index=&wait=`) and `X-Consul-Index` as everywhere; a blocked read wakes only for writes
//!   to its key (or, listing, the keys under it).
//! - `PUT` with the raw value as the body, `?flags=`, `?cas=` (0: create only): answers `true` or
//!   `false` (a failed compare leaves the value unchanged).
//! - `PUT ?acquire=<session>` / `?release=<session>`: takes or frees the key's lock for a session
//!   (see [`super::lock`]), writing the value; answers `true` or `false`. An unknown session is 400.
//! - `DELETE`, `?recurse`, `?cas=`: answers `true` or `false`.
//!
//! Bad input: keys over 512 bytes, with NUL or `..` are 400 naming the cause; values over
//! 512 KiB are 413.
//!
//! ACLs: reading a key needs `key:read` on it (403 otherwise); `?recurse` and `?keys` leave out
//! the keys the token may not read (`X-Consul-Results-Filtered-By-ACLs: true`); `PUT` and
//! `DELETE` need `key:write`; a recursive `DELETE` needs write on the prefix and on every rule
//! below it (Consul's `KeyWritePrefix`).

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode};
use plexus_api::kv::{MAX_VALUE_BYTES, check_key};
use plexus_runtime::acl::{Authz, mark_filtered};
use plexus_runtime::http::{ApiError, BlockingQuery, QueryParams, indexed_json, read_body};

use super::{Kv, KvError, collapse_keys};
use crate::api::{ErrorChain, path_error};

/// The KV routes (no fallback: merged into the control plane's router).
pub fn router(kv: Kv) -> Router {
    Router::new()
        .route("/v1/kv", get(get_root).put(put_root).delete(delete_root))
        .route("/v1/kv/", get(get_root).put(put_root).delete(delete_root))
        .route(
            "/v1/kv/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .with_state(kv)
}

fn kv_error(error: KvError) -> ApiError {
    tracing::warn!(error = %ErrorChain(&error), "KV store operation failed");
    match &error {
        KvError::Store(store) if !store.is_damage() => {
            ApiError::unavailable("the KV store is unavailable")
        }
        // Damaged data: retrying will not help; say why (the reason names no secret, only the
        // file and what failed) so an operator can act on it.
        KvError::Store(_) | KvError::Corrupt { .. } => crate::api::damaged(&error),
    }
}

fn key_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(key) = path.map_err(path_error)?;
    Ok(key)
}

fn checked(key: &str, allow_empty: bool) -> Result<(), ApiError> {
    check_key(key, allow_empty).map_err(|e| ApiError::invalid_field("key", e.to_string()))
}

fn number(params: &QueryParams, name: &str) -> Result<Option<u64>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(text) => text.parse::<u64>().map(Some).map_err(|_| {
            ApiError::invalid_field(
                name,
                format!("invalid {name} {text:?}: expected a non-negative integer"),
            )
        }),
    }
}

async fn get_root(
    State(kv): State<Kv>,
    authz: Authz,
    query: BlockingQuery,
    params: QueryParams,
) -> Result<Response, ApiError> {
    read(kv, &authz, String::new(), query, params).await
}

async fn get_key(
    State(kv): State<Kv>,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
    query: BlockingQuery,
    params: QueryParams,
) -> Result<Response, ApiError> {
    read(kv, &authz, key_of(path)?, query, params).await
}

async fn read(
    kv: Kv,
    authz: &Authz,
    key: String,
    query: BlockingQuery,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let listing = params.flag("recurse") || params.0.contains_key("keys");
    checked(&key, listing)?;
    if !listing {
        authz.require_key_read(&key)?;
    }
    if query.index.is_some_and(|index| index > 0) {
        query.block(kv.changes(&key, listing).await).await;
    }
    if listing {
        let (mut entries, index) = kv.list(&key).await.map_err(kv_error)?;
        let before = entries.len();
        entries.retain(|e| authz.can_read_key(&e.key));
        let filtered = entries.len() != before;
        let mut response = if entries.is_empty() {
            not_found(&key, index)
        } else if params.0.contains_key("keys") {
            let names: Vec<String> = entries.into_iter().map(|e| e.key).collect();
            let keys = collapse_keys(&key, &names, params.get("separator"));
            indexed_json(index, &keys)
        } else {
            let pairs: Vec<_> = entries.iter().map(super::Entry::to_pair).collect();
            indexed_json(index, &pairs)
        };
        mark_filtered(&mut response, filtered);
        return Ok(response);
    }
    let (entry, index) = kv.get(&key).await.map_err(kv_error)?;
    let Some(entry) = entry else {
        return Ok(not_found(&key, index));
    };
    if params.flag("raw") {
        let mut response = Body::from(entry.value).into_response();
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert("x-consul-index", HeaderValue::from(index.max(1)));
        return Ok(response);
    }
    Ok(indexed_json(index, &[entry.to_pair()]))
}

/// 404 that still carries `X-Consul-Index`, so a blocking client can wait for the key to appear
/// (Consul clients read the header on 404 too).
fn not_found(key: &str, index: u64) -> Response {
    let mut response = ApiError::not_found(format!("key {key:?} not found")).into_response();
    response
        .headers_mut()
        .insert("x-consul-index", HeaderValue::from(index.max(1)));
    response
}

async fn put_root(
    State(kv): State<Kv>,
    authz: Authz,
    params: QueryParams,
    request: Request,
) -> Result<Response, ApiError> {
    write(kv, &authz, String::new(), params, request).await
}

async fn put_key(
    State(kv): State<Kv>,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
    params: QueryParams,
    request: Request,
) -> Result<Response, ApiError> {
    write(kv, &authz, key_of(path)?, params, request).await
}

async fn write(
    kv: Kv,
    authz: &Authz,
    key: String,
    params: QueryParams,
    request: Request,
) -> Result<Response, ApiError> {
    checked(&key, false)?;
    authz.require_key_write(&key)?;
    let flags = number(&params, "flags")?.unwrap_or(0);
    let cas = number(&params, "cas")?;
    let body = read_body(request).await?;
    if body.len() > MAX_VALUE_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "value is {} bytes; the limit is {MAX_VALUE_BYTES}",
                body.len()
            ),
        ));
    }
    let lock = match (params.get("acquire"), params.get("release")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_field(
                "acquire",
                "acquire and release cannot be combined",
            ));
        }
        (Some(session), None) => Some((true, session)),
        (None, Some(session)) => Some((false, session)),
        (None, None) => None,
    };
    if let Some((acquire, session)) = lock {
        let field = if acquire { "acquire" } else { "release" };
        if session.is_empty() {
            return Err(ApiError::invalid_field(
                field,
                format!("{field} needs a session ID"),
            ));
        }
        if cas.is_some() {
            return Err(ApiError::invalid_field(
                "cas",
                format!("cas cannot be combined with {field}"),
            ));
        }
        let (done, index) = if acquire {
            kv.acquire(&key, &body, flags, session)
                .await
                .map_err(kv_error)?
                .map_err(|e| ApiError::invalid_field("acquire", e.to_string()))?
        } else {
            kv.release(&key, &body, flags, session)
                .await
                .map_err(kv_error)?
        };
        return Ok(indexed_json(index, &done));
    }
    let (done, index) = kv.put(&key, &body, flags, cas).await.map_err(kv_error)?;
    if !done {
        tracing::debug!(key, ?cas, "KV compare-and-set did not hold");
    }
    Ok(indexed_json(index, &done))
}

async fn delete_root(
    State(kv): State<Kv>,
    authz: Authz,
    params: QueryParams,
) -> Result<Response, ApiError> {
    remove(kv, &authz, String::new(), params).await
}

async fn delete_key(
    State(kv): State<Kv>,
    authz: Authz,
    path: Result<Path<String>, PathRejection>,
    params: QueryParams,
) -> Result<Response, ApiError> {
    remove(kv, &authz, key_of(path)?, params).await
}

async fn remove(
    kv: Kv,
    authz: &Authz,
    key: String,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let recurse = params.flag("recurse");
    checked(&key, recurse)?;
    if recurse {
        authz.require_key_write_prefix(&key)?;
    } else {
        authz.require_key_write(&key)?;
    }
    let cas = number(&params, "cas")?;
    if recurse && cas.is_some() {
        return Err(ApiError::invalid_field(
            "cas",
            "cas cannot be combined with recurse",
        ));
    }
    let (done, index) = kv.delete(&key, recurse, cas).await.map_err(kv_error)?;
    Ok(indexed_json(index, &done))
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
