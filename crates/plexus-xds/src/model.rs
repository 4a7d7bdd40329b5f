//! What the translation reads: a proxy's registration (validated here, at the wire boundary),
//! the endpoints of the services it reaches, its certificates, and the inputs gathered for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use plexus_api::client::IntentionSet;
use plexus_api::config_entry::chain::{DiscoveryChain, Protocol};
use plexus_api::connect::CaRoots;
use plexus_api::{AgentService, CheckStatus, ServiceEntry, ServiceKind};

/// Inbound bind address when the registration's `Address` is empty (Consul's).
const DEFAULT_INBOUND_IP: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Local app address and upstream bind address when the registration leaves them empty.
const DEFAULT_LOCAL_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A `connect-proxy` registration, validated: everything the translation needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySpec {
    /// The proxy's own service id (Envoy's node id).
    pub id: String,
    /// The service it fronts (`Proxy.DestinationServiceName`): its identity.
    pub service: String,
    /// The public (inbound) listener: `Address` (default `0.0.0.0`) : `Port`.
    pub inbound: SocketAddr,
    /// The local app: `Proxy.LocalServiceAddress` (default `127.0.0.1`) : `LocalServicePort`.
    pub local_app: SocketAddr,
    /// `Proxy.Config.protocol`; `None`: the service's own `service-defaults` decide.
    pub protocol: Option<Protocol>,
    /// One outbound listener per upstream, sorted by destination, unique.
    pub upstreams: Vec<UpstreamSpec>,
    /// `Proxy.Config.envoy_prometheus_bind_addr`: where Envoy serves `/metrics` (bootstrap).
    pub prometheus_bind: Option<SocketAddr>,
}

/// One outbound listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// The upstream service name.
    pub destination: String,
    /// `LocalBindAddress` (default `127.0.0.1`) : `LocalBindPort`.
    pub bind: SocketAddr,
    /// The upstream's `Config.protocol`; `None`: its discovery chain decides.
    pub protocol: Option<Protocol>,
}

/// Why a registration cannot be served over xDS. Each names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// The service is not of kind `connect-proxy` or has no `Proxy` block.
    #[error("Kind/Proxy: {id:?} is not a connect-proxy registration")]
    NotAProxy {
        /// The service id.
        id: String,
    },
    /// An address field is not an IP address.
    #[error("{field}: {value:?} is not an IP address")]
    Address {
        /// Field path.
        field: String,
        /// The value found.
        value: String,
    },
    /// An address field is not `ip:port`.
    #[error("{field}: {value} is not an ip:port address")]
    SocketAddress {
        /// Field path.
        field: String,
        /// The value found (JSON).
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
    /// Two upstreams name the same destination.
    #[error("{field}: upstream {destination:?} is listed twice")]
    DuplicateUpstream {
        /// Field path of the second one.
        field: String,
        /// The destination.
        destination: String,
    },
    /// A `protocol` key is not one of `tcp`, `http`, `http2`, `grpc`.
    #[error(
        "{field}: {value} is not a protocol (expected \"tcp\", \"http\", \"http2\" or \"grpc\")"
    )]
    Protocol {
        /// Field path.
        field: String,
        /// The value found (JSON).
        value: String,
    },
}

impl ProxySpec {
    /// Validates a registration as `/v1/agent/services` shows it.
    pub fn from_service(service: &AgentService) -> Result<Self, RegistrationError> {
        let proxy = match (&service.kind, &service.proxy) {
            (ServiceKind::ConnectProxy, Some(proxy)) => proxy,
            _ => {
                return Err(RegistrationError::NotAProxy {
                    id: service.id.clone(),
                });
            }
        };
        let inbound = SocketAddr::new(
            ip_or(&service.address, DEFAULT_INBOUND_IP, "Address")?,
            nonzero(service.port, "Port")?,
        );
        let local_app = SocketAddr::new(
            ip_or(
                &proxy.local_service_address,
                DEFAULT_LOCAL_IP,
                "Proxy.LocalServiceAddress",
            )?,
            nonzero(proxy.local_service_port, "Proxy.LocalServicePort")?,
        );
        let protocol = protocol_of(proxy.config.as_ref(), "Proxy.Config.protocol")?;
        let prometheus_bind = match proxy
            .config
            .as_ref()
            .and_then(|c| c.get("envoy_prometheus_bind_addr"))
        {
            None => None,
            Some(value) => Some(
                value
                    .as_str()
                    .and_then(|text| text.parse::<SocketAddr>().ok())
                    .ok_or_else(|| RegistrationError::SocketAddress {
                        field: "Proxy.Config.envoy_prometheus_bind_addr".to_owned(),
                        value: value.to_string(),
                    })?,
            ),
        };
        let mut upstreams = Vec::with_capacity(proxy.upstreams.len());
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
            let port = nonzero(upstream.local_bind_port, &field("LocalBindPort"))?;
            upstreams.push(UpstreamSpec {
                destination,
                bind: SocketAddr::new(ip, port),
                protocol: protocol_of(upstream.config.as_ref(), &field("Config.protocol"))?,
            });
        }
        upstreams.sort_by(|a, b| a.destination.cmp(&b.destination));
        Ok(Self {
            id: service.id.clone(),
            service: proxy.destination_service_name.clone(),
            inbound,
            local_app,
            protocol,
            upstreams,
            prometheus_bind,
        })
    }
}

fn protocol_of(
    config: Option<&serde_json::Value>,
    field: &str,
) -> Result<Option<Protocol>, RegistrationError> {
    let Some(value) = config.and_then(|config| config.get("protocol")) else {
        return Ok(None);
    };
    value
        .as_str()
        .and_then(Protocol::parse)
        .map(Some)
        .ok_or_else(|| RegistrationError::Protocol {
            field: field.to_owned(),
            value: value.to_string(),
        })
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

/// One passing instance of a service, reached through its sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The sidecar's public address.
    pub addr: SocketAddr,
    /// Tags (a sidecar inherits its app's), for subset filters.
    pub tags: Vec<String>,
    /// Meta (inherited likewise).
    pub meta: BTreeMap<String, String>,
}

/// Passing rows of `/v1/health/connect/:service` with a usable address, sorted by address.
pub fn endpoints_from(entries: &[ServiceEntry]) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = entries
        .iter()
        .filter(|entry| entry.aggregated_status() == CheckStatus::Passing)
        .filter(|entry| entry.service.port != 0)
        .filter_map(|entry| {
            let ip: IpAddr = entry.dial_address().parse().ok()?;
            Some(Endpoint {
                addr: SocketAddr::new(ip, entry.service.port),
                tags: entry.service.tags.clone(),
                meta: entry.service.meta.clone(),
            })
        })
        .collect();
    out.sort_by_key(|e| e.addr);
    out.dedup_by_key(|e| e.addr);
    out
}

/// A leaf certificate and its key, as Envoy gets them over SDS.
#[derive(Clone, PartialEq)]
pub struct Leaf {
    /// The leaf (and, after a root rotation, the cross-signed certificate), PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM. Never logged: `Debug` redacts it.
    pub key_pem: String,
    /// The SPIFFE id it carries.
    pub spiffe_id: String,
    /// The root that signed it.
    pub root_id: String,
    /// When it was received (Unix seconds).
    pub issued: f64,
    /// When it expires (Unix seconds).
    pub not_after: f64,
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaf")
            .field("spiffe_id", &self.spiffe_id)
            .field("root_id", &self.root_id)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Everything one proxy's configuration is computed from.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// This datacenter (part of SPIFFE ids).
    pub datacenter: String,
    /// The proxy's registration.
    pub proxy: ProxySpec,
    /// The CA's roots (trust domain and every trusted root).
    pub roots: Arc<CaRoots>,
    /// The proxy's service's leaf.
    pub leaf: Arc<Leaf>,
    /// The proxy's own service's chain (its protocol, when the registration names none).
    pub own_chain: Arc<DiscoveryChain>,
    /// Intentions whose destination matches the proxy's service, with the default policy.
    pub intentions: Arc<IntentionSet>,
    /// Each upstream's compiled chain, by upstream destination.
    pub chains: BTreeMap<String, Arc<DiscoveryChain>>,
    /// Passing endpoints of every service a chain reaches, by service name.
    pub endpoints: BTreeMap<String, Arc<Vec<Endpoint>>>,
}

impl Inputs {
    /// The inbound protocol: the registration's, else the service's `service-defaults`.
    pub fn inbound_protocol(&self) -> Protocol {
        self.proxy.protocol.unwrap_or(self.own_chain.protocol)
    }

    /// An upstream's protocol: the registration's, else its chain's.
    pub fn upstream_protocol(&self, upstream: &UpstreamSpec) -> Protocol {
        upstream.protocol.unwrap_or_else(|| {
            self.chains
                .get(&upstream.destination)
                .map_or(Protocol::Tcp, |chain| chain.protocol)
        })
    }
}

/// The services whose endpoints the chains of `chains` reach (targets, failovers, mirrors).
pub fn services_reached<'a>(
    chains: impl IntoIterator<Item = &'a DiscoveryChain>,
) -> BTreeSet<String> {
    let mut services = BTreeSet::new();
    for chain in chains {
        services.insert(chain.service.clone());
        services.extend(chain.targets.values().map(|t| t.service.clone()));
        if let Some(mirror) = &chain.policy.mirror {
            services.insert(mirror.service.clone());
        }
    }
    services
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use plexus_api::{AgentProxy, AgentUpstream};

    /// A `web` proxy on port 21000 in front of 127.0.0.1:8080 with the given upstreams.
    pub(crate) fn proxy_service(upstreams: &[(&str, u16)]) -> AgentService {
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

    #[test]
    fn defaults_apply_and_upstreams_are_sorted() {
        let spec = ProxySpec::from_service(&proxy_service(&[("zed", 9002), ("echo", 9191)]))
            .expect("valid");
        assert_eq!(spec.inbound, "0.0.0.0:21000".parse().expect("addr"));
        assert_eq!(spec.local_app, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(spec.upstreams[0].destination, "echo");
        assert_eq!(spec.upstreams[1].bind.port(), 9002);
        assert_eq!(spec.protocol, None);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut service = proxy_service(&[("echo", 9191), ("echo", 9192)]);
        let err = ProxySpec::from_service(&service).expect_err("duplicate");
        assert_eq!(
            err.to_string(),
            "Proxy.Upstreams[1].DestinationName: upstream \"echo\" is listed twice"
        );
        let proxy = service.proxy.as_mut().expect("proxy");
        proxy.upstreams.pop();
        proxy.upstreams[0].local_bind_port = 0;
        let err = ProxySpec::from_service(&service).expect_err("port");
        assert_eq!(
            err.to_string(),
            "Proxy.Upstreams[0].LocalBindPort: port must be between 1 and 65535"
        );
        let proxy = service.proxy.as_mut().expect("proxy");
        proxy.upstreams[0].local_bind_port = 9191;
        proxy.config = Some(serde_json::json!({"protocol": "ftp"}));
        let err = ProxySpec::from_service(&service).expect_err("protocol");
        assert!(
            err.to_string()
                .starts_with("Proxy.Config.protocol: \"ftp\"")
        );
        let proxy = service.proxy.as_mut().expect("proxy");
        proxy.config = Some(serde_json::json!({"envoy_prometheus_bind_addr": "nowhere"}));
        let err = ProxySpec::from_service(&service).expect_err("prometheus");
        assert_eq!(
            err.to_string(),
            "Proxy.Config.envoy_prometheus_bind_addr: \"nowhere\" is not an ip:port address"
        );
        service.kind = ServiceKind::Typical;
        let err = ProxySpec::from_service(&service).expect_err("kind");
        assert!(matches!(err, RegistrationError::NotAProxy { .. }));
    }

    #[test]
    fn protocol_and_prometheus_come_from_config() {
        let mut service = proxy_service(&[("api", 9001)]);
        let proxy = service.proxy.as_mut().expect("proxy");
        proxy.config = Some(serde_json::json!({
            "protocol": "grpc",
            "envoy_prometheus_bind_addr": "127.0.0.1:9102"
        }));
        proxy.upstreams[0].config = Some(serde_json::json!({"protocol": "http"}));
        let spec = ProxySpec::from_service(&service).expect("valid");
        assert_eq!(spec.protocol, Some(Protocol::Grpc));
        assert_eq!(spec.upstreams[0].protocol, Some(Protocol::Http));
        assert_eq!(
            spec.prometheus_bind,
            Some("127.0.0.1:9102".parse().expect("addr"))
        );
    }

    #[test]
    fn only_passing_endpoints_with_addresses() {
        let entry = |addr: &str, port: u16, status: CheckStatus| ServiceEntry {
            node: plexus_api::Node {
                address: "127.0.0.1".into(),
                ..Default::default()
            },
            service: AgentService {
                address: addr.into(),
                port,
                ..Default::default()
            },
            checks: vec![plexus_api::HealthCheck {
                status,
                ..Default::default()
            }],
        };
        let endpoints = endpoints_from(&[
            entry("", 21001, CheckStatus::Passing),
            entry("10.0.0.1", 21000, CheckStatus::Passing),
            entry("", 21002, CheckStatus::Critical),
            entry("", 21003, CheckStatus::Warning),
            entry("host.example", 21004, CheckStatus::Passing),
            entry("", 0, CheckStatus::Passing),
        ]);
        let addrs: Vec<String> = endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:21000", "127.0.0.1:21001"]);
    }
}
