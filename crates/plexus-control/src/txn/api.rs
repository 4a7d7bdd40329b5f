//! `PUT /v1/txn`: the HTTP face of [`super::execute`], in Consul's shapes.
//!
//! - Body: `[{"KV": {"Verb", "Key", "Value" (base64), "Flags", "Index"}}, …]`, at most
//!   [`MAX_OPS`] operations (413 beyond, as Consul).
//! - 200 `{"Results": [{"KV": {…}}], "Errors": null}` when committed; 409
//!   `{"Results": null, "Errors": [{"OpIndex", "What"}]}` when a check failed (nothing written).
//! - 400 naming the operation (`[3].KV.Verb`) for a malformed one; `Node`, `Service` and `Check`
//!   operations are not supported yet (400).
//!
//! ACLs, per operation as Consul: `key:write` for writes (`delete-tree`: on the prefix and every
//! rule below it), `key:read` for reads and checks; `get-tree` results leave out keys the token
//! may not read. A denied operation fails the whole transaction with 403 before anything runs.

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use http::StatusCode;
use plexus_api::kv::{MAX_VALUE_BYTES, check_key};
use plexus_runtime::acl::Authz;
use plexus_runtime::http::{ApiError, decode_json, indexed_json, read_body};
use serde::Deserialize;
use serde_json::json;

use super::{KvOp, MAX_OPS, TxnError, Verb, execute};
use crate::api::ErrorChain;
use crate::store::Store;

/// The transaction route (no fallback: merged into the control plane's router).
pub fn router(store: std::sync::Arc<dyn Store>) -> Router {
    Router::new().route("/v1/txn", put(txn)).with_state(store)
}

#[derive(Debug, Deserialize)]
struct WireOp {
    #[serde(rename = "KV")]
    kv: Option<WireKv>,
    #[serde(rename = "Node")]
    node: Option<serde_json::Value>,
    #[serde(rename = "Service")]
    service: Option<serde_json::Value>,
    #[serde(rename = "Check")]
    check: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct WireKv {
    #[serde(rename = "Verb")]
    verb: String,
    #[serde(rename = "Key", default)]
    key: String,
    #[serde(rename = "Value", default)]
    value: Option<String>,
    #[serde(rename = "Flags", default)]
    flags: u64,
    #[serde(rename = "Index", default)]
    index: u64,
    #[serde(rename = "Session", default)]
    session: String,
}

fn convert(i: usize, op: WireOp) -> Result<KvOp, ApiError> {
    let field = |name: &str| format!("[{i}].{name}");
    let other = [
        ("Node", op.node.is_some()),
        ("Service", op.service.is_some()),
        ("Check", op.check.is_some()),
    ];
    if let Some((name, _)) = other.iter().find(|(_, given)| *given) {
        return Err(ApiError::invalid_field(
            field(name),
            format!("operation {i}: {name} operations are not supported in transactions yet"),
        ));
    }
    let Some(kv) = op.kv else {
        return Err(ApiError::invalid_field(
            format!("[{i}]"),
            format!("operation {i} names no KV, Node, Service or Check operation"),
        ));
    };
    let verb = Verb::parse(&kv.verb)
        .map_err(|e| ApiError::invalid_field(field("KV.Verb"), format!("operation {i}: {e}")))?;
    check_key(&kv.key, verb.is_tree())
        .map_err(|e| ApiError::invalid_field(field("KV.Key"), format!("operation {i}: {e}")))?;
    use base64::Engine;
    let value = match kv.value.as_deref() {
        None | Some("") => Vec::new(),
        Some(text) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| {
                ApiError::invalid_field(
                    field("KV.Value"),
                    format!("operation {i}: Value is not base64"),
                )
            })?,
    };
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "operation {i}: value is {} bytes; the limit is {MAX_VALUE_BYTES}",
                value.len()
            ),
        )
        .with_field(field("KV.Value")));
    }
    if verb.needs_session() && kv.session.is_empty() {
        return Err(ApiError::invalid_field(
            field("KV.Session"),
            format!("operation {i}: verb {:?} needs a Session", kv.verb),
        ));
    }
    Ok(KvOp {
        verb,
        key: kv.key,
        value,
        flags: kv.flags,
        index: kv.index,
        session: kv.session,
    })
}

fn authorize(authz: &Authz, ops: &[KvOp]) -> Result<(), ApiError> {
    for op in ops {
        match op.verb {
            Verb::DeleteTree => authz.require_key_write_prefix(&op.key)?,
            Verb::GetTree => {}
            verb if verb.writes() => authz.require_key_write(&op.key)?,
            _ => authz.require_key_read(&op.key)?,
        }
    }
    Ok(())
}

async fn txn(
    State(store): State<std::sync::Arc<dyn Store>>,
    authz: Authz,
    request: Request,
) -> Result<Response, ApiError> {
    let body = read_body(request).await?;
    let wire: Vec<WireOp> = decode_json(&body)?;
    if wire.len() > MAX_OPS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "Transaction contains too many operations ({} > {MAX_OPS})",
                wire.len()
            ),
        ));
    }
    let ops = wire
        .into_iter()
        .enumerate()
        .map(|(i, op)| convert(i, op))
        .collect::<Result<Vec<_>, _>>()?;
    authorize(&authz, &ops)?;
    match execute(&store, &ops).await {
        Ok(Ok((mut results, index))) => {
            results.retain(|pair| authz.can_read_key(&pair.key));
            let results: Vec<_> = results.into_iter().map(|kv| json!({ "KV": kv })).collect();
            Ok(indexed_json(
                index,
                &json!({ "Results": results, "Errors": null }),
            ))
        }
        Ok(Err(failure)) => {
            tracing::debug!(op = failure.op_index, what = %failure.what, "transaction rolled back");
            let body = json!({
                "Results": null,
                "Errors": [{ "OpIndex": failure.op_index, "What": failure.what }],
            });
            Ok((StatusCode::CONFLICT, axum::Json(body)).into_response())
        }
        Err(TxnError::Contended) => Err(ApiError::unavailable(
            "the transaction kept conflicting with other writers; try again",
        )),
        Err(error) => {
            tracing::warn!(error = %ErrorChain(&error), "transaction failed");
            Err(ApiError::unavailable(
                "the transaction store is unavailable",
            ))
        }
    }
}
