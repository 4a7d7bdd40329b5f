//! One app's connection to the node: hello (authentication), then frames until it closes.
//!
//! ```text
//! read hello ─► auth ─► welcome ─┬─ reader: frames ─► register | unregister | call task | result
//!                                └─ writer: outbound queue ─► segment ─► WebSocket
//! close ─► release every route it owned ─► waiting deliveries fail (503)
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Node;
use super::protocol::{self, CallKind, ClientFrame, FrameError, Ref, ServerFrame};
use crate::envelope::{EventEnvelope, new_id};
use crate::platform::{Fault, Visibility};
use crate::segment::{self, Reassembler};

/// Frames waiting to be written to one app; when full, the node stops reading from that app.
const OUTBOUND_QUEUE: usize = 1024;
/// Room kept in each frame for the fields around a segment.
const FRAME_OVERHEAD: usize = 1024;
/// How often the node pings an app, and how long a silent app is kept.
const PING_INTERVAL: Duration = Duration::from_secs(5);
const SILENCE: Duration = Duration::from_secs(30);

type Deliveries = Arc<Mutex<HashMap<String, oneshot::Sender<EventEnvelope>>>>;

struct Session {
    id: u64,
    app: String,
    node: Node,
    out: mpsc::Sender<ServerFrame>,
    routes: BTreeSet<String>,
    deliveries: Deliveries,
    in_flight: Arc<Semaphore>,
    reassembly: Reassembler,
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.chars().take(120).collect::<String>().into(),
    }))
}

fn error(reference: Option<Ref>, status: u16, message: impl Into<String>) -> ServerFrame {
    ServerFrame::Error {
        reference,
        status,
        message: message.into(),
    }
}

impl From<FrameError> for ServerFrame {
    fn from(e: FrameError) -> Self {
        error(e.reference, e.status, e.message)
    }
}

/// Reads the `hello` frame and checks the token.
async fn hello(node: &Node, socket: &mut WebSocket) -> Result<String, (u16, String)> {
    let first = tokio::time::timeout(node.config().hello_timeout, socket.recv())
        .await
        .map_err(|_| (408, "no hello frame in time".to_owned()))?;
    let bytes = match first {
        Some(Ok(Message::Binary(bytes))) => bytes,
        Some(Ok(_)) => return Err((400, "the first frame must be a binary MsgPack hello".into())),
        _ => return Err((400, "connection closed before hello".into())),
    };
    match protocol::decode(&bytes) {
        Ok(ClientFrame::Hello { app, token }) => {
            node.config()
                .auth
                .check(token.as_deref(), &app)
                .await
                .map_err(|r| (r.status, r.message))?;
            Ok(app)
        }
        Ok(_) => Err((400, "the first frame must be hello".into())),
        Err(e) => Err((e.status, e.message)),
    }
}

/// Serves one connection until it closes.
pub(super) async fn run(node: Node, mut socket: WebSocket) {
    let app = match hello(&node, &mut socket).await {
        Ok(app) => app,
        Err((status, message)) => {
            tracing::info!(%message, status, "events node: app refused");
            let frame = protocol::encode(&error(None, status, message.clone()));
            let _ = socket.send(Message::Binary(frame.into())).await;
            let _ = socket.send(close(1008, &message)).await;
            return;
        }
    };
    let config = node.config().clone();
    if node.inner.sessions.fetch_add(1, Ordering::SeqCst) >= config.max_sessions {
        node.inner.sessions.fetch_sub(1, Ordering::SeqCst);
        let message = format!("this node serves at most {} apps", config.max_sessions);
        let frame = protocol::encode(&error(None, 503, message.clone()));
        let _ = socket.send(Message::Binary(frame.into())).await;
        let _ = socket.send(close(1013, &message)).await;
        return;
    }
    let id = node.inner.next_session.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%app, session = id, "events node: app connected");
    let welcome = ServerFrame::Welcome {
        origin: node.platform().origin().to_owned(),
        app: node.platform().app().to_owned(),
        max_frame_bytes: config.max_frame_bytes,
        max_event_bytes: config.max_event_bytes,
        max_in_flight: config.max_in_flight,
    };
    let (sink, stream) = socket.split();
    let (out, queue) = mpsc::channel(OUTBOUND_QUEUE);
    let writer = tokio::spawn(write(sink, queue, config.max_frame_bytes));
    let _ = out.send(welcome).await;
    let mut session = Session {
        id,
        app: app.clone(),
        node: node.clone(),
        out,
        routes: BTreeSet::new(),
        deliveries: Deliveries::default(),
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        reassembly: Reassembler::with_limits(config.max_event_bytes, config.max_event_bytes * 4),
    };
    session.read(stream).await;
    session.release_all();
    node.inner.sessions.fetch_sub(1, Ordering::SeqCst);
    drop(session);
    let _ = writer.await;
    tracing::info!(%app, session = id, "events node: app disconnected");
}

/// Writes queued frames, cutting events larger than a frame into segments, and pings the app
/// every [`PING_INTERVAL`] (its pongs keep an idle connection alive).
async fn write(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<ServerFrame>,
    max_frame_bytes: usize,
) {
    let chunk = max_frame_bytes.saturating_sub(FRAME_OVERHEAD).max(1024);
    let mut ping = tokio::time::interval(PING_INTERVAL);
    loop {
        let frame = tokio::select! {
            frame = queue.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
            _ = ping.tick() => {
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let parts = match frame.event() {
            Some(event) if event.len() > chunk => segment::split(event.to_vec(), chunk)
                .into_iter()
                .map(|part| frame.with_event(part))
                .collect(),
            _ => vec![frame],
        };
        for part in parts {
            let bytes = protocol::encode(&part);
            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                return;
            }
        }
    }
    let _ = sink.send(close(1000, "bye")).await;
}

impl Session {
    async fn reply(&self, frame: ServerFrame) {
        // A closed queue means the connection is gone; nothing left to tell.
        let _ = self.out.send(frame).await;
    }

    async fn read(&mut self, mut stream: futures::stream::SplitStream<WebSocket>) {
        let mut check = tokio::time::interval(PING_INTERVAL);
        let mut last_heard = Instant::now();
        loop {
            let message = tokio::select! {
                message = stream.next() => message,
                _ = check.tick() => {
                    if last_heard.elapsed() > SILENCE {
                        tracing::info!(app = %self.app, session = self.id, "events node: app silent, closing");
                        return;
                    }
                    continue;
                }
            };
            last_heard = Instant::now();
            match message {
                Some(Ok(Message::Binary(bytes))) => self.frame(&bytes).await,
                Some(Ok(Message::Text(_))) => {
                    self.reply(error(None, 400, "frames are binary MsgPack maps, not text"))
                        .await;
                }
                Some(Ok(Message::Close(_))) | None => return,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, app = %self.app, "events node: connection failed");
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    }

    async fn frame(&mut self, bytes: &[u8]) {
        let max = self.node.config().max_frame_bytes;
        let frame = match protocol::decode(bytes) {
            Ok(frame) => frame,
            Err(e) => return self.reply(e.into()).await,
        };
        if bytes.len() > max {
            let reference = match &frame {
                ClientFrame::Register { reference, .. }
                | ClientFrame::Unregister { reference, .. }
                | ClientFrame::Call { reference, .. } => Some(reference.clone()),
                _ => None,
            };
            let message = format!(
                "frame of {} bytes exceeds max_frame_bytes ({max}): send larger events as segments",
                bytes.len()
            );
            return self.reply(error(reference, 413, message)).await;
        }
        match frame {
            ClientFrame::Hello { .. } => {
                self.reply(error(None, 400, "hello sent twice")).await;
            }
            ClientFrame::Register {
                reference,
                route,
                workers,
                private,
            } => {
                let outcome = self.register(&route, workers, private);
                self.reply(match outcome {
                    Ok(()) => ServerFrame::Ack { reference },
                    Err(fault) => error(Some(reference), fault.status, fault.message),
                })
                .await;
            }
            ClientFrame::Unregister { reference, route } => {
                let frame = if self.routes.remove(&route) {
                    self.release(&route);
                    ServerFrame::Ack { reference }
                } else {
                    let message = format!("route {route} is not registered by this connection");
                    error(Some(reference), 404, message)
                };
                self.reply(frame).await;
            }
            ClientFrame::Call {
                reference,
                kind,
                event,
            } => match self.whole(event) {
                Ok(None) => {}
                Ok(Some(event)) => self.call(reference, kind, event).await,
                Err(fault) => {
                    self.reply(error(Some(reference), fault.status, fault.message))
                        .await;
                }
            },
            ClientFrame::Result { id, event } => match self.whole(event) {
                Ok(None) => {}
                Ok(Some(reply)) => {
                    let waiting = self
                        .deliveries
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id);
                    match waiting {
                        Some(tx) => {
                            let _ = tx.send(reply);
                        }
                        None => {
                            let message = format!(
                                "result {id}: no delivery with this id is waiting (answered, timed out or unknown)"
                            );
                            self.reply(error(None, 404, message)).await;
                        }
                    }
                }
                Err(fault) => {
                    let message = format!("result {id}: {}", fault.message);
                    self.reply(error(None, fault.status, message)).await;
                }
            },
        }
    }

    /// An event from its bytes, reassembled when they are a segment: `None` until complete.
    fn whole(&mut self, bytes: Vec<u8>) -> Result<Option<EventEnvelope>, Fault> {
        let max = self.node.config().max_event_bytes;
        let too_large = |n: usize| {
            Fault::new(
                413,
                format!("event of {n} bytes exceeds max_event_bytes ({max})"),
            )
        };
        if bytes.len() > max {
            return Err(too_large(bytes.len()));
        }
        let event = EventEnvelope::from_bytes(&bytes)
            .map_err(|e| Fault::new(400, format!("event: not an envelope: {e}")))?;
        if !Reassembler::is_segment(&event) {
            return Ok(Some(event));
        }
        match self.reassembly.add(event, Instant::now()) {
            Ok(None) => Ok(None),
            Ok(Some(whole)) => {
                if whole.len() > max {
                    return Err(too_large(whole.len()));
                }
                match EventEnvelope::from_bytes(&whole) {
                    Ok(e) if !Reassembler::is_segment(&e) => Ok(Some(e)),
                    Ok(_) => Err(Fault::new(400, "event: a segment of segments")),
                    Err(e) => Err(Fault::new(400, format!("event: not an envelope: {e}"))),
                }
            }
            Err(segment::SegmentError::TooLarge) => Err(Fault::new(
                413,
                format!("segmented event exceeds max_event_bytes ({max})"),
            )),
            Err(e) => Err(Fault::new(400, format!("event: {e}"))),
        }
    }

    async fn call(&self, reference: Ref, kind: CallKind, event: EventEnvelope) {
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            let message = format!(
                "flow control: {} calls already in flight on this connection (max_in_flight); wait for replies",
                self.node.config().max_in_flight
            );
            return self.reply(error(Some(reference), 429, message)).await;
        };
        let platform = self.node.platform().clone();
        let out = self.out.clone();
        tokio::spawn(async move {
            let frame = match kind {
                CallKind::Request(timeout) => ServerFrame::Reply {
                    reference,
                    event: platform.request(event, timeout).await.to_bytes(),
                },
                CallKind::Send | CallKind::Broadcast => {
                    let outcome = if kind == CallKind::Send {
                        platform.send(event).await
                    } else {
                        platform.broadcast(event).await
                    };
                    match outcome {
                        Ok(()) => ServerFrame::Ack { reference },
                        Err(fault) => error(Some(reference), fault.status, fault.message),
                    }
                }
            };
            drop(permit);
            let _ = out.send(frame).await;
        });
    }

    fn register(&mut self, route: &str, workers: usize, private: bool) -> Result<(), Fault> {
        let limit = self.node.config().max_routes;
        if !self.routes.contains(route) && self.routes.len() >= limit {
            return Err(Fault::new(
                429,
                format!("this connection already serves {limit} routes (max_routes)"),
            ));
        }
        {
            let mut owners = self.node.owners();
            match owners.get(route) {
                Some((session, app)) if *session != self.id => {
                    return Err(Fault::new(
                        409,
                        format!("route {route} is served by another app on this node ({app})"),
                    ));
                }
                None if self.node.platform().is_public(route).is_some() => {
                    return Err(Fault::new(
                        409,
                        format!("route {route} is served by the node itself"),
                    ));
                }
                _ => {}
            }
            owners.insert(route.to_owned(), (self.id, self.app.clone()));
        }
        let visibility = if private {
            Visibility::Private
        } else {
            Visibility::Public
        };
        let registered = self.node.platform().register_replying(
            route,
            workers,
            visibility,
            deliver(
                route.to_owned(),
                self.out.clone(),
                Arc::clone(&self.deliveries),
                self.node.config().delivery_timeout,
            ),
        );
        match registered {
            Ok(()) => {
                self.routes.insert(route.to_owned());
                Ok(())
            }
            Err(fault) => {
                self.node.owners().remove(route);
                Err(fault)
            }
        }
    }

    /// Stops serving `route` (when this session owns it).
    fn release(&self, route: &str) {
        let mut owners = self.node.owners();
        if owners.get(route).is_some_and(|(s, _)| *s == self.id) {
            owners.remove(route);
            drop(owners);
            self.node.platform().release(route);
        }
    }

    fn release_all(&mut self) {
        for route in std::mem::take(&mut self.routes) {
            self.release(&route);
        }
        // Dropping the senders fails every delivery still waiting (503).
        self.deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// The platform function of a route served by an app: forward the event, wait for its result.
fn deliver(
    route: String,
    out: mpsc::Sender<ServerFrame>,
    deliveries: Deliveries,
    timeout: Duration,
) -> impl Fn(EventEnvelope) -> futures::future::BoxFuture<'static, Result<EventEnvelope, Fault>>
+ Send
+ Sync
+ 'static {
    move |event: EventEnvelope| {
        let (route, out, deliveries) = (route.clone(), out.clone(), Arc::clone(&deliveries));
        Box::pin(async move {
            let id = new_id();
            let (tx, rx) = oneshot::channel();
            deliveries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id.clone(), tx);
            let gone = || Fault::new(503, format!("the app serving {route} disconnected"));
            let frame = ServerFrame::Deliver {
                id: id.clone(),
                route: route.clone(),
                event: event.to_bytes(),
            };
            if out.send(frame).await.is_err() {
                deliveries
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                return Err(gone());
            }
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(gone()),
                Err(_) => {
                    deliveries
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id);
                    Err(Fault::new(
                        504,
                        format!(
                            "the app serving {route} did not answer within {} ms",
                            timeout.as_millis()
                        ),
                    ))
                }
            }
        })
    }
}
