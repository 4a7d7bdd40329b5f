//! The post office: functions registered under route names, each with its own worker pool
//! (bulkhead), and the calls between them.
//!
//! ```text
//! send/request ─► route_event ─┬─ local route? ─► worker pool ─► function ─► reply to reply_to
//!                              ├─ inbox.<key>@me ► the waiting request
//!                              └─ routing table ─► pick peer ─► segment ─► connector ─► broker
//! connector ─► receive ─► reassemble ─► decode ─► route_event (as above)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use plexus_api::presence::Peer;
use rmpv::Value;
use tokio::sync::{Semaphore, oneshot, watch};

use crate::connector::Connector;
use crate::envelope::EventEnvelope;
use crate::observe::{Kind, Observer, Record};
use crate::route::{Address, RouteError, inbox_address, is_reserved, validate_route};
use crate::routing::{Change, RoutingTable};
use crate::segment::{self, Reassembler};

/// An error with a status code, as the caller receives it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct Fault {
    /// HTTP-style status (400 or more).
    pub status: u16,
    /// What went wrong.
    pub message: String,
}

impl Fault {
    /// A fault with any status.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// The fault as an error envelope.
    pub fn into_envelope(self) -> EventEnvelope {
        EventEnvelope::error(self.status, self.message)
    }
}

impl From<RouteError> for Fault {
    fn from(error: RouteError) -> Self {
        Self::new(400, error.to_string())
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Announced to peers and callable from other instances and over HTTP.
    Public,
    /// Callable only from inside this instance.
    Private,
}

type Handler =
    Arc<dyn Fn(EventEnvelope) -> BoxFuture<'static, Result<EventEnvelope, Fault>> + Send + Sync>;

#[derive(Clone)]
struct LocalRoute {
    handler: Handler,
    workers: usize,
    visibility: Visibility,
    permits: Arc<Semaphore>,
}

/// A local route as `/env` and `/info/routes` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteInfo {
    /// The route name.
    pub route: String,
    /// Worker count.
    pub workers: usize,
    /// True for private routes.
    pub private: bool,
}

/// Counters of the platform (bounded, no labels).
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages from the broker dropped because they were not valid envelopes or segments.
    pub malformed: AtomicU64,
    /// Events delivered to local functions.
    pub delivered: AtomicU64,
    /// Events sent to peers through the connector.
    pub transmitted: AtomicU64,
}

struct Inner {
    app: String,
    origin: String,
    started: Instant,
    local: RwLock<BTreeMap<String, LocalRoute>>,
    inbox: Mutex<HashMap<String, oneshot::Sender<EventEnvelope>>>,
    table: Mutex<RoutingTable>,
    connector: RwLock<Option<Arc<dyn Connector>>>,
    topic: RwLock<Option<String>>,
    reassembly: Mutex<Reassembler>,
    public_routes: watch::Sender<Vec<String>>,
    stats: Stats,
    observer: RwLock<Option<Arc<dyn Observer>>>,
    advertise: RwLock<Option<SocketAddr>>,
}

/// One app instance's event platform: local routes, routing table, connector. Cheap to clone.
#[derive(Clone)]
pub struct Platform {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Platform {
    /// A platform for app `app` with a fresh origin (instance id).
    pub fn new(app: impl Into<String>) -> Self {
        let origin = format!("{}", uuid::Uuid::new_v4().simple());
        Self::with_origin(app, origin)
    }

    /// A platform with a given origin.
    pub fn with_origin(app: impl Into<String>, origin: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                app: app.into(),
                origin: origin.into(),
                started: Instant::now(),
                local: RwLock::default(),
                inbox: Mutex::default(),
                table: Mutex::default(),
                connector: RwLock::default(),
                topic: RwLock::default(),
                reassembly: Mutex::default(),
                public_routes: watch::channel(Vec::new()).0,
                stats: Stats::default(),
                observer: RwLock::default(),
                advertise: RwLock::default(),
            }),
        }
    }

    /// The app name.
    pub fn app(&self) -> &str {
        &self.inner.app
    }

    /// This instance's origin.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// Time since the platform started.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Reports every handled event and every request to `observer` (metrics, access log).
    pub fn set_observer(&self, observer: Arc<dyn Observer>) {
        *self
            .inner
            .observer
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(observer);
    }

    fn observe(&self, record: impl FnOnce() -> Record) {
        let observer = self
            .inner
            .observer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(observer) = observer {
            observer.record(&record());
        }
    }

    /// Sets the address this instance's actuator listens on; presence announces it and the
    /// catalog lists the app with it.
    pub fn set_advertise(&self, address: SocketAddr) {
        *self
            .inner
            .advertise
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(address);
    }

    /// The actuator address presence announces, once set.
    pub fn advertise(&self) -> Option<SocketAddr> {
        *self
            .inner
            .advertise
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The app name of instance `origin` (this one or a known peer), `unknown` otherwise.
    pub fn app_of(&self, origin: Option<&str>) -> String {
        match origin {
            Some(o) if o == self.origin() => self.app().to_owned(),
            Some(o) => lock(&self.inner.table)
                .peer(o)
                .map_or_else(|| "unknown".to_owned(), |p| p.app.clone()),
            None => "unknown".to_owned(),
        }
    }

    /// `route` when this instance serves it or a peer does, else `unknown` (a bounded label).
    fn route_label(&self, route: &str) -> String {
        if self.local_route(route).is_some() || !lock(&self.inner.table).serving(route).is_empty() {
            route.to_owned()
        } else {
            "unknown".to_owned()
        }
    }

    /// Attaches the cloud connector (replacing any previous one).
    pub fn set_connector(&self, connector: Arc<dyn Connector>) {
        *self
            .inner
            .connector
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(connector);
    }

    /// Records the topic-partition presence assigned to this instance.
    pub fn set_topic(&self, topic: Option<String>) {
        *self
            .inner
            .topic
            .write()
            .unwrap_or_else(PoisonError::into_inner) = topic;
    }

    /// The topic-partition this instance consumes, once assigned.
    pub fn topic(&self) -> Option<String> {
        self.inner
            .topic
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The attached connector.
    pub fn connector(&self) -> Option<Arc<dyn Connector>> {
        self.inner
            .connector
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Registers `function` under `route` with `workers` concurrent workers.
    pub fn register<F, Fut>(
        &self,
        route: &str,
        workers: usize,
        visibility: Visibility,
        function: F,
    ) -> Result<(), Fault>
    where
        F: Fn(EventEnvelope) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, Fault>> + Send + 'static,
    {
        let function = Arc::new(function);
        self.register_replying(route, workers, visibility, move |event| {
            let call = function(event);
            async move {
                call.await.map(|body| EventEnvelope {
                    body,
                    ..EventEnvelope::default()
                })
            }
        })
    }

    /// Like [`Platform::register`] for a function that answers with a whole envelope (status,
    /// headers, body, …); the platform fills in the addressing and tracing fields of the reply.
    pub fn register_replying<F, Fut>(
        &self,
        route: &str,
        workers: usize,
        visibility: Visibility,
        function: F,
    ) -> Result<(), Fault>
    where
        F: Fn(EventEnvelope) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<EventEnvelope, Fault>> + Send + 'static,
    {
        validate_route(route)?;
        if is_reserved(route) {
            return Err(Fault::new(
                400,
                format!("route {route}: names starting with inbox are reserved"),
            ));
        }
        if workers == 0 {
            return Err(Fault::new(
                400,
                format!("route {route}: workers must be at least 1"),
            ));
        }
        let handler: Handler = Arc::new(move |event| function(event).boxed());
        let entry = LocalRoute {
            handler,
            workers,
            visibility,
            permits: Arc::new(Semaphore::new(workers)),
        };
        self.inner
            .local
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(route.to_owned(), entry);
        tracing::info!(route, workers, ?visibility, "route registered");
        self.publish_routes();
        Ok(())
    }

    /// Removes a local route.
    pub fn release(&self, route: &str) {
        let removed = self
            .inner
            .local
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(route);
        if removed.is_some() {
            self.publish_routes();
        }
    }

    fn publish_routes(&self) {
        let routes = self
            .local_routes()
            .into_iter()
            .filter(|r| !r.private)
            .map(|r| r.route)
            .collect();
        self.inner.public_routes.send_replace(routes);
    }

    /// The public route names, as a watch (presence announces them).
    pub fn public_routes(&self) -> watch::Receiver<Vec<String>> {
        self.inner.public_routes.subscribe()
    }

    /// The local routes.
    pub fn local_routes(&self) -> Vec<RouteInfo> {
        self.inner
            .local
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(route, r)| RouteInfo {
                route: route.clone(),
                workers: r.workers,
                private: r.visibility == Visibility::Private,
            })
            .collect()
    }

    fn local_route(&self, route: &str) -> Option<LocalRoute> {
        self.inner
            .local
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(route)
            .cloned()
    }

    /// True when `route` is public here (callable from other instances and over HTTP); `None`
    /// when it is not local.
    pub fn is_public(&self, route: &str) -> Option<bool> {
        self.local_route(route)
            .map(|r| r.visibility == Visibility::Public)
    }

    /// True when `route` is served here or by a known peer.
    pub fn exists(&self, route: &str) -> bool {
        self.local_route(route).is_some() || !lock(&self.inner.table).serving(route).is_empty()
    }

    /// The origins serving `route` (this one first when local).
    pub fn search(&self, route: &str) -> Vec<String> {
        let mut found = Vec::new();
        if self.local_route(route).is_some() {
            found.push(self.origin().to_owned());
        }
        found.extend(lock(&self.inner.table).serving(route));
        found
    }

    /// The remote peers known to the routing table.
    pub fn peers(&self) -> Vec<Peer> {
        lock(&self.inner.table).peers().cloned().collect()
    }

    /// Applies routing-table changes from presence and logs them.
    pub fn update_table(&self, update: impl FnOnce(&mut RoutingTable) -> Vec<Change>) {
        let changes = update(&mut lock(&self.inner.table));
        for change in changes {
            match change {
                Change::Joined(p) => tracing::info!("peer {} joins ({})", p.origin, p.app),
                Change::Left(p) => tracing::info!("peer {} left ({})", p.origin, p.app),
                Change::Registered { route, origin } => {
                    tracing::info!("{route} ({origin}) registered");
                }
                Change::Unregistered { route, origin } => {
                    tracing::info!("{route} ({origin}) unregistered");
                }
            }
        }
    }

    /// Sends an event without waiting for a reply.
    pub async fn send(&self, event: EventEnvelope) -> Result<(), Fault> {
        self.route_event(event, false).await.map(drop)
    }

    /// Like [`Platform::request`] for an event from outside this instance (event over HTTP):
    /// private routes answer 403.
    pub async fn request_external(&self, event: EventEnvelope, timeout: Duration) -> EventEnvelope {
        if let Some(to) = &event.to {
            let route = to.split('@').next().unwrap_or_default();
            if self.is_public(route) == Some(false) {
                return Fault::new(403, format!("route {route} is private")).into_envelope();
            }
        }
        self.request(event, timeout).await
    }

    /// Sends an event to the local instance and every peer serving its route.
    pub async fn broadcast(&self, event: EventEnvelope) -> Result<(), Fault> {
        let to = event
            .to
            .clone()
            .ok_or_else(|| Fault::new(400, "event has no destination (to)"))?;
        let address = Address::parse(&to)?;
        let mut reached = 0;
        if self.local_route(&address.route).is_some() {
            let mut local = event.clone();
            local.to = Some(format!("{}@{}", address.route, self.origin()));
            self.route_event(local, false).await?;
            reached += 1;
        }
        let peers = lock(&self.inner.table).serving(&address.route);
        for origin in peers {
            let mut copy = event.clone();
            copy.id = crate::envelope::new_id();
            copy.to = Some(format!("{}@{origin}", address.route));
            self.route_event(copy, false).await?;
            reached += 1;
        }
        if reached == 0 {
            return Err(Fault::new(
                404,
                format!("route {} not found", address.route),
            ));
        }
        Ok(())
    }

    /// Sends an event and waits up to `timeout` for the reply. Every failure comes back as an
    /// error envelope: 404 unknown route, 408 timeout, 500 function failure, 503 connector down.
    ///
    /// The event keeps its `cid` (the caller's business correlation id, copied into the reply);
    /// the reply finds its way back through a per-request inbox address in `reply_to`.
    pub async fn request(&self, mut event: EventEnvelope, timeout: Duration) -> EventEnvelope {
        let key = crate::envelope::new_id();
        event.reply_to = Some(inbox_address(&key, self.origin()));
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.inbox).insert(key.clone(), tx);
        let started = Instant::now();
        let (id, trace_id, cid) = (event.id.clone(), event.trace_id.clone(), event.cid.clone());
        let route = event
            .to
            .as_deref()
            .map(|to| to.split('@').next().unwrap_or_default().to_owned())
            .unwrap_or_default();
        let mut reply = match self.route_event(event, false).await {
            Err(fault) => {
                lock(&self.inner.inbox).remove(&key);
                (None, fault.into_envelope())
            }
            Ok(origin) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => (Some(origin), reply),
                Ok(Err(_)) => (
                    Some(origin),
                    Fault::new(500, "request abandoned").into_envelope(),
                ),
                Err(_) => {
                    lock(&self.inner.inbox).remove(&key);
                    let fault = Fault::new(408, format!("Timeout for {} ms", timeout.as_millis()));
                    (Some(origin), fault.into_envelope())
                }
            },
        };
        let elapsed = started.elapsed();
        reply.1.round_trip = Some(elapsed.as_secs_f32() * 1000.0);
        if reply.1.cid.is_none() {
            reply.1.cid.clone_from(&cid);
        }
        self.observe(|| Record {
            kind: Kind::Request,
            route: self.route_label(&route),
            origin_app: self.app_of(reply.0.as_deref()),
            origin: reply.0,
            status: reply.1.status,
            duration: elapsed,
            id,
            trace_id,
            cid,
        });
        reply.1
    }

    /// Fork-join: sends every event at once and waits up to `timeout` for all replies, returned in
    /// request order. On timeout, returns the replies that came back (still in request order) when
    /// `partial` is true, else a 408 fault.
    pub async fn fork_join(
        &self,
        events: Vec<EventEnvelope>,
        timeout: Duration,
        partial: bool,
    ) -> Result<Vec<EventEnvelope>, Fault> {
        let count = events.len();
        let calls = events
            .into_iter()
            .map(|e| self.request(e, timeout))
            .collect::<Vec<_>>();
        let replies = futures::future::join_all(calls).await;
        let complete: Vec<EventEnvelope> =
            replies.into_iter().filter(|r| r.status != 408).collect();
        if complete.len() == count || partial {
            Ok(complete)
        } else {
            Err(Fault::new(
                408,
                format!(
                    "Timeout for {} ms: {} of {count} replies",
                    timeout.as_millis(),
                    complete.len()
                ),
            ))
        }
    }

    /// Fails every request waiting for a reply (e.g. the connector lost its broker).
    pub fn fail_pending(&self, status: u16, message: &str) {
        let waiting: Vec<_> = lock(&self.inner.inbox).drain().collect();
        for (_, tx) in waiting {
            let _ = tx.send(EventEnvelope::error(status, message));
        }
    }

    /// Measures a round trip through the connector to this instance's own inbox.
    pub async fn loopback(&self, timeout: Duration) -> Result<Duration, Fault> {
        if self.connector().is_none() {
            return Err(Fault::new(503, "no cloud connector"));
        }
        let key = crate::envelope::new_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.inbox).insert(key.clone(), tx);
        let event = EventEnvelope {
            to: Some(inbox_address(&key, self.origin())),
            ..EventEnvelope::default()
        };
        let started = Instant::now();
        let sent = self.transmit(self.origin(), event).await;
        let outcome = match sent {
            Err(fault) => Err(fault),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) if !reply.is_error() => Ok(started.elapsed()),
                Ok(Ok(reply)) => Err(Fault::new(
                    reply.status,
                    reply.error_message().unwrap_or_default(),
                )),
                Ok(Err(_)) => Err(Fault::new(500, "loopback abandoned")),
                Err(_) => Err(Fault::new(408, "loopback timed out")),
            },
        };
        lock(&self.inner.inbox).remove(&key);
        outcome
    }

    /// Handles bytes from the broker: reassembles segments, decodes, routes. Malformed input is
    /// dropped with a log line and counted.
    pub async fn receive(&self, bytes: &[u8]) {
        let event = match EventEnvelope::from_bytes(bytes) {
            Ok(e) => e,
            Err(error) => return self.malformed(&error),
        };
        let event = if Reassembler::is_segment(&event) {
            let done = lock(&self.inner.reassembly).add(event, Instant::now());
            match done {
                Ok(None) => return,
                Ok(Some(whole)) => match EventEnvelope::from_bytes(&whole) {
                    Ok(e) if !Reassembler::is_segment(&e) => e,
                    Ok(_) => return self.malformed(&"nested segment"),
                    Err(error) => return self.malformed(&error),
                },
                Err(error) => return self.malformed(&error),
            }
        } else {
            event
        };
        let reply_to = event.reply_to.clone();
        let (cid, trace_id) = (event.cid.clone(), event.trace_id.clone());
        if let Err(fault) = self.route_event(event, true).await {
            tracing::debug!(%fault, "event from the broker not delivered");
            if let Some(reply_to) = reply_to {
                let mut reply = fault.into_envelope();
                reply.to = Some(reply_to);
                reply.cid = cid;
                reply.trace_id = trace_id;
                if let Err(fault) = self.route_event(reply, false).await {
                    tracing::debug!(%fault, "error reply not delivered");
                }
            }
        }
    }

    fn malformed(&self, error: &dyn std::fmt::Display) {
        let total = self.inner.stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(%error, total, "malformed message from the broker dropped");
    }

    /// Delivers an event: local function, waiting inbox, or a peer through the connector; returns
    /// the origin it went to. `from_outside` events may not reach private routes.
    async fn route_event(&self, event: EventEnvelope, from_outside: bool) -> Result<String, Fault> {
        let to = event
            .to
            .clone()
            .ok_or_else(|| Fault::new(400, "event has no destination (to)"))?;
        let address = Address::parse(&to)?;
        let mine = address.origin.as_deref().is_none_or(|o| o == self.origin());
        if address.is_inbox() {
            let origin = address.origin.clone().unwrap_or_default();
            if mine {
                let key = address.inbox_key().unwrap_or_default();
                if let Some(tx) = lock(&self.inner.inbox).remove(key) {
                    let _ = tx.send(event);
                }
                return Ok(origin);
            }
            self.transmit(&origin, event).await?;
            return Ok(origin);
        }
        if mine {
            if let Some(route) = self.local_route(&address.route) {
                if route.visibility == Visibility::Private && from_outside {
                    return Err(Fault::new(
                        403,
                        format!("route {} is private", address.route),
                    ));
                }
                self.run_local(&address.route, route, event);
                return Ok(self.origin().to_owned());
            }
            if address.origin.is_some() {
                return Err(Fault::new(
                    404,
                    format!("route {} not found", address.route),
                ));
            }
        }
        let peer = match &address.origin {
            Some(origin) if !mine => lock(&self.inner.table)
                .peer(origin)
                .map(|p| p.origin.clone())
                .ok_or_else(|| {
                    Fault::new(404, format!("route {to} not found: unknown instance"))
                })?,
            _ => lock(&self.inner.table)
                .pick(&address.route)
                .map(|p| p.origin)
                .ok_or_else(|| Fault::new(404, format!("route {} not found", address.route)))?,
        };
        let mut event = event;
        event.to = Some(format!("{}@{peer}", address.route));
        self.transmit(&peer, event).await?;
        Ok(peer)
    }

    /// Encodes, segments and sends an event to `origin` through the connector.
    async fn transmit(&self, origin: &str, event: EventEnvelope) -> Result<(), Fault> {
        let connector = self
            .connector()
            .ok_or_else(|| Fault::new(503, "no cloud connector to reach other instances"))?;
        let topic = if origin == self.origin() {
            self.topic()
        } else {
            lock(&self.inner.table)
                .peer(origin)
                .map(|p| p.topic.clone())
        };
        for part in segment::split(event.to_bytes(), connector.max_payload()) {
            connector
                .send(origin, topic.as_deref(), part)
                .await
                .map_err(|e| Fault::new(503, format!("cannot reach instance {origin}: {e}")))?;
        }
        self.inner.stats.transmitted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn run_local(&self, name: &str, route: LocalRoute, event: EventEnvelope) {
        let platform = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let Ok(_permit) = route.permits.clone().acquire_owned().await else {
                return;
            };
            platform
                .inner
                .stats
                .delivered
                .fetch_add(1, Ordering::Relaxed);
            let reply_to = event.reply_to.clone();
            let cid = event.cid.clone();
            let trace_id = event.trace_id.clone();
            let trace_path = event.trace_path.clone();
            let id = event.id.clone();
            let sender = reply_to
                .as_deref()
                .and_then(|r| Address::parse(r).ok())
                .and_then(|a| a.origin);
            let started = Instant::now();
            let outcome = tokio::spawn((route.handler)(event)).await;
            let elapsed = started.elapsed();
            let exec_time = elapsed.as_secs_f32() * 1000.0;
            let mut reply = match outcome {
                Ok(Ok(mut reply)) => {
                    reply.id = crate::envelope::new_id();
                    reply
                }
                Ok(Err(fault)) => fault.into_envelope(),
                Err(error) => {
                    tracing::warn!(route = %name, %error, "function failed");
                    Fault::new(500, format!("route {name} failed: {error}")).into_envelope()
                }
            };
            platform.observe(|| Record {
                kind: Kind::Handled,
                route: name.clone(),
                origin_app: platform.app_of(sender.as_deref()),
                origin: sender,
                status: reply.status,
                duration: elapsed,
                id,
                trace_id: trace_id.clone(),
                cid: cid.clone(),
            });
            let Some(reply_to) = reply_to else {
                if reply.is_error() {
                    tracing::debug!(route = %name, status = reply.status, "event without reply_to failed");
                }
                return;
            };
            reply.to = Some(reply_to);
            reply.from = Some(name.clone());
            reply.cid = cid;
            reply.trace_id = trace_id;
            reply.trace_path = trace_path;
            reply.exec_time = Some(exec_time);
            if let Err(fault) = platform.route_event(reply, false).await {
                tracing::debug!(route = %name, %fault, "reply not delivered");
            }
        });
    }
}

#[cfg(test)]
#[path = "platform_tests.rs"]
mod tests;
