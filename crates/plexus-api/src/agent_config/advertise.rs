//! The address a node advertises (others dial its services there), chosen as Consul does, and the
//! tagged addresses that go with it. Pure: the caller passes the interfaces and, for an agent, the
//! source address of its route to the first server.
//!
//! In order, the first that applies:
//!
//! 1. `advertise_addr` (flag or configuration key);
//! 2. a specific `bind_addr` (not `0.0.0.0`/`::`);
//! 3. a server: the specific address its API listener is bound to;
//! 4. an agent: the address of the interface that routes to its first server;
//! 5. the one private IPv4 address (go-sockaddr's `GetPrivateIP`; with several, the one on the
//!    default route's interface, and an error if that does not settle it, as Consul refuses to
//!    choose);
//! 6. an IPv4 address of the default route's interface;
//! 7. `127.0.0.1`: this machine only.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use super::sockaddr::{IfAddr, private_ips};

/// What the choice starts from.
#[derive(Debug, Clone, Default)]
pub struct Inputs<'a> {
    /// `advertise_addr`.
    pub advertise: Option<IpAddr>,
    /// `bind_addr`.
    pub bind: Option<IpAddr>,
    /// A server's API listener address.
    pub listener: Option<IpAddr>,
    /// An agent's route to its first server: (the source address, the server).
    pub route: Option<(IpAddr, String)>,
    /// The machine's interface addresses.
    pub interfaces: &'a [IfAddr],
}

/// The advertised address and why it was chosen (for the start-up log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// The address.
    pub addr: IpAddr,
    /// Why this one, as a phrase ("advertise_addr", "the interface routing to server …").
    pub why: String,
}

/// No address can be chosen without being told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "several private IPv4 addresses ({}) and none is on the default route's interface alone: \
     choose one with --advertise-addr (or advertise_addr/bind_addr in the configuration file)",
    .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
)]
pub struct SeveralPrivate(pub Vec<IpAddr>);

fn specific(ip: Option<IpAddr>) -> Option<IpAddr> {
    ip.filter(|ip| !ip.is_unspecified())
}

/// Chooses the advertised address (see the module docs for the order).
pub fn choose(inputs: &Inputs<'_>) -> Result<Advertised, SeveralPrivate> {
    let chosen = |addr: IpAddr, why: &str| Advertised {
        addr,
        why: why.to_owned(),
    };
    if let Some(ip) = specific(inputs.advertise) {
        return Ok(chosen(ip, "advertise_addr"));
    }
    if let Some(ip) = specific(inputs.bind) {
        return Ok(chosen(ip, "bind_addr"));
    }
    if let Some(ip) = specific(inputs.listener) {
        return Ok(chosen(ip, "the API listener's address"));
    }
    if let Some((ip, server)) = &inputs.route
        && !ip.is_unspecified()
    {
        return Ok(chosen(
            *ip,
            &format!("the interface routing to server {server}"),
        ));
    }
    let private = private_ips(inputs.interfaces);
    let mut addrs: Vec<IpAddr> = private.iter().map(|a| a.addr).collect();
    addrs.dedup();
    match addrs.as_slice() {
        [one] => return Ok(chosen(*one, "the only private IPv4 address")),
        [] => {}
        several => {
            let on_default: Vec<IpAddr> = private
                .iter()
                .filter(|a| a.default_route)
                .map(|a| a.addr)
                .collect();
            return match on_default.as_slice() {
                [one] => Ok(chosen(
                    *one,
                    "the private IPv4 address of the default route's interface",
                )),
                _ => Err(SeveralPrivate(several.to_vec())),
            };
        }
    }
    let public = inputs
        .interfaces
        .iter()
        .find(|a| a.up && a.default_route && a.addr.is_ipv4() && !a.addr.is_loopback());
    if let Some(public) = public {
        return Ok(chosen(public.addr, "the default route's interface"));
    }
    Ok(chosen(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "loopback: no other address (this machine only)",
    ))
}

/// A node's tagged addresses, as Consul lists them: `lan`, `wan` and their `_ipv4`/`_ipv6`
/// forms. `wan` is `lan` unless `advertise_addr_wan` says otherwise.
pub fn node_tagged_addresses(lan: IpAddr, wan: Option<IpAddr>) -> BTreeMap<String, String> {
    let wan = wan.unwrap_or(lan);
    let mut tagged = BTreeMap::new();
    for (tag, ip) in [("lan", lan), ("wan", wan)] {
        tagged.insert(tag.to_owned(), ip.to_string());
        let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
        tagged.insert(format!("{tag}_{family}"), ip.to_string());
    }
    tagged
}

/// True when an agent advertising `advertised` cannot be reached by the servers at `servers`
/// (base URLs or `host:port`): it advertises loopback while a server is not on loopback.
pub fn loopback_mismatch(advertised: IpAddr, servers: &[String]) -> bool {
    advertised.is_loopback() && servers.iter().any(|s| !host_is_loopback(s))
}

fn host_is_loopback(server: &str) -> bool {
    let rest = server
        .split_once("://")
        .map_or(server, |(_, rest)| rest)
        .trim_end_matches('/');
    let host = match rest.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => rest,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn iface(name: &str, addr: &str, default_route: bool) -> IfAddr {
        IfAddr {
            name: name.into(),
            addr: addr.parse().unwrap(),
            prefix_len: 24,
            up: true,
            default_route,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn explicit_settings_come_first_in_consuls_order() {
        let interfaces = [iface("eth0", "10.0.0.5", true)];
        let base = Inputs {
            interfaces: &interfaces,
            route: Some((ip("10.0.0.5"), "10.0.0.2:8500".into())),
            ..Inputs::default()
        };
        let with = |f: &dyn Fn(&mut Inputs)| {
            let mut inputs = base.clone();
            f(&mut inputs);
            choose(&inputs).unwrap()
        };
        assert_eq!(
            with(&|i| i.advertise = Some(ip("192.168.1.9"))).addr,
            ip("192.168.1.9")
        );
        assert_eq!(with(&|i| i.bind = Some(ip("10.0.0.7"))).why, "bind_addr");
        // A wildcard bind says nothing about what to advertise.
        let wildcard = with(&|i| i.bind = Some(ip("0.0.0.0")));
        assert_eq!(wildcard.addr, ip("10.0.0.5"));
        assert!(wildcard.why.contains("routing to server 10.0.0.2:8500"));
        assert_eq!(
            with(&|i| i.listener = Some(ip("127.0.0.1"))).why,
            "the API listener's address"
        );
    }

    #[test]
    fn without_settings_the_private_address_is_chosen_or_refused() {
        let one = [
            iface("lo", "127.0.0.1", false),
            iface("eth0", "10.1.2.3", true),
            iface("eth0", "fe80::1", true),
        ];
        let chosen = choose(&Inputs {
            interfaces: &one,
            ..Inputs::default()
        })
        .unwrap();
        assert_eq!(chosen.addr, ip("10.1.2.3"));
        // Two private addresses: the default route's decides…
        let two = [
            iface("docker0", "172.17.0.1", false),
            iface("eth0", "10.1.2.3", true),
        ];
        let chosen = choose(&Inputs {
            interfaces: &two,
            ..Inputs::default()
        })
        .unwrap();
        assert_eq!(chosen.addr, ip("10.1.2.3"));
        // …and when it cannot, nothing is guessed.
        let undecided = [
            iface("eth1", "172.17.0.1", false),
            iface("eth0", "10.1.2.3", false),
        ];
        let error = choose(&Inputs {
            interfaces: &undecided,
            ..Inputs::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("172.17.0.1"), "{error}");
        assert!(error.to_string().contains("--advertise-addr"), "{error}");
        // No private address: the default route's interface, then loopback.
        let public = [iface("eth0", "192.0.2.2", true)];
        let chosen = choose(&Inputs {
            interfaces: &public,
            ..Inputs::default()
        })
        .unwrap();
        assert_eq!(chosen.addr, ip("192.0.2.2"));
        let alone = [iface("lo", "127.0.0.1", false)];
        assert_eq!(
            choose(&Inputs {
                interfaces: &alone,
                ..Inputs::default()
            })
            .unwrap()
            .addr,
            ip("127.0.0.1")
        );
    }

    #[test]
    fn tagged_addresses_and_loopback_mismatch() {
        let tagged = node_tagged_addresses(ip("10.0.0.5"), None);
        assert_eq!(tagged["lan"], "10.0.0.5");
        assert_eq!(tagged["lan_ipv4"], "10.0.0.5");
        assert_eq!(tagged["wan"], "10.0.0.5");
        assert_eq!(tagged["wan_ipv4"], "10.0.0.5");
        let tagged = node_tagged_addresses(ip("10.0.0.5"), Some(ip("2001:db8::1")));
        assert_eq!(tagged["wan_ipv6"], "2001:db8::1");

        let lo = ip("127.0.0.1");
        assert!(!loopback_mismatch(lo, &["http://127.0.0.1:8500".into()]));
        assert!(!loopback_mismatch(lo, &["localhost:8500".into()]));
        assert!(!loopback_mismatch(lo, &["[::1]:8500".into()]));
        assert!(loopback_mismatch(lo, &["10.0.0.2:8500".into()]));
        assert!(loopback_mismatch(lo, &["https://server.dc1:8501".into()]));
        assert!(!loopback_mismatch(
            ip("10.0.0.3"),
            &["10.0.0.2:8500".into()]
        ));
    }
}
