//! Consul's address settings for `plexus agent` and `plexus server`: `--bind-addr`,
//! `--advertise-addr` (`--address` too), `--advertise-addr-wan`, `--client-addr`, and the same
//! keys in the configuration file (a flag wins). Each takes an IP address or a go-sockaddr
//! template (`{{ GetPrivateIP }}`). The advertised address is chosen by
//! [`plexus_api::agent_config::advertise::choose`]; this module gathers what it needs (the
//! interfaces, an agent's route to its first server) and checks the flags.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};

use plexus_api::agent_config::advertise::{self, Advertised, Inputs};
use plexus_api::agent_config::sockaddr::{IfAddr, system_interfaces};
use plexus_api::agent_config::{AgentConfig, resolve_address};
use tracing::{info, warn};

/// The port servers are reached at when `--server` names a host only.
pub const DEFAULT_SERVER_PORT: u16 = 8500;

/// The address flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AddressArgs {
    /// `bind_addr`: the address this node's listeners for other hosts bind to (a server's API;
    /// default `0.0.0.0`); a specific one is also what the node advertises. An IP or a
    /// go-sockaddr template.
    #[arg(long = "bind-addr", value_name = "IP")]
    pub bind_addr: Option<String>,
    /// `advertise_addr`: the address other hosts reach this node (and its services and sidecars)
    /// at. Default: a specific --bind-addr, else the interface that routes to the servers (an
    /// agent), else the one private IPv4 address (Consul's GetPrivateIP).
    #[arg(long = "advertise-addr", visible_alias = "address", value_name = "IP")]
    pub advertise_addr: Option<String>,
    /// `advertise_addr_wan`: the node's `wan` tagged address (default: the advertised one).
    #[arg(long = "advertise-addr-wan", value_name = "IP")]
    pub advertise_addr_wan: Option<String>,
    /// `client_addr`: the address the HTTP(S) API listens on, when --http-addr does not say.
    #[arg(long = "client-addr", value_name = "IP")]
    pub client_addr: Option<String>,
}

/// Who the node is, for the choice of its address.
#[derive(Debug, Clone, Copy)]
pub enum Role<'a> {
    /// A server whose API listener is bound to this address.
    Server {
        /// The listener's bound IP.
        listener: IpAddr,
    },
    /// An agent talking to these servers (base URLs).
    Agent {
        /// Its servers.
        servers: &'a [String],
    },
}

/// This node's addresses.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// What the node advertises, and why.
    pub advertised: Advertised,
    /// `advertise_addr_wan`, when set.
    pub wan: Option<IpAddr>,
}

impl Addresses {
    /// The node's `TaggedAddresses` (`lan`, `wan`, and their `_ipv4`/`_ipv6` forms).
    pub fn tagged(&self) -> BTreeMap<String, String> {
        advertise::node_tagged_addresses(self.advertised.addr, self.wan)
    }
}

/// Flags and file settings that are not addresses, named (exit 64).
pub fn settings(args: &AddressArgs, config: &AgentConfig) -> Result<Settings, String> {
    let mut interfaces = interfaces_once();
    let mut flag = |name: &str, value: &Option<String>| -> Result<Option<IpAddr>, String> {
        value
            .as_deref()
            .map(|text| {
                resolve_address(text, &mut interfaces)
                    .map_err(|message| format!("{name}: {message}"))
            })
            .transpose()
    };
    Ok(Settings {
        bind: flag("--bind-addr", &args.bind_addr)?.or(config.bind_addr),
        advertise: flag("--advertise-addr", &args.advertise_addr)?.or(config.advertise_addr),
        wan: flag("--advertise-addr-wan", &args.advertise_addr_wan)?.or(config.advertise_addr_wan),
        client: flag("--client-addr", &args.client_addr)?.or(config.client_addr),
    })
}

/// The address settings, flags over file, before the advertised address is chosen.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// `bind_addr`.
    pub bind: Option<IpAddr>,
    /// `advertise_addr`.
    pub advertise: Option<IpAddr>,
    /// `advertise_addr_wan`.
    pub wan: Option<IpAddr>,
    /// `client_addr`.
    pub client: Option<IpAddr>,
}

impl Settings {
    /// Chooses the advertised address for `role` and logs it (with a warning when an agent
    /// advertises loopback to servers that are not on loopback: their other hosts could not
    /// reach its services).
    pub fn resolve(&self, role: Role<'_>) -> Result<Addresses, String> {
        let (listener, route) = match role {
            Role::Server { listener } => (Some(listener), None),
            Role::Agent { servers } => (None, servers.first().and_then(|s| route_to(s))),
        };
        let needs_interfaces = [self.advertise, self.bind, listener, route]
            .iter()
            .all(|ip| ip.is_none_or(|ip| ip.is_unspecified()));
        let interfaces = if needs_interfaces {
            system_interfaces().unwrap_or_else(|error| {
                warn!(%error, "cannot list network interfaces");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let first = match role {
            Role::Agent { servers } => servers.first().cloned().unwrap_or_default(),
            Role::Server { .. } => String::new(),
        };
        let advertised = advertise::choose(&Inputs {
            advertise: self.advertise,
            bind: self.bind,
            listener,
            route: route.map(|ip| (ip, first)),
            interfaces: &interfaces,
        })
        .map_err(|e| e.to_string())?;
        info!(address = %advertised.addr, why = %advertised.why, "advertising this node's address");
        if let Role::Agent { servers } = role
            && advertise::loopback_mismatch(advertised.addr, servers)
        {
            warn!(
                address = %advertised.addr,
                servers = %servers.join(","),
                "advertising a loopback address while the servers are not on loopback: services on this node cannot be reached from other hosts; set --advertise-addr"
            );
        }
        Ok(Addresses {
            advertised,
            wan: self.wan,
        })
    }
}

/// The system's interfaces, listed once and only if a template needs them.
fn interfaces_once() -> impl FnMut() -> Result<Vec<IfAddr>, String> {
    let mut cached: Option<Vec<IfAddr>> = None;
    move || {
        if let Some(list) = &cached {
            return Ok(list.clone());
        }
        let list = system_interfaces().map_err(|e| e.to_string())?;
        cached = Some(list.clone());
        Ok(list)
    }
}

/// The source address of this machine's route to `server` (a base URL or `host:port`): the
/// address of the interface that reaches it. No packet is sent (a UDP socket is connected, not
/// used).
fn route_to(server: &str) -> Option<IpAddr> {
    let rest = server
        .split_once("://")
        .map_or(server, |(_, rest)| rest)
        .trim_end_matches('/');
    let target: SocketAddr = rest.to_socket_addrs().ok()?.next()?;
    let local: SocketAddr = if target.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(local).ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// `--server host` means `host:8500`; addresses with a port or a scheme are kept.
pub fn with_default_port(server: &str) -> String {
    let server = server.trim();
    if server.contains("://") {
        return server.to_owned();
    }
    if let Ok(ip) = server.parse::<IpAddr>() {
        return SocketAddr::new(ip, DEFAULT_SERVER_PORT).to_string();
    }
    let bracketed_v6 = server.starts_with('[') && server.ends_with(']');
    if bracketed_v6 || !server.contains(':') {
        return format!("{server}:{DEFAULT_SERVER_PORT}");
    }
    server.to_owned()
}

/// `addr` (`ip:port`) with its IP replaced by `ip` (for `client_addr`/`bind_addr` when the
/// listener flag was not given); unparsable addresses are kept for the bind to report.
pub fn with_ip(addr: &str, ip: IpAddr) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(old) => SocketAddr::new(ip, old.port()).to_string(),
        Err(_) => addr.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_without_a_port_get_8500() {
        assert_eq!(with_default_port("10.0.0.2"), "10.0.0.2:8500");
        assert_eq!(with_default_port("server-1"), "server-1:8500");
        assert_eq!(with_default_port("10.0.0.2:8600"), "10.0.0.2:8600");
        assert_eq!(with_default_port("https://s:8501"), "https://s:8501");
        assert_eq!(with_default_port("::1"), "[::1]:8500");
        assert_eq!(with_default_port("[::1]"), "[::1]:8500");
    }

    #[test]
    fn listener_addresses_take_a_new_ip() {
        let ip = IpAddr::from([0, 0, 0, 0]);
        assert_eq!(with_ip("127.0.0.1:8500", ip), "0.0.0.0:8500");
        assert_eq!(with_ip("nonsense", ip), "nonsense");
    }

    #[test]
    fn bad_flags_are_named() {
        let args = AddressArgs {
            advertise_addr: Some("not-an-ip".into()),
            ..AddressArgs::default()
        };
        let error = settings(&args, &AgentConfig::default()).unwrap_err();
        assert!(error.starts_with("--advertise-addr: "), "{error}");
        assert!(error.contains("not an IP address"), "{error}");
    }

    #[test]
    fn the_route_to_a_loopback_server_starts_on_loopback() {
        let route = route_to("http://127.0.0.1:8500");
        assert_eq!(route, Some(IpAddr::from([127, 0, 0, 1])));
        assert!(route_to("no-such-host.invalid:8500").is_none());
    }
}
