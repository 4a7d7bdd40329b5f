//! The DNS interface: Consul's names (`web.service.consul`, `_web._tcp.service.consul`,
//! `web.connect.consul`, `n1.node.consul`, …) answered from the same in-memory catalog index as
//! the HTTP API, over UDP and TCP.
//!
//! ```text
//! UDP datagram / TCP frame ─► Dns::respond(bytes, transport)
//!     decode (hickory-proto) ─► name::parse ─► catalog index (instances, nodes)
//!     ─► records::answer ─► encode (UDP: truncated to the client's size, TC set)
//!     └─ a name outside the domain ─► recursor::forward (when recursors are configured)
//! ```
//!
//! - [`DnsConfig`]: domain, TTLs, recursors (validated; defaults on each field).
//! - [`Dns::respond`]: one packet in, one reply (or nothing) out. No sockets: the property test
//!   drives arbitrary bytes through it.
//! - [`serve::udp`], [`serve::tcp`]: the loops, on already-bound sockets, bounded in what they
//!   hold at once, stopped by a token.
//!
//! Built on `hickory-proto` (the wire format) with loops of our own rather than
//! `hickory-server`: its server spawns one task per UDP datagram and per TCP connection without
//! a bound, logs every query at `info`, and hides the packet path behind its zone machinery, so a
//! property test could not reach it without sockets.
//!
//! ACLs: every query is answered as the server's default token (`acl.tokens.default`,
//! `--default-token`) or, without one, the anonymous token, as Consul's DNS does: a service
//! needs `service:read` on its name and each instance `node:read` on its node, a node
//! `node:read`; what the token may not read does not exist (NXDOMAIN with the SOA). A default
//! token that no longer resolves (deleted, expired) gives SERVFAIL.
//!
//! Prepared queries (`NAME.query.DOMAIN`) run as `/v1/query/NAME/execute` does, `Failover` to
//! other datacenters included (SRV targets then name that datacenter), with the query's
//! `DNS.TTL`.
//!
//! Another datacenter's services and sidecars (`web.service.dc2.DOMAIN`) are read from its
//! health API through the federation, as its default token allows; its nodes and queries are
//! NXDOMAIN here.
//!
//! Not here: DNSSEC, zone transfers.

pub mod name;
mod records;
pub mod recursor;
pub mod serve;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use plexus_runtime::acl::Resolver;

use crate::catalog::StoreCatalog;

/// Largest UDP payload this server sends (advertised in EDNS).
pub const MAX_UDP_PAYLOAD: u16 = 4096;
/// Largest payload for a UDP client that did not use EDNS (RFC 1035).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;

/// Why a DNS configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum DnsConfigError {
    /// The domain is not a DNS name.
    #[error("--dns-domain {domain:?} is not a domain name: {reason}")]
    Domain {
        /// What was given.
        domain: String,
        /// Why not.
        reason: String,
    },
    /// A TTL does not fit DNS's 32-bit seconds.
    #[error("{flag} {ttl:?} is longer than a DNS TTL can be")]
    Ttl {
        /// The flag.
        flag: &'static str,
        /// What was given.
        ttl: Duration,
    },
}

/// The DNS settings, validated.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The domain served (`consul` by default), as a fully qualified name.
    domain: Name,
    /// Its labels, lowercase.
    domain_labels: Vec<String>,
    /// This server's datacenter (`NAME.service.DC.DOMAIN` must name it).
    datacenter: String,
    /// TTL of service answers (`--dns-service-ttl`, default 0 as in Consul).
    service_ttl: u32,
    /// TTL of node answers (`--dns-node-ttl`, default 0 as in Consul).
    node_ttl: u32,
    /// SOA minimum, the TTL of negative answers (`--dns-soa-min-ttl`, default 0 as in Consul).
    soa_min_ttl: u32,
    /// Answer only instances whose checks all pass (`--dns-only-passing`); by default, as in
    /// Consul, instances with a warning are answered too and critical ones never.
    only_passing: bool,
    /// Where names outside the domain go (`--dns-recursor`), tried in order; none: REFUSED.
    recursors: Vec<SocketAddr>,
    /// How long one recursor may take.
    recursor_timeout: Duration,
}

/// The raw settings, as flags give them.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Domain (`consul`).
    pub domain: String,
    /// Datacenter.
    pub datacenter: String,
    /// Service TTL.
    pub service_ttl: Duration,
    /// Node TTL.
    pub node_ttl: Duration,
    /// SOA minimum TTL.
    pub soa_min_ttl: Duration,
    /// Only passing instances.
    pub only_passing: bool,
    /// Recursors.
    pub recursors: Vec<SocketAddr>,
    /// Per-recursor timeout.
    pub recursor_timeout: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            domain: "consul".to_owned(),
            datacenter: "dc1".to_owned(),
            service_ttl: Duration::ZERO,
            node_ttl: Duration::ZERO,
            soa_min_ttl: Duration::ZERO,
            only_passing: false,
            recursors: Vec::new(),
            recursor_timeout: Duration::from_secs(2),
        }
    }
}

impl TryFrom<DnsSettings> for DnsConfig {
    type Error = DnsConfigError;

    fn try_from(raw: DnsSettings) -> Result<Self, Self::Error> {
        let domain_error = |reason: String| DnsConfigError::Domain {
            domain: raw.domain.clone(),
            reason,
        };
        let trimmed = raw.domain.trim_end_matches('.');
        if trimmed.is_empty() {
            return Err(domain_error("it is empty".to_owned()));
        }
        let mut domain = Name::from_ascii(trimmed).map_err(|e| domain_error(e.to_string()))?;
        domain.set_fqdn(true);
        if trimmed.split('.').any(str::is_empty) {
            return Err(domain_error("it has an empty label".to_owned()));
        }
        let ttl = |flag: &'static str, ttl: Duration| {
            u32::try_from(ttl.as_secs()).map_err(|_| DnsConfigError::Ttl { flag, ttl })
        };
        Ok(Self {
            domain_labels: labels(&domain),
            domain,
            datacenter: raw.datacenter.to_ascii_lowercase(),
            service_ttl: ttl("--dns-service-ttl", raw.service_ttl)?,
            node_ttl: ttl("--dns-node-ttl", raw.node_ttl)?,
            soa_min_ttl: ttl("--dns-soa-min-ttl", raw.soa_min_ttl)?,
            only_passing: raw.only_passing,
            recursors: raw.recursors,
            recursor_timeout: raw.recursor_timeout,
        })
    }
}

/// The lowercase labels of `name`, left to right (labels that are not UTF-8 are kept lossily;
/// they match nothing we serve).
fn labels(name: &Name) -> Vec<String> {
    name.iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect()
}

/// How a packet arrived (and so how large the answer may be).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A UDP datagram: answers are truncated to the client's size.
    Udp,
    /// A TCP frame: answers up to 65,535 bytes.
    Tcp,
}

/// What to do with a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes back.
    Send(Vec<u8>),
    /// A name outside the domain: pass the query to the recursors (the caller does, so the
    /// packet path itself never waits on the network).
    Forward,
    /// Send nothing (not a query, or too broken to name an id).
    Drop,
}

/// The DNS server's state: the catalog it reads, its settings and who it answers as.
#[derive(Debug, Clone)]
pub struct Dns {
    catalog: Arc<StoreCatalog>,
    config: Arc<DnsConfig>,
    acl: Resolver,
    /// Prepared queries (`NAME.query.DOMAIN`); without them such names do not exist.
    queries: Option<Arc<crate::query::Queries>>,
    /// Other datacenters (`NAME.service.DC.DOMAIN`); without it their names do not exist.
    federation: Option<crate::wan::Shared>,
}

impl Dns {
    /// A DNS server answering from `catalog`.
    pub fn new(catalog: Arc<StoreCatalog>, config: DnsConfig) -> Self {
        Self {
            catalog,
            config: Arc::new(config),
            acl: Resolver::default(),
            queries: None,
            federation: None,
        }
    }

    /// Answers other datacenters' service names through `federation`.
    #[must_use]
    pub fn with_federation(mut self, federation: crate::wan::Shared) -> Self {
        self.federation = Some(federation);
        self
    }

    /// Answers `NAME.query.DOMAIN` from `queries`.
    #[must_use]
    pub fn with_queries(mut self, queries: Arc<crate::query::Queries>) -> Self {
        self.queries = Some(queries);
        self
    }

    /// Answers as `resolver` resolves a request without a token (the control plane's resolver
    /// with the default token, if any); without this every name is answered.
    #[must_use]
    pub fn with_acl(mut self, resolver: Resolver) -> Self {
        self.acl = resolver;
        self
    }

    /// The settings.
    pub fn config(&self) -> &DnsConfig {
        &self.config
    }

    /// Answers one packet. Malformed queries with a readable id get FORMERR; responses and
    /// shorter-than-a-header garbage get nothing; never panics on any input.
    pub async fn respond(&self, packet: &[u8], transport: Transport) -> Reply {
        let request = match Message::from_vec(packet) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, len = packet.len(), "malformed DNS packet");
                return match packet {
                    [id0, id1, flags, ..] if packet.len() >= 12 && flags & 0x80 == 0 => {
                        let id = u16::from_be_bytes([*id0, *id1]);
                        let reply = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
                        encode(&reply, None, transport).map_or(Reply::Drop, Reply::Send)
                    }
                    _ => Reply::Drop,
                };
            }
        };
        if request.metadata.message_type == MessageType::Response {
            return Reply::Drop;
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = !self.config.recursors.is_empty();
        response.add_queries(request.queries.iter().cloned());
        let edns = request.edns.as_ref().map(|_| {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_PAYLOAD);
            edns
        });
        let rcode = self.fill(&request, &mut response).await;
        match rcode {
            Fill::Forward => return Reply::Forward,
            Fill::Code(code) => response.metadata.response_code = code,
        }
        if let Some(edns) = edns {
            response.set_edns(edns);
        }
        let limit = request.edns.as_ref().map_or(CLASSIC_UDP_PAYLOAD, |e| {
            e.max_payload().clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
        });
        encode(&response, Some(limit), transport).map_or(Reply::Drop, Reply::Send)
    }

    /// Fills `response` for `request`; the response code, or `Forward`.
    async fn fill(&self, request: &Message, response: &mut Message) -> Fill {
        if request.metadata.op_code != OpCode::Query {
            return Fill::Code(ResponseCode::NotImp);
        }
        let [query] = request.queries.as_slice() else {
            return Fill::Code(ResponseCode::FormErr);
        };
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
            return Fill::Code(ResponseCode::NotImp);
        }
        let lookup = name::parse(
            &labels(query.name()),
            &self.config.domain_labels,
            &self.config.datacenter,
        );
        if lookup == name::Lookup::Outside {
            if self.config.recursors.is_empty() {
                return Fill::Code(ResponseCode::Refused);
            }
            return Fill::Forward;
        }
        response.metadata.authoritative = true;
        let authz = match self.acl.0.resolve(None).await {
            Ok(authz) => authz,
            Err(error) => {
                tracing::warn!(%error, "DNS: the default token does not resolve");
                return Fill::Code(ResponseCode::ServFail);
            }
        };
        match records::answer(self, &authz, query, &lookup).await {
            Ok(found) => found.into_response(self, response),
            Err(error) => {
                tracing::warn!(error = %crate::api::ErrorChain(&error), "DNS catalog read failed");
                Fill::Code(ResponseCode::ServFail)
            }
        }
    }

    fn catalog(&self) -> &StoreCatalog {
        &self.catalog
    }
}

/// The outcome of filling a response.
enum Fill {
    Code(ResponseCode),
    Forward,
}

/// Encodes `message`; over UDP, one that does not fit `limit` is sent as its question alone with
/// TC set, so the client retries over TCP. `None` only when even that cannot be encoded.
fn encode(message: &Message, limit: Option<u16>, transport: Transport) -> Option<Vec<u8>> {
    let full = to_vec(message)?;
    let limit = match transport {
        Transport::Udp => usize::from(limit.unwrap_or(CLASSIC_UDP_PAYLOAD)),
        Transport::Tcp => usize::from(u16::MAX),
    };
    if full.len() <= limit {
        return Some(full);
    }
    to_vec(&message.truncate())
}

fn to_vec(message: &Message) -> Option<Vec<u8>> {
    let mut buffer = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut buffer);
    match message.emit(&mut encoder) {
        Ok(()) => Some(buffer),
        Err(error) => {
            tracing::warn!(%error, "cannot encode a DNS answer");
            None
        }
    }
}

#[cfg(test)]
mod tests;
