//! Endpoint: one attempt of a request, over a pooled HTTP/2 connection to the first candidate
//! that takes it, and what the attempt tells outlier detection and the balancer.
//!
//! The pool keeps one HTTP/2 connection per endpoint (inside mTLS, ALPN `plexus-h2`); the slot's
//! lock is held while a connection is opened, so concurrent first requests share it; a closed one
//! is replaced on the next request; endpoints that leave every followed set are dropped from the
//! pool (their connections close once their last request ends). An endpoint that refuses a
//! connection counts as a connect failure for outlier detection and the next candidate is tried;
//! `MaxConnections` open to other endpoints makes the pool use one of theirs instead.
//!
//! Every attempt's outcome is recorded: the response status, a reset, or the route's deadline
//! passing while this endpoint was awaited (a 504: the attempt's future is dropped by the timeout
//! layer after the deadline).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;
use tracing::{debug, warn};

use super::bulkhead::{ConnectionBudget, ConnectionPermit, Limit};
use super::peer::{self, Sender};
use super::retry::Outcome;
use super::stack::{Answer, AnswerFuture, BoxFuture};
use super::targets::{Service as Target, Targets};
use super::timeout::Deadline;
use super::{Body, HttpError, HttpMetrics, Reason};
use crate::metrics::Direction;
use plexus_runtime::ErrorChain;
use plexus_runtime::lock::lock;
use plexus_runtime::shutdown::or_cancelled;

/// A byte stream to an endpoint.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens the byte stream of a new pooled connection.
pub(crate) trait Connect: Send + Sync + 'static {
    /// A stream to `addr`, an endpoint of `service` (whose mTLS client it uses).
    fn connect<'a>(
        &'a self,
        addr: SocketAddr,
        service: &'a Target,
    ) -> BoxFuture<'a, Result<Box<dyn Io>, String>>;
}

/// TCP (bounded by the connect timeout), then the service's mTLS client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpTls {
    /// Longest wait for the endpoint to accept.
    pub connect_timeout: Duration,
}

impl Connect for TcpTls {
    fn connect<'a>(
        &'a self,
        addr: SocketAddr,
        service: &'a Target,
    ) -> BoxFuture<'a, Result<Box<dyn Io>, String>> {
        Box::pin(async move {
            let stream = crate::endpoint::dial(addr, self.connect_timeout)
                .await
                .map_err(|error| ErrorChain(&error).to_string())?;
            match &service.tls {
                Some(tls) => tls
                    .connect(stream, addr)
                    .await
                    .map(|stream| Box::new(stream) as Box<dyn Io>)
                    .map_err(|error| format!("TLS: {error}")),
                None => Ok(Box::new(stream) as Box<dyn Io>),
            }
        })
    }
}

/// The candidate endpoints of one attempt, in order (set by the balance layer).
#[derive(Debug, Clone)]
pub(crate) struct Picked {
    /// The service they belong to.
    pub service: Arc<Target>,
    /// Try the first; move on when a connection cannot be had.
    pub order: Vec<SocketAddr>,
    /// The load balancer counts requests in flight and their latency (`least_request`,
    /// `peak_ewma`).
    pub tracks_load: bool,
    /// Say which endpoint answered ([`Served`]): the retry layer wants to know.
    pub report: bool,
}

/// The endpoint an answer came from (response extension, for the retry layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Served(pub SocketAddr);

type Slot = Arc<tokio::sync::Mutex<Option<Sender>>>;

/// One upstream listener's pooled HTTP/2 connections.
pub(crate) struct Pool {
    targets: Arc<Targets>,
    connect: Arc<dyn Connect>,
    connections: Arc<ConnectionBudget>,
    /// By endpoint, then service: one address (a gateway's) can front several services, each
    /// reached with its own SNI and identity. (Keyed so that a lookup allocates nothing.)
    slots: Mutex<HashMap<SocketAddr, Vec<(String, Slot)>>>,
    metrics: HttpMetrics,
    destination: Arc<str>,
    tasks: TaskTracker,
    kill: CancellationToken,
}

impl Pool {
    /// An empty pool; connections are opened with `connect`, counted in `connections`, and run
    /// in `tasks` until they end or `kill` fires.
    pub(crate) fn new(
        targets: Arc<Targets>,
        connect: Arc<dyn Connect>,
        connections: Arc<ConnectionBudget>,
        metrics: HttpMetrics,
        destination: Arc<str>,
        tasks: TaskTracker,
        kill: CancellationToken,
    ) -> Self {
        Self {
            targets,
            connect,
            connections,
            slots: Mutex::new(HashMap::new()),
            metrics,
            destination,
            tasks,
            kill,
        }
    }

    /// Sends `request` to the first endpoint of `picked` that takes it.
    async fn attempt(
        &self,
        request: Request<Body>,
        picked: Picked,
        deadline: Option<Deadline>,
    ) -> Answer {
        let (addr, sender) = self.sender(&picked.service, &picked.order).await?;
        let mut awaited = Awaited {
            targets: &self.targets,
            service: &picked.service,
            addr,
            deadline,
            answered: false,
        };
        let in_flight = picked
            .tracks_load
            .then(|| picked.service.balancer.start(addr));
        let response = sender.send(request, &self.tasks, &self.kill).await;
        awaited.answered = true;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                debug!(%error, upstream = %self.destination, endpoint = %addr, "upstream request failed");
                // Refused unprocessed: REFUSED_STREAM, or above the last stream of a GOAWAY.
                let refused = error.reason() == Some(h2::Reason::REFUSED_STREAM)
                    || (error.is_go_away() && error.reason() == Some(h2::Reason::NO_ERROR));
                let (outcome, reason) = if refused {
                    (Outcome::RefusedStream, Reason::UpstreamRefusedStream)
                } else {
                    (Outcome::Reset, Reason::UpstreamReset)
                };
                self.targets.record(&picked.service, addr, outcome);
                return Err(HttpError::new(reason).at(addr));
            }
        };
        if let Some(in_flight) = in_flight {
            in_flight.responded();
        }
        self.targets.record(
            &picked.service,
            addr,
            Outcome::Response {
                status: response.status().as_u16(),
                grpc_status: None,
            },
        );
        // No connection-specific header to remove: HTTP/2 does not carry them (h2 refuses a
        // response that has one).
        let (mut parts, body) = response.into_parts();
        parts.version = Version::HTTP_11;
        if picked.report {
            parts.extensions.insert(Served(addr));
        }
        Ok(Response::from_parts(parts, body))
    }

    /// A ready connection to the first endpoint of `order` that has or takes one.
    async fn sender(
        &self,
        service: &Arc<Target>,
        order: &[SocketAddr],
    ) -> Result<(SocketAddr, Sender), HttpError> {
        let mut at_max_connections = false;
        for &addr in order {
            let slot = self.slot(&service.name, addr);
            // Nearly always: an open connection, and nobody opening one.
            if let Ok(pooled) = slot.try_lock()
                && let Some(sender) = pooled.as_ref().filter(|sender| !sender.is_closed())
            {
                return Ok((addr, sender.clone()));
            }
            let mut pooled = slot.lock().await;
            if let Some(sender) = pooled.as_ref().filter(|sender| !sender.is_closed()) {
                return Ok((addr, sender.clone()));
            }
            *pooled = None;
            self.prune();
            // `MaxConnections` open to other endpoints: use one of theirs instead.
            let Some(permit) = self.connections.try_open() else {
                at_max_connections = true;
                continue;
            };
            match self.open(service, addr, permit).await {
                Ok(sender) => {
                    *pooled = Some(sender.clone());
                    return Ok((addr, sender));
                }
                Err(error) => {
                    warn!(error = %error, endpoint = %addr, upstream = %self.destination, service = %service.name, "cannot open an HTTP/2 connection; trying the next endpoint");
                    self.targets.record(service, addr, Outcome::ConnectFailure);
                }
            }
        }
        if at_max_connections {
            self.metrics
                .bulkhead_rejected(&self.destination, Limit::Connections.label());
            return Err(HttpError::new(Reason::ConcurrencyLimit));
        }
        Err(HttpError::new(Reason::UpstreamConnectFailure))
    }

    fn slot(&self, service: &str, addr: SocketAddr) -> Slot {
        let mut slots = lock(&self.slots);
        let services = slots.entry(addr).or_default();
        if let Some((_, slot)) = services.iter().find(|(name, _)| name == service) {
            return Arc::clone(slot);
        }
        let slot = Slot::default();
        services.push((service.to_owned(), Arc::clone(&slot)));
        slot
    }

    /// Drops the slots of endpoints that left every followed set (their connections close once
    /// their last request ends). Done when a connection is opened, not per request.
    fn prune(&self) {
        lock(&self.slots).retain(|addr, _| self.targets.is_live(addr));
    }

    async fn open(
        &self,
        service: &Target,
        addr: SocketAddr,
        permit: ConnectionPermit,
    ) -> Result<Sender, String> {
        let io = self.connect.connect(addr, service).await?;
        let (sender, connection) = peer::handshake(io)
            .await
            .map_err(|error| format!("HTTP/2 handshake: {}", ErrorChain(&error)))?;
        let kill = self.kill.clone();
        self.tasks.spawn(async move {
            // Counted against `MaxConnections` until the connection ends.
            let _permit = permit;
            if let Some(Err(error)) = or_cancelled(connection, &kill).await {
                debug!(%error, "pooled HTTP/2 connection ended with an error");
            }
        });
        self.metrics
            .connection_opened(Direction::Outbound, &self.destination);
        debug!(endpoint = %addr, upstream = %self.destination, "opened a pooled HTTP/2 connection");
        Ok(sender)
    }
}

/// An attempt awaiting its response. Dropped unanswered at or after the route's deadline (the
/// timeout layer gave up on it), it blames the endpoint with a 504 for outlier detection; a
/// request cancelled earlier (the client went away) blames no one.
struct Awaited<'a> {
    targets: &'a Arc<Targets>,
    service: &'a Arc<Target>,
    addr: SocketAddr,
    deadline: Option<Deadline>,
    answered: bool,
}

impl Drop for Awaited<'_> {
    fn drop(&mut self) {
        let Some(Deadline(deadline)) = self.deadline else {
            return;
        };
        if !self.answered && Instant::now() >= deadline {
            let timeout = Outcome::Response {
                status: 504,
                grpc_status: None,
            };
            self.targets.record(self.service, self.addr, timeout);
        }
    }
}

/// The end of the stack: one attempt through the [`Pool`].
#[derive(Clone)]
pub(crate) struct Endpoint {
    pool: Arc<Pool>,
}

impl Endpoint {
    /// Attempts through `pool`.
    pub(crate) fn new(pool: Arc<Pool>) -> Self {
        Self { pool }
    }
}

impl Service<Request<Body>> for Endpoint {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        let picked = request.extensions_mut().remove::<Picked>();
        let deadline = request.extensions().get::<Deadline>().copied();
        let pool = Arc::clone(&self.pool);
        Box::pin(async move {
            let picked = picked.ok_or(HttpError::new(Reason::NoHealthyEndpoints))?;
            pool.attempt(request, picked, deadline).await
        })
    }
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
