//! HTTP metrics (registered under `plexus_proxy_http_`).
//!
//! | metric | labels |
//! | --- | --- |
//! | `plexus_proxy_http_requests_total` | `direction`, `upstream`, `route`, `class`, `grpc_status` |
//! | `plexus_proxy_http_request_duration_seconds` (histogram) | `direction`, `upstream` |
//! | `plexus_proxy_http_local_responses_total` (made by the sidecar) | `direction`, `upstream`, `reason` |
//! | `plexus_proxy_http_upstream_connections_total` (connections opened to forward requests) | `direction`, `upstream` |
//! | `plexus_proxy_http_retries_total` | `direction`, `upstream` |
//! | `plexus_proxy_http_retry_budget_exhausted_total` | `direction`, `upstream` |
//! | `plexus_proxy_http_faults_injected_total` | `upstream`, `kind` (`delay`, `abort`) |
//! | `plexus_proxy_http_outlier_ejections_total` | `upstream` |
//! | `plexus_proxy_http_outlier_ejected` (gauge: endpoints ejected now) | `upstream` |
//! | `plexus_proxy_http_mirrored_total` | `upstream`, `result` (`sent`, `dropped`) |
//! | `plexus_proxy_http_bulkhead_rejections_total` | `upstream`, `limit` (`max_concurrent_requests`, `max_pending_requests`, `max_connections`) |
//!
//! Rejections (rate limit, concurrency limit, timeouts, …) are `local_responses_total` by reason.
//!
//! `upstream` is the destination service (or `local_app`), `route` the route name (`default`
//! until routes exist), `class` `1xx`…`5xx`, `grpc_status` a gRPC status code or empty, `reason`
//! an `x-plexus-error` value: all bounded.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::access_log::{AccessLog, Entry};
use crate::metrics::Direction;

/// A label value shared rather than copied (service and route names): counting a request
/// clones an `Arc`, it allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Label(pub Arc<str>);

impl From<&str> for Label {
    fn from(value: &str) -> Self {
        Self(Arc::from(value))
    }
}

impl std::ops::Deref for Label {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// The `grpc_status` label: a gRPC status code, or empty when none was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct GrpcLabel(pub Option<u8>);

impl EncodeLabelValue for GrpcLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self.0 {
            Some(code) => write!(encoder, "{code}"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    direction: Direction,
    upstream: Label,
    route: Label,
    class: &'static str,
    grpc_status: GrpcLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TrafficLabels {
    direction: Direction,
    upstream: Label,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    direction: Direction,
    upstream: String,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    upstream: String,
    limit: &'static str,
}

type HistogramFamily = Family<TrafficLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The HTTP metric families. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    local: Family<ReasonLabels, Counter>,
    connections: Family<TrafficLabels, Counter>,
    retries: Family<TrafficLabels, Counter>,
    budget_exhausted: Family<TrafficLabels, Counter>,
    faults: Family<FaultLabels, Counter>,
    access_log: Option<AccessLog>,
    bulkhead_rejections: Family<LimitLabels, Counter>,
    ejections: Family<UpstreamLabel, Counter>,
    ejected: Family<UpstreamLabel, Gauge>,
    mirrored: Family<MirrorLabels, Counter>,
    /// The counter and histogram of the label sets counted lately, found by comparing pointers
    /// (the labels are shared `Arc`s): a request is counted without hashing its labels into two
    /// families. Cleared when full; the families themselves are never cleared, so a handle kept
    /// here always counts into them.
    recent: Arc<Mutex<Vec<Recent>>>,
}

/// A label set counted lately, with its handles in the two families.
#[derive(Debug)]
struct Recent {
    labels: RequestLabels,
    requests: Counter,
    duration: Histogram,
}

/// How many label sets [`HttpMetrics::recent`] keeps (a sidecar's upstreams × routes × classes
/// in use at once; beyond, requests are counted through the families, as before).
const RECENT: usize = 32;

impl RequestLabels {
    /// The same labels, by pointer for the shared names.
    fn same(&self, other: &RequestLabels) -> bool {
        self.direction == other.direction
            && Arc::ptr_eq(&self.upstream.0, &other.upstream.0)
            && Arc::ptr_eq(&self.route.0, &other.route.0)
            && self.class == other.class
            && self.grpc_status == other.grpc_status
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MirrorLabels {
    upstream: String,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FaultLabels {
    upstream: String,
    kind: &'static str,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            local: Family::default(),
            connections: Family::default(),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            faults: Family::default(),
            ejections: Family::default(),
            ejected: Family::default(),
            mirrored: Family::default(),
            bulkhead_rejections: Family::default(),
            recent: Arc::default(),
            access_log: None,
        }
    }
}

/// The HTTP metrics of one upstream: what the layers count, with its label. Cheap to clone
/// (one `Arc`: the stack is cloned for every request).
#[derive(Debug, Clone)]
pub(crate) struct Observe(Arc<(HttpMetrics, String)>);

impl Observe {
    /// Counts for `upstream` in `metrics`.
    pub(crate) fn new(metrics: HttpMetrics, upstream: &str) -> Self {
        Self(Arc::new((metrics, upstream.to_owned())))
    }

    /// Counts a retry.
    pub(crate) fn retry(&self) {
        self.0.0.retry(&self.0.1);
    }

    /// Counts a retry the budget refused.
    pub(crate) fn budget_exhausted(&self) {
        self.0.0.budget_exhausted(&self.0.1);
    }

    /// Counts a request a bulkhead limit refused.
    pub(crate) fn bulkhead_rejected(&self, limit: &'static str) {
        self.0.0.bulkhead_rejected(&self.0.1, limit);
    }

    /// Counts an injected fault (`delay`, `abort`).
    pub(crate) fn fault(&self, kind: &'static str) {
        self.0.0.fault(&self.0.1, kind);
    }

    /// Counts a mirrored request (`sent` or `dropped`).
    pub(crate) fn mirrored(&self, result: &'static str) {
        self.0.0.mirrored(&self.0.1, result);
    }
}

/// One finished request, as the metrics and the access log see it.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Which way.
    pub direction: Direction,
    /// Upstream service or `local_app`.
    pub upstream: Label,
    /// Route name.
    pub route: Label,
    /// Response status.
    pub status: http::StatusCode,
    /// `grpc-status` (from the headers or the trailers), if any.
    pub grpc_status: GrpcLabel,
    /// Time to the response headers.
    pub seconds: f64,
    /// What the access log says about the request (`None`: no access log).
    pub request: Option<super::RequestInfo>,
    /// `x-plexus-error` when the sidecar answered itself (kept for the access log only).
    pub error: Option<String>,
    /// Response body length when known in advance.
    pub response_bytes: Option<u64>,
}

impl Finished {
    /// A request whose response (status, error, grpc status) is filled in later.
    pub(crate) fn new(
        direction: Direction,
        upstream: Label,
        route: Label,
        seconds: f64,
        request: Option<super::RequestInfo>,
    ) -> Self {
        Self {
            direction,
            upstream,
            route,
            status: http::StatusCode::OK,
            grpc_status: GrpcLabel::default(),
            seconds,
            request,
            error: None,
            response_bytes: None,
        }
    }
}

impl HttpMetrics {
    /// Registers the families under `plexus_proxy_http`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let sub = registry.sub_registry_with_prefix("plexus_proxy_http");
        sub.register(
            "requests",
            "HTTP requests by direction, upstream, route, response class and gRPC status",
            metrics.requests.clone(),
        );
        sub.register(
            "request_duration_seconds",
            "Time from request to response headers",
            metrics.duration.clone(),
        );
        sub.register(
            "local_responses",
            "Responses the sidecar made itself, by x-plexus-error reason",
            metrics.local.clone(),
        );
        sub.register(
            "upstream_connections",
            "Connections opened to forward HTTP requests (few: they are pooled)",
            metrics.connections.clone(),
        );
        sub.register(
            "retries",
            "Retries sent to an upstream",
            metrics.retries.clone(),
        );
        sub.register(
            "retry_budget_exhausted",
            "Retries not sent because the retry budget was used up",
            metrics.budget_exhausted.clone(),
        );
        sub.register(
            "faults_injected",
            "Faults injected, by kind (delay, abort)",
            metrics.faults.clone(),
        );
        sub.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection",
            metrics.ejections.clone(),
        );
        sub.register(
            "outlier_ejected",
            "Endpoints ejected by outlier detection now",
            metrics.ejected.clone(),
        );
        sub.register(
            "mirrored",
            "Request copies sent to the mirror service, or dropped (too many in flight)",
            metrics.mirrored.clone(),
        );
        sub.register(
            "bulkhead_rejections",
            "Requests refused by a bulkhead limit of the upstream (503 concurrency_limit)",
            metrics.bulkhead_rejections.clone(),
        );
        metrics
    }

    fn outbound(upstream: &str) -> TrafficLabels {
        TrafficLabels {
            direction: Direction::Outbound,
            upstream: Label::from(upstream),
        }
    }

    /// Counts a retry.
    pub(crate) fn retry(&self, upstream: &str) {
        self.retries.get_or_create(&Self::outbound(upstream)).inc();
    }

    /// Counts a retry the budget refused.
    pub(crate) fn budget_exhausted(&self, upstream: &str) {
        self.budget_exhausted
            .get_or_create(&Self::outbound(upstream))
            .inc();
    }

    /// Counts a request a bulkhead limit refused.
    pub(crate) fn bulkhead_rejected(&self, upstream: &str, limit: &'static str) {
        self.bulkhead_rejections
            .get_or_create(&LimitLabels {
                upstream: upstream.to_owned(),
                limit,
            })
            .inc();
    }

    /// Counts an injected fault.
    pub(crate) fn fault(&self, upstream: &str, kind: &'static str) {
        self.faults
            .get_or_create(&FaultLabels {
                upstream: upstream.to_owned(),
                kind,
            })
            .inc();
    }

    /// Counts an outlier ejection.
    pub(crate) fn outlier_ejection(&self, upstream: &str) {
        self.ejections
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_owned(),
            })
            .inc();
    }

    /// Sets how many endpoints are ejected now.
    pub(crate) fn set_outlier_ejected(&self, upstream: &str, ejected: usize) {
        self.ejected
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_owned(),
            })
            .set(i64::try_from(ejected).unwrap_or(i64::MAX));
    }

    /// Counts a mirrored request (`sent` or `dropped`).
    pub(crate) fn mirrored(&self, upstream: &str, result: &'static str) {
        self.mirrored
            .get_or_create(&MirrorLabels {
                upstream: upstream.to_owned(),
                result,
            })
            .inc();
    }

    /// Counts a finished request, and writes its access log line when there is a log.
    pub(crate) fn finished(&self, request: Finished) {
        if let (Some(log), Some(info)) = (&self.access_log, &request.request) {
            let grpc_status = request.grpc_status.0.map(|code| code.to_string());
            log.write(&Entry {
                time: super::access_log::now(),
                direction: match request.direction {
                    Direction::Inbound => "inbound",
                    Direction::Outbound => "outbound",
                },
                upstream: &request.upstream,
                route: &request.route,
                method: &info.method,
                path: &info.path,
                status: request.status.as_u16(),
                grpc_status: grpc_status.as_deref(),
                duration_ms: request.seconds * 1000.0,
                response_bytes: request.response_bytes,
                error: request.error.as_deref(),
                trace_id: info.trace_id.as_deref(),
                peer: info.peer.as_deref(),
            });
        }
        let labels = RequestLabels {
            direction: request.direction,
            upstream: request.upstream,
            route: request.route,
            class: super::class(request.status),
            grpc_status: request.grpc_status,
        };
        let mut recent = plexus_runtime::lock::lock(&self.recent);
        if let Some(known) = recent.iter().find(|known| known.labels.same(&labels)) {
            known.duration.observe(request.seconds);
            known.requests.inc();
            return;
        }
        let duration = self
            .duration
            .get_or_create(&TrafficLabels {
                direction: labels.direction,
                upstream: labels.upstream.clone(),
            })
            .clone();
        let requests = self.requests.get_or_create(&labels).clone();
        duration.observe(request.seconds);
        requests.inc();
        if recent.len() == RECENT {
            recent.clear();
        }
        recent.push(Recent {
            labels,
            requests,
            duration,
        });
    }

    /// Whether requests are written to an access log (what it needs is collected only then).
    pub(crate) fn logs_requests(&self) -> bool {
        self.access_log.is_some()
    }

    /// The same families, also writing `log`.
    pub(crate) fn with_access_log(mut self, log: Option<AccessLog>) -> Self {
        self.access_log = log;
        self
    }

    /// Counts a response the sidecar made itself.
    pub(crate) fn local(&self, direction: Direction, upstream: &str, reason: &'static str) {
        self.local
            .get_or_create(&ReasonLabels {
                direction,
                upstream: upstream.to_owned(),
                reason,
            })
            .inc();
    }

    /// Counts a connection opened to forward requests.
    pub(crate) fn connection_opened(&self, direction: Direction, upstream: &str) {
        self.connections
            .get_or_create(&TrafficLabels {
                direction,
                upstream: Label::from(upstream),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(upstream: &Label, route: &Label, status: u16) -> Finished {
        let mut finished = Finished::new(
            Direction::Outbound,
            upstream.clone(),
            route.clone(),
            0.001,
            None,
        );
        finished.status = http::StatusCode::from_u16(status).unwrap();
        finished
    }

    fn count(text: &str, route: &str, class: &str) -> u64 {
        let series = format!(
            "plexus_proxy_http_requests_total{{direction=\"outbound\",upstream=\"web\",route=\"{route}\",class=\"{class}\",grpc_status=\"\"}} "
        );
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .map_or(0, |value| value.parse().unwrap())
    }

    #[test]
    fn requests_counted_through_the_recent_handles_land_in_the_families() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        let web = Label::from("web");
        let default = Label::from("default");
        for _ in 0..5 {
            metrics.finished(finished(&web, &default, 200));
        }
        metrics.finished(finished(&web, &default, 503));
        // Equal names in other `Arc`s (a policy rebuilt) count into the same series.
        metrics.finished(finished(&web, &Label::from("default"), 200));
        // More label sets than the recent list holds: every one still counted.
        let routes: Vec<Label> = (0..RECENT + 8)
            .map(|i| Label::from(format!("r{i}").as_str()))
            .collect();
        for _ in 0..2 {
            for route in &routes {
                metrics.finished(finished(&web, route, 200));
            }
        }
        let text = crate::metrics::encode(&registry).unwrap();
        assert_eq!(count(&text, "default", "2xx"), 6, "{text}");
        assert_eq!(count(&text, "default", "5xx"), 1, "{text}");
        for i in 0..RECENT + 8 {
            assert_eq!(count(&text, &format!("r{i}"), "2xx"), 2, "r{i}");
        }
        assert!(
            text.contains("plexus_proxy_http_request_duration_seconds_count{direction=\"outbound\",upstream=\"web\"} 87"),
            "{text}"
        );
        assert!(lock_len(&metrics) <= RECENT);
    }

    fn lock_len(metrics: &HttpMetrics) -> usize {
        plexus_runtime::lock::lock(&metrics.recent).len()
    }
}
