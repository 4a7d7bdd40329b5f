//! The four L7 config entries as written (API bodies, HCL/JSON files), in Consul's shape.
//!
//! JSON uses Consul's `PascalCase` keys; `snake_case` (the HCL habit) is accepted too. Unknown
//! keys are rejected. Fields marked *Plexus* have no Consul equivalent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::gateway::HeaderModifiers;
use crate::duration::GoDuration;

/// `Kind = "service-defaults"`: protocol and per-service resilience policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDefaults {
    /// Always `service-defaults`.
    #[serde(rename = "Kind", alias = "kind")]
    pub kind: String,
    /// The service this applies to.
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// `tcp` (default), `http`, `http2` or `grpc`.
    #[serde(rename = "Protocol", alias = "protocol", default)]
    pub protocol: Option<String>,
    /// Free-form metadata.
    #[serde(rename = "Meta", alias = "meta", default)]
    pub meta: BTreeMap<String, String>,
    /// Concurrency limits (Consul: `UpstreamConfig.Defaults.Limits`; here at the top).
    #[serde(rename = "Limits", alias = "limits", default)]
    pub limits: Option<Limits>,
    /// Outlier detection (Consul: `UpstreamConfig.Defaults.PassiveHealthCheck`; here at the top).
    #[serde(
        rename = "PassiveHealthCheck",
        alias = "passive_health_check",
        alias = "passivehealthcheck",
        default
    )]
    pub passive_health_check: Option<PassiveHealthCheck>,
    /// Local rate limit (Consul's `RateLimits.InstanceLevel`).
    #[serde(
        rename = "RateLimits",
        alias = "rate_limits",
        alias = "ratelimits",
        default
    )]
    pub rate_limits: Option<RateLimits>,
    /// *Plexus*: fault injection for chaos testing.
    #[serde(
        rename = "FaultInjection",
        alias = "fault_injection",
        alias = "faultinjection",
        default
    )]
    pub fault_injection: Option<FaultInjection>,
    /// *Plexus*: mirror a share of requests to another service (response ignored).
    #[serde(rename = "Mirror", alias = "mirror", default)]
    pub mirror: Option<Mirror>,
    /// Set by the server; ignored when written.
    #[serde(rename = "CreateIndex", alias = "create_index", default)]
    pub create_index: u64,
    /// Set by the server; ignored when written.
    #[serde(rename = "ModifyIndex", alias = "modify_index", default)]
    pub modify_index: u64,
}

/// Concurrency limits (bulkheads) towards one upstream, per sidecar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Open connections to the upstream.
    #[serde(rename = "MaxConnections", alias = "max_connections", default)]
    pub max_connections: Option<i64>,
    /// Requests waiting for a connection.
    #[serde(rename = "MaxPendingRequests", alias = "max_pending_requests", default)]
    pub max_pending_requests: Option<i64>,
    /// Requests in flight.
    #[serde(
        rename = "MaxConcurrentRequests",
        alias = "max_concurrent_requests",
        default
    )]
    pub max_concurrent_requests: Option<i64>,
}

/// Outlier detection: eject an instance after consecutive failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthCheck {
    /// How often ejections are re-evaluated (default 10s).
    #[serde(rename = "Interval", alias = "interval", default)]
    pub interval: Option<GoDuration>,
    /// Consecutive 5xx responses that eject an instance (default 5).
    #[serde(rename = "MaxFailures", alias = "max_failures", default)]
    pub max_failures: Option<i64>,
    /// *Plexus*: consecutive gateway errors (502, 503, 504, connect failures) that eject (default: off).
    #[serde(
        rename = "ConsecutiveGatewayErrors",
        alias = "consecutive_gateway_errors",
        default
    )]
    pub consecutive_gateway_errors: Option<i64>,
    /// % chance an instance meeting `MaxFailures` is actually ejected (default 100).
    #[serde(
        rename = "EnforcingConsecutive5xx",
        alias = "enforcing_consecutive_5xx",
        default
    )]
    pub enforcing_consecutive_5xx: Option<i64>,
    /// At most this % of instances ejected at once (default 10).
    #[serde(rename = "MaxEjectionPercent", alias = "max_ejection_percent", default)]
    pub max_ejection_percent: Option<i64>,
    /// Ejection time is this × times ejected (default 30s).
    #[serde(rename = "BaseEjectionTime", alias = "base_ejection_time", default)]
    pub base_ejection_time: Option<GoDuration>,
}

/// `RateLimits { InstanceLevel { ... } }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Limits applied by each instance's sidecar.
    #[serde(rename = "InstanceLevel", alias = "instance_level", default)]
    pub instance_level: InstanceLevelRateLimits,
}

/// Token bucket for the whole service, and per route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceLevelRateLimits {
    /// Tokens added per second (0: no service-wide limit).
    #[serde(rename = "RequestsPerSecond", alias = "requests_per_second", default)]
    pub requests_per_second: f64,
    /// Bucket size (default: `RequestsPerSecond`, at least 1).
    #[serde(rename = "RequestsMaxBurst", alias = "requests_max_burst", default)]
    pub requests_max_burst: Option<i64>,
    /// Per-path limits; the first matching one replaces the service-wide one.
    #[serde(rename = "Routes", alias = "routes", default)]
    pub routes: Vec<RateLimitRoute>,
}

/// A per-path token bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRoute {
    /// Exact path.
    #[serde(rename = "PathExact", alias = "path_exact", default)]
    pub path_exact: Option<String>,
    /// Path prefix.
    #[serde(rename = "PathPrefix", alias = "path_prefix", default)]
    pub path_prefix: Option<String>,
    /// Path regex (whole path).
    #[serde(rename = "PathRegex", alias = "path_regex", default)]
    pub path_regex: Option<String>,
    /// Tokens per second.
    #[serde(rename = "RequestsPerSecond", alias = "requests_per_second", default)]
    pub requests_per_second: f64,
    /// Bucket size.
    #[serde(rename = "RequestsMaxBurst", alias = "requests_max_burst", default)]
    pub requests_max_burst: Option<i64>,
}

/// *Plexus*: fault injection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultInjection {
    /// Delay some requests.
    #[serde(rename = "Delay", alias = "delay", default)]
    pub delay: Option<FaultDelay>,
    /// Abort some requests.
    #[serde(rename = "Abort", alias = "abort", default)]
    pub abort: Option<FaultAbort>,
    /// Only requests carrying this header (and value, if given) are subject to faults.
    #[serde(rename = "Header", alias = "header", default)]
    pub header: Option<FaultHeader>,
}

/// Delay `Percent` % of requests by `Duration`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// How long.
    #[serde(rename = "Duration", alias = "duration", default)]
    pub duration: GoDuration,
    /// 0–100.
    #[serde(rename = "Percent", alias = "percent", default)]
    pub percent: f64,
}

/// Answer `Percent` % of requests with `HttpStatus` without calling the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// 200–599.
    #[serde(rename = "HttpStatus", alias = "http_status", default)]
    pub http_status: i64,
    /// 0–100.
    #[serde(rename = "Percent", alias = "percent", default)]
    pub percent: f64,
}

/// Header a request must carry for faults to apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultHeader {
    /// Header name.
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// Exact value; absent: any value.
    #[serde(rename = "Value", alias = "value", default)]
    pub value: Option<String>,
}

/// *Plexus*: mirror requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Service receiving the copies.
    #[serde(rename = "Service", alias = "service", default)]
    pub service: String,
    /// 0–100 (default 100).
    #[serde(rename = "Percent", alias = "percent", default)]
    pub percent: Option<f64>,
}

/// `Kind = "service-resolver"`: subsets, failover, timeouts, load balancing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceResolver {
    /// Always `service-resolver`.
    #[serde(rename = "Kind", alias = "kind")]
    pub kind: String,
    /// The service this applies to.
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// Free-form metadata.
    #[serde(rename = "Meta", alias = "meta", default)]
    pub meta: BTreeMap<String, String>,
    /// Subset used when none is asked for (default: all instances).
    #[serde(rename = "DefaultSubset", alias = "default_subset", default)]
    pub default_subset: Option<String>,
    /// Named subsets of the instances.
    #[serde(rename = "Subsets", alias = "subsets", default)]
    pub subsets: BTreeMap<String, Subset>,
    /// Failover by subset name (`*`: any).
    #[serde(rename = "Failover", alias = "failover", default)]
    pub failover: BTreeMap<String, Failover>,
    /// Resolve this service as another service or subset instead (no `Failover` then).
    #[serde(rename = "Redirect", alias = "redirect", default)]
    pub redirect: Option<Redirect>,
    /// Connect timeout (default 5s).
    #[serde(rename = "ConnectTimeout", alias = "connect_timeout", default)]
    pub connect_timeout: Option<GoDuration>,
    /// Default request timeout for routes without their own.
    #[serde(rename = "RequestTimeout", alias = "request_timeout", default)]
    pub request_timeout: Option<GoDuration>,
    /// Load-balancer policy.
    #[serde(rename = "LoadBalancer", alias = "load_balancer", default)]
    pub load_balancer: Option<LoadBalancer>,
    /// Set by the server.
    #[serde(rename = "CreateIndex", alias = "create_index", default)]
    pub create_index: u64,
    /// Set by the server.
    #[serde(rename = "ModifyIndex", alias = "modify_index", default)]
    pub modify_index: u64,
}

/// A subset: instances matching a filter expression.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subset {
    /// E.g. `Service.Meta.version == "v2"` or `"canary" in Service.Tags`; clauses joined by `and`.
    #[serde(rename = "Filter", alias = "filter", default)]
    pub filter: String,
    /// Only passing instances (warning ones excluded).
    #[serde(rename = "OnlyPassing", alias = "only_passing", default)]
    pub only_passing: bool,
}

/// Where to go when a subset has no healthy instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    /// Another service.
    #[serde(rename = "Service", alias = "service", default)]
    pub service: Option<String>,
    /// A subset (of `Service`, or of this service).
    #[serde(rename = "ServiceSubset", alias = "service_subset", default)]
    pub service_subset: Option<String>,
    /// Ordered targets, tried in turn.
    #[serde(rename = "Targets", alias = "targets", default)]
    pub targets: Vec<FailoverTarget>,
    /// Other datacenters, tried in turn (reached through their mesh gateways).
    #[serde(rename = "Datacenters", alias = "datacenters", default)]
    pub datacenters: Vec<String>,
}

/// A resolver's `Redirect`: every resolution of its service becomes one of `Service` (its
/// default subset) or of `ServiceSubset` (of `Service`, which is required with it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// The service resolved instead.
    #[serde(rename = "Service", alias = "service", default)]
    pub service: Option<String>,
    /// A subset of `Service`.
    #[serde(rename = "ServiceSubset", alias = "service_subset", default)]
    pub service_subset: Option<String>,
    /// Another datacenter (not supported: refused by validation, naming it).
    #[serde(rename = "Datacenter", alias = "datacenter", default)]
    pub datacenter: Option<String>,
    /// Consul's namespaces (only `default`).
    #[serde(rename = "Namespace", alias = "namespace", default)]
    pub namespace: Option<String>,
    /// Consul Enterprise's partitions (only `default`).
    #[serde(rename = "Partition", alias = "partition", default)]
    pub partition: Option<String>,
}

/// One failover target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverTarget {
    /// Service (default: this one).
    #[serde(rename = "Service", alias = "service", default)]
    pub service: Option<String>,
    /// Subset.
    #[serde(rename = "ServiceSubset", alias = "service_subset", default)]
    pub service_subset: Option<String>,
}

/// `LoadBalancer { Policy = "..." ... }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    /// `round_robin` (default), `least_request`, `peak_ewma` (*Plexus*), `ring_hash`, `maglev`.
    #[serde(rename = "Policy", alias = "policy", default)]
    pub policy: String,
    /// `least_request` settings.
    #[serde(rename = "LeastRequestConfig", alias = "least_request_config", default)]
    pub least_request_config: Option<LeastRequestConfig>,
    /// `ring_hash` settings.
    #[serde(rename = "RingHashConfig", alias = "ring_hash_config", default)]
    pub ring_hash_config: Option<RingHashConfig>,
    /// Hash key for `ring_hash` / `maglev`; the first policy that yields a value wins.
    #[serde(rename = "HashPolicies", alias = "hash_policies", default)]
    pub hash_policies: Vec<HashPolicy>,
}

/// `least_request` settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeastRequestConfig {
    /// Candidates drawn (default 2).
    #[serde(rename = "ChoiceCount", alias = "choice_count", default)]
    pub choice_count: Option<i64>,
}

/// `ring_hash` settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingHashConfig {
    /// Ring entries (default 1024).
    #[serde(rename = "MinimumRingSize", alias = "minimum_ring_size", default)]
    pub minimum_ring_size: Option<i64>,
    /// Upper bound (default 8M).
    #[serde(rename = "MaximumRingSize", alias = "maximum_ring_size", default)]
    pub maximum_ring_size: Option<i64>,
}

/// What a request is hashed by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashPolicy {
    /// `header`, `cookie` or `query_parameter`; empty when `SourceIP`.
    #[serde(rename = "Field", alias = "field", default)]
    pub field: Option<String>,
    /// Header/cookie/parameter name.
    #[serde(rename = "FieldValue", alias = "field_value", default)]
    pub field_value: Option<String>,
    /// Hash by the client's IP.
    #[serde(rename = "SourceIP", alias = "source_ip", alias = "SourceIp", default)]
    pub source_ip: bool,
    /// Stop at this policy if it yields a value.
    #[serde(rename = "Terminal", alias = "terminal", default)]
    pub terminal: bool,
}

/// `Kind = "service-splitter"`: weighted splits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSplitter {
    /// Always `service-splitter`.
    #[serde(rename = "Kind", alias = "kind")]
    pub kind: String,
    /// The service this applies to.
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// Free-form metadata.
    #[serde(rename = "Meta", alias = "meta", default)]
    pub meta: BTreeMap<String, String>,
    /// Splits; weights sum to 100.
    #[serde(rename = "Splits", alias = "splits", default)]
    pub splits: Vec<Split>,
    /// Set by the server.
    #[serde(rename = "CreateIndex", alias = "create_index", default)]
    pub create_index: u64,
    /// Set by the server.
    #[serde(rename = "ModifyIndex", alias = "modify_index", default)]
    pub modify_index: u64,
}

/// One split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// 0–100, up to two decimals.
    #[serde(rename = "Weight", alias = "weight", default)]
    pub weight: f64,
    /// Service (default: the splitter's).
    #[serde(rename = "Service", alias = "service", default)]
    pub service: Option<String>,
    /// Subset.
    #[serde(rename = "ServiceSubset", alias = "service_subset", default)]
    pub service_subset: Option<String>,
    /// Changes to the requests this split sends.
    #[serde(rename = "RequestHeaders", alias = "request_headers", default)]
    pub request_headers: Option<HeaderModifiers>,
    /// Changes to the responses to them.
    #[serde(rename = "ResponseHeaders", alias = "response_headers", default)]
    pub response_headers: Option<HeaderModifiers>,
}

/// `Kind = "service-router"`: L7 routes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRouter {
    /// Always `service-router`.
    #[serde(rename = "Kind", alias = "kind")]
    pub kind: String,
    /// The service this applies to.
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// Free-form metadata.
    #[serde(rename = "Meta", alias = "meta", default)]
    pub meta: BTreeMap<String, String>,
    /// Routes, first match wins.
    #[serde(rename = "Routes", alias = "routes", default)]
    pub routes: Vec<Route>,
    /// Set by the server.
    #[serde(rename = "CreateIndex", alias = "create_index", default)]
    pub create_index: u64,
    /// Set by the server.
    #[serde(rename = "ModifyIndex", alias = "modify_index", default)]
    pub modify_index: u64,
}

/// One route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// *Plexus*: route name for metrics (default `route-<index>`).
    #[serde(rename = "Name", alias = "name", default)]
    pub name: Option<String>,
    /// What requests this route takes (absent: all).
    #[serde(rename = "Match", alias = "match", default)]
    pub r#match: Option<RouteMatch>,
    /// Where they go.
    #[serde(rename = "Destination", alias = "destination", default)]
    pub destination: Option<RouteDestination>,
}

/// `Match { HTTP { ... } }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// HTTP criteria.
    #[serde(rename = "HTTP", alias = "http", alias = "Http", default)]
    pub http: Option<HttpMatch>,
}

/// HTTP criteria; all given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMatch {
    /// Exact path.
    #[serde(rename = "PathExact", alias = "path_exact", default)]
    pub path_exact: Option<String>,
    /// Path prefix.
    #[serde(rename = "PathPrefix", alias = "path_prefix", default)]
    pub path_prefix: Option<String>,
    /// Path regex (must match the whole path).
    #[serde(rename = "PathRegex", alias = "path_regex", default)]
    pub path_regex: Option<String>,
    /// Header criteria.
    #[serde(rename = "Header", alias = "header", default)]
    pub header: Vec<HeaderMatch>,
    /// Query parameter criteria.
    #[serde(rename = "QueryParam", alias = "query_param", default)]
    pub query_param: Vec<QueryParamMatch>,
    /// Allowed methods (absent: any).
    #[serde(rename = "Methods", alias = "methods", default)]
    pub methods: Vec<String>,
}

/// One header criterion; at most one of `Present`/`Exact`/`Prefix`/`Suffix`/`Regex`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// The header is present.
    #[serde(rename = "Present", alias = "present", default)]
    pub present: bool,
    /// Exact value.
    #[serde(rename = "Exact", alias = "exact", default)]
    pub exact: Option<String>,
    /// Value prefix.
    #[serde(rename = "Prefix", alias = "prefix", default)]
    pub prefix: Option<String>,
    /// Value suffix.
    #[serde(rename = "Suffix", alias = "suffix", default)]
    pub suffix: Option<String>,
    /// Value regex (whole value).
    #[serde(rename = "Regex", alias = "regex", default)]
    pub regex: Option<String>,
    /// Negate the result.
    #[serde(rename = "Invert", alias = "invert", default)]
    pub invert: bool,
}

/// One query parameter criterion; one of `Present`/`Exact`/`Regex`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParamMatch {
    /// Parameter name.
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// The parameter is present.
    #[serde(rename = "Present", alias = "present", default)]
    pub present: bool,
    /// Exact value.
    #[serde(rename = "Exact", alias = "exact", default)]
    pub exact: Option<String>,
    /// Value regex (whole value).
    #[serde(rename = "Regex", alias = "regex", default)]
    pub regex: Option<String>,
}

/// Where a route sends requests, and how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDestination {
    /// Service (default: the router's).
    #[serde(rename = "Service", alias = "service", default)]
    pub service: Option<String>,
    /// Subset (default: the resolver's default; a splitter applies when none is given).
    #[serde(rename = "ServiceSubset", alias = "service_subset", default)]
    pub service_subset: Option<String>,
    /// Replace the matched path prefix.
    #[serde(rename = "PrefixRewrite", alias = "prefix_rewrite", default)]
    pub prefix_rewrite: Option<String>,
    /// Changes to the requests this route sends.
    #[serde(rename = "RequestHeaders", alias = "request_headers", default)]
    pub request_headers: Option<HeaderModifiers>,
    /// Changes to the responses to them.
    #[serde(rename = "ResponseHeaders", alias = "response_headers", default)]
    pub response_headers: Option<HeaderModifiers>,
    /// Whole-request timeout, retries included.
    #[serde(rename = "RequestTimeout", alias = "request_timeout", default)]
    pub request_timeout: Option<GoDuration>,
    /// Idle stream timeout.
    #[serde(rename = "IdleTimeout", alias = "idle_timeout", default)]
    pub idle_timeout: Option<GoDuration>,
    /// Retries after the first attempt.
    #[serde(rename = "NumRetries", alias = "num_retries", default)]
    pub num_retries: Option<i64>,
    /// Shorthand for `RetryOn = ["connect-failure"]`.
    #[serde(
        rename = "RetryOnConnectFailure",
        alias = "retry_on_connect_failure",
        default
    )]
    pub retry_on_connect_failure: bool,
    /// Retry on these response statuses.
    #[serde(
        rename = "RetryOnStatusCodes",
        alias = "retry_on_status_codes",
        default
    )]
    pub retry_on_status_codes: Vec<i64>,
    /// Retry conditions: `connect-failure`, `reset`, `refused-stream`, `5xx`, `gateway-error`,
    /// `retriable-4xx`, and gRPC `cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable`.
    #[serde(rename = "RetryOn", alias = "retry_on", default)]
    pub retry_on: Vec<String>,
    /// *Plexus*: exponential backoff between retries.
    #[serde(rename = "RetryBackoff", alias = "retry_backoff", default)]
    pub retry_backoff: Option<RetryBackoff>,
    /// *Plexus*: cap retries to a share of live requests.
    #[serde(rename = "RetryBudget", alias = "retry_budget", default)]
    pub retry_budget: Option<RetryBudget>,
}

/// *Plexus*: backoff between retries (full jitter, doubled each time, capped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackoff {
    /// First interval (default 25ms).
    #[serde(rename = "BaseInterval", alias = "base_interval", default)]
    pub base_interval: Option<GoDuration>,
    /// Cap (default 10 × base).
    #[serde(rename = "MaxInterval", alias = "max_interval", default)]
    pub max_interval: Option<GoDuration>,
}

/// *Plexus*: retry budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries in flight ≤ `Percent`/100 × active requests + `MinRetryConcurrency` (default 20).
    #[serde(rename = "Percent", alias = "percent", default)]
    pub percent: Option<f64>,
    /// Retries always allowed regardless of load (default 3).
    #[serde(
        rename = "MinRetryConcurrency",
        alias = "min_retry_concurrency",
        default
    )]
    pub min_retry_concurrency: Option<i64>,
}
