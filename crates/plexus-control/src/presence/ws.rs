//! Presence over HTTP: the websocket `/ws/presence/{origin}` (one session per app instance) and
//! the read API `GET /v1/events/apps`, `GET /v1/events/topics`, `GET /v1/events/info`.
//!
//! A session: read `Hello` (within [`HELLO_TIMEOUT`]) → claim → `Welcome` → then, concurrently,
//! forward group events, apply `Routes` frames, ping every interval and drop the app when it stays
//! silent, renew the session's lease (dropping the app if it expired) → release the claim (revoke
//! the lease). Bad frames get a `Refused` frame naming the problem, then a close.
//!
//! ACLs: the token is resolved when the websocket is opened (an unknown token never gets the
//! upgrade: 403 `ACL not found`); joining as app A needs `service:write` on A (the app's own
//! token, or a service identity for A), checked after its `Hello` (a `Refused` frame with
//! Consul's permission message otherwise). `/v1/events/apps` and `/v1/events/topics` leave out
//! apps the token may not read (`service:read` on the app's name); `/v1/events/info` needs
//! `operator:read`. A session keeps the authorizer it joined with until it ends.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use plexus_api::presence::{
    ClientFrame, MAX_FRAME_BYTES, Peer, ServerFrame, valid_origin, valid_route_name,
};
use plexus_runtime::acl::{Authz, mark_filtered};
use plexus_runtime::http::ApiError;
use tokio::sync::broadcast::error::RecvError;

use super::{Claim, Endpoint, GroupEvent, Presence, PresenceError};

/// How long an app has to send its `Hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The presence routes.
pub fn router(presence: Presence) -> Router {
    Router::new()
        .route("/ws/presence/{origin}", get(upgrade))
        .route("/v1/events/apps", get(apps))
        .route("/v1/events/topics", get(topics))
        .route("/v1/events/info", get(info))
        .with_state(presence)
}

async fn apps(State(presence): State<Presence>, authz: Authz) -> Response {
    match presence.apps().await {
        Ok(mut apps) => {
            let filtered =
                plexus_runtime::acl::filter(&mut apps, |a| authz.can_read_service(&a.peer.app));
            let mut response = axum::Json(apps).into_response();
            mark_filtered(&mut response, filtered);
            response
        }
        Err(error) => {
            tracing::warn!(%error, "presence: cannot list apps");
            ApiError::internal("the presence store is unavailable").into_response()
        }
    }
}

/// The presence monitor's own view: this replica, its open connections, every topic with its
/// owner (origin and app).
async fn info(State(presence): State<Presence>, authz: Authz) -> Response {
    if let Err(denied) = authz.require_operator_read() {
        return ApiError::from(denied).into_response();
    }
    let (apps, topics) = match (presence.apps().await, presence.topics().await) {
        (Ok(apps), Ok(topics)) => (apps, topics),
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, "presence: cannot read state");
            return ApiError::internal("the presence store is unavailable").into_response();
        }
    };
    let owners: serde_json::Map<String, serde_json::Value> = topics
        .into_iter()
        .map(|(topic, origin)| {
            let app = apps
                .iter()
                .find(|a| a.peer.origin == origin)
                .map(|a| a.peer.app.clone());
            (topic, serde_json::json!({ "origin": origin, "app": app }))
        })
        .collect();
    axum::Json(serde_json::json!({
        "replica": presence.replica(),
        "connections": presence.inner.sessions.load(Ordering::SeqCst),
        "apps": apps.len(),
        "topics": owners,
    }))
    .into_response()
}

async fn topics(State(presence): State<Presence>, authz: Authz) -> Response {
    let apps = match presence.apps().await {
        Ok(apps) => apps,
        Err(error) => {
            tracing::warn!(%error, "presence: cannot list apps");
            return ApiError::internal("the presence store is unavailable").into_response();
        }
    };
    match presence.topics().await {
        Ok(mut topics) => {
            let before = topics.len();
            topics.retain(|_, origin| {
                apps.iter()
                    .find(|a| &a.peer.origin == origin)
                    .is_some_and(|a| authz.can_read_service(&a.peer.app))
            });
            let filtered = topics.len() != before;
            let mut response = axum::Json(topics).into_response();
            mark_filtered(&mut response, filtered);
            response
        }
        Err(error) => {
            tracing::warn!(%error, "presence: cannot list topics");
            ApiError::internal("the presence store is unavailable").into_response()
        }
    }
}

async fn upgrade(
    State(presence): State<Presence>,
    authz: Authz,
    Path(origin): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !valid_origin(&origin) {
        return ApiError::invalid_field(
            "origin",
            format!("invalid origin {origin:?}: use 1 to 64 letters, digits, '-' or '_'"),
        )
        .into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::bad_request(format!(
                "presence needs a websocket upgrade request: {}",
                rejection.body_text()
            ))
            .into_response();
        }
    };
    ws.max_message_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| async move { session(presence, authz, origin, socket).await })
}

async fn send(socket: &mut WebSocket, frame: &ServerFrame) -> bool {
    match serde_json::to_string(frame) {
        Ok(text) => socket.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

async fn refuse(socket: &mut WebSocket, origin: &str, reason: String) {
    tracing::info!(%origin, %reason, "presence: app refused");
    let _ = send(socket, &ServerFrame::Refused { reason }).await;
    let _ = socket.send(Message::Close(None)).await;
}

fn check_routes(routes: &[String]) -> Result<(), String> {
    match routes.iter().find(|r| !valid_route_name(r)) {
        Some(bad) => Err(format!(
            "routes: invalid route name {bad:?} (lowercase letters, digits, '.', '-', '_', at least one dot)"
        )),
        None => Ok(()),
    }
}

/// Reads the first frame: it must be a valid `Hello`.
async fn read_hello(
    socket: &mut WebSocket,
    origin: &str,
) -> Result<(Peer, Option<Endpoint>), String> {
    let message = tokio::time::timeout(HELLO_TIMEOUT, socket.recv())
        .await
        .map_err(|_| format!("no hello within {HELLO_TIMEOUT:?}"))?;
    let text = match message {
        Some(Ok(Message::Text(text))) => text,
        Some(Ok(_)) => return Err("the first frame must be a JSON text frame (hello)".into()),
        _ => return Err("connection closed before hello".into()),
    };
    let frame: ClientFrame =
        serde_json::from_str(text.as_str()).map_err(|e| format!("malformed frame: {e}"))?;
    let ClientFrame::Hello {
        app,
        group,
        routes,
        topic,
        address,
        port,
    } = frame
    else {
        return Err("the first frame must be hello".into());
    };
    if app.trim().is_empty() {
        return Err("app: must not be empty".into());
    }
    check_routes(&routes)?;
    let endpoint = match (address, port) {
        (None, None) => None,
        (Some(address), Some(port)) if !address.trim().is_empty() && port != 0 => {
            Some(Endpoint { address, port })
        }
        _ => return Err("address and port: give both (the actuator's host and a port from 1 to 65535), or neither".into()),
    };
    let peer = Peer {
        origin: origin.to_owned(),
        app,
        group: if group.is_empty() {
            "default".to_owned()
        } else {
            group
        },
        topic: topic.unwrap_or_default(),
        routes,
    };
    Ok((peer, endpoint))
}

async fn session(presence: Presence, authz: Authz, origin: String, mut socket: WebSocket) {
    if let Err(error) = presence.ensure_started().await {
        tracing::warn!(%error, "presence: cannot start");
        return refuse(&mut socket, &origin, "presence is unavailable".into()).await;
    }
    let (peer, endpoint) = match read_hello(&mut socket, &origin).await {
        Ok(hello) => hello,
        Err(reason) => return refuse(&mut socket, &origin, reason).await,
    };
    if let Err(denied) = authz.require_service_write(&peer.app) {
        return refuse(&mut socket, &origin, denied.to_string()).await;
    }
    presence.inner.sessions.fetch_add(1, Ordering::SeqCst);
    match presence.claim_at(peer, endpoint).await {
        Ok(mut claim) => {
            tracing::info!(%origin, app = %claim.record.peer.app, topic = %claim.record.peer.topic, "presence: app connected");
            run(&presence, &mut claim, &mut socket).await;
            if let Err(error) = presence.release(&claim).await {
                tracing::warn!(%error, %origin, "presence: cannot release app");
            }
            tracing::info!(%origin, "presence: app disconnected");
            let _ = socket.send(Message::Close(None)).await;
        }
        Err(PresenceError::Refused(reason)) => refuse(&mut socket, &origin, reason).await,
        Err(error) => {
            tracing::warn!(%error, %origin, "presence: claim failed");
            refuse(&mut socket, &origin, "presence is unavailable".into()).await;
        }
    }
    presence.inner.sessions.fetch_sub(1, Ordering::SeqCst);
}

/// The connected part of a session; returns when the app leaves, goes silent or misbehaves.
async fn run(presence: &Presence, claim: &mut Claim, socket: &mut WebSocket) {
    let mut events = presence.inner.events.subscribe();
    let me = claim.record.peer.clone();
    let peers = match presence.apps().await {
        Ok(apps) => apps
            .into_iter()
            .map(|a| a.peer)
            .filter(|p| p.group == me.group && p.origin != me.origin)
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "presence: cannot list peers");
            return;
        }
    };
    let welcome = ServerFrame::Welcome {
        topic: me.topic.clone(),
        peers,
    };
    if !send(socket, &welcome).await {
        return;
    }
    let config = presence.config();
    let mut ping = tokio::time::interval(config.ping_interval);
    let mut last_heard = Instant::now();
    let mut keep_alive = tokio::time::interval(config.keep_alive_interval());
    loop {
        tokio::select! {
            _ = keep_alive.tick() => {
                match presence.keep_alive(claim).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // The records are gone (the store was out of reach for a whole TTL): the
                        // app reconnects and claims again.
                        tracing::warn!(origin = %me.origin, lease = claim.lease, "presence: lease expired, dropping the app");
                        return;
                    }
                    Err(error) => tracing::warn!(%error, origin = %me.origin, "presence: lease keep-alive failed; retrying"),
                }
            }
            message = socket.recv() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => {
                        match serde_json::from_str::<ClientFrame>(text.as_str()) {
                            Ok(ClientFrame::Routes { routes }) => {
                                if let Err(reason) = check_routes(&routes) {
                                    let _ = send(socket, &ServerFrame::Refused { reason }).await;
                                    return;
                                }
                                if let Err(error) = presence.update_routes(claim, routes).await {
                                    tracing::warn!(%error, origin = %me.origin, "presence: route update failed");
                                    return;
                                }
                            }
                            Ok(ClientFrame::Hello { .. }) => {
                                let _ = send(socket, &ServerFrame::Refused { reason: "hello sent twice".into() }).await;
                                return;
                            }
                            Err(error) => {
                                let reason = format!("malformed frame: {error}");
                                let _ = send(socket, &ServerFrame::Refused { reason }).await;
                                return;
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
            event = events.recv() => {
                let frame = match event {
                    Ok(GroupEvent::Join(p)) if p.group == me.group && p.origin != me.origin => ServerFrame::Join { peer: p },
                    Ok(GroupEvent::Leave(p)) if p.group == me.group && p.origin != me.origin => ServerFrame::Leave { origin: p.origin },
                    Ok(GroupEvent::Routes(p)) if p.group == me.group && p.origin != me.origin => ServerFrame::Routes { origin: p.origin, routes: p.routes },
                    Ok(_) => continue,
                    // Missed changes: the app reconnects and gets a fresh welcome.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                };
                if !send(socket, &frame).await {
                    return;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > config.timeout {
                    tracing::info!(origin = %me.origin, "presence: app silent, dropping it");
                    return;
                }
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
        }
    }
}
