//! Where a new registration's listeners may go on this node: sidecar port assignment and listener
//! clashes. Pure functions over the node's other services; no I/O.

use std::collections::BTreeSet;
use std::net::IpAddr;

use plexus_api::validate::ValidatedService;
use plexus_api::{AgentService, ServiceKind, ServiceRegistration};

/// The instance ids a registration writes: the service's and its sidecar's (if any).
pub(crate) fn registration_ids(reg: &ServiceRegistration) -> (String, Option<String>) {
    let id = match reg.id.as_deref() {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => reg.name.clone(),
    };
    let sidecar = reg
        .connect
        .as_ref()
        .and_then(|c| c.sidecar_service.as_ref())
        .map(|s| match s.id.as_deref() {
            Some(sid) if !sid.is_empty() => sid.to_owned(),
            _ => format!("{id}-sidecar-proxy"),
        });
    (id, sidecar)
}

/// Ids of existing services a registration replaces: the same ids, plus (when it has a sidecar)
/// any proxy registered as the sidecar of the same service under another id.
pub(crate) fn replaced_ids(
    existing: &[AgentService],
    id: &str,
    sidecar_id: Option<&str>,
) -> BTreeSet<String> {
    let mut replaced: BTreeSet<String> = [Some(id), sidecar_id]
        .into_iter()
        .flatten()
        .map(str::to_owned)
        .collect();
    if sidecar_id.is_some() {
        replaced.extend(
            existing
                .iter()
                .filter(|s| is_sidecar_of(s, id))
                .map(|s| s.id.clone()),
        );
    }
    replaced
}

/// True when `service` is a connect-proxy fronting the instance `id`.
pub(crate) fn is_sidecar_of(service: &AgentService, id: &str) -> bool {
    service.kind == ServiceKind::ConnectProxy
        && service
            .proxy
            .as_ref()
            .is_some_and(|p| p.destination_service_id == id)
}

/// Ports the registration itself asks for: the service's port and its sidecar's upstream
/// listeners (so the sidecar is not assigned one of them).
pub(crate) fn own_ports(reg: &ServiceRegistration) -> Vec<u16> {
    let sidecar = reg
        .connect
        .as_ref()
        .and_then(|c| c.sidecar_service.as_ref());
    let proxies = reg
        .proxy
        .iter()
        .chain(sidecar.and_then(|s| s.proxy.as_ref()));
    let upstream_ports = proxies.flat_map(|p| p.upstreams.iter().map(|u| u.local_bind_port));
    std::iter::once(reg.port)
        .chain(upstream_ports)
        .filter_map(|p| p.and_then(|p| u16::try_from(p).ok()))
        .collect()
}

/// The lowest port of [`plexus_api::SIDECAR_PORT_RANGE`] that neither another service (nor
/// upstream listener) on the node nor `reserved` uses and that `host_free` accepts (the host-wide
/// check, [`crate::host_ports`]); `preferred` (the port the same sidecar had before) first when
/// it is free.
pub(crate) fn next_free_port(
    others: &[&AgentService],
    reserved: &[u16],
    preferred: Option<u16>,
    host_free: &mut dyn FnMut(u16) -> bool,
) -> Option<u16> {
    let used: BTreeSet<u16> = others
        .iter()
        .flat_map(|s| {
            let upstreams = s.proxy.iter().flat_map(|p| p.upstreams.iter());
            std::iter::once(s.port).chain(upstreams.map(|u| u.local_bind_port))
        })
        .chain(reserved.iter().copied())
        .collect();
    preferred
        .filter(|p| plexus_api::SIDECAR_PORT_RANGE.contains(p))
        .into_iter()
        .chain(plexus_api::SIDECAR_PORT_RANGE)
        .find(|p| !used.contains(p) && host_free(*p))
}

/// A listener of the new registration that another service on the node already has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Clash {
    /// Field path in the registration.
    pub field: String,
    /// What it clashes with.
    pub message: String,
}

/// The first clash between the validated registration (`new[0]` the service, `new[1]` its
/// sidecar) and `others`: a proxy port another service uses, or an upstream listener
/// (`local_bind_address:local_bind_port`) another proxy already has.
pub(crate) fn find_clash(new: &[ValidatedService], others: &[&AgentService]) -> Option<Clash> {
    for (position, validated) in new.iter().enumerate() {
        let service = &validated.service;
        if service.kind != ServiceKind::ConnectProxy {
            continue;
        }
        let prefix = if position == 0 {
            ""
        } else {
            "connect.sidecar_service."
        };
        // A sidecar must not take its own service's port either.
        let parent = new.first().filter(|_| position > 0).map(|v| &v.service);
        let mut holders = others.iter().copied().chain(parent);
        if let Some(other) = holders.find(|o| o.port == service.port) {
            return Some(Clash {
                field: format!("{prefix}port"),
                message: format!(
                    "port {} of proxy {:?} is already used by service {:?} on this node",
                    service.port, service.id, other.id
                ),
            });
        }
        let upstreams = service.proxy.iter().flat_map(|p| p.upstreams.iter());
        for (i, upstream) in upstreams.enumerate() {
            let taken = others.iter().find_map(|o| {
                let theirs = o.proxy.iter().flat_map(|p| p.upstreams.iter());
                theirs
                    .filter(|u| {
                        u.local_bind_port == upstream.local_bind_port
                            && addresses_overlap(
                                &u.local_bind_address,
                                &upstream.local_bind_address,
                            )
                    })
                    .map(|u| (o.id.as_str(), u.destination_name.as_str()))
                    .next()
            });
            if let Some((proxy, destination)) = taken {
                return Some(Clash {
                    field: format!("{prefix}proxy.upstreams[{i}].local_bind_port"),
                    message: format!(
                        "{}:{} is already the listener of upstream {destination:?} of proxy {proxy:?} on this node",
                        upstream.local_bind_address, upstream.local_bind_port
                    ),
                });
            }
        }
    }
    None
}

/// Two bind addresses overlap when equal or when either is a wildcard (`0.0.0.0`, `::`).
fn addresses_overlap(a: &str, b: &str) -> bool {
    let wildcard = |s: &str| s.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified());
    a == b || wildcard(a) || wildcard(b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use plexus_api::{AgentProxy, AgentUpstream};

    fn service(id: &str, port: u16) -> AgentService {
        AgentService {
            id: id.into(),
            service: id.into(),
            port,
            ..AgentService::default()
        }
    }

    fn proxy(id: &str, port: u16, of: &str, upstreams: &[(&str, u16)]) -> AgentService {
        AgentService {
            kind: ServiceKind::ConnectProxy,
            proxy: Some(AgentProxy {
                destination_service_id: of.into(),
                upstreams: upstreams
                    .iter()
                    .map(|(addr, port)| AgentUpstream {
                        destination_name: "db".into(),
                        local_bind_address: (*addr).into(),
                        local_bind_port: *port,
                        ..AgentUpstream::default()
                    })
                    .collect(),
                ..AgentProxy::default()
            }),
            ..service(id, port)
        }
    }

    fn validated(services: Vec<AgentService>) -> Vec<ValidatedService> {
        services
            .into_iter()
            .map(|service| ValidatedService {
                service,
                checks: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn lowest_free_port_skips_used_ones_and_prefers_previous() {
        let a = service("a", 21000);
        let b = proxy("b", 21002, "x", &[("127.0.0.1", 21001)]);
        let others = [&a, &b];
        assert_eq!(
            next_free_port(&others, &[], None, &mut |_| true),
            Some(21003)
        );
        assert_eq!(
            next_free_port(&others, &[21003, 80], None, &mut |_| true),
            Some(21004)
        );
        assert_eq!(
            next_free_port(&others, &[], Some(21100), &mut |_| true),
            Some(21100)
        );
        assert_eq!(
            next_free_port(&others, &[21100], Some(21100), &mut |_| true),
            Some(21003)
        );
        assert_eq!(
            next_free_port(&others, &[], Some(21000), &mut |_| true),
            Some(21003)
        );
        assert_eq!(
            next_free_port(&others, &[], Some(8080), &mut |_| true),
            Some(21003)
        );
        let all: Vec<AgentService> = plexus_api::SIDECAR_PORT_RANGE
            .map(|p| service(&p.to_string(), p))
            .collect();
        let refs: Vec<&AgentService> = all.iter().collect();
        assert_eq!(next_free_port(&refs, &[], None, &mut |_| true), None);
        // Ports the host check refuses are skipped.
        assert_eq!(
            next_free_port(&others, &[], None, &mut |p| p > 21004),
            Some(21005)
        );
    }

    #[test]
    fn own_ports_are_the_service_port_and_upstream_listeners() {
        let reg: ServiceRegistration = serde_json::from_value(serde_json::json!({
            "Name": "web", "Port": 21000,
            "Connect": {"SidecarService": {"Proxy": {"Upstreams": [
                {"DestinationName": "db", "LocalBindPort": 21001}
            ]}}}
        }))
        .unwrap();
        assert_eq!(own_ports(&reg), [21000, 21001]);
    }

    #[test]
    fn replaced_ids_include_old_sidecar_only_when_a_sidecar_is_registered() {
        let existing = vec![service("web", 80), proxy("old-proxy", 21000, "web", &[])];
        let with = replaced_ids(&existing, "web", Some("web-sidecar-proxy"));
        assert_eq!(
            with.into_iter().collect::<Vec<_>>(),
            ["old-proxy", "web", "web-sidecar-proxy"]
        );
        let without = replaced_ids(&existing, "web", None);
        assert_eq!(without.into_iter().collect::<Vec<_>>(), ["web"]);
    }

    #[test]
    fn upstream_listener_clash_names_the_field() {
        let theirs = proxy("api-sidecar-proxy", 21000, "api", &[("127.0.0.1", 9191)]);
        let new = validated(vec![
            service("web", 80),
            proxy("web-sidecar-proxy", 21001, "web", &[("127.0.0.1", 9191)]),
        ]);
        let clash = find_clash(&new, &[&theirs]).unwrap();
        assert_eq!(
            clash.field,
            "connect.sidecar_service.proxy.upstreams[0].local_bind_port"
        );
        assert!(clash.message.contains("api-sidecar-proxy"), "{clash:?}");

        let other_address = proxy("w", 21001, "web", &[("127.0.0.2", 9191)]);
        let new = validated(vec![service("web", 80), other_address]);
        assert_eq!(find_clash(&new, &[&theirs]), None);

        let wildcard = proxy("w", 21001, "web", &[("0.0.0.0", 9191)]);
        let new = validated(vec![service("web", 80), wildcard]);
        assert!(find_clash(&new, &[&theirs]).is_some());
    }

    #[test]
    fn proxy_port_clash_and_hand_registered_proxy_fields() {
        let app = service("app", 21005);
        let new = validated(vec![
            service("web", 80),
            proxy("web-sidecar-proxy", 21005, "web", &[]),
        ]);
        let clash = find_clash(&new, &[&app]).unwrap();
        assert_eq!(clash.field, "connect.sidecar_service.port");

        let own = validated(vec![
            service("web", 21007),
            proxy("web-sidecar-proxy", 21007, "web", &[]),
        ]);
        assert_eq!(
            find_clash(&own, &[]).unwrap().field,
            "connect.sidecar_service.port"
        );

        let hand = validated(vec![proxy("p", 21005, "web", &[])]);
        assert_eq!(find_clash(&hand, &[&app]).unwrap().field, "port");

        // Plain services may share ports (several instances of one app).
        let plain = validated(vec![service("web2", 21005)]);
        assert_eq!(find_clash(&plain, &[&app]), None);
    }
}
