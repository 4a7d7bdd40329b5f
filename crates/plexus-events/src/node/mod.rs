//! The event node: the language connector by which apps in any language join the event mesh.
//!
//! A node is one [`Platform`] (one instance in the mesh: a broker connector, presence, the
//! actuator) that apps connect to over a WebSocket at `/ws/events` (protocol in [`protocol`],
//! documented in docs/events.md). A connected app registers routes, which become routes of the
//! node's platform served by forwarding each event over the app's connection; it sends, requests
//! and broadcasts through the platform to any route in the mesh.
//!
//! ```text
//! app ─ws─► session ─┬─ register ─► Node.owners + Platform.register_replying(route, deliver)
//!                    ├─ send/request/broadcast ─► Platform ─► local route | broker ─► peer
//!                    └─ result ─► the waiting delivery ─► reply to the caller
//! Platform ─► deliver(route) ─► the owning session ─ws─► app ─► result
//! ```
//!
//! Each route is owned by one connection: registering a route another connection serves is
//! refused (409). When a connection closes (a clean close or `kill -9` of the app), its routes
//! are released at once, so presence tells every peer within moments; deliveries still waiting
//! for it fail with 503.
//!
//! Flow control: deliveries to a route never exceed its `workers` (the platform's bulkhead); a
//! connection may have at most `max_in_flight` calls waiting (more are refused with 429); frames
//! to a slow app queue in a bounded channel, and the node stops reading from an app whose frames
//! it cannot answer. Events larger than `max_frame_bytes` travel as segments, as over the brokers.
//!
//! Authentication: [`NodeAuth`] decides on the `hello` frame's token (and the token of
//! `POST /api/event` on the node): one place, so ACL tokens can be wired in later.

mod auth;
pub mod protocol;
mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use auth::{AppAuthority, AuthorityFuture, NodeAuth, Refusal, Secret};

use crate::platform::Platform;

/// Limits and settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Largest WebSocket frame read from an app (default 1 MiB); larger events are segmented.
    pub max_frame_bytes: usize,
    /// Largest event after reassembly (default 16 MiB).
    pub max_event_bytes: usize,
    /// Most calls one connection may have waiting (default 4096).
    pub max_in_flight: usize,
    /// Most connected apps (default 256).
    pub max_sessions: usize,
    /// Most routes one connection may register (default 1000).
    pub max_routes: usize,
    /// How long a delivery waits for the app's result (default 60 s; then 504).
    pub delivery_timeout: Duration,
    /// How long an app has to send `hello` (default 10 s).
    pub hello_timeout: Duration,
    /// Who may connect.
    pub auth: NodeAuth,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1024 * 1024,
            max_event_bytes: 16 * 1024 * 1024,
            max_in_flight: 4096,
            max_sessions: 256,
            max_routes: 1000,
            delivery_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(10),
            auth: NodeAuth::Open,
        }
    }
}

struct Inner {
    platform: Platform,
    config: NodeConfig,
    /// route → (session id, app name) of the connection serving it.
    owners: Mutex<HashMap<String, (u64, String)>>,
    sessions: AtomicUsize,
    next_session: std::sync::atomic::AtomicU64,
}

/// The node: the platform and the routes its connected apps own. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl Node {
    /// A node serving apps through `platform`.
    pub fn new(platform: Platform, config: NodeConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                platform,
                config,
                owners: Mutex::default(),
                sessions: AtomicUsize::new(0),
                next_session: std::sync::atomic::AtomicU64::new(1),
            }),
        }
    }

    /// The platform.
    pub fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    /// The settings.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Connected apps now.
    pub fn sessions(&self) -> usize {
        self.inner.sessions.load(Ordering::Relaxed)
    }

    /// The routes apps serve through this node, with the app serving each.
    pub fn owned_routes(&self) -> Vec<(String, String)> {
        let mut routes: Vec<(String, String)> = self
            .owners()
            .iter()
            .map(|(route, (_, app))| (route.clone(), app.clone()))
            .collect();
        routes.sort();
        routes
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, String)>> {
        self.inner
            .owners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The WebSocket endpoint `/ws/events`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/ws/events", get(upgrade))
            .with_state(self.clone())
    }
}

async fn upgrade(
    State(node): State<Node>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return plexus_runtime_error(format!(
                "the language connector needs a WebSocket upgrade request: {}",
                rejection.body_text()
            ));
        }
    };
    // Room for one frame of the largest event, so an unsegmented oversized event is still read
    // and refused with a reason instead of breaking the connection.
    let limit = node.inner.config.max_event_bytes + 64 * 1024;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session::run(node, socket))
}

fn plexus_runtime_error(message: String) -> Response {
    let body = plexus_api::ErrorBody::new("bad_request", message, None);
    (axum::http::StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}
