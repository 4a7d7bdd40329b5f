//! The presence client: keeps this instance announced to the control plane and the routing table
//! in step with its peers.
//!
//! It connects to `ws://<control>/ws/presence/<origin>`, says `Hello` with the app's public routes
//! (and the topic it held before, after a reconnect), applies `Welcome`/`Join`/`Leave`/`Routes` to
//! the routing table, and sends `Routes` whenever local public routes change. When the connection
//! is lost (or silent for [`SILENCE`]), it clears every remote route, reconnects with jittered
//! exponential backoff and announces itself again.
//!
//! `control` may list several control-plane replicas (`host:port,host:port`): each reconnect goes
//! to the next address in turn, so an app whose replica died re-announces through another one
//! (asking for the topic it held: its old records, still bound to the dead replica's lease, are
//! taken over by the new session).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use plexus_api::presence::{ClientFrame, MAX_FRAME_BYTES, ServerFrame};
use rand::Rng;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::platform::Platform;

/// A connection that carried nothing (the server pings every second) for this long is dropped.
pub const SILENCE: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// The state of presence, as the app sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceState {
    /// True while connected and welcomed.
    pub connected: bool,
    /// The topic-partition assigned by the control plane (kept across reconnects).
    pub topic: Option<String>,
}

/// A running presence client.
#[derive(Debug, Clone)]
pub struct PresenceClient {
    state: watch::Receiver<PresenceState>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect")]
    Connect(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("connection failed")]
    Socket(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("refused by the control plane: {0}")]
    Refused(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("no frame for {SILENCE:?}")]
    Silent,
}

impl PresenceClient {
    /// Starts announcing `platform` to the control plane at `control` (`host:port`, or several
    /// replicas comma-separated, tried in turn) in `group`, until `shutdown` is cancelled.
    pub fn start(
        platform: Platform,
        control: String,
        group: String,
        shutdown: CancellationToken,
    ) -> Self {
        Self::start_with_token(platform, control, group, None, shutdown)
    }

    /// Like [`PresenceClient::start`], sending `token` (`X-Consul-Token`) when connecting: a
    /// control plane enforcing ACLs wants `service:write` on the app's name.
    pub fn start_with_token(
        platform: Platform,
        control: String,
        group: String,
        token: Option<plexus_api::acl::SecretId>,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, state) = watch::channel(PresenceState::default());
        tokio::spawn(run(platform, control, group, token, tx, shutdown));
        Self { state }
    }

    /// The presence state, as a watch.
    pub fn state(&self) -> watch::Receiver<PresenceState> {
        self.state.clone()
    }

    /// Waits until connected and welcomed (or `timeout` passes); returns the assigned topic.
    pub async fn connected(&self, timeout: Duration) -> Option<String> {
        let mut state = self.state.clone();
        let wait = state.wait_for(|s| s.connected);
        tokio::time::timeout(timeout, wait)
            .await
            .ok()?
            .ok()?
            .topic
            .clone()
    }
}

async fn run(
    platform: Platform,
    control: String,
    group: String,
    token: Option<plexus_api::acl::SecretId>,
    state: watch::Sender<PresenceState>,
    shutdown: CancellationToken,
) {
    let addresses = control_addresses(&control);
    let mut next = 0;
    let mut backoff = BACKOFF_START;
    loop {
        let control = addresses[next % addresses.len()].clone();
        next += 1;
        let outcome = tokio::select! {
            outcome = session(&platform, &control, &group, token.as_ref(), &state, &mut backoff) => outcome,
            () = shutdown.cancelled() => Ok(()),
        };
        platform.update_table(|t| t.clear());
        state.send_modify(|s| s.connected = false);
        if shutdown.is_cancelled() {
            return;
        }
        match outcome {
            Ok(()) => tracing::warn!(%control, "presence connection closed; reconnecting"),
            Err(SessionError::Refused(reason)) => {
                tracing::error!(%control, %reason, "presence refused this app; retrying with a new topic");
                state.send_modify(|s| s.topic = None);
            }
            Err(error) => {
                let error = crate::actuator::chain(&error);
                tracing::warn!(%control, %error, "presence connection lost; reconnecting");
            }
        }
        let jitter = rand::rng().random_range(0.5..1.0);
        tokio::select! {
            () = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
            () = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The replicas of a `host:port[,host:port…]` list (never empty: a blank list stays one entry,
/// so the connect error names it).
fn control_addresses(control: &str) -> Vec<String> {
    let addresses: Vec<String> = control
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if addresses.is_empty() {
        vec![control.to_owned()]
    } else {
        addresses
    }
}

async fn session(
    platform: &Platform,
    control: &str,
    group: &str,
    token: Option<&plexus_api::acl::SecretId>,
    state: &watch::Sender<PresenceState>,
    backoff: &mut Duration,
) -> Result<(), SessionError> {
    let url = format!("ws://{control}/ws/presence/{}", platform.origin());
    let config = WebSocketConfig::default().max_message_size(Some(MAX_FRAME_BYTES));
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .map_err(SessionError::Connect)?;
    if let Some(token) = token
        && let Ok(value) =
            tokio_tungstenite::tungstenite::http::HeaderValue::from_str(token.expose())
    {
        request
            .headers_mut()
            .insert(plexus_api::acl::TOKEN_HEADER, value);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
        .await
        .map_err(SessionError::Connect)?;
    let mut routes = platform.public_routes();
    let hello = ClientFrame::Hello {
        app: platform.app().to_owned(),
        group: group.to_owned(),
        routes: routes.borrow_and_update().clone(),
        topic: state.borrow().topic.clone(),
        address: platform.advertise().map(|a| a.ip().to_string()),
        port: platform.advertise().map(|a| a.port()),
    };
    send(&mut ws, &hello).await?;
    loop {
        let message = tokio::select! {
            message = tokio::time::timeout(SILENCE, ws.next()) => message.map_err(|_| SessionError::Silent)?,
            changed = routes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let frame = ClientFrame::Routes { routes: routes.borrow_and_update().clone() };
                send(&mut ws, &frame).await?;
                continue;
            }
        };
        let text = match message {
            None | Some(Ok(Message::Close(_))) => return Ok(()),
            Some(Err(error)) => return Err(SessionError::Socket(error)),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
        };
        let frame: ServerFrame = serde_json::from_str(text.as_str())
            .map_err(|e| SessionError::Protocol(format!("malformed frame: {e}")))?;
        match frame {
            ServerFrame::Welcome { topic, peers } => {
                tracing::info!(%topic, peers = peers.len(), "presence: connected to the control plane");
                platform.update_table(|t| {
                    let mut changes = t.clear();
                    for peer in peers {
                        changes.extend(t.join(peer));
                    }
                    changes
                });
                platform.set_topic(Some(topic.clone()));
                state.send_replace(PresenceState {
                    connected: true,
                    topic: Some(topic),
                });
                *backoff = BACKOFF_START;
            }
            ServerFrame::Refused { reason } => return Err(SessionError::Refused(reason)),
            ServerFrame::Join { peer } => platform.update_table(|t| t.join(peer)),
            ServerFrame::Leave { origin } => platform.update_table(|t| t.leave(&origin)),
            ServerFrame::Routes { origin, routes } => {
                platform.update_table(|t| t.set_routes(&origin, routes));
            }
        }
    }
}

async fn send<S>(ws: &mut S, frame: &ClientFrame) -> Result<(), SessionError>
where
    S: SinkExt<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let text = serde_json::to_string(frame).map_err(|e| SessionError::Protocol(e.to_string()))?;
    ws.send(Message::text(text))
        .await
        .map_err(SessionError::Socket)
}

#[cfg(test)]
mod tests {
    use super::control_addresses;

    #[test]
    fn control_lists_every_replica_in_order() {
        assert_eq!(control_addresses("a:1"), ["a:1"]);
        assert_eq!(control_addresses(" a:1, b:2 ,,"), ["a:1", "b:2"]);
        assert_eq!(control_addresses(""), [""]);
    }
}
