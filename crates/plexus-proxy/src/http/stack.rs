//! The HTTP data path, assembled. Read this first.
//!
//! [`Outbound::new`] builds the per-request path of one upstream listener, top-down, from named
//! tower layers; [`Inbound::new`] builds the path of the sidecar's public listener. Every layer
//! is a `Service<Request<Body>>` answering `Result<Response<Body>, HttpError>`; the edge
//! (`server.rs`) turns an [`HttpError`] into the response the client gets.
//!
//! Per-request decisions travel in the request's extensions: the route layer looks the request
//! up in the upstream's current policy and programs the layers below it (each reads its own
//! extension type and passes a request without one through); the split layer names the target;
//! the timeout layer sets the deadline the endpoint attempt is held to; the retry layer says
//! which endpoints earlier attempts went to. The endpoint answers which endpoint it used.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{Request, Response};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceBuilder};

use super::balance::BalanceLayer;
use super::bulkhead::{BulkheadLayer, ConnectionBudget};
use super::edge::EdgeLayer;
use super::endpoint::{Connect, Endpoint, Pool, TcpTls};
use super::fault::FaultLayer;
use super::headers::HeadersLayer;
use super::inbound::{AppClient, AuthorizeLayer};
use super::metrics::Label;
use super::mirror::MirrorLayer;
use super::normalize::NormalizeLayer;
use super::rate_limit::RateLimitLayer;
use super::retry::RetryLayer;
use super::rewrite::RewriteLayer;
use super::route::{Policy, RouteLayer};
use super::split::SplitLayer;
use super::targets::{Remote, Targets};
use super::timeout::TimeoutLayer;
use super::upgrade::{InboundTunnelLayer, TunnelLayer};
use super::{Body, HttpError, HttpMetrics};
use crate::discovery::{ChainWatch, EndpointSet, Protocol};

/// What every service of the stack answers.
pub(crate) type Answer = Result<Response<Body>, HttpError>;

/// A boxed, sendable future.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The future of every service of the stack.
pub(crate) type AnswerFuture = BoxFuture<'static, Answer>;

/// A service of the HTTP stack: every layer is one, and wraps one.
pub(crate) trait HttpService:
    Service<Request<Body>, Response = Response<Body>, Error = HttpError, Future = AnswerFuture>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> HttpService for T where
    T: Service<Request<Body>, Response = Response<Body>, Error = HttpError, Future = AnswerFuture>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A whole stack, shared. A call clones the concrete layers (reference counts only) and calls
/// them: no allocation beyond the layers' own futures, where tower's `BoxCloneSyncService`
/// boxed a clone of the stack and boxed its (already boxed) future again, per request.
#[derive(Clone)]
pub(crate) struct BoxStack(Arc<dyn Fn(Request<Body>) -> AnswerFuture + Send + Sync>);

impl BoxStack {
    /// `service` behind one shared handle.
    pub(crate) fn new<S: HttpService>(service: S) -> Self {
        Self(Arc::new(move |request| {
            let mut service = service.clone();
            // The stack's layers are always ready (each decides per request, in `call`); were
            // one not, the call waits for it as tower's `Oneshot` would.
            let mut ready = Context::from_waker(Waker::noop());
            match service.poll_ready(&mut ready) {
                Poll::Ready(Ok(())) => service.call(request),
                Poll::Ready(Err(error)) => fail(error),
                Poll::Pending => Box::pin(async move {
                    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                    service.call(request).await
                }),
            }
        }))
    }

    /// One request through the stack.
    pub(crate) fn call(&self, request: Request<Body>) -> AnswerFuture {
        (self.0)(request)
    }
}

impl Service<Request<Body>> for BoxStack {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> AnswerFuture {
        BoxStack::call(self, request)
    }
}

/// An answer that is already known: `error`.
pub(crate) fn fail(error: HttpError) -> AnswerFuture {
    Box::pin(std::future::ready(Err(error)))
}

/// Calls the ready `inner` from an owned future (tower's usual swap: the clone left behind is
/// the one polled ready next).
pub(crate) fn take<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// What an [`Outbound`] is built from.
pub(crate) struct OutboundParts {
    /// The upstream service.
    pub destination: String,
    /// Its endpoints (the sidecars in front of its healthy instances).
    pub endpoints: watch::Receiver<Arc<EndpointSet>>,
    /// mTLS with ALPN `plexus-h2` to the destination (unit tests use plain h2c: `None`).
    pub tls: Option<crate::tls::Outbound>,
    /// Metrics.
    pub metrics: HttpMetrics,
    /// Longest wait for an endpoint to accept a connection (and for a service's first
    /// endpoints).
    pub connect_timeout: Duration,
    /// Pooled connections, tunnels, mirror copies and timers are spawned here.
    pub tasks: TaskTracker,
    /// Cuts pooled connections and tunnels when the drain grace period is over.
    pub kill: CancellationToken,
    /// The upstream's compiled discovery chain.
    pub chain: ChainWatch,
    /// How to reach the other services the chain names.
    pub remote: Remote,
    /// Stops the endpoint watches of those services (the listener's token).
    pub stop: CancellationToken,
    /// Opens connections to endpoints (`None`: TCP, then the target service's mTLS client;
    /// unit tests pass in-memory pipes).
    pub connect: Option<Arc<dyn Connect>>,
}

/// One outbound HTTP upstream: its request path and the state it shares across connections.
pub(crate) struct Outbound {
    destination: Arc<str>,
    pub(super) stack: BoxStack,
    pub(super) metrics: HttpMetrics,
    /// The `upstream` and default `route` metric labels.
    pub(super) labels: (Label, Label),
    targets: Arc<Targets>,
    /// The policy in force (read by the unit tests).
    #[cfg(test)]
    policy: Arc<ArcSwapOption<Policy>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("http::Outbound")
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// The request path of one upstream listener, and the task following its chain.
    pub(crate) fn new(parts: OutboundParts) -> Self {
        let destination: Arc<str> = Arc::from(parts.destination.as_str());
        let targets = Arc::new(Targets::new(
            &parts.destination,
            parts.endpoints,
            parts.tls,
            parts.remote,
            parts.metrics.clone(),
            parts.tasks.clone(),
            parts.stop,
        ));
        let connections = Arc::new(ConnectionBudget::default());
        let policy: Arc<ArcSwapOption<Policy>> = Arc::new(ArcSwapOption::empty());
        parts.tasks.spawn(super::route::follow_chain(
            parts.chain,
            Arc::clone(&policy),
            Arc::clone(&targets),
            Arc::clone(&connections),
            Arc::clone(&destination),
        ));
        let connect = parts.connect.unwrap_or_else(|| {
            Arc::new(TcpTls {
                connect_timeout: parts.connect_timeout,
            })
        });
        let pool = Arc::new(Pool::new(
            Arc::clone(&targets),
            connect,
            connections,
            parts.metrics.clone(),
            Arc::clone(&destination),
            parts.tasks.clone(),
            parts.kill.clone(),
        ));
        let observe = super::metrics::Observe::new(parts.metrics.clone(), &destination);

        // Concrete: a target's candidates in the load balancer's order, then one attempt over
        // a pooled HTTP/2 connection to the first endpoint that takes it.
        let concrete = ServiceBuilder::new()
            .layer(BalanceLayer::new(
                Arc::clone(&targets),
                parts.connect_timeout,
            ))
            .service(Endpoint::new(pool));

        // Logical: what the upstream's discovery chain says about each request.
        let stack = ServiceBuilder::new()
            // Ambiguous requests refused (400); client-set identity headers removed.
            .layer(EdgeLayer)
            // WebSocket / CONNECT: straight to an endpoint, bypassing the route policy.
            .layer(TunnelLayer::new(
                concrete.clone(),
                Arc::clone(&destination),
                parts.tasks.clone(),
                parts.kill.clone(),
            ))
            // HTTP/2 form: hop-by-hop headers off, traceparent, absolute URI.
            .layer(NormalizeLayer::new(&destination))
            // First matching route of the current policy; programs the layers below.
            .layer(RouteLayer::new(Arc::clone(&policy)))
            // Local token buckets (429).
            .layer(RateLimitLayer)
            // MaxConcurrentRequests / MaxPendingRequests (503).
            .layer(BulkheadLayer::new(observe.clone()))
            // Delay and abort.
            .layer(FaultLayer::new(observe.clone()))
            // PrefixRewrite.
            .layer(RewriteLayer)
            // A copy to the mirror service, in the background.
            .layer(MirrorLayer::new(
                concrete.clone(),
                observe.clone(),
                parts.tasks.clone(),
            ))
            // Weighted pick of the target (and the request's hash key).
            .layer(SplitLayer)
            // The split's and the route's RequestHeaders / ResponseHeaders.
            .layer(HeadersLayer)
            // RequestTimeout (504) around everything below; IdleTimeout before the headers.
            .layer(TimeoutLayer)
            // NumRetries / RetryOn within the route's budget, with backoff.
            .layer(RetryLayer::new(observe))
            .service(concrete);
        Self {
            labels: super::server::labels(&destination),
            destination,
            stack: BoxStack::new(stack),
            metrics: parts.metrics,
            targets,
            #[cfg(test)]
            policy,
        }
    }

    /// The whole request path, to be called from another stack (an ingress listener's).
    pub(crate) fn stack(&self) -> BoxStack {
        self.stack.clone()
    }

    /// The endpoints ejected by outlier detection now (admin `/config`).
    pub(crate) fn ejected(&self) -> watch::Receiver<Vec<SocketAddr>> {
        self.targets.ejected()
    }

    /// Whether a policy from the chain is in force.
    #[cfg(test)]
    pub(crate) fn has_policy(&self) -> bool {
        self.policy.load().is_some()
    }
}

/// An ingress gateway's HTTP listener: requests from clients outside the mesh, routed by host
/// (`host.rs`) into the outbound stack of the service the host names.
pub(crate) struct Ingress {
    pub(super) stack: BoxStack,
    pub(super) metrics: HttpMetrics,
    /// The `upstream` (the listener, `ingress:<port>`) and default `route` metric labels.
    pub(super) labels: (Label, Label),
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("http::Ingress")
            .field("listener", &self.labels.0)
            .finish_non_exhaustive()
    }
}

impl Ingress {
    /// The request path of one ingress listener named `name`: the edge checks, then the host
    /// router (whose routes end in each service's own outbound stack).
    pub(crate) fn new(name: &str, router: super::host::HostRouter, metrics: HttpMetrics) -> Self {
        let stack = ServiceBuilder::new()
            // Ambiguous requests refused (400); client-set identity headers removed.
            .layer(EdgeLayer)
            // By host to a service's outbound stack (404 for an unknown host).
            .service(router);
        Self {
            stack: BoxStack::new(stack),
            metrics,
            labels: super::server::labels(name),
        }
    }
}

/// The sidecar's public listener's HTTP side: requests from peer sidecars to the local app.
pub(crate) struct Inbound {
    pub(super) stack: BoxStack,
    pub(super) metrics: HttpMetrics,
    /// The `upstream` (`local_app`) and `route` metric labels.
    pub(super) labels: (Label, Label),
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("http::Inbound").finish_non_exhaustive()
    }
}

impl Inbound {
    /// Requests to the app at `app` in `protocol` (`tcp` is treated as `http`: a peer sending
    /// HTTP to a service declared `tcp` reaches it as HTTP/1.1). With `chain` (the registration
    /// names no protocol) the local service's chain decides instead, request by request.
    pub(crate) fn new(
        app: watch::Receiver<SocketAddr>,
        protocol: Protocol,
        chain: Option<ChainWatch>,
        metrics: HttpMetrics,
        connect_timeout: Duration,
        tasks: TaskTracker,
        kill: CancellationToken,
    ) -> Self {
        let stack = ServiceBuilder::new()
            // The same strict checks for a peer's requests (400); identity headers removed.
            .layer(EdgeLayer)
            // Intentions, per request: pooled connections outlive intention changes (403).
            .layer(AuthorizeLayer)
            // WebSocket / CONNECT from a peer: replayed to the app on a connection of its own.
            .layer(InboundTunnelLayer::new(
                app.clone(),
                connect_timeout,
                tasks,
                kill,
            ))
            // The local app, over a pool in its protocol.
            .service(AppClient::new(app, protocol, chain, connect_timeout));
        Self {
            stack: BoxStack::new(stack),
            metrics,
            labels: super::server::labels(crate::metrics::LOCAL_APP),
        }
    }
}
