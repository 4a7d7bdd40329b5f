//! Checks embedded in a service registration → [`HealthCheck`] records.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::Duration;

use super::{Errors, join};
use crate::duration::GoDuration;
use crate::model::{AgentService, CheckStatus, CheckType, HealthCheck, HealthCheckDefinition};
use crate::one_or_many::OneOrMany;
use crate::registration::CheckDefinition;

/// Timeout of one http, tcp or grpc run unless given (Consul's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The checks of one service instance: `check` first, then `checks`, in order.
///
/// `prefix` is the field path of the registration part holding them (`""` for the service itself,
/// `connect.sidecar_service` for a sidecar).
pub(super) fn service_checks(
    errs: &mut Errors,
    prefix: &str,
    service: &AgentService,
    check: &Option<CheckDefinition>,
    checks: &OneOrMany<CheckDefinition>,
    node: &str,
) -> Vec<HealthCheck> {
    let defs: Vec<(String, &CheckDefinition)> = check
        .iter()
        .map(|c| (join(prefix, "check"), c))
        .chain(
            checks
                .iter()
                .enumerate()
                .map(|(i, c)| (join(prefix, &format!("checks[{i}]")), c)),
        )
        .collect();
    let total = defs.len();
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::with_capacity(total);
    for (n, (label, def)) in defs.iter().enumerate() {
        let default_id = if total == 1 {
            format!("service:{}", service.id)
        } else {
            format!("service:{}:{}", service.id, n + 1)
        };
        let check = health_check(errs, label, def, service, node, default_id);
        match ids.entry(check.check_id.clone()) {
            Entry::Occupied(first) => errs.push(
                join(label, "check_id"),
                format!(
                    "check id {:?} is already used by {}",
                    check.check_id,
                    first.get()
                ),
            ),
            Entry::Vacant(slot) => {
                slot.insert(label.clone());
            }
        }
        out.push(check);
    }
    out
}

/// One check registered on its own, with its id decided by the caller; problems are pushed to
/// `errs` with paths relative to the check.
pub(super) fn single_check(
    errs: &mut Errors,
    def: &CheckDefinition,
    service: &AgentService,
    node: &str,
    id: String,
) -> HealthCheck {
    health_check(errs, "", def, service, node, id)
}

/// The check Consul gives a sidecar that has none of its own: it mirrors the parent's health.
pub(super) fn alias_check(
    sidecar: &AgentService,
    parent: &AgentService,
    node: &str,
) -> HealthCheck {
    HealthCheck {
        node: node.to_owned(),
        check_id: format!("service:{}", sidecar.id),
        name: format!("Connect Sidecar Aliasing {}", parent.id),
        // The agent computes the real status as soon as it runs the check.
        status: CheckStatus::Critical,
        service_id: sidecar.id.clone(),
        service_name: sidecar.service.clone(),
        service_tags: sidecar.tags.clone(),
        check_type: Some(CheckType::Alias),
        definition: HealthCheckDefinition {
            alias_service: parent.id.clone(),
            ..HealthCheckDefinition::default()
        },
        ..HealthCheck::default()
    }
}

/// One check; problems are pushed to `errs` under `label` (`check`, `checks[1]`, …).
fn health_check(
    errs: &mut Errors,
    label: &str,
    def: &CheckDefinition,
    service: &AgentService,
    node: &str,
    default_id: String,
) -> HealthCheck {
    let given = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let (http, tcp, grpc, alias) = (
        given(&def.http),
        given(&def.tcp),
        given(&def.grpc),
        given(&def.alias_service),
    );
    let kinds = [
        ("http", http.is_some(), CheckType::Http),
        ("tcp", tcp.is_some(), CheckType::Tcp),
        ("grpc", grpc.is_some(), CheckType::Grpc),
        ("ttl", def.ttl.is_some(), CheckType::Ttl),
        ("alias_service", alias.is_some(), CheckType::Alias),
    ];
    let set: Vec<_> = kinds.iter().filter(|k| k.1).collect();
    let check_type = match set.as_slice() {
        [(_, _, kind)] => Some(*kind),
        _ => {
            let found = if set.is_empty() {
                "none is set".to_owned()
            } else {
                format!(
                    "found {}",
                    set.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
                )
            };
            errs.push(
                label,
                format!(
                    "a check needs exactly one of http, tcp, grpc, ttl, alias_service ({found})"
                ),
            );
            None
        }
    };
    let probe = matches!(
        check_type,
        Some(CheckType::Http | CheckType::Tcp | CheckType::Grpc)
    );

    if let Some(kind) = check_type.filter(|_| probe) {
        match def.interval {
            None => errs.push(
                join(label, "interval"),
                format!("{} checks need an interval (e.g. \"10s\")", type_word(kind)),
            ),
            Some(d) if d.get().is_zero() => {
                errs.push(join(label, "interval"), "interval must be greater than 0")
            }
            Some(_) => {}
        }
    }
    if def.timeout.is_some_and(|d| d.get().is_zero()) {
        errs.push(join(label, "timeout"), "timeout must be greater than 0");
    }
    if def.ttl.is_some_and(|d| d.get().is_zero()) {
        errs.push(join(label, "ttl"), "ttl must be greater than 0");
    }
    if let Some(url) = &http
        && !is_http_url(url)
    {
        errs.push(
            join(label, "http"),
            format!("http check URL {url:?} must start with http:// or https://"),
        );
    }
    if let Some(addr) = &tcp
        && !is_host_port(addr)
    {
        errs.push(
            join(label, "tcp"),
            format!("tcp check address {addr:?} must be host:port with a port in 1–65535"),
        );
    }
    if let Some(target) = &grpc {
        let addr = target
            .split_once('/')
            .map_or(target.as_str(), |(addr, _)| addr);
        if !is_host_port(addr) {
            errs.push(
                join(label, "grpc"),
                format!("grpc check target {target:?} must be host:port or host:port/service, with a port in 1–65535"),
            );
        }
    }
    let status = match def.status.as_deref() {
        None | Some("") => CheckStatus::Critical,
        Some("passing") => CheckStatus::Passing,
        Some("warning") => CheckStatus::Warning,
        Some("critical") => CheckStatus::Critical,
        Some(other) => {
            errs.push(
                join(label, "status"),
                format!("status {other:?} is not one of passing, warning, critical"),
            );
            CheckStatus::Critical
        }
    };

    let timeout = def
        .timeout
        .or_else(|| probe.then_some(GoDuration(DEFAULT_TIMEOUT)));
    let shown = |d: Option<GoDuration>| d.map(|d| d.to_string()).unwrap_or_default();
    HealthCheck {
        node: node.to_owned(),
        check_id: given(&def.check_id).unwrap_or(default_id),
        name: given(&def.name).unwrap_or_else(|| format!("Service '{}' check", service.service)),
        status,
        notes: def.notes.clone().unwrap_or_default(),
        output: String::new(),
        service_id: service.id.clone(),
        service_name: service.service.clone(),
        service_tags: service.tags.clone(),
        check_type,
        interval: shown(def.interval),
        timeout: shown(timeout),
        definition: HealthCheckDefinition {
            method: if http.is_some() {
                given(&def.method).unwrap_or_else(|| "GET".to_owned())
            } else {
                String::new()
            },
            http: http.unwrap_or_default(),
            header: def.header.clone(),
            body: def.body.clone().unwrap_or_default(),
            tls_skip_verify: def.tls_skip_verify,
            tcp: tcp.unwrap_or_default(),
            grpc: grpc.unwrap_or_default(),
            grpc_use_tls: def.grpc_use_tls,
            alias_service: alias.unwrap_or_default(),
            ttl: def.ttl,
            interval: def.interval,
            timeout,
            deregister_critical_service_after: def.deregister_critical_service_after,
        },
        create_index: 0,
        modify_index: 0,
    }
}

fn type_word(kind: CheckType) -> &'static str {
    match kind {
        CheckType::Http => "http",
        CheckType::Tcp => "tcp",
        CheckType::Grpc => "grpc",
        CheckType::Ttl => "ttl",
        CheckType::Alias => "alias",
    }
}

fn is_http_url(url: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        url.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty())
    })
}

/// `host:port` with a port in 1–65535; an IPv6 host must be bracketed (`[::1]:80`).
fn is_host_port(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty() && !host.contains(':') && !host.chars().any(char::is_whitespace)
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}
