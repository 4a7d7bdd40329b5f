//! CDS and EDS: a cluster per discovery-chain target that a route (or the mirror) sends to,
//! with the target's endpoints, and the local app's clusters.
//!
//! | Plexus (chain) | Envoy cluster |
//! | --- | --- |
//! | target `subset.service` | cluster of that name, type EDS, mTLS requiring the service's SPIFFE id |
//! | subset filter | the EDS endpoints are the instances that match it (computed here) |
//! | failover targets | their endpoints at priority 1, 2, … of the same assignment; other services' endpoints carry their own SPIFFE check (transport socket match) |
//! | `ConnectTimeout` | `connect_timeout` |
//! | `LoadBalancer` | `lb_policy` (`round_robin`, `least_request` + choice count, `ring_hash` + minimum ring size, `maglev`; `peak_ewma` → `least_request`) |
//! | `Limits` | default-priority circuit breakers (unset: unlimited) |
//! | retry budget | circuit-breaker `retry_budget` |
//! | `PassiveHealthCheck` | `outlier_detection` (consecutive 5xx / gateway errors only) |

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Metadata, RoutingPriority};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use plexus_api::config_entry::chain::{
    ChainTarget, DiscoveryChain, LbAlgorithm, RetryPolicy, filter_matches,
};
use plexus_api::connect::service_spiffe_id;

use super::{ALPN_H2, ALPN_TCP, LOCAL_APP, LOCAL_APP_H2, address, duration, is_http, tls, u32v};
use crate::model::{Endpoint as PlexusEndpoint, Inputs};
use crate::resources::any;

/// Metadata namespace Envoy reads to pick an endpoint's transport socket.
const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// Extension key of a cluster's HTTP protocol options.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Connect timeout towards the local app (Consul's `local_connect_timeout_ms` default).
const LOCAL_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Outbound clusters with their assignments (`None` for none: never happens for EDS clusters,
/// kept for symmetry), one per target any upstream's routes or mirror reach, first upstream
/// (by name) wins when two reach the same target.
pub(super) fn outbound(inputs: &Inputs) -> Vec<(Cluster, Option<ClusterLoadAssignment>)> {
    let mut out = BTreeMap::new();
    for upstream in &inputs.proxy.upstreams {
        let Some(chain) = inputs.chains.get(&upstream.destination) else {
            continue;
        };
        let http = is_http(inputs.upstream_protocol(upstream));
        for target_id in routed_targets(chain) {
            if out.contains_key(&target_id) {
                continue;
            }
            let Some(target) = chain.targets.get(&target_id) else {
                continue;
            };
            let cluster = target_cluster(inputs, chain, &target_id, target, http);
            let assignment = assignment(inputs, chain, &target_id, target);
            out.insert(target_id, (cluster, Some(assignment)));
        }
        if let Some(mirror) = &chain.policy.mirror
            && !out.contains_key(&mirror.service)
        {
            let target = ChainTarget {
                service: mirror.service.clone(),
                ..ChainTarget::default()
            };
            let cluster = target_cluster(inputs, chain, &mirror.service, &target, http);
            let assignment = assignment(inputs, chain, &mirror.service, &target);
            out.insert(mirror.service.clone(), (cluster, Some(assignment)));
        }
    }
    out.into_values().collect()
}

/// Targets a route of `chain` splits to, by name.
pub(super) fn routed_targets(chain: &DiscoveryChain) -> BTreeSet<String> {
    chain
        .routes
        .iter()
        .flat_map(|route| route.splits.iter().map(|split| split.target.clone()))
        .collect()
}

fn target_cluster(
    inputs: &Inputs,
    chain: &DiscoveryChain,
    name: &str,
    target: &ChainTarget,
    http: bool,
) -> Cluster {
    let alpn = if http { ALPN_H2 } else { ALPN_TCP };
    let spiffe =
        |service: &str| service_spiffe_id(&inputs.roots.trust_domain, &inputs.datacenter, service);
    let mut cluster = Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(super::ads()),
            service_name: name.to_owned(),
        }),
        connect_timeout: Some(duration(target.connect_timeout.get())),
        transport_socket: Some(tls::upstream(alpn, &spiffe(&target.service))),
        circuit_breakers: Some(circuit_breakers(chain, name)),
        outlier_detection: chain.policy.outlier.map(|o| OutlierDetection {
            interval: Some(duration(o.interval.get())),
            base_ejection_time: Some(duration(o.base_ejection_time.get())),
            max_ejection_percent: Some(u32v(percent(o.max_ejection_percent))),
            consecutive_5xx: Some(u32v(o.consecutive_5xx)),
            enforcing_consecutive_5xx: Some(u32v(if o.consecutive_5xx == 0 {
                0
            } else {
                percent(o.enforcing_percent)
            })),
            consecutive_gateway_failure: Some(u32v(o.consecutive_gateway_errors)),
            enforcing_consecutive_gateway_failure: Some(u32v(
                if o.consecutive_gateway_errors == 0 {
                    0
                } else {
                    percent(o.enforcing_percent)
                },
            )),
            // Plexus ejects on consecutive errors only.
            enforcing_success_rate: Some(u32v(0)),
            ..Default::default()
        }),
        ..Default::default()
    };
    set_load_balancer(&mut cluster, target);
    // Failover to another service: its endpoints must show that service's identity.
    let mut others: Vec<&str> = target
        .failover
        .iter()
        .filter_map(|id| chain.targets.get(id))
        .map(|t| t.service.as_str())
        .filter(|service| *service != target.service)
        .collect();
    others.sort_unstable();
    others.dedup();
    cluster.transport_socket_matches = others
        .into_iter()
        .map(|service| cluster::TransportSocketMatch {
            name: service.to_owned(),
            r#match: Some(service_struct(service)),
            transport_socket: Some(tls::upstream(alpn, &spiffe(service))),
        })
        .collect();
    if http {
        set_http2(&mut cluster);
    }
    cluster
}

fn set_load_balancer(cluster: &mut Cluster, target: &ChainTarget) {
    let lb = &target.load_balancer;
    let (policy, config) = match lb.policy {
        LbAlgorithm::RoundRobin => (cluster::LbPolicy::RoundRobin, None),
        LbAlgorithm::LeastRequest | LbAlgorithm::PeakEwma => (
            cluster::LbPolicy::LeastRequest,
            Some(cluster::LbConfig::LeastRequestLbConfig(
                cluster::LeastRequestLbConfig {
                    choice_count: Some(u32v(lb.choice_count.max(2))),
                    ..Default::default()
                },
            )),
        ),
        LbAlgorithm::RingHash => (
            cluster::LbPolicy::RingHash,
            Some(cluster::LbConfig::RingHashLbConfig(
                cluster::RingHashLbConfig {
                    minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value {
                        value: u64::from(lb.ring_size.max(1)),
                    }),
                    ..Default::default()
                },
            )),
        ),
        LbAlgorithm::Maglev => (cluster::LbPolicy::Maglev, None),
    };
    cluster.lb_policy = policy as i32;
    cluster.lb_config = config;
}

/// Limits (unset: unlimited, as in the built-in proxy) and the retry budget of the first route
/// that sends to `target` with retries (else the default budget).
fn circuit_breakers(chain: &DiscoveryChain, target: &str) -> CircuitBreakers {
    let limits = chain.policy.limits;
    let retry = chain
        .routes
        .iter()
        .filter(|route| route.splits.iter().any(|s| s.target == target))
        .map(|route| &route.retry)
        .find(|retry| retry.num_retries > 0)
        .cloned()
        .unwrap_or_else(RetryPolicy::default);
    CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: Some(u32v(limits.max_connections.unwrap_or(u32::MAX))),
            max_pending_requests: Some(u32v(limits.max_pending_requests.unwrap_or(u32::MAX))),
            max_requests: Some(u32v(limits.max_concurrent_requests.unwrap_or(u32::MAX))),
            retry_budget: Some(circuit_breakers::thresholds::RetryBudget {
                budget_percent: Some(Percent {
                    value: retry.budget_percent,
                }),
                min_retry_concurrency: Some(u32v(retry.budget_min_concurrency)),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn set_http2(cluster: &mut Cluster) {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Default::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    let mut map = HashMap::new();
    map.insert(HTTP_PROTOCOL_OPTIONS.to_owned(), any(&options));
    cluster.typed_extension_protocol_options = map;
}

/// The target's matching endpoints at priority 0, each failover target's at the next priority.
fn assignment(
    inputs: &Inputs,
    chain: &DiscoveryChain,
    name: &str,
    target: &ChainTarget,
) -> ClusterLoadAssignment {
    let mut levels = vec![target];
    levels.extend(
        target
            .failover
            .iter()
            .filter_map(|id| chain.targets.get(id)),
    );
    let endpoints = levels
        .into_iter()
        .enumerate()
        .map(|(priority, level)| LocalityLbEndpoints {
            priority: u32::try_from(priority).unwrap_or(u32::MAX),
            lb_endpoints: matching(inputs, level)
                .map(|endpoint| lb_endpoint(endpoint, &level.service, &target.service))
                .collect(),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints,
        ..Default::default()
    }
}

fn matching<'a>(
    inputs: &'a Inputs,
    target: &'a ChainTarget,
) -> impl Iterator<Item = &'a PlexusEndpoint> {
    inputs
        .endpoints
        .get(&target.service)
        .into_iter()
        .flat_map(|endpoints| endpoints.iter())
        .filter(|e| filter_matches(&target.filter, &e.tags, &e.meta))
}

fn lb_endpoint(endpoint: &PlexusEndpoint, service: &str, primary: &str) -> LbEndpoint {
    let metadata = (service != primary).then(|| Metadata {
        filter_metadata: HashMap::from([(
            TRANSPORT_SOCKET_MATCH.to_owned(),
            service_struct(service),
        )]),
        ..Default::default()
    });
    LbEndpoint {
        health_status: HealthStatus::Healthy as i32,
        metadata,
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(address(endpoint.addr)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn service_struct(service: &str) -> Struct {
    Struct {
        fields: std::collections::HashMap::from([(
            "service".to_owned(),
            Value {
                kind: Some(value::Kind::StringValue(service.to_owned())),
            },
        )]),
    }
}

fn percent(value: f64) -> u32 {
    // Bounded to 0..=100 by validation; rounded to Envoy's whole percent.
    value.clamp(0.0, 100.0).round() as u32
}

/// The local app: over HTTP/1.1 (or raw TCP) always, and over h2c when the inbound protocol is
/// `http2` or `grpc`.
pub(super) fn local_app(inputs: &Inputs) -> Vec<Cluster> {
    let protocol = inputs.inbound_protocol();
    let mut clusters = vec![static_cluster(LOCAL_APP, inputs.proxy.local_app)];
    if matches!(
        protocol,
        plexus_api::config_entry::chain::Protocol::Http2
            | plexus_api::config_entry::chain::Protocol::Grpc
    ) {
        let mut h2 = static_cluster(LOCAL_APP_H2, inputs.proxy.local_app);
        set_http2(&mut h2);
        clusters.push(h2);
    }
    clusters
}

fn static_cluster(name: &str, addr: std::net::SocketAddr) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration(LOCAL_CONNECT_TIMEOUT)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(address(addr)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}
