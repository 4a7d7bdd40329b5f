//! Actuator endpoints of an event-mode app, and event over HTTP.
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /info` | app name, version, origin, uptime, connector, topic |
//! | `GET /info/routes` | the distributed routing table (route → origins) and the peers |
//! | `GET /info/lib` | the libraries this crate links, with versions (from the workspace lock file) |
//! | `GET /env` | selected environment and config; public and private routes with worker counts |
//! | `GET /health` | 200 `UP` or 400 `DOWN`, with the connector loopback test ("Loopback test took N ms") |
//! | `GET /livenessprobe` | `OK` |
//! | `POST /api/event` | a MsgPack envelope (standard or compact); `X-Timeout` (ms, default 10000), `X-Async: true` |
//!
//! `POST /api/event` answers with the reply envelope (MsgPack) and its status as the HTTP status;
//! private routes are 403, unknown routes 404, bad input 400 in the JSON error shape naming the cause.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plexus_api::ErrorBody;
use serde_json::{Value as Json, json};

use crate::envelope::EventEnvelope;
use crate::platform::Platform;
use crate::presence::PresenceClient;

/// Default `X-Timeout` of `POST /api/event`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `POST /api/event` body.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
/// How long the health check's loopback may take.
const LOOPBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the actuator shows and uses.
#[derive(Clone)]
pub struct Actuator {
    /// The app's platform.
    pub platform: Platform,
    /// The presence client, when the app uses one.
    pub presence: Option<PresenceClient>,
    /// Selected configuration shown by `/env` (no secrets).
    pub config: BTreeMap<String, String>,
    /// The app's version.
    pub version: String,
}

/// The actuator routes.
pub fn router(actuator: Actuator) -> Router {
    Router::new()
        .route("/info", get(info))
        .route("/info/routes", get(routes))
        .route("/info/lib", get(lib))
        .route("/env", get(env))
        .route("/health", get(health))
        .route("/livenessprobe", get(|| async { "OK" }))
        .route("/api/event", post(event))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_EVENT_BYTES))
        .with_state(actuator)
}

fn error(status: StatusCode, code: &str, message: String, field: Option<&str>) -> Response {
    let body = ErrorBody::new(code, message, field.map(str::to_owned));
    (status, axum::Json(body)).into_response()
}

async fn info(State(a): State<Actuator>) -> axum::Json<Json> {
    let topic = a
        .presence
        .as_ref()
        .and_then(|p| p.state().borrow().topic.clone());
    json!({
        "app": { "name": a.platform.app(), "version": a.version },
        "origin": a.platform.origin(),
        "uptime_seconds": a.platform.uptime().as_secs(),
        "connector": a.platform.connector().map(|c| c.name()).unwrap_or("none"),
        "topic": topic,
        "malformed_messages": a.platform.stats().malformed.load(std::sync::atomic::Ordering::Relaxed),
    })
    .into()
}

async fn routes(State(a): State<Actuator>) -> axum::Json<Json> {
    let mut table: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for route in a.platform.local_routes().into_iter().filter(|r| !r.private) {
        table
            .entry(route.route)
            .or_default()
            .push(a.platform.origin().to_owned());
    }
    let peers = a.platform.peers();
    for peer in &peers {
        for route in &peer.routes {
            table
                .entry(route.clone())
                .or_default()
                .push(peer.origin.clone());
        }
    }
    json!({ "origin": a.platform.origin(), "routes": table, "peers": peers }).into()
}

/// The packages this crate depends on directly, with the versions in the workspace lock file.
fn libraries() -> BTreeMap<String, String> {
    let manifest = include_str!("../Cargo.toml");
    let lock = include_str!("../../../Cargo.lock");
    let direct: Vec<&str> = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(['.', ' ', '=']).next())
        .filter(|name| !name.is_empty())
        .collect();
    let mut found = BTreeMap::new();
    for package in lock.split("[[package]]") {
        let field = |key: &str| {
            package
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim_matches([' ', '=', '"']).to_owned())
        };
        if let (Some(name), Some(version)) = (field("name"), field("version"))
            && direct.contains(&name.as_str())
        {
            // Several versions of one package may be locked; list them all.
            found
                .entry(name)
                .and_modify(|v: &mut String| {
                    v.push_str(", ");
                    v.push_str(&version);
                })
                .or_insert(version);
        }
    }
    found
}

async fn lib(State(a): State<Actuator>) -> axum::Json<Json> {
    json!({ "app": a.platform.app(), "libraries": libraries() }).into()
}

async fn env(State(a): State<Actuator>) -> axum::Json<Json> {
    let environment: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("PLEXUS_") && !k.contains("TOKEN") && !k.contains("SECRET"))
        .collect();
    let mut public = BTreeMap::new();
    let mut private = BTreeMap::new();
    for r in a.platform.local_routes() {
        let list = if r.private { &mut private } else { &mut public };
        list.insert(r.route, r.workers);
    }
    json!({
        "app": a.platform.app(),
        "origin": a.platform.origin(),
        "environment": environment,
        "config": a.config,
        "routing": { "public": public, "private": private },
    })
    .into()
}

async fn health(State(a): State<Actuator>) -> Response {
    let presence_up = a
        .presence
        .as_ref()
        .is_none_or(|p| p.state().borrow().connected);
    let (connector_up, message) = match a.platform.connector() {
        None => (true, "no cloud connector".to_owned()),
        Some(_) => match a.platform.loopback(LOOPBACK_TIMEOUT).await {
            Ok(took) => (true, format!("Loopback test took {} ms", took.as_millis())),
            Err(fault) => (false, format!("Loopback test failed: {}", fault.message)),
        },
    };
    let up = connector_up && presence_up;
    let body = json!({
        "status": if up { "UP" } else { "DOWN" },
        "origin": a.platform.origin(),
        "dependency": [
            { "service": "cloud.connector", "status_code": if connector_up { 200 } else { 400 }, "message": message },
            { "service": "presence", "status_code": if presence_up { 200 } else { 400 },
              "message": if presence_up { "connected" } else { "not connected to the control plane" } },
        ],
    });
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    (status, axum::Json(body)).into_response()
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn event(State(a): State<Actuator>, headers: HeaderMap, body: Bytes) -> Response {
    if body.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "empty body: expected a MsgPack event envelope".into(),
            None,
        );
    }
    let timeout = match header_text(&headers, "x-timeout") {
        None => DEFAULT_TIMEOUT,
        Some(text) => match text.trim().parse::<u64>() {
            Ok(ms) if (1..=600_000).contains(&ms) => Duration::from_millis(ms),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_field",
                    format!("invalid X-Timeout {text:?}: expected milliseconds from 1 to 600000"),
                    Some("X-Timeout"),
                );
            }
        },
    };
    let asynchronous = match header_text(&headers, "x-async") {
        None => false,
        Some(text) => match text.trim() {
            "true" => true,
            "false" => false,
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_field",
                    format!("invalid X-Async {other:?}: expected true or false"),
                    Some("X-Async"),
                );
            }
        },
    };
    let event = match EventEnvelope::from_bytes(&body) {
        Ok(event) => event,
        Err(cause) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("body is not an event envelope: {cause}"),
                None,
            );
        }
    };
    let Some(to) = event.to.clone() else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "the envelope has no destination (to)".into(),
            Some("to"),
        );
    };
    let reply = if asynchronous {
        let route = to.split('@').next().unwrap_or_default().to_owned();
        if a.platform.is_public(&route) == Some(false) {
            crate::Fault::new(403, format!("route {route} is private")).into_envelope()
        } else {
            match a.platform.send(event).await {
                Ok(()) => EventEnvelope {
                    status: 202,
                    ..EventEnvelope::default()
                },
                Err(fault) => fault.into_envelope(),
            }
        }
    } else {
        a.platform.request_external(event, timeout).await
    };
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/msgpack")],
        reply.to_bytes(),
    )
        .into_response()
}
