//! Outbound HTTP: the app's connections (HTTP/1.1 keep-alive or h2c) are served by hyper; each
//! request is balanced over the upstream's endpoints and sent over one pooled HTTP/2 connection
//! per endpoint, inside mTLS (ALPN `plexus-h2`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use plexus_api::Indexed;
use plexus_api::config_entry::chain::{ChainTarget, DiscoveryChain, RetryPolicy};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::balancer::{HashInput, request_hash};
use super::bulkhead::{ConnectionBudget, ConnectionPermit, Limit};
use super::metrics::Finished;
use super::mirror::{self, Tee};
use super::policy::{Policy, View};
use super::targets::{Attempt, Remote, Selection, Service, Targets, Tried, untried_first};
use super::{Body, HttpMetrics, LocalError};
use crate::discovery::EndpointSet;
use crate::endpoint;
use crate::metrics::Direction;
use crate::resilience::fault;
use crate::resilience::retry::{self, Outcome, RetryBudget};
use crate::route;
use crate::tls;
use plexus_runtime::ErrorChain;
use plexus_runtime::lock::lock;

/// The route label when the upstream has no chain (yet).
const DEFAULT_ROUTE: &str = "default";
/// Largest request body buffered so that it can be retried.
pub const MAX_RETRY_BODY: usize = 1024 * 1024;

type Slot = Arc<tokio::sync::Mutex<Option<SendRequest<Body>>>>;

/// One outbound HTTP listener's shared state: endpoints, balancer, connection pool.
pub(crate) struct Outbound {
    destination: String,
    /// Every service the chain may send to: endpoints, mTLS, outlier and balancer state.
    targets: Arc<Targets>,
    metrics: HttpMetrics,
    connect_timeout: Duration,
    tasks: TaskTracker,
    kill: CancellationToken,
    /// One HTTP/2 connection per endpoint; the slot's lock is held while opening it, so
    /// concurrent first requests share one connection.
    pool: Mutex<HashMap<SocketAddr, Slot>>,
    /// The policy of the latest chain (none until the control plane answered).
    policy: Arc<ArcSwapOption<Policy>>,
    /// Mirror copies in flight (bounded: see [`mirror::MAX_IN_FLIGHT`]).
    mirrors: Arc<tokio::sync::Semaphore>,
    /// Pooled connections open, against the policy's `MaxConnections`.
    connections: Arc<ConnectionBudget>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("http::Outbound")
            .field("destination", &self.destination)
            .finish()
    }
}

/// What an [`Outbound`] is built from.
pub(crate) struct OutboundParts {
    /// The upstream service.
    pub destination: String,
    /// Its endpoints (the sidecars in front of its healthy instances).
    pub endpoints: watch::Receiver<Arc<EndpointSet>>,
    /// mTLS with ALPN `plexus-h2` (unit tests use plain h2c: `None`).
    pub tls: Option<tls::Outbound>,
    /// Metrics.
    pub metrics: HttpMetrics,
    /// Longest wait for an endpoint to accept a connection.
    pub connect_timeout: Duration,
    /// Pooled connections' tasks.
    pub tasks: TaskTracker,
    /// Cuts pooled connections when the drain grace period is over.
    pub kill: CancellationToken,
    /// The upstream's compiled discovery chain (`None`: none yet; requests go straight to the
    /// endpoints).
    pub chain: watch::Receiver<Option<Arc<Indexed<DiscoveryChain>>>>,
    /// How to reach the other services the chain names.
    pub remote: Remote,
    /// Stops the endpoint watches of those services (the listener's token).
    pub stop: CancellationToken,
}

impl Outbound {
    /// A listener's state with an empty pool.
    pub(crate) fn new(parts: OutboundParts) -> Self {
        let policy = Arc::new(ArcSwapOption::empty());
        let targets = Arc::new(Targets::new(
            &parts.destination,
            parts.endpoints,
            parts.tls,
            parts.remote,
            parts.metrics.clone(),
            parts.tasks.clone(),
            parts.stop,
        ));
        parts.tasks.spawn(follow_chain(
            parts.chain,
            Arc::clone(&policy),
            Arc::clone(&targets),
            parts.destination.clone(),
        ));
        Self {
            policy,
            destination: parts.destination,
            targets,
            metrics: parts.metrics,
            connect_timeout: parts.connect_timeout,
            tasks: parts.tasks,
            kill: parts.kill,
            pool: Mutex::new(HashMap::new()),
            mirrors: Arc::new(tokio::sync::Semaphore::new(mirror::MAX_IN_FLIGHT)),
            connections: Arc::default(),
        }
    }

    /// Serves one connection from the app until it ends; when `stop` fires, in-flight requests
    /// finish and the connection is closed (HTTP/1: after the current response; HTTP/2: GOAWAY).
    pub(crate) async fn serve(self: Arc<Self>, stream: TcpStream, stop: CancellationToken) {
        let source = stream.peer_addr().ok().map(|addr| addr.ip());
        let service = service_fn(move |request| {
            let this = Arc::clone(&self);
            async move { Ok::<_, Infallible>(super::idle::served(this.handle(request, source).await)) }
        });
        let builder = server_builder();
        // With upgrades: WebSocket and CONNECT tunnels (`l7::upgrade`).
        let stream = super::flood::ControlFrameLimit::new(stream);
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            debug!(error = %error, "downstream HTTP connection ended with an error");
        }
    }

    /// The endpoints ejected by outlier detection now (admin `/config`).
    pub(crate) fn ejected(&self) -> watch::Receiver<Vec<SocketAddr>> {
        self.targets.ejected()
    }

    async fn handle(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        source: Option<std::net::IpAddr>,
    ) -> Response<Body> {
        let started = Instant::now();
        super::trace_hop(request.headers_mut());
        let info = super::RequestInfo::of(&request, None);
        let grpc = super::is_grpc(&request);
        let http1 = request.version() < Version::HTTP_2;
        // A request body hyper cannot decode (e.g. an invalid chunk size) must end in 400 and a
        // closed connection, not in an upstream error: remember that it happened. (A client
        // that goes away mid-body lands here too; it gets the same answer, unread.)
        let malformed = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| {
            let malformed = Arc::clone(&malformed);
            body.map_err(move |error| {
                debug!(%error, "cannot read the request body");
                malformed.store(true, Ordering::SeqCst);
                error
            })
            .boxed()
        });
        let policy = self.policy.load_full();
        let (route, outcome) = self.apply(request, policy.as_deref(), source).await;
        let outcome = if malformed.load(Ordering::SeqCst) {
            Err(LocalError::BadRequest)
        } else {
            outcome
        };
        let response = match outcome {
            Ok(response) => response,
            Err(error) => {
                self.metrics
                    .local(Direction::Outbound, &self.destination, error.reason());
                let mut response = error.response(grpc);
                if error == LocalError::BadRequest && http1 {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                response
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        let finished = Finished::new(Direction::Outbound, &self.destination, route, seconds, info);
        super::record(&self.metrics, response, finished)
    }

    /// Route match → rate limit (429) → bulkhead (503) → fault injection → prefix rewrite →
    /// the route's timeout (504) around retries with budget and backoff. Returns the route name.
    async fn apply(
        self: &Arc<Self>,
        request: Request<Body>,
        policy: Option<&Policy>,
        source: Option<std::net::IpAddr>,
    ) -> (String, Result<Response<Body>, LocalError>) {
        if let Some(tunnel) = super::upgrade::Tunnel::of(&request) {
            // A tunnel goes to the upstream's own endpoints, balanced, without routes.
            let sender = self
                .sender(Selection::default())
                .await
                .map(|(_, _, sender)| sender);
            let (destination, tasks) = (&self.destination, &self.tasks);
            let outcome = super::upgrade::outbound(request, tunnel, destination, sender, tasks);
            return (DEFAULT_ROUTE.to_owned(), outcome.await);
        }
        let request = match self.prepare(request) {
            Ok(request) => request,
            Err(error) => return (DEFAULT_ROUTE.to_owned(), Err(error)),
        };
        let Some(policy) = policy else {
            return (
                DEFAULT_ROUTE.to_owned(),
                self.send(request, Selection::default()).await,
            );
        };
        let Some((index, route)) = policy.routes.find(&View(&request)) else {
            return (
                DEFAULT_ROUTE.to_owned(),
                self.send(request, Selection::default()).await,
            );
        };
        let name = route.name.clone();
        if !policy.admit(request.uri().path()) {
            return (name, Err(LocalError::RateLimited));
        }
        let admitted =
            policy
                .bulkhead
                .admit(route.request_timeout, &self.metrics, &self.destination);
        let _slot = match admitted.await {
            Ok(slot) => slot,
            Err(error) => return (name, Err(error)),
        };
        if let Some(fault) = &policy.fault {
            let headers = request.headers();
            let decision = fault::decide(
                fault,
                |name| headers.get(name).and_then(|value| value.to_str().ok()),
                rand::random::<f64>() * 100.0,
                rand::random::<f64>() * 100.0,
            );
            if let Some(delay) = decision.delay {
                self.metrics.fault(&self.destination, "delay");
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = decision.abort {
                self.metrics.fault(&self.destination, "abort");
                return (name, Err(LocalError::FaultInjected(status)));
            }
        }
        let mut request = request;
        if let Some(uri) = super::rewrite::prefix_rewrite(route, request.uri()) {
            *request.uri_mut() = uri;
        }
        let request = match &policy.chain.policy.mirror {
            None => request,
            Some(policy_mirror) => {
                match mirror::tee(
                    request,
                    policy_mirror.percent,
                    rand::random::<f64>() * 100.0,
                )
                .await
                {
                    Ok(Tee::Skip(request)) => request,
                    Ok(Tee::TooLarge(request)) => {
                        self.metrics.mirrored(&self.destination, "dropped");
                        request
                    }
                    Ok(Tee::Copy(request, copy)) => {
                        self.mirror(*copy, &policy_mirror.service, &policy.chain);
                        request
                    }
                    Err(error) => return (name, Err(error)),
                }
            }
        };
        // Split: a weighted pick among the route's targets (a subset of this or another
        // service); each attempt picks an endpoint of that target, or of its failover targets.
        let target = route::pick_split(&route.splits, rand::random::<f64>())
            .and_then(|split| policy.chain.targets.get(&split.target));
        let attempt = Attempt::default();
        let selection = Selection {
            attempt: Some(&attempt),
            target: target.map(|target| (target, &*policy.chain)),
            hash: target.and_then(|target| {
                request_hash(
                    &target.load_balancer,
                    &HashInput {
                        headers: request.headers(),
                        query: request.uri().query(),
                        source,
                    },
                )
            }),
            tried: None,
        };
        let budget = &policy.budgets[index];
        let work = self.with_retries(request, selection, &route.retry, budget);
        let work = super::idle::headers_within(route.idle_timeout.map(|idle| idle.0), work);
        let outcome = match route.request_timeout {
            Some(timeout) => match tokio::time::timeout(timeout.0, work).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    // The endpoint that did not answer in time: a gateway error (504) to
                    // outlier detection.
                    if let Some((service, addr)) = lock(&attempt).take() {
                        let timeout = Outcome::Response {
                            status: 504,
                            grpc_status: None,
                        };
                        self.targets.record(&service, addr, timeout);
                    }
                    Err(LocalError::Timeout)
                }
            },
            None => work.await,
        };
        (name, outcome)
    }

    /// Sends `copy` to an endpoint of `service` in the background, unless
    /// [`mirror::MAX_IN_FLIGHT`] copies are already in flight; its response is drained and
    /// dropped.
    fn mirror(self: &Arc<Self>, copy: Request<Body>, service: &str, chain: &Arc<DiscoveryChain>) {
        let Ok(permit) = Arc::clone(&self.mirrors).try_acquire_owned() else {
            self.metrics.mirrored(&self.destination, "dropped");
            return;
        };
        self.metrics.mirrored(&self.destination, "sent");
        let (this, chain) = (Arc::clone(self), Arc::clone(chain));
        let target = ChainTarget {
            service: service.to_owned(),
            ..ChainTarget::default()
        };
        self.tasks.spawn(async move {
            let _permit = permit;
            let selection = Selection {
                target: Some((&target, &chain)),
                ..Selection::default()
            };
            let work = async {
                match this.send(copy, selection).await {
                    Ok(response) => {
                        let _ = response.into_body().collect().await;
                    }
                    Err(error) => {
                        debug!(upstream = %this.destination, mirror = %target.service, reason = error.reason(), "mirrored request failed");
                    }
                }
            };
            let _ = tokio::time::timeout(mirror::MIRROR_TIMEOUT, work).await;
        });
    }

    /// Sends `request`, and again on a retriable outcome while attempts and budget allow
    /// (the body is buffered, up to [`MAX_RETRY_BODY`], only when the route retries).
    async fn with_retries(
        &self,
        request: Request<Body>,
        selection: Selection<'_>,
        retry: &RetryPolicy,
        budget: &std::sync::Mutex<RetryBudget>,
    ) -> Result<Response<Body>, LocalError> {
        if retry.num_retries == 0 {
            return self.send(request, selection).await;
        }
        let (parts, body) = request.into_parts();
        let body = Limited::new(body, MAX_RETRY_BODY)
            .collect()
            .await
            .map_err(|_| LocalError::BadRequest)?
            .to_bytes();
        let _live = BudgetRequest::start(budget);
        let tried = Tried::default();
        let selection = Selection {
            tried: Some(&tried),
            ..selection
        };
        let mut retrying: Option<BudgetRetry<'_>> = None;
        let mut attempt = 0;
        loop {
            let result = self.send(rebuild(&parts, body.clone()), selection).await;
            drop(retrying.take());
            let outcome = match &result {
                Ok(response) => Outcome::Response {
                    status: response.status().as_u16(),
                    grpc_status: response
                        .headers()
                        .get("grpc-status")
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.parse().ok()),
                },
                Err(LocalError::UpstreamConnectFailure | LocalError::NoHealthyEndpoints) => {
                    Outcome::ConnectFailure
                }
                Err(LocalError::UpstreamReset) => Outcome::Reset,
                Err(_) => return result,
            };
            if attempt >= retry.num_retries || !retry::should_retry(retry, outcome) {
                return result;
            }
            let Some(started) = BudgetRetry::start(budget) else {
                self.metrics.budget_exhausted(&self.destination);
                return result;
            };
            retrying = Some(started);
            self.metrics.retry(&self.destination);
            let pause = retry::backoff(
                retry.backoff_base.0,
                retry.backoff_max.0,
                attempt,
                rand::random::<f64>(),
            );
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// Makes the app's request fit for HTTP/2 between sidecars: hop-by-hop headers removed,
    /// `traceparent` ensured, the host moved into an absolute URI.
    fn prepare(&self, request: Request<Body>) -> Result<Request<Body>, LocalError> {
        let (mut parts, body) = request.into_parts();
        super::strip_hop_by_hop(&mut parts.headers);
        super::ensure_traceparent(&mut parts.headers);
        // HTTP/2 carries the host in :authority.
        let host = parts
            .uri
            .authority()
            .map(|authority| authority.as_str().to_owned())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned)
            });
        parts.headers.remove(header::HOST);
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
        parts.uri = absolute(host.as_deref(), &self.destination, &path)?;
        parts.version = Version::HTTP_2;
        Ok(Request::from_parts(parts, body))
    }

    /// One attempt: a pooled connection to the balancer's pick, the request, the response
    /// (its outcome fed to outlier detection).
    async fn send(
        &self,
        request: Request<Body>,
        selection: Selection<'_>,
    ) -> Result<Response<Body>, LocalError> {
        let (service, addr, mut sender) = self.sender(selection).await?;
        if let Some(tried) = selection.tried {
            lock(tried).push(addr);
        }
        let in_flight = service.balancer.start(addr);
        if let Some(attempt) = selection.attempt {
            *lock(attempt) = Some((Arc::clone(&service), addr));
        }
        let response = sender.send_request(request).await;
        if let Some(attempt) = selection.attempt {
            lock(attempt).take();
        }
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                debug!(%error, upstream = %self.destination, endpoint = %addr, "upstream request failed");
                self.targets.record(&service, addr, Outcome::Reset);
                return Err(LocalError::UpstreamReset);
            }
        };
        in_flight.responded();
        drop(in_flight);
        self.targets.record(
            &service,
            addr,
            Outcome::Response {
                status: response.status().as_u16(),
                grpc_status: None,
            },
        );
        let (mut parts, body) = response.into_parts();
        super::strip_hop_by_hop(&mut parts.headers);
        parts.version = Version::HTTP_11;
        Ok(Response::from_parts(parts, body.boxed()))
    }

    /// A ready HTTP/2 connection to an endpoint of the selected target (or of its failover
    /// targets), in the balancer's order (opened if needed; endpoints that refuse are skipped
    /// and count as connect failures for outlier detection).
    async fn sender(
        &self,
        selection: Selection<'_>,
    ) -> Result<(Arc<Service>, SocketAddr, SendRequest<Body>), LocalError> {
        let candidates = self
            .targets
            .candidates(selection.target, self.connect_timeout)
            .await
            .ok_or(LocalError::NoHealthyEndpoints)?;
        let service = candidates.service;
        let order =
            service
                .balancer
                .order(&candidates.load_balancer, selection.hash, &candidates.addrs);
        let order = match selection.tried {
            Some(tried) => untried_first(order, &lock(tried)),
            None => order,
        };
        let max_connections = self
            .policy
            .load()
            .as_ref()
            .and_then(|policy| policy.chain.policy.limits.max_connections);
        let mut at_max_connections = false;
        for addr in order {
            let slot = self.slot(addr);
            let mut pooled = slot.lock().await;
            if let Some(sender) = pooled.as_ref().filter(|sender| !sender.is_closed()) {
                return Ok((service, addr, sender.clone()));
            }
            *pooled = None;
            // `MaxConnections` open to other endpoints: use one of theirs instead.
            let Some(permit) = self.connections.try_open(max_connections) else {
                at_max_connections = true;
                continue;
            };
            match self.open(&service, addr, permit).await {
                Ok(sender) => {
                    *pooled = Some(sender.clone());
                    return Ok((service, addr, sender));
                }
                Err(error) => {
                    warn!(error = %error, endpoint = %addr, upstream = %self.destination, service = %service.name, "cannot open an HTTP/2 connection; trying the next endpoint");
                    self.targets.record(&service, addr, Outcome::ConnectFailure);
                }
            }
        }
        if at_max_connections {
            self.metrics
                .bulkhead_rejected(&self.destination, Limit::Connections.label());
            return Err(LocalError::ConcurrencyLimit);
        }
        Err(LocalError::UpstreamConnectFailure)
    }

    fn slot(&self, addr: SocketAddr) -> Slot {
        let mut pool = lock(&self.pool);
        // Endpoints that left every followed set are dropped from the pool (their connections
        // close once their last request ends).
        pool.retain(|addr, _| self.targets.is_live(addr));
        Arc::clone(pool.entry(addr).or_default())
    }

    async fn open(
        &self,
        service: &Service,
        addr: SocketAddr,
        permit: ConnectionPermit,
    ) -> Result<SendRequest<Body>, String> {
        let stream = endpoint::dial(addr, self.connect_timeout)
            .await
            .map_err(|error| ErrorChain(&error).to_string())?;
        let sender = match &service.tls {
            Some(tls) => {
                let stream = tls
                    .connect(stream, addr)
                    .await
                    .map_err(|error| format!("TLS: {error}"))?;
                self.handshake(stream, permit).await
            }
            None => self.handshake(stream, permit).await,
        }
        .map_err(|error| format!("HTTP/2 handshake: {error}"))?;
        self.metrics
            .connection_opened(Direction::Outbound, &self.destination);
        debug!(endpoint = %addr, upstream = %self.destination, "opened a pooled HTTP/2 connection");
        Ok(sender)
    }

    async fn handshake<I>(
        &self,
        io: I,
        permit: ConnectionPermit,
    ) -> Result<SendRequest<Body>, hyper::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(super::KEEP_ALIVE_INTERVAL)
            .max_header_list_size(super::MAX_HEADER_BYTES as u32)
            .handshake(TokioIo::new(io))
            .await?;
        let kill = self.kill.clone();
        self.tasks.spawn(async move {
            // Counted against `MaxConnections` until the connection ends.
            let _permit = permit;
            tokio::select! {
                ended = connection => {
                    if let Err(error) = ended {
                        debug!(%error, "pooled HTTP/2 connection ended with an error");
                    }
                }
                _ = kill.cancelled() => {}
            }
        });
        Ok(sender)
    }
}

/// Rebuilds the policy whenever the chain changes, until the chain's watch ends. A newer index
/// with the same chain keeps the policy in force (and its counters) and is only announced.
async fn follow_chain(
    mut chain: watch::Receiver<Option<Arc<Indexed<DiscoveryChain>>>>,
    policy: Arc<ArcSwapOption<Policy>>,
    targets: Arc<Targets>,
    destination: String,
) {
    loop {
        let current = chain.borrow_and_update().clone();
        if let Some(current) = current {
            let unchanged = policy
                .load()
                .as_deref()
                .is_some_and(|applied| *applied.chain == current.value);
            if unchanged {
                info!(upstream = %destination, revision = current.index, changed = false, "policy applied");
            } else {
                match Policy::new(Arc::new(current.value.clone())) {
                    Ok(built) => {
                        let routes = built.chain.routes.len();
                        targets.sync(&built.chain);
                        // In force before it is announced: "policy applied" means new requests
                        // see it.
                        policy.store(Some(Arc::new(built)));
                        info!(upstream = %destination, revision = current.index, routes, "policy applied");
                    }
                    Err(error) => {
                        warn!(%error, upstream = %destination, "cannot compile the chain's routes; keeping the previous policy");
                    }
                }
            }
        }
        if chain.changed().await.is_err() {
            return;
        }
    }
}

/// A copy of a buffered request for one more attempt.
pub(super) fn rebuild(parts: &http::request::Parts, body: Bytes) -> Request<Body> {
    let mut request = Request::new(super::full(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

/// A request counted as live in the retry budget while it runs.
struct BudgetRequest<'a>(&'a std::sync::Mutex<RetryBudget>);

impl<'a> BudgetRequest<'a> {
    fn start(budget: &'a std::sync::Mutex<RetryBudget>) -> Self {
        lock(budget).request_started();
        Self(budget)
    }
}

impl Drop for BudgetRequest<'_> {
    fn drop(&mut self) {
        lock(self.0).request_finished();
    }
}

/// A retry counted in flight in the retry budget while it runs.
struct BudgetRetry<'a>(&'a std::sync::Mutex<RetryBudget>);

impl<'a> BudgetRetry<'a> {
    fn start(budget: &'a std::sync::Mutex<RetryBudget>) -> Option<Self> {
        // The guard is released before a `Self` exists: dropping one locks the budget again.
        let started = lock(budget).try_start_retry();
        started.then(|| Self(budget))
    }
}

impl Drop for BudgetRetry<'_> {
    fn drop(&mut self) {
        lock(self.0).retry_finished();
    }
}

/// `http://<host><path>`; the destination name stands in for a missing or unusable host.
fn absolute(host: Option<&str>, destination: &str, path: &str) -> Result<Uri, LocalError> {
    let build = |authority: &str| {
        Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
    };
    host.and_then(|host| build(host).ok())
        .map_or_else(|| build(destination), Ok)
        .map_err(|_| LocalError::BadRequest)
}

/// The HTTP/1.1 + h2c server for connections from the app, configured strictly.
pub(crate) fn server_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .half_close(false)
        .max_buf_size(super::MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(super::MAX_CONCURRENT_STREAMS)
        .max_header_list_size(super::MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(super::MAX_PENDING_ACCEPT_RESET_STREAMS)
        .keep_alive_interval(super::KEEP_ALIVE_INTERVAL);
    builder
}
