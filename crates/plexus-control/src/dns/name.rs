//! What a query name asks for: Consul's names under the DNS domain, parsed without I/O.
//!
//! ```text
//! [TAG.]NAME.service[.DC].DOMAIN      instances of NAME (carrying TAG)
//! _NAME._TAG.service[.DC].DOMAIN      RFC 2782 form; `_tcp` means any tag
//! NAME.connect[.DC].DOMAIN            the mesh entry points (sidecars) of NAME
//! NODE.node[.DC].DOMAIN               a node's address
//! NAME.query[.DC].DOMAIN              a prepared query's answer (by name or ID)
//!
//! Under another datacenter's label only services and sidecars exist ([`Lookup::Remote`]).
//! HEX.addr[.DC].DOMAIN                the address written in hex (SRV targets of instances
//!                                     whose address differs from their node's)
//! DOMAIN                              the zone apex (SOA, NS)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The meaning of a query name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The domain itself.
    Apex,
    /// Instances of a service (`connect`: its sidecars and mesh-native instances instead).
    Service {
        /// The service name.
        name: String,
        /// Only instances carrying this tag.
        tag: Option<String>,
        /// `NAME.connect.DOMAIN`.
        connect: bool,
    },
    /// A prepared query, by name or ID.
    Query {
        /// Its name or ID.
        name: String,
    },
    /// A node.
    Node {
        /// The node name.
        name: String,
    },
    /// An address spelled in hex.
    Addr(IpAddr),
    /// Instances of a service (or its sidecars) in another datacenter.
    Remote {
        /// The datacenter's label.
        datacenter: String,
        /// The service name.
        name: String,
        /// Only instances carrying this tag.
        tag: Option<String>,
        /// `NAME.connect.DC.DOMAIN`.
        connect: bool,
    },
    /// A name under the domain that does not follow any of the forms above, or a datacenter
    /// this server does not serve: NXDOMAIN.
    Unknown,
    /// A name outside the domain: for the recursors, if any.
    Outside,
}

/// Parses `labels` (the query name's labels, lowercase, left to right) against `domain` (the
/// domain's labels, lowercase) for a server in `datacenter`.
pub fn parse(labels: &[String], domain: &[String], datacenter: &str) -> Lookup {
    let Some(inner_len) = labels.len().checked_sub(domain.len()) else {
        return Lookup::Outside;
    };
    if labels[inner_len..] != *domain {
        return Lookup::Outside;
    }
    let inner = &labels[..inner_len];
    let Some(last) = inner.last() else {
        return Lookup::Apex;
    };
    let (kind, rest) = if is_kind(last) {
        (last.as_str(), &inner[..inner.len() - 1])
    } else if inner.len() >= 2 && is_kind(&inner[inner.len() - 2]) {
        let (kind, rest) = (inner[inner.len() - 2].as_str(), &inner[..inner.len() - 2]);
        if last != datacenter {
            // Another datacenter: its services and sidecars (answered through it), nothing else.
            return match (kind, parse_kind(kind, rest)) {
                ("service" | "connect", Lookup::Service { name, tag, connect })
                    if is_datacenter(last) =>
                {
                    Lookup::Remote {
                        datacenter: last.clone(),
                        name,
                        tag,
                        connect,
                    }
                }
                _ => Lookup::Unknown,
            };
        }
        (kind, rest)
    } else {
        return Lookup::Unknown;
    };
    parse_kind(kind, rest)
}

/// What the labels before `kind` ask for.
fn parse_kind(kind: &str, rest: &[String]) -> Lookup {
    match (kind, rest) {
        ("service", [name]) => service(name, None, false),
        ("service", [first, second]) => match (first.strip_prefix('_'), second.strip_prefix('_')) {
            (Some(name), Some(tag)) => service(name, (tag != "tcp").then_some(tag), false),
            _ => service(second, Some(first), false),
        },
        ("connect", [name]) => service(name, None, true),
        ("node", [name]) if !name.is_empty() => Lookup::Node { name: name.clone() },
        ("query", [name]) if !name.is_empty() => Lookup::Query { name: name.clone() },
        ("addr", [hex]) => decode_addr(hex).map_or(Lookup::Unknown, Lookup::Addr),
        _ => Lookup::Unknown,
    }
}

/// A datacenter name (Plexus's rule: letters, digits, `-` and `_`).
fn is_datacenter(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 128
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

fn is_kind(label: &str) -> bool {
    matches!(label, "service" | "connect" | "node" | "addr" | "query")
}

fn service(name: &str, tag: Option<&str>, connect: bool) -> Lookup {
    if name.is_empty() || tag.is_some_and(str::is_empty) {
        return Lookup::Unknown;
    }
    Lookup::Service {
        name: name.to_owned(),
        tag: tag.map(str::to_owned),
        connect,
    }
}

/// The `addr` label of `ip`: 8 hex digits for IPv4, 32 for IPv6 (Consul's form).
pub fn encode_addr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

fn decode_addr(hex: &str) -> Option<IpAddr> {
    match hex.len() {
        8 => u32::from_str_radix(hex, 16)
            .ok()
            .map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        32 => u128::from_str_radix(hex, 16)
            .ok()
            .map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Lookup {
        let labels: Vec<String> = name.split('.').map(str::to_owned).collect();
        parse(&labels, &["consul".to_owned()], "dc1")
    }

    fn svc(name: &str, tag: Option<&str>, connect: bool) -> Lookup {
        Lookup::Service {
            name: name.into(),
            tag: tag.map(Into::into),
            connect,
        }
    }

    #[test]
    fn consul_names_parse() {
        assert_eq!(lookup("web.service.consul"), svc("web", None, false));
        assert_eq!(
            lookup("v1.web.service.consul"),
            svc("web", Some("v1"), false)
        );
        assert_eq!(lookup("web.service.dc1.consul"), svc("web", None, false));
        assert_eq!(lookup("_web._tcp.service.consul"), svc("web", None, false));
        assert_eq!(
            lookup("_web._v2.service.dc1.consul"),
            svc("web", Some("v2"), false)
        );
        assert_eq!(lookup("web.connect.consul"), svc("web", None, true));
        assert_eq!(lookup("n1.node.consul"), Lookup::Node { name: "n1".into() });
        assert_eq!(
            lookup("billing.query.dc1.consul"),
            Lookup::Query {
                name: "billing".into()
            }
        );
        assert_eq!(
            lookup("7f000001.addr.dc1.consul"),
            Lookup::Addr("127.0.0.1".parse().unwrap())
        );
        assert_eq!(lookup("consul"), Lookup::Apex);
    }

    #[test]
    fn other_datacenters_services_are_remote_and_nothing_else_of_theirs() {
        let remote = |name: &str, tag: Option<&str>, connect: bool| Lookup::Remote {
            datacenter: "dc2".into(),
            name: name.into(),
            tag: tag.map(Into::into),
            connect,
        };
        assert_eq!(lookup("web.service.dc2.consul"), remote("web", None, false));
        assert_eq!(
            lookup("_web._v1.service.dc2.consul"),
            remote("web", Some("v1"), false)
        );
        assert_eq!(lookup("web.connect.dc2.consul"), remote("web", None, true));
        assert_eq!(lookup("n1.node.dc2.consul"), Lookup::Unknown);
        assert_eq!(lookup("q.query.dc2.consul"), Lookup::Unknown);
        assert_eq!(lookup("web.service.d$c.consul"), Lookup::Unknown);
    }

    #[test]
    fn other_names_are_unknown_or_outside() {
        assert_eq!(lookup("a.b.web.service.consul"), Lookup::Unknown);
        assert_eq!(lookup("web.consul"), Lookup::Unknown);
        assert_eq!(lookup("x.y.consul"), Lookup::Unknown);
        assert_eq!(lookup("zz.addr.consul"), Lookup::Unknown);
        assert_eq!(lookup("a.b.query.consul"), Lookup::Unknown);
        assert_eq!(lookup("a.connect.b.connect.consul"), Lookup::Unknown);
        assert_eq!(lookup("example.com"), Lookup::Outside);
        assert_eq!(lookup("com"), Lookup::Outside);
    }

    #[test]
    fn addr_labels_round_trip() {
        for ip in ["10.1.2.3", "::1", "fd00::abcd:1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(decode_addr(&encode_addr(ip)), Some(ip));
        }
    }
}
