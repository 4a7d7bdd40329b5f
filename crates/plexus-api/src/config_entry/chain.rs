//! The compiled discovery chain: everything a sidecar needs to route requests to one upstream,
//! with defaults applied and cross-entry references resolved. Served by
//! `GET /v1/discovery-chain/:service` (blocking query on the config index).
//!
//! ```text
//!  request ─► routes (first match) ─► splits (weighted pick) ─► target "subset.service"
//!                                                               └► targets[id]: filter, LB, failover
//! ```
//!
//! The last route always matches everything (the default route), so a request always finds one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::gateway::HeaderModifiers;
use crate::duration::GoDuration;

/// A compiled chain for one upstream service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryChain {
    /// The upstream as named by the caller.
    pub service: String,
    /// Protocol of `service` (from its `service-defaults`; default tcp).
    pub protocol: Protocol,
    /// Routes in order; first match wins; the last one matches everything.
    pub routes: Vec<CompiledRoute>,
    /// Every target a route can reach, by [`TargetId`] text (`subset.service`, or `service` when
    /// there is no subset).
    pub targets: BTreeMap<String, ChainTarget>,
    /// Resilience policy from `service`'s `service-defaults`.
    pub policy: ServicePolicy,
}

/// Application protocol of a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// L4 only: no routing, splits or retries apply.
    #[default]
    Tcp,
    /// HTTP/1.1 (and HTTP/2 between sidecars).
    Http,
    /// HTTP/2.
    Http2,
    /// gRPC over HTTP/2.
    Grpc,
}

impl Protocol {
    /// Parses `tcp|http|http2|grpc` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Self::Tcp),
            "http" => Some(Self::Http),
            "http2" => Some(Self::Http2),
            "grpc" => Some(Self::Grpc),
            _ => None,
        }
    }

    /// Whether L7 policy applies.
    pub fn is_l7(self) -> bool {
        !matches!(self, Self::Tcp)
    }
}

/// One route, compiled.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompiledRoute {
    /// Bounded name for metrics: the route's `Name`, `route-<i>`, or `default`.
    pub name: String,
    /// What it matches (every given criterion must hold).
    pub matcher: RequestMatch,
    /// Weighted targets (one with weight 100 when there is no split). Weights sum to 100.
    pub splits: Vec<WeightedTarget>,
    /// Path prefix replacement.
    pub prefix_rewrite: Option<String>,
    /// Whole-request timeout (retries included); `None`: no timeout.
    pub request_timeout: Option<GoDuration>,
    /// Idle timeout; `None`: none.
    pub idle_timeout: Option<GoDuration>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Header changes of the route (its destination's `RequestHeaders`/`ResponseHeaders`).
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

/// Header changes of a route or of one of its splits: to the request sent upstream, and to the
/// response returned. A split's apply before its route's (Envoy's order: the route's `Set`
/// wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    /// `RequestHeaders`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderModifiers>,
    /// `ResponseHeaders`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderModifiers>,
}

impl Headers {
    /// No change either way.
    pub fn is_empty(&self) -> bool {
        self.request.is_none() && self.response.is_none()
    }
}

/// Request criteria. Empty: matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMatch {
    /// Path criterion.
    pub path: Option<PathMatch>,
    /// Header criteria (names lowercase).
    pub headers: Vec<HeaderCriterion>,
    /// Query parameter criteria.
    pub query: Vec<QueryCriterion>,
    /// Allowed methods, uppercase; empty: any.
    pub methods: Vec<String>,
}

/// A path criterion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum PathMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// The whole path matches the regex (validated).
    Regex(String),
}

/// How a header or query value is tested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum ValueMatch {
    /// Present with any value.
    Present,
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Contains (L7 intentions' `Contains`).
    Contains(String),
    /// The whole value matches the regex (validated).
    Regex(String),
}

/// A header criterion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderCriterion {
    /// Lowercase name.
    pub name: String,
    /// Test.
    pub value: ValueMatch,
    /// Negate.
    pub invert: bool,
    /// Compare without regard to ASCII case (L7 intentions' `IgnoreCase`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
}

/// A query parameter criterion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryCriterion {
    /// Name.
    pub name: String,
    /// Test (`Present`, `Exact` or `Regex`).
    pub value: ValueMatch,
}

/// A target with its share of a route's traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedTarget {
    /// 0–100.
    pub weight: f64,
    /// Key into [`DiscoveryChain::targets`].
    pub target: String,
    /// Header changes of this split.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

/// Retry policy of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: none).
    pub num_retries: u32,
    /// Conditions that allow a retry.
    pub retry_on: Vec<RetryOn>,
    /// Response statuses that allow a retry.
    pub status_codes: Vec<u16>,
    /// Backoff base.
    pub backoff_base: GoDuration,
    /// Backoff cap.
    pub backoff_max: GoDuration,
    /// Retries in flight ≤ `budget_percent`/100 × active requests + `budget_min_concurrency`.
    pub budget_percent: f64,
    /// See `budget_percent`.
    pub budget_min_concurrency: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            num_retries: 0,
            retry_on: Vec::new(),
            status_codes: Vec::new(),
            backoff_base: GoDuration(std::time::Duration::from_millis(25)),
            backoff_max: GoDuration(std::time::Duration::from_millis(250)),
            budget_percent: 20.0,
            budget_min_concurrency: 3,
        }
    }
}

/// A retry condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RetryOn {
    /// The connection to the upstream could not be made.
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The upstream reset or closed the connection before responding.
    #[serde(rename = "reset")]
    Reset,
    /// HTTP/2 REFUSED_STREAM.
    #[serde(rename = "refused-stream")]
    RefusedStream,
    /// Any 5xx response (and connect failure / reset, as in Envoy).
    #[serde(rename = "5xx")]
    Status5xx,
    /// 502, 503, 504 (and connect failure / reset).
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// 409.
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    /// gRPC CANCELLED (1).
    #[serde(rename = "cancelled")]
    GrpcCancelled,
    /// gRPC DEADLINE_EXCEEDED (4).
    #[serde(rename = "deadline-exceeded")]
    GrpcDeadlineExceeded,
    /// gRPC RESOURCE_EXHAUSTED (8).
    #[serde(rename = "resource-exhausted")]
    GrpcResourceExhausted,
    /// gRPC INTERNAL (13).
    #[serde(rename = "internal")]
    GrpcInternal,
    /// gRPC UNAVAILABLE (14).
    #[serde(rename = "unavailable")]
    GrpcUnavailable,
}

impl RetryOn {
    /// Every condition, with its written name.
    pub const ALL: [(&'static str, RetryOn); 11] = [
        ("connect-failure", Self::ConnectFailure),
        ("reset", Self::Reset),
        ("refused-stream", Self::RefusedStream),
        ("5xx", Self::Status5xx),
        ("gateway-error", Self::GatewayError),
        ("retriable-4xx", Self::Retriable4xx),
        ("cancelled", Self::GrpcCancelled),
        ("deadline-exceeded", Self::GrpcDeadlineExceeded),
        ("resource-exhausted", Self::GrpcResourceExhausted),
        ("internal", Self::GrpcInternal),
        ("unavailable", Self::GrpcUnavailable),
    ];

    /// Parses a written condition.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, c)| *c)
    }

    /// The gRPC status code this condition names, if it is a gRPC one.
    pub fn grpc_code(self) -> Option<u32> {
        match self {
            Self::GrpcCancelled => Some(1),
            Self::GrpcDeadlineExceeded => Some(4),
            Self::GrpcResourceExhausted => Some(8),
            Self::GrpcInternal => Some(13),
            Self::GrpcUnavailable => Some(14),
            _ => None,
        }
    }
}

/// One routable target: a service, optionally narrowed to a subset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainTarget {
    /// Service name.
    pub service: String,
    /// Subset name, if any.
    pub subset: Option<String>,
    /// Instance filter (empty: all instances).
    pub filter: Vec<FilterClause>,
    /// The filter as written (for display).
    pub filter_expression: String,
    /// Only passing instances.
    pub only_passing: bool,
    /// Targets to try, in order, when this one has no healthy instance (keys into `targets`).
    pub failover: Vec<String>,
    /// Other datacenters to use, in order, when neither this target nor its failover targets
    /// have a healthy instance here (the resolver's `Failover.*.Datacenters`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_datacenters: Vec<String>,
    /// Connect timeout (default 5s).
    pub connect_timeout: GoDuration,
    /// Load balancing.
    pub load_balancer: LoadBalancerPolicy,
}

/// One clause of a subset filter; all clauses must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FilterClause {
    /// `Service.Meta.<key> == "<value>"`.
    MetaEquals {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// `Service.Meta.<key> != "<value>"` (an absent key counts as not equal).
    MetaNotEquals {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// `"<tag>" in Service.Tags` / `Service.Tags contains "<tag>"`.
    HasTag {
        /// Tag.
        tag: String,
    },
    /// `"<tag>" not in Service.Tags`.
    LacksTag {
        /// Tag.
        tag: String,
    },
}

impl FilterClause {
    /// Whether an instance with these tags and meta satisfies the clause.
    pub fn matches(&self, tags: &[String], meta: &BTreeMap<String, String>) -> bool {
        match self {
            Self::MetaEquals { key, value } => meta.get(key) == Some(value),
            Self::MetaNotEquals { key, value } => meta.get(key) != Some(value),
            Self::HasTag { tag } => tags.contains(tag),
            Self::LacksTag { tag } => !tags.contains(tag),
        }
    }
}

/// Whether an instance satisfies every clause.
pub fn filter_matches(
    filter: &[FilterClause],
    tags: &[String],
    meta: &BTreeMap<String, String>,
) -> bool {
    filter.iter().all(|c| c.matches(tags, meta))
}

/// Load-balancing policy of a target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerPolicy {
    /// Algorithm.
    pub policy: LbAlgorithm,
    /// P2C candidates for `least_request` (default 2).
    pub choice_count: u32,
    /// Ring entries for `ring_hash` (default 1024).
    pub ring_size: u32,
    /// Hash key sources for `ring_hash` / `maglev`, in order.
    pub hash_policies: Vec<HashKey>,
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbAlgorithm {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Power of two choices on in-flight requests.
    LeastRequest,
    /// Power of two choices on latency EWMA × (in-flight + 1).
    PeakEwma,
    /// Consistent hashing on a ring.
    RingHash,
    /// Maglev consistent hashing.
    Maglev,
}

impl LbAlgorithm {
    /// Parses Consul's policy name (`""` is round robin).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "round_robin" => Some(Self::RoundRobin),
            "least_request" => Some(Self::LeastRequest),
            "peak_ewma" => Some(Self::PeakEwma),
            "ring_hash" => Some(Self::RingHash),
            "maglev" => Some(Self::Maglev),
            _ => None,
        }
    }
}

/// Where a request's hash key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashKey {
    /// Source.
    pub source: HashSource,
    /// Stop here if this source yields a value.
    pub terminal: bool,
}

/// A hash key source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum HashSource {
    /// A request header (lowercase name).
    Header(String),
    /// A cookie.
    Cookie(String),
    /// A query parameter.
    QueryParameter(String),
    /// The client's IP address.
    SourceIp,
}

/// Resilience policy from `service-defaults`, defaults applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServicePolicy {
    /// Concurrency limits (`None`: unlimited).
    pub limits: LimitsPolicy,
    /// Outlier detection (`None`: off).
    pub outlier: Option<OutlierPolicy>,
    /// Service-wide token bucket (`None`: no limit).
    pub rate_limit: Option<TokenBucketPolicy>,
    /// Per-path token buckets; the first matching one replaces the service-wide one.
    pub route_rate_limits: Vec<RouteRateLimit>,
    /// Fault injection (`None`: off).
    pub fault: Option<FaultPolicy>,
    /// Mirroring (`None`: off).
    pub mirror: Option<MirrorPolicy>,
}

/// Concurrency limits per upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsPolicy {
    /// Open connections.
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection / slot.
    pub max_pending_requests: Option<u32>,
    /// Requests in flight.
    pub max_concurrent_requests: Option<u32>,
}

/// Outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OutlierPolicy {
    /// Re-evaluation interval.
    pub interval: GoDuration,
    /// Consecutive 5xx that eject (0: off).
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors that eject (0: off).
    pub consecutive_gateway_errors: u32,
    /// % chance of enforcing.
    pub enforcing_percent: f64,
    /// Max % of instances ejected.
    pub max_ejection_percent: f64,
    /// Ejection time = base × times ejected.
    pub base_ejection_time: GoDuration,
}

/// A token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenBucketPolicy {
    /// Refill rate.
    pub requests_per_second: f64,
    /// Capacity (≥ 1).
    pub burst: u32,
}

/// A per-path token bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRateLimit {
    /// Path criterion.
    pub path: PathMatch,
    /// Bucket.
    pub bucket: TokenBucketPolicy,
}

/// Fault injection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultPolicy {
    /// Delay and its %.
    pub delay: Option<(GoDuration, f64)>,
    /// Abort status and its %.
    pub abort: Option<(u16, f64)>,
    /// Only requests with this header (lowercase name) and optional exact value.
    pub header: Option<(String, Option<String>)>,
}

/// Mirroring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorPolicy {
    /// Service receiving copies.
    pub service: String,
    /// % of requests copied.
    pub percent: f64,
}

/// Builds the target id (`subset.service` or `service`).
pub fn target_id(service: &str, subset: Option<&str>) -> String {
    match subset {
        Some(s) if !s.is_empty() => format!("{s}.{service}"),
        _ => service.to_owned(),
    }
}
