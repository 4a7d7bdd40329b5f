//! LDS: the public (inbound) listener and one outbound listener per upstream.
//!
//! The public listener accepts only mTLS from our trust domain and picks its filter chain by
//! the ALPN the peer offers, as the built-in sidecar does: `plexus-h2` → an HTTP/2 connection
//! manager whose routes (RDS) carry the L7 RBAC rules; anything else (`plexus-tcp/1`) → the L4
//! RBAC rules and a TCP proxy to the local app.

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, ResponseFlagFilter, StatusCodeFilter, access_log_filter,
};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent, RuntimeUInt32, TrafficDirection,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, LocalReplyConfig, Rds, ResponseMapper,
    http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket, fractional_percent};
use envoy_types::pb::google::protobuf::Any;
use plexus_api::config_entry::chain::{DiscoveryChain, FaultPolicy, TokenBucketPolicy};

use super::{
    ALPN_H2, ALPN_TCP, LOCAL_APP, PUBLIC_LISTENER, PUBLIC_ROUTE, address, ads, duration, is_http,
    rbac, tls, u32v, upstream_listener_name,
};
use crate::model::{Inputs, UpstreamSpec};
use crate::resources::any;

/// The HTTP RBAC filter's name (routes configure it per virtual host).
pub(super) const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
/// Response header saying why the sidecar itself answered (the built-in proxy's).
const ERROR_HEADER: &str = "x-plexus-error";

/// Every listener of the proxy.
pub(super) fn all(inputs: &Inputs) -> Vec<Listener> {
    let mut listeners = vec![public(inputs)];
    listeners.extend(
        inputs
            .proxy
            .upstreams
            .iter()
            .filter_map(|upstream| outbound(inputs, upstream)),
    );
    listeners
}

fn public(inputs: &Inputs) -> Listener {
    let trust_domain = &inputs.roots.trust_domain;
    let http = FilterChain {
        name: "plexus-h2".to_owned(),
        filter_chain_match: Some(FilterChainMatch {
            application_protocols: vec![ALPN_H2.to_owned()],
            ..Default::default()
        }),
        filters: vec![hcm(HttpConnectionManager {
            codec_type: http_connection_manager::CodecType::Http2 as i32,
            stat_prefix: PUBLIC_LISTENER.to_owned(),
            route_specifier: Some(rds(PUBLIC_ROUTE)),
            // L7 intentions test the path the app acts on (the built-in sidecar does the same:
            // `authorize::path`): `.`/`..` segments resolved, doubled slashes merged.
            normalize_path: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
            merge_slashes: true,
            http_filters: vec![
                // Rules come per route (RDS); without them nothing is enforced here.
                http_filter_of(HTTP_RBAC_FILTER, any(&HttpRbac::default())),
                router(),
            ],
            local_reply_config: Some(LocalReplyConfig {
                mappers: vec![mapper_status(403, "denied")],
                ..Default::default()
            }),
            ..Default::default()
        })],
        transport_socket: Some(tls::downstream(ALPN_H2, trust_domain)),
        ..Default::default()
    };
    let tcp = FilterChain {
        name: "plexus-tcp".to_owned(),
        filters: vec![
            network_filter(
                "envoy.filters.network.rbac",
                any(&NetworkRbac {
                    rules: Some(rbac::rules(inputs, false)),
                    stat_prefix: "connect_authz".to_owned(),
                    ..Default::default()
                }),
            ),
            tcp_proxy_to(
                PUBLIC_LISTENER,
                tcp_proxy::ClusterSpecifier::Cluster(LOCAL_APP.to_owned()),
            ),
        ],
        transport_socket: Some(tls::downstream(ALPN_TCP, trust_domain)),
        ..Default::default()
    };
    Listener {
        name: PUBLIC_LISTENER.to_owned(),
        address: Some(address(inputs.proxy.inbound)),
        traffic_direction: TrafficDirection::Inbound as i32,
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".to_owned(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        }],
        filter_chains: vec![http, tcp],
        ..Default::default()
    }
}

fn outbound(inputs: &Inputs, upstream: &UpstreamSpec) -> Option<Listener> {
    let chain = inputs.chains.get(&upstream.destination)?;
    let name = upstream_listener_name(&upstream.destination);
    let stat_prefix = format!("upstream.{}", upstream.destination);
    let filter = if is_http(inputs.upstream_protocol(upstream)) {
        let mut http_filters = Vec::new();
        if let Some(fault) = &chain.policy.fault {
            http_filters.push(http_filter_of(
                "envoy.filters.http.fault",
                any(&fault_filter(fault)),
            ));
        }
        if let Some(bucket) = &chain.policy.rate_limit {
            http_filters.push(http_filter_of(
                "envoy.filters.http.local_ratelimit",
                any(&rate_limit_filter(&stat_prefix, bucket)),
            ));
        }
        http_filters.push(router());
        hcm(HttpConnectionManager {
            codec_type: http_connection_manager::CodecType::Auto as i32,
            stat_prefix,
            route_specifier: Some(rds(&upstream.destination)),
            http_filters,
            local_reply_config: Some(outbound_local_replies()),
            ..Default::default()
        })
    } else {
        tcp_proxy_to(&stat_prefix, tcp_clusters(chain)?)
    };
    Some(Listener {
        name,
        address: Some(address(upstream.bind)),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![FilterChain {
            filters: vec![filter],
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// A TCP upstream goes where the chain's default (last) route sends.
fn tcp_clusters(chain: &DiscoveryChain) -> Option<tcp_proxy::ClusterSpecifier> {
    let route = chain.routes.last()?;
    let weighted: Vec<_> = route
        .splits
        .iter()
        .filter(|split| split.weight > 0.0)
        .map(|split| tcp_proxy::weighted_cluster::ClusterWeight {
            name: split.target.clone(),
            weight: super::routes::weight(split.weight),
            ..Default::default()
        })
        .collect();
    match weighted.as_slice() {
        [] => None,
        [one] => Some(tcp_proxy::ClusterSpecifier::Cluster(one.name.clone())),
        _ => Some(tcp_proxy::ClusterSpecifier::WeightedClusters(
            tcp_proxy::WeightedCluster { clusters: weighted },
        )),
    }
}

fn tcp_proxy_to(stat_prefix: &str, cluster: tcp_proxy::ClusterSpecifier) -> Filter {
    network_filter(
        "envoy.filters.network.tcp_proxy",
        any(&TcpProxy {
            stat_prefix: stat_prefix.to_owned(),
            cluster_specifier: Some(cluster),
            ..Default::default()
        }),
    )
}

fn hcm(manager: HttpConnectionManager) -> Filter {
    network_filter(
        "envoy.filters.network.http_connection_manager",
        any(&manager),
    )
}

fn network_filter(name: &str, config: Any) -> Filter {
    Filter {
        name: name.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(config)),
    }
}

fn http_filter_of(name: &str, config: Any) -> HttpFilter {
    HttpFilter {
        name: name.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

fn router() -> HttpFilter {
    http_filter_of("envoy.filters.http.router", any(&Router::default()))
}

fn rds(name: &str) -> http_connection_manager::RouteSpecifier {
    http_connection_manager::RouteSpecifier::Rds(Rds {
        config_source: Some(ads()),
        route_config_name: name.to_owned(),
    })
}

/// `fault` → Envoy's fault filter (delay and abort percentages, the header condition).
fn fault_filter(fault: &FaultPolicy) -> HttpFault {
    HttpFault {
        delay: fault.delay.map(|(delay, percent)| FaultDelay {
            percentage: Some(per_million(percent)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                delay.get(),
            ))),
        }),
        abort: fault.abort.map(|(status, percent)| FaultAbort {
            percentage: Some(per_million(percent)),
            error_type: Some(fault_abort::ErrorType::HttpStatus(u32::from(status))),
            ..Default::default()
        }),
        headers: fault
            .header
            .iter()
            .map(|(name, value)| super::routes::header_matcher_exact(name, value.as_deref()))
            .collect(),
        ..Default::default()
    }
}

/// The service-wide token bucket. Envoy refills whole tokens at intervals of at least 50 ms:
/// below 1 request per second one token per `1/rate`, otherwise `rate` tokens (rounded) per
/// second.
fn rate_limit_filter(stat_prefix: &str, bucket: &TokenBucketPolicy) -> LocalRateLimit {
    let rate = bucket.requests_per_second.max(0.001);
    let (tokens, interval) = if rate < 1.0 {
        (1, std::time::Duration::from_secs_f64(1.0 / rate))
    } else {
        (rate.round() as u32, std::time::Duration::from_secs(1))
    };
    let always = RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        }),
        ..Default::default()
    };
    LocalRateLimit {
        stat_prefix: stat_prefix.to_owned(),
        token_bucket: Some(TokenBucket {
            max_tokens: bucket.burst.max(1),
            tokens_per_fill: Some(u32v(tokens.max(1))),
            fill_interval: Some(duration(interval)),
        }),
        filter_enabled: Some(always.clone()),
        filter_enforced: Some(always),
        ..Default::default()
    }
}

/// A percentage (0–100, two decimals) as Envoy's per-million fraction.
pub(super) fn per_million(percent: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: fractional_percent::DenominatorType::Million as i32,
    }
}

/// Responses Envoy makes itself carry `x-plexus-error` with the built-in proxy's reasons.
fn outbound_local_replies() -> LocalReplyConfig {
    let flags = [
        ("UH", "no_healthy_endpoints"),
        ("UF", "upstream_connect_failure"),
        ("UO", "concurrency_limit"),
        ("UT", "timeout"),
        ("RL", "rate_limited"),
        ("FI", "fault_injected"),
        ("UC", "upstream_reset"),
        ("UR", "upstream_reset"),
        ("URX", "upstream_reset"),
    ];
    LocalReplyConfig {
        mappers: flags
            .into_iter()
            .map(|(flag, reason)| ResponseMapper {
                filter: Some(AccessLogFilter {
                    filter_specifier: Some(access_log_filter::FilterSpecifier::ResponseFlagFilter(
                        ResponseFlagFilter {
                            flags: vec![flag.to_owned()],
                        },
                    )),
                }),
                headers_to_add: vec![error_header(reason)],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn mapper_status(status: u32, reason: &str) -> ResponseMapper {
    ResponseMapper {
        filter: Some(AccessLogFilter {
            filter_specifier: Some(access_log_filter::FilterSpecifier::StatusCodeFilter(
                StatusCodeFilter {
                    comparison: Some(
                        envoy_types::pb::envoy::config::accesslog::v3::ComparisonFilter {
                            op: envoy_types::pb::envoy::config::accesslog::v3::comparison_filter::Op::Eq
                                as i32,
                            value: Some(RuntimeUInt32 {
                                default_value: status,
                                runtime_key: format!("plexus.local_reply.{status}"),
                            }),
                        },
                    ),
                },
            )),
        }),
        headers_to_add: vec![error_header(reason)],
        ..Default::default()
    }
}

fn error_header(reason: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: ERROR_HEADER.to_owned(),
            value: reason.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}
