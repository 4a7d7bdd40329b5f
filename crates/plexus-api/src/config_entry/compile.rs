//! Stored entries → the [`DiscoveryChain`] for one upstream service. Pure.
//!
//! Routes come from the service's `service-router` (in order) followed by a catch-all `default`
//! route. A route's destination (service, optional subset) expands through that service's
//! `service-splitter` when no subset is named (and a split to another service with a splitter,
//! through that one too); every (service, subset) reached becomes a target,
//! with the subset's filter and the service's resolver settings; failover targets are added too.
//! Entries are assumed valid ([`super::validate`]); anything unparsable is skipped, not fatal.

use std::time::Duration;

use super::chain::{
    ChainTarget, CompiledRoute, DiscoveryChain, FaultPolicy, HashKey, HashSource, HeaderCriterion,
    Headers, LbAlgorithm, LimitsPolicy, LoadBalancerPolicy, MirrorPolicy, OutlierPolicy, PathMatch,
    Protocol, QueryCriterion, RequestMatch, RetryOn, RetryPolicy, RouteRateLimit, ServicePolicy,
    TokenBucketPolicy, ValueMatch, WeightedTarget, target_id,
};
use super::entries::{
    HttpMatch, RouteDestination, ServiceDefaults, ServiceResolver, ServiceSplitter,
};
use super::{ConfigEntry, filter};
use crate::duration::GoDuration;

struct Entries<'a>(&'a [ConfigEntry]);

impl<'a> Entries<'a> {
    fn defaults(&self, service: &str) -> Option<&'a ServiceDefaults> {
        self.0.iter().find_map(|e| match e {
            ConfigEntry::ServiceDefaults(d) if d.name == service => Some(d),
            _ => None,
        })
    }
    fn proxy_defaults(&self) -> Option<&'a super::ProxyDefaults> {
        self.0.iter().find_map(|e| match e {
            ConfigEntry::ProxyDefaults(p) => Some(p),
            _ => None,
        })
    }
    fn resolver(&self, service: &str) -> Option<&'a ServiceResolver> {
        self.0.iter().find_map(|e| match e {
            ConfigEntry::ServiceResolver(r) if r.name == service => Some(r),
            _ => None,
        })
    }
    fn splitter(&self, service: &str) -> Option<&'a ServiceSplitter> {
        self.0.iter().find_map(|e| match e {
            ConfigEntry::ServiceSplitter(s) if s.name == service => Some(s),
            _ => None,
        })
    }
    fn router(&self, service: &str) -> Option<&'a super::entries::ServiceRouter> {
        self.0.iter().find_map(|e| match e {
            ConfigEntry::ServiceRouter(r) if r.name == service => Some(r),
            _ => None,
        })
    }
}

/// Compiles the chain for calls to `service`, from all stored entries.
pub fn compile(service: &str, entries: &[ConfigEntry]) -> DiscoveryChain {
    let all = Entries(entries);
    let mut chain = DiscoveryChain {
        service: service.to_owned(),
        // The service's own defaults, else proxy-defaults' `Config.protocol`, else tcp.
        protocol: all
            .defaults(service)
            .and_then(|d| d.protocol.as_deref())
            .and_then(Protocol::parse)
            .or_else(|| all.proxy_defaults().and_then(|p| p.protocol()))
            .unwrap_or_default(),
        policy: all.defaults(service).map(policy).unwrap_or_default(),
        ..DiscoveryChain::default()
    };
    let mut routes: Vec<(String, RequestMatch, Option<&RouteDestination>)> = Vec::new();
    if let Some(router) = all.router(service) {
        for (i, route) in router.routes.iter().enumerate() {
            let name = route.name.clone().unwrap_or_else(|| format!("route-{i}"));
            let matcher = route
                .r#match
                .as_ref()
                .and_then(|m| m.http.as_ref())
                .map(request_match)
                .unwrap_or_default();
            routes.push((name, matcher, route.destination.as_ref()));
        }
    }
    routes.push(("default".to_owned(), RequestMatch::default(), None));
    for (name, matcher, dest) in routes {
        let dest_service = dest
            .and_then(|d| d.service.clone())
            .unwrap_or_else(|| service.to_owned());
        let subset = dest
            .and_then(|d| d.service_subset.clone())
            .filter(|s| !s.is_empty());
        let splits = match (subset, all.splitter(&dest_service)) {
            (None, Some(_)) => {
                let mut splits = Vec::new();
                let mut through = vec![dest_service.clone()];
                expand_splits(
                    &mut chain,
                    &all,
                    &dest_service,
                    (100.0, &Headers::default()),
                    &mut through,
                    &mut splits,
                );
                splits
            }
            (subset, _) => vec![WeightedTarget {
                weight: 100.0,
                target: add_target(&mut chain, &all, &dest_service, subset.as_deref()),
                headers: Headers::default(),
            }],
        };
        let request_timeout = dest.and_then(|d| d.request_timeout).or_else(|| {
            let (resolved, _) = redirected(&all, &dest_service, None);
            all.resolver(resolved).and_then(|r| r.request_timeout)
        });
        chain.routes.push(CompiledRoute {
            name,
            matcher,
            splits,
            prefix_rewrite: dest.and_then(|d| d.prefix_rewrite.clone()),
            request_timeout,
            idle_timeout: dest.and_then(|d| d.idle_timeout),
            retry: dest.map(retry_policy).unwrap_or_default(),
            headers: Headers {
                request: dest.and_then(|d| d.request_headers.clone()),
                response: dest.and_then(|d| d.response_headers.clone()),
            },
        });
    }
    chain
}

/// The weighted targets of `service`'s splitter, `share` percent of the traffic with `headers`
/// applied first. A split to another service that has a splitter of its own, and names no
/// subset, is expanded through that splitter (Consul nests splitters), its weights scaled and
/// its header changes applied after the outer split's; `through` stops a loop.
fn expand_splits(
    chain: &mut DiscoveryChain,
    all: &Entries<'_>,
    service: &str,
    (share, headers): (f64, &Headers),
    through: &mut Vec<String>,
    out: &mut Vec<WeightedTarget>,
) {
    let Some(splitter) = all.splitter(service) else {
        return;
    };
    for split in &splitter.splits {
        let svc = split.service.clone().unwrap_or_else(|| service.to_owned());
        let weight = split.weight * share / 100.0;
        let headers = Headers {
            request: merged(headers.request.as_ref(), split.request_headers.as_ref()),
            response: merged(headers.response.as_ref(), split.response_headers.as_ref()),
        };
        let subset = split.service_subset.as_deref().filter(|s| !s.is_empty());
        if subset.is_none() && !through.contains(&svc) && all.splitter(&svc).is_some() {
            through.push(svc.clone());
            expand_splits(chain, all, &svc, (weight, &headers), through, out);
            through.pop();
            continue;
        }
        out.push(WeightedTarget {
            weight,
            target: add_target(chain, all, &svc, subset),
            headers,
        });
    }
}

/// `outer`'s header changes followed by `inner`'s (an inner `Set` wins, adds and removes add up).
fn merged(
    outer: Option<&super::gateway::HeaderModifiers>,
    inner: Option<&super::gateway::HeaderModifiers>,
) -> Option<super::gateway::HeaderModifiers> {
    match (outer, inner) {
        (None, None) => None,
        (Some(one), None) | (None, Some(one)) => Some(one.clone()),
        (Some(outer), Some(inner)) => {
            let mut both = outer.clone();
            both.add.extend(inner.add.clone());
            both.set.extend(inner.set.clone());
            both.remove.extend(inner.remove.iter().cloned());
            Some(both)
        }
    }
}

/// Where resolving (service, subset) leads after the resolvers' redirects: each redirect is
/// followed once (a service's redirect is not applied again to what it led to, as Consul's
/// "unless already applied"), so a loop validation missed still ends.
fn redirected<'a>(
    all: &Entries<'a>,
    service: &'a str,
    subset: Option<&'a str>,
) -> (&'a str, Option<&'a str>) {
    let (mut service, mut subset) = (service, subset);
    let mut applied: Vec<&str> = Vec::new();
    while let Some(redirect) = all.resolver(service).and_then(|r| r.redirect.as_ref()) {
        if applied.contains(&service) {
            break;
        }
        applied.push(service);
        let to = redirect
            .service
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(service);
        subset = redirect.service_subset.as_deref().filter(|s| !s.is_empty());
        service = to;
    }
    (service, subset)
}

/// Adds the target for (service, subset) (the resolver's default subset when none), after its
/// resolver's redirect, and its failover targets; returns its id.
fn add_target(
    chain: &mut DiscoveryChain,
    all: &Entries<'_>,
    service: &str,
    subset: Option<&str>,
) -> String {
    let (service, subset) = redirected(all, service, subset);
    let resolver = all.resolver(service);
    let subset = subset
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            resolver
                .and_then(|r| r.default_subset.clone())
                .filter(|s| !s.is_empty())
        });
    let id = target_id(service, subset.as_deref());
    if chain.targets.contains_key(&id) {
        return id;
    }
    let def = resolver.and_then(|r| subset.as_ref().and_then(|s| r.subsets.get(s)));
    let target = ChainTarget {
        service: service.to_owned(),
        subset: subset.clone(),
        filter: def
            .and_then(|d| filter::parse(&d.filter).ok())
            .unwrap_or_default(),
        filter_expression: def.map(|d| d.filter.clone()).unwrap_or_default(),
        only_passing: def.is_some_and(|d| d.only_passing),
        failover: Vec::new(),
        failover_datacenters: Vec::new(),
        connect_timeout: resolver
            .and_then(|r| r.connect_timeout)
            .unwrap_or(GoDuration(Duration::from_secs(5))),
        load_balancer: resolver
            .and_then(|r| r.load_balancer.as_ref())
            .map(load_balancer)
            .unwrap_or_default(),
    };
    chain.targets.insert(id.clone(), target);
    let failover = resolver.and_then(|r| {
        subset
            .as_ref()
            .and_then(|s| r.failover.get(s))
            .or_else(|| r.failover.get("*"))
    });
    if let Some(f) = failover {
        let mut ids = Vec::new();
        let mut pairs: Vec<(Option<String>, Option<String>)> = Vec::new();
        if f.service.is_some() || f.service_subset.is_some() {
            pairs.push((f.service.clone(), f.service_subset.clone()));
        }
        pairs.extend(
            f.targets
                .iter()
                .map(|t| (t.service.clone(), t.service_subset.clone())),
        );
        for (svc, sub) in pairs {
            let svc = svc.unwrap_or_else(|| service.to_owned());
            let fid = target_id(&svc, sub.as_deref());
            if fid == id {
                continue;
            }
            ids.push(add_target(chain, all, &svc, sub.as_deref()));
        }
        if let Some(t) = chain.targets.get_mut(&id) {
            t.failover = ids;
            t.failover_datacenters.clone_from(&f.datacenters);
        }
    }
    id
}

fn load_balancer(lb: &super::entries::LoadBalancer) -> LoadBalancerPolicy {
    LoadBalancerPolicy {
        policy: LbAlgorithm::parse(&lb.policy).unwrap_or_default(),
        choice_count: lb
            .least_request_config
            .and_then(|c| c.choice_count)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(2),
        ring_size: lb
            .ring_hash_config
            .and_then(|c| c.minimum_ring_size)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(1024),
        hash_policies: lb
            .hash_policies
            .iter()
            .filter_map(|h| {
                let source = if h.source_ip {
                    HashSource::SourceIp
                } else {
                    let name = h.field_value.clone()?;
                    match h.field.as_deref()? {
                        "header" => HashSource::Header(name.to_ascii_lowercase()),
                        "cookie" => HashSource::Cookie(name),
                        "query_parameter" => HashSource::QueryParameter(name),
                        _ => return None,
                    }
                };
                Some(HashKey {
                    source,
                    terminal: h.terminal,
                })
            })
            .collect(),
    }
}

fn request_match(m: &HttpMatch) -> RequestMatch {
    let path = m
        .path_exact
        .clone()
        .map(PathMatch::Exact)
        .or_else(|| m.path_prefix.clone().map(PathMatch::Prefix))
        .or_else(|| m.path_regex.clone().map(PathMatch::Regex));
    RequestMatch {
        path,
        headers: m
            .header
            .iter()
            .map(|h| HeaderCriterion {
                name: h.name.to_ascii_lowercase(),
                value: if let Some(v) = &h.exact {
                    ValueMatch::Exact(v.clone())
                } else if let Some(v) = &h.prefix {
                    ValueMatch::Prefix(v.clone())
                } else if let Some(v) = &h.suffix {
                    ValueMatch::Suffix(v.clone())
                } else if let Some(v) = &h.regex {
                    ValueMatch::Regex(v.clone())
                } else {
                    ValueMatch::Present
                },
                invert: h.invert,
                ignore_case: false,
            })
            .collect(),
        query: m
            .query_param
            .iter()
            .map(|q| QueryCriterion {
                name: q.name.clone(),
                value: if let Some(v) = &q.exact {
                    ValueMatch::Exact(v.clone())
                } else if let Some(v) = &q.regex {
                    ValueMatch::Regex(v.clone())
                } else {
                    ValueMatch::Present
                },
            })
            .collect(),
        methods: m.methods.iter().map(|s| s.to_ascii_uppercase()).collect(),
    }
}

fn retry_policy(d: &RouteDestination) -> RetryPolicy {
    let mut p = RetryPolicy {
        num_retries: d
            .num_retries
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        ..RetryPolicy::default()
    };
    p.retry_on = d
        .retry_on
        .iter()
        .filter_map(|s| RetryOn::parse(s))
        .collect();
    if d.retry_on_connect_failure && !p.retry_on.contains(&RetryOn::ConnectFailure) {
        p.retry_on.push(RetryOn::ConnectFailure);
    }
    p.status_codes = d
        .retry_on_status_codes
        .iter()
        .filter_map(|c| u16::try_from(*c).ok())
        .collect();
    if let Some(b) = d.retry_backoff {
        if let Some(base) = b.base_interval {
            p.backoff_base = base;
            p.backoff_max = GoDuration(base.0 * 10);
        }
        if let Some(max) = b.max_interval {
            p.backoff_max = max;
        }
    }
    if let Some(b) = d.retry_budget {
        if let Some(pc) = b.percent {
            p.budget_percent = pc;
        }
        if let Some(m) = b.min_retry_concurrency.and_then(|m| u32::try_from(m).ok()) {
            p.budget_min_concurrency = m;
        }
    }
    p
}

fn to_u32(v: Option<i64>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok())
}

fn bucket(rps: f64, burst: Option<i64>) -> TokenBucketPolicy {
    TokenBucketPolicy {
        requests_per_second: rps,
        burst: to_u32(burst)
            .filter(|b| *b > 0)
            .unwrap_or_else(|| (rps.ceil() as u32).max(1)),
    }
}

fn policy(d: &ServiceDefaults) -> ServicePolicy {
    let limits = d
        .limits
        .map(|l| LimitsPolicy {
            max_connections: to_u32(l.max_connections),
            max_pending_requests: to_u32(l.max_pending_requests),
            max_concurrent_requests: to_u32(l.max_concurrent_requests),
        })
        .unwrap_or_default();
    let outlier = d.passive_health_check.map(|p| OutlierPolicy {
        interval: p.interval.unwrap_or(GoDuration(Duration::from_secs(10))),
        consecutive_5xx: to_u32(p.max_failures).unwrap_or(5),
        consecutive_gateway_errors: to_u32(p.consecutive_gateway_errors).unwrap_or(0),
        enforcing_percent: p.enforcing_consecutive_5xx.unwrap_or(100) as f64,
        max_ejection_percent: p.max_ejection_percent.unwrap_or(10) as f64,
        base_ejection_time: p
            .base_ejection_time
            .unwrap_or(GoDuration(Duration::from_secs(30))),
    });
    let il = d.rate_limits.as_ref().map(|r| &r.instance_level);
    let rate_limit = il
        .filter(|il| il.requests_per_second > 0.0)
        .map(|il| bucket(il.requests_per_second, il.requests_max_burst));
    let route_rate_limits = il
        .map(|il| {
            il.routes
                .iter()
                .filter_map(|r| {
                    let path = r
                        .path_exact
                        .clone()
                        .map(PathMatch::Exact)
                        .or_else(|| r.path_prefix.clone().map(PathMatch::Prefix))
                        .or_else(|| r.path_regex.clone().map(PathMatch::Regex))?;
                    Some(RouteRateLimit {
                        path,
                        bucket: bucket(r.requests_per_second, r.requests_max_burst),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let fault = d.fault_injection.as_ref().map(|f| FaultPolicy {
        delay: f.delay.map(|d| (d.duration, d.percent)),
        abort: f
            .abort
            .and_then(|a| u16::try_from(a.http_status).ok().map(|s| (s, a.percent))),
        header: f
            .header
            .as_ref()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone())),
    });
    let mirror = d.mirror.as_ref().map(|m| MirrorPolicy {
        service: m.service.clone(),
        percent: m.percent.unwrap_or(100.0),
    });
    ServicePolicy {
        limits,
        outlier,
        rate_limit,
        route_rate_limits,
        fault,
        mirror,
    }
}
