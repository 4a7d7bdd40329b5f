//! Discovery: what the control plane says this sidecar should do, kept up to date with blocking
//! queries.
//!
//! - [`find_sidecar`]: at start, the `connect-proxy` registration fronting the app.
//! - [`watch_sidecar`]: follows that registration; publishes each valid [`SidecarConfig`].
//! - [`watch_endpoints`]: follows `/v1/health/connect/<upstream>`; publishes an [`EndpointSet`].
//!
//! Registrations are validated here, at the wire boundary: the rest of the proxy sees only
//! [`SidecarConfig`] with parsed socket addresses.

mod chain;
mod endpoints;
mod gateways;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use plexus_api::{AgentService, Indexed, ServiceKind};

pub(crate) use chain::watch_chain;
pub use endpoints::EndpointSet;
#[cfg(test)]
pub(crate) use endpoints::Labels;
pub(crate) use endpoints::watch_endpoints;
pub(crate) use gateways::watch_gateways;
pub(crate) use watch::{BLOCKING_WAIT, find_proxy, find_sidecar, follow, watch_sidecar};

/// Starts following an upstream's endpoints until the token fires; returns the latest set.
pub(crate) type Resolve = std::sync::Arc<
    dyn Fn(
            &str,
            tokio_util::sync::CancellationToken,
        ) -> tokio::sync::watch::Receiver<std::sync::Arc<EndpointSet>>
        + Send
        + Sync,
>;

/// The latest discovery chain of an upstream (`None` until the control plane answered).
pub(crate) type ChainWatch = tokio::sync::watch::Receiver<
    Option<std::sync::Arc<Indexed<plexus_api::config_entry::chain::DiscoveryChain>>>,
>;

/// Starts following an upstream's discovery chain until the token fires.
pub(crate) type ResolveChain =
    std::sync::Arc<dyn Fn(&str, tokio_util::sync::CancellationToken) -> ChainWatch + Send + Sync>;

/// Inbound bind address when the registration's `Address` is empty.
const DEFAULT_INBOUND_IP: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Local app address and upstream bind address when the registration leaves them empty.
const DEFAULT_LOCAL_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A sidecar registration, validated: everything the listeners need, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SidecarConfig {
    /// The sidecar's own service id.
    pub sidecar_id: String,
    /// The app's service id (`Proxy.DestinationServiceID`).
    pub destination: String,
    /// `X-Consul-Index` of the registration this was built from.
    pub revision: u64,
    /// The inbound listener.
    pub inbound: InboundSpec,
    /// One outbound listener per upstream, unique by destination.
    pub upstreams: BTreeMap<String, UpstreamSpec>,
}

impl SidecarConfig {
    /// Whether `other` asks for different listeners. The revision alone moving is not a change:
    /// every write to the store moves it, including this proxy's own acknowledgement, so treating
    /// it as one made each acknowledgement trigger the next (an endless ack loop that kept the
    /// proxy and the control plane busy; found by profiling, see docs/benchmarks.md).
    pub(crate) fn differs_from(&self, other: &Self) -> bool {
        self.sidecar_id != other.sidecar_id
            || self.destination != other.destination
            || self.inbound != other.inbound
            || self.upstreams != other.upstreams
    }
}

/// The inbound listener: accept on `bind`, forward to `local_app`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InboundSpec {
    /// `Address` (default `0.0.0.0`) : `Port`.
    pub bind: SocketAddr,
    /// `Proxy.LocalServiceAddress` (default `127.0.0.1`) : `Proxy.LocalServicePort`.
    pub local_app: SocketAddr,
    /// What the local app speaks: `Proxy.Config.protocol` (default `tcp`).
    pub protocol: Protocol,
    /// True when the registration names the protocol; otherwise the service's discovery chain
    /// (`service-defaults` `Protocol`) decides.
    pub explicit: bool,
}

/// The protocol a service speaks (Consul's `protocol` proxy configuration key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Protocol {
    /// Opaque bytes (the L4 path).
    #[default]
    Tcp,
    /// HTTP/1.1 (the app may also speak h2c to its outbound listener).
    Http,
    /// HTTP/2 without TLS (h2c) to the app.
    Http2,
    /// gRPC: HTTP/2 to the app, errors as gRPC statuses.
    Grpc,
}

impl Protocol {
    /// Parses Consul's spelling; `None` for anything else.
    pub(crate) fn parse(value: &str) -> Option<Self> {
        match value {
            "tcp" => Some(Self::Tcp),
            "http" => Some(Self::Http),
            "http2" => Some(Self::Http2),
            "grpc" => Some(Self::Grpc),
            _ => None,
        }
    }

    /// True for the HTTP-aware protocols.
    pub(crate) fn is_http(self) -> bool {
        self != Self::Tcp
    }

    /// The `protocol` key of an opaque `Config` block (absent: `tcp`).
    fn from_config(
        config: Option<&serde_json::Value>,
        field: &str,
    ) -> Result<Self, RegistrationError> {
        let Some(value) = config.and_then(|config| config.get("protocol")) else {
            return Ok(Self::Tcp);
        };
        value
            .as_str()
            .and_then(|text| Self::parse(&text.to_ascii_lowercase()))
            .ok_or_else(|| RegistrationError::Protocol {
                field: field.to_owned(),
                value: value.to_string(),
            })
    }
}

/// One outbound listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpstreamSpec {
    /// The upstream service name.
    pub destination: String,
    /// `LocalBindAddress` (default `127.0.0.1`) : `LocalBindPort`.
    pub bind: SocketAddr,
    /// What the upstream speaks: the upstream's `Config.protocol` (default `tcp`).
    pub protocol: Protocol,
    /// True when the registration names the protocol (it wins, as in Consul); otherwise the
    /// upstream's discovery chain (`service-defaults` `Protocol`) decides for each new
    /// connection.
    pub explicit: bool,
    /// `Datacenter`: the upstream runs in another datacenter, reached through its mesh
    /// gateways (L4: the bytes are carried, the discovery chain does not apply).
    pub datacenter: Option<String>,
}

/// Why a sidecar registration cannot be used. Each names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// The service is not of kind `connect-proxy` or has no `Proxy` block.
    #[error("Kind/Proxy: not a connect-proxy registration")]
    NotAProxy,
    /// An address field is not an IP address.
    #[error("{field}: {value:?} is not an IP address")]
    Address {
        /// Field path, e.g. `Proxy.Upstreams[0].LocalBindAddress`.
        field: String,
        /// The value found.
        value: String,
    },
    /// A port that must be set is 0.
    #[error("{field}: port must be between 1 and 65535")]
    Port {
        /// Field path.
        field: String,
    },
    /// An upstream has no destination name.
    #[error("{field}: destination name is empty")]
    EmptyDestination {
        /// Field path.
        field: String,
    },
    /// A `protocol` key is not one of `tcp`, `http`, `http2`, `grpc`.
    #[error(
        "{field}: {value} is not a protocol (expected \"tcp\", \"http\", \"http2\" or \"grpc\")"
    )]
    Protocol {
        /// Field path, e.g. `Proxy.Config.protocol`.
        field: String,
        /// The value found (JSON).
        value: String,
    },
    /// Two upstreams name the same destination.
    #[error("{field}: upstream {destination:?} is listed twice")]
    DuplicateUpstream {
        /// Field path of the second one.
        field: String,
        /// The destination.
        destination: String,
    },
}

/// The `connect-proxy` service whose `Proxy.DestinationServiceID` is `app_id` (the first by id when
/// several claim it).
pub(crate) fn pick_sidecar<'a>(
    services: &'a BTreeMap<String, AgentService>,
    app_id: &str,
) -> Option<&'a AgentService> {
    services.values().find(|service| {
        service.kind == ServiceKind::ConnectProxy
            && service
                .proxy
                .as_ref()
                .is_some_and(|proxy| proxy.destination_service_id == app_id)
    })
}

impl SidecarConfig {
    /// Validates a registration as read from `/v1/agent/service/:id`.
    pub(crate) fn from_registration(
        registration: &Indexed<AgentService>,
    ) -> Result<Self, RegistrationError> {
        let service = &registration.value;
        let proxy = match (&service.kind, &service.proxy) {
            (ServiceKind::ConnectProxy, Some(proxy)) => proxy,
            _ => return Err(RegistrationError::NotAProxy),
        };
        let inbound = InboundSpec {
            bind: SocketAddr::new(
                ip_or(&service.address, DEFAULT_INBOUND_IP, "Address")?,
                service.port,
            ),
            local_app: SocketAddr::new(
                ip_or(
                    &proxy.local_service_address,
                    DEFAULT_LOCAL_IP,
                    "Proxy.LocalServiceAddress",
                )?,
                nonzero(proxy.local_service_port, "Proxy.LocalServicePort")?,
            ),
            protocol: Protocol::from_config(proxy.config.as_ref(), "Proxy.Config.protocol")?,
            explicit: proxy
                .config
                .as_ref()
                .is_some_and(|config| config.get("protocol").is_some()),
        };
        let mut upstreams = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (i, upstream) in proxy.upstreams.iter().enumerate() {
            let field = |name: &str| format!("Proxy.Upstreams[{i}].{name}");
            let destination = upstream.destination_name.clone();
            if destination.is_empty() {
                return Err(RegistrationError::EmptyDestination {
                    field: field("DestinationName"),
                });
            }
            if !seen.insert(destination.clone()) {
                return Err(RegistrationError::DuplicateUpstream {
                    field: field("DestinationName"),
                    destination,
                });
            }
            let ip = ip_or(
                &upstream.local_bind_address,
                DEFAULT_LOCAL_IP,
                &field("LocalBindAddress"),
            )?;
            let bind = SocketAddr::new(ip, upstream.local_bind_port);
            let protocol =
                Protocol::from_config(upstream.config.as_ref(), &field("Config.protocol"))?;
            let explicit = upstream
                .config
                .as_ref()
                .is_some_and(|config| config.get("protocol").is_some());
            upstreams.insert(
                destination.clone(),
                UpstreamSpec {
                    destination,
                    bind,
                    protocol,
                    explicit,
                    datacenter: Some(upstream.datacenter.clone()).filter(|dc| !dc.is_empty()),
                },
            );
        }
        Ok(SidecarConfig {
            sidecar_id: service.id.clone(),
            destination: proxy.destination_service_id.clone(),
            revision: registration.index,
            inbound,
            upstreams,
        })
    }
}

fn ip_or(value: &str, default: IpAddr, field: &str) -> Result<IpAddr, RegistrationError> {
    if value.is_empty() {
        return Ok(default);
    }
    value.parse().map_err(|_| RegistrationError::Address {
        field: field.to_owned(),
        value: value.to_owned(),
    })
}

fn nonzero(port: u16, field: &str) -> Result<u16, RegistrationError> {
    if port == 0 {
        return Err(RegistrationError::Port {
            field: field.to_owned(),
        });
    }
    Ok(port)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use plexus_api::{AgentProxy, AgentUpstream};

    /// A `web` sidecar on port 21000 with the given upstreams (`name`, local port).
    pub(crate) fn sidecar(upstreams: &[(&str, u16)]) -> AgentService {
        AgentService {
            kind: ServiceKind::ConnectProxy,
            id: "web-sidecar-proxy".into(),
            service: "web-sidecar-proxy".into(),
            port: 21000,
            proxy: Some(AgentProxy {
                destination_service_name: "web".into(),
                destination_service_id: "web".into(),
                local_service_port: 8080,
                upstreams: upstreams
                    .iter()
                    .map(|(name, port)| AgentUpstream {
                        destination_type: "service".into(),
                        destination_name: (*name).into(),
                        local_bind_port: *port,
                        ..AgentUpstream::default()
                    })
                    .collect(),
                ..AgentProxy::default()
            }),
            ..AgentService::default()
        }
    }

    fn indexed(value: AgentService) -> Indexed<AgentService> {
        Indexed { index: 7, value }
    }

    #[test]
    fn defaults_apply_to_empty_addresses() {
        let config =
            SidecarConfig::from_registration(&indexed(sidecar(&[("echo", 9191)]))).unwrap();
        assert_eq!(config.revision, 7);
        assert_eq!(config.destination, "web");
        assert_eq!(config.inbound.bind, "0.0.0.0:21000".parse().unwrap());
        assert_eq!(config.inbound.local_app, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            config.upstreams["echo"].bind,
            "127.0.0.1:9191".parse().unwrap()
        );
    }

    #[test]
    fn only_a_listener_change_is_a_change_not_the_revision_alone() {
        let config =
            SidecarConfig::from_registration(&indexed(sidecar(&[("echo", 9191)]))).unwrap();
        let later = SidecarConfig::from_registration(&Indexed {
            index: 8,
            value: sidecar(&[("echo", 9191)]),
        })
        .unwrap();
        assert_eq!(later.revision, 8);
        assert!(!config.differs_from(&later));
        let moved = SidecarConfig::from_registration(&indexed(sidecar(&[("echo", 9192)]))).unwrap();
        assert!(config.differs_from(&moved));
        let more =
            SidecarConfig::from_registration(&indexed(sidecar(&[("echo", 9191), ("db", 9300)])))
                .unwrap();
        assert!(config.differs_from(&more));
    }

    #[test]
    fn bad_fields_are_named() {
        let mut service = sidecar(&[("echo", 9191), ("echo", 9192)]);
        let err = SidecarConfig::from_registration(&indexed(service.clone())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Proxy.Upstreams[1].DestinationName: upstream \"echo\" is listed twice"
        );
        if let Some(proxy) = service.proxy.as_mut() {
            proxy.upstreams[0].local_bind_address = "not-an-ip".into();
        }
        let err = SidecarConfig::from_registration(&indexed(service.clone())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Proxy.Upstreams[0].LocalBindAddress: \"not-an-ip\" is not an IP address"
        );
        service.kind = ServiceKind::Typical;
        let err = SidecarConfig::from_registration(&indexed(service)).unwrap_err();
        assert_eq!(err, RegistrationError::NotAProxy);
    }

    #[test]
    fn protocols_come_from_proxy_and_upstream_config_and_bad_ones_are_named() {
        let mut service = sidecar(&[("db", 9000), ("api", 9001)]);
        let proxy = service.proxy.as_mut().unwrap();
        proxy.config = Some(serde_json::json!({"protocol": "grpc"}));
        proxy.upstreams[1].config = Some(serde_json::json!({"protocol": "HTTP"}));
        let config = SidecarConfig::from_registration(&indexed(service.clone())).unwrap();
        assert_eq!(config.inbound.protocol, Protocol::Grpc);
        assert_eq!(config.upstreams["db"].protocol, Protocol::Tcp);
        assert_eq!(config.upstreams["api"].protocol, Protocol::Http);
        // Only a named protocol wins over the discovery chain's.
        assert!(!config.upstreams["db"].explicit && config.upstreams["api"].explicit);

        let proxy = service.proxy.as_mut().unwrap();
        proxy.upstreams[0].config = Some(serde_json::json!({"protocol": "ftp"}));
        let err = SidecarConfig::from_registration(&indexed(service.clone())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Proxy.Upstreams[0].Config.protocol: \"ftp\" is not a protocol (expected \"tcp\", \"http\", \"http2\" or \"grpc\")"
        );
        let proxy = service.proxy.as_mut().unwrap();
        proxy.config = Some(serde_json::json!({"protocol": 2}));
        let err = SidecarConfig::from_registration(&indexed(service)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Proxy.Config.protocol: 2 is not a protocol"),
            "{err}"
        );
    }

    #[test]
    fn picks_the_proxy_fronting_the_app() {
        let mut services = BTreeMap::new();
        let app = AgentService {
            id: "web".into(),
            service: "web".into(),
            ..AgentService::default()
        };
        services.insert("web".to_owned(), app);
        assert!(pick_sidecar(&services, "web").is_none());
        services.insert("web-sidecar-proxy".to_owned(), sidecar(&[]));
        let found = pick_sidecar(&services, "web").map(|s| s.id.as_str());
        assert_eq!(found, Some("web-sidecar-proxy"));
        assert!(pick_sidecar(&services, "api").is_none());
    }
}
