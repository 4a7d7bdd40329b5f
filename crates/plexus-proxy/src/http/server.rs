//! The edge of the HTTP stack: serving downstream connections with hyper, and what happens to
//! every request before it enters the stack and after it leaves it.
//!
//! - App connections (outbound listener): HTTP/1.1 keep-alive or h2c, with upgrades (tunnels);
//!   peer connections (inbound listener): HTTP/2 with extended CONNECT. Both behind the
//!   control-frame limit ([`super::flood`]). When `stop` fires, in-flight requests finish and
//!   the connection is closed (HTTP/1: after the current response; HTTP/2: GOAWAY).
//! - Per request: the trace hop, what the access log needs, the stack's answer — an
//!   [`HttpError`] becomes its response here and only here (with `x-plexus-error`, counted by
//!   reason) — and the record in metrics and access log when the response ends.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::debug;

use super::balance::ClientAddr;
use super::inbound::Caller;
use super::metrics::{Finished, Label};
use super::route::RouteLabel;
use super::stack::{Answer, BoxStack, Inbound, Ingress, Outbound};
use super::timeout::served;
use super::{Body, HttpError, HttpMetrics, Reason};
use crate::authorize::Authorizer;
use crate::metrics::Direction;

/// The route label of a request no route took.
pub(crate) const DEFAULT_ROUTE: &str = "default";

impl Outbound {
    /// Serves one connection from the app until it ends; when `stop` fires, in-flight requests
    /// finish and the connection is closed (HTTP/1: after the current response; HTTP/2: GOAWAY).
    pub(crate) async fn serve<I>(
        self: Arc<Self>,
        io: I,
        source: Option<IpAddr>,
        stop: CancellationToken,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        serve_downstream(io, stop, move |request| {
            let this = Arc::clone(&self);
            async move { respond(&this.stack, &this.metrics, &this.labels, request, source).await }
        })
        .await;
    }
}

impl Ingress {
    /// Serves one connection from a client outside the mesh (plain, or TLS already
    /// terminated) as [`Outbound::serve`] serves the app's.
    pub(crate) async fn serve<I>(
        self: Arc<Self>,
        io: I,
        source: Option<IpAddr>,
        stop: CancellationToken,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        serve_downstream(io, stop, move |request| {
            let this = Arc::clone(&self);
            async move { respond(&this.stack, &this.metrics, &this.labels, request, source).await }
        })
        .await;
    }
}

/// Serves one downstream connection (HTTP/1.1 keep-alive or h2c, with upgrades) with
/// `respond`, until it ends or `stop` fires (then in-flight requests finish and the connection
/// closes: HTTP/1 after the current response, HTTP/2 with GOAWAY).
async fn serve_downstream<I, F, Fut>(io: I, stop: CancellationToken, respond: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |request| {
        let respond = respond.clone();
        async move { Ok::<_, Infallible>(served(respond(request).await)) }
    });
    let builder = app_server();
    // With upgrades: WebSocket and CONNECT tunnels (`upgrade.rs`).
    let io = TokioIo::new(super::flood::ControlFrameLimit::new(io));
    let connection = builder.serve_connection_with_upgrades(io, service);
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

/// One downstream request, through `stack`, to the response it gets.
async fn respond(
    stack: &BoxStack,
    metrics: &HttpMetrics,
    labels: &(Label, Label),
    mut request: Request<Incoming>,
    source: Option<IpAddr>,
) -> Response<Body> {
    let started = Instant::now();
    super::trace_hop(request.headers_mut());
    let info = metrics
        .logs_requests()
        .then(|| super::RequestInfo::of(&request, None));
    let grpc = super::is_grpc(&request);
    let http1 = request.version() < Version::HTTP_2;
    // A request body hyper cannot decode (e.g. an invalid chunk size) must end in 400 and a
    // closed connection, not in an upstream error: remember that it happened. (A client
    // that goes away mid-body lands here too; it gets the same answer, unread.)
    let malformed = Arc::new(AtomicBool::new(false));
    let mut request = request.map(|body| {
        let malformed = Arc::clone(&malformed);
        body.map_err(move |error| {
            debug!(%error, "cannot read the request body");
            malformed.store(true, Ordering::SeqCst);
            error
        })
        .boxed()
    });
    request.extensions_mut().insert(ClientAddr(source));
    let answer = call(stack, request).await;
    let route = route_of(&answer, &labels.1);
    let answer = if malformed.load(Ordering::SeqCst) {
        Err(HttpError::new(Reason::BadRequest))
    } else {
        answer
    };
    let response = match answer {
        Ok(response) => response,
        Err(error) => {
            let mut response = local(metrics, &labels.0, &error, Direction::Outbound, grpc);
            if matches!(error.reason(), Reason::BadRequest | Reason::Refused(_)) && http1 {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let upstream = labels.0.clone();
    let finished = Finished::new(Direction::Outbound, upstream, route, seconds, info);
    record(metrics, response, finished)
}

impl Inbound {
    /// Serves a peer's HTTP/2 connection until it ends or `stop` fires (then GOAWAY and let
    /// in-flight requests finish). `caller` is the peer's service (from its certificate) and
    /// the intentions that decide each of its requests (`None`: unit tests of the plain path).
    pub(crate) async fn serve<I>(
        self: Arc<Self>,
        io: I,
        caller: Option<(Authorizer, String)>,
        stop: CancellationToken,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let caller =
            caller.map(|(authorizer, source)| Caller(Arc::new(authorizer.for_source(&source))));
        let service = service_fn(move |request| {
            let this = Arc::clone(&self);
            let caller = caller.clone();
            async move { Ok::<_, Infallible>(this.respond(request, caller).await) }
        });
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(super::MAX_CONCURRENT_STREAMS)
            .max_header_list_size(super::MAX_HEADER_BYTES as u32)
            .max_pending_accept_reset_streams(super::MAX_PENDING_ACCEPT_RESET_STREAMS)
            .keep_alive_interval(super::KEEP_ALIVE_INTERVAL)
            .enable_connect_protocol()
            .serve_connection(
                TokioIo::new(super::flood::ControlFrameLimit::new(io)),
                service,
            );
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            debug!(%error, "inbound HTTP/2 connection ended with an error");
        }
    }

    /// One request from a peer, through the stack, to the response it gets.
    async fn respond(
        &self,
        mut request: Request<Incoming>,
        caller: Option<Caller>,
    ) -> Response<Body> {
        let started = Instant::now();
        super::trace_hop(request.headers_mut());
        let info = self.metrics.logs_requests().then(|| {
            let peer = caller.as_ref().map(|caller| caller.source().to_owned());
            super::RequestInfo::of(&request, peer)
        });
        let grpc = super::is_grpc(&request);
        let mut request = request.map(BodyExt::boxed);
        if let Some(caller) = caller {
            request.extensions_mut().insert(caller);
        }
        let response = match call(&self.stack, request).await {
            Ok(response) => response,
            Err(error) => local(
                &self.metrics,
                &self.labels.0,
                &error,
                Direction::Inbound,
                grpc,
            ),
        };
        let seconds = started.elapsed().as_secs_f64();
        let (upstream, route) = self.labels.clone();
        let finished = Finished::new(Direction::Inbound, upstream, route, seconds, info);
        record(&self.metrics, response, finished)
    }
}

/// One request through a stack.
async fn call(stack: &BoxStack, request: Request<Body>) -> Answer {
    stack.clone().oneshot(request).await
}

/// The route a request took, for the metrics label (`default`: none).
fn route_of(answer: &Answer, default: &Label) -> Label {
    let route = match answer {
        Ok(response) => response
            .extensions()
            .get::<RouteLabel>()
            .map(|l| Label(Arc::clone(&l.0))),
        Err(error) => error.route().map(|route| Label(Arc::clone(route))),
    };
    route.unwrap_or_else(|| default.clone())
}

/// The `upstream` and default `route` labels of one direction's requests, made once.
pub(crate) fn labels(upstream: &str) -> (Label, Label) {
    (Label::from(upstream), Label::from(DEFAULT_ROUTE))
}

/// The response to a request the sidecar answers itself (counted by reason).
fn local(
    metrics: &HttpMetrics,
    upstream: &str,
    error: &HttpError,
    direction: Direction,
    grpc: bool,
) -> Response<Body> {
    debug!(%error, blame = ?error.blame(), upstream, "answering locally");
    metrics.local(direction, upstream, error.label());
    error.response(grpc)
}

/// Records `finished` (metrics, access log) with what `response` says, when the response ends:
/// at once, or, for a gRPC response whose status comes in trailers, when its body ends.
fn record(
    metrics: &HttpMetrics,
    response: Response<Body>,
    mut finished: Finished,
) -> Response<Body> {
    finished.status = response.status();
    if finished.request.is_some() {
        finished.error = response
            .headers()
            .get(super::ERROR_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        finished.response_bytes = hyper::body::Body::size_hint(response.body()).exact();
    }
    let metrics = metrics.clone();
    super::trailers::on_end(response, move |grpc_status| {
        finished.grpc_status = grpc_status;
        metrics.finished(finished);
    })
}

/// The HTTP/1.1 + h2c server for connections from the app, configured strictly.
pub(crate) fn app_server() -> auto::Builder<TokioExecutor> {
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
