//! The presence protocol between event-mode apps and the control plane: JSON text frames over the
//! websocket `/ws/presence/<origin>`.
//!
//! ```text
//! app                                   control plane
//!  │ ── Hello {app, group, routes, topic?} ──►│  assigns a topic (or checks the claimed one)
//!  │ ◄── Welcome {topic, peers} ──────────────│  (or Refused {reason}, then close)
//!  │ ── Routes {routes} ─────────────────────►│  on every local route change
//!  │ ◄── Join / Leave / Routes ───────────────│  for every app of the same group
//!  │ ◄── ping ── pong ──►                     │  websocket pings: a silent app is dropped
//! ```

use serde::{Deserialize, Serialize};

/// Largest presence frame either side accepts (bytes).
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// True when `name` is a valid route name: lowercase letters, digits, `.`, `-` and `_`, at most
/// 128 bytes, with at least one dot and no empty segment (`hello.world`).
pub fn valid_route_name(name: &str) -> bool {
    name.len() <= 128
        && name.contains('.')
        && name.split('.').all(|segment| !segment.is_empty())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// True when `origin` is a valid instance id: 1 to 64 ASCII letters, digits, `-` or `_`.
pub fn valid_origin(origin: &str) -> bool {
    !origin.is_empty()
        && origin.len() <= 64
        && origin
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// One app instance as every peer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The instance id (unique per running instance).
    pub origin: String,
    /// The application name.
    pub app: String,
    /// The presence group (apps see only peers of their own group).
    pub group: String,
    /// The topic-partition the instance consumes, e.g. `multiplex.0001-000`.
    pub topic: String,
    /// The public routes it serves.
    pub routes: Vec<String>,
}

/// Frames the app sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// First frame: who the app is.
    Hello {
        /// Application name.
        app: String,
        /// Presence group; `default` when empty.
        #[serde(default)]
        group: String,
        /// Public routes served.
        #[serde(default)]
        routes: Vec<String>,
        /// A topic the app wants to keep (after a reconnect); the server assigns one when absent.
        #[serde(default)]
        topic: Option<String>,
        /// The host of the app's actuator (HTTP endpoints), listed in the catalog.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
        /// The port of the app's actuator, listed in the catalog.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    },
    /// The app's public routes changed.
    Routes {
        /// The full new list.
        routes: Vec<String>,
    },
}

/// Frames the control plane sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The app is registered: its topic and the current peers of its group (itself excluded).
    Welcome {
        /// The assigned topic-partition.
        topic: String,
        /// The other apps in the group.
        peers: Vec<Peer>,
    },
    /// The app was refused (e.g. it claimed a topic another app owns); the server closes next.
    Refused {
        /// Why.
        reason: String,
    },
    /// A peer joined the group.
    Join {
        /// The peer.
        peer: Peer,
    },
    /// A peer left the group.
    Leave {
        /// Its origin.
        origin: String,
    },
    /// A peer's routes changed.
    Routes {
        /// Its origin.
        origin: String,
        /// Its full new route list.
        routes: Vec<String>,
    },
}
