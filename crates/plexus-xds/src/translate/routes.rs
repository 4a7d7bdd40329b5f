//! RDS: the public listener's route (to the local app, carrying the L7 intention rules) and one
//! route configuration per HTTP upstream, from its compiled discovery chain.
//!
//! | Plexus (chain route) | Envoy route |
//! | --- | --- |
//! | `PathExact` / `PathPrefix` / `PathRegex` | `path` / `prefix` / `safe_regex` (RE2; Plexus validates with the `regex` crate, whose syntax RE2 shares for what routes use) |
//! | `Header` criteria (`Present`, `Exact`, `Prefix`, `Suffix`, `Regex`, `Invert`) | header matchers |
//! | `QueryParam` (`Present`, `Exact`, `Regex`) | query parameter matchers |
//! | `Methods` | a `:method` header regex |
//! | splits | weighted clusters (weight × 100, summing to 10 000) |
//! | `PrefixRewrite` | `prefix_rewrite` (not for regex paths: the path is kept, as in Plexus) |
//! | `RequestTimeout` | route `timeout` (retries included; none: 0 = no timeout) |
//! | `IdleTimeout` | route `idle_timeout` |
//! | `NumRetries`, `RetryOn`, `RetryOnStatusCodes`, backoff | `retry_policy` with the same condition names, the `previous_hosts` predicate |
//! | resolver `HashPolicies` | route `hash_policy` (header, cookie, query parameter, source IP) |
//! | `Mirror` | `request_mirror_policies` with the percentage as a fraction |
//! | `RequestHeaders` / `ResponseHeaders` of a route and of a split | `request_headers_to_add` (`Set`: overwrite, `Add`: append) and `…_to_remove` on the route, and on the split's weighted cluster (on the route when there is one split); `%` escaped, so values are literal as in Plexus's proxy |

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RetryPolicy as EnvoyRetryPolicy, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, header_matcher,
    query_parameter_matcher, retry_policy, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::{Rbac as HttpRbac, RbacPerRoute};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use plexus_api::config_entry::chain::{
    CompiledRoute, DiscoveryChain, HashSource, HeaderModifiers, Headers, PathMatch, Protocol,
    RequestMatch, ValueMatch,
};

use super::listeners::{HTTP_RBAC_FILTER, per_million};
use super::{LOCAL_APP, LOCAL_APP_H2, PUBLIC_ROUTE, duration, is_http, rbac, u32v};
use crate::model::Inputs;
use crate::resources::any;

/// Every route configuration of the proxy.
pub(super) fn all(inputs: &Inputs) -> Vec<RouteConfiguration> {
    let mut routes = vec![public(inputs)];
    for upstream in &inputs.proxy.upstreams {
        if !is_http(inputs.upstream_protocol(upstream)) {
            continue;
        }
        if let Some(chain) = inputs.chains.get(&upstream.destination) {
            routes.push(RouteConfiguration {
                name: upstream.destination.clone(),
                virtual_hosts: vec![VirtualHost {
                    name: upstream.destination.clone(),
                    domains: vec!["*".to_owned()],
                    routes: chain
                        .routes
                        .iter()
                        .map(|r| outbound_route(chain, r))
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
    }
    routes
}

fn public(inputs: &Inputs) -> RouteConfiguration {
    let cluster = match inputs.inbound_protocol() {
        Protocol::Http2 | Protocol::Grpc => LOCAL_APP_H2,
        Protocol::Http | Protocol::Tcp => LOCAL_APP,
    };
    let rules = RbacPerRoute {
        rbac: Some(HttpRbac {
            rules: Some(rbac::rules(inputs, true)),
            rules_stat_prefix: "connect_authz.".to_owned(),
            ..Default::default()
        }),
    };
    RouteConfiguration {
        name: PUBLIC_ROUTE.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: "public".to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.to_owned(),
                    )),
                    timeout: Some(duration(std::time::Duration::ZERO)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            typed_per_filter_config: HashMap::from([(HTTP_RBAC_FILTER.to_owned(), any(&rules))]),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn outbound_route(chain: &DiscoveryChain, compiled: &CompiledRoute) -> Route {
    let matcher = &compiled.matcher;
    let path_specifier = match &matcher.path {
        None => route_match::PathSpecifier::Prefix("/".to_owned()),
        Some(PathMatch::Prefix(prefix)) => route_match::PathSpecifier::Prefix(prefix.clone()),
        Some(PathMatch::Exact(path)) => route_match::PathSpecifier::Path(path.clone()),
        Some(PathMatch::Regex(regex)) => route_match::PathSpecifier::SafeRegex(re(regex)),
    };
    let headers = header_matchers(matcher);
    let query_parameters = matcher
        .query
        .iter()
        .map(|q| QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: Some(match &q.value {
                ValueMatch::Present => {
                    query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true)
                }
                other => query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                    string(other),
                ),
            }),
        })
        .collect();
    let splits: Vec<_> = compiled.splits.iter().filter(|s| s.weight > 0.0).collect();
    // A single split is the route's cluster: its header changes go on the route, first.
    let mut route_headers = vec![&compiled.headers];
    let cluster_specifier = match splits.as_slice() {
        [one] => {
            route_headers.insert(0, &one.headers);
            route_action::ClusterSpecifier::Cluster(one.target.clone())
        }
        _ => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: splits
                .iter()
                .map(|s| {
                    let changes = HeaderChanges::of(&[&s.headers]);
                    weighted_cluster::ClusterWeight {
                        name: s.target.clone(),
                        weight: Some(u32v(weight(s.weight))),
                        request_headers_to_add: changes.request_add,
                        request_headers_to_remove: changes.request_remove,
                        response_headers_to_add: changes.response_add,
                        response_headers_to_remove: changes.response_remove,
                        ..Default::default()
                    }
                })
                .collect(),
            ..Default::default()
        }),
    };
    let changes = HeaderChanges::of(&route_headers);
    let prefix_rewrite = match (&compiled.prefix_rewrite, &matcher.path) {
        (Some(rewrite), None | Some(PathMatch::Prefix(_) | PathMatch::Exact(_))) => rewrite.clone(),
        _ => String::new(),
    };
    let hash_policy = splits
        .first()
        .and_then(|s| chain.targets.get(&s.target))
        .map(|target| {
            target
                .load_balancer
                .hash_policies
                .iter()
                .map(|key| route_action::HashPolicy {
                    terminal: key.terminal,
                    policy_specifier: Some(match &key.source {
                        HashSource::Header(name) => {
                            route_action::hash_policy::PolicySpecifier::Header(
                                route_action::hash_policy::Header {
                                    header_name: name.clone(),
                                    ..Default::default()
                                },
                            )
                        }
                        HashSource::Cookie(name) => {
                            route_action::hash_policy::PolicySpecifier::Cookie(
                                route_action::hash_policy::Cookie {
                                    name: name.clone(),
                                    ..Default::default()
                                },
                            )
                        }
                        HashSource::QueryParameter(name) => {
                            route_action::hash_policy::PolicySpecifier::QueryParameter(
                                route_action::hash_policy::QueryParameter { name: name.clone() },
                            )
                        }
                        HashSource::SourceIp => {
                            route_action::hash_policy::PolicySpecifier::ConnectionProperties(
                                route_action::hash_policy::ConnectionProperties { source_ip: true },
                            )
                        }
                    }),
                })
                .collect()
        })
        .unwrap_or_default();
    let request_mirror_policies = chain
        .policy
        .mirror
        .iter()
        .map(|mirror| route_action::RequestMirrorPolicy {
            cluster: mirror.service.clone(),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(per_million(mirror.percent)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        prefix_rewrite,
        timeout: Some(duration(
            compiled
                .request_timeout
                .map(|t| t.get())
                .unwrap_or_default(),
        )),
        idle_timeout: compiled.idle_timeout.map(|t| duration(t.get())),
        retry_policy: retry(compiled),
        hash_policy,
        request_mirror_policies,
        ..Default::default()
    };
    Route {
        name: compiled.name.clone(),
        r#match: Some(RouteMatch {
            headers,
            query_parameters,
            path_specifier: Some(path_specifier),
            ..Default::default()
        }),
        action: Some(route::Action::Route(action)),
        request_headers_to_add: changes.request_add,
        request_headers_to_remove: changes.request_remove,
        response_headers_to_add: changes.response_add,
        response_headers_to_remove: changes.response_remove,
        ..Default::default()
    }
}

/// Header changes in Envoy's terms, from one or more [`Headers`] in order.
#[derive(Default)]
struct HeaderChanges {
    request_add: Vec<HeaderValueOption>,
    request_remove: Vec<String>,
    response_add: Vec<HeaderValueOption>,
    response_remove: Vec<String>,
}

impl HeaderChanges {
    fn of(all: &[&Headers]) -> Self {
        let mut out = Self::default();
        for headers in all {
            if let Some(request) = &headers.request {
                add(&mut out.request_add, &mut out.request_remove, request);
            }
            if let Some(response) = &headers.response {
                add(&mut out.response_add, &mut out.response_remove, response);
            }
        }
        out
    }
}

/// `Set` (overwrite), then `Add` (append), as header options; `Remove` as names. Envoy removes
/// before it adds, as Plexus's proxy does.
fn add(options: &mut Vec<HeaderValueOption>, remove: &mut Vec<String>, m: &HeaderModifiers) {
    let option = |(name, value): (&String, &String), action: HeaderAppendAction| {
        HeaderValueOption {
            header: Some(HeaderValue {
                key: name.to_ascii_lowercase(),
                // Envoy reads `%…%` as a variable; Plexus's values are literal.
                value: value.replace('%', "%%"),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        }
    };
    options.extend(
        m.set
            .iter()
            .map(|pair| option(pair, HeaderAppendAction::OverwriteIfExistsOrAdd)),
    );
    options.extend(
        m.add
            .iter()
            .map(|pair| option(pair, HeaderAppendAction::AppendIfExistsOrAdd)),
    );
    remove.extend(m.remove.iter().map(|name| name.to_ascii_lowercase()));
}

fn retry(compiled: &CompiledRoute) -> Option<EnvoyRetryPolicy> {
    let policy = &compiled.retry;
    if policy.num_retries == 0 {
        return None;
    }
    let mut conditions: Vec<String> = policy
        .retry_on
        .iter()
        .filter_map(|c| {
            plexus_api::config_entry::chain::RetryOn::ALL
                .iter()
                .find(|(_, known)| known == c)
                .map(|(name, _)| (*name).to_owned())
        })
        .collect();
    if !policy.status_codes.is_empty() {
        conditions.push("retriable-status-codes".to_owned());
    }
    Some(EnvoyRetryPolicy {
        retry_on: conditions.join(","),
        num_retries: Some(u32v(policy.num_retries)),
        retriable_status_codes: policy.status_codes.iter().map(|c| u32::from(*c)).collect(),
        retry_back_off: Some(retry_policy::RetryBackOff {
            base_interval: Some(duration(policy.backoff_base.get())),
            max_interval: Some(duration(policy.backoff_max.get())),
        }),
        // Like the built-in proxy: a retry goes to an endpoint the request has not tried.
        retry_host_predicate: vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_owned(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                any(&PreviousHostsPredicate::default()),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    })
}

/// A split weight (0–100, two decimals) as Envoy's integer weight out of 10 000.
pub(super) fn weight(percent: f64) -> u32 {
    (percent.clamp(0.0, 100.0) * 100.0).round() as u32
}

fn re(regex: &str) -> RegexMatcher {
    RegexMatcher {
        regex: regex.to_owned(),
        ..Default::default()
    }
}

fn string(value: &ValueMatch) -> StringMatcher {
    let pattern = match value {
        ValueMatch::Present => string_matcher::MatchPattern::SafeRegex(re(".*")),
        ValueMatch::Exact(v) => string_matcher::MatchPattern::Exact(v.clone()),
        ValueMatch::Prefix(v) => string_matcher::MatchPattern::Prefix(v.clone()),
        ValueMatch::Suffix(v) => string_matcher::MatchPattern::Suffix(v.clone()),
        ValueMatch::Contains(v) => string_matcher::MatchPattern::Contains(v.clone()),
        ValueMatch::Regex(v) => string_matcher::MatchPattern::SafeRegex(re(v)),
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    }
}

/// A request match's header and method criteria as Envoy header matchers (all must match): the
/// route match's, and an RBAC permission's.
pub(super) fn header_matchers(matcher: &RequestMatch) -> Vec<HeaderMatcher> {
    let mut headers: Vec<HeaderMatcher> = matcher
        .headers
        .iter()
        .map(|h| HeaderMatcher {
            name: h.name.clone(),
            invert_match: h.invert,
            header_match_specifier: Some(match &h.value {
                ValueMatch::Present => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
                // Envoy's `ignore_case` does not reach a safe regex: the regex says it itself.
                ValueMatch::Regex(r) if h.ignore_case => {
                    header_matcher::HeaderMatchSpecifier::StringMatch(string(&ValueMatch::Regex(
                        format!("(?i:{r})"),
                    )))
                }
                other => header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                    ignore_case: h.ignore_case,
                    ..string(other)
                }),
            }),
            ..Default::default()
        })
        .collect();
    if !matcher.methods.is_empty() {
        headers.push(HeaderMatcher {
            name: ":method".to_owned(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::SafeRegex(re(&format!(
                        "^({})$",
                        matcher
                            .methods
                            .iter()
                            .map(|m| super::regex_literal(m))
                            .collect::<Vec<_>>()
                            .join("|")
                    )))),
                    ..Default::default()
                },
            )),
            ..Default::default()
        });
    }
    headers
}

/// A path criterion as an Envoy string matcher (RBAC's `url_path`).
pub(super) fn path_matcher(path: &PathMatch) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(match path {
            PathMatch::Exact(p) => string_matcher::MatchPattern::Exact(p.clone()),
            PathMatch::Prefix(p) => string_matcher::MatchPattern::Prefix(p.clone()),
            PathMatch::Regex(r) => string_matcher::MatchPattern::SafeRegex(re(r)),
        }),
        ..Default::default()
    }
}

/// A header that is present (any value) or equal to `value`.
pub(super) fn header_matcher_exact(name: &str, value: Option<&str>) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(match value {
            None => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
            Some(v) => header_matcher::HeaderMatchSpecifier::StringMatch(string(
                &ValueMatch::Exact(v.to_owned()),
            )),
        }),
        ..Default::default()
    }
}
