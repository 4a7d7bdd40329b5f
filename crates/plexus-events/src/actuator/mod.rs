//! Actuator endpoints of an event-mode app (and of an event node), in Mercury's shapes
//! ([`plexus_api::actuator`]), and event over HTTP ([`event_api`]).
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /info` | app block, runtime, memory, origin, personality, start/current time, uptime; `more`: connector, topic, counters |
//! | `GET /info/routes` | `network`: the mesh's routing table (route → `app, origin`), known nodes; `routing`: local public and private routes with worker counts |
//! | `GET /info/lib` | the libraries linked in (`name-version`, from the workspace lock file) |
//! | `GET /env` | `PLEXUS_*` environment variables (never tokens or secrets) and the mesh settings |
//! | `GET /health` | `cloud.connector.health` (loopback through the broker: "Loopback test took N ms") and `presence.health`; 200 `UP` / 400 `DOWN` |
//! | `GET /livenessprobe` | `OK`, or 400 after a failed health check |
//! | `POST /api/event` | see [`event_api`] |

pub mod event_api;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plexus_api::actuator::{
    self as shapes, AppBlock, Dependency, EnvBlock, EnvInfo, Health, Info, LibInfo, Network,
    RoutesInfo, Routing, Runtime,
};
use serde_json::json;

use crate::node::NodeAuth;
use crate::platform::Platform;
use crate::presence::PresenceClient;

/// Default timeout of `POST /api/event`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `POST /api/event` body.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
/// How long the health check's loopback may take.
const LOOPBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the actuator shows and uses. Cheap to clone.
#[derive(Clone)]
pub struct Actuator {
    platform: Platform,
    presence: Option<PresenceClient>,
    properties: BTreeMap<String, String>,
    version: String,
    auth: NodeAuth,
    started: SystemTime,
    healthy: Arc<AtomicBool>,
}

impl Actuator {
    /// The actuator of `platform`; `properties` are the settings `/env` shows (no secrets),
    /// `auth` decides who may post events.
    pub fn new(
        platform: Platform,
        presence: Option<PresenceClient>,
        properties: BTreeMap<String, String>,
        version: impl Into<String>,
        auth: NodeAuth,
    ) -> Self {
        Self {
            platform,
            presence,
            properties,
            version: version.into(),
            auth,
            started: SystemTime::now(),
            healthy: Arc::new(AtomicBool::new(true)),
        }
    }

    fn app_block(&self) -> AppBlock {
        AppBlock {
            name: self.platform.app().to_owned(),
            version: self.version.clone(),
            description: self.platform.app().to_owned(),
            instance: None,
        }
    }
}

/// The actuator routes.
pub fn router(actuator: Actuator) -> Router {
    Router::new()
        .route("/info", get(info))
        .route("/info/routes", get(routes))
        .route("/info/lib", get(lib))
        .route("/env", get(env))
        .route("/health", get(health))
        .route("/livenessprobe", get(liveness))
        .route("/api/event", post(event_api::post_event))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_EVENT_BYTES))
        .with_state(actuator)
}

/// An error and its causes on one line.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Memory of this process and machine (Linux `/proc`; zeros elsewhere).
pub fn memory() -> shapes::Memory {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    shapes::memory(&read("/proc/self/status"), &read("/proc/meminfo"))
}

async fn info(State(a): State<Actuator>) -> axum::Json<Info> {
    let topic = a
        .presence
        .as_ref()
        .and_then(|p| p.state().borrow().topic.clone());
    let stats = a.platform.stats();
    let now = SystemTime::now();
    axum::Json(Info {
        app: a.app_block(),
        runtime: Runtime {
            language: "rust".into(),
            version: a.version.clone(),
        },
        memory: memory(),
        streams: 0,
        more: Some(json!({
            "connector": a.platform.connector().map(|c| c.name()).unwrap_or("none"),
            "topic": topic,
            "peers": a.platform.peers().len(),
            "malformed_messages": stats.malformed.load(Ordering::Relaxed),
            "delivered": stats.delivered.load(Ordering::Relaxed),
            "transmitted": stats.transmitted.load(Ordering::Relaxed),
        })),
        origin: a.platform.origin().to_owned(),
        personality: shapes::PERSONALITY_APP.into(),
        time: shapes::Time {
            start: shapes::timestamp(a.started),
            current: shapes::timestamp(now),
        },
        uptime: shapes::elapsed_time(now.duration_since(a.started).unwrap_or_default()),
    })
}

/// The local routes by visibility.
fn routing(platform: &Platform) -> Routing {
    let mut routing = Routing::default();
    for r in platform.local_routes() {
        let list = if r.private {
            &mut routing.private
        } else {
            &mut routing.public
        };
        list.insert(r.route, r.workers);
    }
    routing
}

async fn routes(State(a): State<Actuator>) -> axum::Json<RoutesInfo> {
    let p = &a.platform;
    let network = a.presence.as_ref().map(|presence| {
        let mut table: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let me = format!("{}, {}", p.app(), p.origin());
        for route in p.local_routes().into_iter().filter(|r| !r.private) {
            table.entry(route.route).or_default().push(me.clone());
        }
        let peers = p.peers();
        let mut nodes = vec![format!(
            "{}, {}, {}",
            presence.state().borrow().topic.clone().unwrap_or_default(),
            p.app(),
            p.origin()
        )];
        for peer in &peers {
            nodes.push(format!("{}, {}, {}", peer.topic, peer.app, peer.origin));
            for route in &peer.routes {
                table
                    .entry(route.clone())
                    .or_default()
                    .push(format!("{}, {}", peer.app, peer.origin));
            }
        }
        table.values_mut().for_each(|v| v.sort());
        Network {
            routes: table,
            nodes,
            name: format!("{}, v{}", p.app(), a.version),
            origin: p.origin().to_owned(),
            group: a
                .properties
                .get("presence.group")
                .cloned()
                .unwrap_or_else(|| "default".into()),
        }
    });
    axum::Json(RoutesInfo {
        app: a.app_block(),
        network,
        routing: routing(p),
    })
}

/// The packages this crate depends on directly, as `name-version`, from the workspace lock file.
fn libraries() -> Vec<String> {
    shapes::libraries(
        include_str!("../../Cargo.toml"),
        include_str!("../../../../Cargo.lock"),
    )
}

async fn lib(State(a): State<Actuator>) -> axum::Json<LibInfo> {
    axum::Json(LibInfo {
        app: a.app_block(),
        library: libraries(),
    })
}

async fn env(State(a): State<Actuator>) -> axum::Json<EnvInfo> {
    let environment = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("PLEXUS_")
                && !["TOKEN", "SECRET", "PASSWORD", "KEY"]
                    .iter()
                    .any(|s| k.contains(s))
        })
        .collect();
    axum::Json(EnvInfo {
        app: a.app_block(),
        env: EnvBlock {
            environment,
            properties: a.properties.clone(),
        },
    })
}

async fn health(State(a): State<Actuator>) -> Response {
    let mut dependency = Vec::new();
    if let Some(connector) = a.platform.connector() {
        let (status_code, message) = match a.platform.loopback(LOOPBACK_TIMEOUT).await {
            Ok(took) => (200, format!("Loopback test took {} ms", took.as_millis())),
            Err(fault) => (
                fault.status,
                format!("Loopback test failed: {}", fault.message),
            ),
        };
        dependency.push(Dependency {
            route: "cloud.connector.health".into(),
            required: true,
            service: Some(connector.name().into()),
            href: Some(connector.href()),
            topics: Some("on-demand".into()),
            status_code,
            message: message.into(),
        });
    }
    if let Some(presence) = &a.presence {
        let state = presence.state().borrow().clone();
        let (status_code, message) = match (&state.connected, &state.topic) {
            (true, Some(topic)) => (200, format!("connected, topic {topic}")),
            _ => (503, "not connected to the presence monitor".to_owned()),
        };
        dependency.push(Dependency {
            route: "presence.health".into(),
            required: true,
            service: Some("presence".into()),
            href: a.properties.get("presence.control").cloned(),
            topics: None,
            status_code,
            message: message.into(),
        });
    }
    let report = Health::new(dependency, a.platform.origin(), a.platform.app());
    a.healthy.store(report.is_up(), Ordering::Relaxed);
    let status = if report.is_up() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    (status, axum::Json(report)).into_response()
}

async fn liveness(State(a): State<Actuator>) -> Response {
    let text = [(header::CONTENT_TYPE, "text/plain")];
    if a.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, text, shapes::LIVENESS_OK).into_response()
    } else {
        (StatusCode::BAD_REQUEST, text, shapes::LIVENESS_FAILED).into_response()
    }
}
