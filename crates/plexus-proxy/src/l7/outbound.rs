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
use plexus_api::config_entry::chain::{ChainTarget, DiscoveryChain, RetryPolicy, filter_matches};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::metrics::Finished;
use super::policy::{Policy, View, lock};
use super::{Body, HttpMetrics, LocalError};
use crate::balance::RoundRobin;
use crate::discovery::EndpointSet;
use crate::endpoint;
use crate::error::Report;
use crate::metrics::Direction;
use crate::resilience::fault;
use crate::resilience::retry::{self, Outcome, RetryBudget};
use crate::route;
use crate::tls;

/// The route label when the upstream has no chain (yet).
const DEFAULT_ROUTE: &str = "default";
/// Largest request body buffered so that it can be retried.
pub const MAX_RETRY_BODY: usize = 1024 * 1024;

type Slot = Arc<tokio::sync::Mutex<Option<SendRequest<Body>>>>;

/// One outbound HTTP listener's shared state: endpoints, balancer, connection pool.
pub(crate) struct Outbound {
    destination: String,
    endpoints: watch::Receiver<Arc<EndpointSet>>,
    picker: RoundRobin,
    tls: Option<tls::Outbound>,
    metrics: HttpMetrics,
    connect_timeout: Duration,
    tasks: TaskTracker,
    kill: CancellationToken,
    /// One HTTP/2 connection per endpoint; the slot's lock is held while opening it, so
    /// concurrent first requests share one connection.
    pool: Mutex<HashMap<SocketAddr, Slot>>,
    /// The policy of the latest chain (none until the control plane answered).
    policy: Arc<ArcSwapOption<Policy>>,
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
}

impl Outbound {
    /// A listener's state with an empty pool.
    pub(crate) fn new(parts: OutboundParts) -> Self {
        let policy = Arc::new(ArcSwapOption::empty());
        parts.tasks.spawn(follow_chain(
            parts.chain,
            Arc::clone(&policy),
            parts.destination.clone(),
        ));
        Self {
            policy,
            destination: parts.destination,
            endpoints: parts.endpoints,
            picker: RoundRobin::default(),
            tls: parts.tls,
            metrics: parts.metrics,
            connect_timeout: parts.connect_timeout,
            tasks: parts.tasks,
            kill: parts.kill,
            pool: Mutex::new(HashMap::new()),
        }
    }

    /// Serves one connection from the app until it ends; when `stop` fires, in-flight requests
    /// finish and the connection is closed (HTTP/1: after the current response; HTTP/2: GOAWAY).
    pub(crate) async fn serve(self: Arc<Self>, stream: TcpStream, stop: CancellationToken) {
        let service = service_fn(move |request| {
            let this = Arc::clone(&self);
            async move { Ok::<_, Infallible>(this.handle(request).await) }
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

    async fn handle(&self, mut request: Request<Incoming>) -> Response<Body> {
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
        let (route, outcome) = self.apply(request, policy.as_deref()).await;
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

    /// Route match → rate limit (429) → concurrency limit (503) → fault injection → the
    /// route's timeout (504) around retries with budget and backoff. Returns the route name.
    async fn apply(
        &self,
        request: Request<Body>,
        policy: Option<&Policy>,
    ) -> (String, Result<Response<Body>, LocalError>) {
        if let Some(tunnel) = super::upgrade::Tunnel::of(&request) {
            let sender = self.sender(None).await;
            let (destination, tasks) = (&self.destination, &self.tasks);
            let outcome = super::upgrade::outbound(request, tunnel, destination, sender, tasks);
            return (DEFAULT_ROUTE.to_owned(), outcome.await);
        }
        let request = match self.prepare(request) {
            Ok(request) => request,
            Err(error) => return (DEFAULT_ROUTE.to_owned(), Err(error)),
        };
        let Some(policy) = policy else {
            return (DEFAULT_ROUTE.to_owned(), self.send(request, None).await);
        };
        let Some((index, route)) = policy.routes.find(&View(&request)) else {
            return (DEFAULT_ROUTE.to_owned(), self.send(request, None).await);
        };
        let name = route.name.clone();
        if !policy.admit() {
            return (name, Err(LocalError::RateLimited));
        }
        let Some(_permit) = policy.concurrency.try_acquire() else {
            return (name, Err(LocalError::ConcurrencyLimit));
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
        // Split: a weighted pick among the route's targets (subsets of this upstream).
        let target = route::pick_split(&route.splits, rand::random::<f64>())
            .and_then(|split| policy.chain.targets.get(&split.target));
        if let Some(target) = target
            && target.service != self.destination
        {
            // Routing to another service needs that service's endpoints; not done yet.
            warn!(upstream = %self.destination, target = %target.service, "route to another service is not supported; using this upstream's endpoints");
        }
        let target = target.filter(|target| target.service == self.destination);
        let budget = &policy.budgets[index];
        let work = self.with_retries(request, target, &route.retry, budget);
        let outcome = match route.request_timeout {
            Some(timeout) => tokio::time::timeout(timeout.0, work)
                .await
                .unwrap_or(Err(LocalError::Timeout)),
            None => work.await,
        };
        (name, outcome)
    }

    /// Sends `request`, and again on a retriable outcome while attempts and budget allow
    /// (the body is buffered, up to [`MAX_RETRY_BODY`], only when the route retries).
    async fn with_retries(
        &self,
        request: Request<Body>,
        target: Option<&ChainTarget>,
        retry: &RetryPolicy,
        budget: &std::sync::Mutex<RetryBudget>,
    ) -> Result<Response<Body>, LocalError> {
        if retry.num_retries == 0 {
            return self.send(request, target).await;
        }
        let (parts, body) = request.into_parts();
        let body = Limited::new(body, MAX_RETRY_BODY)
            .collect()
            .await
            .map_err(|_| LocalError::BadRequest)?
            .to_bytes();
        let _live = BudgetRequest::start(budget);
        let mut retrying: Option<BudgetRetry<'_>> = None;
        let mut attempt = 0;
        loop {
            let result = self.send(rebuild(&parts, body.clone()), target).await;
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

    /// One attempt: a pooled connection to the next endpoint, the request, the response.
    async fn send(
        &self,
        request: Request<Body>,
        target: Option<&ChainTarget>,
    ) -> Result<Response<Body>, LocalError> {
        let mut sender = self.sender(target).await?;
        let response = sender.send_request(request).await.map_err(|error| {
            debug!(%error, upstream = %self.destination, "upstream request failed");
            LocalError::UpstreamReset
        })?;
        let (mut parts, body) = response.into_parts();
        super::strip_hop_by_hop(&mut parts.headers);
        parts.version = Version::HTTP_11;
        Ok(Response::from_parts(parts, body.boxed()))
    }

    /// A ready HTTP/2 connection to the next endpoint in turn (opened if needed; endpoints that
    /// refuse are skipped).
    async fn sender(&self, target: Option<&ChainTarget>) -> Result<SendRequest<Body>, LocalError> {
        let mut endpoints = self.endpoints.clone();
        // Right after start-up the control plane's first answer may still be on its way.
        let _ = tokio::time::timeout(
            self.connect_timeout,
            endpoints.wait_for(|set| set.is_resolved()),
        )
        .await;
        let set = Arc::clone(&endpoints.borrow());
        // A subset target keeps the endpoints its filter matches (tags and meta).
        let candidates: Vec<SocketAddr> = match target {
            Some(target) if !target.filter.is_empty() => set
                .addrs
                .iter()
                .filter(|addr| {
                    set.labels.get(addr).is_some_and(|labels| {
                        filter_matches(&target.filter, &labels.tags, &labels.meta)
                    })
                })
                .copied()
                .collect(),
            _ => set.addrs.clone(),
        };
        if candidates.is_empty() {
            return Err(LocalError::NoHealthyEndpoints);
        }
        for addr in self.picker.order(&candidates) {
            let slot = self.slot(*addr);
            let mut pooled = slot.lock().await;
            if let Some(sender) = pooled.as_ref().filter(|sender| !sender.is_closed()) {
                return Ok(sender.clone());
            }
            *pooled = None;
            match self.open(*addr).await {
                Ok(sender) => {
                    *pooled = Some(sender.clone());
                    return Ok(sender);
                }
                Err(error) => {
                    warn!(error = %error, endpoint = %addr, upstream = %self.destination, "cannot open an HTTP/2 connection; trying the next endpoint");
                }
            }
        }
        Err(LocalError::UpstreamConnectFailure)
    }

    fn slot(&self, addr: SocketAddr) -> Slot {
        let mut pool = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Endpoints that left the set are dropped from the pool (their connections close
        // once their last request ends).
        let live = self.endpoints.borrow();
        pool.retain(|addr, _| live.addrs.contains(addr));
        Arc::clone(pool.entry(addr).or_default())
    }

    async fn open(&self, addr: SocketAddr) -> Result<SendRequest<Body>, String> {
        let stream = endpoint::dial(addr, self.connect_timeout)
            .await
            .map_err(|error| Report(&error).to_string())?;
        let sender = match &self.tls {
            Some(tls) => {
                let stream = tls
                    .connect(stream, addr)
                    .await
                    .map_err(|error| format!("TLS: {error}"))?;
                self.handshake(stream).await
            }
            None => self.handshake(stream).await,
        }
        .map_err(|error| format!("HTTP/2 handshake: {error}"))?;
        self.metrics
            .connection_opened(Direction::Outbound, &self.destination);
        debug!(endpoint = %addr, upstream = %self.destination, "opened a pooled HTTP/2 connection");
        Ok(sender)
    }

    async fn handshake<I>(&self, io: I) -> Result<SendRequest<Body>, hyper::Error>
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

/// Rebuilds the policy whenever the chain changes, until the chain's watch ends.
async fn follow_chain(
    mut chain: watch::Receiver<Option<Arc<Indexed<DiscoveryChain>>>>,
    policy: Arc<ArcSwapOption<Policy>>,
    destination: String,
) {
    loop {
        let current = chain.borrow_and_update().clone();
        if let Some(current) = current {
            match Policy::new(Arc::new(current.value.clone())) {
                Ok(built) => {
                    info!(upstream = %destination, revision = current.index, routes = built.chain.routes.len(), "policy applied");
                    policy.store(Some(Arc::new(built)));
                }
                Err(error) => {
                    warn!(%error, upstream = %destination, "cannot compile the chain's routes; keeping the previous policy");
                }
            }
        }
        if chain.changed().await.is_err() {
            return;
        }
    }
}

/// A copy of a buffered request for one more attempt.
fn rebuild(parts: &http::request::Parts, body: Bytes) -> Request<Body> {
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
        lock(budget).try_start_retry().then_some(Self(budget))
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
