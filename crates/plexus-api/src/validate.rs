//! Registration → catalog records: defaults, checks, sidecar expansion. Pure; no I/O.
//!
//! [`validate_service`] turns one [`ServiceRegistration`] (as written in an API body or a definition
//! file) into the [`AgentService`] and [`HealthCheck`] records the catalog stores, following
//! Consul's rules. Every problem is collected, not just the first, each as a [`FieldError`] naming
//! the field path relative to the service (`port`, `checks[1].tcp`,
//! `connect.sidecar_service.proxy.upstreams[0].local_bind_port`).
//!
//! ```text
//!  ServiceRegistration ─► service (+ checks) ─┬─► [ValidatedService]
//!                                             └─► connect.sidecar_service ─► <id>-sidecar-proxy (+ checks)
//! ```
//!
//! Defaults applied here (and only here):
//! - `id`: the name; `kind`: an ordinary service; `port`: 0 (a plain service needs none);
//! - `weights`: `{passing: 1, warning: 1}`; check `status`: `critical`; check `timeout` (http, tcp,
//!   grpc): 10s; http `method`: `GET`; check ids and names: see [`ValidatedService`];
//! - sidecar: id/name `<parent>-sidecar-proxy`, tags/meta/address the parent's, port the next free
//!   one in [`crate::SIDECAR_PORT_RANGE`], `local_service_address` `127.0.0.1`,
//!   `local_service_port` the parent's port, one alias check mirroring the parent;
//! - upstream `destination_type`: `service`; `local_bind_address`: `127.0.0.1`.

mod check;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::net::IpAddr;

use crate::model::{AgentProxy, AgentService, AgentUpstream, HealthCheck, ServiceKind};
use crate::registration::{
    CheckDefinition, ProxyDefinition, ServiceRegistration, SidecarServiceDefinition,
    UpstreamDefinition, Weights,
};

/// Agent-wide values every record gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Datacenter of every service.
    pub datacenter: String,
    /// Node every check runs on.
    pub node: String,
}

/// One problem with a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// snake_case path relative to the service: `port`, `checks[1].tcp`.
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found with a registration (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// One service instance with its checks, ready for the catalog.
///
/// Check ids default to `service:<service id>` when the instance has exactly one check, else
/// `service:<service id>:<n>` (1-based, `check` first, then `checks` in order). A sidecar without
/// checks of its own gets one alias check, `service:<sidecar id>`, mirroring its parent.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedService {
    /// The instance.
    pub service: AgentService,
    /// Its checks, with `service_id`, `service_name` and `service_tags` filled in.
    pub checks: Vec<HealthCheck>,
}

/// A DNS name as a certificate SAN or `server_name` may hold: labels of 1–63 letters, digits,
/// `-` (and `*` for a wildcard), 253 characters in all.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
        })
}

/// Validates and expands one registration. Returns the service first, then its sidecar (if
/// `connect.sidecar_service` is set).
///
/// `next_sidecar_port` is called only when a sidecar has no port given, and only once everything
/// else is valid (so a rejected registration never uses up a port); it returns a free port from
/// 21000–21255 or `None` (exhausted → a [`FieldError`] on `connect.sidecar_service.port`).
pub fn validate_service(
    reg: &ServiceRegistration,
    defaults: &Defaults,
    next_sidecar_port: &mut dyn FnMut() -> Option<u16>,
) -> Result<Vec<ValidatedService>, ValidationErrors> {
    let mut errs = Errors::default();

    if reg.name.is_empty() {
        errs.push("name", "name is required");
    } else {
        check_identifier(&mut errs, "name", "name", &reg.name);
    }
    // Consul treats an empty id as absent.
    let id = match reg.id.as_deref() {
        Some(id) if !id.is_empty() => {
            check_identifier(&mut errs, "id", "id", id);
            id.to_owned()
        }
        _ => reg.name.clone(),
    };
    let port = port_or_zero(&mut errs, "port", "port", reg.port);

    let kind = match reg.kind.as_deref() {
        None | Some("") => ServiceKind::Typical,
        Some("connect-proxy") => ServiceKind::ConnectProxy,
        Some("ingress-gateway") => ServiceKind::IngressGateway,
        Some("terminating-gateway") => ServiceKind::TerminatingGateway,
        Some("mesh-gateway") => ServiceKind::MeshGateway,
        Some(other) => {
            errs.push(
                "kind",
                format!(
                    "kind {other:?} is not supported (expected \"\", \"connect-proxy\", \"ingress-gateway\", \"terminating-gateway\" or \"mesh-gateway\")"
                ),
            );
            ServiceKind::Typical
        }
    };

    let proxy = match (kind, &reg.proxy) {
        (ServiceKind::ConnectProxy, proxy) => {
            let empty = ProxyDefinition::default();
            let def = proxy.as_ref().unwrap_or(&empty);
            if def
                .destination_service_name
                .as_deref()
                .unwrap_or("")
                .is_empty()
            {
                errs.push(
                    "proxy.destination_service_name",
                    "a connect-proxy needs proxy.destination_service_name",
                );
            }
            if reg.port.is_none() {
                errs.push("port", "a connect-proxy needs a port");
            }
            let local_port = port_or_zero(
                &mut errs,
                "proxy.local_service_port",
                "local_service_port",
                def.local_service_port,
            );
            let mut proxy = agent_proxy(&mut errs, "proxy", def, local_port);
            proxy.destination_service_name =
                def.destination_service_name.clone().unwrap_or_default();
            proxy.destination_service_id = def.destination_service_id.clone().unwrap_or_default();
            Some(proxy)
        }
        (_, Some(_)) => {
            errs.push(
                "proxy",
                "proxy is only allowed on a service of kind \"connect-proxy\" \
                 (use connect.sidecar_service.proxy for a sidecar)",
            );
            None
        }
        (_, None) => None,
    };

    let native = reg.connect.as_ref().is_some_and(|c| c.native);
    let sidecar_def = reg
        .connect
        .as_ref()
        .and_then(|c| c.sidecar_service.as_ref());
    if native && sidecar_def.is_some() {
        errs.push(
            "connect",
            "connect.native and connect.sidecar_service cannot both be set",
        );
    }
    if kind == ServiceKind::ConnectProxy && sidecar_def.is_some() {
        errs.push(
            "connect.sidecar_service",
            "a connect-proxy cannot have a sidecar of its own",
        );
    }
    if kind.is_gateway() && sidecar_def.is_some() {
        errs.push(
            "connect.sidecar_service",
            format!("a {} is its own proxy and takes no sidecar", kind.as_str()),
        );
    }

    check_meta(&mut errs, "meta", &reg.meta);
    let weights = reg.weights.unwrap_or_default();
    check_weights(&mut errs, &weights);

    let service = AgentService {
        kind,
        id: id.clone(),
        service: reg.name.clone(),
        tags: reg.tags.clone(),
        meta: reg.meta.clone(),
        port,
        address: reg.address.clone().unwrap_or_default(),
        tagged_addresses: reg.tagged_addresses.clone(),
        weights,
        enable_tag_override: reg.enable_tag_override,
        proxy,
        connect: native.then(|| serde_json::json!({ "Native": true })),
        datacenter: defaults.datacenter.clone(),
        create_index: None,
        modify_index: None,
    };
    let checks = check::service_checks(
        &mut errs,
        "",
        &service,
        &reg.check,
        &reg.checks,
        &defaults.node,
    );
    let mut out = vec![ValidatedService { service, checks }];

    if let Some(def) = sidecar_def {
        let parent_port_ok = reg.port.is_none_or(|p| port_in_range(p).is_some());
        let sidecar = sidecar(
            &mut errs,
            def,
            &out[0].service,
            parent_port_ok,
            &defaults.node,
        );
        out.push(sidecar);
    }

    // Last, so a registration with other errors does not use up a port.
    if let Some(sidecar) = out.get_mut(1)
        && sidecar.service.port == 0
        && errs.0.is_empty()
    {
        match next_sidecar_port() {
            Some(p) => sidecar.service.port = p,
            None => errs.push(
                "connect.sidecar_service.port",
                "no free sidecar port left in 21000–21255; give connect.sidecar_service.port",
            ),
        }
    }

    if errs.0.is_empty() {
        Ok(out)
    } else {
        Err(ValidationErrors(errs.0))
    }
}

/// Validates a check registered on its own (`PUT /v1/agent/check/register`): on `service` when
/// it belongs to one, else on the node. Field paths are relative to the check (`ttl`,
/// `interval`); `name` is required (Consul: "Missing check name"), the id defaults to the name.
pub fn validate_check(
    def: &CheckDefinition,
    service: Option<&AgentService>,
    node: &str,
) -> Result<HealthCheck, ValidationErrors> {
    let mut errs = Errors::default();
    let name = def.name.as_deref().unwrap_or("");
    if name.is_empty() {
        errs.push("name", "name is required");
    }
    let id = match def.check_id.as_deref() {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => name.to_owned(),
    };
    if !id.is_empty() {
        check_identifier(&mut errs, "id", "check id", &id);
    }
    let node_owned = AgentService::default();
    let owner = service.unwrap_or(&node_owned);
    let check = check::single_check(&mut errs, def, owner, node, id);
    if errs.0.is_empty() {
        Ok(check)
    } else {
        // A problem with the check as a whole (no kind, several kinds) is on `check`.
        for e in &mut errs.0 {
            if e.field.is_empty() {
                e.field = "check".to_owned();
            }
        }
        Err(ValidationErrors(errs.0))
    }
}

const SIDECAR: &str = "connect.sidecar_service";

/// Expands `connect.sidecar_service` into its own service; port 0 means "assign one".
fn sidecar(
    errs: &mut Errors,
    def: &SidecarServiceDefinition,
    parent: &AgentService,
    parent_port_ok: bool,
    node: &str,
) -> ValidatedService {
    let id = match def.id.as_deref() {
        Some(id) if !id.is_empty() => {
            check_identifier(errs, &format!("{SIDECAR}.id"), "id", id);
            id.to_owned()
        }
        _ => format!("{}-sidecar-proxy", parent.id),
    };
    let name = match def.name.as_deref() {
        Some(name) if !name.is_empty() => {
            check_identifier(errs, &format!("{SIDECAR}.name"), "name", name);
            name.to_owned()
        }
        _ => format!("{}-sidecar-proxy", parent.service),
    };
    let meta = match &def.meta {
        Some(meta) => {
            check_meta(errs, &format!("{SIDECAR}.meta"), meta);
            meta.clone()
        }
        None => parent.meta.clone(),
    };
    let port = port_or_zero(errs, &format!("{SIDECAR}.port"), "port", def.port);

    let empty = ProxyDefinition::default();
    let proxy_def = def.proxy.as_ref().unwrap_or(&empty);
    let prefix = format!("{SIDECAR}.proxy");
    let local_port = match proxy_def.local_service_port {
        Some(p) => port_or_zero(
            errs,
            &format!("{prefix}.local_service_port"),
            "local_service_port",
            Some(p),
        ),
        None => {
            if parent.port == 0 && parent_port_ok {
                errs.push(
                    "port",
                    "a service with connect.sidecar_service needs a port \
                     (or set connect.sidecar_service.proxy.local_service_port)",
                );
            }
            parent.port
        }
    };
    let mut proxy = agent_proxy(errs, &prefix, proxy_def, local_port);
    // Consul sets these for sidecars whatever was written.
    proxy.destination_service_name = parent.service.clone();
    proxy.destination_service_id = parent.id.clone();

    let service = AgentService {
        kind: ServiceKind::ConnectProxy,
        id,
        service: name,
        tags: def.tags.clone().unwrap_or_else(|| parent.tags.clone()),
        meta,
        port,
        address: def
            .address
            .clone()
            .unwrap_or_else(|| parent.address.clone()),
        tagged_addresses: None,
        weights: Weights::default(),
        enable_tag_override: false,
        proxy: Some(proxy),
        connect: None,
        datacenter: parent.datacenter.clone(),
        create_index: None,
        modify_index: None,
    };
    let mut checks = check::service_checks(errs, SIDECAR, &service, &def.check, &def.checks, node);
    if def.check.is_none() && def.checks.is_empty() {
        checks.push(check::alias_check(&service, parent, node));
    }
    ValidatedService { service, checks }
}

/// The parts of a proxy shared by sidecars and hand-registered proxies.
fn agent_proxy(
    errs: &mut Errors,
    prefix: &str,
    def: &ProxyDefinition,
    local_port: u16,
) -> AgentProxy {
    let local_address = match def.local_service_address.as_deref() {
        Some(a) if !a.is_empty() => a.to_owned(),
        _ => "127.0.0.1".to_owned(),
    };
    AgentProxy {
        destination_service_name: String::new(),
        destination_service_id: String::new(),
        local_service_address: local_address,
        local_service_port: local_port,
        upstreams: upstreams(errs, &format!("{prefix}.upstreams"), &def.upstreams.0),
        config: def.config.clone(),
    }
}

fn upstreams(errs: &mut Errors, prefix: &str, defs: &[UpstreamDefinition]) -> Vec<AgentUpstream> {
    let mut out = Vec::with_capacity(defs.len());
    let mut listeners: BTreeMap<(String, u16), usize> = BTreeMap::new();
    for (i, def) in defs.iter().enumerate() {
        let at = |field: &str| format!("{prefix}[{i}].{field}");
        let destination_type = match def.destination_type.as_deref() {
            None | Some("") | Some("service") => "service".to_owned(),
            Some(other) => {
                errs.push(
                    at("destination_type"),
                    format!("destination_type {other:?} is not supported (expected \"service\")"),
                );
                other.to_owned()
            }
        };
        if def.destination_name.is_empty() {
            errs.push(at("destination_name"), "destination_name is required");
        }
        if let Some(dc) = def.datacenter.as_deref().filter(|dc| !dc.is_empty())
            && !(dc.len() <= 128
                && dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            errs.push(
                at("datacenter"),
                format!(
                    "datacenter {dc:?} is not a datacenter name (letters, digits, '-' and '_')"
                ),
            );
        }
        let address = match def.local_bind_address.as_deref() {
            None | Some("") => "127.0.0.1".to_owned(),
            Some(a) => {
                if a.parse::<IpAddr>().is_err() {
                    errs.push(
                        at("local_bind_address"),
                        format!("local_bind_address {a:?} is not an IP address"),
                    );
                }
                a.to_owned()
            }
        };
        let port = match def.local_bind_port {
            None => {
                errs.push(at("local_bind_port"), "local_bind_port is required");
                0
            }
            some => port_or_zero(errs, &at("local_bind_port"), "local_bind_port", some),
        };
        if port != 0 {
            match listeners.entry((address.clone(), port)) {
                Entry::Occupied(first) => errs.push(
                    at("local_bind_port"),
                    format!(
                        "{address}:{port} is already the listener of upstreams[{}]",
                        first.get()
                    ),
                ),
                Entry::Vacant(slot) => {
                    slot.insert(i);
                }
            }
        }
        out.push(AgentUpstream {
            destination_type,
            destination_name: def.destination_name.clone(),
            datacenter: def.datacenter.clone().unwrap_or_default(),
            local_bind_address: address,
            local_bind_port: port,
            config: def.config.clone(),
        });
    }
    out
}

/// Collects errors in the order found.
#[derive(Debug, Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// `prefix.field`, or `field` at the top.
fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

fn port_in_range(p: i64) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// A port given must be 1–65535; absent is 0. Out-of-range values are reported and become 0.
fn port_or_zero(errs: &mut Errors, field: &str, what: &str, port: Option<i64>) -> u16 {
    match port {
        None => 0,
        Some(p) => port_in_range(p).unwrap_or_else(|| {
            errs.push(field, format!("{what} {p} is outside 1–65535"));
            0
        }),
    }
}

/// Names and ids: non-empty, no `/`, no whitespace, no control characters.
fn check_identifier(errs: &mut Errors, field: &str, what: &str, value: &str) {
    let problem = if value.is_empty() {
        Some("must not be empty")
    } else if value.contains('/') {
        Some("must not contain '/'")
    } else if value.chars().any(char::is_whitespace) {
        Some("must not contain whitespace")
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    };
    if let Some(problem) = problem {
        errs.push(field, format!("{what} {value:?} {problem}"));
    }
}

/// Meta keys: non-empty, at most 128 characters.
fn check_meta(errs: &mut Errors, field: &str, meta: &BTreeMap<String, String>) {
    for key in meta.keys() {
        if key.is_empty() {
            errs.push(field, "meta keys must not be empty");
        } else if key.chars().count() > 128 {
            errs.push(
                field,
                format!("meta key {key:?} is longer than 128 characters"),
            );
        }
    }
}

/// Consul: passing ≥ 1, warning ≥ 0.
fn check_weights(errs: &mut Errors, weights: &Weights) {
    if weights.passing < 1 {
        errs.push(
            "weights.passing",
            format!("weights.passing {} must be at least 1", weights.passing),
        );
    }
    if weights.warning < 0 {
        errs.push(
            "weights.warning",
            format!("weights.warning {} must not be negative", weights.warning),
        );
    }
}
