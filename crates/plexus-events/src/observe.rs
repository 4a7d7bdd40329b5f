//! What the platform tells about each event, for metrics and access logs.
//!
//! The [`crate::Platform`] reports two kinds of [`Record`]: an event **handled** by a local
//! function (labelled with the app of the instance that sent it) and a **request** this instance
//! made (labelled with the app of the instance that served it). [`EventMetrics`] turns them into
//! Prometheus series, [`AccessLog`] into JSON lines:
//!
//! | metric | labels |
//! | --- | --- |
//! | `plexus_events_handled_total` | `route`, `origin_app`, `status` (class: `2xx`, `4xx`, `5xx`) |
//! | `plexus_events_handler_duration_seconds` (histogram) | `route`, `origin_app` |
//! | `plexus_events_requests_total` | `route`, `origin_app`, `status` |
//! | `plexus_events_request_duration_seconds` (histogram) | `route`, `origin_app` |
//!
//! Labels stay bounded: `route` is a route this instance serves or knows from presence (anything
//! else is `unknown`), `origin_app` is the app name of the other instance (`unknown` when not in
//! the routing table), never an instance id or event id.
//!
//! ```json
//! {"time":"2026-11-25T23:59:01.123Z","kind":"handled","route":"hello.world","origin":"8f1c…",
//!  "origin_app":"hello-a","status":200,"duration_ms":0.4,"id":"…","trace_id":"…","cid":null}
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, LineWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Which side of an event a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A local function handled an event.
    Handled,
    /// This instance made a request and got a reply (or a fault).
    Request,
}

/// One event as observed.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Handled or request.
    pub kind: Kind,
    /// The route (`unknown` when it is neither local nor known from presence).
    pub route: String,
    /// The other instance: the sender of a handled event, the server of a request.
    pub origin: Option<String>,
    /// The other instance's app name (`unknown` when not known).
    pub origin_app: String,
    /// Status of the outcome.
    pub status: u16,
    /// Function time (handled) or round trip (request).
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Duration,
    /// The event id.
    pub id: String,
    /// The trace id, when the event carries one.
    pub trace_id: Option<String>,
    /// The business correlation id, when the event carries one.
    pub cid: Option<String>,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// Receives records; implementations must not block for long.
pub trait Observer: Send + Sync + 'static {
    /// One record.
    fn record(&self, record: &Record);
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CountLabels {
    route: String,
    origin_app: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeLabels {
    route: String,
    origin_app: String,
}

fn status_class(status: u16) -> String {
    format!("{}xx", status / 100)
}

fn histogram() -> Histogram {
    // 100 µs .. ~52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Per-route Prometheus metrics of an event-mode instance.
#[derive(Clone)]
pub struct EventMetrics {
    registry: Arc<Registry>,
    handled: Family<CountLabels, Counter>,
    handler_time: Family<TimeLabels, Histogram, fn() -> Histogram>,
    requests: Family<CountLabels, Counter>,
    request_time: Family<TimeLabels, Histogram, fn() -> Histogram>,
}

impl Default for EventMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl EventMetrics {
    /// Empty metrics in their own registry.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let handled = Family::<CountLabels, Counter>::default();
        let handler_time =
            Family::<TimeLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        let requests = Family::<CountLabels, Counter>::default();
        let request_time =
            Family::<TimeLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        registry.register(
            "plexus_events_handled",
            "Events handled by local functions, by route, sending app and status class",
            handled.clone(),
        );
        registry.register(
            "plexus_events_handler_duration_seconds",
            "Time local functions took, by route and sending app",
            handler_time.clone(),
        );
        registry.register(
            "plexus_events_requests",
            "Requests this instance made, by route, serving app and status class",
            requests.clone(),
        );
        registry.register(
            "plexus_events_request_duration_seconds",
            "Round trip of requests this instance made, by route and serving app",
            request_time.clone(),
        );
        Self {
            registry: Arc::new(registry),
            handled,
            handler_time,
            requests,
            request_time,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "cannot encode event metrics");
        }
        out
    }
}

impl Observer for EventMetrics {
    fn record(&self, r: &Record) {
        let count = CountLabels {
            route: r.route.clone(),
            origin_app: r.origin_app.clone(),
            status: status_class(r.status),
        };
        let time = TimeLabels {
            route: r.route.clone(),
            origin_app: r.origin_app.clone(),
        };
        let seconds = r.duration.as_secs_f64();
        match r.kind {
            Kind::Handled => {
                self.handled.get_or_create(&count).inc();
                self.handler_time.get_or_create(&time).observe(seconds);
            }
            Kind::Request => {
                self.requests.get_or_create(&count).inc();
                self.request_time.get_or_create(&time).observe(seconds);
            }
        }
    }
}

/// Where access log lines go (`--access-log PATH|-`). Cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    record: &'a Record,
}

impl AccessLog {
    /// Appends to the file at `path` (created if missing).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file: File = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self::to_writer(LineWriter::new(file)))
    }

    /// Writes to standard output (`--access-log -`).
    pub fn stdout() -> Self {
        Self::to_writer(io::stdout())
    }

    fn to_writer(out: impl Write + Send + 'static) -> Self {
        Self {
            out: Arc::new(Mutex::new(Box::new(out))),
        }
    }
}

impl Observer for AccessLog {
    fn record(&self, record: &Record) {
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut line = match serde_json::to_vec(&Line { time, record }) {
            Ok(line) => line,
            Err(error) => {
                tracing::warn!(%error, "cannot encode an access log entry");
                return;
            }
        };
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(error) = out.write_all(&line).and_then(|()| out.flush()) {
            tracing::warn!(%error, "cannot write the access log");
        }
    }
}

/// Several observers as one.
#[derive(Clone, Default)]
pub struct Observers(pub Vec<Arc<dyn Observer>>);

impl Observer for Observers {
    fn record(&self, record: &Record) {
        for observer in &self.0 {
            observer.record(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_count_by_route_app_and_status_class() {
        let metrics = EventMetrics::new();
        for status in [200, 200, 404] {
            metrics.record(&Record {
                kind: Kind::Handled,
                route: "hello.world".into(),
                origin: Some("o1".into()),
                origin_app: "hello-a".into(),
                status,
                duration: Duration::from_millis(3),
                id: "e1".into(),
                trace_id: None,
                cid: None,
            });
        }
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"plexus_events_handled_total{route="hello.world",origin_app="hello-a",status="2xx"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"status="4xx"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"plexus_events_handler_duration_seconds_count{route="hello.world",origin_app="hello-a"} 3"#
            ),
            "{text}"
        );
    }
}
