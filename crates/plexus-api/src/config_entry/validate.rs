//! Config entry validation: [`validate`] checks one entry alone; [`check_references`] checks it
//! against the other stored entries (subsets named by splitters and routers must be defined by the
//! target service's resolver). Every problem is collected, each naming its field path in the API's
//! `PascalCase` (`Splits[1].Weight`, `Routes[0].Destination.RetryOn[2]`).

use std::fmt;

use super::entries::{
    FaultInjection, HashPolicy, HeaderMatch, HttpMatch, LoadBalancer, PassiveHealthCheck,
    QueryParamMatch, RateLimits, RouteDestination, ServiceDefaults, ServiceResolver, ServiceRouter,
    ServiceSplitter,
};
use super::{ConfigEntry, chain, filter};

/// One problem with a config entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError {
    /// Field path (`Splits[1].Weight`); empty for the entry as a whole.
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl EntryError {
    /// Builds an error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for EntryError {}

/// Every problem found (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryErrors(pub Vec<EntryError>);

impl fmt::Display for EntryErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for EntryErrors {}

impl From<EntryError> for EntryErrors {
    fn from(e: EntryError) -> Self {
        Self(vec![e])
    }
}

#[derive(Default)]
pub(super) struct Errs(pub(super) Vec<EntryError>);

impl Errs {
    pub(super) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(EntryError::new(field, message));
    }
    /// `RequestHeaders` and `ResponseHeaders` under `base`.
    fn headers(
        &mut self,
        base: &str,
        request: &Option<super::gateway::HeaderModifiers>,
        response: &Option<super::gateway::HeaderModifiers>,
    ) {
        for (part, modifiers) in [("RequestHeaders", request), ("ResponseHeaders", response)] {
            if let Some(modifiers) = modifiers {
                super::gateway::check_header_modifiers(
                    &format!("{base}.{part}"),
                    modifiers,
                    &mut |field, message| self.push(field, message),
                );
            }
        }
    }

    fn percent(&mut self, field: &str, v: f64) {
        if !(0.0..=100.0).contains(&v) || v.is_nan() {
            self.push(field, format!("{v} is outside 0–100"));
        }
    }
    fn non_negative(&mut self, field: &str, v: Option<i64>) {
        if let Some(v) = v
            && v < 0
        {
            self.push(field, format!("{v} must not be negative"));
        }
    }
    fn regex(&mut self, field: &str, re: &Option<String>) {
        if let Some(re) = re
            && let Err(e) = regex::Regex::new(re)
        {
            self.push(field, format!("invalid regex: {e}"));
        }
    }
    pub(super) fn service_name(&mut self, field: &str, name: &str) {
        let ok = !name.is_empty()
            && name.len() <= 256
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            self.push(
                field,
                format!(
                    "{name:?} is not a service name (letters, digits, '-', '_', '.'; at most 256)"
                ),
            );
        }
    }
    fn finish(self) -> Result<(), EntryErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(EntryErrors(self.0))
        }
    }
}

/// Checks one entry alone.
pub fn validate(entry: &ConfigEntry) -> Result<(), EntryErrors> {
    let mut e = Errs::default();
    if entry.kind() == super::Kind::ProxyDefaults {
        // Named `global`, checked with the rest of it.
    } else if entry.name().trim().is_empty() {
        e.push("Name", "is required");
    } else if entry.name() == "*" && entry.kind() == super::Kind::ServiceIntentions {
        // Intentions for every destination.
    } else if entry.name() == "*" {
        e.push("Name", "wildcard entries are not supported");
    } else {
        e.service_name("Name", entry.name());
    }
    match entry {
        ConfigEntry::ServiceDefaults(d) => defaults(d, &mut e),
        ConfigEntry::ServiceResolver(r) => resolver(r, &mut e),
        ConfigEntry::ServiceSplitter(s) => splitter(s, &mut e),
        ConfigEntry::ServiceRouter(r) => router(r, &mut e),
        ConfigEntry::IngressGateway(g) => super::gateway::check_ingress(g, &mut e.0),
        ConfigEntry::TerminatingGateway(g) => super::gateway::check_terminating(g, &mut e.0),
        ConfigEntry::ServiceIntentions(i) => super::intentions::check(i, &mut e),
        ConfigEntry::ProxyDefaults(p) => super::proxy_defaults::check(p, &mut e),
    }
    e.finish()
}

fn defaults(d: &ServiceDefaults, e: &mut Errs) {
    if let Some(p) = &d.protocol
        && chain::Protocol::parse(p).is_none()
    {
        e.push(
            "Protocol",
            format!("unknown protocol {p:?}; expected tcp, http, http2 or grpc"),
        );
    }
    if let Some(l) = &d.limits {
        e.non_negative("Limits.MaxConnections", l.max_connections);
        e.non_negative("Limits.MaxPendingRequests", l.max_pending_requests);
        e.non_negative("Limits.MaxConcurrentRequests", l.max_concurrent_requests);
    }
    if let Some(p) = &d.passive_health_check {
        passive(p, e);
    }
    if let Some(r) = &d.rate_limits {
        rate_limits(r, e);
    }
    if let Some(f) = &d.fault_injection {
        fault(f, e);
    }
    if let Some(m) = &d.mirror {
        if m.service.trim().is_empty() {
            e.push("Mirror.Service", "is required");
        } else if m.service == d.name {
            e.push("Mirror.Service", "a service cannot mirror to itself");
        } else {
            e.service_name("Mirror.Service", &m.service);
        }
        if let Some(p) = m.percent {
            e.percent("Mirror.Percent", p);
        }
    }
}

fn passive(p: &PassiveHealthCheck, e: &mut Errs) {
    e.non_negative("PassiveHealthCheck.MaxFailures", p.max_failures);
    e.non_negative(
        "PassiveHealthCheck.ConsecutiveGatewayErrors",
        p.consecutive_gateway_errors,
    );
    if let Some(v) = p.enforcing_consecutive_5xx {
        e.percent("PassiveHealthCheck.EnforcingConsecutive5xx", v as f64);
    }
    if let Some(v) = p.max_ejection_percent {
        e.percent("PassiveHealthCheck.MaxEjectionPercent", v as f64);
    }
    if let Some(i) = p.interval
        && i.0.is_zero()
    {
        e.push("PassiveHealthCheck.Interval", "must be greater than 0");
    }
}

fn rate_limits(r: &RateLimits, e: &mut Errs) {
    let il = &r.instance_level;
    if il.requests_per_second < 0.0 || !il.requests_per_second.is_finite() {
        e.push(
            "RateLimits.InstanceLevel.RequestsPerSecond",
            format!("{} must be a non-negative number", il.requests_per_second),
        );
    }
    e.non_negative(
        "RateLimits.InstanceLevel.RequestsMaxBurst",
        il.requests_max_burst,
    );
    for (i, route) in il.routes.iter().enumerate() {
        let base = format!("RateLimits.InstanceLevel.Routes[{i}]");
        let paths = [
            route.path_exact.is_some(),
            route.path_prefix.is_some(),
            route.path_regex.is_some(),
        ];
        if paths.iter().filter(|p| **p).count() != 1 {
            e.push(
                base.clone(),
                "exactly one of PathExact, PathPrefix, PathRegex is required",
            );
        }
        e.regex(&format!("{base}.PathRegex"), &route.path_regex);
        if route.requests_per_second <= 0.0 || !route.requests_per_second.is_finite() {
            e.push(
                format!("{base}.RequestsPerSecond"),
                format!("{} must be greater than 0", route.requests_per_second),
            );
        }
        e.non_negative(
            &format!("{base}.RequestsMaxBurst"),
            route.requests_max_burst,
        );
    }
}

fn fault(f: &FaultInjection, e: &mut Errs) {
    if let Some(d) = &f.delay {
        e.percent("FaultInjection.Delay.Percent", d.percent);
        if d.duration.0.is_zero() {
            e.push("FaultInjection.Delay.Duration", "must be greater than 0");
        }
    }
    if let Some(a) = &f.abort {
        e.percent("FaultInjection.Abort.Percent", a.percent);
        if !(200..=599).contains(&a.http_status) {
            e.push(
                "FaultInjection.Abort.HttpStatus",
                format!("{} is not an HTTP status in 200–599", a.http_status),
            );
        }
    }
    if let Some(h) = &f.header
        && h.name.trim().is_empty()
    {
        e.push("FaultInjection.Header.Name", "is required");
    }
}

fn resolver(r: &ServiceResolver, e: &mut Errs) {
    if let Some(redirect) = &r.redirect {
        self::redirect(r, redirect, e);
    }
    for (name, subset) in &r.subsets {
        if name.is_empty() || name.contains('.') || name == "*" {
            e.push(
                format!("Subsets.{name}"),
                "subset names must be non-empty and contain no \".\" or \"*\"",
            );
        }
        if let Err(msg) = filter::parse(&subset.filter) {
            e.push(
                format!("Subsets.{name}.Filter"),
                format!("invalid filter: {msg}"),
            );
        }
    }
    if let Some(d) = &r.default_subset
        && !d.is_empty()
        && !r.subsets.contains_key(d)
    {
        e.push(
            "DefaultSubset",
            format!("unknown subset {d:?} (not in Subsets)"),
        );
    }
    for (key, f) in &r.failover {
        if key != "*" && !r.subsets.contains_key(key) {
            e.push(
                format!("Failover.{key}"),
                format!("unknown subset {key:?} (not in Subsets, and not \"*\")"),
            );
        }
        if f.service.is_none()
            && f.service_subset.is_none()
            && f.targets.is_empty()
            && f.datacenters.is_empty()
        {
            e.push(
                format!("Failover.{key}"),
                "one of Service, ServiceSubset, Targets or Datacenters is required",
            );
        }
        for (i, dc) in f.datacenters.iter().enumerate() {
            let ok = !dc.is_empty()
                && dc.len() <= 128
                && dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                e.push(
                    format!("Failover.{key}.Datacenters[{i}]"),
                    format!(
                        "{dc:?} is not a datacenter name (1 to 128 letters, digits, '-' and '_')"
                    ),
                );
            }
        }
        if f.service.is_none()
            && let Some(s) = &f.service_subset
            && !r.subsets.contains_key(s)
        {
            e.push(
                format!("Failover.{key}.ServiceSubset"),
                format!("unknown subset {s:?} (not in Subsets)"),
            );
        }
        for (i, t) in f.targets.iter().enumerate() {
            if t.service.is_none()
                && let Some(s) = &t.service_subset
                && !r.subsets.contains_key(s)
            {
                e.push(
                    format!("Failover.{key}.Targets[{i}].ServiceSubset"),
                    format!("unknown subset {s:?} (not in Subsets)"),
                );
            }
        }
    }
    if let Some(lb) = &r.load_balancer {
        load_balancer(lb, e);
    }
}

fn load_balancer(lb: &LoadBalancer, e: &mut Errs) {
    let algo = chain::LbAlgorithm::parse(&lb.policy);
    if algo.is_none() {
        e.push(
            "LoadBalancer.Policy",
            format!(
                "unknown policy {:?}; expected round_robin, least_request, peak_ewma, ring_hash or maglev",
                lb.policy
            ),
        );
    }
    if let Some(c) = lb.least_request_config
        && let Some(n) = c.choice_count
        && n < 2
    {
        e.push(
            "LoadBalancer.LeastRequestConfig.ChoiceCount",
            format!("{n} must be at least 2"),
        );
    }
    if let Some(c) = lb.ring_hash_config {
        e.non_negative(
            "LoadBalancer.RingHashConfig.MinimumRingSize",
            c.minimum_ring_size,
        );
        e.non_negative(
            "LoadBalancer.RingHashConfig.MaximumRingSize",
            c.maximum_ring_size,
        );
    }
    let hashing = matches!(
        algo,
        Some(chain::LbAlgorithm::RingHash | chain::LbAlgorithm::Maglev)
    );
    if !lb.hash_policies.is_empty() && !hashing && algo.is_some() {
        e.push(
            "LoadBalancer.HashPolicies",
            "only ring_hash and maglev use hash policies",
        );
    }
    for (i, h) in lb.hash_policies.iter().enumerate() {
        hash_policy(&format!("LoadBalancer.HashPolicies[{i}]"), h, e);
    }
}

fn hash_policy(base: &str, h: &HashPolicy, e: &mut Errs) {
    match (h.field.as_deref(), h.source_ip) {
        (Some(_), true) => e.push(base, "Field and SourceIP are mutually exclusive"),
        (None, false) => e.push(base, "one of Field or SourceIP is required"),
        (Some(f), false) => {
            if !matches!(f, "header" | "cookie" | "query_parameter") {
                e.push(
                    format!("{base}.Field"),
                    format!("unknown field {f:?}; expected header, cookie or query_parameter"),
                );
            }
            if h.field_value.as_deref().unwrap_or("").is_empty() {
                e.push(
                    format!("{base}.FieldValue"),
                    "is required when Field is set",
                );
            }
        }
        (None, true) => {}
    }
}

fn splitter(s: &ServiceSplitter, e: &mut Errs) {
    if s.splits.is_empty() {
        e.push("Splits", "at least one split is required");
    }
    let mut sum = 0.0;
    for (i, split) in s.splits.iter().enumerate() {
        e.percent(&format!("Splits[{i}].Weight"), split.weight);
        if let Some(service) = &split.service {
            e.service_name(&format!("Splits[{i}].Service"), service);
        }
        e.headers(
            &format!("Splits[{i}]"),
            &split.request_headers,
            &split.response_headers,
        );
        sum += split.weight;
    }
    if !s.splits.is_empty() && (sum - 100.0).abs() > 0.01 {
        e.push("Splits", format!("weights sum to {sum}, not 100"));
    }
}

fn router(r: &ServiceRouter, e: &mut Errs) {
    for (i, route) in r.routes.iter().enumerate() {
        let base = format!("Routes[{i}]");
        if let Some(name) = &route.name
            && (name.is_empty() || name == "default")
        {
            e.push(
                format!("{base}.Name"),
                "must be non-empty and not \"default\"",
            );
        }
        if let Some(http) = route.r#match.as_ref().and_then(|m| m.http.as_ref()) {
            http_match(&format!("{base}.Match.HTTP"), http, e);
        }
        if let Some(d) = &route.destination {
            destination(&format!("{base}.Destination"), d, e);
        }
    }
}

fn http_match(base: &str, m: &HttpMatch, e: &mut Errs) {
    let paths = [
        m.path_exact.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
    ];
    if paths.iter().filter(|p| **p).count() > 1 {
        e.push(
            base,
            "at most one of PathExact, PathPrefix, PathRegex may be set",
        );
    }
    for (field, p) in [("PathExact", &m.path_exact), ("PathPrefix", &m.path_prefix)] {
        if let Some(p) = p
            && !p.starts_with('/')
        {
            e.push(
                format!("{base}.{field}"),
                format!("{p:?} must start with /"),
            );
        }
    }
    e.regex(&format!("{base}.PathRegex"), &m.path_regex);
    for (i, h) in m.header.iter().enumerate() {
        header(&format!("{base}.Header[{i}]"), h, e);
    }
    for (i, q) in m.query_param.iter().enumerate() {
        query(&format!("{base}.QueryParam[{i}]"), q, e);
    }
    for (i, method) in m.methods.iter().enumerate() {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            e.push(
                format!("{base}.Methods[{i}]"),
                format!("{method:?} is not an HTTP method"),
            );
        }
    }
}

fn header(base: &str, h: &HeaderMatch, e: &mut Errs) {
    if h.name.trim().is_empty() {
        e.push(format!("{base}.Name"), "is required");
    }
    let set = [
        h.present,
        h.exact.is_some(),
        h.prefix.is_some(),
        h.suffix.is_some(),
        h.regex.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        e.push(
            base,
            "exactly one of Present, Exact, Prefix, Suffix, Regex is required",
        );
    }
    e.regex(&format!("{base}.Regex"), &h.regex);
}

fn query(base: &str, q: &QueryParamMatch, e: &mut Errs) {
    if q.name.trim().is_empty() {
        e.push(format!("{base}.Name"), "is required");
    }
    let set = [q.present, q.exact.is_some(), q.regex.is_some()];
    if set.iter().filter(|s| **s).count() != 1 {
        e.push(base, "exactly one of Present, Exact, Regex is required");
    }
    e.regex(&format!("{base}.Regex"), &q.regex);
}

fn destination(base: &str, d: &RouteDestination, e: &mut Errs) {
    if let Some(service) = &d.service {
        e.service_name(&format!("{base}.Service"), service);
    }
    e.headers(base, &d.request_headers, &d.response_headers);
    e.non_negative(&format!("{base}.NumRetries"), d.num_retries);
    for (i, cond) in d.retry_on.iter().enumerate() {
        if chain::RetryOn::parse(cond).is_none() {
            let known: Vec<&str> = chain::RetryOn::ALL.iter().map(|(n, _)| *n).collect();
            e.push(
                format!("{base}.RetryOn[{i}]"),
                format!(
                    "unknown retry condition {cond:?}; expected one of {}",
                    known.join(", ")
                ),
            );
        }
    }
    for (i, code) in d.retry_on_status_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            e.push(
                format!("{base}.RetryOnStatusCodes[{i}]"),
                format!("{code} is not an HTTP status in 100–599"),
            );
        }
    }
    if let Some(b) = &d.retry_budget {
        if let Some(p) = b.percent {
            e.percent(&format!("{base}.RetryBudget.Percent"), p);
        }
        e.non_negative(
            &format!("{base}.RetryBudget.MinRetryConcurrency"),
            b.min_retry_concurrency,
        );
    }
    if let Some(b) = &d.retry_backoff
        && let (Some(base_i), Some(max)) = (b.base_interval, b.max_interval)
        && max < base_i
    {
        e.push(
            format!("{base}.RetryBackoff.MaxInterval"),
            "must not be less than BaseInterval",
        );
    }
    if let Some(p) = &d.prefix_rewrite
        && !p.starts_with('/')
    {
        e.push(
            format!("{base}.PrefixRewrite"),
            format!("{p:?} must start with /"),
        );
    }
}

/// A resolver's `Redirect`, alone (Consul's rules; where it leads is checked against the other
/// entries by [`check_references`]).
fn redirect(r: &ServiceResolver, redirect: &super::entries::Redirect, e: &mut Errs) {
    fn given(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|s| !s.is_empty())
    }
    if !r.failover.is_empty() {
        e.push(
            "Redirect",
            "a resolver that redirects has no Failover of its own",
        );
    }
    if given(&redirect.datacenter).is_some() {
        e.push(
            "Redirect.Datacenter",
            "redirecting to another datacenter is not supported; use Failover.Datacenters",
        );
    }
    for (field, value) in [
        ("Redirect.Namespace", &redirect.namespace),
        ("Redirect.Partition", &redirect.partition),
    ] {
        if let Some(v) = given(value)
            && v != "default"
        {
            e.push(field, format!("{v:?}: only \"default\""));
        }
    }
    match (given(&redirect.service), given(&redirect.service_subset)) {
        (None, None) => e.push("Redirect", "one of Service or ServiceSubset is required"),
        (None, Some(_)) => e.push(
            "Redirect.ServiceSubset",
            "needs Redirect.Service (the service the subset is of)",
        ),
        (Some(service), subset) => {
            e.service_name("Redirect.Service", service);
            if service == r.name {
                match subset {
                    None => e.push("Redirect.Service", "redirects the service to itself"),
                    Some(s) if !r.subsets.contains_key(s) => e.push(
                        "Redirect.ServiceSubset",
                        format!("unknown subset {s:?} (not in Subsets)"),
                    ),
                    Some(_) => {}
                }
            }
        }
    }
}

/// Checks `entry` against the other stored entries (`stored` may include an older version of
/// `entry`, which is ignored): every subset a splitter or router names must be defined by the
/// target service's resolver, and a resolver must keep defining the subsets others name; a
/// resolver's redirects must not come back to where they started.
pub fn check_references(entry: &ConfigEntry, stored: &[ConfigEntry]) -> Result<(), EntryErrors> {
    let mut all: Vec<&ConfigEntry> = stored
        .iter()
        .filter(|s| !(s.kind() == entry.kind() && s.name() == entry.name()))
        .collect();
    all.push(entry);
    let resolver_of = |service: &str| {
        all.iter().find_map(|e| match e {
            ConfigEntry::ServiceResolver(r) if r.name == service => Some(r),
            _ => None,
        })
    };
    let mut e = Errs::default();
    let mut check = |owner: &ConfigEntry, field: String, service: &str, subset: &str| {
        let defined = resolver_of(service).is_some_and(|r| r.subsets.contains_key(subset));
        if defined {
            return;
        }
        let why = if resolver_of(service).is_some() {
            format!("the service-resolver for {service:?} defines no subset {subset:?}")
        } else {
            format!("no service-resolver for {service:?} defines subset {subset:?}")
        };
        if std::ptr::eq(owner, entry) {
            e.push(field, format!("unknown subset: {why}"));
        } else {
            e.push(
                "Subsets",
                format!(
                    "{} {:?} ({field}) names subset {subset:?} of {service:?}, which this entry would remove",
                    owner.kind(),
                    owner.name()
                ),
            );
        }
    };
    let relevant = |owner: &ConfigEntry| match entry {
        ConfigEntry::ServiceResolver(_) => true,
        _ => std::ptr::eq(owner, entry),
    };
    for owner in all.iter().copied().filter(|o| relevant(o)) {
        match owner {
            ConfigEntry::ServiceResolver(r) => {
                if let Some(to) = r.redirect.as_ref().and_then(|d| d.service.as_deref())
                    && to != r.name
                    && let Some(subset) = r
                        .redirect
                        .as_ref()
                        .and_then(|d| d.service_subset.as_deref())
                        .filter(|s| !s.is_empty())
                {
                    check(owner, "Redirect.ServiceSubset".to_owned(), to, subset);
                }
            }
            ConfigEntry::ServiceSplitter(s) => {
                for (i, split) in s.splits.iter().enumerate() {
                    let service = split.service.as_deref().unwrap_or(&s.name);
                    if let Some(subset) = split.service_subset.as_deref().filter(|s| !s.is_empty())
                    {
                        check(owner, format!("Splits[{i}].ServiceSubset"), service, subset);
                    }
                }
            }
            ConfigEntry::ServiceRouter(r) => {
                for (i, route) in r.routes.iter().enumerate() {
                    let Some(d) = &route.destination else {
                        continue;
                    };
                    let service = d.service.as_deref().unwrap_or(&r.name);
                    if let Some(subset) = d.service_subset.as_deref().filter(|s| !s.is_empty()) {
                        check(
                            owner,
                            format!("Routes[{i}].Destination.ServiceSubset"),
                            service,
                            subset,
                        );
                    }
                }
            }
            _ => {}
        }
    }
    if let ConfigEntry::ServiceResolver(start) = entry {
        // Follow the redirects from this resolver: a service met twice is a loop.
        let mut path = vec![start.name.as_str()];
        let mut next = start.redirect.as_ref().and_then(|r| r.service.as_deref());
        while let Some(service) = next.filter(|s| *s != *path.last().unwrap_or(&"")) {
            if path.contains(&service) {
                path.push(service);
                e.push(
                    "Redirect.Service",
                    format!("redirects go round in a loop: {}", path.join(" → ")),
                );
                break;
            }
            path.push(service);
            next = resolver_of(service)
                .and_then(|r| r.redirect.as_ref())
                .and_then(|r| r.service.as_deref());
        }
    }
    e.finish()
}
