//! `PUT /v1/catalog/register` and `PUT /v1/catalog/deregister`: Consul's low-level catalog
//! writes, for external nodes and services (nothing runs their checks; their status is what
//! the writer says). Both answer `true`.
//!
//! Register body: `Node` and `Address` (required), `ID`, `Datacenter` (this server's, or
//! absent), `TaggedAddresses`, `NodeMeta`, `Service` (Consul's `AgentService`: `Service`
//! required, `ID` defaulting to it), `Check` and/or `Checks` (`CheckID` defaulting to `Name`,
//! `Status` passing/warning/critical, default critical, `ServiceID` naming the body's service
//! or one already on the node, `Definition`), `SkipNodeUpdate`. Deregister body: `Node`, and
//! `ServiceID` (the instance and its checks), or `CheckID`, or neither (the whole node).
//! Top-level and nested field names match case-insensitively, as Go's decoder does (py-consul
//! sends `node`, `address`, `serviceid`).
//!
//! ACLs, as Consul: `node:write` on the node (unless `SkipNodeUpdate` leaves an existing node
//! untouched), `service:write` on the service and on each service a check belongs to; a node
//! check needs `node:write`; what is overwritten (an instance id under another name, a check id
//! held by another service or the node) needs write access too. Deregistering needs `service:write` on the service (for a check,
//! on its service, or `node:write` for a node check), the whole node `node:write`.
//!
//! Bad input is 400 naming the field (`Node`, `Service.Service`, `Checks[1].Status`), checked
//! before anything is written; deregistering something not registered is `true` (Consul's
//! deletes are idempotent).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Request, State};
use plexus_api::acl::Authorizer;
use plexus_api::{
    AgentService, Catalog, CheckStatus, HealthCheck, HealthCheckDefinition, Node, Registration,
};
use plexus_runtime::acl::Authz;
use plexus_runtime::http::{ApiError, decode_json, read_body};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiState, catalog_error};

const REGISTER_FIELDS: [&str; 10] = [
    "ID",
    "Node",
    "Address",
    "Datacenter",
    "TaggedAddresses",
    "NodeMeta",
    "Service",
    "Check",
    "Checks",
    "SkipNodeUpdate",
];
const SERVICE_FIELDS: [&str; 12] = [
    "Kind",
    "ID",
    "Service",
    "Tags",
    "Meta",
    "Port",
    "Address",
    "TaggedAddresses",
    "Weights",
    "EnableTagOverride",
    "Proxy",
    "Connect",
];
const CHECK_FIELDS: [&str; 8] = [
    "Node",
    "CheckID",
    "Name",
    "Status",
    "Notes",
    "Output",
    "ServiceID",
    "Definition",
];
const DEREGISTER_FIELDS: [&str; 4] = ["Node", "Datacenter", "ServiceID", "CheckID"];

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RegisterBody {
    #[serde(rename = "ID")]
    id: Option<String>,
    #[serde(rename = "Node")]
    node: Option<String>,
    #[serde(rename = "Address")]
    address: Option<String>,
    #[serde(rename = "Datacenter")]
    datacenter: Option<String>,
    #[serde(rename = "TaggedAddresses")]
    tagged_addresses: Option<BTreeMap<String, String>>,
    #[serde(rename = "NodeMeta")]
    node_meta: Option<BTreeMap<String, String>>,
    #[serde(rename = "Service")]
    service: Option<AgentService>,
    #[serde(rename = "Check")]
    check: Option<CheckBody>,
    #[serde(rename = "Checks")]
    checks: Option<Vec<CheckBody>>,
    #[serde(rename = "SkipNodeUpdate")]
    skip_node_update: Option<bool>,
}

/// A check as Consul's catalog takes it (`structs.HealthCheck`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CheckBody {
    #[serde(rename = "Node")]
    node: Option<String>,
    #[serde(rename = "CheckID")]
    check_id: Option<String>,
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "Status")]
    status: Option<String>,
    #[serde(rename = "Notes")]
    notes: Option<String>,
    #[serde(rename = "Output")]
    output: Option<String>,
    #[serde(rename = "ServiceID")]
    service_id: Option<String>,
    #[serde(rename = "Definition")]
    definition: Option<HealthCheckDefinition>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeregisterBody {
    #[serde(rename = "Node")]
    node: Option<String>,
    #[serde(rename = "Datacenter")]
    datacenter: Option<String>,
    #[serde(rename = "ServiceID")]
    service_id: Option<String>,
    #[serde(rename = "CheckID")]
    check_id: Option<String>,
}

/// Renames the keys of one JSON object to Consul's spelling of `fields`, matched
/// case-insensitively; other keys are kept.
fn canonical_object(value: &mut Value, fields: &[&str]) {
    let Value::Object(map) = value else { return };
    let taken = std::mem::take(map);
    for (key, value) in taken {
        let key = fields
            .iter()
            .find(|f| f.eq_ignore_ascii_case(&key))
            .map_or(key, |f| (*f).to_owned());
        map.insert(key, value);
    }
}

/// The request body as JSON with Consul's key spelling at every struct level.
async fn body_value(request: Request, top: &[&str]) -> Result<Value, ApiError> {
    let bytes = read_body(request).await?;
    let mut value: Value = decode_json(&bytes)?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid request body: expected a JSON object",
        ));
    }
    canonical_object(&mut value, top);
    if let Some(service) = value.get_mut("Service") {
        canonical_object(service, &SERVICE_FIELDS);
    }
    if let Some(check) = value.get_mut("Check") {
        canonical_object(check, &CHECK_FIELDS);
    }
    if let Some(Value::Array(checks)) = value.get_mut("Checks") {
        for check in checks {
            canonical_object(check, &CHECK_FIELDS);
        }
    }
    Ok(value)
}

/// Decodes a canonical body, naming the field at fault.
fn decode<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    decode_json(value.to_string().as_bytes())
}

fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// A datacenter other than this server's is refused (no federation here).
fn check_datacenter(state: &ApiState, datacenter: Option<&str>) -> Result<(), ApiError> {
    match datacenter {
        Some(dc) if !dc.is_empty() && dc != state.info.datacenter => Err(ApiError::invalid_field(
            "Datacenter",
            format!(
                "unknown datacenter {dc:?} (this server serves {:?})",
                state.info.datacenter
            ),
        )),
        _ => Ok(()),
    }
}

/// `PUT /v1/catalog/register`.
pub async fn register(
    State(state): State<ApiState>,
    authz: Authz,
    request: Request,
) -> Result<Json<bool>, ApiError> {
    let body: RegisterBody = decode(&body_value(request, &REGISTER_FIELDS).await?)?;
    check_datacenter(&state, body.datacenter.as_deref())?;
    let Some(node_name) = given(body.node) else {
        return Err(ApiError::invalid_field("Node", "Node is required"));
    };
    let stored = state
        .catalog
        .node_services(&node_name)
        .await
        .map_err(catalog_error)?
        .value;
    let records = state
        .catalog
        .node_view(&node_name)
        .await
        .map_err(catalog_error)?
        .value;
    let stored_checks = records
        .as_ref()
        .map(|r| r.checks.clone())
        .unwrap_or_default();
    let existing = records.map(|records| records.node);
    let skip_node = body.skip_node_update.unwrap_or(false) && existing.is_some();
    let node = match (skip_node, existing) {
        (true, Some(node)) => node,
        _ => {
            let Some(address) = given(body.address) else {
                return Err(ApiError::invalid_field("Address", "Address is required"));
            };
            let id = body.id.unwrap_or_default();
            if !id.is_empty() && !is_uuid(&id) {
                return Err(ApiError::invalid_field(
                    "ID",
                    format!("node ID {id:?} must be a UUID"),
                ));
            }
            Node {
                id,
                node: node_name.clone(),
                address,
                datacenter: state.info.datacenter.clone(),
                tagged_addresses: body.tagged_addresses.unwrap_or_default(),
                meta: body.node_meta.unwrap_or_default(),
                create_index: 0,
                modify_index: 0,
            }
        }
    };

    let service = body
        .service
        .map(|service| validated_service(service, &state.info.datacenter))
        .transpose()?;
    let check_bodies: Vec<(String, CheckBody)> = body
        .check
        .into_iter()
        .map(|c| ("Check".to_owned(), c))
        .chain(
            body.checks
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, c)| (format!("Checks[{i}]"), c)),
        )
        .collect();
    let mut checks = Vec::with_capacity(check_bodies.len());
    for (label, check) in check_bodies {
        checks.push(validated_check(
            &label,
            check,
            &node_name,
            service.as_ref(),
            &stored,
        )?);
    }

    authorize_register(&authz, &node_name, skip_node, service.as_ref(), &checks)?;
    authorize_replaced(
        &authz,
        &node_name,
        service.as_ref(),
        &checks,
        &stored,
        &stored_checks,
    )?;
    let registration = Registration {
        node,
        services: service.into_iter().collect(),
        checks,
    };
    let index = state
        .catalog
        .register(registration)
        .await
        .map_err(catalog_error)?;
    tracing::debug!(node = %node_name, index, "catalog registration");
    Ok(Json(true))
}

fn validated_service(
    mut service: AgentService,
    datacenter: &str,
) -> Result<AgentService, ApiError> {
    if service.service.is_empty() {
        return Err(ApiError::invalid_field(
            "Service.Service",
            "Service.Service (the service name) is required",
        ));
    }
    for (field, value) in [
        ("Service.Service", &service.service),
        ("Service.ID", &service.id),
    ] {
        if value.contains('/') || value.chars().any(char::is_control) {
            return Err(ApiError::invalid_field(
                field,
                format!("{field} {value:?} must not contain '/' or control characters"),
            ));
        }
    }
    if service.id.is_empty() {
        service.id.clone_from(&service.service);
    }
    service.datacenter = datacenter.to_owned();
    (service.create_index, service.modify_index) = (None, None);
    Ok(service)
}

/// One check of the body; its service name and tags are what the catalog fills in, the status
/// what the writer says (default critical).
fn validated_check(
    label: &str,
    body: CheckBody,
    node: &str,
    service: Option<&AgentService>,
    stored: &[AgentService],
) -> Result<HealthCheck, ApiError> {
    let field = |name: &str| format!("{label}.{name}");
    if let Some(other) = given(body.node)
        && other != node
    {
        return Err(ApiError::invalid_field(
            field("Node"),
            format!("check node {other:?} is not the registration's node {node:?}"),
        ));
    }
    let name = given(body.name);
    let Some(check_id) = given(body.check_id).or_else(|| name.clone()) else {
        return Err(ApiError::invalid_field(
            field("CheckID"),
            "a check needs a CheckID or a Name",
        ));
    };
    let status = match given(body.status) {
        None => CheckStatus::Critical,
        Some(text) => match text.parse::<CheckStatus>() {
            Ok(s @ (CheckStatus::Passing | CheckStatus::Warning | CheckStatus::Critical)) => s,
            _ => {
                return Err(ApiError::invalid_field(
                    field("Status"),
                    format!(
                        "invalid check status {text:?} (expected passing, warning or critical)"
                    ),
                ));
            }
        },
    };
    let service_id = given(body.service_id).unwrap_or_default();
    let owner = if service_id.is_empty() {
        None
    } else {
        let found = service
            .filter(|s| s.id == service_id)
            .or_else(|| stored.iter().find(|s| s.id == service_id));
        let Some(owner) = found else {
            return Err(ApiError::invalid_field(
                field("ServiceID"),
                format!("service {service_id:?} is not registered on node {node:?}"),
            ));
        };
        Some(owner)
    };
    let definition = body.definition.unwrap_or_default();
    let shown = |d: Option<plexus_api::GoDuration>| d.map(|d| d.to_string()).unwrap_or_default();
    Ok(HealthCheck {
        node: node.to_owned(),
        name: name.unwrap_or_else(|| check_id.clone()),
        check_id,
        status,
        notes: body.notes.unwrap_or_default(),
        output: body.output.unwrap_or_default(),
        service_id,
        service_name: owner.map(|s| s.service.clone()).unwrap_or_default(),
        service_tags: owner.map(|s| s.tags.clone()).unwrap_or_default(),
        check_type: None,
        interval: shown(definition.interval),
        timeout: shown(definition.timeout),
        definition,
        create_index: 0,
        modify_index: 0,
    })
}

fn authorize_register(
    authz: &Authorizer,
    node: &str,
    skip_node: bool,
    service: Option<&AgentService>,
    checks: &[HealthCheck],
) -> Result<(), ApiError> {
    if !skip_node {
        authz.require_node_write(node)?;
    }
    if let Some(service) = service {
        authz.require_service_write(&service.service)?;
    }
    for check in checks {
        if check.service_name.is_empty() {
            authz.require_node_write(node)?;
        } else {
            authz.require_service_write(&check.service_name)?;
        }
    }
    Ok(())
}

/// What a registration overwrites needs write access too (as Consul vets it): an instance id
/// registered under another service name, a check id held by another service or the node.
fn authorize_replaced(
    authz: &Authorizer,
    node: &str,
    service: Option<&AgentService>,
    checks: &[HealthCheck],
    stored: &[AgentService],
    stored_checks: &[HealthCheck],
) -> Result<(), ApiError> {
    if let Some(service) = service
        && let Some(old) = stored.iter().find(|s| s.id == service.id)
        && old.service != service.service
    {
        authz.require_service_write(&old.service)?;
    }
    for check in checks {
        if let Some(old) = stored_checks.iter().find(|c| c.check_id == check.check_id)
            && old.service_name != check.service_name
        {
            if old.service_name.is_empty() {
                authz.require_node_write(node)?;
            } else {
                authz.require_service_write(&old.service_name)?;
            }
        }
    }
    Ok(())
}

/// `8-4-4-4-12` hexadecimal digits, as Consul requires of a node ID.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `PUT /v1/catalog/deregister`.
pub async fn deregister(
    State(state): State<ApiState>,
    authz: Authz,
    request: Request,
) -> Result<Json<bool>, ApiError> {
    let body: DeregisterBody = decode(&body_value(request, &DEREGISTER_FIELDS).await?)?;
    check_datacenter(&state, body.datacenter.as_deref())?;
    let Some(node) = given(body.node) else {
        return Err(ApiError::invalid_field("Node", "Node is required"));
    };
    let records = state
        .catalog
        .node_view(&node)
        .await
        .map_err(catalog_error)?
        .value;
    let catalog = &state.catalog;
    let gone = |result: Result<u64, plexus_api::CatalogError>| match result {
        Ok(_) | Err(plexus_api::CatalogError::NotFound { .. }) => Ok(()),
        Err(error) => Err(catalog_error(error)),
    };
    if let Some(service_id) = given(body.service_id) {
        let name = records
            .as_ref()
            .and_then(|r| r.services.iter().find(|s| s.id == service_id))
            .map(|s| s.service.clone());
        match &name {
            Some(name) => authz.require_service_write(name)?,
            None => authz.require_node_write(&node)?,
        }
        gone(catalog.deregister_service(&node, &service_id).await)?;
    } else if let Some(check_id) = given(body.check_id) {
        let owner = records
            .as_ref()
            .and_then(|r| r.checks.iter().find(|c| c.check_id == check_id))
            .map(|c| c.service_name.clone())
            .filter(|name| !name.is_empty());
        match &owner {
            Some(name) => authz.require_service_write(name)?,
            None => authz.require_node_write(&node)?,
        }
        gone(catalog.deregister_check(&node, &check_id).await)?;
    } else {
        authz.require_node_write(&node)?;
        catalog
            .deregister_node(&node)
            .await
            .map_err(catalog_error)?;
    }
    tracing::debug!(node = %node, "catalog deregistration");
    Ok(Json(true))
}
