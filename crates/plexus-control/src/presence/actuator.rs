//! The presence monitor's actuator, in Mercury's shapes (`plexus_api::actuator`): `/info` (with
//! `more`: connections, monitors, topics, totals, virtual topics, as Mercury's presence monitor
//! shows them), `/info/routes`, `/info/lib`, `/env`, `/health` (the store as the monitor's
//! "cloud connector": a timed read of the topic table) and `/livenessprobe`.
//!
//! ACLs: every path needs `operator:read` (they show connections, topics and the process's
//! environment); with ACLs disabled they are open.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use plexus_api::actuator::{
    self as shapes, AppBlock, Dependency, EnvBlock, EnvInfo, Health, Info, LibInfo, RoutesInfo,
    Routing, Runtime,
};
use serde_json::json;

use super::Presence;

/// The presence monitor's app name.
pub const NAME: &str = "presence-monitor";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The actuator routes of the presence monitor.
pub fn router(presence: Presence) -> Router {
    Router::new()
        .route("/info", get(info))
        .route("/info/routes", get(routes))
        .route("/info/lib", get(lib))
        .route("/env", get(env))
        .route("/health", get(health))
        .route("/livenessprobe", get(liveness))
        .route_layer(axum::middleware::from_fn(require_operator_read))
        .with_state(presence)
}

/// Refuses a caller whose token lacks `operator:read` (403 naming it).
async fn require_operator_read(
    authz: plexus_runtime::acl::Authz,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match authz.require_operator_read() {
        Ok(()) => next.run(request).await,
        Err(denied) => plexus_runtime::http::ApiError::from(denied).into_response(),
    }
}

fn app() -> AppBlock {
    AppBlock {
        name: NAME.into(),
        version: VERSION.into(),
        description: "Presence Monitor".into(),
        instance: None,
    }
}

fn memory() -> shapes::Memory {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    shapes::memory(&read("/proc/self/status"), &read("/proc/meminfo"))
}

fn unavailable(error: &dyn std::fmt::Display) -> Response {
    tracing::warn!(%error, "presence: cannot read state");
    plexus_runtime::http::ApiError::unavailable("the presence store is unavailable").into_response()
}

/// `multiplex.0001-003` → `multiplex.0001`.
fn topic_of(partition: &str) -> &str {
    partition.rsplit_once('-').map_or(partition, |(t, _)| t)
}

async fn info(State(p): State<Presence>) -> Response {
    let (apps, topics) = match (p.apps().await, p.topics().await) {
        (Ok(apps), Ok(topics)) => (apps, topics),
        (Err(e), _) | (_, Err(e)) => return unavailable(&e),
    };
    let mut connections: Vec<_> = apps
        .iter()
        .map(|a| {
            json!({
                "name": a.peer.app,
                "origin": a.peer.origin,
                "topic": a.peer.topic,
                "group": a.peer.group,
                "routes": a.peer.routes,
                "monitor": a.replica,
            })
        })
        .collect();
    connections.sort_by_key(|c| format!("{}|{}", c["name"], c["origin"]));
    let mut monitors: BTreeSet<String> = apps.iter().map(|a| a.replica.clone()).collect();
    monitors.insert(p.replica().to_owned());
    let monitors: Vec<String> = monitors
        .into_iter()
        .map(|m| {
            let mine = if m == p.replica() {
                "this replica"
            } else {
                "peer replica"
            };
            format!("{m} - {mine}")
        })
        .collect();
    let mut partitions: BTreeMap<&str, usize> = BTreeMap::new();
    for t in topics.keys() {
        *partitions.entry(topic_of(t)).or_default() += 1;
    }
    let topic_list: Vec<String> = partitions
        .keys()
        .map(|t| format!("{t} ({})", crate::presence::topics::PARTITIONS))
        .collect();
    let virtual_topics: Vec<String> = topics
        .iter()
        .map(|(topic, origin)| {
            let app = apps
                .iter()
                .find(|a| &a.peer.origin == origin)
                .map_or("?", |a| a.peer.app.as_str());
            format!("{topic} -> {origin}, {app}")
        })
        .collect();
    let now = SystemTime::now();
    let body = Info {
        app: app(),
        runtime: Runtime {
            language: "rust".into(),
            version: VERSION.into(),
        },
        memory: memory(),
        streams: 0,
        more: Some(json!({
            "connections": connections,
            "monitors": monitors,
            "topics": topic_list,
            "total": {
                "connections": apps.len(),
                "topics": partitions.len(),
                "virtual_topics": virtual_topics.len(),
            },
            "virtual_topics": virtual_topics,
            "sessions_here": p.inner.sessions.load(Ordering::SeqCst),
        })),
        origin: p.replica().to_owned(),
        personality: shapes::PERSONALITY_RESOURCES.into(),
        time: shapes::Time {
            start: shapes::timestamp(p.inner.since),
            current: shapes::timestamp(now),
        },
        uptime: shapes::elapsed_time(now.duration_since(p.inner.since).unwrap_or_default()),
    };
    axum::Json(body).into_response()
}

async fn routes(State(_): State<Presence>) -> axum::Json<RoutesInfo> {
    // The monitor serves no routes and keeps no routing table of its own (Mercury's shows none
    // either); the mesh's apps and routes are in /info's `more` and /v1/events/apps.
    axum::Json(RoutesInfo {
        app: app(),
        network: None,
        routing: Routing::default(),
    })
}

async fn lib(State(_): State<Presence>) -> axum::Json<LibInfo> {
    axum::Json(LibInfo {
        app: app(),
        library: shapes::libraries(
            include_str!("../../Cargo.toml"),
            include_str!("../../../../Cargo.lock"),
        ),
    })
}

async fn env(State(p): State<Presence>) -> axum::Json<EnvInfo> {
    let environment = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("PLEXUS_")
                && !["TOKEN", "SECRET", "PASSWORD", "KEY"]
                    .iter()
                    .any(|s| k.contains(s))
        })
        .collect();
    let config = p.config();
    let status = p.inner.store.status().await;
    let properties = [
        (
            "presence.ping_interval",
            format!("{:?}", config.ping_interval),
        ),
        ("presence.timeout", format!("{:?}", config.timeout)),
        ("presence.lease_ttl", format!("{:?}", config.lease_ttl)),
        ("store", status.backend),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    axum::Json(EnvInfo {
        app: app(),
        env: EnvBlock {
            environment,
            properties,
        },
    })
}

async fn health(State(p): State<Presence>) -> Response {
    let started = Instant::now();
    let read = p.topics().await;
    let took = started.elapsed().as_millis();
    let status = p.inner.store.status().await;
    let (status_code, message) = match read {
        Ok(topics) => {
            let n = topics
                .keys()
                .map(|t| topic_of(t))
                .collect::<BTreeSet<_>>()
                .len();
            let what = match n {
                0 => "System does not have any topics".to_owned(),
                1 => "System contains 1 topic".to_owned(),
                n => format!("System contains {n} topics"),
            };
            (200, format!("Store read took {took} ms; {what}"))
        }
        Err(error) => (503, format!("Store read failed: {error}")),
    };
    let dependency = vec![Dependency {
        route: "cloud.connector.health".into(),
        required: true,
        service: Some(status.backend.clone()),
        href: Some(if status.location.is_empty() {
            status.backend
        } else {
            status.location
        }),
        topics: Some("on-demand".into()),
        status_code,
        message: message.into(),
    }];
    let report = Health::new(dependency, p.replica(), NAME);
    p.inner.healthy.store(report.is_up(), Ordering::Relaxed);
    let code = if report.is_up() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    (code, axum::Json(report)).into_response()
}

async fn liveness(State(p): State<Presence>) -> Response {
    let text = [(header::CONTENT_TYPE, "text/plain")];
    if p.inner.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, text, shapes::LIVENESS_OK).into_response()
    } else {
        (StatusCode::BAD_REQUEST, text, shapes::LIVENESS_FAILED).into_response()
    }
}
