//! Translation tests: build resources from inputs and read them back as Envoy types.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::rbac::v3::{Rbac, principal, rbac};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher;
use plexus_api::GoDuration;
use plexus_api::client::IntentionSet;
use plexus_api::config_entry::chain::{
    ChainTarget, CompiledRoute, DiscoveryChain, FilterClause, HeaderCriterion, HeaderModifiers,
    Headers, OutlierPolicy, PathMatch, Protocol, RequestMatch, RetryOn, RetryPolicy, ValueMatch,
    WeightedTarget,
};
use plexus_api::connect::{CaRoot, CaRoots, DefaultPolicy, Intention, IntentionAction};
use prost::Message;

use super::*;
use crate::model::{Endpoint, Leaf, ProxySpec};
use crate::resources::TypeUrl;

fn decode<M: Message + Default>(resources: &Resources, t: TypeUrl, name: &str) -> M {
    let resource = resources.of(t).get(name).unwrap_or_else(|| {
        panic!(
            "no {t} resource {name:?}; have {:?}",
            resources.of(t).keys()
        )
    });
    M::decode(resource.body.value.as_slice()).expect("decodes")
}

pub(crate) fn endpoint(addr: &str, version: &str) -> Endpoint {
    Endpoint {
        addr: addr.parse().expect("addr"),
        tags: Vec::new(),
        meta: BTreeMap::from([("version".to_owned(), version.to_owned())]),
    }
}

fn tcp_chain(service: &str) -> DiscoveryChain {
    DiscoveryChain {
        service: service.into(),
        protocol: Protocol::Tcp,
        routes: vec![CompiledRoute {
            name: "default".into(),
            splits: vec![WeightedTarget {
                weight: 100.0,
                target: service.into(),
                headers: Default::default(),
            }],
            ..Default::default()
        }],
        targets: BTreeMap::from([(
            service.to_owned(),
            ChainTarget {
                service: service.into(),
                connect_timeout: GoDuration(std::time::Duration::from_secs(5)),
                ..Default::default()
            },
        )]),
        ..Default::default()
    }
}

/// `web`'s chain: v1/v2 subsets, a canary header route to v2, a 90/10 split by default.
fn http_chain() -> DiscoveryChain {
    let subset = |name: &str| ChainTarget {
        service: "web".into(),
        subset: Some(name.into()),
        filter: vec![FilterClause::MetaEquals {
            key: "version".into(),
            value: name.into(),
        }],
        connect_timeout: GoDuration(std::time::Duration::from_secs(5)),
        ..Default::default()
    };
    DiscoveryChain {
        service: "web".into(),
        protocol: Protocol::Http,
        routes: vec![
            CompiledRoute {
                name: "canary".into(),
                matcher: RequestMatch {
                    path: Some(PathMatch::Prefix("/api".into())),
                    headers: vec![HeaderCriterion {
                        name: "x-canary".into(),
                        value: ValueMatch::Exact("1".into()),
                        invert: false,
                        ignore_case: false,
                    }],
                    methods: vec!["GET".into(), "POST".into()],
                    ..Default::default()
                },
                splits: vec![WeightedTarget {
                    weight: 100.0,
                    target: "v2.web".into(),
                    headers: Headers {
                        request: Some(HeaderModifiers::of(&[("x-split", "v2")], &[], &[])),
                        response: None,
                    },
                }],
                headers: Headers {
                    request: Some(HeaderModifiers::of(
                        &[],
                        &[("x-route", "canary")],
                        &["x-debug"],
                    )),
                    response: None,
                },
                prefix_rewrite: Some("/".into()),
                request_timeout: Some(GoDuration(std::time::Duration::from_secs(2))),
                retry: RetryPolicy {
                    num_retries: 2,
                    retry_on: vec![RetryOn::Status5xx, RetryOn::ConnectFailure],
                    status_codes: vec![429],
                    ..Default::default()
                },
                ..Default::default()
            },
            CompiledRoute {
                name: "default".into(),
                splits: vec![
                    WeightedTarget {
                        weight: 90.0,
                        target: "v1.web".into(),
                        headers: Default::default(),
                    },
                    WeightedTarget {
                        weight: 10.0,
                        target: "v2.web".into(),
                        headers: Headers {
                            request: None,
                            response: Some(HeaderModifiers::of(
                                &[("x-weight", "10%")],
                                &[],
                                &["server"],
                            )),
                        },
                    },
                ],
                ..Default::default()
            },
        ],
        targets: BTreeMap::from([
            ("v1.web".to_owned(), subset("v1")),
            ("v2.web".to_owned(), {
                let mut t = subset("v2");
                t.failover = vec!["v1.web".into()];
                t
            }),
        ]),
        policy: plexus_api::config_entry::chain::ServicePolicy {
            outlier: Some(OutlierPolicy {
                interval: GoDuration(std::time::Duration::from_secs(1)),
                consecutive_5xx: 3,
                consecutive_gateway_errors: 0,
                enforcing_percent: 100.0,
                max_ejection_percent: 50.0,
                base_ejection_time: GoDuration(std::time::Duration::from_secs(30)),
            }),
            ..Default::default()
        },
    }
}

pub(super) fn intention(
    id: &str,
    source: &str,
    destination: &str,
    action: IntentionAction,
) -> Intention {
    Intention {
        id: id.into(),
        source_name: source.into(),
        destination_name: destination.into(),
        source_ns: "default".into(),
        destination_ns: "default".into(),
        source_type: "consul".into(),
        action: Some(action),
        permissions: Vec::new(),
        description: String::new(),
        meta: BTreeMap::new(),
        precedence: 0,
        create_index: 0,
        modify_index: 0,
    }
}

pub(crate) fn inputs(intentions: Vec<Intention>, default: DefaultPolicy) -> Inputs {
    let service = crate::model::tests::proxy_service(&[("echo", 9191), ("web", 9292)]);
    Inputs {
        datacenter: "dc1".into(),
        proxy: ProxySpec::from_service(&service).expect("valid"),
        roots: Arc::new(CaRoots {
            active_root_id: "r1".into(),
            trust_domain: "td.plexus".into(),
            roots: vec![
                CaRoot {
                    id: "r1".into(),
                    root_cert: "-----BEGIN CERTIFICATE-----\nR1\n-----END CERTIFICATE-----\n"
                        .into(),
                    active: true,
                    ..Default::default()
                },
                CaRoot {
                    id: "r0".into(),
                    root_cert: "-----BEGIN CERTIFICATE-----\nR0\n-----END CERTIFICATE-----".into(),
                    ..Default::default()
                },
            ],
        }),
        leaf: Arc::new(Leaf {
            cert_pem: "LEAF".into(),
            key_pem: "KEY".into(),
            spiffe_id: "spiffe://td.plexus/ns/default/dc/dc1/svc/web".into(),
            root_id: "r1".into(),
            issued: 0.0,
            not_after: 100.0,
        }),
        own_chain: Arc::new(tcp_chain("web")),
        intentions: Arc::new(IntentionSet {
            index: 1,
            intentions,
            default_policy: Some(default),
        }),
        chains: BTreeMap::from([
            ("echo".to_owned(), Arc::new(tcp_chain("echo"))),
            ("web".to_owned(), Arc::new(http_chain())),
        ]),
        endpoints: BTreeMap::from([
            (
                "echo".to_owned(),
                Arc::new(vec![endpoint("127.0.0.1:21001", "v1")]),
            ),
            (
                "web".to_owned(),
                Arc::new(vec![
                    endpoint("127.0.0.1:21010", "v1"),
                    endpoint("127.0.0.1:21011", "v1"),
                    endpoint("127.0.0.1:21012", "v2"),
                ]),
            ),
        ]),
    }
}

#[test]
fn every_type_is_produced_with_stable_names() {
    let resources = translate(&inputs(Vec::new(), DefaultPolicy::Allow));
    let names = |t| resources.of(t).keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(TypeUrl::Cluster),
        ["echo", "plexus:local_app", "v1.web", "v2.web"]
    );
    assert_eq!(names(TypeUrl::Endpoint), ["echo", "v1.web", "v2.web"]);
    assert_eq!(
        names(TypeUrl::Listener),
        ["public_listener", "upstream:echo", "upstream:web"]
    );
    assert_eq!(names(TypeUrl::Route), ["public_listener", "web"]);
    assert_eq!(names(TypeUrl::Secret), ["leaf", "roots"]);
    // Same inputs, same versions.
    assert_eq!(
        resources,
        translate(&inputs(Vec::new(), DefaultPolicy::Allow))
    );
}

#[test]
fn subsets_become_endpoint_sets_and_failover_a_lower_priority() {
    let resources = translate(&inputs(Vec::new(), DefaultPolicy::Allow));
    let v2: ClusterLoadAssignment = decode(&resources, TypeUrl::Endpoint, "v2.web");
    assert_eq!(v2.endpoints.len(), 2, "the target and its failover");
    assert_eq!(v2.endpoints[0].priority, 0);
    assert_eq!(
        v2.endpoints[0].lb_endpoints.len(),
        1,
        "only the v2 instance"
    );
    assert_eq!(v2.endpoints[1].priority, 1);
    assert_eq!(v2.endpoints[1].lb_endpoints.len(), 2, "the v1 instances");
    let v1: ClusterLoadAssignment = decode(&resources, TypeUrl::Endpoint, "v1.web");
    assert_eq!(v1.endpoints[0].lb_endpoints.len(), 2);
}

#[test]
fn http_clusters_speak_h2_with_mtls_to_the_target_identity_and_eject_outliers() {
    let resources = translate(&inputs(Vec::new(), DefaultPolicy::Allow));
    let web: Cluster = decode(&resources, TypeUrl::Cluster, "v1.web");
    assert_eq!(
        web.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32
        ))
    );
    assert!(
        web.typed_extension_protocol_options
            .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    );
    let tls = web.transport_socket.expect("mTLS");
    let bytes = match tls.config_type {
        Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                any,
            ),
        ) => any.value,
        None => panic!("no TLS config"),
    };
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("spiffe://td.plexus/ns/default/dc/dc1/svc/web"));
    assert!(text.contains(ALPN_H2));
    let outlier = web.outlier_detection.expect("outlier detection");
    assert_eq!(outlier.consecutive_5xx.map(|v| v.value), Some(3));
    assert_eq!(outlier.enforcing_success_rate.map(|v| v.value), Some(0));
    let echo: Cluster = decode(&resources, TypeUrl::Cluster, "echo");
    assert!(echo.typed_extension_protocol_options.is_empty(), "TCP");
}

#[test]
fn routes_follow_the_chain() {
    let resources = translate(&inputs(Vec::new(), DefaultPolicy::Allow));
    let config: RouteConfiguration = decode(&resources, TypeUrl::Route, "web");
    let routes = &config.virtual_hosts[0].routes;
    assert_eq!(routes.len(), 2);
    let Some(route::Action::Route(canary)) = &routes[0].action else {
        panic!("route action");
    };
    assert_eq!(
        canary.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster("v2.web".into()))
    );
    assert_eq!(canary.prefix_rewrite, "/");
    assert_eq!(canary.timeout.map(|d| d.seconds), Some(2));
    let retry = canary.retry_policy.as_ref().expect("retries");
    assert_eq!(retry.retry_on, "5xx,connect-failure,retriable-status-codes");
    assert_eq!(retry.retriable_status_codes, [429]);
    assert_eq!(retry.num_retries.map(|n| n.value), Some(2));
    let matcher = routes[0].r#match.as_ref().expect("match");
    assert_eq!(matcher.headers.len(), 2, "the header and the methods");
    let Some(route::Action::Route(default)) = &routes[1].action else {
        panic!("route action");
    };
    let Some(route_action::ClusterSpecifier::WeightedClusters(split)) = &default.cluster_specifier
    else {
        panic!("weighted clusters");
    };
    let weights: Vec<(String, u32)> = split
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.map_or(0, |w| w.value)))
        .collect();
    assert_eq!(
        weights,
        [("v1.web".to_owned(), 9000), ("v2.web".to_owned(), 1000)]
    );
    assert_eq!(default.timeout.map(|d| d.seconds), Some(0), "no timeout");

    // Header changes: a single split's go on the route before the route's own; each weighted
    // cluster carries its split's; `%` is literal.
    let options = |options: &[HeaderValueOption]| -> Vec<(String, String, i32)> {
        options
            .iter()
            .map(|o| {
                let header = o.header.clone().unwrap_or_default();
                (header.key, header.value, o.append_action)
            })
            .collect()
    };
    let (append, overwrite) = (
        HeaderAppendAction::AppendIfExistsOrAdd as i32,
        HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
    );
    assert_eq!(
        options(&routes[0].request_headers_to_add),
        [
            ("x-split".to_owned(), "v2".to_owned(), append),
            ("x-route".to_owned(), "canary".to_owned(), overwrite)
        ]
    );
    assert_eq!(routes[0].request_headers_to_remove, ["x-debug"]);
    assert!(routes[1].request_headers_to_add.is_empty());
    assert!(split.clusters[0].response_headers_to_add.is_empty());
    assert_eq!(
        options(&split.clusters[1].response_headers_to_add),
        [("x-weight".to_owned(), "10%%".to_owned(), append)]
    );
    assert_eq!(split.clusters[1].response_headers_to_remove, ["server"]);
}

pub(super) fn network_rules(resources: &Resources) -> Rbac {
    let listener: Listener = decode(resources, TypeUrl::Listener, PUBLIC_LISTENER);
    let tcp = listener
        .filter_chains
        .iter()
        .find(|c| c.name == "plexus-tcp")
        .expect("tcp chain");
    let Some(filter::ConfigType::TypedConfig(any)) = &tcp.filters[0].config_type else {
        panic!("typed config");
    };
    NetworkRbac::decode(any.value.as_slice())
        .expect("rbac")
        .rules
        .expect("rules")
}

pub(super) fn http_rules(resources: &Resources) -> Rbac {
    let config: RouteConfiguration = decode(resources, TypeUrl::Route, PUBLIC_ROUTE);
    let any = &config.virtual_hosts[0].typed_per_filter_config["envoy.filters.http.rbac"];
    RbacPerRoute::decode(any.value.as_slice())
        .expect("per route")
        .rbac
        .and_then(|r| r.rules)
        .expect("rules")
}

#[test]
fn default_allow_denies_the_denied_sources_by_name() {
    let resources = translate(&inputs(
        vec![
            intention("i1", "db", "web", IntentionAction::Deny),
            intention("i2", "api", "*", IntentionAction::Deny),
            intention("i3", "api", "web", IntentionAction::Allow),
        ],
        DefaultPolicy::Allow,
    ));
    for rules in [network_rules(&resources), http_rules(&resources)] {
        assert_eq!(rules.action, rbac::Action::Deny as i32);
        let names: Vec<&String> = rules.policies.keys().collect();
        assert_eq!(
            names,
            ["intention i1: deny db => web"],
            "api is allowed by i3"
        );
    }
}

#[test]
fn default_deny_allows_only_the_allowed_sources() {
    let resources = translate(&inputs(
        vec![
            intention("i1", "*", "web", IntentionAction::Allow),
            intention("i2", "db", "web", IntentionAction::Deny),
        ],
        DefaultPolicy::Deny,
    ));
    let rules = network_rules(&resources);
    // Everyone is allowed by the wildcard except db: a DENY listing db.
    assert_eq!(rules.action, rbac::Action::Deny as i32);
    assert_eq!(rules.policies.len(), 1);
    let resources = translate(&inputs(
        vec![intention("i3", "client", "web", IntentionAction::Allow)],
        DefaultPolicy::Deny,
    ));
    let rules = network_rules(&resources);
    assert_eq!(rules.action, rbac::Action::Allow as i32);
    let policy = &rules.policies["intention i3: allow client => web"];
    let Some(principal::Identifier::Authenticated(who)) = &policy.principals[0].identifier else {
        panic!("an authenticated principal");
    };
    let Some(string_matcher::MatchPattern::SafeRegex(regex)) = who
        .principal_name
        .as_ref()
        .and_then(|m| m.match_pattern.as_ref())
    else {
        panic!("a regex");
    };
    assert_eq!(
        regex.regex,
        r"^spiffe://td\.plexus/ns/[^/]+/dc/[^/]+/svc/client$"
    );
}

#[test]
fn secrets_carry_the_leaf_and_every_root() {
    let resources = translate(&inputs(Vec::new(), DefaultPolicy::Allow));
    let roots: Secret = decode(&resources, TypeUrl::Secret, ROOTS_SECRET);
    let Some(secret::Type::ValidationContext(context)) = roots.r#type else {
        panic!("validation context");
    };
    let ca = format!("{:?}", context.trusted_ca);
    assert!(ca.contains("R1") && ca.contains("R0"), "{ca}");
    let leaf: Secret = decode(&resources, TypeUrl::Secret, LEAF_SECRET);
    assert!(matches!(leaf.r#type, Some(secret::Type::TlsCertificate(_))));
}

#[test]
fn an_endpoint_change_touches_only_its_assignments() {
    let before = translate(&inputs(Vec::new(), DefaultPolicy::Allow));
    let mut changed = inputs(Vec::new(), DefaultPolicy::Allow);
    changed.endpoints.insert(
        "echo".into(),
        Arc::new(vec![
            endpoint("127.0.0.1:21001", "v1"),
            endpoint("127.0.0.1:21002", "v1"),
        ]),
    );
    let after = translate(&changed);
    assert_eq!(after.changed_types(&before), [TypeUrl::Endpoint]);
}

#[test]
fn grpc_services_get_an_h2c_local_app() {
    let mut grpc = inputs(Vec::new(), DefaultPolicy::Allow);
    grpc.proxy.protocol = Some(Protocol::Grpc);
    let resources = translate(&grpc);
    assert!(resources.of(TypeUrl::Cluster).contains_key(LOCAL_APP_H2));
    let config: RouteConfiguration = decode(&resources, TypeUrl::Route, PUBLIC_ROUTE);
    let Some(route::Action::Route(action)) = &config.virtual_hosts[0].routes[0].action else {
        panic!("route");
    };
    assert_eq!(
        action.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(LOCAL_APP_H2.into()))
    );
}
