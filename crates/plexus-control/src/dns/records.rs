//! Records for a parsed name: addresses of healthy instances (shuffled), RFC 2782 SRV records
//! with node targets and their addresses as additional records, nodes, the SOA. Only what the
//! query's authorizer may read: a service without `service:read`, an instance or a node without
//! `node:read` does not exist.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use plexus_api::acl::Authorizer;
use plexus_api::{CatalogError, CheckStatus};
use rand::seq::SliceRandom;

use super::name::{Lookup, encode_addr};
use super::{Dns, Fill};
use crate::catalog::{Answer, Reachable};

/// What a name resolved to, before it becomes a response.
pub(super) enum Found {
    /// Records for the answer (and additional) sections.
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name exists but has no records of the type asked for: NOERROR with the SOA.
    NoData,
    /// The name does not exist: NXDOMAIN with the SOA.
    NxDomain,
}

impl Found {
    pub(super) fn into_response(self, dns: &Dns, response: &mut Message) -> Fill {
        match self {
            Found::Records {
                answers,
                additionals,
            } => {
                response.add_answers(answers);
                response.add_additionals(additionals);
                Fill::Code(ResponseCode::NoError)
            }
            Found::NoData => {
                response.add_authority(soa(dns));
                Fill::Code(ResponseCode::NoError)
            }
            Found::NxDomain => {
                response.add_authority(soa(dns));
                Fill::Code(ResponseCode::NXDomain)
            }
        }
    }
}

/// The records answering `query`, whose name means `lookup` (never `Outside`).
pub(super) async fn answer(
    dns: &Dns,
    authz: &Authorizer,
    query: &Query,
    lookup: &Lookup,
) -> Result<Found, CatalogError> {
    let qtype = query.query_type();
    let owner = query.name().clone();
    match lookup {
        Lookup::Apex => Ok(match qtype {
            RecordType::SOA | RecordType::ANY => records(vec![soa(dns)], Vec::new()),
            RecordType::NS => records(
                vec![Record::from_rdata(
                    owner,
                    dns.config.node_ttl,
                    RData::NS(NS(ns_name(dns))),
                )],
                Vec::new(),
            ),
            _ => Found::NoData,
        }),
        Lookup::Service { name, tag, connect } => {
            if !authz.can_read_service(name) {
                return Ok(Found::NxDomain);
            }
            let kind = if *connect {
                Answer::Connect
            } else {
                Answer::Health
            };
            let mut entries = dns
                .catalog()
                .instances_stale(kind, name, tag.as_deref())
                .await?;
            entries.retain(|e| healthy(e, dns.config.only_passing) && authz.can_read_node(&e.node));
            let (ttl, dc) = (dns.config.service_ttl, dns.config.datacenter.as_str());
            Ok(instance_records(dns, &owner, qtype, entries, ttl, dc))
        }
        Lookup::Query { name } => query_records(dns, authz, owner, qtype, name).await,
        Lookup::Remote {
            datacenter,
            name,
            tag,
            connect,
        } => {
            let Some(federation) = &dns.federation else {
                return Ok(Found::NxDomain);
            };
            // Answered as the other datacenter's default token decides (tokens are per
            // datacenter); a datacenter nobody knows, or that does not answer, has no such name.
            let entries = match crate::wan::health::instances(
                federation,
                datacenter,
                name,
                *connect,
                tag.as_deref(),
                None,
            )
            .await
            {
                Ok(entries) => entries,
                Err(why) => {
                    tracing::debug!(%datacenter, service = %name, %why, "DNS: another datacenter did not answer");
                    return Ok(Found::NxDomain);
                }
            };
            let entries: Vec<Reachable> = entries
                .iter()
                .map(reachable)
                .filter(|e| healthy(e, dns.config.only_passing))
                .collect();
            let ttl = dns.config.service_ttl;
            Ok(instance_records(
                dns, &owner, qtype, entries, ttl, datacenter,
            ))
        }
        Lookup::Node { name } => match dns.catalog().node_stale(name).await? {
            None => Ok(Found::NxDomain),
            Some(node) if !authz.can_read_node(&node.node) => Ok(Found::NxDomain),
            Some(node) => Ok(match node.address.parse::<IpAddr>() {
                Ok(ip) => address_answer(owner, qtype, ip, dns.config.node_ttl),
                Err(_) => Found::NoData,
            }),
        },
        Lookup::Addr(ip) => Ok(address_answer(owner, qtype, *ip, dns.config.node_ttl)),
        Lookup::Unknown | Lookup::Outside => Ok(Found::NxDomain),
    }
}

fn records(answers: Vec<Record>, additionals: Vec<Record>) -> Found {
    if answers.is_empty() {
        Found::NoData
    } else {
        Found::Records {
            answers,
            additionals,
        }
    }
}

/// Not critical (nor in maintenance); with `only_passing`, passing.
fn healthy(entry: &Reachable, only_passing: bool) -> bool {
    match entry.status {
        CheckStatus::Passing => true,
        CheckStatus::Warning => !only_passing,
        CheckStatus::Critical | CheckStatus::Maintenance => false,
    }
}

/// A or AAAA of `ip` when the type asks for its family (ANY asks for both).
fn address_record(owner: &Name, qtype: RecordType, ip: IpAddr, ttl: u32) -> Option<Record> {
    let rdata = match (ip, qtype) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(owner.clone(), ttl, rdata))
}

fn address_answer(owner: Name, qtype: RecordType, ip: IpAddr, ttl: u32) -> Found {
    records(
        address_record(&owner, qtype, ip, ttl).into_iter().collect(),
        Vec::new(),
    )
}

/// A prepared query's answer: its instances, here or (`Failover`) in the datacenter that had
/// some, with the query's `DNS.TTL` when it has one. No such query, or nothing passes: NXDOMAIN.
async fn query_records(
    dns: &Dns,
    authz: &Authorizer,
    owner: Name,
    qtype: RecordType,
    name: &str,
) -> Result<Found, CatalogError> {
    let Some(queries) = &dns.queries else {
        return Ok(Found::NxDomain);
    };
    let ran = match queries.run(name, authz, None).await {
        Ok(ran) => ran,
        Err(error) if error.status == http::StatusCode::NOT_FOUND => {
            return Ok(Found::NxDomain);
        }
        Err(error) => {
            return Err(CatalogError::Store(
                format!("prepared query {name:?}: {}", error.body.error.message).into(),
            ));
        }
    };
    let entries: Vec<Reachable> = ran.entries.iter().map(reachable).collect();
    let ttl = plexus_api::duration::GoDuration::parse(&ran.query.dns.ttl)
        .ok()
        .and_then(|d| u32::try_from(d.0.as_secs()).ok())
        .unwrap_or(dns.config.service_ttl);
    let datacenter = ran.datacenter.to_ascii_lowercase();
    Ok(instance_records(
        dns,
        &owner,
        qtype,
        entries,
        ttl,
        &datacenter,
    ))
}

/// The records of `entries` (instances of `datacenter`, already filtered), shuffled; none is
/// NXDOMAIN.
fn instance_records(
    dns: &Dns,
    owner: &Name,
    qtype: RecordType,
    mut entries: Vec<Reachable>,
    ttl: u32,
    datacenter: &str,
) -> Found {
    if entries.is_empty() {
        return Found::NxDomain;
    }
    entries.shuffle(&mut rand::rng());
    service_records(dns, owner, qtype, &entries, ttl, datacenter)
}

/// What the records need of a health answer's instance.
fn reachable(entry: &plexus_api::ServiceEntry) -> Reachable {
    let status = entry
        .checks
        .iter()
        .map(|c| c.status)
        .max_by_key(|s| match s {
            CheckStatus::Passing => 0,
            CheckStatus::Warning => 1,
            CheckStatus::Critical => 2,
            CheckStatus::Maintenance => 3,
        })
        .unwrap_or(CheckStatus::Passing);
    Reachable {
        node: entry.node.node.clone(),
        node_address: entry.node.address.clone(),
        address: entry.service.address.clone(),
        port: entry.service.port,
        status,
        weights: entry.service.weights,
    }
}

fn service_records(
    dns: &Dns,
    owner: &Name,
    qtype: RecordType,
    entries: &[Reachable],
    ttl: u32,
    datacenter: &str,
) -> Found {
    if qtype == RecordType::SRV {
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        // Instances on one node (or one address) share a target: one additional record each.
        let mut targets = HashSet::new();
        for entry in entries {
            let Some((target, ip)) = srv_target(dns, entry, datacenter) else {
                continue;
            };
            let weight = if entry.status == CheckStatus::Warning {
                entry.weights.warning
            } else {
                entry.weights.passing
            };
            let srv = SRV::new(
                1,
                u16::try_from(weight).unwrap_or(u16::MAX),
                entry.port,
                target.clone(),
            );
            answers.push(Record::from_rdata(owner.clone(), ttl, RData::SRV(srv)));
            if let Some(ip) = ip
                && let Some(record) = address_record(&target, RecordType::ANY, ip, ttl)
                && targets.insert(target)
            {
                additionals.push(record);
            }
        }
        return records(answers, additionals);
    }
    let mut seen = HashSet::new();
    let answers = entries
        .iter()
        .filter_map(|e| e.dial_address().parse::<IpAddr>().ok())
        .filter(|ip| seen.insert(*ip))
        .filter_map(|ip| address_record(owner, qtype, ip, ttl))
        .collect();
    records(answers, Vec::new())
}

/// The SRV target of an instance of `datacenter`: `NODE.node.DC.DOMAIN` when it is reached at
/// its node's address, else `HEX.addr.DC.DOMAIN`; with the address for the additional section.
fn srv_target(dns: &Dns, entry: &Reachable, datacenter: &str) -> Option<(Name, Option<IpAddr>)> {
    let dial = entry.dial_address();
    let ip = dial.parse::<IpAddr>().ok();
    let (label, kind) = if entry.address.is_empty() || dial == entry.node_address {
        (entry.node.clone(), "node")
    } else {
        (encode_addr(ip?), "addr")
    };
    let name = Name::from_ascii(format!("{label}.{kind}.{datacenter}"))
        .ok()?
        .append_domain(&dns.config.domain)
        .ok()?;
    Some((name, ip))
}

fn ns_name(dns: &Dns) -> Name {
    Name::from_ascii("ns")
        .and_then(|ns| ns.append_domain(&dns.config.domain))
        .unwrap_or_else(|_| dns.config.domain.clone())
}

/// The zone's SOA (Consul's values: refresh 1 h, retry 10 min, expire 1 day; serial = now).
pub(super) fn soa(dns: &Dns) -> Record {
    let hostmaster = Name::from_ascii("hostmaster")
        .and_then(|h| h.append_domain(&dns.config.domain))
        .unwrap_or_else(|_| dns.config.domain.clone());
    let serial = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
    let rdata = SOA::new(
        ns_name(dns),
        hostmaster,
        serial,
        3600,
        600,
        86400,
        dns.config.soa_min_ttl,
    );
    Record::from_rdata(
        dns.config.domain.clone(),
        dns.config.soa_min_ttl,
        RData::SOA(rdata),
    )
}
