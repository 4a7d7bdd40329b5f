//! `PUT /v1/txn`: the HTTP face of [`super::execute`], in Consul's shapes.
//!
//! - Body: `[{"KV": {"Verb", "Key", "Value" (base64), "Flags", "Index"}}, …]`, at most
//!   [`MAX_OPS`] operations (413 beyond, as Consul).
//! - 200 `{"Results": [{"KV": {…}}], "Errors": null}` when committed; 409
//!   `{"Results": null, "Errors": [{"OpIndex", "What"}]}` when a check failed (nothing written).
//! - `{"Node": {"Verb", "Node": {…}}}`, `{"Service": {"Verb", "Node", "Service": {…}}}`,
//!   `{"Check": {"Verb", "Check": {…}}}` ([`super::catalog`]); results `{"Node": {…}}` etc.
//! - 400 naming the operation (`[3].KV.Verb`, `[1].Service.Service.ID`) for a malformed one.
//!
//! ACLs, per operation as Consul: `key:write` for writes (`delete-tree`: on the prefix and every
//! rule below it), `key:read` for reads and checks; `get-tree` results leave out keys the token
//! may not read; `node:write` for node and node-check writes, `service:write` for service and
//! service-check writes, the matching `read` for `get`. A denied operation fails the whole
//! transaction with 403 before anything runs.

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

use super::catalog::{CatalogOp, CatalogVerb, Record};
use super::{KvOp, MAX_OPS, TxnError, TxnOp, TxnResult, Verb, execute_ops};
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

/// Decodes `value` as `T`, naming the field at fault under `at`.
fn decode_at<T: serde::de::DeserializeOwned>(
    at: &str,
    value: serde_json::Value,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            at.to_owned()
        } else {
            format!("{at}.{path}")
        };
        ApiError::invalid_field(field, e.into_inner().to_string())
    })
}

/// A `Node`, `Service` or `Check` operation.
fn convert_catalog(i: usize, name: &str, value: serde_json::Value) -> Result<CatalogOp, ApiError> {
    let at = format!("[{i}].{name}");
    let invalid = |field: &str, message: String| {
        ApiError::invalid_field(format!("{at}.{field}"), format!("operation {i}: {message}"))
    };
    let verb = value
        .get("Verb")
        .and_then(|v| v.as_str())
        .ok_or_else(|| invalid("Verb", "Verb is required".to_owned()))?;
    let verb = CatalogVerb::parse(verb).map_err(|e| invalid("Verb", e))?;
    let body = |field: &str| value.get(field).cloned().unwrap_or(serde_json::Value::Null);
    let (record, index) = match name {
        "Node" => {
            let node: plexus_api::Node = decode_at(&format!("{at}.Node"), body("Node"))?;
            if node.node.is_empty() {
                return Err(invalid(
                    "Node.Node",
                    "the node's name is required".to_owned(),
                ));
            }
            let index = node.modify_index;
            (Record::Node(node), index)
        }
        "Service" => {
            let node = body("Node").as_str().unwrap_or_default().to_owned();
            if node.is_empty() {
                return Err(invalid("Node", "the service's node is required".to_owned()));
            }
            let mut service: plexus_api::AgentService =
                decode_at(&format!("{at}.Service"), body("Service"))?;
            if service.id.is_empty() {
                service.id = service.service.clone();
            }
            if service.id.is_empty() {
                return Err(invalid(
                    "Service.ID",
                    "the service's ID or name is required".to_owned(),
                ));
            }
            if verb.writes()
                && !matches!(verb, CatalogVerb::Delete | CatalogVerb::DeleteCas)
                && service.service.is_empty()
            {
                return Err(invalid(
                    "Service.Service",
                    "the service's name is required".to_owned(),
                ));
            }
            let index = service.modify_index.unwrap_or_default();
            (Record::Service { node, service }, index)
        }
        _ => {
            let check: plexus_api::HealthCheck = decode_at(&format!("{at}.Check"), body("Check"))?;
            if check.node.is_empty() {
                return Err(invalid(
                    "Check.Node",
                    "the check's node is required".to_owned(),
                ));
            }
            if check.check_id.is_empty() {
                return Err(invalid(
                    "Check.CheckID",
                    "the check's ID is required".to_owned(),
                ));
            }
            let index = check.modify_index;
            (Record::Check(check), index)
        }
    };
    Ok(CatalogOp {
        verb,
        record,
        index,
    })
}

fn convert(i: usize, op: WireOp) -> Result<TxnOp, ApiError> {
    let field = |name: &str| format!("[{i}].{name}");
    for (name, value) in [
        ("Node", op.node),
        ("Service", op.service),
        ("Check", op.check),
    ] {
        if let Some(value) = value {
            return convert_catalog(i, name, value).map(|op| TxnOp::Catalog(Box::new(op)));
        }
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
    Ok(TxnOp::Kv(KvOp {
        verb,
        key: kv.key,
        value,
        flags: kv.flags,
        index: kv.index,
        session: kv.session,
    }))
}

fn authorize(authz: &Authz, ops: &[TxnOp]) -> Result<(), ApiError> {
    for op in ops {
        match op {
            TxnOp::Kv(op) => match op.verb {
                Verb::DeleteTree => authz.require_key_write_prefix(&op.key)?,
                Verb::GetTree => {}
                verb if verb.writes() => authz.require_key_write(&op.key)?,
                _ => authz.require_key_read(&op.key)?,
            },
            TxnOp::Catalog(op) => {
                let write = op.verb.writes();
                match &op.record {
                    Record::Node(node) if write => authz.require_node_write(&node.node)?,
                    Record::Node(node) => authz.require_node_read(&node.node)?,
                    Record::Service { service, .. } if write => {
                        authz.require_service_write(&service.service)?
                    }
                    Record::Service { service, .. } => {
                        authz.require_service_read(&service.service)?
                    }
                    Record::Check(check) if check.service_id.is_empty() && write => {
                        authz.require_node_write(&check.node)?
                    }
                    Record::Check(check) if write => {
                        authz.require_service_write(&check.service_name)?
                    }
                    Record::Check(check) => authz.require_node_read(&check.node)?,
                }
            }
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
    match execute_ops(&store, &ops).await {
        Ok(Ok((results, index))) => {
            let results: Vec<_> = results
                .into_iter()
                .filter_map(|result| match result {
                    TxnResult::Kv(kv) if authz.can_read_key(&kv.key) => Some(json!({ "KV": kv })),
                    TxnResult::Kv(_) => None,
                    TxnResult::Catalog(record) => Some(record),
                })
                .collect();
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
